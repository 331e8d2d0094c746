"""Prediction throughput: does ``fsar predict`` run at the speed of its encoder?

On the same clips, in one process, with a randomly initialised CLIP of ViT-B/32 size
(``random:ViT-B/32``; speed does not depend on the weights):

- (a) encoder only: clips/s of ``Encoder.encode_images`` on the clips' preprocessed float32
  frames already in memory, in batches of ``--batch-size`` frames;
- (b) ``fsar_cli.predict``: clips/s from JPEG frame folders on disk to the prediction table
  (decode, sample, resize, crop, normalise, encode, score with a CLIP-FSAR head against 5
  enrolled classes read from a ``.fsarc`` file).

The clips are real video frames (the fixture videos), resized to 320x240 and written as JPEG
folders of 8 frames: ``--clips`` of them (default 200). (a) and (b) run ``--repeats`` times in
adjacent pairs (order alternating); the ratio reported is the median of the pairs' ratios, next
to the best of each. Other load on the machine makes single runs swing: use more ``--repeats``
on a busy machine. Target: >= 0.9 (decoding and scoring hide behind the encoder).

Usage: ``python benchmarks/predict_throughput.py [--clips 200] [--repeats 3] [--workers 2]``
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import torch

import fsar_cli
from fsar_cli.data.frames import read_frames
from fsar_cli.data.preprocess import preprocess_frames
from fsar_cli.encoders.clip import load_encoder
from fsar_cli.models import create_head, save_head_checkpoint
from fsar_cli.recipe import recipe_from_dict

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
T = 8
WAY = 5


def make_clips(root: Path, n: int) -> list[Path]:
    """``n`` folders of T 320x240 JPEGs cut from the fixture videos (real image content)."""
    sources = sorted((SHARED / "fixtures" / "videos").iterdir())
    decoded = {s: read_frames(s) for s in sources}
    folders = []
    for v in range(n):
        frames = decoded[sources[v % len(sources)]]
        start = (v // len(sources) * T) % max(1, len(frames) - T)
        folder = root / f"{v:05d}"
        folder.mkdir(parents=True)
        for t in range(T):
            small = cv2.resize(frames[start + t], (320, 240), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / f"{t + 1:08d}.jpg"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        folders.append(folder)
    return folders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2, help="decode threads (features.workers)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--encoder", default="random:ViT-B/32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    encoder = load_encoder(args.encoder, device=args.device)
    res = encoder.input_resolution
    resize = res * 8 // 7
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clips = make_clips(tmp / "clips", args.clips)
        recipe = recipe_from_dict(
            {
                "name": "bench",
                "features": {
                    "encoder": args.encoder,
                    "num_frames": T,
                    "resize": resize,
                    "crop": res,
                    "batch_size": args.batch_size,
                    "workers": args.workers,
                    "sampling": {"test": "center"},
                    "cache_dir": str(tmp / "cache"),
                },
                "model": {"head": "clipfsar"},
            }
        )
        torch.manual_seed(0)
        save_head_checkpoint(tmp / "head.pt", create_head("clipfsar", encoder.dim, recipe.model))
        support = tmp / "support.csv"  # WAY classes of one shot each, enrolled once
        support.write_text("path,label\n" + "".join(f"{clips[i]},class {i}\n" for i in range(WAY)))
        classes = tmp / "classes.fsarc"
        common = {"recipe": recipe, "checkpoint": tmp / "head.pt", "encoder": encoder}
        fsar_cli.predict(clips[:1], support=support, save_classes=classes, **common)

        images = torch.cat([preprocess_frames(read_frames(c), resize, res) for c in clips])
        encoder.encode_images(images[: args.batch_size], args.batch_size)  # warm-up

        def encoder_only() -> float:
            t0 = time.perf_counter()
            encoder.encode_images(images, args.batch_size)
            return len(clips) / (time.perf_counter() - t0)

        def predict() -> float:
            t0 = time.perf_counter()
            table = fsar_cli.predict(clips, classes=classes, device=args.device, **common)
            assert len(table) == len(clips) and table["status"].eq("ok").all()
            return len(clips) / (time.perf_counter() - t0)

        enc, pred = [], []
        for run in range(args.repeats):  # adjacent pairs, order alternating: drift cancels
            if run % 2 == 0:
                enc.append(encoder_only())
                pred.append(predict())
            else:
                pred.append(predict())
                enc.append(encoder_only())

    ratio = statistics.median(p / e for p, e in zip(pred, enc, strict=True))
    print(
        f"encoder {args.encoder} ({'RANDOM WEIGHTS' if encoder.is_random else 'weights'}), "
        f"{args.clips} clips x {T} frames 320x240 JPEG, {WAY} enrolled classes, head clipfsar, "
        f"batch {args.batch_size}, torch threads {args.threads}, decode workers {args.workers}, "
        f"device {args.device}"
    )
    runs_a, runs_b = (", ".join(f"{x:.2f}" for x in r) for r in (enc, pred))
    print(f"(a) encoder only : {max(enc):8.2f} clips/s   (best; runs: {runs_a})")
    print(f"(b) fsar predict : {max(pred):8.2f} clips/s   (best; runs: {runs_b})")
    print(f"ratio (b)/(a), median of the pairs: {ratio:.2f}")


if __name__ == "__main__":
    main()
