"""CLI wiring: help, entry points, the error boundary, recipes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fsar_cli.cli import app
from fsar_cli.errors import RecipeError

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "recipes" in result.output


def test_python_m_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fsar_cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("fsar ")


def test_recipes_list_and_show() -> None:
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    for name in ("ssv2_full", "ssv2_small", "kinetics100", "ucf101", "hmdb51"):
        assert name in result.output
    result = runner.invoke(app, ["recipes", "show", "ucf101", "--set", "train.lr=3e-4"])
    assert result.exit_code == 0, result.output
    assert "lr: 0.0003" in result.output and "Apply Eye Makeup" in result.output


def test_error_boundary_one_red_line_exit_1() -> None:
    result = runner.invoke(app, ["recipes", "show", "hmdb51", "--set", "train.lrr=1"])
    assert result.exit_code == 1
    assert "error: unknown recipe key 'train.lrr'" in result.output
    assert "Traceback" not in result.output


def test_debug_switch_re_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSAR_DEBUG", "1")
    result = runner.invoke(app, ["recipes", "show", "nope"])
    assert result.exit_code != 0
    assert isinstance(result.exception, RecipeError)
