"""The offline demo encoder: a tiny CLIP that fsar trains itself, in about a minute on a CPU.

A randomly initialised CLIP carries no information a few-shot head can use, and the OpenAI weights
cannot be downloaded everywhere. ``fsar demo`` therefore uses this small ``clip.model.CLIP`` (the
same class and code path as the real weights, text tower included), trained on single synthetic
frames from :mod:`fsar_cli.data.synth` captioned like "a big red shape at the top left":

1. the image tower learns to classify the object's position (3x3 grid), size and colour (linear
   heads, thrown away afterwards); colour gets a smaller weight than position, but enough that it
   stays a sizeable part of the features, as appearance is in real CLIP features: a few-shot head
   has to learn to discount it;
2. the text tower is trained with CLIP's contrastive image-to-caption loss against the frozen image
   tower ("LiT", Zhai et al. 2022): each image is matched against every caption of the set, for the
   full caption and for each attribute alone ("a shape at the top left", "a red shape", "a big
   shape"), and each rendered clip (mean of its frame features, as the video-text loss takes it)
   against every motion caption ("a shape moving from the top left to the top right"): the words of
   the synthetic class names, as real CLIP learned the words of real ones from web captions. A
   clip and its reversed twin have the same frames, so the text tower can learn where a motion
   runs, never which way.

Its image features encode where the object is and how big it is, which is what makes the frames of
a motion differ over time; :func:`evaluate_offline_encoder` measures its zero-shot accuracy per
attribute, and ``benchmarks/offline_encoder_probe.py`` its few-shot accuracy on ``fsar synth`` data.

These are NOT the OpenAI CLIP weights: they know nothing but coloured shapes on dark backgrounds,
and numbers made with them say nothing about any real benchmark.

The weights are saved the way OpenAI ships its checkpoints (a state dict, linear and conv weights in
fp16), so ``clip.model.build_model(torch.load(path))``, ``clip.load(path)`` and
``encoders.clip.load_encoder(name, weights=path)`` read them. Training is deterministic (fixed
seeds and thread count) and cached at ``$FSAR_HOME/encoders/offline-demo-<config hash>.pt``
(default ``~/.cache/fsar``). Bump ``_FORMAT_VERSION`` when the training code or the renderer change.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import atomic
from ..data.preprocess import preprocess_frames
from ..data.synth import CATALOGUE, PALETTE, SynthClass, render_clip, render_still, sample_params
from ..errors import EncoderError
from . import OFFLINE_ENCODER_NAME
from .text import encode_text_short

__all__ = [
    "OFFLINE_ENCODER_NAME",
    "OFFLINE_ENCODER_DESCRIPTION",
    "OfflineEncoderConfig",
    "DEFAULT_CONFIG",
    "config_hash",
    "encoder_path",
    "build_offline_clip",
    "train_offline_encoder",
    "ensure_offline_encoder",
    "load_offline_encoder",
    "evaluate_offline_encoder",
    "read_training_stats",
]

log = logging.getLogger(__name__)

OFFLINE_ENCODER_DESCRIPTION = (
    "offline-demo: a tiny CLIP (ViT, 48x48 px input, patch 8) that fsar trains itself in under a "
    "minute on captioned synthetic frames and clips of coloured shapes; NOT the OpenAI CLIP "
    "weights, only meaningful on `fsar synth` data"
)

#: 3x3 grid of positions: (name, column, row); the frame is cut into thirds.
POSITIONS = (
    ("the top left", 0, 0),
    ("the top", 1, 0),
    ("the top right", 2, 0),
    ("the left", 0, 1),
    ("the centre", 1, 1),
    ("the right", 2, 1),
    ("the bottom left", 0, 2),
    ("the bottom", 1, 2),
    ("the bottom right", 2, 2),
)
COLOURS = tuple(PALETTE)
SIZES = ("small", "medium", "big")
_SIZE_EDGES = (0.075, 0.12)  # object radius (fraction of the frame) between the size words
_FORMAT_VERSION = 2  # part of the config hash: bump it when training or rendering code changes


@dataclass(frozen=True)
class OfflineEncoderConfig:
    """Architecture and training settings; their hash names the cached weights file."""

    image_resolution: int = 48  # 6x6 patches: two per third of the frame
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 1
    embed_dim: int = 64
    text_width: int = 64
    text_layers: int = 1
    context_length: int = 77  # as OpenAI's: clip.tokenize's default works unchanged
    frame_size: int = 64  # frames are rendered at this size, then resized like the cache does
    pool: int = 4096  # training frames rendered once
    clip_pool: int = 1024  # training clips (motion captions) rendered once
    clip_frames: int = 8  # frames per training clip, as the cache samples a video
    image_steps: int = 250
    text_steps: int = 100
    batch_size: int = 128
    text_batch_size: int = 256
    # stage-1 loss weight of each attribute (position, colour, size): colour is a nuisance for the
    # demo's actions, so it is learned with a small weight and stays a minor part of the features
    loss_weights: tuple[float, float, float] = (2.0, 0.3, 1.0)
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 2


DEFAULT_CONFIG = OfflineEncoderConfig()


def config_hash(cfg: OfflineEncoderConfig) -> str:
    """12 hex digits naming the weights made by ``cfg`` (and by this module's format version)."""
    text = json.dumps({"v": _FORMAT_VERSION, **asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _fsar_home(cache_root: str | Path | None) -> Path:
    if cache_root is not None:
        return Path(cache_root)
    env = os.environ.get("FSAR_HOME")
    return Path(env) if env else Path.home() / ".cache" / "fsar"


def encoder_path(
    cfg: OfflineEncoderConfig = DEFAULT_CONFIG, cache_root: str | Path | None = None
) -> Path:
    """Where the weights of ``cfg`` are cached: ``<cache_root>/encoders/offline-demo-<hash>.pt``."""
    return _fsar_home(cache_root) / "encoders" / f"{OFFLINE_ENCODER_NAME}-{config_hash(cfg)}.pt"


def build_offline_clip(cfg: OfflineEncoderConfig = DEFAULT_CONFIG) -> Any:
    """A randomly initialised ``clip.model.CLIP`` of the demo's size (fp32)."""
    from clip.model import CLIP

    return CLIP(
        embed_dim=cfg.embed_dim,
        image_resolution=cfg.image_resolution,
        vision_layers=cfg.vision_layers,
        vision_width=cfg.vision_width,
        vision_patch_size=cfg.patch_size,
        context_length=cfg.context_length,
        vocab_size=49408,
        transformer_width=cfg.text_width,
        transformer_heads=max(1, cfg.text_width // 64),  # what build_model assumes
        transformer_layers=cfg.text_layers,
    )


# --------------------------------------------------------------------------- data


def _encoder_input(frames: np.ndarray, resolution: int) -> torch.Tensor:
    """RGB uint8 frames ``[N, H, W, 3]`` -> CLIP input ``[N, 3, R, R]``, as the cache makes it."""
    return preprocess_frames(frames, resize=resolution, crop=resolution)


def _render_frames(n: int, seed: int, frame_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` captioned stills: uint8 ``[n, S, S, 3]`` and labels int64 ``[n, 3]``.

    Label columns: position (cell of the 3x3 grid, row-major), colour, size.
    """
    rng = np.random.default_rng([seed, 7])
    frames = np.empty((n, frame_size, frame_size, 3), np.uint8)
    labels = np.empty((n, 3), np.int64)
    for i in range(n):
        colour = int(rng.integers(len(COLOURS)))
        params = sample_params(rng)
        jitter = rng.integers(-15, 16, 3)
        red, green, blue = np.clip(np.array(PALETTE[COLOURS[colour]]) + jitter, 0, 255)
        params = dataclasses.replace(params, colour=(int(red), int(green), int(blue)))
        x, y = rng.uniform(0.1, 0.9, 2)
        scale = float(rng.uniform(0.5, 1.7))
        frames[i] = render_still(params, float(x), float(y), scale, frame_size)
        col, row = min(int(x * 3), 2), min(int(y * 3), 2)
        r = params.radius * scale
        labels[i] = (row * 3 + col, colour, int(np.searchsorted(_SIZE_EDGES, r)))
    return frames, labels


def _motion_captions() -> list[str]:
    """The caption of every synthetic motion: index 2p is pair p forwards, 2p+1 backwards."""
    return [name for m in CATALOGUE for name in (m.name, m.rev_name)]


def _render_clips(
    n: int, seed: int, frame_size: int, num_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` captioned clips: uint8 ``[n, T, S, S, 3]`` and the motion index (caption) ``[n]``."""
    rng = np.random.default_rng([seed, 11])
    clips = np.empty((n, num_frames, frame_size, frame_size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    for i in range(n):
        k = int(rng.integers(2 * len(CATALOGUE)))
        cls = SynthClass("", "", k // 2, bool(k % 2))
        params = dataclasses.replace(sample_params(rng), occluder=None)  # captions see the motion
        clips[i] = render_clip(cls, params, num_frames=num_frames, size=frame_size)
        labels[i] = k
    return clips, labels


def _clip_features(model: Any, clips: np.ndarray, resolution: int) -> torch.Tensor:
    """Unit-norm clip features ``[C, E]`` of uint8 clips ``[C, T, S, S, 3]``: the mean of the
    frame features, as the video-text loss takes a video's feature."""
    n, t = clips.shape[:2]
    flat = _encoder_input(clips.reshape(n * t, *clips.shape[2:]), resolution)  # [C*T, 3, R, R]
    return F.normalize(model.encode_image(flat).reshape(n, t, -1).mean(dim=1), dim=-1)


def _prompts() -> tuple[list[str], dict[str, slice]]:
    """All captions, and the slice of each family: full caption, position, colour, size."""
    full = [
        f"a {s} {c} shape at {p[0]}" for p in POSITIONS for c in COLOURS for s in SIZES
    ]  # index = (pos * colours + colour) * sizes + size
    fams = {
        "full": full,
        "position": [f"a shape at {p[0]}" for p in POSITIONS],
        "colour": [f"a {c} shape" for c in COLOURS],
        "size": [f"a {s} shape" for s in SIZES],
        "motion": _motion_captions(),
    }
    texts: list[str] = []
    slices: dict[str, slice] = {}
    for name, items in fams.items():
        slices[name] = slice(len(texts), len(texts) + len(items))
        texts.extend(items)
    return texts, slices


def _family_targets(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    pos, col, size = labels[:, 0], labels[:, 1], labels[:, 2]
    full = (pos * len(COLOURS) + col) * len(SIZES) + size
    return {"full": full, "position": pos, "colour": col, "size": size}


def _tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    import clip

    return clip.tokenize(texts, context_length=context_length)


# --------------------------------------------------------------------------- training


def _lr_at(step: int, steps: int, cfg: OfflineEncoderConfig) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine decay to zero at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, steps - cfg.warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))


def _openai_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The state dict as OpenAI ships it: linear and conv weights in fp16 (``convert_weights``)."""
    from clip.model import convert_weights

    half = copy.deepcopy(model)
    convert_weights(half)
    return {k: v.detach().clone().contiguous() for k, v in half.state_dict().items()}


def train_offline_encoder(
    cfg: OfflineEncoderConfig = DEFAULT_CONFIG,
    on_progress: Callable[..., None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the demo encoder from scratch on the CPU, deterministically, in two stages.

    1. Image tower: attribute classification of single frames (position on a 3x3 grid, colour,
       size) through linear heads on ``encode_image``; the heads are thrown away afterwards.
    2. Text tower (LiT, Zhai et al. 2022, "Locked-image Tuning"): the image tower is frozen and the
       text tower plus ``logit_scale`` learn CLIP's contrastive image-to-caption objective.

    Contrastive training of both towers from scratch is far slower here: at the start neither tower
    knows where the object is, so nothing pulls the position captions apart (measured: 18% zero-shot
    position accuracy after 200 joint steps; this recipe reaches 97% at a similar cost).

    Args:
        cfg: architecture and training settings.
        on_progress: ``on_progress(n=1, *, total=None, label=None)``, once per optimiser step.

    Returns:
        (state dict in OpenAI's format, training stats: seconds, final losses, config).
    """
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # fixed thread count: identical sums, identical weights
    try:
        torch.manual_seed(cfg.seed)
        model = build_offline_clip(cfg).float().train()
        sizes = (len(POSITIONS), len(COLOURS), len(SIZES))
        heads = torch.nn.ModuleList(torch.nn.Linear(cfg.embed_dim, k) for k in sizes)
        frames, labels_np = _render_frames(cfg.pool, cfg.seed, cfg.frame_size)
        images = _encoder_input(frames, cfg.image_resolution)  # [pool, 3, R, R]
        labels = torch.from_numpy(labels_np)  # [pool, 3]: position, colour, size
        gen = torch.Generator().manual_seed(cfg.seed)
        total = cfg.image_steps + cfg.text_steps
        if on_progress is not None:
            on_progress(0, total=total, label="image tower")

        # -- stage 1: the image tower learns the attributes
        params = list(model.visual.parameters()) + list(heads.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        image_loss = float("nan")
        for step in range(cfg.image_steps):
            _set_lr(opt, _lr_at(step, cfg.image_steps, cfg))
            idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
            feats = model.encode_image(images[idx])  # [B, E]
            loss = sum(
                w * F.cross_entropy(h(feats), labels[idx, k])
                for k, (h, w) in enumerate(zip(heads, cfg.loss_weights, strict=True))
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            image_loss = loss.item()  # type: ignore[union-attr]
            if on_progress is not None:
                on_progress(1, label=f"image tower, loss {image_loss:.3f}")

        # -- stage 2: the text tower learns to name what the frozen image tower sees
        model.visual.requires_grad_(False)
        model.eval()
        with torch.no_grad():
            img_all = F.normalize(model.encode_image(images), dim=-1)  # [pool, E]
            clips, motion = _render_clips(
                cfg.clip_pool, cfg.seed, cfg.frame_size, cfg.clip_frames
            )  # [C, T, S, S, 3], [C]
            clip_all = _clip_features(model, clips, cfg.image_resolution)  # [C, E]
        motion_labels = torch.from_numpy(motion)
        texts, slices = _prompts()
        still = {k: v for k, v in slices.items() if k != "motion"}
        tokens = _tokenize(texts, cfg.context_length)  # [P, context]
        n_ctx = int(tokens.argmax(dim=-1).max()) + 1
        # Only the ~30 vocabulary rows the captions use get gradients. Training them in a small
        # table is exactly what AdamW (no weight decay) does to the full 49408-row table, whose
        # other rows it leaves untouched, without updating 3M parameters every step.
        vocab = torch.unique(tokens)  # [U] sorted token ids
        short = tokens[:, :n_ctx].contiguous()  # [P, n]
        local = torch.searchsorted(vocab, short)  # [P, n]: row of each token in the table
        table = torch.nn.Parameter(model.token_embedding.weight.detach()[vocab].clone())  # [U, W]
        params = [
            p
            for n, p in model.named_parameters()
            if not n.startswith("visual.") and n != "token_embedding.weight"
        ]
        opt = torch.optim.AdamW([*params, table], lr=cfg.lr, weight_decay=0.0)
        text_loss = float("nan")
        for step in range(cfg.text_steps):
            _set_lr(opt, _lr_at(step, cfg.text_steps, cfg))
            idx = torch.randint(len(images), (cfg.text_batch_size,), generator=gen)
            txt = F.normalize(encode_text_short(model, tokens, table[local]), dim=-1)  # [P, E]
            logits = model.logit_scale.exp().clamp(max=100.0) * img_all[idx] @ txt.T  # [B, P]
            targets = _family_targets(labels[idx])
            loss = sum(F.cross_entropy(logits[:, sl], targets[name]) for name, sl in still.items())
            cdx = torch.randint(len(clip_all), (cfg.text_batch_size,), generator=gen)
            clip_logits = model.logit_scale.exp().clamp(max=100.0) * clip_all[cdx] @ txt.T
            loss = loss + F.cross_entropy(clip_logits[:, slices["motion"]], motion_labels[cdx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            text_loss = loss.item()  # type: ignore[union-attr]
            if on_progress is not None:
                on_progress(1, label=f"text tower, loss {text_loss:.3f}")
        with torch.no_grad():
            model.token_embedding.weight[vocab] = table.detach()
        model.requires_grad_(True)
        state = _openai_state_dict(model.eval())
    finally:
        torch.set_num_threads(threads)
    stats = {
        "train_seconds": round(time.perf_counter() - t0, 2),
        "image_loss": round(image_loss, 4),
        "text_loss": round(text_loss, 4),
        "config": asdict(cfg),
        "config_hash": config_hash(cfg),
        "torch": torch.__version__,
    }
    return state, stats


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def ensure_offline_encoder(
    cache_root: str | Path | None = None,
    on_progress: Callable[..., None] | None = None,
    cfg: OfflineEncoderConfig = DEFAULT_CONFIG,
) -> Path:
    """The weights file of the demo encoder, trained once and then reused.

    Args:
        cache_root: folder holding ``encoders/`` (default $FSAR_HOME, else ``~/.cache/fsar``).
        on_progress: progress callback, called only when training happens.
        cfg: settings (their hash names the file).

    Returns:
        Path of ``offline-demo-<hash>.pt`` (a state dict for ``clip.model.build_model``); a
        ``.json`` beside it records the training time, loss and settings.
    """
    path = encoder_path(cfg, cache_root)
    if path.is_file():
        log.debug("offline encoder found at %s", path)
        return path
    log.info("training the offline demo encoder (once; cached at %s)", path)
    state, stats = train_offline_encoder(cfg, on_progress=on_progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"name": OFFLINE_ENCODER_NAME, **stats}, indent=1)
        atomic.write_text(path.with_suffix(".json"), meta)
        atomic.torch_save(state, path)  # the weights last: their presence means complete
    except OSError as exc:
        raise EncoderError(
            f"cannot write the offline encoder to {path}: {exc}; "
            "set $FSAR_HOME to a writable folder"
        ) from None
    log.info("offline encoder trained in %.1f s", stats["train_seconds"])
    return path


def load_offline_encoder(path: str | Path) -> Any:
    """Load a weights file with ``clip.model.build_model``, as fp32 in eval mode."""
    from clip.model import build_model

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return build_model(state).float().eval()
    except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as exc:
        raise EncoderError(
            f"{path}: not a loadable CLIP state dict ({exc}); delete the file to retrain it"
        ) from None


def read_training_stats(path: str | Path) -> dict[str, Any] | None:
    """The training record written beside a weights file (seconds, losses, settings), if any."""
    meta = Path(path).with_suffix(".json")
    try:
        return dict(json.loads(meta.read_text()))
    except (OSError, ValueError):
        return None


@torch.no_grad()
def evaluate_offline_encoder(path: str | Path, n: int = 1000, seed: int = 12345) -> dict[str, Any]:
    """Zero-shot accuracy of an encoder on ``n`` held-out captioned frames, per attribute.

    Each frame is classified by cosine against the captions of one attribute ("a shape at the top
    left" ... for position), with no training on this task.

    Returns:
        ``{"position": acc, "colour": acc, "size": acc, "full": acc, "chance": {...}, "n": n}``
    """
    model = load_offline_encoder(path)
    res = int(model.visual.input_resolution)
    frames, labels_np = _render_frames(n, seed, DEFAULT_CONFIG.frame_size)
    img = F.normalize(model.encode_image(_encoder_input(frames, res)), dim=-1)
    texts, slices = _prompts()
    txt = F.normalize(model.encode_text(_tokenize(texts, int(model.context_length))), dim=-1)
    sims = img @ txt.T  # [n, P]
    targets = _family_targets(torch.from_numpy(labels_np))
    out: dict[str, Any] = {}
    chance: dict[str, float] = {}
    for name, sl in slices.items():
        if name == "motion":
            continue
        pred = sims[:, sl].argmax(dim=1)
        out[name] = round(float((pred == targets[name]).float().mean()), 4)
        chance[name] = round(1.0 / (sl.stop - sl.start), 4)
    # motions: clips (mean frame feature) against every motion caption; a clip and its reversed
    # twin have the same frames, so "path" counts either twin as right and "motion" only the exact
    n_clips = max(1, n // 4)
    cfg = DEFAULT_CONFIG
    clips, motion = _render_clips(n_clips, seed, cfg.frame_size, cfg.clip_frames)
    vid = _clip_features(model, clips, res)  # [n_clips, E]
    pred_m = (vid @ txt[slices["motion"]].T).argmax(dim=1)
    truth = torch.from_numpy(motion)
    out["motion"] = round(float((pred_m == truth).float().mean()), 4)
    out["path"] = round(float((pred_m // 2 == truth // 2).float().mean()), 4)
    n_motion = slices["motion"].stop - slices["motion"].start
    chance["motion"], chance["path"] = round(1 / n_motion, 4), round(2 / n_motion, 4)
    out["chance"] = chance
    out["n"] = n
    return out
