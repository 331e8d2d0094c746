"""``fsar splits download|verify``: the standard few-shot split files, checked by SHA-256."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .console import cli_errors, console, err_console, progress

__all__ = ["register", "download", "verify"]

app = typer.Typer(
    help="Download and verify the standard few-shot split files.", no_args_is_help=True
)


def _table(title: str, checks: list) -> Table:
    table = Table(title=title)
    for col in ("benchmark", "file", "status", "sha256"):
        table.add_column(col)
    for c in checks:
        colour = "green" if c.ok else "red"
        sha = (c.actual or "-")[:16]
        table.add_row(escape(c.name), escape(c.file), f"[{colour}]{escape(c.status)}[/]", sha)
    return table


@app.command("download")
def download(
    name: Annotated[
        str, typer.Argument(help="ssv2_full, ssv2_small, kinetics100, ucf101, hmdb51, or all.")
    ],
    dest: Annotated[
        Path | None,
        typer.Option("--dest", help="Splits folder [$FSAR_SPLITS or ~/.cache/fsar/splits]."),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help="Replace the pinned GitHub URL [$FSAR_SPLITS_URL]."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Fetch even if verified copies exist.")
    ] = False,
) -> None:
    """Fetch train/val/test_few_shot.txt from CLIP-FSAR's pinned commit into DEST/NAME/."""
    from ..data.download import BENCHMARKS, download_splits

    names = list(BENCHMARKS) if name == "all" else [name]
    checks = []
    with cli_errors():
        with progress("downloading", total=3 * len(names)) as advance:

            def step(n: int = 1, *, total: int | None = None, label: str | None = None) -> None:
                advance(n, label=label)  # the total covers every benchmark, not one

            for n in names:
                checks += download_splits(n, dest, base_url=base_url, force=force, on_progress=step)
    console.print(_table("fsar splits download", checks))
    console.print(f"split files in {checks[0].path.parent.parent}", markup=False, highlight=False)


@app.command("verify")
def verify(
    directory: Annotated[
        Path | None,
        typer.Argument(help="Splits folder holding NAME/ subfolders [$FSAR_SPLITS or cache]."),
    ] = None,
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="Benchmark(s) to require (default: all present)."),
    ] = None,
) -> None:
    """Check split files against the pinned SHA-256 sums. Exit code 1 on any mismatch or gap."""
    from ..data.download import verify_splits

    with cli_errors():
        checks = verify_splits(directory, name or None)
    console.print(_table("fsar splits verify", checks))
    bad = [c for c in checks if not c.ok]
    if bad:
        for c in bad:
            err_console.print(
                f"[red]{escape(c.status)}[/] "
                + escape(f"{c.path}: expected {c.expected}, got {c.actual or 'no file'}"),
                highlight=False,
            )
        raise typer.Exit(code=1)
    console.print(f"[green]all {len(checks)} split files match[/]")


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="splits")
