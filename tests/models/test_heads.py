"""Every registered head: shapes, batch == per-episode, gradients, a naive re-implementation."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from fsar_cli.errors import EpisodeError, FsarError, RecipeError
from fsar_cli.models import CLIPFSARHead, UnknownHeadError, create_head, list_heads
from fsar_cli.recipe import ModelCfg

E, W, K, NQ, T, D = 2, 3, 2, 4, 8, 16
EPS = 0.01


def _cfg(**kw) -> ModelCfg:
    base = {"num_heads": 4, "ffn_dim": 64, "adapter_hidden": 8, "adapter": "residual"}
    return ModelCfg(**{**base, **kw})


def _make(name: str, seed: int = 0, perturb: bool = True, **kw):
    torch.manual_seed(seed)
    head = create_head(name, D, _cfg(**kw)).eval()
    if perturb:  # leave no identity LayerNorm or zero adapter: every path must matter
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in head.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return head


def _episodes(seed: int = 0, k: int = K, e: int = E):
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(e, W * k, T, D, generator=g)
    labels = torch.stack([torch.randperm(W * k, generator=g) % W for _ in range(e)])  # shuffled
    query = torch.randn(e, NQ, T, D, generator=g)
    query_labels = torch.randint(0, W, (e, NQ), generator=g)
    text = torch.randn(e, W, D, generator=g)
    return support, labels, query, query_labels, text


# -- a naive implementation: one episode, a loop over classes, plain torch ops ---------------------
def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (torch.sqrt((a * a).sum()) * torch.sqrt((b * b).sum()) + EPS)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0)))


def _layer_norm(x: torch.Tensor, ln) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _naive_transformer(tr, x: torch.Tensor) -> torch.Tensor:  # x [L, D]
    n = _layer_norm(x, tr.norm)
    q, k, v = n @ tr.to_q.weight.T, n @ tr.to_k.weight.T, n @ tr.to_v.weight.T
    dh = D // tr.num_heads
    heads = []
    for h in range(tr.num_heads):
        s = slice(h * dh, (h + 1) * dh)
        a = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(dh), dim=-1)
        heads.append(a @ v[:, s])
    x = x + torch.cat(heads, -1) @ tr.to_out[0].weight.T + tr.to_out[0].bias
    f = _gelu(x @ tr.ffn[0].weight.T + tr.ffn[0].bias) @ tr.ffn[3].weight.T + tr.ffn[3].bias
    return x + f


def _naive_adapter(ad, x: torch.Tensor) -> torch.Tensor:
    if ad is None:
        return x
    return (
        x
        + _gelu(_layer_norm(x, ad.norm) @ ad.fc1.weight.T + ad.fc1.bias) @ ad.fc2.weight.T
        + ad.fc2.bias
    )


def _naive_otam(d: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    lq, ls = d.shape
    c = [[torch.tensor(0.0)] * (ls + 2) for _ in range(lq)]
    dp = lambda r, m: d[r, m - 1] if 1 <= m <= ls else torch.tensor(0.0)  # noqa: E731
    smin = lambda *v: -lam * torch.log(sum(torch.exp(-x / lam) for x in v))  # noqa: E731
    for m in range(1, ls + 2):
        c[0][m] = dp(0, m) + c[0][m - 1]
    for r in range(1, lq):
        c[r][1] = dp(r, 1) + smin(c[r - 1][0], c[r - 1][1], c[r][0])
        for m in range(2, ls + 1):
            c[r][m] = dp(r, m) + smin(c[r - 1][m - 1], c[r][m - 1])
        c[r][ls + 1] = smin(c[r - 1][ls], c[r - 1][ls + 1], c[r][ls])
    return c[lq - 1][ls + 1]


def _naive_logits(head, support, labels, query, text) -> torch.Tensor:
    """One episode: support [N_s,T,D], labels [N_s], query [N_q,T,D], text [W,D] -> [N_q, W]."""
    out = torch.zeros(query.shape[0], W)
    if head.name in ("clipfsar", "clipfsar-notext"):
        q_enc = [
            _naive_transformer(head.transformer, _naive_adapter(head.adapter, q)) for q in query
        ]
    for c in range(W):
        shots = support[labels == c]  # [K, T, D]
        if head.name in ("clipfsar", "clipfsar-notext"):
            tr, ad = head.transformer, head.adapter
            tok = [text[c][None]] if head.uses_text else []
            if head.merge_before:
                merged = torch.stack([_naive_adapter(ad, s) for s in shots]).mean(0)
                proto = _naive_transformer(tr, torch.cat([merged, *tok]))[:T]
            else:
                proto = torch.stack(
                    [
                        _naive_transformer(tr, torch.cat([_naive_adapter(ad, s), *tok]))[:T]
                        for s in shots
                    ]
                ).mean(0)
        for i, q in enumerate(query):
            if head.name == "proto":
                out[i, c] = _cos(q.mean(0), torch.stack([s.mean(0) for s in shots]).mean(0))
            elif head.name == "text":
                out[i, c] = _cos(q.mean(0), text[c])
            else:
                if head.name == "otam":
                    qe, proto = q, shots.mean(0)
                else:
                    qe = q_enc[i]
                dist = torch.stack([torch.stack([1 - _cos(a, b) for b in proto]) for a in qe])
                out[i, c] = -(_naive_otam(dist) + _naive_otam(dist.T))
    return out


# -- registry-wide tests ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_heads())
def test_shapes_finite_and_attributes(name: str) -> None:
    head = _make(name)
    assert head.name == name
    assert isinstance(head.uses_text, bool) and isinstance(head.trainable, bool)
    assert head.trainable == any(p.requires_grad for p in head.parameters())
    support, labels, query, _, text = _episodes()
    with torch.no_grad():
        logits = head.batch_episode_logits(support, labels, query, text)
    assert logits.shape == (E, NQ, W)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_heads())
def test_batch_equals_per_episode(name: str) -> None:
    head = _make(name)
    support, labels, query, _, text = _episodes(1)
    with torch.no_grad():
        batch = head.batch_episode_logits(support, labels, query, text)
        for e in range(E):
            one = head.episode_logits(support[e], labels[e], query[e], text[e])
            torch.testing.assert_close(batch[e], one, atol=1e-5, rtol=0)


@pytest.mark.parametrize("merge_before", [True, False])
@pytest.mark.parametrize("name", list_heads())
def test_against_naive_implementation(name: str, merge_before: bool) -> None:
    head = _make(name, merge_before=merge_before)
    support, labels, query, _, text = _episodes(2)
    with torch.no_grad():
        batch = head.batch_episode_logits(support, labels, query, text)
        for e in range(E):
            want = _naive_logits(head, support[e], labels[e], query[e], text[e])
            torch.testing.assert_close(batch[e], want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", list_heads())
def test_gradients_reach_every_trainable_parameter(name: str) -> None:
    head = _make(name)
    if not head.trainable:
        assert list(head.parameters()) == []
        return
    support, labels, query, qlabels, text = _episodes(3)
    video_labels = torch.randint(0, 7, (E, W * K + NQ))
    table = torch.randn(7, D)
    out = head.batch_episode_loss(support, labels, query, qlabels, text, video_labels, table, 1.5)
    assert out["logits"].shape == (E, NQ, W)
    out["loss"].backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_untrained_adapter_zero_layer_gets_gradient() -> None:
    head = _make("clipfsar", perturb=False)  # fc2 of the adapter is exactly zero
    assert torch.count_nonzero(head.adapter.fc2.weight) == 0
    support, labels, query, qlabels, text = _episodes(4)
    out = head.batch_episode_loss(
        support,
        labels,
        query,
        qlabels,
        text,
        torch.zeros(E, W * K + NQ, dtype=torch.long),
        torch.randn(5, D),
        3.0,
    )
    out["loss"].backward()
    assert head.adapter.fc2.weight.grad.abs().sum() > 0
    assert head.adapter.fc2.bias.grad.abs().sum() > 0
    assert head.scale.grad.abs().sum() > 0


# -- clipfsar specifics ----------------------------------------------------------------------------
def test_merge_before_and_after_differ_for_k_gt_1_and_agree_for_k_1() -> None:
    before = _make("clipfsar", merge_before=True)
    after = _make("clipfsar", merge_before=False)
    torch.testing.assert_close(dict(before.state_dict()), dict(after.state_dict()))
    with torch.no_grad():
        s, lab, q, _, t = _episodes(5, k=3)
        diff = before.batch_episode_logits(s, lab, q, t) - after.batch_episode_logits(s, lab, q, t)
        assert diff.abs().max() > 1e-3
        s, lab, q, _, t = _episodes(5, k=1)
        torch.testing.assert_close(
            before.batch_episode_logits(s, lab, q, t), after.batch_episode_logits(s, lab, q, t)
        )


def test_untrained_residual_adapter_equals_no_adapter() -> None:
    plain = _make("clipfsar", adapter="none")
    adapted = _make("clipfsar", perturb=False, adapter="residual")
    missing, unexpected = adapted.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(m.startswith("adapter.") for m in missing)
    s, lab, q, _, t = _episodes(6)
    table = torch.randn(4, D)
    with torch.no_grad():
        torch.testing.assert_close(
            adapted.batch_episode_logits(s, lab, q, t), plain.batch_episode_logits(s, lab, q, t)
        )
        torch.testing.assert_close(
            adapted.video_text_logits(q[0], table), plain.video_text_logits(q[0], table)
        )


@pytest.mark.parametrize("merge_before", [True, False])
def test_decomposed_pieces_equal_batch(merge_before: bool) -> None:
    head = _make("clipfsar", merge_before=merge_before)
    s, lab, q, _, t = _episodes(7)
    with torch.no_grad():
        want = head.batch_episode_logits(s, lab, q, t)
        order = torch.argsort(lab, dim=1, stable=True)
        grouped = torch.stack([s[e, order[e]] for e in range(E)]).reshape(E, W, K, T, D)
        if merge_before:
            protos = head.merged_prototypes(grouped, t)
        else:  # per video, each with its class text, then the mean over shots
            text_per = t.unsqueeze(2).expand(E, W, K, D).reshape(-1, D)
            protos = head.encode_support(grouped.reshape(-1, T, D), text_per)
            protos = protos.reshape(E, W, K, T, D).mean(2)
        torch.testing.assert_close(protos, head.prototypes(grouped, t))
        q_enc = head.encode_query(q.reshape(-1, T, D)).reshape(E, NQ, T, D)
        torch.testing.assert_close(head.match(q_enc, protos), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [1, K])
@pytest.mark.parametrize("merge_before", [True, False])
@pytest.mark.parametrize("name", list_heads())
def test_every_head_has_a_consistent_decomposed_api(name: str, merge_before: bool, k: int) -> None:
    """What the fast evaluator assumes of every head: encode_support / merged_prototypes /
    prototypes / encode_query / match rebuild batch_episode_logits (the text head once kept the
    base identity encode_support, which turned its per-video prototypes into raw features)."""
    head = _make(name)
    head.merge_before = merge_before  # as the evaluator sets it from model.merge_before
    s, lab, q, _, t = _episodes(9, k=k)
    with torch.no_grad():
        want = head.batch_episode_logits(s, lab, q, t)
        order = torch.argsort(lab, dim=1, stable=True)
        grouped = torch.stack([s[e, order[e]] for e in range(E)]).reshape(E, W, k, T, D)
        protos = head.prototypes(grouped, t)  # [E, W, T, D]
        text_per = t.unsqueeze(2).expand(E, W, k, D).reshape(-1, D)  # each shot's class text
        per_video = head.encode_support(grouped.reshape(-1, T, D), text_per)  # [E*W*k, T, D]
        assert per_video.shape == (E * W * k, T, D)
        if not merge_before or k == 1:
            torch.testing.assert_close(per_video.reshape(E, W, k, T, D).mean(2), protos)
        if merge_before or k == 1:
            torch.testing.assert_close(head.merged_prototypes(grouped, t), protos)
        q_enc = head.encode_query(q.reshape(-1, T, D)).reshape(E, NQ, T, D)
        torch.testing.assert_close(head.match(q_enc, protos), want, atol=1e-6, rtol=0)


def test_text_head_support_encoding_is_the_class_text() -> None:
    head = create_head("text", D)
    x, text = torch.randn(5, T, D), torch.randn(5, D)
    out = head.encode_support(x, text)
    assert out.shape == (5, T, D)
    torch.testing.assert_close(out, text[:, None].expand(5, T, D))
    with pytest.raises(EpisodeError, match="class text"):
        head.encode_support(x)


def test_batch_loss_is_mean_of_episode_losses() -> None:
    head = _make("clipfsar")
    s, lab, q, ql, t = _episodes(8)
    vl = torch.randint(0, 6, (E, W * K + NQ))
    table = torch.randn(6, D)
    with torch.no_grad():
        batch = head.batch_episode_loss(s, lab, q, ql, t, vl, table, 1.2)
        single = [
            head.episode_loss(s[e], lab[e], q[e], ql[e], t[e], vl[e], table, 1.2) for e in range(E)
        ]
    for key in ("loss", "ce_fewshot", "ce_videotext"):
        torch.testing.assert_close(batch[key], torch.stack([o[key] for o in single]).mean())
    torch.testing.assert_close(batch["loss"], batch["ce_fewshot"] + 1.2 * batch["ce_videotext"])


def test_notext_has_no_text_path() -> None:
    head = _make("clipfsar-notext")
    assert not head.uses_text and "scale" not in dict(head.named_parameters())
    s, lab, q, ql, _ = _episodes(9)
    out = head.batch_episode_loss(s, lab, q, ql, None, None, torch.randn(3, D), 3.0)
    assert out["ce_videotext"].item() == 0.0
    torch.testing.assert_close(out["loss"], out["ce_fewshot"])


def test_clipfsar_requires_text_and_balanced_labels() -> None:
    head = _make("clipfsar")
    s, lab, q, _, t = _episodes(10)
    with pytest.raises(EpisodeError):
        head.batch_episode_logits(s, lab, q, None)
    bad = lab.clone()
    bad[:, 0] = (bad[:, 0] + 1) % W  # one class gets K+1 shots, another K-1
    with pytest.raises(EpisodeError, match="exactly"):
        head.batch_episode_logits(s, bad, q, t)


# -- registry and CLI ------------------------------------------------------------------------------
def test_registry_lists_and_rejects_unknown() -> None:
    assert {"clipfsar", "clipfsar-notext", "proto", "otam", "text"} <= set(list_heads())
    with pytest.raises(UnknownHeadError) as err:
        create_head("nope", D)
    assert isinstance(err.value, FsarError)
    for name in list_heads():
        assert name in str(err.value)


def test_create_head_uses_cfg() -> None:
    head = create_head("clipfsar", 24, ModelCfg(num_heads=6, ffn_dim=32, merge_before=False))
    assert isinstance(head, CLIPFSARHead)
    assert head.transformer.num_heads == 6 and head.transformer.ffn[0].out_features == 32
    assert head.merge_before is False and head.adapter is None  # ModelCfg default: none
    assert create_head("clipfsar", 24, ModelCfg(adapter="residual")).adapter is not None
    assert create_head("otam", 8, ModelCfg(otam_lambda=0.25)).otam_lambda == 0.25
    with pytest.raises(RecipeError, match="num_heads"):
        create_head("clipfsar", 30, ModelCfg(num_heads=8))


def test_heads_cli_lists_every_head() -> None:
    from fsar_cli.cli.app import app

    result = CliRunner().invoke(app, ["heads"])
    assert result.exit_code == 0, result.output
    for name in list_heads():
        assert name in result.output
