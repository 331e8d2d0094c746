"""What trains in ``train.mode: finetune`` and one optimiser step of it (:mod:`.finetune`).

:func:`build_model` loads the CLIP encoder on the CPU, computes the class text once with the
frozen text tower, and puts the visual tower (optionally activation-checkpointed) and a new head
(seeded by ``train.seed``, without the frozen-mode adapter) on the device with their optimiser.
:func:`finetune_step` runs this rank's episodes of a step one at a time (micro-batches of one
episode), averages the gradients across ranks (the DistributedDataParallel update) and steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..errors import DataError, TrainError
from ..models import create_head
from ..models.base import FewShotHead, check_class_text
from ..models.transformer import episode_dropout
from ..recipe import Recipe
from .finetune_data import class_text
from .schedule import build_optimizer
from .tower import enable_grad_checkpointing, episode_loss

__all__ = ["FinetuneModel", "build_model", "finetune_step"]

log = logging.getLogger(__name__)

_LOSSES = ("loss", "ce_fewshot", "ce_videotext")


@dataclasses.dataclass
class FinetuneModel:
    """What trains: the tower and the head, their optimiser, and the frozen text."""

    encoder: Any
    visual: nn.Module
    head: FewShotHead
    text_table: torch.Tensor  # [C, D] train classes, on the device (zeros for unnamed)
    val_text: np.ndarray  # [C_val, D], NaN for unnamed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    params: list[nn.Parameter]

    @property
    def modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"tower": self.visual, "head": self.head})


def build_model(
    recipe: Recipe,
    dev: torch.device,
    amp: torch.dtype | None,
    classes: np.ndarray,
    val_split: str,
    val_classes: np.ndarray,
) -> FinetuneModel:
    """Load the encoder on the CPU, compute the text once, put the tower and a new head on dev."""
    from ..encoders.clip import load_encoder

    f, cfg = recipe.features, recipe.train
    enc = load_encoder(f.encoder, f.weights, device="cpu")
    if f.crop != enc.input_resolution or f.resize < f.crop:
        raise TrainError(
            f"features.crop={f.crop}, features.resize={f.resize}, but encoder {enc.name!r} takes "
            f"{enc.input_resolution}x{enc.input_resolution} images; set features.crop="
            f"{enc.input_resolution} and features.resize >= it"
        )
    names, v_names = recipe.data.classes.train, recipe.data.classes.for_split(val_split)
    text, v_text = class_text(enc, names, f.prompt), class_text(enc, v_names, f.prompt)
    visual = enc.model.visual.float().to(dev).requires_grad_(True).train()
    if cfg.grad_checkpointing:
        n_blocks = enable_grad_checkpointing(visual)
        log.info("activation checkpointing on %d residual blocks", n_blocks)
    torch.manual_seed(cfg.seed)  # the head's initial weights (and dropout, until a resume)
    model_cfg = dataclasses.replace(recipe.model, adapter="none")  # the tower itself trains
    head = create_head(model_cfg.head, dim=enc.dim, cfg=model_cfg).to(dev).train()
    for t, cls, split, n in (
        (text, classes, "train", names),
        (v_text, val_classes, val_split, v_names),
    ):
        check_class_text(head, t, cls, error=TrainError, split=split, names=n, source="the recipe")
    modules = nn.ModuleDict({"tower": visual, "head": head})
    return FinetuneModel(
        enc,
        visual,
        head,
        torch.from_numpy(np.nan_to_num(text, nan=0.0)).to(dev),
        v_text,
        build_optimizer(modules, cfg),
        torch.amp.GradScaler("cuda") if amp == torch.float16 else None,
        [p for p in modules.parameters() if p.requires_grad],
    )


def finetune_step(
    m: FinetuneModel,
    stream: Iterator[dict[str, Any]],
    n_local: int,
    weight: float,
    recipe: Recipe,
    dev: torch.device,
    amp: torch.dtype | None,
    d: distributed.Dist,
    generators: Sequence[torch.Generator] | None = None,
) -> dict[str, float]:
    """One optimiser step over this rank's ``n_local`` episodes (micro-batches of one episode).

    ``generators``: one dropout generator per episode (:func:`.rng.episode_generators`); None
    draws dropout from the global torch RNG.
    """
    cfg = recipe.train
    m.optimizer.zero_grad(set_to_none=True)
    sums = torch.zeros(3, device=dev)  # loss, ce_fewshot, ce_videotext
    for i in range(n_local):
        item = next(stream)
        if "error" in item:
            raise DataError(
                f"train episode {item['episode']}: {item['error']}; fix or remove the video "
                "(`fsar data check` lists them) and rerun with --resume"
            )
        masks = (
            episode_dropout(generators[i : i + 1])
            if generators is not None
            else contextlib.nullcontext()
        )
        with masks:
            out = episode_loss(m.visual, m.head, item, m.text_table, cfg.lambda_vt, dev, amp)
        loss = out["loss"] * weight
        (m.scaler.scale(loss) if m.scaler is not None else loss).backward()
        sums += torch.stack([out[k].detach().float() for k in _LOSSES]) * weight
    d.all_reduce_grads_(m.params)
    d.all_reduce_mean_([sums])
    if m.scaler is not None:
        m.scaler.unscale_(m.optimizer)
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(m.params, float(cfg.grad_clip))
    if m.scaler is not None:
        m.scaler.step(m.optimizer)
        m.scaler.update()
    else:
        m.optimizer.step()
    if d.enabled:  # BatchNorm statistics: rank 0's, as DistributedDataParallel broadcasts them
        for buf in m.modules.buffers():
            torch.distributed.broadcast(buf, 0)
    return dict(zip(_LOSSES, sums.cpu().tolist(), strict=True))
