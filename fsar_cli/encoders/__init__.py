"""Image and text encoders (CLIP) and the frame preprocessing that feeds them.

``load_encoder`` and ``Encoder`` live in :mod:`fsar_cli.encoders.clip`, the only module that imports
OpenAI's ``clip`` package; they are imported on first use so that ``import fsar_cli.encoders``
stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Encoder", "load_encoder", "available_encoders", "RANDOM_LABEL", "preprocess_frames"]

from .preprocess import preprocess_frames


def __getattr__(name: str) -> Any:
    if name in ("Encoder", "load_encoder", "available_encoders", "RANDOM_LABEL"):
        from . import clip as _clip

        return getattr(_clip, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
