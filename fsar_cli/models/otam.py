"""Frame distances and the soft OTAM alignment distance.

OTAM (Ordered Temporal Alignment Module) is from Cao et al., "Few-Shot Video Classification via
Temporal Alignment", CVPR 2020. This is the variant CLIP-FSAR (Wang et al., "CLIP-guided Prototype
Modulating for Few-shot Action Recognition", IJCV 2023) uses, ``OTAM_cum_dist_v2`` of the authors'
``models/base/few_shot.py``, written from docs/METHOD.md section 3: one zero column padded on each
side, a plain running sum on row 0, a soft-min over (up-left, left) in the middle columns and over
three neighbours in the first and the last column.

Speed: this runs on every (query, class) pair of every evaluation episode, so the recurrence is
vectorised over all leading dims and the Python loop only visits the Lq x Ls cells, and the
bidirectional form stacks D and Dᵀ so both directions share one pass. The differentiable form
works on ``g = -C / lambda``, where the soft-min becomes one ``logaddexp`` per cell (stable for
any input, unlike the reference's naive ``log(sum(exp))``). Without gradients, when the caller
bounds the distances (``max_dist``: ``1 - cos`` is at most 2) so that no path can underflow, the
recurrence runs on ``P = exp(g)`` instead: one ``exp`` per cell up front, then a multiply and an
add per cell in preallocated buffers, and one ``log`` at the end (a ``logaddexp`` costs an exp and
a log1p per cell). Both forms are elementwise over the batch, so a pair's distance never depends
on the other pairs it is computed with.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cos_sim", "frame_distances", "otam_distance"]

_LOG2 = math.log(2.0)
#: The exp form is used while every alignment path's product stays above exp(-limit): float32's
#: smallest normal number is 1.2e-38 = exp(-87.3), float64's exp(-708).
_EXP_LIMIT = {torch.float32: 80.0, torch.float64: 700.0}


def cos_sim(x: torch.Tensor, y: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """Cosine similarity with the reference's epsilon on the norm product.

    ``cos(x, y) = x·y / (|x| |y| + eps)``, as ``cos_sim`` in the reference (not a clamp per norm).

    Args:
        x: ``[..., N, D]``.
        y: ``[..., M, D]`` (leading dims broadcast with ``x``'s).
        eps: added to the product of the norms.

    Returns:
        ``[..., N, M]``.
    """
    num = torch.matmul(x, y.transpose(-1, -2))  # [..., N, M]
    den = torch.matmul(
        x.norm(dim=-1).unsqueeze(-1), y.norm(dim=-1).unsqueeze(-2)
    )  # [..., N, 1] @ [..., 1, M] -> [..., N, M]
    return num / (den + eps)


def frame_distances(query: torch.Tensor, protos: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """``1 - cos`` between every query frame and every prototype frame.

    Args:
        query: ``[..., Nq, T, D]`` query frame features.
        protos: ``[..., W, T', D]`` class prototypes (leading dims broadcast with ``query``'s).
        eps: cosine epsilon (0.01 in the reference).

    Returns:
        ``[..., Nq, W, T, T']``: rows are query frames, columns prototype frames.
    """
    nq, t, d = query.shape[-3:]
    w, ts = protos.shape[-3], protos.shape[-2]
    q = query.reshape(*query.shape[:-3], nq * t, d)  # [..., Nq*T, D]
    p = protos.reshape(*protos.shape[:-3], w * ts, d)  # [..., W*T', D]
    sim = cos_sim(q, p, eps)  # [..., Nq*T, W*T']
    sim = sim.reshape(*sim.shape[:-2], nq, t, w, ts).transpose(-3, -2)  # [..., Nq, W, T, T']
    return 1.0 - sim


def _otam_one_way(dists: torch.Tensor, lam: float) -> torch.Tensor:
    """OTAM of ``[..., Lq, Ls]`` -> ``[...]``; the recurrence runs on ``g = -C / lam``.

    In the g domain, ``smin(a, b) = -lam * log(exp(-a/lam) + exp(-b/lam))`` becomes
    ``logaddexp(g_a, g_b)``; the padded column 0 stays C = 0 (g = 0), so the first column's
    three-way soft-min ``smin(0, C[l-1,1], 0)`` is ``logaddexp(g[l-1,1], log 2)``.
    """
    lq, ls = dists.shape[-2:]
    lead = dists.shape[:-2]
    # [..., Lq, Ls] -> [Lq, Ls, B]: each cell is then one contiguous vector over the whole batch
    n = (dists * (-1.0 / lam)).reshape(-1, lq, ls).permute(1, 2, 0).contiguous()
    # row 0: running sum over columns 1..Ls; the last padded column adds 0, so it equals column Ls
    prev = list(torch.cumsum(n[0], dim=0).unbind(0))  # Ls x [B]: g[0, 1..Ls]
    last = prev[-1]  # g[0, Ls+1]
    log2 = torch.tensor(_LOG2, dtype=n.dtype, device=n.device)
    for row_i in range(1, lq):
        nl = n[row_i]
        row = [nl[0] + torch.logaddexp(prev[0], log2)]  # m = 1: smin(C[l-1,0], C[l-1,1], C[l,0])
        for m in range(1, ls):  # m = 2..Ls: diagonal and left only
            row.append(nl[m] + torch.logaddexp(prev[m - 1], row[m - 1]))
        # m = Ls+1 (padded zero column): smin(C[l-1,Ls], C[l-1,Ls+1], C[l,Ls])
        last = torch.logaddexp(torch.logaddexp(prev[-1], last), row[-1])
        prev = row
    return (last * (-lam)).reshape(lead)


def _otam_one_way_exp(dists: torch.Tensor, lam: float) -> torch.Tensor:
    """:func:`_otam_one_way` on ``P = exp(g)`` (no autograd; the caller checks underflow).

    ``logaddexp(a, b) + n`` becomes ``(P_a + P_b) * exp(n)``; the first column's three-way
    soft-min adds ``exp(log 2) = 2`` (two padded zero-cost neighbours).
    """
    lq, ls = dists.shape[-2:]
    lead = dists.shape[:-2]
    # [..., Lq, Ls] -> [Lq, Ls, B] of exp(-C / lam)
    e = (dists * (-1.0 / lam)).reshape(-1, lq, ls).permute(1, 2, 0).contiguous().exp_()
    prev = torch.cumprod(e[0], dim=0)  # [Ls, B]: P[0, 1..Ls]
    row = torch.empty_like(prev)
    last = prev[-1].clone()  # P[0, Ls+1]
    for row_i in range(1, lq):
        el = e[row_i]
        torch.add(prev[0], 2.0, out=row[0]).mul_(el[0])
        for m in range(1, ls):
            torch.add(prev[m - 1], row[m - 1], out=row[m]).mul_(el[m])
        last.add_(prev[-1]).add_(row[-1])
        prev, row = row, prev
    return last.log_().mul_(-lam).reshape(lead)


def _one_way(dists: torch.Tensor, lam: float, max_dist: float | None) -> torch.Tensor:
    lq, ls = dists.shape[-2:]
    limit = _EXP_LIMIT.get(dists.dtype, 0.0)
    if (
        max_dist is not None
        and max(float(max_dist), 0.0) / lam * (lq + ls) < limit
        and not (torch.is_grad_enabled() and dists.requires_grad)
    ):
        return _otam_one_way_exp(dists, lam)
    return _otam_one_way(dists, lam)


def otam_distance(
    dists: torch.Tensor,
    lam: float = 0.5,
    bidirectional: bool = False,
    max_dist: float | None = None,
) -> torch.Tensor:
    """Soft OTAM cumulative distance of frame-distance matrices (METHOD.md section 3).

    Args:
        dists: ``[..., Lq, Ls]`` frame distances (``1 - cos``), any leading dims.
        lam: soft-min temperature lambda (0.5 in the reference); must be > 0.
        bidirectional: return ``OTAM(D) + OTAM(Dᵀ)`` (query-to-support plus support-to-query),
            the distance CLIP-FSAR uses.
        max_dist: an upper bound of ``dists`` the caller guarantees (2 for ``1 - cos``); without
            gradients it allows the faster exp form where no alignment path can underflow
            (``max_dist / lam * (Lq + Ls) < 80`` in float32). Results agree with the log form
            to float rounding.

    Returns:
        ``[...]`` distances, float32 for half/bfloat16/float32 input (float64 stays float64).
        Differentiable.
    """
    if lam <= 0:
        raise ValueError(f"otam lambda must be > 0, got {lam}")
    if dists.dim() < 2 or dists.shape[-1] < 1 or dists.shape[-2] < 1:
        raise ValueError(f"otam_distance expects [..., Lq, Ls] with Lq, Ls >= 1, got {dists.shape}")
    if dists.dtype != torch.float64:
        dists = dists.float()
    if not bidirectional:
        return _one_way(dists, lam, max_dist)
    if dists.shape[-1] == dists.shape[-2]:
        # both directions in one pass: [2, ..., L, L]
        both = _one_way(torch.stack([dists, dists.transpose(-1, -2)]), lam, max_dist)
        return both[0] + both[1]
    return _one_way(dists, lam, max_dist) + _one_way(dists.transpose(-1, -2), lam, max_dist)
