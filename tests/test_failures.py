"""Issue 14: fsar never deletes what it did not write, refuses what it cannot vouch for, survives
full disks, locks and kills, and turns every failure into one line (README, "Failures").

Every test goes through the CLI where it can, asserting the exit code, a one-line message naming
the culprit, and that the user's files are all still there.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import SHARED, TINY, make_recipe, tiny_recipe
from helpers import one_line_error as _one_line_error
from typer.testing import CliRunner

from fsar_cli.cli.app import app

REPO = Path(__file__).resolve().parents[1]
VIDEO = SHARED / "fixtures" / "videos" / "arm_wrestling.mp4"
BENCH = SHARED / "benchmarks"
runner = CliRunner()


def _fsar(*args: object) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _user_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- 1. never delete what is not ours


def test_extract_keeps_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    shutil.copyfile(VIDEO, tmp_path / "in" / "good.mp4")
    notes = tmp_path / "out" / "good" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("notes")
    res = _fsar("extract", "--input", tmp_path / "in", "--out", tmp_path / "out", "--num-frames", 4)
    _one_line_error(res, "good", "notes.txt", "--overwrite", "--out")
    assert notes.read_text() == "notes" and sorted(os.listdir(notes.parent)) == ["notes.txt"]
    # the way out works: --overwrite replaces it with a complete extraction
    res = _fsar(
        "extract", "--input", tmp_path / "in", "--out", tmp_path / "out", "--num-frames", 4,
        "--overwrite",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(list(notes.parent.glob("*.jpg"))) == 4
    # an empty folder holds nothing to lose: it is simply used
    shutil.rmtree(notes.parent)
    notes.parent.mkdir()
    res = _fsar("extract", "--input", tmp_path / "in", "--out", tmp_path / "out", "--num-frames", 4)
    assert res.exit_code == 0, res.output


@pytest.mark.slow
def test_cache_keeps_user_files_in_a_store_folder(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    mine = tmp_path / "cache-tiny" / "test" / "my_notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    res = _fsar("cache", recipe, "--split", "test", "--device", "cpu")
    _one_line_error(res, str(mine.parent), "my_notes.txt", "features.cache_dir")
    assert mine.read_text() == "keep me"
    assert sorted(os.listdir(mine.parent)) == ["my_notes.txt"]  # not even a .work folder


def test_train_run_folder_with_user_files_is_refused(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "thesis.tex").write_text("draft")
    res = _fsar("train", recipe, "--out", run, "--steps", 1)
    _one_line_error(res, str(run), "--out")
    assert _user_files(run) == {"thesis.tex": b"draft"}
    res = _fsar("train", recipe, "--out", run, "--resume")
    _one_line_error(res, "resolved_recipe.yaml")
    assert _user_files(run) == {"thesis.tex": b"draft"}


def test_report_and_import_refuse_files_they_did_not_write(tmp_path: Path) -> None:
    mine = tmp_path / "results.csv"
    mine.write_text("my,own,table\n1,2,3\n")
    res = _fsar("report", "--db", tmp_path / "r.sqlite", "--out", mine)
    _one_line_error(res, str(mine), "--overwrite")
    assert mine.read_text() == "my,own,table\n1,2,3\n"
    res = _fsar("report", "--db", tmp_path / "r.sqlite", "--out", tmp_path)  # a folder
    _one_line_error(res, str(tmp_path), "folder")
    # import-checkpoint: an existing file that is not an fsar checkpoint is never replaced
    ckpt = tmp_path / "head.pt"
    ckpt.write_bytes(b"my weights")
    res = _fsar("import-checkpoint", tmp_path / "missing.pyth", ckpt)
    _one_line_error(res, str(ckpt), "--overwrite")
    assert ckpt.read_bytes() == b"my weights"
    res = _fsar("import-checkpoint", tmp_path / "missing.pyth", tmp_path)
    _one_line_error(res, "folder")


def test_synth_demo_and_splits_download_keep_user_files(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("notes")
    res = _fsar("synth", folder, "--videos-per-class", 2, "--frames", 2, "--size", 8)
    _one_line_error(res, str(folder), "--overwrite")
    res = _fsar("demo", "--out", folder)
    _one_line_error(res, str(folder), "notes.txt")
    assert _user_files(folder) == {"notes.txt": b"notes"}
    # splits download: a file that is not the verified split file is not replaced without --force
    dest = tmp_path / "splits"
    (dest / "ucf101").mkdir(parents=True)
    mine = dest / "ucf101" / "train_few_shot.txt"
    mine.write_text("my own split\n")
    res = _fsar("splits", "download", "ucf101", "--dest", dest, "--base-url", BENCH.as_uri())
    _one_line_error(res, str(mine), "--force")
    assert mine.read_text() == "my own split\n"
    assert sorted(os.listdir(dest / "ucf101")) == ["train_few_shot.txt"]
    res = _fsar(
        "splits", "download", "ucf101", "--dest", dest, "--base-url", BENCH.as_uri(), "--force"
    )
    assert res.exit_code == 0, res.output
    assert mine.read_bytes() == (BENCH / "ucf101" / "train_few_shot.txt").read_bytes()


# ---------------------------------------------------------------- 2. locks: one writer per folder

_HOLD = """
import sys, time
from fsar_cli import locks
shared = sys.argv[3] == "shared"
with locks.hold(sys.argv[1], what="x", way_out="y", tag=sys.argv[2], shared=shared):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(path: Path, tag: str = "", shared: bool = False) -> subprocess.Popen[str]:
    """Another process holding the lock of ``path`` (shared: as a cache shard holds its store's);
    returns once it holds it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    mode = "shared" if shared else "exclusive"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path), tag, mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_lock_names_the_holder_and_survives_kill_9(tmp_path: Path) -> None:
    from fsar_cli import locks
    from fsar_cli.errors import OutputError

    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(OutputError, match=f"in use by pid {proc.pid}"):
            with locks.hold(tmp_path / "run", what="run folder", way_out="use another --out"):
                pass
    finally:
        proc.kill()  # SIGKILL: no clean release
        proc.wait()
    with locks.hold(tmp_path / "run", what="run folder", way_out="-") as lock:  # not stale
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not lock.exists()  # a clean release leaves no file behind


_HOLD_AND_FORK = """
import os, sys, time
from fsar_cli import locks
with locks.hold(sys.argv[1], what="x", way_out="y"):
    child = os.fork()  # as DataLoader forks decode workers while the lock is held
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(60)
"""


def test_a_forked_worker_does_not_keep_a_killed_holders_lock(tmp_path: Path) -> None:
    """The lock goes with its holder's death even while a worker it forked lives on."""
    from fsar_cli import locks

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_FORK, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    try:
        proc.kill()
        proc.wait()
        os.kill(child, 0)  # the worker is still alive
        with locks.hold(run, what="run folder", way_out="-") as lock:
            assert lock.read_text().split()[0] == str(os.getpid())
    finally:
        os.kill(child, signal.SIGKILL)


