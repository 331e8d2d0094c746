"""Evaluation speed: fsar's evaluator vs a straightforward per-episode loop, in one process.

Synthetic cached features shaped like Kinetics-100's test split (24 classes x 100 videos, T = 8,
D = 512), the ``clipfsar`` head at its reference size (random init, eval mode), 10,000 5-way
1-shot episodes with 1 query per class (the protocol of METHOD.md section 6).

- fsar: episode sampling plus ``fsar_cli.evaluation.batched.episode_accuracies`` on all episodes.
- naive: per episode, ``head.episode_logits`` (Transformer on the W supports with their text and
  on the W queries, then OTAM), timed on the first ``--naive`` episodes and extrapolated linearly
  to all of them (the output says so). Its tiny per-episode ops run faster on one thread on a busy
  machine, so it runs with whichever of 1 and ``--threads`` threads is faster on a short probe.
  The per-episode accuracies of those episodes must be identical between the two.

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set): on a shared machine their
default busy-waiting burns the other core and doubles fsar's CPU time. Both sides run under it.

Usage: ``python benchmarks/eval_speed.py [--episodes 10000] [--naive 500] [--threads 2]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fsar_cli.episodes import EpisodeSampler  # noqa: E402
from fsar_cli.evaluation.batched import episode_accuracies, loop_episode_accuracies  # noqa: E402
from fsar_cli.features.synthetic import synthetic_store  # noqa: E402
from fsar_cli.models import create_head  # noqa: E402
from fsar_cli.recipe import ModelCfg  # noqa: E402


def _timed(fn):  # type: ignore[no-untyped-def]
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=10_000)
    ap.add_argument("--naive", type=int, default=500, help="episodes timed in the naive loop")
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--shot", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for fsar")
    args = ap.parse_args()
    torch.manual_seed(0)
    E, n = args.episodes, min(args.naive, args.episodes)

    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(
            Path(tmp) / "test", n_classes=24, videos_per_class=100, n_frames=8, dim=512, noise=5.0
        )
        head = create_head("clipfsar", store.dim, ModelCfg()).eval()
        feats, text, labels = store.features, store.text, store.labels
        print(
            f"store: {store.n_videos} videos x {store.num_frames} frames x {store.dim}; clipfsar "
            f"head ({sum(p.numel() for p in head.parameters()):,} parameters, random init); "
            f"{args.way}-way {args.shot}-shot, 1 query; load average {os.getloadavg()[0]:.1f}; "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
        )

        # fsar: sampling + evaluation of every episode
        torch.set_num_threads(args.threads)

        def fsar() -> np.ndarray:
            batch = EpisodeSampler(labels, args.way, args.shot, 1, seed=0).sample(E)
            return episode_accuracies(head, feats, text, batch)

        fast, t_fast, c_fast = _timed(fsar)

        # naive: per-episode loop on the first n episodes, at its faster thread count
        part = EpisodeSampler(labels, args.way, args.shot, 1, seed=0).sample(n)
        probe = part.slice(0, min(20, n))
        speed = {}
        for threads in sorted({1, args.threads}):
            torch.set_num_threads(threads)
            loop_episode_accuracies(head, feats, text, probe.slice(0, 2))  # warm-up
            speed[threads] = _timed(lambda: loop_episode_accuracies(head, feats, text, probe))[1]
        naive_threads = min(speed, key=speed.__getitem__)
        torch.set_num_threads(naive_threads)

        def naive_loop() -> np.ndarray:
            b = EpisodeSampler(labels, args.way, args.shot, 1, seed=0).sample(n)
            return loop_episode_accuracies(head, feats, text, b)

        naive, t_naive_n, c_naive_n = _timed(naive_loop)
        t_naive = t_naive_n * E / n

    same = np.array_equal(fast[:n], naive)
    print(
        f"fsar : {E} episodes in {t_fast:7.2f} s ({E / t_fast:6.0f} episodes/s; CPU {c_fast:.2f} "
        f"s; {args.threads} threads)  mean accuracy {fast.mean():.4f}"
    )
    print(
        f"naive: {n} episodes in {t_naive_n:7.2f} s ({n / t_naive_n:6.0f} episodes/s; CPU "
        f"{c_naive_n:.2f} s; {naive_threads} threads) -> {t_naive:.1f} s for {E}, extrapolated "
        f"linearly from the first {n}"
    )
    print(
        f"ratio: {t_naive / t_fast:.1f}x; per-episode accuracies of the first {n} episodes "
        f"identical: {same}"
    )
    if not same:
        raise SystemExit("fast and naive accuracies differ")


if __name__ == "__main__":
    main()
