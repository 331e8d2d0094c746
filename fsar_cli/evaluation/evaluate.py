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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, distributed
from ..episodes import EPISODES_FORMAT, EpisodeBatch, EpisodeSampler, load_episodes
from ..episodes import save_episodes as _save_episodes
from ..errors import EpisodeError, FsarError
from ..features.store import FeatureStore, store_path
from ..models.precision import check_precision, compute_precision
from ..ownership import claim
from ..progress import ProgressFn
from ..recipe import Recipe
from ..results.db import EpisodePredictions, git_sha
from .batched import (
    EpisodeScores,
    EpisodeVideos,
    SharedEncodings,
    episode_scores,
    episode_videos,
    rank_range,
    sharded_scores,
)
from .heads import load_eval_head
from .metrics import mean_and_ci95

__all__ = [
    "EvalResult",
    "EpisodePlan",
    "evaluate",
    "evaluate_seeds",
    "evaluate_shots",
    "plan_episodes",
    "record",
    "seed_runs",
]

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
    #: what could not be written after the accuracy was computed (episode list, database row):
    #: one line each; the numbers above stay valid and the CLI prints them first
    record_errors: list[str] = field(default_factory=list)
    predictions: EpisodePredictions | None = field(default=None, repr=False)

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
    store.check_finite()
    dup = store.index["key"].astype(str)
    dup = dup[dup.duplicated()]
    if len(dup):  # one video twice can be support and query of one episode
        raise EpisodeError(
            f"{store.path} lists video {dup.iloc[0]!r} more than once ({len(dup)} duplicate(s)); "
            "remove the duplicate lines from the split file and rerun `fsar cache`"
        )
    if episodes_file is not None:
        keys = store.index["key"].astype(str).tolist()
        whole, info = load_episodes(episodes_file, keys, store.usable, store.labels)
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
    if seed < 0:
        raise EpisodeError(f"--seed {seed}: episode seeds are integers >= 0")
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

    # a computed accuracy is never lost: a failure here is noted in result.record_errors
    if save_episodes is not None:
        keys = store.index["key"].astype(str).tolist()
        info = {"seed": result.seed, "split": result.split, "recipe": result.recipe}
        try:
            claim(save_episodes, kind="file", ours=_is_episode_list, what="--save-episodes file")
            batch = plan.fetch(0, plan.n)
            _save_episodes(save_episodes, batch, keys, {**info, "store": result.store})
        except (FsarError, OSError) as exc:
            result.record_errors.append(f"episode list not written: {_one_line(exc)}")
    if db is not None:
        try:
            rdb = ResultsDB(db)
            eval_id = rdb.add(result.fields(), result.accuracies, result.predictions)
            result.eval_id, result.db = eval_id, str(rdb.path)
        except (FsarError, OSError) as exc:
            result.record_errors.append(f"result not recorded: {_one_line(exc)}")
    for text in result.record_errors:
        log.debug(text)


def _one_line(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, FsarError) else f"{type(exc).__name__}: {exc}"


