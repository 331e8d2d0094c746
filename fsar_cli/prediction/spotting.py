"""Spotting: sliding windows over a long video, each classified as its own clip.

``--window 2s --stride 1s`` cut a video into windows of 2 seconds starting every second (a bare
number, or one with an ``f`` suffix, counts frames: ``--window 16``); windows end at or before the
last frame (a video shorter than one window is one window). Each window becomes a clip exactly as
``fsar cache`` makes one from a video: ``T`` frames sampled one per equal segment of the window
(:func:`fsar_cli.data.preprocess.plan_views`, with the window's own key ``<video key>@<first
frame>`` for random sampling), resized and centre-cropped with :mod:`fsar_cli.data.preprocess`.

The video is decoded once, front to back, and only the frames some window samples are kept (each
resized as it arrives), so memory is bounded by the window, not by the video's length.

:func:`merge_runs` turns the windows' top classes into *runs*: consecutive windows of one video
with the same top class, merged into one interval (few-shot action spotting).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.frames import iter_video_frames, list_frame_files, read_frame_files
from ..data.preprocess import ViewSpec, crop_frames_hwc, plan_views, resize_frames_hwc
from ..errors import DataError

__all__ = [
    "Window",
    "Span",
    "parse_span",
    "window_frames",
    "iter_windows",
    "source_fps",
    "merge_runs",
    "RUN_COLUMNS",
]

#: Columns of :func:`merge_runs`'s table.
RUN_COLUMNS = [
    "query",
    "key",
    "label",
    "start_frame",
    "end_frame",
    "start_s",
    "end_s",
    "windows",
    "mean_prob",
]


@dataclass(frozen=True)
class Window:
    """Frames ``[start, end)`` of a video; ``frames`` uint8 [1, T, 3, C, C] (one view)."""

    start: int
    end: int
    frames: torch.Tensor


@dataclass(frozen=True)
class Span:
    """A window or stride length: ``value`` seconds (``unit="s"``) or frames (``"frames"``)."""

    value: float
    unit: str

    def __str__(self) -> str:
        return f"{self.value:g}s" if self.unit == "s" else f"{int(self.value)} frames"

    def frames(self, fps: float | None) -> int:
        if self.unit == "frames":
            return int(self.value)
        if not fps or fps <= 0 or not np.isfinite(fps):
            raise DataError(
                f"the frame rate is unknown, so {self} cannot be counted in frames: pass --fps "
                "(frame folders have none) or give the window in frames (--window 16)"
            )
        return max(1, int(round(self.value * fps)))


_SPAN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|ms|f|frames?)?\s*$", re.IGNORECASE)


def parse_span(value: str | float | Span, what: str = "--window") -> Span:
    """``"2s"``, ``"1.5s"``, ``"500ms"`` -> seconds; ``"16"``, ``"16f"`` -> frames.

    A Python number (not a string) is seconds.
    """
    if isinstance(value, Span):
        span = value
    elif isinstance(value, (int, float)):
        span = Span(float(value), "s")
    else:
        m = _SPAN.match(str(value))
        if m is None:
            raise DataError(
                f"{what} {value!r}: give seconds with an s suffix (2s, 0.5s, 500ms) or frames "
                "as a whole number (16)"
            )
        num, unit = float(m.group(1)), (m.group(2) or "f").lower()
        if unit == "ms":
            span = Span(num / 1000.0, "s")
        elif unit in ("s", "sec"):
            span = Span(num, "s")
        else:
            if num != int(num):
                raise DataError(f"{what} {value!r}: a count of frames must be a whole number")
            span = Span(num, "frames")
    if span.value <= 0 or not np.isfinite(span.value):
        raise DataError(f"{what} {value!r}: must be positive")
    return span


def window_frames(
    window: str | float | Span, stride: str | float | Span, fps: float | None
) -> tuple[int, int]:
    """Window and stride (seconds or frames, :func:`parse_span`) -> in frames (at least 1)."""
    w, s = parse_span(window, "--window"), parse_span(stride, "--stride")
    return max(1, w.frames(fps)), max(1, s.frames(fps))


def source_fps(source: Path) -> float | None:
    """The container's frame rate of a video file; None for frame folders or when unknown."""
    if source.is_dir():
        return None
    from ..data.frames import _cv2

    cap = _cv2().VideoCapture(str(source))
    try:
        fps = float(cap.get(5)) if cap.isOpened() else 0.0  # 5 = cv2.CAP_PROP_FPS
    finally:
        cap.release()
    return fps if fps > 0 and np.isfinite(fps) else None


