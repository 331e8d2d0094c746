"""The feature store: cached per-frame CLIP features of one split, readable with numpy alone.

Layout of ``<cache_dir>/<split>/`` (format ``fsar-features/1``)::

    meta.json      settings that made the features (encoder, weights SHA-256, sampling, views, T,
                   preprocessing, prompt, fsar version) + class names of the split
    index.csv      one row per split entry, in split-file order: row, key, video_id, class_id,
                   class_name, source, frames_available, status (ok | failed | missing), reason
    features.npy   float16 [videos, views, T, D]; rows whose status is not ok are all zeros
    text.npy       float32 [classes, D]: text feature of each class of the split (row = class id),
                   from the prompt in meta.json; NaN rows for classes without a known name

``np.load("features.npy", mmap_mode="r")`` reads it without fsar. A store is written to a temporary
folder and renamed into place, so a reader never sees half a store. While ``fsar cache`` is still
at work (or its shards are), the folder holds only ``.work/`` and :meth:`FeatureStore.open` says so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import atomic
from ..errors import CacheError

__all__ = [
    "FeatureStore",
    "write_store",
    "INDEX_COLUMNS",
    "STORE_FORMAT",
    "store_path",
    "WORK_DIR",
    "chunk_path",
    "write_chunk",
    "read_chunk",
    "write_settings_once",
    "acquire_lock",
    "recover_store",
    "provenance",
    "check_provenance",
    "compare_provenance",
    "PROVENANCE_KEYS",
]

STORE_FORMAT = "fsar-features/1"
WORK_DIR = ".work"  # unfinished work of `fsar cache` inside a store folder
INDEX_COLUMNS = [
    "row",
    "key",
    "video_id",
    "class_id",
    "class_name",
    "source",
    "frames_available",
    "status",
    "reason",
]


def store_path(cache_dir: str | Path, split: str) -> Path:
    return Path(cache_dir) / split


def write_store(
    path: str | Path,
    features: np.ndarray,
    index: pd.DataFrame,
    text: np.ndarray,
    meta: dict[str, Any],
) -> Path:
    """Write a complete store atomically (temporary folder, then rename over ``path``).

    Args:
        features: [videos, views, T, D], stored as float16.
        index: one row per video with :data:`INDEX_COLUMNS` (``row`` is filled in if absent).
        text: [classes, D] text features (float32).
        meta: settings; ``format``, ``shape`` and ``dim`` are added.
    """
    path = Path(path)
    if features.ndim != 4:
        raise CacheError(f"features must be [videos, views, T, D], got shape {features.shape}")
    if len(index) != features.shape[0]:
        raise CacheError(f"index has {len(index)} rows but features {features.shape[0]} videos")
    index = index.copy()
    index["row"] = np.arange(len(index))
    for col in INDEX_COLUMNS:
        if col not in index.columns:
            index[col] = ""
    meta = dict(meta)
    meta.update(
        format=STORE_FORMAT,
        shape=list(features.shape),
        dim=int(features.shape[-1]),
        num_frames=int(features.shape[2]),
        num_views=int(features.shape[1]),
    )
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        np.save(tmp / "features.npy", np.ascontiguousarray(features, dtype=np.float16))
        np.save(tmp / "text.npy", np.asarray(text, dtype=np.float32))
        index[INDEX_COLUMNS].to_csv(tmp / "index.csv", index=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written copy (full disk) frees its space
        raise
    # recover_store finds the old copy by this name if a crash falls between the two renames
    atomic.swap_dir(tmp, path, aside=path.parent / f".{path.name}.old-{os.getpid()}")
    return path


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


@dataclass
class FeatureStore:
    """A read-only, memory-mapped view of one cached split."""

    path: Path
    meta: dict[str, Any]
    index: pd.DataFrame
    features: np.ndarray  # float16 [videos, views, T, D], memory-mapped
    text: np.ndarray  # float32 [classes, D]

    @classmethod
    def open(cls, path: str | Path) -> FeatureStore:
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file() and (path / WORK_DIR).is_dir():
            chunks = len(list((path / WORK_DIR).glob("chunk-*.npz")))
            raise CacheError(
                f"feature cache at {str(path)!r} is not finished ({chunks} chunk(s) written, "
                "possibly by other shards); rerun `fsar cache RECIPE` (any shard, or without "
                "--shard) to finish and assemble it"
            )
        if not meta_file.is_file():
            raise CacheError(
                f"no feature cache at {str(path)!r} (missing meta.json); run `fsar cache` first"
            )
        redo = f"move {str(path)!r} away and rerun `fsar cache`"
        current = meta_file
        try:
            meta = json.loads(meta_file.read_text())
            if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
                found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
                raise CacheError(f"{meta_file}: format {found!r} is not {STORE_FORMAT!r}; {redo}")
            current = path / "index.csv"
            index = pd.read_csv(
                current,
                dtype={
                    "key": str,
                    "video_id": str,
                    "class_name": str,
                    "source": str,
                    "reason": str,
                },
                keep_default_na=False,
            )
            current = path / "features.npy"
            features = np.load(current, mmap_mode="r")
            current = path / "text.npy"
            text = np.load(current)
        except PermissionError as exc:  # not "corrupt": the fix is a chmod, not a rebuild
            raise CacheError(
                f"{current}: permission denied ({exc.strerror}); make it readable (chmod)"
            ) from None
        except FileNotFoundError:
            raise CacheError(f"{current} is missing: the store is incomplete; {redo}") from None
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise CacheError(f"{current} is unreadable ({exc}); {redo}") from None
        if features.ndim != 4 or len(index) != features.shape[0]:
            raise CacheError(
                f"{path / 'features.npy'} has shape {features.shape} but index.csv lists "
                f"{len(index)} videos; {redo}"
            )
        return cls(path, meta, index, features, text)

    # ------------------------------------------------------------------ views
    @property
    def n_videos(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.features.shape[1])

    @property
    def num_frames(self) -> int:
        return int(self.features.shape[2])

    @property
    def dim(self) -> int:
        return int(self.features.shape[3])

    @property
    def class_names(self) -> list[str | None]:
        return list(self.meta.get("class_names", []))

    @property
    def labels(self) -> np.ndarray:
        """Class id of every video, int64 [videos]."""
        return self.index["class_id"].to_numpy(dtype=np.int64)

    @property
    def usable(self) -> np.ndarray:
        """bool [videos]: the video's features are present (status ok)."""
        return (self.index["status"] == "ok").to_numpy()

    def missing_summary(self) -> str:
        """'N of M listed videos lack features (x missing, y failed to decode)' or ''."""
        counts = self.index["status"].value_counts()
        bad = int(len(self.index) - counts.get("ok", 0))
        if bad == 0:
            return ""
        parts = [f"{int(v)} {k}" for k, v in counts.items() if k != "ok"]
        return f"{bad} of {len(self.index)} listed videos lack features ({', '.join(parts)})"

    def check_finite(self, chunk: int = 512) -> None:
        """Raise :class:`CacheError` naming the first usable video whose features are NaN/inf
        (they would score chance accuracy without a word); reads the store in chunks."""
        usable = self.usable
        for start in range(0, self.n_videos, chunk):
            block = np.asarray(self.features[start : start + chunk])
            bad = (
                ~np.isfinite(block).reshape(len(block), -1).all(axis=1)
                & usable[start:][: len(block)]
            )
            if bad.any():
                row = start + int(np.flatnonzero(bad)[0])
                key = self.index["key"].iloc[row]
                raise CacheError(
                    f"{self.path / 'features.npy'}: video {key!r} (row {row}) has NaN or infinite "
                    f"features ({int(bad.sum())}+ such videos); re-cache it: move {self.path} "
                    "away and rerun `fsar cache`"
                )

    @property
    def n_missing(self) -> int:
        return int((self.index["status"] != "ok").sum())


