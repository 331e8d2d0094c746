"""``fsar plot``: figures from the results database and run folders (PNG, or SVG/PDF by name)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .console import cli_errors, console
from .options import DbOpt

if TYPE_CHECKING:
    from ..results.plots import PlotResult

__all__ = ["register", "plot_app"]

plot_app = typer.Typer(
    help="Figures: accuracy vs shots, per-class results, training curves, the benchmark grid.",
    no_args_is_help=True,
)

RecipeFilt = Annotated[str | None, typer.Option("--recipe", help="Only this recipe.")]
HeadFilt = Annotated[str | None, typer.Option("--head", help="Only this head.")]
SinceFilt = Annotated[
    str | None, typer.Option("--since", help="Only results from this date (YYYY-MM-DD, UTC).")
]


def _out(default: str) -> object:
    return typer.Option("--out", "-o", help=f"Image file: .png (default {default}), .svg or .pdf.")


OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing image that fsar did not draw.")
]


def _done(result: PlotResult, what: str) -> None:
    console.print(f"wrote {what} to {result.path}", markup=False, highlight=False)


@plot_app.command("shots")
def shots_command(
    out: Annotated[Path, _out("shots.png")] = Path("shots.png"),
    recipe: RecipeFilt = None,
    head: HeadFilt = None,
    since: SinceFilt = None,
    db: DbOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Accuracy vs shots per head and benchmark, with 95% CI bands."""
    from ..results.plots import plot_shots

    with cli_errors():
        res = plot_shots(out, db=db, recipe=recipe, head=head, since=since, overwrite=overwrite)
    n = res.data.groupby(["benchmark", "head", "encoder"]).ngroups
    _done(res, f"{n} curves ({len(res.data)} evaluations)")


@plot_app.command("classes")
def classes_command(
    eval_id: Annotated[int, typer.Argument(help="The evaluation (see `fsar report`).")],
    out: Annotated[Path | None, _out("classes-EVAL_ID.png")] = None,
    db: DbOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Per-class accuracy (sorted bars) and the confusion matrix of one evaluation."""
    from ..results.plots import plot_classes

    with cli_errors():
        res = plot_classes(
            eval_id, out or Path(f"classes-{eval_id}.png"), db=db, overwrite=overwrite
        )
    best, worst = res.data.iloc[0], res.data.iloc[-1]
    console.print(
        f"{len(res.data)} classes; best {best['class_name']} {best['accuracy']:.1f}%, "
        f"worst {worst['class_name']} {worst['accuracy']:.1f}%",
        markup=False,  # SSv2 class names hold [something]
        highlight=False,
    )
    _done(res, "the class plot")


@plot_app.command("training")
def training_command(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders (or folders of seed-N runs) of `fsar train`.")
    ],
    out: Annotated[Path, _out("training.png")] = Path("training.png"),
    overwrite: OverwriteOpt = False,
) -> None:
    """Loss terms, learning rate and validation accuracy against step; best step marked."""
    from ..results.plots import plot_training

    with cli_errors():
        res = plot_training(list(runs), out, overwrite=overwrite)
    _done(res, f"{res.data['run'].nunique()} runs' curves")


@plot_app.command("bench")
def bench_command(
    out: Annotated[Path, _out("bench.png")] = Path("bench.png"),
    recipe: RecipeFilt = None,
    head: HeadFilt = None,
    since: SinceFilt = None,
    db: DbOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """The benchmark grid as a heat map: heads x benchmark / shot, cells annotated."""
    from ..results.plots import plot_bench

    with cli_errors():
        res = plot_bench(out, db=db, recipe=recipe, head=head, since=since, overwrite=overwrite)
    _done(res, f"a grid of {len(res.data)} cells")


def register(app: typer.Typer) -> None:
    app.add_typer(plot_app, name="plot")
