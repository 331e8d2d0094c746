"""CLIP encoders: official OpenAI weights, a local weights file, or a random initialisation.

The only module of fsar that imports OpenAI's ``clip`` package. Three ways to get an encoder:

- an official name (``RN50``, ``ViT-B/32``, ``ViT-B/16``, ...): ``clip.load(name, jit=False)``
  downloads the OpenAI file to ``~/.cache/clip`` and checks its SHA-256;
- ``weights=PATH``: an OpenAI TorchScript archive, a plain CLIP state dict (also wrapped in a
  ``state_dict`` / ``model`` / ``model_state`` entry), or a visual-tower-only dict (``visual.*``
  keys, or the reference checkpoint's ``head.backbone.*``), for which the architecture named by
  ``name`` is built and only its visual tower is loaded. The text tower of an official name is
  OpenAI's (``clip.load(name)``: a fine-tuned official tower keeps the official text features);
  with ``random:<name>`` / ``tiny`` it is random (seeded, labelled). ``PATH`` may also be a run
  folder of ``fsar train --mode finetune``: its ``tower.pt`` (see :func:`resolve_weights`);
- ``random:<official name>`` or ``random:tiny``: a randomly initialised CLIP with the official
  hyper-parameters (or a tiny ViT), seeded, for tests and offline runs. Results made with random
  weights carry :data:`RANDOM_LABEL`.

Weights are kept in float32; on CUDA the image tower runs under fp16 autocast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.preprocess import normalize
from ..errors import EncoderError
from .text import encode_text_short

with warnings.catch_warnings():  # clip imports pkg_resources, which warns on import
    warnings.simplefilter("ignore")
    import clip
    from clip.model import CLIP, build_model

__all__ = [
    "Encoder",
    "load_encoder",
    "available_encoders",
    "resolve_weights",
    "weights_file_sha256",
    "ARCHS",
    "RANDOM_LABEL",
    "TOWER_FILE",
    "TOWER_META",
]

log = logging.getLogger(__name__)

RANDOM_LABEL = "RANDOM WEIGHTS — not OpenAI CLIP"

#: The fine-tuned visual tower in a run folder, and the JSON naming its encoder (the names
#: :mod:`fsar_cli.train.finetune` writes; a test keeps the two in step).
TOWER_FILE = "tower.pt"
TOWER_META = "tower.json"


def _arch(embed, res, layers, width, patch, text_width, text_heads, text_layers=12):
    return {
        "embed_dim": embed,
        "image_resolution": res,
        "vision_layers": layers,
        "vision_width": width,
        "vision_patch_size": patch,
        "context_length": 77,
        "vocab_size": 49408,
        "transformer_width": text_width,
        "transformer_heads": text_heads,
        "transformer_layers": text_layers,
    }


#: ``clip.model.CLIP`` hyper-parameters of every official model (as ``build_model`` derives them
#: from the OpenAI files), plus ``tiny``: a 2-layer ViT on 32x32 images for tests.
ARCHS: dict[str, dict[str, Any]] = {
    "RN50": _arch(1024, 224, (3, 4, 6, 3), 64, None, 512, 8),
    "RN101": _arch(512, 224, (3, 4, 23, 3), 64, None, 512, 8),
    "RN50x4": _arch(640, 288, (4, 6, 10, 6), 80, None, 640, 10),
    "RN50x16": _arch(768, 384, (6, 8, 18, 8), 96, None, 768, 12),
    "RN50x64": _arch(1024, 448, (3, 15, 36, 10), 128, None, 1024, 16),
    "ViT-B/32": _arch(512, 224, 12, 768, 32, 512, 8),
    "ViT-B/16": _arch(512, 224, 12, 768, 16, 512, 8),
    "ViT-L/14": _arch(768, 224, 24, 1024, 14, 768, 12),
    "ViT-L/14@336px": _arch(768, 336, 24, 1024, 14, 768, 12),
    "tiny": _arch(32, 32, 2, 64, 8, 64, 1, text_layers=1),
}


def available_encoders() -> list[str]:
    """Names :func:`load_encoder` accepts without ``weights``."""
    return list(clip.available_models()) + [f"random:{a}" for a in ARCHS]


class Encoder:
    """A CLIP model in eval mode with batched, no-grad image and text encoding.

    Attributes:
        name: what the user asked for (``ViT-B/16``, ``random:tiny``, ...).
        is_random: the image tower has random weights (label results with :data:`RANDOM_LABEL`).
        text_random: the text tower has random weights (visual-only weight files).
        weights_sha256: SHA-256 of the weights file, or of the random state dict's bytes.
        weights_path: the weights file, or None.
    """

    def __init__(
        self,
        model: CLIP,
        *,
        name: str,
        is_random: bool,
        weights_sha256: str,
        weights_path: str | None = None,
        text_random: bool | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.float().eval().requires_grad_(False).to(self.device)
        self.name = name
        self.is_random = is_random
        self.text_random = is_random if text_random is None else text_random
        self.weights_sha256 = weights_sha256
        self.weights_path = weights_path

    @property
    def dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def input_resolution(self) -> int:
        return int(self.model.visual.input_resolution)

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @property
    def label(self) -> str:
        """``name``, plus :data:`RANDOM_LABEL` for random weights."""
        if self.is_random:
            return f"{self.name} ({RANDOM_LABEL})"
        if self.text_random:
            return f"{self.name} (text tower: {RANDOM_LABEL})"
        from .offline import OFFLINE_ENCODER_NAME

        if self.name == OFFLINE_ENCODER_NAME:
            return f"{self.name} (fsar's demo CLIP, not the OpenAI weights)"
        return self.name

    def describe(self) -> dict[str, Any]:
        """The encoder's identity, as recorded in every cache's meta.json."""
        return {
            "encoder": self.name,
            "encoder_random": self.is_random,
            "encoder_label": self.label,
            "text_encoder_random": self.text_random,
            "weights_sha256": self.weights_sha256,
            "weights_path": self.weights_path,
            "dim": self.dim,
            "input_resolution": self.input_resolution,
        }

    def _autocast(self) -> Any:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    @property
    def precision(self) -> str:
        return "fp16-autocast" if self.device.type == "cuda" else "fp32"

    def _check_images(self, shape: Sequence[int]) -> None:
        r = self.input_resolution
        if len(shape) != 4 or shape[1] != 3 or tuple(shape[2:]) != (r, r):
            raise EncoderError(
                f"encoder {self.name!r} takes images [N, 3, {r}, {r}], got {list(shape)}; "
                f"set features.crop={r} (and features.resize >= {r})"
            )

    def encode_images(
        self, images: torch.Tensor | np.ndarray, batch_size: int = 256
    ) -> torch.Tensor:
        """Image features of preprocessed frames.

        Args:
            images: float32 [N, 3, R, R], already resized, cropped and normalised.

        Returns:
            float32 [N, D] on the CPU (not normalised).
        """
        x = torch.as_tensor(images, dtype=torch.float32)
        self._check_images(x.shape)
        out = []
        with torch.inference_mode(), self._autocast():
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].to(self.device, non_blocking=True)
                out.append(self.model.visual(xb).float().cpu())
        return torch.cat(out) if out else torch.empty((0, self.dim))

    def encode_uint8(self, frames: torch.Tensor) -> torch.Tensor:
        """Image features of cropped uint8 frames ``[N, 3, R, R]`` (normalised on the device).

        Returns:
            float32 [N, D] on the CPU.
        """
        self._check_images(frames.shape)
        if self.device.type == "cuda":
            frames = frames.pin_memory()
        with torch.inference_mode(), self._autocast():
            x = normalize(frames, self.device)  # float32 [N, 3, R, R]
            return self.model.visual(x).float().cpu()

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Text features of ``texts`` (CLIP tokenizer, the model's context length, truncated).

        Returns:
            float32 [C, D] on the CPU, not normalised.
        """
        if len(texts) == 0:
            return torch.empty((0, self.dim))
        tokens = clip.tokenize(list(texts), context_length=self.context_length, truncate=True)
        with torch.inference_mode():  # fp32 everywhere: text features are computed once
            return encode_text_short(self.model, tokens.to(self.device)).float().cpu()


