"""The one training loop of both modes: schedule, resume, validation, best step, checkpoints.

A mode (:class:`TrainMode`; :mod:`.frozen`, :mod:`.finetune`) supplies only what differs: one
step's training, validation scoring, and the weights its checkpoints hold. Step ``s`` runs
episodes ``s * E .. s * E + E - 1`` of the seeded sampler (``E = train.episodes_per_step``; under
``torchrun`` rank ``r`` runs its share ``Dist.split(E)``), so neither an interruption nor the
number of processes changes a step's episodes. Validation every ``train.val_every`` steps and at
the end keeps the best step (``best.pt``); ``last.pt`` (every ``train.checkpoint_every`` steps and
at the last step run) holds the weights, the optimiser, every rank's RNG state and the loop's
state, so ``--resume`` ends with the weights of an uninterrupted run. Rank 0 writes
``metrics.csv`` (a row per step) and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .. import distributed, locks
from ..errors import TrainError
from ..features.store import PROVENANCE_KEYS, check_provenance, compare_provenance
from ..models.base import FewShotHead
from ..progress import ProgressFn
from ..recipe import Recipe
from .rng import restore_rng, rng_states, seed_rank_stream
from .runs import MetricsLog, RunDir
from .schedule import lr_at, set_lr

__all__ = [
    "TEST_LABEL",
    "TrainMode",
    "TrainResult",
    "check_train_cfg",
    "cpu_state",
    "run_loop",
    "train_run",
]

log = logging.getLogger(__name__)

#: How results selected on the test split are labelled (``train.select_on: test``).
TEST_LABEL = "TEST (reference behaviour)"


@dataclass
class TrainResult:
    """What a training call did (also written to ``summary.json``)."""

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


class TrainMode(Protocol):
    """What a training mode supplies to :func:`run_loop`."""

    name: str  # "frozen" or "finetune": recorded in last.pt and summary.json
    head: FewShotHead
    optimizer: torch.optim.Optimizer
    sel_split: str  # "val", or "test" with train.select_on: test
    encoder: str
    encoder_random: bool
    #: the features it trains on, in :func:`fsar_cli.features.store.provenance`'s format (frozen:
    #: the train store's; finetune: the encoder's, before fine-tuning); in last.pt and summary.json
    provenance: dict[str, Any]

    def begin(self, start: int, stop: int, lo: int, hi: int) -> None:
        """Called once before step ``start``: steps ``start .. stop-1`` follow, episodes
        ``lo .. hi-1`` of each on this rank."""

    def step(self, step: int, lo: int, hi: int) -> dict[str, float]:
        """One optimiser step (every rank calls it); returns the all-reduced losses."""
        ...

    def validate(self) -> tuple[float, float]:
        """Mean accuracy and 95% CI on the fixed selection episodes (every rank calls it)."""
        ...

    def save_best(self, run: RunDir, info: dict[str, Any]) -> None:
        """Write ``best.pt`` (and what goes with it) from the current weights (rank 0 only)."""

    def state(self) -> dict[str, Any]:
        """The mode's part of ``last.pt``: weights and optimiser state, on the CPU."""
        ...

    def load_state(self, state: dict[str, Any], run: RunDir, info: dict[str, Any]) -> None:
        """Restore :meth:`state` (``info`` describes the best step, for ``best.pt``)."""

    def summary(self) -> dict[str, Any]:
        """The mode's own fields of ``summary.json``."""
        ...


