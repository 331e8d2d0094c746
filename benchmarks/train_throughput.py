"""Training throughput: ``fsar train``'s batched step vs a straightforward per-episode loop.

Synthetic cached features (64 classes x 10 videos, T = 8, D = 512), the ``clipfsar`` head at its
reference size with fsar's residual adapter (``ModelCfg()`` defaults), 5-way 1-shot episodes with 5
queries per class, 16 episodes per optimiser step (the reference's 4 GPUs x 4 accumulation).

- fsar: what ``meta_train`` does per step: sample the step's 16 episodes, gather their features
  (``episode_tensors``), one batched forward/backward (``head.batch_episode_loss``) and the Adam
  step (``train_step``).
- naive: the same episodes one at a time: sample, gather, ``head.episode_loss``, ``(loss /
  16).backward()``, and an Adam step every 16 episodes.

Both start from the same weights and run the same episodes (dropout active); after one warm-up
step each, their steps are timed alternately in this one process. Episodes per second and the
ratio are printed.

Usage: ``python benchmarks/train_throughput.py [--steps 10] [--threads 1] [--dim 512]
[--device cpu]``
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fsar_cli.episodes import EpisodeSampler
from fsar_cli.features.synthetic import synthetic_store
from fsar_cli.models import create_head
from fsar_cli.recipe import ModelCfg, TrainCfg
from fsar_cli.train.frozen_step import episode_tensors, train_step
from fsar_cli.train.schedule import build_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed optimiser steps per side")
    ap.add_argument("--episodes-per-step", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=512, help="feature width D")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    E = args.episodes_per_step
    cfg = TrainCfg(lr=1e-5, warmup_lr=1e-5, lr_step=0, episodes_per_step=E)
    lambda_vt = 1.2

    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(
            Path(tmp) / "train",
            n_classes=64,
            videos_per_class=10,
            dim=args.dim,
            noise=2.0,
            split="train",
        )
        sampler = EpisodeSampler(store.labels, 5, 1, 5, seed=0)
        text = torch.from_numpy(store.text).to(dev)  # (C, D)
        torch.manual_seed(0)
        head_a = create_head("clipfsar", store.dim, ModelCfg()).to(dev).train()
        head_b = copy.deepcopy(head_a)
        opt_a, opt_b = build_optimizer(head_a, cfg), build_optimizer(head_b, cfg)
        n_params = sum(p.numel() for p in head_a.parameters())
        print(
            f"store: {store.n_videos} videos x {store.num_frames} frames x {store.dim}; head "
            f"clipfsar + residual adapter ({n_params:,} parameters); 5-way 1-shot 5 queries, "
            f"{E} episodes per step; device {dev}, torch threads {torch.get_num_threads()}"
        )

        def fsar_step(step: int) -> float:
            batch = sampler.sample(E, start=step * E)
            ep = episode_tensors(batch, store.features, text, dev)
            return train_step(head_a, opt_a, ep, text, lambda_vt)["loss"]

        def naive_step(step: int) -> float:
            opt_b.zero_grad(set_to_none=True)
            total = 0.0
            for j in range(E):
                one = sampler.sample(1, start=step * E + j)
                ep = episode_tensors(one, store.features, text, dev)
                out = head_b.episode_loss(
                    ep.support[0], ep.support_labels[0], ep.query[0], ep.query_labels[0],
                    ep.class_text[0], ep.video_labels[0], text, lambda_vt,
                )  # fmt: skip
                (out["loss"] / E).backward()
                total += float(out["loss"].detach()) / E
            opt_b.step()
            return total

        def timed(fn, step: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = fn(step)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0, loss

        # one warm-up step each (same episodes); then the timed steps, alternating sides so that
        # a change in machine load hits both alike
        fsar_step(0), naive_step(0)
        t_fsar = t_naive = 0.0
        l_fsar, l_naive = [], []
        for step in range(1, args.steps + 1):
            dt, loss = timed(fsar_step, step)
            t_fsar, l_fsar = t_fsar + dt, [*l_fsar, loss]
            dt, loss = timed(naive_step, step)
            t_naive, l_naive = t_naive + dt, [*l_naive, loss]

    n = args.steps * E
    eps_fsar, eps_naive = n / t_fsar, n / t_naive
    print(f"fsar  (batched step): {eps_fsar:8.1f} episodes/s  ({t_fsar:.2f} s for {n} episodes)")
    print(f"naive (per episode):  {eps_naive:8.1f} episodes/s  ({t_naive:.2f} s for {n} episodes)")
    print(f"speed-up: {eps_fsar / eps_naive:.2f}x")
    # Same episodes and weights; only dropout masks differ (different RNG draws), so the losses
    # agree roughly, not exactly.
    print(f"mean loss fsar {np.mean(l_fsar):.4f}, naive {np.mean(l_naive):.4f}")


if __name__ == "__main__":
    main()
