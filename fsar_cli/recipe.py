"""Recipes: typed, frozen dataclasses loaded from YAML, with dotted overrides.

A recipe says everything about one benchmark: where its split files and videos are, the class names
fed to CLIP, how features are sampled and cached, the head, and the reference's training and
evaluation settings. YAML mirrors the dataclass tree; unknown keys and wrong types are rejected with
the dotted key named, and ``--set train.lr=1e-5`` overrides any leaf.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from . import atomic
from .errors import RecipeError

__all__ = [
    "Recipe",
    "DataCfg",
    "ClassesCfg",
    "PerSplit",
    "FeaturesCfg",
    "ModelCfg",
    "TrainCfg",
    "EvalCfg",
    "load_recipe",
    "list_recipes",
    "recipe_dirs",
    "recipe_to_dict",
    "dump_recipe",
    "write_resolved",
    "apply_overrides",
    "SPLITS",
]

SPLITS = ("train", "val", "test")
Sampling = Literal["random", "center"]


@dataclass(frozen=True)
class ClassesCfg:
    """Class names per split; index = class id in the split file. ``None`` = name unknown."""

    train: tuple[str | None, ...] = ()
    val: tuple[str | None, ...] = ()
    test: tuple[str | None, ...] = ()

    def for_split(self, split: str) -> tuple[str | None, ...]:
        return tuple(getattr(self, split))


@dataclass(frozen=True)
class PerSplit:
    """A setting that differs per split (frame sampling)."""

    train: str = "random"
    val: str = "random"
    test: str = "random"

    def for_split(self, split: str) -> str:
        return str(getattr(self, split))


@dataclass(frozen=True)
class ViewsCfg:
    """How many views (temporal sample + crop) to cache per video, per split."""

    train: int = 1
    val: int = 1
    test: int = 1

    def for_split(self, split: str) -> int:
        return int(getattr(self, split))


@dataclass(frozen=True)
class DataCfg:
    """Where the split files, videos and extracted frames are, and how their paths are laid out.

    Path templates take the fields of a split entry: ``{split}`` (train/val/test), ``{class_field}``
    (``train8`` or a class folder), ``{class_id}``, ``{rel_path}`` (path after ``//`` or the video
    id),
    ``{rel_stem}`` (``rel_path`` without extension), ``{video_id}`` (file stem) and ``{ext}``
    (each of ``video_exts`` in turn).
    """

    split_name: str = ""
    split_dir: str | None = None
    split_format: Literal["auto", "reference", "classname"] = "auto"
    root: str = "data"
    video_layout: str = "{rel_path}"
    video_exts: tuple[str, ...] = ("mp4",)
    frames_root: str = "frames"
    frames_layout: str = "{rel_stem}"
    classes: ClassesCfg = field(default_factory=ClassesCfg)


@dataclass(frozen=True)
class FeaturesCfg:
    """How frames become cached CLIP features (METHOD.md section 1)."""

    encoder: str = "ViT-B/16"
    weights: str | None = None
    source: Literal["frames", "videos"] = "frames"
    num_frames: int = 8
    sampling: PerSplit = field(default_factory=PerSplit)
    views: ViewsCfg = field(default_factory=ViewsCfg)
    resize: int = 256
    crop: int = 224
    prompt: str = "a photo of {}"
    batch_size: int = 64
    workers: int = 2
    chunk_videos: int = 64
    cache_dir: str = "cache"
    seed: int = 0


@dataclass(frozen=True)
class ModelCfg:
    """The few-shot head (METHOD.md sections 2-4) and fsar's frozen-mode adapter."""

    head: str = "clipfsar"
    num_heads: int = 8
    ffn_dim: int = 2048
    attn_dropout: float = 0.2
    ffn_dropout: float = 0.05
    otam_lambda: float = 0.5
    merge_before: bool = True
    adapter: Literal["residual", "none"] = "none"
    adapter_hidden: int = 256


@dataclass(frozen=True)
class TrainCfg:
    """Episodic meta-training (METHOD.md section 5), in optimiser steps.

    The reference counts per-GPU iterations with 4 GPUs x 4 accumulation steps = 16 episodes per
    optimiser step; fsar counts optimiser steps, so reference iterations / 4 = ``steps`` and the
    step length S / 4 = ``lr_step``.
    """

    mode: Literal["frozen", "finetune"] = "frozen"
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 5
    steps: int = 1250
    episodes_per_step: int = 16
    lr: float = 1e-5
    warmup_lr: float = 1e-6
    lr_step: float = 175.0
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    lambda_vt: float = 1.2
    grad_clip: float | None = None
    val_every: int = 100
    val_episodes: int = 500
    val_seed: int = 1
    checkpoint_every: int = 50
    seed: int = 0
    select_on: Literal["val", "test"] = "val"
    grad_checkpointing: bool = False
    amp: bool = True
    workers: int = 2


@dataclass(frozen=True)
class EvalCfg:
    """Evaluation protocol (METHOD.md section 6)."""

    split: Literal["train", "val", "test"] = "test"
    n_way: int = 5
    shots: tuple[int, ...] = (1, 5)
    n_query: int = 1
    episodes: int = 10000
    seed: int = 0
    batch_episodes: int = 500


