"""``fsar heads`` (list the registered few-shot heads) and ``fsar import-checkpoint``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .console import cli_errors, console


def heads() -> None:
    """List the few-shot heads (set one with --set model.head=NAME)."""
    with cli_errors():
        from ..models import describe_heads  # imports torch: only when the command runs

        rows = describe_heads()
    table = Table(title="few-shot heads")
    table.add_column("name", style="bold cyan")
    table.add_column("trainable")
    table.add_column("uses text")
    table.add_column("description")
    yes_no = {True: "yes", False: "no"}
    for row in rows:
        table.add_row(
            escape(row["name"]),
            yes_no[row["trainable"]],
            yes_no[row["uses_text"]],
            escape(row["description"]),
        )
    console.print(table)


def import_checkpoint(
    path: Annotated[
        Path, typer.Argument(help="Checkpoint written by the reference CLIP-FSAR code.")
    ],
    out: Annotated[Path, typer.Argument(help="fsar head checkpoint to write (.pt).")],
    trust: Annotated[
        bool,
        typer.Option(
            "--trust",
            help="Allow arbitrary unpickling if weights-only loading fails (runs code in the "
            "file: only for files you trust).",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an OUT file that fsar did not write.")
    ] = False,
) -> None:
    """Convert a reference CLIP-FSAR checkpoint into an fsar head checkpoint (+ visual tower)."""
    with cli_errors():
        from ..models import import_reference_checkpoint  # imports torch

        result = import_reference_checkpoint(path, out, trust=trust, overwrite=overwrite)
    info = result.info
    table = Table(title=escape(f"imported {result.source}"), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("head", f"clipfsar, D={info['dim']}, FFN {info['ffn_dim']}")
    table.add_row("parameters", f"{result.num_params:,} in {info['head_keys']} tensors")
    table.add_row("epoch", str(info["epoch"]))
    table.add_row(
        "merge before", escape(f"{info['merge_before']} (from {info['merge_before_source']})")
    )
    table.add_row("visual tower", f"{info['tower_keys']} tensors" if info["tower_keys"] else "none")
    if info["ignored_keys"]:
        table.add_row("ignored keys", escape(", ".join(info["ignored_keys"][:8])))
    table.add_row("wrote", escape(str(result.out)))
    if result.tower_out is not None:
        table.add_row("wrote tower", escape(str(result.tower_out)))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("heads")(heads)
    app.command("import-checkpoint")(import_checkpoint)
