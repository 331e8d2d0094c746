"""Threads under load: fsar's default thread choice vs fixed settings, idle and with busy peers.

For each command (``train``: 20 frozen steps of 4 episodes, clipfsar head, D = 512, synthetic
store; ``eval``: 24,000 5-way 1-shot episodes of that head (2.5-3 s on a quiet 2-core CPU, so
the 0.1 s steps of the command's time row are 3-4% of it); ``cache``: 12 videos x 8 JPEG frames
through ``random:ViT-B/32``), each load (0, 1 and 2 busy-loop processes this script starts, each
with a time limit, and always stops) and each setting, the command runs as
``python -m fsar_cli ...`` in a fresh process; the settings of one repeat run adjacent to each
other (order rotating), and the medians over ``--repeats`` are reported:

- ``default``: fsar's own choice (``fsar_cli.threads``: passive OpenMP wait, the cores the other
  running processes leave free, or all cores when they leave none);
- ``torch``: torch's defaults (all cores, ``OMP_WAIT_POLICY`` unset: threads busy-wait);
- ``1 thread``: ``OMP_NUM_THREADS=1``;
- ``N passive``: all N cores, ``OMP_WAIT_POLICY=PASSIVE``.

Printed per command and load: each setting's median seconds, ``default / best`` (goal <=
1.15) and the thread counts the default chose (asked of ``fsar_cli.threads`` in a fresh process
right before each default run): where it chose a setting that is also timed on its own (e.g. all
cores, passive, under two busy loops on 2 cores), the gap between the two is the noise of the
machine, not a worse choice. Train and eval are timed by the command itself (its "device /
time" row: the work, not the imports); cache by the whole process (imports included, which
dilutes its ratio). The load average is printed: a machine busy with other work makes every
figure noisier.

Usage: ``python benchmarks/threads.py [--repeats 2] [--loads 0,1,2] [--commands train,eval,cache]
[--settings "default,2 passive"]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUSY = "import time\nt = time.time() + {limit}\nwhile time.time() < t:\n    pass\n"


def busy_loops(n: int, limit: float) -> list[subprocess.Popen[bytes]]:
    """``n`` pure-Python busy loops that end by themselves after ``limit`` seconds."""
    return [subprocess.Popen([sys.executable, "-c", BUSY.format(limit=limit)]) for _ in range(n)]


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def settings(cores: int) -> dict[str, dict[str, str | None]]:
    """Environment changes of each setting (None: removed)."""
    unset: dict[str, str | None] = {
        "OMP_NUM_THREADS": None,
        "OMP_WAIT_POLICY": None,
        "MKL_NUM_THREADS": None,
    }
    return {
        "default": unset,
        "torch": {**unset, "OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": str(cores)},
        "1 thread": {**unset, "OMP_NUM_THREADS": "1"},
        f"{cores} passive": {
            **unset,
            "OMP_NUM_THREADS": str(cores),
            "OMP_WAIT_POLICY": "PASSIVE",
        },
    }


def prepare(root: Path) -> dict[str, list[str]]:
    """A synthetic cached dataset, a recipe, and a trained run (the eval checkpoint)."""
    sys.path.insert(0, str(REPO))
    from fsar_cli.features.synthetic import synthetic_store

    cache = root / "cache"
    synthetic_store(cache / "train", 16, 20, dim=512, seed=0, noise=3.0, split="train")
    synthetic_store(cache / "val", 8, 10, dim=512, seed=1, noise=3.0, split="val")
    synthetic_store(cache / "test", 24, 40, dim=512, seed=2, noise=5.0, split="test")
    recipe = {
        "name": "threads-bench",
        "features": {"cache_dir": str(cache)},
        "train": {"steps": 20, "episodes_per_step": 4, "val_every": 1000, "val_episodes": 20},
        "eval": {"episodes": 24000, "n_query": 1},
    }
    path = root / "recipe.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cache_throughput as ct  # its real-image JPEG folders

    ct.make_frames(root / "frames", 12)
    cache_recipe = {
        "name": "threads-cache",
        "data": {
            "split_dir": str(root / "frames"),
            "frames_root": str(root / "frames"),
            "frames_layout": "{split}/{class_field}/{video_id}",
            "classes": {"test": ["a", "b", "c", "d"]},
        },
        "features": {
            "encoder": "random:ViT-B/32",
            "num_frames": ct.T,
            "resize": 256,
            "crop": 224,
            "cache_dir": str(root / "cache0"),
            "sampling": {"test": "center"},
        },
    }
    cache_path = root / "cache.yaml"
    cache_path.write_text(json.dumps(cache_recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FSAR_NO_PROGRESS": "1"}
    run = root / "run0"
    # one finished step: validated, so the run folder has best.pt (the eval checkpoint)
    cmd = [sys.executable, "-m", "fsar_cli", "train", str(path), "--out", str(run)]
    cmd += ["--set", "train.steps=1"]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    return {
        "train": ["train", str(path), "--out", "{tmp}/run{n}"],
        "eval": ["eval", str(path), "--checkpoint", str(run), "--no-record"],
        "cache": ["cache", str(cache_path), "--split", "test"],
    }


def environment(change: dict[str, str | None], **extra: str) -> dict[str, str]:
    """This process's environment with the repository importable, ``extra`` set and a setting's
    ``change`` applied (None: removed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    for k, v in change.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run_once(args: list[str], env_change: dict[str, str | None], tmp: Path, n: int) -> float:
    """Seconds of one command: its own "device / time" row where it prints one, else the wall."""
    env = environment(env_change, FSAR_NO_PROGRESS="1", COLUMNS="200")
    argv = [a.format(tmp=tmp, n=n) for a in args]
    if argv[0] == "cache":  # a fresh cache folder per run
        doc = json.loads(Path(argv[1]).read_text())
        doc["features"]["cache_dir"] = str(tmp / f"cache{n}")
        Path(argv[1]).write_text(json.dumps(doc))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fsar_cli", *argv], cwd=REPO, env=env, capture_output=True, text=True
    )
    dt = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"fsar {' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    own = re.search(r"device / time\W+\S+ / ([0-9.]+) s", proc.stdout)
    return float(own.group(1)) if own else dt


