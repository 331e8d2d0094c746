"""The trainable CLIP visual tower of ``train.mode: finetune``: memory, forward and saving.

- Memory: :func:`amp_dtype` picks bf16 autocast on CUDA (fp16 with a gradient scaler where bf16 is
  missing); :func:`enable_grad_checkpointing` recomputes each residual block of the tower in the
  backward pass instead of keeping its activations (BatchNorm statistics are updated once).
- Forward: :func:`encode_clips` (uint8 frames -> per-frame features) and :func:`episode_loss`
  (one episode through the tower and the head).
- Saving: :func:`save_tower` writes ``tower.pt`` as ``{"visual.<key>": tensor}`` (OpenAI CLIP
  names, what ``fsar cache --weights`` loads) and ``tower.json`` naming its architecture.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import atomic
from ..data.preprocess import normalize
from ..encoders.clip import TOWER_META
from ..errors import TrainError
from ..models.base import FewShotHead
from .loop import cpu_state

__all__ = [
    "enable_grad_checkpointing",
    "amp_dtype",
    "encode_clips",
    "episode_loss",
    "tower_state_dict",
    "save_tower",
]


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
            if tracked is not None and m.num_batches_tracked is not None:
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
    head: FewShotHead,
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


def tower_state_dict(visual: nn.Module) -> dict[str, torch.Tensor]:
    """The tower's weights under OpenAI CLIP names (``visual.<key>``), on the CPU."""
    return cpu_state(visual, prefix="visual.")


def save_tower(path: str | Path, visual: nn.Module, info: dict[str, Any]) -> Path:
    """Write ``tower.pt`` (``{"visual.<key>": tensor}``) and ``tower.json`` (``info``)."""
    path = Path(path)
    atomic.torch_save(tower_state_dict(visual), path)
    atomic.write_text(path.with_name(TOWER_META), json.dumps(info, indent=2) + "\n")
    return path
