"""Benchmark grids: recipes x shots x heads, evaluated in one go next to the published numbers.

A cell is skipped, with the reason in its row, when its recipe has no cached split or (for the
trained head) no checkpoint; any other failure of a cell is reported in its row too, so one bad
cell never loses the rest of the grid. Every evaluated cell is appended to the results database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FsarError, RecipeError
from ..features.store import store_path
from ..recipe import Recipe, load_recipe
from ..results.published import PublishedResult, published
from .evaluate import evaluate

__all__ = ["BenchRow", "BenchResult", "run_bench", "DEFAULT_RECIPES", "DEFAULT_HEADS", "TRAINED"]

log = logging.getLogger(__name__)

DEFAULT_RECIPES = ("ssv2_full", "ssv2_small", "kinetics100", "ucf101", "hmdb51")
TRAINED = "trained"  #: head name meaning "the recipe's head, from its checkpoint"
DEFAULT_HEADS = (TRAINED, "proto", "otam", "text")


@dataclass
class BenchRow:
    """One cell of the grid. ``status``: ok, skipped or error; accuracies in percent."""

    recipe: str
    benchmark: str
    dataset: str
    k_shot: int
    head: str
    status: str
    note: str = ""
    acc: float | None = None
    ci95: float | None = None
    n_episodes: int | None = None
    encoder: str = ""
    encoder_random: bool = False
    checkpoint: str | None = None
    eval_id: int | None = None
    cache: str = ""


@dataclass
class BenchResult:
    """The grid's rows in order (recipe, shot, head) and the matching published numbers."""

    rows: list[BenchRow]
    published: list[PublishedResult] = field(default_factory=list)
    db: str | None = None

    @property
    def n_ok(self) -> int:
        return sum(r.status == "ok" for r in self.rows)


def _checkpoint_for(
    name: str, checkpoints: Mapping[str, str | Path] | None, runs: str | Path | None
) -> Path | None:
    if checkpoints and name in checkpoints:
        return Path(checkpoints[name])
    if runs is not None:
        return Path(runs) / name
    return None


def _has_checkpoint(path: Path | None) -> bool:
    if path is None:
        return False
    return path.is_file() or any((path / f).is_file() for f in ("best.pt", "last.pt"))


def run_bench(
    recipes: Sequence[str | Recipe] = DEFAULT_RECIPES,
    shots: Sequence[int] = (1, 5),
    heads: Sequence[str] = DEFAULT_HEADS,
    *,
    runs: str | Path | None = None,
    checkpoints: Mapping[str, str | Path] | None = None,
    n_way: int | None = None,
    n_query: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    split: str | None = None,
    allow_missing: bool = False,
    db: str | Path | None = None,
    device: str = "cpu",
    overrides: Sequence[str] = (),
    on_progress: Callable[..., None] | None = None,
) -> BenchResult:
    """Evaluate every (recipe, shot, head) cell.

    Args:
        recipes: recipe names, YAML paths or loaded recipes (all loaded before any work).
        shots: K values.
        heads: head names; ``"trained"`` is the recipe's head from its checkpoint.
        runs: folder of run folders, ``<runs>/<recipe name>`` (``best.pt``, else ``last.pt``).
        checkpoints: ``{recipe name: run folder or file}``, taking precedence over ``runs``.
        n_way, n_query, episodes, seed, split: the protocol; None = each recipe's ``eval``.
        db: results database to append to (None: do not record).
        overrides: ``--set`` overrides applied to every recipe.
        on_progress: advanced by episodes over the whole grid; ``label`` names the cell.
    Returns:
        A :class:`BenchResult`.
    """
    loaded = [r if isinstance(r, Recipe) else load_recipe(r, list(overrides)) for r in recipes]
    if not loaded or not shots or not heads:
        raise RecipeError("the grid is empty: give at least one recipe, shot and head")
    if any(k < 1 for k in shots):
        raise RecipeError(f"shots must be >= 1, got {list(shots)}")
    for flag, value, least in (
        ("--way", n_way, 2),
        ("--query", n_query, 1),
        ("--episodes", episodes, 1),
        ("--seed", seed, 0),
    ):  # 0 is a value, not "the recipe's default"
        if value is not None and value < least:
            raise RecipeError(f"{flag} {value}: must be at least {least}")
    cells = [(r, k, h) for r in loaded for k in shots for h in heads]
    per_cell = [r.eval.episodes if episodes is None else episodes for r, _, _ in cells]
    if on_progress is not None:
        on_progress(0, total=sum(per_cell))
    rows: list[BenchRow] = []
    for (recipe, k, head), n_eps in zip(cells, per_cell, strict=True):
        bench = recipe.data.split_name or recipe.name
        the_split = split or recipe.eval.split
        shown = f"{recipe.model.head} (trained)" if head == TRAINED else head
        row = BenchRow(recipe.name, bench, recipe.dataset or recipe.name, k, shown, "skipped")
        rows.append(row)
        cache = store_path(recipe.features.cache_dir, the_split)
        row.cache = str(cache)
        label = f"{recipe.name} {k}-shot {head}"
        ckpt = _checkpoint_for(recipe.name, checkpoints, runs) if head == TRAINED else None
        if not (cache / "meta.json").is_file():
            row.note = f"skipped: no cache at {cache} (run `fsar cache {recipe.name}`)"
        elif head == TRAINED and ckpt is None:
            row.note = "skipped: no checkpoint (pass --runs DIR or --checkpoint RECIPE=PATH)"
        elif head == TRAINED and not _has_checkpoint(ckpt):
            row.note = f"skipped: no checkpoint at {ckpt} (a file, or a run with best.pt/last.pt)"
        else:
            row.status = "ok"
        if row.status != "ok":
            log.debug("%s: %s", label, row.note)
            if on_progress is not None:
                on_progress(n_eps, label=label)
            continue

        done = [0]

        def advance(
            n: int = 1, *, total: int | None = None, label: str = label, done: list[int] = done
        ) -> None:
            done[0] += n
            if on_progress is not None and n:
                on_progress(n, label=label)

        try:
            res = evaluate(
                recipe,
                head_name=None if head == TRAINED else head,
                checkpoint=ckpt,
                n_way=n_way,
                k_shot=k,
                n_query=n_query,
                episodes=n_eps,
                seed=seed,
                split=the_split,
                allow_missing=allow_missing,
                device=device,
                db=db,
                overrides=list(overrides),
                on_progress=advance,
            )
        except FsarError as exc:
            row.status, row.note = "error", str(exc)
            log.warning("%s failed: %s", label, exc)
            if on_progress is not None and n_eps > done[0]:
                on_progress(n_eps - done[0], label=label)
            continue
        row.head = res.head if head != TRAINED else f"{res.head} (trained)"
        row.acc, row.ci95 = 100 * res.mean, 100 * res.ci95
        row.n_episodes, row.encoder, row.encoder_random = (
            res.n_episodes,
            res.encoder,
            res.encoder_random,
        )
        row.checkpoint, row.eval_id = res.checkpoint, res.eval_id
        row.note = "; ".join(
            [res.missing, *res.record_errors] if res.missing else res.record_errors
        )
    pub: list[PublishedResult] = []
    for r in loaded:
        for k in shots:
            for p in published(
                r.data.split_name or r.name, k, r.eval.n_way if n_way is None else n_way
            ):
                if p not in pub:
                    pub.append(p)
    return BenchResult(rows, pub, None if db is None else str(db))
