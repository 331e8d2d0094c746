"""`fsar synth`: seeded rendering, reference-format splits, reversed pairs, video files, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.data.frames import count_frames, decode_video
from fsar_cli.data.splits import read_split
from fsar_cli.data.synth import (
    CATALOGUE,
    SHAPES,
    ClipParams,
    SynthClass,
    _write_video,
    render_clip,
    render_dataset,
    sample_params,
    synth_classes,
)
from fsar_cli.errors import DataError

SMALL = {"videos_per_class": 2, "num_frames": 8, "size": 32}  # seconds, every code path


def _frames_of(root: Path) -> dict[str, np.ndarray]:
    return {
        str(p.relative_to(root)): np.stack(decode_video(p))
        for p in sorted((root / "videos").rglob("*.avi"))
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    return render_dataset(tmp_path_factory.mktemp("synth") / "a", seed=0, **SMALL)


# --------------------------------------------------------------------------- clips


@pytest.mark.parametrize("pair", range(len(CATALOGUE)))
def test_reversed_twin_is_the_same_frames_backwards(pair: int) -> None:
    m = CATALOGUE[pair]
    fwd = SynthClass(m.name, m.folder, pair, reverse=False)
    rev = SynthClass(m.rev_name, m.rev_folder, pair, reverse=True)
    for seed in range(3):
        params = sample_params(np.random.default_rng(seed))
        a = render_clip(fwd, params, num_frames=12, size=48)
        assert a.shape == (12, 48, 48, 3) and a.dtype == np.uint8
        assert not np.array_equal(a[0], a[-1]), "the object must move"
        np.testing.assert_array_equal(render_clip(m, params, num_frames=12, size=48), a)
        b = render_clip(rev, params, num_frames=12, size=48)
        np.testing.assert_array_equal(b, a[::-1])
        assert not np.array_equal(a, b), "a motion must differ from its reverse"


def test_nuisance_changes_the_pixels_not_the_motion() -> None:
    cls = synth_classes()["test"][0]
    p1 = sample_params(np.random.default_rng(1))
    p2 = sample_params(np.random.default_rng(2))
    assert p1 != p2
    assert not np.array_equal(render_clip(cls, p1), render_clip(cls, p2))
    np.testing.assert_array_equal(render_clip(cls, p1), render_clip(cls, p1))


def test_every_shape_renders() -> None:
    for shape in SHAPES:
        f = render_clip(CATALOGUE[0], ClipParams(shape=shape), num_frames=2, size=32)
        assert f.max() > 200  # the red object is there
    with pytest.raises(DataError, match="unknown synthetic shape"):
        render_clip(CATALOGUE[0], ClipParams(shape="star"), num_frames=2)


def test_mjpg_video_of_a_reversed_clip_decodes_to_the_reversed_frames(tmp_path: Path) -> None:
    cls_fwd, cls_rev = synth_classes()["test"][:2]
    params = sample_params(np.random.default_rng(5))
    _write_video(tmp_path / "f.avi", render_clip(cls_fwd, params), 8.0)
    _write_video(tmp_path / "r.avi", render_clip(cls_rev, params), 8.0)
    fwd = np.stack(decode_video(tmp_path / "f.avi"))
    rev = np.stack(decode_video(tmp_path / "r.avi"))
    assert fwd.shape == (16, 64, 64, 3)
    np.testing.assert_array_equal(rev, fwd[::-1])  # MJPG: every frame compressed on its own
    # lossy, but close to what was rendered (JPEG smooths part of the pixel noise)
    assert np.abs(fwd.astype(int) - render_clip(cls_fwd, params).astype(int)).mean() < 6.0


# --------------------------------------------------------------------------- dataset


def test_split_files_in_reference_format(small) -> None:
    pairs = {"train": 28, "val": 3, "test": 5}
    names = json.loads((small.root / "classes.json").read_text())
    folders = {}
    for split, n_pairs in pairs.items():
        entries = read_split(small.split_dir / f"{split}_few_shot.txt", split, fmt="reference")
        assert len(entries) == 2 * n_pairs * SMALL["videos_per_class"]
        assert sorted({e.class_id for e in entries}) == list(range(2 * n_pairs))
        assert all(e.class_field == f"{split}{e.class_id}" for e in entries)
        assert all(
            e.rel_path.startswith("videos/") and e.rel_path.endswith(".avi") for e in entries
        )
        for e in entries:
            assert (small.root / e.rel_path).is_file()
        folders[split] = {e.rel_path.split("/")[1] for e in entries}
        assert len(folders[split]) == 2 * n_pairs
        assert names[split] == small.classes[split] and len(names[split]) == 2 * n_pairs
    assert not folders["train"] & folders["val"]
    assert not folders["train"] & folders["test"]
    assert not folders["val"] & folders["test"]
    first = (small.split_dir / "test_few_shot.txt").read_text().splitlines()[0]
    assert first == "test0//videos/TopLeftToTopRight/TopLeftToTopRight_001.avi"


def test_splits_are_made_of_reversed_pairs(small) -> None:
    manifest = json.loads((small.root / "synth.json").read_text())
    for split, classes in manifest["classes"].items():
        assert len(classes) % 2 == 0
        for cid in range(0, len(classes), 2):
            (_, pair_a, rev_a), (_, pair_b, rev_b) = classes[cid], classes[cid + 1]
            assert pair_a == pair_b and rev_a is False and rev_b is True, (split, cid)
    assert small.classes["test"][:2] == [
        "a shape moving from the top left to the top right",
        "a shape moving from the top right to the top left",
    ]


def test_videos_decode_to_the_requested_frames(small) -> None:
    for path in sorted((small.root / "videos").rglob("*.avi"))[:6]:
        assert count_frames(path) == SMALL["num_frames"]
        assert decode_video(path)[0].shape == (SMALL["size"], SMALL["size"], 3)


def test_same_seed_same_dataset_other_seed_other_frames(small, tmp_path: Path) -> None:
    again = render_dataset(tmp_path / "b", seed=0, **SMALL)
    for split in ("train", "val", "test"):
        name = f"{split}_few_shot.txt"
        assert (again.split_dir / name).read_bytes() == (small.split_dir / name).read_bytes()
    assert (again.root / "classes.json").read_bytes() == (small.root / "classes.json").read_bytes()
    ref = _frames_of(small.root)
    got = _frames_of(again.root)
    assert ref.keys() == got.keys() and len(ref) == 144
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key])
    other = _frames_of(render_dataset(tmp_path / "c", seed=1, **SMALL).root)
    assert other.keys() == ref.keys()
    assert sum(not np.array_equal(other[k], ref[k]) for k in ref) == len(ref)


def test_existing_folder_is_reused_or_refused(tmp_path: Path) -> None:
    out = tmp_path / "d"
    first = render_dataset(out, **SMALL)
    assert not first.reused
    video = next((out / "videos").rglob("*.avi"))
    mtime = video.stat().st_mtime_ns
    second = render_dataset(out, **SMALL)
    assert second.reused and video.stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="--overwrite"):
        render_dataset(out, **{**SMALL, "num_frames": 6})
    assert count_frames(video) == 8, "a refused render must not touch the folder"
    third = render_dataset(out, overwrite=True, **{**SMALL, "num_frames": 6})
    assert not third.reused and count_frames(video) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        render_dataset(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_bad_sizes_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="videos_per_class"):
        render_dataset(tmp_path / "x", videos_per_class=1)
    with pytest.raises(DataError, match="motion pairs"):
        render_dataset(tmp_path / "x", n_train_pairs=29)
    with pytest.raises(DataError, match=">= 2 frames"):
        render_dataset(tmp_path / "x", num_frames=1)
    assert not (tmp_path / "x").exists()


def test_progress_reports_every_video(tmp_path: Path) -> None:
    calls = []
    render_dataset(tmp_path / "p", on_progress=lambda n=1, **kw: calls.append((n, kw)), **SMALL)
    assert calls[0] == (0, {"total": 144, "label": "rendering"})
    assert sum(n for n, _ in calls) == 144


def test_synth_recipe_matches_the_rendered_dataset(small) -> None:
    from fsar_cli.data.splits import load_split
    from fsar_cli.encoders.offline import DEFAULT_CONFIG, OFFLINE_ENCODER_NAME
    from fsar_cli.recipe import load_recipe

    recipe = load_recipe("synth")
    assert recipe.features.encoder == OFFLINE_ENCODER_NAME
    assert recipe.features.crop == DEFAULT_CONFIG.image_resolution
    assert recipe.features.resize == DEFAULT_CONFIG.image_resolution
    assert recipe.features.prompt == "{}"
    assert recipe.data.video_exts == ("avi",)
    for split in ("train", "val", "test"):
        assert list(recipe.data.classes.for_split(split)) == small.classes[split]
    over = load_recipe("synth", [f"data.split_dir={small.split_dir}", f"data.root={small.root}"])
    assert over.split_dir() == small.split_dir
    entries = load_split(over, "test")
    assert len(entries) == 10 * SMALL["videos_per_class"]
    assert (Path(over.data.root) / entries[0].rel_path).is_file()


# --------------------------------------------------------------------------- CLI


def test_cli_renders_then_reuses(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["synth", str(out), "--videos-per-class", "2", "--frames", "8", "--size", "32"]
    res = runner.invoke(app, [*args, "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "rendered" in res.output
    assert (out / "splits" / "test_few_shot.txt").is_file()
    settings = json.loads((out / "synth.json").read_text())["settings"]
    assert settings["seed"] == 3 and settings["num_frames"] == 8 and settings["size"] == 32
    res = runner.invoke(app, [*args, "--seed", "3"])
    assert res.exit_code == 0 and "reused" in res.output
    res = runner.invoke(app, [*args, "--seed", "4"])
    assert res.exit_code == 1 and "--overwrite" in res.output


def test_cli_encoder_flag_shows_zero_shot_accuracy(tmp_path: Path, monkeypatch) -> None:
    from fsar_cli.encoders import offline

    weights = tmp_path / "offline-demo-abc.pt"
    weights.write_bytes(b"")
    monkeypatch.setattr(offline, "ensure_offline_encoder", lambda on_progress=None: weights)
    scores = {"position": 0.97, "colour": 0.85, "size": 0.76, "full": 0.66, "n": 10}
    scores["chance"] = {"position": 1 / 9, "colour": 1 / 8, "size": 1 / 3, "full": 1 / 216}
    monkeypatch.setattr(offline, "evaluate_offline_encoder", lambda path: scores)
    res = CliRunner().invoke(
        app, ["synth", str(tmp_path / "e"), "--videos-per-class", "2", "--size", "16", "--encoder"]
    )
    assert res.exit_code == 0, res.output
    assert "97.0%" in res.output and "11.1%" in res.output
    assert "NOT the OpenAI" in res.output


def test_catalogue_is_every_straight_motion_between_grid_places() -> None:
    from fsar_cli.data.synth import GRID

    assert len(CATALOGUE) == 36  # 9 places, every unordered pair once
    ends = {(m.waypoints[0][:2], m.waypoints[-1][:2]) for m in CATALOGUE}
    assert len(ends) == 36
    places = {g[0] for g in GRID}
    for m in CATALOGUE:
        start, end = m.name.removeprefix("a shape moving from ").split(" to ")
        assert start in places and end in places
        assert m.rev_name == f"a shape moving from {end} to {start}"
    # the test pairs are the three rows and two columns, end to end
    assert [m.folder for m in CATALOGUE[:5]] == [
        "TopLeftToTopRight", "LeftToRight", "BottomLeftToBottomRight", "TopLeftToBottomLeft",
        "TopToBottom",
    ]  # fmt: skip


def test_occluder_hides_what_is_behind_it() -> None:
    box = ClipParams(occluder=(0.0, 0.0, 1.0, 1.0), occluder_colour=(90, 100, 110))
    frames = render_clip(CATALOGUE[0], box, num_frames=4, size=32)
    assert (frames == np.array([90, 100, 110], np.uint8)).all()  # no noise: the box only
    half = ClipParams(occluder=(0.0, 0.0, 0.5, 1.0))  # left half hidden: the object shows late
    frames = render_clip(CATALOGUE[1], half, num_frames=8, size=32)  # left -> right
    assert frames[0].max() < 200 and frames[-1].max() > 200


def test_nuisance_draws_jitter_every_video_and_occlude_a_share() -> None:
    from fsar_cli.data.synth import OCCLUDED, SHIFT

    draws = [sample_params(np.random.default_rng(i)) for i in range(2000)]
    shifts = np.array([p.shift for p in draws])
    assert np.abs(shifts).max() <= SHIFT and np.abs(shifts).mean() > SHIFT / 3
    occluded = np.mean([p.occluder is not None for p in draws])
    assert abs(occluded - OCCLUDED) < 0.04, occluded
    for p in draws:
        if p.occluder is not None:
            x0, y0, x1, y1 = p.occluder
            assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