def test_second_train_on_one_run_folder_is_refused(tmp_path: Path) -> None:
    from fsar_cli.train.runs import MetricsLog

    recipe = make_recipe(tmp_path)
    run = tmp_path / "run"
    assert _fsar("train", recipe, "--out", run, "--steps", 2).exit_code == 0
    before = _user_files(run)
    proc = _holder(run)  # stands in for a first `fsar train --resume` still at work
    try:
        res = _fsar("train", recipe, "--out", run, "--resume")
        _one_line_error(res, f"in use by pid {proc.pid}", str(run))
    finally:
        proc.kill()
        proc.wait()
    assert _user_files(run) == before  # the refused run wrote nothing, no duplicate metrics
    res = _fsar("train", recipe, "--out", run, "--resume")
    assert res.exit_code == 0, res.output
    steps = [int(r["step"]) for r in MetricsLog.read(run / "metrics.csv")]
    assert steps == sorted(set(steps))


def test_second_unsharded_cache_into_one_folder_is_refused(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    store = tmp_path / "cache-tiny" / "test"
    proc = _holder(store)
    try:
        res = _fsar("cache", recipe, "--split", "test", "--device", "cpu")
        _one_line_error(res, f"in use by pid {proc.pid}", str(store))
    finally:
        proc.kill()
        proc.wait()
    assert not store.exists()


def test_sharded_and_unsharded_cache_into_one_folder_exclude_each_other(tmp_path: Path) -> None:
    from fsar_cli import locks
    from fsar_cli.errors import OutputError

    recipe = tiny_recipe(tmp_path)
    store = tmp_path / "cache-tiny" / "test"
    args = ["cache", recipe, "--split", "test", "--device", "cpu"]
    proc = _holder(store)  # stands in for an unsharded `fsar cache` at work
    try:
        for shard in ("0/2", "1/2"):
            res = _fsar(*args, "--shard", shard)
            _one_line_error(res, f"in use by pid {proc.pid}", str(store), "--shard")
    finally:
        proc.kill()
        proc.wait()
    assert not store.exists()
    proc = _holder(store, shared=True)  # stands in for `fsar cache --shard 0/2` at work
    try:
        res = _fsar(*args)
        _one_line_error(res, f"in use by pid {proc.pid}", str(store), "--shard")
        # another shard runs beside it; the same shard twice does not
        with locks.hold(store, what="feature store", way_out="-", shared=True):
            with locks.hold(store, what="feature store", way_out="-", tag="shard-1-of-2"):
                with pytest.raises(OutputError, match="in use by pid"):
                    with locks.hold(store, what="feature store", way_out="-", tag="shard-1-of-2"):
                        pass
    finally:
        proc.kill()
        proc.wait()
    assert not store.exists()
    # both shards released: the last one out removes the lock, and an unsharded run goes ahead
    with locks.hold(store, what="feature store", way_out="-", shared=True) as lock:
        pass
    assert not lock.exists()
    with locks.hold(store, what="feature store", way_out="-"):
        pass


# ---------------------------------------------------------------- 2. never lose a computed number


def _eval_recipe(tmp_path: Path) -> Path:
    from fsar_cli.features.synthetic import synthetic_store

    synthetic_store(tmp_path / "cache" / "test", dim=32, noise=2.0)
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"name: tiny\nfeatures:\n  cache_dir: {tmp_path / 'cache'}\n"
        "eval:\n  episodes: 20\n  batch_episodes: 16\n"
    )
    return path


