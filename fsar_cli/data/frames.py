"""Reading frames: video files through OpenCV, frame folders of JPEGs, and temporal sampling.

Frame counts always come from what actually decodes, never from the container's declared count
(real files declare frames they do not contain); the declared count is only a guess of which frames
to keep, checked against the decoded count (:func:`scan_video`). Frames are RGB uint8 ``[H, W, 3]``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = [
    "VIDEO_EXTS",
    "FRAME_EXTS",
    "iter_video_frames",
    "scan_video",
    "read_planned_frames",
    "decode_video",
    "list_frame_files",
    "read_frame_files",
    "read_frames",
    "count_frames",
    "sample_indices",
    "is_frame_folder",
]

VIDEO_EXTS = (
    ".mp4",
    ".avi",
    ".webm",
    ".mkv",
    ".mov",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
)
FRAME_EXTS = (".jpg", ".jpeg", ".png")
Convert = Callable[[np.ndarray], Any]  # what becomes of a kept RGB frame (a resize, say)
_NUM = re.compile(r"(\d+)")


def _cv2():  # imported lazily: the CLI's --help must not pay for OpenCV
    import cv2

    cv2.setNumThreads(1)
    return cv2


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a video file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot be read (permission denied); fix its permissions")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes); re-download or remove it")


@contextmanager
def _video(path: Path) -> Iterator[tuple[Any, Any]]:
    """(cv2, an open cv2.VideoCapture) of ``path``, released on exit."""
    _check_readable(path)
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DataError(f"{path}: not a video OpenCV can open (corrupt or unsupported codec)")
        yield cv2, cap
    finally:
        cap.release()


def iter_video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Yield every decodable frame of a video as RGB uint8 ``[H, W, 3]``, in order.

    Raises:
        DataError: the file is missing, empty, unreadable, or not a video OpenCV can open.
    """
    with _video(Path(path)) as (cv2, cap):
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def scan_video(
    path: str | Path,
    wanted_for: Callable[[int], Collection[int]],
    convert: Convert | None = None,
    to_end: bool = True,
) -> tuple[int, dict[int, Any]]:
    """Decode a video front to back, keeping only some frames.

    Every frame is decoded (codecs decode in order) but only the kept ones are converted to RGB
    (and passed through ``convert``, e.g. a resize, as they arrive, so memory holds the kept frames
    only): a fraction of the cost of :func:`iter_video_frames` when a few frames of many are kept.

    Args:
        wanted_for: the 0-based indices to keep, given the frame count the container declares
            (0 when it declares none). The declaration can be wrong: compare the returned count.
        convert: applied to each kept RGB uint8 ``[H, W, 3]`` frame; None keeps the frame.
        to_end: count every frame that decodes; False stops after the last wanted frame.

    Returns:
        (frames scanned, ``{index: converted frame}`` of the wanted frames that decoded). With
        ``to_end`` the count is every frame that decodes, as :func:`count_frames` gives.

    Raises:
        DataError: the file is missing, empty, unreadable, or not a video OpenCV can open.
    """
    with _video(Path(path)) as (cv2, cap):
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        wanted = {int(i) for i in wanted_for(max(declared, 0))}
        last = max(wanted, default=-1)
        kept: dict[int, Any] = {}
        n = 0
        while (to_end or n <= last) and cap.grab():
            if n in wanted:
                ok, frame = cap.retrieve()
                if not ok or frame is None:  # as iter_video_frames: the decodable frames end here
                    break
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                kept[n] = convert(rgb) if convert is not None else rgb
            n += 1
        return n, kept


def read_planned_frames(
    path: str | Path, plan: Callable[[int], Collection[int]], *, convert: Convert | None = None
) -> tuple[int, dict[int, Any]]:
    """The frames ``plan(n)`` of a video, ``n`` being the number of frames that decode.

    One :func:`scan_video` pass, keeping the frames planned from the container's declared count;
    when the declaration was wrong (the decoded count plans other frames), a second pass up to the
    last planned frame. ``plan`` must be a pure function of the count (copy any random generator).

    Returns:
        (n, ``{index: converted frame}`` holding at least the frames of ``plan(n)``).

    Raises:
        DataError: the video does not open, no frame decodes, or a frame decodes only once.
    """
    plans: dict[int, set[int]] = {}  # by frame count: the declared one is usually the decoded one

    def planned(count: int) -> set[int]:
        if count not in plans:
            plans[count] = {int(i) for i in plan(count)} if count > 0 else set()
        return plans[count]

    n, kept = scan_video(path, planned, convert)
    if n == 0:
        raise DataError(f"{path}: no frame decodes (truncated or corrupt video)")
    need = planned(n)
    if not need <= kept.keys():
        _, kept = scan_video(path, lambda _: need, convert, to_end=False)
        if not need <= kept.keys():
            raise DataError(f"{path}: frame {min(need - kept.keys())} decoded once but not twice")
    return n, kept


