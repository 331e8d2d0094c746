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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, distributed
from ..episodes import EpisodeBatch, EpisodeSampler, load_episodes
from ..episodes import save_episodes as _save_episodes
from ..errors import EpisodeError
from ..features.store import FeatureStore, store_path
from ..models.precision import check_precision, compute_precision
from ..progress import ProgressFn
from ..recipe import Recipe
from ..results.db import git_sha
from .batched import rank_range, sharded_accuracies
from .heads import load_eval_head
from .metrics import mean_and_ci95

__all__ = ["EvalResult", "EpisodePlan", "evaluate", "plan_episodes", "record"]

log = logging.getLogger(__name__)


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


@dataclass
class EpisodePlan:
    """Which episodes an evaluation scores: ``n`` of them, fetched by range (``fetch(a, b)``)."""

    n: int
    shape: tuple[int, int, int]  # (way, shot, query)
    seed: int | None
    source: str  # "sampled" or "file PATH"
    sampler: EpisodeSampler | None
    whole: EpisodeBatch | None = None  # the full batch, once it is at hand

    def fetch(self, a: int, b: int) -> EpisodeBatch:
        """Episodes ``a .. b-1``; episode i comes from its own generator, so a rank samples only
        its range."""
        if self.whole is not None:
            return self.whole if (a, b) == (0, len(self.whole)) else self.whole.slice(a, b)
        assert self.sampler is not None
        batch = self.sampler.sample(b - a, start=a)
        if (a, b) == (0, self.n):
            self.whole = batch
        return batch


def _check_protocol(n_way: int, k_shot: int, n_query: int, episodes: int) -> None:
    for flag, value, least in (
        ("--way", n_way, 2),
        ("--shot", k_shot, 1),
        ("--query", n_query, 1),
        ("--episodes", episodes, 1),
    ):
        if value < least:
            why = " (a 1-way episode is always right)" if flag == "--way" else ""
            raise EpisodeError(f"{flag} {value}: must be at least {least}{why}")


def plan_episodes(
    recipe: Recipe,
    store: FeatureStore,
    *,
    n_way: int | None = None,
    k_shot: int | None = None,
    n_query: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    allow_missing: bool = False,
    episodes_file: str | Path | None = None,
) -> EpisodePlan:
    """The episodes to score: a saved list (checked against the store and any given counts) or
    seeded sampling with the given protocol (None = the recipe's ``eval`` value)."""
    ev = recipe.eval
    if episodes_file is not None:
        keys = store.index["key"].astype(str).tolist()
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
        shape = (whole.n_way, whole.k_shot, whole.n_query)
        return EpisodePlan(
            len(whole), shape, info.get("seed"), f"file {episodes_file}", None, whole
        )
    way = ev.n_way if n_way is None else n_way
    shot = ev.shots[0] if k_shot is None else k_shot
    query = ev.n_query if n_query is None else n_query
    n = int(ev.episodes if episodes is None else episodes)
    _check_protocol(way, shot, query, n)
    seed = ev.seed if seed is None else seed
    sampler = EpisodeSampler(
        store.labels,
        way,
        shot,
        query,
        seed=seed,
        usable=store.usable,
        class_names=store.class_names,
        allow_missing=allow_missing,
        num_views=store.num_views,
        sample_views=store.num_views > 1,
        split=f"{store.path}",
    )
    shape = (sampler.n_way, sampler.k_shot, sampler.n_query)
    return EpisodePlan(n, shape, seed, "sampled", sampler)


def record(
    result: EvalResult,
    plan: EpisodePlan,
    store: FeatureStore,
    *,
    db: str | Path | None,
    save_episodes: str | Path | None,
) -> None:
    """Write the evaluated episode list and the results-database row (rank 0 only)."""
    from ..results.db import ResultsDB

    if save_episodes is not None:
        keys = store.index["key"].astype(str).tolist()
        info = {"seed": result.seed, "split": result.split, "recipe": result.recipe}
        _save_episodes(save_episodes, plan.fetch(0, plan.n), keys, {**info, "store": result.store})
    if db is not None:
        rdb = ResultsDB(db)
        result.eval_id, result.db = rdb.add(result.fields(), result.accuracies), str(rdb.path)


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
    precision: str = "fp32",
) -> EvalResult:
    """Evaluate a head on seeded episodes of a cached split (defaults from ``recipe.eval``).

    Args:
        recipe: the benchmark recipe (its ``features.cache_dir`` holds the cached split).
        head_name, checkpoint: see :func:`.heads.load_eval_head`.
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
        precision: ``fp32`` (default) or ``bf16`` (:mod:`fsar_cli.models.precision`): the head's
            matrix products in bfloat16, matching in float32. Not recorded in the results
            database; logged as a warning.
        device: ``cpu``, ``cuda`` or ``cuda:i``; under torchrun ``cuda`` is the local rank's GPU.
    Returns:
        The :class:`EvalResult` (with ``eval_id`` when recorded). Under torchrun every rank
        evaluates a contiguous range of the episodes and returns the same, complete result
        (identical to a single process's); only rank 0 writes the database row and the list.
    """
    split = split or recipe.eval.split
    check_precision(precision)
    if precision != "fp32":
        log.warning("evaluating in %s: numbers differ slightly from fp32", precision)
    d = distributed.init(device)  # under torchrun: this rank's device, episodes split by rank
    device = str(d.device(device))
    store = FeatureStore.open(store_path(recipe.features.cache_dir, split))
    head, ckpt = load_eval_head(
        recipe, store.dim, head_name=head_name, checkpoint=checkpoint, device=device, trust=trust
    )
    start = time.perf_counter()
    plan = plan_episodes(
        recipe,
        store,
        n_way=n_way,
        k_shot=k_shot,
        n_query=n_query,
        episodes=episodes,
        seed=seed,
        allow_missing=allow_missing,
        episodes_file=episodes_file,
    )
    if on_progress is not None:
        lo, hi = rank_range(plan.n, recipe.eval.batch_episodes, d)
        on_progress(0, total=hi - lo, label=f"rank 0 of {d.world}" if d.enabled else None)
    with compute_precision(precision, device):
        accs = sharded_accuracies(
            head,
            store.features,
            store.text,
            plan.fetch,
            plan.n,
            d,
            device=device,
            chunk=recipe.eval.batch_episodes,
            on_progress=on_progress,
        )
    result = EvalResult(
        recipe=recipe.name,
        benchmark=recipe.data.split_name or recipe.name,
        dataset=recipe.dataset or recipe.name,
        split=split,
        n_way=plan.shape[0],
        k_shot=plan.shape[1],
        n_query=plan.shape[2],
        n_episodes=plan.n,
        seed=None if plan.seed is None else int(plan.seed),
        head=str(getattr(head, "name", head_name)),
        encoder=str(store.meta.get("encoder", "unknown")),
        encoder_random=bool(store.meta.get("encoder_random", False)),
        sampling=_sampling(store, recipe, split),
        checkpoint=ckpt,
        episodes_source=plan.source,
        n_missing=store.n_missing,
        missing=store.missing_summary(),
        store=str(store.path),
        device=device if not d.enabled else f"{device} x {d.world} processes",
        elapsed_s=time.perf_counter() - start,
        accuracies=accs,
        overrides=list(overrides),
    )
    log.debug(
        "%s %d-shot %s: %.2f ± %.2f",
        recipe.name,
        result.k_shot,
        result.head,
        100 * result.mean,
        100 * result.ci95,
    )
    if d.is_main:  # one result: rank 0 writes the episode list and the database row
        record(result, plan, store, db=db, save_episodes=save_episodes)
    return result
