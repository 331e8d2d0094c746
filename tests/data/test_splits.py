"""Split files: both formats against the real files, with the counts of BENCHMARKS.md."""

from __future__ import annotations

import pytest

from fsar_cli.data.splits import format_path, load_split, read_split
from fsar_cli.errors import DataError
from fsar_cli.recipe import load_recipe

# name: (classes train/val/test, videos train/val/test), BENCHMARKS.md
COUNTS = {
    "ssv2_full": ((64, 12, 24), (67013, 1926, 2857)),
    "ssv2_small": ((64, 12, 24), (6400, 1200, 2400)),
    "kinetics100": ((64, 12, 24), (6400, 1200, 2400)),
    "ucf101": ((70, 10, 21), (9154, 1421, 2745)),
    "hmdb51": ((31, 10, 10), (4280, 1194, 1292)),
}


@pytest.mark.parametrize("name", list(COUNTS))
def test_reference_format_counts(name: str) -> None:
    recipe = load_recipe(name)
    classes, videos = COUNTS[name]
    for split, n_cls, n_vid in zip(("train", "val", "test"), classes, videos, strict=True):
        entries = load_split(recipe, split)
        assert len(entries) == n_vid
        assert len({e.class_id for e in entries}) == n_cls
        assert max(e.class_id for e in entries) == n_cls - 1
        assert len({e.key for e in entries}) == n_vid  # keys are unique within a split


@pytest.mark.parametrize("name", list(COUNTS))
def test_classname_format_same_entries(name: str, shared, tmp_path) -> None:
    """The test split as 'class name/video id' lines (TRX style): same classes, same videos."""
    recipe = load_recipe(name)
    ref = load_split(recipe, "test")
    names = recipe.data.classes.test
    lines = [f"{names[e.class_id]}/{e.video_id}" for e in ref]
    path = tmp_path / "testlist01.txt"
    path.write_text("\n".join(lines) + "\n")
    got = read_split(path, "test", names)
    assert [e.class_id for e in got] == [e.class_id for e in ref]
    assert [e.video_id for e in got] == [e.video_id for e in ref]
    # folder-style spelling (underscores, no spaces) maps to the same ids
    path.write_text(
        "\n".join(f"{n.replace(' ', '_')}/{v}" for n, v in (line.split("/", 1) for line in lines))
    )
    assert [e.class_id for e in read_split(path, "test", names)] == [e.class_id for e in ref]


def test_reference_line_fields(shared) -> None:
    e = read_split(shared / "benchmarks" / "ucf101" / "test_few_shot.txt", "test")[0]
    assert (e.class_id, e.class_field) == (0, "test0")
    assert e.rel_path == "videos/BlowingCandles/v_BlowingCandles_g01_c01.avi"
    assert e.rel_stem == "videos/BlowingCandles/v_BlowingCandles_g01_c01"
    assert e.video_id == "v_BlowingCandles_g01_c01"
    s = read_split(shared / "benchmarks" / "ssv2_full" / "train_few_shot.txt", "train")[0]
    assert (s.class_id, s.class_field, s.video_id) == (8, "train8", "78687")
    assert format_path("{video_id}.{ext}", s, "webm") == "78687.webm"
    assert format_path("{split}/{class_field}/{video_id}", s) == "train/train8/78687"
    with pytest.raises(DataError, match="unknown field"):
        format_path("{nope}", s)


def test_malformed_and_missing(tmp_path) -> None:
    p = tmp_path / "x.txt"
    p.write_text("train0/1\nnot a line\n")
    with pytest.raises(DataError, match=r"x.txt:2: 'not a line'"):
        read_split(p, "train")
    with pytest.raises(DataError, match="does not exist; run `fsar splits download`"):
        read_split(tmp_path / "nope.txt", "train")


def test_class_id_beyond_recipe(tmp_path) -> None:
    (tmp_path / "test_few_shot.txt").write_text("test0/1\ntest5/2\n")
    r = load_recipe("hmdb51", [f"data.split_dir={tmp_path}", "data.classes.test=[a, b]"])
    with pytest.raises(
        DataError, match=r"class ids \[5\] but recipe 'hmdb51' lists 2 test classes"
    ):
        load_split(r, "test")
