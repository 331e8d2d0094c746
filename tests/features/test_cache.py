"""``fsar cache``: exact features, missing/failed videos, refusal, kill-and-resume, shards, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_recipe as _recipe
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.data.frames import read_frames, sample_indices
from fsar_cli.data.preprocess import crop_offset, preprocess_frames, view_rng
from fsar_cli.encoders.clip import RANDOM_LABEL, Encoder, load_encoder
from fsar_cli.errors import CacheError
from fsar_cli.features import cache as cache_module
from fsar_cli.features.cache import CROP_MODES, cache_features, parse_shard, prefetch
from fsar_cli.features.store import FeatureStore
from fsar_cli.features.synthetic import synthetic_store
from fsar_cli.recipe import Recipe, load_recipe

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
TINY = SHARED / "fixtures" / "ssv2_tiny"


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder("random:tiny")


def _files(store: Path) -> dict[str, bytes]:
    return {n: (store / n).read_bytes() for n in ("features.npy", "index.csv")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> tuple[Path, Recipe]:
    """An uninterrupted, unsharded run: the bytes every other way of caching must reproduce."""
    tmp = tmp_path_factory.mktemp("ref")
    recipe = load_recipe(_recipe(tmp))
    result = cache_features(recipe, ("test", "train"), encoder=encoder)
    assert result.splits["test"].state == "cached"
    return tmp, recipe


def _direct(
    encoder: Encoder, source: Path, key: str, split: str, recipe: Recipe, n: int, view: int
) -> torch.Tensor:
    """The features of one view computed by hand: sample, read, preprocess, CLIP encode_image."""
    f = recipe.features
    rng = view_rng(f.seed, split, key, view)
    idx = sample_indices(n, f.num_frames, f.sampling.for_split(split), rng)
    offset = crop_offset(f.resize, f.crop, CROP_MODES[split], rng)
    x = preprocess_frames(read_frames(source, idx), f.resize, f.crop, offset)
    with torch.no_grad():
        return encoder.model.encode_image(x).half()


def test_frame_folders_equal_direct_encoding(
    reference: tuple[Path, Recipe], encoder: Encoder
) -> None:
    tmp, recipe = reference
    for split, views in (("test", 1), ("train", 2)):
        store = FeatureStore.open(tmp / "cache-tiny" / split)
        lines = (tmp / "splits" / f"{split}_few_shot.txt").read_text().split()
        keys = [line.split("/", 1)[1] for line in lines]  # reference format: the video id
        assert store.features.shape == (len(lines), views, 8, 32)
        assert store.features.dtype == np.float16 and list(store.index["key"]) == keys
        row = keys.index("424242")
        assert (
            store.index["status"][row] == "missing"
            and "no frame folder" in store.index["reason"][row]
        )
        assert not store.features[row].any() and store.usable.sum() == len(lines) - 1
        for r in np.flatnonzero(store.usable)[:4]:
            source = Path(store.index["source"][r])
            assert source == TINY / split / lines[r] and store.index["frames_available"][r] == 8
            for v in range(views):
                want = _direct(encoder, source, keys[r], split, recipe, 8, v)
                np.testing.assert_allclose(store.features[r, v], want.numpy(), rtol=2e-3, atol=2e-3)
        if views == 2:  # each view has its own temporal sample and crop
            assert not np.array_equal(store.features[0, 0], store.features[0, 1])
    meta = json.loads((tmp / "cache-tiny" / "test" / "meta.json").read_text())
    assert meta["encoder_random"] is True and RANDOM_LABEL in meta["encoder_label"]
    assert meta["weights_sha256"] == encoder.weights_sha256 and meta["crop_mode"] == "center"
    assert (meta["sampling"], meta["resize"], meta["crop"], meta["num_views"]) == (
        "center",
        40,
        32,
        1,
    )
    assert meta["counts"] == {"ok": 9, "failed": 0, "missing": 1} and meta["recipe"] == "tiny"


def test_text_features_equal_encode_text(reference: tuple[Path, Recipe], encoder: Encoder) -> None:
    tmp, _ = reference
    store = FeatureStore.open(tmp / "cache-tiny" / "test")
    assert store.class_names == ["pouring", "folding", None]
    with torch.no_grad():
        want = encoder.model.encode_text(
            clip.tokenize(["a photo of pouring", "a photo of folding"])
        )
    np.testing.assert_allclose(store.text[:2], want.numpy(), rtol=1e-5, atol=1e-5)
    assert np.isnan(store.text[2]).all()


def test_video_files_with_corrupt_and_missing(tmp_path: Path, encoder: Encoder) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("eye_makeup.avi", "arm_wrestling.mp4"):
        (videos / name).symlink_to(SHARED / "fixtures" / "videos" / name)
    (videos / "corrupt.mp4").write_bytes(os.urandom(20000))
    splits = tmp_path / "splits"
    splits.mkdir()
    keys = ["eye_makeup", "corrupt", "arm_wrestling", "absent"]
    (splits / "train_few_shot.txt").write_text(
        "train0//eye_makeup.avi\ntrain1//corrupt.mp4\ntrain1//arm_wrestling.mp4\ntrain0//absent.mp4\n"
    )
    recipe = load_recipe(
        _recipe(tmp_path, "vid"),
        [
            f"data.split_dir={splits}",
            f"data.root={videos}",
            "data.video_layout={rel_stem}.{ext}",
            "data.video_exts=[mp4, avi]",
            "features.source=videos",
            "features.chunk_videos=2",
        ],
    )
    result = cache_features(recipe, ("train",), encoder=encoder)
    s = result.splits["train"]
    assert (s.videos, s.ok, s.failed, s.missing, s.state) == (4, 2, 1, 1, "cached")
    assert s.failures[0][0] == "corrupt" and "corrupt.mp4" in s.failures[0][1]
    store = FeatureStore.open(tmp_path / "cache-vid" / "train")
    assert list(store.index["key"]) == keys
    assert list(store.index["status"]) == ["ok", "failed", "ok", "missing"]
    assert "absent.mp4" in store.index["reason"][3] and "absent.avi" in store.index["reason"][3]
    assert list(store.index["frames_available"][[0, 2]]) == [164, 280]
    assert not store.features[[1, 3]].any()
    for r, n in ((0, 164), (2, 280)):
        for v in range(2):
            want = _direct(encoder, Path(store.index["source"][r]), keys[r], "train", recipe, n, v)
            np.testing.assert_allclose(store.features[r, v], want.numpy(), rtol=2e-3, atol=2e-3)


def test_settings_mismatch_is_refused_and_names_the_setting(
    reference: tuple[Path, Recipe], encoder: Encoder, tmp_path: Path
) -> None:
    tmp, recipe = reference
    store = tmp / "cache-tiny" / "test"
    before = _files(store)
    views2 = load_recipe(_recipe(tmp), ["features.views.test=2"])
    with pytest.raises(CacheError, match=r"features\.views\.test was 1, this run has 2.*delete"):
        cache_features(views2, ("test",), encoder=encoder)
    other = load_recipe(_recipe(tmp), ["features.prompt=a video of {}"])
    with pytest.raises(CacheError, match="features.prompt"):
        cache_features(other, ("test",), encoder=encoder)
    with pytest.raises(CacheError, match="weights' SHA-256"):
        cache_features(recipe, ("test",), encoder=load_encoder("random:tiny", seed=1))
    assert _files(store) == before  # refusing never touches finished work
    # unfinished work made with other settings is refused too
    shard = load_recipe(_recipe(tmp_path, "part"))
    cache_features(shard, ("test",), encoder=encoder, shard=(0, 2))
    seeded = load_recipe(_recipe(tmp_path, "part"), ["features.seed=7"])
    with pytest.raises(
        CacheError, match=r"\.work was made with different settings: features\.seed"
    ):
        cache_features(seeded, ("test",), encoder=encoder)
    synthetic_store(tmp_path / "cache-synth" / "test")
    alien = load_recipe(_recipe(tmp_path, "synth"))
    with pytest.raises(CacheError, match="not made by `fsar cache`"):
        cache_features(alien, ("test",), encoder=encoder)
    with pytest.raises(CacheError, match="takes 32x32"):
        cache_features(
            load_recipe(_recipe(tmp_path, "big", crop=224, resize=256)), ("test",), encoder=encoder
        )


def test_shards_read_as_one_store(
    reference: tuple[Path, Recipe], encoder: Encoder, tmp_path: Path
) -> None:
    ref_dir, _ = reference
    recipe = load_recipe(_recipe(tmp_path, "sharded"))
    first = cache_features(recipe, ("test", "train"), encoder=encoder, shard=(1, 2))
    assert first.splits["test"].state.startswith("waiting for other shards (2 of 4 chunks")
    assert first.splits["test"].videos == 4  # chunks 1 and 3 of the split: rows 3-5 and 9
    with pytest.raises(CacheError, match="not finished .*2 chunk"):
        FeatureStore.open(tmp_path / "cache-sharded" / "test")
    second = cache_features(recipe, ("test", "train"), encoder=encoder, shard=(0, 2))
    assert second.splits["test"].state == "cached" and second.splits["test"].videos == 10
    for split in ("test", "train"):
        store = tmp_path / "cache-sharded" / split
        assert _files(store) == _files(ref_dir / "cache-tiny" / split)
        assert not (store / ".work").exists()
    again = cache_features(recipe, ("test",), encoder=encoder)
    assert again.splits["test"].state == "already cached" and again.splits["test"].encoded == 0
    assert parse_shard("3/4") == (3, 4)
    with pytest.raises(CacheError, match="0 <= i < n"):
        parse_shard("4/4")


@pytest.mark.slow
def test_recovers_a_crash_inside_the_final_rename(
    reference: tuple[Path, Recipe], encoder: Encoder, tmp_path: Path
) -> None:
    recipe = load_recipe(_recipe(tmp_path, "crash"))
    cache_features(recipe, ("test",), encoder=encoder, shard=(0, 2))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # write_store renamed the folder aside, then its process died
    store = tmp_path / "cache-crash" / "test"
    os.replace(store, store.parent / f".test.old-{dead.pid}")
    result = cache_features(recipe, ("test",), encoder=encoder)
    assert result.splits["test"].encoded == 4  # shard 0's 6 videos were kept
    assert _files(store) == _files(reference[0] / "cache-tiny" / "test")
    assert not list(store.parent.glob(".test.*"))


_SLOW_CLI = """
import sys, time
from fsar_cli.encoders.clip import Encoder
fast = Encoder.encode_uint8
def slow(self, frames):
    time.sleep(0.15)
    return fast(self, frames)
