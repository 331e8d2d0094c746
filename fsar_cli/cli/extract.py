"""``fsar extract``: videos -> JPEG frame folders (recipe splits or any folder tree of videos)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import DataError
from .console import cli_errors, console, err_console, progress
from .options import OverrideOpt, SplitsOpt

__all__ = ["register", "extract"]


def extract(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output folder for frame folders (default: data.frames_root)."
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Argument(help="Recipe name or YAML path: extract the videos its split files list."),
    ] = None,
    input_dir: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="Extract every video under this folder instead."),
    ] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="Video root (overrides data.root).")
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option("--split", help="Recipe split(s) to extract (default: all).")
    ] = None,
    fps: Annotated[
        float | None, typer.Option("--fps", help="Resample to this many frames per second.")
    ] = None,
    num_frames: Annotated[
        int | None, typer.Option("--num-frames", help="Keep N frames evenly spread.")
    ] = None,
    short_side: Annotated[
        int, typer.Option("--short-side", help="Resize the short side to S pixels (0 = keep).")
    ] = 0,
    quality: Annotated[int, typer.Option("--quality", help="JPEG quality 1-100.")] = 95,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Videos in parallel.")] = 2,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Re-extract folders made with other settings.")
    ] = False,
    splits: SplitsOpt = None,
    overrides: OverrideOpt = None,
) -> None:
    """Extract JPEG frames: OUT/<video path without extension>/00000001.jpg ...

    Resumable: rerun the same command after an interruption; finished videos are skipped.
    """
    from ..data.extract import extract_frames
    from ..recipe import SPLITS, load_recipe, write_resolved

    with cli_errors():
        if recipe is not None and input_dir is None and Path(recipe).is_dir():
            raise DataError(
                f"{recipe!r} is a folder, not a recipe: to extract every video under it, run "
                f"`fsar extract --input {recipe} --out {out}`"
            )
        if (recipe is None) == (input_dir is None):
            raise typer.BadParameter("give either a RECIPE or --input DIR (exactly one)")
        if fps is not None and num_frames is not None:
            raise typer.BadParameter("--fps and --num-frames exclude each other; pick one")
        cfg = None
        if recipe is not None:
            cfg = load_recipe(recipe, overrides or []).with_split_dir(splits)
            if root is not None:
                cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)))
        elif overrides or root is not None or split:
            raise typer.BadParameter("--set, --root and --split need a RECIPE")
        if out is None:
            if cfg is None:
                raise typer.BadParameter("--input needs --out DIR (where the frames go)")
            out = Path(cfg.data.frames_root)
        with progress("extracting") as advance:
            result = extract_frames(
                out,
                input_dir=input_dir,
                recipe=cfg,
                splits=tuple(split or SPLITS),
                fps=fps,
                num_frames=num_frames,
                short_side=short_side,
                quality=quality,
                workers=workers,
                overwrite=overwrite,
                on_progress=advance,
            )
        if cfg is not None:  # later steps read the frames from here
            data = dataclasses.replace(cfg.data, frames_root=str(out))
            write_resolved(dataclasses.replace(cfg, data=data), out, argv=sys.argv)

    table = Table(title=escape(f"fsar extract -> {out}"))
    for col in ("extracted", "skipped (complete)", "failed", "frames written", "warnings"):
        table.add_column(col, justify="right")
    table.add_row(
        str(result.done),
        str(result.skipped),
        f"[red]{len(result.failed)}[/]" if result.failed else "0",
        str(sum(result.frames.values())),
        str(len(result.warnings)),
    )
    console.print(table)
    if result.failed:
        for f in result.failed[:5]:
            err_console.print(f"[red]failed[/] {escape(f'{f.path}: {f.reason}')}", highlight=False)
        if len(result.failed) > 5:
            err_console.print(f"... and {len(result.failed) - 5} more", highlight=False)
        err_console.print(
            f"failures listed in {result.failures_file}", markup=False, highlight=False
        )
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("extract")(extract)
