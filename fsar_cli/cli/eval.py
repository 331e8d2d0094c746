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
from rich.markup import escape
from rich.table import Table

from .console import cli_errors, console, encoder_text, err_console, progress
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
    int_list,
)

if TYPE_CHECKING:
    from ..evaluation.evaluate import EvalResult


__all__ = ["register", "eval_command", "result_table", "summary_table"]


def result_table(r: EvalResult, title: str = "fsar eval") -> Table:
    """The provenance table of one evaluation (METHOD.md section 6)."""
    table = Table(title=f"{title}: {escape(r.recipe)}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("accuracy", f"[bold green]{100 * r.mean:.2f} ± {100 * r.ci95:.2f} %[/] (95% CI)")
    table.add_row("dataset / split", escape(f"{r.dataset} / {r.split}"))
    table.add_row("protocol", f"{r.n_way}-way {r.k_shot}-shot, {r.n_query} query per class")
    table.add_row("episodes", escape(f"{r.n_episodes:,} ({r.episodes_source}), seed {r.seed}"))
    table.add_row("head", escape(r.head))
    table.add_row("encoder", encoder_text(r.encoder, r.encoder_random))
    table.add_row("sampling", escape(r.sampling))
    table.add_row("checkpoint", escape(r.checkpoint or "none (untrained baseline)"))
    table.add_row("missing videos", f"[yellow]{escape(r.missing)}[/]" if r.missing else "none")
    table.add_row("cache", escape(r.store))
    table.add_row("device / time", escape(f"{r.device} / {r.elapsed_s:.1f} s"))
    if r.eval_id is not None:
        table.add_row("recorded", escape(f"eval_id {r.eval_id} in {r.db}"))
    return table


def eval_command(
    ctx: typer.Context,
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML path.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Run folder (uses best.pt, else last.pt), a folder of seed-N run folders (`fsar "
            "train --seeds`: each seed on the same episodes) or checkpoint file (fsar's or the "
            "reference's). Not needed for the baselines proto, otam, text.",
        ),
    ] = None,
    way: WayOpt = None,
    shot: Annotated[
        str | None,
        typer.Option(
            "--shot",
            help="Shots per class (default: recipe's first); several (--shot 1 2 3 4 5) share "
            "the per-video work and record one row each.",
        ),
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
    allow_other_features: Annotated[
        bool,
        typer.Option(
            "--allow-other-features",
            help="Evaluate a checkpoint on features of another encoder, weights or resolution "
            "than it was trained on (refused otherwise).",
        ),
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Also write the per-class accuracy / confusion plot here (one file per shot: "
            "NAME-Kshot.png when several).",
        ),
    ] = None,
) -> None:
    """Evaluate a head on N-way K-shot episodes of a cached split; mean accuracy and 95% CI.

    Same recipe, seed and checkpoint give the same episodes and accuracy on any machine. The
    result, with its provenance and per-episode accuracies, is appended to the results database.
    """
    from .. import distributed
    from ..evaluation.evaluate import evaluate_seeds
    from ..recipe import load_recipe
    from ..results.db import default_db_path

    with cli_errors():
        given = int_list("--shot", shot, list(ctx.args))
        shots: list[int | None] = list(given) if given else [None]
        if plot is not None and no_record:
            raise typer.BadParameter("--plot draws from the results database; drop --no-record")
        cfg = load_recipe(recipe, overrides or [])
        if checkpoint is None and head is None:  # `fsar train NAME` trained into runs/NAME
            from ..models.registry import head_spec
            from .train import default_run_dir

            run_dir = default_run_dir(cfg.name)
            if head_spec(cfg.model.head).cls.trainable and run_dir.is_dir():
                checkpoint = run_dir
        d = distributed.init(device)  # a no-op unless launched by torchrun
        bar = (
            progress(f"evaluating {cfg.name}")
            if d.is_main
            else contextlib.nullcontext(lambda n=1, **_kw: None)
        )
        try:
            with bar as advance:
                results = evaluate_seeds(
                    cfg,
                    shots=shots,
                    head_name=head,
                    checkpoint=checkpoint,
                    n_way=way,
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
                    allow_other_features=allow_other_features,
                    precision=precision,
                )
        finally:
            distributed.shutdown()
    if not d.is_main:
        return
    if precision != "fp32":
        console.print(
            f"[yellow]computed in {escape(precision)}[/]: numbers differ slightly from fp32"
        )
    for result in results:
        console.print(result_table(result))
    if len(results) > 1:
        console.print(summary_table(results))
    errors = [e for r in results for e in r.record_errors]
    if save_episodes is not None and not any(e.startswith("episode list") for e in errors):
        console.print(f"episodes written to {save_episodes}", markup=False, highlight=False)
    for text in errors:  # after the numbers: a failed write never hides them
        err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
    if errors:
        raise typer.Exit(code=1)
    if plot is not None:
        from ..results.plots import plot_classes

        with cli_errors():
            for result in results:
                assert result.eval_id is not None
                path = plot
                if len(results) > 1:
                    tag = f"-{result.k_shot}shot"
                    run = Path(result.checkpoint).parent.name if result.checkpoint else ""
                    if run.startswith("seed-"):
                        tag = f"-{run}{tag}"
                    path = plot.with_name(f"{plot.stem}{tag}{plot.suffix or '.png'}")
                plot_classes(result.eval_id, path, db=result.db)
                console.print(
                    f"class plot of eval_id {result.eval_id} written to {path}",
                    markup=False,
                    highlight=False,
                )


def summary_table(results: list[EvalResult]) -> Table:
    """One line per evaluation of a multi-shot / multi-seed ``fsar eval``."""
    table = Table(title=escape(f"fsar eval: {results[0].recipe}, {results[0].head}"))
    for col in ("shot", "run", "accuracy (95% CI)", "eval_id"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for r in results:
        run = Path(r.checkpoint).parent.name if r.checkpoint else "-"
        table.add_row(
            str(r.k_shot),
            escape(run),
            f"{100 * r.mean:.2f} ± {100 * r.ci95:.2f} %",
            "-" if r.eval_id is None else str(r.eval_id),
        )
    return table


def register(app: typer.Typer) -> None:
    app.command(
        "eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": False}
    )(eval_command)
