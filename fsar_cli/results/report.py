"""Reports from the results database: a CSV with stable columns, or a paper-style markdown table."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from .. import atomic
from ..errors import FsarError
from ..ownership import claim, starts_with
from .db import ResultsDB
from .published import BENCHMARKS, CAVEAT, published

__all__ = [
    "REPORT_COLUMNS",
    "REPORT_COLUMN_DOCS",
    "ReportResult",
    "load_results",
    "markdown_table",
    "seed_group",
    "write_predictions",
    "write_report",
]

log = logging.getLogger(__name__)

#: Column -> meaning, in the order of the CSV. Stable: new columns are only ever appended.
REPORT_COLUMN_DOCS: dict[str, str] = {
    "eval_id": "row id in the results database (per-episode accuracies are stored under it)",
    "timestamp": "when the evaluation finished, ISO 8601 UTC",
    "recipe": "recipe name",
    "benchmark": "benchmark key (ssv2_full, ssv2_small, kinetics100, ucf101, hmdb51, ...)",
    "dataset": "dataset display name",
    "split": "evaluated split (train, val, test)",
    "n_way": "classes per episode",
    "k_shot": "support videos per class",
    "n_query": "query videos per class",
    "n_episodes": "episodes evaluated",
    "seed": "episode seed (empty for an episode list without one)",
    "head": "few-shot head (clipfsar, clipfsar-notext, proto, otam, text)",
    "encoder": "feature encoder of the cache (e.g. ViT-B/16)",
    "encoder_random": "True when the cache was made with random weights (not a real result)",
    "sampling": "frames per video and frame sampling of the cache",
    "checkpoint": "checkpoint file (empty for untrained baselines)",
    "episodes_source": "'sampled' or 'file <path>' (an episode list)",
    "n_missing": "listed videos without features (missing or undecodable)",
    "acc_mean": "mean episode accuracy, percent",
    "acc_ci95": "half-width of the 95% confidence interval (1.96 std / sqrt(n)), percent",
    "fsar_version": "fsar version that evaluated",
    "git_sha": "git commit of the fsar source tree, when known",
}
REPORT_COLUMNS: list[str] = list(REPORT_COLUMN_DOCS)

Format = Literal["csv", "markdown"]


@dataclass
class ReportResult:
    """What :func:`write_report` produced: the rows, and the file and/or text written."""

    frame: pd.DataFrame
    path: Path | None
    text: str | None
    fmt: str


def load_results(
    db: str | Path | None = None,
    *,
    recipe: str | None = None,
    head: str | None = None,
    k_shot: int | None = None,
    since: str | None = None,
) -> pd.DataFrame:
    """Matching evaluations as a DataFrame with exactly :data:`REPORT_COLUMNS` (percent accuracies).

    Args:
        db: the results database (None = default location).
        overwrite: replace an existing ``out`` that is not an fsar report (refused otherwise).
        recipe, head, k_shot: keep only rows with these values.
        since: keep rows evaluated at or after this date (``YYYY-MM-DD`` or ISO timestamp, UTC).
    """
    frame = ResultsDB(db).query(recipe=recipe, head=head, k_shot=k_shot, since=since)
    frame = frame.copy()
    frame["acc_mean"] = frame["acc_mean"] * 100.0
    frame["acc_ci95"] = frame["acc_ci95"] * 100.0
    frame["encoder_random"] = frame["encoder_random"].astype(bool)
    return frame[REPORT_COLUMNS].reset_index(drop=True)


def _method(row: pd.Series) -> str:
    label = f"{row['head']} ({row['encoder']})"
    if row["encoder_random"]:
        label += " RANDOM WEIGHTS"
    if row["split"] != "test":
        label += f" [{row['split']}]"
    return label


def _column(bench: str, dataset: str, n_way: int, k_shot: int) -> str:
    name = BENCHMARKS.get(bench) or dataset or bench
    return f"{name} {k_shot}-shot" if n_way == 5 else f"{name} {n_way}-way {k_shot}-shot"


def seed_group(checkpoint: object) -> str | None:
    """The multi-seed training folder a checkpoint belongs to (``RUN`` for ``RUN/seed-N/x.pt``,
    written by ``fsar train --seeds``), else None."""
    if not isinstance(checkpoint, str) or not checkpoint:
        return None
    parent = Path(checkpoint).parent
    if parent.name.startswith("seed-") and parent.name[5:].isdigit():
        return str(parent.parent)
    return None


def _seed_cell(df: pd.DataFrame, row: pd.Series, col_rows: pd.DataFrame) -> str | None:
    """``mean ± std (n seeds)`` over the latest evaluation of each seed run of ``row``'s group
    on the same protocol and episodes, when there are at least two."""
    group = seed_group(row["checkpoint"])
    if group is None:
        return None
    same = col_rows[
        (col_rows["checkpoint"].map(seed_group) == group)
        & (col_rows["seed"].fillna(-1) == (-1 if pd.isna(row["seed"]) else row["seed"]))
        & (col_rows["n_episodes"] == row["n_episodes"])
    ]
    latest = same.sort_values("eval_id").groupby("checkpoint").tail(1)
    if len(latest) < 2:
        return None
    accs = latest["acc_mean"].to_numpy(dtype=float)
    ci = latest["acc_ci95"].to_numpy(dtype=float).mean()
    return (
        f"{accs.mean():.1f} ± {accs.std(ddof=1):.1f} sd ({len(accs)} seeds; per-run CI ± {ci:.1f})"
    )


def markdown_table(frame: pd.DataFrame, *, include_published: bool = True) -> str:
    """A paper-style table: rows = methods (head + encoder), columns = benchmark x shot.

    Cells are ``acc ± ci`` in percent; where a method has several evaluations of a cell, the
    latest counts. Where that evaluation is of one seed of a multi-seed training folder
    (``fsar train --seeds``), the cell is the mean ± standard deviation over the folder's seeds
    (each seed's latest evaluation on the same episodes), with the seed count and the mean
    per-run CI. Published numbers (5-way, known benchmarks only) follow as rows marked
    "(published)", with their sources and caveat in footnotes.

    Args:
        frame: rows as returned by :func:`load_results`.
    """
    if frame.empty:
        raise FsarError("no results match; nothing to tabulate (check the filters or --db)")
    order = {b: i for i, b in enumerate(BENCHMARKS)}
    df = frame.sort_values("eval_id")
    cells: dict[tuple[str, str], str] = {}
    methods: list[str] = []
    columns: dict[str, tuple[int, str, int, int]] = {}
    for _, row in df.iterrows():
        m, col = (
            _method(row),
            _column(row["benchmark"], row["dataset"], int(row["n_way"]), int(row["k_shot"])),
        )
        if m not in methods:
            methods.append(m)
        key = (order.get(row["benchmark"], len(order)), str(row["benchmark"]))
        columns[col] = (*key, int(row["n_way"]), int(row["k_shot"]))
        cells[(m, col)] = f"{row['acc_mean']:.1f} ± {row['acc_ci95']:.1f}"
        if seed_group(row["checkpoint"]) is not None:
            same_col = df[
                (df["benchmark"] == row["benchmark"])
                & (df["split"] == row["split"])
                & (df["n_way"] == row["n_way"])
                & (df["k_shot"] == row["k_shot"])
                & (df["head"] == row["head"])
                & (df["encoder"] == row["encoder"])
            ]
            cells[(m, col)] = _seed_cell(df, row, same_col) or cells[(m, col)]
    cols = sorted(columns, key=lambda c: columns[c])
    lines = [
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(cells.get((m, c), "") for c in cols) + " |")
    notes: list[str] = []
    if include_published:
        pub_rows: dict[str, dict[str, str]] = {}
        sources: dict[str, str] = {}
        for c in cols:
            bench, n_way, k_shot = columns[c][1], columns[c][2], columns[c][3]
            for p in published(bench, k_shot, n_way):
                label = f"{p.label} (published)"
                pub_rows.setdefault(label, {})[c] = f"{p.acc:.1f}"
                sources[label] = p.source
        for i, (label, row_cells) in enumerate(pub_rows.items(), start=1):
            lines.append(
                f"| {label} [{i}] | " + " | ".join(row_cells.get(c, "") for c in cols) + " |"
            )
            notes.append(f"[{i}] {sources[label]}")
        if pub_rows:
            notes.append(f"Note: {CAVEAT}.")
    notes.append(
        "Accuracy in %, mean ± 95% CI over the evaluated episodes; the latest evaluation per cell."
    )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def write_report(
    out: str | Path | None = None,
    *,
    db: str | Path | None = None,
    fmt: Format = "csv",
    recipe: str | None = None,
    head: str | None = None,
    k_shot: int | None = None,
    since: str | None = None,
    include_published: bool = True,
    overwrite: bool = False,
) -> ReportResult:
    """Export the results database as CSV (:data:`REPORT_COLUMNS`) or a markdown table.

    Args:
        out: the file to write (atomically); None returns the text only (markdown) or is an
            error for CSV.
        db: the results database (None = default location).
        overwrite: replace an existing ``out`` that is not an fsar report (refused otherwise).
        fmt: ``csv`` or ``markdown``.
        recipe, head, k_shot, since: filters, as in :func:`load_results`.
        include_published: markdown only, add the published reference rows.
    Returns:
        A :class:`ReportResult`.
    """
    if fmt not in ("csv", "markdown"):
        raise FsarError(f"report format {fmt!r} is not one of csv, markdown")
    if fmt == "csv" and out is None:
        raise FsarError("a CSV report needs an output file: pass --out results.csv")
    if out is not None:  # before any work: never replace a file fsar did not write
        claim(
            out,
            kind="file",
            ours=starts_with(b"| method | ", ",".join(REPORT_COLUMNS[:3]).encode()),
            overwrite=overwrite,
            what="report",
        )
    frame = load_results(db, recipe=recipe, head=head, k_shot=k_shot, since=since)
    text = None
    if fmt == "markdown":
        text = markdown_table(frame, include_published=include_published)
    path = None
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            with atomic.replacing(path) as tmp:
                frame.to_csv(tmp, index=False)
        else:
            atomic.write_text(path, text or "")
        log.info("wrote %d results to %s", len(frame), path)
    return ReportResult(frame, path, text, fmt)


def write_predictions(
    eval_id: int, out: str | Path, *, db: str | Path | None = None
) -> pd.DataFrame:
    """Write one evaluation's per-query predictions as CSV (one row per query: episode, slot,
    label, predicted, class_id, predicted_class_id, class_name, predicted_class_name, correct).
    Returns the frame."""
    import json

    rdb = ResultsDB(db)
    pred = rdb.predictions(int(eval_id))
    frame = pred.to_frame()
    rows = rdb.query()
    store = rows.loc[rows["eval_id"] == int(eval_id), "store"]
    names: list[str] = []
    meta = Path(str(store.iloc[0])) / "meta.json" if len(store) else None
    if meta is not None and meta.is_file():
        names = [str(n) for n in json.loads(meta.read_text()).get("class_names", [])]

    def name(c: int) -> str:
        return names[c] if c < len(names) and names[c] else f"class {c}"

    frame["class_name"] = frame["class_id"].map(name)
    frame["predicted_class_name"] = frame["predicted_class_id"].map(name)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as tmp:
        frame.to_csv(tmp, index=False)
    return frame
