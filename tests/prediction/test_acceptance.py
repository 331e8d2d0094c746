"""Issue 12's acceptance on fsar's synthetic data and on real files.

- the demo's trained head and encoder: ``fsar predict`` on the synthetic novel classes gives
  exactly the evaluator's logits on the same clips, and an accuracy consistent with the
  evaluator's on the same videos;
- ``fsar data import`` on a folder tree of synthetic videos gives a recipe on which extract ->
  cache -> train -> eval run by name; the split is reproducible from its seed;
- real files (../shared/fixtures/videos) as support and queries, a long video with --window, and
  a zero-byte / non-video query reported by name while the others are classified.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.data.sources import locate
from fsar_cli.data.splits import load_split
from fsar_cli.episodes import EpisodeBatch
from fsar_cli.errors import DataError
from fsar_cli.evaluation.batched import episode_logits
from fsar_cli.evaluation.heads import load_eval_head
from fsar_cli.features.store import FeatureStore
from fsar_cli.prediction.predictor import predict
from fsar_cli.recipe import load_recipe

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
VIDEOS = SHARED / "fixtures" / "videos"
runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reduced `fsar demo` (the offline encoder, clipfsar trained briefly)."""
    import torch

    from fsar_cli.demo import run_demo

    out = tmp_path_factory.mktemp("demo12") / "demo"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the cache's features and predict's must come from one thread count
    try:
        run_demo(out, videos_per_class=6, train_steps=20, episodes=200, shots=(1,))
    finally:
        torch.set_num_threads(n)
    return out


def _support_and_queries(recipe, k: int, frames: bool) -> tuple[pd.DataFrame, list[Path], list]:
    entries = load_split(recipe, "test")
    names = list(recipe.data.classes.test)
    by_class: dict[int, list[int]] = {}
    for i, e in enumerate(entries):
        by_class.setdefault(e.class_id, []).append(i)
    sup, queries, q_rows = [], [], []
    for c in sorted(by_class):
        rows = by_class[c]
        for i in rows[:k]:
            sup.append(
                {"path": str(locate(recipe, entries[i], frames=frames).path), "class": names[c]}
            )
        for i in rows[k:]:
            queries.append(locate(recipe, entries[i], frames=frames).path)
            q_rows.append(i)
    return pd.DataFrame(sup), queries, [by_class, q_rows]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # bit-exact across batch shapes at one intra-op thread