def _window_plan(start: int, length: int, key: str, spec: ViewSpec) -> tuple[np.ndarray, tuple]:
    idx, offset = plan_views(length, f"{key}@{start}", spec)[0]
    return idx + start, offset


def iter_windows(source: Path, key: str, spec: ViewSpec, w: int, s: int) -> Iterator[Window]:
    """The windows of one video file or frame folder, in order (``w``, ``s`` in frames).

    Raises:
        DataError: the source is missing, holds no frames, or a frame does not decode.
    """
    spec = ViewSpec(
        spec.split,
        spec.num_frames,
        1,
        spec.sampling,
        spec.crop_mode,
        spec.resize,
        spec.crop,
        spec.seed,
    )
    if source.is_dir():
        files = list_frame_files(source)
        n_known: int | None = len(files)
        frames: Iterator[np.ndarray | None] = (None for _ in files)  # read lazily below
    else:
        n_known = None
        frames = iter(iter_video_frames(source))
    kept: dict[int, np.ndarray] = {}  # frame index -> resized uint8 [R, R, 3]
    plans: dict[int, tuple[np.ndarray, tuple]] = {}  # open windows: start -> (indices, offset)
    next_start, n = 0, 0
    for i, frame in enumerate(frames):
        n = i + 1
        while next_start <= i:  # windows starting at or before this frame are open
            plans[next_start] = _window_plan(next_start, w, key, spec)
            next_start += s
        wanted = i < w or any(i in set(p[0].tolist()) for a, p in plans.items() if a + w > i)
        if wanted:
            img = frame if frame is not None else read_frame_files([files[i]])[0]
            kept[i] = resize_frames_hwc([img], spec.resize)[0]
        done = [a for a in plans if a + w - 1 == i]
        for a in done:
            idx, offset = plans.pop(a)
            yield _clip(kept, idx, offset, spec, a, a + w)
        if i >= w - 1:  # past the first window: keep only what open windows still need
            need = {int(j) for a, p in plans.items() for j in p[0]}
            for j in [j for j in kept if j not in need]:
                del kept[j]
    if n == 0:
        raise DataError(f"{source}: no frame decodes (truncated or corrupt video)")
    if n_known is not None and n != n_known:
        raise DataError(f"internal: read {n} of {n_known} frames of {source}")
    if n < w:  # shorter than one window: the whole video is the one window
        idx, offset = _window_plan(0, n, key, spec)
        yield _clip(kept, idx, offset, spec, 0, n)


def _clip(
    kept: dict[int, np.ndarray], idx: np.ndarray, offset: tuple, spec: ViewSpec, a: int, b: int
) -> Window:
    frames = [kept[int(j)] for j in idx]  # T x [R, R, 3]
    return Window(a, b, crop_frames_hwc(frames, spec.crop, offset).unsqueeze(0))


def merge_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Runs of consecutive windows of one video with the same top class (:data:`RUN_COLUMNS`).

    ``table`` is :func:`fsar_cli.prediction.predict`'s table with windows; failed rows break
    nothing (they have no windows). A run spans from its first window's start to its last
    window's end; ``mean_prob`` is the mean top-class probability over its windows.
    """
    rows: list[dict[str, object]] = []
    ok = table[table["status"] == "ok"] if len(table) else table
    for (query, key), group in ok.groupby(["query", "key"], sort=False):
        run: dict[str, object] | None = None
        probs: list[float] = []
        for r in group.itertuples(index=False):
            if run is not None and r.label == run["label"]:
                run.update(end_frame=int(r.end_frame), end_s=float(r.end_s), windows=len(probs) + 1)
                probs.append(float(r.prob))
                run["mean_prob"] = float(np.mean(probs))
                continue
            run = {
                "query": query,
                "key": key,
                "label": r.label,
                "start_frame": int(r.start_frame),
                "end_frame": int(r.end_frame),
                "start_s": float(r.start_s),
                "end_s": float(r.end_s),
                "windows": 1,
                "mean_prob": float(r.prob),
            }
            probs = [float(r.prob)]
            rows.append(run)
    return pd.DataFrame(rows, columns=RUN_COLUMNS)
