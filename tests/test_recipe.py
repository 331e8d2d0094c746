"""Recipes: shipped ones load, bad keys and types are named, overrides apply, dumps round-trip."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.errors import RecipeError
from fsar_cli.recipe import (
    dump_recipe,
    list_recipes,
    load_recipe,
    recipe_from_dict,
    write_resolved,
)

BENCH = ["ssv2_full", "ssv2_small", "kinetics100", "ucf101", "hmdb51"]
# (iterations / 4, base lr, warm-up lr, S / 4, lambda_vt): METHOD.md section 5
REFERENCE = {
    "ssv2_full": (7500, 5e-5, 1e-5, 1000, 3.0),
    "ssv2_small": (7500, 5e-5, 2e-5, 500, 3.0),
    "kinetics100": (1250, 1e-5, 5e-6, 62.5, 1.5),
    "ucf101": (750, 2e-6, 1e-7, 150, 1.5),
    "hmdb51": (1250, 1e-5, 1e-6, 175, 1.2),
}


@pytest.mark.parametrize("name", BENCH)
def test_shipped_recipes(name: str, shared) -> None:
    import json

    r = load_recipe(name)
    classes = json.loads((shared / "benchmarks" / name / "classes.json").read_text())
    assert list(r.data.classes.train) == classes["train"]
    assert list(r.data.classes.test) == classes["test"]
    assert len(r.data.classes.val) == len(classes["val"])
    assert r.features.num_frames == 8
    t = r.train
    assert (t.steps, t.lr, t.warmup_lr, t.lr_step, t.lambda_vt) == REFERENCE[name]
    assert (t.n_way, t.k_shot, t.n_query, t.episodes_per_step) == (5, 1, 5, 16)
    assert t.weight_decay == 1e-3 and t.select_on == "val"
    assert r.eval.n_way == 5 and r.eval.n_query == 1 and r.eval.episodes == 10000
    assert r.model.merge_before and r.model.otam_lambda == 0.5
    sampling = r.features.sampling
    if name == "kinetics100":
        assert (sampling.train, sampling.test) == ("random", "center")
    else:
        assert sampling.test == "random"


def test_list_recipes_has_the_five() -> None:
    assert set(BENCH) <= set(list_recipes())


def test_unknown_key_named(tmp_path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("name: x\ntrain:\n  lrr: 1\n")
    with pytest.raises(RecipeError, match="unknown recipe key 'train.lrr'"):
        load_recipe(p)
    p.write_text("name: x\nfoo: 1\n")
    with pytest.raises(RecipeError, match="unknown recipe key 'foo'"):
        load_recipe(p)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("train: {steps: ten}", "'train.steps': expected an integer"),
        ("train: {steps: 1.5}", "'train.steps': expected an integer"),
        ("model: {merge_before: 1}", "'model.merge_before': expected true or false"),
        ("train: {lr: fast}", "'train.lr': expected a number"),
        ("model: {adapter: big}", "'model.adapter': 'big' is not one of"),
        ("train: {betas: [0.9]}", "'train.betas': expected 2 values"),
        ("features: {sampling: {test: 3}}", "'features.sampling.test': expected a string"),
        ("data: {classes: {train: [a, 3]}}", r"'data.classes.train\[1\]'"),
        ("data: 5", "'data': expected a mapping"),
        ("features: {workers: many}", "'features.workers': 'many' is not a decode thread count"),
        ("features: {workers: true}", "'features.workers': True is not a decode thread count"),
        ("features: {workers: 2.0}", "'features.workers': 2.0 is not a decode thread count"),
    ],
)
def test_wrong_types_named(tmp_path, text: str, match: str) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("name: x\n" + text + "\n")
    with pytest.raises(RecipeError, match=match):
        load_recipe(p)


def test_overrides() -> None:
    r = load_recipe(
        "hmdb51", ["train.lr=1e-5", "train.steps=10", "model.head=otam", "eval.shots=[1]"]
    )
    assert r.train.lr == 1e-5 and r.train.steps == 10 and r.model.head == "otam"
    assert r.eval.shots == (1,)
    with pytest.raises(RecipeError, match="not KEY=VALUE"):
        load_recipe("hmdb51", ["train.lr"])
    with pytest.raises(RecipeError, match="unknown recipe key 'train.nope'"):
        load_recipe("hmdb51", ["train.nope=1"])
    with pytest.raises(RecipeError, match="is a value, not a section"):
        load_recipe("hmdb51", ["name.x=1"])


def test_unknown_recipe_lists_available() -> None:
    with pytest.raises(RecipeError, match="unknown recipe 'nope'; available: .*hmdb51"):
        load_recipe("nope")


def test_resolved_dump_round_trips(tmp_path) -> None:
    r = load_recipe("kinetics100", ["train.lr=2e-5"])
    path = write_resolved(r, tmp_path / "run", argv=["fsar", "train", "kinetics100"])
    text = path.read_text()
    assert text.startswith("# fsar train kinetics100\n")
    again = recipe_from_dict(yaml.safe_load(text))
    assert again == r
    assert dump_recipe(again) == dump_recipe(r)


def test_every_recipe_loads_and_round_trips() -> None:
    for name in list_recipes():
        r = load_recipe(name)
        assert recipe_from_dict(yaml.safe_load(dump_recipe(r))) == r, name


# (--set override, dotted key the error names, fragment of the allowed range or values)
OUT_OF_RANGE = [
    ("train.lr=-1", "train.lr': -1 ", "must be > 0"),
    ("train.lr=0", "train.lr': 0 ", "must be > 0"),
    ("train.warmup_lr=-1e-6", "train.warmup_lr': -1e-06 ", "must be >= 0"),
    ("train.lambda_vt=-0.5", "train.lambda_vt': -0.5 ", "must be >= 0"),
    ("train.weight_decay=-0.01", "train.weight_decay': -0.01 ", "must be >= 0"),
    ("train.grad_clip=-1", "train.grad_clip': -1 ", "must be >= 0"),
    ("train.betas=[0.9, 1.0]", "train.betas[1]': 1.0 ", "must be < 1"),
    ("model.attn_dropout=1", "model.attn_dropout': 1 ", "must be >= 0 and < 1"),
    ("model.ffn_dropout=-0.1", "model.ffn_dropout': -0.1 ", "must be >= 0 and < 1"),
    ("model.otam_lambda=0", "model.otam_lambda': 0 ", "must be > 0"),
    ("model.num_heads=0", "model.num_heads': 0 ", "must be >= 1"),
    ("train.steps=0", "train.steps': 0 ", "must be >= 1"),
    ("train.episodes_per_step=0", "train.episodes_per_step': 0 ", "must be >= 1"),
    ("train.val_every=0", "train.val_every': 0 ", "must be >= 1"),
    ("train.val_episodes=0", "train.val_episodes': 0 ", "must be >= 1"),
    ("train.checkpoint_every=0", "train.checkpoint_every': 0 ", "must be >= 1"),
    ("train.workers=-1", "train.workers': -1 ", "must be >= 0"),
    ("features.workers=-1", "features.workers': -1 ", "must be >= 0"),
    ("train.n_way=1", "train.n_way': 1 ", "must be >= 2"),
    ("eval.n_way=1", "eval.n_way': 1 ", "must be >= 2"),
    ("train.k_shot=0", "train.k_shot': 0 ", "must be >= 1"),
    ("train.n_query=0", "train.n_query': 0 ", "must be >= 1"),
    ("eval.n_query=0", "eval.n_query': 0 ", "must be >= 1"),
    ("eval.episodes=0", "eval.episodes': 0 ", "must be >= 1"),
    ("eval.batch_episodes=0", "eval.batch_episodes': 0 ", "must be >= 1"),
    ("train.seed=-1", "train.seed': -1 ", "must be >= 0"),
    ("train.val_seed=-1", "train.val_seed': -1 ", "must be >= 0"),
    ("eval.seed=-1", "eval.seed': -1 ", "must be >= 0"),
    ("features.seed=-1", "features.seed': -1 ", "must be >= 0"),
    ("features.num_frames=0", "features.num_frames': 0 ", "must be >= 1"),
    ("features.views.train=0", "features.views.train': 0 ", "must be >= 1"),
    ("features.resize=0", "features.resize': 0 ", "must be >= 1"),
    ("features.crop=-224", "features.crop': -224 ", "must be >= 1"),
    ("features.batch_size=0", "features.batch_size': 0 ", "must be >= 1"),
    ("eval.shots=[]", "eval.shots': ", "at least 1 value"),
    ("eval.shots=[1, 0]", "eval.shots[1]': 0 ", "must be >= 1"),
    ("features.sampling.test=centre", "features.sampling.test': 'centre' ", "'random', 'center'"),
    ("features.prompt=a photo", "features.prompt': 'a photo' ", "'{}'"),
    ("features.crop=300", "features.crop': 300 ", "features.resize=256; use crop <= resize"),
    ("train.lr=.nan", "train.lr': ", "expected a finite number, got nan"),
]


@pytest.mark.parametrize(("override", "key", "allowed"), OUT_OF_RANGE)
def test_out_of_range_named(override: str, key: str, allowed: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe("hmdb51", [override])
    message = str(info.value)
    assert "\n" not in message
    assert f"recipe key '{key}" in message and allowed in message, message


def test_ranges_accept_their_edges() -> None:
    edges = ["model.attn_dropout=0", "train.warmup_lr=0", "train.lambda_vt=0", "train.grad_clip=0"]
    edges += ["train.n_way=2", "features.crop=256", "features.workers=0", "eval.shots=5"]
    r = load_recipe("hmdb51", edges)
    assert (r.train.n_way, r.features.crop, r.eval.shots) == (2, 256, (5,))
    assert r.features.workers == 0


def test_decode_workers_default_to_auto() -> None:
    assert load_recipe("hmdb51").features.workers == "auto"
    assert load_recipe("hmdb51", ["features.workers=12"]).features.workers == 12
    assert recipe_from_dict({"name": "x"}).features.workers == "auto"


def test_several_problems_reported_on_one_line() -> None:
    with pytest.raises(RecipeError, match=r"^recipe key .* \(and 2 more problems\)$"):
        load_recipe("hmdb51", ["train.lr=-1", "train.steps=0", "eval.episodes=0"])


def test_empty_or_non_mapping_file(tmp_path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing here\n")
    with pytest.raises(RecipeError, match=re.escape(f"recipe file '{p}' is empty")):
        load_recipe(p)
    p.write_text("- train\n- eval\n")
    with pytest.raises(RecipeError, match="must be a mapping at the top level.*not a list"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="unknown recipe key 'source_path'"):
        recipe_from_dict({"name": "x", "source_path": "elsewhere.yaml"})
    with pytest.raises(RecipeError, match="missing required key 'name'"):
        recipe_from_dict({"dataset": "x"})


def test_recipes_are_frozen_hashable_and_replace_validates() -> None:
    r = load_recipe("kinetics100")
    assert isinstance(r.train.betas, tuple) and isinstance(r.data.classes.train, tuple)
    assert hash(r) == hash(load_recipe("kinetics100"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.train.lr = 1.0  # type: ignore[misc]
    moved = r.with_split_dir("/elsewhere")
    assert moved.data.split_dir == "/elsewhere" and moved.source_path == r.source_path
    with pytest.raises(ValueError, match="greater than 0"):
        dataclasses.replace(r.train, lr=-1.0)


def test_cli_reports_a_range_error_on_one_line() -> None:
    result = CliRunner().invoke(app, ["recipes", "show", "synth", "--set", "train.lr=-1"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "train.lr" in lines[0] and "-1" in lines[0] and "must be > 0" in lines[0]
