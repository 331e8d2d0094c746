"""End-to-end fine-tuning: the CLIP visual tower and the head, trained from frames (train.mode:
finetune; METHOD.md sections 4, 5 and 7, the paper's setting).

Per optimiser step, ``train.episodes_per_step`` episodes (16, the reference's 4 GPUs x 4
accumulation steps) are processed one at a time (micro-batches of one episode: frames ->
visual tower -> head -> ``loss / episodes_per_step`` -> backward), so the gradient of a step is that
of the mean loss over its episodes while memory holds the activations of one episode only.

- Data (:mod:`fsar_cli.finetune_data`): :class:`fsar_cli.data.clips.EpisodeClips` in
  ``train.workers`` DataLoader processes, frames seeded per (train.seed, episode, slot), so a
  resumed run, and any worker count, see the same data.
- Text: the train classes' text features (``features.prompt``) are computed once with the frozen
  text tower, which never reaches the accelerator.
- Losses and head: as the frozen mode (``head.batch_episode_loss``: few-shot CE + ``lambda_vt`` x
  video-text CE against all train classes), except that the frozen-mode adapter is not used
  (``model.adapter`` is taken as ``none``): here the tower itself is trained, as in the paper.
- Optimiser and schedule: the frozen trainer's (:func:`fsar_cli.schedule.build_optimizer`, Adam
  with L2 ``train.weight_decay`` except on normalisation parameters, :func:`lr_at`).
- Memory (:mod:`fsar_cli.tower`): bf16 autocast on CUDA (fp16 with a gradient scaler where bf16
  is missing) when ``train.amp``; ``train.grad_checkpointing`` recomputes each residual block of
  the tower in the backward pass instead of keeping its activations.
- Validation: every ``train.val_every`` steps the validation videos of ``train.val_episodes``
  fixed episodes are encoded with the current tower (centre sampling and crop, no augmentation) and
  evaluated with :func:`fsar_cli.fast_eval.episode_accuracies`; the best step is kept.

Under ``torchrun`` the episodes of a step are split across ranks and the gradients averaged
(:meth:`fsar_cli.distributed.Dist.all_reduce_grads_`, the DistributedDataParallel update; BatchNorm
statistics are rank 0's); only rank 0 writes files. Dropout streams are the frozen trainer's
(:mod:`fsar_cli.train_rng`): rank 0 keeps the single-process stream, rank ``r > 0`` one seeded by
``(train.seed, r)``; a resume with another number of processes reseeds them and warns.

Run folder: as :mod:`fsar_cli.runs` (``last.pt`` also holds ``tower_state``, the optimiser state of
the tower and the head, and the RNG state of every rank), plus ``tower.pt``, the visual tower of
``best.pt`` as ``{"visual.<key>": tensor}`` (OpenAI CLIP names), and ``tower.json`` naming its
architecture: ``fsar cache --encoder <tower.json encoder> --weights <run>/tower.pt`` caches features
with the fine-tuned tower.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed
from .data.clips import ClipSpec, EpisodeClips, default_query_augment
from .errors import TrainError
from .finetune_data import ValEpisodes, episode_source, frame_loader, validate
from .finetune_step import FinetuneModel, build_model, finetune_step
from .models import save_head_checkpoint
from .recipe import Recipe
from .runs import MetricsLog, RunDir
from .schedule import lr_at, set_lr
from .tower import (
    TOWER_FILE,
    TOWER_META,
    amp_dtype,
    enable_grad_checkpointing,
    encode_clips,
    episode_loss,
    save_tower,
    tower_state_dict,
)
from .train import TEST_LABEL, TrainResult
from .train_rng import restore_rng, rng_states, seed_rank_stream

__all__ = [
    "finetune_train",
    "enable_grad_checkpointing",
    "amp_dtype",
    "encode_clips",
    "episode_loss",
    "tower_state_dict",
    "save_tower",
    "TOWER_FILE",
    "TOWER_META",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- setup helpers


def _check_cfg(recipe: Recipe, world: int) -> None:
    cfg = recipe.train
    if cfg.mode != "finetune":
        raise TrainError(
            f"train.mode is {cfg.mode!r}: end-to-end training needs train.mode=finetune "
            "(`fsar train --mode finetune`)"
        )
    for key in ("steps", "episodes_per_step", "val_every", "val_episodes", "checkpoint_every"):
        if getattr(cfg, key) < 1:
            raise TrainError(f"recipe key train.{key} must be >= 1 (got {getattr(cfg, key)})")
    if cfg.workers < 0:
        raise TrainError(f"recipe key train.workers must be >= 0 (got {cfg.workers})")
    if cfg.episodes_per_step < world:
        raise TrainError(
            f"train.episodes_per_step={cfg.episodes_per_step} is less than the {world} processes "
            "of this run; every rank needs at least one episode per step"
        )


def _device(d: distributed.Dist, device: str) -> torch.device:
    dev = d.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise TrainError(f"--device {device}: use cpu or cuda")
    return dev


def _save_state(
    run: RunDir,
    m: FinetuneModel,
    d: distributed.Dist,
    dev: torch.device,
    done: int,
    extra: dict[str, Any],
) -> None:
    """``last.pt``: weights, optimiser, every rank's RNG state (all ranks must call this)."""
    rngs = rng_states(d, dev)
    if d.is_main:
        run.save_state(
            {
                "mode": "finetune",
                "step": done,
                "model_state": _cpu(m.head),
                "tower_state": tower_state_dict(m.visual),
                "optimizer": m.optimizer.state_dict(),
                "scaler": m.scaler.state_dict() if m.scaler is not None else None,
                "rng": rngs,
                "world_size": d.world,
                "head": m.head.name,
                "encoder": m.encoder.name,
                **extra,
            }
        )


