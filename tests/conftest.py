"""Shared fixtures: paths to ../shared, fixed Rich width, no progress bars, isolated caches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY = SHARED / "fixtures" / "ssv2_tiny"

# Rich output must not depend on the terminal the tests run in.
os.environ.setdefault("COLUMNS", "200")
os.environ["FSAR_NO_PROGRESS"] = "1"
os.environ.pop("FSAR_DEBUG", None)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: tests need the project's shared data beside the repo")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results databases and other per-user files go to a temporary folder, never ~/.cache.

    ``FSAR_HOME`` (the offline demo encoder's cache) is one folder for the whole session, so the
    encoder is trained once however many tests use it.
    """
    home = tmp_path_factory.getbasetemp() / "fsar-home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("FSAR_HOME", str(home))
    monkeypatch.setenv("FSAR_RESULTS_DB", str(home / "results.sqlite"))
    monkeypatch.setenv("FSAR_SPLITS", str(SHARED / "benchmarks"))
    monkeypatch.delenv("FSAR_SPLITS_URL", raising=False)
    # recipes a test writes (fsar data import) never land in the repository's recipes/
    monkeypatch.setenv("FSAR_RECIPES", str(tmp_path_factory.mktemp("recipes")))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: bitwise-repeatable CPU sums, and the count torchrun ranks use."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
