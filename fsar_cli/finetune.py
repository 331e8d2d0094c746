"""End-to-end fine-tuning: the CLIP visual tower and the head, trained from frames (train.mode:
finetune; METHOD.md sections 4, 5 and 7, the paper's setting).

Per optimiser step, ``train.episodes_per_step`` episodes (16, the reference's 4 GPUs x 4
accumulation steps) are processed one at a time (micro-batches of one episode: frames ->
visual tower -> head -> ``loss / episodes_per_step`` -> backward), so the gradient of a step is that
of the mean loss over its episodes while memory holds the activations of one episode only. Under
``torchrun`` the episodes of a step are split across ranks and the gradients averaged (the same
update as DistributedDataParallel); only rank 0 writes files.

- Data: :class:`fsar_cli.data.clips.EpisodeClips` in ``train.workers`` DataLoader processes, frames
  seeded per (train.seed, episode, slot), so a resumed run, and any worker count, see the same data.
- Text: the train classes' text features (``features.prompt``) are computed once with the frozen
  text tower, which never reaches the accelerator.
- Losses and head: as the frozen mode (``head.batch_episode_loss``: few-shot CE + ``lambda_vt`` x
  video-text CE against all train classes), except that the frozen-mode adapter is not used
  (``model.adapter`` is taken as ``none``): here the tower itself is trained, as in the paper.
- Optimiser and schedule: the frozen trainer's (:func:`fsar_cli.schedule.build_optimizer`, Adam
  with L2 ``train.weight_decay`` except on normalisation parameters, :func:`lr_at`).
- Memory: bf16 autocast on CUDA (fp16 with a gradient scaler where bf16 is missing) when
  ``train.amp``; ``train.grad_checkpointing`` recomputes each residual block of the tower in the
  backward pass instead of keeping its activations (BatchNorm statistics are updated once).
- Validation: every ``train.val_every`` steps the validation videos of ``train.val_episodes``
  fixed episodes are encoded with the current tower (centre sampling and crop, no augmentation) and
  evaluated with :func:`fsar_cli.evaluate.episode_accuracies`; the best step is kept.

Run folder: as :mod:`fsar_cli.runs` (``last.pt`` also holds ``tower_state``, the optimiser state of
the tower and the head, and the RNG state of every rank), plus ``tower.pt``, the visual tower of
``best.pt`` as ``{"visual.<key>": tensor}`` (OpenAI CLIP names), and ``tower.json`` naming its
architecture: ``fsar cache --encoder <tower.json encoder> --weights <run>/tower.pt`` caches features
with the fine-tuned tower.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .data.clips import ClipSpec, EpisodeClips, VideoClips, default_query_augment, split_sources
from .encoders.preprocess import normalize
from .episodes import EpisodeBatch, EpisodeSampler
from .errors import DataError, TrainError
from .evaluate import episode_accuracies
from .metrics import mean_and_ci95
from .models import create_head, save_head_checkpoint
from .recipe import Recipe
from .runs import MetricsLog, RunDir, atomic_torch_save, atomic_write_text
from .schedule import build_optimizer, lr_at, set_lr
from .train import TEST_LABEL, TrainResult

__all__ = [
    "finetune_train",
    "enable_grad_checkpointing",
    "amp_dtype",
    "encode_clips",
    "episode_loss",
    "tower_state_dict",
    "save_tower",
    "TOWER_FILE",
    "TOWER_META",
]

log = logging.getLogger(__name__)

TOWER_FILE = "tower.pt"
TOWER_META = "tower.json"
_BUCKET = 1 << 24  # gradient elements per all-reduce
_LOSSES = ("loss", "ce_fewshot", "ce_videotext")


# --------------------------------------------------------------------------- the tower


def _residual_blocks(visual: nn.Module) -> list[nn.Module]:
    """Residual blocks of a CLIP ViT (``transformer.resblocks``) or ModifiedResNet (layer1-4)."""
    resblocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if isinstance(resblocks, nn.Sequential):
        return list(resblocks)
    layers = [getattr(visual, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(layer, nn.Sequential) for layer in layers):
        return [block for layer in layers for block in layer]  # type: ignore[union-attr]
    raise TrainError(
        f"train.grad_checkpointing: {type(visual).__name__} is neither a CLIP VisionTransformer "
        "nor a ModifiedResNet; set train.grad_checkpointing=false"
    )


@contextlib.contextmanager
def _bn_stats_frozen(module: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics unchanged inside (the recomputation of a checkpointed block)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
        for m in bns
    ]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def enable_grad_checkpointing(visual: nn.Module) -> int:
    """Recompute each residual block of a CLIP visual tower in the backward pass.

    The blocks' ``forward`` is replaced on the instances (module names and state-dict keys do not
    change); blocks run normally without gradients (validation) and in eval mode.

    Returns:
        The number of blocks wrapped.
    """
    blocks = _residual_blocks(visual)
    for block in blocks:
        if getattr(block, "_fsar_checkpointed", False):
            continue
        inner = block.forward

        def run(*args: Any, _inner: Callable[..., Any] = inner, _block: nn.Module = block) -> Any:
            if not (torch.is_grad_enabled() and _block.training):
                return _inner(*args)
            return checkpoint(
                _inner,
                *args,
                use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(), _bn_stats_frozen(_block)),
            )

        block.forward = run  # type: ignore[method-assign]
        block._fsar_checkpointed = True  # type: ignore[assignment]
    return len(blocks)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA (fp16 where bf16 is missing), None (fp32) otherwise."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def encode_clips(
    visual: nn.Module, frames: torch.Tensor, device: torch.device, amp: torch.dtype | None = None
) -> torch.Tensor:
    """Per-frame features of uint8 clips ``[N, T, 3, C, C]`` -> float32 ``[N, T, D]``."""
    n, t = frames.shape[:2]
    x = normalize(frames.flatten(0, 1), device)  # float32 [N*T, 3, C, C], scaled and normalised
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        f = visual(x)  # [N*T, D]
    return f.float().reshape(n, t, -1)


def episode_loss(
    visual: nn.Module,
    head: nn.Module,
    item: dict[str, torch.Tensor],
    text_table: torch.Tensor,
    lambda_vt: float,
    device: torch.device,
    amp: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Loss of one episode of :class:`EpisodeClips` through the tower and the head.

    Args:
        item: an ``EpisodeClips`` item (frames ``[W*(K+Q), T, 3, C, C]`` uint8 and labels).
        text_table: ``[C, D]`` text features of all train classes, on ``device``.
    Returns:
        ``loss``, ``ce_fewshot``, ``ce_videotext`` (scalars).
    """
    feats = encode_clips(visual, item["frames"], device, amp)  # [W*(K+Q), T, D]
    sl = item["support_labels"].to(device)[None]  # [1, W*K]
    ql = item["query_labels"].to(device)[None]  # [1, W*Q]
    support, query = feats[None, : sl.shape[1]], feats[None, sl.shape[1] :]  # [1, N_s|N_q, T, D]
    class_text = text_table[item["classes"].to(device)][None]  # [1, W, D]
    if hasattr(head, "batch_episode_loss"):
        out = head.batch_episode_loss(
            support,
            sl,
            query,
            ql,
            class_text,
            item["video_labels"].to(device)[None],
            text_table,
            lambda_vt,
        )
        return {k: out[k] for k in ("loss", "ce_fewshot", "ce_videotext")}
    logits = head.batch_episode_logits(support, sl, query, class_text)  # [1, N_q, W]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ql.reshape(-1))
    return {"loss": ce, "ce_fewshot": ce, "ce_videotext": ce.new_zeros(())}


