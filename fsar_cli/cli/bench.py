"""``fsar bench``: evaluate a grid of recipes x shots x heads next to the published numbers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .console import cli_errors, console, encoder_text, progress
from .options import DbOpt, DeviceOpt, EvalSplitOpt, NoRecordOpt, QueryOpt, SeedOpt, WayOpt

if TYPE_CHECKING:
    from ..evaluation.bench import BenchResult


__all__ = ["register", "bench_command", "bench_table"]


def bench_table(result: BenchResult) -> tuple[Table, list[str]]:
    """One table: per benchmark and shot, fsar's cells then the published reference rows.

    A recipe whose cells are all skipped for one reason (typically: no cache) gets one row.
    Returns the table and its footnotes (sources of the published rows, the caveat).
    """
    from ..results.published import CAVEAT

    table = Table(title="fsar bench: 5-way unless noted; accuracy in %, mean ± 95% CI")
    for col in ("benchmark", "shot", "method", "encoder", "accuracy", "episodes", "note"):
        table.add_column(col, justify="right" if col in ("shot", "episodes") else "left")
    sources: dict[str, int] = {}
    by_recipe: dict[tuple[str, str], list] = {}
    for row in result.rows:
        by_recipe.setdefault((row.recipe, row.cache), []).append(row)
    for rows in by_recipe.values():
        if len({(r.status, r.note) for r in rows}) == 1 and rows[0].status == "skipped":
            shots = ", ".join(dict.fromkeys(str(r.k_shot) for r in rows))
            heads = ", ".join(dict.fromkeys(r.head for r in rows))
            table.add_row(
                escape(rows[0].dataset),
                shots,
                escape(heads),
                "",
                "[yellow]skipped[/]",
                "",
                escape(rows[0].note),
            )
            table.add_section()
            continue
        for k in dict.fromkeys(r.k_shot for r in rows):
            for row in (r for r in rows if r.k_shot == k):
                if row.status == "ok":
                    acc = f"[bold]{row.acc:.2f} ± {row.ci95:.2f}[/]"
                else:
                    acc = "[yellow]skipped[/]" if row.status == "skipped" else "[red]error[/]"
                enc = encoder_text(row.encoder, row.encoder_random)  # escapes the name
                eps = f"{row.n_episodes:,}" if row.n_episodes else ""
                table.add_row(
                    escape(row.dataset), str(k), escape(row.head), enc, acc, eps, escape(row.note)
                )
            for p in result.published:
                if p.benchmark == rows[0].benchmark and p.k_shot == k:
                    ref = sources.setdefault(p.source, len(sources) + 1)
                    table.add_row(
                        escape(rows[0].dataset),
                        str(k),
                        f"[dim]{escape(p.method)}[/]",
                        f"[dim]{escape(p.backbone)}[/]",
                        f"[dim]{p.acc:.1f}[/]",
                        "",
                        f"[dim]published \\[{ref}][/]",
                    )
            table.add_section()
    notes = [f"[{i}] {src}" for src, i in sources.items()]
    if sources:
        notes.append(f"published: {CAVEAT}")
    return table, notes


def _parse_checkpoints(items: list[str]) -> dict[str, str]:
    from ..errors import RecipeError

    out = {}
    for item in items:
        if "=" not in item:
            raise RecipeError(
                f"--checkpoint {item!r} is not RECIPE=PATH (example: kinetics100=runs/k100)"
            )
        name, path = item.split("=", 1)
        out[name.strip()] = path.strip()
    return out


def bench_command(
    recipes: Annotated[
        list[str] | None,
        typer.Argument(help="Recipes (default: ssv2_full ssv2_small kinetics100 ucf101 hmdb51)."),
    ] = None,
    shot: Annotated[
        list[int] | None, typer.Option("--shot", help="K, repeatable (default: 1 5).")
    ] = None,
    head: Annotated[
        list[str] | None,
        typer.Option(
            "--head",
            help="Head, repeatable (default: trained proto otam text); 'trained' = the recipe's "
            "head from its checkpoint.",
        ),
    ] = None,
    runs: Annotated[
        Path | None,
        typer.Option("--runs", help="Folder of run folders: RUNS/<recipe>/best.pt (or last.pt)."),
    ] = None,
    checkpoint: Annotated[
        list[str] | None,
        typer.Option("--checkpoint", help="RECIPE=RUN_OR_FILE (repeatable); overrides --runs."),
    ] = None,
    way: WayOpt = None,
    query: QueryOpt = None,
    episodes: Annotated[
        int | None, typer.Option("--episodes", help="Episodes per cell (default: recipe, 10000).")
    ] = None,
    seed: SeedOpt = None,
    split: EvalSplitOpt = None,
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="Sample only videos that have features.")
    ] = False,
    db: DbOpt = None,
    no_record: NoRecordOpt = False,
    device: DeviceOpt = "cpu",
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override KEY=VALUE for every recipe (repeatable)."),
    ] = None,
) -> None:
    """Evaluate recipes x shots x heads; cells without a cache or checkpoint are listed as skipped.

    Published numbers (docs/BENCHMARKS.md) are shown as reference rows with their source.
    """
    from ..evaluation.bench import DEFAULT_HEADS, DEFAULT_RECIPES, run_bench
    from ..results.db import default_db_path

    with cli_errors():
        ckpts = _parse_checkpoints(checkpoint or [])
        with progress("bench") as advance:
            result = run_bench(
                recipes or list(DEFAULT_RECIPES),
                shot or [1, 5],
                head or list(DEFAULT_HEADS),
                runs=runs,
                checkpoints=ckpts,
                n_way=way,
                n_query=query,
                episodes=episodes,
                seed=seed,
                split=split,
                allow_missing=allow_missing,
                db=None if no_record else (db or default_db_path()),
                device=device,
                overrides=overrides or [],
                on_progress=advance,
            )
    table, notes = bench_table(result)
    console.print(table)
    for note in notes:
        console.print(note, markup=False, highlight=False)
    done = f"{result.n_ok} of {len(result.rows)} cells evaluated"
    recorded = f"; recorded in {result.db}" if result.db and result.n_ok else ""
    console.print(done + recorded, markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
