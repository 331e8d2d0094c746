"""What a few-shot head is: :class:`FewShotHead`, the episode API every head implements.

Every head maps one episode (support videos with episode labels 0..W-1, query videos, the text
feature of each episode class) to ``[N_q, W]`` logits, and a batch of equally shaped episodes to
``[E, N_q, W]``.

Shapes: ``E`` episodes, ``W`` way, ``K`` shot, ``N_s = W*K`` support and ``N_q`` query videos,
``T`` frames, ``D`` feature width, ``C`` classes of a text table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EpisodeError, FsarError
from ..recipe import ModelCfg

__all__ = ["FewShotHead", "check_class_text", "group_support"]


def group_support(support: torch.Tensor, support_labels: torch.Tensor, way: int) -> torch.Tensor:
    """Sort a batch of supports by episode label and split the shots: ``[E, W, K, T, D]``.

    Args:
        support: ``[E, N_s, T, D]``.
        support_labels: ``[E, N_s]`` episode labels; each of 0..W-1 must occur exactly K times.
        way: W.

    Returns:
        ``[E, W, K, T, D]``; shots keep their order of appearance within a class.
    """
    e, ns = support_labels.shape
    if way < 1 or ns % way:
        raise EpisodeError(f"{ns} support videos cannot be split into {way} classes of K shots")
    k = ns // way
    labels = support_labels.to(device=support.device, dtype=torch.long)
    order = torch.argsort(labels, dim=1, stable=True)  # [E, N_s]
    expected = torch.arange(way, device=labels.device).repeat_interleave(k)  # [N_s]
    if not torch.equal(labels.gather(1, order), expected.expand(e, ns)):
        counts = [torch.bincount(row, minlength=way).tolist() for row in labels[:4].cpu()]
        raise EpisodeError(
            f"support labels must hold each of 0..{way - 1} exactly {k} times; label counts of "
            f"the first episodes: {counts}"
        )
    rows = torch.arange(e, device=support.device).unsqueeze(1)  # [E, 1]
    grouped = support[rows, order]  # [E, N_s, T, D], sorted by label
    return grouped.reshape(e, way, k, *support.shape[2:])  # [E, W, K, T, D]


def check_class_text(
    head: FewShotHead,
    text: np.ndarray,
    classes: np.ndarray,
    *,
    error: type[FsarError],
    split: str = "",
    names: Sequence[str | None] = (),
    source: str = "the cache",
) -> None:
    """A head that uses class text needs the text feature of every class it sees.

    Args:
        text: ``[C, D]`` text features, NaN rows for classes whose name is unknown.
        classes: the class ids the head will see.
        error: the error to raise (CacheError when evaluating, TrainError when training).
    """
    if not head.uses_text:
        return
    text, used = np.asarray(text), np.unique(np.asarray(classes))
    bad = [int(c) for c in used if c >= len(text) or np.isnan(text[c]).any()]
    if not bad:
        return
    known = [f"{c}={names[c]!r}" for c in bad[:5] if c < len(names) and names[c]]
    raise error(
        f"head {head.name!r} uses class text, but {split + ' ' if split else ''}classes "
        f"{bad[:5]}{' ...' if len(bad) > 5 else ''} have no text feature in {source} (no name "
        f"in the recipe{': ' + ', '.join(known) if known else ''}); list their names under "
        f"data.classes{'.' + split if split else ''} and re-run `fsar cache`, or use a head "
        "without text (model.head: clipfsar-notext)"
    )


class FewShotHead(nn.Module):
    """Base class: the episode API shared by every head.

    Subclasses implement ``encode_query``, ``encode_support``, ``merged_prototypes`` and ``match``;
    ``prototypes`` picks merge-before or merge-after from ``merge_before``. The pieces must agree
    (the fast evaluator relies on it, and a test checks every registered head):
    ``prototypes(support, text)`` equals ``merged_prototypes`` for merge-before or K = 1, and the
    mean over the K shots of ``encode_support(shot, its class text)`` for merge-after or K = 1. The
    base ``encode_support`` (identity) and ``merged_prototypes`` (mean of the shots) fit heads whose
    prototypes are the supports themselves; a head that builds prototypes otherwise overrides
    both. The evaluator encodes supports one video at a time only for heads that override
    ``encode_support``, so an identity one costs nothing there. Class attributes:
    ``name``, ``uses_text`` (needs class text), ``trainable`` (has parameters to train),
    ``description`` (one line for ``fsar heads``). Heads that match by OTAM of frame distances
    inherit :class:`fsar_cli.models.otam.OTAMMatching`, whose two stages the evaluator runs in
    blocks of different sizes. ``init_kwargs`` holds the constructor arguments (plain values) so
    a checkpoint can rebuild the head.
    """

    name: str = ""
    description: str = ""
    uses_text: bool = False
    trainable: bool = False
    merge_before: bool = True

    def __init__(self, **init_kwargs: Any) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = dict(init_kwargs)

    @classmethod
    def kwargs_from_cfg(cls, cfg: ModelCfg) -> dict[str, Any]:
        """Constructor keyword arguments (besides ``dim``) taken from a recipe's ``ModelCfg``."""
        return {}

    # -- decomposed pieces ------------------------------------------------------------------
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame feature adapter (identity unless the head has one): ``[..., D]``."""
        return x

    def encode_query(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, T, D]`` -> ``[N, T, D]`` query representation."""
        return x

    def encode_support(self, x: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, T, D]`` supports (``text`` ``[N, D]``: each one's class text) -> ``[N, T, D]``."""
        return x

    def merged_prototypes(
        self, support: torch.Tensor, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[E, W, K, T, D]`` grouped supports (``text`` ``[E, W, D]``) -> ``[E, W, T, D]``."""
        return support.mean(dim=-3)

    def prototypes(self, support: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """Class prototypes ``[E, W, T, D]`` from grouped supports ``[E, W, K, T, D]``.

        Merge-before averages the K shots and then encodes; merge-after encodes each shot and
        averages the outputs. With K = 1 both are the same.
        """
        if self.merge_before or support.shape[-3] == 1:
            return self.merged_prototypes(support, text)
        e, w, k, t, d = support.shape
        per_shot_text = None
        if text is not None:
            per_shot_text = text.unsqueeze(2).expand(e, w, k, d).reshape(-1, d)  # [E*W*K, D]
        enc = self.encode_support(support.reshape(-1, t, d), per_shot_text)  # [E*W*K, T, D]
        return enc.reshape(e, w, k, t, d).mean(dim=2)  # [E, W, T, D]

    def match(self, query_enc: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """Queries ``[..., N_q, T, D]`` vs prototypes ``[..., W, T, D]`` -> ``[..., N_q, W]``."""
        raise NotImplementedError

    # -- episode API ------------------------------------------------------------------------
    def _way(self, support_labels: torch.Tensor, class_text: torch.Tensor | None) -> int:
        if class_text is not None:
            return int(class_text.shape[-2])
        if self.uses_text:
            raise EpisodeError(f"head {self.name!r} uses class text: pass class_text [.., W, D]")
        return int(support_labels.max().item()) + 1

    def batch_episode_logits(
        self,
        support: torch.Tensor,
        support_labels: torch.Tensor,
        query: torch.Tensor,
        class_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of E episodes at once.

        Args:
            support: ``[E, N_s, T, D]`` support features.
            support_labels: ``[E, N_s]`` episode labels 0..W-1 (any order, K of each).
            query: ``[E, N_q, T, D]`` query features.
            class_text: ``[E, W, D]`` text feature of each episode class (row j = label j);
                required when ``uses_text``.

        Returns:
            ``[E, N_q, W]`` logits; column j is episode label j.
        """
        way = self._way(support_labels, class_text)
        grouped = group_support(support, support_labels, way)  # [E, W, K, T, D]
        text = class_text if self.uses_text else None
        protos = self.prototypes(grouped, text)  # [E, W, T, D]
        e, nq, t, d = query.shape
        q = self.encode_query(query.reshape(e * nq, t, d)).reshape(e, nq, t, d)
        return self.match(q, protos)

    def batch_episode_loss(
        self,
        support: torch.Tensor,
        support_labels: torch.Tensor,
        query: torch.Tensor,
        query_labels: torch.Tensor,
        class_text: torch.Tensor | None,
        video_labels: torch.Tensor | None = None,
        text_table: torch.Tensor | None = None,
        lambda_vt: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Training loss of E episodes: the few-shot cross-entropy (heads with a video-text term,
        CLIP-FSAR, add it). Arguments as :meth:`CLIPFSARHead.batch_episode_loss`.

        Returns:
            ``loss``, ``ce_fewshot``, ``ce_videotext`` (scalars) and ``logits`` ``[E, N_q, W]``.
        """
        logits = self.batch_episode_logits(support, support_labels, query, class_text)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), query_labels.reshape(-1).long())
        return {"loss": ce, "ce_fewshot": ce, "ce_videotext": ce.new_zeros(()), "logits": logits}

    def episode_logits(
        self,
        support: torch.Tensor,
        support_labels: torch.Tensor,
        query: torch.Tensor,
        class_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of one episode.

        Args:
            support: ``[N_s, T, D]``; support_labels: ``[N_s]`` in 0..W-1; query: ``[N_q, T, D]``;
            class_text: ``[W, D]`` (row j = text of episode class j).

        Returns:
            ``[N_q, W]``.
        """
        text = None if class_text is None else class_text.unsqueeze(0)
        return self.batch_episode_logits(
            support.unsqueeze(0), support_labels.unsqueeze(0), query.unsqueeze(0), text
        )[0]
