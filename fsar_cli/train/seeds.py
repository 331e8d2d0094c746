"""Several training seeds of one recipe: ``OUT/seed-N`` run folders, each the ONE training loop.

``fsar train --seeds 0 1 2 --out RUN`` trains ``RUN/seed-0``, ``RUN/seed-1``, ``RUN/seed-2`` with
``train.seed`` set to N (the training episodes, the head's initialisation and dropout follow it;
validation episodes keep ``train.val_seed``, so every seed is selected on the same episodes).
``fsar eval --checkpoint RUN`` then evaluates every seed on the same test episodes and
``fsar report`` gives mean +- std over the seeds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import TrainError
from ..progress import ProgressFn
from ..recipe import Recipe
from .loop import TrainResult

__all__ = ["seed_folder", "train_seeds"]

log = logging.getLogger(__name__)


def seed_folder(out: str | Path, seed: int) -> Path:
    """The run folder of training seed ``seed`` under ``out``."""
    return Path(out) / f"seed-{int(seed)}"


def train_seeds(
    recipe: Recipe,
    out: str | Path,
    seeds: list[int],
    train_fn: Callable[..., TrainResult],
    *,
    resume: bool = False,
    on_run: Callable[[int, Path], None] | None = None,
    on_progress: ProgressFn | None = None,
    **kwargs: Any,
) -> list[TrainResult | dict[str, Any]]:
    """Train one run per seed with ``train_fn`` (``meta_train`` or ``finetune_train``).

    With ``resume`` a finished seed is kept as it is (its summary.json is returned) and an
    interrupted one continues from its last.pt; without it every seed folder must be new.
    ``on_run(seed, folder)`` is called as each seed starts. Other arguments go to ``train_fn``.
    """
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise TrainError(
            f"--seeds {seeds}: give distinct non-negative integers, e.g. --seeds 0 1 2"
        )
    results: list[TrainResult | dict[str, Any]] = []
    for seed in seeds:
        folder = seed_folder(out, seed)
        summary = folder / "summary.json"
        if resume and summary.is_file():
            done = json.loads(summary.read_text())
            if done.get("finished"):
                log.info("seed %d: finished run kept (%s)", seed, folder)
                results.append(done)
                continue
        if on_run is not None:
            on_run(seed, folder)
        cfg = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, seed=seed))
        do_resume = resume and (folder / "last.pt").is_file()
        results.append(train_fn(cfg, folder, resume=do_resume, on_progress=on_progress, **kwargs))
    return results
