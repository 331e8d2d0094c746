"""Shared fixtures: paths to ../shared, fixed Rich width, no progress bars, isolated caches."""

from __future__ import annotations

import json
import os
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


def write_tiny_split(folder: Path, split: str, classes: int, per_class: int) -> list[str]:
    """A reference-format split file listing ssv2_tiny videos, plus one that does not exist."""
    lines = []
    for c in range(classes):
        ids = sorted(p.name for p in (TINY / split / f"{split}{c}").iterdir())[:per_class]
        lines += [f"{split}{c}/{v}" for v in ids]
    lines.insert(3, f"{split}1/424242")  # listed in the split file, no frames: "missing"
    (folder / f"{split}_few_shot.txt").write_text("\n".join(lines) + "\n")
    return lines


def tiny_recipe(tmp: Path, name: str = "tiny", **features: object) -> Path:
    """A recipe (written as JSON) caching ssv2_tiny with the random tiny encoder into ``tmp``."""
    splits = tmp / "splits"
    if not splits.is_dir():
        splits.mkdir(parents=True)
        write_tiny_split(splits, "test", 3, 3)
        write_tiny_split(splits, "train", 2, 3)
    feats = {
        "encoder": "random:tiny",
        "resize": 40,
        "crop": 32,
        "chunk_videos": 3,
        "batch_size": 16,
        "workers": 2,
        "cache_dir": str(tmp / f"cache-{name}"),
        "sampling": {"train": "random", "test": "center"},
        "views": {"train": 2, "test": 1},
    }
    feats.update(features)
    doc = {
        "name": name,
        "data": {
            "split_dir": str(splits),
            "frames_root": str(TINY),
            "frames_layout": "{split}/{class_field}/{video_id}",
            "classes": {"test": ["pouring", "folding", None], "train": ["a", "b"]},
        },
        "features": feats,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path