def _accuracy_then_error(res: object, *names: str) -> None:
    """The accuracy table came first; then one error line naming the culprit; exit code 1."""
    out = res.output  # type: ignore[attr-defined]
    _one_line_error(res, *names)
    assert "accuracy" in out and " ± " in out
    assert out.index("accuracy") < out.index("error:")


def test_locked_database_waits_says_so_and_keeps_the_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from fsar_cli.results import db as db_mod

    monkeypatch.setattr(db_mod, "LOCK_WAIT_S", 0.2)  # the polite wait, shortened for the test
    monkeypatch.setattr(db_mod, "_POLITE_WAIT_S", 0.1)
    recipe, db = _eval_recipe(tmp_path), tmp_path / "r.sqlite"
    args = ["eval", recipe, "--head", "proto", "--db", db]
    assert _fsar(*args).exit_code == 0  # creates the database
    other = sqlite3.connect(db)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds it
    try:
        res = _fsar(*args)
    finally:
        other.rollback()
        other.close()
    _accuracy_then_error(res, str(db), "locked by another writer", "--db")
    assert "waiting up to" in res.output
    assert len(db_mod.ResultsDB(db).query()) == 1
    assert _fsar(*args).exit_code == 0  # free again: recorded
    assert len(db_mod.ResultsDB(db).query()) == 2


def test_corrupt_database_and_bad_episode_path_keep_the_accuracy(tmp_path: Path) -> None:
    recipe = _eval_recipe(tmp_path)
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database at all" * 100)
    res = _fsar("eval", recipe, "--head", "proto", "--db", corrupt)
    _accuracy_then_error(res, str(corrupt), "not a usable results database", "another --db")
    assert corrupt.read_bytes() == b"not a database at all" * 100
    folder = tmp_path / "episodes"
    folder.mkdir()
    res = _fsar("eval", recipe, "--head", "proto", "--no-record", "--save-episodes", folder)
    _accuracy_then_error(res, str(folder), "folder")
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": 1}')
    res = _fsar("eval", recipe, "--head", "proto", "--no-record", "--save-episodes", mine)
    _accuracy_then_error(res, str(mine), "not written by fsar")
    assert mine.read_text() == '{"mine": 1}'


# ---------------------------------------------------------------- 2. a full disk


def _store_bytes(store: Path) -> dict[str, bytes]:
    return {n: (store / n).read_bytes() for n in ("features.npy", "index.csv", "text.npy")}


