"""``fsar train``: meta-train a few-shot head on cached features into a resumable run folder.

Under ``torchrun --nproc_per_node N -m fsar_cli train ...`` every rank runs this command; the
library splits each step's episodes across ranks, and only rank 0 shows the progress bar, writes
the run folder and prints the summary table.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .console import cli_errors, console, encoder_text, progress
from .options import DeviceOpt, OverrideOpt, SplitsOpt

__all__ = ["register", "train"]


def train(
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML path.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (new or empty).")],
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")
    ] = False,
    device: DeviceOpt = "cpu",
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="frozen (cached features, default of the recipes) or finetune (the CLIP tower "
            "end to end, from frames); same as --set train.mode=...",
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            help="Stop after this many optimiser steps (the schedule still spans train.steps); "
            "continue later with --resume. To change the run's length, use --set train.steps=N.",
        ),
    ] = None,
    splits: SplitsOpt = None,
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="fp32 (default) or bf16 (frozen mode: the head's matrix products in bfloat16, "
            "faster on CPUs with AVX512-BF16; slightly different numbers).",
        ),
    ] = "fp32",
    overrides: OverrideOpt = None,
) -> None:
    """Meta-train the recipe's head (on cached features, or end to end with --mode finetune).

    Selects the checkpoint on the val split; resumable with --resume. Writes
    OUT/resolved_recipe.yaml, last.pt, best.pt, metrics.csv and summary.json.
    """
    from .. import distributed
    from ..recipe import load_recipe

    with cli_errors():
        if steps is not None and steps < 1:
            raise typer.BadParameter("--steps must be >= 1")
        if mode is not None and mode not in ("frozen", "finetune"):
            raise typer.BadParameter(f"--mode {mode!r}: use frozen or finetune")
        sets = [*(overrides or []), *([f"train.mode={mode}"] if mode else [])]
        cfg = load_recipe(recipe, sets).with_split_dir(splits)
        extra: dict[str, str] = {}
        if cfg.train.mode == "finetune":
            from ..train.finetune import finetune_train as train_fn

            if precision != "fp32":
                raise typer.BadParameter(
                    "--precision is for the frozen mode; finetune uses train.amp "
                    "(--set train.amp=...)"
                )
        else:
            from ..train.frozen import meta_train as train_fn

            extra["precision"] = precision
        what = f"{cfg.train.mode} {cfg.model.head}"
        d = distributed.init(device)  # a no-op unless launched by torchrun
        if d.enabled:
            what += f", {d.world} processes"
        bar = (
            progress(f"training {what}", total=cfg.train.steps)
            if d.is_main
            else contextlib.nullcontext(lambda n=1, **_kw: None)  # one bar: rank 0's
        )
        try:
            with bar as advance:
                result = train_fn(
                    cfg,
                    out,
                    resume=resume,
                    device=device,
                    on_progress=advance,
                    max_steps=steps,
                    argv=["fsar", *sys.argv[1:]],
                    **extra,  # type: ignore[arg-type]
                )
        finally:
            distributed.shutdown()
    if not d.is_main:
        return
    table = Table(title=f"fsar train: {cfg.name} ({what})", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    sel = result.selected_on
    state = "finished" if result.finished else "stopped (continue with --resume)"
    table.add_row("steps", f"{result.steps_done} / {result.steps_total}, {state}")
    table.add_row("episodes seen", f"{result.episodes_seen:,}")
    if result.last_loss is not None:
        table.add_row("last loss", f"{result.last_loss:.4f}")
    if result.final_val_acc is not None and result.final_val_ci95 is not None:
        table.add_row(
            f"latest {sel} acc",
            f"{100 * result.final_val_acc:.2f} ± {100 * result.final_val_ci95:.2f}",
        )
    if result.best_val_acc is not None and result.best_val_ci95 is not None:
        table.add_row(
            f"best {sel} acc",
            f"{100 * result.best_val_acc:.2f} ± {100 * result.best_val_ci95:.2f} "
            f"(step {result.best_step})",
        )
    table.add_row("encoder", encoder_text(result.encoder, result.encoder_random))
    table.add_row("device / time", f"{result.device} / {result.seconds:.1f} s")
    table.add_row("run folder", str(result.out_dir))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
