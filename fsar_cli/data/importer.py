"""``fsar data import``: your own labelled videos as an fsar benchmark (split files + recipe).

Input: a folder with one subfolder per class (``SRC/<class>/<video or frame folder>``) or a
``path,class`` CSV, read by the same code as ``fsar predict --support``. Few-shot benchmarks
split *classes*, not videos: the classes are shuffled with ``seed`` and ``val`` / ``test`` of them
(fractions of the classes, or counts when >= 1) become the validation and novel (test) classes,
the rest the base (train) classes; or the lists ``train_classes`` / ``val_classes`` /
``test_classes`` name them. The same input and seed give the same split.

Every video is opened and its first frame decoded first; those that do not decode are left out of
the split files and listed (in the result and in ``undecodable.csv``), never dropped silently.

Output in ``out`` (default ``./fsar-data/<name>``): ``{train,val,test}_few_shot.txt`` in the
reference format (``test3//<class>/<video>``, paths relative to the input folder), ``classes.json``,
``import.json`` (what was written, with SHA-256s); the recipe ``<name>.yaml`` goes into the
user's recipes folder (the first writable of ``$FSAR_RECIPES`` and ``./recipes``), so every
command finds it by name. Its ``data.*`` point at the input (videos: ``fsar extract`` writes frames
to ``out/frames``; frame folders are read in place), the cache goes to ``out/cache``, and the
other settings are the defaults plus ``overrides`` (``--set``). The split is checked against the
recipe's episode settings: a split with fewer classes than an episode's way, or a class with
fewer videos than shots + queries, is an error naming the numbers and the fix.

Files are only replaced when ``import.json`` says this command wrote them and they are unchanged
since; anything else in the way is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .. import atomic
from ..errors import DataError
from ..progress import ProgressFn
from .labelled import Clip, read_support, text_name

__all__ = ["ImportResult", "import_dataset", "user_recipes_dir", "IMPORT_MANIFEST"]

IMPORT_MANIFEST = "import.json"
_SPLITS = ("train", "val", "test")


@dataclass
class ImportResult:
    out: Path
    recipe: Path
    name: str
    classes: dict[str, list[str]]  # split -> class names
    videos: dict[str, int]  # split -> videos listed
    source: str  # "videos" or "frames"
    undecodable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    on_search_path: bool = True  # the recipe is found by name from here


def user_recipes_dir() -> Path:
    """Where an imported recipe goes: the first writable of ``$FSAR_RECIPES`` and ``./recipes``
    (the folders :func:`fsar_cli.recipe.recipe_dirs` searches first), or the first that does not
    exist yet."""
    env = [Path(p) for p in os.environ.get("FSAR_RECIPES", "").split(os.pathsep) if p]
    candidates = [*env, Path.cwd() / "recipes"]
    for d in candidates:
        if d.is_dir() and os.access(d, os.W_OK):
            return d
    for d in candidates:
        if not d.exists():
            return d  # created when the recipe is written
    raise DataError(
        f"no writable recipes folder among {[str(d) for d in candidates]}; set $FSAR_RECIPES to "
        "a folder you can write"
    )


def _count(value: float, n: int, what: str) -> int:
    """``--val 0.15`` (a fraction of the classes) or ``--val 2`` (a count) -> classes."""
    if value < 0:
        raise DataError(f"{what} {value}: must be >= 0")
    if value >= 1:
        if value != int(value):
            raise DataError(f"{what} {value}: a fraction below 1 or a whole number of classes")
        return int(value)
    return 0 if value == 0 else max(1, int(round(value * n)))


def _split_classes(
    classes: list[str],
    val: float,
    test: float,
    seed: int,
    lists: dict[str, list[str] | None],
) -> dict[str, list[str]]:
    if any(v is not None for v in lists.values()):
        known = set(classes)
        given = {s: list(v or []) for s, v in lists.items()}
        for s, names in given.items():
            bad = [n for n in names if n not in known]
            if bad:
                raise DataError(
                    f"--{s}-classes names {bad}, which are not classes of the input; its classes: "
                    f"{', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}"
                )
        seen: dict[str, str] = {}
        for s, names in given.items():
            for n in names:
                if n in seen and seen[n] != s:
                    raise DataError(
                        f"class {n!r} is in both --{seen[n]}-classes and --{s}-classes; the "
                        "splits of a few-shot benchmark share no class"
                    )
                seen[n] = s
        rest = [c for c in classes if c not in seen]
        if lists["train"] is None:  # the classes not listed elsewhere are the base classes
            given["train"] = rest
        elif rest:
            raise DataError(
                f"{len(rest)} classes are in no list ({rest[:5]}...); name them in "
                "--train-classes / --val-classes / --test-classes, or leave --train-classes out "
                "to train on every class not listed"
            )
        return {s: sorted(set(v)) for s, v in given.items()}
    n_cls = len(classes)
    n_test, n_val = _count(test, n_cls, "--test"), _count(val, n_cls, "--val")
    if n_test < 1 or n_cls - n_test - n_val < 1:
        raise DataError(
            f"the input has {n_cls} classes: {n_test} test and {n_val} val classes leave "
            f"{n_cls - n_test - n_val} to train on; lower --test / --val, or add classes"
        )
    order = np.random.default_rng(seed).permutation(n_cls)
    shuffled = [classes[i] for i in order]
    return {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test : n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val :]),
    }


def _probe(clip: Clip) -> str | None:
    from .check import _check_frames, _check_video

    return _check_frames(clip.path, False) if clip.path.is_dir() else _check_video(clip.path, False)


def _check_episodes(
    recipe: Any, split_classes: dict[str, list[str]], counts: dict[str, int]
) -> None:
    """Every split can make the recipe's episodes: enough classes, enough videos per class."""
    t, e = recipe.train, recipe.eval
    sel = "test" if t.select_on == "test" else "val"
    # split -> (way, shots, queries, and the keys that set them)
    needs: dict[str, tuple[int, int, int, str, str, str]] = {
        "train": (t.n_way, t.k_shot, t.n_query, "train.n_way", "train.k_shot", "train.n_query"),
        sel: (e.n_way, t.k_shot, e.n_query, "eval.n_way", "train.k_shot", "eval.n_query"),
    }
    shots, shot_key = max(e.shots), "eval.shots"
    if sel == "test" and t.k_shot > shots:
        shots, shot_key = t.k_shot, "train.k_shot"
    needs["test"] = (e.n_way, shots, e.n_query, "eval.n_way", shot_key, "eval.n_query")
    for split, (way, k, q, way_key, k_key, q_key) in needs.items():
        have = len(split_classes[split])
        flag = f"--{split} or --{split}-classes" if split != "train" else "--val / --test"
        if have < way:
            fix = f"give it {way} or more ({flag})"
            if have >= 2:
                fix += f", or import with --set {way_key}={have}"
            raise DataError(
                f"the {split} split has {have} classes, fewer than {way_key}={way}: {fix}"
            )
        short = [(c, counts[c]) for c in split_classes[split] if counts[c] < k + q]
        if short:
            fewest = min(n for _, n in short)
            listed = ", ".join(f"{c!r} has {n}" for c, n in short[:5])
            fix = "add videos to them or leave them out"
            if fewest - k >= 1:
                fix += f", or import with --set {q_key}={fewest - k}"
            raise DataError(
                f"{len(short)} {split} classes have fewer videos than {k_key} + {q_key} = "
                f"{k} + {q} = {k + q} ({listed}{' ...' if len(short) > 5 else ''}): {fix}"
            )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _guard(targets: list[Path], manifest: Path) -> None:
    """Refuse to replace a file this command did not write (or that was edited since)."""
    written: dict[str, str] = {}
    if manifest.is_file():
        try:
            doc = json.loads(manifest.read_text())
            if doc.get("format") != "fsar-import/1":
                raise ValueError(doc.get("format"))
            written = dict(doc.get("written", {}))
        except (OSError, ValueError, AttributeError):
            raise DataError(
                f"{manifest} exists but is not an `fsar data import` record; choose another "
                "--out, or move it away"
            ) from None
    elif manifest.exists():
        raise DataError(f"{manifest} is in the way (not a file); choose another --out")
    for p in targets:
        if not p.exists():
            continue
        key = str(p.resolve())
        if not p.is_file() or written.get(key) != _sha(p):
            raise DataError(
                f"{p} exists and was not written by `fsar data import` (or was edited since); "
                "it is never overwritten: move it away, or choose another --out / --name"
            )