def test_cache_on_a_full_disk_keeps_its_chunks_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC injected where the store is written, then too little space for the assembly."""
    from fsar_cli.features import cache as cache_mod
    from fsar_cli.features import store as store_mod

    recipe = tiny_recipe(tmp_path)
    store = tmp_path / "cache-tiny" / "test"
    real_save = np.save

    def full_disk(file: object, *a: object, **k: object) -> None:
        if str(file).endswith("features.npy"):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        real_save(file, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(store_mod.np, "save", full_disk)
    res = _fsar("cache", recipe, "--split", "test", "--device", "cpu")
    _one_line_error(res, "no space left", "rerun `fsar cache`")
    chunks = sorted(p.name for p in (store / ".work").glob("chunk-*.npz"))
    assert chunks and not list(store.parent.glob(".test.tmp-*"))  # half a copy is removed
    assert not (store / ".work" / "assembled.npy").exists()
    monkeypatch.setattr(store_mod.np, "save", real_save)

    Usage = type(shutil.disk_usage(tmp_path))
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 1000))
    res = _fsar("cache", recipe, "--split", "test", "--device", "cpu")
    _one_line_error(res, "bytes free", "1,000", "chunks")
    assert sorted(p.name for p in (store / ".work").glob("chunk-*.npz")) == chunks
    monkeypatch.undo()

    encoded: list[int] = []
    real_encode = cache_mod._encode_chunks
    monkeypatch.setattr(
        cache_mod, "_encode_chunks", lambda *a: encoded.append(len(a[1].todo)) or real_encode(*a)
    )
    res = _fsar("cache", recipe, "--split", "test", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert encoded == [0]  # every committed chunk was reused
    clean = tmp_path / "clean"
    clean.mkdir()
    assert _fsar("cache", tiny_recipe(clean), "--split", "test", "--device", "cpu").exit_code == 0
    assert _store_bytes(store) == _store_bytes(clean / "cache-tiny" / "test")


@pytest.fixture
def tiny_fs(tmp_path: Path) -> object:
    """A 4 MiB tmpfs (needs mount rights; skipped where they are missing)."""
    mnt = tmp_path / "tiny_fs"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_cache_on_a_really_full_filesystem(tmp_path: Path, tiny_fs: Path) -> None:
    """A real full file system: no SIGBUS, one line, and the chunks finish the store later."""
    ref = tmp_path / "ref"
    ref.mkdir()
    assert _fsar("cache", tiny_recipe(ref), "--split", "test", "--device", "cpu").exit_code == 0
    chunk_bytes = sum(p.stat().st_size for p in (ref / "cache-tiny" / "test").rglob("*.npy"))
    recipe = tiny_recipe(tmp_path, **{"cache_dir": str(tiny_fs / "cache")})
    filler = tiny_fs / "filler"
    free = shutil.disk_usage(tiny_fs).free
    with open(filler, "wb") as fh:  # leave room for the chunks, not for assembling the store
        fh.write(b"\0" * (free - 2 * chunk_bytes - 64 * 1024))
    res = _fsar("cache", recipe, "--split", "test", "--device", "cpu")
    _one_line_error(res, "bytes free")
    assert list((tiny_fs / "cache" / "test" / ".work").glob("chunk-*.npz"))
    filler.unlink()
    res = _fsar("cache", recipe, "--split", "test", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert _store_bytes(tiny_fs / "cache" / "test") == _store_bytes(ref / "cache-tiny" / "test")


# ---------------------------------------------------------------- 3. never score unvouched features


def _set_meta(store: Path, **changes: object) -> None:
    meta = json.loads((store / "meta.json").read_text())
    meta.update(changes)
    (store / "meta.json").write_text(json.dumps(meta))


@pytest.mark.slow
def test_features_of_other_weights_are_refused_in_eval_and_resume(tmp_path: Path) -> None:
    from fsar_cli.models import load_head_checkpoint

    recipe = make_recipe(tmp_path, test=True)
    run = tmp_path / "run"
    assert _fsar("train", recipe, "--out", run, "--steps", 6).exit_code == 0
    recorded = load_head_checkpoint(run / "best.pt")[1]["features"]
    assert recorded["encoder"] == "synthetic" and "weights_sha256" in recorded
    assert json.loads((run / "summary.json").read_text())["features"] == recorded
    assert torch.load(run / "last.pt", weights_only=True)["features"] == recorded
    cache = tmp_path / "cache"
    args = ["eval", recipe, "--checkpoint", run, "--no-record"]
    assert _fsar(*args).exit_code == 0
    # the cache rebuilt with other weights of the same width: refused by name, both values shown
    _set_meta(cache / "test", weights_sha256="b" * 64)
    res = _fsar(*args)
    _one_line_error(res, "weights_sha256", "'" + "b" * 64 + "'", "--allow-other-features")
    assert _fsar(*args, "--allow-other-features").exit_code == 0
    for split in ("train", "val"):  # the whole cache rebuilt with other weights
        _set_meta(cache / split, weights_sha256="c" * 64)
    res = _fsar("train", recipe, "--out", run, "--resume")
    _one_line_error(res, "weights_sha256", "'" + "c" * 64 + "'", "--allow-other-features")
    assert int(torch.load(run / "last.pt", weights_only=True)["step"]) == 6  # nothing trained
    res = _fsar("train", recipe, "--out", run, "--resume", "--allow-other-features")
    assert res.exit_code == 0, res.output


def test_seeds_pass_allow_other_features_to_every_seed(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, train=TRAIN_SHORT)
    run = tmp_path / "run"
    args = ["train", recipe, "--out", run, "--seeds", 0, 1, "--steps", 2]
    assert _fsar(*args).exit_code == 0
    steps = {s: int(torch.load(run / s / "last.pt", weights_only=True)["step"]) for s in SEEDS}
    assert steps == {"seed-0": 2, "seed-1": 2}
    for split in ("train", "val"):  # the whole cache rebuilt with other weights of the same width
        _set_meta(tmp_path / "cache" / split, weights_sha256="c" * 64)
    res = _fsar(*args[:-2], "--resume")
    _one_line_error(res, "seed-0", "weights_sha256", "'" + "c" * 64 + "'", "--allow-other-features")
    for s in SEEDS:  # nothing trained on the other features
        assert int(torch.load(run / s / "last.pt", weights_only=True)["step"]) == 2
    res = _fsar(*args[:-2], "--resume", "--allow-other-features")
    assert res.exit_code == 0, res.output
    for s in SEEDS:  # every seed resumed and finished, not only the first
        assert int(torch.load(run / s / "last.pt", weights_only=True)["step"]) == 4


SEEDS = ("seed-0", "seed-1")
TRAIN_SHORT = (
    "steps: 4, episodes_per_step: 2, lr: 1.0e-3, warmup_lr: 1.0e-4, lr_step: 2, val_every: 2, "
    "val_episodes: 10, checkpoint_every: 2, lambda_vt: 1.0"
)


@pytest.mark.slow
def test_old_checkpoint_without_provenance_is_accepted_with_a_warning(tmp_path: Path) -> None:
    from fsar_cli.models import create_head, save_head_checkpoint
    from fsar_cli.recipe import load_recipe

    path = make_recipe(tmp_path, test=True)
    head = create_head("clipfsar", 32, load_recipe(path).model)
    save_head_checkpoint(tmp_path / "old.pt", head, {"step": 1})  # no "features": older fsar
    res = _fsar("eval", path, "--checkpoint", tmp_path / "old.pt", "--no-record")
    assert res.exit_code == 0, res.output
    assert "no feature provenance" in " ".join(res.output.split())


def test_split_files_duplicates_encodings_and_empty(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    split = tmp_path / "splits" / "test_few_shot.txt"
    lines = split.read_text().splitlines()
    split.write_text("\n".join([*lines, lines[0]]) + "\n")  # a duplicate line
    for args in (
        ("data", "check", recipe, "--split", "test"),
        ("cache", recipe, "--split", "test"),
    ):
        res = _fsar(*args)
        _one_line_error(res, f"{split}:{len(lines) + 1}", repr(lines[0].split("/", 1)[1]), "line 1")
    assert not (tmp_path / "cache-tiny" / "test").exists()
    split.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())  # a UTF-8 BOM: accepted
    from fsar_cli.data.splits import read_split

    assert len(read_split(split, "test")) == len(lines)
    split.write_bytes("\n".join(lines).encode() + b"\ntest0/caf\xe9\n")  # latin-1
    res = _fsar("data", "check", recipe, "--split", "test")
    _one_line_error(res, f"{split}:{len(lines) + 1}", "UTF-8")
    split.write_text("\n\n")  # an empty split is not "complete"
    res = _fsar("data", "check", recipe, "--split", "test", "--frames")
    assert res.exit_code == 1 and "test split file lists no videos" in res.output, res.output
    assert "incomplete" in res.output


def _saved_episodes(tmp_path: Path) -> tuple[Path, Path, dict[str, object]]:
    recipe = _eval_recipe(tmp_path)
    saved = tmp_path / "ep.json"
    res = _fsar("eval", recipe, "--head", "proto", "--no-record", "--save-episodes", saved)
    assert res.exit_code == 0, res.output
    return recipe, saved, json.loads(saved.read_text())


def test_episode_files_are_checked_slot_by_slot(tmp_path: Path) -> None:
    recipe, saved, doc = _saved_episodes(tmp_path)
    eps = doc["episodes"]  # type: ignore[index]
    bad = tmp_path / "bad.json"

    def refused(change: object, *names: str) -> None:
        d = json.loads(json.dumps(doc))
        change(d)  # type: ignore[operator]
        bad.write_text(json.dumps(d))
        res = _fsar("eval", recipe, "--head", "proto", "--no-record", "--episodes-file", bad)
        _one_line_error(res, str(bad), *names)

    def same_video(d: dict) -> None:  # every query equal to its support: "100%"
        for ep in d["episodes"]:
            ep["query"] = [[s[0]] * len(q) for s, q in zip(ep["support"], ep["query"], strict=True)]

    def other_class(d: dict) -> None:  # a query of another class's video
        ep = d["episodes"][0]
        ep["query"][0][0] = ep["query"][1][0]
        ep["query"][1][0] = eps[0]["query"][0][0]

    refused(same_video, "twice", "overlap")
    refused(other_class, "episode 0", "slot of class")
    refused(lambda d: d["episodes"][0].pop("query"), "malformed", "query")
    refused(lambda d: d["episodes"][0]["support"].pop(), "episode 0", "support slots")
    refused(lambda d: d.update(n_way="five"), "malformed")
    refused(lambda d: d.update(episodes=[]), "no episodes")
    bad.write_text("[1, 2")
    res = _fsar("eval", recipe, "--head", "proto", "--no-record", "--episodes-file", bad)
    _one_line_error(res, str(bad), "cannot read")


def test_zero_and_one_are_refused_not_defaulted(tmp_path: Path) -> None:
    recipe = _eval_recipe(tmp_path)
    for flag, value in (
        ("--way", 0),
        ("--way", 1),
        ("--shot", 0),
        ("--query", 0),
        ("--episodes", 0),
    ):
        res = _fsar("eval", recipe, "--head", "proto", "--no-record", flag, value)
        _one_line_error(res, f"{flag} {value}")
        if flag != "--shot":  # bench: the same values
            res = _fsar("bench", recipe, "--head", "proto", "--no-record", flag, value)
            _one_line_error(res, f"{flag} {value}")


# ---------------------------------------------------------------- 2. kill -9 at random points


def _cli(*args: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "FSAR_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "fsar_cli", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_cache_and_train_survive_kill_9_at_random_points(tmp_path: Path) -> None:
    """Seeded random SIGKILLs during `fsar cache` and `fsar train`; reruns give the same bytes."""
    import random
    import time

    rng = random.Random(14)

    def killed_then_finished(args: tuple[object, ...], seconds: float, kills: int = 3) -> int:
        killed = 0
        for _ in range(kills):
            proc = _cli(*args)
            time.sleep(rng.uniform(0.2, seconds))
            if proc.poll() is None:
                proc.kill()
                killed += 1
            proc.wait()
        proc = _cli(*args)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()  # type: ignore[union-attr]
        return killed

    # cache: an uninterrupted reference, then the same into another folder, killed and rerun
    ref = tmp_path / "ref"
    ref.mkdir()
    t0 = time.monotonic()
    proc = _cli("cache", tiny_recipe(ref), "--split", "test", "--device", "cpu")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()  # type: ignore[union-attr]
    seconds = time.monotonic() - t0
    run = tmp_path / "killed"
    run.mkdir()
    killed = killed_then_finished(
        ("cache", tiny_recipe(run), "--split", "test", "--device", "cpu"), seconds
    )
    assert killed >= 1, "no kill landed inside a run"
    assert _store_bytes(run / "cache-tiny" / "test") == _store_bytes(ref / "cache-tiny" / "test")
    # train: killed at random steps, resumed with --resume, ends with the uninterrupted weights
    recipe = make_recipe(tmp_path / "train")
    t0 = time.monotonic()
    proc = _cli("train", recipe, "--out", tmp_path / "clean-run")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()  # type: ignore[union-attr]
    seconds = time.monotonic() - t0
    out = tmp_path / "killed-run"
    proc = _cli("train", recipe, "--out", out, "--steps", 1)
    assert proc.wait(timeout=300) == 0
    killed_then_finished(("train", recipe, "--out", out, "--resume"), seconds, kills=2)
    a = torch.load(out / "last.pt", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "clean-run" / "last.pt", weights_only=True)["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from fsar_cli.train.runs import MetricsLog

    steps = [int(r["step"]) for r in MetricsLog.read(out / "metrics.csv")]
    assert steps == list(range(1, steps[-1] + 1))  # no duplicate or missing rows


def test_nan_features_and_nan_weights_are_named(tmp_path: Path) -> None:
    from fsar_cli.models import create_head, save_head_checkpoint
    from fsar_cli.recipe import load_recipe

    path = make_recipe(tmp_path, test=True)
    head = create_head("clipfsar", 32, load_recipe(path).model)
    with torch.no_grad():
        next(iter(head.parameters())).fill_(float("nan"))
    save_head_checkpoint(tmp_path / "nan.pt", head, {})
    res = _fsar("eval", path, "--checkpoint", tmp_path / "nan.pt", "--no-record")
    _one_line_error(res, str(tmp_path / "nan.pt"), "NaN")
    store = tmp_path / "cache" / "test"
    feats = np.load(store / "features.npy")
    feats[3] = np.nan
    np.save(store / "features.npy", feats)
    res = _fsar("eval", path, "--head", "proto", "--no-record")
    _one_line_error(res, "features.npy", "row 3", "NaN")


def test_damaged_store_files_are_one_line(tmp_path: Path) -> None:
    recipe = _eval_recipe(tmp_path)
    store = tmp_path / "cache" / "test"
    args = ("eval", recipe, "--head", "proto", "--no-record")
    feats = (store / "features.npy").read_bytes()
    (store / "features.npy").write_bytes(feats[: len(feats) // 2])  # truncated
    _one_line_error(_fsar(*args), "features.npy", "unreadable")
    (store / "features.npy").write_bytes(feats)
    (store / "text.npy").rename(store / "text.moved")
    _one_line_error(_fsar(*args), "text.npy", "missing")
    (store / "text.moved").rename(store / "text.npy")
    meta = (store / "meta.json").read_text()
    (store / "meta.json").write_text(meta[:20])
    _one_line_error(_fsar(*args), "meta.json", "unreadable")
    (store / "meta.json").write_text(meta)
    if os.geteuid() != 0:  # root reads anything (the injected case: test_permission_error_...)
        (store / "index.csv").chmod(0)
        _one_line_error(_fsar(*args), "index.csv", "permission denied")
        (store / "index.csv").chmod(0o644)
    assert _fsar(*args).exit_code == 0


def test_recipe_values_and_devices_are_one_line(tmp_path: Path) -> None:
    recipe = _eval_recipe(tmp_path)
    args = ("eval", recipe, "--head", "proto", "--no-record")
    for key, value in (
        ("train.lr", "-1"),
        ("train.lambda_vt", "-0.5"),
        ("model.dropout", "1.5"),
        ("features.prompt", "no-braces"),
        ("eval.shots", "[]"),
        ("features.views.test", "0"),
    ):
        _one_line_error(_fsar(*args, "--set", f"{key}={value}"), key)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    _one_line_error(_fsar("eval", empty, "--head", "proto"), str(empty))
    _one_line_error(_fsar(*args, "--device", "tpu"), "tpu")
    if not torch.cuda.is_available():
        _one_line_error(_fsar(*args, "--device", "cuda"), "cuda")
    _one_line_error(_fsar(*args, "--seed", "-1"), "-1")
    d = tmp_path / "videos"
    d.mkdir()
    _one_line_error(_fsar("extract", d, "--out", tmp_path / "f"), str(d), "--input")


def test_brackets_in_names_are_shown_not_eaten(tmp_path: Path) -> None:
    name = tmp_path / "[weird] name.yaml"
    res = _fsar("eval", name)
    _one_line_error(res, "[weird] name.yaml")


def test_brackets_in_class_names_survive_tables(tmp_path: Path) -> None:
    path = tiny_recipe(tmp_path)
    doc = json.loads(path.read_text())
    doc["data"]["classes"]["test"] = ["[pushing] something", "folding", None]
    path.write_text(json.dumps(doc))
    res = _fsar("data", "check", path, "--split", "test")
    assert "[pushing] something" in res.output, res.output


SSV2_NAMES = ["Putting [something] into [something]", "Pushing [something] from left to right"]


def test_brackets_in_predicted_class_names_and_paths_are_printed(tmp_path: Path) -> None:
    """SSv2 class names hold [something]: predict's table and messages show them literally."""
    support = tmp_path / "support"
    for c, name in enumerate(SSV2_NAMES):
        video = sorted((TINY / "test" / f"test{c}").iterdir())[0]
        shutil.copytree(video, support / name / video.name)
    queries = tmp_path / "[my] clips"
    shutil.copytree(sorted((TINY / "test" / "test1").iterdir())[1], queries / "[take 2] pushing")
    (queries / "[bad] clip.mp4").write_bytes(b"not a video")
    out = tmp_path / "[out] preds.csv"
    args = ["predict", queries, "--support", support, "--recipe", tiny_recipe(tmp_path)]
    res = _fsar(*args, "--head", "otam", "--top-k", 2, "--out", out)
    assert res.exit_code == 0, res.output  # one query failed, not all
    text = " ".join(res.output.split())
    for name in (*SSV2_NAMES, "[take 2] pushing", "[bad] clip.mp4", str(out)):
        assert " ".join(name.split()) in text, (name, res.output)
    csv = pd.read_csv(out)
    assert {f"prob:{n}" for n in SSV2_NAMES} <= set(csv.columns)
    assert csv["label"].dropna().isin(SSV2_NAMES).all() and csv["label"].notna().sum() == 1


