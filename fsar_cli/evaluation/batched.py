"""The fast evaluator: per-video precompute, batched matching, rank-sharded accuracies.

The hot spot of evaluation (METHOD.md §6) is :func:`episode_accuracies`. Everything that does not
depend on the episode is done once per video: the query encoding (Transformer on the T frame
tokens) and, for 1-shot or merge-after heads, the support encoding with the video's own class text
(in an episode a support video's text token is always the text of its own class, so this is
exact). Per episode only the merge-before prototypes (K > 1) and the matching (cosine +
bidirectional OTAM) remain, batched over blocks of episodes. Per-video work runs in fixed-size
groups of sorted videos and matching in blocks of a fixed maximum size, so the arithmetic does not
depend on the ``chunk`` argument. On CPU with sleeping OpenMP threads (fsar's default) the blocks of
per-video heads are matched by one worker thread per torch thread, each with one torch thread:
the same numbers, without waking a sleeping thread for each of thousands of small operations.

Under ``torchrun`` (:func:`sharded_accuracies`) each rank samples and matches a contiguous range of
episode indices made of whole matching blocks, and encodes its videos in the groups the single
process would use (the union of all ranks' videos, sorted, in fixed-size groups); the per-episode
accuracies are gathered in episode order. Every block and group thus sees the inputs it sees in a
single process, so the result is identical, episode by episode, for any number of ranks.

:func:`loop_episode_accuracies` is the straightforward one-episode-at-a-time evaluator the fast
path is tested and benchmarked against.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .. import distributed
from ..episodes import EpisodeBatch
from ..errors import CacheError, EpisodeError, FsarError
from ..models.base import FewShotHead, check_class_text
from ..models.otam import OTAMMatching
from ..threads import passive_waiting
from .metrics import accuracy

__all__ = [
    "EpisodeVideos",
    "EpisodeScores",
    "SharedEncodings",
    "episode_accuracies",
    "episode_scores",
    "episode_videos",
    "rank_range",
    "sharded_accuracies",
    "sharded_scores",
    "episode_logits",
    "loop_episode_accuracies",
    "class_prototypes",
    "query_logits",
]

_GROUP = 256  # sequences per encoder call: fixed, so an encoding never depends on the batch
#: Episodes per match call at most. OTAM heads on CPU gather and multiply in sub-blocks of
#: ``_PRODUCT_BLOCK`` and align the whole block at once: the alignment's elementwise passes cost
#: less per episode on 512 episodes than on 128 (one 5-way 1-shot block's frame products are
#: 3.3 MB; measured 0.11 s against 0.20 s per 10,000 episodes).
_MATCH_BLOCK = 512
#: OTAM heads on CPU: episodes per gather + frame-product step (one 5-way 1-shot step's
#: gathered features are 1.3 MB per side, which stay in cache; 128 episodes' 10 MB do not).
_PRODUCT_BLOCK = 16
ProgressFn = Callable[..., None]


# --------------------------------------------------------------------------- the fast path


def _has_decomposition(head: FewShotHead) -> bool:
    return all(callable(getattr(head, n, None)) for n in ("encode_query", "prototypes", "match"))


def _per_video_support(head: FewShotHead, k_shot: int) -> bool:
    """Whether prototypes are the mean of per-video ``encode_support`` outputs (1-shot or
    merge-after) and the head implements ``encode_support`` itself (the text head, for one,
    builds its prototypes from text alone and keeps the base class's identity)."""
    from ..models.base import FewShotHead

    if k_shot > 1 and bool(getattr(head, "merge_before", False)):
        return False
    return getattr(type(head), "encode_support", None) is not FewShotHead.encode_support


def _encode_videos(
    fn: Callable[[torch.Tensor, np.ndarray], torch.Tensor],
    features: np.ndarray,
    ids: np.ndarray,
    device: str,
    need: np.ndarray | None = None,
) -> torch.Tensor:
    """Run ``fn`` over videos ``ids`` (flat row * V + view, sorted) in fixed groups -> [U, T, D].

    With ``need`` (bool [U]) groups holding no needed video are skipped (their rows are left
    unset): the groups that run are exactly the ones a call without ``need`` would run.
    """
    V = features.shape[1]
    out: torch.Tensor | None = None
    for a in range(0, len(ids), _GROUP):
        if need is not None and not need[a : a + _GROUP].any():
            continue
        part = ids[a : a + _GROUP]
        x = np.asarray(features[part // V, part % V], dtype=np.float32)  # (G, T, D)
        enc = fn(torch.from_numpy(x).to(device), part)  # (G, T, D)
        if out is None:
            out = enc.new_empty((len(ids), *enc.shape[1:]))  # (U, T, D)
        out[a : a + len(part)] = enc
    if out is None:
        raise EpisodeError("no videos to encode: the episode batch is empty")
    return out


@dataclass(frozen=True)
class EpisodeVideos:
    """The videos the per-video stage encodes, as flat ids ``row * V + view`` (sorted, unique).

    In a single process these are the videos of the batch evaluated; a rank of a distributed
    evaluation gets the union over all ranks, so its encoder groups are the single process's.
    """

    query_ids: np.ndarray  # int64 [Uq]
    support_ids: np.ndarray  # int64 [Us]
    support_classes: np.ndarray  # int64 [Us], global class of each support video

    @staticmethod
    def empty() -> EpisodeVideos:
        z = np.zeros(0, np.int64)
        return EpisodeVideos(z, z, z)

    @staticmethod
    def union(parts: list[EpisodeVideos]) -> EpisodeVideos:
        """All videos of ``parts``; a support's class is the one of its first part (rank order)."""
        q = np.unique(np.concatenate([p.query_ids for p in parts]))
        s_all = np.concatenate([p.support_ids for p in parts])
        c_all = np.concatenate([p.support_classes for p in parts])
        s, first = np.unique(s_all, return_index=True)
        return EpisodeVideos(q, s, c_all[first])


@dataclass
class SharedEncodings:
    """Per-video encodings computed once and reused by several evaluations of one head (e.g. the
    shots of ``fsar eval --shot 1 2 3``): the query encodings, and the own-text support encodings
    of 1-shot / merge-after heads, of every video in ``videos`` (a superset of each batch's).

    The encoder groups are those of ``videos``, not of one batch, so accuracies can differ from a
    separate evaluation of one batch at float-rounding level (a tie broken the other way).
    """

    videos: EpisodeVideos
    query: torch.Tensor | None = None
    support: torch.Tensor | None = None


def episode_videos(batch: EpisodeBatch, num_views: int) -> EpisodeVideos:
    """The query and support videos of ``batch`` (flat ids over ``num_views`` views per video)."""
    V, K = int(num_views), batch.k_shot
    q_ids = np.unique(batch.query_rows * V + batch.query_views)
    s_flat = batch.support_rows * V + batch.support_views  # (E, W*K)
    s_ids, first = np.unique(s_flat, return_index=True)
    s_cls = np.repeat(batch.classes, K, axis=1).reshape(-1)[first]  # (Us,) class of each slot
    return EpisodeVideos(q_ids, s_ids, s_cls.astype(np.int64))


def _positions(ids: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Index of every element of ``flat`` in the sorted ``ids`` (all must be present)."""
    pos = np.searchsorted(ids, flat)
    if pos.size and (pos.max() >= len(ids) or not np.array_equal(ids[pos], flat)):
        raise EpisodeError("internal: an episode uses a video outside the encoded set")
    return pos


def _take(enc: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """``enc[rows]`` for an index array ``rows`` [e, n]: [U, T, D] -> [e, n, T, D]."""
    idx = torch.from_numpy(np.ascontiguousarray(rows).reshape(-1)).to(enc.device)
    return torch.index_select(enc, 0, idx).reshape(*rows.shape, *enc.shape[1:])


def _fast_logits(
    head: FewShotHead,
    features: np.ndarray,
    text: torch.Tensor,
    batch: EpisodeBatch,
    device: str,
    chunk: int,
    videos: EpisodeVideos | None = None,
    shared: SharedEncodings | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yields ``(a, b, logits [b - a, W*Q, W])`` for consecutive blocks of episodes.

    ``videos``: the encoder's video set (default: the batch's own); must contain the batch's.
    ``shared``: encodings to reuse (and fill, for all of its videos, on first use); its videos
    replace ``videos``.
    """
    E, W, K = len(batch), batch.n_way, batch.k_shot
    V = features.shape[1]
    uses_text = bool(getattr(head, "uses_text", False))
    per_video = _per_video_support(head, K)
    if shared is not None:
        videos = shared.videos
    videos = videos if videos is not None else episode_videos(batch, V)

    # Queries: every distinct (video, view) encoded once. (E, W*Q) -> positions in query_ids
    q_ids = videos.query_ids
    q_inv = _positions(q_ids, batch.query_rows * V + batch.query_views)
    q_need: np.ndarray | None = np.zeros(len(q_ids), bool)
    assert q_need is not None
    q_need[q_inv.reshape(-1)] = True
    if shared is not None and shared.query is not None:
        q_enc = shared.query
    else:
        q_need = None if shared is not None else q_need  # shared: encode all, once
        q_enc = _encode_videos(
            lambda x, _ids: head.encode_query(x), features, q_ids, device, q_need
        )
        if shared is not None:
            shared.query = q_enc

    s_enc = s_inv = None
    if per_video:
        # Supports with their own class text; the class of a slot is its episode class.
        s_ids = videos.support_ids
        s_inv = _positions(s_ids, batch.support_rows * V + batch.support_views)  # (E, W*K)
        s_need = np.zeros(len(s_ids), bool)
        s_need[s_inv.reshape(-1)] = True
        cls_of = dict(zip(s_ids.tolist(), videos.support_classes.tolist(), strict=True))

        def enc_support(x: torch.Tensor, ids: np.ndarray) -> torch.Tensor:
            t = text[torch.as_tensor([cls_of[i] for i in ids.tolist()])] if uses_text else None
            return head.encode_support(x, t)

        if shared is not None and shared.support is not None:
            s_enc = shared.support
        else:
            s_enc = _encode_videos(
                enc_support, features, s_ids, device, None if shared is not None else s_need
            )
            if shared is not None:
                shared.support = s_enc

    # OTAM heads get every frame's norm computed once per video, not per pair (the same
    # numbers: a norm reads the same row either way); K > 1 prototypes are means, whose norms
    # are taken per block.
    otam_head = head if isinstance(head, OTAMMatching) else None
    q_norm = q_enc.float().norm(dim=-1) if otam_head else None  # (Uq, T)
    s_norm = s_enc.float().norm(dim=-1) if otam_head and s_enc is not None and K == 1 else None

    supports = None
    if not per_video:
        s_flat = np.unique(batch.support_rows * V + batch.support_views)
        s_feats = _support_features(features, s_flat, device)
        supports = None if s_feats is None else (s_flat, s_feats)

    def protos_of(a: int, b: int) -> torch.Tensor:
        """Per-video prototypes of episodes ``a:b``: (e, W, T, D)."""
        assert s_enc is not None and s_inv is not None
        se = _take(s_enc, s_inv[a:b])  # (e, W*K, T, D)
        protos = se.reshape(b - a, W, K, *se.shape[-2:])  # (e, W, K, T, D)
        return protos[:, :, 0] if K == 1 else protos.mean(dim=2)  # (e, W, T, D)

    # OTAM heads: the matmul runs on small sub-blocks, gathered just before, whose
    # features stay in the CPU's cache; norms, distances and alignment on the whole block.
    sub = _PRODUCT_BLOCK if torch.device(device).type == "cpu" else chunk

    def match_block(a: int, b: int, merged: torch.Tensor | None) -> torch.Tensor:
        """Logits of episodes ``a:b`` (e, W*Q, W); ``merged``: their prototypes unless per video."""
        if otam_head is None or q_norm is None:
            protos = protos_of(a, b) if merged is None else merged
            return head.match(_take(q_enc, q_inv[a:b]), protos)  # (e, W*Q, W)
        parts, proto_norms = [], []
        for c in range(a, b, sub):
            d = min(c + sub, b)
            protos = protos_of(c, d) if merged is None else merged[c - a : d - a]
            parts.append(otam_head.frame_products(_take(q_enc, q_inv[c:d]), protos))
            if s_norm is None:  # means (K > 1) or merged prototypes: their norms here
                proto_norms.append(protos.float().norm(dim=-1))  # (e, W, T)
        products = parts[0] if len(parts) == 1 else torch.cat(parts)  # (e, W*Q*T, W*T)
        if s_norm is not None:
            assert s_inv is not None
            p_norm = _take(s_norm, s_inv[a:b])  # (e, W, T)
        else:
            p_norm = proto_norms[0] if len(proto_norms) == 1 else torch.cat(proto_norms)
        return otam_head.match_products(products, _take(q_norm, q_inv[a:b]), p_norm)

    blocks = [(a, min(a + chunk, E)) for a in range(0, E, chunk)]
    workers = _matching_workers(head, K, device)
    if workers > 1:
        yield from _threaded_blocks(match_block, blocks, workers)
        return
    for a, b in blocks:
        merged = None
        if not per_video:
            merged = _prototypes(
                head, features, text, batch.slice(a, b), device, supports
            )  # (e, W, T, D)
        yield a, b, match_block(a, b, merged)


def _matching_workers(head: FewShotHead, k_shot: int, device: str) -> int:
    """Worker threads the evaluator matches ``head``'s ``k_shot`` blocks in: those of
    :func:`_match_workers` for the OTAM heads' float32 matching of per-video prototypes, else 1
    (merged prototypes run the Transformer per block; worker threads do not inherit autocast)."""
    if not (_per_video_support(head, k_shot) and isinstance(head, OTAMMatching)):
        return 1
    return 1 if torch.is_autocast_enabled("cpu") else _match_workers(device)


def _match_workers(device: str) -> int:
    """Worker threads for the matching stage of per-video heads: one per torch thread on CPU
    when idle OpenMP threads sleep (``OMP_WAIT_POLICY=passive``, fsar's default), else 1 (the
    blocks then run in the calling thread with all its torch threads).

    Each worker matches whole blocks with one torch thread: its gathers, products and alignment
    are thousands of small operations, and with sleeping OpenMP threads each of them would wait
    for a thread to wake. With busy-waiting threads the caller's idle pool would spin on the
    workers' cores instead, so they are not used then.
    """
    if torch.device(device).type != "cpu" or not passive_waiting():
        return 1
    return max(1, torch.get_num_threads())


def _threaded_blocks(
    fn: Callable[[int, int, torch.Tensor | None], torch.Tensor],
    blocks: list[tuple[int, int]],
    workers: int,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(a, b, fn(a, b, None))`` for every block, in order, computed by ``workers`` threads
    with one torch thread each, at most two blocks ahead per worker.

    The numbers are those of the calling thread: each operation of a block is elementwise or
    one matrix product per episode, whatever the thread count (a test checks bit equality).
    """
    threads = torch.get_num_threads()

    def run(a: int, b: int) -> torch.Tensor:
        with torch.inference_mode():  # grad mode is per thread
            return fn(a, b, None)

    # one torch thread per worker: OpenMP's and MKL's count is each thread's own setting
    pool = ThreadPoolExecutor(
        workers, thread_name_prefix="fsar-match", initializer=torch.set_num_threads, initargs=(1,)
    )
    todo = iter(blocks)
    pending: deque[tuple[int, int, Future[torch.Tensor]]] = deque()

    def submit(n: int) -> None:
        for a, b in itertools.islice(todo, n):
            pending.append((a, b, pool.submit(run, a, b)))

    try:
        submit(2 * workers)
        while pending:
            a, b, job = pending.popleft()
            out = job.result()
            submit(1)
            yield a, b, out
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        # torch keeps the last set_num_threads as the count for threads it starts later
        torch.set_num_threads(threads)


#: Supports of merge-before prototypes are read from a float32 copy of the batch's support videos
#: while it stays under this size (else from the store, episode by episode, as before).
_SUPPORT_COPY_BYTES = 1 << 30


def _support_features(features: np.ndarray, ids: np.ndarray, device: str) -> torch.Tensor | None:
    """float32 ``[U, T, D]`` features of the flat video ids ``ids`` (sorted), or None if too big.

    The same values as gathering them per episode (float16 -> float32 is exact), read once: a
    5-shot evaluation otherwise converts every support of every episode (25 per 5-way episode).
    """
    V, T, D = features.shape[1:]
    if len(ids) * T * D * 4 > _SUPPORT_COPY_BYTES:
        return None
    return torch.from_numpy(np.asarray(features[ids // V, ids % V], np.float32)).to(device)


def _prototypes(
    head: FewShotHead,
    features: np.ndarray,
    text: torch.Tensor,
    batch: EpisodeBatch,
    device: str,
    supports: tuple[np.ndarray, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``head.prototypes`` of a chunk of episodes (merge-before, text-only), in fixed groups.

    ``supports``: (sorted flat ids, their float32 features) from :func:`_support_features`, read
    instead of the store. Returns [e, W, T, D].
    """
    uses_text = bool(getattr(head, "uses_text", False))
    W, K = batch.n_way, batch.k_shot
    V = features.shape[1]
    step = max(1, _GROUP // W)
    out = []
    for a in range(0, len(batch), step):
        part = batch.slice(a, min(a + step, len(batch)))
        if supports is not None:
            ids, feats = supports
            pos = _positions(ids, part.support_rows * V + part.support_views)  # (g, W*K)
            s = _take(feats, pos)  # (g, W*K, T, D)
        else:
            s_np, _ = part.gather(features)  # (g, W*K, T, D)
            s = torch.from_numpy(s_np).to(device)
        s = s.reshape(len(part), W, K, *s.shape[-2:])  # (g, W, K, T, D)
        t = text[torch.from_numpy(part.classes)] if uses_text else None  # (g, W, D)
        out.append(head.prototypes(s, t))
    return torch.cat(out)


@contextmanager
def _evaluating(head: FewShotHead) -> Iterator[None]:
    """Eval mode under ``torch.inference_mode``; the head's train/eval mode is restored after."""
    was_training = head.training
    head.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        head.train(was_training)


@dataclass
class EpisodeScores:
    """Per-episode accuracies and the per-query predictions they come from.

    Attributes:
        accuracies: float64 [E], fraction of correct queries per episode.
        predictions: int8 [E, W*Q], the predicted episode label (arg-max) of every query slot;
            the true label of slot j is ``j // Q`` (slots are class-major).
        classes: int64 [E, W], the split class id of each episode label.
    """

    accuracies: np.ndarray
    predictions: np.ndarray
    classes: np.ndarray


def episode_scores(
    head: FewShotHead,
    features: np.ndarray,
    text: np.ndarray,
    batch: EpisodeBatch,
    *,
    device: str = "cpu",
    chunk: int = 500,
    on_progress: ProgressFn | None = None,
    videos: EpisodeVideos | None = None,
    shared: SharedEncodings | None = None,
) -> EpisodeScores:
    """:func:`episode_accuracies` plus every query's predicted episode label (same cost: the
    arg-max is taken once and gives both). ``shared``: see :class:`SharedEncodings`."""
    if not _has_decomposition(head):
        raise TypeError(
            f"{type(head).__name__} lacks encode_query/prototypes/match (subclass FewShotHead)"
        )
    check_class_text(head, text, batch.classes, error=CacheError)
    if batch.n_way > 127:
        raise EpisodeError(f"n_way = {batch.n_way}: predictions are stored as int8 (at most 127)")
    with _evaluating(head):
        t = torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32)).to(device)
        step = max(1, min(int(chunk), _MATCH_BLOCK))
        labels = batch.query_labels
        accs = np.empty(len(batch), dtype=np.float64)
        preds = np.empty(labels.shape, dtype=np.int8)
        blocks = _fast_logits(head, features, t, batch, device, step, videos, shared)
        for a, b, logits in blocks:
            pred = logits.float().cpu().numpy().argmax(axis=-1)  # (e, W*Q), as metrics.accuracy
            preds[a:b] = pred
            accs[a:b] = (pred == labels[a:b]).mean(axis=-1)
            if on_progress is not None:
                on_progress(b - a)
        return EpisodeScores(accs, preds, np.asarray(batch.classes, np.int64))


def episode_accuracies(
    head: FewShotHead,
    features: np.ndarray,
    text: np.ndarray,
    batch: EpisodeBatch,
    *,
    device: str = "cpu",
    chunk: int = 500,
    on_progress: ProgressFn | None = None,
    videos: EpisodeVideos | None = None,
) -> np.ndarray:
    """Accuracy of every episode of ``batch`` (the fast evaluator).

    The head is evaluated in eval mode under ``torch.inference_mode`` (its train/eval mode is
    restored afterwards). Gives the same per-episode accuracies as :func:`loop_episode_accuracies`.

    Args:
        head: a head from :func:`fsar_cli.models.create_head` (on ``device``).
        features: a store's [videos, V, T, D] array (memmap; float16 is fine).
        text: the store's [C, D] class text table (row = class id).
        batch: the episodes (store rows).
        chunk: at most this many episodes are matched per step (bounds memory; results do not
            depend on it).
        on_progress: called with the number of episodes finished after each chunk.
        videos: the per-video stage's video set, a superset of the batch's (default: the
            batch's); a rank of a distributed evaluation passes the union over all ranks.
    Returns:
        float64 [E], fraction of correct queries per episode.
    """
    return episode_scores(
        head,
        features,
        text,
        batch,
        device=device,
        chunk=chunk,
        on_progress=on_progress,
        videos=videos,
    ).accuracies


# --------------------------------------------------------------------------- across ranks


def rank_range(n_episodes: int, chunk: int, d: distributed.Dist) -> tuple[int, int]:
    """This rank's contiguous episodes ``[a, b)`` of ``n_episodes``, in whole matching blocks.

    Blocks are those of a single process evaluating with ``chunk`` (``min(chunk, 512)`` episodes
    from episode 0), so each rank's blocks are the single process's. A rank may get none.
    """
    step = max(1, min(int(chunk), _MATCH_BLOCK))
    lo, hi = d.split(-(-int(n_episodes) // step))  # in blocks
    return min(lo * step, n_episodes), min(hi * step, n_episodes)


def sharded_accuracies(
    head: FewShotHead,
    features: np.ndarray,
    text: np.ndarray,
    episodes: Callable[[int, int], EpisodeBatch],
    n_episodes: int,
    d: distributed.Dist,
    *,
    device: str = "cpu",
    chunk: int = 500,
    on_progress: ProgressFn | None = None,
) -> np.ndarray:
    """:func:`episode_accuracies` of episodes ``0 .. n_episodes-1`` split across the ranks of ``d``.

    Each rank builds only its range (:func:`rank_range`) with ``episodes(a, b)``, encodes its
    videos in the single process's groups and matches its blocks; every rank gets all
    accuracies, in episode order, identical to a single process's. Collective: every rank calls
    it; an error on any rank is raised on all of them. In a single process it is
    ``episode_accuracies(head, features, text, episodes(0, n_episodes))``.

    Args:
        episodes: ``episodes(a, b)`` -> the batch of episodes ``a .. b-1`` (e.g.
            ``lambda a, b: sampler.sample(b - a, start=a)``).
        on_progress: advanced by this rank's finished episodes.
    Returns:
        float64 [n_episodes].
    """
    return sharded_scores(
        head,
        features,
        text,
        episodes,
        n_episodes,
        d,
        device=device,
        chunk=chunk,
        on_progress=on_progress,
    ).accuracies


def sharded_scores(
    head: FewShotHead,
    features: np.ndarray,
    text: np.ndarray,
    episodes: Callable[[int, int], EpisodeBatch],
    n_episodes: int,
    d: distributed.Dist,
    *,
    device: str = "cpu",
    chunk: int = 500,
    on_progress: ProgressFn | None = None,
) -> EpisodeScores:
    """:func:`sharded_accuracies` with the per-query predictions (:class:`EpisodeScores`),
    gathered in episode order on every rank."""
    V = features.shape[1]
    a, b = rank_range(n_episodes, chunk, d)
    batch: EpisodeBatch | None = None
    mine, error = EpisodeVideos.empty(), None
    try:
        if b > a:
            batch = episodes(a, b)
            check_class_text(head, text, batch.classes, error=CacheError)
            mine = episode_videos(batch, V)
    except FsarError as exc:
        error = exc
    parts = d.all_gather_object((mine, error))
    _raise_first([e for _, e in parts])
    videos = EpisodeVideos.union([v for v, _ in parts]) if d.enabled else None
    scores: EpisodeScores | None = None
    error = None
    try:
        if batch is not None:
            scores = episode_scores(
                head,
                features,
                text,
                batch,
                device=device,
                chunk=chunk,
                on_progress=on_progress,
                videos=videos,
            )
    except FsarError as exc:
        error = exc
    gathered = d.all_gather_object((scores, error))
    _raise_first([e for _, e in gathered])
    got = [s for s, _ in gathered if s is not None]  # rank order = episode order
    if not got or sum(len(s.accuracies) for s in got) != n_episodes:
        n = sum(len(s.accuracies) for s in got)
        raise EpisodeError(f"internal: gathered {n} accuracies for {n_episodes} episodes")
    return EpisodeScores(
        np.concatenate([s.accuracies for s in got]),
        np.concatenate([s.predictions for s in got]),
        np.concatenate([s.classes for s in got]),
    )


def _raise_first(errors: list[FsarError | None]) -> None:
    for err in errors:
        if err is not None:
            raise err


# --------------------------------------------------------------------------- logits, reference loop


def episode_logits(
    head: FewShotHead,
    features: np.ndarray,
    text: np.ndarray,
    batch: EpisodeBatch,
    *,
    device: str = "cpu",
    chunk: int = 500,
) -> np.ndarray:
    """The fast evaluator's logits (as :func:`episode_accuracies`, before the arg-max).

    Returns:
        float32 [E, W*Q, W]; column j is episode class j (``batch.classes[:, j]``).
    """
    check_class_text(head, text, batch.classes, error=CacheError)
    with _evaluating(head):
        t = torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32)).to(device)
        step = max(1, min(int(chunk), _MATCH_BLOCK))
        blocks = _fast_logits(head, features, t, batch, device, step)
        return np.concatenate([lg.float().cpu().numpy() for _, _, lg in blocks])


def class_prototypes(
    head: FewShotHead,
    support: np.ndarray,
    labels: np.ndarray,
    text: np.ndarray,
    *,
    device: str = "cpu",
) -> torch.Tensor:
    """Prototypes of C classes from labelled support clips, as the fast evaluator builds them.

    The arithmetic is the evaluator's (:func:`episode_logits`): per-video support encodings with
    the video's own class text in the same fixed groups for 1-shot and merge-after heads, else
    ``head.prototypes`` on the grouped shots. Classes may have different numbers of shots (each
    class is then averaged on its own); with equal shots and class-major support order the
    result is exactly that of an episode whose class ``c`` is column ``c``.

    Args:
        support: [S, T, D] support features (float16 as cached is fine).
        labels: int64 [S], class index of each support clip (0..C-1, every class present).
        text: float32 [C, D], text feature of each class.
    Returns:
        [C, T, D] prototypes on ``device``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    C = len(text)
    shots = np.bincount(labels, minlength=C)
    if (shots == 0).any() or len(shots) != C:
        raise EpisodeError(f"every class needs a support clip; shots per class: {shots.tolist()}")
    check_class_text(head, text, np.arange(C), error=CacheError)
    order = np.argsort(labels, kind="stable")  # class-major, as an episode's slots
    equal = bool((shots == shots[0]).all())
    uses_text = bool(getattr(head, "uses_text", False))
    with _evaluating(head):
        t = torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32)).to(device)
        feats = np.asarray(support)[:, None]  # [S, 1, T, D]: one view
        if _per_video_support(head, int(shots.max())):
            lab = torch.from_numpy(labels)

            def enc_support(x: torch.Tensor, ids: np.ndarray) -> torch.Tensor:
                return head.encode_support(x, t[lab[ids]] if uses_text else None)

            ids = np.arange(len(labels))
            s_enc = _encode_videos(enc_support, feats, ids, device)  # [S, T, D]
            if equal:
                K = int(shots[0])
                se = _take(s_enc, order[None])  # [1, C*K, T, D]
                protos = se.reshape(1, C, K, *se.shape[-2:])
                return (protos[:, :, 0] if K == 1 else protos.mean(dim=2))[0]
            return torch.stack(
                [s_enc[torch.from_numpy(order[labels[order] == c])].mean(0) for c in range(C)]
            )
        tt = t if uses_text else None
        if equal:
            s = np.asarray(feats[order, 0], dtype=np.float32)  # [C*K, T, D]
            s_t = torch.from_numpy(s).to(device).reshape(1, C, int(shots[0]), *s.shape[-2:])
            return head.prototypes(s_t, None if tt is None else tt[None])[0]
        out = []
        for c in range(C):
            s = np.asarray(feats[labels == c, 0], dtype=np.float32)  # [K_c, T, D]
            s_t = torch.from_numpy(s).to(device)[None, None]  # [1, 1, K_c, T, D]
            out.append(head.prototypes(s_t, None if tt is None else tt[c][None, None])[0, 0])
        return torch.stack(out)


def query_logits(
    head: FewShotHead, queries: np.ndarray, protos: torch.Tensor, *, device: str = "cpu"
) -> np.ndarray:
    """Logits of query clips against class prototypes, with the fast evaluator's arithmetic.

    Queries are encoded in the evaluator's fixed groups of sequences and matched in blocks of
    the same size, so scoring ``queries`` in consecutive blocks of that size gives the same
    values as scoring them at once.

    Args:
        queries: [N, T, D] query features (float16 as cached is fine).
        protos: [C, T, D] from :func:`class_prototypes`.
    Returns:
        float32 [N, C].
    """
    N = len(queries)
    if N == 0:
        return np.zeros((0, len(protos)), np.float32)
    with _evaluating(head):
        feats = np.asarray(queries)[:, None]  # [N, 1, T, D]
        q_enc = _encode_videos(
            lambda x, _ids: head.encode_query(x), feats, np.arange(N), device
        )  # [N, T, D]
        out = [
            head.match(q_enc[a : a + _GROUP][None], protos[None])[0].float().cpu().numpy()
            for a in range(0, N, _GROUP)
        ]
        return np.concatenate(out)


def loop_episode_accuracies(
    head: FewShotHead,
    features: np.ndarray,
    text: np.ndarray,
    batch: EpisodeBatch,
    *,
    device: str = "cpu",
) -> np.ndarray:
    """The straightforward evaluator: ``head.episode_logits`` on one episode at a time.

    Slow; the reference the fast path is tested and benchmarked against. Returns float64 [E].
    """
    accs = np.empty(len(batch), dtype=np.float64)
    with _evaluating(head):
        for e in range(len(batch)):
            s, q = batch.slice(e, e + 1).gather(features)  # (1, W*K, T, D), (1, W*Q, T, D)
            logits = head.episode_logits(
                torch.from_numpy(s[0]).to(device),
                torch.from_numpy(batch.support_labels[e]).to(device),
                torch.from_numpy(q[0]).to(device),
                torch.from_numpy(np.asarray(text[batch.classes[e]], np.float32)).to(device),
            )  # (W*Q, W)
            accs[e] = accuracy(logits.float().cpu().numpy(), batch.query_labels[e])
    return accs
