"""torchrun / torch.distributed: 2 Gloo processes on this CPU give the single-process results.

Each check launches ``python -m torch.distributed.run --nproc_per_node 2 -m fsar_cli ...`` in a
subprocess (a few seconds each: every rank imports torch), on small synthetic stores (D = 32).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL_MODEL, write_recipe

from fsar_cli.distributed import Dist
from fsar_cli.episodes import EpisodeSampler
from fsar_cli.errors import TrainError
from fsar_cli.evaluation.batched import (
    EpisodeVideos,
    episode_accuracies,
    episode_videos,
    rank_range,
)
from fsar_cli.evaluation.evaluate import evaluate
from fsar_cli.features.synthetic import synthetic_store
from fsar_cli.models import create_head, save_head_checkpoint
from fsar_cli.recipe import ModelCfg, load_recipe
from fsar_cli.results.db import ResultsDB
from fsar_cli.train.frozen import meta_train
from fsar_cli.train.loop import check_train_cfg
from fsar_cli.train.runs import MetricsLog

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# 5 episodes per step on 2 ranks: an uneven split (3 + 2)
TRAIN = {
    "steps": 6,
    "episodes_per_step": 5,
    "lr": 1.0e-3,
    "warmup_lr": 1.0e-4,
    "lr_step": 3,
    "val_every": 3,
    "val_episodes": 70,
    "checkpoint_every": 2,
    "lambda_vt": 1.0,
}
NO_DROPOUT = ["--set", "model.attn_dropout=0", "--set", "model.ffn_dropout=0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node nproc -m fsar_cli ARGS`` (Gloo on the CPU); must succeed."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "FSAR_NO_PROGRESS": "1",
        "COLUMNS": "200",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "fsar_cli",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc


def make_recipe(root: Path) -> Path:
    cache = root / "cache"
    synthetic_store(cache / "train", 8, 6, dim=32, seed=0, noise=1.5, split="train")
    synthetic_store(cache / "val", 6, 4, dim=32, seed=1, noise=2.5, split="val")
    synthetic_store(cache / "test", 6, 6, dim=32, seed=2, noise=2.5, split="test")
    return write_recipe(
        root / "recipe.yaml",
        features={"cache_dir": str(cache)},
        model=SMALL_MODEL,
        train=TRAIN,
        eval={"episodes": 170, "batch_episodes": 16},
    )


def state(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)


def metrics(run: Path) -> list[dict[str, str]]:
    return [
        {k: v for k, v in r.items() if k != "seconds"} for r in MetricsLog.read(run / "metrics.csv")
    ]


# ---------------------------------------------------------------- in-process pieces


@pytest.mark.parametrize(("head_name", "k_shot"), [("clipfsar", 1), ("clipfsar", 3), ("otam", 2)])
def test_rank_shares_reassemble_the_single_process_accuracies(
    tmp_path: Path, head_name: str, k_shot: int
) -> None:
    """What every rank of a sharded evaluation computes, simulated for 3 ranks in one process."""
    store = synthetic_store(tmp_path / "test", 8, 8, dim=32, noise=2.5)
    sampler = EpisodeSampler(store.labels, 5, k_shot, 3, seed=4)
    n, chunk = 150, 16  # 9 blocks of 16 and one of 6: shares of 4, 3 and 3 blocks
    torch.manual_seed(0)
    cfg = ModelCfg(num_heads=4, ffn_dim=64, adapter="residual", adapter_hidden=16)
    head = create_head(head_name, 32, cfg)
    whole = episode_accuracies(head, store.features, store.text, sampler.sample(n), chunk=chunk)
    ranges = [rank_range(n, chunk, Dist(rank=r, world=3)) for r in range(3)]
    assert ranges == [(0, 64), (64, 112), (112, 150)]
    batches = [sampler.sample(b - a, start=a) for a, b in ranges]
    union = EpisodeVideos.union([episode_videos(b, 1) for b in batches])
    parts = [
        episode_accuracies(head, store.features, store.text, b, chunk=chunk, videos=union)
        for b in batches
    ]
    assert 0.2 < whole.mean() < 0.95
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert rank_range(3, 16, Dist(rank=1, world=2)) == (3, 3)  # more ranks than blocks


def test_fewer_episodes_per_step_than_processes_is_refused(tmp_path: Path) -> None:
    recipe = load_recipe(make_recipe(tmp_path), ["train.episodes_per_step=2"])
    check_train_cfg(recipe, "frozen", 2)
    with pytest.raises(TrainError, match="episodes_per_step=2 is less than the 3 processes"):
        check_train_cfg(recipe, "frozen", 3)


# ---------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_train_equals_single_process_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_recipe(tmp_path)
    sets = [s for s in NO_DROPOUT if s != "--set"]
    meta_train(load_recipe(path, sets), tmp_path / "single")
    out = torchrun("train", str(path), "--out", str(tmp_path / "dist"), *NO_DROPOUT)
    assert "2 processes" in out.stdout and "6 / 6, finished" in out.stdout
    assert out.stdout.count("fsar train") == 1  # rank 0 alone prints

    # the same update as one process over the same episodes (uneven 3 + 2 split included)
    single, dist = state(tmp_path / "single"), state(tmp_path / "dist")
    assert single["model_state"].keys() == dist["model_state"].keys()
    for k, v in single["model_state"].items():
        torch.testing.assert_close(dist["model_state"][k], v, rtol=0, atol=1e-6, msg=k)
    names = {p.name for p in (tmp_path / "single").iterdir()}
    assert {p.name for p in (tmp_path / "dist").iterdir()} == names  # no temporary files
    ms, md = metrics(tmp_path / "single"), metrics(tmp_path / "dist")
    assert [r["step"] for r in md] == [str(s) for s in range(1, 7)]
    for a, b in zip(ms, md, strict=True):
        assert a["val_acc"] == b["val_acc"]  # identical validation numbers
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    summary = json.loads((tmp_path / "dist" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["episodes_seen"] == 30
    assert len(dist["rng"]) == 2 and dist["world_size"] == 2

    # with dropout: stop at step 3, resume to the end == the uninterrupted distributed run
    torchrun("train", str(path), "--out", str(tmp_path / "full"))
    rngs = state(tmp_path / "full")["rng"]
    assert not torch.equal(rngs[0]["torch"], rngs[1]["torch"])  # one stream per rank
    torchrun("train", str(path), "--out", str(tmp_path / "stop"), "--steps", "3")
    assert state(tmp_path / "stop")["step"] == 3
    shutil.copytree(tmp_path / "stop", tmp_path / "stop_one")
    torchrun("train", str(path), "--out", str(tmp_path / "stop"), "--resume")
    full, resumed = state(tmp_path / "full"), state(tmp_path / "stop")
    for k, v in full["model_state"].items():
        assert torch.equal(resumed["model_state"][k], v), k
    assert metrics(tmp_path / "stop") == metrics(tmp_path / "full")

    # another number of processes: the episodes and their dropout masks are the same
    with caplog.at_level("INFO", logger="fsar_cli.train.rng"):
        result = meta_train(load_recipe(path), tmp_path / "stop_one", resume=True)
    assert result.finished and result.resumed_from == 3
    assert "written by 2 process(es), this run has 1" in caplog.text
    one = state(tmp_path / "stop_one")
    for k, v in full["model_state"].items():
        torch.testing.assert_close(one["model_state"][k], v, rtol=0, atol=1e-5, msg=k)


@pytest.mark.slow
def test_dropout_on_one_two_and_three_processes_train_the_same_weights(tmp_path: Path) -> None:
    """Dropout masks are drawn per episode: the number of processes does not change them."""
    path = make_recipe(tmp_path)
    recipe = load_recipe(path)
    assert recipe.model.attn_dropout > 0 and recipe.model.ffn_dropout > 0
    meta_train(recipe, tmp_path / "one")
    for nproc in (2, 3):  # 5 episodes per step: 3 + 2 and 2 + 2 + 1
        torchrun("train", str(path), "--out", str(tmp_path / f"n{nproc}"), nproc=nproc)
    one = state(tmp_path / "one")["model_state"]
    for nproc in (2, 3):
        other = state(tmp_path / f"n{nproc}")["model_state"]
        for k, v in one.items():
            torch.testing.assert_close(other[k], v, rtol=0, atol=1e-5, msg=f"{nproc}: {k}")
    # and dropout is really on: without it the weights differ
    meta_train(load_recipe(path, [s for s in NO_DROPOUT if s != "--set"]), tmp_path / "off")
    off = state(tmp_path / "off")["model_state"]
    assert max((off[k] - v).abs().max().item() for k, v in one.items()) > 1e-3


@pytest.mark.slow
def test_torchrun_eval_equals_single_process(tmp_path: Path) -> None:
    path = make_recipe(tmp_path)
    torch.manual_seed(3)
    head = create_head("clipfsar", 32, load_recipe(path).model)
    save_head_checkpoint(tmp_path / "head.pt", head, {"step": 0})
    one = evaluate(
        load_recipe(path),
        checkpoint=tmp_path / "head.pt",
        save_episodes=tmp_path / "one.json",
        db=tmp_path / "one.sqlite",
    )
    assert len(one.accuracies) == 170 and 0.2 < one.mean < 0.95
    db = tmp_path / "dist.sqlite"
    out = torchrun(
        "eval",
        str(path),
        "--checkpoint",
        str(tmp_path / "head.pt"),
        "--db",
        str(db),
        "--save-episodes",
        str(tmp_path / "dist.json"),
    )
    assert out.stdout.count("fsar eval") == 1 and "x 2 processes" in out.stdout
    rows = ResultsDB(db).query()
    assert len(rows) == 1  # one result, written by rank 0
    accs = ResultsDB(db).accuracies(int(rows["eval_id"][0]))
    np.testing.assert_array_equal(accs, one.accuracies)  # episode by episode, exactly
    assert rows["acc_mean"][0] == one.mean and rows["acc_ci95"][0] == one.ci95
    assert (tmp_path / "dist.json").read_bytes() == (tmp_path / "one.json").read_bytes()


def _cache_recipe(tmp: Path, frames: Path, name: str) -> Path:
    doc = {
        "name": name,
        "data": {
            "split_dir": str(tmp / "splits"),
            "frames_root": str(frames),
            "frames_layout": "{split}/{class_field}/{video_id}",
            "classes": {"test": ["pouring", "folding", None], "train": ["a", "b"]},
        },
        "features": {
            "encoder": "random:tiny",
            "resize": 40,
            "crop": 32,
            "chunk_videos": 3,
            "batch_size": 16,
            "workers": 1,
            "cache_dir": str(tmp / f"cache-{name}"),
            "sampling": {"train": "random", "test": "center"},
            "views": {"train": 2, "test": 1},
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


@pytest.mark.slow
def test_torchrun_cache_equals_single_process_and_completes_a_partial_cache(
    tmp_path: Path,
) -> None:
    from fsar_cli.features.cache import cache_features

    tiny, frames = SHARED / "fixtures" / "ssv2_tiny", tmp_path / "frames"
    (tmp_path / "splits").mkdir()
    listed: dict[str, list[str]] = {}
    for split, classes in (("test", 3), ("train", 2)):
        lines = []
        for c in range(classes):
            ids = sorted(p.name for p in (tiny / split / f"{split}{c}").iterdir())[:3]
            for v in ids:
                shutil.copytree(
                    tiny / split / f"{split}{c}" / v, frames / split / f"{split}{c}" / v
                )
            lines += [f"{split}{c}/{v}" for v in ids]
        lines.insert(3, f"{split}1/424242")  # listed, no frames: "missing"
        (tmp_path / "splits" / f"{split}_few_shot.txt").write_text("\n".join(lines) + "\n")
        listed[split] = lines
    splits = ("test", "train")
    cache_features(load_recipe(_cache_recipe(tmp_path, frames, "one")), splits)

    # a job that died after committing chunk 0 (videos 0-2) of each split: that work is kept,
    # so even without those videos' frames the rerun reproduces the single-process store
    dist = _cache_recipe(tmp_path, frames, "dist")
    partial = cache_features(load_recipe(dist), splits, shard=(0, 4))
    assert partial.splits["test"].state.startswith("waiting for other shards (1 of 4")
    for split, lines in listed.items():
        for line in lines[:3]:
            shutil.rmtree(frames / split / line)
    out = torchrun("cache", str(dist), "--split", "test", "--split", "train", "--device", "cpu")
    assert out.stdout.count("cached (2 processes)") == 2
    for split in splits:
        one, two = tmp_path / "cache-one" / split, tmp_path / "cache-dist" / split
        for name in ("features.npy", "index.csv", "text.npy"):
            assert (two / name).read_bytes() == (one / name).read_bytes(), f"{split}/{name}"
        assert not (two / ".work").exists()
