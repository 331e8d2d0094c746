"""The head an evaluation scores: a trained checkpoint (fsar's or the reference's) or a baseline.

:func:`resolve_checkpoint` turns a run folder into its ``best.pt`` (else ``last.pt``);
:func:`load_eval_head` loads it and checks it against the cache it will score (feature width,
head name), or builds an untrained baseline.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import CheckpointError
from ..features.store import FeatureStore, check_provenance
from ..models.base import FewShotHead
from ..recipe import Recipe

__all__ = ["load_eval_head", "resolve_checkpoint"]

log = logging.getLogger(__name__)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's ``best.pt`` (else ``last.pt``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(
            f"run folder {str(p)!r} has no best.pt or last.pt; train first (`fsar train`) or "
            "pass the checkpoint file itself"
        )
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist (pass a run folder or a file)")
    return p


def load_eval_head(
    recipe: Recipe,
    dim: int,
    *,
    head_name: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    trust: bool = False,
    store: FeatureStore | None = None,
    allow_other_features: bool = False,
) -> tuple[FewShotHead, str | None]:
    """The head to evaluate: from a checkpoint (fsar's or the reference's) or a baseline.

    Args:
        store: the store to evaluate on: refused if an fsar checkpoint recorded other features
            (encoder, weights SHA-256, resolution) unless ``allow_other_features``.
        dim: the store's feature width D (the head must match it).
        head_name: the head to build; default the checkpoint's head, else ``recipe.model.head``.
        checkpoint: a run folder or a checkpoint file; required for trainable heads.
        trust: allow arbitrary unpickling of a reference checkpoint that needs it.
    Returns:
        (head in eval mode on ``device``, the checkpoint file used or None).
    """
    from ..models import create_head, load_head_checkpoint, load_reference_checkpoint

    if checkpoint is None:
        name = head_name or recipe.model.head
        head = create_head(name, dim, recipe.model)
        if head.trainable:
            raise CheckpointError(
                f"head {name!r} has trained parameters: train it first (`fsar train "
                f"{recipe.name}`) or pass --checkpoint RUN_OR_FILE; untrained baselines: "
                "proto, otam, text"
            )
        return head.to(device).eval(), None
    path = resolve_checkpoint(checkpoint)
    try:
        head, extra = load_head_checkpoint(path, trust=trust)
        if store is not None:  # features of another encoder with the same width score wrongly
            check_provenance(
                extra.get("features"),
                store,
                what=f"checkpoint {str(path)!r}",
                allow=allow_other_features,
            )
    except CheckpointError as own:
        try:
            head, tower, _info = load_reference_checkpoint(path, trust=trust)
        except CheckpointError as ref:
            raise CheckpointError(
                f"{path}: neither an fsar checkpoint ({own}) nor a reference one ({ref})"
            ) from None
        if tower is not None:
            log.warning(
                "%s holds fine-tuned visual tower weights; the cached features come from the "
                "encoder named in the cache, so this evaluates the head on those features",
                path,
            )
    if head_name is not None and head.name != head_name:
        raise CheckpointError(
            f"{path} holds a {head.name!r} head, not {head_name!r}; drop --head or pass another "
            "checkpoint"
        )
    if hasattr(head, "merge_before") and head.merge_before != recipe.model.merge_before:
        # how K > 1 shots are merged is an evaluation choice, not a trained weight: the recipe
        # (model.merge_before, overridable with --set) decides
        log.info("merge_before %s -> %s (recipe)", head.merge_before, recipe.model.merge_before)
        head.merge_before = recipe.model.merge_before
    bad = [
        k for k, v in head.state_dict().items() if v.is_floating_point() and not v.isfinite().all()
    ]
    if bad:
        raise CheckpointError(
            f"{path}: weights {bad[0]!r} hold NaN or infinite values ({len(bad)} tensor(s)); "
            "the run diverged: evaluate another checkpoint (e.g. an earlier best.pt)"
        )
    ckpt_dim = _head_dim(head)
    if ckpt_dim is not None and ckpt_dim != dim:
        raise CheckpointError(
            f"{path} was trained on {ckpt_dim}-wide features but the cache has width {dim}; "
            "evaluate with the cache of the encoder it was trained on"
        )
    return head.to(device).eval(), str(path)


def _head_dim(head: FewShotHead) -> int | None:
    dim = getattr(head, "init_kwargs", {}).get("dim")
    return int(dim) if dim is not None else None
