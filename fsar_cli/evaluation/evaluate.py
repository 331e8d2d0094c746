"""Evaluation: mean accuracy and 95% CI over seeded W-way K-shot test episodes (METHOD.md §6).

:func:`evaluate` resolves the head (a checkpoint, fsar's or the reference's, or an untrained
baseline), samples or loads the episodes and scores them with the fast evaluator of
:mod:`.batched`, split across ranks under ``torchrun``; it returns an
:class:`EvalResult` with the full provenance and records it in the results database.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__, distributed
from ..episodes import EpisodeBatch, EpisodeSampler, load_episodes
from ..episodes import save_episodes as _save_episodes
from ..errors import CheckpointError, EpisodeError
from ..features.store import FeatureStore, store_path
from ..recipe import Recipe
from ..results.db import git_sha
from .batched import (
    EpisodeVideos,
    episode_accuracies,
    episode_logits,
    episode_videos,
    loop_episode_accuracies,
    rank_range,
    sharded_accuracies,
)
from .metrics import mean_and_ci95

__all__ = [
    "EvalResult",
    "EpisodeVideos",
    "evaluate",
    "episode_accuracies",
    "episode_videos",
    "rank_range",
    "sharded_accuracies",
    "episode_logits",
    "loop_episode_accuracies",
    "load_eval_head",
    "resolve_checkpoint",
]

log = logging.getLogger(__name__)

ProgressFn = Callable[..., None]


# --------------------------------------------------------------------------- heads and checkpoints


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's ``best.pt`` (else ``last.pt``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(
            f"run folder {str(p)!r} has no best.pt or last.pt; train first (`fsar train`) or "
            "pass the checkpoint file itself"
        )
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist (pass a run folder or a file)")
    return p


def load_eval_head(
    recipe: Recipe,
    dim: int,
    *,
    head_name: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    trust: bool = False,
) -> tuple[torch.nn.Module, str | None]:
    """The head to evaluate: from a checkpoint (fsar's or the reference's) or a baseline.

    Args:
        dim: the store's feature width D (the head must match it).
        head_name: the head to build; default the checkpoint's head, else ``recipe.model.head``.
        checkpoint: a run folder or a checkpoint file; required for trainable heads.
        trust: allow arbitrary unpickling of a reference checkpoint that needs it.
    Returns:
        (head in eval mode on ``device``, the checkpoint file used or None).
    """
    from ..models import create_head, load_head_checkpoint, load_reference_checkpoint

    if checkpoint is None:
        name = head_name or recipe.model.head
        head = create_head(name, dim, recipe.model)
        if head.trainable:
            raise CheckpointError(
                f"head {name!r} has trained parameters: train it first (`fsar train "
                f"{recipe.name}`) or pass --checkpoint RUN_OR_FILE; untrained baselines: "
                "proto, otam, text"
            )
        return head.to(device).eval(), None
    path = resolve_checkpoint(checkpoint)
    try:
        head, _extra = load_head_checkpoint(path, trust=trust)
    except CheckpointError as own:
        try:
            head, tower, _info = load_reference_checkpoint(path, trust=trust)
        except CheckpointError as ref:
            raise CheckpointError(
                f"{path}: neither an fsar checkpoint ({own}) nor a reference one ({ref})"
            ) from None
        if tower is not None:
            log.warning(
                "%s holds fine-tuned visual tower weights; the cached features come from the "
                "encoder named in the cache, so this evaluates the head on those features",
                path,
            )
    if head_name is not None and head.name != head_name:
        raise CheckpointError(
            f"{path} holds a {head.name!r} head, not {head_name!r}; drop --head or pass another "
            "checkpoint"
        )
    if hasattr(head, "merge_before") and head.merge_before != recipe.model.merge_before:
        # how K > 1 shots are merged is an evaluation choice, not a trained weight: the recipe
        # (model.merge_before, overridable with --set) decides
        log.info("merge_before %s -> %s (recipe)", head.merge_before, recipe.model.merge_before)
        head.merge_before = recipe.model.merge_before
    ckpt_dim = _head_dim(head)
    if ckpt_dim is not None and ckpt_dim != dim:
        raise CheckpointError(
            f"{path} was trained on {ckpt_dim}-wide features but the cache has width {dim}; "
            "evaluate with the cache of the encoder it was trained on"
        )
    return head.to(device).eval(), str(path)


def _head_dim(head: torch.nn.Module) -> int | None:
    dim = getattr(head, "init_kwargs", {}).get("dim")
    return int(dim) if dim is not None else None


# --------------------------------------------------------------------------- evaluate


@dataclass
class EvalResult:
    """One evaluation with its full provenance (METHOD.md §6) and per-episode accuracies."""

    recipe: str
    benchmark: str
    dataset: str
    split: str
    n_way: int
    k_shot: int
    n_query: int
    n_episodes: int
    seed: int | None
    head: str
    encoder: str
    encoder_random: bool
    sampling: str
    checkpoint: str | None
    episodes_source: str
    n_missing: int
    missing: str
    store: str
    device: str
    elapsed_s: float
    accuracies: np.ndarray = field(repr=False)
    overrides: list[str] = field(default_factory=list)
    eval_id: int | None = None
    db: str | None = None

    @property
    def mean(self) -> float:
        return mean_and_ci95(self.accuracies)[0]

    @property
    def ci95(self) -> float:
        return mean_and_ci95(self.accuracies)[1]

    def fields(self) -> dict[str, Any]:
        """The provenance and summary as results-database fields."""
        mean, ci = mean_and_ci95(self.accuracies)
        keep = (
            "recipe benchmark dataset split n_way k_shot n_query n_episodes seed head encoder "
            "encoder_random sampling checkpoint episodes_source n_missing missing overrides "
            "store device elapsed_s"
        ).split()
        out = {k: getattr(self, k) for k in keep}
        out.update(acc_mean=mean, acc_ci95=ci, fsar_version=__version__, git_sha=git_sha())
        return out


def _sampling(store: FeatureStore, recipe: Recipe, split: str) -> str:
    s = store.meta.get("sampling", recipe.features.sampling.for_split(split))
    s = s if isinstance(s, str) else json.dumps(s, sort_keys=True)
    if store.num_views > 1:
        s += f", {store.num_views} views (one drawn per slot)"
    return f"{store.num_frames} frames, {s}"


def evaluate(
    recipe: Recipe,
    *,
    head_name: str | None = None,
    checkpoint: str | Path | None = None,
    n_way: int | None = None,
    k_shot: int | None = None,
    n_query: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    split: str | None = None,
    allow_missing: bool = False,
    episodes_file: str | Path | None = None,
    save_episodes: str | Path | None = None,
    device: str = "cpu",
    db: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    trust: bool = False,
    on_progress: ProgressFn | None = None,
) -> EvalResult:
    """Evaluate a head on seeded episodes of a cached split (defaults from ``recipe.eval``).

    Args:
        recipe: the benchmark recipe (its ``features.cache_dir`` holds the cached split).
        head_name, checkpoint: see :func:`load_eval_head`.
        n_way, k_shot, n_query, episodes, seed, split: the protocol; None = the recipe's value
            (``k_shot`` defaults to the first of ``eval.shots``).
        allow_missing: sample only from videos with features when some lack them (reported).
        episodes_file: evaluate the episodes of this list instead of sampling (its way, shot and
            query counts must agree with any given here).
        save_episodes: also write the evaluated episode list here.
        db: append the result to this results database (None: do not record).
        overrides: the ``--set`` overrides that made ``recipe``, recorded as provenance.
        trust: allow arbitrary unpickling of a reference checkpoint that needs it.
        on_progress: advanced by the number of episodes finished (this rank's, under torchrun).
        device: ``cpu``, ``cuda`` or ``cuda:i``; under torchrun ``cuda`` is the local rank's GPU.
    Returns:
        The :class:`EvalResult` (with ``eval_id`` when recorded). Under torchrun every rank
        evaluates a contiguous range of the episodes and returns the same, complete result
        (identical to a single process's); only rank 0 writes the database row and the list.
    """
    from ..results.db import ResultsDB

    ev = recipe.eval
    split = split or ev.split
    d = distributed.init(device)  # under torchrun: this rank's device, episodes split by rank
    device = str(d.device(device))
    store = FeatureStore.open(store_path(recipe.features.cache_dir, split))
    head, ckpt = load_eval_head(
        recipe, store.dim, head_name=head_name, checkpoint=checkpoint, device=device, trust=trust
    )
    keys = store.index["key"].astype(str).tolist()
    start = time.perf_counter()
    whole: EpisodeBatch | None = None  # the full batch, when it is at hand
    if episodes_file is not None:
        whole, info = load_episodes(episodes_file, keys, store.usable)
        for what, given, have in (
            ("way", n_way, whole.n_way),
            ("shot", k_shot, whole.k_shot),
            ("query", n_query, whole.n_query),
            ("episodes", episodes, len(whole)),
        ):
            if given is not None and given != have:
                raise EpisodeError(
                    f"{episodes_file} holds {have} for {what} but {given} was asked; drop the "
                    "option or pass another episode list"
                )
        seed, source = info.get("seed"), f"file {episodes_file}"
        n, sampler = len(whole), None
        shape = (whole.n_way, whole.k_shot, whole.n_query)
    else:
        seed = ev.seed if seed is None else seed
        sampler = EpisodeSampler(
            store.labels,
            n_way or ev.n_way,
            k_shot or ev.shots[0],
            n_query or ev.n_query,
            seed=seed,
            usable=store.usable,
            class_names=store.class_names,
            allow_missing=allow_missing,
            num_views=store.num_views,
            sample_views=store.num_views > 1,
            split=f"{store.path}",
        )
        n, source = int(episodes or ev.episodes), "sampled"
        shape = (sampler.n_way, sampler.k_shot, sampler.n_query)
        if n < 1:
            raise EpisodeError(f"asked for {n} episodes; pass --episodes >= 1")

    def fetch(a: int, b: int) -> EpisodeBatch:
        # episode i is drawn from its own generator: a rank samples only its range
        nonlocal whole
        if whole is not None:
            return whole if (a, b) == (0, len(whole)) else whole.slice(a, b)
        assert sampler is not None
        batch = sampler.sample(b - a, start=a)
        if (a, b) == (0, n):
            whole = batch
        return batch

    if on_progress is not None:
        lo, hi = rank_range(n, ev.batch_episodes, d)
        on_progress(0, total=hi - lo, label=f"rank 0 of {d.world}" if d.enabled else None)
    accs = sharded_accuracies(
        head,
        store.features,
        store.text,
        fetch,
        n,
        d,
        device=device,
        chunk=ev.batch_episodes,
        on_progress=on_progress,
    )
    result = EvalResult(
        recipe=recipe.name,
        benchmark=recipe.data.split_name or recipe.name,
        dataset=recipe.dataset or recipe.name,
        split=split,
        n_way=shape[0],
        k_shot=shape[1],
        n_query=shape[2],
        n_episodes=n,
        seed=None if seed is None else int(seed),
        head=str(getattr(head, "name", head_name)),
        encoder=str(store.meta.get("encoder", "unknown")),
        encoder_random=bool(store.meta.get("encoder_random", False)),
        sampling=_sampling(store, recipe, split),
        checkpoint=ckpt,
        episodes_source=source,
        n_missing=store.n_missing,
        missing=store.missing_summary(),
        store=str(store.path),
        device=device if not d.enabled else f"{device} x {d.world} processes",
        elapsed_s=time.perf_counter() - start,
        accuracies=accs,
        overrides=list(overrides),
    )
    if not d.is_main:  # one result: rank 0 writes the episode list and the database row
        return result
    if save_episodes is not None:
        info = {"seed": result.seed, "split": split, "recipe": recipe.name, "store": result.store}
        _save_episodes(save_episodes, fetch(0, n), keys, info)
    if db is not None:
        rdb = ResultsDB(db)
        result.eval_id, result.db = rdb.add(result.fields(), accs), str(rdb.path)
    log.debug(
        "%s %d-shot %s: %.2f ± %.2f",
        recipe.name,
        result.k_shot,
        result.head,
        100 * result.mean,
        100 * result.ci95,
    )
    return result