# --------------------------------------------------------------------------- loading


def _random_model(arch: str, seed: int) -> CLIP:
    with torch.random.fork_rng(devices=[]):  # deterministic without touching the caller's RNG
        torch.manual_seed(seed)
        return CLIP(**ARCHS[arch]).float()


def _state_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(np.ascontiguousarray(t.detach().cpu().numpy()).data)
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def weights_file_sha256(path: str | Path) -> str:
    """The SHA-256 an encoder loaded from the weights file ``path`` records (``fsar cache
    --weights PATH`` writes it into the store's ``meta.json``)."""
    return _file_sha256(Path(path))


def _arch_name(name: str) -> str | None:
    base = name.removeprefix("random:")
    return base if base in ARCHS else None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: TorchScript archive, or a (wrapped) state dict."""
    try:
        with warnings.catch_warnings():  # torch.jit.load is deprecated, OpenAI's files need it
            warnings.simplefilter("ignore")
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception:  # not TorchScript: a plain torch.save file
        pass
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EncoderError(
            f"weights file {str(path)!r} is neither a TorchScript archive nor a state dict that "
            f"torch can load safely ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    for _ in range(2):  # {"state_dict": {...}}, {"model_state": {...}}, ...
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model_state", "model") if k in obj), None)
            if isinstance(inner, dict):
                obj = inner
    if not isinstance(obj, dict):
        raise EncoderError(f"weights file {str(path)!r} holds a {type(obj).__name__}, not a dict")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith("head.backbone.") for k in sd):  # reference CLIP-FSAR checkpoint
        sd = {
            "visual." + k.removeprefix("head.backbone."): v
            for k, v in sd.items()
            if k.startswith("head.backbone.")
        }
    return sd


def _check_shapes(sd: dict[str, torch.Tensor], arch: str, path: Path) -> None:
    with torch.device("meta"):
        ref = CLIP(**ARCHS[arch]).state_dict()
    for key, t in sd.items():
        if key in ref and tuple(ref[key].shape) != tuple(t.shape):
            raise EncoderError(
                f"weights file {str(path)!r} is not a {arch} CLIP: {key} has shape "
                f"{list(t.shape)}, {arch} has {list(ref[key].shape)}; pass the --encoder name "
                "that matches the file"
            )


def _load_file(name: str, path: Path, seed: int, root: str) -> tuple[CLIP, bool]:
    """Build a model from a weights file. Returns (model, text_random).

    A visual-only file of an official architecture gets OpenAI's text tower (from ``root``);
    ``random:<name>`` and ``tiny`` get a random one (seed ``seed``).
    """
    sd = _read_state_dict(path)
    arch = _arch_name(name)
    if not sd:
        raise EncoderError(f"weights file {str(path)!r} holds no tensors")
    if "text_projection" in sd and "token_embedding.weight" in sd:  # a whole CLIP model
        if arch is not None:
            _check_shapes(sd, arch, path)
        try:
            model = build_model(dict(sd)).float()  # build_model rounds weights to fp16 ...
            extra = ("input_resolution", "context_length", "vocab_size")
            model.load_state_dict({k: v for k, v in sd.items() if k not in extra})  # ... not us
        except Exception as exc:
            raise EncoderError(
                f"weights file {str(path)!r} is not a CLIP state dict: {exc}"
            ) from None
        return model, False
    if all(k.startswith("visual.") for k in sd):  # visual tower only
        if arch is None:
            raise EncoderError(
                f"weights file {str(path)!r} holds only the visual tower; name its architecture "
                f"with --encoder (one of {', '.join(ARCHS)})"
            )
        _check_shapes(sd, arch, path)
        official = name in clip.available_models()
        model = _load_official(name, root, tower=path) if official else _random_model(arch, seed)
        try:
            model.visual.load_state_dict({k.removeprefix("visual."): v for k, v in sd.items()})
        except RuntimeError as exc:
            raise EncoderError(
                f"weights file {str(path)!r} does not fit a {arch} visual tower: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        if official:
            log.info("%s: fine-tuned visual tower, OpenAI %s text tower", path, name)
            return model, False
        log.warning("%s holds only the visual tower: the text tower is random", path)
        return model, True
    raise EncoderError(
        f"weights file {str(path)!r} has neither CLIP keys nor visual.* keys "
        f"(first keys: {', '.join(list(sd)[:4])})"
    )


def _load_official(name: str, root: str, *, tower: Path | None = None) -> CLIP:
    """``clip.load(name)`` from ``root`` (downloaded when absent and the network allows).

    ``tower``: the visual-only weights file the model is loaded for (only its text tower is kept),
    named in the error.
    """
    url = clip.clip._MODELS[name]
    target = Path(root) / os.path.basename(url)
    sha = url.split("/")[-2]
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # no network must fail, not hang
    try:
        model, _ = clip.load(name, device="cpu", jit=False, download_root=root)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if tower is not None:
            raise EncoderError(
                f"weights file {str(tower)!r} holds only a fine-tuned {name} visual tower; the "
                f"text features need the official {name} text tower, expected at {target} "
                f"(SHA-256 {sha}), and downloading {url} failed ({reason}). With internet, rerun "
                f"and fsar downloads it; offline, copy the file {target.name} there (the "
                f"encoder random:{name} gives a random text tower instead, for tests only)"
            ) from None
        raise EncoderError(
            f"cannot load CLIP {name!r}: expected the OpenAI weights at {target} (SHA-256 {sha}), "
            f"and downloading {url} failed ({reason}). With internet, rerun and fsar downloads it; "
            f"offline, copy the file {target.name} there, or pass --weights PATH "
            "(recipe key features.weights)"
        ) from None
    finally:
        socket.setdefaulttimeout(old)
    return model


def resolve_weights(weights: str | Path, name: str | None = None) -> tuple[Path, str | None]:
    """A ``--weights`` value: a weights file as it is, or a fine-tuned run folder's tower.

    Args:
        weights: a weights file, or a run folder of ``fsar train --mode finetune`` (which holds
            the fine-tuned visual tower as ``tower.pt`` and its encoder name in ``tower.json``).
        name: the encoder asked for (``--encoder``); ``None`` takes a run folder's from
            ``tower.json``.

    Returns:
        ``(weights file, encoder name)``: the name is ``name`` when given, else ``tower.json``'s
        for a run folder, else ``None``.

    Raises:
        EncoderError: a folder without ``tower.pt``, or with no readable ``tower.json`` when
            ``name`` is ``None``.
    """
    path = Path(os.path.expanduser(str(weights)))
    if not path.is_dir():
        return path, name
    tower, meta = path / TOWER_FILE, path / TOWER_META
    if not tower.is_file():
        raise EncoderError(
            f"{str(path)!r} is a folder without {TOWER_FILE}: this run folder has no fine-tuned "
            "tower; frozen-mode runs train only the head (cache with the encoder's own weights, "
            f"i.e. without --weights; --weights takes a weights file or a run folder of "
            "`fsar train --mode finetune`)"
        )
    if name is not None:
        return tower, name
    try:
        info = json.loads(meta.read_text())
        found = info["encoder"]
        if not isinstance(found, str) or not found:
            raise ValueError(f"'encoder' is {found!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EncoderError(
            f"cannot read the encoder of {str(tower)!r} from {str(meta)!r} "
            f"({type(exc).__name__}: {exc}); name the tower's architecture with --encoder"
        ) from None
    return tower, found


def load_encoder(
    name: str,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    *,
    seed: int = 0,
    download_root: str | Path | None = None,
) -> Encoder:
    """Load a CLIP encoder by official name, from a weights file, or randomly initialised.

    Args:
        name: ``RN50``, ``ViT-B/16``, ... ; ``random:<name>`` / ``random:tiny`` for random weights;
            with ``weights``, the architecture of a visual-only file (ignored for whole models,
            except that an official name must match the file's shapes).
        weights: a local weights file (TorchScript archive or state dict), or a fine-tuned run
            folder (its ``tower.pt``; ``name`` must be its architecture, see
            :func:`resolve_weights`).
        device: where the model runs (weights stay float32).
        seed: seed of random initialisations.
        download_root: where official weights are kept (default ``~/.cache/clip``).

    Raises:
        EncoderError: unknown name, unreadable or mismatched weights, or no network for a download
            (also of the official text tower of a visual-only file).
    """
    root = str(download_root or os.path.expanduser("~/.cache/clip"))
    if weights is not None:
        path, _ = resolve_weights(weights, name)
        if not path.is_file():
            raise EncoderError(
                f"weights file {str(path)!r} does not exist (from --weights / features.weights)"
            )
        model, text_random = _load_file(name, path, seed, root)
        return Encoder(
            model,
            name=name,
            is_random=False,
            text_random=text_random,
            weights_sha256=_file_sha256(path),
            weights_path=str(path),
            device=device,
        )
    if name.startswith("random:"):
        arch = _arch_name(name)
        if arch is None:
            raise EncoderError(
                f"unknown architecture in {name!r}; use random:<one of {', '.join(ARCHS)}>"
            )
        model = _random_model(arch, seed)
        log.warning("encoder %s: %s", name, RANDOM_LABEL)
        return Encoder(
            model, name=name, is_random=True, weights_sha256=_state_sha256(model), device=device
        )
    if name in clip.available_models():
        sha = clip.clip._MODELS[name].split("/")[-2]  # clip.load verified the file against it
        return Encoder(
            _load_official(name, root),
            name=name,
            is_random=False,
            weights_sha256=sha,
            weights_path=str(Path(root) / os.path.basename(clip.clip._MODELS[name])),
            device=device,
        )
    raise EncoderError(
        f"unknown encoder {name!r}; available: {', '.join(available_encoders())} "
        "(or pass --weights PATH to a CLIP weights file)"
    )