def test_brackets_in_recipe_names_and_run_folders_are_printed(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, train=TRAIN_SHORT)
    recipe.write_text(recipe.read_text().replace("name: tiny", "name: tiny [v2]"))
    run = tmp_path / "[lab] run"
    res = _fsar("train", recipe, "--out", run, "--steps", 1)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "fsar train: tiny [v2] (frozen clipfsar)" in text and str(run) in text, res.output
    res = _fsar("train", recipe, "--out", tmp_path / "[seeds]", "--seeds", 0, 1, "--steps", 1)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for name in ("[seeds]/seed-0", "[seeds]/seed-1", f"-c {tmp_path / '[seeds]'}"):
        assert name in text, (name, res.output)
    # eval's tables (one per shot, then the summary) and the episode file it names
    recipe = _eval_recipe(tmp_path / "eval")
    recipe.write_text(recipe.read_text().replace("name: tiny", "name: tiny [v2]"))
    episodes = tmp_path / "[eps].json"
    res = _fsar("eval", recipe, "--head", "proto", "--shot", 1, 2)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "fsar eval: tiny [v2]" in text and "fsar eval: tiny [v2], proto" in text, res.output
    res = _fsar("eval", recipe, "--head", "proto", "--save-episodes", episodes)
    assert res.exit_code == 0, res.output
    assert f"episodes written to {episodes}" in " ".join(res.output.split()), res.output


