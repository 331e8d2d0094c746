"""Wall time of `fsar demo` as a newcomer meets it: a first run from nothing, then a rerun.

Runs ``python -m fsar_cli demo`` (the README's command) in a fresh temporary folder with its own
``$FSAR_HOME``, so the offline encoder is trained too, then runs the same command again (every
stage reused), and prints both wall times and the demo's own per-stage times. Extra arguments are
passed to ``fsar demo``. Timings depend on the machine and on what else runs on it: measure on a
quiet machine. Run::

    .venv/bin/python benchmarks/demo_time.py [--keep DIR] [-- extra demo options]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(out: Path, home: Path, extra: list[str]) -> tuple[float, str]:
    env = {**os.environ, "FSAR_HOME": str(home), "FSAR_NO_PROGRESS": "1", "COLUMNS": "120"}
    cmd = [sys.executable, "-m", "fsar_cli", "demo", "--out", str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"fsar demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", default=None, help="run in this (new) folder and keep it")
    ap.add_argument("extra", nargs="*", help="options passed to fsar demo (after --)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        out, home = root / "fsar-demo", root / "fsar-home"
        if out.exists() or home.exists():
            sys.exit(f"{root} already holds a demo: give a new folder")
        first, text = run(out, home, args.extra)
        stages = re.search(r"time: .*?\)", text, re.S)
        again, text2 = run(out, home, args.extra)
        reused = re.search(r"reused from an earlier run: .*", text2)
    print(f"cpus: {os.cpu_count()}, load average before: {load:.2f} (other work slows it down)")
    print(
        f"first run: {first:.1f} s wall" + (f"  [{' '.join(stages[0].split())}]" if stages else "")
    )
    print(f"rerun:     {again:.1f} s wall" + (f"  [{reused[0]}]" if reused else ""))


if __name__ == "__main__":
    main()
