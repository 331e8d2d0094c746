"""``fsar predict``: classify new videos against a few labelled examples per class.

The classes are defined by *support* clips (a folder with one subfolder per class, a
``path,label`` CSV, or a ``.fsarc`` file of already enrolled classes, :mod:`.classes_file`); the
*queries* are video files or frame folders. Nothing is cached on disk: every clip is made and
encoded with the feature cache's own code (:func:`fsar_cli.data.preprocess.load_views` with the
recipe's test-split sampling and centre crop, :class:`fsar_cli.features.cache.FrameBatcher` in
batches of ``features.batch_size`` frames, features rounded to float16 as the cache stores them),
and scored with the evaluator's arithmetic (:func:`fsar_cli.evaluation.batched.class_prototypes`
and :func:`~fsar_cli.evaluation.batched.query_logits`). So a query's logits are exactly those the
evaluator computes for the same features in an episode whose classes are the enrolled ones.

Decoding runs in ``features.workers`` background threads ahead of the encoder (as in ``fsar
cache``); queries are encoded and scored in blocks of 256, so memory is bounded by the block, not
by the number of queries. With ``window`` / ``stride`` (:mod:`.spotting`) every window of a video
is a query.

The result is a :class:`pandas.DataFrame`, one row per query clip (or window): ``query`` (path),
``key``, ``start_frame``, ``end_frame``, ``start_s``, ``end_s`` (seconds; NaN when the frame
rate is unknown), ``label`` (the best class), ``logit`` (its logit), ``prob`` (softmax over the
enrolled classes), ``status`` (``ok`` or ``failed``), ``reason``, then one ``logit:<class>`` column
per class. A query that does not decode is a ``failed`` row; the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..data.labelled import Clip, find_clips, read_support, text_name
from ..data.preprocess import CLIP_MEAN, CLIP_STD, INTERPOLATION, ViewSpec, load_views
from ..errors import DataError
from ..features.cache import CROP_MODES, FrameBatcher, prefetch
from ..models.base import FewShotHead
from ..progress import ProgressFn
from ..recipe import Recipe
from .classes_file import EnrolledClasses, check_identity, load_classes
from .spotting import iter_windows, source_fps, window_frames

if TYPE_CHECKING:
    from ..encoders.clip import Encoder

__all__ = [
    "predict",
    "enroll",
    "encoder_identity",
    "query_spec",
    "PREDICT_COLUMNS",
    "Predictor",
]

log = logging.getLogger(__name__)

#: The fixed columns of :func:`predict`'s table; ``logit:<class>`` columns follow, in class order.
PREDICT_COLUMNS = [
    "query",
    "key",
    "start_frame",
    "end_frame",
    "start_s",
    "end_s",
    "label",
    "logit",
    "prob",
    "status",
    "reason",
]
_BLOCK = 256  # query clips encoded and scored together (the evaluator's group size)
_SPLIT = "test"  # queries and supports are made as the test split's videos are cached


def query_spec(recipe: Recipe) -> ViewSpec:
    """How a clip is made: the recipe's test-split sampling and crop, one view."""
    f = recipe.features
    return ViewSpec(
        _SPLIT,
        f.num_frames,
        1,
        f.sampling.for_split(_SPLIT),
        CROP_MODES[_SPLIT],
        f.resize,
        f.crop,
        f.seed,
    )


def encoder_identity(encoder: Encoder, spec: ViewSpec, prompt: str) -> dict[str, Any]:
    """What makes features comparable: the encoder's identity and the preprocessing."""
    d = encoder.describe()
    return {
        "encoder": d["encoder"],
        "encoder_random": d["encoder_random"],
        "encoder_label": d["encoder_label"],
        "weights_sha256": d["weights_sha256"],
        "dim": d["dim"],
        "precision": encoder.precision,
        "num_frames": spec.num_frames,
        "sampling": spec.sampling,
        "crop_mode": spec.crop_mode,
        "resize": spec.resize,
        "crop": spec.crop,
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "interpolation": INTERPOLATION,
        "seed": spec.seed,
        "prompt": prompt,
        "fsar_version": __version__,
    }


@dataclass
class _Item:
    clip: Clip
    windows: list[tuple[int, int, torch.Tensor]]  # (start, end, uint8 [1, T, 3, C, C])
    fps: float | None
    error: str = ""


