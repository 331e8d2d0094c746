"""Helpers shared by test modules (importable as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from fsar_cli.features.synthetic import synthetic_store

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY = SHARED / "fixtures" / "ssv2_tiny"

#: A small CLIP-FSAR head for D = 32 features: fast, and still a real Transformer.
SMALL_MODEL = {"num_heads": 4, "ffn_dim": 64, "adapter_hidden": 16}


def one_line_error(res: object, *names: str) -> str:
    """The CLI failed with exit code 1 and one ``error:`` line naming every one of ``names``."""
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 1, out  # type: ignore[attr-defined]
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out
    text = " ".join(out.split())  # Rich may wrap a long line; the names are in it either way
    for name in names:
        assert name in text, (name, out)
    return text


def write_recipe(path: Path, name: str = "tiny", **sections: object) -> Path:
    """Write a recipe YAML (``name`` plus the given top-level sections) and return its path."""
    path.write_text(yaml.safe_dump({"name": name, **sections}, sort_keys=False))
    return path


# Tiny head; dropout stays at the reference's 0.2 / 0.05 so the torch RNG state matters on resume.
MODEL = "{ffn_dim: 64, adapter: residual, adapter_hidden: 16, num_heads: 4}"
TRAIN = (
    "steps: 12, episodes_per_step: 4, lr: 1.0e-3, warmup_lr: 1.0e-4, lr_step: 4, "
    "val_every: 5, val_episodes: 20, checkpoint_every: 4, lambda_vt: 1.0"
)


def make_recipe(
    root: Path,
    train: str = TRAIN,
    noise: float = 1.0,
    nan_split: str | None = None,
    test: bool = False,
) -> Path:
    """Synthetic train/val(/test) stores (D = 32) under ``root/cache``, and a recipe using them."""
    cache = root / "cache"
    if not (cache / "train").is_dir():
        synthetic_store(cache / "train", 8, 6, dim=32, seed=0, noise=noise, split="train")
        synthetic_store(cache / "val", 6, 4, dim=32, seed=1, noise=noise, split="val")
        if test:
            synthetic_store(cache / "test", 6, 4, dim=32, seed=2, noise=noise, split="test")
        if nan_split:  # the recipe does not know the name of class 2 of that split
            text = np.load(cache / nan_split / "text.npy")
            text[2] = np.nan
            np.save(cache / nan_split / "text.npy", text)
    path = root / "recipe.yaml"
    path.write_text(
        f"name: tiny\nfeatures: {{cache_dir: {cache}}}\nmodel: {MODEL}\ntrain: {{{train}}}\n"
    )
    return path


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
