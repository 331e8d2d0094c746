"""Dropout RNG streams of training processes: one per rank, kept in ``last.pt``, restored on resume.

Both trainers (:mod:`.frozen`, :mod:`.finetune`) draw dropout from the global torch
RNG. Rank 0 keeps the single-process stream (seeded by ``train.seed`` before the head is built), so
a one-process run does not depend on :mod:`fsar_cli.distributed`; rank ``r > 0`` draws from a
stream seeded by ``(train.seed, r)``. ``last.pt`` holds every rank's state in rank order: a resume
with the same number of processes restores each rank's own (a killed run continues bit-exactly),
one with another number reseeds every rank from ``(train.seed, step, rank)`` and warns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .. import distributed

__all__ = ["seed_rank_stream", "rng_state", "rng_states", "restore_rng"]

log = logging.getLogger(__name__)


def seed_rank_stream(d: distributed.Dist, seed: int) -> None:
    """Give rank ``r > 0`` its own stream, seeded by ``(seed, r)``; rank 0 keeps its stream."""
    if d.rank > 0:
        torch.manual_seed(distributed.rank_seed(seed, d.rank))


def rng_state(dev: torch.device) -> dict[str, torch.Tensor]:
    """This process's torch RNG state (and the CUDA one of ``dev``)."""
    state = {"torch": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def rng_states(d: distributed.Dist, dev: torch.device) -> list[dict[str, torch.Tensor]]:
    """Every rank's :func:`rng_state`, in rank order (collective: every rank calls it)."""
    return d.all_gather_object(rng_state(dev))


def _set_rng_state(state: dict[str, torch.Tensor], dev: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if dev.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dev)


def restore_rng(
    saved: Any, d: distributed.Dist, dev: torch.device, seed: int, step: int, source: str | Path
) -> None:
    """Restore this rank's RNG state from a saved ``rng`` entry.

    Args:
        saved: :func:`rng_states` as saved (a list in rank order), or one :func:`rng_state` dict.
        seed, step: ``train.seed`` and the step resumed from (the reseed of another world size).
        source: the file it came from (named in the warning).
    """
    states = [saved] if isinstance(saved, dict) else list(saved)
    if len(states) == d.world:
        _set_rng_state(states[d.rank], dev)
        return
    # another number of processes: the episodes are the same, the dropout streams cannot be
    torch.manual_seed(distributed.rank_seed(seed, step, d.rank))
    if d.is_main:
        log.warning(
            "%s was written by %d process(es), this run has %d: the episodes stay the same but "
            "every rank's dropout is reseeded from (train.seed, step %d, rank), so the weights "
            "will differ from an uninterrupted run; resume with %d process(es) to reproduce it",
            source,
            len(states),
            d.world,
            step,
            len(states),
        )
