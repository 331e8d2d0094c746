"""``fsar data import``: your own labelled videos as an fsar benchmark (split files + recipe).

Input: a folder with one subfolder per class (``SRC/<class>/<video or frame folder>``) or a
``path,class`` CSV, read by the same code as ``fsar predict --support``. Few-shot benchmarks
split *classes*, not videos: the classes are shuffled with ``seed`` and ``val`` / ``test`` of them
become the validation and novel (test) classes, the rest the base (train) classes.

Output in ``out``: ``{train,val,test}_few_shot.txt`` in the reference format
(``test3//<class>/<video>``, paths relative to the input folder), ``classes.json`` and
``<name>.yaml``, a recipe whose ``data.*`` points at the input (videos: ``data.root`` and
``fsar extract``; frame folders: ``features.source: frames`` straight away) and whose other
settings are the defaults, so ``fsar extract/cache/train/eval/predict`` take it as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .. import atomic
from ..errors import DataError
from .labelled import read_support

__all__ = ["ImportResult", "import_dataset"]


@dataclass
class ImportResult:
    out: Path
    recipe: Path
    classes: dict[str, list[str]]  # split -> class names
    videos: dict[str, int]  # split -> videos
    source: str  # "videos" or "frames"


def import_dataset(
    src: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    val: int = 0,
    test: int = 5,
    seed: int = 0,
) -> ImportResult:
    """Split the classes of ``src`` into train / val / test and write split files and a recipe.

    Raises:
        DataError: unreadable input, a mix of videos and frame folders, or too few classes.
    """
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser()
    clips = read_support(src)
    root = src if src.is_dir() else src.parent
    kinds = {"frames" if c.path.is_dir() else "videos" for c in clips}
    if len(kinds) > 1:
        raise DataError(f"{src} mixes video files and frame folders; import one kind at a time")
    classes = sorted({c.label for c in clips})
    if val < 0 or test < 1 or len(classes) - val - test < 1:
        raise DataError(
            f"{src} has {len(classes)} classes: cannot keep {val} for val and {test} for test "
            "and still train on at least one (--val / --test)"
        )
    order = np.random.default_rng(seed).permutation(len(classes))
    shuffled = [classes[i] for i in order]
    split_classes = {
        "test": sorted(shuffled[:test]),
        "val": sorted(shuffled[test : test + val]),
        "train": sorted(shuffled[test + val :]),
    }
    out.mkdir(parents=True, exist_ok=True)
    videos = {}
    for split, names in split_classes.items():
        cid = {n: i for i, n in enumerate(names)}
        lines = []
        for c in clips:
            if c.label in cid:
                try:
                    rel = c.path.resolve().relative_to(root).as_posix()
                except ValueError:
                    raise DataError(
                        f"{c.path} is outside {root}; keep every video under it"
                    ) from None
                lines.append(f"{split}{cid[c.label]}//{rel}")
        videos[split] = len(lines)
        atomic.write_text(out / f"{split}_few_shot.txt", "\n".join(lines) + ("\n" if lines else ""))
    atomic.write_text(out / "classes.json", json.dumps(split_classes, indent=1))
    name = name or out.name
    kind = kinds.pop()
    data = {
        "split_name": name,
        "split_dir": str(out.resolve()),
        "split_format": "reference",
        "root": str(root),
        "video_layout": "{rel_path}",
        "video_exts": sorted({c.path.suffix.lstrip(".").lower() for c in clips})
        if kind == "videos"
        else ["mp4"],
        "frames_root": str(root) if kind == "frames" else str((out / "frames").resolve()),
        "frames_layout": "{rel_path}" if kind == "frames" else "{rel_stem}",
        "classes": {s: [n.replace("_", " ") for n in v] for s, v in split_classes.items()},
    }
    doc = {
        "name": name,
        "dataset": name,
        "description": f"imported by `fsar data import` from {src}",
        "data": data,
        "features": {"cache_dir": str((out / "cache").resolve())},
    }
    recipe = out / f"{name}.yaml"
    atomic.write_text(recipe, yaml.safe_dump(doc, sort_keys=False))
    return ImportResult(out, recipe, split_classes, videos, kind)
