"""A reduced `fsar demo`, end to end through the CLI, and the claims its table is there to show."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from fsar_cli.cli.app import app

runner = CliRunner()


def _acc(table: pd.DataFrame, head: str, k: int) -> tuple[float, float]:
    row = table[(table["head"] == head) & (table["k_shot"] == k)].iloc[0]
    return float(row["acc_mean"]), float(row["acc_ci95"])


def _beats(table: pd.DataFrame, a: str, b: str, k: int) -> None:
    (ma, ca), (mb, cb) = _acc(table, a, k), _acc(table, b, k)
    assert ma - mb > ca + cb, f"{k}-shot: {a} {ma:.1f}±{ca:.1f} vs {b} {mb:.1f}±{cb:.1f}"


@pytest.mark.slow
def test_reduced_demo_shows_the_point_of_the_method(tmp_path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--videos-per-class", "8", "--episodes", "1000"]
    args += ["--steps", "100"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "NOT the OpenAI CLIP weights" in result.output
    table = pd.read_csv(out / "demo_results.csv")
    assert set(table["head"]) == {"proto", "otam", "text", "clipfsar-notext", "clipfsar"}
    assert sorted(set(table["k_shot"])) == [1, 5]
    for k in (1, 5):
        # every test class has its time-reversed twin: aligning frames in time must win clearly
        _beats(table, "otam", "proto", k)
        # meta-training the CLIP-FSAR head beats the untrained OTAM baseline
        _beats(table, "clipfsar", "otam", k)
        assert _acc(table, "proto", k)[0] > 20.0 + 2 * _acc(table, "proto", k)[1]  # above chance

    # a rerun reuses every finished stage and reproduces the table exactly
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "reused from an earlier run: synth, extract, train clipfsar-notext" in again.output
    pd.testing.assert_frame_equal(pd.read_csv(out / "demo_results.csv"), table)
