"""A synthetic few-shot action dataset: shapes moving between places, in time-reversed pairs.

Every class is "a shape moving from <place> to <place>" on a 3x3 grid ("from the top left to the
top right"), and every class is one half of a *reversed pair*: its twin is the same frames in
opposite order ("from the top right to the top left"). A method that averages frames (a
frame-averaged prototype) sees the two members of a pair as one class; a temporal matcher (OTAM)
separates them. Each video varies in nuisance: shape, colour, size, speed, start offset,
background and pixel noise, and two things that make a single example an unreliable prototype:
camera jitter (the whole path sits up to ``SHIFT`` off its place, so the test classes "from the
top left to the top right" and "from the left to the right" overlap) and, in a share ``OCCLUDED``
of the videos, a static box that hides much of the path. The class name says where the path runs
whatever one video shows; that is what CLIP-FSAR's class-text token adds to a 1-shot prototype.

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

SYNTH_FORMAT = "fsar-synth/2"

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

#: Camera jitter: a video's whole path sits up to this far (fraction of the frame) off its place,
#: uniformly in x and y, so one video does not say exactly where its class's path runs.
SHIFT = 0.12
#: Share of the videos in which a static box (45-75% of the frame on each side) hides much of the
#: path: one such support says little about its class; the class name still does.
OCCLUDED = 0.35

_L, _C, _R = 0.2, 0.5, 0.8  # x of the left column, centre, right column (fractions of the width)
_T, _M, _B = 0.2, 0.5, 0.8  # y of the top row, middle, bottom row


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


#: The 3x3 grid of places a motion starts and ends at: (name in class names, folder word, x, y).
GRID: tuple[tuple[str, str, float, float], ...] = (
    ("the top left", "TopLeft", _L, _T),
    ("the top", "Top", _C, _T),
    ("the top right", "TopRight", _R, _T),
    ("the left", "Left", _L, _M),
    ("the centre", "Centre", _C, _M),
    ("the right", "Right", _R, _M),
    ("the bottom left", "BottomLeft", _L, _B),
    ("the bottom", "Bottom", _C, _B),
    ("the bottom right", "BottomRight", _R, _B),
)


def _straight(a: int, b: int) -> MotionPair:
    """The motion from grid place ``a`` to grid place ``b`` (and back, its twin)."""
    (na, fa, xa, ya), (nb, fb, xb, yb) = GRID[a], GRID[b]
    return MotionPair(
        f"{fa}To{fb}",
        f"a shape moving from {na} to {nb}",
        f"{fb}To{fa}",
        f"a shape moving from {nb} to {na}",
        _p((xa, ya), (xb, yb)),
    )


def _catalogue() -> tuple[MotionPair, ...]:
    # Test pairs: the three rows and two of the columns, end to end, so that a class and the
    # classes beside it differ only in where the path runs; val: the third column and the
    # diagonals; train: every other straight motion between two grid places (28 pairs).
    test = [(0, 2), (3, 5), (6, 8), (0, 6), (1, 7)]
    val = [(2, 8), (0, 8), (2, 6)]
    chosen = test + val
    rest = [(a, b) for a in range(9) for b in range(a + 1, 9) if (a, b) not in chosen]
    return tuple(_straight(a, b) for a, b in chosen + rest)


#: All motions, in split order: the first 5 pairs go to test, the next 3 to val, the rest to train.
#: Every class is "a shape moving from <place> to <place>" on a 3x3 grid; its twin goes back.
CATALOGUE: tuple[MotionPair, ...] = _catalogue()


@dataclass(frozen=True)
class SynthClass:
    """One class: a motion pair played forwards or backwards."""

    name: str
    folder: str
    pair: int  # index into CATALOGUE
    reverse: bool


def synth_classes(
    n_train_pairs: int = 28, n_val_pairs: int = 3, n_test_pairs: int = 5
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
    # a static box in front of the object: (x0, y0, x1, y1) fractions, or None
    occluder: tuple[float, float, float, float] | None = None
    occluder_colour: tuple[int, int, int] = (90, 90, 90)


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
        shift=(float(rng.uniform(-SHIFT, SHIFT)), float(rng.uniform(-SHIFT, SHIFT))),
        background=_rgb(grey + rng.integers(-12, 13, 3)),
        gradient=(float(np.cos(angle)), float(np.sin(angle)), float(rng.uniform(0.0, 30.0))),
        noise_std=float(rng.uniform(0.0, 8.0)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
        occluder=_occluder(rng),
        occluder_colour=_rgb(rng.integers(60, 140) + rng.integers(-10, 11, 3)),
    )


def _occluder(rng: np.random.Generator) -> tuple[float, float, float, float] | None:
    """A box hiding much of the frame, in a share ``OCCLUDED`` of the videos."""
    w, h = rng.uniform(0.45, 0.75, 2)  # drawn for every video: the draws that follow stay put
    x0, y0 = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
    if rng.uniform() >= OCCLUDED:
        return None
    return (float(x0), float(y0), float(x0 + w), float(y0 + h))


def _background(params: ClipParams, size: int) -> np.ndarray:
    """float32 [H, W, 3]: a flat colour plus a linear gradient."""
    g = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    dx, dy, amp = params.gradient
    ramp = amp * (dx * g[None, :] + dy * g[:, None])  # [H, W]
    return np.asarray(params.background, np.float32)[None, None, :] + ramp[:, :, None]


def _paint(
    canvas: np.ndarray,
    shape: str,
    colour: tuple[int, int, int],
    x: np.ndarray,
    y: np.ndarray,
    r: np.ndarray,
) -> None:
    """Paint anti-aliased shapes onto frames: canvas ``[T, H, W, 3]``, centres and radii ``[T]``.

    Frame t gets the shape centred at ``(x[t], y[t])`` with radius ``r[t]`` (fractions).
    """
    size = canvas.shape[1]
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y, r = (np.asarray(v, np.float32)[:, None, None] for v in (x, y, r))  # [T, 1, 1]
    ax, ay = np.abs(c[None, None, :] - x), np.abs(c[None, :, None] - y)  # [T, 1, W], [T, H, 1]
    if shape == "circle":
        dist = np.sqrt(ax * ax + ay * ay)
    elif shape == "square":
        dist = np.maximum(ax, ay) * 1.15  # a square of equal "radius" looks larger: shrink it
    elif shape == "diamond":
        dist = (ax + ay) * 0.8
    else:
        raise DataError(f"unknown synthetic shape {shape!r}; use one of {', '.join(SHAPES)}")
    alpha = np.clip((r - dist) * size + 0.5, 0.0, 1.0)[..., None]  # [T, H, W, 1], soft edge
    canvas *= 1.0 - alpha
    canvas += alpha * np.asarray(colour, np.float32)


def _box(
    canvas: np.ndarray, box: tuple[float, float, float, float], colour: tuple[int, int, int]
) -> None:
    """Paint an opaque box ``(x0, y0, x1, y1)`` (fractions) onto frames ``[T, H, W, 3]``."""
    size = canvas.shape[1]
    x0, y0, x1, y1 = (int(round(v * size)) for v in box)
    canvas[:, y0:y1, x0:x1] = np.asarray(colour, np.float32)


def _finish(canvas: np.ndarray, params: ClipParams) -> np.ndarray:
    """Add the video's pixel noise and round to uint8 (same shape)."""
    if params.noise_std > 0:
        rng = np.random.default_rng(params.noise_seed)
        noise = rng.standard_normal(canvas.shape, dtype=np.float32)
        noise *= np.float32(params.noise_std)
        canvas = canvas + noise
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_still(
    params: ClipParams, x: float, y: float, scale: float = 1.0, size: int = 64
) -> np.ndarray:
    """One frame: the object at (x, y) (fractions) with radius ``params.radius * scale``.

    Returns:
        uint8 RGB [size, size, 3].
    """
    canvas = _background(params, size)[None].copy()  # [1, H, W, 3]
    r = params.radius * scale
    _paint(canvas, params.shape, params.colour, np.array([x]), np.array([y]), np.array([r]))
    return _finish(canvas, params)[0]


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
    canvas = np.repeat(_background(params, size)[None], num_frames, axis=0)  # [T, H, W, 3]
    xs, ys = pts[:, 0] + params.shift[0], pts[:, 1] + params.shift[1]
    _paint(canvas, params.shape, params.colour, xs, ys, params.radius * pts[:, 2])
    if params.occluder is not None:
        _box(canvas, params.occluder, params.occluder_colour)
    frames = _finish(canvas, params)
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
    n_train_pairs: int = 28,
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
