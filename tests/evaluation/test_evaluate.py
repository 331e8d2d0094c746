"""Evaluator: fast path == per-episode loop for every head, reproducibility, episode files,
checkpoints, missing videos, the results database and the ``fsar eval`` command."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL_MODEL, write_recipe
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.episodes import EpisodeBatch, EpisodeSampler
from fsar_cli.errors import CacheError, CheckpointError, EpisodeError, FsarError
from fsar_cli.evaluation.batched import (
    episode_accuracies,
    episode_logits,
    loop_episode_accuracies,
)
from fsar_cli.evaluation.evaluate import EvalResult, evaluate
from fsar_cli.evaluation.heads import resolve_checkpoint
from fsar_cli.features.store import FeatureStore, write_store
from fsar_cli.features.synthetic import synthetic_features, synthetic_store
from fsar_cli.models import (
    create_head,
    list_heads,
    load_reference_checkpoint,
    save_head_checkpoint,
)
from fsar_cli.recipe import ModelCfg, load_recipe
from fsar_cli.results.db import ResultsDB

DIM = 32
SMALL = ModelCfg(num_heads=4, ffn_dim=64, adapter="residual", adapter_hidden=16)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    # noisy enough that accuracies are far from 0 and 1, so a wrong path shows
    path = tmp_path_factory.mktemp("cache") / "test"
    return synthetic_store(path, n_classes=8, videos_per_class=8, dim=DIM, noise=2.0)


def _recipe_yaml(tmp_path: Path, cache_dir: Path, episodes: int = 40) -> Path:
    return write_recipe(
        tmp_path / f"tiny_{cache_dir.name}.yaml",
        dataset="Tiny",
        features={"cache_dir": str(cache_dir)},
        model=SMALL_MODEL,
        eval={"episodes": episodes, "batch_episodes": 16},
    )


def _head(name: str, merge_before: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    head = create_head(name, DIM, dataclasses.replace(SMALL, merge_before=merge_before))
    adapter = getattr(head, "adapter", None)
    if adapter is not None:  # a zero-initialised adapter is the identity: make it matter
        torch.nn.init.normal_(adapter.fc2.weight, std=0.2)
    return head


def test_ci_half_width_of_hand_made_list() -> None:
    accs = np.array([1.0, 0.0, 0.5, 0.5])
    r = EvalResult(
        *(["x"] * 4), 5, 1, 1, 4, 0, "proto", "enc", False, "s", None, "sampled", 0, "", "", "cpu",
        0.0, accs,
    )  # fmt: skip
    # mean 0.5; population std sqrt(0.125); 1.96 * std / sqrt(4)
    assert r.mean == pytest.approx(0.5)
    assert r.ci95 == pytest.approx(1.96 * np.sqrt(0.125) / 2)


@pytest.mark.parametrize("name", list_heads())
@pytest.mark.parametrize("k_shot", [1, 5])
@pytest.mark.parametrize("workers", [1, 2])
def test_fast_path_equals_per_episode_loop(
    store: FeatureStore, name: str, k_shot: int, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # merge before/after the Transformer only differs for the trained heads (and K > 1); per-video
    # heads are matched in this thread or in worker threads (fsar's default on CPU)
    import fsar_cli.evaluation.batched as batched

    monkeypatch.setattr(batched, "_match_workers", lambda device: workers)
    for merge_before in (True, False) if name.startswith("clipfsar") and k_shot > 1 else (True,):
        head = _head(name, merge_before)
        head.train()  # the evaluator must switch to eval mode itself (dropout off) and back
        batch = EpisodeSampler(store.labels, 5, k_shot, 2, seed=3).sample(30)
        fast = episode_accuracies(head, store.features, store.text, batch, chunk=7)
        assert head.training, "episode_accuracies must restore the head's mode"
        loop = loop_episode_accuracies(head, store.features, store.text, batch)
        np.testing.assert_array_equal(fast, loop)
        assert 0.0 < fast.mean() < 1.0 or name == "text"
        # chunking never changes a result
        np.testing.assert_array_equal(
            fast, episode_accuracies(head, store.features, store.text, batch, chunk=1000)
        )


def test_merge_before_supports_read_from_the_store_when_too_big_to_copy(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5-shot merge-before reads its supports from one float32 copy; a split too large for that
    # reads them per episode from the store: the same accuracies either way
    import fsar_cli.evaluation.batched as batched

    head = _head("clipfsar", True)
    batch = EpisodeSampler(store.labels, 5, 5, 2, seed=4).sample(30)
    copied = episode_accuracies(head, store.features, store.text, batch)
    monkeypatch.setattr(batched, "_SUPPORT_COPY_BYTES", 0)
    assert batched._support_features(store.features, np.arange(3), "cpu") is None
    np.testing.assert_array_equal(
        episode_accuracies(head, store.features, store.text, batch), copied
    )
    np.testing.assert_array_equal(
        copied, loop_episode_accuracies(head, store.features, store.text, batch)
    )


@pytest.mark.parametrize("name", ["otam", "clipfsar"])
@pytest.mark.parametrize("k_shot", [1, 3])
def test_sub_blocks_and_worker_threads_give_the_logits_of_one_call(
    store: FeatureStore, name: str, k_shot: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # frame-distance heads gather and multiply 16 episodes at a time and align the whole block
    # at once (40 episodes: sub-blocks of 16, 16 and 8), and match blocks in 2 or 3 worker
    # threads with one torch thread each (chunk 8: 5 blocks): bit for bit the logits of products
    # computed for the whole block in one call in the calling thread, in episode order; the
    # calling thread's torch thread count is kept
    import fsar_cli.evaluation.batched as batched

    head = _head(name, merge_before=k_shot == 1)  # 3-shot: merge-after (per-video supports)
    batch = EpisodeSampler(store.labels, 5, k_shot, 2, seed=5).sample(40)
    sub = batched._PRODUCT_BLOCK
    monkeypatch.setattr(batched, "_match_workers", lambda device: 1)
    sub_blocked = episode_logits(head, store.features, store.text, batch)
    monkeypatch.setattr(batched, "_PRODUCT_BLOCK", 1000)
    whole = episode_logits(head, store.features, store.text, batch)
    np.testing.assert_array_equal(sub_blocked, whole)
    monkeypatch.setattr(batched, "_PRODUCT_BLOCK", 3)
    np.testing.assert_array_equal(episode_logits(head, store.features, store.text, batch), whole)
    monkeypatch.setattr(batched, "_PRODUCT_BLOCK", sub)
    threads = torch.get_num_threads()
    for workers in (2, 3):
        monkeypatch.setattr(batched, "_match_workers", lambda device, w=workers: w)
        np.testing.assert_array_equal(
            episode_logits(head, store.features, store.text, batch, chunk=8), whole
        )
        assert torch.get_num_threads() == threads


def test_match_workers_follow_the_wait_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    # worker threads only where idle OpenMP threads sleep (fsar sets PASSIVE unless the user
    # chose): busy-waiting ones would spin on the workers' cores; never on a GPU
    from fsar_cli.evaluation.batched import _match_workers

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert _match_workers("cpu") == torch.get_num_threads()
    assert _match_workers("cuda:0") == 1
    for policy in ("ACTIVE", "active", ""):
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
        assert _match_workers("cpu") == 1
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert _match_workers("cpu") == 1


def test_no_worker_threads_under_autocast(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # threads do not inherit autocast (--precision bf16): the blocks stay in the calling thread
    import fsar_cli.evaluation.batched as batched
    from fsar_cli.models.precision import compute_precision

    def refuse(*args: object) -> None:
        raise AssertionError("worker threads used")

    head = _head("clipfsar")
    batch = EpisodeSampler(store.labels, 5, 1, 2, seed=6).sample(12)
    monkeypatch.setattr(batched, "_match_workers", lambda device: 2)
    monkeypatch.setattr(batched, "_threaded_blocks", refuse)
    with pytest.raises(AssertionError, match="worker threads used"):
        episode_accuracies(head, store.features, store.text, batch)
    with compute_precision("bf16", "cpu"):
        accs = episode_accuracies(head, store.features, store.text, batch)
    assert accs.shape == (12,)


def test_error_in_a_worker_thread_reaches_the_caller(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsar_cli.evaluation.batched as batched

    head = _head("otam")
    batch = EpisodeSampler(store.labels, 5, 1, 2, seed=6).sample(40)
    calls = []

    def failing(*args: object) -> torch.Tensor:
        calls.append(1)
        raise EpisodeError("block failed")

    monkeypatch.setattr(batched, "_match_workers", lambda device: 2)
    monkeypatch.setattr(head, "match_products", failing)
    threads = torch.get_num_threads()
    with pytest.raises(EpisodeError, match="block failed"):
        episode_accuracies(head, store.features, store.text, batch, chunk=4)
    assert torch.get_num_threads() == threads
    assert len(calls) <= 4  # two blocks ahead per worker, the rest cancelled


def test_fast_path_with_several_views(tmp_path: Path) -> None:
    store = synthetic_store(tmp_path / "test", n_classes=6, videos_per_class=5, dim=DIM, views=3)
    sampler = EpisodeSampler(store.labels, 5, 2, 1, seed=0, num_views=3, sample_views=True)
    batch = sampler.sample(30)
    assert len(np.unique(batch.support_views)) == 3
    head = _head("clipfsar", merge_before=False)
    np.testing.assert_array_equal(
        episode_accuracies(head, store.features, store.text, batch),
        loop_episode_accuracies(head, store.features, store.text, batch),
    )


REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"


@pytest.mark.parametrize("ep", ["a", "b", "c"])
def test_fast_path_reproduces_reference_logits(ep: str) -> None:
    """The authors' own logits (1-shot, 5-shot merge-before, 5 queries) through the fast path."""
    z = np.load(REFERENCE / "clipfsar_eval_d32.npz")
    head, _, _ = load_reference_checkpoint(REFERENCE / "clipfsar_head_d32.pyth")
    s_feats, q_feats = z[f"{ep}_support_feats"], z[f"{ep}_query_feats"]
    features = np.concatenate([s_feats, q_feats])[:, None]  # (N_s + N_q, V=1, T, D)
    # class-major slots: supports and queries sorted by episode label, stably
    s_order = np.argsort(z[f"{ep}_support_labels"], kind="stable")
    q_order = np.argsort(z[f"{ep}_query_labels"], kind="stable")
    n_s, n_q = len(s_feats), len(q_feats)
    batch = EpisodeBatch(
        5, n_s // 5, n_q // 5,
        z[f"{ep}_batch_class_list"][None].astype(np.int64),
        s_order[None].astype(np.int64),
        (n_s + q_order)[None].astype(np.int64),
        np.zeros((1, n_s), np.int64),
        np.zeros((1, n_q), np.int64),
    )  # fmt: skip
    logits = episode_logits(head, features, z["text_features_test"], batch)[0]
    np.testing.assert_allclose(logits, z[f"{ep}_logits"][q_order], rtol=0, atol=1e-5)