def _is_episode_list(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(200)
    return b'"format": "' + EPISODES_FORMAT.encode() + b'"' in head


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
    allow_other_features: bool = False,
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
        allow_other_features: evaluate a checkpoint on features other than it recorded
            (another encoder, weights or resolution): refused otherwise.
        on_progress: advanced by the number of episodes finished (this rank's, under torchrun).
        precision: ``fp32`` (default) or ``bf16`` (:mod:`fsar_cli.models.precision`): the head's
            matrix products in bfloat16, matching in float32. Not recorded in the results
            database; logged as a warning.
        device: ``cpu``, ``cuda`` or ``cuda:i``; under torchrun ``cuda`` is the local rank's GPU.
    Returns:
        The :class:`EvalResult` (with ``eval_id`` when recorded, and the per-query
        ``predictions``, also stored in the database). Under torchrun every rank evaluates a
        contiguous range of the episodes and returns the same, complete result (identical to a
        single process's); only rank 0 writes the database row and the list.
    """
    return evaluate_shots(
        recipe,
        shots=[k_shot],
        head_name=head_name,
        checkpoint=checkpoint,
        n_way=n_way,
        n_query=n_query,
        episodes=episodes,
        seed=seed,
        split=split,
        allow_missing=allow_missing,
        episodes_file=episodes_file,
        save_episodes=save_episodes,
        device=device,
        db=db,
        overrides=overrides,
        trust=trust,
        on_progress=on_progress,
        allow_other_features=allow_other_features,
        precision=precision,
    )[0]


def evaluate_shots(
    recipe: Recipe,
    shots: Sequence[int | None],
    *,
    head_name: str | None = None,
    checkpoint: str | Path | None = None,
    n_way: int | None = None,
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
    allow_other_features: bool = False,
    precision: str = "fp32",
) -> list[EvalResult]:
    """:func:`evaluate` at several shot counts, one :class:`EvalResult` (and database row) each.

    The head and store are loaded once; in a single process the per-video encodings (queries,
    and the supports of 1-shot / merge-after heads) of all shots' videos are computed once and
    shared (:class:`.batched.SharedEncodings`). Episodes of each shot are the ones a separate
    ``evaluate(k_shot=K)`` draws (same seed). ``on_progress`` counts episodes over all shots.
    """
    shots = list(shots) or [None]
    if len(shots) > 1 and (episodes_file is not None or save_episodes is not None):
        flag = "--episodes-file" if episodes_file is not None else "--save-episodes"
        raise EpisodeError(
            f"{flag} holds one shot count but {len(shots)} were asked ({shots}); evaluate one "
            "--shot at a time with it"
        )
    if len(set(shots)) != len(shots):
        raise EpisodeError(f"--shot {shots}: a shot count is repeated; give each once")
    split = split or recipe.eval.split
    check_precision(precision)
    if precision != "fp32":
        log.warning("evaluating in %s: numbers differ slightly from fp32", precision)
    d = distributed.init(device)  # under torchrun: this rank's device, episodes split by rank
    device = str(d.device(device))
    store = FeatureStore.open(store_path(recipe.features.cache_dir, split))
    head, ckpt = load_eval_head(
        recipe,
        store.dim,
        head_name=head_name,
        checkpoint=checkpoint,
        device=device,
        trust=trust,
        store=store,
        allow_other_features=allow_other_features,
    )
    plans = [
        plan_episodes(
            recipe,
            store,
            n_way=n_way,
            k_shot=k,
            n_query=n_query,
            episodes=episodes,
            seed=seed,
            allow_missing=allow_missing,
            episodes_file=episodes_file,
        )
        for k in shots
    ]
    if on_progress is not None:
        total = sum(
            (lambda r: r[1] - r[0])(rank_range(p.n, recipe.eval.batch_episodes, d)) for p in plans
        )
        on_progress(0, total=total, label=f"rank 0 of {d.world}" if d.enabled else None)
    shared = None
    if len(plans) > 1 and not d.enabled:
        V = store.num_views
        union = EpisodeVideos.union([episode_videos(p.fetch(0, p.n), V) for p in plans])
        shared = SharedEncodings(union)
    results = []
    for plan in plans:
        start = time.perf_counter()
        scores: EpisodeScores
        with compute_precision(precision, device):
            if shared is not None:
                scores = episode_scores(
                    head,
                    store.features,
                    store.text,
                    plan.fetch(0, plan.n),
                    device=device,
                    chunk=recipe.eval.batch_episodes,
                    on_progress=on_progress,
                    shared=shared,
                )
            else:
                scores = sharded_scores(
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
            accuracies=scores.accuracies,
            overrides=list(overrides),
            predictions=EpisodePredictions(
                scores.classes, scores.predictions.astype(np.int64), plan.shape[2]
            ),
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
        results.append(result)
    return results


def seed_runs(checkpoint: str | Path | None) -> list[Path]:
    """The ``seed-N`` run folders of a multi-seed training folder (``fsar train --seeds``),
    in seed order; empty when ``checkpoint`` is a single run or file."""
    if checkpoint is None:
        return []
    p = Path(checkpoint).expanduser()
    if not p.is_dir() or (p / "best.pt").is_file() or (p / "last.pt").is_file():
        return []
    runs = [q for q in p.glob("seed-*") if q.is_dir() and q.name[5:].isdigit()]
    return sorted(runs, key=lambda q: int(q.name[5:]))


def evaluate_seeds(
    recipe: Recipe,
    *,
    checkpoint: str | Path | None = None,
    shots: Sequence[int | None] = (None,),
    **kwargs: Any,
) -> list[EvalResult]:
    """:func:`evaluate_shots` of a checkpoint, or of every ``seed-N`` run of a multi-seed
    training folder, each on the same episodes (same seed and protocol); results in seed order,
    then shot order. Other arguments as :func:`evaluate_shots`."""
    runs = seed_runs(checkpoint)
    if not runs:
        return evaluate_shots(recipe, shots, checkpoint=checkpoint, **kwargs)
    if kwargs.get("save_episodes") is not None:
        raise EpisodeError(
            f"--save-episodes with {len(runs)} seed runs in {checkpoint}: save the list from one "
            "run (pass its seed-N folder)"
        )
    out: list[EvalResult] = []
    for run in runs:
        log.info("evaluating %s", run)
        out.extend(evaluate_shots(recipe, shots, checkpoint=run, **kwargs))
    return out
