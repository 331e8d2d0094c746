"""Spotting: sliding windows over a long video, each classified as its own clip.

``--window W --stride S`` (seconds) cut a video into windows of ``W`` seconds starting every
``S`` seconds; windows end at or before the last frame (a video shorter than one window is one
window). Each window becomes a clip exactly as ``fsar cache`` makes one from a video: ``T`` frames
sampled one per equal segment of the window (:func:`fsar_cli.data.preprocess.plan_views`, with
the window's own key ``<video key>@<first frame>`` for random sampling), resized and centre-cropped
with :mod:`fsar_cli.data.preprocess`.

The video is decoded once, front to back, and only the frames some window samples are kept (each
resized as it arrives), so memory is bounded by the window, not by the video's length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.frames import iter_video_frames, list_frame_files, read_frame_files
from ..data.preprocess import ViewSpec, crop_frames, plan_views, resize_frames
from ..errors import DataError

__all__ = ["Window", "window_frames", "iter_windows", "source_fps"]


@dataclass(frozen=True)
class Window:
    """Frames ``[start, end)`` of a video; ``frames`` uint8 [1, T, 3, C, C] (one view)."""

    start: int
    end: int
    frames: torch.Tensor


def window_frames(window: float, stride: float, fps: float) -> tuple[int, int]:
    """Window and stride in seconds -> in frames (at least 1 each)."""
    if window <= 0 or stride <= 0:
        raise DataError(f"--window {window} / --stride {stride}: both must be positive seconds")
    if not fps or fps <= 0 or not np.isfinite(fps):
        raise DataError("the frame rate is unknown: pass --fps (frame folders have none)")
    return max(1, int(round(window * fps))), max(1, int(round(stride * fps)))


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
    kept: dict[int, torch.Tensor] = {}  # frame index -> resized uint8 [1, 3, R, R]
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
            kept[i] = resize_frames([img], spec.resize)
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
    kept: dict[int, torch.Tensor], idx: np.ndarray, offset: tuple, spec: ViewSpec, a: int, b: int
) -> Window:
    rows = torch.cat([kept[int(j)] for j in idx])  # [T, 3, R, R]
    return Window(a, b, crop_frames(rows, spec.crop, offset).unsqueeze(0).contiguous())
