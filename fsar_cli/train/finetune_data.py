"""What ``train.mode: finetune`` reads: frames of episodes, frozen class text, validation episodes.

- :func:`episode_source`: a split's entries, where their frames are, and a sampler over the videos
  that exist; :func:`frame_loader` decodes items in order in ``train.workers`` processes.
- :func:`class_text`: text features of the class names, computed once with the frozen text tower;
- :class:`ValEpisodes` / :func:`validate`: the fixed validation episodes, whose videos are
  encoded with the current tower (centre sampling and crop, no augmentation, split across ranks)
  and evaluated with :func:`fsar_cli.evaluation.batched.episode_accuracies`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import distributed
from ..data.clips import ClipSpec, VideoClips, split_sources
from ..episodes import EpisodeBatch, EpisodeSampler
from ..errors import DataError
from ..evaluation.batched import episode_accuracies
from ..evaluation.metrics import mean_and_ci95
from ..models.base import FewShotHead
from ..recipe import Recipe
from .tower import encode_clips

__all__ = [
    "episode_source",
    "frame_loader",
    "class_text",
    "ValEpisodes",
    "validate",
]

log = logging.getLogger(__name__)


def class_text(encoder: Any, names: tuple[str | None, ...], prompt: str) -> np.ndarray:
    """float32 [C, D] text features of ``prompt.format(name)``; NaN rows for unnamed classes."""
    text = np.full((len(names), encoder.dim), np.nan, dtype=np.float32)
    known = [(i, n) for i, n in enumerate(names) if n]
    if known:
        feats = encoder.encode_text([prompt.format(n) for _, n in known])  # [C_known, D]
        text[[i for i, _ in known]] = feats.numpy()
    return text


def frame_loader(ds: Dataset, workers: int, dev: torch.device, seed: int) -> DataLoader:
    """Items in order, decoded by ``workers`` processes; never touches the global torch RNG."""
    return DataLoader(
        ds,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        generator=torch.Generator().manual_seed(seed),  # the base seed of workers: not global
        prefetch_factor=2 if workers > 0 else None,
    )


def episode_source(
    recipe: Recipe, split: str, n_way: int, n_query: int, seed: int
) -> tuple[list[Any], list[Path | None], EpisodeSampler]:
    """A split's entries, where their frames are, and a sampler over the ones that exist."""
    entries, sources = split_sources(recipe, split)
    usable = np.array([s is not None for s in sources], bool)
    sampler = EpisodeSampler(
        np.array([e.class_id for e in entries], np.int64),
        n_way,
        recipe.train.k_shot,
        n_query,
        seed=seed,
        usable=usable,
        class_names=list(recipe.data.classes.for_split(split)),
        allow_missing=True,
        split=split,
    )
    if sampler.n_missing:
        log.warning(
            "%s: %d of %d listed videos have no frames or video file; sampling from the others",
            split,
            sampler.n_missing,
            len(entries),
        )
    return entries, sources, sampler


@dataclasses.dataclass
class ValEpisodes:
    """The fixed validation episodes and what encoding them needs."""

    split: str
    label: str  # "val", or the TEST label of train.select_on=test
    batch: EpisodeBatch
    rows: np.ndarray  # the split rows the episodes use
    sources: list[Path | None]
    entries: list[Any]
    text: np.ndarray  # [C, D], NaN rows for unnamed classes
    n_missing: int


def validate(
    visual: nn.Module,
    head: FewShotHead,
    val: ValEpisodes,
    recipe: Recipe,
    dev: torch.device,
    amp: torch.dtype | None,
    d: distributed.Dist,
) -> tuple[float, float]:
    """Encode the validation videos with the current tower, then evaluate the fixed episodes."""
    f = recipe.features
    spec = ClipSpec(f.num_frames, f.resize, f.crop, "center", "center", False, 0)
    a, b = d.split(len(val.rows))
    mine = val.rows[a:b]  # this rank's share of the videos
    per_batch = max(1, f.batch_size // f.num_frames)
    ds = VideoClips(val.sources, mine, spec, val.entries)
    items = frame_loader(ds, recipe.train.workers, dev, recipe.train.val_seed)
    out: list[np.ndarray] = []
    pending: list[torch.Tensor] = []
    visual.eval()
    try:
        with torch.inference_mode():
            for i, item in enumerate(items):
                if "error" in item:
                    raise DataError(f"validation video {item['error']}")
                pending.append(item["frames"])  # [T, 3, C, C] uint8
                if len(pending) == per_batch or i == len(mine) - 1:
                    feats = encode_clips(visual, torch.stack(pending), dev, amp)  # [B, T, D]
                    out.append(feats.cpu().numpy())
                    pending = []
    finally:
        visual.train()
    local = np.concatenate(out) if out else np.zeros((0, f.num_frames, 1), np.float32)
    parts = d.all_gather_object((mine, local))
    dim = next(p[1].shape[-1] for p in parts if len(p[0]))
    features = np.zeros((len(val.sources), 1, f.num_frames, dim), np.float32)  # [videos, V, T, D]
    for rows, feats in parts:
        features[rows, 0] = feats
    accs = episode_accuracies(head, features, val.text, val.batch, device=str(dev))
    return mean_and_ci95(accs)