def tower_state_dict(visual: nn.Module) -> dict[str, torch.Tensor]:
    """The tower's weights under OpenAI CLIP names (``visual.<key>``), on the CPU."""
    return {f"visual.{k}": v.detach().to("cpu", copy=True) for k, v in visual.state_dict().items()}


def save_tower(path: str | Path, visual: nn.Module, info: dict[str, Any]) -> Path:
    """Write ``tower.pt`` (``{"visual.<key>": tensor}``) and ``tower.json`` (``info``)."""
    path = Path(path)
    atomic_torch_save(tower_state_dict(visual), path)
    atomic_write_text(path.with_name(TOWER_META), json.dumps(info, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- setup helpers


def _check_cfg(recipe: Recipe, world: int) -> None:
    cfg = recipe.train
    if cfg.mode != "finetune":
        raise TrainError(
            f"train.mode is {cfg.mode!r}: end-to-end training needs train.mode=finetune "
            "(`fsar train --mode finetune`)"
        )
    for key in ("steps", "episodes_per_step", "val_every", "val_episodes", "checkpoint_every"):
        if getattr(cfg, key) < 1:
            raise TrainError(f"recipe key train.{key} must be >= 1 (got {getattr(cfg, key)})")
    if cfg.workers < 0:
        raise TrainError(f"recipe key train.workers must be >= 0 (got {cfg.workers})")
    if cfg.episodes_per_step < world:
        raise TrainError(
            f"train.episodes_per_step={cfg.episodes_per_step} is less than the {world} processes "
            "of this run; every rank needs at least one episode per step"
        )


def _device(d: distributed.Dist, device: str) -> torch.device:
    dev = d.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise TrainError(f"--device {device}: use cpu or cuda")
    return dev


def _text(encoder: Any, names: tuple[str | None, ...], prompt: str) -> np.ndarray:
    """float32 [C, D] text features of ``prompt.format(name)``; NaN rows for unnamed classes."""
    text = np.full((len(names), encoder.dim), np.nan, dtype=np.float32)
    known = [(i, n) for i, n in enumerate(names) if n]
    if known:
        feats = encoder.encode_text([prompt.format(n) for _, n in known])  # [C_known, D]
        text[[i for i, _ in known]] = feats.numpy()
    return text


def _need_text(text: np.ndarray, classes: np.ndarray, split: str, names: tuple) -> None:
    bad = [int(c) for c in np.unique(classes) if c >= len(text) or np.isnan(text[c]).any()]
    if bad:
        raise TrainError(
            f"the head uses class text, but {split} classes {bad[:5]} have no name in the recipe "
            f"(data.classes.{split} lists {len(names)}); add their names, or use a head without "
            "text (model.head: clipfsar-notext)"
        )


def _loader(ds: Dataset, workers: int, dev: torch.device, seed: int) -> DataLoader:
    """Items in order, decoded by ``workers`` processes; never touches the global torch RNG."""
    return DataLoader(
        ds,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        generator=torch.Generator().manual_seed(seed),  # the base seed of workers: not global
        prefetch_factor=2 if workers > 0 else None,
    )


def _rng_state(dev: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], dev: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if dev.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dev)


def _all_reduce_grads(d: distributed.Dist, params: list[nn.Parameter]) -> None:
    """Average gradients across ranks in flat buckets (what DistributedDataParallel does)."""
    if not d.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    while grads:
        bucket, size = [], 0
        while grads and (not bucket or size + grads[0].numel() <= _BUCKET):
            size += grads[0].numel()
            bucket.append(grads.pop(0))
        flat = torch.cat([g.reshape(-1) for g in bucket])
        d.all_reduce_mean_([flat])
        for g, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
            g.copy_(part.view_as(g))


def _episode_source(
    recipe: Recipe, split: str, n_way: int, n_query: int, seed: int
) -> tuple[list[Any], list[Path | None], EpisodeSampler]:
    """A split's entries, where their frames are, and a sampler over the ones that exist."""
    entries, sources = split_sources(recipe, split)
    usable = np.array([s is not None for s in sources], bool)
    sampler = EpisodeSampler(
        np.array([e.class_id for e in entries], np.int64),
        n_way,
        recipe.train.k_shot,
        n_query,
        seed=seed,
        usable=usable,
        class_names=list(recipe.data.classes.for_split(split)),
        allow_missing=True,
        split=split,
    )
    if sampler.n_missing:
        log.warning(
            "%s: %d of %d listed videos have no frames or video file; sampling from the others",
            split,
            sampler.n_missing,
            len(entries),
        )
    return entries, sources, sampler


@dataclasses.dataclass
class _Val:
    """The fixed validation episodes and what encoding them needs."""

    split: str
    label: str  # "val", or the TEST label of train.select_on=test
    batch: EpisodeBatch
    rows: np.ndarray  # the split rows the episodes use
    sources: list[Path | None]
    entries: list[Any]
    text: np.ndarray  # [C, D], NaN rows for unnamed classes
    n_missing: int


def _validate(
    visual: nn.Module,
    head: nn.Module,
    val: _Val,
    recipe: Recipe,
    dev: torch.device,
    amp: torch.dtype | None,
    d: distributed.Dist,
) -> tuple[float, float]:
    """Encode the validation videos with the current tower, then evaluate the fixed episodes."""
    f = recipe.features
    spec = ClipSpec(f.num_frames, f.resize, f.crop, "center", "center", False, 0)
    a, b = d.split(len(val.rows))
    mine = val.rows[a:b]  # this rank's share of the videos
    per_batch = max(1, f.batch_size // f.num_frames)
    ds = VideoClips(val.sources, mine, spec, val.entries)
    out: list[np.ndarray] = []
    pending: list[torch.Tensor] = []
    visual.eval()
    try:
        with torch.inference_mode():
            for i, item in enumerate(_loader(ds, recipe.train.workers, dev, recipe.train.val_seed)):
                if "error" in item:
                    raise DataError(f"validation video {item['error']}")
                pending.append(item["frames"])  # [T, 3, C, C] uint8
                if len(pending) == per_batch or i == len(mine) - 1:
                    feats = encode_clips(visual, torch.stack(pending), dev, amp)  # [B, T, D]
                    out.append(feats.cpu().numpy())
                    pending = []
    finally:
        visual.train()
    local = np.concatenate(out) if out else np.zeros((0, f.num_frames, 1), np.float32)
    parts = d.all_gather_object((mine, local))
    dim = next(p[1].shape[-1] for p in parts if len(p[0]))
    features = np.zeros((len(val.sources), 1, f.num_frames, dim), np.float32)  # [videos, V, T, D]
    for rows, feats in parts:
        features[rows, 0] = feats
    accs = episode_accuracies(head, features, val.text, val.batch, device=str(dev))
    return mean_and_ci95(accs)


@dataclasses.dataclass
class _Model:
    """What trains: the tower and the head, their optimiser, and the frozen text."""

    encoder: Any
    visual: nn.Module
    head: nn.Module
    text_table: torch.Tensor  # [C, D] train classes, on the device (zeros for unnamed)
    val_text: np.ndarray  # [C_val, D], NaN for unnamed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    params: list[nn.Parameter]

    @property
    def modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"tower": self.visual, "head": self.head})