def test_cache_refuses_a_frame_folder_with_a_gap(tmp_path: Path) -> None:
    from fsar_cli.features.store import FeatureStore

    frames = tmp_path / "frames"
    shutil.copytree(TINY / "test", frames / "test")
    for folder in (frames / "test").glob("*/*"):
        n = len(list(folder.glob("*.jpg")))
        (folder / ".fsar-complete").write_text(json.dumps({"frames": n}))
    gap = sorted((frames / "test").glob("test0/*"))[0]
    (gap / "00000004.jpg").unlink()  # frames 5.. now pose as 4..
    path = tiny_recipe(tmp_path)
    doc = json.loads(path.read_text())
    doc["data"]["frames_root"] = str(frames)
    path.write_text(json.dumps(doc))
    res = _fsar("cache", path, "--split", "test", "--device", "cpu")
    assert res.exit_code == 0, res.output
    index = FeatureStore.open(tmp_path / "cache-tiny" / "test").index.set_index("key")
    row = index.loc[f"{gap.name}"]
    assert row["status"] == "failed" and "marker says" in row["reason"], row
    res = _fsar("data", "check", path, "--split", "test", "--frames", "--deep")
    assert "marker says" in " ".join(res.output.split())


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


def test_refused_pickle_names_what_it_would_call(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, evil)
    out = tmp_path / "out.pt"
    res = _fsar("import-checkpoint", evil, out)
    _one_line_error(res, str(evil), "posix.system", "--trust")
    assert not out.exists() and not (tmp_path / "PWNED").exists()