def _load_whole(clip: Clip, spec: ViewSpec) -> _Item:
    """One clip exactly as ``fsar cache`` makes a video's view; errors are recorded, not raised."""
    fps = source_fps(clip.path) if clip.path.is_file() else None
    try:
        frames, n = load_views(clip.path, clip.key, spec)  # [1, T, 3, C, C]
    except Exception as exc:  # DataError, cv2.error, OSError: this query fails, the rest go on
        return _Item(clip, [], fps, _reason(exc))
    return _Item(clip, [(0, n, frames)], fps)


def _reason(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0] if text else type(exc).__name__


def _encode_items(
    items: Iterator[_Item], batcher: FrameBatcher
) -> Iterator[tuple[list[tuple[_Item, int, int]], np.ndarray]]:
    """Blocks of up to 256 encoded windows ``(item, start, end)``, in order, with their float16
    [n_ok, T, D] features; a failed item is an entry with ``start = -1`` (no features)."""
    block: list[tuple[_Item, int, int]] = []
    n_ok = 0
    for item in items:
        if item.error:
            block.append((item, -1, -1))
        for start, end, frames in item.windows:
            batcher.add(frames)
            block.append((item, start, end))
            n_ok += 1
            if n_ok == _BLOCK:
                yield block, batcher.finish()[:, 0]
                block, n_ok = [], 0
    if block:
        yield block, batcher.finish()[:, 0]


