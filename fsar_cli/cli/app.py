"""The ``fsar`` command line: a thin Typer layer over the library.

Each subcommand lives in ``fsar_cli/cli/<name>.py`` and exposes ``register(app)``; this module
only builds the app, the global options and the entry point. A command parses its options, calls one
library function inside :func:`fsar_cli.cli.console.cli_errors` and renders the returned result.
"""

from __future__ import annotations

import os
import sys

import typer

from .. import __version__
from ..threads import configure_threads
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
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="CPU threads (default: OMP_NUM_THREADS if set, else the cores the machine's load "
        "leaves free); OpenMP threads wait passively unless OMP_WAIT_POLICY is set.",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    if debug:
        os.environ["FSAR_DEBUG"] = "1"
    setup_logging(verbose)
    if threads is not None:
        if threads < 1:
            raise typer.BadParameter("--threads must be >= 1")
        configure_threads(threads)


def _threads_from_argv(argv: list[str]) -> int | None:
    """The value of a global ``--threads N`` / ``--threads=N`` before the command, if any."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            return None  # the command: later options are the command's
        if arg == "--threads" and i + 1 < len(argv) and argv[i + 1].isdigit():
            return int(argv[i + 1]) or None
        if arg.startswith("--threads=") and arg[10:].isdigit():
            return int(arg[10:]) or None
    return None


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
    # before anything imports torch: the OpenMP wait policy is read when its runtime loads
    configure_threads(_threads_from_argv(sys.argv[1:]))
    app()
