"""Checkpoints: import the reference's CLIP-FSAR checkpoints, save and load fsar's own.

The reference (Wang et al., "CLIP-guided Prototype Modulating for Few-shot Action Recognition",
IJCV 2023; github.com/alibaba-mmai-research/CLIP-FSAR) saves ``{"epoch", "model_state",
"optimizer_state", "cfg"}`` with every ``model_state`` key under ``head.`` (docs/METHOD.md
section 8). Files are read with ``torch.load(weights_only=True)``; a file that needs arbitrary
unpickling is refused unless the caller says it trusts it, because unpickling can run code.

fsar's own files hold only tensors, dicts, lists, strings and numbers (so ``weights_only=True``
reads them), the head's registered name and its constructor arguments, and are written atomically.
"""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import atomic
from ..errors import CheckpointError, FsarError
from ..ownership import claim
from .base import FewShotHead
from .clipfsar import CLIPFSARHead
from .registry import head_spec

__all__ = [
    "load_reference_checkpoint",
    "import_reference_checkpoint",
    "ImportResult",
    "save_head_checkpoint",
    "load_head_checkpoint",
    "reference_key_to_fsar",
    "tower_path_for",
]

log = logging.getLogger(__name__)

FORMAT = "fsar-head"
FORMAT_VERSION = 1

# reference prefix -> fsar prefix (CLIPFSARHead parameter names)
_KEY_PREFIXES = (
    ("head.context2.layers.0.0.norm.", "transformer.norm."),
    ("head.context2.layers.0.0.fn.", "transformer."),
    ("head.context2.layers.0.1.net.", "transformer.ffn."),
)
_BACKBONE = "head.backbone."


def reference_key_to_fsar(key: str) -> str | None:
    """Map a reference ``model_state`` key to a ``CLIPFSARHead`` parameter name (or None).

    ``head.scale`` -> ``scale``; ``head.context2.layers.0.0.fn.to_q.weight`` ->
    ``transformer.to_q.weight``; ``...0.0.norm.*`` -> ``transformer.norm.*``;
    ``...0.1.net.{0,3}.*`` -> ``transformer.ffn.{0,3}.*``.
    """
    if key == "head.scale":
        return "scale"
    for ref, ours in _KEY_PREFIXES:
        if key.startswith(ref):
            return ours + key[len(ref) :]
    return None


def _torch_load(path: Path, trust: bool) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (check the path)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next(
            (ln for ln in lines if "nsupported" in ln and "GLOBAL" in ln.upper()),
            lines[-1] if lines else "",
        )
        refused = re.search(r"GLOBAL\s+([\w.]+)", detail, flags=re.IGNORECASE)
        if refused:  # name what was refused: posix.system is not the same as a numpy dtype
            detail = f"it would call {refused.group(1)}"
        if not trust and ("nsupported" in detail or refused):
            raise CheckpointError(
                f"{path} cannot be read with torch.load(weights_only=True): it stores Python "
                f"objects that only arbitrary unpickling can rebuild ({detail}). Unpickling can "
                "run any code stored in the file, so it is refused. If you trust where the file "
                "comes from, pass --trust (trust=True)."
            ) from None
        if not trust:
            raise CheckpointError(
                f"{path} is not a readable torch checkpoint (the weights-only unpickler stopped: "
                f"{detail}). If it is a checkpoint from a source you trust that needs full "
                "unpickling, pass --trust (trust=True)."
            ) from None
        log.warning(
            "loading %s with weights_only=False because trust=True: unpickling can run code "
            "stored in the file",
            path,
        )
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # any unpickling failure: unreadable
            raise CheckpointError(f"{path} could not be unpickled: {exc2}") from None
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {exc!r}") from None


def _cfg_merge_before(cfg: Any) -> bool | None:
    """``MODEL.MERGE_BEFORE`` from the reference's cfg (YAML string, dict or config object)."""
    if isinstance(cfg, str):
        try:
            cfg = yaml.safe_load(cfg)
        except yaml.YAMLError:
            return None
    model = cfg.get("MODEL") if isinstance(cfg, dict) else getattr(cfg, "MODEL", None)
    value = (
        model.get("MERGE_BEFORE")
        if isinstance(model, dict)
        else getattr(model, "MERGE_BEFORE", None)
    )
    return bool(value) if value is not None else None


