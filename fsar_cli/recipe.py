"""Recipes: typed, frozen pydantic dataclasses loaded from YAML, with dotted overrides.

A recipe says everything about one benchmark: where its split files and videos are, the class names
fed to CLIP, how features are sampled and cached, the head, and the reference's training and
evaluation settings. YAML mirrors the dataclass tree; pydantic rejects unknown keys, wrong types and
out-of-range values, every error names the dotted key, the value and what is allowed, and
``--set train.lr=1e-5`` overrides any leaf. The sections are pydantic *dataclasses* (not models), so
``dataclasses.replace`` works on them as before, and it validates too.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

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
    "recipe_from_dict",
    "dump_recipe",
    "write_resolved",
    "apply_overrides",
    "SPLITS",
]

SPLITS = ("train", "val", "test")
_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting is ever NaN or infinite


def _listify(value: Any) -> Any:
    """A scalar where a list is expected is a one-element list (``--set eval.shots=5``)."""
    return value if isinstance(value, (list, tuple)) else [value]


def _pair(value: Any) -> Any:
    """Adam's betas: exactly two numbers."""
    if isinstance(value, (list, tuple)) and len(value) != 2:
        raise ValueError(f"expected 2 values, got {list(value)!r}")
    return value


# Scalars are strict (no "10" -> 10, no 1 -> true; a number takes an int); sections are built from
# YAML mappings and tuples from YAML lists.
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Count = Annotated[int, Strict(), Field(ge=1)]  # how many of something: at least one
Way = Annotated[int, Strict(), Field(ge=2)]  # a 1-way episode is trivially 100% accurate
NonNegInt = Annotated[int, Strict(), Field(ge=0)]  # seeds, loader workers
Positive = Annotated[float, Strict(), Field(gt=0)]
NonNeg = Annotated[float, Strict(), Field(ge=0)]
Fraction = Annotated[float, Strict(), Field(ge=0, lt=1)]  # dropout, Adam betas
Sampling = Literal["random", "center"]
Names = Annotated[tuple[Str | None, ...], BeforeValidator(_listify)]


def _decode_workers(value: Any) -> Any:
    """``features.workers``: a thread count (>= 0; 0 decodes in the encoding thread) or auto."""
    if value == "auto" or (type(value) is int and value >= 0):
        return value
    raise ValueError(
        f"{value!r} is not a decode thread count; it must be >= 0, or auto (2 on CPU, the cores "
        "on a GPU)"
    )


#: Resolved per device by :func:`fsar_cli.threads.decode_workers`.
DecodeWorkers = Annotated[int | Literal["auto"], PlainValidator(_decode_workers)]


@dataclass(frozen=True, config=_CONFIG)
class ClassesCfg:
    """Class names per split; index = class id in the split file. ``None`` = name unknown."""

    train: Names = ()
    val: Names = ()
    test: Names = ()

    def for_split(self, split: str) -> tuple[str | None, ...]:
        return tuple(getattr(self, split))


@dataclass(frozen=True, config=_CONFIG)
class PerSplit:
    """A setting that differs per split (frame sampling)."""

    train: Sampling = "random"
    val: Sampling = "random"
    test: Sampling = "random"

    def for_split(self, split: str) -> str:
        return str(getattr(self, split))


@dataclass(frozen=True, config=_CONFIG)
class ViewsCfg:
    """How many views (temporal sample + crop) to cache per video, per split."""

    train: Count = 1
    val: Count = 1
    test: Count = 1

    def for_split(self, split: str) -> int:
        return int(getattr(self, split))


@dataclass(frozen=True, config=_CONFIG)
class DataCfg:
    """Where the split files, videos and extracted frames are, and how their paths are laid out.

    Path templates take the fields of a split entry: ``{split}`` (train/val/test), ``{class_field}``
    (``train8`` or a class folder), ``{class_id}``, ``{rel_path}`` (path after ``//`` or the video
    id), ``{rel_stem}`` (``rel_path`` without extension), ``{video_id}`` (file stem) and ``{ext}``
    (each of ``video_exts`` in turn).
    """

    split_name: Str = ""
    split_dir: Str | None = None
    split_format: Literal["auto", "reference", "classname"] = "auto"
    root: Str = "data"
    video_layout: Str = "{rel_path}"
    video_exts: Annotated[tuple[Str, ...], BeforeValidator(_listify)] = ("mp4",)
    frames_root: Str = "frames"
    frames_layout: Str = "{rel_stem}"
    classes: ClassesCfg = field(default_factory=ClassesCfg)