def test_permission_error_is_not_called_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _eval_recipe(tmp_path)

    def denied(path: object, *a: object, **k: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(pd, "read_csv", denied)
    res = _fsar("eval", recipe, "--head", "proto", "--no-record")
    text = _one_line_error(res, "index.csv", "permission denied", "chmod")
    assert "corrupt" not in text and "unreadable" not in text


def test_data_import_keeps_files_it_did_not_write(tmp_path: Path) -> None:
    src = tmp_path / "mine"
    classes = [TINY / "test" / f"test{c}" for c in range(5)] + [
        sorted((TINY / "train").iterdir())[0]
    ]
    for c, folder in enumerate(classes):
        for v in sorted(p.name for p in folder.iterdir())[:2]:
            shutil.copytree(folder / v, src / f"class_{c}" / v)
    out = tmp_path / "bench"
    out.mkdir()
    (out / "classes.json").write_text("my classes")
    small = ["--test", 2, "--val", 2] + [
        x
        for k in (
            "train.n_way=2",
            "eval.n_way=2",
            "train.n_query=1",
            "eval.n_query=1",
            "eval.shots=1",
        )
        for x in ("--set", k)
    ]
    res = _fsar("data", "import", src, "--out", out, *small)
    _one_line_error(res, str(out / "classes.json"), "another --out")
    assert _user_files(out) == {"classes.json": b"my classes"}
    fresh = tmp_path / "fresh"
    assert _fsar("data", "import", src, "--out", fresh, *small).exit_code == 0
    res = _fsar("data", "import", src, "--out", fresh, *small, "--seed", 1)  # redoing its own
    assert res.exit_code == 0, res.output
