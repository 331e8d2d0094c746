"""Which videos a prediction reads: labelled support examples and the query videos.

A *clip source* is a video file (``VIDEO_EXTS``) or a frame folder (a folder of JPEG/PNG frames,
as ``fsar extract`` writes them).

Support examples, the labelled videos that define the classes, come from

- a folder with one subfolder per class: ``SUPPORT/<class name>/<clip source>``; the subfolder's
  name is the class name (the text fed to CLIP is the recipe's prompt with ``_`` read as a space);
- a CSV file with a header and the columns ``path`` and ``class`` (or ``label``; paths relative
  to the CSV's folder, or absolute).

Queries are clip sources, folders searched recursively for them (sorted by path), glob patterns
(``"clips/*.mp4"``, for shells that do not expand them) or list files (``.txt`` / ``.lst``: one
path per line, relative to the list's folder, ``#`` comments). A query that cannot be a clip (a
missing path, a file that is not a video, a folder without clips) is kept as a :class:`Clip`
whose ``problem`` says why, so a prediction reports it by name and goes on with the others.
"""

from __future__ import annotations

import csv
import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .frames import FRAME_EXTS, VIDEO_EXTS

__all__ = ["Clip", "read_support", "find_clips", "is_clip_source", "text_name", "LIST_EXTS"]

#: Extensions of query list files (one path per line).
LIST_EXTS = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class Clip:
    """One clip source: its path, a stable key (relative path without extension) and a label.

    ``problem`` is set for a query that cannot be read at all (why, in one line)."""

    path: Path
    key: str
    label: str = ""
    problem: str = ""


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


def find_clips(paths: Sequence[str | Path] | str | Path) -> list[Clip]:
    """The query clips named by ``paths`` (module docstring), in the order given.

    Keys are relative to the folder searched (a clip given directly: its file name). Hidden
    files and folders are skipped. Nothing raises: a path that cannot be a clip is a
    :class:`Clip` with ``problem`` set.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    clips: list[Clip] = []
    for given in paths:
        clips.extend(_query(Path(given).expanduser(), str(given)))
    return clips


def _query(p: Path, given: str, depth: int = 0) -> list[Clip]:
    if not p.exists():
        if glob.has_magic(given):
            hits = sorted(glob.glob(str(Path(given).expanduser()), recursive=True))
            if hits:
                return [c for h in hits for c in _query(Path(h), h, depth)]
            return [Clip(p, p.name, problem=f"no file matches the pattern {given!r}")]
        return [Clip(p, p.name, problem="does not exist")]
    if is_clip_source(p):
        return [Clip(p, _key(p, p.parent))]
    if p.is_file() and p.suffix.lower() in LIST_EXTS and depth == 0:
        return _list_file(p)
    if p.is_file():
        why = "is empty (0 bytes)" if p.stat().st_size == 0 else "is not a video"
        return [Clip(p, p.name, problem=f"{why}: expected a video ({', '.join(VIDEO_EXTS)})")]
    found = _walk(p)
    if not found:
        return [
            Clip(
                p, p.name, problem=f"holds no videos ({', '.join(VIDEO_EXTS)}) and no frame folders"
            )
        ]
    return [Clip(f, _key(f, p)) for f in found]


def _list_file(path: Path) -> list[Clip]:
    """The queries a list file names, one path per line (relative to the list's folder)."""
    clips: list[Clip] = []
    for line in path.read_text(errors="replace").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        q = Path(entry).expanduser()
        q = q if q.is_absolute() else path.parent / q
        clips.extend(_query(q, str(q), depth=1))
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
    """Labelled support clips from a class-per-subfolder folder or a ``path,class`` CSV.

    Returns the clips sorted by class name, then path. Raises :class:`DataError` naming the
    problem (no classes, an empty class, a missing file, a malformed CSV).
    """
    src = Path(source).expanduser()
    if src.is_file() and src.suffix.lower() == ".csv":
        return _read_csv(src)
    if not src.is_dir():
        raise DataError(
            f"support {str(src)!r} is neither a folder with one subfolder per class nor a CSV "
            "file with columns path,class"
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
        if "path" not in cols or not ({"label", "class"} & set(cols)):
            raise DataError(
                f"{path}: needs a header with the columns path and class (or label), found "
                f"{cols or 'none'}"
            )
        rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in reader]
        for r in rows:
            r.setdefault("label", r.get("class", ""))
    clips = []
    for no, row in enumerate(rows, start=2):
        if not row.get("path") and not row.get("label"):
            continue
        if not row.get("path") or not row.get("label"):
            raise DataError(f"{path}:{no}: both path and class are needed, got {row}")
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
