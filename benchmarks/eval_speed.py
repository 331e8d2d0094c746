"""Evaluation speed: fsar's evaluator vs a straightforward per-episode loop, in one process.

Synthetic cached features shaped like Kinetics-100's test split (24 classes x 100 videos, T = 8,
D = 512), the ``clipfsar`` head at its reference size (random init, eval mode), 10,000 5-way
K-shot episodes with 1 query per class (the protocol of METHOD.md section 6).

- fsar: episode sampling plus ``fsar_cli.evaluation.batched.episode_accuracies`` on all episodes,
  run ``--repeats`` times; the median run is broken down into sampling, Transformer (per-video
  query / support encodings, and merged prototypes for K > 1) and matching (cosine + OTAM), with
  the Transformer's achieved GFLOP/s beside this CPU's measured fp32 matmul rate (its best and
  its median half-second window: on a shared machine they differ by up to 1.5x). The
  evaluator's gathers of encodings (``_take``) are timed apart; the frame products are set
  beside their floor, the same matmuls on operands already in cache. Where the evaluator
  matches in worker threads (per-video heads with passive OpenMP waiting, fsar's default), the
  matching and gather times are thread-seconds shared out over the workers, and the stage's
  wall time is printed beside them.
- ``--precision bf16``: each fp32 run is paired with an adjacent bf16 run (autocast, matching in
  fp32); prints the median time ratio, the share of query decisions (arg-max class) and of
  episode accuracies that change, and the change in mean accuracy.
- naive: per episode, ``head.episode_logits``, timed on the first ``--naive`` episodes and
  extrapolated linearly (the output says so), at whichever of 1 and ``--threads`` threads is
  faster on a short probe. The per-episode accuracies of those episodes must be identical.

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set). The load average is
printed: on a shared machine every time is inflated.

Usage: ``python benchmarks/eval_speed.py [--episodes 10000] [--shot 1] [--naive 500]
[--threads 2] [--repeats 3] [--precision fp32|bf16]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fsar_cli.episodes import EpisodeSampler  # noqa: E402
from fsar_cli.evaluation import batched  # noqa: E402
from fsar_cli.evaluation.batched import (  # noqa: E402
    episode_accuracies,
    episode_logits,
    loop_episode_accuracies,
)
from fsar_cli.features.synthetic import synthetic_store  # noqa: E402
from fsar_cli.models import create_head  # noqa: E402
from fsar_cli.models.otam import frame_products  # noqa: E402
from fsar_cli.models.precision import compute_precision  # noqa: E402
from fsar_cli.recipe import ModelCfg  # noqa: E402


def _timed(fn):  # type: ignore[no-untyped-def]
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def matmul_rates(window: float = 0.5, rounds: int = 3) -> tuple[float, float]:
    """fp32 GFLOP/s of torch.mm over the shapes the Transformer uses (and a square one), in
    ``rounds`` x 3 windows of ``window`` seconds: (best window, median window).

    On a shared machine consecutive windows swing by 1.5x, so the best window overstates what a
    long run can sustain; both are printed, and the Transformer's rate is given against each.
    """
    rates = []
    shapes = ((2304, 512, 2048), (2304, 2048, 512), (2048, 2048, 2048))
    for m, k, n in shapes * rounds:
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < window:
            torch.mm(a, b)
            reps += 1
        rates.append(2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return max(rates), statistics.median(rates)


def product_floor(
    episodes: int, way: int, frames: int, dim: int, workers: int = 1, repeats: int = 5
) -> float:
    """Seconds of the frame products' own matmuls on operands already in cache: ``episodes``
    episodes' :func:`~fsar_cli.models.otam.frame_products` (``way`` queries x ``way``
    prototypes of ``frames`` frames) in steps of the evaluator's ``_PRODUCT_BLOCK``, run as the
    evaluator runs them: with ``workers`` > 1, split over that many threads with one torch
    thread each (wall time, median of ``repeats``). What the products would cost with free
    gathers: their floor here."""
    sub = batched._PRODUCT_BLOCK
    q, p = torch.randn(sub, way, frames, dim), torch.randn(sub, way, frames, dim)
    steps = range(0, episodes, sub)

    def part(i: int) -> None:
        if workers > 1:
            torch.set_num_threads(1)  # this thread only
        for _ in steps[i::workers]:
            frame_products(q, p)

    times = []
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(part, range(workers)))
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def transformer_flops(seqs: int, length: int, keep: int, dim: int, ffn: int) -> float:
    """Multiply-add FLOPs of one Transformer layer on ``seqs`` sequences of ``length`` tokens,
    outputs of the first ``keep``: k/v on all tokens; q, attention, out and FFN on ``keep``."""
    kv = 2 * length * dim * 2 * dim
    q_out = 2 * keep * dim * dim * 2
    att = 2 * 2 * keep * length * dim
    ff = 2 * 2 * keep * dim * ffn
    return float(seqs * (kv + q_out + att + ff))


_TRANSFORMER = ("encode_query", "encode_support", "prototypes")
_MATCHING = ("match", "frame_products", "match_products")


class Instrumented:
    """Wraps a head's encode_query / encode_support / prototypes (Transformer) and match,
    frame_products / match_products (matching): wall time and FLOPs."""

    def __init__(self, head: Any, ffn: int) -> None:
        self.head, self.ffn = head, ffn
        self.t: dict[str, float] = defaultdict(float)
        self.flops = 0.0
        self.product_flops = 0.0
        self.lock = threading.Lock()  # the matching stage may run in worker threads
        for name in _TRANSFORMER + _MATCHING:
            if hasattr(head, name):
                setattr(head, name, self._wrap(name, getattr(head, name)))
        take = batched._take

        def timed_take(enc: torch.Tensor, rows: np.ndarray) -> torch.Tensor:  # the gathers
            t0 = time.perf_counter()
            out = take(enc, rows)
            dt = time.perf_counter() - t0
            with self.lock:
                self.t["gathers"] += dt
            return out

        batched._take = timed_take

    def reset(self) -> None:
        self.t.clear()
        self.flops = self.product_flops = 0.0

    def _wrap(self, name: str, fn: Any) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            x = args[0]
            t0 = time.perf_counter()
            out = fn(*args, **kw)
            matching = name in _MATCHING
            dt = time.perf_counter() - t0
            with self.lock:
                self.t["matching" if matching else "transformer"] += dt
                if name == "frame_products":  # [..., Nq*T, D] x [..., W*T, D]
                    self.t["products"] += dt
                    self.product_flops += 2.0 * out.numel() * x.shape[-1]
                if not matching:
                    t, d = x.shape[-2], x.shape[-1]
                    seqs = x[..., 0, 0, 0].numel() if name == "prototypes" else x[..., 0, 0].numel()
                    text = 0 if name == "encode_query" else 1
                    self.flops += transformer_flops(seqs, t + text, t, d, self.ffn)
            return out

        return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=10_000)
    ap.add_argument("--naive", type=int, default=500, help="episodes timed in the naive loop")
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--shot", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for fsar")
    ap.add_argument("--repeats", type=int, default=3, help="fsar runs (median reported)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    torch.manual_seed(0)
    E, n = args.episodes, min(args.naive, args.episodes)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(
            Path(tmp) / "test", n_classes=24, videos_per_class=100, n_frames=8, dim=512, noise=5.0
        )
        cfg = ModelCfg()
        head = create_head("clipfsar", store.dim, cfg).eval()
        feats, text, labels = store.features, store.text, store.labels
        print(
            f"store: {store.n_videos} videos x {store.num_frames} frames x {store.dim}; clipfsar "
            f"head ({sum(p.numel() for p in head.parameters()):,} parameters, random init); "
            f"{args.way}-way {args.shot}-shot, 1 query; {args.threads} threads; "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; load average "
            f"{os.getloadavg()[0]:.1f} (busy machine if above ~0.5)"
        )
        peak, typical = matmul_rates()
        print(
            f"fp32 matmul rate of this CPU (torch.mm, {args.threads} threads, 9 windows of 0.5 s): "
            f"best {peak:.0f} GFLOP/s, median {typical:.0f} GFLOP/s"
        )
        inst = Instrumented(head, cfg.ffn_dim)

        def sample() -> Any:
            return EpisodeSampler(labels, args.way, args.shot, 1, seed=0).sample(E)

        runs: list[dict[str, float]] = []
        bf16_runs: list[float] = []
        fast = np.zeros(0)
        for _ in range(max(1, args.repeats)):
            inst.reset()
            batch, t_sample, _ = _timed(sample)
            fast, t_eval, c_eval = _timed(lambda b=batch: episode_accuracies(head, feats, text, b))
            runs.append(
                {
                    "total": t_sample + t_eval,
                    "cpu": c_eval,
                    "sampling": t_sample,
                    "transformer": inst.t["transformer"],
                    "matching": inst.t["matching"],
                    "products": inst.t["products"],
                    "gathers": inst.t["gathers"],
                    "flops": inst.flops,
                    "product_flops": inst.product_flops,
                }
            )
            if args.precision == "bf16":  # adjacent pair
                with compute_precision("bf16", "cpu"):
                    bf16_runs.append(
                        _timed(lambda b=batch: episode_accuracies(head, feats, text, b))[1]
                    )
        med = sorted(runs, key=lambda r: r["total"])[len(runs) // 2]
        # per-video heads match in worker threads (one torch thread each) where fsar uses them:
        # their per-call times are thread-seconds, shared out over the workers
        workers = batched._matching_workers(head, args.shot, "cpu")
        matching, gathers = med["matching"] / workers, med["gathers"] / workers
        products = med["products"] / workers
        other = med["total"] - med["sampling"] - med["transformer"] - matching - gathers
        print(
            f"fsar : {E} episodes in {med['total']:7.2f} s ({E / med['total']:6.0f} episodes/s; "
            f"median of {len(runs)}; CPU {med['cpu']:.2f} s)  mean accuracy {fast.mean():.4f}"
        )
        print(
            f"  sampling {med['sampling']:.3f} s | Transformer {med['transformer']:.3f} s "
            f"({med['flops'] / 1e9:.1f} GFLOP: {med['flops'] / med['transformer'] / 1e9:.0f} "
            f"GFLOP/s = {med['flops'] / med['transformer'] / 1e9 / peak:.0%} of the best matmul "
            f"window, {med['flops'] / med['transformer'] / 1e9 / typical:.0%} of the median) "
            f"| matching {matching:.3f} s | gathers {gathers:.3f} s | other "
            f"(concatenation, arg-max, accuracies) {other:.3f} s"
        )
        if workers > 1:
            stage = med["total"] - med["sampling"] - med["transformer"]
            print(
                f"  the matching stage ran in {workers} worker threads with 1 torch thread each: "
                f"{stage:.3f} s wall; its matching and gathers are thread-seconds / {workers} "
                f"({med['matching']:.3f} and {med['gathers']:.3f} thread-seconds)"
            )
        if med["products"] > 0:
            rate = med["product_flops"] / products / 1e9
            print(
                f"  matching = frame products {products:.3f} s "
                f"({med['product_flops'] / 1e9:.1f} GFLOP: {rate:.0f} GFLOP/s = {rate / peak:.0%} "
                f"of the best matmul window) + cosine and OTAM {matching - products:.3f} s"
            )
            floor = product_floor(E, args.way, store.num_frames, store.dim, workers)
            print(
                f"  frame products' floor: the same {E} matmuls on operands already in cache, "
                f"run as the evaluator runs them, {floor:.3f} s "
                f"({med['product_flops'] / floor / 1e9:.0f} GFLOP/s); the evaluator's products "
                f"take {products / floor:.2f}x that"
            )
        if args.precision == "bf16":
            fp32_eval = [r["total"] - r["sampling"] for r in runs]
            ratios = [a / b for a, b in zip(fp32_eval, bf16_runs, strict=True)]
            batch = sample()
            lg32 = episode_logits(head, feats, text, batch)
            with compute_precision("bf16", "cpu"):
                lg16 = episode_logits(head, feats, text, batch)
                acc16 = episode_accuracies(head, feats, text, batch)
            changed = float((lg32.argmax(-1) != lg16.argmax(-1)).mean())
            ep_changed = float((acc16 != fast).mean())
            print(
                f"bf16 : evaluation {statistics.median(bf16_runs):.2f} s, fp32/bf16 "
                f"{statistics.median(ratios):.2f}x (median of {len(ratios)} adjacent pairs); "
                f"query decisions changed {changed:.2%}, episode accuracies changed "
                f"{ep_changed:.2%}, mean accuracy {acc16.mean():.4f} "
                f"({acc16.mean() - fast.mean():+.4f} vs fp32)"
            )

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
        f"naive: {n} episodes in {t_naive_n:7.2f} s ({n / t_naive_n:6.0f} episodes/s; CPU "
        f"{c_naive_n:.2f} s; {naive_threads} threads) -> {t_naive:.1f} s for {E}, extrapolated "
        f"linearly from the first {n}"
    )
    print(
        f"ratio: {t_naive / med['total']:.1f}x; per-episode accuracies of the first {n} "
        f"episodes identical: {same}"
    )
    if not same:
        raise SystemExit("fast and naive accuracies differ")


if __name__ == "__main__":
    main()
