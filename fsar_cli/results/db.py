"""The results database: every evaluation, with its full provenance, in one SQLite file.

Schema (``schema_version`` 1, in table ``meta``)::

    evals(eval_id INTEGER PRIMARY KEY, timestamp TEXT  -- ISO 8601 UTC,
          recipe, benchmark, dataset, split TEXT, n_way, k_shot, n_query, n_episodes, seed INTEGER,
          head, encoder TEXT, encoder_random INTEGER (0/1), sampling, checkpoint,
          episodes_source TEXT, n_missing INTEGER, missing TEXT, overrides TEXT (JSON list),
          acc_mean, acc_ci95 REAL  -- fractions in [0, 1],
          fsar_version, git_sha, device TEXT, elapsed_s REAL, store TEXT)
    episode_accs(eval_id INTEGER PRIMARY KEY REFERENCES evals, n INTEGER,
                 accs BLOB)  -- n little-endian float64 per-episode accuracies, in episode order
    episode_preds(eval_id INTEGER PRIMARY KEY REFERENCES evals, n INTEGER, n_way INTEGER,
                  n_query INTEGER,
                  classes BLOB,  -- zlib(little-endian int32 [n, n_way]): split class id of
                                 --   each episode label
                  preds BLOB)    -- zlib(int8 [n, n_way * n_query]): predicted episode label
                                 --   of each query slot (slot j's true label is j // n_query)

``episode_preds`` was added later without a schema change: a database without it opens and
gains the (empty) table, and evaluations recorded before it simply have no predictions. Stored
compressed, 10,000 5-way 5-query episodes take about 100-250 kB (most predictions are right, so
the int8 labels compress well).

One evaluation is one transaction (both rows or neither), so a crash never leaves half a result.
The default location is ``$FSAR_RESULTS_DB``, else ``~/.cache/fsar/results.sqlite``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import FsarError

__all__ = [
    "EpisodePredictions",
    "ResultsDB",
    "RESULT_FIELDS",
    "SCHEMA_VERSION",
    "default_db_path",
    "git_sha",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: Columns of ``evals`` in order, with their SQL types (``eval_id`` and ``timestamp`` are set here).
RESULT_FIELDS: dict[str, str] = {
    "eval_id": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "timestamp": "TEXT NOT NULL",
    "recipe": "TEXT",
    "benchmark": "TEXT",
    "dataset": "TEXT",
    "split": "TEXT",
    "n_way": "INTEGER",
    "k_shot": "INTEGER",
    "n_query": "INTEGER",
    "n_episodes": "INTEGER",
    "seed": "INTEGER",
    "head": "TEXT",
    "encoder": "TEXT",
    "encoder_random": "INTEGER",
    "sampling": "TEXT",
    "checkpoint": "TEXT",
    "episodes_source": "TEXT",
    "n_missing": "INTEGER",
    "missing": "TEXT",
    "overrides": "TEXT",
    "acc_mean": "REAL NOT NULL",
    "acc_ci95": "REAL NOT NULL",
    "fsar_version": "TEXT",
    "git_sha": "TEXT",
    "device": "TEXT",
    "elapsed_s": "REAL",
    "store": "TEXT",
}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evals ({", ".join(f"{k} {v}" for k, v in RESULT_FIELDS.items())});
CREATE TABLE IF NOT EXISTS episode_accs (
    eval_id INTEGER PRIMARY KEY REFERENCES evals(eval_id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    accs BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS episode_preds (
    eval_id INTEGER PRIMARY KEY REFERENCES evals(eval_id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    n_way INTEGER NOT NULL,
    n_query INTEGER NOT NULL,
    classes BLOB NOT NULL,
    preds BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS evals_by_recipe ON evals (recipe, head, k_shot);
"""


#: How long a writer waits quietly for another writer's lock, then (saying so) up to LOCK_WAIT_S.
_POLITE_WAIT_S = 2.0
LOCK_WAIT_S = 30.0


def _wait_politely(path: Path, conn: sqlite3.Connection) -> None:
    """Take the write lock now: quietly for a moment, then saying so while waiting longer."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        log.warning("%s is locked by another writer; waiting up to %.0f s", path, LOCK_WAIT_S)
        conn.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_S * 1000)}")
        conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")  # the lock is free now; the caller's own transaction takes it
    conn.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_S * 1000)}")


def _db_error(path: Path, exc: sqlite3.DatabaseError, opening: bool = True) -> FsarError:
    """One line for what went wrong with a results database, and what to do about it."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return FsarError(
            f"results database {str(path)!r} is locked by another writer (waited "
            f"{LOCK_WAIT_S:.0f} s); rerun when it is done, or pass another --db"
        )
    if "unable to open" in text or "readonly" in text or "permission" in text.lower():
        return FsarError(
            f"results database {str(path)!r} cannot be written ({text}); check its permissions "
            "and its folder's, or pass another --db"
        )
    if not opening:
        return FsarError(
            f"results database {str(path)!r} refused the new row ({text}); nothing was written: "
            "pass another --db"
        )
    return FsarError(
        f"{str(path)!r} is not a usable results database ({text}: corrupt, or not SQLite); move "
        "it away or pass another --db"
    )


