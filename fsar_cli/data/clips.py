"""Episodes of raw frames, decoded on the fly, for end-to-end fine-tuning (train.mode: finetune).

Each item of :class:`EpisodeClips` is one training episode: the frames of its ``W*K`` support and
``W*Q`` query videos, sampled and cropped as the reference does in training (METHOD.md section 1):
``T`` frames, one uniformly random frame per equal segment (``features.sampling.train``), every
frame resized to exactly ``resize x resize``, one random ``crop x crop`` crop shared by the frames
of a clip. Frames stay uint8 (``[W*(K+Q), T, 3, crop, crop]``, 4x less to move than float32);
scaling and CLIP's mean/std happen on the accelerator
(:func:`fsar_cli.data.preprocess.normalize`).

Kinetics (the reference's ``SUPPORT_QUERY_DIFF``, set in its Kinetics-100 configs only): query clips
are also flipped horizontally with probability 0.5 and colour-jittered once per clip (brightness,
contrast and saturation factors uniform in [0.5, 1.5], hue shift uniform in [-0.25, 0.25], applied
in a random order, preceded by a conversion to grey with probability 0.3; the reference's
``finetune.yaml`` values with ``CONSISTENT: true``). The reference's random erasing is not applied.
:func:`default_query_augment` switches this on for the ``kinetics100`` recipe (or any recipe whose
``dataset`` names Kinetics).

Random draws come from ``(seed, episode index, slot)`` alone (:func:`clip_rng`), never from a global
generator, so the frames of an episode are the same in any worker process, with any number of
workers, and after a resume.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..episodes import EpisodeSampler
from ..errors import DataError, FsarError
from ..recipe import Recipe
from .frames import list_frame_files, read_frame_files, read_planned_frames, sample_indices
from .preprocess import crop_frames_hwc, crop_offset, resize_frames_hwc
from .sources import locate
from .splits import SplitEntry, load_split

__all__ = [
    "ClipSpec",
    "EpisodeClips",
    "VideoClips",
    "clip_rng",
    "load_clip",
    "augment_query",
    "split_sources",
    "default_query_augment",
    "JITTER",
]

#: The reference's colour jitter (``configs/pool/run/training/finetune.yaml``): factor ranges and
#: the probability of a conversion to grey.
JITTER = {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.25, "grayscale": 0.3}


@dataclass(frozen=True)
class ClipSpec:
    """How one video becomes a clip of ``num_frames`` uint8 frames."""

    num_frames: int = 8
    resize: int = 256
    crop: int = 224
    sampling: str = "random"  # temporal: random | center
    crop_mode: str = "random"  # spatial: random | center
    query_augment: bool = False  # Kinetics: flip + colour jitter on queries
    seed: int = 0


def default_query_augment(recipe: Recipe) -> bool:
    """Whether the reference augments query clips for this recipe (Kinetics only)."""
    return recipe.name == "kinetics100" or "kinetics" in recipe.dataset.lower()


def clip_rng(seed: int, episode: int, slot: int) -> np.random.Generator:
    """The random state of one clip: a pure function of (seed, episode index, slot in episode)."""
    return np.random.default_rng([int(seed), int(episode), int(slot), 0x636C6970])


def split_sources(recipe: Recipe, split: str) -> tuple[list[SplitEntry], list[Path | None]]:
    """Entries of a split and where each one's frames are (None when missing)."""
    entries = load_split(recipe, split)
    return entries, [locate(recipe, e).path for e in entries]