def check_train_cfg(recipe: Recipe, mode: str, world: int) -> None:
    """The training settings every mode needs, checked before anything is written."""
    cfg = recipe.train
    if cfg.mode != mode:
        other = "fsar_cli.train.finetune.finetune_train" if mode == "frozen" else "meta_train"
        raise TrainError(
            f"train.mode is {cfg.mode!r} but this trainer is the {mode} mode; `fsar train` "
            f"picks the trainer from train.mode (`--mode {cfg.mode}`), in Python call {other}"
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


def cpu_state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A copy of ``module``'s weights on the CPU (keys prefixed with ``prefix``)."""
    return {prefix + k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def selection_label(split: str) -> str:
    return TEST_LABEL if split == "test" else "val"


def train_run(
    recipe: Recipe,
    out_dir: str | Path,
    mode_name: str,
    make_mode: Callable[[distributed.Dist, torch.device], TrainMode],
    *,
    resume: bool,
    device: str,
    argv: list[str] | None,
    max_steps: int | None,
    on_progress: ProgressFn | None,
    allow_other_features: bool = False,
) -> TrainResult:
    """Check the settings, the device and the run folder, build the mode, run the loop."""
    d = distributed.init(device)
    check_train_cfg(recipe, mode_name, d.world)
    dev = d.device(device)
    run = RunDir(out_dir)
    with contextlib.ExitStack() as stack:
        if d.is_main:  # one process trains in a run folder at a time; torchrun ranks share it
            lock = locks.hold(run.path, what="run folder", way_out="start a run in another --out")
            stack.enter_context(lock)
        d.on_main(lambda: run.check(recipe, resume=resume))
        return run_loop(
            recipe,
            run,
            make_mode(d, dev),
            d,
            dev,
            resume=resume,
            argv=argv,
            max_steps=max_steps,
            on_progress=on_progress,
            allow_other_features=allow_other_features,
        )
    raise AssertionError("unreachable")  # pragma: no cover (for type checkers)


def run_loop(
    recipe: Recipe,
    run: RunDir,
    mode: TrainMode,
    d: distributed.Dist,
    dev: torch.device,
    *,
    resume: bool,
    argv: list[str] | None,
    max_steps: int | None,
    on_progress: ProgressFn | None,
    allow_other_features: bool = False,
) -> TrainResult:
    """Train ``mode`` in the run folder ``run`` (already checked with :meth:`RunDir.check`)."""
    cfg = recipe.train
    sel_label = selection_label(mode.sel_split)
    seed_rank_stream(d, cfg.seed)  # rank 0 keeps the single-process dropout stream
    if not resume:
        d.on_main(lambda: run.start(recipe, argv))
    if mode.sel_split == "test":
        log.warning(
            "train.select_on=test: checkpoints are selected on the TEST split (reference "
            "behaviour); results are labelled as such"
        )
    start, seconds = 0, 0.0
    last_loss: float | None = None
    best: dict[str, Any] = {"acc": None, "ci95": None, "step": None}
    final_val: tuple[float, float] | None = None
    state = d.on_main(run.load_state) if resume else None  # read by rank 0, sent to all
    # frozen mode: the train store's provenance; finetune: its encoder's, in the same format
    features = mode.provenance
    if state is not None:
        what = f"run {str(run.path)!r} (last.pt)"
        keys = (*PROVENANCE_KEYS, "sampling")
        store = getattr(mode, "train_store", None)
        if store is not None:
            check_provenance(
                state.get("features"), store, what=what, allow=allow_other_features, keys=keys
            )
        else:  # no store: the features come from the encoder the recipe names
            compare_provenance(
                state.get("features"),
                features,
                what=what,
                source=f"encoder {mode.encoder!r}",
                holds="gives",
                here="now",
                fix="use the encoder and weights it was made with (features.encoder, "
                "features.weights)",
                allow=allow_other_features,
                keys=keys,
            )
    if state is not None:
        if state.get("mode", "frozen") != mode.name:
            raise TrainError(
                f"{run.last} is not a {mode.name}-mode state; resume it in its own mode"
            )
        start, seconds = int(state["step"]), float(state.get("seconds", 0.0))
        last_loss = state.get("last_loss")
        best = dict(state.get("best") or best)
        if state.get("final_val"):
            final_val = (float(state["final_val"][0]), float(state["final_val"][1]))
        mode.load_state(state, run, _best_info(best, recipe, sel_label))
        restore_rng(state["rng"], d, dev, cfg.seed, start, run.last)
        log.info("resuming %s from step %d", run.path, start)
    elif resume:
        log.info("resuming %s: no checkpoint yet, starting at step 0", run.path)
    metrics = MetricsLog(run.metrics, keep_upto=start if resume else None) if d.is_main else None

    N, E = int(cfg.steps), int(cfg.episodes_per_step)
    stop = N if max_steps is None else max(start, min(N, int(max_steps)))
    lo, hi = d.split(E)  # this rank's episodes of every step: lo .. hi-1
    mode.begin(start, stop, lo, hi)
    progress = on_progress if d.is_main else None  # one voice: rank 0's
    if progress is not None:
        progress(start, total=stop, label=f"from step {start}" if start else None)
    t0 = time.perf_counter() - seconds
    label_val = ""
    for step in range(start, stop):
        t_step = time.perf_counter()
        lr = lr_at(step, cfg)
        set_lr(mode.optimizer, lr)
        vals = mode.step(step, lo, hi)
        if not math.isfinite(vals["loss"]):  # all-reduced: every rank stops here
            raise TrainError(
                f"loss is {vals['loss']} at step {step + 1}; lower train.lr (now {cfg.lr}) or "
                "check the features for NaN/inf (last good state: last.pt)"
            )
        done, last_loss = step + 1, vals["loss"]
        row: dict[str, Any] = {"step": done, **vals, "lr": lr}
        if done % cfg.val_every == 0 or done == N:
            acc, ci = final_val = mode.validate()
            row.update(val_acc=acc, val_ci95=ci, val_split=sel_label)
            label_val = f" · {mode.sel_split} {acc:.1%}"
            if best["acc"] is None or acc > best["acc"]:
                best = {"acc": acc, "ci95": ci, "step": done}
                if d.is_main:
                    mode.save_best(
                        run, {**_best_info(best, recipe, sel_label), "features": features}
                    )
            log.info(
                "step %d: loss %.4f, %s acc %.4f ± %.4f", done, last_loss, mode.sel_split, acc, ci
            )
        row["seconds"] = time.perf_counter() - t0
        if metrics is not None:
            metrics.append(row)
        if done % cfg.checkpoint_every == 0 or done == stop:
            # after validation: resumes draw the same dropout; every rank's stream, in rank order
            rngs = rng_states(d, dev)
            if d.is_main:
                run.save_state(
                    {
                        **mode.state(),
                        "mode": mode.name,
                        "step": done,
                        "rng": rngs,
                        "world_size": d.world,
                        "head": mode.head.name,
                        "best": best,
                        "final_val": list(final_val) if final_val else None,
                        "seconds": time.perf_counter() - t0,
                        "last_loss": last_loss,
                        "features": features,
                    }
                )
        if progress is not None:
            rate = (hi - lo) / max(time.perf_counter() - t_step, 1e-9)
            progress(1, label=f"loss {last_loss:.3f} · {rate:.1f} episodes/s{label_val}")

    steps_done = max(start, stop)
    result = TrainResult(
        out_dir=run.path,
        head=mode.head.name,
        steps_done=steps_done,
        steps_total=N,
        finished=steps_done >= N,
        resumed_from=start if resume else None,
        episodes_seen=steps_done * E,
        last_loss=last_loss,
        final_val_acc=final_val[0] if final_val else None,
        final_val_ci95=final_val[1] if final_val else None,
        best_val_acc=best["acc"],
        best_val_ci95=best["ci95"],
        best_step=best["step"],
        selected_on=sel_label,
        encoder=mode.encoder,
        encoder_random=mode.encoder_random,
        device=str(dev),
        seconds=time.perf_counter() - t0,
    )
    if d.is_main:
        run.write_summary(
            {
                **result.to_dict(),
                "recipe": recipe.name,
                "dataset": recipe.dataset,
                "mode": mode.name,
                **mode.summary(),
                "features": features,
                "episodes_per_step": E,
                "world_size": d.world,
                "episode": {"n_way": cfg.n_way, "k_shot": cfg.k_shot, "n_query": cfg.n_query},
                "validation": {
                    "split": mode.sel_split,
                    "n_way": recipe.eval.n_way,
                    "k_shot": cfg.k_shot,
                    "n_query": recipe.eval.n_query,
                    "episodes": cfg.val_episodes,
                    "seed": cfg.val_seed,
                    "every": cfg.val_every,
                },
            }
        )
    d.barrier()  # no rank returns before the run folder is complete
    return result


def _best_info(best: dict[str, Any], recipe: Recipe, sel_label: str) -> dict[str, Any]:
    """What ``best.pt`` records about its step."""
    return {
        "val_acc": best["acc"],
        "val_ci95": best["ci95"],
        "step": best["step"],
        "selected_on": sel_label,
        "recipe": recipe.name,
    }
