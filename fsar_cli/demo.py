"""The offline demo: synth -> extract -> cache -> train -> evaluate every head, on one laptop CPU.

Each stage is the same library call the commands make, on a synthetic benchmark rendered by
:func:`fsar_cli.data.synth.render_dataset` (actions in reversed pairs, so frame order matters).
The encoder is fsar's own small CLIP (:mod:`fsar_cli.encoders.offline`, *not* the OpenAI weights),
trained once and cached; ``backbone="ViT-B/32"`` (or any CLIP name) uses real CLIP instead, for
users with internet. Every stage reuses what a previous run finished: the synthetic videos, the
frames, the cache, the training runs (resumed if interrupted) and the evaluations (kept in
``<out>/evals/`` keyed by their settings and the checkpoint they used). ``<out>/demo_state.json``
records the resolved settings each stage was made with; a stage whose settings (or whose inputs)
changed is redone, and everything downstream of it, instead of being reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import atomic
from .ownership import claim
from .recipe import SPLITS, ClassesCfg, Recipe, load_recipe, write_resolved
from .threads import decode_workers

__all__ = ["DemoRow", "DemoResult", "run_demo", "DEMO_HEADS", "TRAINED_HEADS", "DEMO_COLUMNS"]

log = logging.getLogger(__name__)

#: Heads evaluated by the demo, in table order; the last two are meta-trained first.
DEMO_HEADS = ("proto", "otam", "text", "clipfsar-notext", "clipfsar")
TRAINED_HEADS = ("clipfsar-notext", "clipfsar")
DEMO_COLUMNS = ["head", "k_shot", "acc_mean", "acc_ci95", "n_episodes", "seed", "encoder", "note"]

StageFn = Callable[[str, str], None]  # (stage name, detail) when a stage starts
ProgressFn = Callable[..., None]


@dataclass
class DemoRow:
    head: str
    k_shot: int
    acc_mean: float  # percent
    acc_ci95: float  # percent
    n_episodes: int
    seed: int
    encoder: str
    note: str = ""


@dataclass
class DemoResult:
    """What :func:`run_demo` measured, plus where everything is."""

    out_dir: Path
    rows: list[DemoRow]
    encoder: str
    encoder_note: str
    encoder_zero_shot: dict[str, Any]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    csv_path: Path | None = None
    train_summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def acc(self, head: str, k_shot: int) -> tuple[float, float]:
        for r in self.rows:
            if r.head == head and r.k_shot == k_shot:
                return r.acc_mean, r.acc_ci95
        raise KeyError((head, k_shot))


def _demo_recipe(
    out: Path,
    synth_classes: dict[str, list[str]],
    backbone: str,
    weights: Path | None,
    overrides: list[str],
) -> Recipe:
    base = [
        f"data.root={out / 'synth'}",
        f"data.split_dir={out / 'synth' / 'splits'}",
        f"data.frames_root={out / 'frames'}",
        f"features.cache_dir={out / 'cache'}",
    ]
    if backbone != "offline":
        # Real CLIP: the reference's 256x256 resize and 224 crop, and the paper's prompt.
        base += [
            f"features.encoder={backbone}",
            "features.resize=256",
            "features.crop=224",
            "features.prompt=a photo of {}",
            "features.batch_size=64",
        ]
    recipe = load_recipe("synth", base + list(overrides))
    classes = ClassesCfg(**{k: tuple(v) for k, v in synth_classes.items()})
    feats = recipe.features
    if weights is not None:
        feats = dataclasses.replace(feats, weights=str(weights))
    return dataclasses.replace(
        recipe, data=dataclasses.replace(recipe.data, classes=classes), features=feats
    )


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _key(*parts: Any) -> str:
    """A short digest of JSON-able settings (dataclasses included)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return dataclasses.asdict(v)
        return str(v)

    text = json.dumps(parts, sort_keys=True, default=plain)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache_key(extract_key: str, recipe: Recipe, weights_id: str) -> str:
    """The cache stage's key: the frames, the feature settings and the encoder weights.

    The decode thread count does not change the features: it is keyed as its old default, 2, so
    that ``auto`` (and ``--set features.workers=N``) reuse a demo folder's cache.
    """
    return _key(extract_key, dataclasses.replace(recipe.features, workers=2), weights_id)