@dataclass(frozen=True, config=_CONFIG)
class FeaturesCfg:
    """How frames become cached CLIP features (METHOD.md section 1)."""

    encoder: Str = "ViT-B/16"
    weights: Str | None = None
    source: Literal["frames", "videos"] = "frames"
    num_frames: Count = 8
    sampling: PerSplit = field(default_factory=PerSplit)
    views: ViewsCfg = field(default_factory=ViewsCfg)
    resize: Count = 256
    crop: Count = 224
    prompt: Str = "a photo of {}"
    batch_size: Count = 64
    workers: DecodeWorkers = "auto"
    chunk_videos: Count = 64
    cache_dir: Str = "cache"
    seed: NonNegInt = 0

    @field_validator("crop")
    @classmethod
    def _crop_fits(cls, crop: int, info: ValidationInfo) -> int:
        resize = info.data.get("resize")
        if resize is not None and crop > resize:
            raise ValueError(f"{crop} is larger than features.resize={resize}; use crop <= resize")
        return crop

    @field_validator("prompt")
    @classmethod
    def _prompt_takes_name(cls, prompt: str) -> str:
        if "{}" not in prompt:
            raise ValueError(f"{prompt!r} has no '{{}}' for the class name, e.g. 'a photo of {{}}'")
        return prompt


@dataclass(frozen=True, config=_CONFIG)
class ModelCfg:
    """The few-shot head (METHOD.md sections 2-4) and fsar's frozen-mode adapter."""

    head: Str = "clipfsar"
    num_heads: Count = 8
    ffn_dim: Count = 2048
    attn_dropout: Fraction = 0.2
    ffn_dropout: Fraction = 0.05
    otam_lambda: Positive = 0.5
    merge_before: Bool = True
    adapter: Literal["residual", "none"] = "none"
    adapter_hidden: Count = 256


@dataclass(frozen=True, config=_CONFIG)
class TrainCfg:
    """Episodic meta-training (METHOD.md section 5), in optimiser steps.

    The reference counts per-GPU iterations with 4 GPUs x 4 accumulation steps = 16 episodes per
    optimiser step; fsar counts optimiser steps, so reference iterations / 4 = ``steps`` and the
    step length S / 4 = ``lr_step`` (``lr_step <= 0``: no warm-up, no decay).
    """

    mode: Literal["frozen", "finetune"] = "frozen"
    n_way: Way = 5
    k_shot: Count = 1
    n_query: Count = 5
    steps: Count = 1250
    episodes_per_step: Count = 16
    lr: Positive = 1e-5
    warmup_lr: NonNeg = 1e-6
    lr_step: Float = 175.0
    weight_decay: NonNeg = 1e-3
    betas: Annotated[tuple[Fraction, Fraction], BeforeValidator(_pair)] = (0.9, 0.999)
    lambda_vt: NonNeg = 1.2
    grad_clip: NonNeg | None = None  # None or 0: no clipping
    val_every: Count = 100
    val_episodes: Count = 500
    val_seed: NonNegInt = 1
    checkpoint_every: Count = 50
    seed: NonNegInt = 0
    select_on: Literal["val", "test"] = "val"
    grad_checkpointing: Bool = False
    amp: Bool = True
    workers: NonNegInt = 2


@dataclass(frozen=True, config=_CONFIG)
class EvalCfg:
    """Evaluation protocol (METHOD.md section 6)."""

    split: Literal["train", "val", "test"] = "test"
    n_way: Way = 5
    shots: Annotated[tuple[Count, ...], BeforeValidator(_listify), Field(min_length=1)] = (1, 5)
    n_query: Count = 1
    episodes: Count = 10000
    seed: NonNegInt = 0
    batch_episodes: Count = 500


