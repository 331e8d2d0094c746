"""Episodic meta-training of a few-shot head on cached features (``fsar train``; METHOD.md 4, 5, 7).

One optimiser step = ``train.episodes_per_step`` episodes (16, the reference's 4 GPUs x 4
accumulation steps) of ``n_way``-way ``k_shot``-shot ``n_query``-query, all in one batched forward
(``head.batch_episode_loss``); the loss is their mean, ``CE_fewshot + lambda_vt * CE_videotext``,
where the video-text loss is taken against the text of all meta-train classes. Episode ``j`` of
step ``s`` is episode index ``s * episodes_per_step + j`` of the seeded sampler, and the torch RNG
(dropout) is saved with every checkpoint, so a killed and resumed run ends with exactly the weights
of an uninterrupted one. Checkpoints are selected on the validation split (never on test, unless
the recipe says ``train.select_on: test``, the reference's behaviour, labelled as such).

In the frozen mode the tower is not trained; what trains is the head: the temporal Transformer
and the video-text ``scale`` (the reference head exactly, ``model.adapter: none``, the default).
``model.adapter: residual`` adds a zero-initialised residual MLP on the cached features through
which both losses flow; ``benchmarks/adapter_effect.py`` measures the two (README, "heads"): on the
synthetic benchmark the adapter gains nothing and, with a large ``lambda_vt``, costs accuracy, so
it is off by default.

Under ``torchrun`` (:mod:`fsar_cli.distributed`) rank ``r`` computes the loss of its contiguous
share ``Dist.split(episodes_per_step)`` of every step's episodes, weighted so that the gradients
averaged across ranks (the DistributedDataParallel update) are those of the mean loss over all
the step's episodes, also when the split is uneven; the global episodes per step stay the
recipe's. Validation episodes are split across ranks and their accuracies gathered (numbers
identical to a single process). Only rank 0 writes the run folder. ``last.pt`` holds every rank's
RNG state; a resume with the same number of processes restores each rank's own, one with another
number reseeds every rank's dropout from ``(train.seed, step, rank)`` (logged as a warning).
Ranks other than 0 draw dropout from a stream seeded by ``(train.seed, rank)``; rank 0 keeps the
single-process stream.

Parts: the setup (stores, head, samplers) is :mod:`fsar_cli.train_setup`, one optimiser step
:mod:`fsar_cli.train_step`, the per-rank RNG streams :mod:`fsar_cli.train_rng`; this module holds
the loop, the run folder's ``last.pt`` / ``best.pt`` / ``summary.json`` and :class:`TrainResult`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .errors import TrainError
from .fast_eval import sharded_accuracies
from .metrics import mean_and_ci95
from .models import save_head_checkpoint
from .recipe import Recipe
from .runs import MetricsLog, RunDir
from .schedule import build_optimizer, lr_at, set_lr
from .train_rng import restore_rng, rng_states, seed_rank_stream
from .train_setup import TEST_LABEL as TEST_LABEL
from .train_setup import TrainSetup, build_setup
from .train_step import EpisodeTensors, episode_tensors, train_step

__all__ = ["TrainResult", "meta_train", "train_step", "EpisodeTensors", "episode_tensors"]

log = logging.getLogger(__name__)

ProgressFn = Callable[..., None]


@dataclass
class TrainResult:
    """What a call to :func:`meta_train` did (also written to ``summary.json``)."""

    out_dir: Path
    head: str
    steps_done: int
    steps_total: int
    finished: bool
    resumed_from: int | None
    episodes_seen: int
    last_loss: float | None
    final_val_acc: float | None
    final_val_ci95: float | None
    best_val_acc: float | None
    best_val_ci95: float | None
    best_step: int | None
    selected_on: str
    encoder: str
    encoder_random: bool
    device: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["out_dir"] = str(self.out_dir)
        return d

    @classmethod
    def from_loop(
        cls,
        out_dir: Path,
        head: str,
        *,
        start: int,
        stop: int,
        steps_total: int,
        episodes_per_step: int,
        resumed: bool,
        last_loss: float | None,
        final_val: tuple[float, float] | None,
        best: dict[str, Any],
        selected_on: str,
        encoder: str,
        encoder_random: bool,
        device: str,
        seconds: float,
    ) -> TrainResult:
        """The result of a training loop that ran steps ``start+1 .. stop`` (both trainers)."""
        steps_done = max(start, stop)
        return cls(
            out_dir=out_dir,
            head=head,
            steps_done=steps_done,
            steps_total=steps_total,
            finished=steps_done >= steps_total,
            resumed_from=start if resumed else None,
            episodes_seen=steps_done * episodes_per_step,
            last_loss=last_loss,
            final_val_acc=final_val[0] if final_val else None,
            final_val_ci95=final_val[1] if final_val else None,
            best_val_acc=best["acc"],
            best_val_ci95=best["ci95"],
            best_step=best["step"],
            selected_on=selected_on,
            encoder=encoder,
            encoder_random=encoder_random,
            device=device,
            seconds=seconds,
        )


# --------------------------------------------------------------------------- setup helpers


def _device(d: distributed.Dist, device: str) -> torch.device:
    dev = d.device(device)  # under torchrun "cuda" is the local rank's GPU
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise TrainError(f"--device {device}: use cpu or cuda")
    return dev


def _check_cfg(recipe: Recipe, world: int = 1) -> None:
    cfg = recipe.train
    if cfg.mode != "frozen":
        raise TrainError(
            f"train.mode is {cfg.mode!r}: meta_train trains on cached features (train.mode "
            "frozen); end-to-end training is fsar_cli.finetune.finetune_train (`fsar train` "
            "picks it for train.mode finetune)"
        )
    for key in ("steps", "episodes_per_step", "val_every", "val_episodes", "checkpoint_every"):
        if getattr(cfg, key) < 1:
            raise TrainError(f"recipe key train.{key} must be >= 1 (got {getattr(cfg, key)})")
    if cfg.episodes_per_step < world:
        raise TrainError(
            f"train.episodes_per_step={cfg.episodes_per_step} is less than the {world} processes "
            "of this run; every rank needs at least one episode per step: launch fewer "
            "processes (torchrun --nproc_per_node) or raise train.episodes_per_step"
        )


def _cpu_state(head: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in head.state_dict().items()}


# --------------------------------------------------------------------------- the loop


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
    Returns:
        :class:`TrainResult`; files as described in :mod:`fsar_cli.runs`.
    Raises:
        TrainError: bad run folder, changed recipe on resume, untrainable head, unknown class
            names for a text head, non-finite loss. CacheError / EpisodeError: unusable stores.
    """
    d = distributed.init(device)
    _check_cfg(recipe, d.world)
    cfg = recipe.train
    dev = _device(d, device)
    run = RunDir(out_dir)
    d.on_main(lambda: run.check(recipe, resume=resume))
    su = build_setup(recipe, dev)
    head, sel_split, sel_label = su.head, su.sel_split, su.sel_label
    seed_rank_stream(d, cfg.seed)  # rank 0 keeps the single-process dropout stream
    if not resume:
        d.on_main(lambda: run.start(recipe, argv))
    if sel_split == "test":
        log.warning(
            "train.select_on=test: checkpoints are selected on the TEST split (reference "
            "behaviour); results are labelled as such"
        )
    progress = on_progress if d.is_main else None

    optimizer = build_optimizer(head, cfg)
    start, seconds = 0, 0.0
    last_loss: float | None = None
    best: dict[str, Any] = {"acc": None, "ci95": None, "step": None}
    best_state: dict[str, torch.Tensor] | None = None
    final_val: list[float] | None = None
    state = d.on_main(run.load_state) if resume else None  # read by rank 0, sent to all
    if state is not None:
        head.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("mode", "frozen") != "frozen":
            raise TrainError(f"{run.last} is not a frozen-mode state; resume it with its own mode")
        start, seconds = int(state["step"]), float(state["seconds"])
        last_loss = state.get("last_loss")
        best, best_state, final_val = dict(state["best"]), state["best_state"], state["final_val"]
        restore_rng(state["rng"], d, dev, cfg.seed, start, run.last)
        if best_state is not None and d.is_main:  # best.pt consistent with the state
            _save_best(run, head, best_state, best, recipe, sel_label)
        log.info("resuming %s from step %d", run.path, start)
    elif resume:
        log.info("resuming %s: no checkpoint yet, starting at step 0", run.path)
    metrics = MetricsLog(run.metrics, keep_upto=start if resume else None) if d.is_main else None

    N, E = int(cfg.steps), int(cfg.episodes_per_step)
    stop = N if max_steps is None else max(start, min(N, int(max_steps)))
    lo, hi = d.split(E)  # this rank's episodes of every step: lo .. hi-1
    val_n = len(su.val_batch)
    if progress is not None:
        progress(start, total=stop, label=f"from step {start}" if start else None)
    t0 = time.perf_counter() - seconds
    label_val = ""
    for step in range(start, stop):
        lr = lr_at(step, cfg)
        set_lr(optimizer, lr)
        # episodes step*E .. step*E+E-1: the same whether or not the run was interrupted, and
        # however many ranks share them
        batch = su.sampler.sample(hi - lo, start=step * E + lo)
        ep = episode_tensors(batch, su.train_store.features, su.text_table, dev)
        out = train_step(
            head,
            optimizer,
            ep,
            su.text_table,
            cfg.lambda_vt,
            micro_batch=micro_batch,
            grad_clip=cfg.grad_clip,
            dist=d,
            total=E,
        )
        if not math.isfinite(out["loss"]):  # all-reduced: every rank stops here
            raise TrainError(
                f"loss is {out['loss']} at step {step + 1}; lower train.lr (now {cfg.lr}) or "
                "check the cached features for NaN/inf (last good state: last.pt)"
            )
        done = step + 1
        last_loss = out["loss"]
        row: dict[str, Any] = {"step": done, **out, "lr": lr}
        if done % cfg.val_every == 0 or done == N:
            accs = sharded_accuracies(
                head,
                su.val_store.features,
                su.val_store.text,
                su.val_batch.slice,
                val_n,
                d,
                device=str(dev),
            )
            acc, ci = mean_and_ci95(accs)
            final_val = [acc, ci]
            row.update(val_acc=acc, val_ci95=ci, val_split=sel_label)
            label_val = f" · {sel_split} {acc:.1%}"
            if best["acc"] is None or acc > best["acc"]:
                best = {"acc": acc, "ci95": ci, "step": done}
                if d.is_main:
                    best_state = _cpu_state(head)
                    _save_best(run, head, None, best, recipe, sel_label)
            log.info("step %d: loss %.4f, %s acc %.4f ± %.4f", done, last_loss, sel_split, acc, ci)
        row["seconds"] = time.perf_counter() - t0
        if metrics is not None:
            metrics.append(row)
        if done % cfg.checkpoint_every == 0 or done == stop:
            # after validation: resumes draw the same dropout; every rank's stream, in rank order
            rngs = rng_states(d, dev)
            if d.is_main:
                run.save_state(
                    {
                        "step": done,
                        "model_state": _cpu_state(head),
                        "optimizer": optimizer.state_dict(),
                        "rng": rngs,
                        "world_size": d.world,
                        "best": best,
                        "best_state": best_state,
                        "final_val": final_val,
                        "seconds": time.perf_counter() - t0,
                        "head": head.name,
                        "mode": "frozen",
                        "last_loss": last_loss,
                    }
                )
        if progress is not None:
            progress(1, label=f"loss {last_loss:.3f}{label_val}")

    result = TrainResult.from_loop(
        run.path,
        head.name,
        start=start,
        stop=stop,
        steps_total=N,
        episodes_per_step=E,
        resumed=resume,
        last_loss=last_loss,
        final_val=final_val,
        best=best,
        selected_on=sel_label,
        encoder=str(su.train_store.meta.get("encoder", "?")),
        encoder_random=bool(su.train_store.meta.get("encoder_random", False)),
        device=str(dev),
        seconds=time.perf_counter() - t0,
    )
    if d.is_main:
        _write_summary(run, result, recipe, su, sel_split, d.world)
    d.barrier()  # no rank returns before the run folder is complete
    return result