def test_text_head_needs_known_class_text(store: FeatureStore) -> None:
    text = store.text.copy()
    text[2] = np.nan
    batch = EpisodeSampler(store.labels, 8, 1, 1, seed=0).sample(2)  # every class
    with pytest.raises(CacheError, match=r"classes \[2\] have no text"):
        episode_accuracies(_head("text"), store.features, text, batch)
    episode_accuracies(_head("proto"), store.features, text, batch)  # no text needed


def test_same_seed_same_accuracy_saved_episodes_reproduce(tmp_path: Path) -> None:
    synthetic_store(tmp_path / "cache" / "test", dim=DIM, noise=2.0)
    recipe = load_recipe(_recipe_yaml(tmp_path, tmp_path / "cache"))
    a = evaluate(recipe, head_name="otam", seed=0, save_episodes=tmp_path / "ep.json")
    b = evaluate(recipe, head_name="otam", seed=0)
    c = evaluate(recipe, head_name="otam", seed=1)
    np.testing.assert_array_equal(a.accuracies, b.accuracies)
    assert not np.array_equal(a.accuracies, c.accuracies)
    d = evaluate(recipe, head_name="otam", episodes_file=tmp_path / "ep.json")
    np.testing.assert_array_equal(a.accuracies, d.accuracies)
    assert d.seed == 0 and d.episodes_source.startswith("file ")
    with pytest.raises(EpisodeError, match="holds 1 for shot but 5 was asked"):
        evaluate(recipe, head_name="otam", episodes_file=tmp_path / "ep.json", k_shot=5)


