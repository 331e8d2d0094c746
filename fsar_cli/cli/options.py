"""Options shared by several commands, declared once (``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "OverrideOpt",
    "SplitsOpt",
    "DbOpt",
    "WayOpt",
    "QueryOpt",
    "SeedOpt",
    "EvalSplitOpt",
    "NoRecordOpt",
    "DeviceOpt",
    "PrecisionOpt",
]

OverrideOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe key, e.g. --set train.lr=1e-5 (repeatable)."),
]

SplitsOpt = Annotated[
    Path | None,
    typer.Option(
        "--splits",
        help="Folder with the split files (or with <name>/ subfolders); overrides "
        "data.split_dir and $FSAR_SPLITS.",
    ),
]

DbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db", help="Results database (default: $FSAR_RESULTS_DB or ~/.cache/fsar/results.sqlite)."
    ),
]

# Episode options of `fsar eval` and `fsar bench` (None = the recipe's eval settings).
WayOpt = Annotated[int | None, typer.Option("--way", help="Classes per episode (default: recipe).")]
QueryOpt = Annotated[
    int | None, typer.Option("--query", help="Queries per class (default: recipe).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Episode seed (default: recipe, 0).")]
EvalSplitOpt = Annotated[str | None, typer.Option("--split", help="Cached split (default: test).")]
NoRecordOpt = Annotated[
    bool, typer.Option("--no-record", help="Do not append results to the database.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32 (exact, default) or bf16: the head's matrix products in bfloat16 (faster on "
        "CPUs with AVX512-BF16 and on GPUs; slightly different numbers, matching stays fp32).",
    ),
]
