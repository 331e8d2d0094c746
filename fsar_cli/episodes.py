"""Episodes: seeded, reproducible W-way K-shot Q-query sampling over a cached split.

Letters used for shapes throughout fsar: ``E`` episodes in a batch, ``W`` way, ``K`` shot, ``Q``
queries per class, ``T`` frames, ``D`` feature width, ``C`` classes of a split, ``V`` views.

Episode ``i`` of seed ``s`` is drawn from its own generator ``default_rng([s, i])``, so an episode
depends only on (seed, index, the split's labels): the same on any machine, in any batch size, and
on any rank of a distributed run that evaluates a slice of the episodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic, episode_rng
from .errors import EpisodeError

__all__ = ["EpisodeBatch", "EpisodeSampler", "save_episodes", "load_episodes", "EPISODES_FORMAT"]

EPISODES_FORMAT = "fsar-episodes/1"


@dataclass
class EpisodeBatch:
    """A batch of E episodes as store rows; slots are class-major (class w's shots are adjacent).

    Attributes:
        classes: int64 [E, W], global class id of episode class w (episode label w).
        support_rows: int64 [E, W*K], store row of each support video.
        query_rows: int64 [E, W*Q], store row of each query video.
        support_views, query_views: int64, the view index used for each slot (0 when V = 1).
    """

    n_way: int
    k_shot: int
    n_query: int
    classes: np.ndarray
    support_rows: np.ndarray
    query_rows: np.ndarray
    support_views: np.ndarray
    query_views: np.ndarray

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    @property
    def support_labels(self) -> np.ndarray:
        """int64 [E, W*K]: episode label of each support slot (0,0,..,1,1,..)."""
        return np.broadcast_to(
            np.repeat(np.arange(self.n_way), self.k_shot), self.support_rows.shape
        ).copy()

    @property
    def query_labels(self) -> np.ndarray:
        """int64 [E, W*Q]: episode label of each query slot."""
        return np.broadcast_to(
            np.repeat(np.arange(self.n_way), self.n_query), self.query_rows.shape
        ).copy()

    def slice(self, start: int, stop: int) -> EpisodeBatch:
        return EpisodeBatch(
            self.n_way,
            self.k_shot,
            self.n_query,
            self.classes[start:stop],
            self.support_rows[start:stop],
            self.query_rows[start:stop],
            self.support_views[start:stop],
            self.query_views[start:stop],
        )

    def gather(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features of the batch's videos.

        Args:
            features: [videos, V, T, D] (the store's memmap).
        Returns:
            support [E, W*K, T, D] and query [E, W*Q, T, D], float32.
        """
        s = features[self.support_rows, self.support_views]  # (E, W*K, T, D)
        q = features[self.query_rows, self.query_views]  # (E, W*Q, T, D)
        return np.asarray(s, dtype=np.float32), np.asarray(q, dtype=np.float32)


class EpisodeSampler:
    """Samples W-way K-shot Q-query episodes from the usable videos of one split.

    Args:
        labels: int64 [videos], class id of every video of the split (store order).
        usable: bool [videos], whether the video has features; None = all usable.
        class_names: names for error messages (index = class id).
        allow_missing: if False, a split with videos lacking features is an error (results must
            never silently shrink the test set); if True they are left out of sampling.
        num_views: views per video in the store; ``sample_views`` picks a random view per slot.
    """

    def __init__(
        self,
        labels: np.ndarray,
        n_way: int,
        k_shot: int,
        n_query: int,
        *,
        seed: int = 0,
        usable: np.ndarray | None = None,
        class_names: list[str | None] | None = None,
        allow_missing: bool = False,
        num_views: int = 1,
        sample_views: bool = False,
        split: str = "split",
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        usable = np.ones(len(labels), bool) if usable is None else np.asarray(usable, bool)
        if min(n_way, k_shot, n_query) < 1:
            raise EpisodeError(
                f"n_way, k_shot and n_query must be >= 1 (got {n_way}, {k_shot}, {n_query})"
            )
        n_bad = int((~usable).sum())
        if n_bad and not allow_missing:
            raise EpisodeError(
                f"{split}: {n_bad} of {len(labels)} listed videos have no features (missing or "
                "undecodable); re-run `fsar cache` after fixing them, or pass --allow-missing to "
                f"sample from the {len(labels) - n_bad} that have them (the count is reported)"
            )
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.seed = int(seed)
        self.num_views = int(num_views)
        self.sample_views = bool(sample_views) and num_views > 1
        self.n_missing = n_bad
        names = class_names or []
        need = k_shot + n_query
        classes = np.unique(labels)
        self._rows: dict[int, np.ndarray] = {}
        short: list[str] = []
        for c in classes:
            rows = np.flatnonzero((labels == c) & usable)
            if len(rows) < need:
                name = names[c] if c < len(names) and names[c] else f"class {c}"
                short.append(f"{name!r} (id {c}) has {len(rows)} usable videos")
            else:
                self._rows[int(c)] = rows
        if short:
            raise EpisodeError(
                f"{split}: {'; '.join(short[:5])}{' ...' if len(short) > 5 else ''} but "
                f"k_shot + n_query = {k_shot} + {n_query} = {need}; lower --shot/--query"
            )
        self.classes = np.array(sorted(self._rows), dtype=np.int64)
        if n_way > len(self.classes):
            raise EpisodeError(
                f"{split}: n_way = {n_way} but the split has only {len(self.classes)} classes "
                f"with at least {need} usable videos; lower --way"
            )
        # For drawing all episodes at once: each class's video count and rows, padded to a table
        self._sizes = np.array([len(self._rows[int(c)]) for c in self.classes])  # [C]
        self._table = np.zeros((len(self.classes), int(self._sizes.max())), np.int64)
        for i, c in enumerate(self.classes):
            self._table[i, : self._sizes[i]] = self._rows[int(c)]
        largest = max(len(self.classes), int(self._sizes.max()))
        self._at_once = not self.sample_views and episode_rng.supported(self.seed, largest, need)

    def episode(
        self, index: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Episode ``index``: (classes [W], support rows [W*K], query rows [W*Q], views...)."""
        rng = np.random.default_rng([self.seed, int(index)])
        W, K, Q = self.n_way, self.k_shot, self.n_query
        chosen = rng.choice(self.classes, size=W, replace=False)
        picks = np.stack(
            [rng.choice(self._rows[int(c)], size=K + Q, replace=False) for c in chosen]
        )
        support, query = picks[:, :K].reshape(-1), picks[:, K:].reshape(-1)  # (W, K) -> (W*K,)
        if self.sample_views:
            sv = rng.integers(self.num_views, size=W * K)
            qv = rng.integers(self.num_views, size=W * Q)
        else:
            sv = np.zeros(W * K, np.int64)
            qv = np.zeros(W * Q, np.int64)
        return chosen, support, query, sv, qv

    def sample(self, n_episodes: int, start: int = 0) -> EpisodeBatch:
        """Episodes ``start .. start+n_episodes-1`` stacked into one batch.

        The same episodes as :meth:`episode` one by one, drawn for all of them at once where
        :mod:`fsar_cli.episode_rng` applies (about 50x faster).
        """
        if n_episodes < 1:
            raise EpisodeError("asked for 0 episodes")
        if self._at_once:
            return self._sample_at_once(n_episodes, start)
        parts = [self.episode(i) for i in range(start, start + n_episodes)]
        return EpisodeBatch(
            self.n_way,
            self.k_shot,
            self.n_query,
            *(np.stack([p[j] for p in parts]).astype(np.int64) for j in range(5)),
        )

    def _sample_at_once(self, n: int, start: int) -> EpisodeBatch:
        """:meth:`sample` with one generator lane per episode (:class:`EpisodeStreams`)."""
        W, K, Q = self.n_way, self.k_shot, self.n_query
        streams = episode_rng.EpisodeStreams(self.seed, np.arange(start, start + n))
        which = streams.choice(np.full(n, len(self.classes)), W)  # [n, W] positions in classes
        sizes, table = self._sizes, self._table
        picks = np.empty((n, W, K + Q), np.int64)
        for w in range(W):  # class by class in episode order, as each episode's generator
            pos = which[:, w]
            picks[:, w] = table[pos[:, None], streams.choice(sizes[pos], K + Q)]
        return EpisodeBatch(
            W,
            K,
            Q,
            self.classes[which],
            picks[:, :, :K].reshape(n, W * K),
            picks[:, :, K:].reshape(n, W * Q),
            np.zeros((n, W * K), np.int64),  # views: the first (views are not drawn here)
            np.zeros((n, W * Q), np.int64),
        )


def save_episodes(
    path: str | Path, batch: EpisodeBatch, keys: list[str], info: dict[str, Any]
) -> Path:
    """Write an episode list (video keys per support/query slot) as JSON, atomically."""
    path = Path(path)
    E = len(batch)
    W, K, Q = batch.n_way, batch.k_shot, batch.n_query
    episodes = []
    for e in range(E):
        episodes.append(
            {
                "classes": [int(c) for c in batch.classes[e]],
                # (W*K,) -> W lists of K keys; same for queries
                "support": [
                    [keys[r] for r in batch.support_rows[e, w * K : (w + 1) * K]] for w in range(W)
                ],
                "query": [
                    [keys[r] for r in batch.query_rows[e, w * Q : (w + 1) * Q]] for w in range(W)
                ],
            }
        )
    doc = {
        "format": EPISODES_FORMAT,
        "n_way": W,
        "k_shot": K,
        "n_query": Q,
        **info,
        "episodes": episodes,
    }
    return atomic.write_text(path, json.dumps(doc))


def load_episodes(
    path: str | Path,
    keys: list[str],
    usable: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> tuple[EpisodeBatch, dict[str, Any]]:
    """Read an episode list written by :func:`save_episodes` and map its keys to store rows.

    Every slot is checked: the video is in the store (and has features, given ``usable``), is of
    its slot's class (given ``labels``), appears once per episode (no support/query overlap), and
    every slot holds ``k_shot`` / ``n_query`` videos of ``n_way`` distinct classes.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EpisodeError(f"{path}: cannot read episode list ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != EPISODES_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise EpisodeError(f"{path}: not an fsar episode list (format {found!r})")
    try:
        return _parse_episodes(path, doc, keys, usable, labels)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EpisodeError(
            f"{path}: malformed episode list ({type(exc).__name__}: {exc}); write it with "
            "`fsar eval --save-episodes`"
        ) from None


def _parse_episodes(
    path: Path,
    doc: dict[str, Any],
    keys: list[str],
    usable: np.ndarray | None,
    labels: np.ndarray | None,
) -> tuple[EpisodeBatch, dict[str, Any]]:
    row_of = {k: i for i, k in enumerate(keys)}
    W, K, Q = int(doc["n_way"]), int(doc["k_shot"]), int(doc["n_query"])
    if W < 2 or K < 1 or Q < 1:
        raise EpisodeError(f"{path}: n_way {W}, k_shot {K}, n_query {Q}: need >= 2, >= 1, >= 1")

    def rows(groups: list[list[str]], per: int, e: int) -> list[int]:
        out = []
        for g in groups:
            if len(g) != per:
                raise EpisodeError(
                    f"{path}: episode {e} has {len(g)} videos in a slot, expected {per}"
                )
            for k in g:
                if k not in row_of:
                    raise EpisodeError(
                        f"{path}: episode {e} uses video {k!r}, which this cache does not list"
                    )
                r = row_of[k]
                if usable is not None and not usable[r]:
                    raise EpisodeError(
                        f"{path}: episode {e} uses video {k!r}, which has no features"
                    )
                out.append(r)
        return out

    eps = doc["episodes"]
    if not isinstance(eps, list) or not eps:
        raise EpisodeError(f"{path}: holds no episodes")
    for e, ep in enumerate(eps):
        if len(ep["classes"]) != W or len(set(ep["classes"])) != W:
            raise EpisodeError(
                f"{path}: episode {e} needs {W} distinct classes, has {ep['classes']}"
            )
        for part in ("support", "query"):
            if len(ep[part]) != W:
                raise EpisodeError(f"{path}: episode {e} has {len(ep[part])} {part} slots, not {W}")
    classes = np.array([ep["classes"] for ep in eps], dtype=np.int64).reshape(len(eps), W)
    s = np.array([rows(ep["support"], K, e) for e, ep in enumerate(eps)], dtype=np.int64)
    q = np.array([rows(ep["query"], Q, e) for e, ep in enumerate(eps)], dtype=np.int64)
    for e in range(len(eps)):
        used = np.concatenate([s[e], q[e]])
        if len(set(used.tolist())) != len(used):  # support == query scores 100% for free
            twice = [keys[r] for r in used if (used == r).sum() > 1][0]
            raise EpisodeError(
                f"{path}: episode {e} uses video {twice!r} twice (support and query must not "
                "overlap)"
            )
        if labels is not None:
            want = np.concatenate([np.repeat(classes[e], K), np.repeat(classes[e], Q)])
            wrong = np.flatnonzero(labels[used] != want)
            if len(wrong):
                r = int(used[wrong[0]])
                raise EpisodeError(
                    f"{path}: episode {e} puts video {keys[r]!r} (class {int(labels[r])}) in a "
                    f"slot of class {int(want[wrong[0]])}"
                )
    batch = EpisodeBatch(W, K, Q, classes, s, q, np.zeros_like(s), np.zeros_like(q))
    info = {k: v for k, v in doc.items() if k != "episodes"}
    return batch, info
