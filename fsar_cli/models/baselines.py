"""Training-free baselines on frozen CLIP features: prototypes, OTAM, zero-shot text.

They bracket what the CLIP-FSAR head (Wang et al., "CLIP-guided Prototype Modulating for Few-shot
Action Recognition", IJCV 2023) adds: ``proto`` is a ProtoNet on frame-averaged CLIP features,
``otam`` is OTAM's temporal alignment (Cao et al., CVPR 2020) on the raw CLIP frames, and
``text`` is CLIP zero-shot classification with the class names. ``clipfsar-notext`` (the
trained head without text) is registered in ``clipfsar.py``. All cosines use the reference's
0.01 epsilon.

Shapes: ``E`` episodes, ``W`` way, ``K`` shot, ``N_q`` queries, ``T`` frames, ``D`` width.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import EpisodeError, RecipeError
from ..recipe import ModelCfg
from .base import FewShotHead
from .otam import OTAMMatching, cos_sim
from .registry import register_head

__all__ = ["ProtoHead", "OTAMHead", "TextHead"]


@register_head(
    "proto",
    description="Prototypes: cosine of frame-averaged features to the mean of the shots",
)
class ProtoHead(FewShotHead):
    """ProtoNet on frame-averaged features: logits = cos(query, mean of the class's shots).

    Args:
        dim: feature width D (kept for the checkpoint; nothing is learned).
    """

    name = "proto"

    def __init__(self, dim: int) -> None:
        super().__init__(dim=dim)

    def match(self, query_enc: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """Cosine of frame means: ``[..., N_q, T, D]`` x ``[..., W, T, D]`` -> ``[..., N_q, W]``."""
        return cos_sim(query_enc.mean(dim=-2), protos.mean(dim=-2))


@register_head(
    "otam",
    description="OTAM (Cao et al., CVPR 2020): bidirectional soft OTAM on raw features",
)
class OTAMHead(OTAMMatching, FewShotHead):
    """Bidirectional soft OTAM on the raw CLIP frames; prototype = frame-wise mean of the shots.

    Args:
        dim: feature width D (nothing is learned).
        otam_lambda: soft-min lambda (0.5).
    """

    name = "otam"

    def __init__(self, dim: int, otam_lambda: float = 0.5) -> None:
        super().__init__(dim=dim, otam_lambda=otam_lambda)
        if otam_lambda <= 0:
            raise RecipeError(f"model.otam_lambda={otam_lambda} must be > 0 (reference: 0.5)")
        self.otam_lambda = otam_lambda

    @classmethod
    def kwargs_from_cfg(cls, cfg: ModelCfg) -> dict[str, Any]:
        return {"otam_lambda": cfg.otam_lambda}


@register_head(
    "text",
    description="CLIP zero-shot: cosine of the query's frame mean to the class text (no support)",
)
class TextHead(ProtoHead):
    """CLIP zero-shot: logits = cos(frame mean of the query, class text); supports are ignored.

    The prototype of class j is its text feature, repeated over the T frames so the shared
    ``match`` (cosine of frame means) applies unchanged; the decomposed pieces agree with it:
    ``encode_support`` maps each support video to its class text over T (the mean of a class's
    shots is then that text again), whichever of merge-before / merge-after is set.

    Args:
        dim: feature width D (nothing is learned).
    """

    name = "text"
    uses_text = True

    def encode_support(self, x: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, T, D]`` supports (only T is read) + class text ``[N, D]`` -> ``[N, T, D]``."""
        if text is None:
            raise EpisodeError("the text head needs the class text of every support [N, D]")
        n, t, d = x.shape
        return text.to(x.dtype).unsqueeze(-2).expand(n, t, d)  # [N, D] -> [N, T, D]

    def merged_prototypes(
        self, support: torch.Tensor, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[E, W, K, T, D]`` (unused) + text ``[E, W, D]`` -> ``[E, W, T, D]`` (text over T)."""
        if text is None:
            raise EpisodeError("the text head needs the class text [E, W, D]")
        e, w, _, t, d = support.shape
        return text.to(support.dtype).unsqueeze(-2).expand(e, w, t, d)

    def prototypes(self, support: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        return self.merged_prototypes(support, text)