@dataclass(frozen=True, config=_CONFIG)
class Recipe:
    """One benchmark's complete settings."""

    name: Str
    dataset: Str = ""
    description: Str = ""
    data: DataCfg = field(default_factory=DataCfg)
    features: FeaturesCfg = field(default_factory=FeaturesCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    source_path: Str | None = field(default=None, compare=False)  # set by load_recipe only

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


# --------------------------------------------------------------------------- validation

_RECIPE = TypeAdapter(Recipe)
# How fsar words pydantic's errors (after "recipe key 'train.lr': "); the rest of ``ctx`` fills in.
_SAY = {
    "int_type": "expected an integer, got {value!r}",
    "float_type": "expected a number, got {value!r}",
    "finite_number": "expected a finite number, got {value!r}",
    "bool_type": "expected true or false, got {value!r}",
    "string_type": "expected a string, got {value!r}",
    "tuple_type": "expected a list, got {value!r}",
    "dataclass_type": "expected a mapping, got {value!r}",
    "too_short": "expected at least {min_length} value(s), got {value!r}",
    "value_error": "{error}",
}
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _field(loc: tuple[int | str, ...]) -> FieldInfo | None:
    """The recipe field at ``loc`` (None for a list item or an unknown key)."""
    info, cls = None, Recipe
    for part in loc:
        info = getattr(cls, "__pydantic_fields__", {}).get(part)
        if info is None:
            return None
        cls = info.annotation
    return info


def _unknown(loc: tuple[int | str, ...]) -> str:
    section = _field(loc[:-1]) if len(loc) > 1 else None
    cls: Any = section.annotation if section is not None else Recipe
    known = sorted(f.name for f in dataclasses.fields(cls) if f.name != "source_path")
    return f"unknown recipe key {_dotted(loc)!r}; known keys here: {', '.join(known)}"


def _dotted(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _describe(exc: ValidationError) -> str:
    """One line for the first problem: the dotted key, the value and what is allowed."""
    errors = exc.errors()
    err, more = errors[0], len(errors) - 1
    kind, loc, value, ctx = err["type"], err["loc"], err["input"], err.get("ctx", {})
    key = _dotted(loc)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        msg = _unknown(loc)
    elif kind == "missing":
        msg = f"recipe is missing required key {key!r}"
    elif kind in _SAY:
        msg = f"recipe key {key!r}: " + _SAY[kind].format(value=value, **ctx)
    elif kind == "literal_error":
        allowed = ctx["expected"].replace(" or ", ", ")
        if isinstance(value, str):
            msg = f"recipe key {key!r}: {value!r} is not one of {allowed}"
        else:
            msg = f"recipe key {key!r}: expected a string ({allowed}), got {value!r}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        info = _field(loc)  # the whole range from the field; a list item has only the broken bound
        metas = info.metadata if info else []
        bounds = {k: getattr(m, k) for m in metas for k in _BOUNDS if hasattr(m, k)} or ctx
        rule = " and ".join(f"{_BOUNDS[k]} {v:g}" for k, v in bounds.items() if k in _BOUNDS)
        msg = f"recipe key {key!r}: {value!r} is out of range; it must be {rule}"
    else:  # pragma: no cover - a check pydantic adds that fsar does not word itself
        msg = f"recipe key {key!r}: {value!r}: {err['msg']}"
    return msg + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _build(data: dict[str, Any], source_path: str | None = None) -> Recipe:
    if "source_path" in data:  # where the recipe came from is the loader's to say
        raise RecipeError(_unknown(("source_path",)))
    try:
        return _RECIPE.validate_python({**data, "source_path": source_path})
    except ValidationError as exc:
        raise RecipeError(_describe(exc)) from None


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain-data view of a recipe (tuples as lists), in field order, without ``source_path``."""
    return _RECIPE.dump_python(recipe, mode="json", exclude={"source_path"})


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
    """Load a named recipe or a YAML file, apply dotted overrides, and check every key and value."""
    path = _resolve_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        raise RecipeError(
            f"recipe file {str(path)!r} is empty; start from a named recipe "
            "(`fsar recipes show hmdb51`) and keep the keys you change"
        )
    if not isinstance(data, dict):
        raise RecipeError(
            f"recipe {str(path)!r} must be a mapping at the top level (name:, data:, train:, ...), "
            f"not a {type(data).__name__}"
        )
    data = apply_overrides(data, list(overrides))
    data.setdefault("name", path.stem)
    return _build(data, source_path=str(path))


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Build a recipe from a mapping (as written in ``resolved_recipe.yaml``)."""
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a mapping of keys, not a {type(data).__name__}")
    return _build(dict(data))
