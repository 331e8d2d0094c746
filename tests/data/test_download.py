"""`fsar splits download|verify`: pinned split files served from a local file:// folder."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.data.download import (
    DEFAULT_BASE_URL,
    SPLIT_FILES,
    SPLIT_SHA256,
    download_splits,
    verify_splits,
)
from fsar_cli.errors import DataError

BENCH = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
runner = CliRunner()


def _serve(tmp_path: Path, *names: str) -> Path:
    srv = tmp_path / "srv"
    for name in names:
        shutil.copytree(BENCH / name, srv / name)
    return srv


def test_download_from_file_url_verifies_and_skips_present(tmp_path):
    srv = _serve(tmp_path, "ucf101")
    dest = tmp_path / "dest"
    got = download_splits("ucf101", dest, base_url=srv.as_uri())
    assert [c.status for c in got] == ["downloaded"] * 3
    for file in SPLIT_FILES:
        data = (dest / "ucf101" / file).read_bytes()
        assert data == (BENCH / "ucf101" / file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == SPLIT_SHA256["ucf101"][file]
    assert all(c.ok for c in verify_splits(dest))
    assert sorted(p.name for p in (dest / "ucf101").iterdir()) == sorted(SPLIT_FILES)
    shutil.rmtree(srv)  # verified copies in place are not fetched again
    assert [c.status for c in download_splits("ucf101", dest, base_url=srv.as_uri())] == ["ok"] * 3
    with pytest.raises(DataError, match="by hand"):
        download_splits("ucf101", dest, base_url=srv.as_uri(), force=True)


def test_tampered_file_is_rejected_and_nothing_written(tmp_path, monkeypatch):
    srv = _serve(tmp_path, "hmdb51")
    target = srv / "hmdb51" / "test_few_shot.txt"
    target.write_bytes(target.read_bytes().replace(b"test0", b"test1", 1))
    bad_sum = hashlib.sha256(target.read_bytes()).hexdigest()
    good_sum = SPLIT_SHA256["hmdb51"]["test_few_shot.txt"]
    dest = tmp_path / "dest"
    monkeypatch.setenv("FSAR_SPLITS_URL", srv.as_uri())  # the environment overrides the URL
    res = runner.invoke(app, ["splits", "download", "hmdb51", "--dest", str(dest)])
    assert res.exit_code == 1
    out = " ".join(res.output.split())  # undo Rich's line wrapping
    assert "hmdb51/test_few_shot.txt" in out and good_sum in out and bad_sum in out
    assert not dest.exists() or not any(dest.rglob("*"))


def test_no_network_names_url_and_manual_fix(tmp_path):
    dest = tmp_path / "dest"
    base = (tmp_path / "offline").as_uri()
    with pytest.raises(DataError) as err:
        download_splits("kinetics100", dest, base_url=base)
    msg = str(err.value)
    assert f"{base}/kinetics100/train_few_shot.txt" in msg
    assert "by hand" in msg and str(dest / "kinetics100") in msg
    assert not dest.exists()
    assert DEFAULT_BASE_URL.endswith(
        "CLIP-FSAR/30cf0a8cf5287a56a9f37bfceb28e82be776fc5d/configs/projects/CLIPFSAR"
    )
    with pytest.raises(DataError, match="unknown benchmark 'ssv3'"):
        download_splits("ssv3", dest)


def test_cli_download_all_into_default_dest(tmp_path, monkeypatch):
    srv = _serve(tmp_path, *SPLIT_SHA256)
    monkeypatch.setenv("FSAR_SPLITS", str(tmp_path / "cache"))
    res = runner.invoke(app, ["splits", "download", "all", "--base-url", srv.as_uri()])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "cache").glob("*/*_few_shot.txt"))) == 15
    res = runner.invoke(app, ["splits", "verify"])
    assert res.exit_code == 0 and "all 15 split files match" in res.output


def test_verify_shared_benchmarks_and_detects_changes(tmp_path):
    res = runner.invoke(app, ["splits", "verify", str(BENCH)])
    assert res.exit_code == 0, res.output
    assert "all 15 split files match" in res.output
    checks = verify_splits(BENCH)
    assert len(checks) == 15 and all(c.status == "ok" for c in checks)
    copy = _serve(tmp_path, "ssv2_small")
    (copy / "ssv2_small" / "val_few_shot.txt").write_text("val0/1\n")
    (copy / "ssv2_small" / "train_few_shot.txt").unlink()
    res = runner.invoke(app, ["splits", "verify", str(copy)])
    assert res.exit_code == 1
    status = {
        c.file: c.status for c in verify_splits(copy / "ssv2_small")
    }  # one benchmark's folder
    assert status == {
        "train_few_shot.txt": "missing", "val_few_shot.txt": "mismatch", "test_few_shot.txt": "ok"
    }  # fmt: skip
