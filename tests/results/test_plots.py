"""``fsar plot``: every figure is a valid image whose numbers (the Python API's ``data``) equal the
database's; ``fsar eval --shot 1 2 --plot``; ``fsar train --seeds`` and the report over seeds;
``fsar report --predictions``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.errors import FsarError
from fsar_cli.evaluation.evaluate import evaluate_shots
from fsar_cli.features.synthetic import synthetic_store
from fsar_cli.recipe import load_recipe
from fsar_cli.results.db import ResultsDB
from fsar_cli.results.plots import plot_bench, plot_classes, plot_shots, plot_training
from fsar_cli.results.report import load_results, markdown_table
from fsar_cli.train.runs import METRICS_COLUMNS

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def _recipe_file(tmp_path: Path, train: bool = False) -> Path:
    cache = tmp_path / "cache"
    if not (cache / "test").exists():
        synthetic_store(cache / "test", n_classes=8, videos_per_class=8, dim=32, noise=2.0)
        if train:
            synthetic_store(cache / "train", 8, 6, dim=32, seed=3, noise=1.0, split="train")
            synthetic_store(cache / "val", 6, 4, dim=32, seed=1, noise=1.0, split="val")
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "name: tiny\ndataset: Tiny\n"
        f"features:\n  cache_dir: {cache}\n"
        "model: {num_heads: 4, ffn_dim: 64, adapter: residual, adapter_hidden: 16}\n"
        "train: {steps: 4, episodes_per_step: 2, val_every: 2, val_episodes: 10, "
        "checkpoint_every: 2}\n"
        "eval:\n  episodes: 40\n  batch_episodes: 16\n"
    )
    return path


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("plots")
    recipe = load_recipe(_recipe_file(tmp))
    db = tmp / "r.sqlite"
    for head in ("proto", "otam"):
        evaluate_shots(recipe, [1, 2, 3], head_name=head, db=db)
    return tmp, db


def test_plot_shots_draws_the_database(filled: tuple[Path, Path]) -> None:
    tmp, db = filled
    res = plot_shots(tmp / "shots.png", db=db)
    assert res.path.read_bytes()[:8] == PNG
    frame = load_results(db).set_index("eval_id")
    assert len(res.data) == 6
    for r in res.data.itertuples():
        assert r.acc_mean == frame.loc[r.eval_id, "acc_mean"]
        assert r.acc_ci95 == frame.loc[r.eval_id, "acc_ci95"]
    svg = plot_shots(tmp / "shots.svg", db=db, head="otam")
    assert svg.path.read_text().lstrip().startswith("<?xml") and len(svg.data) == 3
    with pytest.raises(FsarError, match="unknown image type '.gif'"):
        plot_shots(tmp / "x.gif", db=db)


def test_plot_classes_matches_predictions(filled: tuple[Path, Path]) -> None:
    tmp, db = filled
    eval_id = int(ResultsDB(db).query().iloc[-1]["eval_id"])
    res = plot_classes(eval_id, tmp / "classes.pdf", db=db)
    assert res.path.read_bytes()[:4] == b"%PDF"
    pred = ResultsDB(db).predictions(eval_id)
    true_c, ok = pred.true_classes.reshape(-1), (pred.predictions == pred.labels).reshape(-1)
    for r in res.data.itertuples():
        mine = true_c == r.class_id
        assert r.n_queries == mine.sum() and r.n_correct == ok[mine].sum()
    assert res.data["n_correct"].sum() / res.data["n_queries"].sum() == pytest.approx(
        ResultsDB(db).query().iloc[-1]["acc_mean"]
    )
    conf = res.extra["confusion"]
    np.testing.assert_allclose(np.diag(conf.to_numpy()), res.data["accuracy"].to_numpy())
    assert (
        list(conf.index)[0]
        == res.data.iloc[0]["class_name"]
        == "class " + str(res.data.iloc[0]["class_id"])
    )


def test_plot_bench_cells_are_the_latest(filled: tuple[Path, Path]) -> None:
    tmp, db = filled
    res = plot_bench(tmp / "bench.png", db=db)
    assert res.path.read_bytes()[:8] == PNG and len(res.data) == 6
    frame = load_results(db).set_index("eval_id")
    for r in res.data.itertuples():
        assert r.acc_mean == frame.loc[r.eval_id, "acc_mean"]


def test_plot_training_reads_metrics(tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        run = tmp_path / "runs" / f"seed-{i}"
        run.mkdir(parents=True)
        steps = np.arange(1, 21)
        frame = pd.DataFrame(dict.fromkeys(METRICS_COLUMNS, np.nan), index=steps - 1)
        frame["step"] = steps
        frame["loss"] = 2.0 / steps + i
        frame["ce_fewshot"] = 1.0 / steps
        frame["lr"] = 1e-3
        frame.loc[steps % 5 == 0, "val_acc"] = [0.5, 0.7, 0.6 + 0.2 * i, 0.65]
        frame.loc[steps % 5 == 0, "val_ci95"] = 0.02
        frame["val_split"] = "val"
        frame.to_csv(run / "metrics.csv", index=False)
        runs.append(run)
    res = plot_training([tmp_path / "runs"], tmp_path / "training.png")  # a seeds folder
    assert res.path.read_bytes()[:8] == PNG
    assert list(res.data["run"].unique()) == ["runs/seed-0", "runs/seed-1"]
    assert res.data["loss"].sum() == pytest.approx(sum(2.0 / np.arange(1, 21)) * 2 + 20)
    with pytest.raises(FsarError, match="no metrics.csv"):
        plot_training([tmp_path], tmp_path / "t.png")


def test_cli_plots_and_report_predictions(filled: tuple[Path, Path], tmp_path: Path) -> None:
    _, db = filled
    for args in (["shots"], ["bench"], ["classes", "1"]):
        out = tmp_path / f"{args[0]}.png"
        res = runner.invoke(app, ["plot", *args, "--db", str(db), "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert out.read_bytes()[:8] == PNG
    csv = tmp_path / "preds.csv"
    res = runner.invoke(app, ["report", "--predictions", "1", "--db", str(db), "--out", str(csv)])
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(csv)
    assert len(frame) == 40 * 5 and frame["class_name"].str.startswith("class ").all()
    assert frame["correct"].mean() == pytest.approx(ResultsDB(db).query().iloc[0]["acc_mean"])


def test_cli_eval_several_shots_with_plot(tmp_path: Path) -> None:
    recipe = _recipe_file(tmp_path)
    db = tmp_path / "r.sqlite"
    plot = tmp_path / "cls.png"
    args = ["eval", str(recipe), "--head", "otam", "--shot", "1", "2", "--db", str(db)]
    res = runner.invoke(app, [*args, "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    assert list(ResultsDB(db).query()["k_shot"]) == [1, 2]
    assert (tmp_path / "cls-1shot.png").is_file() and (tmp_path / "cls-2shot.png").is_file()
    bad = runner.invoke(app, ["eval", str(recipe), "--head", "otam", "--shot", "1", "x"])
    assert bad.exit_code != 0 and "'x' is not an integer" in bad.output


@pytest.mark.slow
def test_train_seeds_eval_parent_and_report(tmp_path: Path) -> None:
    recipe = _recipe_file(tmp_path, train=True)
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(recipe), "--out", str(run), "--seeds", "0", "1"])
    assert res.exit_code == 0, res.output
    assert (run / "seed-0" / "best.pt").is_file() and (run / "seed-1" / "best.pt").is_file()
    db = tmp_path / "r.sqlite"
    res = runner.invoke(app, ["eval", str(recipe), "-c", str(run), "--db", str(db)])
    assert res.exit_code == 0, res.output
    rows = ResultsDB(db).query()
    assert len(rows) == 2 and rows["seed"].nunique() == 1  # the same episodes for both seeds
    a, b = (ResultsDB(db).predictions(int(i)).classes for i in rows["eval_id"])
    np.testing.assert_array_equal(a, b)
    table = markdown_table(load_results(db), include_published=False)
    accs = 100 * rows["acc_mean"].to_numpy()
    assert f"{accs.mean():.1f} ± {accs.std(ddof=1):.1f} sd (2 seeds" in table
    # resuming keeps the finished seeds
    again = runner.invoke(
        app, ["train", str(recipe), "--out", str(run), "--seeds", "0", "1", "--resume"]
    )
    assert again.exit_code == 0, again.output


def test_plots_replace_only_images_fsar_drew(filled: tuple[Path, Path], tmp_path: Path) -> None:
    _, db = filled
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my holiday photo")
    res = runner.invoke(app, ["plot", "shots", "--db", str(db), "--out", str(mine)])
    assert res.exit_code == 1 and str(mine) in res.output and "--overwrite" in res.output
    assert mine.read_bytes() == b"my holiday photo"
    for suffix in (".png", ".svg", ".pdf"):  # fsar's own image: replaced without --overwrite
        out = tmp_path / f"shots{suffix}"
        for _ in range(2):
            res = runner.invoke(app, ["plot", "shots", "--db", str(db), "--out", str(out)])
            assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["plot", "shots", "--db", str(db), "--out", str(mine), "--overwrite"])
    assert res.exit_code == 0 and mine.read_bytes()[:8] == PNG
