"""``fsar predict``: classify new videos against a few labelled examples per class.

The classes are defined by *support* clips (a folder with one subfolder per class, a
``path,class`` CSV, or a ``.fsarc`` file of already enrolled classes, :mod:`.classes_file`), or by
their names alone for the zero-shot ``text`` head; the *queries* are video files, frame folders,
folders of them, glob patterns or list files (:func:`fsar_cli.data.labelled.find_clips`).
Nothing is cached on disk: every clip is made and encoded with the feature cache's own code
(:func:`fsar_cli.data.preprocess.load_views` with the recipe's test-split sampling and centre crop,
:class:`fsar_cli.features.cache.FrameBatcher` in batches of ``features.batch_size`` frames, features
rounded to float16 as the cache stores them), and scored with the evaluator's arithmetic
(:func:`fsar_cli.evaluation.batched.class_prototypes` and
:func:`~fsar_cli.evaluation.batched.query_logits`). So a query's logits are exactly those the
evaluator computes for the same features in an episode whose classes are the enrolled ones.

Decoding runs in ``features.workers`` background threads ahead of the encoder (as in ``fsar cache``;
``auto`` resolved by :func:`fsar_cli.threads.decode_workers`); queries are encoded and scored in
blocks of 256, so memory is bounded by the block, not by the number of queries. With ``window`` /
``stride`` (:mod:`.spotting`) every window of a video is a query.

Settings: the encoder and the clip settings come from the checkpoint's provenance (its run
folder's ``resolved_recipe.yaml``) when there is one, else from a classes file's identity, else
from ``recipe`` / ``encoder`` (``offline-demo``: the demo's encoder, trained once and cached as
``fsar demo`` does, with the synth recipe's clip settings).

The result is a :class:`pandas.DataFrame`, one row per query clip (or window): ``query`` (path),
``key``, ``start_frame``, ``end_frame``, ``start_s``, ``end_s`` (seconds; NaN when the frame
rate is unknown), ``label`` (the best class), ``logit`` (its logit), ``prob`` (its softmax
probability over the enrolled classes), ``margin`` (``prob`` minus the runner-up's), ``status``
(``ok`` or ``failed``), ``reason``, then one ``prob:<class>`` and one ``logit:<class>`` column per
class. A query that does not decode is a ``failed`` row; the others go on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
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
from ..threads import decode_workers
from .classes_file import EnrolledClasses, check_encoder, check_identity, load_classes
from .spotting import Span, iter_windows, parse_span, source_fps, window_frames

if TYPE_CHECKING:
    from ..encoders.clip import Encoder

__all__ = [
    "predict",
    "enroll",
    "encoder_identity",
    "enroll_names",
    "query_spec",
    "load_predict_encoder",
    "softmax",
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
    "margin",
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
        "weights_path": d["weights_path"],
        "input_resolution": d["input_resolution"],
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
    if clip.problem:
        return _Item(clip, [], None, clip.problem)
    fps = source_fps(clip.path) if clip.path.is_file() else None
    try:
        frames, n = load_views(clip.path, clip.key, spec)  # [1, T, 3, C, C]
    except Exception as exc:  # DataError, cv2.error, OSError: this query fails, the rest go on
        return _Item(clip, [], fps, _reason(exc, clip.path))
    return _Item(clip, [(0, n, frames)], fps)


def _reason(exc: BaseException, path: Path) -> str:
    """One line: why a query failed (without its path, which the report shows beside it)."""
    text = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
    text = text.splitlines()[0] if text else type(exc).__name__
    for p in (str(path), path.name):
        if text.startswith(p + ": "):
            return text[len(p) + 2 :]
    return text


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
        feats, labels = enrolled.features, enrolled.labels
        if enrolled.zero_shot:
            if getattr(head, "name", "") != "text":
                raise DataError(
                    f"the classes {enrolled.classes[:3]} are names only (no support examples): "
                    f"only --head text classifies from names, not {getattr(head, 'name', head)!r}; "
                    "give --support DIR for other heads"
                )
            # the text head ignores supports (prototype = class text): one placeholder each
            C = len(enrolled.classes)
            feats = np.zeros((C, spec.num_frames, encoder.dim), np.float16)
            labels = np.arange(C, dtype=np.int64)
        self.protos = class_prototypes(
            head, feats, labels, enrolled.text, device=device
        )  # [C, T, D]

    def logits(self, features: np.ndarray) -> np.ndarray:
        """float32 [N, C] logits of query features [N, T, D] against the enrolled classes."""
        from ..evaluation.batched import query_logits

        return query_logits(self.head, features, self.protos, device=self.device)

    def _items(
        self, clips: list[Clip], window: Span | None, stride: Span | None, fps: float | None
    ) -> Iterator[_Item]:
        if window is None:
            ahead = 2 * self.workers + max(1, self.batch_size // self.spec.num_frames)
            return prefetch(
                lambda i: _load_whole(clips[i], self.spec),
                range(len(clips)),
                self.workers,
                max(ahead, 2),
            )
        win = window
        return prefetch(  # a whole video's windows per item: few videos ahead
            lambda i: self._windows(clips[i], win, stride or win, fps),
            range(len(clips)),
            min(self.workers, 2),
            max(self.workers, 1),
        )

    def _windows(self, clip: Clip, window: Span, stride: Span, fps: float | None) -> _Item:
        if clip.problem:
            return _Item(clip, [], None, clip.problem)
        rate = (source_fps(clip.path) if clip.path.is_file() else None) or fps
        try:
            w, s = window_frames(window, stride, rate)
            wins = [
                (x.start, x.end, x.frames)
                for x in iter_windows(clip.path, clip.key, self.spec, w, s)
            ]
        except Exception as exc:  # this video fails, the others go on
            return _Item(clip, [], rate, _reason(exc, clip.path))
        return _Item(clip, wins, rate)

    def run(
        self,
        clips: list[Clip],
        *,
        window: Span | None = None,
        stride: Span | None = None,
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
        "margin": nan,
        "status": status,
        "reason": reason,
    }
    if logits is not None:
        best = int(np.argmax(logits))
        probs = softmax(logits)
        top2 = np.sort(probs)[-2:]
        row.update(
            label=classes[best],
            logit=float(logits[best]),
            prob=float(probs[best]),
            margin=float(top2[-1] - top2[0]) if len(probs) > 1 else nan,
        )
        row.update({f"prob:{c}": float(v) for c, v in zip(classes, probs, strict=True)})
        row.update({f"logit:{c}": float(v) for c, v in zip(classes, logits, strict=True)})
    else:
        row.update({f"prob:{c}": nan for c in classes})
        row.update({f"logit:{c}": nan for c in classes})
    return row


def softmax(logits: np.ndarray) -> np.ndarray:
    """float64 softmax over the last axis (the probabilities ``predict`` reports)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


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
        support: a class-per-subfolder folder, a ``path,class`` CSV, or the clips themselves.
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