def default_threads(env_change: dict[str, str | None]) -> int:
    """The thread count fsar's default would choose now (a fresh process, as a command's)."""
    env = environment(env_change)
    probe = "from fsar_cli.threads import configure_threads; print(configure_threads().threads)"
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    return int(proc.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--loads", default="0,1,2", help="busy-loop processes, comma-separated")
    ap.add_argument("--commands", default="train,eval,cache")
    ap.add_argument(
        "--settings", default="", help="comma-separated subset of the settings (default: all)"
    )
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    loads = [int(x) for x in args.loads.split(",")]
    print(
        f"{cores} cores; load average before starting {os.getloadavg()[0]:.1f} (above ~0.5: "
        "the machine is busy with other work, figures are noisy)"
    )
    sets = settings(cores)
    if args.settings:
        wanted = [x.strip() for x in args.settings.split(",")]
        unknown = [x for x in wanted if x not in sets]
        if unknown or "default" not in wanted:
            raise SystemExit(f"--settings: choose from {list(sets)}, default included")
        sets = {k: v for k, v in sets.items() if k in wanted}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        cmds = prepare(tmp)
        counter = 0
        for name in args.commands.split(","):
            for load in loads:
                times: dict[str, list[float]] = {s: [] for s in sets}
                chosen: list[int] = []
                procs = busy_loops(load, limit=600)
                try:
                    time.sleep(0.5 if load else 0.0)  # the neighbours are running
                    order = list(sets)
                    for r in range(args.repeats):
                        for s in order[r % len(order) :] + order[: r % len(order)]:
                            counter += 1
                            if s == "default":
                                chosen.append(default_threads(sets[s]))
                            times[s].append(run_once(cmds[name], sets[s], tmp, counter))
                finally:
                    stop(procs)
                med = {s: statistics.median(v) for s, v in times.items()}
                best = min(med.values())
                cells = "  ".join(f"{s} {t:6.2f} s" for s, t in med.items())
                print(
                    f"{name:5s} load {load}: {cells}  | default/best {med['default'] / best:.2f}x "
                    f"(default chose {'/'.join(map(str, chosen))} threads; load average "
                    f"{os.getloadavg()[0]:.1f})"
                )


if __name__ == "__main__":
    main()