def _build(
    recipe: Recipe,
    dev: torch.device,
    amp: torch.dtype | None,
    classes: np.ndarray,
    val_split: str,
    val_classes: np.ndarray,
) -> _Model:
    """Load the encoder on the CPU, compute the text once, put the tower and a new head on dev."""
    from .encoders.clip import load_encoder

    f, cfg = recipe.features, recipe.train
    enc = load_encoder(f.encoder, f.weights, device="cpu")
    if f.crop != enc.input_resolution or f.resize < f.crop:
        raise TrainError(
            f"features.crop={f.crop}, features.resize={f.resize}, but encoder {enc.name!r} takes "
            f"{enc.input_resolution}x{enc.input_resolution} images; set features.crop="
            f"{enc.input_resolution} and features.resize >= it"
        )
    names, v_names = recipe.data.classes.train, recipe.data.classes.for_split(val_split)
    text, v_text = _text(enc, names, f.prompt), _text(enc, v_names, f.prompt)
    visual = enc.model.visual.float().to(dev).requires_grad_(True).train()
    if cfg.grad_checkpointing:
        n_blocks = enable_grad_checkpointing(visual)
        log.info("activation checkpointing on %d residual blocks", n_blocks)
    torch.manual_seed(cfg.seed)  # the head's initial weights (and dropout, until a resume)
    model_cfg = dataclasses.replace(recipe.model, adapter="none")  # the tower itself trains
    head = create_head(model_cfg.head, dim=enc.dim, cfg=model_cfg).to(dev).train()
    if getattr(head, "uses_text", False):
        _need_text(text, classes, "train", names)
        _need_text(v_text, val_classes, val_split, v_names)
    modules = nn.ModuleDict({"tower": visual, "head": head})
    return _Model(
        enc,
        visual,
        head,
        torch.from_numpy(np.nan_to_num(text, nan=0.0)).to(dev),
        v_text,
        build_optimizer(modules, cfg),
        torch.amp.GradScaler("cuda") if amp == torch.float16 else None,
        [p for p in modules.parameters() if p.requires_grad],
    )