def _inside(path: Path, out: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(out.resolve())
    except OSError:
        return False


def _forget(path: Path, out: Path, why: str) -> bool:
    """Delete a stage's output folder (only inside ``out``) so the stage is redone."""
    path = Path(path)
    if not path.exists() or not _inside(path, out):
        return False
    log.info("demo: %s changed; redoing %s", why, path)
    shutil.rmtree(path)
    return True


class _State:
    """``<out>/demo_state.json``: the settings key each finished stage was made with."""

    def __init__(self, out: Path) -> None:
        self.path = out / "demo_state.json"
        try:
            self.keys: dict[str, str] = dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            self.keys = {}

    def changed(self, stage: str, key: str) -> bool:
        return self.keys.get(stage) != key

    def set(self, stage: str, key: str) -> None:
        self.keys[stage] = key
        atomic.write_text(self.path, json.dumps(self.keys, indent=1, sort_keys=True))


def _zero_shot(weights: Path, out: Path) -> dict[str, Any]:
    """The offline encoder's own zero-shot numbers (computed once per weights file)."""
    from .encoders.offline import evaluate_offline_encoder

    path = out / "encoder_zero_shot.json"
    digest = _file_digest(weights)
    if path.is_file():
        doc = json.loads(path.read_text())
        if doc.get("weights") == digest:
            return dict(doc["zero_shot"])
    zs = evaluate_offline_encoder(weights)
    atomic.write_text(path, json.dumps({"weights": digest, "zero_shot": zs}, indent=2))
    return zs


def _train(
    recipe: Recipe,
    head: str,
    run_dir: Path,
    device: str,
    on_progress: ProgressFn | None,
    state: _State,
    key: str,
    out: Path,
) -> tuple[dict[str, Any], bool]:
    """Train ``head`` into ``run_dir``: reuse a finished run made with the same settings (``key``),
    resume an interrupted one, start over when the settings changed."""
    from .train.frozen import meta_train

    stage = f"train {head}"
    if state.changed(stage, key):
        _forget(run_dir, out, f"the settings of {stage}")
    summary = run_dir / "summary.json"
    if summary.is_file():
        done = json.loads(summary.read_text())
        if done.get("finished"):
            return done, True
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, head=head))
    resume = (run_dir / "last.pt").is_file()
    if run_dir.exists() and not resume:  # started but killed before its first checkpoint
        if not (run_dir / "resolved_recipe.yaml").is_file():
            claim(run_dir, kind="dir", what="demo run folder", way_out="use another demo folder")
        for name in ("resolved_recipe.yaml", "metrics.csv", "summary.json"):  # fsar's files only
            (run_dir / name).unlink(missing_ok=True)
    state.set(stage, key)  # set before training: an interrupted run resumes with these settings
    meta_train(recipe, run_dir, resume=resume, device=device, on_progress=on_progress)
    return json.loads(summary.read_text()), False


def _evaluate(
    recipe: Recipe,
    head: str,
    k_shot: int,
    checkpoint: Path | None,
    episodes: int,
    seed: int,
    out: Path,
    device: str,
    on_progress: ProgressFn | None,
) -> tuple[dict[str, Any], bool]:
    """One evaluation, reused from ``<out>/evals`` when nothing it depends on changed."""
    from .evaluation.evaluate import evaluate

    ckpt_id = _file_digest(checkpoint) if checkpoint is not None else None
    store_meta = Path(recipe.features.cache_dir) / recipe.eval.split / "meta.json"
    key = {
        "head": head,
        "k_shot": k_shot,
        "episodes": episodes,
        "seed": seed,
        "checkpoint": ckpt_id,
        "cache": _file_digest(store_meta) if store_meta.is_file() else None,
    }
    path = out / "evals" / f"{head}-{k_shot}shot.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("key") == key:
            return old, True
    res = evaluate(
        recipe,
        head_name=head,
        checkpoint=checkpoint,
        k_shot=k_shot,
        episodes=episodes,
        seed=seed,
        device=device,
        db=out / "results.sqlite",
        on_progress=on_progress,
    )
    doc = {
        "key": key,
        "acc_mean": 100.0 * res.mean,
        "acc_ci95": 100.0 * res.ci95,
        "n_episodes": res.n_episodes,
        "encoder": res.encoder,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(doc, indent=2))
    return doc, False


