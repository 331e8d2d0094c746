"""The one rule for every writer: replace only what fsar can prove it wrote.

A path fsar is about to replace is checked by :func:`claim`: it may go if it does not exist, is an
empty folder, or carries fsar's own proof (a completion marker, a format tag, a known header; the
writer passes that test as ``ours``). Anything else is refused with an :class:`OutputError` naming
the path and the way out (``--overwrite``, another ``--out``), before anything is touched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from .errors import OutputError

__all__ = ["claim", "is_empty_dir", "foreign_entries", "starts_with"]

DEFAULT_WAY_OUT = "pass --overwrite to replace it, or choose another --out"


def is_empty_dir(path: Path) -> bool:
    """Whether ``path`` is a folder with nothing in it (an unreadable folder is not empty)."""
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False


def starts_with(*prefixes: bytes) -> Callable[[Path], bool]:
    """Proof for a text output fsar writes with a fixed beginning (a CSV header, a JSON key)."""

    def ours(path: Path) -> bool:
        with open(path, "rb") as f:
            head = f.read(max(len(p) for p in prefixes))
        return any(head.startswith(p) for p in prefixes)

    return ours


def foreign_entries(folder: Path, ours: Callable[[str], bool]) -> list[str]:
    """Names in ``folder`` for which ``ours(name)`` is False, sorted (none if it is absent)."""
    try:
        return sorted(e.name for e in os.scandir(folder) if not ours(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def claim(
    path: str | Path,
    *,
    kind: Literal["file", "dir"],
    ours: Callable[[Path], bool] = lambda p: False,
    overwrite: bool = False,
    what: str = "output",
    way_out: str = DEFAULT_WAY_OUT,
) -> Path:
    """Check that fsar may replace ``path``; raise :class:`OutputError` if it may not.

    Args:
        path: the file or folder about to be (re)written.
        kind: what fsar writes there; the other kind at ``path`` is always refused.
        ours: proof that fsar wrote what is there (called only when ``path`` exists).
        overwrite: the user asked to replace whatever is there (still not the other kind).
        what: how the message names the output (``frame folder``, ``report``...).
        way_out: the fix the message offers.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return path
    if kind == "file" and path.is_dir():
        raise OutputError(
            f"{what} {str(path)!r} is a folder; give a file path (e.g. another --out)"
        )
    if kind == "dir" and not path.is_dir():
        raise OutputError(f"{what} {str(path)!r} is a file; give a folder (e.g. another --out)")
    if kind == "dir" and is_empty_dir(path):
        return path
    if overwrite:
        return path
    try:
        proven = ours(path)
    except OSError:
        proven = False
    if not proven:
        held = ""
        if kind == "dir":
            names = foreign_entries(path, lambda n: False)
            shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
            held = f" (holds {shown})"
        raise OutputError(
            f"{what} {str(path)!r} exists{held} and was not written by fsar; nothing was "
            f"changed: {way_out}"
        )
    return path
