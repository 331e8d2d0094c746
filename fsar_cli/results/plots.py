"""Plots of results a person opens: accuracy vs shots, per-class results, training curves, the
benchmark grid.

Every function draws from the results database (or run folders), writes one image (PNG by
default; SVG or PDF by the file's extension) and returns a :class:`PlotResult` whose ``data`` is
exactly the numbers drawn, so tests and scripts can check a figure against the database. The
backend is matplotlib's headless Agg: no display is needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .. import atomic  # noqa: E402
from ..encoders import OFFLINE_ENCODER_NAME
from ..errors import FsarError  # noqa: E402
from ..ownership import claim
from .db import ResultsDB  # noqa: E402
from .report import load_results  # noqa: E402

__all__ = [
    "PlotResult",
    "PLOT_FORMATS",
    "plot_shots",
    "plot_classes",
    "plot_training",
    "plot_bench",
    "encoder_label",
]

log = logging.getLogger(__name__)

PLOT_FORMATS = (".png", ".svg", ".pdf")


@dataclass
class PlotResult:
    """An image written and the numbers it shows.

    Attributes:
        path: the image file.
        data: the plotted numbers (columns documented per plot function).
        extra: further tables of the same plot (e.g. ``confusion`` for the class plot).
    """

    path: Path
    data: pd.DataFrame
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)


def encoder_label(encoder: str, is_random: bool) -> str:
    """The encoder as a figure names it: random and non-OpenAI weights flagged."""
    if is_random:
        return f"{encoder}, RANDOM WEIGHTS (not a real result)"
    if encoder == OFFLINE_ENCODER_NAME:
        return f"{encoder} (fsar's demo CLIP, not OpenAI)"
    return encoder


#: Written into every image's metadata: how fsar recognises a plot it may replace.
_MARK = "fsar plot"


def _is_fsar_plot(path: Path) -> bool:
    return path.stat().st_size < 50_000_000 and _MARK.encode() in path.read_bytes()


def _check_out(out: str | Path, overwrite: bool) -> Path:
    path = Path(out)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise FsarError(
            f"--out {str(path)!r}: unknown image type {path.suffix!r}; end the name with "
            f"{', '.join(PLOT_FORMATS)}"
        )
    return claim(path, kind="file", ours=_is_fsar_plot, overwrite=overwrite, what="image")


def _save(fig: Any, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic.replacing(out) as tmp:
            fmt = out.suffix.lower()[1:]
            key = "Software" if fmt == "png" else "Creator"
            fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight", metadata={key: _MARK})
    finally:
        plt.close(fig)
    log.info("wrote %s", out)
    return out


def _provenance(rows: pd.DataFrame) -> str:
    """One line: dataset / split, encoder(s), episodes and seed(s) of the rows drawn."""

    def one(col: str) -> str:
        vals = sorted({str(v) for v in rows[col].dropna()})
        return ", ".join(vals) if vals else "?"

    encs = sorted(
        {encoder_label(str(r.encoder), bool(r.encoder_random)) for r in rows.itertuples()}
    )
    return (
        f"{one('dataset')} / {one('split')} · {'; '.join(encs)} · "
        f"{one('n_episodes')} episodes, seed {one('seed')}"
    )


def _latest(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values("eval_id").groupby(keys, as_index=False, dropna=False).tail(1)


# --------------------------------------------------------------------------- accuracy vs shots


def plot_shots(
    out: str | Path,
    *,
    db: str | Path | None = None,
    recipe: str | None = None,
    head: str | None = None,
    since: str | None = None,
    overwrite: bool = False,
) -> PlotResult:
    """Accuracy against shots per head (one panel per benchmark), with 95% CI bands.

    The latest evaluation of each (benchmark, split, way, head, encoder, shot) is drawn.
    ``data`` columns: benchmark, dataset, split, n_way, head, encoder, k_shot, acc_mean,
    acc_ci95 (percent), eval_id.
    """
    path = _check_out(out, overwrite)
    frame = load_results(db, recipe=recipe, head=head, since=since)
    if frame.empty:
        raise FsarError("no results match; nothing to plot (check the filters or --db)")
    keys = ["benchmark", "split", "n_way", "head", "encoder", "k_shot"]
    rows = _latest(frame, keys).sort_values(keys).reset_index(drop=True)
    panels = list(dict.fromkeys(zip(rows["benchmark"], rows["split"], rows["n_way"], strict=True)))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6.4 * len(panels), 4.6), squeeze=False, sharey=False
    )
    for ax, (bench, split, way) in zip(axes[0], panels, strict=True):
        keep = (rows["benchmark"] == bench) & (rows["split"] == split) & (rows["n_way"] == way)
        part = rows[keep]
        for (h, enc), line in part.groupby(["head", "encoder"], sort=True):
            line = line.sort_values("k_shot")
            x, y, ci = line["k_shot"], line["acc_mean"], line["acc_ci95"]
            label = h if part["encoder"].nunique() == 1 else f"{h} ({enc})"
            (drawn,) = ax.plot(x, y, marker="o", label=label)
            ax.fill_between(x, y - ci, y + ci, color=drawn.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(100.0 / way, color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_xticks(sorted(part["k_shot"].unique()))
        ax.set_xlabel("shots per class (K)")
        ax.set_ylabel(f"{way}-way accuracy (%)")
        ax.set_title(f"{part['dataset'].iloc[0]} ({bench}), {split} split", fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    fig.suptitle(f"Accuracy vs shots, 95% CI bands\n{_provenance(rows)}", fontsize=10)
    fig.tight_layout()
    data = rows[[*keys[:5], "dataset", "k_shot", "acc_mean", "acc_ci95", "eval_id"]]
    return PlotResult(_save(fig, path), data.reset_index(drop=True))


# --------------------------------------------------------------------------- per class


def _class_names(store: str | None, ids: list[int]) -> dict[int, str]:
    names: list[str | None] = []
    if store:
        meta = Path(store) / "meta.json"
        if meta.is_file():
            import json

            try:
                names = list(json.loads(meta.read_text()).get("class_names", []))
            except (OSError, ValueError):
                names = []
    return {c: str(names[c]) if c < len(names) and names[c] else f"class {c}" for c in ids}


def plot_classes(
    eval_id: int, out: str | Path, *, db: str | Path | None = None, overwrite: bool = False
) -> PlotResult:
    """Per-class accuracy (sorted bars) and the confusion matrix of one evaluation.

    Needs the evaluation's stored predictions. ``data`` (one row per class, best first):
    class_id, class_name, n_queries, n_correct, accuracy (percent). ``extra['confusion']``: the
    row-normalised confusion matrix in percent (rows = true class, columns = predicted, over the
    queries whose episode held both classes), indexed by class name.
    """
    path = _check_out(out, overwrite)
    rdb = ResultsDB(db)
    meta = rdb.query()
    row = meta[meta["eval_id"] == int(eval_id)]
    if row.empty:
        raise FsarError(f"{rdb.path}: no evaluation with eval_id {eval_id}; see `fsar report`")
    r = row.iloc[0]
    pred = rdb.predictions(int(eval_id))
    true_c = pred.true_classes.reshape(-1)
    pred_c = pred.predicted_classes.reshape(-1)
    ids = sorted(set(np.unique(pred.classes).tolist()))
    names = _class_names(r["store"], ids)
    pos = {c: i for i, c in enumerate(ids)}
    n = len(ids)
    counts = np.zeros((n, n), np.int64)
    np.add.at(counts, (np.vectorize(pos.get)(true_c), np.vectorize(pos.get)(pred_c)), 1)
    per = pd.DataFrame(
        {
            "class_id": ids,
            "class_name": [names[c] for c in ids],
            "n_queries": counts.sum(axis=1),
            "n_correct": np.diag(counts),
        }
    )
    per["accuracy"] = 100.0 * per["n_correct"] / per["n_queries"].clip(lower=1)
    per = per.sort_values(["accuracy", "class_name"], ascending=[False, True]).reset_index(
        drop=True
    )
    order = [pos[c] for c in per["class_id"]]
    conf = 100.0 * counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    conf = conf[np.ix_(order, order)]
    label = list(per["class_name"])
    confusion = pd.DataFrame(conf, index=label, columns=label)

    # Names label the rows of both panels; the confusion matrix's columns are numbered alike.
    ticks = [f"{i + 1}. {name}" for i, name in enumerate(label)]
    fs = 8 if n > 20 else 9
    text_w = 0.075 * max(len(t) for t in ticks) * fs / 9  # inches of the longest row label
    side = max(3.5, 0.36 * n + 1.0)  # the confusion matrix, square
    fig, (ax_bar, ax_cm) = plt.subplots(
        1,
        2,
        figsize=(2 * text_w + 4.0 + side + 1.2, side + 1.6),
        gridspec_kw={"width_ratios": [4.0, side]},
        layout="constrained",
    )
    y = np.arange(n)
    ax_bar.barh(y, per["accuracy"], color="tab:blue")
    ax_bar.set_yticks(y, ticks, fontsize=fs)
    ax_bar.invert_yaxis()
    ax_bar.set_xlim(0, 100)
    mean = 100 * float(r["acc_mean"])
    ax_bar.axvline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.1f}%")
    ax_bar.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    ax_bar.set_xlabel("per-class accuracy (%)")
    ax_bar.set_title("Per-class accuracy", fontsize=10)
    ax_bar.grid(axis="x", alpha=0.3)
    im = ax_cm.imshow(conf, cmap="Blues", vmin=0, vmax=100)
    ax_cm.set_xticks(y, [str(i + 1) for i in range(n)], fontsize=fs)
    ax_cm.set_yticks(y, ticks, fontsize=fs)
    ax_cm.set_xlabel("predicted class (numbered as the rows)")
    ax_cm.set_ylabel("true class")
    ax_cm.set_title("Confusion matrix (% of the true class's queries)", fontsize=10)
    if n <= 16:
        for i in range(n):
            for j in range(n):
                if conf[i, j] >= 0.5:
                    ax_cm.text(
                        j,
                        i,
                        f"{conf[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if conf[i, j] > 50 else "black",
                    )
    fig.colorbar(im, ax=ax_cm, fraction=0.046, pad=0.04)
    enc = encoder_label(str(r["encoder"]), bool(r["encoder_random"]))
    fig.suptitle(
        f"eval {int(eval_id)}: {r['head']}, {r['n_way']}-way {r['k_shot']}-shot, "
        f"{100 * float(r['acc_mean']):.2f} ± {100 * float(r['acc_ci95']):.2f}%\n"
        f"{r['dataset']} / {r['split']} · {enc} · {int(r['n_episodes'])} episodes, "
        f"seed {r['seed']}",
        fontsize=10,
    )
    return PlotResult(_save(fig, path), per, {"confusion": confusion})


# --------------------------------------------------------------------------- training curves


def _run_folders(runs: list[str | Path]) -> list[Path]:
    out: list[Path] = []
    for run in runs:
        p = Path(run)
        if (p / "metrics.csv").is_file():
            out.append(p)
            continue
        seeds = sorted(q for q in p.glob("seed-*") if (q / "metrics.csv").is_file())
        if not seeds:
            raise FsarError(
                f"{p}: no metrics.csv (nor seed-*/metrics.csv); pass a run folder written by "
                "`fsar train`"
            )
        out.extend(seeds)
    return out


def plot_training(
    runs: list[str | Path], out: str | Path, *, overwrite: bool = False
) -> PlotResult:
    """Loss terms, learning rate and validation accuracy against step for one or more runs
    (a folder of ``seed-N`` runs counts as its seeds); each run's best validation step marked.

    ``data``: the runs' metrics.csv rows with a ``run`` column (the folder), as read.
    """
    path = _check_out(out, overwrite)
    folders = _run_folders(runs)
    names = [
        f.name
        if f.parent.name in {"", "."} or not f.name.startswith("seed-")
        else f"{f.parent.name}/{f.name}"
        for f in folders
    ]
    frames = []
    for f, name in zip(folders, names, strict=True):
        m = pd.read_csv(f / "metrics.csv")
        m.insert(0, "run", name)
        frames.append(m)
    data = pd.concat(frames, ignore_index=True)
    terms = [c for c in ("loss", "ce_fewshot", "ce_videotext") if c in data]
    terms = [c for c in terms if data[c].notna().any()]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax_loss, ax_lr, ax_val = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"loss": "-", "ce_fewshot": "--", "ce_videotext": ":"}
    for i, (name, m) in enumerate(data.groupby("run", sort=False)):
        c = colours[i % len(colours)]
        for term in terms:
            if m[term].notna().any():
                smooth = m[term].rolling(max(1, len(m) // 50), min_periods=1).mean()
                ax_loss.plot(m["step"], smooth, styles[term], color=c, label=f"{name}: {term}")
        ax_lr.plot(m["step"], m["lr"], color=c, label=str(name))
        val = m.dropna(subset=["val_acc"])
        if len(val):
            acc = 100 * val["val_acc"]
            best = val.loc[val["val_acc"].idxmax()]
            label = f"{name} (best {100 * best['val_acc']:.2f}% @ step {int(best['step'])})"
            ax_val.plot(val["step"], acc, marker=".", color=c, label=label)
            if "val_ci95" in val:
                ci = 100 * val["val_ci95"].fillna(0)
                ax_val.fill_between(val["step"], acc - ci, acc + ci, color=c, alpha=0.15)
            ax_val.plot(
                best["step"], 100 * best["val_acc"], marker="*", markersize=14, color=c,
                markeredgecolor="black", linestyle="none",
            )  # fmt: skip
    ax_loss.set_title("training loss (moving average)", fontsize=10)
    ax_lr.set_title("learning rate", fontsize=10)
    split = data["val_split"].dropna().iloc[0] if data["val_split"].notna().any() else "val"
    ax_val.set_title(f"{split} accuracy (%), 95% CI, best marked ★", fontsize=10)
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    below = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.16), "fontsize": 8}
    ax_loss.legend(ncol=2, frameon=False, **below)  # under the axes: never over the curves
    ax_lr.legend(frameon=False, **below)
    if ax_val.get_legend_handles_labels()[0]:
        ax_val.legend(frameon=False, **below)
    fig.suptitle(f"Training: {', '.join(dict.fromkeys(names))}", fontsize=10)
    fig.tight_layout()
    return PlotResult(_save(fig, path), data)


# --------------------------------------------------------------------------- benchmark grid


def plot_bench(
    out: str | Path,
    *,
    db: str | Path | None = None,
    recipe: str | None = None,
    head: str | None = None,
    since: str | None = None,
    overwrite: bool = False,
) -> PlotResult:
    """The benchmark grid as an annotated heat map: heads (and encoders) x benchmark / shot.

    Each cell is the latest evaluation's accuracy (percent), annotated ``acc ± ci``.
    ``data``: one row per cell: method, column, acc_mean, acc_ci95, eval_id.
    """
    path = _check_out(out, overwrite)
    frame = load_results(db, recipe=recipe, head=head, since=since)
    if frame.empty:
        raise FsarError("no results match; nothing to plot (check the filters or --db)")
    frame = frame.copy()
    frame["method"] = [
        f"{r.head} ({r.encoder}{', RANDOM' if r.encoder_random else ''})"
        + ("" if r.split == "test" else f" [{r.split}]")
        for r in frame.itertuples()
    ]
    frame["column"] = [
        f"{r.benchmark} {r.k_shot}-shot" if r.n_way == 5 else f"{r.benchmark} {r.n_way}w{r.k_shot}s"
        for r in frame.itertuples()
    ]
    cells = _latest(frame, ["method", "column"])
    cols = list(cells.sort_values(["benchmark", "n_way", "k_shot"])["column"].drop_duplicates())
    methods = list(cells.sort_values("eval_id")["method"].drop_duplicates())
    grid = cells.pivot(index="method", columns="column", values="acc_mean").reindex(
        index=methods, columns=cols
    )
    ci = cells.pivot(index="method", columns="column", values="acc_ci95").reindex(
        index=methods, columns=cols
    )
    fig, ax = plt.subplots(
        figsize=(max(5.0, 1.5 * len(cols) + 3.5), max(2.8, 0.55 * len(methods) + 1.8))
    )
    values = grid.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(len(methods)):
        for j in range(len(cols)):
            v = values[i, j]
            if np.isfinite(v):
                ax.text(
                    j, i, f"{v:.1f}\n± {ci.iloc[i, j]:.1f}", ha="center", va="center",
                    fontsize=9, color="black" if v > 60 else "white",
                )  # fmt: skip
    ax.set_xticks(range(len(cols)), cols, rotation=20, ha="right", fontsize=9)
    ax.set_yticks(range(len(methods)), methods, fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy (%)", fraction=0.046, pad=0.04)
    fig.suptitle(f"Benchmark grid (latest per cell)\n{_provenance(cells)}", fontsize=10)
    fig.tight_layout()
    data = cells[["method", "column", "acc_mean", "acc_ci95", "eval_id"]].reset_index(drop=True)
    return PlotResult(_save(fig, path), data)
