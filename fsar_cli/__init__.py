"""fsar: CLIP for few-shot action recognition.

The public verbs (imported lazily, so ``import fsar_cli`` and ``fsar --help`` stay fast):
``load_recipe``, ``extract_frames``, ``cache_features``, ``meta_train``, ``evaluate``,
``predict`` and ``write_report``. The package's rooms follow the data path (README, "Architecture").
Shape letters used in docstrings and comments throughout: ``E`` episodes in a
batch, ``W`` way, ``K`` shot, ``Q`` queries per class, ``T`` frames, ``D`` feature width, ``C``
classes of a split, ``V`` views per video.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

# OpenAI's `clip` imports pkg_resources (hence setuptools<81), which warns on every import.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load_recipe",
    "extract_frames",
    "cache_features",
    "meta_train",
    "evaluate",
    "predict",
    "write_report",
]

_LAZY = {
    "load_recipe": "fsar_cli.recipe",
    "extract_frames": "fsar_cli.data.extract",
    "cache_features": "fsar_cli.features.cache",
    "meta_train": "fsar_cli.train.frozen",
    "evaluate": "fsar_cli.evaluation.evaluate",
    "predict": "fsar_cli.prediction.predictor",
    "write_report": "fsar_cli.results.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fsar_cli' has no attribute {name!r}")