def _load_state(
    run: RunDir, m: FinetuneModel, d: distributed.Dist, dev: torch.device, seed: int
) -> dict[str, Any]:
    """Restore ``last.pt`` (read by rank 0, sent to all); {} when there is none yet."""
    state = d.on_main(run.load_state)
    if state is None:
        return {}
    if state.get("mode") != "finetune":
        raise TrainError(f"{run.last} is not a finetune-mode state; resume it in its own mode")
    tower = {k.removeprefix("visual."): v for k, v in state["tower_state"].items()}
    m.visual.load_state_dict(tower)
    m.head.load_state_dict(state["model_state"])
    m.optimizer.load_state_dict(state["optimizer"])
    if m.scaler is not None and state.get("scaler"):
        m.scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"], d, dev, seed, int(state["step"]), run.last)
    log.info("resuming %s from step %d", run.path, state["step"])
    return state


# --------------------------------------------------------------------------- the loop


def finetune_train(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    on_progress: Callable[..., None] | None = None,
    max_steps: int | None = None,
    argv: list[str] | None = None,
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
    Returns:
        :class:`fsar_cli.train.TrainResult` (also written to ``summary.json``).
    Raises:
        TrainError, DataError, EncoderError, CheckpointError: with the file or key to fix.
    """
    d = distributed.init(device)
    _check_cfg(recipe, d.world)
    cfg, f = recipe.train, recipe.features
    dev = _device(d, device)
    amp = amp_dtype(dev, cfg.amp)
    run = RunDir(out_dir)

    entries, sources, sampler = episode_source(recipe, "train", cfg.n_way, cfg.n_query, cfg.seed)
    sel = "test" if cfg.select_on == "test" else "val"
    v_entries, v_sources, v_sampler = episode_source(
        recipe, sel, recipe.eval.n_way, recipe.eval.n_query, cfg.val_seed
    )
    v_batch = v_sampler.sample(cfg.val_episodes)
    v_rows = np.unique(np.concatenate([v_batch.support_rows.ravel(), v_batch.query_rows.ravel()]))
    d.on_main(lambda: run.prepare(recipe, resume=resume, argv=argv))
    if sel == "test":
        log.warning(
            "train.select_on=test: checkpoints are selected on the TEST split (reference "
            "behaviour); results are labelled as such"
        )
    m = build_model(recipe, dev, amp, sampler.classes, sel, v_batch.classes)
    seed_rank_stream(d, cfg.seed)  # rank 0 keeps the single-process dropout stream
    val = ValEpisodes(
        sel,
        TEST_LABEL if sel == "test" else "val",
        v_batch,
        v_rows,
        v_sources,
        v_entries,
        m.val_text,
        v_sampler.n_missing,
    )

    state = _load_state(run, m, d, dev, cfg.seed) if resume else {}
    start, seconds = int(state.get("step", 0)), float(state.get("seconds", 0.0))
    best: dict[str, Any] = dict(state.get("best") or {"acc": None, "ci95": None, "step": None})
    final_val = tuple(state["final_val"]) if state.get("final_val") else None
    metrics = MetricsLog(run.metrics, keep_upto=start if resume else None) if d.is_main else None

    N, E = int(cfg.steps), int(cfg.episodes_per_step)
    stop = N if max_steps is None else max(start, min(N, int(max_steps)))
    a, b = d.split(E)  # this rank's episodes of every step
    spec = ClipSpec(
        f.num_frames,
        f.resize,
        f.crop,
        f.sampling.train,
        "random",
        default_query_augment(recipe),
        cfg.seed,
    )
    episodes = [s * E + j for s in range(start, stop) for j in range(a, b)]
    ds = EpisodeClips(sources, sampler, episodes, spec, entries)
    stream = iter(frame_loader(ds, cfg.workers, dev, cfg.seed))
    weight = d.world / E  # per-episode loss weight: the mean over ranks is the mean over E
    info = {
        "format": "fsar-tower/1",
        "encoder": m.encoder.name,
        "recipe": recipe.name,
        "weights_sha256": m.encoder.weights_sha256,
        "encoder_random": m.encoder.is_random,
    }
    progress = on_progress if d.is_main else None  # one voice: rank 0's
    if progress is not None:
        progress(start, total=stop, label=f"from step {start}" if start else None)
    t0 = time.perf_counter() - seconds
    last_loss: float | None = None
    label_val = ""
    for step in range(start, stop):
        t_step = time.perf_counter()
        lr = lr_at(step, cfg)
        set_lr(m.optimizer, lr)
        vals = finetune_step(m, stream, b - a, weight, recipe, dev, amp, d)
        if not math.isfinite(vals["loss"]):
            raise TrainError(
                f"loss is {vals['loss']} at step {step + 1}; lower train.lr (now "
                f"{cfg.lr}) (last good state: last.pt)"
            )
        done, last_loss = step + 1, vals["loss"]
        row: dict[str, Any] = {"step": done, **vals, "lr": lr}
        if done % cfg.val_every == 0 or done == N:
            acc, ci = final_val = validate(m.visual, m.head, val, recipe, dev, amp, d)
            row.update(val_acc=acc, val_ci95=ci, val_split=val.label)
            label_val = f" · {sel} {acc:.1%}"
            if best["acc"] is None or acc > best["acc"]:
                best = {"acc": acc, "ci95": ci, "step": done}
                if d.is_main:  # tower first: a kill in between leaves best.pt the older one
                    extra = {
                        "val_acc": acc,
                        "val_ci95": ci,
                        "step": done,
                        "mode": "finetune",
                        "selected_on": val.label,
                        "recipe": recipe.name,
                    }
                    save_tower(run.path / TOWER_FILE, m.visual, {**info, **extra})
                    extra.update(encoder=m.encoder.name, tower=TOWER_FILE)
                    save_head_checkpoint(run.best, m.head, extra)
            log.info("step %d: loss %.4f, %s acc %.4f ± %.4f", done, vals["loss"], sel, acc, ci)
        row["seconds"] = time.perf_counter() - t0
        if metrics is not None:
            metrics.append(row)
        if done % cfg.checkpoint_every == 0 or done == stop:
            extra = {"best": best, "final_val": list(final_val) if final_val else None}
            _save_state(run, m, d, dev, done, {**extra, "seconds": time.perf_counter() - t0})
        if progress is not None:
            rate = (b - a) / max(time.perf_counter() - t_step, 1e-9)
            progress(1, label=f"loss {vals['loss']:.3f} · {rate:.2f} episodes/s{label_val}")

    result = TrainResult.from_loop(
        run.path,
        m.head.name,
        start=start,
        stop=stop,
        steps_total=N,
        episodes_per_step=E,
        resumed=resume,
        last_loss=last_loss,
        final_val=final_val,
        best=best,
        selected_on=val.label,
        encoder=m.encoder.name,
        encoder_random=m.encoder.is_random,
        device=str(dev),
        seconds=time.perf_counter() - t0,
    )
    if d.is_main:
        run.write_summary(
            {
                **result.to_dict(),
                "mode": "finetune",
                "recipe": recipe.name,
                "dataset": recipe.dataset,
                "weights_sha256": m.encoder.weights_sha256,
                "tower": TOWER_FILE if best["step"] is not None else None,
                "episodes_per_step": E,
                "world_size": d.world,
                "workers": cfg.workers,
                "precision": str(amp).replace("torch.", "") if amp else "fp32",
                "grad_checkpointing": cfg.grad_checkpointing,
                "query_augment": spec.query_augment,
                "frame_sampling": spec.sampling,
                "episode": {"n_way": cfg.n_way, "k_shot": cfg.k_shot, "n_query": cfg.n_query},
                "validation": {
                    "split": sel,
                    "episodes": cfg.val_episodes,
                    "seed": cfg.val_seed,
                    "n_way": recipe.eval.n_way,
                    "k_shot": cfg.k_shot,
                    "n_query": recipe.eval.n_query,
                    "every": cfg.val_every,
                },
                "missing_videos": {"train": sampler.n_missing, sel: v_sampler.n_missing},
            }
        )
    d.barrier()
    return result


def _cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
