"""Episodic meta-training of a few-shot head on cached features (``fsar train``; METHOD.md 4, 5, 7).

One optimiser step = ``train.episodes_per_step`` episodes (16, the reference's 4 GPUs x 4
accumulation steps) of ``n_way``-way ``k_shot``-shot ``n_query``-query, all in one batched forward
(``head.batch_episode_loss``); the loss is their mean, ``CE_fewshot + lambda_vt * CE_videotext``,
where the video-text loss is taken against the text of all meta-train classes. Episode ``j`` of
step ``s`` is episode index ``s * episodes_per_step + j`` of the seeded sampler, and the torch RNG
(dropout) is saved with every checkpoint, so a killed and resumed run ends with exactly the weights
of an uninterrupted one. Checkpoints are selected on the validation split (never on test, unless
the recipe says ``train.select_on: test``, the reference's behaviour, labelled as such).

In the frozen mode the tower is not trained; what trains is the head: the temporal Transformer,
the video-text ``scale`` and the adapter (``model.adapter: residual``, a zero-initialised residual
MLP on the cached features through which both losses flow).

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
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed
from .episodes import EpisodeBatch, EpisodeSampler
from .errors import CacheError, TrainError
from .evaluate import sharded_accuracies
from .metrics import mean_and_ci95
from .models import create_head, save_head_checkpoint
from .recipe import Recipe
from .runs import MetricsLog, RunDir
from .schedule import build_optimizer, lr_at, set_lr
from .store import FeatureStore, store_path

__all__ = ["TrainResult", "meta_train", "train_step", "EpisodeTensors", "episode_tensors"]

log = logging.getLogger(__name__)

ProgressFn = Callable[..., None]
TEST_LABEL = "TEST (reference behaviour)"


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


# --------------------------------------------------------------------------- one step


@dataclass
class EpisodeTensors:
    """The tensors of E training episodes, ready for ``head.batch_episode_loss``."""

    support: torch.Tensor  # [E, W*K, T, D] float32
    support_labels: torch.Tensor  # [E, W*K] episode labels
    query: torch.Tensor  # [E, W*Q, T, D] float32
    query_labels: torch.Tensor  # [E, W*Q]
    class_text: torch.Tensor  # [E, W, D] text of each episode class
    video_labels: torch.Tensor  # [E, W*K + W*Q] global class ids, supports then queries

    def __len__(self) -> int:
        return int(self.support.shape[0])

    def slice(self, a: int, b: int) -> EpisodeTensors:
        return EpisodeTensors(*(t[a:b] for t in self.__dict__.values()))


def episode_tensors(
    batch: EpisodeBatch, features: np.ndarray, text_table: torch.Tensor, device: torch.device
) -> EpisodeTensors:
    """Gather a batch's features (one fancy-index per side) and build its label tensors.

    The features travel in the store's dtype (float16) and become float32 on ``device``: half
    the bytes to copy, and torch converts much faster than numpy.

    Args:
        batch: E episodes (store rows and views).
        features: the store's [videos, V, T, D] array (memmap).
        text_table: [C, D] class text of the split, on ``device``.
    """
    s = features[batch.support_rows, batch.support_views]  # (E, W*K, T, D) float16
    q = features[batch.query_rows, batch.query_views]  # (E, W*Q, T, D) float16
    sl, ql = batch.support_labels, batch.query_labels  # (E, W*K), (E, W*Q)
    rows = np.arange(len(batch))[:, None]
    video_labels = np.concatenate([batch.classes[rows, sl], batch.classes[rows, ql]], axis=1)

    def dev(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)

    class_text = text_table[dev(batch.classes)]  # (E, W, D)
    return EpisodeTensors(
        dev(s).float(), dev(sl), dev(q).float(), dev(ql), class_text, dev(video_labels)
    )


def train_step(
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    ep: EpisodeTensors,
    text_table: torch.Tensor,
    lambda_vt: float,
    *,
    micro_batch: int | None = None,
    grad_clip: float | None = None,
    dist: distributed.Dist | None = None,
    total: int | None = None,
) -> dict[str, float]:
    """One optimiser step on the mean loss of E episodes (of ``total``, across ranks).

    Args:
        head: the head, in training mode.
        ep: the step's episodes; with ``micro_batch`` they are processed in slices of that many
            episodes whose gradients add up to the gradient of the mean (memory bound only).
        text_table: [C, D] text of all meta-train classes (the video-text loss's classes).
        lambda_vt: weight of the video-text loss.
        grad_clip: clip the gradient norm to this value (None: no clipping, as the reference).
        dist: under torchrun, this process's place: ``ep`` is its share of the step's ``total``
            episodes; this rank's loss is weighted by ``len(ep) * world / total`` and the
            gradients are averaged across ranks, so the update is that of the mean over all
            ``total`` episodes (uneven shares included). Every rank must call it.
        total: the step's episodes over all ranks (default ``len(ep)``).
    Returns:
        ``loss``, ``ce_fewshot``, ``ce_videotext``: means over the step's episodes (floats; over
        all ranks' episodes under torchrun).
    """
    d = dist or distributed.Dist()
    optimizer.zero_grad(set_to_none=True)
    n = len(ep)
    scale = n * d.world / (n if total is None else int(total))  # 1.0 in a single process
    m = n if not micro_batch or micro_batch >= n else int(micro_batch)
    sums = {"loss": 0.0, "ce_fewshot": 0.0, "ce_videotext": 0.0}
    parts: list[dict[str, torch.Tensor]] = []
    for a in range(0, n, m):
        part = ep if m == n else ep.slice(a, min(a + m, n))
        out = head.batch_episode_loss(
            part.support,
            part.support_labels,
            part.query,
            part.query_labels,
            part.class_text,
            part.video_labels,
            text_table,
            lambda_vt,
        )
        w = len(part) / n * scale
        (out["loss"] * w if w != 1.0 else out["loss"]).backward()
        parts.append({k: out[k].detach() * w for k in sums})
    # DistributedDataParallel's update: gradients averaged across ranks (no-op in one process)
    d.all_reduce_grads_([p for p in head.parameters() if p.requires_grad])
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(head.parameters(), float(grad_clip))
    optimizer.step()
    vals_t = torch.stack([sum(p[k] for p in parts) for k in sums]).float()  # [3]
    d.all_reduce_mean_([vals_t])
    vals = vals_t.cpu().tolist()  # one host sync for all three numbers
    return dict(zip(sums, vals, strict=True))


# --------------------------------------------------------------------------- setup helpers


def _device(d: distributed.Dist, device: str) -> torch.device:
    dev = d.device(device)  # under torchrun "cuda" is the local rank's GPU
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise TrainError(f"--device {device}: use cpu or cuda")
    return dev


def _open(recipe: Recipe, split: str) -> FeatureStore:
    return FeatureStore.open(store_path(recipe.features.cache_dir, split))


def _check_text(store: FeatureStore, split: str, head: str, classes: np.ndarray) -> None:
    """A text-using head needs the text of every class it sees."""
    bad = [int(c) for c in classes if np.isnan(store.text[c]).any()]
    if bad:
        names = store.class_names
        shown = ", ".join(
            f"id {c}" + (f" ({names[c]!r})" if c < len(names) else "") for c in bad[:5]
        )
        raise TrainError(
            f"head {head!r} uses class text, but {len(bad)} {split} class(es) have no text "
            f"feature in {store.path} ({shown}{' ...' if len(bad) > 5 else ''}): their names are "
            f"unknown; list them under the recipe key data.classes.{split} and re-run "
            f"`fsar cache` for the {split} split, or train a head without text "
            "(model.head: clipfsar-notext)"
        )


def _check_compatible(train: FeatureStore, other: FeatureStore) -> None:
    if other.dim != train.dim or other.num_frames != train.num_frames:
        raise CacheError(
            f"{other.path} has features [T={other.num_frames}, D={other.dim}] but {train.path} "
            f"[T={train.num_frames}, D={train.dim}]; cache both splits with the same encoder"
        )
    a, b = train.meta.get("encoder"), other.meta.get("encoder")
    if a != b or train.meta.get("weights_sha256") != other.meta.get("weights_sha256"):
        raise CacheError(
            f"{other.path} was cached with encoder {b!r} but {train.path} with {a!r} (or other "
            "weights); re-run `fsar cache` so both splits use the same encoder"
        )


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


def _rng_state(dev: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], dev: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if dev.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dev)


def _restore_rng(
    saved: Any, d: distributed.Dist, dev: torch.device, seed: int, step: int, run: RunDir
) -> None:
    """Restore this rank's RNG state from ``last.pt`` (a list in rank order, or one dict)."""
    states = [saved] if isinstance(saved, dict) else list(saved)
    if len(states) == d.world:
        _set_rng_state(states[d.rank], dev)
        return
    # another number of processes: the episodes are the same, the dropout streams cannot be
    torch.manual_seed(distributed.rank_seed(seed, step, d.rank))
    if d.is_main:
        log.warning(
            "%s was written by %d process(es), this run has %d: the episodes stay the same but "
            "every rank's dropout is reseeded from (train.seed, step %d, rank), so the weights "
            "will differ from an uninterrupted run; resume with %d process(es) to reproduce it",
            run.last,
            len(states),
            d.world,
            step,
            len(states),
        )


def _cpu_state(head: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in head.state_dict().items()}


# --------------------------------------------------------------------------- the loop


@dataclass
class _Setup:
    """Everything a run needs besides its state: stores, head, episodes, text table."""

    train_store: FeatureStore
    val_store: FeatureStore
    sel_split: str  # "val" (or "test" with train.select_on: test)
    sel_label: str
    head: nn.Module
    sampler: EpisodeSampler
    val_batch: EpisodeBatch
    text_table: torch.Tensor  # [C, D] text of all meta-train classes, on the device


def _setup(recipe: Recipe, dev: torch.device) -> _Setup:
    """Open the stores, build the head and the samplers, and check them all before any write."""
    cfg = recipe.train
    train_store = _open(recipe, "train")
    sel_split = "test" if cfg.select_on == "test" else "val"
    val_store = _open(recipe, sel_split)
    _check_compatible(train_store, val_store)

    torch.manual_seed(cfg.seed)  # initial weights (and dropout, until a checkpoint restores it)
    head = create_head(recipe.model.head, dim=train_store.dim, cfg=recipe.model)
    if not getattr(head, "trainable", False) or not any(p.requires_grad for p in head.parameters()):
        raise TrainError(
            f"head {recipe.model.head!r} has no parameters to train; evaluate it directly with "
            "`fsar eval`, or set model.head to a trainable head (`fsar heads` lists them)"
        )
    views = train_store.num_views
    sampler = EpisodeSampler(
        train_store.labels,
        cfg.n_way,
        cfg.k_shot,
        cfg.n_query,
        seed=cfg.seed,
        usable=train_store.usable,
        class_names=train_store.class_names,
        allow_missing=True,
        num_views=views,
        sample_views=views > 1,
        split="train",
    )
    # fixed validation episodes: eval protocol way and queries, the training shot
    val_batch = EpisodeSampler(
        val_store.labels,
        recipe.eval.n_way,
        cfg.k_shot,
        recipe.eval.n_query,
        seed=cfg.val_seed,
        usable=val_store.usable,
        class_names=val_store.class_names,
        allow_missing=True,
        split=sel_split,
    ).sample(cfg.val_episodes)
    for store, name in ((train_store, "train"), (val_store, sel_split)):
        if store.n_missing:
            log.warning("%s: %s; sampling from the others", name, store.missing_summary())
    if getattr(head, "uses_text", False):
        # the video-text loss uses the text of every meta-train class, sampled or not
        _check_text(train_store, "train", head.name, np.arange(len(train_store.text)))
        _check_text(val_store, sel_split, head.name, np.unique(val_batch.classes))
    # A class without text (possible only for a head without text) gets a zero row: never used.
    text_np = np.nan_to_num(np.asarray(train_store.text, np.float32), nan=0.0)
    return _Setup(
        train_store,
        val_store,
        sel_split,
        TEST_LABEL if sel_split == "test" else "val",
        head.to(dev).train(),
        sampler,
        val_batch,
        torch.from_numpy(text_np).to(dev),
    )


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
    su = _setup(recipe, dev)
    head, sel_split, sel_label = su.head, su.sel_split, su.sel_label
    if d.rank > 0:  # rank 0 keeps the single-process dropout stream, the others their own
        torch.manual_seed(distributed.rank_seed(cfg.seed, d.rank))
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
        _restore_rng(state["rng"], d, dev, cfg.seed, start, run)
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
            rngs = d.all_gather_object(_rng_state(dev))
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

    steps_done = max(start, stop)
    result = TrainResult(
        out_dir=run.path,
        head=head.name,
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
    run: RunDir, result: TrainResult, recipe: Recipe, su: _Setup, sel_split: str, world: int
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