def _train_step(
    m: _Model,
    stream: Iterator[dict[str, Any]],
    n_local: int,
    weight: float,
    recipe: Recipe,
    dev: torch.device,
    amp: torch.dtype | None,
    d: distributed.Dist,
) -> dict[str, float]:
    """One optimiser step over this rank's ``n_local`` episodes (micro-batches of one episode)."""
    cfg = recipe.train
    m.optimizer.zero_grad(set_to_none=True)
    sums = torch.zeros(3, device=dev)  # loss, ce_fewshot, ce_videotext
    for _ in range(n_local):
        item = next(stream)
        if "error" in item:
            raise DataError(
                f"train episode {item['episode']}: {item['error']}; fix or remove the video "
                "(`fsar data check` lists them) and rerun with --resume"
            )
        out = episode_loss(m.visual, m.head, item, m.text_table, cfg.lambda_vt, dev, amp)
        loss = out["loss"] * weight
        (m.scaler.scale(loss) if m.scaler is not None else loss).backward()
        sums += torch.stack([out[k].detach().float() for k in _LOSSES]) * weight
    _all_reduce_grads(d, m.params)
    d.all_reduce_mean_([sums])
    if m.scaler is not None:
        m.scaler.unscale_(m.optimizer)
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(m.params, float(cfg.grad_clip))
    if m.scaler is not None:
        m.scaler.step(m.optimizer)
        m.scaler.update()
    else:
        m.optimizer.step()
    if d.enabled:  # BatchNorm statistics: rank 0's, as DistributedDataParallel broadcasts them
        for buf in m.modules.buffers():
            torch.distributed.broadcast(buf, 0)
    return dict(zip(_LOSSES, sums.cpu().tolist(), strict=True))