# --------------------------------------------------------------------------- unfinished stores
# ``fsar cache`` commits work in chunks inside ``<store>/.work/`` before assembling a store:
# ``chunk-<start>-<end>.npz`` (float16 features [rows, views, T, D] + index records + settings as
# JSON), ``settings.json`` and, while one process assembles the store, ``finalise.lock``.


def write_settings_once(path: Path, settings: dict[str, Any]) -> None:
    """Write ``settings`` as JSON at ``path`` unless it exists (first writer wins, atomically)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
    try:
        os.link(tmp, path)  # fails if another shard wrote it first; then compare
    except FileExistsError:
        pass
    except OSError:  # file system without hard links
        if not path.exists():
            os.replace(tmp, path)
    tmp.unlink(missing_ok=True)


def chunk_path(work: Path, start: int, end: int) -> Path:
    """The chunk file of rows ``[start, end)`` inside a ``.work`` folder."""
    return work / f"chunk-{start:09d}-{end:09d}.npz"


def _as_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8)


def write_chunk(
    path: Path, features: np.ndarray, records: list[dict[str, Any]], settings: dict[str, Any]
) -> None:
    """Write one chunk aside, fsync, and rename it into place (atomic)."""
    # the host in the name: shards on several machines may share the folder
    tmp = path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    with atomic.replacing(path, tmp=tmp, fsync=False), open(tmp, "wb") as fh:
        np.savez(fh, features=features, index=_as_bytes(records), settings=_as_bytes(settings))
        fh.flush()
        os.fsync(fh.fileno())


def read_chunk(
    path: Path, features: bool = True
) -> tuple[np.ndarray | None, list[dict[str, Any]], dict[str, Any]]:
    """(features or None, index records, settings) of one chunk written by :func:`write_chunk`."""
    try:
        with np.load(path) as z:
            records = json.loads(z["index"].tobytes())
            settings = json.loads(z["settings"].tobytes())
            feats = z["features"] if features else None
    except Exception as exc:
        raise CacheError(f"{path} is unreadable ({exc}); delete it, rerun `fsar cache`") from None
    return feats, records, settings


def acquire_lock(lock: Path) -> bool:
    """Create ``lock`` exclusively; True if taken. Takes over a dead process's lock (this host)."""
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileNotFoundError:  # its folder is gone: another process finished the job
            return False
        except FileExistsError:
            host, _, pid = lock.read_text().partition(" ") if lock.exists() else ("", "", "")
            if host == socket.gethostname() and pid.isdigit() and not atomic.pid_alive(int(pid)):
                lock.unlink(missing_ok=True)
                continue
            return False
        os.write(fd, me.encode())
        os.close(fd)
        return True
    return False