def load_reference_checkpoint(
    path: str | Path, trust: bool = False
) -> tuple[CLIPFSARHead, dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Read a checkpoint written by the reference CLIP-FSAR code.

    Args:
        path: the ``.pyth`` file (``{"epoch", "model_state", "optimizer_state", "cfg"}``; a bare
            ``model_state`` dict is accepted too, and a ``module.`` prefix is stripped).
        trust: allow arbitrary unpickling when ``weights_only=True`` cannot read the file.

    Returns:
        ``(head, tower, info)``: a ``CLIPFSARHead`` (no adapter, text on, eval mode) holding the
        weights; the CLIP visual tower as an OpenAI-CLIP-named state dict (``visual.*``) or None
        when the file has no ``head.backbone.*`` keys; and ``info`` (dim, ffn_dim, epoch,
        merge_before and where it came from, counts of keys, ignored keys).

    Raises:
        CheckpointError: missing/unreadable/untrusted file, or weights that do not form the head.
    """
    path = Path(path)
    obj = _torch_load(path, trust)
    if isinstance(obj, dict) and "model_state" in obj:
        state, epoch, cfg = obj["model_state"], obj.get("epoch"), obj.get("cfg")
    elif isinstance(obj, dict) and any(str(k).startswith(("head.", "module.head.")) for k in obj):
        state, epoch, cfg = obj, None, None
    else:
        raise CheckpointError(
            f"{path} is not a reference CLIP-FSAR checkpoint: expected a dict with 'model_state' "
            "whose keys start with 'head.' (for fsar's own checkpoints use load_head_checkpoint)"
        )
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    head_sd: dict[str, torch.Tensor] = {}
    tower: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if key.startswith(_BACKBONE):
            tower["visual." + key[len(_BACKBONE) :]] = value
        elif (ours := reference_key_to_fsar(key)) is not None:
            head_sd[ours] = value
        else:
            ignored.append(key)
    if any(k.startswith("head.context2.layers.1.") for k in ignored):
        raise CheckpointError(
            f"{path} has a Transformer deeper than one layer (head.context2.layers.1.*); fsar's "
            "CLIP-FSAR head has the reference's single layer (TRANSFORMER_DEPTH 1)"
        )
    if "transformer.to_q.weight" not in head_sd or "transformer.ffn.0.weight" not in head_sd:
        raise CheckpointError(
            f"{path} has no CLIP-FSAR Transformer weights (head.context2.layers.0.*); "
            f"found keys such as {sorted(state)[:5]}"
        )
    dim = int(head_sd["transformer.to_q.weight"].shape[1])
    ffn_dim = int(head_sd["transformer.ffn.0.weight"].shape[0])
    merge_before = _cfg_merge_before(cfg)
    head = CLIPFSARHead(
        dim,
        ffn_dim=ffn_dim,
        merge_before=True if merge_before is None else merge_before,
        adapter="none",
    )
    try:
        head.load_state_dict({k: v.float() for k, v in head_sd.items()}, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not form a CLIP-FSAR head: {exc}") from None
    if ignored:
        log.warning(
            "%s: ignored %d keys that are not part of the head: %s", path, len(ignored), ignored[:5]
        )
    info = {
        "path": str(path),
        "epoch": epoch,
        "dim": dim,
        "ffn_dim": ffn_dim,
        "merge_before": head.merge_before,
        "merge_before_source": "cfg" if merge_before is not None else "default",
        "head_keys": len(head_sd),
        "tower_keys": len(tower),
        "ignored_keys": ignored,
    }
    return head.eval(), (tower or None), info


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"checkpoint extra key {where}[{k!r}] must be a str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise CheckpointError(
        f"checkpoint value {where} is a {type(value).__name__}; store only tensors, dicts, lists, "
        "str, int, float, bool or None (so the file loads with weights_only=True)"
    )


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.torch_save(obj, path)


def save_head_checkpoint(
    path: str | Path, head: FewShotHead, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``head`` (registered name, constructor arguments, weights) and ``extra`` atomically.

    Args:
        path: output file; parent folders are created.
        head: a registered head.
        extra: plain metadata (tensors, dicts, lists, str, int, float, bool, None), e.g. step,
            recipe, metrics.

    Returns:
        The path written.
    """
    path = Path(path)
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    _check_plain(head.init_kwargs, "kwargs")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "head": head.name,
        "kwargs": dict(head.init_kwargs),
        "state_dict": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "extra": extra,
    }
    _atomic_save(payload, path)
    return path