def enroll_names(
    names: list[str], encoder: Encoder, spec: ViewSpec, prompt: str
) -> EnrolledClasses:
    """Classes by name only (zero-shot, for the ``text`` head): their text features, no support."""
    classes = [str(n).strip() for n in names]
    if not classes or any(not c for c in classes):
        raise DataError(f"--classes needs class names, got {names!r}")
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup:
        raise DataError(f"--classes names {dup} more than once; give each class once")
    text = encoder.encode_text([prompt.format(text_name(c)) for c in classes]).numpy()
    return EnrolledClasses(
        classes=classes,
        features=np.zeros((0, spec.num_frames, encoder.dim), np.float16),
        labels=np.zeros(0, np.int64),
        text=text.astype(np.float32),
        identity=encoder_identity(encoder, spec, prompt),
    )


# --------------------------------------------------------------------------- the verb


def _default_recipe(encoder: str | None, weights: str | Path | None) -> Recipe:
    """Clip settings when no checkpoint, classes file or recipe gives them."""
    from ..encoders.offline import OFFLINE_ENCODER_NAME
    from ..recipe import load_recipe, recipe_from_dict

    if encoder is None:
        raise DataError(
            "no encoder: pass --encoder NAME (ViT-B/16, ..., or offline-demo for the demo's "
            "encoder), a trained run with -c RUN, a classes file, or --recipe NAME"
        )
    if encoder == OFFLINE_ENCODER_NAME:  # the demo's clip settings, as `fsar demo` caches
        base = load_recipe("synth")
        feats = dataclasses.replace(
            base.features, weights=None if weights is None else str(weights)
        )
        return dataclasses.replace(
            recipe_from_dict({"name": "predict"}), features=feats, model=base.model
        )
    doc: dict[str, Any] = {"name": "predict", "features": {"encoder": encoder}}
    if weights is not None:
        doc["features"]["weights"] = str(weights)
    return recipe_from_dict(doc)


