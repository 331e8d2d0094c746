"""``fsar eval``: mean accuracy and 95% CI over seeded test episodes, with full provenance.

Under ``torchrun --nproc_per_node N -m fsar_cli eval ...`` each rank evaluates a contiguous range
of the episodes; rank 0 gathers the accuracies (the result is identical to one process's), prints
the table and records the one database row.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from .console import cli_errors, console, encoder_text, progress
from .options import (
    DbOpt,
    DeviceOpt,
    EvalSplitOpt,
    NoRecordOpt,
    OverrideOpt,
    PrecisionOpt,
    QueryOpt,
    SeedOpt,
    WayOpt,
)

if TYPE_CHECKING:
    from ..evaluation.evaluate import EvalResult


__all__ = ["register", "eval_command", "result_table"]


def result_table(r: EvalResult, title: str = "fsar eval") -> Table:
    """The provenance table of one evaluation (METHOD.md section 6)."""
    table = Table(title=f"{title}: {r.recipe}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("accuracy", f"[bold green]{100 * r.mean:.2f} ± {100 * r.ci95:.2f} %[/] (95% CI)")
    table.add_row("dataset / split", f"{r.dataset} / {r.split}")
    table.add_row("protocol", f"{r.n_way}-way {r.k_shot}-shot, {r.n_query} query per class")
    table.add_row("episodes", f"{r.n_episodes:,} ({r.episodes_source}), seed {r.seed}")
    table.add_row("head", r.head)
    table.add_row("encoder", encoder_text(r.encoder, r.encoder_random))
    table.add_row("sampling", r.sampling)
    table.add_row("checkpoint", r.checkpoint or "none (untrained baseline)")
    table.add_row("missing videos", f"[yellow]{r.missing}[/]" if r.missing else "none")
    table.add_row("cache", r.store)
    table.add_row("device / time", f"{r.device} / {r.elapsed_s:.1f} s")
    if r.eval_id is not None:
        table.add_row("recorded", f"eval_id {r.eval_id} in {r.db}")
    return table


def eval_command(
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML path.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Run folder (uses best.pt, else last.pt) or checkpoint file (fsar's or the "
            "reference's). Not needed for the baselines proto, otam, text.",
        ),
    ] = None,
    way: WayOpt = None,
    shot: Annotated[
        int | None, typer.Option("--shot", help="Shots per class (default: recipe).")
    ] = None,
    query: QueryOpt = None,
    episodes: Annotated[
        int | None, typer.Option("--episodes", help="Episodes (default: recipe, 10000).")
    ] = None,
    seed: SeedOpt = None,
    split: EvalSplitOpt = None,
    head: Annotated[
        str | None, typer.Option("--head", help="Head name (default: checkpoint's, else recipe's).")
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing", help="Sample only videos that have features (count reported)."
        ),
    ] = False,
    save_episodes: Annotated[
        Path | None, typer.Option("--save-episodes", help="Write the episode list (JSON) here.")
    ] = None,
    episodes_file: Annotated[
        Path | None, typer.Option("--episodes-file", help="Evaluate this episode list instead.")
    ] = None,
    db: DbOpt = None,
    no_record: NoRecordOpt = False,
    trust: Annotated[
        bool,
        typer.Option("--trust", help="Allow unpickling a reference checkpoint (runs its code)."),
    ] = False,
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "fp32",
    overrides: OverrideOpt = None,
) -> None:
    """Evaluate a head on N-way K-shot episodes of a cached split; mean accuracy and 95% CI.

    Same recipe, seed and checkpoint give the same episodes and accuracy on any machine. The
    result, with its provenance and per-episode accuracies, is appended to the results database.
    """
    from .. import distributed
    from ..evaluation.evaluate import evaluate
    from ..recipe import load_recipe
    from ..results.db import default_db_path

    with cli_errors():
        cfg = load_recipe(recipe, overrides or [])
        d = distributed.init(device)  # a no-op unless launched by torchrun
        bar = (
            progress(f"evaluating {cfg.name}")
            if d.is_main
            else contextlib.nullcontext(lambda n=1, **_kw: None)
        )
        try:
            with bar as advance:
                result = evaluate(
                    cfg,
                    head_name=head,
                    checkpoint=checkpoint,
                    n_way=way,
                    k_shot=shot,
                    n_query=query,
                    episodes=episodes,
                    seed=seed,
                    split=split,
                    allow_missing=allow_missing,
                    episodes_file=episodes_file,
                    save_episodes=save_episodes,
                    device=device,
                    db=None if no_record else (db or default_db_path()),
                    overrides=overrides or [],
                    trust=trust,
                    on_progress=advance,
                    precision=precision,
                )
        finally:
            distributed.shutdown()
    if not d.is_main:
        return
    if precision != "fp32":
        console.print(f"[yellow]computed in {precision}[/]: numbers differ slightly from fp32")
    console.print(result_table(result))
    if save_episodes is not None:
        console.print(f"episodes written to {save_episodes}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