def test_demo_head_predicts_the_evaluators_logits(demo: Path, tmp_path: Path) -> None:
    run = demo / "runs" / "clipfsar"
    recipe = load_recipe(run / "resolved_recipe.yaml")
    k = 1
    sup, queries, (by_class, q_rows) = _support_and_queries(recipe, k, frames=True)
    sup.to_csv(tmp_path / "support.csv", index=False)
    table = predict(queries, support=tmp_path / "support.csv", checkpoint=run)
    assert table["status"].eq("ok").all()
    assert table.attrs["head"] == "clipfsar" and "offline-demo" in table.attrs["encoder"]
    names = list(recipe.data.classes.test)
    got = table[[f"logit:{n}" for n in sorted(names)]].to_numpy()  # classes enrolled sorted

    # the evaluator: one all-way k-shot episode on the cached features of the same clips
    store = FeatureStore.open(Path(recipe.features.cache_dir) / "test")
    W = len(names)
    Q = len(by_class[0]) - k
    order = np.argsort(names)  # enrolled class j is recipe class order[j]
    rows = np.array([by_class[int(c)] for c in order])  # [W, per class]
    batch = EpisodeBatch(
        W,
        k,
        Q,
        classes=order[None],
        support_rows=rows[:, :k].reshape(1, -1),
        query_rows=rows[:, k:].reshape(1, -1),
        support_views=np.zeros((1, W * k), np.int64),
        query_views=np.zeros((1, W * Q), np.int64),
    )
    head, _ = load_eval_head(recipe, store.dim, checkpoint=run)
    want = episode_logits(head, store.features, store.text, batch)[0]  # [W*Q, W]
    # predict's queries are class-major in recipe order; the episode's in enrolled order
    pos = {row: n for n, row in enumerate(q_rows)}
    got_in_episode = got[[pos[int(r)] for r in rows[:, k:].reshape(-1)]]
    np.testing.assert_array_equal(got_in_episode.astype(np.float32), want)

    # accuracy on the videos themselves (decoded, not the extracted JPEGs): consistent
    sup_v, queries_v, _ = _support_and_queries(recipe, k, frames=False)
    sup_v.to_csv(tmp_path / "support_videos.csv", index=False)
    res = runner.invoke(
        app,
        [
            "predict",
            "--support",
            str(tmp_path / "support_videos.csv"),
            *map(str, queries_v),
            "-c",
            str(run),
            "--out",
            str(tmp_path / "p.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    pv = pd.read_csv(tmp_path / "p.csv")
    truth = [names[entries_c] for entries_c in _classes_of(recipe, q_rows)]
    acc_videos = float((pv["label"] == truth).mean())
    acc_eval = float((want.argmax(1) == np.repeat(np.arange(W), Q)).mean())
    assert acc_videos > 2.0 / W  # far above chance
    assert abs(acc_videos - acc_eval) <= 0.15, (acc_videos, acc_eval)
    # and the evaluator's own mean over 5-way episodes (`fsar eval` in the demo) is above both
    demo_acc = pd.read_csv(demo / "demo_results.csv")
    mean5 = float(demo_acc[(demo_acc["head"] == "clipfsar")]["acc_mean"].iloc[0]) / 100
    assert mean5 + 0.15 >= acc_eval  # 5-way is easier than all-way


def _classes_of(recipe, rows: list[int]) -> list[int]:
    entries = load_split(recipe, "test")
    return [entries[i].class_id for i in rows]


@pytest.mark.slow
def test_classes_file_with_the_demo_encoder(demo: Path, tmp_path: Path) -> None:
    run = demo / "runs" / "clipfsar"
    recipe = load_recipe(run / "resolved_recipe.yaml")
    sup, queries, _ = _support_and_queries(recipe, 2, frames=True)
    sup.to_csv(tmp_path / "s.csv", index=False)
    fsarc = tmp_path / "demo.fsarc"
    first = predict(queries[:5], support=tmp_path / "s.csv", checkpoint=run, save_classes=fsarc)
    again = predict(queries[:5], classes_file=fsarc)  # head, checkpoint, encoder: from the file
    pd.testing.assert_frame_equal(first, again)
    res = runner.invoke(
        app,
        [
            "predict",
            "--classes-file",
            str(fsarc),
            str(queries[0]),
            "--encoder",
            "random:tiny",
            "--head",
            "otam",
        ],
    )
    assert res.exit_code == 1
    assert "enrolled with encoder 'offline-demo'" in res.output and "random:tiny" in res.output
    # zero-shot with the demo's encoder: class names only, no support
    names = list(recipe.data.classes.test)[:2]
    res = runner.invoke(
        app,
        [
            "predict",
            "--classes",
            *names,
            str(queries[0]),
            "--head",
            "text",
            "--encoder",
            "offline-demo",
            "--prompt",
            "{}",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "2 classes by name (zero-shot)" in res.output


def _tree(tmp: Path) -> Path:
    """A folder of class folders of synthetic video files (12 classes x 4 videos)."""
    from fsar_cli.data.synth import render_dataset

    synth = render_dataset(
        tmp / "synth",
        videos_per_class=4,
        num_frames=8,
        size=32,
        n_train_pairs=2,
        n_val_pairs=2,
        n_test_pairs=2,
    )
    src = tmp / "my_videos"
    for video in sorted((synth.root / "videos").rglob("*.avi")):
        dest = src / video.parent.name / video.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(video, dest)
    return src


TINY_SETS = [
    "features.encoder=random:tiny", "features.resize=32", "features.crop=32",
    "features.num_frames=4", "model.num_heads=2", "model.ffn_dim=32",
    "train.n_way=3", "train.n_query=2", "train.steps=2", "train.episodes_per_step=2",
    "train.val_every=1", "train.val_episodes=10", "train.checkpoint_every=1", "train.amp=false",
    "train.workers=0", "eval.n_way=3", "eval.shots=[1]", "eval.n_query=1", "eval.episodes=20",
]  # fmt: skip


def test_data_import_checks_and_reproducible_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fsar_cli.data.importer import import_dataset

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FSAR_RECIPES", raising=False)
    src = tmp_path / "src"
    for c in range(8):
        for v in range(3):
            (src / f"class_{c}").mkdir(parents=True, exist_ok=True)
            (src / f"class_{c}" / f"v{v}.mp4").write_bytes(b"")  # nothing decodes
    with pytest.raises(DataError, match="none of the 24 videos"):
        import_dataset(src, name="broken")
    src = _tree(tmp_path)
    (src / "TopLeftToTopRight" / "zero.avi").write_bytes(b"")
    a = import_dataset(src, name="a", val=3, test=3, seed=0, overrides=TINY_SETS)
    b = import_dataset(src, name="b", val=3, test=3, seed=0, overrides=TINY_SETS)
    c = import_dataset(src, name="c", val=3, test=3, seed=1, overrides=TINY_SETS)
    assert a.classes == b.classes and a.classes != c.classes
    assert (a.out / "test_few_shot.txt").read_text() == (b.out / "test_few_shot.txt").read_text()
    assert a.recipe == tmp_path / "recipes" / "a.yaml" and a.on_search_path
    assert [Path(p).name for p, _ in a.undecodable] == ["zero.avi"]
    assert "zero.avi" in (a.out / "undecodable.csv").read_text()
    splits = [set(a.classes[s]) for s in ("train", "val", "test")]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert sum(map(len, splits)) == 12
    assert json.loads((a.out / "classes.json").read_text()) == a.classes
    cfg = load_recipe("a")
    assert len(load_split(cfg, "train")) == 6 * 4
    lists = import_dataset(
        src, name="d", test_classes=["TopLeftToTopRight", "TopRightToTopLeft", "LeftToRight"],
        val_classes="RightToLeft,TopToBottom,BottomToTop".split(","), overrides=TINY_SETS,
    )  # fmt: skip
    assert lists.classes["test"] == ["LeftToRight", "TopLeftToTopRight", "TopRightToTopLeft"]
    assert len(lists.classes["train"]) == 6

    # the episode settings: numbers and the fix
    with pytest.raises(DataError, match=r"test split has 2 classes, fewer than eval.n_way=3.*"
                       r"--set eval.n_way=2"):  # fmt: skip
        import_dataset(src, name="e", val=3, test=2, overrides=TINY_SETS)
    with pytest.raises(DataError, match=r"fewer videos than train.k_shot \+ train.n_query = "
                       r"1 \+ 5 = 6.*--set train.n_query=3"):  # fmt: skip
        import_dataset(src, name="e", val=3, test=3, overrides=[*TINY_SETS, "train.n_query=5"])
    # never overwrites what it did not write; rewrites its own
    import_dataset(src, name="a", val=3, test=3, seed=0, overrides=TINY_SETS)
    (a.out / "train_few_shot.txt").write_text("mine\n")
    with pytest.raises(DataError, match="train_few_shot.txt exists and was not written"):
        import_dataset(src, name="a", val=3, test=3, seed=0, overrides=TINY_SETS)
    assert (a.out / "train_few_shot.txt").read_text() == "mine\n"
    with pytest.raises(DataError, match="a recipe named 'hmdb51' already exists"):
        import_dataset(src, name="hmdb51", overrides=TINY_SETS)


@pytest.mark.slow
def test_data_import_then_extract_cache_train_eval_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FSAR_RECIPES", raising=False)
    src = _tree(tmp_path)
    sets = [x for s in TINY_SETS for x in ("--set", s)]
    res = runner.invoke(
        app, ["data", "import", str(src), "--name", "kitchen", "--val", "0.25", "--test", "0.25",
              "--seed", "0", *sets],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "fsar extract kitchen && fsar cache kitchen && fsar train kitchen" in res.output
    for args in (["extract", "kitchen"], ["cache", "kitchen"], ["train", "kitchen"],
                 ["eval", "kitchen", "--shot", "1"]):  # fmt: skip
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.output)
    assert "runs/kitchen/best.pt" in res.output and "3-way 1-shot" in res.output
    # and predict with the trained head, on the imported benchmark's novel classes
    cfg = load_recipe("kitchen")
    test = load_split(cfg, "test")
    video = locate(cfg, test[0], frames=False).path
    res = runner.invoke(app, ["predict", "--support", str(src), str(video), "-c", "runs/kitchen"])
    assert res.exit_code == 0, res.output
    assert "12 classes, 4 shots each" in res.output or "unequal shots" in res.output


@pytest.mark.slow
def test_real_files_support_queries_window_and_failures(tmp_path: Path) -> None:
    sup = tmp_path / "support"
    for video in sorted(VIDEOS.iterdir()):
        (sup / video.stem).mkdir(parents=True)
        os.symlink(video, sup / video.stem / video.name)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.md").write_text("not a video\n")
    common = ["--encoder", "random:tiny", "--head", "otam", "--support", str(sup)]
    out = tmp_path / "p.csv"
    res = runner.invoke(
        app, ["predict", *common, str(VIDEOS), str(tmp_path / "empty.mp4"),
              str(tmp_path / "notes.md"), "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out)
    ok = table[table["status"] == "ok"]
    assert sorted(ok["key"]) == sorted(v.stem for v in VIDEOS.iterdir())
    assert (ok["label"] == ok["key"]).all()  # each video is its own class's support
    failed = table[table["status"] == "failed"]
    assert sorted(Path(q).name for q in failed["query"]) == ["empty.mp4", "notes.md"]
    assert "2 failed" in res.output and "0 bytes" in res.output
    assert "4 classes, 1 shot each" in res.output

    res = runner.invoke(
        app, ["predict", *common, str(VIDEOS / "cleaning_pool.mp4"), "--window", "2s",
              "--stride", "1s", "--out", str(tmp_path / "w.json")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "w.json").read_text())
    starts = [p["start_s"] for p in doc["predictions"]]
    assert starts == [float(s) for s in range(len(starts))] and len(starts) == 9  # 10 s video
    assert all(p["end_s"] - p["start_s"] == pytest.approx(2.0) for p in doc["predictions"])
    assert doc["runs"] and sum(r["windows"] for r in doc["runs"]) == 9
    assert "runs of the same top class" in res.output