@dataclass
class EpisodePredictions:
    """The per-query predictions of one evaluation.

    Attributes:
        classes: int64 [E, W], the split class id of each episode label.
        predictions: int64 [E, W*Q], the predicted episode label of each query slot.
        n_query: Q; query slot j of an episode has the true episode label ``j // Q``.
    """

    classes: np.ndarray
    predictions: np.ndarray
    n_query: int

    @property
    def labels(self) -> np.ndarray:
        """int64 [E, W*Q], the true episode label of each query slot."""
        W = self.classes.shape[1]
        return np.broadcast_to(np.repeat(np.arange(W), self.n_query), self.predictions.shape)

    @property
    def true_classes(self) -> np.ndarray:
        """int64 [E, W*Q], the split class id of each query's true class."""
        return np.take_along_axis(self.classes, self.labels, axis=1)

    @property
    def predicted_classes(self) -> np.ndarray:
        """int64 [E, W*Q], the split class id each query was assigned to."""
        return np.take_along_axis(self.classes, self.predictions, axis=1)

    def accuracies(self) -> np.ndarray:
        """float64 [E], per-episode accuracy recomputed from the predictions."""
        return (self.predictions == self.labels).mean(axis=1).astype(np.float64)

    def to_frame(self) -> pd.DataFrame:
        """One row per query: episode, slot, true/predicted episode label and class id, correct."""
        E, N = self.predictions.shape
        true_c, pred_c = self.true_classes, self.predicted_classes
        return pd.DataFrame(
            {
                "episode": np.repeat(np.arange(E), N),
                "slot": np.tile(np.arange(N), E),
                "label": self.labels.reshape(-1),
                "predicted": self.predictions.reshape(-1),
                "class_id": true_c.reshape(-1),
                "predicted_class_id": pred_c.reshape(-1),
                "correct": (true_c == pred_c).reshape(-1),
            }
        )


def _pack_predictions(classes: np.ndarray, preds: np.ndarray, n_query: int) -> tuple[Any, ...]:
    classes = np.asarray(classes)
    preds = np.asarray(preds)
    E, W = classes.shape
    if preds.shape != (E, W * n_query) or (preds.size and (preds.min() < 0 or preds.max() >= W)):
        raise ValueError(
            f"predictions of shape {preds.shape} do not fit {E} episodes of {W} x {n_query} queries"
        )
    return (
        E,
        W,
        int(n_query),
        zlib.compress(np.ascontiguousarray(classes, dtype="<i4").tobytes(), 6),
        zlib.compress(np.ascontiguousarray(preds, dtype="i1").tobytes(), 6),
    )


def default_db_path() -> Path:
    """``$FSAR_RESULTS_DB``, else ``~/.cache/fsar/results.sqlite``."""
    env = os.environ.get("FSAR_RESULTS_DB")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fsar" / "results.sqlite"


