"""Paired comparison of two evaluations on identical episodes: difference, 95% CI, wins, p-value.

Two heads scored on the same seeded episodes give one accuracy difference per episode,
``d_i = acc_A,i - acc_B,i``. The episodes' own difficulty cancels in ``d_i``, so the paired
interval is far narrower than the two per-method CIs suggest:

- mean difference ``mean(d)``, with the t-based 95% CI ``mean(d) +- t(0.975, n-1) * sd(d) /
  sqrt(n)`` (``sd`` with ``n - 1`` degrees of freedom);
- win / tie / loss: episodes where A scored higher / the same / lower than B;
- the paired t-test's two-sided p-value (``scipy.stats.ttest_rel``).

Evaluations on different episodes are refused unless asked for ``unpaired``: then Welch's
interval and t-test on the two sets of accuracies (no win/tie/loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import FsarError
from .db import ResultsDB

__all__ = [
    "COMPARE_COLUMNS",
    "Comparison",
    "PairedStats",
    "compare",
    "paired_stats",
    "unpaired_stats",
]


@dataclass
class PairedStats:
    """Accuracy difference A - B (fractions in [-1, 1]) and its test."""

    n: int
    diff: float
    ci95: float  # half-width
    p_value: float
    wins: int | None
    ties: int | None
    losses: int | None
    test: str

    @property
    def low(self) -> float:
        return self.diff - self.ci95

    @property
    def high(self) -> float:
        return self.diff + self.ci95


def paired_stats(acc_a: np.ndarray, acc_b: np.ndarray) -> PairedStats:
    """Paired difference of per-episode accuracies (same episodes, same order)."""
    from scipy import stats

    a, b = np.asarray(acc_a, np.float64), np.asarray(acc_b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two equal-length sets of >= 2 accuracies, got {a.shape}, {b.shape}")
    d = a - b
    n = len(d)
    sd = float(d.std(ddof=1))
    mean = float(d.mean())
    if sd <= 1e-12:  # every episode differs by the same amount: no spread to test against
        half, p = 0.0, (1.0 if mean == 0.0 else 0.0)
    else:
        half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
        p = float(stats.ttest_rel(a, b).pvalue)
    eps = 1e-12
    return PairedStats(
        n,
        mean,
        half,
        p,
        int((d > eps).sum()),
        int((np.abs(d) <= eps).sum()),
        int((d < -eps).sum()),
        "paired t-test",
    )


def unpaired_stats(acc_a: np.ndarray, acc_b: np.ndarray) -> PairedStats:
    """Welch's difference of means, CI and t-test for evaluations on different episodes."""
    from scipy import stats

    a, b = np.asarray(acc_a, np.float64), np.asarray(acc_b, np.float64)
    if min(len(a), len(b)) < 2:
        raise ValueError("need at least 2 accuracies on each side")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    mean = float(a.mean() - b.mean())
    if se <= 1e-12:
        half, p = 0.0, (1.0 if mean == 0.0 else 0.0)
    else:
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        half = float(stats.t.ppf(0.975, df) * se)
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return PairedStats(min(len(a), len(b)), mean, half, p, None, None, None, "Welch t-test")


#: Columns of :attr:`Comparison.frame` (and of ``fsar compare --out``); accuracies in percent.
COMPARE_COLUMNS = [
    "eval_a",
    "eval_b",
    "method_a",
    "method_b",
    "benchmark",
    "split",
    "n_way",
    "k_shot",
    "n_episodes",
    "seed",
    "acc_a",
    "acc_b",
    "diff",
    "diff_low",
    "diff_high",
    "wins",
    "ties",
    "losses",
    "p_value",
    "test",
    "paired",
]

# What must agree for two evaluations to have scored the same episodes.
_SAME_EPISODES = ("split", "n_way", "k_shot", "n_query", "n_episodes", "seed", "episodes_source")


@dataclass
class Comparison:
    """``fsar compare``'s rows (one per matched shot / protocol) as :data:`COMPARE_COLUMNS`."""

    frame: pd.DataFrame
    paired: bool
    notes: list[str]


def _label(row: pd.Series) -> str:
    text = f"{row['head']}"
    ckpt = row.get("checkpoint")
    if isinstance(ckpt, str) and ckpt:
        text += f" ({Path(ckpt).parent.name}/{Path(ckpt).name})"
    return text


def _select(frame: pd.DataFrame, selector: str, db: Path) -> pd.DataFrame:
    """Rows a selector names: an eval id, or ``key=value[,key=value]`` over recipe, head,
    shot, split, benchmark (a bare word is a head); the latest row per protocol."""
    sel = selector.strip()
    if sel.isdigit():
        rows = frame[frame["eval_id"] == int(sel)]
        if rows.empty:
            raise FsarError(f"{db}: no evaluation with eval_id {sel}; see `fsar report`")
        return rows
    keys = {"recipe": "recipe", "head": "head", "shot": "k_shot", "split": "split"}
    keys["benchmark"] = "benchmark"
    rows = frame
    for part in sel.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            key, value = "head", part
        key = key.strip()
        if key not in keys:
            raise FsarError(
                f"compare selector {selector!r}: unknown key {key!r}; use an eval id, a head name "
                "or key=value pairs over recipe, head, shot, split, benchmark"
            )
        col = keys[key]
        want: object = value.strip()
        if col == "k_shot":
            try:
                want = int(value)
            except ValueError:
                raise FsarError(
                    f"compare selector {selector!r}: shot {value!r} is not a number"
                ) from None
        rows = rows[rows[col] == want]
    if rows.empty:
        raise FsarError(f"{db}: no evaluation matches {selector!r}; see `fsar report`")
    rows = rows.sort_values("eval_id")
    return rows.groupby(["split", "n_way", "k_shot", "n_query"], as_index=False).tail(1)


