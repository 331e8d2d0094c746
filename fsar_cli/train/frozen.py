"""The frozen mode of ``fsar train``: the head trains on cached features (METHOD.md 4, 5, 7).

One optimiser step is ``train.episodes_per_step`` episodes in one batched forward
(``head.batch_episode_loss``): the mean of ``CE_fewshot + lambda_vt * CE_videotext``, the video-text
loss against the text of all meta-train classes. The tower is not trained; the head is: the
temporal Transformer and the video-text ``scale`` (the reference head, ``model.adapter: none``).
``model.adapter: residual`` adds a zero-initialised residual MLP on the cached features;
``benchmarks/adapter_effect.py`` measures it (no gain on the synthetic benchmark, so it is off).
Under ``torchrun`` each rank's loss is weighted so that the averaged gradients are those of the
mean over all the step's episodes, also for uneven shares; dropout is drawn per episode
(:mod:`.rng`), so 1, 2 or 3 processes train the same weights up to the order of sums. Schedule,
validation, best step, checkpoints and resume are the shared loop's (:mod:`.loop`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..evaluation.batched import sharded_accuracies
from ..evaluation.metrics import mean_and_ci95
from ..features.store import provenance
from ..models import save_head_checkpoint
from ..models.precision import check_precision, compute_precision
from ..progress import ProgressFn
from ..recipe import Recipe
from .frozen_setup import TrainSetup, build_setup
from .frozen_step import episode_tensors, train_step
from .loop import TrainResult, cpu_state, train_run
from .rng import episode_generators
from .runs import RunDir
from .schedule import build_optimizer

__all__ = ["meta_train"]

log = logging.getLogger(__name__)


class FrozenMode:
    """Training on cached features: the head (and the optional adapter) trains, the tower not."""

    name = "frozen"

    def __init__(
        self,
        recipe: Recipe,
        su: TrainSetup,
        d: distributed.Dist,
        dev: torch.device,
        micro_batch: int | None,
        precision: str = "fp32",
    ) -> None:
        self.recipe, self.su, self.d, self.dev, self.micro_batch = recipe, su, d, dev, micro_batch
        self.precision = precision
        self.head = su.head
        self.optimizer: torch.optim.Optimizer = build_optimizer(su.head, recipe.train)
        self.sel_split = su.sel_split
        self.encoder = str(su.train_store.meta.get("encoder", "?"))
        self.encoder_random = bool(su.train_store.meta.get("encoder_random", False))
        self.provenance = provenance(su.train_store.meta)  # recorded in last.pt, best.pt, summary
        self.train_store = su.train_store
        self.best_state: dict[str, torch.Tensor] | None = None  # rank 0: weights of best.pt

    def begin(self, start: int, stop: int, lo: int, hi: int) -> None:
        pass

    def step(self, step: int, lo: int, hi: int) -> dict[str, float]:
        cfg, su = self.recipe.train, self.su
        E = int(cfg.episodes_per_step)
        # episodes step*E+lo .. step*E+hi-1: the same whether or not the run was interrupted,
        # and however many ranks share them
        batch = su.sampler.sample(hi - lo, start=step * E + lo)
        ep = episode_tensors(batch, su.train_store.features, su.text_table, self.dev)
        with compute_precision(self.precision, self.dev):
            return train_step(
                self.head,
                self.optimizer,
                ep,
                su.text_table,
                cfg.lambda_vt,
                micro_batch=self.micro_batch,
                grad_clip=cfg.grad_clip,
                dist=self.d,
                total=E,
                generators=episode_generators(
                    cfg.seed, step, range(step * E + lo, step * E + hi), self.dev
                ),
            )

    def validate(self) -> tuple[float, float]:
        su = self.su
        with compute_precision(self.precision, self.dev):
            accs = sharded_accuracies(
                self.head,
                su.val_store.features,
                su.val_store.text,
                su.val_batch.slice,
                len(su.val_batch),
                self.d,
                device=str(self.dev),
            )
        return mean_and_ci95(accs)

    def save_best(self, run: RunDir, info: dict[str, Any]) -> None:
        self.best_state = cpu_state(self.head)
        save_head_checkpoint(run.best, self.head, info)  # atomic (written aside, renamed)

    def state(self) -> dict[str, Any]:
        return {
            "model_state": cpu_state(self.head),
            "optimizer": self.optimizer.state_dict(),
            "best_state": self.best_state,
        }

    def load_state(self, state: dict[str, Any], run: RunDir, info: dict[str, Any]) -> None:
        self.head.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best_state = state.get("best_state")
        if self.best_state is not None and self.d.is_main:  # best.pt consistent with the state
            current = cpu_state(self.head)
            self.head.load_state_dict(self.best_state)
            try:
                save_head_checkpoint(run.best, self.head, info)
            finally:
                self.head.load_state_dict(current)

    def summary(self) -> dict[str, Any]:
        su = self.su
        return {
            "text_encoder_random": su.train_store.meta.get("text_encoder_random"),
            "weights_sha256": su.train_store.meta.get("weights_sha256"),
            "missing_videos": {
                "train": su.train_store.n_missing,
                self.sel_split: su.val_store.n_missing,
            },
        }


def meta_train(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    on_progress: ProgressFn | None = None,
    max_steps: int | None = None,
    argv: list[str] | None = None,
    micro_batch: int | None = None,
    allow_other_features: bool = False,
    precision: str = "fp32",
) -> TrainResult:
    """Meta-train ``recipe.model.head`` on the recipe's cached train split.

    Args:
        recipe: the recipe (``train``, ``model``, ``features.cache_dir``, ``eval.n_way/n_query``).
        out_dir: the run folder (new or empty; or an existing run with ``resume``).
        resume: continue the run in ``out_dir`` from its ``last.pt`` (same recipe required).
        device: ``cpu`` or ``cuda[:i]``.
        on_progress: ``on_progress(n, total=, label=)`` after every optimiser step.
        max_steps: stop after this many completed steps (the schedule still spans
            ``train.steps``); continue later with ``resume``.
        argv: command line recorded in ``resolved_recipe.yaml``.
        micro_batch: episodes per forward/backward (memory bound only; None = all of a step).
        allow_other_features: resume although the train store's provenance (encoder, weights,
            resolution, sampling) differs from the one the run recorded.
        precision: ``fp32`` or ``bf16`` (:mod:`fsar_cli.models.precision`): the head's matrix
            products in training steps and validation (not recorded in the recipe).
    Returns:
        :class:`TrainResult`; files as described in :mod:`.runs` and :mod:`.loop`.
    Raises:
        TrainError: bad run folder, changed recipe on resume, untrainable head, unknown class
            names for a text head, non-finite loss. CacheError / EpisodeError: unusable stores.
    """
    return train_run(
        recipe,
        out_dir,
        "frozen",
        lambda d, dev: FrozenMode(
            recipe, build_setup(recipe, dev), d, dev, micro_batch, check_precision(precision)
        ),
        resume=resume,
        device=device,
        argv=argv,
        max_steps=max_steps,
        on_progress=on_progress,
        allow_other_features=allow_other_features,
    )
