"""CLI wiring: help, entry points, the error boundary, recipes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fsar_cli.cli.app import app
from fsar_cli.errors import RecipeError

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
TINY = REPO.parent / "shared" / "fixtures" / "ssv2_tiny"


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "recipes" in result.output


@pytest.mark.slow
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


@pytest.mark.slow
def test_importing_the_cli_does_not_import_torch() -> None:
    # `fsar --help` stays fast: command modules import torch-heavy library code when they run.
    code = "import fsar_cli.cli.app, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    code = (
        "import fsar_cli.cli.app, sys; print(sorted({'clip', 'cv2', 'pandas'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _tiny_recipe(tmp: Path) -> Path:
    """Two test classes of two fixture videos, features of a tiny CLIP (32x32)."""
    splits = tmp / "splits"
    splits.mkdir()
    lines = [
        f"test{c}/{v}"
        for c in range(2)
        for v in sorted(p.name for p in (TINY / "test" / f"test{c}").iterdir())[:2]
    ]
    (splits / "test_few_shot.txt").write_text("\n".join(lines) + "\n")
    doc = {
        "name": "tiny",
        "data": {
            "split_dir": str(splits),
            "frames_root": str(TINY),
            "frames_layout": "{split}/{class_field}/{video_id}",
            "classes": {"test": ["pouring", "folding"]},
        },
        "features": {
            "encoder": "ViT-B/32",  # the run folder's tower.json must win over it
            "resize": 40,
            "crop": 32,
            "workers": 0,
            "cache_dir": str(tmp / "cache"),
        },
    }
    path = tmp / "tiny.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def test_cache_weights_run_folder_uses_its_fine_tuned_tower(tmp_path: Path) -> None:
    import torch

    from fsar_cli.encoders.clip import ARCHS, TOWER_FILE, TOWER_META
    from fsar_cli.features.store import FeatureStore, store_path

    recipe = _tiny_recipe(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    args = ["cache", str(recipe), "--split", "test", "--device", "cpu", "--weights", str(run)]
    result = runner.invoke(app, args)  # a frozen-mode run folder: no tower.pt
    assert result.exit_code == 1
    assert "frozen-mode runs train only the head" in " ".join(result.output.split())

    from clip.model import CLIP

    torch.manual_seed(4)
    visual = CLIP(**ARCHS["tiny"]).visual
    torch.save({f"visual.{k}": v for k, v in visual.state_dict().items()}, run / TOWER_FILE)
    (run / TOWER_META).write_text(json.dumps({"format": "fsar-tower/1", "encoder": "random:tiny"}))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    store = FeatureStore.open(store_path(tmp_path / "cache", "test"))
    assert store.meta["encoder"] == "random:tiny" and store.meta["text_encoder_random"] is True
    sha = hashlib.sha256((run / TOWER_FILE).read_bytes()).hexdigest()
    assert store.meta["weights_sha256"] == sha
    resolved = yaml.safe_load((tmp_path / "cache" / "resolved_recipe.yaml").read_text())
    assert resolved["features"]["weights"] == str(run / TOWER_FILE)
    assert resolved["features"]["encoder"] == "random:tiny"


def test_splits_option_overrides_env(shared, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--splits DIR` wins over $FSAR_SPLITS (here pointing nowhere) and the recipe key."""
    monkeypatch.setenv("FSAR_SPLITS", str(tmp_path / "nowhere"))
    args = ["data", "check", "hmdb51", "--split", "test", "--root", str(tmp_path)]
    without = runner.invoke(app, args)
    assert without.exit_code == 1 and "does not exist" in without.output
    with_opt = runner.invoke(app, [*args, "--splits", str(shared / "benchmarks")])
    assert with_opt.exit_code == 1  # read the 1,292 test entries; no video is present here
    assert "does not exist; run `fsar splits download`" not in with_opt.output
    assert "1292" in with_opt.output.replace(",", "")


def test_encoder_text_flags_random_and_demo_weights() -> None:
    from fsar_cli.cli.console import encoder_text
    from fsar_cli.encoders.offline import OFFLINE_ENCODER_NAME

    assert "RANDOM WEIGHTS" in encoder_text("random:tiny", True)
    assert "not the OpenAI weights" in encoder_text(OFFLINE_ENCODER_NAME, False)
    assert encoder_text("ViT-B/16", False) == "ViT-B/16"
