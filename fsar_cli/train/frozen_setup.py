"""What a frozen-mode training run needs before its first step (:mod:`fsar_cli.train.frozen`).

:func:`build_setup` opens the train and selection stores and checks them against each other,
builds the head (seeded by ``train.seed``), the train sampler and the fixed validation episodes,
and the text table of all meta-train classes; every check runs before the run folder is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..episodes import EpisodeBatch, EpisodeSampler
from ..errors import CacheError, TrainError
from ..features.store import FeatureStore, store_path
from ..models import create_head
from ..models.base import FewShotHead, check_class_text
from ..recipe import Recipe

__all__ = ["TrainSetup", "build_setup"]

log = logging.getLogger(__name__)


def _open(recipe: Recipe, split: str) -> FeatureStore:
    return FeatureStore.open(store_path(recipe.features.cache_dir, split))


def _check_compatible(train: FeatureStore, other: FeatureStore) -> None:
    if other.dim != train.dim or other.num_frames != train.num_frames:
        raise CacheError(
            f"{other.path} has features [T={other.num_frames}, D={other.dim}] but {train.path} "
            f"[T={train.num_frames}, D={train.dim}]; cache both splits with the same encoder"
        )
    a, b = train.meta.get("encoder"), other.meta.get("encoder")
    if a != b or train.meta.get("weights_sha256") != other.meta.get("weights_sha256"):
        raise CacheError(
            f"{other.path} was cached with encoder {b!r} but {train.path} with {a!r} (or other "
            "weights); re-run `fsar cache` so both splits use the same encoder"
        )


@dataclass
class TrainSetup:
    """Everything a run needs besides its state: stores, head, episodes, text table."""

    train_store: FeatureStore
    val_store: FeatureStore
    sel_split: str  # "val" (or "test" with train.select_on: test)
    head: FewShotHead
    sampler: EpisodeSampler
    val_batch: EpisodeBatch
    text_table: torch.Tensor  # [C, D] text of all meta-train classes, on the device


def build_setup(recipe: Recipe, dev: torch.device) -> TrainSetup:
    """Open the stores, build the head and the samplers, and check them all before any write."""
    cfg = recipe.train
    train_store = _open(recipe, "train")
    sel_split = "test" if cfg.select_on == "test" else "val"
    val_store = _open(recipe, sel_split)
    _check_compatible(train_store, val_store)

    torch.manual_seed(cfg.seed)  # initial weights (and dropout, until a checkpoint restores it)
    head = create_head(recipe.model.head, dim=train_store.dim, cfg=recipe.model)
    if not getattr(head, "trainable", False) or not any(p.requires_grad for p in head.parameters()):
        raise TrainError(
            f"head {recipe.model.head!r} has no parameters to train; evaluate it directly with "
            "`fsar eval`, or set model.head to a trainable head (`fsar heads` lists them)"
        )
    views = train_store.num_views
    sampler = EpisodeSampler(
        train_store.labels,
        cfg.n_way,
        cfg.k_shot,
        cfg.n_query,
        seed=cfg.seed,
        usable=train_store.usable,
        class_names=train_store.class_names,
        allow_missing=True,
        num_views=views,
        sample_views=views > 1,
        split="train",
    )
    # fixed validation episodes: eval protocol way and queries, the training shot
    val_batch = EpisodeSampler(
        val_store.labels,
        recipe.eval.n_way,
        cfg.k_shot,
        recipe.eval.n_query,
        seed=cfg.val_seed,
        usable=val_store.usable,
        class_names=val_store.class_names,
        allow_missing=True,
        split=sel_split,
    ).sample(cfg.val_episodes)
    for store, name in ((train_store, "train"), (val_store, sel_split)):
        if store.n_missing:
            log.warning("%s: %s; sampling from the others", name, store.missing_summary())
    # the video-text loss uses the text of every meta-train class, sampled or not
    for store, split, classes in (
        (train_store, "train", np.arange(len(train_store.text))),
        (val_store, sel_split, val_batch.classes),
    ):
        check_class_text(
            head,
            store.text,
            classes,
            error=TrainError,
            split=split,
            names=store.class_names,
            source=str(store.path),
        )
    # A class without text (possible only for a head without text) gets a zero row: never used.
    text_np = np.nan_to_num(np.asarray(train_store.text, np.float32), nan=0.0)
    return TrainSetup(
        train_store,
        val_store,
        sel_split,
        head.to(dev).train(),
        sampler,
        val_batch,
        torch.from_numpy(text_np).to(dev),
    )
