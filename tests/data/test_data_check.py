"""`fsar data check`: listed / present / missing / undecodable per split and class."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.data.check import check_dataset
from fsar_cli.recipe import load_recipe

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
VIDEOS = SHARED / "fixtures" / "videos"
TINY = SHARED / "fixtures" / "ssv2_tiny"
runner = CliRunner()


def _recipe(tmp_path: Path, lines: list[str], name: str = "vids") -> Path:
    splits = tmp_path / f"splits_{name}"
    splits.mkdir()
    (splits / "train_few_shot.txt").write_text("\n".join(lines) + "\n")
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""name: {name}
data:
  split_dir: {splits}
  root: {tmp_path / "root"}
  video_layout: "{{rel_path}}"
  classes:
    train: ["arm wrestling", null]
"""
    )
    return path


@pytest.fixture
def video_root(tmp_path: Path) -> Path:
    vids = tmp_path / "root" / "v"
    vids.mkdir(parents=True)
    shutil.copyfile(VIDEOS / "arm_wrestling.mp4", vids / "a.mp4")
    shutil.copyfile(VIDEOS / "cleaning_pool.mp4", vids / "b.mp4")
    shutil.copyfile(VIDEOS / "eye_makeup.avi", vids / "c.avi")
    (vids / "junk.mp4").write_bytes(b"\x00\x01 not a video" * 500)
    data = (VIDEOS / "eye_makeup.avi").read_bytes()
    (vids / "cut.avi").write_bytes(data[: len(data) * 3 // 10])  # opens, ~40 of 164 frames decode
    return tmp_path / "root"


LINES = [
    "train0//v/a.mp4",
    "train0//v/b.mp4",
    "train0//v/gone.mp4",
    "train1//v/c.avi",
    "train1//v/junk.mp4",
    "train1//v/cut.avi",
    "train1//v/also_gone.avi",
]


def _counts(result) -> dict[int, tuple[int, int, int, int]]:
    return {r.class_id: (r.listed, r.present, r.missing, r.undecodable) for r in result.classes}


def test_counts_per_class_quick_and_deep(tmp_path, video_root):
    recipe = load_recipe(_recipe(tmp_path, LINES))
    quick = check_dataset(recipe, splits=("train",))
    assert _counts(quick) == {0: (3, 2, 1, 0), 1: (4, 2, 1, 1)}
    assert [r.name for r in quick.classes] == ["arm wrestling", "train1"]  # null name: the field
    assert not quick.complete
    t = quick.totals()
    assert (t.listed, t.present, t.missing, t.undecodable) == (7, 4, 2, 1)
    probs = {Path(p.path).name: p.status for p in quick.problems}
    assert probs == {"gone.mp4": "missing", "also_gone.avi": "missing", "junk.mp4": "undecodable"}
    # --deep decodes everything: the cut avi opens, but most of its declared frames are gone
    deep = check_dataset(recipe, splits=("train",), deep=True, workers=1)
    assert _counts(deep) == {0: (3, 2, 1, 0), 1: (4, 1, 1, 2)}
    (cut,) = [p for p in deep.problems if p.path.endswith("cut.avi")]
    assert "declared frames decode" in cut.reason


def test_cli_exit_codes_and_problem_list(tmp_path, video_root):
    recipe = _recipe(tmp_path, LINES)
    report = tmp_path / "problems.csv"
    res = runner.invoke(
        app, ["data", "check", str(recipe), "--split", "train", "--problems", str(report)]
    )
    assert res.exit_code == 1, res.output
    assert "2 missing, 1 undecodable of 7 listed" in res.output
    with report.open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["line"], r["status"]) for r in rows) == [
        ("3", "missing"), ("5", "undecodable"), ("7", "missing")
    ]  # fmt: skip
    complete = _recipe(tmp_path, [LINES[0], LINES[1], LINES[3]], name="complete")
    res = runner.invoke(app, ["data", "check", str(complete), "--split", "train"])
    assert res.exit_code == 0, res.output
    assert "all 3 listed videos present" in res.output
    # --root replaces data.root: nothing is there
    res = runner.invoke(
        app, ["data", "check", str(complete), "--split", "train", "--root", str(tmp_path / "no")]
    )
    assert res.exit_code == 1 and "3 missing" in res.output


def _listed(split_file: Path, field: str) -> int:
    return sum(1 for line in split_file.read_text().splitlines() if line.startswith(field + "/"))


def test_frames_mode_on_real_ssv2_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("FSAR_SPLITS", str(SHARED / "benchmarks"))
    frames = tmp_path / "frames"
    shutil.copytree(TINY / "train" / "train0", frames / "train" / "train0")
    train3 = sorted((TINY / "train" / "train3").iterdir())[:4]
    for d in train3:
        shutil.copytree(d, frames / "train" / "train3" / d.name)
    shutil.copytree(TINY / "test" / "test2", frames / "test" / "test2")
    test2 = sorted((frames / "test" / "test2").iterdir())
    (test2[0] / "00000001.jpg").write_bytes(b"not a jpeg")  # first frame corrupt
    for f in test2[1].iterdir():  # an empty folder
        f.unlink()
    (test2[2] / "00000005.jpg").write_bytes(b"broken")  # only a deep check reads frame 5
    recipe = tmp_path / "ssv2.yaml"
    recipe.write_text(
        "name: ssv2\ndata:\n  split_name: ssv2_full\n"
        '  frames_layout: "{split}/{class_field}/{video_id}"\n'
    )
    res = runner.invoke(
        app, ["data", "check", str(recipe), "--frames", "--root", str(frames), "--split", "test"]
    )
    assert res.exit_code == 1, res.output
    assert "2847 missing, 2 undecodable of 2857 listed" in " ".join(res.output.split())
    result = check_dataset(load_recipe(recipe), frames, splits=("train", "test"), frames=True)
    splits = SHARED / "benchmarks" / "ssv2_full"
    rows = {(r.split, r.class_id): r for r in result.classes}
    for split, cid, present, bad in (("train", 0, 10, 0), ("train", 3, 4, 0), ("test", 2, 8, 2)):
        row = rows[(split, cid)]
        assert row.listed == _listed(splits / f"{split}_few_shot.txt", f"{split}{cid}")
        assert (row.present, row.undecodable) == (present, bad)
        assert row.missing == row.listed - present - bad
    assert (
        rows[("train", 1)].present == 0 and rows[("train", 1)].missing == rows[("train", 1)].listed
    )
    assert result.totals("train").listed == 67013 and result.totals("test").listed == 2857
    assert result.totals().present == 22
    deep = check_dataset(load_recipe(recipe), frames, splits=("test",), frames=True, deep=True)
    assert deep.totals().undecodable == 3 and deep.totals().present == 7
