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
from fsar_cli.prediction.spotting import merge_runs, parse_span
from fsar_cli.recipe import Recipe, recipe_from_dict
from fsar_cli.threads import decode_workers

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


def test_auto_decode_workers_follow_the_encoders_device(
    tmp_path: Path,
    cached: tuple[Path, Recipe],
    encoder: Encoder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fsar_cli.prediction import predictor

    _, recipe = cached
    features = dataclasses.replace(recipe.features, workers="auto")
    auto = dataclasses.replace(recipe, features=features)
    seen: list[tuple[object, object, int]] = []

    def spy(setting: object, device: object) -> int:
        n = decode_workers(setting, device)
        seen.append((setting, device, n))
        return n

    monkeypatch.setattr(predictor, "decode_workers", spy)
    sup = tmp_path / "support"
    for c, name in enumerate(NAMES[:2]):
        shutil.copytree(TINY / "test" / f"test{c}" / _videos(c)[0], sup / name / _videos(c)[0])
    table = predict(sup, support=sup, recipe=auto, head="proto", encoder=encoder)
    assert table["status"].tolist() == ["ok", "ok"]
    # resolved on the device the encoder runs on (not the `device` argument), as fsar cache does
    assert seen == [("auto", encoder.device, 2)]


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
    no_rate = predict(src, window="1s", **kw)  # a frame folder has no frame rate: that row fails
    assert no_rate["status"].tolist() == ["failed"] and "--fps" in no_rate["reason"].iloc[0]
    in_frames = predict(src, window="4", stride="2f", **kw)  # frames need no rate
    np.testing.assert_array_equal(in_frames[cols].to_numpy(), spots[cols].to_numpy())
    runs = merge_runs(spots)
    assert runs["windows"].sum() == len(spots) and runs["start_frame"].iloc[0] == 0
    assert runs["end_frame"].iloc[-1] == 8
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
    mine = tmp_path / "mine.csv"  # a file fsar did not write is never replaced
    mine.write_text("my,notes\n")
    args = ["predict", str(query), "--support", str(_support_csv(tmp, 1)), "--recipe", str(yaml)]
    refused = CliRunner().invoke(app, [*args, "--head", "otam", "--out", str(mine)])
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert mine.read_text() == "my,notes\n"
    csv = pd.read_csv(out)
    n = len(fsar_cli.prediction.predictor.PREDICT_COLUMNS)
    assert list(csv.columns[:n]) == fsar_cli.prediction.predictor.PREDICT_COLUMNS
    assert {f"prob:{c}" for c in NAMES} <= set(csv.columns)
    assert csv[[f"prob:{c}" for c in NAMES]].sum(axis=1).round(5).eq(1).all()
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


def test_window_syntax() -> None:
    assert parse_span("2s").unit == "s" and parse_span("2s").value == 2.0
    assert parse_span("500ms").value == 0.5
    assert parse_span("16").unit == "frames" and parse_span("16f").value == 16
    assert parse_span(1.5).unit == "s"
    for bad in ("2x", "-1s", "0", "1.5f"):
        with pytest.raises(DataError):
            parse_span(bad)


def test_zero_shot_text_head_and_exit_codes(
    tmp_path: Path, cached: tuple[Path, Recipe], encoder: Encoder
) -> None:
    tmp, recipe = cached
    queries = [TINY / "test" / f"test{c}" / _videos(c)[0] for c in range(len(NAMES))]
    names_only = predict(queries, classes=NAMES, recipe=recipe, head="text", encoder=encoder)
    with_support = predict(
        queries, support=_support_csv(tmp, 2), recipe=recipe, head="text", encoder=encoder
    )
    cols = [f"logit:{n}" for n in NAMES]
    # the text head ignores supports: names alone give the same logits
    np.testing.assert_array_equal(names_only[cols].to_numpy(), with_support[cols].to_numpy())
    assert names_only.attrs["zero_shot"] and names_only.attrs["head"] == "text"
    with pytest.raises(DataError, match="only --head text"):
        predict(queries, classes=NAMES, recipe=recipe, head="otam", encoder=encoder)

    from fsar_cli.recipe import dump_recipe

    yaml = tmp_path / "tiny.yaml"
    yaml.write_text(dump_recipe(recipe))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    notes = tmp_path / "notes.md"
    notes.write_text("not a video")
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--classes",
            "alpha",
            "beta",
            "gamma",
            str(queries[0]),
            str(empty),
            str(notes),
            "--head",
            "text",
            "--recipe",
            str(yaml),
            "--out",
            str(tmp_path / "p.json"),
        ],
    )
    assert res.exit_code == 0, res.output  # some failed, not all
    assert "3 classes by name (zero-shot)" in res.output
    assert "2 failed" in res.output and "empty.mp4" in res.output and "notes.md" in res.output
    doc = json.loads((tmp_path / "p.json").read_text())
    assert set(doc["predictions"][0]["scores"]) == set(NAMES)
    assert sorted(Path(f["query"]).name for f in doc["failures"]) == ["empty.mp4", "notes.md"]
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--classes",
            "alpha",
            "beta",
            str(empty),
            "--head",
            "text",
            "--recipe",
            str(yaml),
        ],
    )
    assert res.exit_code == 1 and "empty.mp4" in res.output  # every query failed


def test_unequal_shots_and_encoder_refused_by_name(
    tmp_path: Path, cached: tuple[Path, Recipe], encoder: Encoder
) -> None:
    tmp, recipe = cached
    rows = [
        {"path": str(TINY / "test" / f"test{c}" / v), "class": NAMES[c]}
        for c in range(len(NAMES))
        for v in _videos(c)[: c + 1]  # 1, 2, 3 shots
    ]
    sup = tmp_path / "sup.csv"
    pd.DataFrame(rows).to_csv(sup, index=False)
    query = TINY / "test" / "test0" / _videos(0)[-1]
    fsarc = tmp_path / "u.fsarc"
    table = predict(
        query, support=sup, recipe=recipe, head="otam", encoder=encoder, save_classes=fsarc
    )
    assert table.attrs["shots"] == [1, 2, 3]
    from fsar_cli.recipe import dump_recipe

    yaml = tmp_path / "tiny.yaml"
    yaml.write_text(dump_recipe(recipe))
    res = CliRunner().invoke(
        app, ["predict", "--classes-file", str(fsarc), str(query), "--recipe", str(yaml)]
    )
    assert res.exit_code == 0, res.output
    assert "unequal shots (alpha 1, beta 2, gamma 3)" in res.output
    assert "head otam" in res.output  # recorded in the classes file
    other = load_encoder("random:tiny", seed=1)
    with pytest.raises(DataError, match="enrolled with encoder 'random:tiny'"):
        predict(query, classes_file=fsarc, recipe=recipe, encoder=other)
