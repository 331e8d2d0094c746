"""`fsar recipes`: list the named recipes; `fsar recipes show NAME`: print one, resolved."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from ..recipe import dump_recipe, list_recipes, load_recipe
from .console import cli_errors, console
from .options import OverrideOpt

recipes_app = typer.Typer(
    help="List the benchmark recipes, or show one.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@recipes_app.callback()
def recipes_list(ctx: typer.Context) -> None:
    """List the named recipes (from $FSAR_RECIPES, ./recipes and the recipes shipped with fsar)."""
    if ctx.invoked_subcommand is not None:
        return
    with cli_errors():
        table = Table(title="fsar recipes")
        for col in ("name", "dataset", "classes train/val/test", "encoder", "head", "file"):
            table.add_column(col)
        for name, path in list_recipes().items():
            r = load_recipe(path)
            c = r.data.classes
            table.add_row(
                escape(name),
                escape(r.dataset),
                f"{len(c.train)}/{len(c.val)}/{len(c.test)}",
                escape(r.features.encoder),
                escape(r.model.head),
                escape(_short(path)),
            )
    console.print(table)


@recipes_app.command("show")
def recipes_show(
    name: Annotated[str, typer.Argument(help="Recipe name or path to a .yaml file.")],
    overrides: OverrideOpt = None,
) -> None:
    """Print one recipe with every key resolved (defaults filled in, overrides applied)."""
    with cli_errors():
        recipe = load_recipe(name, overrides or [])
    console.print(f"# {recipe.source_path}", style="dim", markup=False, highlight=False)
    console.print(Syntax(dump_recipe(recipe), "yaml", word_wrap=True))


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def register(app: typer.Typer) -> None:
    app.add_typer(recipes_app, name="recipes")
