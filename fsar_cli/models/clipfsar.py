"""The CLIP-FSAR few-shot head: text-modulated prototypes, bidirectional soft OTAM, video-text loss.

Wang et al., "CLIP-guided Prototype Modulating for Few-shot Action Recognition", IJCV 2023
(arXiv 2303.02982); the authors' ``CNN_OTAM_CLIPFSAR``, restated in docs/METHOD.md sections 2-4 and
reproduced here to ~1e-5 (tests/test_reference.py). OTAM: Cao et al., CVPR 2020.

Shapes: ``E`` episodes, ``W`` way, ``K`` shot, ``N_s``/``N_q`` support/query videos, ``T`` frames,
``D`` feature width, ``C`` classes of the text table.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EpisodeError, RecipeError
from ..recipe import ModelCfg
from .base import FewShotHead, group_support
from .otam import OTAMMatching, cos_sim
from .registry import register_head
from .transformer import ResidualAdapter, TemporalTransformer

__all__ = ["CLIPFSARHead"]


@register_head(
    "clipfsar",
    description="CLIP-FSAR (Wang et al., IJCV 2023): text token + temporal Transformer, "
    "bidirectional OTAM, video-text loss",
)
class CLIPFSARHead(OTAMMatching, FewShotHead):
    """CLIP-FSAR: prototypes modulated by the class text, matched with bidirectional soft OTAM.

    A one-layer temporal Transformer reads each support sequence with the class text feature
    appended as an extra token (prototype modulation) and each query sequence alone; queries are
    scored by ``-OTAM(1 - cos)`` against the class prototypes. A second loss pulls the frame-mean
    of every episode video towards its class text (``scale * cos`` against all meta-train classes).

    Frozen mode (``adapter="residual"``): with a frozen, cached visual tower the video-text loss
    could only train ``scale``. fsar therefore puts a small per-frame residual adapter,
    ``x + Linear2(GELU(Linear1(LayerNorm(x))))``, on the cached features, before both the
    Transformer and the video-text loss, so both losses train it, as they train the tower in the
    paper's end-to-end mode. ``Linear2`` starts at zero: an untrained adapter is the identity and
    the head starts exactly as the reference head. ``adapter="none"`` is the pure reference head.

    Args:
        dim: feature width D.
        num_heads, ffn_dim, attn_dropout, ffn_dropout: the Transformer layer (8, 2048, 0.2, 0.05).
        otam_lambda: OTAM soft-min lambda (0.5).
        merge_before: average the K shots (frames and text token) before the Transformer
            (the reference's ``MERGE_BEFORE``); otherwise encode each shot and average after.
        use_text: append the class text token to supports and train the video-text loss;
            ``False`` is the ``clipfsar-notext`` ablation (no text anywhere, ``scale`` fixed).
        adapter: ``"none"`` or ``"residual"``.
        adapter_hidden: adapter bottleneck width.
    """

    name = "clipfsar"  # per instance: "clipfsar-notext" when use_text=False
    uses_text = True
    trainable = True

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        attn_dropout: float = 0.2,
        ffn_dropout: float = 0.05,
        otam_lambda: float = 0.5,
        merge_before: bool = True,
        use_text: bool = True,
        adapter: Literal["none", "residual"] = "none",
        adapter_hidden: int = 256,
    ) -> None:
        super().__init__(
            dim=dim,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            attn_dropout=attn_dropout,
            ffn_dropout=ffn_dropout,
            otam_lambda=otam_lambda,
            merge_before=merge_before,
            use_text=use_text,
            adapter=adapter,
            adapter_hidden=adapter_hidden,
        )
        if num_heads < 1 or dim % num_heads:
            raise RecipeError(
                f"model.num_heads={num_heads} must divide the feature width {dim}; use e.g. 8"
            )
        if otam_lambda <= 0:
            raise RecipeError(f"model.otam_lambda={otam_lambda} must be > 0 (reference: 0.5)")
        if adapter not in ("none", "residual"):
            raise RecipeError(f"model.adapter={adapter!r} must be 'none' or 'residual'")
        self.name = "clipfsar" if use_text else "clipfsar-notext"
        self.uses_text = use_text
        self.merge_before = merge_before
        self.otam_lambda = otam_lambda
        self.adapter = ResidualAdapter(dim, adapter_hidden) if adapter == "residual" else None
        self.transformer = TemporalTransformer(dim, num_heads, ffn_dim, attn_dropout, ffn_dropout)
        if use_text:
            self.scale = nn.Parameter(torch.ones(1))  # used as is, no exp (reference)
        else:
            self.register_buffer("scale", torch.ones(1))

    @classmethod
    def kwargs_from_cfg(cls, cfg: ModelCfg) -> dict[str, Any]:
        return {
            "num_heads": cfg.num_heads,
            "ffn_dim": cfg.ffn_dim,
            "attn_dropout": cfg.attn_dropout,
            "ffn_dropout": cfg.ffn_dropout,
            "otam_lambda": cfg.otam_lambda,
            "merge_before": cfg.merge_before,
            "adapter": cfg.adapter,
            "adapter_hidden": cfg.adapter_hidden,
        }

    # -- decomposed pieces (each public one applies the adapter first) ------------------------
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen-mode adapter on per-frame features ``[..., D]`` (identity without one)."""
        return x if self.adapter is None else self.adapter(x)

    def _support_seq(self, frames: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """Adapted frames ``[..., T, D]`` (+ text ``[..., D]``) -> Transformer -> first T tokens."""
        t = frames.shape[-2]
        if self.uses_text:
            if text is None:
                raise EpisodeError("clipfsar needs the class text of every support: pass text")
            frames = torch.cat(
                [frames, text.unsqueeze(-2).to(frames.dtype)], dim=-2
            )  # [..., T+1, D]
        # the text token's own output is discarded: the Transformer skips its work after attention
        return self.transformer(frames, keep=t)  # [..., T, D]

    def encode_query(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, T, D]`` queries -> adapter + Transformer (no text) -> ``[N, T, D]``."""
        return self.transformer(self.adapt(x))

    def encode_support(self, x: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, T, D]`` supports + their class text ``[N, D]`` -> ``[N, T, D]`` (merge-after)."""
        return self._support_seq(self.adapt(x), text)

    def _merged(self, adapted: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        # [E, W, K, T, D] -> mean over shots -> [E, W, T, D]; the K text tokens of a class are
        # identical, so their average is the class text [E, W, D]
        return self._support_seq(adapted.mean(dim=-3), text)

    def merged_prototypes(
        self, support: torch.Tensor, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Merge-before prototypes: ``[E, W, K, T, D]`` + text ``[E, W, D]`` -> ``[E, W, T, D]``."""
        return self._merged(self.adapt(support), text)

    def _prototypes_adapted(self, adapted: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """``prototypes`` on already adapted grouped supports ``[E, W, K, T, D]``."""
        if self.merge_before or adapted.shape[-3] == 1:
            return self._merged(adapted, text)
        k = adapted.shape[-3]
        if text is not None:
            text = text.unsqueeze(-2).expand(*text.shape[:-1], k, text.shape[-1])  # [E, W, K, D]
        return self._support_seq(adapted, text).mean(dim=-3)  # [E, W, K, T, D] -> [E, W, T, D]

    def prototypes(self, support: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """Class prototypes ``[E, W, T, D]`` from grouped supports ``[E, W, K, T, D]``."""
        return self._prototypes_adapted(self.adapt(support), text)

    def video_text_logits(self, videos: torch.Tensor, text_table: torch.Tensor) -> torch.Tensor:
        """``scale * cos(frame mean of adapted videos, text)``: ``[N,T,D]``, ``[C,D]`` -> ``[N,C]``.

        The features are taken before the Transformer, as in the reference.
        """
        return self._video_text(self.adapt(videos), text_table)

    def _video_text(self, adapted: torch.Tensor, text_table: torch.Tensor) -> torch.Tensor:
        return cos_sim(adapted.mean(dim=-2), text_table.to(adapted.dtype)) * self.scale

    # -- episodes ---------------------------------------------------------------------------
    def _forward(
        self,
        support: torch.Tensor,
        support_labels: torch.Tensor,
        query: torch.Tensor,
        class_text: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``[E, N_q, W]`` and the adapted supports and queries (for the video-text loss)."""
        way = self._way(support_labels, class_text)
        s = self.adapt(support)  # [E, N_s, T, D]
        q = self.adapt(query)  # [E, N_q, T, D]
        grouped = group_support(s, support_labels, way)  # [E, W, K, T, D]
        protos = self._prototypes_adapted(grouped, class_text if self.uses_text else None)
        q_enc = self.transformer(q)  # [E, N_q, T, D], all episodes' queries in one batch
        return self.match(q_enc, protos), s, q

    def batch_episode_logits(
        self,
        support: torch.Tensor,
        support_labels: torch.Tensor,
        query: torch.Tensor,
        class_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[E, N_q, W]`` logits of E episodes in one forward pass (see ``FewShotHead``)."""
        return self._forward(support, support_labels, query, class_text)[0]

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
        """Training loss of E episodes: mean over episodes of ``CE_fewshot + lambda_vt * CE_vt``.

        Args:
            support, support_labels, query, class_text: as ``batch_episode_logits``.
            query_labels: ``[E, N_q]`` episode labels of the queries.
            video_labels: ``[E, N_s + N_q]`` global class ids (rows of ``text_table``) of the
                support then the query videos, in the order given.
            text_table: ``[C, D]`` text features of all meta-train classes.
            lambda_vt: weight of the video-text loss (3.0 SSv2, 1.5 Kinetics/UCF101, 1.2 HMDB51).
                The video-text term is skipped when 0, when ``text_table`` is None, or when the
                head does not use text.

        Returns:
            ``loss``, ``ce_fewshot``, ``ce_videotext`` (scalars) and ``logits`` ``[E, N_q, W]``.
        """
        logits, s, q = self._forward(support, support_labels, query, class_text)
        e, nq, w = logits.shape
        # equal N_q per episode: the flat mean is the mean over episodes of per-episode means
        ce_fs = F.cross_entropy(logits.reshape(e * nq, w), query_labels.reshape(-1).long())
        ce_vt = logits.new_zeros(())
        if lambda_vt and text_table is not None and self.uses_text:
            if video_labels is None:
                raise EpisodeError("the video-text loss needs video_labels [E, N_s + N_q]")
            videos = torch.cat([s, q], dim=1)  # [E, N_s + N_q, T, D]
            vt = self._video_text(videos, text_table)  # [E, N_s + N_q, C]
            ce_vt = F.cross_entropy(vt.reshape(-1, vt.shape[-1]), video_labels.reshape(-1).long())
        loss = ce_fs + lambda_vt * ce_vt
        return {"loss": loss, "ce_fewshot": ce_fs, "ce_videotext": ce_vt, "logits": logits}

    def episode_loss(
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
        """``batch_episode_loss`` of one episode (inputs without the E dim); logits ``[N_q, W]``."""
        out = self.batch_episode_loss(
            support.unsqueeze(0),
            support_labels.unsqueeze(0),
            query.unsqueeze(0),
            query_labels.unsqueeze(0),
            None if class_text is None else class_text.unsqueeze(0),
            None if video_labels is None else video_labels.unsqueeze(0),
            text_table,
            lambda_vt,
        )
        out["logits"] = out["logits"][0]
        return out


register_head(
    "clipfsar-notext",
    description="CLIP-FSAR without text: no text token, no video-text loss (ablation)",
    use_text=False,
)(CLIPFSARHead)
