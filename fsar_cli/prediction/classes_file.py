"""``.fsarc``: enrolled classes, i.e. encoded support examples that ``fsar predict`` reuses.

Encoding the support videos is most of the work of a prediction with few queries, and the
support set rarely changes; ``fsar predict --support DIR --save my.fsarc`` writes it once and
``--classes-file my.fsarc`` reuses it (its supports are never encoded again). The file stores
per-frame *encoder* features (not a head's prototypes), so one file serves every head trained on
the same encoder; it also records the head and checkpoint it was made with, the defaults when it
is used. Classes given by name only (``--classes A B --head text``) are a file with no support
clips (S = 0), usable by the text head alone.

Format ``fsar-classes/1``: a NumPy ``.npz`` archive (``np.load(path)`` reads it, no pickle)::

    features  float16 [S, T, D]  per-frame features of the S support clips (as cached)
    labels    int64 [S]          class index of each support clip
    text      float32 [C, D]     text feature of each class (prompt with the class name)
    meta      uint8 [bytes]      UTF-8 JSON: format, classes, support (key, path, label of each
                                 clip), identity (encoder name, random flag, weights SHA-256 and
                                 path, width, precision; frames, sampling, resize, crop, mean,
                                 std, interpolation, seed, prompt), head, checkpoint, fsar version

A file is used only with the encoder and preprocessing that made it: :func:`check_identity` names
the first setting that differs (features of another encoder are not comparable).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, atomic
from ..errors import DataError

__all__ = [
    "CLASSES_FORMAT",
    "EnrolledClasses",
    "load_classes",
    "check_identity",
    "check_encoder",
    "IDENTITY_KEYS",
]

CLASSES_FORMAT = "fsar-classes/1"

#: The settings that make features comparable, and how to name them in an error.
IDENTITY_KEYS = {
    "encoder": "the encoder (--encoder / features.encoder)",
    "encoder_random": "random vs. real encoder weights",
    "weights_sha256": "the encoder weights' SHA-256 (features.weights / --weights)",
    "dim": "the feature width",
    "num_frames": "features.num_frames",
    "sampling": "features.sampling.test",
    "crop_mode": "the crop mode",
    "resize": "features.resize",
    "crop": "features.crop",
    "mean": "the normalisation mean",
    "std": "the normalisation std",
    "interpolation": "the resize interpolation (fsar version)",
    "seed": "features.seed",
    "prompt": "features.prompt",
}


@dataclass
class EnrolledClasses:
    """Encoded support clips of C classes, with the identity of what encoded them."""

    classes: list[str]  # class names, index = class id
    features: np.ndarray  # float16 [S, T, D]
    labels: np.ndarray  # int64 [S]
    text: np.ndarray  # float32 [C, D]
    identity: dict[str, Any]  # IDENTITY_KEYS + encoder_label, precision
    support: list[dict[str, str]] = field(default_factory=list)  # {"key", "path"} per clip
    head: str | None = None  # the head it was enrolled for (default when used)
    checkpoint: str | None = None  # the checkpoint it was enrolled for (default when used)

    def __post_init__(self) -> None:
        S = len(self.labels)
        if self.features.ndim != 3 or len(self.features) != S:
            raise DataError(
                f"enrolled classes: features {self.features.shape} do not match {S} labels"
            )
        if len(self.text) != len(self.classes):
            raise DataError(
                f"enrolled classes: {len(self.text)} text rows for {len(self.classes)} classes"
            )
        if S and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError("enrolled classes: a support label is outside the class list")
        empty = [c for i, c in enumerate(self.classes) if not (self.labels == i).any()]
        if S and empty:
            raise DataError(f"enrolled classes without any support clip: {empty[:5]}")

    @property
    def zero_shot(self) -> bool:
        """Classes by name only: no support clip (the text head alone can use them)."""
        return len(self.labels) == 0

    @property
    def shots(self) -> np.ndarray:
        """int64 [C]: support clips per class."""
        return np.bincount(self.labels, minlength=len(self.classes))

    def save(self, path: str | Path) -> Path:
        """Write the ``.fsarc`` file atomically."""
        meta = {
            "format": CLASSES_FORMAT,
            "classes": list(self.classes),
            "support": list(self.support),
            "identity": self.identity,
            "head": self.head,
            "checkpoint": self.checkpoint,
            "fsar_version": __version__,
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            features=np.ascontiguousarray(self.features, dtype=np.float16),
            labels=np.asarray(self.labels, dtype=np.int64),
            text=np.asarray(self.text, dtype=np.float32),
            meta=np.frombuffer(json.dumps(meta, indent=1).encode(), dtype=np.uint8),
        )
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic.write_bytes(path, buf.getvalue())


def load_classes(path: str | Path) -> EnrolledClasses:
    """Read a ``.fsarc`` file (no pickle). Raises :class:`DataError` for anything else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"classes file {str(path)!r} does not exist (write one with "
            "`fsar predict --support DIR --save FILE.fsarc`)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            feats, labels, text = z["features"], z["labels"], z["text"]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path} is not an fsar classes file ({type(exc).__name__}: {exc})"
        ) from None
    if meta.get("format") != CLASSES_FORMAT:
        raise DataError(
            f"{path} has format {meta.get('format')!r}; this fsar reads {CLASSES_FORMAT!r}"
        )
    return EnrolledClasses(
        classes=[str(c) for c in meta["classes"]],
        features=feats,
        labels=labels.astype(np.int64),
        text=text.astype(np.float32),
        identity=dict(meta.get("identity") or {}),
        support=list(meta.get("support") or []),
        head=meta.get("head"),
        checkpoint=meta.get("checkpoint"),
    )


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def check_identity(have: dict[str, Any], want: dict[str, Any], where: str) -> None:
    """Raise :class:`DataError` naming the first identity setting in which ``have`` differs.

    Args:
        have: the identity recorded with the enrolled classes.
        want: the identity of the encoder and preprocessing this prediction uses.
        where: the file, for the message.
    """
    check_encoder(have, want, where)
    for key, label in IDENTITY_KEYS.items():
        a, b = have.get(key), want.get(key)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            same = len(a) == len(b) and all(
                abs(float(x) - float(y)) < 1e-9 for x, y in zip(a, b, strict=True)
            )
        else:
            same = a == b
        if not same:
            raise DataError(
                f"{where} was enrolled with different settings: {label} was {_short(a)}, this "
                f"prediction uses {_short(b)}. Support and query features must come from the same "
                "encoder and preprocessing: predict with the settings the file records, or enrol "
                "the support again (--support DIR --save FILE)"
            )


def _encoder_name(identity: dict[str, Any]) -> str:
    sha = str(identity.get("weights_sha256") or "?")[:12]
    return f"{identity.get('encoder')!r} (weights SHA-256 {sha}...)"


def check_encoder(have: dict[str, Any], want: dict[str, Any], where: str) -> None:
    """Raise :class:`DataError` naming both encoders when ``have`` was made by another one."""
    if (have.get("encoder"), have.get("weights_sha256")) != (
        want.get("encoder"),
        want.get("weights_sha256"),
    ):
        raise DataError(
            f"{where} was enrolled with encoder {_encoder_name(have)}, not with "
            f"{_encoder_name(want)}: features of different encoders are not comparable. Predict "
            f"with --encoder {have.get('encoder')} (and the weights it records), or enrol the "
            "support again with this encoder (--support DIR --save FILE)"
        )
