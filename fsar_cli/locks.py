"""Exclusive locks on the folders fsar writes: a second process gets "in use by pid N".

A lock is a hidden file beside what it guards (``.<name>.lock``), locked with ``fcntl.flock`` and
holding ``<pid> <host>``. The kernel drops a flock when its process dies, so a ``kill -9`` never
leaves a stale lock; the file is removed on a clean release. A process that opens the file just
before its holder removes it notices (the path no longer names the file it locked) and retries.

A lock can also be taken shared (``shared=True``): any number of shared holders run together and
exclude every exclusive one (the shards of one ``fsar cache --shard i/n`` against an unsharded
run into the same store). The last shared holder to leave removes the file.

A flock belongs to the open file, which a forked child shares: the fine-tuning mode's DataLoader
workers (forked processes) would keep a killed ``fsar train``'s run-folder lock alive until they
noticed their parent's death and exited. A fork hook therefore points the child's copies of held
lock descriptors at ``/dev/null``: only the process that took a lock holds it.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

__all__ = ["hold", "lock_path_for"]

_HELD: set[int] = set()  # descriptors of the locks this process holds


def _drop_in_child() -> None:
    """After a fork, in the child: let go of the parent's locks (the descriptor numbers stay
    valid, on /dev/null, for whatever code still closes them)."""
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for fd in _HELD:
            os.dup2(null, fd)
    finally:
        os.close(null)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_in_child)


def lock_path_for(path: str | Path, tag: str = "") -> Path:
    """The lock file guarding ``path``: ``.<name>[.<tag>].lock`` in its parent folder."""
    path = Path(path)
    return path.parent / f".{path.name}{'.' + tag if tag else ''}.lock"


def _holder(lock: Path) -> str:
    try:
        pid, _, host = lock.read_text().strip().partition(" ")
    except OSError:
        return "another process"
    if not pid.isdigit():
        return "another process"
    return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")


@contextmanager
def hold(
    guarded: str | Path, *, what: str, way_out: str, tag: str = "", shared: bool = False
) -> Iterator[Path]:
    """Hold the exclusive (or shared) lock of ``guarded`` for the ``with`` block.

    Args:
        guarded: the folder (or file) the lock protects; its parent folder is created.
        what: how the message names it (``run folder``, ``feature store``).
        way_out: what the user can do instead (``use another --out``).
        tag: distinguishes several locks on one path (cache shards).
        shared: hold it shared: other shared holders are let in, exclusive ones are refused (and
            an exclusive holder refuses this one).

    Returns:
        A context manager yielding the lock file's path.

    Raises:
        OutputError: another live process holds the lock in a conflicting mode ("in use by pid
            N").
    """
    lock = lock_path_for(guarded, tag)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"{what} {str(guarded)!r} is in use by {_holder(lock)} (lock {lock}); wait for it "
                f"to finish, or {way_out}"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed the file between our open and our lock: try again
    _HELD.add(fd)
    try:
        os.ftruncate(fd, 0)  # shared holders: the latest one is named
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield lock
    finally:
        _HELD.discard(fd)
        try:
            if shared:  # remove the file only when no other shared holder is left
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # another holder still uses it (and removes it when it leaves)
                else:
                    lock.unlink(missing_ok=True)
            else:
                lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