def decode_video(path: str | Path) -> list[np.ndarray]:
    """All decodable frames of a video (RGB uint8). Raises DataError if none decode."""
    frames = list(iter_video_frames(path))
    if not frames:
        raise DataError(f"{path}: no frame decodes (truncated or corrupt video)")
    return frames


def _frame_sort_key(p: Path) -> tuple[int, str]:
    m = _NUM.findall(p.stem)
    return (int(m[-1]) if m else -1, p.name)


def is_frame_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any(p.suffix.lower() in FRAME_EXTS for p in path.iterdir())


def list_frame_files(folder: str | Path) -> list[Path]:
    """Image files of a frame folder in frame order (by the number in the name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: frame folder does not exist; run `fsar extract` first")
    files = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTS and p.is_file()]
    if not files:
        raise DataError(f"{folder}: frame folder holds no .jpg/.png frames")
    return sorted(files, key=_frame_sort_key)


def read_frame_files(files: list[Path]) -> list[np.ndarray]:
    """Read image files as RGB uint8 arrays; an unreadable image is a DataError naming it."""
    cv2 = _cv2()
    out = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"{f}: image does not decode (corrupt or truncated file)")
        out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return out


def count_frames(source: str | Path) -> int:
    """Frames available in a frame folder, or frames that actually decode in a video file."""
    source = Path(source)
    if source.is_dir():
        return len(list_frame_files(source))
    return scan_video(source, lambda _: ())[0]


def read_frames(
    source: str | Path, indices: list[int] | np.ndarray | None = None
) -> list[np.ndarray]:
    """Frames ``indices`` (0-based) of a frame folder or video file; all frames if None.

    For a video the file is decoded once, up to the last wanted frame (sequential decoding is what
    codecs do well), and only the wanted frames are converted, so repeated indices cost nothing.
    """
    source = Path(source)
    if source.is_dir():
        files = list_frame_files(source)
        if indices is None:
            return read_frame_files(files)
        idx = [int(i) for i in indices]
        if idx and max(idx) >= len(files):
            raise DataError(f"{source}: frame {max(idx)} asked for but only {len(files)} exist")
        uniq = sorted(set(idx))
        loaded = dict(zip(uniq, read_frame_files([files[i] for i in uniq]), strict=True))
        return [loaded[i] for i in idx]
    if indices is None:
        return decode_video(source)
    idx = [int(i) for i in indices]
    wanted = set(idx)
    n, kept = scan_video(source, lambda _: wanted, to_end=False)
    missing = wanted - kept.keys()
    if missing:
        raise DataError(f"{source}: frame {max(missing)} asked for but only {n} decode")
    return [kept[i] for i in idx]


def sample_indices(
    n_available: int, num_frames: int, mode: str = "center", rng: np.random.Generator | None = None
) -> np.ndarray:
    """Pick ``num_frames`` frame indices from ``n_available``: one per segment of equal length.

    ``center`` takes the middle frame of each segment (deterministic); ``random`` a uniformly random
    frame inside each segment (the reference's sampling for SSv2, UCF101 and HMDB51, train and
    test).
    Videos shorter than ``num_frames`` repeat frames (segments shorter than one frame).

    Returns:
        int64 [num_frames], non-decreasing, each in ``[0, n_available)``.
    """
    if n_available <= 0:
        raise DataError(f"cannot sample {num_frames} frames from a video with {n_available} frames")
    if mode not in ("center", "random"):
        raise DataError(f"unknown sampling mode {mode!r}; use 'center' or 'random'")
    edges = np.linspace(0.0, float(n_available), num_frames + 1)  # segment boundaries
    lo, hi = edges[:-1], edges[1:]
    if mode == "center":
        pos = (lo + hi) / 2.0
    else:
        if rng is None:
            raise DataError("random sampling needs a seeded numpy Generator (rng)")
        pos = lo + rng.random(num_frames) * (hi - lo)
    idx = np.floor(pos).astype(np.int64)
    return np.clip(idx, 0, n_available - 1)