class Predictor:
    """A head, an encoder and enrolled classes: encodes and scores query clips.

    Build it with :func:`predict`'s arguments through :meth:`create`, or directly from loaded
    parts. :meth:`run` yields the prediction table's rows.
    """

    def __init__(
        self,
        head: FewShotHead,
        encoder: Encoder,
        enrolled: EnrolledClasses,
        spec: ViewSpec,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        workers: int = 2,
    ) -> None:
        from ..evaluation.batched import class_prototypes

        self.head, self.encoder, self.enrolled, self.spec = head, encoder, enrolled, spec
        self.device, self.batch_size, self.workers = device, int(batch_size), int(workers)
        self.protos = class_prototypes(
            head, enrolled.features, enrolled.labels, enrolled.text, device=device
        )  # [C, T, D]

    def logits(self, features: np.ndarray) -> np.ndarray:
        """float32 [N, C] logits of query features [N, T, D] against the enrolled classes."""
        from ..evaluation.batched import query_logits

        return query_logits(self.head, features, self.protos, device=self.device)

    def _items(
        self, clips: list[Clip], window: float | None, stride: float | None, fps: float | None
    ) -> Iterator[_Item]:
        if window is None:
            ahead = 2 * self.workers + max(1, self.batch_size // self.spec.num_frames)
            return prefetch(
                lambda i: _load_whole(clips[i], self.spec),
                range(len(clips)),
                self.workers,
                max(ahead, 2),
            )
        return (self._windows(c, window, stride or window, fps) for c in clips)

    def _windows(self, clip: Clip, window: float, stride: float, fps: float | None) -> _Item:
        rate = source_fps(clip.path) or fps
        try:
            w, s = window_frames(window, stride, rate or 0.0)
            wins = [
                (x.start, x.end, x.frames)
                for x in iter_windows(clip.path, clip.key, self.spec, w, s)
            ]
        except Exception as exc:
            if isinstance(exc, DataError) and "frame rate is unknown" in str(exc):
                raise
            return _Item(clip, [], rate, _reason(exc))
        return _Item(clip, wins, rate)

    def run(
        self,
        clips: list[Clip],
        *,
        window: float | None = None,
        stride: float | None = None,
        fps: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Rows of the prediction table (see the module docstring), in query order."""
        classes = self.enrolled.classes
        batcher = FrameBatcher(self.encoder, self.batch_size)
        seen: set[int] = set()
        items = self._items(clips, window, stride, fps)
        try:
            for block, feats in _encode_items(items, batcher):
                logits = self.logits(feats) if len(feats) else np.zeros((0, len(classes)))
                ok = iter(logits)
                for item, a, b in block:
                    if a < 0:
                        yield _row(item, 0, 0, None, classes, status="failed", reason=item.error)
                    else:
                        yield _row(item, a, b, next(ok), classes)
                if on_progress is not None:
                    done = {id(it) for it, _, _ in block}
                    for _k in done - seen:
                        on_progress(1)
                    seen |= done
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()


def _row(
    item: _Item,
    a: int,
    b: int,
    logits: np.ndarray | None,
    classes: list[str],
    status: str = "ok",
    reason: str = "",
) -> dict[str, Any]:
    fps = item.fps
    nan = float("nan")
    row: dict[str, Any] = {
        "query": str(item.clip.path),
        "key": item.clip.key,
        "start_frame": a,
        "end_frame": b,
        "start_s": a / fps if fps else nan,
        "end_s": b / fps if fps else nan,
        "label": "",
        "logit": nan,
        "prob": nan,
        "status": status,
        "reason": reason,
    }
    if logits is not None:
        best = int(np.argmax(logits))
        z = logits.astype(np.float64) - float(np.max(logits))
        row.update(
            label=classes[best],
            logit=float(logits[best]),
            prob=float(1.0 / np.exp(z).sum()),
        )
        row.update({f"logit:{c}": float(v) for c, v in zip(classes, logits, strict=True)})
    else:
        row.update({f"logit:{c}": nan for c in classes})
    return row


# --------------------------------------------------------------------------- enrolling


def enroll(
    support: str | Path | list[Clip],
    encoder: Encoder,
    spec: ViewSpec,
    prompt: str,
    *,
    batch_size: int = 64,
    workers: int = 2,
    on_progress: ProgressFn | None = None,
) -> EnrolledClasses:
    """Encode labelled support clips into :class:`EnrolledClasses` (every clip must decode).

    Args:
        support: a class-per-subfolder folder, a ``path,label`` CSV, or the clips themselves.
        prompt: the text prompt (``features.prompt``) for each class name.
    """
    clips = read_support(support) if not isinstance(support, list) else support
    classes = sorted({c.label for c in clips})
    cid = {c: i for i, c in enumerate(classes)}
    batcher = FrameBatcher(encoder, batch_size)
    stream = prefetch(
        lambda i: _load_whole(clips[i], spec), range(len(clips)), workers, 2 * workers + 2
    )
    try:
        for item in stream:
            if item.error:
                raise DataError(f"support clip {item.clip.path} ({item.clip.label}): {item.error}")
            batcher.add(item.windows[0][2])
            if on_progress is not None:
                on_progress(1)
    finally:
        stream.close()
    feats = batcher.finish()[:, 0]  # [S, T, D]
    text = encoder.encode_text([prompt.format(text_name(c)) for c in classes]).numpy()
    return EnrolledClasses(
        classes=classes,
        features=feats,
        labels=np.asarray([cid[c.label] for c in clips], dtype=np.int64),
        text=text.astype(np.float32),
        identity=encoder_identity(encoder, spec, prompt),
        support=[{"key": c.key, "path": str(c.path), "label": c.label} for c in clips],
    )


# --------------------------------------------------------------------------- the verb


def _resolve_recipe(recipe: str | Path | Recipe | None, checkpoint: str | Path | None) -> Recipe:
    from ..recipe import load_recipe

    if isinstance(recipe, Recipe):
        return recipe
    if recipe is not None:
        return load_recipe(recipe)
    if checkpoint is not None:
        p = Path(checkpoint).expanduser()
        resolved = (p if p.is_dir() else p.parent) / "resolved_recipe.yaml"
        if resolved.is_file():
            return load_recipe(resolved)
    raise DataError(
        "no recipe: pass one (recipe=... / --recipe NAME) or a checkpoint whose run folder holds "
        "resolved_recipe.yaml (every `fsar train` run folder does)"
    )


def _check_trained_encoder(recipe: Recipe, identity: dict[str, Any]) -> None:
    """Warn when the recipe's training cache was made by another encoder than the one used."""
    import json

    meta = Path(recipe.features.cache_dir).expanduser() / "train" / "meta.json"
    if not meta.is_file():
        return
    try:
        trained = json.loads(meta.read_text())
    except (OSError, ValueError):
        return
    if trained.get("weights_sha256") not in (None, identity["weights_sha256"]):
        log.warning(
            "the head's training cache %s was made with encoder %s (weights %s), this prediction "
            "uses %s (weights %s): the head has never seen these features",
            meta.parent,
            trained.get("encoder"),
            str(trained.get("weights_sha256"))[:12],
            identity["encoder"],
            str(identity["weights_sha256"])[:12],
        )


def predict(
    queries: str | Path | list[str | Path],
    *,
    support: str | Path | None = None,
    classes: str | Path | EnrolledClasses | None = None,
    recipe: str | Path | Recipe | None = None,
    checkpoint: str | Path | None = None,
    head: str | None = None,
    encoder: Encoder | None = None,
    window: float | None = None,
    stride: float | None = None,
    fps: float | None = None,
    save_classes: str | Path | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    workers: int | None = None,
    trust: bool = False,
    on_progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Classify query videos against classes defined by a few labelled examples each.

    Args:
        queries: video files, frame folders, or folders searched recursively for them.
        support: labelled examples: a folder ``<class>/<video>`` or a ``path,label`` CSV.
        classes: enrolled classes instead of ``support``: a ``.fsarc`` file or an
            :class:`EnrolledClasses` (its encoder and preprocessing must be this prediction's).
        recipe: the recipe (name, YAML or :class:`Recipe`) giving the encoder (``features.encoder``
            / ``features.weights``), the clip settings and the head settings; default the
            ``resolved_recipe.yaml`` of the checkpoint's run folder.
        checkpoint: a run folder or checkpoint file (fsar's or the reference's); None for the
            untrained baselines ``proto``, ``otam``, ``text``.
        head: the head; default the checkpoint's, else ``recipe.model.head``.
        encoder: an already loaded :class:`fsar_cli.encoders.clip.Encoder` (default: the
            recipe's, on ``device``).
        window, stride: spotting: classify windows of ``window`` seconds every ``stride`` seconds
            (default ``stride = window``) instead of whole videos.
        fps: frame rate of frame folders (needed for ``window``; videos carry their own).
        save_classes: also write the enrolled classes to this ``.fsarc`` file.
        batch_size, workers: frames per encoder batch and decode threads (default: the recipe's
            ``features.batch_size`` / ``features.workers``).
        on_progress: ``on_progress(n=1, *, total=None, label=None)``: support clips, then queries.
    Returns:
        The prediction table (module docstring), one row per query clip or window, in order;
        ``DataFrame.attrs`` holds ``classes``, ``head``, ``checkpoint`` and ``encoder``.

    Raises:
        DataError: no support/classes, unreadable support, classes enrolled with other settings.
        CheckpointError, EncoderError: the head or the encoder cannot be loaded.
    """
    from ..evaluation.heads import load_eval_head

    if (support is None) == (classes is None):
        raise DataError("give the classes one way: support=FOLDER_OR_CSV or classes=FILE.fsarc")
    if stride is not None and window is None:
        raise DataError("--stride needs --window")
    cfg = _resolve_recipe(recipe, checkpoint)
    f = cfg.features
    bs = int(batch_size or f.batch_size)
    nw = int(f.workers if workers is None else workers)
    spec = query_spec(cfg)
    if encoder is None:
        from ..encoders.clip import load_encoder

        encoder = load_encoder(f.encoder, f.weights, device=device)
    if f.crop != encoder.input_resolution:
        raise DataError(
            f"features.crop={f.crop}, but encoder {encoder.name!r} takes "
            f"{encoder.input_resolution}x{encoder.input_resolution} images; set "
            f"features.crop={encoder.input_resolution}"
        )
    identity = encoder_identity(encoder, spec, f.prompt)
    _check_trained_encoder(cfg, identity)
    clips = find_clips(queries)
    advance = on_progress or (lambda n=1, *, total=None, label=None: None)
    if classes is not None:
        where = str(classes) if not isinstance(classes, EnrolledClasses) else "the classes"
        enrolled = classes if isinstance(classes, EnrolledClasses) else load_classes(classes)
        check_identity(enrolled.identity, identity, where)
        if enrolled.identity.get("precision") != identity["precision"]:
            log.warning(
                "%s was encoded in %s, this prediction runs %s: features differ by rounding",
                where,
                enrolled.identity.get("precision"),
                identity["precision"],
            )
    else:
        assert support is not None
        sup = read_support(support)
        advance(0, total=len(sup) + len(clips), label="encoding the support")
        enrolled = enroll(
            sup, encoder, spec, f.prompt, batch_size=bs, workers=nw, on_progress=advance
        )
    if save_classes is not None:
        enrolled.save(save_classes)
    head_module, ckpt = load_eval_head(
        cfg, encoder.dim, head_name=head, checkpoint=checkpoint, device=device, trust=trust
    )
    predictor = Predictor(
        head_module, encoder, enrolled, spec, device=device, batch_size=bs, workers=nw
    )
    advance(0, total=None if classes is None else len(clips), label="predicting")
    rows = list(predictor.run(clips, window=window, stride=stride, fps=fps, on_progress=advance))
    columns = PREDICT_COLUMNS + [f"logit:{c}" for c in enrolled.classes]
    table = pd.DataFrame(rows, columns=columns)
    table.attrs.update(
        classes=list(enrolled.classes),
        shots=enrolled.shots.tolist(),
        head=str(getattr(head_module, "name", head)),
        checkpoint=ckpt,
        encoder=identity["encoder_label"],
        encoder_random=bool(identity["encoder_random"]),
    )
    return table


def summarize_failures(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(query, reason) of the failed rows."""
    bad = table[table["status"] != "ok"]
    return list(zip(bad["query"].tolist(), bad["reason"].tolist(), strict=True))