def run_demo(
    out: str | Path = "fsar-demo",
    *,
    backbone: str = "offline",
    seed: int = 0,
    videos_per_class: int = 16,
    episodes: int | None = None,
    train_steps: int | None = None,
    shots: tuple[int, ...] = (1, 5),
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
    overwrite: bool = False,
    on_stage: StageFn | None = None,
    on_progress: ProgressFn | None = None,
) -> DemoResult:
    """Run (or finish) the whole offline demo in ``out`` and return the table's numbers.

    Args:
        backbone: ``offline`` (fsar's small CLIP, no network) or a CLIP name such as ``ViT-B/32``.
        videos_per_class: videos rendered per synthetic class.
        episodes: test episodes per (head, shot); default the synth recipe's ``eval.episodes``.
        train_steps: optimiser steps of each meta-training run; default the recipe's.
        overrides: extra ``key=value`` recipe overrides (applied to every stage).
        overwrite: replace a ``<out>/synth`` (or frames folder) that the demo did not make. Stages
            the demo made itself are redone without it whenever their settings changed.
        on_stage: called with (stage, detail) as each stage starts.
        on_progress: the progress callback handed to each stage (``total`` is reset per stage).
    """
    from .data.extract import extract_frames
    from .data.synth import render_dataset
    from .features.cache import cache_features
    from .features.store import store_path

    if backbone != "offline":
        # Fail before rendering anything if real CLIP weights cannot be had (offline, typo).
        from .encoders.clip import load_encoder

        load_encoder(backbone, device=device)
    out = claim(
        out,
        kind="dir",
        ours=lambda p: (p / "resolved_recipe.yaml").is_file() or (p / "synth").is_dir(),
        what="demo folder",
        way_out="choose another demo folder (a new or empty one)",
    )
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    stage_s: dict[str, float] = {}
    reused: list[str] = []

    def stage(name: str, detail: str) -> float:
        if on_stage is not None:
            on_stage(name, detail)
        log.debug("demo: %s (%s)", name, detail)
        return time.perf_counter()

    # 1. the synthetic benchmark, as real video files + split files
    state = _State(out)
    t = stage("synth", f"rendering videos into {out / 'synth'}")
    made_by_fsar = (out / "synth" / "synth.json").is_file()  # other settings: render it again
    synth = render_dataset(
        out / "synth",
        seed=seed,
        videos_per_class=videos_per_class,
        overwrite=overwrite or made_by_fsar,
        on_progress=on_progress,
    )
    stage_s["synth"] = time.perf_counter() - t
    if synth.reused:
        reused.append("synth")
    synth_key = _key(synth.settings)

    # 2. the encoder
    weights: Path | None = None
    zero_shot: dict[str, Any] = {}
    if backbone == "offline":
        from .encoders.offline import (
            OFFLINE_ENCODER_DESCRIPTION,
            OFFLINE_ENCODER_NAME,
            ensure_offline_encoder,
        )

        t = stage("encoder", f"{OFFLINE_ENCODER_NAME}: trained once, then reused")
        weights = ensure_offline_encoder(on_progress=on_progress)
        zero_shot = _zero_shot(weights, out)
        encoder, note = OFFLINE_ENCODER_NAME, OFFLINE_ENCODER_DESCRIPTION
        stage_s["encoder"] = time.perf_counter() - t
    else:
        encoder, note = backbone, f"OpenAI CLIP {backbone} (downloaded by the clip package)"
    overrides = list(overrides)
    if train_steps is not None:
        overrides.append(f"train.steps={train_steps}")
    recipe = _demo_recipe(out, synth.classes, backbone, weights, overrides)
    write_resolved(recipe, out)
    episodes = episodes or recipe.eval.episodes

    # 3. frames, 4. features
    # (frames of re-rendered videos are re-extracted: extract compares each video's size and
    # mtime; a cache is only valid for the exact videos, encoder and feature settings it was
    # made from, so any change there rebuilds it)
    frames_root = Path(recipe.data.frames_root)
    extract_key = _key(synth_key, recipe.data)
    t = stage("extract", f"frames into {frames_root}")
    if state.changed("extract", extract_key):
        _forget(frames_root, out, "the synthetic videos")
    ext = extract_frames(
        frames_root,
        recipe=recipe,
        workers=decode_workers(recipe.features.workers, "cpu"),  # extraction runs on the CPU
        overwrite=overwrite or _inside(frames_root, out),
        on_progress=on_progress,
    )
    state.set("extract", extract_key)
    stage_s["extract"] = time.perf_counter() - t
    if ext.done == 0:
        reused.append("extract")
    cache_dir = Path(recipe.features.cache_dir)
    weights_id = _file_digest(weights) if weights is not None else backbone
    cache_key = _cache_key(extract_key, recipe, weights_id)
    t = stage("cache", f"features into {cache_dir}")
    cache_changed = state.changed("cache", cache_key)
    if cache_changed:
        _forget(cache_dir, out, "the videos, the encoder or the feature settings")
    # cache_features would reuse finished stores too, but only after loading the encoder (its
    # identity is part of a store's settings); the demo's key already covers the videos, the
    # weights file and the feature settings, so finished stores need no encoder at all
    finished = all((store_path(cache_dir, split) / "meta.json").is_file() for split in SPLITS)
    if cache_changed or not finished:
        cache_features(recipe, device=device, on_progress=on_progress)
        state.set("cache", cache_key)
    else:
        reused.append("cache")
    stage_s["cache"] = time.perf_counter() - t

    # 5. meta-train the two CLIP-FSAR variants (with and without the text token)
    summaries: dict[str, dict[str, Any]] = {}
    for head in TRAINED_HEADS:
        t = stage("train", f"{head}, {recipe.train.steps} steps")
        key = _key(cache_key, recipe.model, recipe.train, head)
        summaries[head], was_reused = _train(
            recipe, head, out / "runs" / head, device, on_progress, state, key, out
        )
        stage_s[f"train {head}"] = time.perf_counter() - t
        if was_reused:
            reused.append(f"train {head}")

    # 6. evaluate every head at 5-way K-shot on the novel (test) classes
    rows: list[DemoRow] = []
    t = stage("eval", f"{len(DEMO_HEADS)} heads x {len(shots)} shots x {episodes} episodes")
    n_reused = 0
    for head in DEMO_HEADS:
        ckpt = out / "runs" / head / "best.pt" if head in TRAINED_HEADS else None
        for k in shots:
            doc, was_reused = _evaluate(
                recipe, head, k, ckpt, episodes, recipe.eval.seed, out, device, on_progress
            )
            n_reused += was_reused
            trained = summaries.get(head)
            best = trained.get("best_val_acc") if trained else None
            extra = (
                f"trained {trained['steps_done']} steps, best val {100 * best:.1f}% "
                f"(step {trained.get('best_step')})"
                if trained and best is not None
                else ("no support used" if head == "text" else "nothing trained")
            )
            rows.append(
                DemoRow(
                    head,
                    k,
                    doc["acc_mean"],
                    doc["acc_ci95"],
                    doc["n_episodes"],
                    recipe.eval.seed,
                    doc["encoder"],
                    extra,
                )
            )
    stage_s["eval"] = time.perf_counter() - t
    if n_reused == len(DEMO_HEADS) * len(shots):
        reused.append("eval")

    csv_path = out / "demo_results.csv"
    frame = pd.DataFrame([dataclasses.asdict(r) for r in rows], columns=DEMO_COLUMNS)
    with atomic.replacing(csv_path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.2f")
    stage_s["total"] = time.perf_counter() - t_all
    return DemoResult(
        out_dir=out,
        rows=rows,
        encoder=encoder,
        encoder_note=note,
        encoder_zero_shot=zero_shot,
        stage_seconds=stage_s,
        reused=reused,
        csv_path=csv_path,
        train_summaries=summaries,
    )
