"""Does the offline demo encoder carry the information the demo needs? An end-to-end probe.

Renders the synthetic test split (``fsar synth``), decodes every video, takes 8 centre-of-segment
frames, encodes them with the offline encoder's ``encode_image`` (preprocessed like the cache:
resize to the encoder's resolution, CLIP mean/std), and measures 5-way 1-shot accuracy (1 query
per class) over random episodes with two training-free classifiers:

- ``proto``: cosine to the frame-averaged support video (order-blind);
- ``otam``: bidirectional OTAM over 1 - cos frame distances (METHOD.md section 3).

The test split is made of reversed pairs (a motion and the same frames backwards), so ``otam``
should beat ``proto`` clearly, and both should be well above chance (20%). Also prints the
encoder's own zero-shot attribute accuracies. Run::

    .venv/bin/python benchmarks/offline_encoder_probe.py [--episodes 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fsar_cli.data.frames import read_frames, sample_indices
from fsar_cli.data.preprocess import preprocess_frames
from fsar_cli.data.splits import read_split
from fsar_cli.data.synth import render_dataset
from fsar_cli.encoders.offline import (
    DEFAULT_CONFIG,
    ensure_offline_encoder,
    evaluate_offline_encoder,
    load_offline_encoder,
)


def _cos_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(x, y) = x.y / (|x||y| + 0.01) for rows of a [La, D] and b [Lb, D] -> [La, Lb]."""
    return (a @ b.T) / (np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None] + 0.01)


def _smin(values: list[float], lam: float) -> float:
    v = np.asarray(values) / -lam
    m = v.max()
    return float(-lam * (m + np.log(np.exp(v - m).sum())))


def otam(d: np.ndarray, lam: float = 0.5) -> float:
    """Soft OTAM cumulative distance of a [Lq, Ls] distance matrix (METHOD.md section 3)."""
    lq, ls = d.shape
    dp = np.pad(d, ((0, 0), (1, 1)))  # one zero column on each side: [Lq, Ls + 2]
    c = np.zeros_like(dp)
    c[0] = np.cumsum(dp[0])
    for row in range(1, lq):
        c[row, 1] = dp[row, 1] + _smin([c[row - 1, 0], c[row - 1, 1], c[row, 0]], lam)
        for m in range(2, ls + 1):
            c[row, m] = dp[row, m] + _smin([c[row - 1, m - 1], c[row, m - 1]], lam)
        m = ls + 1
        c[row, m] = _smin([c[row - 1, m - 1], c[row - 1, m], c[row, m - 1]], lam)
    return float(c[lq - 1, ls + 1])


def episodes_accuracy(feats: np.ndarray, labels: np.ndarray, n: int, seed: int) -> dict[str, float]:
    """5-way 1-shot 1-query accuracy of proto and bidirectional OTAM over ``n`` episodes."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    hits = {"proto": [], "otam": []}
    for _ in range(n):
        way = rng.choice(classes, 5, replace=False)
        sup, qry = [], []
        for c in way:
            a, b = rng.choice(np.flatnonzero(labels == c), 2, replace=False)
            sup.append(a)
            qry.append(b)
        for target, q in enumerate(qry):
            mq = feats[q].mean(0, keepdims=True)
            proto = [_cos_matrix(mq, feats[s].mean(0, keepdims=True))[0, 0] for s in sup]
            dist = []
            for s in sup:
                d = 1.0 - _cos_matrix(feats[q], feats[s])  # [T query, T support]
                dist.append(otam(d) + otam(d.T))
            hits["proto"].append(int(np.argmax(proto)) == target)
            hits["otam"].append(int(np.argmin(dist)) == target)
    out = {}
    for k, v in hits.items():
        arr = np.asarray(v, np.float64)
        out[k] = (100 * arr.mean(), 100 * 1.96 * arr.std() / np.sqrt(len(arr)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synth-seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--cache-root", default=None, help="$FSAR_HOME for the encoder weights")
    ap.add_argument("--config", default="{}", help="JSON overrides of OfflineEncoderConfig")
    args = ap.parse_args()

    t0 = time.perf_counter()
    cfg = dataclasses.replace(DEFAULT_CONFIG, **json.loads(args.config))
    path = ensure_offline_encoder(args.cache_root, cfg=cfg)
    print(f"encoder: {path} ({time.perf_counter() - t0:.1f} s to train or find)")
    print("zero-shot:", evaluate_offline_encoder(path))
    model = load_offline_encoder(path)
    res = int(model.visual.input_resolution)

    with tempfile.TemporaryDirectory() as tmp:
        data = render_dataset(Path(tmp) / "synth", seed=args.synth_seed)
        entries = read_split(data.split_dir / "test_few_shot.txt", "test")
        feats, labels = [], []
        for e in entries:
            video = data.root / e.rel_path
            idx = sample_indices(data.settings["num_frames"], args.frames, "center")  # type: ignore[arg-type]
            frames = np.stack(read_frames(video, idx))  # [T, H, W, 3] uint8
            with torch.no_grad():
                f = model.encode_image(preprocess_frames(frames, res, res))  # [T, D]
            feats.append(f.numpy())
            labels.append(e.class_id)
    feats_arr, labels_arr = np.stack(feats), np.asarray(labels)  # [V, T, D], [V]
    n_cls = len(np.unique(labels_arr))
    print(f"test split: {len(labels_arr)} videos, {n_cls} classes ({n_cls // 2} reversed pairs)")
    acc = episodes_accuracy(feats_arr, labels_arr, args.episodes, args.seed)
    for k, (m, ci) in acc.items():
        print(
            f"5-way 1-shot {k:6s}: {m:5.1f} +- {ci:.1f} %  ({args.episodes} episodes; chance 20%)"
        )
    print(f"otam - proto: {acc['otam'][0] - acc['proto'][0]:+.1f} points")


if __name__ == "__main__":
    main()
