"""Options shared by several commands, declared once (``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["OverrideOpt", "DbOpt"]

OverrideOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe key, e.g. --set train.lr=1e-5 (repeatable)."),
]

DbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db", help="Results database (default: $FSAR_RESULTS_DB or ~/.cache/fsar/results.sqlite)."
    ),
]
