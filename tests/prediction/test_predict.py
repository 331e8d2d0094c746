"""``fsar predict``: the evaluator's logits on the cache's features, .fsarc files, spotting, errors.

The central check: clips cached by ``fsar cache`` and scored by the fast evaluator in one episode
give exactly the logits ``predict`` reports for the same clips given as support and queries.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import fsar_cli
from fsar_cli.cli.app import app
from fsar_cli.encoders.clip import Encoder, load_encoder
from fsar_cli.episodes import EpisodeBatch
from fsar_cli.errors import DataError
from fsar_cli.evaluation.batched import episode_logits
from fsar_cli.evaluation.heads import load_eval_head
from fsar_cli.features.cache import cache_features
from fsar_cli.features.store import FeatureStore
from fsar_cli.models import create_head, save_head_checkpoint
from fsar_cli.prediction.classes_file import load_classes
from fsar_cli.prediction.predictor import predict
from fsar_cli.recipe import Recipe, recipe_from_dict

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TINY = SHARED / "fixtures" / "ssv2_tiny"
NAMES = ["alpha", "beta", "gamma"]  # sorted: enrolled class c is recipe class c
PER_CLASS = 4


def _videos(c: int) -> list[str]:
    return sorted(p.name for p in (TINY / "test" / f"test{c}").iterdir())[:PER_CLASS]


def _recipe(tmp: Path, merge_before: bool = True) -> Recipe:
    splits = tmp / "splits"
    splits.mkdir(exist_ok=True)
    lines = [f"test{c}/{v}" for c in range(len(NAMES)) for v in _videos(c)]
    (splits / "test_few_shot.txt").write_text("\n".join(lines) + "\n")
    return recipe_from_dict(
        {
            "name": "tiny",
            "data": {
                "split_dir": str(splits),
                "frames_root": str(TINY),
                "frames_layout": "{split}/{class_field}/{video_id}",
                "classes": {"test": NAMES},
            },
            "features": {
                "encoder": "random:tiny",
                "resize": 40,
                "crop": 32,
                "batch_size": 16,
                "workers": 2,
                "cache_dir": str(tmp / "cache"),
                "sampling": {"test": "center"},
                "prompt": "a video of {}",
            },
            "model": {"num_heads": 4, "ffn_dim": 64, "merge_before": merge_before},
        }
    )


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder("random:tiny")


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> tuple[Path, Recipe]:
    tmp = tmp_path_factory.mktemp("predict")
    recipe = _recipe(tmp)
    cache_features(recipe, ("test",), encoder=encoder)
    torch.manual_seed(0)
    head = create_head("clipfsar", encoder.dim, recipe.model)
    save_head_checkpoint(tmp / "clipfsar.pt", head)
    return tmp, recipe


def _support_csv(tmp: Path, k: int) -> Path:
    rows = [
        {"path": str(TINY / "test" / f"test{c}" / v), "label": NAMES[c]}
        for c in range(len(NAMES))
        for v in _videos(c)[:k]
    ]
    path = tmp / f"support{k}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "head_name,k,merge_before",
    [
        ("clipfsar", 1, True),
        ("clipfsar", 2, True),
        ("clipfsar", 2, False),
        ("otam", 2, True),
        ("proto", 1, True),
        ("text", 1, True),
    ],
)
def test_logits_are_the_evaluators_on_the_cached_clips(
    cached: tuple[Path, Recipe], encoder: Encoder, head_name: str, k: int, merge_before: bool
) -> None:
    tmp, recipe = cached
    recipe = dataclasses.replace(
        recipe, model=dataclasses.replace(recipe.model, merge_before=merge_before)
    )
    ckpt = tmp / "clipfsar.pt" if head_name == "clipfsar" else None
    q = PER_CLASS - k
    queries = [TINY / "test" / f"test{c}" / v for c in range(len(NAMES)) for v in _videos(c)[k:]]
    table = predict(
        queries,
        support=_support_csv(tmp, k),
        recipe=recipe,
        checkpoint=ckpt,
        head=head_name,
        encoder=encoder,
    )
    assert table["status"].eq("ok").all() and table.attrs["classes"] == NAMES
    got = table[[f"logit:{n}" for n in NAMES]].to_numpy()  # [W*Q, W]

    # the same clips through `fsar cache` and the fast evaluator: one W-way k-shot episode
    store = FeatureStore.open(tmp / "cache" / "test")
    rows = np.arange(len(NAMES) * PER_CLASS).reshape(len(NAMES), PER_CLASS)
    batch = EpisodeBatch(
        len(NAMES),
        k,
        q,
        classes=np.arange(len(NAMES))[None],
        support_rows=rows[:, :k].reshape(1, -1),
        query_rows=rows[:, k:].reshape(1, -1),
        support_views=np.zeros((1, len(NAMES) * k), np.int64),
        query_views=np.zeros((1, len(NAMES) * q), np.int64),
    )
    head, _ = load_eval_head(recipe, store.dim, head_name=head_name, checkpoint=ckpt)
    want = episode_logits(head, store.features, store.text, batch)[0]
    np.testing.assert_array_equal(got.astype(np.float32), want)
    assert (table["label"] == [NAMES[i] for i in want.argmax(1)]).all()


def test_classes_file_round_trip_and_identity(
    cached: tuple[Path, Recipe], encoder: Encoder
) -> None:
    tmp, recipe = cached
    query = TINY / "test" / "test0" / _videos(0)[-1]
    fsarc = tmp / "three.fsarc"
    first = predict(
        query,
        support=_support_csv(tmp, 2),
        recipe=recipe,
        head="otam",
        encoder=encoder,
        save_classes=fsarc,
    )
    enrolled = load_classes(fsarc)
    assert enrolled.classes == NAMES and enrolled.shots.tolist() == [2, 2, 2]
    assert enrolled.features.dtype == np.float16
    assert enrolled.identity["weights_sha256"] == encoder.weights_sha256
    with np.load(fsarc, allow_pickle=False) as z:  # plain numpy reads it
        assert json.loads(bytes(z["meta"]).decode())["format"] == "fsar-classes/1"
    again = predict(query, classes=fsarc, recipe=recipe, head="otam", encoder=encoder)
    pd.testing.assert_frame_equal(first, again)

    other = load_encoder("random:tiny", seed=1)  # same architecture, other weights
    with pytest.raises(DataError, match="SHA-256"):
        predict(query, classes=fsarc, recipe=recipe, head="otam", encoder=other)
    resized = dataclasses.replace(recipe, features=dataclasses.replace(recipe.features, resize=48))
    with pytest.raises(DataError, match="features.resize"):
        predict(query, classes=fsarc, recipe=resized, head="otam", encoder=encoder)


def test_support_folder_and_failed_query(
    tmp_path: Path, cached: tuple[Path, Recipe], encoder: Encoder
) -> None:
    _, recipe = cached
    sup = tmp_path / "support"
    for c, name in enumerate(NAMES[:2]):
        for v in _videos(c)[:1]:
            shutil.copytree(TINY / "test" / f"test{c}" / v, sup / name / v)
    qdir = tmp_path / "queries"
    shutil.copytree(TINY / "test" / "test2" / _videos(2)[0], qdir / "a_good")
    (qdir / "b_broken.mp4").write_bytes(b"not a video")
    table = predict(qdir, support=sup, recipe=recipe, head="proto", encoder=encoder)
    assert table["key"].tolist() == ["a_good", "b_broken"]
    assert table["status"].tolist() == ["ok", "failed"]
    assert "b_broken" in table["query"].iloc[1] and table["reason"].iloc[1]
    assert table["label"].iloc[0] in NAMES[:2] and np.isnan(table["logit"].iloc[1])

    (sup / "empty").mkdir()
    with pytest.raises(DataError, match="no videos"):
        predict(qdir, support=sup, recipe=recipe, head="proto", encoder=encoder)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx,y\n")
    with pytest.raises(DataError, match="path and class"):
        predict(qdir, support=bad, recipe=recipe, head="proto", encoder=encoder)
    with pytest.raises(DataError, match="one way"):
        predict(qdir, recipe=recipe, head="proto", encoder=encoder)


def test_spotting_window_is_the_clip_of_its_frames(
    tmp_path: Path, cached: tuple[Path, Recipe], encoder: Encoder
) -> None:
    tmp, recipe = cached
    src = TINY / "test" / "test1" / _videos(1)[0]  # 8 frames
    files = sorted(src.iterdir())
    assert len(files) == 8
    kw = {"support": _support_csv(tmp, 1), "recipe": recipe, "head": "otam", "encoder": encoder}
    spots = predict(src, window=1.0, stride=0.5, fps=4.0, **kw)  # 4 frames every 2
    assert list(zip(spots["start_frame"], spots["end_frame"], strict=True)) == [
        (0, 4),
        (2, 6),
        (4, 8),
    ]
    assert spots["start_s"].tolist() == [0.0, 0.5, 1.0]
    # window [2, 6) == a frame folder holding exactly frames 2..5, predicted whole
    part = tmp_path / "part"
    part.mkdir()
    for i, f in enumerate(files[2:6]):
        shutil.copy(f, part / f"{i + 1:08d}{f.suffix}")
    whole = predict(part, **kw)
    cols = [f"logit:{n}" for n in NAMES]
    np.testing.assert_array_equal(spots[cols].to_numpy()[1], whole[cols].to_numpy()[0])
    with pytest.raises(DataError, match="--fps"):
        predict(src, window=1.0, **kw)
    longer = predict(src, window=10.0, fps=4.0, **kw)  # shorter than a window: one window
    assert longer[["start_frame", "end_frame"]].values.tolist() == [[0, 8]]


def test_api_and_cli(tmp_path: Path, cached: tuple[Path, Recipe]) -> None:
    assert fsar_cli.predict is predict
    tmp, recipe = cached
    yaml = tmp_path / "tiny.yaml"
    from fsar_cli.recipe import dump_recipe

    yaml.write_text(dump_recipe(recipe))
    out = tmp_path / "preds.csv"
    query = TINY / "test" / "test0" / _videos(0)[-1]
    res = CliRunner().invoke(
        app,
        [
            "predict",
            str(query),
            "--support",
            str(_support_csv(tmp, 1)),
            "--recipe",
            str(yaml),
            "--head",
            "otam",
            "--out",
            str(out),
            "--save-classes",
            str(tmp_path / "c.fsarc"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "RANDOM WEIGHTS" in res.output and "otam" in res.output
    csv = pd.read_csv(out)
    assert list(csv.columns[:11]) == fsar_cli.prediction.PREDICT_COLUMNS
    assert csv["label"].iloc[0] in NAMES
    res = CliRunner().invoke(
        app,
        [
            "predict",
            str(tmp_path / "nothing"),
            "--classes",
            str(tmp_path / "c.fsarc"),
            "--recipe",
            str(yaml),
            "--head",
            "otam",
        ],
    )
    assert res.exit_code == 1 and "does not exist" in res.output


def test_data_import_writes_a_benchmark(tmp_path: Path) -> None:
    from fsar_cli.data.splits import load_split
    from fsar_cli.recipe import load_recipe

    src = tmp_path / "mine"
    for c in range(4):
        for v in _videos(c)[:2]:
            shutil.copytree(TINY / "test" / f"test{c}" / v, src / f"class_{c}" / v)
    res = CliRunner().invoke(
        app, ["data", "import", str(src), "--out", str(tmp_path / "bench"), "--test", "2"]
    )
    assert res.exit_code == 0, res.output
    recipe = load_recipe(tmp_path / "bench" / "bench.yaml")
    test = load_split(recipe, "test")
    train = load_split(recipe, "train")
    assert len(test) == 4 and len(train) == 4 and load_split(recipe, "val") == []
    names = set(recipe.data.classes.test) | set(recipe.data.classes.train)
    assert names == {f"class {c}" for c in range(4)}
    from fsar_cli.data.sources import locate

    assert all(locate(recipe, e).path is not None for e in test + train)
    res = CliRunner().invoke(
        app, ["data", "import", str(src), "--out", str(tmp_path / "x"), "--test", "4"]
    )
    assert res.exit_code == 1 and "classes" in res.output