def _why_unpaired(a: pd.Series, b: pd.Series) -> str | None:
    for col in _SAME_EPISODES:
        va, vb = a[col], b[col]
        if not (va == vb or (pd.isna(va) and pd.isna(vb))):
            return f"{col} {va} vs {vb}"
    if a["store"] != b["store"] and str(a["episodes_source"]) == "sampled":
        return f"cache {a['store']} vs {b['store']}"
    return None


def compare(
    a: str,
    b: str,
    *,
    db: str | Path | None = None,
    k_shot: int | None = None,
    unpaired: bool = False,
) -> Comparison:
    """Compare evaluations ``a`` and ``b`` of the results database (A - B).

    Args:
        a, b: selectors: an eval id (``12``), a head name (``clipfsar``: its latest evaluation
            at every shot) or ``key=value`` pairs joined by commas over recipe, head, shot,
            split, benchmark (``recipe=synth,head=otam``).
        k_shot: keep only this shot count.
        unpaired: compare evaluations on different episodes with Welch's test instead of
            refusing.
    Returns:
        A :class:`Comparison`, one row per protocol (split, way, shot, query) both sides have.
    Raises:
        FsarError: nothing matches, the sides share no protocol, or (without ``unpaired``) they
            were scored on different episodes.
    """
    rdb = ResultsDB(db)
    frame = rdb.query(k_shot=k_shot)
    rows_a, rows_b = _select(frame, a, rdb.path), _select(frame, b, rdb.path)
    key = ["split", "n_way", "k_shot", "n_query"]
    pairs = rows_a.merge(rows_b, on=key, suffixes=("_a", "_b"))
    if pairs.empty:
        have = lambda r: ", ".join(sorted({f"{x.k_shot}-shot" for x in r.itertuples()}))  # noqa: E731
        raise FsarError(
            f"{rdb.path}: {a!r} ({have(rows_a)}) and {b!r} ({have(rows_b)}) share no protocol "
            "(split, way, shot, query); evaluate both with the same settings"
        )
    out, notes = [], []
    for _, p in pairs.sort_values("k_shot").iterrows():
        ra = rows_a[rows_a["eval_id"] == p["eval_id_a"]].iloc[0]
        rb = rows_b[rows_b["eval_id"] == p["eval_id_b"]].iloc[0]
        if int(ra["eval_id"]) == int(rb["eval_id"]):
            raise FsarError(f"{a!r} and {b!r} both select eval_id {ra['eval_id']}; pick two")
        acc_a, acc_b = rdb.accuracies(int(ra["eval_id"])), rdb.accuracies(int(rb["eval_id"]))
        why = _why_unpaired(ra, rb)
        if why is None and len(acc_a) == len(acc_b):
            why = _different_classes(rdb, int(ra["eval_id"]), int(rb["eval_id"]))
        if why is not None and not unpaired:
            raise FsarError(
                f"eval {ra['eval_id']} and eval {rb['eval_id']} were not scored on the same "
                f"episodes ({why}), so a paired comparison is impossible; rerun one with "
                f"`fsar eval ... --episodes-file EPISODES.json` (write it from the other with "
                "--save-episodes) or the same --seed, or pass --unpaired for Welch's test"
            )
        stats = paired_stats(acc_a, acc_b) if why is None else unpaired_stats(acc_a, acc_b)
        if why is not None:
            notes.append(f"{ra['k_shot']}-shot: unpaired ({why})")
        out.append(
            {
                "eval_a": int(ra["eval_id"]),
                "eval_b": int(rb["eval_id"]),
                "method_a": _label(ra),
                "method_b": _label(rb),
                "benchmark": ra["benchmark"],
                "split": ra["split"],
                "n_way": int(ra["n_way"]),
                "k_shot": int(ra["k_shot"]),
                "n_episodes": stats.n,
                "seed": ra["seed"],
                "acc_a": 100 * float(acc_a.mean()),
                "acc_b": 100 * float(acc_b.mean()),
                "diff": 100 * stats.diff,
                "diff_low": 100 * stats.low,
                "diff_high": 100 * stats.high,
                "wins": stats.wins,
                "ties": stats.ties,
                "losses": stats.losses,
                "p_value": stats.p_value,
                "test": stats.test,
                "paired": why is None,
            }
        )
    result = pd.DataFrame(out, columns=COMPARE_COLUMNS)
    return Comparison(result, bool(result["paired"].all()), notes)


def _different_classes(rdb: ResultsDB, ea: int, eb: int) -> str | None:
    """With predictions on both sides, check the episodes' classes really are the same."""
    have = rdb.has_predictions()
    if ea not in have or eb not in have:
        return None
    if not np.array_equal(rdb.predictions(ea).classes, rdb.predictions(eb).classes):
        return "same settings but different episode classes (a changed cache?)"
    return None
