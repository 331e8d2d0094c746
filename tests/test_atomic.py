"""Atomic writes: no temporary files left, old content kept on error, folders swapped whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fsar_cli import atomic


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_text_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    path.write_text("old")
    assert atomic.write_text(path, '{"a": 1}\n') == path
    assert path.read_text() == '{"a": 1}\n'
    assert _names(tmp_path) == ["doc.json"]


def test_write_bytes_and_torch_save_round_trip(tmp_path: Path) -> None:
    atomic.write_bytes(tmp_path / "raw.bin", b"\x00\x01")
    atomic.torch_save({"w": torch.arange(3)}, tmp_path / "w.pt")
    assert (tmp_path / "raw.bin").read_bytes() == b"\x00\x01"
    assert torch.load(tmp_path / "w.pt", weights_only=True)["w"].tolist() == [0, 1, 2]
    assert _names(tmp_path) == ["raw.bin", "w.pt"]


def test_replacing_renames_on_success(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    with atomic.replacing(path) as tmp:
        assert tmp.parent == tmp_path and tmp != path
        with open(tmp, "wb") as fh:
            np.save(fh, np.arange(4))
        assert not path.exists()  # nothing visible before the block ends
    assert np.load(path).tolist() == [0, 1, 2, 3]
    assert _names(tmp_path) == ["a.npy"]


def test_an_error_inside_replacing_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path,
) -> None:
    path = tmp_path / "results.csv"
    path.write_text("old,content\n")
    with pytest.raises(RuntimeError, match="writer failed"), atomic.replacing(path) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("writer failed")
    assert path.read_text() == "old,content\n"
    assert _names(tmp_path) == ["results.csv"]


def test_replacing_uses_the_given_temporary_name(tmp_path: Path) -> None:
    path, own = tmp_path / "chunk.npz", tmp_path / "chunk.npz.tmp-host-1"
    with atomic.replacing(path, tmp=own) as tmp:
        assert tmp == own
        tmp.write_bytes(b"x")
    assert path.read_bytes() == b"x" and not own.exists()


def test_swap_dir_replaces_an_existing_folder(tmp_path: Path) -> None:
    dest, new = tmp_path / "out", tmp_path / ".out.tmp"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    new.mkdir()
    (new / "fresh.txt").write_text("new")
    assert atomic.swap_dir(new, dest) == dest
    assert _names(dest) == ["fresh.txt"]
    assert _names(tmp_path) == ["out"]  # neither the temporary nor the old folder remains


def test_swap_dir_into_a_new_place_and_with_a_named_aside(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    first = tmp_path / "first"
    first.mkdir()
    atomic.swap_dir(first, dest)
    assert dest.is_dir() and not first.exists()
    second = tmp_path / "second"
    second.mkdir()
    (second / "x").write_text("2")
    atomic.swap_dir(second, dest, aside=tmp_path / ".out.old-custom")
    assert _names(dest) == ["x"]
    assert _names(tmp_path) == ["out"]


@pytest.mark.slow
def test_pid_alive() -> None:
    assert atomic.pid_alive(os.getpid())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not atomic.pid_alive(dead.pid)
