"""Opt-in reduced precision for evaluation and frozen training: ``fp32`` (default) or ``bf16``.

``bf16`` runs the heads' matrix products (Transformer, adapter) under ``torch.autocast`` in
bfloat16 (about 1.65x faster on a CPU with AVX512-BF16, and on GPUs with bf16 tensor cores);
matching (cosine and OTAM) stays in float32. It changes results slightly:
``benchmarks/eval_speed.py --precision bf16`` measures the share of per-episode decisions that
change and the change in mean accuracy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..errors import FsarError

__all__ = ["PRECISIONS", "check_precision", "compute_precision"]

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line :class:`FsarError`."""
    if precision not in PRECISIONS:
        raise FsarError(
            f"precision {precision!r} is not one of {', '.join(PRECISIONS)}; use --precision fp32 "
            "(exact, the default) or --precision bf16 (faster, slightly different numbers)"
        )
    return precision


@contextlib.contextmanager
def compute_precision(precision: str, device: str | torch.device) -> Iterator[None]:
    """Run the block's head computations in ``precision`` on ``device`` (``fp32``: unchanged)."""
    if check_precision(precision) == "fp32":
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        yield
