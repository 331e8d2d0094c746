"""Which videos a prediction reads: labelled support examples and the query videos.

A *clip source* is a video file (``VIDEO_EXTS``) or a frame folder (a folder of JPEG/PNG frames,
as ``fsar extract`` writes them).

Support examples, the labelled videos that define the classes, come from

- a folder with one subfolder per class: ``SUPPORT/<class name>/<clip source>``; the subfolder's
  name is the class name (the text fed to CLIP is the recipe's prompt with ``_`` read as a space);
- a CSV file with a header and the columns ``path`` and ``label`` (paths relative to the CSV's
  folder, or absolute).

Queries are clip sources, or folders searched recursively for them (sorted by path).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .frames import FRAME_EXTS, VIDEO_EXTS

__all__ = ["Clip", "read_support", "find_clips", "is_clip_source", "text_name"]


@dataclass(frozen=True)
class Clip:
    """One clip source: its path, a stable key (relative path without extension) and a label."""

    path: Path
    key: str
    label: str = ""


def _is_frame_folder(path: Path) -> bool:
    try:
        return path.is_dir() and any(
            p.suffix.lower() in FRAME_EXTS and not p.name.startswith(".") for p in path.iterdir()
        )
    except OSError:
        return False


def is_clip_source(path: Path) -> bool:
    """A video file (by extension) or a folder holding frame images."""
    if path.is_file():
        return path.suffix.lower() in VIDEO_EXTS
    return _is_frame_folder(path)


def _key(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    rel = rel.with_suffix("") if path.is_file() else rel
    return rel.as_posix() or path.stem


def find_clips(paths: list[str | Path] | str | Path) -> list[Clip]:
    """The clip sources named by ``paths``: each a clip source, or a folder searched for them.

    Keys are relative to the folder searched (a clip given directly: its file name). Hidden
    files and folders are skipped. Raises :class:`DataError` for a path that does not exist or a
    folder holding no clip source.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    clips: list[Clip] = []
    for given in paths:
        p = Path(given).expanduser()
        if not p.exists():
            raise DataError(
                f"{str(p)!r} does not exist (expected a video, a frame folder or a folder of them)"
            )
        if is_clip_source(p):
            clips.append(Clip(p, _key(p, p.parent)))
            continue
        if not p.is_dir():
            raise DataError(
                f"{str(p)!r} is not a video ({', '.join(VIDEO_EXTS)}) or a frame folder"
            )
        found = _walk(p)
        if not found:
            raise DataError(
                f"{str(p)!r} holds no videos ({', '.join(VIDEO_EXTS)}) and no frame folders"
            )
        clips.extend(Clip(f, _key(f, p)) for f in found)
    return clips


def _walk(folder: Path) -> list[Path]:
    out: list[Path] = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if is_clip_source(child):
            out.append(child)
        elif child.is_dir():
            out.extend(_walk(child))
    return out


def read_support(source: str | Path) -> list[Clip]:
    """Labelled support clips from a class-per-subfolder folder or a ``path,label`` CSV.

    Returns the clips sorted by class name, then path. Raises :class:`DataError` naming the
    problem (no classes, an empty class, a missing file, a malformed CSV).
    """
    src = Path(source).expanduser()
    if src.is_file() and src.suffix.lower() == ".csv":
        return _read_csv(src)
    if not src.is_dir():
        raise DataError(
            f"support {str(src)!r} is neither a folder with one subfolder per class nor a CSV "
            "file with columns path,label"
        )
    clips: list[Clip] = []
    for cls in sorted(c for c in src.iterdir() if c.is_dir() and not c.name.startswith(".")):
        if is_clip_source(cls):
            raise DataError(
                f"{cls} is a frame folder directly under the support folder; put each class's "
                "examples in a subfolder named after the class: SUPPORT/<class>/<video>"
            )
        found = _walk(cls)
        if not found:
            raise DataError(f"support class folder {cls} holds no videos and no frame folders")
        clips.extend(Clip(f, _key(f, src), cls.name) for f in found)
    if not clips:
        raise DataError(
            f"support folder {src} has no class subfolders; lay it out as SUPPORT/<class>/<video>"
        )
    return sorted(clips, key=lambda c: (c.label, c.key))


def _read_csv(path: Path) -> list[Clip]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip().lower() for c in reader.fieldnames or []]
        if "path" not in cols or "label" not in cols:
            raise DataError(
                f"{path}: needs a header with the columns path and label, found {cols or 'none'}"
            )
        rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    clips = []
    for no, row in enumerate(rows, start=2):
        if not row.get("path") and not row.get("label"):
            continue
        if not row.get("path") or not row.get("label"):
            raise DataError(f"{path}:{no}: both path and label are needed, got {row}")
        p = Path(row["path"]).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not is_clip_source(p):
            what = "does not exist" if not p.exists() else "is not a video or a frame folder"
            raise DataError(f"{path}:{no}: {str(p)!r} {what}")
        clips.append(Clip(p, _key(p, path.parent), row["label"]))
    if not clips:
        raise DataError(f"{path} lists no support videos")
    return sorted(clips, key=lambda c: (c.label, c.key))


def text_name(label: str) -> str:
    """The class name as CLIP reads it: folder-style ``brush_hair`` -> ``brush hair``."""
    return " ".join(label.replace("_", " ").split())
