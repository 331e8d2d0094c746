"""``fsar report``: export the results database as CSV or a paper-style markdown table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .console import cli_errors, console
from .options import DbOpt

__all__ = ["register", "report_command"]


def report_command(
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="File to write (required for CSV; markdown prints)."),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="csv (stable columns) or markdown (paper table).")
    ] = "csv",
    recipe: Annotated[str | None, typer.Option("--recipe", help="Only this recipe.")] = None,
    head: Annotated[str | None, typer.Option("--head", help="Only this head.")] = None,
    shot: Annotated[int | None, typer.Option("--shot", help="Only this K.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only results from this date (YYYY-MM-DD, UTC).")
    ] = None,
    no_published: Annotated[
        bool, typer.Option("--no-published", help="Markdown: leave out the published rows.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an --out file that is not an fsar report.")
    ] = False,
    db: DbOpt = None,
    predictions: Annotated[
        int | None,
        typer.Option(
            "--predictions",
            help="Instead: write this eval id's per-query predictions as CSV to --out.",
        ),
    ] = None,
) -> None:
    """Export evaluation results: CSV with documented columns, or a markdown table.

    CSV columns (stable; see fsar_cli.results.report.REPORT_COLUMNS): eval_id, timestamp, recipe,
    benchmark, dataset, split, n_way, k_shot, n_query, n_episodes, seed, head, encoder,
    encoder_random, sampling, checkpoint, episodes_source, n_missing, acc_mean, acc_ci95 (both in
    percent), fsar_version, git_sha.
    """
    from ..results.report import write_predictions, write_report

    if predictions is not None:
        with cli_errors():
            if out is None:
                raise typer.BadParameter("--predictions needs --out FILE.csv")
            frame = write_predictions(predictions, out, db=db)
        acc = 100 * frame["correct"].mean()
        console.print(
            f"wrote {len(frame):,} predictions of eval_id {predictions} "
            f"({frame['episode'].nunique():,} episodes, accuracy {acc:.2f}%) to {out}",
            markup=False,
            highlight=False,
        )
        return
    with cli_errors():
        result = write_report(
            out,
            db=db,
            fmt=fmt,  # type: ignore[arg-type]
            recipe=recipe,
            head=head,
            k_shot=shot,
            since=since,
            include_published=not no_published,
            overwrite=overwrite,
        )
    if result.fmt == "markdown" and result.path is None:
        console.print(result.text, markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(
            f"wrote {len(result.frame)} results to {result.path}", markup=False, highlight=False
        )


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
