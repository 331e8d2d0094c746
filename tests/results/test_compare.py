"""Per-query predictions in the results database, several shots in one evaluation, and the paired
comparison of two evaluations (``fsar compare``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.errors import EpisodeError, FsarError
from fsar_cli.evaluation.evaluate import evaluate, evaluate_shots
from fsar_cli.features.synthetic import synthetic_store
from fsar_cli.recipe import load_recipe
from fsar_cli.results.compare import compare, paired_stats, unpaired_stats
from fsar_cli.results.db import EpisodePredictions, ResultsDB

DIM = 32


def _recipe(tmp_path: Path, episodes: int = 60):
    cache = tmp_path / "cache"
    if not (cache / "test").exists():
        synthetic_store(cache / "test", n_classes=8, videos_per_class=8, dim=DIM, noise=2.0)
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "name: tiny\ndataset: Tiny\n"
        f"features:\n  cache_dir: {cache}\n"
        "model:\n  num_heads: 4\n  ffn_dim: 64\n  adapter_hidden: 16\n"
        f"eval:\n  episodes: {episodes}\n  batch_episodes: 16\n  n_query: 2\n"
    )
    return load_recipe(path)


# --------------------------------------------------------------------------- predictions


def test_stored_predictions_reproduce_the_accuracy_exactly(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    db = tmp_path / "r.sqlite"
    res = evaluate(recipe, head_name="otam", k_shot=2, db=db)
    rdb = ResultsDB(db)
    pred = rdb.predictions(res.eval_id)
    assert pred.predictions.shape == (60, 5 * 2) and pred.classes.shape == (60, 5)
    np.testing.assert_array_equal(pred.accuracies(), res.accuracies)
    np.testing.assert_array_equal(pred.accuracies(), rdb.accuracies(res.eval_id))
    assert pred.accuracies().mean() == rdb.query().loc[0, "acc_mean"]
    frame = pred.to_frame()
    assert len(frame) == 600 and frame["correct"].mean() == pytest.approx(res.mean)
    # the true class of a query is a class of its episode; the store's labels agree
    assert set(frame["class_id"]) <= set(range(8))


def test_predictions_stay_small() -> None:
    rng = np.random.default_rng(0)
    E, W, Q = 10_000, 5, 5
    labels = np.repeat(np.arange(W), Q)
    right = rng.random((E, W * Q)) < 0.8  # 80% accuracy, the rest spread over the other labels
    preds = np.where(right, labels, (labels + rng.integers(1, W, (E, W * Q))) % W)
    classes = np.stack([rng.choice(24, W, replace=False) for _ in range(E)])
    from fsar_cli.results.db import _pack_predictions

    packed = _pack_predictions(classes, preds, Q)
    size = len(packed[3]) + len(packed[4])
    assert size < 200_000, size  # raw int64 would be 2.4 MB


def test_old_database_without_predictions_still_opens(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    recipe = _recipe(tmp_path)
    res = evaluate(recipe, head_name="proto", db=db)
    with sqlite3.connect(db) as conn:  # what a database of the previous fsar looks like
        conn.execute("DROP TABLE episode_preds")
    rdb = ResultsDB(db)
    assert len(rdb.query()) == 1  # opens (and gains the empty table)
    with pytest.raises(FsarError, match="has no stored predictions"):
        rdb.predictions(res.eval_id)
    with pytest.raises(FsarError, match="no evaluation with eval_id 99"):
        rdb.predictions(99)
    res2 = evaluate(recipe, head_name="proto", db=db)
    np.testing.assert_array_equal(rdb.predictions(res2.eval_id).accuracies(), res2.accuracies)


def test_several_shots_in_one_evaluation_share_work(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    db = tmp_path / "r.sqlite"
    ticks: list[int] = []
    many = evaluate_shots(
        recipe,
        [1, 2, 3],
        head_name="otam",
        db=db,
        on_progress=lambda n=1, **kw: ticks.append(kw.get("total", 0) if n == 0 else n),
    )
    assert [r.k_shot for r in many] == [1, 2, 3]
    assert ticks[0] == 180 and sum(ticks[1:]) == 180
    for r in many:
        alone = evaluate(recipe, head_name="otam", k_shot=r.k_shot)
        np.testing.assert_array_equal(r.accuracies, alone.accuracies)
    assert list(ResultsDB(db).query()["k_shot"]) == [1, 2, 3]
    with pytest.raises(EpisodeError, match="one shot count"):
        evaluate_shots(recipe, [1, 2], head_name="otam", save_episodes=tmp_path / "e.json")


# --------------------------------------------------------------------------- statistics


def test_paired_ci_agrees_with_bootstrap() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    difficulty = rng.random(n)  # shared per-episode difficulty: what pairing cancels
    a = np.clip(difficulty + 0.05 + 0.1 * rng.standard_normal(n), 0, 1)
    b = np.clip(difficulty + 0.1 * rng.standard_normal(n), 0, 1)
    s = paired_stats(a, b)
    d = a - b
    boots = rng.choice(d, size=(4000, n)).mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    width = 2 * s.ci95
    assert abs(s.low - lo) < 0.1 * width and abs(s.high - hi) < 0.1 * width
    assert s.p_value < 1e-6 and s.wins + s.ties + s.losses == n
    # pairing: much narrower than Welch's interval on the same numbers
    assert s.ci95 < 0.5 * unpaired_stats(a, b).ci95


def test_paired_stats_edge_cases() -> None:
    same = np.array([0.2, 0.4, 0.6])
    s = paired_stats(same, same)
    assert (s.diff, s.ci95, s.p_value, s.ties) == (0.0, 0.0, 1.0, 3)
    shifted = paired_stats(same + 0.2, same)
    assert shifted.diff == pytest.approx(0.2) and shifted.p_value == 0.0 and shifted.wins == 3
    with pytest.raises(ValueError):
        paired_stats(same, same[:2])


# --------------------------------------------------------------------------- compare


def test_compare_paired_refuses_unpaired(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    db = tmp_path / "r.sqlite"
    c = evaluate(recipe, head_name="proto", k_shot=1, seed=7, db=db)
    a = evaluate_shots(recipe, [1, 2], head_name="otam", db=db)
    b = evaluate_shots(recipe, [1, 2], head_name="proto", db=db)  # the latest proto: paired
    cmp = compare("otam", "proto", db=db)
    assert cmp.paired and list(cmp.frame["k_shot"]) == [1, 2]
    row = cmp.frame.iloc[0]
    assert (row["eval_a"], row["eval_b"]) == (a[0].eval_id, b[0].eval_id)
    s = paired_stats(a[0].accuracies, b[0].accuracies)
    assert row["diff"] == pytest.approx(100 * s.diff)
    assert row["wins"] + row["ties"] + row["losses"] == 60
    one = compare(str(a[1].eval_id), "head=proto,shot=2", db=db)
    assert len(one.frame) == 1 and one.frame.iloc[0]["eval_b"] == b[1].eval_id
    with pytest.raises(FsarError, match="not scored on the same episodes .seed 0 vs 7"):
        compare(str(a[0].eval_id), str(c.eval_id), db=db)
    loose = compare(str(a[0].eval_id), str(c.eval_id), db=db, unpaired=True)
    assert not loose.paired and loose.frame.iloc[0]["test"] == "Welch t-test"
    with pytest.raises(FsarError, match="no evaluation matches 'head=text'"):
        compare("head=text", "otam", db=db)
    with pytest.raises(FsarError, match="unknown key 'colour'"):
        compare("colour=red", "otam", db=db)


def test_cli_compare(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    db = tmp_path / "r.sqlite"
    evaluate_shots(recipe, [1, 2], head_name="otam", db=db)
    evaluate_shots(recipe, [1, 2], head_name="proto", db=db)
    out = tmp_path / "cmp.csv"
    runner = CliRunner()
    res = runner.invoke(
        app, ["compare", "otam", "proto", "--db", str(db), "--out", str(out), "--shot", "2"]
    )
    assert res.exit_code == 0, res.output
    assert "paired" in res.output and "otam" in res.output
    frame = pd.read_csv(out)
    assert len(frame) == 1 and frame.loc[0, "k_shot"] == 2
    bad = runner.invoke(app, ["compare", "otam", "nothing", "--db", str(db)])
    assert bad.exit_code == 1 and "no evaluation matches" in bad.output
    again = runner.invoke(app, ["compare", "otam", "proto", "--db", str(db), "--out", str(out)])
    assert again.exit_code == 0, again.output  # its own CSV is replaced
    notes = tmp_path / "notes.csv"
    notes.write_text("my,notes\n")
    args = ["compare", "otam", "proto", "--db", str(db), "--out", str(notes)]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert notes.read_text() == "my,notes\n"
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_predictions_dataclass_maps_labels_to_classes() -> None:
    p = EpisodePredictions(np.array([[7, 3]]), np.array([[0, 1, 1, 1]]), 2)
    assert p.true_classes.tolist() == [[7, 7, 3, 3]]
    assert p.predicted_classes.tolist() == [[7, 3, 3, 3]]
    assert p.accuracies().tolist() == [0.75]
