"""``fsar data check``: listed videos or frame folders that exist and decode, per class;
``fsar data import``: your own labelled videos as a benchmark (split files and a recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .console import cli_errors, console, err_console, progress
from .options import OverrideOpt, SplitsOpt

__all__ = ["register", "check", "import_command"]

app = typer.Typer(
    help="Inspect a benchmark's data before extracting or caching.", no_args_is_help=True
)


@app.command("check")
def check(
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML path.")],
    root: Annotated[
        Path | None,
        typer.Option(
            "--root", help="Video root (or frames root with --frames); default from recipe."
        ),
    ] = None,
    frames: Annotated[
        bool, typer.Option("--frames", help="Check extracted frame folders instead of videos.")
    ] = False,
    deep: Annotated[
        bool, typer.Option("--deep", help="Decode every frame, not just the first.")
    ] = False,
    split: Annotated[
        list[str] | None, typer.Option("--split", help="Split(s) to check (default: all).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Parallel checks.")] = 4,
    problems: Annotated[
        Path | None,
        typer.Option("--problems", help="Write missing/undecodable entries to this CSV."),
    ] = None,
    splits: SplitsOpt = None,
    overrides: OverrideOpt = None,
) -> None:
    """Count listed, present, missing and undecodable entries per split and class.

    Exit code 0 only when every listed entry is present and decodes.
    """
    from ..data.check import check_dataset, write_problems
    from ..recipe import SPLITS, load_recipe

    with cli_errors():
        cfg = load_recipe(recipe, overrides or []).with_split_dir(splits)
        with progress("checking") as advance:
            result = check_dataset(
                cfg,
                root,
                splits=tuple(split or SPLITS),
                frames=frames,
                deep=deep,
                workers=workers,
                on_progress=advance,
            )
        if problems is not None:
            write_problems(result, problems)

    what = "frame folders" if frames else "videos"
    for name in result.splits:
        table = Table(title=escape(f"{cfg.name} {name}: {what} under {result.root}"))
        table.add_column("class")
        for col in ("listed", "present", "missing", "undecodable"):
            table.add_column(col, justify="right")
        for row in [*result.for_split(name), result.totals(name)]:
            if row.class_id < 0:  # the totals row
                table.add_section()
            table.add_row(
                f"[bold]{escape(row.name)}[/]"
                if row.class_id < 0
                else f"{row.class_id} {escape(str(row.name))}",
                str(row.listed),
                str(row.present),
                f"[red]{row.missing}[/]" if row.missing else "0",
                f"[red]{row.undecodable}[/]" if row.undecodable else "0",
            )
        console.print(table)
    t = result.totals()
    for empty in result.empty:
        err_console.print(
            f"[yellow]empty[/]: the {empty} split file lists no videos", highlight=False
        )
    if result.complete:
        console.print(f"[green]complete[/]: all {t.listed} listed {what} present and decodable")
        return
    for p in result.problems[:10]:
        err_console.print(
            f"[red]{p.status}[/] {p.split}:{p.line_no} {escape(f'{p.path}  {p.reason}')}",
            highlight=False,
        )
    if len(result.problems) > 10:
        err_console.print(f"... and {len(result.problems) - 10} more", highlight=False)
    err_console.print(
        f"[red]incomplete[/]: {t.missing} missing, {t.undecodable} undecodable of {t.listed} listed"
        + (f"; list in {problems}" if problems else "; --problems FILE.csv lists them all"),
        highlight=False,
    )
    raise typer.Exit(code=1)


def _names(values: list[str] | None) -> list[str] | None:
    """``--test-classes a,b --test-classes c`` -> [a, b, c]."""
    if values is None:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


@app.command("import")
def import_command(
    src: Annotated[
        Path,
        typer.Argument(help="Folder SRC/<class>/<video or frame folder>, or a path,class CSV."),
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", help="Recipe name (default: the folder's name)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Data folder: split files, frames, cache (default: ./fsar-data/NAME).",
        ),
    ] = None,
    val: Annotated[
        float, typer.Option("--val", help="Validation classes: a fraction (0.15) or a count.")
    ] = 0.15,
    test: Annotated[
        float, typer.Option("--test", help="Novel (test) classes: a fraction (0.25) or a count.")
    ] = 0.25,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the class shuffle.")] = 0,
    train_classes: Annotated[
        list[str] | None,
        typer.Option("--train-classes", help="Base classes by name (comma-separated/repeated)."),
    ] = None,
    val_classes: Annotated[
        list[str] | None, typer.Option("--val-classes", help="Validation classes by name.")
    ] = None,
    test_classes: Annotated[
        list[str] | None, typer.Option("--test-classes", help="Novel classes by name.")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Parallel decode checks.")] = 4,
    overrides: OverrideOpt = None,
) -> None:
    """Turn labelled videos into a few-shot benchmark: classes split into train / val / test.

    Writes {train,val,test}_few_shot.txt and classes.json into the data folder and NAME.yaml into
    your recipes folder ($FSAR_RECIPES, else ./recipes), so extract, cache, train, eval and
    predict take NAME. Videos that do not decode are listed and left out.
    """
    from ..data.importer import import_dataset

    with cli_errors():
        with progress("importing") as advance:
            res = import_dataset(
                src,
                out,
                name=name,
                val=val,
                test=test,
                seed=seed,
                train_classes=_names(train_classes),
                val_classes=_names(val_classes),
                test_classes=_names(test_classes),
                overrides=overrides or [],
                workers=workers,
                on_progress=advance,
            )
    table = Table(title=escape(f"fsar data import: {res.name}"))
    for col in ("split", "classes", "videos"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split in ("train", "val", "test"):
        table.add_row(split, str(len(res.classes[split])), str(res.videos[split]))
    console.print(table)
    console.print(
        f"recipe {res.recipe}; split files and classes.json in {res.out}",
        markup=False,
        highlight=False,
    )
    if res.undecodable:
        err_console.print(
            f"[yellow]{len(res.undecodable)} videos do not decode and are left out[/] "
            f"(listed in {escape(str(res.out / 'undecodable.csv'))}):"
        )
        for path, why in res.undecodable[:20]:
            err_console.print(f"  {path}: {why}", markup=False, highlight=False)
        if len(res.undecodable) > 20:
            err_console.print(f"  ... and {len(res.undecodable) - 20} more", highlight=False)
    n = res.name
    steps = ([f"fsar extract {n}"] if res.source == "videos" else []) + [
        f"fsar cache {n}",
        f"fsar train {n}",
        f"fsar eval {n} --shot 1",
    ]
    console.print("next: " + " && ".join(steps), markup=False, highlight=False)
    if not res.on_search_path:
        console.print(
            "[yellow]note[/]: "
            + escape(
                f"{res.recipe.parent} is searched only from {res.recipe.parent.parent}; "
                f"elsewhere set FSAR_RECIPES={res.recipe.parent}"
            ),
            highlight=False,
        )


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="data")
