"""The run folder of ``fsar train``: recipe, checkpoints, metrics, summary; all written atomically.

Layout of a run folder (format ``fsar-run/1``)::

    resolved_recipe.yaml  the full recipe (and the command line, as a comment); a resume must
                          match it (except :data:`RESUME_MAY_CHANGE`)
    last.pt               training state, every ``train.checkpoint_every`` steps and at the end:
                          head weights, optimiser state, completed steps, torch RNG state(s), best
                          validation so far, seconds trained (loadable with weights_only=True)
    best.pt               head weights of the best validation accuracy (+ accuracy, CI, step);
                          readable by ``fsar_cli.models.load_head_checkpoint`` (for ``fsar eval``)
    metrics.csv           one row per optimiser step (see :data:`METRICS_COLUMNS`); validation
                          columns are filled on validation steps only
    summary.json          final and best validation, steps, episodes seen, the cache's encoder, time

A file is written beside its target and renamed over it, so a run killed at any moment leaves every
file either old or new, never half-written; a resume keeps the metrics rows up to ``last.pt``'s
step.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import atomic
from ..errors import CheckpointError, RecipeError, TrainError
from ..recipe import Recipe, recipe_from_dict, recipe_to_dict, write_resolved

__all__ = [
    "RunDir",
    "MetricsLog",
    "METRICS_COLUMNS",
    "RESUME_MAY_CHANGE",
    "RUN_FORMAT",
    "STATE_FORMAT",
    "recipe_differences",
]

RUN_FORMAT = "fsar-run/1"
STATE_FORMAT = "fsar-train-state/1"
METRICS_COLUMNS = [
    "step",
    "loss",
    "ce_fewshot",
    "ce_videotext",
    "lr",
    "val_acc",
    "val_ci95",
    "val_split",
    "seconds",
]


#: Recipe keys a resume may change: they cannot change what training computes.
#: ``features.workers``: decode threads of ``fsar cache`` and ``fsar predict``, which training never
#: uses (frozen training reads the cache; fine-tuning decodes in ``train.workers`` processes); its
#: default became ``auto``.
RESUME_MAY_CHANGE = frozenset({"features.workers"})


def recipe_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain recipe mappings."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        dotted = f"{prefix}.{key}" if prefix else str(key)
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(recipe_differences(va, vb, dotted))
        elif va != vb:
            out.append(dotted)
    return out


class MetricsLog:
    """``metrics.csv``: one row per step, appended and flushed as training goes.

    Args:
        path: the CSV file.
        keep_upto: on open, keep only the complete rows whose step is <= this (a resume from a
            checkpoint at that step); None starts a new file.
    """

    def __init__(self, path: Path, keep_upto: int | None = None) -> None:
        self.path = path
        rows: list[dict[str, str]] = []
        if keep_upto is not None and path.is_file():
            rows = [r for r in self.read(path) if int(r["step"]) <= keep_upto]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, METRICS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic.write_text(path, buf.getvalue())

    @staticmethod
    def read(path: Path) -> list[dict[str, str]]:
        """Complete rows of a metrics file (a line cut short by a kill is left out)."""
        rows = []
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                if None in row or any(row.get(c) is None for c in METRICS_COLUMNS):
                    continue  # wrong number of fields: a partial line
                try:
                    int(row["step"])
                except ValueError:
                    continue
                rows.append(row)
        return rows

    def append(self, row: dict[str, Any]) -> None:
        """Append one row (missing columns are left empty); one write call per line."""
        buf = io.StringIO()
        csv.DictWriter(buf, METRICS_COLUMNS, lineterminator="\n").writerow(
            {c: _fmt(row.get(c)) for c in METRICS_COLUMNS}
        )
        with open(self.path, "a") as fh:
            fh.write(buf.getvalue())


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class RunDir:
    """Paths and guarded start/resume of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def resolved(self) -> Path:
        return self.path / "resolved_recipe.yaml"

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    def check(self, recipe: Recipe, *, resume: bool) -> None:
        """Check, without writing, that a run can start (or resume) in this folder.

        Raises:
            TrainError: the folder holds files and ``resume`` is False; or ``resume`` is True and
                the folder is not a run, or its ``resolved_recipe.yaml`` differs from ``recipe``.
        """
        if self.path.exists() and not self.path.is_dir():
            raise TrainError(f"run folder {str(self.path)!r} is a file; choose another --out")
        if not resume:
            if self.path.is_dir() and any(self.path.iterdir()):
                raise TrainError(
                    f"run folder {str(self.path)!r} is not empty; pass --resume to continue the "
                    "run in it, or choose a new --out folder"
                )
            return
        if not self.resolved.is_file():
            raise TrainError(
                f"cannot resume: {str(self.resolved)!r} does not exist (not a run folder); "
                "start a new run without --resume"
            )
        try:
            saved = recipe_to_dict(recipe_from_dict(yaml.safe_load(self.resolved.read_text())))
        except (yaml.YAMLError, RecipeError) as exc:
            raise TrainError(f"cannot resume: {self.resolved} is unreadable ({exc})") from None
        now = recipe_to_dict(recipe)
        diff = [k for k in recipe_differences(saved, now) if k not in RESUME_MAY_CHANGE]
        if diff:
            shown = ", ".join(
                f"{k} ({_lookup(saved, k)!r} in the run, {_lookup(now, k)!r} now)" for k in diff[:5]
            )
            raise TrainError(
                f"cannot resume {str(self.path)!r}: the recipe differs from the run's "
                f"resolved_recipe.yaml in {shown}{' ...' if len(diff) > 5 else ''}; resume with "
                "the same recipe and --set overrides, or start a new run in another --out folder"
            )

    def start(self, recipe: Recipe, argv: list[str] | None = None) -> None:
        """Create the folder and write ``resolved_recipe.yaml`` (after :meth:`check`)."""
        write_resolved(recipe, self.path, argv)

    def load_state(self) -> dict[str, Any] | None:
        """The training state in ``last.pt``, or None when no checkpoint was written yet."""
        if not self.last.is_file():
            return None
        try:
            state = torch.load(self.last, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file: say which and how to recover
            raise CheckpointError(
                f"{self.last}: cannot read the training state ({exc}); delete it to restart the "
                "run from step 0 with --resume, or start a new run"
            ) from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{self.last}: not an fsar training state ({STATE_FORMAT})")
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        atomic.torch_save({"format": STATE_FORMAT, **state}, self.last)

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps({"format": RUN_FORMAT, **summary}, indent=2, default=str)
        atomic.write_text(self.summary, text + "\n")


def _lookup(d: dict[str, Any], dotted: str) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
