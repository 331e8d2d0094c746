"""Rich console, logging, the progress-bar helper and the CLI error boundary.

Only the CLI layer imports this module: library code logs through ``logging`` and reports progress
through an ``on_progress(n=1, *, total=None, label=None)`` callback.

Every string that comes from the user or the data (class names such as SSv2's "Putting
[something] into [something]", paths, recipe names, notes) goes into Rich output through
:func:`rich.markup.escape` or with ``markup=False``: Rich would read ``[something]`` as a tag and
drop it.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..encoders import OFFLINE_ENCODER_NAME
from ..errors import FsarError
from ..progress import ProgressFn

__all__ = [
    "console",
    "err_console",
    "cli_errors",
    "progress",
    "staged_progress",
    "setup_logging",
    "debug_enabled",
    "encoder_text",
]

console = Console()
err_console = Console(stderr=True)


def encoder_text(name: str, is_random: bool) -> str:
    """How an encoder is named in every table (markup; the name escaped): random and non-OpenAI
    weights are flagged."""
    shown = escape(name)
    if is_random:
        return f"{shown} [bold red]RANDOM WEIGHTS[/] (random weights: not a real result)"
    if name == OFFLINE_ENCODER_NAME:
        return f"{shown} (fsar's demo CLIP, [bold]not the OpenAI weights[/])"
    return shown


def debug_enabled() -> bool:
    return os.environ.get("FSAR_DEBUG", "").strip() not in ("", "0", "false", "no")


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose or debug_enabled() else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False, markup=False)],
        force=True,
    )


def os_error_text(exc: OSError) -> str:
    """One line for an operating-system error: the file, what happened, and what to try."""
    where = f"{exc.filename}: " if exc.filename else ""
    what = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        return (
            f"{where}no space left on the device; free some space and rerun (finished work is kept)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}{what}; check the permissions, or choose another path"
    return f"{where}{what}"


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn an :class:`FsarError` into one red line on stderr and exit code 1.

    With ``FSAR_DEBUG=1`` the exception propagates with its full traceback.
    """
    try:
        yield
    except FsarError as exc:
        if debug_enabled():
            raise
        # Under torchrun every rank meets the same error; one copy of the message is enough.
        if os.environ.get("RANK", "0") in ("", "0"):
            err_console.print(
                f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
        raise typer.Exit(code=1) from None
    except OSError as exc:  # a disk, a permission, a path: one line naming the file, not a trace
        if debug_enabled():
            raise
        if os.environ.get("RANK", "0") in ("", "0"):
            err_console.print(
                f"[bold red]error:[/] {escape(os_error_text(exc))}", highlight=False, soft_wrap=True
            )
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: finished work is kept; rerun to resume.")
        raise typer.Exit(code=130) from None


def _new_bar() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=err_console,
        transient=False,
        disable=os.environ.get("FSAR_NO_PROGRESS", "") not in ("", "0"),
    )


def _advance(
    bar: Progress, task: TaskID, n: int, total: int | None, label: str | None, restart: bool
) -> None:
    kwargs: dict[str, object] = {}
    if total is not None:
        kwargs["total"] = total
        if restart:  # a new total starts the bar afresh (one stage can run several jobs)
            kwargs["completed"] = 0
    if label is not None:
        kwargs["status"] = escape(label)  # a video's path, a recipe name: not markup
    bar.update(task, advance=n, **kwargs)  # type: ignore[arg-type]


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator[ProgressFn]:
    """A Rich progress bar; yields the ``on_progress`` callback that library functions take."""
    with _new_bar() as bar:
        task = bar.add_task(escape(description), total=total, status="")

        def advance(n: int = 1, *, total: int | None = None, label: str | None = None) -> None:
            _advance(bar, task, n, total, label, restart=False)

        yield advance


@contextmanager
def staged_progress() -> Iterator[tuple[Callable[[str, str], None], ProgressFn]]:
    """One bar per stage of a multi-stage command (``fsar demo``).

    Yields ``(on_stage, on_progress)``: ``on_stage(name, detail)`` closes the current bar and
    opens the next; ``on_progress`` advances the current one, and a new ``total`` restarts it.
    """
    with _new_bar() as bar:
        current: list[TaskID] = []

        def on_stage(name: str, detail: str) -> None:
            if current:
                bar.update(current[-1], status="done")
                bar.stop_task(current[-1])
            current.append(bar.add_task(escape(name), total=None, status=escape(detail)))

        def on_progress(n: int = 1, *, total: int | None = None, label: str | None = None) -> None:
            if current:
                _advance(bar, current[-1], n, total, label, restart=True)

        yield on_stage, on_progress
        if current:
            bar.update(current[-1], status="done")
            bar.stop_task(current[-1])
