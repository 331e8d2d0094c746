"""``fsar train``: meta-train a few-shot head on cached features into a resumable run folder.

Under ``torchrun --nproc_per_node N -m fsar_cli train ...`` every rank runs this command; the
library splits each step's episodes across ranks, and only rank 0 shows the progress bar, writes
the run folder and prints the summary table.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .console import cli_errors, console, encoder_text, progress
from .options import DeviceOpt, OverrideOpt, SplitsOpt, int_list

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = ["register", "train"]


def train(
    ctx: typer.Context,
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML path.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run folder, new or empty (default: runs/RECIPE_NAME)."),
    ] = None,
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
    allow_other_features: Annotated[
        bool,
        typer.Option(
            "--allow-other-features",
            help="Resume although the cache now holds features of another encoder, weights, "
            "resolution or sampling than the run recorded (refused otherwise).",
        ),
    ] = False,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            help="Train one run per training seed (--seeds 0 1 2) into OUT/seed-N; `fsar eval "
            "-c OUT` evaluates each on the same episodes, `fsar report` gives mean ± std.",
        ),
    ] = None,
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
        seed_list = int_list("--seeds", seeds, list(ctx.args))
        sets = [*(overrides or []), *([f"train.mode={mode}"] if mode else [])]
        cfg = load_recipe(recipe, sets).with_split_dir(splits)
        if out is None:  # `fsar eval NAME` finds it there
            out = default_run_dir(cfg.name)
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
            if seed_list is not None:
                _train_seeds(
                    cfg,
                    out,
                    seed_list,
                    train_fn,
                    resume,
                    device,
                    steps,
                    d.is_main,
                    allow_other_features=allow_other_features,
                    extra=extra,
                )
                return
            with bar as advance:
                result = train_fn(
                    cfg,
                    out,
                    resume=resume,
                    device=device,
                    on_progress=advance,
                    max_steps=steps,
                    argv=["fsar", *sys.argv[1:]],
                    allow_other_features=allow_other_features,
                    **extra,  # type: ignore[arg-type]
                )
        finally:
            distributed.shutdown()
    if not d.is_main:
        return
    table = Table(title=escape(f"fsar train: {cfg.name} ({what})"), show_header=False)
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
    table.add_row("device / time", escape(f"{result.device} / {result.seconds:.1f} s"))
    table.add_row("run folder", escape(str(result.out_dir)))
    console.print(table)


def _train_seeds(
    cfg: Recipe,
    out: Path,
    seeds: list[int],
    train_fn: Callable[..., Any],
    resume: bool,
    device: str,
    steps: int | None,
    is_main: bool,
    *,
    allow_other_features: bool = False,
    extra: dict[str, Any] | None = None,
) -> None:
    """Train one run per seed, one progress bar each, then a table of the seeds.

    Every seed's run gets the same options as a single run (``--allow-other-features``,
    ``--precision``).
    """
    from ..train.seeds import train_seeds

    results = []
    for seed in seeds:  # one call per seed, so each gets its own bar
        bar = (
            progress(f"training seed {seed}", total=cfg.train.steps)
            if is_main
            else contextlib.nullcontext(lambda n=1, **_kw: None)
        )
        with bar as advance:
            results += train_seeds(
                cfg,
                out,
                [seed],
                train_fn,
                resume=resume,
                device=device,
                on_progress=advance,
                max_steps=steps,
                argv=["fsar", *sys.argv[1:]],
                allow_other_features=allow_other_features,
                **(extra or {}),
            )
    if not is_main:
        return
    table = Table(title=escape(f"fsar train: {len(seeds)} seeds into {out}"))
    for col in ("seed", "steps", "best val acc", "run folder"):
        table.add_column(col)
    for seed, r in zip(seeds, results, strict=True):
        doc = r if isinstance(r, dict) else vars(r)
        best = doc.get("best_val_acc")
        table.add_row(
            str(seed),
            f"{doc.get('steps_done')} / {doc.get('steps_total')}",
            "-" if best is None else f"{100 * best:.2f} (step {doc.get('best_step')})",
            escape(str(out / f"seed-{seed}")),
        )
    console.print(table)
    console.print(
        f"evaluate every seed on the same episodes: fsar eval RECIPE -c {out}",
        markup=False,
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command(
        "train", context_settings={"allow_extra_args": True, "ignore_unknown_options": False}
    )(train)


def default_run_dir(recipe_name: str) -> Path:
    """``fsar train NAME`` without --out trains into ``runs/NAME`` (``fsar eval NAME`` and
    ``fsar predict`` look there when no checkpoint is given)."""
    return Path("runs") / recipe_name
