"""Learning-rate schedule (hand numbers at the boundaries) and the weight decay groups."""

from __future__ import annotations

import pytest
import torch

from fsar_cli.models import create_head
from fsar_cli.recipe import ModelCfg, TrainCfg
from fsar_cli.train.schedule import build_optimizer, lr_at, norm_parameter_names, set_lr

# S = 10 steps, base 1e-4, warm-up from 1e-5, 50 steps in all
CFG = TrainCfg(lr=1e-4, warmup_lr=1e-5, lr_step=10, steps=50)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1e-5),  # warm-up starts exactly at warmup_lr
        (5, 1e-5 + 9e-5 * 5 / 10),  # 5.5e-5
        (9, 1e-5 + 9e-5 * 9 / 10),  # S-1: 9.1e-5, still warming up
        (10, 1e-4),  # S: base lr
        (19, 1e-4),
        (20, 1e-5),  # 2S: x0.1
        (29, 1e-5),
        (30, 1e-6),  # 3S: x0.01 ...
        (49, 1e-6),  # ... to the end
    ],
)
def test_lr_at_boundaries(step: int, expected: float) -> None:
    assert lr_at(step, CFG) == pytest.approx(expected, rel=1e-12)


def test_lr_without_step_length_is_constant() -> None:
    cfg = TrainCfg(lr=3e-4, warmup_lr=1e-6, lr_step=0)
    assert [lr_at(s, cfg) for s in (0, 1, 1000)] == [3e-4] * 3
    with pytest.raises(ValueError):
        lr_at(-1, CFG)


def test_no_weight_decay_on_norm_parameters() -> None:
    head = create_head("clipfsar", 32, ModelCfg(ffn_dim=64, adapter="residual", adapter_hidden=16))
    opt = build_optimizer(head, TrainCfg(weight_decay=1e-3))
    names = {id(p): n for n, p in head.named_parameters()}
    groups = {g["name"]: g for g in opt.param_groups}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert no_decay == {
        "transformer.norm.weight",
        "transformer.norm.bias",
        "adapter.norm.weight",
        "adapter.norm.bias",
    }
    assert no_decay == norm_parameter_names(head)
    assert groups["no_decay"]["weight_decay"] == 0.0
    assert groups["decay"]["weight_decay"] == 1e-3
    # linear biases and the video-text scale are decayed (the reference excludes norms only)
    assert {"scale", "transformer.ffn.0.bias", "adapter.fc1.bias"} <= decay
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)


def test_weight_decay_moves_only_decayed_parameters() -> None:
    """With zero loss gradients, the L2 term alone moves the decayed parameters, not the norms."""
    head = create_head("clipfsar", 32, ModelCfg(ffn_dim=64, adapter_hidden=16))
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.5)  # make every parameter non-zero (fc2 starts at zero)
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    opt = build_optimizer(head, TrainCfg(weight_decay=1e-2))
    set_lr(opt, 1e-3)
    for p in head.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    norms = norm_parameter_names(head)
    for n, p in head.named_parameters():
        if n in norms:
            assert torch.equal(p, before[n]), n
        else:
            assert not torch.equal(p, before[n]), n
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)
