"""Synthetic data shared by tests, benchmarks and dry runs: no video, no CLIP weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .store import FeatureStore, write_store

__all__ = ["synthetic_features", "synthetic_store"]


def synthetic_features(
    n_classes: int = 8,
    videos_per_class: int = 6,
    n_frames: int = 8,
    dim: int = 32,
    views: int = 1,
    seed: int = 0,
    noise: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features with class structure: each class has a per-frame mean trajectory plus noise.

    Returns:
        features float32 [videos, views, T, D], labels int64 [videos], text float32 [classes, D]
        (text row c = the mean of class c's trajectory plus noise, so text is informative).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, n_frames, dim)).astype(np.float32)
    labels = np.repeat(np.arange(n_classes), videos_per_class)
    feats = centres[labels][:, None] + noise * rng.standard_normal(
        (len(labels), views, n_frames, dim)
    ).astype(np.float32)
    text = centres.mean(axis=1) + noise * rng.standard_normal((n_classes, dim)).astype(np.float32)
    return feats.astype(np.float32), labels.astype(np.int64), text.astype(np.float32)


def synthetic_store(
    path: str | Path,
    n_classes: int = 8,
    videos_per_class: int = 6,
    n_frames: int = 8,
    dim: int = 32,
    views: int = 1,
    seed: int = 0,
    noise: float = 0.5,
    split: str = "test",
) -> FeatureStore:
    """Write a complete synthetic store at ``path`` and open it."""
    feats, labels, text = synthetic_features(
        n_classes, videos_per_class, n_frames, dim, views, seed, noise
    )
    names = [f"class {c}" for c in range(n_classes)]
    index = pd.DataFrame(
        {
            "key": [f"v{i:05d}" for i in range(len(labels))],
            "video_id": [f"v{i:05d}" for i in range(len(labels))],
            "class_id": labels,
            "class_name": [names[c] for c in labels],
            "source": "synthetic",
            "frames_available": n_frames,
            "status": "ok",
            "reason": "",
        }
    )
    meta = {
        "encoder": "synthetic",
        "encoder_random": True,
        "weights_sha256": None,
        "split": split,
        "sampling": "synthetic",
        "class_names": names,
        "prompt": "a photo of {}",
    }
    write_store(path, feats, index, text, meta)
    return FeatureStore.open(path)
