"""Frame distances and the soft OTAM alignment distance.

OTAM (Ordered Temporal Alignment Module) is from Cao et al., "Few-Shot Video Classification via
Temporal Alignment", CVPR 2020. This is the variant CLIP-FSAR (Wang et al., "CLIP-guided Prototype
Modulating for Few-shot Action Recognition", IJCV 2023) uses, ``OTAM_cum_dist_v2`` of the authors'
``models/base/few_shot.py``, written from docs/METHOD.md section 3: one zero column padded on each
side, a plain running sum on row 0, a soft-min over (up-left, left) in the middle columns and over
three neighbours in the first and the last column.

Speed: this runs on every (query, class) pair of every evaluation episode, so the recurrence is
vectorised over all leading dims and the Python loop only visits rows and columns, never pairs.
The differentiable form works on ``g = -C / lambda``, where the soft-min becomes one ``logaddexp``
per cell (stable for any input, unlike the reference's naive ``log(sum(exp))``); it stacks D and
Dᵀ so both directions share one pass. Without gradients, when the caller bounds the distances
(``max_dist``: ``1 - cos`` is at most 2) so that no path can underflow, the recurrence runs on
``P = exp(g)`` instead (a ``logaddexp`` costs an exp and a log1p per cell): one ``exp`` per
distance, shared by both directions, then a whole column of cells per add and multiply, since a
cell needs only the column to its left (:func:`_columns_exp`), and one ``log`` per pair at the
end. Both forms are elementwise over the batch (sums run row by row, not by a reduction kernel),
so a pair's distance never depends on the other pairs it is computed with.
"""

from __future__ import annotations

import contextlib
import math

import torch

__all__ = [
    "cos_sim",
    "distances_from_products",
    "frame_distances",
    "frame_products",
    "otam_align",
    "otam_distance",
    "OTAMMatching",
]

_LOG2 = math.log(2.0)
#: The exp form is used while every alignment path's product stays above exp(-limit): float32's
#: smallest normal number is 1.2e-38 = exp(-87.3), float64's exp(-708).
_EXP_LIMIT = {torch.float32: 80.0, torch.float64: 700.0}


