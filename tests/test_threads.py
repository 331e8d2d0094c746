"""fsar's thread choice: the user's settings win; otherwise passive waiting and cores minus load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsar_cli import threads
from fsar_cli.cli.app import _threads_from_argv
from fsar_cli.errors import FsarError
from fsar_cli.threads import choose_threads, configure_threads, decode_workers

REPO = Path(__file__).resolve().parents[1]


def test_choose_threads_takes_the_free_cores_or_all_when_none_is_free() -> None:
    assert choose_threads(2, 0.1) == 2
    assert choose_threads(2, 1.0) == 1  # one free core: take it, leave the busy one alone
    assert choose_threads(16, 3.4) == 13
    assert choose_threads(16, 15.0) == 1
    # no free core: every thread time-shares, and more threads get a larger fair share
    assert choose_threads(2, 2.0) == 2
    assert choose_threads(2, 7.5) == 2
    assert choose_threads(16, 40.0) == 16


def test_decode_workers_auto_fits_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert decode_workers(5, "cuda") == decode_workers(5, "cpu") == 5  # a number is the user's
    assert decode_workers(0, "cuda") == 0
    assert decode_workers("auto", "cpu") == 2  # the CPU encoder needs the cores
    assert decode_workers("auto", "cuda") == decode_workers("auto", "cuda:1") == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 processes share the cores
    assert decode_workers("auto", "cuda:3") == 3
    assert decode_workers("auto", "cpu") == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert decode_workers("auto", "cuda") == 2  # at least 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "")
    assert decode_workers("auto", "cuda") == 15
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(threads, "available_cores", lambda: 256)
    assert decode_workers("auto", "cuda") == threads.MAX_AUTO_DECODE_WORKERS == 32


def test_user_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    n = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        choice = configure_threads()
        assert (choice.threads, choice.source, choice.wait_policy) == (
            1,
            "OMP_NUM_THREADS",
            "ACTIVE",
        )
        choice = configure_threads(2)  # --threads beats the environment
        assert (choice.threads, choice.source) == (2, "--threads")
        assert os.environ["OMP_NUM_THREADS"] == "2" and torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.delenv("OMP_WAIT_POLICY")
        choice = configure_threads()
        assert choice.source == "load" and choice.wait_policy == "PASSIVE"
        with pytest.raises(FsarError, match="--threads 0"):
            configure_threads(0)
    finally:
        torch.set_num_threads(n)


def test_global_threads_option_is_read_before_the_command() -> None:
    assert _threads_from_argv(["--threads", "3", "eval", "r"]) == 3
    assert _threads_from_argv(["--threads=1", "train"]) == 1
    assert _threads_from_argv(["eval", "--threads", "3"]) is None  # a command's own option
    assert _threads_from_argv(["--verbose", "train"]) is None


@pytest.mark.slow
def test_cli_sets_the_policy_before_torch_starts() -> None:
    code = (
        "import sys; sys.argv = ['fsar', '--threads', '1', 'heads']\n"
        "from fsar_cli.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "import os, torch; print('RESULT', os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "RESULT PASSIVE 1" in out.stdout, out.stdout + out.stderr
