"""``benchmarks/gpu_check.py --device cpu --tiny`` runs end to end (the GPU run's rehearsal)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_the_cpu() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    table = out.stdout
    assert "FAILED" not in table
    for check in (
        "finetune episode",
        "frozen training",
        "cache random:tiny, JPEG folders",
        "cache random:tiny, video files",
        "eval 200 5-way 5-shot",
    ):
        assert check in table, table
