"""`fsar extract` on the real fixture videos: counts, sampling, resizing, failures, resume."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.data import extract as extract_mod
from fsar_cli.data.extract import MARKER, extract_frames
from fsar_cli.data.frames import sample_indices
from fsar_cli.errors import DataError

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
VIDEOS = SHARED / "fixtures" / "videos"
NAMES = ("arm_wrestling.mp4", "bigbuckbunny.mp4", "cleaning_pool.mp4", "eye_makeup.avi")
runner = CliRunner()


def _decoded(path: Path) -> tuple[int, float]:
    """Frames OpenCV decodes from ``path`` and the container's fps, counted here independently."""
    cap = cv2.VideoCapture(str(path))
    fps, n = cap.get(cv2.CAP_PROP_FPS), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, fps


@pytest.fixture(scope="module")
def decoded() -> dict[str, tuple[int, float]]:
    return {name: _decoded(VIDEOS / name) for name in NAMES}


def _copy_videos(dest: Path, names=NAMES) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(VIDEOS / name, dest / name)
    return dest


def _frames(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_all_frames_match_opencv_count_and_short_side(tmp_path, decoded):
    src = _copy_videos(tmp_path / "in")
    res = extract_frames(tmp_path / "out", input_dir=src, short_side=64, workers=2)
    assert res.ok and res.done == 4 and res.skipped == 0 and res.failures_file is None
    for name in NAMES:
        folder = tmp_path / "out" / Path(name).stem
        files = _frames(folder)
        assert len(files) == decoded[name][0] == res.frames[Path(name).stem]
        assert files[0].name == "00000001.jpg" and files[-1].name == f"{len(files):08d}.jpg"
        h, w = cv2.imread(str(files[-1])).shape[:2]
        assert min(h, w) == 64 and max(h, w) > 64  # aspect kept (all fixtures are landscape)
        marker = json.loads((folder / MARKER).read_text())
        assert marker["frames"] == len(files) and marker["settings"]["short_side"] == 64
    # the 1280x720 video keeps its 16:9 aspect
    h, w = cv2.imread(str(tmp_path / "out" / "bigbuckbunny" / "00000001.jpg")).shape[:2]
    assert (h, w) == (64, 114)


def test_num_frames_picks_evenly_spread_decoded_frames(tmp_path, decoded):
    src = _copy_videos(tmp_path / "in", NAMES[::3])  # arm_wrestling.mp4, eye_makeup.avi
    extract_frames(tmp_path / "all", input_dir=src, short_side=64, workers=1)
    res = extract_frames(tmp_path / "n8", input_dir=src, short_side=64, num_frames=8, workers=1)
    assert res.ok and res.done == 2
    for name in NAMES[::3]:
        stem = Path(name).stem
        picked = _frames(tmp_path / "n8" / stem)
        assert len(picked) == 8
        every = _frames(tmp_path / "all" / stem)
        want = sample_indices(decoded[name][0], 8, "center")
        # same decoder, resize and JPEG settings: the chosen frames are byte-identical
        assert [p.read_bytes() for p in picked] == [every[i].read_bytes() for i in want]


def test_fps_resamples_by_container_rate(tmp_path, decoded):
    src = _copy_videos(tmp_path / "in", NAMES[::3])
    res = extract_frames(tmp_path / "out", input_dir=src, short_side=64, fps=5, workers=1)
    assert res.ok and not res.warnings
    for name in NAMES[::3]:
        n, fps = decoded[name]
        want = len({math.floor(i * 5 / fps) for i in range(n)})  # one frame per 1/5 s slot
        assert len(_frames(tmp_path / "out" / Path(name).stem)) == want
        assert want < n


def test_fps_unknown_falls_back_to_all_frames_with_warning(tmp_path, decoded, monkeypatch):
    src = _copy_videos(tmp_path / "in", NAMES[3:])
    monkeypatch.setattr(extract_mod, "_known_fps", lambda fps: False)
    res = extract_frames(tmp_path / "out", input_dir=src, short_side=64, fps=5, workers=1)
    assert len(_frames(tmp_path / "out" / "eye_makeup")) == decoded["eye_makeup.avi"][0]
    assert len(res.warnings) == 1 and "fps unknown" in res.warnings[0].reason


def test_bad_files_are_reported_and_good_ones_complete(tmp_path, decoded):
    src = _copy_videos(tmp_path / "in")
    bad = src / "bad"
    bad.mkdir()
    rng = np.random.default_rng(0)
    (bad / "random.mp4").write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    for name in ("cleaning_pool.mp4", "eye_makeup.avi"):  # first ~5% of the bytes
        data = (VIDEOS / name).read_bytes()
        (bad / f"trunc_{name}").write_bytes(data[: len(data) // 20])
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "notes.txt").write_text("not a video extension: ignored")
    out = tmp_path / "out"
    args = ["extract", "--input", str(src), "--out", str(out), "--short-side", "64", "-w", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "extract_failures.csv" in res.output
    with (out / "extract_failures.csv").open() as fh:
        rows = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(fh)}
    assert set(rows) == {
        "random.mp4",
        "trunc_cleaning_pool.mp4",
        "trunc_eye_makeup.avi",
        "empty.mp4",
    }
    assert "empty" in rows["empty.mp4"]
    assert "no frame decodes" in rows["trunc_eye_makeup.avi"]
    assert "OpenCV can open" in rows["random.mp4"]
    for name in NAMES:
        assert len(_frames(out / Path(name).stem)) == decoded[name][0]
    assert not (out / "bad").exists() or not any((out / "bad").iterdir())
    # a rerun skips the finished videos and reports the same failures again
    again = extract_frames(out, input_dir=src, short_side=64, workers=1)
    assert again.skipped == 4 and again.done == 0 and len(again.failed) == 4


def test_changed_settings_refuse_then_overwrite(tmp_path):
    src = _copy_videos(tmp_path / "in", NAMES[3:])
    out = tmp_path / "out"
    extract_frames(out, input_dir=src, short_side=64, num_frames=4, workers=1)
    with pytest.raises(DataError, match=r"num_frames=4 \(this run asks 6\)"):
        extract_frames(out, input_dir=src, short_side=64, num_frames=6, workers=1)
    assert len(_frames(out / "eye_makeup")) == 4  # refused before touching anything
    res = runner.invoke(
        app, ["extract", "-i", str(src), "-o", str(out), "--short-side", "64", "--quality", "80",
              "--num-frames", "4", "-w", "1"],
    )  # fmt: skip
    assert res.exit_code == 1 and "quality=95" in res.output and "--overwrite" in res.output
    res = extract_frames(out, input_dir=src, short_side=64, num_frames=6, workers=1, overwrite=True)
    assert res.done == 1 and len(_frames(out / "eye_makeup")) == 6
    # a changed source is re-extracted, not trusted
    os.utime(src / "eye_makeup.avi", ns=(1, 1))
    assert extract_frames(out, input_dir=src, short_side=64, num_frames=6, workers=1).done == 1
    assert extract_frames(out, input_dir=src, short_side=64, num_frames=6, workers=1).skipped == 1


def _run_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "FSAR_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "fsar_cli", "extract", *args]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_tree(tmp_path):
    src = _copy_videos(tmp_path / "in")
    opts = ["--input", str(src), "--short-side", "64", "--workers", "1"]
    killed = tmp_path / "killed"
    proc = _run_cli([*opts, "--out", str(killed)])
    deadline = time.monotonic() + 120
    while not any(killed.glob(f"*/{MARKER}")):  # wait for the first finished video
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no video finished in 120 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name for p in killed.glob(f"*/{MARKER}")}
    assert 1 <= len(finished) < 4, "the run was not interrupted mid-way"
    # what a crash can leave: a partial folder of a dead process, and a folder without a marker
    (killed / f".bigbuckbunny.partial-{proc.pid}").mkdir(exist_ok=True)
    (killed / f".bigbuckbunny.partial-{proc.pid}" / "00000001.jpg").write_bytes(b"half")
    untrusted = killed / "cleaning_pool"
    if not (untrusted / MARKER).exists():
        untrusted.mkdir(exist_ok=True)
        (untrusted / "00000001.jpg").write_bytes(b"junk")
    resumed = runner.invoke(app, ["extract", *opts, "--out", str(killed)])
    if (untrusted / "00000001.jpg").read_bytes() == b"junk":  # fsar never wrote that folder
        assert resumed.exit_code == 1 and "cleaning_pool" in resumed.output
        assert (untrusted / "00000001.jpg").read_bytes() == b"junk"
        resumed = runner.invoke(app, ["extract", *opts, "--out", str(killed), "--overwrite"])
    assert resumed.exit_code == 0, resumed.output
    extract_frames(tmp_path / "clean", input_dir=src, short_side=64, workers=1)  # uninterrupted
    tree = _tree(killed)
    assert tree == _tree(tmp_path / "clean")
    assert not [p for p in tree if ".partial" in p or ".old-" in p]
    assert len([p for p in tree if p.endswith(MARKER)]) == 4


def _write_recipe(tmp_path: Path, lines: list[str]) -> Path:
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train_few_shot.txt").write_text("\n".join(lines) + "\n")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"""name: tiny
data:
  split_dir: {splits}
  root: {tmp_path / "nowhere"}
  video_layout: "{{rel_path}}"
  frames_layout: "{{split}}/{{class_field}}/{{video_id}}"
"""
    )
    return recipe


def test_recipe_extract_writes_frames_layout(tmp_path):
    root = tmp_path / "root"
    _copy_videos(root / "vids", NAMES[::3])
    shutil.copyfile(VIDEOS / "eye_makeup.avi", root / "vids" / "c.avi")
    os.rename(root / "vids" / "arm_wrestling.mp4", root / "vids" / "a.mp4")
    os.rename(root / "vids" / "eye_makeup.avi", root / "vids" / "b.avi")
    recipe = _write_recipe(
        tmp_path,
        ["train0//vids/a.mp4", "train0//vids/b.avi", "train1//vids/c.avi", "train1//vids/gone.mp4"],
    )
    out = tmp_path / "frames"
    args = ["extract", str(recipe), "--root", str(root), "--split", "train", "--out", str(out),
            "--num-frames", "4", "--short-side", "64", "-w", "1"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output  # one listed video is missing
    for rel in ("train/train0/a", "train/train0/b", "train/train1/c"):
        assert len(_frames(out / rel)) == 4 and (out / rel / MARKER).is_file()
    with (out / "extract_failures.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["path"] == str(root / "vids" / "gone.mp4") and "missing" in row["reason"]
    resolved = (out / "resolved_recipe.yaml").read_text()
    assert f"frames_root: {out}" in resolved and f"root: {root}" in resolved
    # the extracted folders pass `fsar data check --frames` except for the missing video
    res = runner.invoke(app, ["data", "check", str(recipe), "--frames", "--root", str(out),
                              "--split", "train"])  # fmt: skip
    assert res.exit_code == 1 and "1 missing, 0 undecodable of 4 listed" in res.output


def test_cli_rejects_conflicting_inputs(tmp_path):
    res = runner.invoke(app, ["extract", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "exactly one" in res.output
    src = _copy_videos(tmp_path / "in", NAMES[3:])
    res = runner.invoke(app, ["extract", "-i", str(src), "-o", str(tmp_path / "o"),
                              "--fps", "5", "--num-frames", "8"])  # fmt: skip
    assert res.exit_code != 0 and "exclude each other" in res.output
    assert not (tmp_path / "o").exists()


def test_partly_truncated_video_keeps_what_decodes_with_a_warning(tmp_path):
    data = (VIDEOS / "eye_makeup.avi").read_bytes()
    src = tmp_path / "in"
    src.mkdir()
    (src / "half.avi").write_bytes(data[: len(data) // 2])
    n, _ = _decoded(src / "half.avi")
    res = extract_frames(tmp_path / "out", input_dir=src, short_side=64, workers=1)
    assert res.ok and res.frames == {"half": n} and 0 < n < 164
    assert len(_frames(tmp_path / "out" / "half")) == n
    (warning,) = res.warnings
    assert f"only {n} of 164 declared frames decode" in warning.reason