def _provenance_recipe(checkpoint: str | Path | None) -> Path | None:
    """The ``resolved_recipe.yaml`` of a checkpoint's run folder, if it has one."""
    if checkpoint is None:
        return None
    p = Path(checkpoint).expanduser()
    resolved = (p if p.is_dir() else p.parent) / "resolved_recipe.yaml"
    return resolved if resolved.is_file() else None


def load_predict_encoder(name: str, weights: str | Path | None, device: str = "cpu") -> Encoder:
    """``load_encoder``, with ``offline-demo`` meaning the demo's encoder, trained once and cached
    (:func:`fsar_cli.encoders.offline.ensure_offline_encoder`) when no weights file is at hand."""
    from ..encoders.clip import load_encoder
    from ..encoders.offline import OFFLINE_ENCODER_NAME, ensure_offline_encoder

    if name == OFFLINE_ENCODER_NAME and (
        weights is None or not Path(weights).expanduser().is_file()
    ):
        weights = ensure_offline_encoder()
    return load_encoder(name, weights, device=device)


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
    queries: str | Path | Sequence[str | Path] | None = None,
    *,
    support: str | Path | list[Clip] | None = None,
    classes: list[str] | str | Path | EnrolledClasses | None = None,
    classes_file: str | Path | EnrolledClasses | None = None,
    recipe: str | Path | Recipe | None = None,
    checkpoint: str | Path | None = None,
    head: str | None = None,
    encoder: Encoder | str | None = None,
    weights: str | Path | None = None,
    prompt: str | None = None,
    window: str | float | Span | None = None,
    stride: str | float | Span | None = None,
    fps: float | None = None,
    save_classes: str | Path | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    workers: int | None = None,
    trust: bool = False,
    on_progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Classify query videos against classes defined by a few labelled examples each, or by name.

    Args:
        queries: video files, frame folders, folders searched recursively for them, glob
            patterns or list files; may be empty when only ``save_classes`` is wanted.
        support: labelled examples: a folder ``<class>/<video>`` or a ``path,class`` CSV; any
            number of shots per class (unequal counts allowed, ``attrs["shots"]``).
        classes: class names only (zero-shot, ``head="text"``); a path or
            :class:`EnrolledClasses` here is read as ``classes_file``.
        classes_file: enrolled classes (a ``.fsarc`` file or :class:`EnrolledClasses`), whose
            supports are not encoded again; its encoder and preprocessing must be this
            prediction's (refused by name otherwise).
        recipe: the recipe (name, YAML or :class:`Recipe`) giving the encoder, the clip settings
            and the head settings; default the checkpoint run folder's ``resolved_recipe.yaml``,
            else the classes file's settings, else defaults for ``encoder``.
        checkpoint: a run folder or checkpoint file (fsar's or the reference's); None for the
            untrained baselines ``proto``, ``otam``, ``text``.
        head: the head; default the checkpoint's, else the classes file's, else ``text`` for
            names only, else ``otam``.
        encoder: an encoder name (``offline-demo``: the demo's, trained once and cached) or a
            loaded :class:`fsar_cli.encoders.clip.Encoder`; a checkpoint's provenance decides when
            it has one (a different name is refused).
        weights: the encoder's weights file (``--weights``).
        prompt: text prompt template with ``{}`` for the class name (default the recipe's).
        window, stride: spotting: ``"2s"`` / ``"16"`` (frames) / a number of seconds
            (:func:`.spotting.parse_span`); every window is classified (default stride = window).
        fps: frame rate of frame folders (for windows in seconds; videos carry their own).
        save_classes: also write the enrolled classes to this ``.fsarc`` file.
        batch_size, workers: frames per encoder batch and decode threads (default: the recipe's
            ``features.batch_size`` / ``features.workers``).
        on_progress: ``on_progress(n=1, *, total=None, label=None)``: support clips, then queries.
    Returns:
        The prediction table (module docstring), one row per query clip or window, in order;
        ``DataFrame.attrs`` holds ``classes``, ``shots``, ``head``, ``checkpoint``, ``encoder``,
        ``encoder_random``, ``prompt``, ``settings`` (where the settings came from), ``window``.

    Raises:
        DataError: no or conflicting classes, unreadable support, a classes file or checkpoint of
            another encoder.
        CheckpointError, EncoderError: the head or the encoder cannot be loaded.
    """
    from ..evaluation.heads import load_eval_head
    from ..models.registry import head_spec
    from ..recipe import load_recipe

    names: list[str] | None = None
    if isinstance(classes, (str, Path, EnrolledClasses)):
        if classes_file is not None:
            raise DataError("give classes_file once")
        classes_file, classes = classes, None
    elif classes is not None:
        names = [str(c) for c in classes]
    given = [x for x in (support, names, classes_file) if x is not None]
    if len(given) != 1:
        raise DataError(
            "give the classes one way: --support FOLDER_OR_CSV (examples), --classes NAME ... "
            "(names only, --head text) or --classes-file FILE.fsarc"
        )
    if stride is not None and window is None:
        raise DataError("--stride needs --window")
    win = parse_span(window, "--window") if window is not None else None
    strd = parse_span(stride, "--stride") if stride is not None else None

    stored: EnrolledClasses | None = None
    where = "the classes"
    if classes_file is not None:
        if isinstance(classes_file, EnrolledClasses):
            stored = classes_file
        else:
            stored, where = load_classes(classes_file), str(classes_file)
        if checkpoint is None and head is None and stored.checkpoint:
            checkpoint = stored.checkpoint
            if not Path(checkpoint).exists():
                raise DataError(
                    f"{where} was enrolled for checkpoint {checkpoint}, which no longer exists; "
                    "pass -c RUN_OR_FILE (or --head NAME for an untrained baseline)"
                )
        if head is None and checkpoint is None:
            head = stored.head

    # the settings: checkpoint provenance > classes file > recipe > defaults for the encoder
    enc_name = encoder if isinstance(encoder, str) else None
    resolved = _provenance_recipe(checkpoint)
    if isinstance(recipe, Recipe):
        cfg, settings = recipe, f"recipe {recipe.name}"
    elif recipe is not None:
        cfg, settings = load_recipe(recipe), f"recipe {recipe}"
    elif resolved is not None:
        cfg, settings = load_recipe(resolved), f"the checkpoint's run ({resolved})"
        if enc_name is not None and enc_name != cfg.features.encoder:
            raise DataError(
                f"{checkpoint} was trained on features of encoder {cfg.features.encoder!r} (its "
                f"provenance, {resolved}); --encoder {enc_name!r} is another encoder: drop "
                "--encoder, or use a checkpoint trained on that encoder"
            )
    elif stored is not None:
        cfg, settings = _recipe_from_identity(stored.identity, where), f"the classes file {where}"
    else:
        cfg = _default_recipe(enc_name, weights)
        settings = f"the {enc_name} encoder's defaults"
    if (enc_name is not None or weights is not None) and resolved is None:
        cfg = dataclasses.replace(
            cfg,
            features=dataclasses.replace(
                cfg.features,
                encoder=enc_name or cfg.features.encoder,
                weights=str(weights)
                if weights is not None
                else (cfg.features.weights if enc_name in (None, cfg.features.encoder) else None),
            ),
        )
    if prompt is not None:
        if "{}" not in prompt:
            raise DataError(f"--prompt {prompt!r} has no '{{}}' for the class name")
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, prompt=prompt))
    f = cfg.features
    bs = int(batch_size or f.batch_size)
    if not isinstance(encoder, (str, type(None))):
        enc = encoder
    else:
        enc = load_predict_encoder(f.encoder, f.weights, device=device)
    nw = decode_workers(f.workers if workers is None else workers, enc.device)  # where it encodes
    if stored is not None:  # another encoder is refused by name before anything else
        check_encoder(stored.identity, enc.describe(), where)
    if (
        settings.endswith("encoder's defaults") and f.crop != enc.input_resolution
    ):  # defaults: fit it
        crop = enc.input_resolution
        resize = max(crop, int(round(crop * 256 / 224)))
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(f, crop=crop, resize=resize))
        f = cfg.features
    if f.crop != enc.input_resolution:
        raise DataError(
            f"features.crop={f.crop}, but encoder {enc.name!r} takes "
            f"{enc.input_resolution}x{enc.input_resolution} images; set "
            f"features.crop={enc.input_resolution}"
        )
    spec = query_spec(cfg)
    identity = encoder_identity(enc, spec, f.prompt)
    _check_trained_encoder(cfg, identity)
    clips = find_clips(queries if isinstance(queries, (str, Path)) else list(queries or []))
    if not clips and save_classes is None:
        raise DataError("no queries: name videos, folders, globs or list files to classify")
    advance = on_progress or (lambda n=1, *, total=None, label=None: None)
    if stored is not None:
        check_identity(stored.identity, identity, where)
        if stored.identity.get("precision") != identity["precision"]:
            log.warning(
                "%s was encoded in %s, this prediction runs %s: features differ by rounding",
                where,
                stored.identity.get("precision"),
                identity["precision"],
            )
        enrolled = stored
    elif names is not None:
        enrolled = enroll_names(names, enc, spec, f.prompt)
    else:
        assert support is not None
        sup = read_support(support) if not isinstance(support, list) else support
        advance(0, total=len(sup) + len(clips), label="encoding the support")
        enrolled = enroll(sup, enc, spec, f.prompt, batch_size=bs, workers=nw, on_progress=advance)
    if head is None and checkpoint is None:
        if enrolled.zero_shot:
            head = "text"
        else:
            head = cfg.model.head if not head_spec(cfg.model.head).cls.trainable else "otam"
    head_module, ckpt = load_eval_head(
        cfg, enc.dim, head_name=head, checkpoint=checkpoint, device=device, trust=trust
    )
    head_name = str(getattr(head_module, "name", head))
    if save_classes is not None:
        enrolled = dataclasses.replace(
            enrolled,
            head=head_name,
            checkpoint=None if ckpt is None else str(Path(ckpt).resolve()),
        )
        enrolled.save(save_classes)
    predictor = Predictor(
        head_module, enc, enrolled, spec, device=device, batch_size=bs, workers=nw
    )
    advance(0, total=len(clips) if stored is not None or names else None, label="predicting")
    rows = list(predictor.run(clips, window=win, stride=strd, fps=fps, on_progress=advance))
    columns = (
        PREDICT_COLUMNS
        + [f"prob:{c}" for c in enrolled.classes]
        + [f"logit:{c}" for c in enrolled.classes]
    )
    table = pd.DataFrame(rows, columns=columns)
    table.attrs.update(
        classes=list(enrolled.classes),
        shots=enrolled.shots.tolist(),
        zero_shot=enrolled.zero_shot,
        head=head_name,
        checkpoint=ckpt,
        encoder=identity["encoder_label"],
        encoder_random=bool(identity["encoder_random"]),
        prompt=f.prompt,
        settings=settings,
        window=None if win is None else f"{win} every {strd or win}",
    )
    return table


def _recipe_from_identity(identity: dict[str, Any], where: str) -> Recipe:
    """The clip settings a classes file records, as a recipe (encoder, frames, crop, prompt)."""
    from ..recipe import recipe_from_dict

    try:
        feats = {
            "encoder": identity["encoder"],
            "weights": identity.get("weights_path"),
            "num_frames": identity["num_frames"],
            "sampling": {"test": identity["sampling"]},
            "resize": identity["resize"],
            "crop": identity["crop"],
            "prompt": identity["prompt"],
            "seed": identity["seed"],
        }
    except KeyError as exc:
        raise DataError(
            f"{where} does not record {exc.args[0]!r}; pass --recipe NAME or -c RUN"
        ) from None
    return recipe_from_dict({"name": "predict", "features": feats})
