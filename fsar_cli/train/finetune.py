"""The finetune mode of ``fsar train``: CLIP visual tower and head trained end to end from frames
(the paper's setting; METHOD.md 4, 5, 7). Schedule, validation, best step, checkpoints and resume
are the shared loop's (:mod:`.loop`).

- Step: the step's episodes one at a time (frames -> tower -> head -> ``loss / E`` -> backward),
  so memory holds one episode's activations; under ``torchrun`` gradients are averaged across
  ranks (BatchNorm statistics are rank 0's).
- Data (:mod:`.finetune_data`): ``EpisodeClips`` in ``train.workers`` DataLoader processes, frames
  seeded per (train.seed, episode, slot), so a resume and any worker count see the same data.
- Text: computed once with the frozen text tower; the frozen-mode adapter is not used.
- Memory (:mod:`.tower`): bf16 autocast on CUDA (fp16 with a gradient scaler without bf16) when
  ``train.amp``; ``train.grad_checkpointing`` recomputes each residual block in the backward pass.
- Validation: the fixed episodes' videos encoded with the current tower (centre sampling and crop).

Run folder: ``last.pt`` also holds ``tower_state`` and the scaler; ``tower.pt`` is the visual
tower of ``best.pt`` (``{"visual.<key>": tensor}``, OpenAI CLIP names) and ``tower.json`` names
its architecture, so ``fsar cache --weights RUN`` caches features with the fine-tuned tower.
Feature provenance, in a feature store's format: ``last.pt`` and ``summary.json`` record the
encoder the run started from (a resume with other weights is refused), ``best.pt`` records
``tower.pt`` (name, the file's SHA-256, resolution, sampling), so ``fsar eval`` refuses by name
to score it on features of other weights, exactly as for a frozen run's checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..data.clips import ClipSpec, EpisodeClips, default_query_augment
from ..encoders.clip import TOWER_FILE, weights_file_sha256
from ..models import save_head_checkpoint
from ..progress import ProgressFn
from ..recipe import Recipe
from .finetune_data import ValEpisodes, episode_source, frame_loader, validate
from .finetune_step import build_model, finetune_step
from .loop import TrainResult, cpu_state, selection_label, train_run
from .rng import episode_generators
from .runs import RunDir
from .tower import amp_dtype, save_tower, tower_state_dict

__all__ = ["finetune_train"]

log = logging.getLogger(__name__)


class FinetuneMode:
    """End-to-end training: frames -> CLIP visual tower -> head, both trained."""

    name = "finetune"

    def __init__(self, recipe: Recipe, d: distributed.Dist, dev: torch.device) -> None:
        cfg = recipe.train
        self.recipe, self.d, self.dev = recipe, d, dev
        self.amp = amp_dtype(dev, cfg.amp)
        self.entries, self.sources, self.sampler = episode_source(
            recipe, "train", cfg.n_way, cfg.n_query, cfg.seed
        )
        sel = self.sel_split = "test" if cfg.select_on == "test" else "val"
        v_entries, v_sources, v_sampler = episode_source(
            recipe, sel, recipe.eval.n_way, recipe.eval.n_query, cfg.val_seed
        )
        v_batch = v_sampler.sample(cfg.val_episodes)
        v_rows = np.unique(
            np.concatenate([v_batch.support_rows.ravel(), v_batch.query_rows.ravel()])
        )
        self.m = build_model(recipe, dev, self.amp, self.sampler.classes, sel, v_batch.classes)
        self.head, self.optimizer = self.m.head, self.m.optimizer
        self.encoder = self.m.encoder.name
        self.encoder_random = bool(self.m.encoder.is_random)
        self.val = ValEpisodes(
            sel,
            selection_label(sel),
            v_batch,
            v_rows,
            v_sources,
            v_entries,
            self.m.val_text,
            v_sampler.n_missing,
        )
        f = recipe.features
        self.spec = ClipSpec(
            f.num_frames,
            f.resize,
            f.crop,
            f.sampling.train,
            "random",
            default_query_augment(recipe),
            cfg.seed,
        )
        # What the run trains on, in the format of a feature store's provenance: the encoder it
        # starts from (last.pt, summary.json; a resume on other weights is refused). best.pt
        # records its tower.pt instead (save_best), so evaluating it on features of any other
        # weights, the original ones included, is refused like a frozen run's checkpoint.
        self.provenance = self._features(self.m.encoder.weights_sha256)
        self.stream: Any = None
        self.has_best = False  # a tower.pt has been written for best.pt

    def _features(self, weights_sha256: str) -> dict[str, Any]:
        f = self.recipe.features
        return {
            "encoder": self.encoder,
            "weights_sha256": weights_sha256,
            "resize": f.resize,
            "crop": f.crop,
            "num_frames": f.num_frames,
            "sampling": f.sampling.for_split("train"),
            "split": "train",
        }

    def begin(self, start: int, stop: int, lo: int, hi: int) -> None:
        E = int(self.recipe.train.episodes_per_step)
        episodes = [s * E + j for s in range(start, stop) for j in range(lo, hi)]
        ds = EpisodeClips(self.sources, self.sampler, episodes, self.spec, self.entries)
        cfg = self.recipe.train
        self.stream = iter(frame_loader(ds, cfg.workers, self.dev, cfg.seed))

    def step(self, step: int, lo: int, hi: int) -> dict[str, float]:
        E = int(self.recipe.train.episodes_per_step)
        weight = self.d.world / E  # mean over ranks = mean over E
        gens = episode_generators(
            self.recipe.train.seed, step, range(step * E + lo, step * E + hi), self.dev
        )
        return finetune_step(
            self.m, self.stream, hi - lo, weight, self.recipe, self.dev, self.amp, self.d, gens
        )

    def validate(self) -> tuple[float, float]:
        return validate(self.m.visual, self.head, self.val, self.recipe, self.dev, self.amp, self.d)

    def save_best(self, run: RunDir, info: dict[str, Any]) -> None:
        # tower first: a kill in between leaves best.pt the older one
        self.has_best = True
        extra = {**info, "mode": "finetune"}
        tower_info = {
            "format": "fsar-tower/1",
            "encoder": self.encoder,
            "recipe": self.recipe.name,
            "weights_sha256": self.m.encoder.weights_sha256,
            "encoder_random": self.encoder_random,
        }
        meta = {k: v for k, v in extra.items() if k != "features"}  # the start's, not the tower's
        tower = save_tower(run.path / TOWER_FILE, self.m.visual, {**tower_info, **meta})
        # the head scores features of this tower: those of `fsar cache --weights RUN`, whose
        # store records this file's SHA-256
        features = self._features(weights_file_sha256(tower))
        save_head_checkpoint(
            run.best,
            self.head,
            {**extra, "encoder": self.encoder, "tower": TOWER_FILE, "features": features},
        )

    def state(self) -> dict[str, Any]:
        m = self.m
        return {
            "model_state": cpu_state(m.head),
            "tower_state": tower_state_dict(m.visual),
            "optimizer": m.optimizer.state_dict(),
            "scaler": m.scaler.state_dict() if m.scaler is not None else None,
            "encoder": self.encoder,
        }

    def load_state(self, state: dict[str, Any], run: RunDir, info: dict[str, Any]) -> None:
        m = self.m
        self.has_best = info["step"] is not None
        tower = {k.removeprefix("visual."): v for k, v in state["tower_state"].items()}
        m.visual.load_state_dict(tower)
        m.head.load_state_dict(state["model_state"])
        m.optimizer.load_state_dict(state["optimizer"])
        if m.scaler is not None and state.get("scaler"):
            m.scaler.load_state_dict(state["scaler"])

    def summary(self) -> dict[str, Any]:
        cfg = self.recipe.train
        return {
            "weights_sha256": self.m.encoder.weights_sha256,
            "tower": TOWER_FILE if self.has_best else None,
            "workers": cfg.workers,
            "precision": str(self.amp).replace("torch.", "") if self.amp else "fp32",
            "grad_checkpointing": cfg.grad_checkpointing,
            "query_augment": self.spec.query_augment,
            "frame_sampling": self.spec.sampling,
            "missing_videos": {"train": self.sampler.n_missing, self.sel_split: self.val.n_missing},
        }


def finetune_train(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    on_progress: ProgressFn | None = None,
    max_steps: int | None = None,
    argv: list[str] | None = None,
    allow_other_features: bool = False,
) -> TrainResult:
    """Fine-tune the CLIP visual tower and the recipe's head end to end, from frames.

    Args:
        recipe: the recipe (``train.mode`` must be ``finetune``); frames come from
            ``data.frames_root`` + ``data.frames_layout`` or ``data.root`` + ``data.video_layout``
            (``features.source``), the tower from ``features.encoder`` / ``features.weights``.
        out_dir: the run folder (new or empty; or an existing run with ``resume``).
        resume: continue the run in ``out_dir`` from its ``last.pt`` (same recipe required).
        device: ``cpu``, ``cuda`` or ``cuda:i`` (under torchrun ``cuda`` is the local rank's GPU).
        on_progress: ``on_progress(n, total=, label=)`` after every optimiser step.
        max_steps: stop after this many completed steps (the schedule still spans ``train.steps``).
        argv: command line recorded in ``resolved_recipe.yaml``.
        allow_other_features: resume although the encoder's weights (or the resolution or
            sampling) are not those the run recorded in ``last.pt`` (refused otherwise).
    Returns:
        :class:`fsar_cli.train.loop.TrainResult` (also written to ``summary.json``).
    Raises:
        TrainError, DataError, EncoderError, CheckpointError: with the file or key to fix.
    """
    return train_run(
        recipe,
        out_dir,
        "finetune",
        lambda d, dev: FinetuneMode(recipe, d, dev),
        resume=resume,
        device=device,
        argv=argv,
        max_steps=max_steps,
        on_progress=on_progress,
        allow_other_features=allow_other_features,
    )