@dataclass(frozen=True)
class Recipe:
    """One benchmark's complete settings."""

    name: str
    dataset: str = ""
    description: str = ""
    data: DataCfg = field(default_factory=DataCfg)
    features: FeaturesCfg = field(default_factory=FeaturesCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    source_path: str | None = field(default=None, compare=False)

    def with_split_dir(self, path: str | Path | None) -> Recipe:
        """This recipe reading its split files from ``path`` (``--splits``); None = unchanged."""
        if path is None:
            return self
        return dataclasses.replace(self, data=dataclasses.replace(self.data, split_dir=str(path)))

    def split_dir(self) -> Path:
        """The folder holding ``{train,val,test}_few_shot.txt``.

        ``data.split_dir`` if set (the folder itself, or a parent holding ``<split_name>/``), else
        ``$FSAR_SPLITS/<split_name>``, else ``~/.cache/fsar/splits/<split_name>`` (where
        ``fsar splits download`` puts them).
        """
        if self.data.split_dir:
            path = Path(os.path.expanduser(self.data.split_dir))
            if any((path / f"{s}_few_shot.txt").exists() for s in SPLITS):
                return path
            if self.data.split_name and (path / self.data.split_name).is_dir():
                return path / self.data.split_name
            return path
        base = os.environ.get("FSAR_SPLITS") or str(Path.home() / ".cache" / "fsar" / "splits")
        return Path(os.path.expanduser(base)) / self.data.split_name


# --------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` (and build nested dataclasses); error names ``key``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise RecipeError(f"recipe key {key!r}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(f"recipe key {key!r}: {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise RecipeError(
                f"recipe key {key!r}: {value!r} is not one of {', '.join(map(repr, allowed))}"
            )
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                value = [value]  # a scalar where a list is expected: one-element list
            else:
                raise RecipeError(f"recipe key {key!r}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(f"recipe key {key!r}: expected {len(args)} values, got {value!r}")
        return tuple(
            _convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"recipe key {key!r}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"recipe key {key!r}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"recipe key {key!r}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"recipe key {key!r}: expected a string, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise RecipeError(f"recipe key {key!r}: expected null, got {value!r}")
        return None
    raise RecipeError(f"recipe key {key!r}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names or key == "source_path":
            raise RecipeError(
                f"unknown recipe key {dotted!r}; known keys here: "
                + ", ".join(sorted(names - {"source_path"}))
            )
        kwargs[key] = _convert(value, hints[key], dotted)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        where = f" under {prefix!r}" if prefix else ""
        raise RecipeError(f"recipe is missing required key(s) {missing}{where}")
    return cls(**kwargs)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain-data view of a recipe (tuples as lists), in field order, without ``source_path``."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    d = plain(recipe)
    d.pop("source_path", None)
    return d


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True, width=100)


def write_resolved(recipe: Recipe, out_dir: str | Path, argv: list[str] | None = None) -> Path:
    """Write ``resolved_recipe.yaml`` (and the command line, if given) into an output folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "resolved_recipe.yaml"
    text = dump_recipe(recipe)
    if argv is not None:
        text = "# " + " ".join(argv) + "\n" + text
    return atomic.write_text(path, text)


# --------------------------------------------------------------------------- overrides


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"override {item!r} is not KEY=VALUE (example: --set train.lr=1e-5)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {item!r} has an empty key (example: --set train.lr=1e-5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-5 as a string (it needs a dot); accept plain float syntax too.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a raw recipe mapping (validated later by the loader)."""
    for item in overrides:
        parts, value = _parse_override(item)
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = {}
                node[part] = nxt
            if not isinstance(nxt, dict):
                raise RecipeError(
                    f"override {item!r}: {'.'.join(parts[: i + 1])!r} is a value, not a section"
                )
            node = nxt
        node[parts[-1]] = value
    return data


# --------------------------------------------------------------------------- discovery


def recipe_dirs() -> list[Path]:
    """Where named recipes are found: $FSAR_RECIPES, ./recipes, then those shipped with fsar."""
    dirs: list[Path] = []
    env = os.environ.get("FSAR_RECIPES")
    if env:
        dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    dirs.append(Path.cwd() / "recipes")
    dirs.append(Path(__file__).resolve().parent.parent / "recipes")
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def list_recipes() -> dict[str, Path]:
    """Named recipes: ``{name: path}``; earlier directories win."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for path in sorted(d.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def _resolve_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise RecipeError(f"recipe file {str(path)!r} does not exist")
        return path
    known = list_recipes()
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    raise RecipeError(
        f"unknown recipe {str(name_or_path)!r}; available: {', '.join(sorted(known)) or 'none'} "
        "(or pass the path of a .yaml file)"
    )


def load_recipe(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a named recipe or a YAML file, apply dotted overrides, and check every key and type."""
    path = _resolve_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {str(path)!r} must be a mapping at the top level")
    data = apply_overrides(data, list(overrides))
    data.setdefault("name", path.stem)
    recipe = _build(Recipe, data)
    return dataclasses.replace(recipe, source_path=str(path))


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Build a recipe from a mapping (as written in ``resolved_recipe.yaml``)."""
    return _build(Recipe, dict(data))  # type: ignore[no-any-return]


__all__.append("recipe_from_dict")
