"""GPU checks in one run, one summary table: finetune memory, frozen training, cache, evaluation.

``python benchmarks/gpu_check.py``: 62 s on one H200 (README, "On a GPU"), no internet: every
CLIP is ``random:<arch>``, random weights (speed does not depend on them). Threads are configured
as the fsar CLI configures them. A part that fails reports FAILED in its row (exit status 1).
``--device cpu --tiny`` runs the same code end to end in seconds (tiny encoder, D = 32, few
episodes): the test suite runs it so the GPU run has no surprises.

1. finetune: one reference episode (5-way 1-shot 5-query, 8 frames, 224 px, ``random:ViT-B/16``)
   through ``benchmarks/finetune_memory.py``'s child (its own process per configuration):
   peak memory and step time, bf16 autocast, without and with activation checkpointing.
   Goal: < 12 GB.
2. frozen training: episodes/s of the batched step (``train_step`` on 16 episodes at once) vs a
   per-episode loop (``train_step`` on one episode at a time) on the same device. Goal >= 10x.
3. cache: frames/s of the encoder alone (``encode_uint8``, the pipeline's own call: fp16 autocast
   on CUDA) vs the whole ``cache_features`` pipeline, from 512 JPEG frame folders and from 48
   video files, with the default workers (``auto``: the cores minus one on a GPU) and with the
   workers the encoder needs (encoder rate / one decode thread's rate, at most the cores).
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
import traceback
from pathlib import Path

from fsar_cli.threads import available_cores, configure_threads, decode_workers

# As the fsar CLI does, before torch starts: the thread count, and OpenMP threads that sleep when
# they wait (spinning ones take the cores the decode workers need).
THREADS = configure_threads()

import torch  # noqa: E402

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
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
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

    from fsar_cli.data.preprocess import ViewSpec, load_views
    from fsar_cli.encoders.clip import load_encoder
    from fsar_cli.features.cache import cache_features
    from fsar_cli.recipe import FeaturesCfg, recipe_from_dict

    arch = "random:tiny" if args.tiny else "random:ViT-B/16"
    # JPEG folders: `base` cut from the fixture videos, copied up to `n_jpeg` (enough frames for
    # the encoder to run for seconds); video files: `n_video` copies of the four fixture videos.
    base, n_jpeg, n_video, bs = (4, 4, 4, 16) if args.tiny else (48, 512, 48, 128)
    enc = load_encoder(arch, device=str(dev))  # fp16 autocast on CUDA, as `fsar cache` runs it
    res, T = enc.input_resolution, ct.T
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folders = ct.make_frames(tmp / "frames", base)
        for v in range(base, n_jpeg):
            dst = tmp / "frames" / "test" / f"test{v % 4}" / f"{v:05d}"
            shutil.copytree(folders[v % base], dst)
            folders.append(dst)
        (tmp / "frames" / "test_few_shot.txt").write_text(
            "".join(f"test{v % 4}/{v:05d}\n" for v in range(n_jpeg))
        )
        videos_root = tmp / "videos"
        sources = sorted((ct.SHARED / "fixtures" / "videos").iterdir())
        files = []
        for v in range(n_video):
            src = sources[v % len(sources)]
            dst = videos_root / "test" / f"test{v % 4}" / f"{v:05d}{src.suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            files.append(dst)
        (videos_root / "test_few_shot.txt").write_text(
            "".join(f"test{v % 4}/{v:05d}\n" for v in range(n_video))
        )
        spec = ViewSpec("test", T, 1, "center", "center", resize=res * 8 // 7, crop=res)

        def one_worker(sources: list[Path]) -> tuple[float, torch.Tensor]:
            """Frames/s of decode + preprocess in one thread, and the uint8 crops."""
            load_views(sources[0], sources[0].name, spec)  # warm-up (codec, allocator)
            t0 = time.perf_counter()
            clips = [load_views(f, f.name, spec)[0].flatten(0, 1) for f in sources]
            return len(sources) * T / (time.perf_counter() - t0), torch.cat(clips)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as a decode worker runs (one torch thread each)
        jpeg_fps, crops = one_worker(folders[:base])
        video_fps, _ = one_worker(files[: min(4, n_video)])
        torch.set_num_threads(threads)
        crops = crops.repeat(math.ceil(n_jpeg / base), 1, 1, 1)[: n_jpeg * T]

        def encoder_alone() -> float:  # the pipeline's own encoder call on crops in memory
            _sync(dev)
            t0 = time.perf_counter()
            for i in range(0, len(crops), bs):
                enc.encode_uint8(crops[i : i + bs])
            _sync(dev)
            return len(crops) / (time.perf_counter() - t0)

        encoder_alone()  # warm-up
        enc_fps = max(encoder_alone() for _ in range(3))
        cores = available_cores()
        rows: list[Row] = []
        for kind, one_fps, n in (
            ("JPEG folders", jpeg_fps, n_jpeg),
            ("video files", video_fps, n_video),
        ):
            need = math.ceil(enc_fps / max(one_fps, 1e-9))
            default = decode_workers(FeaturesCfg().workers, dev)  # "auto" on this device
            for workers in dict.fromkeys((default, min(need, cores))):
                split_dir = tmp / ("frames" if kind == "JPEG folders" else "videos")
                data = {
                    "split_dir": str(split_dir),
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
                    "workers": workers,
                    "chunk_videos": 64,
                    "cache_dir": str(tmp / f"cache-{kind[0]}-{workers}"),
                    "sampling": {"test": "center"},
                    "source": "frames" if kind == "JPEG folders" else "videos",
                }
                recipe = recipe_from_dict({"name": "gpu-check", "data": data, "features": features})
                t0 = time.perf_counter()
                result = cache_features(recipe, ("test",), encoder=enc, device=str(dev))
                pipe_fps = n * T / (time.perf_counter() - t0)
                ok = result.splits["test"].ok
                if ok != n:
                    raise RuntimeError(f"cache from {kind}: {ok} of {n} videos cached")
                how = ("default (auto) " if workers == default else "") + f"{workers} workers"
                rows.append(
                    (
                        f"cache {arch}{' fp16' if dev.type == 'cuda' else ''}, {kind}, {how}",
                        f"pipeline {pipe_fps:.0f} / encoder {enc_fps:.0f} frames/s = "
                        f"{pipe_fps / enc_fps:.2f} ({ok} videos); one worker decodes "
                        f"{one_fps:.0f} frames/s: {need} workers needed, {cores} cores",
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
    t0 = time.perf_counter()
    rows: list[Row] = []
    parts = (
        ("finetune", lambda: finetune(args)),
        ("frozen training", lambda: frozen(args, dev)),
        ("cache", lambda: cache(args, dev)),
        ("eval", lambda: evaluation(args, dev)),
    )
    for name, part in parts:  # one part failing still leaves the others' rows
        t1 = time.perf_counter()
        try:
            new = part()
        except Exception as e:  # noqa: BLE001 - reported in the table, exit status 1
            traceback.print_exc()
            new = [(name, f"FAILED: {type(e).__name__}: {e}"[:300], "")]
        print(f"[{time.perf_counter() - t0:.0f} s] {name} ({time.perf_counter() - t1:.0f} s)")
        for r in new:
            print("    " + " | ".join(r), flush=True)
        rows += new
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    print(
        f"\ngpu_check on {name_of(dev)} ({args.device}{', tiny' if args.tiny else ''}), "
        f"torch {torch.__version__}, {THREADS.threads} CPU threads ({THREADS.source}, "
        f"OMP_WAIT_POLICY={THREADS.wait_policy}), {time.perf_counter() - t0:.0f} s"
    )
    print(f"{'check':{w[0]}} | {'measured':{w[1]}} | goal")
    print(f"{'-' * w[0]}-+-{'-' * w[1]}-+-{'-' * max(4, w[2])}")
    for r in rows:
        print(f"{r[0]:{w[0]}} | {r[1]:{w[1]}} | {r[2]}")
    if any(r[1].startswith("FAILED") for r in rows):
        sys.exit(1)


def name_of(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"


if __name__ == "__main__":
    main()
