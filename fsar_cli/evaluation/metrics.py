"""Metrics: accuracy and the protocol's 95% confidence interval."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["accuracy", "mean_and_ci95"]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-episode accuracy.

    Args:
        logits: [E, N_q, W] (or [N_q, W] for one episode).
        labels: [E, N_q] (or [N_q]) episode labels 0..W-1.
    Returns:
        float64 [E] (or a 0-d array): fraction of queries whose arg-max is their label.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    return (logits.argmax(axis=-1) == labels).mean(axis=-1).astype(np.float64)


def mean_and_ci95(accs: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval, ``1.96 * std / sqrt(n)``.

    ``std`` is the population standard deviation (numpy's default, as in the reference code).
    """
    a = np.asarray(accs, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no accuracies")
    return float(a.mean()), float(1.96 * a.std() / math.sqrt(a.size))
