"""CPU threads that hold up on a busy machine: thread count and OpenMP wait policy, before torch.

torch's defaults (one OpenMP thread per core, threads that busy-wait between parallel regions)
are the fastest on an idle machine and collapse on a shared one: with other busy processes the
waiting threads burn the cores the others need and wait for descheduled peers (measured on a
2-core CPU: 20 training steps 2.56 s idle, but 6.35 s with one other busy process and 22.6 s with
several, against 3.6-3.7 s on one thread). fsar therefore, before torch starts:

- sets ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep; costs little when idle);
- uses the cores other processes leave free, or all cores when they leave none (see
  :func:`choose_threads`): the cores this process may run on minus the other processes running
  right now (``procs_running`` of ``/proc/stat``, the least of a few samples 5 ms apart, so a
  busy neighbour counts and a passing one does not; the 1-minute load average where there is no
  ``/proc``), at least 1. The load average is not used on Linux: it lags a minute behind and
  counts fsar's own previous command.

User settings win: ``OMP_NUM_THREADS`` / ``OMP_WAIT_POLICY`` in the environment (torchrun sets
``OMP_NUM_THREADS=1`` for its ranks), or an explicit ``threads`` (``fsar --threads N``).

Library users call :func:`configure_threads` before the first ``import torch`` (the wait policy
is read when the OpenMP runtime loads); called later it can still set the thread count.
``benchmarks/threads.py`` measures default vs best, idle and under a synthetic load.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

__all__ = [
    "ThreadChoice",
    "available_cores",
    "choose_threads",
    "configure_threads",
    "decode_workers",
    "other_running",
    "passive_waiting",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadChoice:
    """What :func:`configure_threads` decided, and why."""

    threads: int
    wait_policy: str
    source: str  # "--threads", "OMP_NUM_THREADS", or "load" (cores minus busy processes)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def choose_threads(cores: int, load: float) -> int:
    """The free cores (``cores - round(load)``) while there are any; all cores when there are none.

    With a free core, taking exactly the free ones avoids time-sharing (a descheduled thread
    stalls its peers at every parallel region). With none, every thread time-shares anyway and
    the scheduler's fair share grows with the thread count: one thread beside two busy processes
    on 2 cores gets a third of the machine, two threads get half (measured: train 15.4 s on one
    thread, 12.4 s on two; eval 3.9 s, 2.3 s; cache 47 s, 40 s). Passive waiting keeps the
    waiting threads from burning that share.
    """
    free = cores - int(load + 0.5)
    return min(cores, free) if free >= 1 else cores


def other_running(samples: int = 3, gap: float = 0.005) -> float:
    """Other processes running now: ``procs_running - 1`` (least of ``samples``), else load."""
    import time

    counts = []
    for i in range(samples):
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("procs_running"):
                        counts.append(int(line.split()[1]) - 1)  # minus this process
                        break
        except (OSError, ValueError):
            break
        if i + 1 < samples:
            time.sleep(gap)
    if counts:
        return float(max(0, min(counts)))
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


#: ``features.workers: auto`` on an accelerator uses at most this many decode threads (each holds
#: about two videos' frames ahead of the encoder).
MAX_AUTO_DECODE_WORKERS = 32


def decode_workers(setting: int | str, device: object) -> int:
    """The decode threads for ``features.workers`` (``setting``) when encoding on ``device``.

    A number is the user's and is kept. ``auto``:

    - on the CPU, 2: the encoder needs the cores, and decoding costs it little (a frame's decode
      and preprocessing is about 1.5% of ViT-B/32's time for it; measured with 2 workers on 2
      cores: the pipeline at 0.98 of the encoder alone);
    - on an accelerator, this process's share of the cores minus one, the thread that feeds the
      device: ``cores // LOCAL_WORLD_SIZE - 1`` (torchrun's processes on this machine), from 2
      to :data:`MAX_AUTO_DECODE_WORKERS`. A GPU outruns a few decode threads by far: one H200
      encoded 5,550 ViT-B/16 frames/s in fp16, one decode thread delivered 624 JPEG frames/s and
      124 from video files (``benchmarks/gpu_check.py``; the JPEG cost per frame has halved
      since), and with 2 workers the pipeline ran at 0.23 of the encoder.
    """
    if setting != "auto":
        return int(setting)
    if str(device).split(":")[0] == "cpu":
        return 2
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(2, min(MAX_AUTO_DECODE_WORKERS, available_cores() // local - 1))


def passive_waiting() -> bool:
    """Whether this process's idle OpenMP threads sleep: ``OMP_WAIT_POLICY`` is ``passive``, as
    :func:`configure_threads` sets it unless the user chose another policy."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive"


def configure_threads(threads: int | None = None) -> ThreadChoice:
    """Choose the thread count and OpenMP wait policy (set in the environment and in torch).

    Args:
        threads: use this many threads (wins over everything); None: ``OMP_NUM_THREADS`` if set,
            else :func:`choose_threads` from the cores and the 1-minute load average.
    Returns:
        the :class:`ThreadChoice` (also logged at debug level).
    """
    if threads is not None and threads < 1:
        from .errors import FsarError

        raise FsarError(f"--threads {threads}: use 1 or more threads")
    env = os.environ
    policy = env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is not None:
        n, source = int(threads), "--threads"
    elif env.get("OMP_NUM_THREADS", "").strip().isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        n, source = int(env["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        n, source = choose_threads(available_cores(), other_running()), "load"
    env["OMP_NUM_THREADS"] = str(n)  # read by torch's OpenMP runtime when it starts
    env.setdefault("MKL_NUM_THREADS", str(n))
    if "torch" in sys.modules:  # already started: the count can still change, the policy not
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    choice = ThreadChoice(n, policy, source)
    log.debug("threads: %d (%s), OMP_WAIT_POLICY=%s", n, source, policy)
    return choice
