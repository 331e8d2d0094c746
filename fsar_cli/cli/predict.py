"""``fsar predict``: label new videos from a few labelled examples per class (a support set)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .console import cli_errors, console, encoder_text, err_console, progress
from .options import DeviceOpt, OverrideOpt

__all__ = ["register", "predict_command"]


def predict_command(
    queries: Annotated[
        list[Path],
        typer.Argument(help="Videos, frame folders, or folders searched recursively for them."),
    ],
    support: Annotated[
        Path | None,
        typer.Option(
            "--support",
            "-s",
            help="Labelled examples: a folder SUPPORT/<class>/<video or frame folder>, or a CSV "
            "with columns path,label.",
        ),
    ] = None,
    classes: Annotated[
        Path | None,
        typer.Option("--classes", help="Enrolled classes (.fsarc) instead of --support."),
    ] = None,
    save_classes: Annotated[
        Path | None,
        typer.Option("--save-classes", help="Write the encoded support to this .fsarc file."),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            "-r",
            help="Recipe name or YAML (encoder, clip settings); default: the checkpoint run "
            "folder's resolved_recipe.yaml.",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Run folder (best.pt, else last.pt) or checkpoint file. Not needed for the "
            "baselines proto, otam, text.",
        ),
    ] = None,
    head: Annotated[
        str | None, typer.Option("--head", help="Head (default: checkpoint's, else recipe's).")
    ] = None,
    window: Annotated[
        float | None,
        typer.Option("--window", help="Spotting: classify windows of this many seconds."),
    ] = None,
    stride: Annotated[
        float | None,
        typer.Option("--stride", help="Seconds between window starts (default: --window)."),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option("--fps", help="Frame rate of frame folders (for --window; videos carry it)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write every prediction, with all logits, to this CSV."),
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
) -> None:
    """Label videos with the classes of a support set (a few examples per class).

    Every clip is sampled, preprocessed and encoded exactly as `fsar cache` does for the test
    split, and scored exactly as `fsar eval` scores an episode. Exit code 1 if a query failed to
    decode (it is listed; the others are predicted).
    """
    from .. import atomic
    from ..errors import RecipeError
    from ..prediction.predictor import predict
    from ..recipe import load_recipe

    with cli_errors():
        cfg = None
        if recipe is not None or overrides:
            if recipe is None:
                raise RecipeError("--set needs --recipe NAME (the recipe it overrides)")
            cfg = load_recipe(recipe, overrides or [])
        with progress("predict") as advance:
            table = predict(
                list(queries),
                support=support,
                classes=classes,
                recipe=cfg,
                checkpoint=checkpoint,
                head=head,
                window=window,
                stride=stride,
                fps=fps,
                save_classes=save_classes,
                device=device,
                batch_size=batch_size,
                workers=workers,
                trust=trust,
                on_progress=advance,
            )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic.replacing(out) as tmp:
                table.to_csv(tmp, index=False, float_format="%.6g")

    attrs = table.attrs
    shots = attrs.get("shots", [])
    title = (
        f"fsar predict: {len(attrs['classes'])} classes "
        f"({min(shots)}-{max(shots)} shots), head {attrs['head']}"
        if shots
        else "fsar predict"
    )
    console.print(f"[bold]{title}[/]")
    console.print(f"encoder: {encoder_text(attrs['encoder'], attrs['encoder_random'])}")
    if show > 0 and len(table):
        console.print(_table(table.head(show), windows=window is not None))
        if len(table) > show:
            console.print(f"... {len(table) - show} more rows" + (f" in {out}" if out else ""))
    ok = table["status"] == "ok"
    if out is not None:
        console.print(f"{int(ok.sum())} predictions written to {out}")
    if save_classes is not None:
        console.print(f"classes written to {save_classes}")
    if not ok.all():
        for q, reason in zip(table["query"][~ok], table["reason"][~ok], strict=True):
            err_console.print(f"[red]failed[/] {q}  {reason}", highlight=False)
        raise typer.Exit(code=1)


def _table(rows, windows: bool) -> Table:  # type: ignore[no-untyped-def]
    t = Table()
    t.add_column("query")
    if windows:
        t.add_column("window", justify="right")
    t.add_column("label", style="bold")
    t.add_column("prob", justify="right")
    t.add_column("logit", justify="right")
    for r in rows.itertuples(index=False):
        cells = [str(r.key)]
        if windows:
            if math.isnan(r.start_s):
                cells.append(f"frames {r.start_frame}-{r.end_frame}")
            else:
                cells.append(f"{r.start_s:.2f}-{r.end_s:.2f} s")
        if r.status != "ok":
            cells += ["[red]failed[/]", "", ""]
        else:
            cells += [str(r.label), f"{r.prob:.3f}", f"{r.logit:.4g}"]
        t.add_row(*cells)
    return t


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
