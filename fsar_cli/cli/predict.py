"""``fsar predict``: label new videos from a few labelled examples per class, or by class name."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .console import cli_errors, console, encoder_text, err_console, progress
from .options import DeviceOpt, OverrideOpt

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["register", "predict_command", "split_class_names"]

_GLOB = set("*?[")


def split_class_names(classes: list[str], queries: list[str]) -> tuple[list[str], list[str]]:
    """``--classes "jumping jacks" "push up" clips/``: the values after the first arrive as
    positional arguments; those that cannot be a query (no such path, no ``/``, no glob, no file
    extension of a video or list file) are further class names."""
    from ..data.frames import VIDEO_EXTS
    from ..data.labelled import LIST_EXTS

    if not classes:
        return classes, queries
    names, rest = list(classes), list[str]()
    for q in queries:
        p = Path(q)
        pathlike = (
            p.exists()
            or "/" in q
            or bool(_GLOB & set(q))
            or p.suffix.lower() in (*VIDEO_EXTS, *LIST_EXTS)
        )
        (rest if pathlike else names).append(q)
    return names, rest


def predict_command(
    queries: Annotated[
        list[str] | None,
        typer.Argument(
            help="Videos, frame folders, folders of them, glob patterns or list files (.txt).",
            show_default=False,
        ),
    ] = None,
    support: Annotated[
        Path | None,
        typer.Option(
            "--support",
            "-s",
            help="Labelled examples: a folder SUPPORT/<class>/<video or frame folder> (any number "
            "per class), or a CSV with columns path,class.",
        ),
    ] = None,
    classes: Annotated[
        list[str] | None,
        typer.Option(
            "--classes",
            help='Class names only, for --head text (zero-shot): --classes "push up" "squat".',
        ),
    ] = None,
    classes_file: Annotated[
        Path | None,
        typer.Option("--classes-file", help="Enrolled classes (.fsarc) saved with --save."),
    ] = None,
    save: Annotated[
        Path | None,
        typer.Option(
            "--save", "--save-classes", help="Write the encoded classes to this .fsarc file."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Trained run folder (best.pt, else last.pt) or checkpoint file; its run's "
            "recipe gives the encoder and clip settings.",
        ),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(
            "--head",
            help="Head: the checkpoint's, or a baseline (otam, proto, text); default otam, "
            "text with --classes.",
        ),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder",
            help="CLIP encoder without a checkpoint (ViT-B/16, ...; offline-demo = the demo's).",
        ),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", help="The encoder's weights file.")
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", help="Text prompt with {} for the class name (as in recipes)."),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", "-r", help="Recipe name or YAML (encoder, clip settings)."),
    ] = None,
    window: Annotated[
        str | None,
        typer.Option("--window", help="Spotting: classify windows of 2s (seconds) or 16 (frames)."),
    ] = None,
    stride: Annotated[
        str | None,
        typer.Option("--stride", help="Between window starts, e.g. 1s (default: --window)."),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option("--fps", help="Frame rate of frame folders (for --window in seconds)."),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes shown per query.")] = 3,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write every prediction with every class's score: .csv or .json."
        ),
    ] = None,
    show: Annotated[int, typer.Option("--show", help="Rows to print (0: none).")] = 20,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Frames per encoder batch.")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", help="Decode threads.")] = None,
    trust: Annotated[
        bool,
        typer.Option("--trust", help="Allow unpickling a reference checkpoint (runs its code)."),
    ] = False,
    device: DeviceOpt = "cpu",
    overrides: OverrideOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an --out file fsar did not write.")
    ] = False,
) -> None:
    """Label videos with classes defined by a few examples each (or by name, --head text).

    Every clip is sampled, preprocessed and encoded exactly as `fsar cache` does for the test
    split, and scored exactly as `fsar eval` scores an episode. Queries that fail (a file that
    does not decode, is empty or is not a video) are listed with the reason; the exit code is
    non-zero only if every query failed.
    """
    from .. import atomic
    from ..errors import DataError, RecipeError
    from ..ownership import claim, starts_with
    from ..prediction.predictor import predict
    from ..prediction.spotting import merge_runs
    from ..recipe import load_recipe

    with cli_errors():
        names, paths = split_class_names(list(classes or []), list(queries or []))
        if classes_file is None and len(names) == 1 and names[0].endswith(".fsarc"):
            classes_file, names = Path(names[0]), []  # --classes FILE.fsarc: a classes file
        if out is not None and out.suffix.lower() not in (".csv", ".json"):
            raise DataError(f"--out {out}: give a .csv or .json file")
        if out is not None:  # refused before any work: fsar replaces only its own output
            ours = starts_with(b"query,key,", b'{\n "')
            for path in (out, _runs_path(out)) if out.suffix.lower() == ".csv" else (out,):
                claim(path, kind="file", ours=ours, overwrite=overwrite, what="--out file")
        cfg = None
        if recipe is not None or overrides:
            if recipe is None:
                raise RecipeError("--set needs --recipe NAME (the recipe it overrides)")
            cfg = load_recipe(recipe, overrides or [])
        with progress("predict") as advance:
            table = predict(
                paths,
                support=support,
                classes=names or None,
                classes_file=classes_file,
                recipe=cfg,
                checkpoint=checkpoint,
                head=head,
                encoder=encoder,
                weights=weights,
                prompt=prompt,
                window=window,
                stride=stride,
                fps=fps,
                save_classes=save,
                device=device,
                batch_size=batch_size,
                workers=workers,
                trust=trust,
                on_progress=advance,
            )
        runs = merge_runs(table) if window is not None else None
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.suffix.lower() == ".json":
                atomic.write_text(out, json.dumps(_json_doc(table, runs), indent=1))
            else:
                with atomic.replacing(out) as tmp:
                    table.to_csv(tmp, index=False, float_format="%.6g")
                if runs is not None:
                    with atomic.replacing(_runs_path(out)) as tmp:
                        runs.to_csv(tmp, index=False, float_format="%.6g")

    attrs = table.attrs
    # class names (SSv2: "Putting [something] into [something]") and paths are not markup
    head_text = escape(f"{_classes_text(attrs)}; head {attrs['head']}")
    console.print(f"[bold]fsar predict[/]: {head_text}")
    console.print(f"encoder: {encoder_text(attrs['encoder'], attrs['encoder_random'])}")
    console.print(f"settings from {attrs['settings']}", markup=False, highlight=False)
    if save is not None:
        console.print(f"classes written to {save}", markup=False, highlight=False)
    if not len(table):
        return
    ok = table["status"] == "ok"
    if show > 0:
        console.print(_table(table.head(show), attrs["classes"], top_k, windows=runs is not None))
        if len(table) > show:
            more = f"... {len(table) - show} more rows" + (f" in {out}" if out else "")
            console.print(more, markup=False, highlight=False)
    if runs is not None and show > 0 and len(runs):
        console.print(_runs_table(runs.head(show), attrs["window"]))
        if len(runs) > show:
            console.print(f"... {len(runs) - show} more runs")
    if out is not None:
        where = f"{out}" + (
            f" (runs: {_runs_path(out)})"
            if runs is not None and out.suffix.lower() == ".csv"
            else ""
        )
        console.print(
            f"{int(ok.sum())} predictions with every class's score written to {where}",
            markup=False,
            highlight=False,
        )
    bad = table[~ok].drop_duplicates("query")
    if len(bad):
        err_console.print(f"[red]{len(bad)} failed[/] (the others are predicted):")
        for q, reason in zip(bad["query"], bad["reason"], strict=True):
            err_console.print(f"  {q}: {reason}", markup=False, highlight=False)
    if not ok.any():
        raise typer.Exit(code=1)


def _runs_path(out: Path) -> Path:
    return out.with_name(out.stem + ".runs.csv")


def _classes_text(attrs: dict[str, Any]) -> str:
    names: list[str] = attrs["classes"]
    shots: list[int] = attrs.get("shots", [])
    if attrs.get("zero_shot"):
        return f"{len(names)} classes by name (zero-shot)"
    lo, hi = min(shots), max(shots)
    if lo == hi:
        return f"{len(names)} classes, {lo} shot{'s' if lo > 1 else ''} each"
    per = ", ".join(f"{n} {k}" for n, k in zip(names, shots, strict=True))
    return f"{len(names)} classes, unequal shots ({per})"


def _table(rows: pd.DataFrame, classes: list[str], top_k: int, windows: bool) -> Table:
    import numpy as np

    k = max(1, min(top_k, len(classes)))
    t = Table(show_lines=False)
    t.add_column("query", overflow="fold")
    if windows:
        t.add_column("window", justify="right")
    for i in range(k):
        t.add_column(f"top {i + 1}" if k > 1 else "class", overflow="fold")
    if len(classes) > 1:
        t.add_column("margin", justify="right")
    probs = rows[[f"prob:{c}" for c in classes]].to_numpy()
    for r, p in zip(rows.itertuples(index=False), probs, strict=True):
        cells = [escape(str(r.key))]
        if windows:
            if r.status != "ok":
                cells.append("")
            elif math.isnan(r.start_s):
                cells.append(f"frames {r.start_frame}-{r.end_frame}")
            else:
                cells.append(f"{r.start_s:.1f}-{r.end_s:.1f}s")
        if r.status != "ok":
            cells += ["[red]failed[/]"] + [""] * (k - 1) + ([""] if len(classes) > 1 else [])
        else:
            order = np.argsort(-p, kind="stable")[:k]
            cells += [
                f"[bold]{escape(classes[j])}[/] {p[j]:.2f}"
                if n == 0
                else f"{escape(classes[j])} {p[j]:.2f}"
                for n, j in enumerate(order)
            ]
            if len(classes) > 1:
                cells.append(f"{r.margin:.2f}")
        t.add_row(*cells)
    return t


def _runs_table(runs: pd.DataFrame, window: str) -> Table:
    t = Table(title=escape(f"runs of the same top class (windows of {window})"))
    for col in ("query", "from", "to", "class", "windows", "mean score"):
        t.add_column(col, justify="left" if col in ("query", "class") else "right")
    for r in runs.itertuples(index=False):
        if math.isnan(r.start_s):
            a, b = f"frame {r.start_frame}", f"{r.end_frame}"
        else:
            a, b = f"{r.start_s:.1f}s", f"{r.end_s:.1f}s"
        t.add_row(
            escape(str(r.key)), a, b, escape(str(r.label)), str(r.windows), f"{r.mean_prob:.2f}"
        )
    return t


def _json_doc(table: pd.DataFrame, runs: pd.DataFrame | None) -> dict[str, Any]:
    """Predictions (every class's score and logit), runs and failures as plain JSON."""
    classes: list[str] = table.attrs["classes"]

    def num(v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else v

    preds = []
    for rec in table.to_dict("records"):
        row = {k: num(v) for k, v in rec.items() if not k.startswith(("prob:", "logit:"))}
        if rec["status"] == "ok":
            row["scores"] = {c: rec[f"prob:{c}"] for c in classes}
            row["logits"] = {c: rec[f"logit:{c}"] for c in classes}
        preds.append(row)
    attrs = dict(table.attrs)
    return {
        **attrs,
        "predictions": preds,
        "runs": None
        if runs is None
        else [{k: num(v) for k, v in r.items()} for r in runs.to_dict("records")],
        "failures": [
            {"query": p["query"], "reason": p["reason"]} for p in preds if p["status"] != "ok"
        ],
    }


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