def _read_sampled(
    source: Path, spec: ClipSpec, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """The ``T`` sampled RGB frames of a frame folder or a video file."""
    if source.is_dir():
        files = list_frame_files(source)
        idx = sample_indices(len(files), spec.num_frames, spec.sampling, rng)
        uniq = sorted({int(i) for i in idx})
        loaded = dict(zip(uniq, read_frame_files([files[i] for i in uniq]), strict=True))
        return [loaded[int(i)] for i in idx]

    def planned(count: int) -> list[int]:  # a copy of the generator: the real draw comes below
        r = copy.deepcopy(rng) if rng is not None else None
        return [int(i) for i in sample_indices(count, spec.num_frames, spec.sampling, r)]

    # One pass, keeping only the sampled frames; the frame count is what decodes.
    n, kept = read_planned_frames(source, planned)
    idx = sample_indices(n, spec.num_frames, spec.sampling, rng)
    return [kept[int(i)] for i in idx]


def augment_query(clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random horizontal flip and colour jitter, one draw for the whole clip.

    Args:
        clip: uint8 ``[T, 3, H, W]``.
    Returns:
        uint8 ``[T, 3, H, W]``.
    """
    from torchvision.transforms.v2 import functional as F

    if rng.random() < 0.5:
        clip = clip.flip(-1)
    b, c, s = (
        rng.uniform(1 - JITTER[k], 1 + JITTER[k]) for k in ("brightness", "contrast", "saturation")
    )
    h = rng.uniform(-JITTER["hue"], JITTER["hue"])
    order = rng.permutation(4)
    if rng.random() < JITTER["grayscale"]:  # the reference puts grey first
        clip = F.rgb_to_grayscale(clip, num_output_channels=3)
    ops = (
        lambda x: F.adjust_brightness(x, b),
        lambda x: F.adjust_contrast(x, c),
        lambda x: F.adjust_saturation(x, s),
        lambda x: F.adjust_hue(x, h),
    )
    for i in order:
        clip = ops[int(i)](clip)
    return clip.contiguous()


def load_clip(
    source: str | Path, spec: ClipSpec, rng: np.random.Generator | None, query: bool = False
) -> torch.Tensor:
    """Read, sample, resize and crop one clip (plus the query augmentation when asked for).

    Draws, in order: the temporal sample, the crop offset, then the augmentation.

    Returns:
        uint8 ``[T, 3, crop, crop]``.
    """
    frames = _read_sampled(Path(source), spec, rng)
    resized = resize_frames_hwc(frames, spec.resize)  # [T, R, R, 3]
    offset = crop_offset(spec.resize, spec.crop, spec.crop_mode, rng)
    clip = crop_frames_hwc(resized, spec.crop, offset)  # [T, 3, C, C]
    if query and spec.query_augment:
        if rng is None:
            raise DataError("query augmentation needs a seeded numpy Generator (rng)")
        clip = augment_query(clip, rng)
    return clip.contiguous()


def _describe(entry: SplitEntry | None, source: Path | None) -> str:
    where = f" ({entry.split} split line {entry.line_no})" if entry is not None else ""
    what = str(source) if source is not None else (entry.key if entry is not None else "video")
    return f"{what}{where}"


def _error(entry: SplitEntry | None, source: Path | None, exc: BaseException | None) -> str:
    if exc is None:
        return f"{_describe(entry, source)}: no frame folder or video file found"
    msg = str(exc) if isinstance(exc, FsarError) else f"{type(exc).__name__}: {exc}"
    return f"{_describe(entry, source)}: {msg}"


class EpisodeClips(Dataset):
    """Training episodes as frames: item ``i`` is episode ``episodes[i]`` of ``sampler``.

    Args:
        sources: per split row, its frame folder or video file (None = missing; the sampler must
            not pick it: build it with ``usable = [s is not None for s in sources]``).
        sampler: the seeded episode sampler over the split's labels.
        episodes: the episode indices to serve, in order.
        spec: sampling, sizes, augmentation and seed.
        entries: split entries, for error messages.

    Items are dicts: ``episode`` (int), ``frames`` uint8 ``[W*(K+Q), T, 3, C, C]`` (supports,
    class-major, then queries), ``classes`` int64 ``[W]`` (global class ids), ``support_labels``
    ``[W*K]``, ``query_labels`` ``[W*Q]``, ``video_labels`` ``[W*(K+Q)]`` (global class id of every
    clip); or ``{"episode": i, "error": message}`` when a video does not decode (the trainer
    raises it as a :class:`DataError`, worker tracebacks stay out of the message).
    """

    def __init__(
        self,
        sources: Sequence[Path | None],
        sampler: EpisodeSampler,
        episodes: Sequence[int],
        spec: ClipSpec,
        entries: Sequence[SplitEntry] | None = None,
    ) -> None:
        self.sources = list(sources)
        self.sampler = sampler
        self.episodes = [int(e) for e in episodes]
        self.spec = spec
        self.entries = list(entries) if entries is not None else None

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.episodes[i]
        classes, support, query, _, _ = self.sampler.episode(e)
        W, K, Q = self.sampler.n_way, self.sampler.k_shot, self.sampler.n_query
        rows = np.concatenate([support, query])  # (W*K + W*Q,)
        clips = []
        for slot, row in enumerate(rows):
            source = self.sources[int(row)]
            entry = self.entries[int(row)] if self.entries is not None else None
            if source is None:
                return {"episode": e, "error": _error(entry, source, None)}
            try:
                rng = clip_rng(self.spec.seed, e, slot)
                clips.append(load_clip(source, self.spec, rng, query=slot >= W * K))
            except Exception as exc:  # DataError, cv2.error, OSError: reported by the trainer
                return {"episode": e, "error": _error(entry, source, exc)}
        support_labels = np.repeat(np.arange(W), K)  # class-major slots
        query_labels = np.repeat(np.arange(W), Q)
        return {
            "episode": e,
            "frames": torch.stack(clips),  # [W*(K+Q), T, 3, C, C] uint8
            "classes": torch.from_numpy(classes.astype(np.int64)),
            "support_labels": torch.from_numpy(support_labels),
            "query_labels": torch.from_numpy(query_labels),
            "video_labels": torch.from_numpy(
                np.concatenate([classes[support_labels], classes[query_labels]]).astype(np.int64)
            ),
        }


class VideoClips(Dataset):
    """Single clips of given split rows (validation: centre sampling and crop, no random draws).

    Items: ``{"row": r, "frames": uint8 [T, 3, C, C]}``, or ``{"row": r, "error": message}`` when
    the video is missing or does not decode.
    """

    def __init__(
        self,
        sources: Sequence[Path | None],
        rows: Sequence[int] | np.ndarray,
        spec: ClipSpec,
        entries: Sequence[SplitEntry] | None = None,
    ) -> None:
        if spec.sampling != "center" or spec.crop_mode != "center" or spec.query_augment:
            raise DataError("VideoClips serves deterministic clips: centre sampling and crop only")
        self.sources = list(sources)
        self.rows = [int(r) for r in rows]
        self.spec = spec
        self.entries = list(entries) if entries is not None else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        source = self.sources[row]
        entry = self.entries[row] if self.entries is not None else None
        if source is None:
            return {"row": row, "error": _error(entry, source, None)}
        try:
            return {"row": row, "frames": load_clip(source, self.spec, None)}
        except Exception as exc:
            return {"row": row, "error": _error(entry, source, exc)}
