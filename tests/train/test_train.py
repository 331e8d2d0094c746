"""``fsar train`` on small synthetic caches: files, learning, exact resume, refusals, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_recipe
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.errors import TrainError
from fsar_cli.features.synthetic import synthetic_store
from fsar_cli.models import create_head, load_head_checkpoint
from fsar_cli.recipe import Recipe, load_recipe
from fsar_cli.train.frozen import meta_train
from fsar_cli.train.loop import TEST_LABEL, TrainResult
from fsar_cli.train.runs import MetricsLog

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model_state"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_short_run_writes_every_file(tmp_path: Path) -> None:
    recipe = load_recipe(make_recipe(tmp_path))
    seen: list[tuple[int, dict]] = []
    result = meta_train(
        recipe, tmp_path / "run", on_progress=lambda n=1, **kw: seen.append((n, kw))
    )
    run = tmp_path / "run"
    names = {"resolved_recipe.yaml", "last.pt", "best.pt", "metrics.csv", "summary.json"}
    assert {p.name for p in run.iterdir()} == names  # no temporary files left behind
    assert result.finished and result.steps_done == 12 and result.episodes_seen == 48
    assert sum(n for n, _ in seen) == 12 and "loss" in seen[-1][1]["label"]

    rows = MetricsLog.read(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert all(np.isfinite(float(r[c])) for r in rows for c in ("loss", "ce_fewshot", "lr"))
    assert [int(r["step"]) for r in rows if r["val_acc"]] == [5, 10, 12]  # every 5 and the end
    assert float(rows[0]["lr"]) == pytest.approx(1e-4) and float(rows[4]["lr"]) == pytest.approx(
        1e-3
    )

    # every parameter trains, the zero-initialised adapter included
    torch.manual_seed(recipe.train.seed)
    init = create_head("clipfsar", 32, recipe.model).state_dict()
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["step"] == 12 and last["optimizer"]["state"]
    for key in ("adapter.fc1.weight", "adapter.fc2.weight", "transformer.to_q.weight", "scale"):
        assert not torch.equal(init[key], last["model_state"][key]), key
    assert torch.count_nonzero(last["model_state"]["adapter.fc2.weight"]) > 0

    head, extra = load_head_checkpoint(run / "best.pt")
    assert head.name == "clipfsar" and extra["step"] == result.best_step
    assert extra["val_acc"] == result.best_val_acc and extra["selected_on"] == "val"
    summary = __import__("json").loads((run / "summary.json").read_text())
    assert summary["encoder"] == "synthetic" and summary["encoder_random"] is True
    assert summary["steps_done"] == 12 and summary["best_val_acc"] == result.best_val_acc
    assert (run / "resolved_recipe.yaml").read_text().count("lambda_vt: 1.0") == 1


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    train = (
        "steps: 30, episodes_per_step: 4, lr: 3.0e-3, warmup_lr: 3.0e-3, lr_step: 100, "
        "val_every: 30, val_episodes: 10, checkpoint_every: 30, lambda_vt: 1.0"
    )
    meta_train(load_recipe(make_recipe(tmp_path, train, noise=2.0)), tmp_path / "run")
    losses = [float(r["loss"]) for r in MetricsLog.read(tmp_path / "run" / "metrics.csv")]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.85 * first, (first, last)


# ---------------------------------------------------------------- exact resume

RESUME_TRAIN = (
    "steps: 40, episodes_per_step: 4, lr: 1.0e-3, warmup_lr: 1.0e-4, lr_step: 10, "
    "val_every: 10, val_episodes: 10, checkpoint_every: 2, lambda_vt: 1.0"
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One uninterrupted 40-step run: (its recipe, its run folder)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = make_recipe(root, RESUME_TRAIN)
        meta_train(load_recipe(path), root / "run")
    finally:
        torch.set_num_threads(n)
    return path, root / "run"


def _same_metrics(a: Path, b: Path) -> None:
    ra, rb = MetricsLog.read(a / "metrics.csv"), MetricsLog.read(b / "metrics.csv")
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in ra]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in rb]


def test_stop_and_resume_equals_uninterrupted(uninterrupted: tuple[Path, Path]) -> None:
    recipe_path, ref = uninterrupted
    run = recipe_path.parent / "stopped"
    recipe = load_recipe(recipe_path)
    first = meta_train(recipe, run, max_steps=7)  # 7: not a checkpoint multiple
    assert not first.finished and first.steps_done == 7
    second = meta_train(recipe, run, resume=True)
    assert second.finished and second.resumed_from == 7
    assert_same_weights(final_weights(run), final_weights(ref))
    _same_metrics(run, ref)
    a, _ = load_head_checkpoint(run / "best.pt")
    b, _ = load_head_checkpoint(ref / "best.pt")
    assert_same_weights(a.state_dict(), b.state_dict())


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(uninterrupted: tuple[Path, Path]) -> None:
    recipe_path, ref = uninterrupted
    run = recipe_path.parent / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FSAR_NO_PROGRESS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsar_cli", "train", str(recipe_path), "--out", str(run)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists(), "the run finished before it was killed"
    killed_at = torch.load(run / "last.pt", weights_only=True)["step"]
    assert 2 <= killed_at < 40
    result = meta_train(load_recipe(recipe_path), run, resume=True)
    assert result.finished and result.resumed_from == killed_at
    assert_same_weights(final_weights(run), final_weights(ref))
    _same_metrics(run, ref)  # rows written after the checkpoint were dropped and redone


# ---------------------------------------------------------------- refusals


def test_refuses_non_empty_run_folder(tmp_path: Path) -> None:
    recipe = load_recipe(make_recipe(tmp_path))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match="not empty.*--resume"):
        meta_train(recipe, tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]


def test_refuses_resume_with_a_changed_recipe(tmp_path: Path) -> None:
    path = make_recipe(tmp_path)
    meta_train(load_recipe(path), tmp_path / "run", max_steps=2)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    changed = load_recipe(path, ["train.lr=2e-3"])
    with pytest.raises(TrainError, match=r"train\.lr \(0\.001 in the run, 0\.002 now\)"):
        meta_train(changed, tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    with pytest.raises(TrainError, match="not a run folder"):
        meta_train(load_recipe(path), tmp_path / "elsewhere", resume=True)
    # the cache's decode threads cannot change training: a resume may change them
    faster = load_recipe(path, ["features.workers=7"])
    result = meta_train(faster, tmp_path / "run", resume=True, max_steps=3)
    assert result.resumed_from == 2


@pytest.mark.parametrize("split", ["val", "train"])
def test_unknown_class_names_are_an_error(tmp_path: Path, split: str) -> None:
    recipe = load_recipe(make_recipe(tmp_path, nan_split=split))
    with pytest.raises(TrainError, match=rf"'class 2'.*data\.classes\.{split}"):
        meta_train(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # a head without text does not need the names
    notext = load_recipe(make_recipe(tmp_path), ["model.head=clipfsar-notext"])
    assert meta_train(notext, tmp_path / "run2", max_steps=1).steps_done == 1


def test_untrainable_head_is_refused(tmp_path: Path) -> None:
    recipe = load_recipe(make_recipe(tmp_path), ["model.head=proto"])
    with pytest.raises(TrainError, match="no parameters to train"):
        meta_train(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # checks come before any write


def test_select_on_test_is_labelled(tmp_path: Path) -> None:
    recipe: Recipe = load_recipe(make_recipe(tmp_path, test=True), ["train.select_on=test"])
    result = meta_train(recipe, tmp_path / "run")
    assert result.selected_on == TEST_LABEL
    rows = MetricsLog.read(tmp_path / "run" / "metrics.csv")
    assert {r["val_split"] for r in rows if r["val_acc"]} == {TEST_LABEL}
    assert TEST_LABEL in (tmp_path / "run" / "summary.json").read_text()
    assert load_head_checkpoint(tmp_path / "run" / "best.pt")[1]["selected_on"] == TEST_LABEL


# ---------------------------------------------------------------- CLI


def test_cli_train_stop_resume_and_errors(tmp_path: Path) -> None:
    path = make_recipe(tmp_path)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(path), "--out", str(out), "--steps", "3"])
    assert res.exit_code == 0, res.output
    assert "3 / 12" in res.output and "continue with --resume" in res.output
    res = runner.invoke(app, ["train", str(path), "--out", str(out)])
    assert res.exit_code == 1 and "not empty" in res.output and "Traceback" not in res.output
    res = runner.invoke(
        app, ["train", str(path), "--out", str(out), "--resume", "--set", "train.seed=5"]
    )
    assert res.exit_code == 1 and "train.seed" in res.output
    res = runner.invoke(app, ["train", str(path), "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    assert "12 / 12, finished" in res.output and "best val acc" in res.output
    assert "random weights" in res.output
    rows = MetricsLog.read(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))


def test_cli_help() -> None:
    res = runner.invoke(app, ["train", "--help"])
    assert res.exit_code == 0 and "--resume" in res.output and "--steps" in res.output


def test_cli_picks_the_trainer_by_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fsar_cli.train.finetune
    import fsar_cli.train.frozen

    calls: list[tuple[str, dict]] = []

    def fake(name: str):  # type: ignore[no-untyped-def]
        def run(cfg: Recipe, out: Path, **kwargs: object) -> TrainResult:
            calls.append((name, {"mode": cfg.train.mode, "out": out, **kwargs}))
            return TrainResult(
                out, "clipfsar", 1, 12, False, None, 4, 1.0, None, None, None, None, None,
                "val", "synthetic", True, "cpu", 0.1,
            )  # fmt: skip

        return run

    monkeypatch.setattr(fsar_cli.train.frozen, "meta_train", fake("frozen"))
    monkeypatch.setattr(fsar_cli.train.finetune, "finetune_train", fake("finetune"))
    path = make_recipe(tmp_path)
    args = ["train", str(path), "--out", str(tmp_path / "r"), "--steps", "1", "--device", "cpu"]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, [*args, "--mode", "finetune", "--resume"]).exit_code == 0
    assert [(n, c["mode"]) for n, c in calls] == [("frozen", "frozen"), ("finetune", "finetune")]
    assert calls[1][1]["resume"] is True and calls[0][1]["max_steps"] == 1
    assert calls[0][1]["device"] == "cpu" and calls[0][1]["out"] == tmp_path / "r"


def test_micro_batches_give_the_gradient_of_the_mean(tmp_path: Path) -> None:
    import copy

    from fsar_cli.episodes import EpisodeSampler
    from fsar_cli.recipe import ModelCfg, TrainCfg
    from fsar_cli.train.frozen_step import episode_tensors, train_step
    from fsar_cli.train.schedule import build_optimizer

    store = synthetic_store(tmp_path / "train", 8, 6, dim=32, split="train")
    batch = EpisodeSampler(store.labels, 5, 1, 5, seed=0).sample(6)
    text = torch.from_numpy(store.text)
    ep = episode_tensors(batch, store.features, text, torch.device("cpu"))
    assert ep.support.shape == (6, 5, 8, 32) and ep.query.shape == (6, 25, 8, 32)
    np.testing.assert_array_equal(ep.video_labels[:, :5].numpy(), batch.classes)
    cfg = ModelCfg(ffn_dim=64, adapter_hidden=16, num_heads=4, attn_dropout=0.0, ffn_dropout=0.0)
    whole = create_head("clipfsar", 32, cfg)
    parts = copy.deepcopy(whole)
    outs = []
    for head, micro in ((whole, None), (parts, 4)):  # 4 + 2 episodes
        opt = build_optimizer(head, TrainCfg(lr=1e-3, warmup_lr=1e-3))
        outs.append(train_step(head, opt, ep, text, 1.5, micro_batch=micro))
    assert outs[0] == pytest.approx(outs[1], rel=1e-5)
    for (name, a), b in zip(whole.named_parameters(), parts.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
