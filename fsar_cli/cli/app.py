"""The ``fsar`` command line: a thin Typer layer over the library.

Each subcommand lives in ``fsar_cli/cli/<name>.py`` and exposes ``register(app)``; this module
only builds the app, the global options and the entry point. A command parses its options, calls one
library function inside :func:`fsar_cli.cli.console.cli_errors` and renders the returned result.
"""

from __future__ import annotations

import os

import typer

from .. import __version__
from . import (
    bench,
    cache,
    compare,
    data,
    demo,
    eval,
    extract,
    heads,
    plot,
    predict,
    recipes,
    report,
    splits,
    synth,
    train,
)
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


# The commands in pipeline order (the order of `fsar --help`): each module's register(app) adds
# its subcommands.
for _module in (
    recipes,
    splits,
    extract,
    data,
    cache,
    heads,
    train,
    eval,
    predict,
    bench,
    report,
    plot,
    compare,
    synth,
    demo,
):
    _module.register(app)


def main() -> None:
    app()
