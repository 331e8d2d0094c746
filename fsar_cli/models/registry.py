"""The registry that names few-shot heads: ``@register_head``, ``create_head(name, dim, cfg)``
builds one from a recipe's ``ModelCfg``, ``describe_heads`` lists them (``fsar heads``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import FsarError
from ..recipe import ModelCfg
from .base import FewShotHead

__all__ = [
    "HeadSpec",
    "UnknownHeadError",
    "register_head",
    "create_head",
    "list_heads",
    "head_spec",
    "describe_heads",
]


class UnknownHeadError(FsarError):
    """A head name that is not registered."""


@dataclass(frozen=True)
class HeadSpec:
    """A registered name: the class to build and the constructor arguments the name fixes."""

    name: str
    cls: type[FewShotHead]
    description: str
    fixed: dict[str, Any] = field(default_factory=dict)

    def build(self, dim: int, **kwargs: Any) -> FewShotHead:
        return self.cls(dim=dim, **{**kwargs, **self.fixed})


_HEADS: dict[str, HeadSpec] = {}


def register_head(
    name: str, *, description: str = "", **fixed: Any
) -> Callable[[type[FewShotHead]], type[FewShotHead]]:
    """Class decorator: register ``cls`` under ``name``; ``fixed`` kwargs are forced for this name.

    Example: ``register_head("clipfsar-notext", use_text=False)(CLIPFSARHead)``.
    """

    def deco(cls: type[FewShotHead]) -> type[FewShotHead]:
        if name in _HEADS:
            raise ValueError(f"head {name!r} is already registered")
        doc = (cls.__doc__ or "").strip().splitlines()
        _HEADS[name] = HeadSpec(name, cls, description or (doc[0] if doc else ""), dict(fixed))
        return cls

    return deco


def list_heads() -> list[str]:
    """Registered head names, in registration order."""
    return list(_HEADS)


def head_spec(name: str) -> HeadSpec:
    """The spec of a registered head; ``UnknownHeadError`` names the available ones."""
    try:
        return _HEADS[name]
    except KeyError:
        raise UnknownHeadError(
            f"unknown head {name!r}; available: {', '.join(list_heads())} "
            "(set model.head to one of them; `fsar heads` lists them)"
        ) from None


def create_head(name: str, dim: int, cfg: ModelCfg | None = None) -> FewShotHead:
    """Build the head ``name`` for features of width ``dim``.

    Args:
        name: a registered head (``list_heads()``).
        dim: feature width D.
        cfg: the recipe's model settings; ``None`` = ``ModelCfg()`` defaults.

    Returns:
        The head, in training mode, on the CPU.
    """
    spec = head_spec(name)
    cfg = cfg if cfg is not None else ModelCfg()
    return spec.build(dim, **spec.cls.kwargs_from_cfg(cfg))


def describe_heads(dim: int = 16) -> list[dict[str, Any]]:
    """One row per registered head: ``name``, ``trainable``, ``uses_text``, ``description``.

    Built from real (tiny, default-configured) instances so the flags cannot drift from the code.
    """
    rows = []
    for name, spec in _HEADS.items():
        head = spec.build(dim, **spec.cls.kwargs_from_cfg(ModelCfg(adapter="none")))
        rows.append(
            {
                "name": name,
                "trainable": head.trainable,
                "uses_text": head.uses_text,
                "description": spec.description,
            }
        )
    return rows
