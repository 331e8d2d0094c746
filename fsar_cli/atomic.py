"""Atomic writes: write beside the target, then rename over it, so a reader never sees half a file.

Every file fsar finishes goes through here: a temporary sibling ``.<name>.tmp-<pid>`` in the
target's folder (same file system, so :func:`os.replace` is atomic), flushed to disk, then renamed
into place. A kill at any moment leaves the target either old or new, never half-written; a write
that raises leaves the old target untouched and removes its temporary file.

Folders are swapped whole by :func:`swap_dir`: the old folder moves aside to
``.<name>.old-<pid>``, the new one moves in, the old one is deleted. Crash recovery elsewhere
(:func:`.features.store.recover_store`, the frame extractor's leftover sweep) recognises those
aside names and uses :func:`pid_alive` to tell a crashed writer from a running one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["pid_alive", "replacing", "swap_dir", "torch_save", "write_bytes", "write_text"]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host.

    Args:
        pid: process id.

    Returns:
        True if it exists (also when it belongs to another user), False if it is gone.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _aside_path(dest_dir: Path) -> Path:
    return dest_dir.parent / f".{dest_dir.name}.old-{os.getpid()}"


def _fsync_file(path: Path) -> None:
    with open(path, "r+b") as fh:
        os.fsync(fh.fileno())


@contextmanager
def replacing(
    path: str | Path, *, tmp: str | Path | None = None, fsync: bool = True
) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it over ``path``, on error delete it.

    For writers that take a file name (``frame.to_csv(tmp)``, ``np.save``, ``torch.save``)::

        with atomic.replacing(path) as tmp:
            frame.to_csv(tmp, index=False)

    Args:
        path: the target file; its folder must exist.
        tmp: the temporary file to use (default ``.<name>.tmp-<pid>`` beside ``path``); it must
            be on the same file system as ``path``.
        fsync: flush the written file to disk before the rename.

    Returns:
        A context manager yielding the temporary path. If the block raises, ``path`` is left as
        it was and the temporary file is removed.
    """
    path = Path(path)
    tmp_path = _temp_path(path) if tmp is None else Path(tmp)
    try:
        yield tmp_path
        if fsync:
            _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)  # only still there if the block or the rename failed


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` beside ``path``, fsync, and rename it into place.

    Args:
        path: the target file; its folder must exist.
        text: the whole content (written with the platform's default encoding and newlines, as
            :meth:`pathlib.Path.write_text` does).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    with replacing(path, fsync=False) as tmp, open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` beside ``path``, fsync, and rename it into place.

    Args:
        path: the target file; its folder must exist.
        data: the whole content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    with replacing(path, fsync=False) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` beside ``path``, fsync, and rename it into place.

    Args:
        obj: what to save (for ``weights_only=True`` loading: tensors and plain containers).
        path: the target file; its folder must exist.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import torch  # here, so that modules writing only text do not import torch

    path = Path(path)
    with replacing(path, fsync=False) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def swap_dir(tmp_dir: str | Path, dest_dir: str | Path, *, aside: str | Path | None = None) -> Path:
    """Put the fully written folder ``tmp_dir`` in place of ``dest_dir``.

    If ``dest_dir`` exists it is renamed to ``aside``, ``tmp_dir`` is renamed to ``dest_dir`` and
    the old folder is deleted; otherwise ``tmp_dir`` is simply renamed. A crash between the two
    renames leaves the old folder at ``aside`` and no ``dest_dir``: recovery code finds it by name
    (see :func:`.features.store.recover_store`). ``tmp_dir`` is not removed if a rename fails; the
    caller owns it.

    Args:
        tmp_dir: the new folder, complete (and flushed, if the caller needs that).
        dest_dir: where it goes; must be on the same file system as ``tmp_dir``.
        aside: where the old folder waits between the renames (default
            ``.<dest name>.old-<pid>`` beside ``dest_dir``, the name recovery code looks for).

    Returns:
        ``dest_dir`` as a :class:`~pathlib.Path`.
    """
    tmp_dir, dest_dir = Path(tmp_dir), Path(dest_dir)
    if dest_dir.exists():
        old = Path(aside) if aside is not None else _aside_path(dest_dir)
        os.replace(dest_dir, old)
        os.replace(tmp_dir, dest_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, dest_dir)
    return dest_dir
