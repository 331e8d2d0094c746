"""CLIP-FSAR's temporal Transformer layer (prototype modulation) and fsar's frozen-mode adapter.

``TemporalTransformer`` is the reference's ``Transformer_v1`` at depth 1 (Wang et al., "CLIP-guided
Prototype Modulating for Few-shot Action Recognition", IJCV 2023; docs/METHOD.md section 2): one
shared pre-LayerNorm, bias-free q/k/v, multi-head softmax attention, output projection with bias and
dropout, residual; then Linear-GELU-Dropout-Linear-Dropout, residual. No positional encoding and no
final norm. Submodule names follow the reference so a checkpoint maps by prefix
(``head.context2.layers.0.0.fn.`` -> ``transformer.``, ``...0.0.norm.`` -> ``transformer.norm.``,
``...0.1.net.`` -> ``transformer.ffn.``).

Dropout per episode: inside :func:`episode_dropout` (the trainers open it around every training
forward) each episode's dropout masks are drawn from that episode's own generator, seeded by the
trainer from ``(train.seed, step, episode index)``, so the masks of an episode do not depend on
which process trains it, on the other episodes of its batch, or on an interruption. Outside it,
dropout is ``nn.Dropout`` on the global torch RNG (the reference's behaviour).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TemporalTransformer", "ResidualAdapter", "EpisodeDropout", "episode_dropout"]

_GENERATORS: contextvars.ContextVar[Sequence[torch.Generator] | None] = contextvars.ContextVar(
    "fsar_episode_dropout", default=None
)


@contextlib.contextmanager
def episode_dropout(generators: Sequence[torch.Generator]) -> Iterator[None]:
    """Draw :class:`EpisodeDropout` masks per episode inside the block.

    Args:
        generators: one generator per episode of the batch the block's forwards run on, in batch
            order (on the tensors' device); each forward's inputs must be episode-major
            (``[E, ...]``), as the heads' ``batch_episode_*`` inputs are. A generator advances
            with every mask drawn, so an episode's masks depend only on its own generator and
            on the sequence of forwards.
    """
    token = _GENERATORS.set(list(generators))
    try:
        yield
    finally:
        _GENERATORS.reset(token)


class EpisodeDropout(nn.Dropout):
    """``nn.Dropout`` whose masks come from per-episode generators inside :func:`episode_dropout`.

    The leading dimension of the input must be a multiple of the number of generators: episode
    ``e`` owns the ``e``-th equal slice of it (episode-major, as after ``reshape(-1, L, D)`` of an
    ``[E, N, L, D]`` input).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gens = _GENERATORS.get()
        if gens is None or not self.training or self.p == 0.0:
            return super().forward(x)
        e = len(gens)
        if e == 0 or x.shape[0] % e:
            raise ValueError(
                f"episode dropout: {e} generators for a batch of leading size {x.shape[0]}"
            )
        keep = 1.0 - self.p
        mask = torch.empty((e, x.numel() // e), dtype=x.dtype, device=x.device)
        for i, g in enumerate(gens):
            mask[i].bernoulli_(keep, generator=g)
        return x * mask.view(x.shape).div_(keep)


class TemporalTransformer(nn.Module):
    """One pre-norm Transformer layer over a sequence of frame (and text) tokens.

    Args:
        dim: token width D.
        num_heads: attention heads (8 in the reference); must divide ``dim``.
        ffn_dim: hidden width of the feed-forward block (2048).
        attn_dropout: dropout after the attention output projection (0.2).
        ffn_dropout: dropout after the GELU and after the second linear (0.05).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        attn_dropout: float = 0.2,
        ffn_dropout: float = 0.05,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the feature width {dim}")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), EpisodeDropout(attn_dropout))
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.GELU(),  # exact (erf) GELU, as nn.GELU() in the reference
            EpisodeDropout(ffn_dropout),
            nn.Linear(ffn_dim, dim),
            EpisodeDropout(ffn_dropout),
        )

    def forward(self, x: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """``[..., L, D]`` -> ``[..., L, D]`` (any leading dims; each sequence attends to itself).

        Args:
            keep: compute only the outputs of the first ``keep`` tokens -> ``[..., keep, D]``;
                every token is still attended to. The work after the attention (query
                projection, output projection, feed-forward) of the other tokens is skipped,
                e.g. the class text token of a support, whose output CLIP-FSAR discards.
        """
        lead, (length, dim) = x.shape[:-2], x.shape[-2:]
        x = x.reshape(-1, length, dim)  # [B, L, D]
        h = self.num_heads
        n = self.norm(x)  # the same normalised sequence is used as q, k and v
        if keep is None or keep >= length:
            keep = length
            # one matmul for q, k, v: [B, L, 3D]
            w = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight], dim=0)
            q, k, v = F.linear(n, w).chunk(3, dim=-1)
        else:
            k, v = F.linear(n, torch.cat([self.to_k.weight, self.to_v.weight])).chunk(2, dim=-1)
            q = F.linear(n[:, :keep], self.to_q.weight)  # [B, keep, D]
            x = x[:, :keep]
        # [B, L, D] -> [B, h, L, D/h]
        q, k, v = (t.reshape(t.shape[0], -1, h, dim // h).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / sqrt(D/h)) v
        att = att.transpose(1, 2).reshape(-1, keep, dim)  # [B, h, keep, D/h] -> [B, keep, D]
        x = x + self.to_out(att)
        x = x + self.ffn(x)
        return x.reshape(*lead, keep, dim)


class ResidualAdapter(nn.Module):
    """``x + fc2(GELU(fc1(LayerNorm(x))))`` per frame; ``fc2`` starts at zero (identity at start).

    fsar's trainable stand-in for the visual tower in the frozen mode (see ``CLIPFSARHead``).

    Args:
        dim: feature width D.
        hidden: bottleneck width.
    """

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` -> ``[..., D]``."""
        return x + self.fc2(self.act(self.fc1(self.norm(x))))
