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
    "int_list",
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


def int_list(flag: str, first: str | None, extra: list[str]) -> list[int] | None:
    """The integers of a many-valued option: ``--shot 1 2 3``, ``--shot 1,2,3`` or repeated.

    Click options take one value each, so the values after the first arrive as the command's
    extra arguments (``extra``); any that is not an integer is an error naming it.
    """
    if first is None:
        if extra:
            raise typer.BadParameter(f"unexpected extra arguments {extra}")
        return None
    out: list[int] = []
    for text in [*first.split(","), *extra]:
        text = text.strip()
        if not text:
            continue
        try:
            out.append(int(text))
        except ValueError:
            raise typer.BadParameter(
                f"{flag} {text!r} is not an integer; give integers, e.g. {flag} 1 2 3"
            ) from None
    return out


PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32 (exact, default) or bf16: the head's matrix products in bfloat16 (faster on "
        "CPUs with AVX512-BF16 and on GPUs; slightly different numbers, matching stays fp32).",
    ),
]