def test_checkpoints_run_folder_and_errors(tmp_path: Path) -> None:
    synthetic_store(tmp_path / "cache" / "test", dim=DIM, noise=2.0)
    recipe = load_recipe(_recipe_yaml(tmp_path, tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="train it first"):
        evaluate(recipe)  # clipfsar without a checkpoint
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(run)
    run.mkdir()
    with pytest.raises(CheckpointError, match="no best.pt or last.pt"):
        resolve_checkpoint(run)
    head = _head("clipfsar")
    save_head_checkpoint(run / "last.pt", head, {"step": 1})
    assert resolve_checkpoint(run) == run / "last.pt"
    save_head_checkpoint(run / "best.pt", head, {"step": 1})
    assert resolve_checkpoint(run) == run / "best.pt"
    res = evaluate(recipe, checkpoint=run)
    assert res.head == "clipfsar" and res.checkpoint == str(run / "best.pt")
    store = FeatureStore.open(tmp_path / "cache" / "test")
    batch = EpisodeSampler(store.labels, 5, 1, 1, seed=0).sample(40)
    expected = loop_episode_accuracies(head, store.features, store.text, batch)
    np.testing.assert_array_equal(res.accuracies, expected)
    with pytest.raises(CheckpointError, match="not 'otam'"):
        evaluate(recipe, checkpoint=run, head_name="otam")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="neither an fsar checkpoint"):
        evaluate(recipe, checkpoint=tmp_path / "junk.pt")


