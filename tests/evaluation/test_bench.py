"""Bench grids: cells evaluated, skipped (no cache, no checkpoint) or failed, never aborting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL_MODEL, write_recipe
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.errors import RecipeError
from fsar_cli.evaluation.bench import run_bench
from fsar_cli.features.synthetic import synthetic_store
from fsar_cli.models import create_head, save_head_checkpoint
from fsar_cli.recipe import ModelCfg
from fsar_cli.results.db import ResultsDB


def _recipe(tmp_path: Path, name: str, cache: Path, split_name: str = "") -> Path:
    return write_recipe(
        tmp_path / f"{name}.yaml",
        name,
        dataset=name.title(),
        data={"split_name": split_name},
        features={"cache_dir": str(cache)},
        model=SMALL_MODEL,
        eval={"episodes": 20},
    )


@pytest.fixture
def grid(tmp_path: Path) -> tuple[Path, Path, Path]:
    # "k100" is evaluated as the kinetics100 benchmark; "gone" has no cache
    synthetic_store(tmp_path / "cache" / "test", dim=32, noise=2.0)
    have = _recipe(tmp_path, "k100", tmp_path / "cache", split_name="kinetics100")
    gone = _recipe(tmp_path, "gone", tmp_path / "nowhere")
    runs = tmp_path / "runs"
    torch.manual_seed(0)
    head = create_head("clipfsar", 32, ModelCfg(num_heads=4, ffn_dim=64, adapter_hidden=16))
    save_head_checkpoint(runs / "k100" / "best.pt", head, {})
    return have, gone, runs


def test_grid_with_missing_cache_and_checkpoint(
    grid: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    have, gone, runs = grid
    db = tmp_path / "r.sqlite"
    ticks: list[int] = []
    res = run_bench(
        [str(have), str(gone)],
        shots=(1, 5),
        heads=("trained", "otam", "text"),
        runs=runs,
        db=db,
        on_progress=lambda n=1, total=None, label=None: ticks.append(n),
    )
    assert len(res.rows) == 2 * 2 * 3
    ok = [r for r in res.rows if r.status == "ok"]
    assert [(r.recipe, r.k_shot, r.head) for r in ok] == [
        ("k100", 1, "clipfsar (trained)"),
        ("k100", 1, "otam"),
        ("k100", 1, "text"),
        ("k100", 5, "clipfsar (trained)"),
        ("k100", 5, "otam"),
        ("k100", 5, "text"),
    ]
    assert all(0 <= r.acc <= 100 and r.n_episodes == 20 for r in ok)
    skipped = [r for r in res.rows if r.recipe == "gone"]
    assert all(r.status == "skipped" and "no cache at" in r.note for r in skipped)
    assert sum(ticks) == 12 * 20  # progress covers the whole grid, skipped cells included
    # published reference rows: the kinetics100 benchmark only, both shots
    assert {(p.benchmark, p.k_shot) for p in res.published} == {
        ("kinetics100", 1),
        ("kinetics100", 5),
    }
    stored = ResultsDB(db).query()
    assert len(stored) == 6 and set(stored["eval_id"]) == {r.eval_id for r in ok}
    np.testing.assert_allclose(sorted(stored["acc_mean"] * 100), sorted(r.acc for r in ok))


def test_no_checkpoint_and_failing_cell(grid: tuple[Path, Path, Path]) -> None:
    have, _, runs = grid
    res = run_bench([str(have)], shots=(1, 7), heads=("trained", "proto"))
    by = {(r.k_shot, r.head): r for r in res.rows}
    assert by[(1, "clipfsar (trained)")].status == "skipped"
    assert "no checkpoint" in by[(1, "clipfsar (trained)")].note
    assert by[(1, "proto")].status == "ok"
    # 6 videos per class cannot give 7 shots + 1 query: reported, the grid goes on
    assert by[(7, "proto")].status == "error" and "lower --shot" in by[(7, "proto")].note
    res = run_bench([str(have)], shots=(1,), heads=("trained",), runs=runs.parent / "elsewhere")
    assert res.rows[0].status == "skipped" and "no checkpoint at" in res.rows[0].note
    with pytest.raises(RecipeError, match="shots must be >= 1"):
        run_bench([str(have)], shots=(0,))


def test_cli_bench(
    grid: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FSAR_NO_PROGRESS", "1")
    monkeypatch.setenv("COLUMNS", "250")
    have, gone, runs = grid
    db = tmp_path / "r.sqlite"
    args = ["bench", str(have), str(gone), "--shot", "1", "--head", "otam", "--head", "trained"]
    res = CliRunner().invoke(app, [*args, "--checkpoint", f"k100={runs / 'k100'}", "--db", str(db)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "skipped: no cache at" in text and "clipfsar (trained)" in text
    assert "89.7" in text and "published [1]" in text and "secondary summaries" in text
    assert "2 of 4 cells evaluated" in text
    bad = CliRunner().invoke(app, ["bench", str(have), "--checkpoint", "nope"])
    assert bad.exit_code == 1 and "RECIPE=PATH" in bad.output
