"""Reports: CSV columns, order and round trip, filters, the markdown table, ``fsar report``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.errors import FsarError
from fsar_cli.results.db import ResultsDB
from fsar_cli.results.published import CAVEAT, PUBLISHED, published
from fsar_cli.results.report import REPORT_COLUMNS, load_results, markdown_table, write_report

EXPECTED_COLUMNS = [
    "eval_id",
    "timestamp",
    "recipe",
    "benchmark",
    "dataset",
    "split",
    "n_way",
    "k_shot",
    "n_query",
    "n_episodes",
    "seed",
    "head",
    "encoder",
    "encoder_random",
    "sampling",
    "checkpoint",
    "episodes_source",
    "n_missing",
    "acc_mean",
    "acc_ci95",
    "fsar_version",
    "git_sha",
]


def _fields(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "recipe": "kinetics100",
        "benchmark": "kinetics100",
        "dataset": "Kinetics-100",
        "split": "test",
        "n_way": 5,
        "k_shot": 1,
        "n_query": 1,
        "n_episodes": 4,
        "seed": 0,
        "head": "clipfsar",
        "encoder": "ViT-B/16",
        "encoder_random": False,
        "sampling": "8 frames, center",
        "checkpoint": "runs/kinetics100/best.pt",
        "episodes_source": "sampled",
        "n_missing": 3,
        "missing": "3 of 2400 listed videos lack features (3 missing)",
        "overrides": [],
        "acc_mean": 0.875,
        "acc_ci95": 0.1225,
        "fsar_version": "0.1.0",
        "git_sha": "abc",
        "timestamp": "2024-05-01T10:00:00+00:00",
    }
    base.update(kw)
    return base


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "r.sqlite"
    rdb = ResultsDB(path)
    rdb.add(_fields(), np.array([1.0, 1.0, 0.75, 0.75]))
    rdb.add(_fields(k_shot=5, acc_mean=0.95, acc_ci95=0.01), np.ones(4))
    rdb.add(
        _fields(head="proto", checkpoint=None, acc_mean=0.8, timestamp="2024-06-01T00:00:00+00:00"),
        np.ones(4),
    )
    rdb.add(
        _fields(recipe="tiny", benchmark="tiny", dataset="Tiny", encoder_random=True), np.ones(4)
    )
    return path


def test_columns_are_documented_and_stable() -> None:
    assert REPORT_COLUMNS == EXPECTED_COLUMNS


def test_csv_round_trip(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "results.csv"
    res = write_report(out, db=db)
    assert res.path == out and len(res.frame) == 4
    back = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert list(back.columns) == EXPECTED_COLUMNS
    first = back.iloc[0]
    assert first["acc_mean"] == pytest.approx(87.5) and first["acc_ci95"] == pytest.approx(12.25)
    assert first["checkpoint"] == "runs/kinetics100/best.pt" and first["n_missing"] == 3
    assert not first["encoder_random"] and back.iloc[3]["encoder_random"]
    assert pd.isna(back.iloc[2]["checkpoint"])
    pd.testing.assert_frame_equal(
        back.drop(columns=["checkpoint"]),
        res.frame.drop(columns=["checkpoint"]),
        check_dtype=False,
    )


def test_filters(db: Path) -> None:
    assert len(load_results(db, recipe="kinetics100")) == 3
    assert len(load_results(db, head="proto")) == 1
    assert load_results(db, k_shot=5)["acc_mean"].tolist() == pytest.approx([95.0])
    assert load_results(db, since="2024-05-15")["head"].tolist() == ["proto"]
    with pytest.raises(FsarError, match="not a date"):
        load_results(db, since="last week")
    with pytest.raises(FsarError, match="no results database"):
        load_results(db.parent / "none.sqlite")


def test_markdown_table(db: Path) -> None:
    text = markdown_table(load_results(db))
    lines = text.splitlines()
    assert lines[0] == "| method | Kinetics-100 1-shot | Kinetics-100 5-shot | Tiny 1-shot |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| clipfsar (ViT-B/16) | 87.5 ± 12.2 | 95.0 ± 1.0 |  |"
    assert lines[3] == "| proto (ViT-B/16) | 80.0 ± 12.2 |  |  |"
    assert lines[4] == "| clipfsar (ViT-B/16) RANDOM WEIGHTS |  |  | 87.5 ± 12.2 |"
    vit = published("kinetics100", 1)[0]
    assert vit.acc == 89.7 and vit.backbone == "CLIP ViT-B/16"
    assert "| CLIP-FSAR (CLIP ViT-B/16) (published) [1] | 89.7 | 95.0 |  |" in lines
    assert f"[1] {vit.source}" in lines and f"Note: {CAVEAT}." in lines
    bare = markdown_table(load_results(db), include_published=False)
    assert "published" not in bare
    with pytest.raises(FsarError, match="no results match"):
        markdown_table(load_results(db, head="nope"))


def test_published_table_is_complete() -> None:
    # 4 methods x 5 benchmarks x 2 shots, each with a source
    assert len(PUBLISHED) == 40 and all(p.source and not p.verified for p in PUBLISHED)
    assert {p.acc for p in published("hmdb51", 5)} == {87.7, 80.7, 68.0, 75.6}


def test_cli_report(db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    out = tmp_path / "r.csv"
    res = runner.invoke(app, ["report", "--db", str(db), "--out", str(out), "--head", "clipfsar"])
    assert res.exit_code == 0, res.output
    assert "wrote 3 results" in res.output
    assert len(pd.read_csv(out)) == 3
    md = runner.invoke(app, ["report", "--db", str(db), "--format", "markdown", "--shot", "5"])
    assert md.exit_code == 0, md.output
    assert "| clipfsar (ViT-B/16) | 95.0 ± 1.0 |" in md.output
    nodb = runner.invoke(app, ["report", "--db", str(tmp_path / "x.sqlite"), "-o", str(out)])
    assert nodb.exit_code == 1 and "no results database" in nodb.output
    nofile = runner.invoke(app, ["report", "--db", str(db)])
    assert nofile.exit_code == 1 and "needs an output file" in nofile.output
