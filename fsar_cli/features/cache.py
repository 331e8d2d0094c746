"""``fsar cache``: per-frame CLIP features of every video of a split, computed once, stored on disk.

What is cached (METHOD.md sections 1 and 7, frozen mode): for each video of a split, ``V`` views
(``features.views.<split>``), each ``T`` frames (``features.num_frames``) sampled one per equal
segment (``features.sampling.<split>``: ``center`` or ``random``), resized to ``resize x resize``,
cropped ``crop x crop`` (random crop for ``train``, centre crop for ``val`` and ``test``; the same
crop for all frames of a view), normalised, and encoded by CLIP's image tower. Random draws come
from (``features.seed``, split, video key, view) alone, so the result does not depend on order,
worker count, sharding or resumption.

Output: ``<features.cache_dir>/<split>/`` in the feature-store format (:mod:`.store`; its
``meta.json`` also records ``settings``, what a rerun is compared against), and the recipe that
made the cache as ``resolved_recipe.yaml`` in ``cache_dir``.

Never mixed: a finished store or unfinished work made with different settings (encoder, weights,
device precision, sampling, views, sizes, seed, prompt, class names, split entries) is refused with
a :class:`CacheError` that names the setting.

Crash-safe and resumable: work is committed in chunks of ``features.chunk_videos`` consecutive
videos, ``<split>/.work/chunk-<start>-<end>.npz``, each written aside and renamed into place, next
to ``.work/settings.json``. A rerun after a crash or ``kill -9`` encodes only the missing chunks;
batches never span chunks, so the result is byte-identical to an uninterrupted run (same device
and thread count). When every chunk is present, the store is assembled with
:func:`fsar_cli.features.store.write_store` (atomic) and ``.work`` goes away.

Sharding: ``shard=(i, n)`` encodes chunks ``i, i+n, i+2n, ...`` into the shared ``.work`` folder;
whichever process finds every chunk present assembles the store (a lock file makes that one
process). ``n`` processes, or torchrun ranks (``i = RANK``, ``n = WORLD_SIZE``), can run at once on
a shared file system; rerunning any shard, or an unsharded run, finishes and assembles what is left.
An unsharded run and sharded ones never run into one store at once (:mod:`fsar_cli.locks`: the
unsharded run holds the store's lock exclusively, the shards hold it shared).

Under ``torchrun`` (:mod:`fsar_cli.distributed`) the shard is ``(RANK, WORLD_SIZE)`` by itself:
rank 0 plans first (recovering and creating the ``.work`` folders), every rank encodes its chunks,
all wait at a barrier (a long one: shares finish at different times), and rank 0 assembles the
stores. A rank that dies leaves every committed chunk in place (torchrun stops the others); a
rerun, with any number of processes, encodes only the missing chunks.

Speed: ``features.workers`` threads (``auto``: 2 on CPU, the cores on a GPU; see
:func:`fsar_cli.threads.decode_workers`) decode and preprocess videos (OpenCV and torch release the
GIL) ahead of the encoder into a bounded queue; the encoder takes ``features.batch_size`` frames at
a time under ``torch.inference_mode`` (fp16 autocast and pinned memory on CUDA). Memory is bounded
by the batch and queue sizes, not by the dataset.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .. import __version__, distributed, locks
from ..data.extract import read_marker
from ..data.frames import FRAME_EXTS
from ..data.preprocess import CLIP_MEAN, CLIP_STD, INTERPOLATION, ViewSpec, load_views
from ..data.sources import locate
from ..data.splits import SplitEntry, load_split
from ..errors import CacheError, DataError
from ..ownership import claim, foreign_entries
from ..recipe import SPLITS, Recipe
from ..threads import decode_workers
from .store import (
    INDEX_COLUMNS,
    WORK_DIR,
    acquire_lock,
    chunk_path,
    read_chunk,
    recover_store,
    store_path,
    write_chunk,
    write_settings_once,
    write_store,
)

if TYPE_CHECKING:
    from ..encoders.clip import Encoder

__all__ = [
    "cache_features",
    "CacheResult",
    "SplitSummary",
    "CROP_MODES",
    "FrameBatcher",
    "parse_shard",
    "prefetch",
]

log = logging.getLogger(__name__)

#: METHOD.md section 1: random crop in training, centre crop in testing.
CROP_MODES = {"train": "random", "val": "center", "test": "center"}
_WORK_ONLY = ("chunk_videos",)  # settings that shape unfinished work but not a finished store
_SHARE_WAIT = timedelta(hours=24)  # how long torchrun ranks wait for each other's shares


@dataclass
class SplitSummary:
    """What happened to one split."""

    split: str
    path: Path
    videos: int  # videos of the split (of this shard's chunks while unfinished)
    ok: int
    failed: int
    missing: int
    encoded: int  # videos processed (encoded, or found missing/failed) by this run
    frames: int  # frames encoded by this run
    seconds: float
    state: str  # "cached", "already cached", or "waiting for other shards (...)"
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason), first few

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class CacheResult:
    """The outcome of :func:`cache_features`."""

    cache_dir: Path
    encoder: str
    encoder_label: str
    is_random: bool
    weights_sha256: str
    device: str
    shard: tuple[int, int] | None
    splits: dict[str, SplitSummary]


@dataclass
class _Plan:
    split: str
    entries: list[SplitEntry]
    names: list[str | None]
    spec: ViewSpec
    settings: dict[str, Any]
    store_dir: Path
    chunks: list[tuple[int, int]]
    mine: list[int]
    todo: list[int]
    complete: bool
    batch_size: int

    @property
    def work(self) -> Path:
        return self.store_dir / WORK_DIR


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise CacheError(f"--shard {text!r} is not i/n (example: --shard 0/4)") from None
    if n < 1 or not 0 <= i < n:
        raise CacheError(f"--shard {text!r}: need 0 <= i < n (example: --shard 0/4)")
    return i, n


# --------------------------------------------------------------------------- settings


def _settings(
    recipe: Recipe, split: str, encoder: Encoder, entries: list[SplitEntry], names: list[str | None]
) -> dict[str, Any]:
    import hashlib

    f = recipe.features
    listing = "\n".join(f"{e.key}\t{e.class_id}" for e in entries).encode()
    return {
        "encoder": encoder.name,
        "encoder_random": encoder.is_random,
        "text_encoder_random": encoder.text_random,
        "weights_sha256": encoder.weights_sha256,
        "precision": encoder.precision,
        "source": f.source,
        "num_frames": f.num_frames,
        "sampling": f.sampling.for_split(split),
        "crop_mode": CROP_MODES[split],
        "views": f.views.for_split(split),
        "resize": f.resize,
        "crop": f.crop,
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "interpolation": INTERPOLATION,
        "seed": f.seed,
        "prompt": f.prompt,
        "class_names": list(names),
        "split": split,
        "entries_sha256": hashlib.sha256(listing).hexdigest(),
        "chunk_videos": f.chunk_videos,
    }


_LABELS = {
    "encoder": "features.encoder (--encoder)",
    "encoder_random": "random vs. real encoder weights",
    "text_encoder_random": "random vs. real text tower",
    "weights_sha256": "the encoder weights' SHA-256 (features.weights / --weights)",
    "precision": "the encoder precision (--device: cpu runs fp32, cuda fp16 autocast)",
    "source": "features.source",
    "num_frames": "features.num_frames",
    "sampling": "features.sampling.{split}",
    "crop_mode": "the crop mode",
    "views": "features.views.{split}",
    "resize": "features.resize",
    "crop": "features.crop",
    "interpolation": "the resize interpolation (fsar version)",
    "seed": "features.seed",
    "prompt": "features.prompt",
    "class_names": "data.classes.{split}",
    "entries_sha256": "the entries of the split file",
    "chunk_videos": "features.chunk_videos",
}


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


_SPACE_MARGIN = 1 << 20  # index, text features, metadata


def _check_same(old: dict[str, Any], new: dict[str, Any], where: Path, split: str) -> None:
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key) != new.get(key):
            label = _LABELS.get(key, key).format(split=split)
            raise CacheError(
                f"{where} was made with different settings: {label} was {_short(old.get(key))}, "
                f"this run has {_short(new.get(key))}. A cache never mixes settings: use another "
                f"features.cache_dir (--set features.cache_dir=...) or delete {where}"
            )


# --------------------------------------------------------------------------- planning


def _plan(recipe: Recipe, split: str, encoder: Encoder, shard: tuple[int, int] | None) -> _Plan:
    if split not in SPLITS:
        raise CacheError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    entries = load_split(recipe, split)
    names = list(recipe.data.classes.for_split(split))
    n_classes = max([len(names)] + [e.class_id + 1 for e in entries])
    names += [None] * (n_classes - len(names))
    f = recipe.features
    spec = ViewSpec(
        split,
        f.num_frames,
        f.views.for_split(split),
        f.sampling.for_split(split),
        CROP_MODES[split],
        f.resize,
        f.crop,
        f.seed,
    )
    settings = _settings(recipe, split, encoder, entries, names)
    store_dir = store_path(os.path.expanduser(f.cache_dir), split)
    recover_store(store_dir)
    cv = f.chunk_videos
    chunks = [(s, min(s + cv, len(entries))) for s in range(0, len(entries), cv)]
    mine = [c for c in range(len(chunks)) if shard is None or c % shard[1] == shard[0]]
    plan = _Plan(
        split, entries, names, spec, settings, store_dir, chunks, mine, [], False, f.batch_size
    )
    if (store_dir / "meta.json").is_file():
        try:
            old = json.loads((store_dir / "meta.json").read_text()).get("settings")
        except (OSError, ValueError, AttributeError) as exc:
            raise CacheError(
                f"{store_dir / 'meta.json'} is unreadable ({type(exc).__name__}); nothing was "
                f"changed: move {store_dir} away or use another features.cache_dir"
            ) from None
        if old is None:
            raise CacheError(
                f"{store_dir} holds a feature store not made by `fsar cache` (no settings in its "
                f"meta.json); use another features.cache_dir or delete {store_dir}"
            )
        strip = {k: v for k, v in settings.items() if k not in _WORK_ONLY}
        _check_same({k: v for k, v in old.items() if k not in _WORK_ONLY}, strip, store_dir, split)
        plan.complete = True
        return plan
    # the finished store replaces the whole folder: anything but fsar's .work would be lost
    claim(
        store_dir,
        kind="dir",
        ours=lambda p: not foreign_entries(p, lambda n: n == WORK_DIR),
        what="feature store folder",
        way_out=f"move those files out of {store_dir}, or use another features.cache_dir "
        "(--set features.cache_dir=...)",
    )
    plan.work.mkdir(parents=True, exist_ok=True)
    settings_file = plan.work / "settings.json"
    if not settings_file.exists():
        write_settings_once(settings_file, settings)
    _check_same(json.loads(settings_file.read_text()), settings, plan.work, split)
    plan.todo = [c for c in mine if not chunk_path(plan.work, *chunks[c]).exists()]
    return plan


# --------------------------------------------------------------------------- the pipeline


@dataclass
class _Loaded:
    record: dict[str, Any]
    frames: torch.Tensor | None  # uint8 [V, T, 3, C, C], None unless status ok


def _load(recipe: Recipe, plan: _Plan, row: int) -> _Loaded:
    entry = plan.entries[row]
    loc = locate(recipe, entry)
    source, tried = loc.path, loc.tried
    rec: dict[str, Any] = {
        "key": entry.key,
        "video_id": entry.video_id,
        "class_id": entry.class_id,
        "class_name": plan.names[entry.class_id] or "",
        "source": str(source or tried[0]),
        "frames_available": 0,
        "status": "ok",
        "reason": "",
    }
    if source is None:
        rec.update(status="missing", reason=f"no {loc.kind} at {', '.join(map(str, tried[:3]))}")
        return _Loaded(rec, None)
    try:
        _check_complete(source)
        frames, n = load_views(source, entry.key, plan.spec)
    except Exception as exc:  # DataError, cv2.error, OSError: the video is recorded as failed
        reason = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
        rec.update(status="failed", reason=reason.splitlines()[0] if reason else "failed")
        if source.is_dir():
            rec["frames_available"] = sum(p.suffix.lower() in FRAME_EXTS for p in source.iterdir())
        return _Loaded(rec, None)
    rec["frames_available"] = n
    return _Loaded(rec, frames)


def _check_complete(source: Path) -> None:
    """A frame folder fsar extracted must still hold the frames its marker counted: a gap (a
    deleted frame) shifts every later frame and is refused, as `fsar data check` does."""
    if not source.is_dir():
        return
    marker = read_marker(source)
    if marker is None:
        return
    n = sum(1 for p in source.iterdir() if p.suffix.lower() in FRAME_EXTS and p.is_file())
    if marker.get("frames") != n:
        raise DataError(
            f"{source}: holds {n} frames but its extraction marker says {marker.get('frames')} "
            "(frames were deleted or added); re-extract it with `fsar extract --overwrite`"
        )


def prefetch(
    fn: Callable[[int], Any], rows: Iterable[int], workers: int, ahead: int
) -> Generator[Any, None, None]:
    """``fn(row)`` for each row, in order, computed up to ``ahead`` rows early by worker threads."""
    if workers <= 0:
        yield from map(fn, rows)
        return
    it = iter(rows)
    queue: deque[Future[Any]] = deque()
    main_threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, "fsar-decode", initializer=_single_threaded) as pool:
            try:
                for row in it:
                    queue.append(pool.submit(fn, row))
                    if len(queue) >= ahead:
                        break
                while queue:
                    done = queue.popleft()
                    nxt = next(it, None)
                    if nxt is not None:
                        queue.append(pool.submit(fn, nxt))
                    yield done.result()
            finally:  # stopped early (error, interrupt): drop the queued work
                for fut in queue:
                    fut.cancel()
    finally:
        torch.set_num_threads(main_threads)  # the default for threads started later (see below)


def _single_threaded() -> None:
    """Decode workers run torch ops (resizing) on one thread each, leaving the cores to the encoder.

    With torch's OpenMP backend the thread count is per thread (the encoder's thread keeps its
    own); torch also stores it as the default for threads that start later, which
    :func:`prefetch` restores when its workers are done.
    """
    torch.set_num_threads(1)


def _encode_chunks(
    recipe: Recipe, plan: _Plan, encoder: Encoder, advance: Callable[..., None], t0: float
) -> tuple[int, int]:
    """Encode this run's chunks of one split and commit each. Returns (videos, frames) encoded."""
    f = recipe.features
    rows = [r for c in plan.todo for r in range(*plan.chunks[c])]
    per_batch = -(-f.batch_size // (plan.spec.views * plan.spec.num_frames))  # videos, rounded up
    workers = decode_workers(f.workers, encoder.device)
    ahead = 2 * workers + per_batch  # queue bound: a batch's worth of videos + 2 per worker
    stream = prefetch(lambda r: _load(recipe, plan, r), rows, workers, max(ahead, 2))
    try:
        return _encode_stream(plan, encoder, stream, advance, t0)
    finally:
        stream.close()  # stops the workers and restores torch's thread count


class FrameBatcher:
    """Encodes clips' frames in batches of exactly ``batch_size`` frames, whatever the clip sizes.

    ``add`` clips (uint8 ``[V, T, 3, C, C]``) as they arrive; full batches are encoded at once, so
    at most one batch plus one clip is held. ``finish`` encodes the rest and returns the features
    of every clip added since the last ``finish`` as float16 ``[clips, V, T, D]``: the values the
    cache stores (``fsar predict`` encodes its clips with this same code).
    """

    def __init__(self, encoder: Encoder, batch_size: int) -> None:
        self.encoder, self.batch_size = encoder, int(batch_size)
        self._pending: list[torch.Tensor] = []
        self._n_pending = 0
        self._outs: list[torch.Tensor] = []
        self._shapes: list[tuple[int, int]] = []

    def add(self, frames: torch.Tensor) -> None:
        V, T = int(frames.shape[0]), int(frames.shape[1])
        self._shapes.append((V, T))
        self._pending.append(frames.flatten(0, 1))  # [V, T, 3, C, C] -> [V*T, 3, C, C]
        self._n_pending += V * T
        bs = self.batch_size
        while self._n_pending >= bs:
            buf = torch.cat(self._pending)
            self._outs.append(self.encoder.encode_uint8(buf[:bs]))
            self._pending = [buf[bs:]] if len(buf) > bs else []
            self._n_pending = len(buf) - bs

    def finish(self) -> np.ndarray:
        """float16 [clips, V, T, D] of the clips added since the last call (all of one shape)."""
        if self._pending:
            self._outs.append(self.encoder.encode_uint8(torch.cat(self._pending)))
        shapes, outs = self._shapes, self._outs
        self._pending, self._n_pending, self._outs, self._shapes = [], 0, [], []
        D = self.encoder.dim
        if not shapes:
            return np.zeros((0, 1, 1, D), dtype=np.float16)
        if len(set(shapes)) > 1:
            raise CacheError(f"internal: clips of different shapes in one batch: {set(shapes)}")
        V, T = shapes[0]
        return torch.cat(outs).view(len(shapes), V, T, D).numpy().astype(np.float16)


def _encode_stream(
    plan: _Plan,
    encoder: Encoder,
    stream: Iterator[_Loaded],
    advance: Callable[..., None],
    t0: float,
) -> tuple[int, int]:
    V, T, D = plan.spec.views, plan.spec.num_frames, encoder.dim
    n_videos = n_frames = 0
    batcher = FrameBatcher(encoder, plan.batch_size)
    for c in plan.todo:
        start, end = plan.chunks[c]
        records, ok_rows = [], []
        for row in range(start, end):
            item = next(stream)
            records.append(item.record)
            if item.frames is not None:
                ok_rows.append(row - start)
                batcher.add(item.frames)  # batches never span chunks: resumes are byte-identical
                n_frames += V * T
            n_videos += 1
            rate = n_frames / max(time.perf_counter() - t0, 1e-9)
            advance(1, label=f"{plan.split}: {rate:.1f} frames/s")
        feats = np.zeros((end - start, V, T, D), dtype=np.float16)
        encoded = batcher.finish()
        if ok_rows:  # [n_ok, V, T, D]
            feats[ok_rows] = encoded
        path = chunk_path(plan.work, start, end)
        with _disk_errors(path, plan):
            write_chunk(path, feats, records, plan.settings)
    return n_videos, n_frames


# --------------------------------------------------------------------------- finalising


def _text_features(
    encoder: Encoder, names: list[str | None], prompt: str, split: str
) -> np.ndarray:
    """float32 [classes, D]; NaN rows for classes without a name."""
    text = np.full((len(names), encoder.dim), np.nan, dtype=np.float32)
    known = [(i, n) for i, n in enumerate(names) if n]
    if len(known) < len(names):
        log.warning(
            "%d of %d %s classes have no name (data.classes.%s): NaN text features",
            len(names) - len(known),
            len(names),
            split,
            split,
        )
    if known:
        feats = encoder.encode_text([prompt.format(n) for _, n in known]).numpy()
        text[[i for i, _ in known]] = feats
    return text


def _finalise(recipe: Recipe, plan: _Plan, encoder: Encoder) -> bool:
    """Assemble the store if every chunk is present and no other process is at it."""
    paths = [chunk_path(plan.work, s, e) for s, e in plan.chunks]
    if not all(p.exists() for p in paths) or not acquire_lock(plan.work / "finalise.lock"):
        return False
    assembled = plan.work / "assembled.npy"
    try:
        n, V, T, D = len(plan.entries), plan.spec.views, plan.spec.num_frames, encoder.dim
        _check_space(plan, 2 * n * V * T * D * 2)  # the assembled array, then the store's copy
        feats: np.ndarray = (
            np.lib.format.open_memmap(plan.work / "assembled.npy", "w+", np.float16, (n, V, T, D))
            if n
            else np.zeros((0, V, T, D), np.float16)
        )  # on disk: memory stays bounded however large the split
        records: list[dict[str, Any]] = []
        for (s, e), path in zip(plan.chunks, paths, strict=True):
            chunk, recs, settings = read_chunk(path)
            assert chunk is not None
            _check_same(settings, plan.settings, path, plan.split)
            if chunk.shape != (e - s, V, T, D):
                raise CacheError(
                    f"{path} has shape {chunk.shape}, expected {(e - s, V, T, D)}; "
                    "delete it and rerun `fsar cache`"
                )
            feats[s:e] = chunk
            records.extend(recs)
        index = pd.DataFrame(records, columns=[c for c in INDEX_COLUMNS if c != "row"])
        counts = {k: int((index["status"] == k).sum()) for k in ("ok", "failed", "missing")}
        settings = {k: v for k, v in plan.settings.items() if k not in _WORK_ONLY}
        meta = {
            **encoder.describe(),
            **settings,
            "settings": settings,
            "counts": counts,
            "recipe": recipe.name,
            "dataset": recipe.dataset,
            "fsar_version": __version__,
            "torch_version": torch.__version__.split("+")[0],
        }
        text = _text_features(encoder, plan.names, recipe.features.prompt, plan.split)
        with _disk_errors(plan.store_dir, plan):
            if isinstance(feats, np.memmap):
                feats.flush()
            write_store(plan.store_dir, feats, index, text, meta)  # replaces the folder and .work
        del feats
    except BaseException:
        assembled.unlink(missing_ok=True)  # frees its space; the committed chunks stay
        raise
    finally:
        (plan.work / "finalise.lock").unlink(missing_ok=True)
    return True


def _check_space(plan: _Plan, needed: int) -> None:
    """Refuse to assemble a store that cannot fit: a full disk under a memory map is a SIGBUS."""
    free = shutil.disk_usage(plan.work).free
    if free < needed + _SPACE_MARGIN:
        raise CacheError(
            f"{plan.store_dir}: assembling the {plan.split} store needs {needed:,} bytes free, "
            f"the disk has {free:,}; free some space (or use another features.cache_dir) and "
            f"rerun `fsar cache`: the {len(plan.chunks)} encoded chunks in {plan.work} are kept"
        )


@contextlib.contextmanager
def _disk_errors(path: Path, plan: _Plan) -> Iterator[None]:
    """A full or failing disk while writing ``path``: one line naming it; finished work stays."""
    try:
        yield
    except OSError as exc:
        why = "no space left on the device" if exc.errno == errno.ENOSPC else str(exc)
        raise CacheError(
            f"{path}: cannot write ({why}); free some space (or use another "
            f"features.cache_dir) and rerun `fsar cache`: the chunks already in {plan.work} "
            "are kept and reused"
        ) from None


def _summary(plan: _Plan, encoded: int, frames: int, seconds: float, state: str) -> SplitSummary:
    if (plan.store_dir / "meta.json").is_file():
        index = pd.read_csv(plan.store_dir / "index.csv", dtype=str, keep_default_na=False)
        records = index.to_dict("records")
    else:  # unfinished: this shard's chunks
        records = []
        for c in plan.mine:
            path = chunk_path(plan.work, *plan.chunks[c])
            if path.exists():
                records.extend(read_chunk(path, features=False)[1])
    status = [r["status"] for r in records]
    failures = [(r["key"], r["reason"]) for r in records if r["status"] == "failed"][:10]
    return SplitSummary(
        plan.split,
        plan.store_dir,
        len(records),
        status.count("ok"),
        status.count("failed"),
        status.count("missing"),
        encoded,
        frames,
        seconds,
        state,
        failures,
    )


def cache_features(
    recipe: Recipe,
    splits: Iterable[str] = SPLITS,
    encoder: Encoder | None = None,
    shard: tuple[int, int] | None = None,
    on_progress: Callable[..., None] | None = None,
    device: str = "cpu",
) -> CacheResult:
    """Cache CLIP features of the videos of ``splits`` into ``recipe.features.cache_dir``.

    Args:
        recipe: data locations, class names and ``features`` settings.
        splits: which splits to cache.
        encoder: an :class:`fsar_cli.encoders.clip.Encoder`; default: load
            ``features.encoder`` (with ``features.weights``) on ``device``.
        shard: ``(i, n)``: encode only chunks ``i, i+n, ...`` (see the module docstring).
        on_progress: ``on_progress(n=1, *, total=None, label=None)``, advanced once per video.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (when ``encoder`` is None).

    Returns:
        A :class:`CacheResult` with per-split counts (ok, failed, missing), seconds and frames/s.

    Raises:
        CacheError: settings differ from an existing cache, or invalid features settings.
        EncoderError: the encoder cannot be loaded.
        DataError: a split file is missing or malformed.
    """
    f = recipe.features
    for key, val in (
        ("batch_size", f.batch_size),
        ("num_frames", f.num_frames),
        ("chunk_videos", f.chunk_videos),
        ("crop", f.crop),
    ):
        if val < 1:
            raise CacheError(f"features.{key} must be at least 1, got {val}")
    try:
        f.prompt.format("class")
    except (IndexError, KeyError, ValueError):
        raise CacheError(
            f"features.prompt {f.prompt!r} must hold one '{{}}' for the class name"
        ) from None
    d = distributed.init(device)
    if d.enabled:
        if shard is not None and tuple(shard) != (d.rank, d.world):
            raise CacheError(
                f"--shard {shard[0]}/{shard[1]} under torchrun: torchrun already splits the "
                f"videos (rank {d.rank} of {d.world} caches shard {d.rank}/{d.world}); drop --shard"
            )
        shard, device = (d.rank, d.world), str(d.device(device))
    if encoder is None:
        from ..encoders.clip import load_encoder

        encoder = load_encoder(f.encoder, f.weights, device=device)
    if f.crop != encoder.input_resolution or f.resize < f.crop:
        raise CacheError(
            f"features.crop={f.crop}, features.resize={f.resize}, but encoder {encoder.name!r} "
            f"takes {encoder.input_resolution}x{encoder.input_resolution} images; set "
            f"features.crop={encoder.input_resolution} and features.resize >= it"
        )
    advance = on_progress or (lambda n=1, *, total=None, label=None: None)
    with contextlib.ExitStack() as stack:
        # One process per (split, shard), and never a sharded and an unsharded run into one
        # folder: an unsharded run holds the store's lock exclusively, the shards hold it shared
        # (they run together) and each holds its own shard lock. A second run is told who holds it.
        way_out = (
            "use another features.cache_dir (--set features.cache_dir=...); sharded (--shard i/n) "
            "and unsharded runs into one folder exclude each other"
        )
        for split in dict.fromkeys(splits):
            where = store_path(os.path.expanduser(f.cache_dir), split)
            what = "feature store"
            stack.enter_context(
                locks.hold(where, what=what, way_out=way_out, shared=shard is not None)
            )
            if shard is not None:
                tag = f"shard-{shard[0]}-of-{shard[1]}"
                stack.enter_context(locks.hold(where, what=what, way_out=way_out, tag=tag))
        return _cache_locked(recipe, splits, encoder, shard, advance, d)


def _cache_locked(
    recipe: Recipe,
    splits: Iterable[str],
    encoder: Encoder,
    shard: tuple[int, int] | None,
    advance: Callable[..., None],
    d: distributed.Dist,
) -> CacheResult:
    f = recipe.features
    plans: list[_Plan] = []

    def plan_all() -> None:
        plans.extend(_plan(recipe, s, encoder, shard) for s in dict.fromkeys(splits))

    d.on_main(plan_all)  # rank 0 first: it recovers and creates the .work folders
    if not d.is_main:
        plan_all()
    advance(
        0,
        total=sum(
            plans[i].chunks[c][1] - plans[i].chunks[c][0]
            for i in range(len(plans))
            for c in plans[i].todo
        ),
    )

    def finish(plan: _Plan, videos: int, frames: int, t0: float) -> SplitSummary:
        if d.on_main(lambda: _finalise(recipe, plan, encoder)):  # rank 0 assembles
            state = "cached" if not d.enabled else f"cached ({d.world} processes)"
        elif (plan.store_dir / "meta.json").is_file():
            state = "cached (assembled by another shard)"
        else:
            present = sum(chunk_path(plan.work, s, e).exists() for s, e in plan.chunks)
            state = f"waiting for other shards ({present} of {len(plan.chunks)} chunks done)"
        s = _summary(plan, videos, frames, time.perf_counter() - t0, state)
        if s.failed and d.is_main:
            log.warning(
                "%s: %d videos failed to decode (first: %s: %s)",
                plan.split,
                s.failed,
                *s.failures[0],
            )
        return s

    summaries: dict[str, SplitSummary] = {}
    done: dict[str, tuple[int, int, float]] = {}  # split -> videos, frames, start time
    for plan in plans:
        t0 = time.perf_counter()
        if plan.complete:
            summaries[plan.split] = _summary(plan, 0, 0, 0.0, "already cached")
            continue
        videos, frames = _encode_chunks(recipe, plan, encoder, advance, t0)
        done[plan.split] = (videos, frames, t0)
        if not d.enabled:  # a split's store is ready as soon as its chunks are
            summaries[plan.split] = finish(plan, videos, frames, t0)
    if d.enabled:
        d.barrier(_SHARE_WAIT)  # every rank's share of every split is committed
        counts = d.all_gather_object({k: v[:2] for k, v in done.items()})
        for plan in plans:
            if plan.split in done:  # this job's videos and frames, all ranks together
                videos = sum(c[plan.split][0] for c in counts)
                frames = sum(c[plan.split][1] for c in counts)
                summaries[plan.split] = finish(plan, videos, frames, done[plan.split][2])
    summaries = {p.split: summaries[p.split] for p in plans}  # in the order asked
    return CacheResult(
        Path(os.path.expanduser(f.cache_dir)),
        encoder.name,
        encoder.label,
        encoder.is_random,
        encoder.weights_sha256,
        str(encoder.device),
        shard,
        summaries,
    )
