"""One optimiser step of the frozen-mode trainer on a batch of episodes (METHOD.md 4, 5).

:func:`episode_tensors` gathers E episodes' cached features and labels onto the device (one
fancy-index per side); :func:`train_step` computes the mean loss of the E episodes,
``CE_fewshot + lambda_vt * CE_videotext`` (``head.batch_episode_loss``), optionally in
micro-batches, averages the gradients across ranks under ``torchrun`` (the DistributedDataParallel
update, weighted for uneven shares) and steps the optimiser.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np
import torch

from .. import distributed
from ..episodes import EpisodeBatch
from ..models.base import FewShotHead
from ..models.transformer import episode_dropout

__all__ = ["EpisodeTensors", "episode_tensors", "train_step"]


@dataclass
class EpisodeTensors:
    """The tensors of E training episodes, ready for ``head.batch_episode_loss``."""

    support: torch.Tensor  # [E, W*K, T, D] float32
    support_labels: torch.Tensor  # [E, W*K] episode labels
    query: torch.Tensor  # [E, W*Q, T, D] float32
    query_labels: torch.Tensor  # [E, W*Q]
    class_text: torch.Tensor  # [E, W, D] text of each episode class
    video_labels: torch.Tensor  # [E, W*K + W*Q] global class ids, supports then queries

    def __len__(self) -> int:
        return int(self.support.shape[0])

    def slice(self, a: int, b: int) -> EpisodeTensors:
        return EpisodeTensors(*(t[a:b] for t in self.__dict__.values()))


def episode_tensors(
    batch: EpisodeBatch, features: np.ndarray, text_table: torch.Tensor, device: torch.device
) -> EpisodeTensors:
    """Gather a batch's features (one fancy-index per side) and build its label tensors.

    The features travel in the store's dtype (float16) and become float32 on ``device``: half
    the bytes to copy, and torch converts much faster than numpy.

    Args:
        batch: E episodes (store rows and views).
        features: the store's [videos, V, T, D] array (memmap).
        text_table: [C, D] class text of the split, on ``device``.
    """
    s = features[batch.support_rows, batch.support_views]  # (E, W*K, T, D) float16
    q = features[batch.query_rows, batch.query_views]  # (E, W*Q, T, D) float16
    sl, ql = batch.support_labels, batch.query_labels  # (E, W*K), (E, W*Q)
    rows = np.arange(len(batch))[:, None]
    video_labels = np.concatenate([batch.classes[rows, sl], batch.classes[rows, ql]], axis=1)

    def dev(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)

    class_text = text_table[dev(batch.classes)]  # (E, W, D)
    return EpisodeTensors(
        dev(s).float(), dev(sl), dev(q).float(), dev(ql), class_text, dev(video_labels)
    )


def train_step(
    head: FewShotHead,
    optimizer: torch.optim.Optimizer,
    ep: EpisodeTensors,
    text_table: torch.Tensor,
    lambda_vt: float,
    *,
    micro_batch: int | None = None,
    grad_clip: float | None = None,
    dist: distributed.Dist | None = None,
    total: int | None = None,
    generators: Sequence[torch.Generator] | None = None,
) -> dict[str, float]:
    """One optimiser step on the mean loss of E episodes (of ``total``, across ranks).

    Args:
        head: the head, in training mode.
        ep: the step's episodes; with ``micro_batch`` they are processed in slices of that many
            episodes whose gradients add up to the gradient of the mean (memory bound only).
        text_table: [C, D] text of all meta-train classes (the video-text loss's classes).
        lambda_vt: weight of the video-text loss.
        grad_clip: clip the gradient norm to this value (None: no clipping, as the reference).
        dist: under torchrun, this process's place: ``ep`` is its share of the step's ``total``
            episodes; this rank's loss is weighted by ``len(ep) * world / total`` and the
            gradients are averaged across ranks, so the update is that of the mean over all
            ``total`` episodes (uneven shares included). Every rank must call it.
        total: the step's episodes over all ranks (default ``len(ep)``).
        generators: one dropout generator per episode of ``ep``
            (:func:`fsar_cli.train.rng.episode_generators`): each episode's dropout masks are
            drawn from its own (None: dropout on the global torch RNG).
    Returns:
        ``loss``, ``ce_fewshot``, ``ce_videotext``: means over the step's episodes (floats; over
        all ranks' episodes under torchrun).
    """
    d = dist or distributed.Dist()
    optimizer.zero_grad(set_to_none=True)
    n = len(ep)
    scale = n * d.world / (n if total is None else int(total))  # 1.0 in a single process
    m = n if not micro_batch or micro_batch >= n else int(micro_batch)
    sums = {"loss": 0.0, "ce_fewshot": 0.0, "ce_videotext": 0.0}
    parts: list[dict[str, torch.Tensor]] = []
    for a in range(0, n, m):
        part = ep if m == n else ep.slice(a, min(a + m, n))
        masks = (
            episode_dropout(generators[a : a + len(part)])
            if generators is not None
            else contextlib.nullcontext()
        )
        with masks:
            out = head.batch_episode_loss(
                part.support,
                part.support_labels,
                part.query,
                part.query_labels,
                part.class_text,
                part.video_labels,
                text_table,
                lambda_vt,
            )
        w = len(part) / n * scale
        (out["loss"] * w if w != 1.0 else out["loss"]).backward()
        parts.append({k: out[k].detach() * w for k in sums})
    # DistributedDataParallel's update: gradients averaged across ranks (no-op in one process)
    d.all_reduce_grads_([p for p in head.parameters() if p.requires_grad])
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(head.parameters(), float(grad_clip))
    optimizer.step()
    vals_t = torch.stack([reduce(torch.add, [p[k] for p in parts]) for k in sums]).float()  # [3]
    d.all_reduce_mean_([vals_t])
    vals = vals_t.cpu().tolist()  # one host sync for all three numbers
    return dict(zip(sums, vals, strict=True))