def _save_state(
    run: RunDir,
    m: _Model,
    d: distributed.Dist,
    dev: torch.device,
    done: int,
    extra: dict[str, Any],
) -> None:
    """``last.pt``: weights, optimiser, every rank's RNG state (all ranks must call this)."""
    rngs = d.all_gather_object(_rng_state(dev))
    if d.is_main:
        run.save_state(
            {
                "mode": "finetune",
                "step": done,
                "model_state": _cpu(m.head),
                "tower_state": tower_state_dict(m.visual),
                "optimizer": m.optimizer.state_dict(),
                "scaler": m.scaler.state_dict() if m.scaler is not None else None,
                "rng": rngs,
                "head": m.head.name,
                "encoder": m.encoder.name,
                **extra,
            }
        )


def _load_state(run: RunDir, m: _Model, d: distributed.Dist, dev: torch.device) -> dict[str, Any]:
    state = run.load_state()
    if state is None:
        return {}
    if state.get("mode") != "finetune":
        raise TrainError(f"{run.last} is not a finetune-mode state; resume it in its own mode")
    tower = {k.removeprefix("visual."): v for k, v in state["tower_state"].items()}
    m.visual.load_state_dict(tower)
    m.head.load_state_dict(state["model_state"])
    m.optimizer.load_state_dict(state["optimizer"])
    if m.scaler is not None and state.get("scaler"):
        m.scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    _set_rng_state(rngs[d.rank] if len(rngs) == d.world else rngs[0], dev)
    log.info("resuming %s from step %d", run.path, state["step"])
    return state


# --------------------------------------------------------------------------- the loop


