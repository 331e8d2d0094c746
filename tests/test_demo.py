"""A reduced `fsar demo`, end to end through the CLI, and the claims its table is there to show."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from fsar_cli.cli.app import app

runner = CliRunner()


def _acc(table: pd.DataFrame, head: str, k: int) -> tuple[float, float]:
    row = table[(table["head"] == head) & (table["k_shot"] == k)].iloc[0]
    return float(row["acc_mean"]), float(row["acc_ci95"])


def _beats(table: pd.DataFrame, a: str, b: str, k: int) -> None:
    (ma, ca), (mb, cb) = _acc(table, a, k), _acc(table, b, k)
    assert ma - mb > ca + cb, f"{k}-shot: {a} {ma:.1f}±{ca:.1f} vs {b} {mb:.1f}±{cb:.1f}"


@pytest.mark.slow
def test_reduced_demo_shows_the_point_of_the_method(tmp_path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--videos-per-class", "8", "--episodes", "1000"]
    args += ["--steps", "100"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "NOT the OpenAI CLIP weights" in result.output
    table = pd.read_csv(out / "demo_results.csv")
    assert set(table["head"]) == {"proto", "otam", "text", "clipfsar-notext", "clipfsar"}
    assert sorted(set(table["k_shot"])) == [1, 5]
    for k in (1, 5):
        # every test class has its time-reversed twin: aligning frames in time must win clearly
        _beats(table, "otam", "proto", k)
        assert _acc(table, "proto", k)[0] > 20.0 + 2 * _acc(table, "proto", k)[1]  # above chance
    # the three components of CLIP-FSAR, each beyond the sum of the two CIs at 1-shot: temporal
    # alignment (above), meta-training the head (it learns to discount the colour, shape and
    # background that the encoder's features also carry), and the class-text token (one support
    # is often jittered or occluded; the class name says where the path runs)
    _beats(table, "clipfsar-notext", "otam", 1)
    _beats(table, "clipfsar", "clipfsar-notext", 1)
    # validation is not saturated, so selecting the checkpoint on it means something
    for head in ("clipfsar-notext", "clipfsar"):
        summary = json.loads((out / "runs" / head / "summary.json").read_text())
        assert summary["best_val_acc"] < 0.99, (head, summary["best_val_acc"])

    # a rerun reuses every finished stage and reproduces the table exactly
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    reused = "reused from an earlier run: synth, extract, cache, train clipfsar-notext"
    assert reused in again.output
    pd.testing.assert_frame_equal(pd.read_csv(out / "demo_results.csv"), table)


def test_training_runs_are_reused_only_with_the_same_settings(tmp_path, monkeypatch) -> None:
    """`fsar demo --steps 3` after a 2-step demo retrains; the same settings reuse the run."""
    import json

    from fsar_cli import demo
    from fsar_cli.recipe import load_recipe
    from fsar_cli.train import frozen

    calls: list[int] = []

    def fake_meta_train(recipe, run_dir, *, resume, device, on_progress):
        calls.append(recipe.train.steps)
        run_dir.mkdir(parents=True, exist_ok=True)
        doc = {"finished": True, "steps_done": recipe.train.steps}
        (run_dir / "summary.json").write_text(json.dumps(doc))

    monkeypatch.setattr(frozen, "meta_train", fake_meta_train)
    run_dir = tmp_path / "runs" / "clipfsar"

    def train_with(steps: int) -> tuple[dict, bool]:
        recipe = load_recipe("synth", [f"train.steps={steps}"])
        key = demo._key("cache-key", recipe.model, recipe.train, "clipfsar")
        state = demo._State(tmp_path)  # read back from <out>/demo_state.json every time
        return demo._train(recipe, "clipfsar", run_dir, "cpu", None, state, key, tmp_path)

    assert train_with(2) == ({"finished": True, "steps_done": 2}, False)
    assert train_with(2)[1] is True and calls == [2]
    summary, reused = train_with(3)
    assert not reused and summary["steps_done"] == 3 and calls == [2, 3]
    assert train_with(3)[1] is True and calls == [2, 3]


def test_the_decode_thread_count_does_not_invalidate_the_demo_cache() -> None:
    import dataclasses

    from fsar_cli import demo
    from fsar_cli.recipe import load_recipe

    recipe = load_recipe("synth")
    assert recipe.features.workers == "auto"
    key = demo._cache_key("extract", recipe, "weights")
    for workers in ("features.workers=2", "features.workers=7"):
        assert demo._cache_key("extract", load_recipe("synth", [workers]), "weights") == key
    # demo folders cached before `auto` (workers: 2 in the key) stay valid
    two = dataclasses.replace(recipe.features, workers=2)
    assert key == demo._key("extract", two, "weights")
    assert demo._cache_key("extract", load_recipe("synth", ["features.crop=32"]), "weights") != key


def test_forget_never_deletes_outside_the_demo_folder(tmp_path) -> None:
    from fsar_cli import demo

    out, outside = tmp_path / "demo", tmp_path / "elsewhere"
    (out / "cache").mkdir(parents=True)
    outside.mkdir()
    assert not demo._forget(outside, out, "test") and outside.is_dir()
    assert demo._forget(out / "cache", out, "test") and not (out / "cache").exists()


def test_demo_has_the_overwrite_option_its_advice_names() -> None:
    result = runner.invoke(app, ["demo", "--help"])
    assert result.exit_code == 0 and "--overwrite" in result.output
