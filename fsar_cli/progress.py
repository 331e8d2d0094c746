"""The progress callback every long-running library function accepts.

``on_progress(n=1, *, total=None, label=None)``: ``n`` units of work are done (a first call with
``total`` says how many there will be, ``label`` is a short status). The library never prints;
the CLI turns these calls into Rich progress bars (:mod:`fsar_cli.cli.console`).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ProgressFn"]

ProgressFn = Callable[..., None]