def git_sha() -> str | None:
    """The commit of the fsar source tree when it is a git checkout, with ``+dirty`` when tracked
    files differ from it; None otherwise."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + "+dirty" if dirty else sha) or None


class ResultsDB:
    """Append-only store of evaluation results.

    Args:
        path: the SQLite file (created with its folder on first write); None = default location.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_db_path()

    def _connect(self, create: bool) -> sqlite3.Connection:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_file():
            raise FsarError(
                f"no results database at {str(self.path)!r}; run `fsar eval` or `fsar bench` "
                "first, or pass --db PATH (default: $FSAR_RESULTS_DB, else "
                "~/.cache/fsar/results.sqlite)"
            )
        try:
            conn = sqlite3.connect(self.path, timeout=_POLITE_WAIT_S)
            conn.execute("PRAGMA foreign_keys = ON")
            with conn:
                _wait_politely(self.path, conn)
                conn.executescript(_SCHEMA)
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
                elif int(row[0]) > SCHEMA_VERSION:
                    raise FsarError(
                        f"{self.path}: results schema version {row[0]} is newer than this fsar "
                        f"understands ({SCHEMA_VERSION}); upgrade fsar or use another --db"
                    )
        except sqlite3.DatabaseError as exc:
            raise _db_error(self.path, exc) from None
        return conn

    def add(
        self,
        fields: dict[str, Any],
        accuracies: np.ndarray,
        predictions: EpisodePredictions | None = None,
    ) -> int:
        """Append one evaluation (its provenance ``fields`` and per-episode accuracies, and
        optionally its per-query predictions), in one transaction.

        Unknown keys in ``fields`` are an error; ``timestamp`` defaults to now (UTC).
        Returns the new ``eval_id``.
        """
        unknown = set(fields) - set(RESULT_FIELDS)
        if unknown:
            raise ValueError(f"unknown result fields {sorted(unknown)}")
        row = {k: v for k, v in fields.items() if k != "eval_id"}
        row.setdefault("timestamp", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        for k, v in row.items():
            if isinstance(v, (list, tuple, dict)):
                row[k] = json.dumps(v)
            elif isinstance(v, (bool, np.bool_)):
                row[k] = int(v)
            elif isinstance(v, np.generic):
                row[k] = v.item()
        accs = np.ascontiguousarray(accuracies, dtype="<f8")
        packed = None
        if predictions is not None:
            packed = _pack_predictions(
                predictions.classes, predictions.predictions, predictions.n_query
            )
            if packed[0] != len(accs):
                raise ValueError(f"{packed[0]} episodes of predictions for {len(accs)} accuracies")
        conn = self._connect(create=True)
        try:
            _wait_politely(self.path, conn)
            with conn:  # one transaction: both rows or neither
                cur = conn.execute(
                    f"INSERT INTO evals ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                    list(row.values()),
                )
                eval_id = int(cur.lastrowid or 0)
                conn.execute(
                    "INSERT INTO episode_accs VALUES (?, ?, ?)",
                    (eval_id, len(accs), accs.tobytes()),
                )
                if packed is not None:
                    conn.execute(
                        "INSERT INTO episode_preds VALUES (?, ?, ?, ?, ?, ?)", (eval_id, *packed)
                    )
        except sqlite3.DatabaseError as exc:
            raise _db_error(self.path, exc, opening=False) from None
        finally:
            conn.close()
        log.debug("recorded eval %d in %s", eval_id, self.path)
        return eval_id

    def query(
        self,
        *,
        recipe: str | None = None,
        head: str | None = None,
        k_shot: int | None = None,
        since: str | None = None,
    ) -> pd.DataFrame:
        """All matching evaluations (without per-episode accuracies), oldest first.

        Args:
            since: an ISO date or timestamp; keeps rows with ``timestamp >= since`` (UTC).
        """
        where, args = [], []
        for col, val in (("recipe", recipe), ("head", head), ("k_shot", k_shot)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if since is not None:
            where.append("timestamp >= ?")
            args.append(_normalise_since(since))
        sql = "SELECT * FROM evals" + (f" WHERE {' AND '.join(where)}" if where else "")
        conn = self._connect(create=False)
        try:
            frame = pd.read_sql_query(sql + " ORDER BY eval_id", conn, params=args)
        finally:
            conn.close()
        return frame[list(RESULT_FIELDS)]

    def accuracies(self, eval_id: int) -> np.ndarray:
        """The per-episode accuracies of one evaluation, float64 [n_episodes]."""
        conn = self._connect(create=False)
        try:
            row = conn.execute(
                "SELECT n, accs FROM episode_accs WHERE eval_id = ?", (int(eval_id),)
            ).fetchone()
        finally:
            conn.close()
        if row is None:
            raise FsarError(f"{self.path}: no evaluation with eval_id {eval_id}")
        return np.frombuffer(row[1], dtype="<f8", count=int(row[0])).astype(np.float64)

    def predictions(self, eval_id: int) -> EpisodePredictions:
        """The per-query predictions of one evaluation (recorded by fsar after predictions were
        added to the database; older rows have none, which is an error naming the fix)."""
        conn = self._connect(create=False)
        try:
            row = conn.execute(
                "SELECT n, n_way, n_query, classes, preds FROM episode_preds WHERE eval_id = ?",
                (int(eval_id),),
            ).fetchone()
            known = row is not None or (
                conn.execute("SELECT 1 FROM evals WHERE eval_id = ?", (int(eval_id),)).fetchone()
                is not None
            )
        finally:
            conn.close()
        if not known:
            raise FsarError(f"{self.path}: no evaluation with eval_id {eval_id}")
        if row is None:
            raise FsarError(
                f"{self.path}: eval_id {eval_id} has no stored predictions (recorded by an older "
                "fsar); re-run the evaluation with `fsar eval` to store them"
            )
        n, W, Q = int(row[0]), int(row[1]), int(row[2])
        classes = np.frombuffer(zlib.decompress(row[3]), dtype="<i4").reshape(n, W)
        preds = np.frombuffer(zlib.decompress(row[4]), dtype="i1").reshape(n, W * Q)
        return EpisodePredictions(classes.astype(np.int64), preds.astype(np.int64), Q)

    def has_predictions(self) -> set[int]:
        """The eval ids that have stored predictions."""
        conn = self._connect(create=False)
        try:
            return {int(r[0]) for r in conn.execute("SELECT eval_id FROM episode_preds")}
        finally:
            conn.close()


def _normalise_since(since: str) -> str:
    try:
        when = datetime.fromisoformat(since)
    except ValueError:
        raise FsarError(
            f"--since {since!r} is not a date; use YYYY-MM-DD or an ISO timestamp"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="seconds")
