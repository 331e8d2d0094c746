"""The learning-rate schedule and the optimiser of meta-training (METHOD.md section 5).

The reference's effective schedule, in optimiser steps with step length ``S = train.lr_step``:
linear warm-up from ``warmup_lr`` to ``lr`` over steps ``0 .. S-1``, then ``lr`` for ``S`` steps,
``lr * 0.1`` for ``S`` steps, and ``lr * 0.01`` to the end. The optimiser is Adam with L2 weight
decay (added to the gradient, as ``torch.optim.Adam`` does) on every parameter except those of
normalisation layers, with one learning rate for everything.
"""

from __future__ import annotations

import torch
from torch import nn

from ..recipe import TrainCfg

__all__ = ["lr_at", "build_optimizer", "set_lr", "norm_parameter_names"]

# Normalisation layers whose parameters get no weight decay (the reference's "norm" parameters).
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._NormBase,
    nn.LocalResponseNorm,
)


def lr_at(step: int, cfg: TrainCfg) -> float:
    """Learning rate of optimiser step ``step`` (0-based).

    Args:
        step: index of the optimiser step about to be taken (0 for the first).
        cfg: the recipe's ``train`` section (``lr``, ``warmup_lr``, ``lr_step``).
    Returns:
        ``warmup_lr + (lr - warmup_lr) * step / S`` for ``step < S``; ``lr`` for ``S <= step < 2S``;
        ``0.1 * lr`` for ``2S <= step < 3S``; ``0.01 * lr`` afterwards. ``S <= 0`` means no
        warm-up and no decay (``lr`` throughout).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    s = int(cfg.lr_step)
    if s <= 0:
        return float(cfg.lr)
    if step < s:  # 1. linear warm-up, starting exactly at warmup_lr
        return float(cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * step / s)
    if step < 2 * s:  # 2. base learning rate
        return float(cfg.lr)
    if step < 3 * s:  # 3. first decay
        return float(cfg.lr * 0.1)
    return float(cfg.lr * 0.01)  # 4. second decay, to the end


def norm_parameter_names(module: nn.Module) -> set[str]:
    """Qualified names of the parameters that belong to normalisation layers."""
    names: set[str] = set()
    for mod_name, mod in module.named_modules():
        if isinstance(mod, _NORM_TYPES):
            for p_name, _ in mod.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def build_optimizer(module: nn.Module, cfg: TrainCfg) -> torch.optim.Adam:
    """Adam with L2 weight decay on all trainable parameters except normalisation parameters.

    Args:
        module: the head (all parameters with ``requires_grad`` are optimised).
        cfg: the recipe's ``train`` section (``betas``, ``weight_decay``; the learning rate is
            set each step with :func:`set_lr`, starting at ``lr_at(0, cfg)``).
    Returns:
        ``torch.optim.Adam`` with two parameter groups: ``decay`` (``weight_decay``) and
        ``no_decay`` (0.0), each group tagged with its ``name``.
    """
    norm_names = norm_parameter_names(module)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name in norm_names else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(cfg.weight_decay), "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.Adam(groups, lr=lr_at(0, cfg), betas=tuple(cfg.betas))  # type: ignore[arg-type]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set one learning rate on every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