Encoder.encode_uint8 = slow
from fsar_cli.cli.app import app
app(sys.argv[1:], prog_name="fsar")
"""


@pytest.mark.slow
def test_kill_and_resume_is_byte_identical(reference: tuple[Path, Recipe], tmp_path: Path) -> None:
    recipe_file = _recipe(tmp_path, "killed", batch_size=8)
    args = ["cache", str(recipe_file), "--split", "test", "--device", "cpu"]
    work = tmp_path / "cache-killed" / "test" / ".work"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLI, *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(work.glob("chunk-*.npz")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the cache process ended before writing a chunk"
            time.sleep(0.01)
        time.sleep(0.05)  # into the next chunk's encoding
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = len(list(work.glob("chunk-*.npz")))
    assert 1 <= done < 4 and not (work.parent / "meta.json").exists()
    out = CliRunner().invoke(app, args)  # the rerun: only the missing chunks
    assert out.exit_code == 0, out.output
    assert "RANDOM WEIGHTS" in out.output and "cached" in out.output and "missing" in out.output
    store = tmp_path / "cache-killed" / "test"
    assert _files(store) == _files(reference[0] / "cache-tiny" / "test")
    assert (tmp_path / "cache-killed" / "resolved_recipe.yaml").is_file()
    bad = CliRunner().invoke(app, [*args, "--set", "features.num_frames=4"])
    assert bad.exit_code == 1 and "features.num_frames was 8" in bad.output


def test_workers_and_batch_size_do_not_change_results(
    reference: tuple[Path, Recipe], encoder: Encoder, tmp_path: Path
) -> None:
    recipe = load_recipe(_recipe(tmp_path, "inline", workers=0))
    cache_features(recipe, ("test",), encoder=encoder)
    ref = FeatureStore.open(reference[0] / "cache-tiny" / "test")
    assert _files(tmp_path / "cache-inline" / "test") == _files(ref.path)
    recipe = dataclasses.replace(
        recipe,
        features=dataclasses.replace(
            recipe.features, batch_size=5, cache_dir=str(tmp_path / "cache-b5")
        ),
    )
    cache_features(recipe, ("test",), encoder=encoder)
    other = FeatureStore.open(tmp_path / "cache-b5" / "test")
    np.testing.assert_allclose(other.features, ref.features, rtol=2e-3, atol=2e-3)


def test_auto_workers_resolve_for_the_device(
    reference: tuple[Path, Recipe],
    encoder: Encoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[int] = []

    def spy(fn, rows, workers, ahead):  # type: ignore[no-untyped-def]
        seen.append(workers)
        return prefetch(fn, rows, workers, ahead)

    monkeypatch.setattr(cache_module, "prefetch", spy)
    recipe = load_recipe(_recipe(tmp_path, "auto", workers="auto"))
    assert recipe.features.workers == "auto"
    cache_features(recipe, ("test",), encoder=encoder)
    assert seen == [2]  # auto on the CPU (tests/test_threads.py: on a GPU, the cores)
    assert _files(tmp_path / "cache-auto" / "test") == _files(reference[0] / "cache-tiny" / "test")