def finetune_train(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    on_progress: Callable[..., None] | None = None,
    max_steps: int | None = None,
    argv: list[str] | None = None,
) -> TrainResult:
    """Fine-tune the CLIP visual tower and the recipe's head end to end, from frames.

    Args:
        recipe: the recipe (``train.mode`` must be ``finetune``); frames come from
            ``data.frames_root`` + ``data.frames_layout`` or ``data.root`` + ``data.video_layout``
            (``features.source``), the tower from ``features.encoder`` / ``features.weights``.
        out_dir: the run folder (new or empty; or an existing run with ``resume``).
        resume: continue the run in ``out_dir`` from its ``last.pt`` (same recipe required).
        device: ``cpu``, ``cuda`` or ``cuda:i`` (under torchrun ``cuda`` is the local rank's GPU).
        on_progress: ``on_progress(n, total=, label=)`` after every optimiser step.
        max_steps: stop after this many completed steps (the schedule still spans ``train.steps``).
        argv: command line recorded in ``resolved_recipe.yaml``.
    Returns:
        :class:`fsar_cli.train.TrainResult` (also written to ``summary.json``).
    Raises:
        TrainError, DataError, EncoderError, CheckpointError: with the file or key to fix.
    """
    d = distributed.init(device)
    _check_cfg(recipe, d.world)
    cfg, f = recipe.train, recipe.features
    dev = _device(d, device)
    amp = amp_dtype(dev, cfg.amp)
    run = RunDir(out_dir)

    entries, sources, sampler = _episode_source(recipe, "train", cfg.n_way, cfg.n_query, cfg.seed)
    sel = "test" if cfg.select_on == "test" else "val"
    v_entries, v_sources, v_sampler = _episode_source(
        recipe, sel, recipe.eval.n_way, recipe.eval.n_query, cfg.val_seed
    )
    v_batch = v_sampler.sample(cfg.val_episodes)
    v_rows = np.unique(np.concatenate([v_batch.support_rows.ravel(), v_batch.query_rows.ravel()]))
    if d.is_main:
        run.prepare(recipe, resume=resume, argv=argv)
    d.barrier()
    if sel == "test":
        log.warning(
            "train.select_on=test: checkpoints are selected on the TEST split (reference "
            "behaviour); results are labelled as such"
        )
    m = _build(recipe, dev, amp, sampler.classes, sel, v_batch.classes)
    val = _Val(
        sel,
        TEST_LABEL if sel == "test" else "val",
        v_batch,
        v_rows,
        v_sources,
        v_entries,
        m.val_text,
        v_sampler.n_missing,
    )

    state = _load_state(run, m, d, dev) if resume else {}
    start, seconds = int(state.get("step", 0)), float(state.get("seconds", 0.0))
    best: dict[str, Any] = dict(state.get("best") or {"acc": None, "ci95": None, "step": None})
    final_val = tuple(state["final_val"]) if state.get("final_val") else None
    metrics = MetricsLog(run.metrics, keep_upto=start if resume else None) if d.is_main else None

    N, E = int(cfg.steps), int(cfg.episodes_per_step)
    stop = N if max_steps is None else max(start, min(N, int(max_steps)))
    a, b = d.split(E)  # this rank's episodes of every step
    spec = ClipSpec(
        f.num_frames,
        f.resize,
        f.crop,
        f.sampling.train,
        "random",
        default_query_augment(recipe),
        cfg.seed,
    )
    episodes = [s * E + j for s in range(start, stop) for j in range(a, b)]
    ds = EpisodeClips(sources, sampler, episodes, spec, entries)
    stream = iter(_loader(ds, cfg.workers, dev, cfg.seed))
    weight = d.world / E  # per-episode loss weight: the mean over ranks is the mean over E
    info = {
        "format": "fsar-tower/1",
        "encoder": m.encoder.name,
        "recipe": recipe.name,
        "weights_sha256": m.encoder.weights_sha256,
        "encoder_random": m.encoder.is_random,
    }
    if on_progress is not None:
        on_progress(start, total=stop, label=f"from step {start}" if start else None)
    t0 = time.perf_counter() - seconds
    last_loss: float | None = None
    label_val = ""
    for step in range(start, stop):
        t_step = time.perf_counter()
        lr = lr_at(step, cfg)
        set_lr(m.optimizer, lr)
        vals = _train_step(m, stream, b - a, weight, recipe, dev, amp, d)
        if not math.isfinite(vals["loss"]):
            raise TrainError(
                f"loss is {vals['loss']} at step {step + 1}; lower train.lr (now "
                f"{cfg.lr}) (last good state: last.pt)"
            )
        done, last_loss = step + 1, vals["loss"]
        row: dict[str, Any] = {"step": done, **vals, "lr": lr}
        if done % cfg.val_every == 0 or done == N:
            acc, ci = final_val = _validate(m.visual, m.head, val, recipe, dev, amp, d)
            row.update(val_acc=acc, val_ci95=ci, val_split=val.label)
            label_val = f" · {sel} {acc:.1%}"
            if best["acc"] is None or acc > best["acc"]:
                best = {"acc": acc, "ci95": ci, "step": done}
                if d.is_main:  # tower first: a kill in between leaves best.pt the older one
                    extra = {
                        "val_acc": acc,
                        "val_ci95": ci,
                        "step": done,
                        "mode": "finetune",
                        "selected_on": val.label,
                        "recipe": recipe.name,
                    }
                    save_tower(run.path / TOWER_FILE, m.visual, {**info, **extra})
                    extra.update(encoder=m.encoder.name, tower=TOWER_FILE)
                    save_head_checkpoint(run.best, m.head, extra)
            log.info("step %d: loss %.4f, %s acc %.4f ± %.4f", done, vals["loss"], sel, acc, ci)
        row["seconds"] = time.perf_counter() - t0
        if metrics is not None:
            metrics.append(row)
        if done % cfg.checkpoint_every == 0 or done == stop:
            extra = {"best": best, "final_val": list(final_val) if final_val else None}
            _save_state(run, m, d, dev, done, {**extra, "seconds": time.perf_counter() - t0})
        if on_progress is not None:
            rate = (b - a) / max(time.perf_counter() - t_step, 1e-9)
            on_progress(1, label=f"loss {vals['loss']:.3f} · {rate:.2f} episodes/s{label_val}")

    steps_done = max(start, stop)
    result = TrainResult(
        out_dir=run.path,
        head=m.head.name,
        steps_done=steps_done,
        steps_total=N,
        finished=steps_done >= N,
        resumed_from=start if resume else None,
        episodes_seen=steps_done * E,
        last_loss=last_loss,
        final_val_acc=final_val[0] if final_val else None,
        final_val_ci95=final_val[1] if final_val else None,
        best_val_acc=best["acc"],
        best_val_ci95=best["ci95"],
        best_step=best["step"],
        selected_on=val.label,
        encoder=m.encoder.name,
        encoder_random=m.encoder.is_random,
        device=str(dev),
        seconds=time.perf_counter() - t0,
    )
    if d.is_main:
        run.write_summary(
            {
                **result.to_dict(),
                "mode": "finetune",
                "recipe": recipe.name,
                "dataset": recipe.dataset,
                "weights_sha256": m.encoder.weights_sha256,
                "tower": TOWER_FILE if best["step"] is not None else None,
                "episodes_per_step": E,
                "world_size": d.world,
                "workers": cfg.workers,
                "precision": str(amp).replace("torch.", "") if amp else "fp32",
                "grad_checkpointing": cfg.grad_checkpointing,
                "query_augment": spec.query_augment,
                "frame_sampling": spec.sampling,
                "episode": {"n_way": cfg.n_way, "k_shot": cfg.k_shot, "n_query": cfg.n_query},
                "validation": {
                    "split": sel,
                    "episodes": cfg.val_episodes,
                    "seed": cfg.val_seed,
                    "n_way": recipe.eval.n_way,
                    "k_shot": cfg.k_shot,
                    "n_query": recipe.eval.n_query,
                    "every": cfg.val_every,
                },
                "missing_videos": {"train": sampler.n_missing, sel: v_sampler.n_missing},
            }
        )
    d.barrier()
    return result


def _cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
