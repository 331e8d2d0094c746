"""A synthetic few-shot action dataset whose classes can only be told apart by frame order.

Every class is one half of a *reversed pair*: "a shape moving from left to right" and "a shape
moving from right to left" are the same frames in opposite order, as are growing and shrinking,
clockwise and anticlockwise circles, and so on. A method that averages frames (a frame-mean
prototype) sees the two members of a pair as one class; a temporal matcher (OTAM) separates them.
Each video varies in nuisance: shape, colour, size, speed, start offset, a shift of the whole path,
background and pixel noise.

The dataset is laid out like UCF101 / HMDB51, so it goes through the same extract -> cache -> train
-> eval path as a real benchmark::

    OUT/videos/<ClassFolder>/<ClassFolder>_<n>.avi   MJPG video files (RGB, 64x64, 16 frames)
    OUT/splits/{train,val,test}_few_shot.txt         ``train3//videos/<ClassFolder>/<file>.avi``
    OUT/classes.json                                 {"train": [...], "val": [...], "test": [...]}
    OUT/synth.json                                   the settings that made it (used for reuse)

Base (train), val and novel (test) classes are disjoint; both members of a pair always sit in the
same split. Rendering is seeded: the same settings give byte-identical split files and identical
frames. MJPG compresses each frame on its own, so a decoded video of a reversed class is exactly the
decoded frames of its twin in reverse order.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import atomic
from ..errors import DataError

__all__ = [
    "MotionPair",
    "SynthClass",
    "ClipParams",
    "SynthResult",
    "CATALOGUE",
    "PALETTE",
    "SHAPES",
    "synth_classes",
    "sample_params",
    "render_clip",
    "render_still",
    "render_dataset",
]

log = logging.getLogger(__name__)

SYNTH_FORMAT = "fsar-synth/1"

#: Object colours (RGB); backgrounds stay dark and greyish so every colour keeps its contrast.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 200, 60),
    "blue": (55, 90, 240),
    "yellow": (235, 220, 40),
    "purple": (170, 60, 215),
    "orange": (245, 140, 25),
    "cyan": (40, 210, 220),
    "white": (240, 240, 240),
}
#: Shapes, each the unit ball of a norm: circle (L2), square (L-inf), diamond (L1).
SHAPES = ("circle", "square", "diamond")

_L, _C, _R = 0.2, 0.5, 0.8  # x of the left column, centre, right column (fractions of the width)
_T, _M, _B = 0.2, 0.5, 0.8  # y of the top row, middle, bottom row


def _circle(clockwise: bool = True, n: int = 24) -> tuple[tuple[float, float, float], ...]:
    # Starts at the top; with y pointing down, increasing angle moves right first = clockwise.
    ang = np.linspace(0.0, 2.0 * np.pi, n + 1)
    sign = 1.0 if clockwise else -1.0
    return tuple((0.5 + 0.28 * sign * np.sin(a), 0.5 - 0.28 * np.cos(a), 1.0) for a in ang)


@dataclass(frozen=True)
class MotionPair:
    """A path and its reverse: waypoints ``(x, y, scale)`` in fractions of the frame."""

    folder: str  # class folder of the forward motion
    name: str  # plain-language class name of the forward motion
    rev_folder: str
    rev_name: str
    waypoints: tuple[tuple[float, float, float], ...]


def _p(*pts: tuple[float, ...]) -> tuple[tuple[float, float, float], ...]:
    return tuple((float(p[0]), float(p[1]), float(p[2]) if len(p) > 2 else 1.0) for p in pts)


#: All motions, in split order: the first pairs go to test, the next to val, the rest to train.
# fmt: off
CATALOGUE: tuple[MotionPair, ...] = (
    # -- test (novel) pairs
    MotionPair("LeftToRight", "a shape moving from left to right",
               "RightToLeft", "a shape moving from right to left", _p((_L, _M), (_R, _M))),
    MotionPair("TopToBottom", "a shape moving from top to bottom",
               "BottomToTop", "a shape moving from bottom to top", _p((_C, _T), (_C, _B))),
    MotionPair("Growing", "a shape growing in the centre",
               "Shrinking", "a shape shrinking in the centre", _p((_C, _M, 0.55), (_C, _M, 1.7))),
    MotionPair("CircleClockwise", "a shape going round in a clockwise circle",
               "CircleAnticlockwise", "a shape going round in an anticlockwise circle",
               _circle(clockwise=True)),
    MotionPair("RightThenDown", "a shape moving right and then down",
               "UpThenLeft", "a shape moving up and then left", _p((_L, _T), (_R, _T), (_R, _B))),
    # -- val pairs
    MotionPair("TopLeftToBottomRight", "a shape moving from the top left to the bottom right",
               "BottomRightToTopLeft", "a shape moving from the bottom right to the top left",
               _p((_L, _T), (_R, _B))),
    MotionPair("LeftToRightAlongTop", "a shape moving from left to right along the top",
               "RightToLeftAlongTop", "a shape moving from right to left along the top",
               _p((_L, _T), (_R, _T))),
    MotionPair("RightWhileGrowing", "a shape moving right while growing",
               "LeftWhileShrinking", "a shape moving left while shrinking",
               _p((_L, _M, 0.6), (_R, _M, 1.5))),
    # -- train (base) pairs
    MotionPair("BottomLeftToTopRight", "a shape moving from the bottom left to the top right",
               "TopRightToBottomLeft", "a shape moving from the top right to the bottom left",
               _p((_L, _B), (_R, _T))),
    MotionPair("LeftToRightAlongBottom", "a shape moving from left to right along the bottom",
               "RightToLeftAlongBottom", "a shape moving from right to left along the bottom",
               _p((_L, _B), (_R, _B))),
    MotionPair("DownTheLeftSide", "a shape moving down the left side",
               "UpTheLeftSide", "a shape moving up the left side", _p((_L, _T), (_L, _B))),
    MotionPair("DownTheRightSide", "a shape moving down the right side",
               "UpTheRightSide", "a shape moving up the right side", _p((_R, _T), (_R, _B))),
    MotionPair("DownThenRight", "a shape moving down and then right",
               "LeftThenUp", "a shape moving left and then up", _p((_L, _T), (_L, _B), (_R, _B))),
    MotionPair("DownWhileShrinking", "a shape moving down while shrinking",
               "UpWhileGrowing", "a shape moving up while growing",
               _p((_C, _T, 1.5), (_C, _B, 0.6))),
    MotionPair("LeftToCentre", "a shape moving from the left to the centre",
               "CentreToLeft", "a shape moving from the centre to the left",
               _p((_L, _M), (_C, _M))),
    MotionPair("CentreToTop", "a shape moving from the centre to the top",
               "TopToCentre", "a shape moving from the top to the centre",
               _p((_C, _M), (_C, _T))),
    # -- spare pairs (used when a split asks for more classes)
    MotionPair("DipLeftToRight", "a shape dipping down and up from left to right",
               "DipRightToLeft", "a shape dipping down and up from right to left",
               _p((_L, _T), (_C, _B), (_R, _T))),
    MotionPair("CentreToBottomRight", "a shape moving from the centre to the bottom right",
               "BottomRightToCentre", "a shape moving from the bottom right to the centre",
               _p((_C, _M), (_R, _B))),
)
# fmt: on


@dataclass(frozen=True)
class SynthClass:
    """One class: a motion pair played forwards or backwards."""

    name: str
    folder: str
    pair: int  # index into CATALOGUE
    reverse: bool


def synth_classes(
    n_train_pairs: int = 8, n_val_pairs: int = 3, n_test_pairs: int = 5
) -> dict[str, list[SynthClass]]:
    """The classes of each split; a pair's two members are neighbours (ids 2p and 2p+1).

    Raises:
        DataError: more pairs asked for than the catalogue holds, or a split with no pair.
    """
    counts = {"test": n_test_pairs, "val": n_val_pairs, "train": n_train_pairs}
    if min(counts.values()) < 1 or sum(counts.values()) > len(CATALOGUE):
        raise DataError(
            f"synthetic splits need 1+ motion pairs each and at most {len(CATALOGUE)} in total; "
            f"got train {n_train_pairs}, val {n_val_pairs}, test {n_test_pairs}"
        )
    out: dict[str, list[SynthClass]] = {}
    start = 0
    for split in ("test", "val", "train"):
        classes = []
        for p in range(start, start + counts[split]):
            m = CATALOGUE[p]
            classes.append(SynthClass(m.name, m.folder, p, False))
            classes.append(SynthClass(m.rev_name, m.rev_folder, p, True))
        out[split] = classes
        start += counts[split]
    return {s: out[s] for s in ("train", "val", "test")}


# --------------------------------------------------------------------------- nuisance and drawing


@dataclass(frozen=True)
class ClipParams:
    """Nuisance of one video; rendering is a pure function of these and the class."""

    shape: str = "circle"
    colour: tuple[int, int, int] = PALETTE["red"]
    radius: float = 0.10  # fraction of the frame side, at path scale 1
    start: float = 0.0  # fraction of the clip before the motion starts
    duration: float = 1.0  # fraction of the clip the motion takes (speed = 1 / duration)
    shift: tuple[float, float] = (0.0, 0.0)  # offset of the whole path (fractions)
    background: tuple[int, int, int] = (40, 40, 40)
    gradient: tuple[float, float, float] = (0.0, 0.0, 0.0)  # dx, dy direction and amplitude
    noise_std: float = 0.0
    noise_seed: int = 0


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in np.clip(values, 0, 255))
    return r, g, b


def sample_params(rng: np.random.Generator) -> ClipParams:
    """Draw the nuisance of one video (also used for the encoder's training frames)."""
    colour = np.array(PALETTE[str(rng.choice(list(PALETTE)))]) + rng.integers(-15, 16, 3)
    duration = float(rng.uniform(0.55, 1.0))
    grey = rng.integers(10, 85)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return ClipParams(
        shape=str(rng.choice(SHAPES)),
        colour=_rgb(colour),
        radius=float(rng.uniform(0.07, 0.13)),
        start=float(rng.uniform(0.0, 1.0 - duration)),
        duration=duration,
        shift=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.06))),
        background=_rgb(grey + rng.integers(-12, 13, 3)),
        gradient=(float(np.cos(angle)), float(np.sin(angle)), float(rng.uniform(0.0, 30.0))),
        noise_std=float(rng.uniform(0.0, 8.0)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _background(params: ClipParams, size: int) -> np.ndarray:
    """float32 [H, W, 3]: a flat colour plus a linear gradient."""
    g = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    dx, dy, amp = params.gradient
    ramp = amp * (dx * g[None, :] + dy * g[:, None])  # [H, W]
    return np.asarray(params.background, np.float32)[None, None, :] + ramp[:, :, None]


def _paint(
    canvas: np.ndarray, shape: str, colour: tuple[int, int, int], x: float, y: float, r: float
) -> None:
    """Paint an anti-aliased shape centred at (x, y) with radius r (fractions) onto ``canvas``."""
    size = canvas.shape[0]
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    ax, ay = np.abs(c[None, :] - x), np.abs(c[:, None] - y)  # [H, W] distances to the centre
    if shape == "circle":
        dist = np.sqrt(ax * ax + ay * ay)
    elif shape == "square":
        dist = np.maximum(ax, ay) * 1.15  # a square of equal "radius" looks larger: shrink it
    elif shape == "diamond":
        dist = (ax + ay) * 0.8
    else:
        raise DataError(f"unknown synthetic shape {shape!r}; use one of {', '.join(SHAPES)}")
    alpha = np.clip((r - dist) * size + 0.5, 0.0, 1.0)[:, :, None]  # 1-pixel soft edge
    canvas *= 1.0 - alpha
    canvas += alpha * np.asarray(colour, np.float32)[None, None, :]


def _finish(canvas: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
    if noise is not None:
        canvas = canvas + noise
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_still(
    params: ClipParams, x: float, y: float, scale: float = 1.0, size: int = 64
) -> np.ndarray:
    """One frame: the object at (x, y) (fractions) with radius ``params.radius * scale``.

    Returns:
        uint8 RGB [size, size, 3].
    """
    canvas = _background(params, size)
    _paint(canvas, params.shape, params.colour, x, y, params.radius * scale)
    noise = np.random.default_rng(params.noise_seed).normal(0.0, params.noise_std, canvas.shape)
    return _finish(canvas, noise.astype(np.float32) if params.noise_std > 0 else None)


def _trajectory(waypoints: tuple[tuple[float, float, float], ...], u: np.ndarray) -> np.ndarray:
    """Points ``[len(u), 3]`` (x, y, scale) at path fractions ``u`` in [0, 1], by arc length."""
    w = np.asarray(waypoints, np.float64)
    seg = np.hypot(np.diff(w[:, 0]), np.diff(w[:, 1])) + 0.25 * np.abs(np.diff(w[:, 2]))
    cum = np.concatenate([[0.0], np.cumsum(seg)]) / seg.sum()
    return np.stack([np.interp(u, cum, w[:, k]) for k in range(3)], axis=1)


def render_clip(
    cls: SynthClass | MotionPair, params: ClipParams, *, num_frames: int = 16, size: int = 64
) -> np.ndarray:
    """Render one video of a class with the given nuisance.

    The reversed member of a pair is rendered as its twin's frames (noise included) in reverse
    order, so ``render_clip(fwd, p)[::-1]`` equals ``render_clip(rev, p)`` exactly.

    Args:
        cls: a :class:`SynthClass`, or a :class:`MotionPair` (played forwards).
        params: the nuisance of the video.
        num_frames: frames in the clip (>= 2).
        size: frame side in pixels.

    Returns:
        uint8 RGB [num_frames, size, size, 3].
    """
    if num_frames < 2 or size < 8:
        raise DataError(f"synthetic clips need >= 2 frames of >= 8 px; got {num_frames}, {size}")
    if isinstance(cls, SynthClass):
        pair, reverse = CATALOGUE[cls.pair], cls.reverse
    else:
        pair, reverse = cls, False
    t = np.arange(num_frames) / (num_frames - 1)
    u = np.clip((t - params.start) / params.duration, 0.0, 1.0)  # path fraction per frame
    pts = _trajectory(pair.waypoints, u)  # [T, 3]
    background = _background(params, size)
    rng = np.random.default_rng(params.noise_seed)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for i, (x, y, s) in enumerate(pts):
        canvas = background.copy()
        cx, cy = x + params.shift[0], y + params.shift[1]
        _paint(canvas, params.shape, params.colour, cx, cy, params.radius * s)
        noise = rng.normal(0.0, params.noise_std, canvas.shape).astype(np.float32)
        frames[i] = _finish(canvas, noise if params.noise_std > 0 else None)
    return frames[::-1].copy() if reverse else frames


# --------------------------------------------------------------------------- the dataset


@dataclass
class SynthResult:
    """What :func:`render_dataset` made (or found already made)."""

    root: Path
    split_dir: Path
    classes: dict[str, list[str]]  # split -> class names (index = class id)
    videos: dict[str, int]  # split -> number of videos
    settings: dict[str, object] = field(default_factory=dict)
    reused: bool = False


def _write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    import cv2  # lazily: `fsar --help` must not pay for OpenCV

    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise DataError(
            f"{path}: OpenCV cannot write MJPG .avi files here; reinstall opencv-python-headless"
        )
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 95)
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # RGB -> BGR
    finally:
        writer.release()


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def render_dataset(
    out: str | Path,
    *,
    seed: int = 0,
    videos_per_class: int = 16,
    num_frames: int = 16,
    size: int = 64,
    n_train_pairs: int = 8,
    n_val_pairs: int = 3,
    n_test_pairs: int = 5,
    fps: float = 8.0,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
) -> SynthResult:
    """Render the synthetic dataset into ``out`` (video files, split files, classes.json).

    If ``out`` already holds a dataset rendered with the same settings it is reused as is. The
    dataset is rendered into a temporary sibling folder and renamed into place, so ``out`` is never
    half written.

    Args:
        out: the dataset folder (created).
        seed: seed of every nuisance draw; the same settings give identical files.
        videos_per_class: videos rendered for every class.
        num_frames: frames per video.
        size: frame side in pixels.
        n_train_pairs, n_val_pairs, n_test_pairs: reversed pairs (2 classes each) per split.
        fps: frame rate written into the files.
        overwrite: replace an existing folder made with other settings (or not by ``fsar synth``).
        on_progress: ``on_progress(n=1, *, total=None, label=None)``, once per video.

    Returns:
        A :class:`SynthResult`.

    Raises:
        DataError: bad sizes, or ``out`` holds something else and ``overwrite`` is False.
    """
    out = Path(out)
    if videos_per_class < 2:
        raise DataError(
            f"videos_per_class must be >= 2 (a support and a query); got {videos_per_class}"
        )
    classes = synth_classes(n_train_pairs, n_val_pairs, n_test_pairs)
    settings: dict[str, object] = {
        "format": SYNTH_FORMAT,
        "seed": seed,
        "videos_per_class": videos_per_class,
        "num_frames": num_frames,
        "size": size,
        "fps": fps,
        "pairs": {"train": n_train_pairs, "val": n_val_pairs, "test": n_test_pairs},
        "codec": "MJPG",
    }
    names = {s: [c.name for c in cs] for s, cs in classes.items()}
    counts = {s: len(cs) * videos_per_class for s, cs in classes.items()}
    result = SynthResult(out, out / "splits", names, counts, settings)
    manifest = out / "synth.json"
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("settings") == settings:
            log.info("%s already holds this synthetic dataset; reusing it", out)
            result.reused = True
            return result
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(
            f"{out} already exists and was not rendered with these settings; pass --overwrite "
            "(overwrite=True) to replace it, or choose another folder"
        )
    if num_frames < 2 or size < 8:
        raise DataError(f"synthetic clips need >= 2 frames of >= 8 px; got {num_frames}, {size}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "splits").mkdir(parents=True)
    total = sum(result.videos.values())
    if on_progress is not None:
        on_progress(0, total=total, label="rendering")
    try:
        for split_no, (split, split_classes) in enumerate(classes.items()):
            lines = []
            for cid, cls in enumerate(split_classes):
                folder = tmp / "videos" / cls.folder
                folder.mkdir(parents=True, exist_ok=True)
                for v in range(videos_per_class):
                    rng = np.random.default_rng([seed, split_no, cid, v])
                    frames = render_clip(cls, sample_params(rng), num_frames=num_frames, size=size)
                    name = f"{cls.folder}_{v + 1:03d}.avi"
                    _write_video(folder / name, frames, fps)
                    lines.append(f"{split}{cid}//videos/{cls.folder}/{name}")
                    if on_progress is not None:
                        on_progress(1, label=split)
            _write_text(tmp / "splits" / f"{split}_few_shot.txt", "\n".join(lines) + "\n")
        note = (
            "synthetic dataset rendered by `fsar synth`: a shape moving along a path; each class "
            "has a twin that is the same frames in reverse order (ids 2p and 2p+1 of a split)"
        )
        _write_text(tmp / "classes.json", json.dumps({**names, "_note": note}, indent=1) + "\n")
        pairs = {s: [[c.folder, c.pair, c.reverse] for c in cs] for s, cs in classes.items()}
        body = {"settings": settings, "classes": pairs}
        _write_text(tmp / "synth.json", json.dumps(body, indent=1) + "\n")
        atomic.swap_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("rendered %d videos into %s", total, out)
    return result
