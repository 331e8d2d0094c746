"""Training randomness: per-episode dropout generators, and the global RNG streams of processes.

Dropout: both trainers (:mod:`.frozen`, :mod:`.finetune`) draw the dropout masks of episode ``j``
(global index in the seeded sampler) of optimiser step ``s`` from its own generator,
:func:`episode_generators`, seeded by ``(train.seed, s, j)`` (used through
:func:`fsar_cli.models.transformer.episode_dropout`). An episode's masks thus depend neither on the
rank that trains it nor on the other episodes of its batch nor on an interruption: 1, 2 or 3
processes train the same weights up to the order of floating-point sums, and a resume, with any
number of processes, draws exactly the masks of an uninterrupted run.

The global torch RNG (anything else random) is kept per rank as before: rank 0 keeps the
single-process stream (seeded by ``train.seed`` before the head is built), rank ``r > 0`` draws
from a stream seeded by ``(train.seed, r)``. ``last.pt`` holds every rank's state in rank order: a
resume with the same number of processes restores each rank's own, one with another number
reseeds every rank from ``(train.seed, step, rank)`` (logged).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .. import distributed

__all__ = [
    "DROPOUT_STREAM",
    "episode_generators",
    "seed_rank_stream",
    "rng_state",
    "rng_states",
    "restore_rng",
]

log = logging.getLogger(__name__)


#: Mixed into every episode generator's seed, so its streams never coincide with a rank stream.
DROPOUT_STREAM = 0xD50


def episode_generators(
    seed: int, step: int, episodes: range, dev: torch.device
) -> list[torch.Generator]:
    """One dropout generator per episode of ``episodes`` (global indices) of optimiser ``step``.

    Generator ``j`` is seeded by ``(seed, step, j)``: the same on every rank and after a resume.
    """
    gens = []
    for j in episodes:
        g = torch.Generator(device=dev)
        g.manual_seed(distributed.rank_seed(seed, DROPOUT_STREAM, step, j))
        gens.append(g)
    return gens


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
    # another number of processes: the episodes and their dropout masks are the same (drawn per
    # episode); only the global streams, which training does not draw from, are reseeded
    torch.manual_seed(distributed.rank_seed(seed, step, d.rank))
    if d.is_main:
        log.info(
            "%s was written by %d process(es), this run has %d: the episodes and their dropout "
            "masks stay the same (drawn per episode); the global RNG streams are reseeded from "
            "(train.seed, step %d, rank)",
            source,
            len(states),
            d.world,
            step,
        )