def cos_sim(
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 0.01,
    x_norm: torch.Tensor | None = None,
    y_norm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cosine similarity with the reference's epsilon on the norm product.

    ``cos(x, y) = x·y / (|x| |y| + eps)``, as ``cos_sim`` in the reference (not a clamp per norm).

    Args:
        x: ``[..., N, D]``.
        y: ``[..., M, D]`` (leading dims broadcast with ``x``'s).
        eps: added to the product of the norms.
        x_norm, y_norm: ``|x|`` ``[..., N]`` and ``|y|`` ``[..., M]`` when the caller has them
            already (the evaluator computes them once per video); computed here otherwise.

    Returns:
        ``[..., N, M]``.
    """
    num = torch.matmul(x, y.transpose(-1, -2))  # [..., N, M]
    xn = x.norm(dim=-1) if x_norm is None else x_norm
    yn = y.norm(dim=-1) if y_norm is None else y_norm
    return _cos_from_products(num, xn, yn, eps)


def _cos_from_products(
    num: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor, eps: float
) -> torch.Tensor:
    """``num / (|x| |y| + eps)``: products ``[..., N, M]``, norms ``[..., N]`` and ``[..., M]``."""
    den = xn.unsqueeze(-1) * yn.unsqueeze(-2)  # [..., N, 1] * [..., 1, M] -> [..., N, M]
    return num / (den + eps)


def frame_products(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Dot products of every query frame with every prototype frame (the matmul of
    :func:`frame_distances`).

    Args:
        query: ``[..., Nq, T, D]``.
        protos: ``[..., W, T', D]`` (leading dims broadcast with ``query``'s).

    Returns:
        ``[..., Nq*T, W*T']``.
    """
    nq, t, d = query.shape[-3:]
    w, ts = protos.shape[-3], protos.shape[-2]
    q = query.reshape(*query.shape[:-3], nq * t, d)  # [..., Nq*T, D]
    p = protos.reshape(*protos.shape[:-3], w * ts, d)  # [..., W*T', D]
    return torch.matmul(q, p.transpose(-1, -2))


def distances_from_products(
    products: torch.Tensor,
    query_norms: torch.Tensor,
    proto_norms: torch.Tensor,
    eps: float = 0.01,
) -> torch.Tensor:
    """``1 - cos`` from :func:`frame_products` and the frames' norms.

    Args:
        products: ``[..., Nq*T, W*T']``.
        query_norms: ``[..., Nq, T]``; proto_norms: ``[..., W, T']``.
        eps: cosine epsilon (0.01 in the reference), added to the product of the norms.

    Returns:
        ``[..., Nq, W, T, T']``: rows are query frames, columns prototype frames.
    """
    nq, t = query_norms.shape[-2:]
    w, ts = proto_norms.shape[-2:]
    qn = query_norms.reshape(*query_norms.shape[:-2], nq * t)
    pn = proto_norms.reshape(*proto_norms.shape[:-2], w * ts)
    sim = _cos_from_products(products, qn, pn, eps)  # [..., Nq*T, W*T']
    sim = sim.reshape(*sim.shape[:-2], nq, t, w, ts).transpose(-3, -2)  # [..., Nq, W, T, T']
    return 1.0 - sim


def frame_distances(
    query: torch.Tensor,
    protos: torch.Tensor,
    eps: float = 0.01,
    query_norms: torch.Tensor | None = None,
    proto_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1 - cos`` between every query frame and every prototype frame.

    Args:
        query: ``[..., Nq, T, D]`` query frame features.
        protos: ``[..., W, T', D]`` class prototypes (leading dims broadcast with ``query``'s).
        eps: cosine epsilon (0.01 in the reference).
        query_norms, proto_norms: the frames' norms ``[..., Nq, T]`` and ``[..., W, T']`` if
            known (computed once per video by the evaluator); computed here otherwise. The
            arithmetic is :func:`cos_sim`'s either way.

    Returns:
        ``[..., Nq, W, T, T']``: rows are query frames, columns prototype frames.
    """
    qn = query.norm(dim=-1) if query_norms is None else query_norms
    pn = protos.norm(dim=-1) if proto_norms is None else proto_norms
    return distances_from_products(frame_products(query, protos), qn, pn, eps)


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


def _columns_exp(e: torch.Tensor) -> torch.Tensor:
    """The exp-form recurrence over cells stored column by column: ``e`` ``[Ls, Lq, B]`` holds
    ``exp(-C / lam)``; returns ``P`` of the padded end cell ``[B]`` (``-lam * log`` of it is the
    distance).

    Cell ``(l, m)`` depends only on column ``m - 1`` (up-left and left), so a whole column is one
    add and one multiply: ``P[:, m] = (P[:, m-1] shifted down one row + P[:, m-1]) * e[:, m]``.
    The column buffers keep a zero row on top, which makes row 0 the plain running product. The
    first column is a recurrence down the rows, ``P[l, 0] = (P[l-1, 0] + 2) * e[l, 0]`` (the two
    padded zero-cost neighbours add ``exp(0) = 1`` each), and the padded last column sums to
    ``2 * sum(P[:, -1]) - P[-1, -1]`` (its soft-min adds the cells left and up-left of each row,
    plus its own value above).
    """
    ls, lq = e.shape[0], e.shape[1]
    col = e.new_empty((lq + 1, *e.shape[2:]))  # [Lq + 1, B], row 0 the zero pad
    nxt = torch.empty_like(col)
    col[0].zero_()
    nxt[0].zero_()
    e0 = e[0]
    col[1].copy_(e0[0])
    for row_i in range(1, lq):
        torch.add(col[row_i], 2.0, out=col[row_i + 1]).mul_(e0[row_i])
    for m in range(1, ls):
        torch.add(col[1:], col[:-1], out=nxt[1:]).mul_(e[m])
        col, nxt = nxt, col
    total = col[1].clone()  # summed row by row: a reduction kernel's order could depend on B
    for row_i in range(2, lq + 1):
        total.add_(col[row_i])
    return total.mul_(2.0).sub_(col[lq])


def _otam_one_way_exp(dists: torch.Tensor, lam: float) -> torch.Tensor:
    """:func:`_otam_one_way` on ``P = exp(g)`` (no autograd; the caller checks underflow).

    ``logaddexp(a, b) + n`` becomes ``(P_a + P_b) * exp(n)``, computed a column at a time
    (:func:`_columns_exp`).
    """
    lq, ls = dists.shape[-2:]
    lead = dists.shape[:-2]
    e = torch.exp(dists * (-1.0 / lam)).reshape(-1, lq, ls)  # [B, Lq, Ls]
    cols = e.permute(2, 1, 0).contiguous()  # [Ls, Lq, B]: a column is contiguous
    return _columns_exp(cols).log_().mul_(-lam).reshape(lead)


def _otam_both_exp(dists: torch.Tensor, lam: float) -> torch.Tensor:
    """``OTAM(D) + OTAM(Dᵀ)`` of square ``[..., L, L]`` in the exp form, in one pass.

    ``exp(-D / lam)`` is taken once, in the memory order of ``dists``; both directions are laid out
    column by column in one buffer (:func:`_both_exp_columns`).
    """
    return _both_exp_columns(torch.exp(dists * (-1.0 / lam)), lam)


def _both_exp_columns(e: torch.Tensor, lam: float) -> torch.Tensor:
    """``OTAM(D) + OTAM(Dᵀ)`` from ``e = exp(-D / lam)`` ``[..., L, L]`` (rows: query frames; any
    strides) -> ``[...]``.

    Both directions go column by column into one buffer ``[L, L, 2, pairs]``, the pairs
    innermost: Dᵀ's columns (query frames) are ``e`` in one copy, D's columns (prototype frames)
    that buffer transposed, a copy of contiguous pair vectors.
    """
    n = e.shape[-1]
    lead = e.shape[:-2]
    k = len(lead)
    b = e[..., 0, 0].numel()
    cols = e.new_empty((n, n, 2, *lead))  # [column, row, direction, ...]
    cols[:, :, 1].copy_(e.permute(k, k + 1, *range(k)))  # Dᵀ: column = query frame
    cols[:, :, 0].copy_(cols[:, :, 1].transpose(0, 1))  # D: column = prototype frame
    end = _columns_exp(cols.view(n, n, 2 * b)).log_().mul_(-lam).view(2, b)
    return (end[0] + end[1]).reshape(lead)


def _exp_form(dists: torch.Tensor, lam: float, max_dist: float | None) -> bool:
    """Whether the exp form applies: no gradient wanted, and no alignment path can underflow."""
    lq, ls = dists.shape[-2:]
    return _exp_form_fits(lq, ls, dists.dtype, lam, max_dist) and not _wants_grad(dists)


def _exp_form_fits(
    lq: int, ls: int, dtype: torch.dtype, lam: float, max_dist: float | None
) -> bool:
    """Whether no alignment path of an ``Lq x Ls`` matrix bounded by ``max_dist`` can underflow
    in the exp form."""
    limit = _EXP_LIMIT.get(dtype, 0.0)
    return max_dist is not None and max(float(max_dist), 0.0) / lam * (lq + ls) < limit


def _wants_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _one_way(dists: torch.Tensor, lam: float, max_dist: float | None) -> torch.Tensor:
    if _exp_form(dists, lam, max_dist):
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
        if _exp_form(dists, lam, max_dist):
            return _otam_both_exp(dists, lam)
        # both directions in one pass: [2, ..., L, L]
        both = _otam_one_way(torch.stack([dists, dists.transpose(-1, -2)]), lam)
        return both[0] + both[1]
    return _one_way(dists, lam, max_dist) + _one_way(dists.transpose(-1, -2), lam, max_dist)


def _otam_align_products(
    products: torch.Tensor,
    query_norms: torch.Tensor,
    proto_norms: torch.Tensor,
    lam: float,
    eps: float,
) -> torch.Tensor:
    """:func:`otam_align` of :func:`distances_from_products` in the exp form, the same numbers in
    fewer passes (no gradients; square ``T x T`` alignments that cannot underflow).

    ``exp(-(1 - cos) / lam)`` is computed in the products' own contiguous layout
    ``[e, (q, t), (w, t')]`` and handed to :func:`_both_exp_columns` as a strided view, whose one
    scattered copy replaces the two of a permuted ``1 - cos``.

    Args:
        products: ``[..., Nq*T, W*T]`` float32/float64; query_norms ``[..., Nq, T]``;
            proto_norms ``[..., W, T]``.

    Returns:
        ``[..., Nq, W]``: ``-(OTAM(D) + OTAM(Dᵀ))``.
    """
    nq, t = query_norms.shape[-2:]
    w = proto_norms.shape[-2]
    lead = products.shape[:-2]
    x = products.reshape(-1, nq * t, w * t)  # [e, (q t), (w t')]
    e = x.shape[0]
    cos = _cos_from_products(x, query_norms.reshape(e, nq * t), proto_norms.reshape(e, w * t), eps)
    g = cos.sub_(1.0).mul_(1.0 / lam).exp_()  # exp((cos - 1) / lam), bit for bit -(1 - cos)/lam
    pairs = g.view(e, nq, t, w, t).transpose(2, 3)  # [e, q, w, t, t'], a view
    return -_both_exp_columns(pairs, lam).reshape(*lead, nq, w)


def otam_align(dists: torch.Tensor, lam: float) -> torch.Tensor:
    """``-(OTAM(D) + OTAM(Dᵀ))`` of ``1 - cos`` frame distances ``[..., T, T]`` -> ``[...]``.

    ``1 - cos <= 2``, so without gradients the exp form applies.
    """
    return -otam_distance(dists, lam, bidirectional=True, max_dist=2.0)


def _float32(x: torch.Tensor) -> contextlib.AbstractContextManager[object]:
    """Autocast off on ``x``'s device; nothing to enter where it is off already (the evaluator
    calls the matching thousands of times, and an autocast context costs about 9 us)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


class OTAMMatching:
    """Mixin: a head's ``match`` as bidirectional OTAM of ``1 - cos`` frame distances, in two
    stages the evaluator can run in blocks of different sizes, with the frames' float32 norms
    passed in (the evaluator computes them once per video instead of once per pair).

    ``frame_products`` (the matmul: gathered features should be in cache) and ``match_products``
    (norms, distances and the alignment: elementwise, cheaper per element on large blocks). Both
    run in float32 with autocast off. Needs ``otam_lambda``.
    """

    otam_lambda: float

    def frame_products(self, query_enc: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """``[..., N_q, T, D]`` x ``[..., W, T, D]`` -> ``[..., N_q*T, W*T]``: float32 dot
        products of the frames."""
        with _float32(query_enc):
            return frame_products(query_enc.float(), protos.float())

    def match_products(
        self, products: torch.Tensor, query_norms: torch.Tensor, proto_norms: torch.Tensor
    ) -> torch.Tensor:
        """Products ``[..., N_q*T, W*T]`` and the frames' float32 norms ``[..., N_q, T]``,
        ``[..., W, T]`` -> ``-(OTAM(D) + OTAM(Dᵀ))``, ``D = 1 - cos``: ``[..., N_q, W]``."""
        with _float32(products):
            lam, (t, ts) = self.otam_lambda, (query_norms.shape[-1], proto_norms.shape[-1])
            if (
                t == ts
                and products.dtype in (torch.float32, torch.float64)
                and query_norms.dtype == proto_norms.dtype == products.dtype
                and _exp_form_fits(t, ts, products.dtype, lam, 2.0)
                and not _wants_grad(products, query_norms, proto_norms)
            ):
                return _otam_align_products(products, query_norms, proto_norms, lam, 0.01)
            dists = distances_from_products(products, query_norms, proto_norms)
            return otam_align(dists, lam)  # [..., N_q, W, T, T] -> [..., N_q, W]

    def match(
        self,
        query_enc: torch.Tensor,
        protos: torch.Tensor,
        query_norms: torch.Tensor | None = None,
        proto_norms: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``-(OTAM(D) + OTAM(Dᵀ))`` with ``D = 1 - cos`` (reference epsilon): ``[..., N_q, T, D]``
        x ``[..., W, T, D]`` -> ``[..., N_q, W]``; the frames' float32 norms may be passed."""
        with _float32(query_enc):
            q, p = query_enc.float(), protos.float()
            qn = q.norm(dim=-1) if query_norms is None else query_norms
            pn = p.norm(dim=-1) if proto_norms is None else proto_norms
            return self.match_products(self.frame_products(q, p), qn, pn)
