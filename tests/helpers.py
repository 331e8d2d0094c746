"""Helpers shared by test modules (importable as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import yaml

#: A small CLIP-FSAR head for D = 32 features: fast, and still a real Transformer.
SMALL_MODEL = {"num_heads": 4, "ffn_dim": 64, "adapter_hidden": 16}


def write_recipe(path: Path, name: str = "tiny", **sections: object) -> Path:
    """Write a recipe YAML (``name`` plus the given top-level sections) and return its path."""
    path.write_text(yaml.safe_dump({"name": name, **sections}, sort_keys=False))
    return path