def test_missing_videos_refused_or_reported(tmp_path: Path) -> None:
    feats, labels, text = synthetic_features(dim=DIM)
    import pandas as pd

    index = pd.DataFrame(
        {
            "key": [f"v{i}" for i in range(len(labels))],
            "class_id": labels,
            "status": ["missing", "failed"] + ["ok"] * (len(labels) - 2),
        }
    )
    feats[:2] = 0
    write_store(
        tmp_path / "cache" / "test", feats, index, text, {"encoder": "x", "class_names": []}
    )
    recipe = load_recipe(_recipe_yaml(tmp_path, tmp_path / "cache"))
    with pytest.raises(EpisodeError, match="2 of 48 listed videos have no features"):
        evaluate(recipe, head_name="proto")
    res = evaluate(recipe, head_name="proto", allow_missing=True)
    assert res.n_missing == 2 and "1 missing" in res.missing and "1 failed" in res.missing


def test_results_database_round_trip_and_atomic(tmp_path: Path) -> None:
    synthetic_store(tmp_path / "cache" / "test", dim=DIM, noise=2.0)
    recipe = load_recipe(_recipe_yaml(tmp_path, tmp_path / "cache"))
    db = tmp_path / "r.sqlite"
    res = evaluate(recipe, head_name="proto", db=db, overrides=["eval.seed=0"])
    rdb = ResultsDB(db)
    frame = rdb.query()
    assert len(frame) == 1 and frame.loc[0, "eval_id"] == res.eval_id
    row = frame.iloc[0]
    assert (row["recipe"], row["head"], row["k_shot"], row["n_episodes"]) == (
        "tiny",
        "proto",
        1,
        40,
    )
    assert row["acc_mean"] == pytest.approx(res.mean) and row["encoder_random"] == 1
    np.testing.assert_array_equal(rdb.accuracies(res.eval_id), res.accuracies)
    # a failure inside the transaction leaves no half row
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON episode_accs BEGIN SELECT RAISE(ABORT, 'x'); END"
        )
    with pytest.raises(FsarError, match="refused the new row"):  # one line, not a traceback
        rdb.add(res.fields(), res.accuracies)
    assert len(rdb.query()) == 1


def test_cli_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSAR_NO_PROGRESS", "1")
    monkeypatch.setenv("COLUMNS", "200")
    synthetic_store(tmp_path / "cache" / "test", dim=DIM, noise=2.0)
    recipe = _recipe_yaml(tmp_path, tmp_path / "cache")
    db = tmp_path / "r.sqlite"
    runner = CliRunner()
    args = ["eval", str(recipe), "--head", "otam", "--shot", "2", "--db", str(db)]
    out = runner.invoke(app, [*args, "--save-episodes", str(tmp_path / "ep.json")])
    assert out.exit_code == 0, out.output
    assert "2-shot" in out.output and "RANDOM WEIGHTS" in out.output and "seed 0" in out.output
    acc = ResultsDB(db).query().loc[0, "acc_mean"]
    assert f"{100 * acc:.2f} ±" in out.output
    again = runner.invoke(app, ["eval", str(recipe), "--head", "otam", "--db", str(db),
                                "--episodes-file", str(tmp_path / "ep.json")])  # fmt: skip
    assert again.exit_code == 0, again.output
    frame = ResultsDB(db).query()
    assert frame["acc_mean"].nunique() == 1 and len(frame) == 2
    missing = runner.invoke(app, ["eval", str(_recipe_yaml(tmp_path, tmp_path / "none"))])
    assert missing.exit_code == 1
    assert "no feature cache at" in " ".join(missing.output.split())
    untrained = runner.invoke(app, ["eval", str(recipe), "--db", str(db)])
    assert untrained.exit_code == 1 and "train it first" in " ".join(untrained.output.split())