def import_dataset(
    src: str | Path,
    out: str | Path | None = None,
    *,
    name: str | None = None,
    val: float = 0.15,
    test: float = 0.25,
    seed: int = 0,
    train_classes: Sequence[str] | None = None,
    val_classes: Sequence[str] | None = None,
    test_classes: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    recipes_dir: str | Path | None = None,
    workers: int = 4,
    on_progress: ProgressFn | None = None,
) -> ImportResult:
    """Split the classes of ``src`` into train / val / test; write split files and a recipe.

    Args:
        out: the data folder (split files, classes.json, later frames/ and cache/); default
            ``./fsar-data/<name>`` (not ``./<name>``, which would hide the recipe of that name).
        name: the recipe's name (default the input folder's name).
        val, test: fractions of the classes (counts when >= 1), drawn with ``seed``.
        train_classes, val_classes, test_classes: the split by name instead (classes left out of
            every list train, unless ``train_classes`` is given).
        overrides: ``key=value`` settings written into the recipe (``--set``), checked with it.
        recipes_dir: where the recipe goes (default :func:`user_recipes_dir`).
    Raises:
        DataError: unreadable input, a mix of videos and frame folders, a split that cannot make
            the recipe's episodes, or a file in the way that this command did not write.
    """
    from ..recipe import apply_overrides, list_recipes, recipe_from_dict

    src = Path(src).expanduser().resolve()
    clips = read_support(src)
    root = src if src.is_dir() else src.parent
    name = name or (src.name if src.is_dir() else src.stem)
    if not name or any(ch in name for ch in "/\\") or name.startswith("."):
        raise DataError(f"--name {name!r}: give a plain name such as kitchen")
    out = (
        Path(out).expanduser().resolve()
        if out is not None
        else (Path.cwd() / "fsar-data" / name).resolve()
    )
    if out == root or root in out.parents:
        raise DataError(
            f"--out {out} is inside the videos folder {root}: its files would be read as a class "
            "next time; choose a folder outside it"
        )
    rdir = Path(recipes_dir).expanduser() if recipes_dir is not None else user_recipes_dir()
    recipe_path = rdir / f"{name}.yaml"
    other = list_recipes().get(name)
    if other is not None and other.resolve() != recipe_path.resolve():
        raise DataError(f"a recipe named {name!r} already exists ({other}); choose another --name")
    kinds = {"frames" if c.path.is_dir() else "videos" for c in clips}
    if len(kinds) > 1:
        raise DataError(f"{src} mixes video files and frame folders; import one kind at a time")
    kind = kinds.pop()

    # every video must decode; those that do not are listed, never silently dropped
    advance = on_progress or (lambda n=1, *, total=None, label=None: None)
    advance(0, total=len(clips), label="checking that every video decodes")
    bad: list[tuple[str, str]] = []
    good: list[Clip] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for clip, why in zip(clips, pool.map(_probe, clips), strict=True):
            advance(1)
            if why is None:
                good.append(clip)
            else:
                bad.append((str(clip.path), why))
    if not good:
        raise DataError(f"none of the {len(clips)} videos under {src} decodes (first: {bad[0][1]})")

    classes = sorted({c.label for c in good})
    counts = {c: sum(1 for g in good if g.label == c) for c in classes}
    lists = {
        "train": None if train_classes is None else list(train_classes),
        "val": None if val_classes is None else list(val_classes),
        "test": None if test_classes is None else list(test_classes),
    }
    split_classes = _split_classes(classes, val, test, seed, lists)

    data = {
        "split_name": "",
        "split_dir": str(out),
        "split_format": "reference",
        "root": str(root),
        "video_layout": "{rel_path}",
        "video_exts": sorted({c.path.suffix.lstrip(".").lower() for c in good})
        if kind == "videos"
        else ["mp4"],
        "frames_root": str(root) if kind == "frames" else str(out / "frames"),
        "frames_layout": "{rel_path}" if kind == "frames" else "{rel_stem}",
        "classes": {s: [text_name(n) for n in split_classes[s]] for s in _SPLITS},
    }
    doc: dict[str, Any] = {
        "name": name,
        "dataset": name,
        "description": f"imported by `fsar data import` from {src} (seed {seed})",
        "data": data,
        "features": {"cache_dir": str(out / "cache")},
    }
    doc = apply_overrides(doc, list(overrides))
    recipe = recipe_from_dict(doc)  # validates every key, with the overrides
    _check_episodes(recipe, split_classes, counts)

    manifest = out / IMPORT_MANIFEST
    files: dict[Path, str] = {}
    for split in _SPLITS:
        cid = {n: i for i, n in enumerate(split_classes[split])}
        lines = []
        for c in good:
            if c.label in cid:
                try:
                    rel = Path(os.path.abspath(c.path)).relative_to(root).as_posix()
                except ValueError:
                    raise DataError(
                        f"{c.path} is outside {root}; keep every video under it"
                    ) from None
                lines.append(f"{split}{cid[c.label]}//{rel}")
        files[out / f"{split}_few_shot.txt"] = "\n".join(lines) + ("\n" if lines else "")
    files[out / "classes.json"] = json.dumps(split_classes, indent=1) + "\n"
    if bad:
        files[out / "undecodable.csv"] = "path,reason\n" + "".join(
            f'"{p}","{r.replace(chr(34), chr(39))}"\n' for p, r in bad
        )
    header = (
        f"# written by `fsar data import` from {src} (seed {seed}); splits and classes in {out}\n"
    )
    files[recipe_path] = header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    _guard(list(files), manifest)
    out.mkdir(parents=True, exist_ok=True)
    rdir.mkdir(parents=True, exist_ok=True)
    old = out / "undecodable.csv"
    if not bad and old.exists():  # ours (guarded above) and now stale
        old.unlink()
    for path, text in files.items():
        atomic.write_text(path, text)
    record = {
        "format": "fsar-import/1",
        "source": str(src),
        "name": name,
        "seed": seed,
        "val": val,
        "test": test,
        "overrides": list(overrides),
        "classes": split_classes,
        "undecodable": [{"path": p, "reason": r} for p, r in bad],
        "written": {str(p.resolve()): _sha(p) for p in files},
    }
    atomic.write_text(manifest, json.dumps(record, indent=1) + "\n")
    videos = {s: files[out / f"{s}_few_shot.txt"].count("\n") for s in _SPLITS}
    found = list_recipes().get(name)
    return ImportResult(
        out,
        recipe_path,
        name,
        split_classes,
        videos,
        kind,
        bad,
        on_search_path=found is not None and found.resolve() == recipe_path.resolve(),
    )
