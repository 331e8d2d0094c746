"""GPU checks in one run, one summary table: finetune memory, frozen training, cache, evaluation.

Prepared for the day a GPU is lent (``python benchmarks/gpu_check.py``, under 8 minutes on one
GPU, no internet: every CLIP is ``random:<arch>``, random weights, speed does not depend on them).
``--device cpu --tiny`` runs the same code end to end in seconds (tiny encoder, D = 32, few
episodes): the test suite runs it so the GPU run has no surprises.

1. finetune: one reference episode (5-way 1-shot 5-query, 8 frames, 224 px, ``random:ViT-B/16``)
   through ``benchmarks/finetune_memory.py``'s child (its own process per configuration):
   peak memory and step time, bf16 autocast, without and with activation checkpointing.
   Goal: < 12 GB.
2. frozen training: episodes/s of the batched step (``train_step`` on 16 episodes at once) vs a
   per-episode loop (``train_step`` on one episode at a time) on the same device. Goal >= 10x.
3. cache: frames/s of the encoder alone (fp16 on CUDA) vs the whole ``cache_features`` pipeline
   from JPEG frame folders and from video files, and one decode worker's frames/s (the workers the
   encoder needs).
   Goal >= 0.9.
4. evaluation: 10,000 5-way episodes, 1-shot and 5-shot (``episode_accuracies``).

Usage: ``python benchmarks/gpu_check.py [--device cuda] [--tiny]``
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
Row = tuple[str, str, str]  # check, measured, goal


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def finetune(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    arch = "random:tiny" if args.tiny else "random:ViT-B/16"
    for ckpt in (False, True):
        cmd = [sys.executable, str(HERE / "finetune_memory.py"), "--child", "--arch", arch]
        cmd += ["--device", args.device, "--steps", "1" if args.tiny else "3"]
        cmd += ["--warmup", "0" if args.tiny else "1"] + (["--ckpt"] if ckpt else [])
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            rows.append((f"finetune {arch} ckpt={ckpt}", "FAILED: " + out.stderr[-200:], ""))
            continue
        r = json.loads(line[0][7:])
        rows.append(
            (
                f"finetune episode, {r['precision']}, checkpointing {'on' if ckpt else 'off'}",
                f"peak {r['peak'] / 1e9:.2f} GB ({r['how']}), {r['step_s']:.2f} s/step",
                "< 12 GB",
            )
        )
    return rows


def frozen(args: argparse.Namespace, dev: torch.device) -> list[Row]:
    from fsar_cli.episodes import EpisodeSampler
    from fsar_cli.features.synthetic import synthetic_store
    from fsar_cli.models import create_head
    from fsar_cli.recipe import ModelCfg, TrainCfg
    from fsar_cli.train.frozen_step import episode_tensors, train_step
    from fsar_cli.train.schedule import build_optimizer

    dim, E = (32, 4) if args.tiny else (512, 16)
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp) / "train", 16, 10, dim=dim, split="train")
        cfg = ModelCfg(num_heads=4, ffn_dim=64) if args.tiny else ModelCfg()
        torch.manual_seed(0)
        head = create_head("clipfsar", dim, cfg).to(dev).train()
        opt = build_optimizer(head, TrainCfg())
        text = torch.from_numpy(store.text).float().to(dev)
        sampler = EpisodeSampler(store.labels, 5, 1, 5, seed=0)
        steps = 2 if args.tiny else 10
        batches = [
            episode_tensors(sampler.sample(E, start=s * E), store.features, text, dev)
            for s in range(steps + 1)
        ]

        def batched() -> float:
            train_step(head, opt, batches[0], text, 1.0)  # warm-up
            _sync(dev)
            t0 = time.perf_counter()
            for ep in batches[1:]:
                train_step(head, opt, ep, text, 1.0)
            _sync(dev)
            return steps * E / (time.perf_counter() - t0)

        def loop() -> float:
            _sync(dev)
            t0 = time.perf_counter()
            for ep in batches[1:]:
                for i in range(E):
                    train_step(head, opt, ep.slice(i, i + 1), text, 1.0)
            _sync(dev)
            return steps * E / (time.perf_counter() - t0)

        b, lp = batched(), loop()
    return [
        (
            f"frozen training, {E} episodes per step, D={dim}",
            f"batched {b:.0f} vs loop {lp:.0f} episodes/s: {b / lp:.1f}x",
            ">= 10x",
        )
    ]


def cache(args: argparse.Namespace, dev: torch.device) -> list[Row]:
    import cache_throughput as ct

    from fsar_cli.data.frames import read_frames
    from fsar_cli.data.preprocess import ViewSpec, load_views, normalize, preprocess_frames
    from fsar_cli.encoders.clip import load_encoder
    from fsar_cli.features.cache import cache_features
    from fsar_cli.recipe import recipe_from_dict

    arch = "random:tiny" if args.tiny else "random:ViT-B/16"
    videos, bs = (4, 16) if args.tiny else (48, 128)
    enc = load_encoder(arch, device=str(dev))
    if dev.type == "cuda":
        enc.model.half()
    res, T = enc.input_resolution, ct.T
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folders = ct.make_frames(tmp / "frames", videos)
        n = videos * T
        spec = ViewSpec("test", T, 1, "center", "center", resize=res * 8 // 7, crop=res)
        t0 = time.perf_counter()
        for f in folders:
            normalize(load_views(f, f.name, spec)[0].flatten(0, 1))
        decode_fps = n / (time.perf_counter() - t0)
        images = torch.cat([preprocess_frames(read_frames(f), spec.resize, res) for f in folders])
        enc.encode_images(images[:bs], bs)  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        enc.encode_images(images, bs)
        _sync(dev)
        enc_fps = n / (time.perf_counter() - t0)
        # the same entries as video files (the fixture videos, copied under the split layout)
        videos_root = tmp / "videos"
        sources = sorted((ct.SHARED / "fixtures" / "videos").iterdir())
        for v in range(videos):
            src = sources[v % len(sources)]
            dst = videos_root / "test" / f"test{v % 4}" / f"{v:05d}{src.suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        need = math.ceil(enc_fps / max(decode_fps, 1e-9))
        rows: list[Row] = []
        for kind in ("JPEG folders", "video files"):
            data = {
                "split_dir": str(tmp / "frames"),
                "frames_root": str(tmp / "frames"),
                "frames_layout": "{split}/{class_field}/{video_id}",
                "root": str(videos_root),
                "video_layout": "{split}/{class_field}/{video_id}.{ext}",
                "video_exts": ["mp4", "avi"],
                "classes": {"test": ["a", "b", "c", "d"]},
            }
            features = {
                "encoder": arch,
                "num_frames": T,
                "resize": spec.resize,
                "crop": res,
                "batch_size": bs,
                "chunk_videos": 64,
                "cache_dir": str(tmp / f"cache-{kind[0]}"),
                "sampling": {"test": "center"},
                "source": "frames" if kind == "JPEG folders" else "videos",
            }
            recipe = recipe_from_dict({"name": "gpu-check", "data": data, "features": features})
            t0 = time.perf_counter()
            result = cache_features(recipe, ("test",), encoder=enc, device=str(dev))
            pipe_fps = n / (time.perf_counter() - t0)
            ok = result.splits["test"].ok
            if ok != videos:
                raise SystemExit(f"cache from {kind}: {ok} of {videos} videos cached")
            rows.append(
                (
                    f"cache {arch}{' fp16' if dev.type == 'cuda' else ''}, {kind}, "
                    f"{recipe.features.workers} workers",
                    f"pipeline {pipe_fps:.0f} / encoder {enc_fps:.0f} frames/s = "
                    f"{pipe_fps / enc_fps:.2f} ({ok}/{videos} videos); one decode worker "
                    f"{decode_fps:.0f} frames/s (JPEG): {need} workers needed",
                    ">= 0.9",
                )
            )
    return rows


def evaluation(args: argparse.Namespace, dev: torch.device) -> list[Row]:
    from fsar_cli.episodes import EpisodeSampler
    from fsar_cli.evaluation.batched import episode_accuracies
    from fsar_cli.features.synthetic import synthetic_store
    from fsar_cli.models import create_head
    from fsar_cli.recipe import ModelCfg

    rows: list[Row] = []
    dim, E = (32, 200) if args.tiny else (512, 10_000)
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp) / "test", 24, 100, dim=dim, noise=5.0)
        cfg = ModelCfg(num_heads=4, ffn_dim=64) if args.tiny else ModelCfg()
        torch.manual_seed(0)
        head = create_head("clipfsar", dim, cfg).to(dev).eval()
        for shot in (1, 5):
            batch = EpisodeSampler(store.labels, 5, shot, 1, seed=0).sample(E)
            _sync(dev)
            t0 = time.perf_counter()
            accs = episode_accuracies(head, store.features, store.text, batch, device=str(dev))
            _sync(dev)
            dt = time.perf_counter() - t0
            rows.append(
                (
                    f"eval {E} 5-way {shot}-shot episodes",
                    f"{dt:.2f} s (mean acc {accs.mean():.3f})",
                    "",
                )
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: an end-to-end smoke run")
    args = ap.parse_args()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    t0 = time.perf_counter()
    rows: list[Any] = []
    for part in (
        lambda: finetune(args),
        lambda: frozen(args, dev),
        lambda: cache(args, dev),
        lambda: evaluation(args, dev),
    ):
        rows += part()
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    print(
        f"gpu_check on {name} ({args.device}{', tiny' if args.tiny else ''}), "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(f"{'check':{w[0]}} | {'measured':{w[1]}} | goal")
    print(f"{'-' * w[0]}-+-{'-' * w[1]}-+-{'-' * max(4, w[2])}")
    for r in rows:
        print(f"{r[0]:{w[0]}} | {r[1]:{w[1]}} | {r[2]}")


if __name__ == "__main__":
    main()
