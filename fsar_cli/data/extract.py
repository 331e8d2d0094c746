"""Frame extraction: videos -> folders of JPEG frames, crash-safe, resumable and parallel.

Layout: ``OUT/<relative path without extension>/00000001.jpg ...``. For a recipe the relative path
is ``format_path(recipe.data.frames_layout, entry)``, so later steps find frames through the same
template; for ``input_dir`` it is the video's path under that folder without its extension.

Each video is decoded into a hidden sibling ``.<name>.partial-<pid>``; a ``.fsar-complete`` JSON
marker (frame count, source size and mtime, settings) is written inside it, and only then is it
renamed into place. A folder at its final path therefore always holds a complete extraction; a
killed run leaves at most ``.partial`` folders, which the next run removes before redoing those
videos. Frame counts come from what decodes, never from the container's declared frame count.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import json
import logging
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .. import atomic
from ..errors import DataError
from ..ownership import claim, is_empty_dir
from ..recipe import SPLITS, Recipe
from .frames import VIDEO_EXTS, iter_video_frames, sample_indices
from .sources import locate
from .splits import format_path, load_split

__all__ = [
    "ExtractSettings",
    "ExtractResult",
    "Failure",
    "extract_frames",
    "read_marker",
    "MARKER",
    "FAILURES_FILE",
]

log = logging.getLogger(__name__)

MARKER = ".fsar-complete"
FAILURES_FILE = "extract_failures.csv"
_MAX_FPS = 1000.0  # containers report 0, NaN or timebase-like values (90000) when they do not know


@dataclass(frozen=True)
class ExtractSettings:
    """What shapes the frames of one extraction; stored in every marker and compared on rerun."""

    fps: float | None = None  # resample to this rate; None = keep every frame
    num_frames: int | None = None  # N frames evenly spread over the decoded frames
    short_side: int = 0  # resize so the short side is this; 0 = original size
    quality: int = 95  # JPEG quality

    def check(self) -> None:
        if self.fps is not None and self.num_frames is not None:
            raise DataError("--fps and --num-frames exclude each other; pick one")
        if self.fps is not None and not (0 < self.fps <= _MAX_FPS):
            raise DataError(f"--fps {self.fps}: must be a positive number up to {_MAX_FPS:g}")
        if self.num_frames is not None and self.num_frames < 1:
            raise DataError(f"--num-frames {self.num_frames}: must be at least 1")
        if self.short_side < 0:
            raise DataError(f"--short-side {self.short_side}: must be 0 (original) or positive")
        if not 1 <= self.quality <= 100:
            raise DataError(f"--quality {self.quality}: JPEG quality must be in 1..100")

    def as_dict(self) -> dict[str, Any]:
        return {
            "fps": self.fps,
            "num_frames": self.num_frames,
            "short_side": self.short_side,
            "quality": self.quality,
        }


@dataclass(frozen=True)
class Failure:
    path: str  # the video file (or the path a recipe expected it at)
    reason: str


@dataclass
class ExtractResult:
    """Outcome of :func:`extract_frames`."""

    out_dir: Path
    frames: dict[str, int] = field(default_factory=dict)  # extracted now: rel folder -> frames
    skipped: int = 0  # already complete with the same settings
    failed: list[Failure] = field(default_factory=list)
    warnings: list[Failure] = field(default_factory=list)  # extracted, but worth a look
    failures_file: Path | None = None

    @property
    def done(self) -> int:
        return len(self.frames)

    @property
    def total(self) -> int:
        return self.done + self.skipped + len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class _Job:
    src: Path
    rel: str  # output folder relative to OUT, POSIX separators


# --------------------------------------------------------------------------- job lists


def _safe_rel(rel: str) -> str | None:
    p = PurePosixPath(rel.replace(os.sep, "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts or p.name.startswith("."):
        return None
    return str(p)


def _jobs_from_dir(input_dir: Path) -> tuple[list[_Job], list[Failure]]:
    if not input_dir.is_dir():
        raise DataError(f"--input {str(input_dir)!r} is not a folder of videos")
    jobs: dict[str, _Job] = {}
    failures: list[Failure] = []
    for dirpath, dirnames, filenames in os.walk(input_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skip hidden folders
        for name in sorted(filenames):
            path = Path(dirpath) / name
            # hidden files include macOS "._x.mp4" resource forks, which are not videos
            if name.startswith(".") or path.suffix.lower() not in VIDEO_EXTS:
                continue
            rel = path.relative_to(input_dir).with_suffix("").as_posix()
            if rel in jobs:
                failures.append(
                    Failure(str(path), f"same output folder {rel!r} as {jobs[rel].src}; rename one")
                )
                continue
            jobs[rel] = _Job(path, rel)
    if not jobs and not failures:
        log.warning("no video files (%s) under %s", ", ".join(VIDEO_EXTS), input_dir)
    return list(jobs.values()), failures


def _jobs_from_recipe(
    recipe: Recipe, root: Path, splits: Sequence[str]
) -> tuple[list[_Job], list[Failure]]:
    jobs: dict[str, _Job] = {}
    failures: list[Failure] = []
    for split in splits:
        for entry in load_split(recipe, split):
            where = f"{split} split line {entry.line_no}"
            loc = locate(recipe, entry, frames=False, root=root)
            src = loc.path
            if src is None:
                tried = ", ".join(str(c) for c in loc.tried)
                failures.append(
                    Failure(str(loc.expected), f"listed ({where}) but missing; tried {tried}")
                )
                continue
            rel = _safe_rel(format_path(recipe.data.frames_layout, entry))
            if rel is None:
                failures.append(
                    Failure(str(src), f"data.frames_layout gives an unsafe folder for {where}")
                )
                continue
            if rel in jobs and jobs[rel].src != src:
                failures.append(
                    Failure(str(src), f"same frames folder {rel!r} as {jobs[rel].src} ({where})")
                )
                continue
            jobs[rel] = _Job(src, rel)
    return list(jobs.values()), failures


# --------------------------------------------------------------------------- markers, leftovers


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The ``.fsar-complete`` marker of a frame folder, or None if absent or unreadable."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _source_stamp(src: Path) -> dict[str, int]:
    st = src.stat()
    return {"source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def _remove_leftovers(parents: Iterable[Path]) -> int:
    """Delete ``.*.partial-<pid>`` / ``.*.old-<pid>`` folders whose process is gone."""
    removed = 0
    for parent in parents:
        try:
            names = [e.name for e in os.scandir(parent) if e.name.startswith(".") and e.is_dir()]
        except OSError:
            continue
        for name in names:
            for tag in (".partial-", ".old-"):
                head, sep, pid = name.rpartition(tag)
                if sep and head and pid.isdigit() and not atomic.pid_alive(int(pid)):
                    shutil.rmtree(parent / name, ignore_errors=True)
                    removed += 1
    return removed


# --------------------------------------------------------------------------- one video


def _known_fps(fps: float) -> bool:
    return math.isfinite(fps) and 0 < fps <= _MAX_FPS


def _resize(img: Any, short_side: int) -> Any:
    cv2 = _cv2()
    h, w = img.shape[:2]
    if short_side <= 0 or min(h, w) == short_side:
        return img
    scale = short_side / min(h, w)
    size = (
        (short_side, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), short_side)
    )
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, size, interpolation=interp)  # (H, W, 3) -> (h', w', 3)


def _cv2() -> Any:
    import cv2

    cv2.setNumThreads(1)
    return cv2


def _write_frames(src: Path, folder: Path, s: ExtractSettings) -> tuple[int, dict[str, Any], str]:
    """Decode ``src`` into ``folder`` as 00000001.jpg...; returns (frames, marker info, note)."""
    cv2 = _cv2()
    next(iter_video_frames(src), None)  # missing / empty / unreadable / unopenable -> DataError
    cap = cv2.VideoCapture(str(src))
    declared = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    src_fps = cap.get(cv2.CAP_PROP_FPS)
    note = ""
    keep: Callable[[int], bool] = lambda i: True  # noqa: E731
    if s.fps is not None:
        if _known_fps(src_fps):
            r = src_fps / s.fps  # input frames per output frame; a rate above the source keeps all
            keep = lambda i: i == 0 or math.floor(i / r) != math.floor((i - 1) / r)  # noqa: E731
        else:
            note = f"container fps unknown ({src_fps}); kept all frames instead of --fps {s.fps:g}"
    wanted: dict[int, int] = {}  # decoded index -> how many copies to write
    if s.num_frames is not None:
        n = 0
        while cap.grab():  # counting pass: decode without colour conversion
            n += 1
        cap.release()
        if n == 0:
            raise DataError(f"{src}: no frame decodes (truncated or corrupt video)")
        for i in sample_indices(n, s.num_frames, "center").tolist():
            wanted[i] = wanted.get(i, 0) + 1
        keep = wanted.__contains__
        cap = cv2.VideoCapture(str(src))
    params = [cv2.IMWRITE_JPEG_QUALITY, int(s.quality)]
    written = decoded = 0
    try:
        while cap.grab():
            i, decoded = decoded, decoded + 1
            if not keep(i):
                continue
            ok, frame = cap.retrieve()
            if not ok or frame is None:
                break
            ok, buf = cv2.imencode(".jpg", _resize(frame, s.short_side), params)
            if not ok:
                raise DataError(f"{src}: frame {i} could not be encoded as JPEG")
            data = buf.tobytes()
            for _ in range(wanted.get(i, 1)):
                written += 1
                (folder / f"{written:08d}.jpg").write_bytes(data)
    finally:
        cap.release()
    if written == 0:
        raise DataError(f"{src}: no frame decodes (truncated or corrupt video)")
    if s.num_frames is not None and written != s.num_frames:
        raise DataError(f"{src}: decoded {decoded} frames on the second pass, fewer than the first")
    if declared > 0 and decoded < 0.9 * declared - 2:
        short = f"only {decoded} of {int(declared)} declared frames decode (truncated?)"
        note = f"{note}; {short}" if note else short
    info = {"decoded_frames": decoded, "source_fps": src_fps if _known_fps(src_fps) else None}
    return written, info, note


def _extract_one(src: str, dest: str, settings: dict[str, Any]) -> tuple[str, int, str]:
    """Worker: extract one video. Returns (status "done"/"failed", frames, reason or note)."""
    s = ExtractSettings(**settings)
    src_p, dest_p = Path(src), Path(dest)
    pid = os.getpid()
    partial = dest_p.parent / f".{dest_p.name}.partial-{pid}"
    try:
        dest_p.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        n, info, note = _write_frames(src_p, partial, s)
        marker = {"frames": n, "source": str(src_p), **_source_stamp(src_p), **info}
        marker["settings"] = s.as_dict()
        (partial / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        # an older or untrusted folder moves aside under a name _remove_leftovers sweeps
        atomic.swap_dir(partial, dest_p, aside=dest_p.parent / f".{dest_p.name}.old-{pid}")
        return "done", n, note
    except Exception as exc:  # noqa: BLE001 - any per-file failure is recorded, the batch goes on
        shutil.rmtree(partial, ignore_errors=True)
        reason = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
        return "failed", 0, reason.replace(f"{src_p}: ", "", 1)


# --------------------------------------------------------------------------- the batch


def _settings_diff(old: Any, new: dict[str, Any]) -> str | None:
    if not isinstance(old, dict):
        return "settings (marker has none)"
    for key, value in new.items():
        if old.get(key) != value:
            return f"{key}={old.get(key)!r} (this run asks {value!r})"
    return None


def _write_failures(out_dir: Path, failures: list[Failure]) -> Path | None:
    path = out_dir / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
        return None
    with atomic.replacing(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "reason"])
        for f in sorted(failures, key=lambda f: f.path):
            w.writerow([f.path, f.reason])
    return path


def extract_frames(
    out_dir: str | Path,
    *,
    input_dir: str | Path | None = None,
    recipe: Recipe | None = None,
    root: str | Path | None = None,
    splits: Sequence[str] = SPLITS,
    fps: float | None = None,
    num_frames: int | None = None,
    short_side: int = 0,
    quality: int = 95,
    workers: int = 2,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
) -> ExtractResult:
    """Extract JPEG frames of every video of a recipe's splits, or of a folder tree of videos.

    Reruns skip folders whose marker matches the source (size, mtime) and the settings; a source
    that changed is re-extracted. If complete folders were made with different settings (fps,
    num_frames, short_side, quality), the run refuses before touching anything and names the
    differing setting, unless ``overwrite`` is set, in which case those folders are re-extracted.

    Args:
        out_dir: where the frame folders go.
        input_dir: a folder searched recursively for videos (``VIDEO_EXTS``); excludes ``recipe``.
        recipe: extract the videos its split files list, found via ``data.video_layout``.
        root: the video root for ``recipe`` (default ``recipe.data.root``).
        splits: the recipe splits to extract.
        fps: resample to this many frames per second (all frames if the container's fps is unknown).
        num_frames: keep N frames evenly spread over the decoded frames; excludes ``fps``.
        short_side: resize so the short side has this many pixels; 0 keeps the original size.
        quality: JPEG quality 1-100.
        workers: videos decoded in parallel (processes); 1 runs in this process.
        overwrite: re-extract folders made with other settings instead of refusing.
        on_progress: ``on_progress(n=1, *, total=None, label=None)``, one step per video.

    Returns:
        An :class:`ExtractResult`; failures are also written to ``OUT/extract_failures.csv``.
    """
    settings = ExtractSettings(fps, num_frames, short_side, quality)
    settings.check()
    if workers < 1:
        raise DataError(f"--workers {workers}: must be at least 1")
    if (input_dir is None) == (recipe is None):
        raise DataError("give either a recipe or --input DIR (exactly one)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} is a file; give a folder")
    if recipe is not None:
        bad = [s for s in splits if s not in SPLITS]
        if bad:
            raise DataError(f"unknown split(s) {bad}; use {', '.join(SPLITS)}")
        jobs, failures = _jobs_from_recipe(recipe, Path(root or recipe.data.root), splits)
    else:
        jobs, failures = _jobs_from_dir(Path(input_dir))  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    report = on_progress or (lambda *a, **k: None)
    report(0, total=len(jobs) + len(failures))

    dests = {j.rel: out / j.rel for j in jobs}
    n_left = _remove_leftovers({d.parent for d in dests.values()})
    if n_left:
        log.info("removed %d unfinished folder(s) left by an interrupted run", n_left)
    new = settings.as_dict()
    todo: list[_Job] = []
    skipped = 0
    clashes: list[tuple[str, str]] = []
    foreign: list[str] = []
    for job in jobs:
        dest = dests[job.rel]
        marker = read_marker(dest) if dest.is_dir() else None
        if marker is None:
            # a folder without fsar's marker is replaced only if it is empty or --overwrite says so
            if os.path.lexists(dest) and not (dest.is_dir() and (overwrite or is_empty_dir(dest))):
                foreign.append(job.rel)
            else:
                todo.append(job)
            continue
        diff = _settings_diff(marker.get("settings"), new)
        if diff is not None and not overwrite:
            clashes.append((job.rel, diff))
        elif diff is None and all(marker.get(k) == v for k, v in _source_stamp(job.src).items()):
            skipped += 1
        else:
            todo.append(job)
    if foreign:
        claim(
            out / foreign[0],
            kind="dir",
            overwrite=overwrite,
            what=f"frame folder ({len(foreign)} without fsar's {MARKER} marker), e.g.",
            way_out="move it away, pass --overwrite to replace such folders, or use another --out",
        )
    if clashes:
        rel, diff = clashes[0]
        raise DataError(
            f"{len(clashes)} frame folder(s) in {out} were extracted with other settings, e.g. "
            f"{rel!r} with {diff}; pass --overwrite to re-extract them or use another --out"
        )
    result = ExtractResult(out_dir=out, skipped=skipped, failed=list(failures))
    report(skipped + len(failures), label="skipped complete videos" if skipped else None)

    def record(job: _Job, status: str, n: int, text: str) -> None:
        if status == "done":
            result.frames[job.rel] = n
            if text:
                result.warnings.append(Failure(str(job.src), text))
        else:
            result.failed.append(Failure(str(job.src), text))
            log.debug("%s: %s", job.src, text)
        report(1, label=job.rel)

    if workers == 1 or len(todo) <= 1:
        for job in todo:
            record(job, *_extract_one(str(job.src), str(dests[job.rel]), new))
    else:
        _run_pool(todo, dests, new, workers, record)
    for w in result.warnings:
        log.warning("%s: %s", w.path, w.reason)
    result.failures_file = _write_failures(out, result.failed)
    return result


def _run_pool(
    todo: list[_Job],
    dests: dict[str, Path],
    settings: dict[str, Any],
    workers: int,
    record: Callable[[_Job, str, int, str], None],
) -> None:
    # spawn, not fork: the parent may hold torch / OpenCV threads, which fork does not copy safely
    ctx = multiprocessing.get_context("spawn")
    pending = iter(todo)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        running: dict[cf.Future, _Job] = {}
        try:
            while True:
                while len(running) < 4 * workers:  # a bounded window: 100k videos, few futures
                    job = next(pending, None)
                    if job is None:
                        break
                    fut = pool.submit(_extract_one, str(job.src), str(dests[job.rel]), settings)
                    running[fut] = job
                if not running:
                    break
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    record(running.pop(fut), *fut.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