def recover_store(store_dir: Path) -> None:
    """Undo what a crash inside :func:`write_store` left behind (it renames twice).

    Between its two renames the store folder is absent and its old copy (with ``.work``) sits at
    ``.<name>.old-<pid>``: put it back. Leftovers of dead processes are removed.
    """
    parent, name = store_dir.parent, store_dir.name
    if not parent.is_dir():
        return
    for kind in ("old", "tmp"):
        for stale in parent.glob(f".{name}.{kind}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or atomic.pid_alive(int(pid)):
                continue
            if kind == "old" and not store_dir.exists():
                os.replace(stale, store_dir)  # crashed between the renames: put the work back
            else:
                shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------- provenance
#: What makes two stores' features comparable: the same encoder, the same weights, the same images.
PROVENANCE_KEYS = ("encoder", "weights_sha256", "resize", "crop", "num_frames")


def provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """The feature provenance of a store's ``meta.json``: :data:`PROVENANCE_KEYS` and sampling.

    Recorded in every checkpoint and run summary, so that features of another encoder or other
    weights (same width, silently wrong numbers) are refused by :func:`check_provenance`.
    """
    out = {k: meta.get(k) for k in PROVENANCE_KEYS}
    out["sampling"] = meta.get("sampling")
    out["split"] = meta.get("split")
    return out


def check_provenance(
    recorded: dict[str, Any] | None,
    store: FeatureStore,
    *,
    what: str,
    allow: bool = False,
    keys: tuple[str, ...] = PROVENANCE_KEYS,
) -> None:
    """Refuse ``store`` if its features are not those ``recorded`` (by ``what``) was made with.

    Args:
        recorded: the provenance a checkpoint or run recorded; None (made by an older fsar) is
            accepted with a warning.
        store: the store about to be used.
        what: the checkpoint or run, for the message.
        allow: the user knows (``--allow-other-features``): log the difference, do not refuse.
        keys: what must agree (``sampling`` only within one split).
    """
    compare_provenance(
        recorded,
        provenance(store.meta),
        what=what,
        source=str(store.path),
        holds="holds",
        here="in the store",
        fix="use the cache it was made with (features.cache_dir)",
        allow=allow,
        keys=keys,
    )


def compare_provenance(
    recorded: dict[str, Any] | None,
    now: dict[str, Any],
    *,
    what: str,
    source: str,
    holds: str,
    here: str,
    fix: str,
    allow: bool = False,
    keys: tuple[str, ...] = PROVENANCE_KEYS,
) -> None:
    """Refuse features described by ``now`` (from ``source``) if ``recorded`` names others.

    The one check behind :func:`check_provenance` (a feature store) and the finetune mode's
    (features the run computes with its encoder, no store).

    Args:
        recorded: what ``what`` recorded (:func:`provenance`'s format); None is accepted with a
            warning (made by an older fsar).
        now: the provenance of the features about to be used, in the same format.
        source: what gives them, for the message (a store folder, an encoder).
        holds: the verb for ``source`` (``holds``, ``gives``); ``here``: where ``now`` is
            (``in the store``); ``fix``: the way out besides ``--allow-other-features``.
        allow: the user knows (``--allow-other-features``): log the difference, do not refuse.
        keys: what must agree.
    """
    import logging

    log = logging.getLogger(__name__)
    if not recorded:
        log.warning(
            "%s records no feature provenance (older fsar): cannot check that %s %s the "
            "features it was made with",
            what,
            source,
            holds,
        )
        return
    diff = [k for k in keys if k in recorded and recorded.get(k) != now.get(k)]
    if not diff:
        return
    shown = ", ".join(f"{k} {recorded.get(k)!r} there, {now.get(k)!r} {here}" for k in diff)
    if allow:
        log.warning("%s: other features than it was made with (%s); allowed", what, shown)
        return
    raise CacheError(
        f"{what} was made with other features than {source} {holds}: {shown}; {fix}, or pass "
        "--allow-other-features if this is deliberate"
    )
