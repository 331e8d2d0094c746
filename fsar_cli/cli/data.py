"""``fsar data check``: listed videos or frame folders that exist and decode, per class;
``fsar data import``: your own labelled videos as a benchmark (split files and a recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
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
        table = Table(title=f"{cfg.name} {name}: {what} under {result.root}")
        table.add_column("class")
        for col in ("listed", "present", "missing", "undecodable"):
            table.add_column(col, justify="right")
        for row in [*result.for_split(name), result.totals(name)]:
            if row.class_id < 0:  # the totals row
                table.add_section()
            table.add_row(
                f"[bold]{row.name}[/]" if row.class_id < 0 else f"{row.class_id} {row.name}",
                str(row.listed),
                str(row.present),
                f"[red]{row.missing}[/]" if row.missing else "0",
                f"[red]{row.undecodable}[/]" if row.undecodable else "0",
            )
        console.print(table)
    t = result.totals()
    if result.complete:
        console.print(f"[green]complete[/]: all {t.listed} listed {what} present and decodable")
        return
    for p in result.problems[:10]:
        err_console.print(
            f"[red]{p.status}[/] {p.split}:{p.line_no} {p.path}  {p.reason}", highlight=False
        )
    if len(result.problems) > 10:
        err_console.print(f"... and {len(result.problems) - 10} more", highlight=False)
    err_console.print(
        f"[red]incomplete[/]: {t.missing} missing, {t.undecodable} undecodable of {t.listed} listed"
        + (f"; list in {problems}" if problems else "; --problems FILE.csv lists them all"),
        highlight=False,
    )
    raise typer.Exit(code=1)


@app.command("import")
def import_command(
    src: Annotated[
        Path,
        typer.Argument(help="Folder SRC/<class>/<video or frame folder>, or a path,class CSV."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where split files and recipe go.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Recipe name (default: the --out folder's).")
    ] = None,
    val: Annotated[int, typer.Option("--val", help="Classes kept for validation.")] = 0,
    test: Annotated[int, typer.Option("--test", help="Novel (test) classes.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the class shuffle.")] = 0,
) -> None:
    """Turn labelled videos into a few-shot benchmark: classes split into train / val / test.

    Writes {train,val,test}_few_shot.txt, classes.json and NAME.yaml (a recipe for extract,
    cache, train, eval and predict).
    """
    from ..data.importer import import_dataset

    with cli_errors():
        res = import_dataset(src, out, name=name, val=val, test=test, seed=seed)
    table = Table(title=f"fsar data import: {res.recipe}")
    for col in ("split", "classes", "videos"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split in ("train", "val", "test"):
        table.add_row(split, str(len(res.classes[split])), str(res.videos[split]))
    console.print(table)
    nxt = f"fsar extract {res.recipe} --out <frames>" if res.source == "videos" else ""
    console.print(
        f"next: {nxt + ' ; ' if nxt else ''}fsar cache {res.recipe} ; fsar train {res.recipe}"
    )


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="data")