def _write_summary(
    run: RunDir, result: TrainResult, recipe: Recipe, su: TrainSetup, sel_split: str, world: int
) -> None:
    cfg, E = recipe.train, int(recipe.train.episodes_per_step)
    run.write_summary(
        {
            **result.to_dict(),
            "recipe": recipe.name,
            "dataset": recipe.dataset,
            "mode": "frozen",
            "text_encoder_random": su.train_store.meta.get("text_encoder_random"),
            "weights_sha256": su.train_store.meta.get("weights_sha256"),
            "episodes_per_step": E,
            "world_size": world,
            "episode": {"n_way": cfg.n_way, "k_shot": cfg.k_shot, "n_query": cfg.n_query},
            "validation": {
                "split": sel_split,
                "n_way": recipe.eval.n_way,
                "k_shot": cfg.k_shot,
                "n_query": recipe.eval.n_query,
                "episodes": cfg.val_episodes,
                "seed": cfg.val_seed,
                "every": cfg.val_every,
            },
            "missing_videos": {
                "train": su.train_store.n_missing,
                sel_split: su.val_store.n_missing,
            },
        }
    )


def _save_best(
    run: RunDir,
    head: nn.Module,
    state: dict[str, torch.Tensor] | None,
    best: dict[str, Any],
    recipe: Recipe,
    sel_label: str,
) -> None:
    """Write ``best.pt`` (head checkpoint format) atomically: the head as it is (``state`` None)
    or with the weights ``state`` (the head's own weights are put back afterwards)."""
    extra = {
        "val_acc": best["acc"],
        "val_ci95": best["ci95"],
        "step": best["step"],
        "selected_on": sel_label,
        "recipe": recipe.name,
    }
    if state is None:
        save_head_checkpoint(run.best, head, extra)  # atomic (written aside, renamed)
        return
    current = _cpu_state(head)
    head.load_state_dict(state)
    try:
        save_head_checkpoint(run.best, head, extra)
    finally:
        head.load_state_dict(current)
