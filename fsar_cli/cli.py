"""The ``fsar`` command line: a thin Typer layer over the library.

Each subcommand lives in ``fsar_cli/commands/<name>.py`` and exposes ``register(app)``; this module
only builds the app, the global options and the entry point. A command parses its options, calls one
library function inside :func:`fsar_cli.console.cli_errors` and renders the returned result.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import typer

from . import __version__
from . import commands as _commands_pkg
from .console import console, setup_logging

app = typer.Typer(
    name="fsar",
    help="CLIP for few-shot action recognition: extract, cache, train, evaluate, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        console.print(f"fsar {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks (same as FSAR_DEBUG=1)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    if debug:
        os.environ["FSAR_DEBUG"] = "1"
    setup_logging(verbose)


def _register_commands() -> None:
    # Every module in fsar_cli/commands registers its own subcommands; the order of `fsar --help`
    # follows each module's ORDER constant (pipeline order), then the name.
    mods = []
    for info in pkgutil.iter_modules(_commands_pkg.__path__):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"{_commands_pkg.__name__}.{info.name}"))
    for mod in sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)):
        mod.register(app)


_register_commands()


def main() -> None:
    app()
