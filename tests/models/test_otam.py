"""OTAM, cosine and frame distances: by hand, against a literal naive loop, shapes and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from fsar_cli.models import cos_sim, frame_distances, otam_distance
from fsar_cli.models.otam import (
    OTAMMatching,
    distances_from_products,
    otam_align,
)


def _smin(lam: float, *vals: float) -> float:
    return -lam * math.log(sum(math.exp(-v / lam) for v in vals))


def _naive_otam(d: list[list[float]], lam: float) -> float:
    """METHOD.md section 3 literally, one matrix, python floats, naive exp/log."""
    lq, ls = len(d), len(d[0])
    dp = [[0.0] + row + [0.0] for row in d]  # one zero column on each side
    c = [[0.0] * (ls + 2) for _ in range(lq)]
    for m in range(1, ls + 2):
        c[0][m] = dp[0][m] + c[0][m - 1]
    for row in range(1, lq):
        c[row][1] = dp[row][1] + _smin(lam, c[row - 1][0], c[row - 1][1], c[row][0])
        for m in range(2, ls + 1):
            c[row][m] = dp[row][m] + _smin(lam, c[row - 1][m - 1], c[row][m - 1])
        m = ls + 1
        c[row][m] = 0.0 + _smin(lam, c[row - 1][m - 1], c[row - 1][m], c[row][m - 1])
    return c[lq - 1][ls + 1]


def _naive_batch(d: torch.Tensor, lam: float) -> torch.Tensor:
    flat = d.reshape(-1, *d.shape[-2:]).double()
    out = [_naive_otam(m.tolist(), lam) for m in flat]
    return torch.tensor(out, dtype=torch.float64).reshape(d.shape[:-2])


def test_otam_3x3_by_hand() -> None:
    lam = 0.5
    d = [[0.2, 1.1, 0.7], [0.9, 0.3, 1.4], [0.5, 1.2, 0.1]]
    s = lambda *v: _smin(lam, *v)  # noqa: E731
    # row 0: running sum over the padded row [0, d00, d01, d02, 0]
    c01 = d[0][0]
    c02 = c01 + d[0][1]
    c03 = c02 + d[0][2]
    c04 = c03
    # row 1 (column 0 stays 0)
    c11 = d[1][0] + s(0.0, c01, 0.0)
    c12 = d[1][1] + s(c01, c11)
    c13 = d[1][2] + s(c02, c12)
    c14 = s(c03, c04, c13)
    # row 2
    c21 = d[2][0] + s(0.0, c11, 0.0)
    c22 = d[2][1] + s(c11, c21)
    c23 = d[2][2] + s(c12, c22)
    c24 = s(c13, c14, c23)
    got = otam_distance(torch.tensor(d), lam)
    assert got.shape == ()
    assert got.item() == pytest.approx(c24, abs=1e-6)
    assert _naive_otam(d, lam) == pytest.approx(c24, abs=1e-12)
    # the transposed direction, also by the naive loop
    dt = [list(r) for r in zip(*d, strict=True)]
    both = otam_distance(torch.tensor(d), lam, bidirectional=True)
    assert both.item() == pytest.approx(c24 + _naive_otam(dt, lam), abs=1e-6)


@pytest.mark.parametrize(
    "shape,lam",
    [((4, 5, 8, 8), 0.5), ((3, 8, 8), 0.1), ((6, 5, 7), 0.5), ((2, 1, 6), 0.5), ((2, 6, 1), 0.3)],
)
def test_otam_matches_naive_loop(shape: tuple[int, ...], lam: float) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    d = torch.rand(shape, generator=g) * 2  # 1 - cos lies in (0, 2)
    want = _naive_batch(d, lam)
    got = otam_distance(d, lam)
    assert got.dtype == torch.float32 and got.shape == shape[:-2]
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    # float64 input stays float64 and agrees to rounding
    torch.testing.assert_close(otam_distance(d.double(), lam), want, atol=1e-10, rtol=0)


def test_bidirectional_is_sum_of_directions() -> None:
    g = torch.Generator().manual_seed(1)
    sq = torch.rand(3, 4, 8, 8, generator=g) * 2
    rect = torch.rand(3, 5, 6, generator=g) * 2
    for d in (sq, rect):
        want = otam_distance(d) + otam_distance(d.transpose(-1, -2))
        torch.testing.assert_close(otam_distance(d, bidirectional=True), want)
        naive = _naive_batch(d, 0.5) + _naive_batch(d.transpose(-1, -2), 0.5)
        torch.testing.assert_close(
            otam_distance(d, bidirectional=True).double(), naive, atol=2e-5, rtol=0
        )


@pytest.mark.parametrize("lead", [(), (7,), (2, 3, 4)])
def test_batched_shapes_equal_per_matrix(lead: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(3)
    d = torch.rand(*lead, 8, 8, generator=g) * 2
    got = otam_distance(d, bidirectional=True)
    assert got.shape == lead
    flat = d.reshape(-1, 8, 8)
    one_by_one = torch.stack([otam_distance(m, bidirectional=True) for m in flat])
    torch.testing.assert_close(got.reshape(-1), one_by_one)


def test_half_input_computes_in_float32() -> None:
    d = torch.rand(4, 8, 8) * 2
    assert otam_distance(d.half()).dtype == torch.float32


def test_stable_where_naive_exp_underflows() -> None:
    # every soft-min term above ~104 * lambda: exp underflows in the naive float32 form, the
    # log-sum-exp form stays finite and equals the float64 naive loop
    d = torch.full((3, 3), 6.0)
    naive32 = torch.exp(torch.tensor([-6.0, -12.0]) / 0.05)
    assert naive32.sum() == 0  # the reference's form would take log(0)
    got = otam_distance(d, lam=0.05)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(_naive_otam(d.tolist(), 0.05), rel=1e-6)


def test_otam_gradcheck() -> None:
    d = (torch.rand(2, 4, 5, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: otam_distance(x, 0.5, bidirectional=True), (d,))


def test_otam_rejects_bad_lambda() -> None:
    with pytest.raises(ValueError):
        otam_distance(torch.rand(8, 8), lam=0.0)


def test_cos_sim_epsilon_on_norm_product() -> None:
    x = torch.tensor([[3.0, 4.0]])  # |x| = 5
    y = torch.tensor([[6.0, 8.0], [0.0, 1.0]])  # |y| = 10, 1
    got = cos_sim(x, y)
    want = torch.tensor([[50.0 / (50.0 + 0.01), 4.0 / (5.0 + 0.01)]])
    torch.testing.assert_close(got, want)


def test_frame_distances_layout() -> None:
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 3, 4, 6, generator=g)  # [E, Nq, T, D]
    p = torch.randn(2, 5, 4, 6, generator=g)  # [E, W, T, D]
    d = frame_distances(q, p)
    assert d.shape == (2, 3, 5, 4, 4)
    for e, i, j, a, b in [(0, 0, 0, 0, 0), (1, 2, 4, 3, 1), (0, 1, 3, 2, 3)]:
        x, y = q[e, i, a], p[e, j, b]
        want = 1 - (x @ y) / (x.norm() * y.norm() + 0.01)
        assert d[e, i, j, a, b].item() == pytest.approx(want.item(), abs=1e-6)


@pytest.mark.parametrize("lam", [0.5, 0.1])
@pytest.mark.parametrize("shape", [(7, 8, 8), (3, 5, 8, 6)])
def test_exp_form_without_gradients_equals_the_log_form(shape: tuple[int, ...], lam: float) -> None:
    torch.manual_seed(0)
    dists = torch.rand(shape) * 2.0  # 1 - cos lies in [0, 2]
    log_form = otam_distance(dists, lam, bidirectional=True)
    with torch.no_grad():
        fast = otam_distance(dists, lam, bidirectional=True, max_dist=2.0)
    # lam = 0.5: the exp form runs; lam = 0.1: paths could underflow, the log form runs
    torch.testing.assert_close(fast, log_form, rtol=1e-5, atol=1e-5)
    one = otam_distance(dists[:1], lam, max_dist=2.0)  # alone or in a batch: the same numbers
    assert torch.equal(one, otam_distance(dists, lam, max_dist=2.0)[:1])


@pytest.mark.parametrize("shape", [(6, 8, 8), (4, 1, 1), (3, 1, 6), (5, 7, 3), (2, 3, 8, 8)])
def test_exp_form_matches_the_naive_loop(shape: tuple[int, ...]) -> None:
    # the column-at-a-time exp recurrence, one-way and bidirectional, square and not, against
    # METHOD.md section 3 cell by cell in float64 python
    g = torch.Generator().manual_seed(11)
    d = torch.rand(shape, generator=g) * 2.0
    with torch.no_grad():
        one = otam_distance(d, 0.5, max_dist=2.0)
        both = otam_distance(d, 0.5, bidirectional=True, max_dist=2.0)
    torch.testing.assert_close(one.double(), _naive_batch(d, 0.5), atol=1e-5, rtol=0)
    naive_both = _naive_batch(d, 0.5) + _naive_batch(d.transpose(-1, -2), 0.5)
    torch.testing.assert_close(both.double(), naive_both, atol=2e-5, rtol=0)


def test_exp_form_at_the_largest_distances() -> None:
    # every cell at the bound (1 - cos = 2): the smallest products the exp form must carry
    d = torch.full((3, 8, 8), 2.0)
    with torch.no_grad():
        got = otam_distance(d, 0.5, bidirectional=True, max_dist=2.0)
    want = 2 * _naive_otam(d[0].tolist(), 0.5)
    torch.testing.assert_close(got.double(), torch.full((3,), want, dtype=torch.float64))


def test_given_frame_norms_give_the_same_distances() -> None:
    # the evaluator passes norms computed once per video: the numbers must not move at all
    g = torch.Generator().manual_seed(13)
    q, p = torch.randn(4, 5, 8, 32, generator=g), torch.randn(4, 3, 8, 32, generator=g)
    want = frame_distances(q, p)
    got = frame_distances(q, p, 0.01, q.norm(dim=-1), p.norm(dim=-1))
    assert torch.equal(got, want)
    assert torch.equal(frame_distances(q, p, 0.01, q.norm(dim=-1)), want)


class _Matcher(OTAMMatching):
    otam_lambda = 0.5


@pytest.mark.parametrize("lead", [(), (3,), (2, 4)])
@pytest.mark.parametrize("nq,w", [(5, 5), (3, 7), (1, 1)])
def test_match_products_without_gradients_is_the_two_step_alignment(
    lead: tuple[int, ...], nq: int, w: int
) -> None:
    # without gradients match_products aligns straight from the products (exp(-D / lam) in the
    # products' layout, one copy with the pairs innermost): bit for bit the numbers of 1 - cos
    # followed by otam_align, which the log form (training) and the reference test check
    g = torch.Generator().manual_seed(17)
    q = torch.randn(*lead, nq, 8, 64, generator=g)
    p = torch.randn(*lead, w, 8, 64, generator=g)
    m = _Matcher()
    products, qn, pn = m.frame_products(q, p), q.norm(dim=-1), p.norm(dim=-1)
    two_step = otam_align(distances_from_products(products, qn, pn), 0.5)
    with torch.no_grad():
        fused = m.match_products(products, qn, pn)
    assert fused.shape == (*lead, nq, w)
    assert torch.equal(fused, two_step)
    # with gradients: the log form, the same numbers to rounding, and differentiable
    qg = q.clone().requires_grad_()
    out = m.match(qg, p)
    out.sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()
    torch.testing.assert_close(out.detach(), fused, rtol=1e-5, atol=1e-5)


def test_match_products_falls_back_where_the_fused_form_does_not_apply() -> None:
    # prototypes with another frame count (not square), or float64 products with float32 norms:
    # the two-step path, same numbers
    g = torch.Generator().manual_seed(19)
    m = _Matcher()
    q, p = torch.randn(2, 3, 8, 16, generator=g), torch.randn(2, 4, 6, 16, generator=g)
    products = m.frame_products(q, p)
    with torch.no_grad():
        got = m.match_products(products, q.norm(dim=-1), p.norm(dim=-1))
        want = otam_align(distances_from_products(products, q.norm(dim=-1), p.norm(dim=-1)), 0.5)
    assert torch.equal(got, want)
    q, p = torch.randn(2, 3, 8, 16, generator=g), torch.randn(2, 4, 8, 16, generator=g)
    products = m.frame_products(q, p).double()
    with torch.no_grad():
        got = m.match_products(products, q.norm(dim=-1), p.norm(dim=-1))
    assert got.dtype == torch.float64 and got.shape == (2, 3, 4)
