"""Dataset check: per split and class, how many listed videos (or frame folders) are usable.

Kinetics videos vanish from YouTube and downloads get truncated; a benchmark run must say how many
split entries are missing or undecodable. This module counts them before any expensive step.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import atomic
from ..errors import DataError, FsarError
from ..recipe import SPLITS, Recipe
from .extract import read_marker
from .frames import count_frames, iter_video_frames, list_frame_files, read_frame_files
from .sources import locate
from .splits import SplitEntry, load_split

__all__ = ["ClassCount", "Problem", "CheckResult", "check_dataset", "write_problems"]

log = logging.getLogger(__name__)


@dataclass
class ClassCount:
    """Counts for one class of one split."""

    split: str
    class_id: int
    name: str
    listed: int = 0
    present: int = 0  # exists and decodes
    missing: int = 0
    undecodable: int = 0


@dataclass(frozen=True)
class Problem:
    """One split entry that is missing or does not decode."""

    split: str
    line_no: int
    class_id: int
    path: str
    status: str  # "missing" or "undecodable"
    reason: str


@dataclass
class CheckResult:
    """Outcome of :func:`check_dataset`."""

    root: Path
    mode: str  # "videos" or "frames"
    deep: bool
    classes: list[ClassCount] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # splits whose split file lists no video

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(c.split for c in self.classes))

    def for_split(self, split: str) -> list[ClassCount]:
        return [c for c in self.classes if c.split == split]

    def totals(self, split: str | None = None) -> ClassCount:
        rows = self.classes if split is None else self.for_split(split)
        t = ClassCount(split or "all", -1, "total")
        for r in rows:
            t.listed += r.listed
            t.present += r.present
            t.missing += r.missing
            t.undecodable += r.undecodable
        return t

    @property
    def complete(self) -> bool:
        t = self.totals()
        return t.missing == 0 and t.undecodable == 0 and not self.empty


def _declared_frames(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        cap.release()
    return int(n) if n == n and n > 0 else 0  # NaN / -1 / 0 = unknown


def _check_video(path: Path, deep: bool) -> str | None:
    """None if the video is usable, else why not.

    Quick: it opens and its first frame decodes. Deep: every frame is decoded, and a video of which
    fewer than half the frames its container declares decode counts as truncated. (Declared counts
    are estimates, so small shortfalls are normal; half is far outside them.)
    """
    try:
        if deep:
            n = count_frames(path)
            if n == 0:
                return "no frame decodes"
            declared = _declared_frames(path)
            if declared and n < declared / 2:
                return f"only {n} of {declared} declared frames decode (truncated?)"
        elif next(iter_video_frames(path), None) is None:
            return "no frame decodes"
    except FsarError as exc:
        return str(exc).replace(f"{path}: ", "", 1)
    except Exception as exc:  # noqa: BLE001 - OpenCV errors on odd files are per-file results
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_frames(folder: Path, deep: bool) -> str | None:
    """None if the frame folder is usable; checks the first frame (all with ``deep``)."""
    try:
        files = list_frame_files(folder)
        marker = read_marker(folder)
        if marker is not None and marker.get("frames") != len(files):
            return (
                f"holds {len(files)} frames but its extraction marker says {marker.get('frames')}"
            )
        read_frame_files(files if deep else files[:1])
    except FsarError as exc:
        return str(exc).replace(f"{folder}: ", "", 1)
    return None


def _locate(recipe: Recipe, root: Path, entry: SplitEntry, frames: bool) -> tuple[str, str]:
    """(path, "") if the entry's video / frame folder exists, else (expected path, reason)."""
    loc = locate(recipe, entry, frames=frames, root=root)
    if loc.path is not None:
        return str(loc.path), ""
    if frames:
        return str(loc.expected), "frame folder does not exist"
    return str(loc.expected), "tried " + ", ".join(str(c) for c in loc.tried)


def check_dataset(
    recipe: Recipe,
    root: str | Path | None = None,
    *,
    splits: Sequence[str] = SPLITS,
    frames: bool = False,
    deep: bool = False,
    workers: int = 4,
    on_progress: Callable[..., None] | None = None,
) -> CheckResult:
    """Count, per split and class, the listed entries that exist, are missing, or do not decode.

    Args:
        recipe: the benchmark; its split files list the entries.
        root: the video root (default ``data.root``) or, with ``frames``, the frames root
            (default ``data.frames_root``).
        splits: which splits to check.
        frames: check extracted frame folders (``data.frames_layout``) instead of videos.
        deep: decode every frame (slow) instead of the first one; flags truncated videos.
        workers: threads checking entries in parallel (OpenCV releases the GIL while decoding).
        on_progress: ``on_progress(n=1, *, total=None, label=None)``, one step per entry.

    Returns:
        A :class:`CheckResult`; ``.complete`` is True when nothing is missing or undecodable.
    """
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise DataError(f"unknown split(s) {bad}; use {', '.join(SPLITS)}")
    if workers < 1:
        raise DataError(f"--workers {workers}: must be at least 1")
    base = Path(
        root if root is not None else (recipe.data.frames_root if frames else recipe.data.root)
    )
    if not base.is_dir():
        log.warning(
            "%s root %s does not exist: every entry will count as missing",
            "frames" if frames else "video",
            base,
        )
    entries = {s: load_split(recipe, s) for s in splits}
    report = on_progress or (lambda *a, **k: None)
    report(0, total=sum(len(e) for e in entries.values()))
    result = CheckResult(root=base, mode="frames" if frames else "videos", deep=deep)
    result.empty = [s for s, items in entries.items() if not items]  # not "complete": empty
    verify = _check_frames if frames else _check_video
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        for split, items in entries.items():
            # stat every entry here (cheap), decode only the ones that exist, in parallel
            located = [_locate(recipe, base, e, frames) for e in items]
            found = [Path(p) for p, why in located if not why]
            report(len(items) - len(found), label=split)
            checked = iter(pool.map(lambda p: verify(p, deep), found))
            names = recipe.data.classes.for_split(split)
            rows: dict[int, ClassCount] = {}
            for entry, (path, why) in zip(items, located, strict=True):
                row = rows.get(entry.class_id)
                if row is None:
                    known = entry.class_id < len(names) and names[entry.class_id]
                    name = names[entry.class_id] if known else entry.class_field
                    row = rows[entry.class_id] = ClassCount(split, entry.class_id, str(name))
                row.listed += 1
                if why:
                    status, reason = "missing", why
                else:
                    reason = next(checked) or ""
                    status = "undecodable" if reason else "present"
                    report(1, label=split)
                setattr(row, status, getattr(row, status) + 1)
                if reason:
                    result.problems.append(
                        Problem(split, entry.line_no, entry.class_id, path, status, reason)
                    )
            result.classes.extend(rows[k] for k in sorted(rows))
    return result


def write_problems(result: CheckResult, path: str | Path) -> Path:
    """Write each missing or undecodable entry to a CSV file (split, line, class, status, path)."""
    path = Path(path)
    with atomic.replacing(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "line", "class_id", "status", "path", "reason"])
        for p in result.problems:
            w.writerow([p.split, p.line_no, p.class_id, p.status, p.path, p.reason])
    return path
