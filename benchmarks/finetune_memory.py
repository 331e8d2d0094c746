"""Fine-tuning memory: peak memory and speed of one end-to-end training step, with and without
activation checkpointing of the visual tower.

One reference-sized training episode (5-way 1-shot 5-query = 30 videos x 8 frames = 240 images at
the tower's resolution, synthetic uint8 frames) goes through what ``fsar train --mode finetune``
does per episode (:func:`train.tower.episode_loss`: normalise on the device, the CLIP visual
tower under autocast (bf16 on CUDA with ``--amp``), the ``clipfsar`` head at its reference size
with the video-text loss over 64 classes), then backward and the Adam step of
:func:`fsar_cli.train.schedule.build_optimizer` over the tower and the head.

Each configuration runs in its own child process, so peaks do not mix: on CUDA the peak is
``torch.cuda.max_memory_allocated`` (weights, gradients, Adam state and activations: what must fit
on the card); on the CPU it is the process's peak resident memory (``VmHWM`` of
``/proc/self/status``, reset before the first step through ``/proc/self/clear_refs``), also shown
as the growth over the memory held before the first step. Speed: episodes per second over the timed
steps (after ``--warmup`` untimed ones).

Usage: ``python benchmarks/finetune_memory.py [--arch random:ViT-B/16] [--device cuda]
[--steps 3] [--warmup 1] [--threads N] [--no-amp]``. Goal on a GPU with ViT-B/16: one
reference-sized episode under 24 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict[str, object]:
    """Build the tower and the head, run the steps, return the measurements."""
    from fsar_cli.encoders.clip import load_encoder
    from fsar_cli.models import create_head
    from fsar_cli.recipe import ModelCfg, TrainCfg
    from fsar_cli.train.schedule import build_optimizer
    from fsar_cli.train.tower import amp_dtype, enable_grad_checkpointing, episode_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    amp = amp_dtype(dev, args.amp)
    enc = load_encoder(args.arch, device="cpu")
    visual = enc.model.visual.float().to(dev).requires_grad_(True).train()
    if args.ckpt:
        enable_grad_checkpointing(visual)
    torch.manual_seed(0)
    head = create_head("clipfsar", enc.dim, ModelCfg(adapter="none")).to(dev).train()
    model = torch.nn.ModuleDict({"tower": visual, "head": head})
    optimizer = build_optimizer(model, TrainCfg(lr=1e-5, warmup_lr=1e-5, lr_step=0))
    W, K, Q, T, R = args.way, args.shot, args.query, args.frames, enc.input_resolution
    g = torch.Generator().manual_seed(0)
    classes = torch.arange(W)
    item = {
        "frames": torch.randint(0, 256, (W * (K + Q), T, 3, R, R), dtype=torch.uint8, generator=g),
        "classes": classes,
        "support_labels": torch.arange(W).repeat_interleave(K),
        "query_labels": torch.arange(W).repeat_interleave(Q),
        "video_labels": torch.cat([classes.repeat_interleave(K), classes.repeat_interleave(Q)]),
    }
    if dev.type == "cuda":
        item["frames"] = item["frames"].pin_memory()
    text = torch.randn(64, enc.dim, generator=g).to(dev)  # the train classes' text table

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = episode_loss(visual, head, item, text, 1.2, dev, amp)["loss"]
        loss.backward()
        optimizer.step()
        return float(loss)

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        reset = _reset_cpu_peak()
        base = _status_kb("VmRSS") * 1024
    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    if dev.type == "cuda":
        peak, how = torch.cuda.max_memory_allocated(dev), "max_memory_allocated"
    else:
        peak = _status_kb("VmHWM") * 1024
        how = "VmHWM" if reset else "VmHWM (not reset: includes start-up)"
    return {
        "ckpt": args.ckpt,
        "peak": peak,
        "base": base,
        "how": how,
        "episodes_per_s": args.steps / seconds,
        "step_s": seconds / args.steps,
        "loss": loss,
        "precision": str(amp).replace("torch.", "") if amp else "fp32",
        "images": W * (K + Q) * T,
        "resolution": R,
    }


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="random:ViT-B/16", help="a load_encoder name")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--shot", type=int, default=1)
    ap.add_argument("--query", type=int, default=5)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    rows = []
    for ckpt in (False, True):
        cmd = [sys.executable, __file__, "--child", *sys.argv[1:]] + (["--ckpt"] if ckpt else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            print(f"checkpointing={ckpt}: failed (exit {proc.returncode}): {' | '.join(tail)}")
            continue
        rows.append(json.loads(lines[-1].removeprefix("RESULT ")))
    if not rows:
        sys.exit(1)
    r0 = rows[0]
    print(
        f"\n{args.arch} on {args.device}, {r0['precision']}: one {args.way}-way {args.shot}-shot "
        f"{args.query}-query episode = {r0['images']} images of {r0['resolution']}px, "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    print(
        f"{'checkpointing':<14} {'peak memory':>12} {'over start':>12} {'episodes/s':>11} "
        f"{'s/step':>8}  measured by"
    )
    for r in rows:
        print(
            f"{'on' if r['ckpt'] else 'off':<14} {_gb(r['peak']):>12} "
            f"{_gb(r['peak'] - r['base']):>12} {r['episodes_per_s']:>11.3f} "
            f"{r['step_s']:>8.2f}  {r['how']}"
        )
    if len(rows) == 2:
        off, on = rows
        print(
            f"checkpointing: peak memory x{on['peak'] / off['peak']:.2f} "
            f"(growth x{(on['peak'] - on['base']) / max(off['peak'] - off['base'], 1):.2f}), "
            f"speed x{on['episodes_per_s'] / off['episodes_per_s']:.2f}"
        )


if __name__ == "__main__":
    main()