def load_head_checkpoint(
    path: str | Path, trust: bool = False
) -> tuple[FewShotHead, dict[str, Any]]:
    """Read a checkpoint written by ``save_head_checkpoint``.

    Args:
        path: the file.
        trust: allow arbitrary unpickling (never needed for files fsar wrote).

    Returns:
        ``(head, extra)``, the head rebuilt from its name and arguments, in eval mode.
    """
    path = Path(path)
    obj = _torch_load(path, trust)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = (
            " It looks like a reference CLIP-FSAR checkpoint: convert it with "
            "`fsar import-checkpoint`."
            if isinstance(obj, dict) and "model_state" in obj
            else ""
        )
        raise CheckpointError(f"{path} is not an fsar head checkpoint.{hint}")
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {obj['format_version']}; this fsar reads up to "
            f"{FORMAT_VERSION} (upgrade fsar)"
        )
    try:
        head = head_spec(obj["head"]).cls(**obj["kwargs"])
        head.load_state_dict(obj["state_dict"], strict=True)
    except (FsarError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild head {obj.get('head')!r}: {exc}") from None
    return head.eval(), dict(obj.get("extra") or {})


def tower_path_for(out: str | Path) -> Path:
    """Where ``import_reference_checkpoint`` puts the tower: ``<out stem>.visual.pt`` beside it."""
    out = Path(out)
    return out.with_name(out.stem + ".visual.pt")


@dataclass(frozen=True)
class ImportResult:
    """What ``import_reference_checkpoint`` found and wrote."""

    source: Path
    out: Path
    tower_out: Path | None
    info: dict[str, Any] = field(default_factory=dict)
    num_params: int = 0


def _is_fsar_file(path: Path) -> bool:
    """Whether ``path`` is a checkpoint or tower fsar wrote (loads safely, fsar's format or a
    ``visual.*`` state dict)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything unreadable is not proven to be ours
        return False
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return True
    return isinstance(obj, dict) and bool(obj) and all(str(k).startswith("visual.") for k in obj)


def import_reference_checkpoint(
    path: str | Path, out: str | Path, trust: bool = False, overwrite: bool = False
) -> ImportResult:
    """Convert a reference checkpoint into an fsar head checkpoint (plus the tower, if any).

    Args:
        path: the reference ``.pyth`` file.
        out: the fsar checkpoint to write; the visual tower (when present) goes to
            ``tower_path_for(out)`` as an OpenAI-CLIP-named (``visual.*``) state dict.
        trust: allow arbitrary unpickling of ``path``.
        overwrite: replace an existing ``out`` (or tower file) fsar did not write.

    Returns:
        An ``ImportResult``.
    """
    out = claim(out, kind="file", ours=_is_fsar_file, overwrite=overwrite, what="checkpoint")
    if (tower_file := tower_path_for(out)).exists():
        claim(tower_file, kind="file", ours=_is_fsar_file, overwrite=overwrite, what="tower file")
    head, tower, info = load_reference_checkpoint(path, trust=trust)
    tower_out = None
    if tower is not None:
        tower_out = tower_path_for(out)
        _atomic_save({k: v.detach().cpu() for k, v in tower.items()}, tower_out)
    extra = {
        "imported_from": str(Path(path).resolve()),
        "epoch": info["epoch"] if isinstance(info["epoch"], (int, float)) else None,
        "merge_before_source": info["merge_before_source"],
        "tower": str(tower_out) if tower_out else None,
    }
    save_head_checkpoint(out, head, extra)
    n = sum(p.numel() for p in head.parameters())
    return ImportResult(Path(path), out, tower_out, info, n)
