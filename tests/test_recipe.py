"""Recipes: shipped ones load, bad keys and types are named, overrides apply, dumps round-trip."""

from __future__ import annotations

import pytest
import yaml

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
