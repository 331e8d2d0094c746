"""Feature-cache throughput: does decoding and preprocessing hide behind the encoder?

On the same frames, in one process, with a randomly initialised CLIP of ViT-B/32 size
(``random:ViT-B/32``; speed does not depend on the weights):

- (a) encoder only: frames/s of ``Encoder.encode_images`` on preprocessed float32 frames already
  in memory, in batches of ``--batch-size``;
- (b) the whole pipeline: frames/s of ``features.cache.cache_features`` from JPEG frame folders on
  disk to a finished store (decode, sample, resize, crop, normalise, encode, write, assemble);
- (c) decode + preprocess alone, in one thread: frames/s one decode worker delivers.

The frames are real video frames (the fixture videos), resized to 320x240 and written as JPEG
folders in a temporary directory: ``--videos`` videos x 8 frames. (a) and (b) are each run
``--repeats`` times in adjacent pairs (order alternating); the ratio reported is the median of the
pairs' ratios, next to the best of each. Other load on the machine makes single runs swing by 2x:
use more ``--repeats`` on a busy machine. Target: >= 0.95.

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set), as ``fsar cache`` runs them
(``fsar_cli.threads``): spinning encoder threads would take the cores the decode workers need.

Usage: ``python benchmarks/cache_throughput.py [--videos 24] [--repeats 6] [--workers 2]``
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP, as fsar's CLI

import cv2  # noqa: E402
import torch  # noqa: E402

from fsar_cli.data.frames import read_frames  # noqa: E402
from fsar_cli.data.preprocess import ViewSpec, load_views, normalize, preprocess_frames  # noqa: E402
from fsar_cli.encoders.clip import load_encoder  # noqa: E402
from fsar_cli.features.cache import cache_features  # noqa: E402
from fsar_cli.recipe import Recipe, recipe_from_dict  # noqa: E402

# ../shared beside the checkout, or FSAR_SHARED (a machine where the checkout travels alone)
SHARED = Path(
    os.environ.get("FSAR_SHARED") or Path(__file__).resolve().parents[1].parent / "shared"
)
T = 8


def make_frames(root: Path, videos: int) -> list[Path]:
    """``videos`` folders of T 320x240 JPEGs cut from the fixture videos (real image content)."""
    sources = sorted((SHARED / "fixtures" / "videos").iterdir())
    folders = []
    for v in range(videos):
        frames = read_frames(
            sources[v % len(sources)], [v // len(sources) * T + t for t in range(T)]
        )
        folder = root / "test" / f"test{v % 4}" / f"{v:05d}"
        folder.mkdir(parents=True)
        for t, f in enumerate(frames):
            small = cv2.resize(f, (320, 240), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / f"{t + 1:08d}.jpg"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        folders.append(folder)
    (root / "test_few_shot.txt").write_text(
        "\n".join(f"test{v % 4}/{v:05d}" for v in range(videos)) + "\n"
    )
    return folders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2, help="decode threads (features.workers)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--encoder", default="random:ViT-B/32")
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    encoder = load_encoder(args.encoder)
    res = encoder.input_resolution
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folders = make_frames(tmp / "frames", args.videos)
        n_frames = args.videos * T
        spec = ViewSpec("test", T, 1, "center", "center", resize=res * 8 // 7, crop=res)

        def decode_all() -> float:  # (c) decode + preprocess, as one decode worker runs it
            torch.set_num_threads(1)  # per thread: the main thread keeps --threads
            t0 = time.perf_counter()
            for f in folders:
                normalize(load_views(f, f.name, spec)[0].flatten(0, 1))
            return n_frames / (time.perf_counter() - t0)

        with ThreadPoolExecutor(1) as one:
            decode_fps = one.submit(decode_all).result()
        torch.set_num_threads(args.threads)

        images = torch.cat([preprocess_frames(read_frames(f), spec.resize, res) for f in folders])
        encoder.encode_images(images[: args.batch_size], args.batch_size)  # warm-up

        def recipe(run: int) -> Recipe:
            return recipe_from_dict(
                {
                    "name": "bench",
                    "data": {
                        "split_dir": str(tmp / "frames"),
                        "frames_root": str(tmp / "frames"),
                        "frames_layout": "{split}/{class_field}/{video_id}",
                        "classes": {"test": ["a", "b", "c", "d"]},
                    },
                    "features": {
                        "encoder": args.encoder,
                        "num_frames": T,
                        "resize": spec.resize,
                        "crop": res,
                        "batch_size": args.batch_size,
                        "workers": args.workers,
                        "chunk_videos": 64,
                        "cache_dir": str(tmp / f"cache{run}"),
                        "sampling": {"test": "center"},
                    },
                }
            )

        def encoder_only() -> float:
            t0 = time.perf_counter()
            encoder.encode_images(images, args.batch_size)
            return n_frames / (time.perf_counter() - t0)

        def pipeline(run: int) -> float:
            t0 = time.perf_counter()
            result = cache_features(recipe(run), ("test",), encoder=encoder)
            assert result.splits["test"].ok == args.videos
            return n_frames / (time.perf_counter() - t0)

        enc_fps, pipe_fps = [], []
        for run in range(args.repeats):  # adjacent pairs, order alternating: drift cancels
            if run % 2 == 0:
                enc_fps.append(encoder_only())
                pipe_fps.append(pipeline(run))
            else:
                pipe_fps.append(pipeline(run))
                enc_fps.append(encoder_only())

    a, b = max(enc_fps), max(pipe_fps)
    pairs = sorted(p / e for p, e in zip(pipe_fps, enc_fps, strict=True))
    print(
        f"encoder {args.encoder} ({'RANDOM WEIGHTS' if encoder.is_random else 'weights'}), "
        f"{args.videos} videos x {T} frames 320x240 JPEG, batch {args.batch_size}, "
        f"torch threads {args.threads}, decode workers {args.workers}, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY')}; load average {os.getloadavg()[0]:.1f}"
    )
    runs_a, runs_b = (", ".join(f"{x:.1f}" for x in r) for r in (enc_fps, pipe_fps))
    print(f"(a) encoder only        : {a:8.1f} frames/s   (best; runs: {runs_a})")
    print(f"(b) full cache pipeline : {b:8.1f} frames/s   (best; runs: {runs_b})")
    print(f"(c) decode + preprocess : {decode_fps:8.1f} frames/s per worker (one thread)")
    print(
        f"ratio pipeline / encoder: {statistics.median(pairs):.3f} (median of adjacent pairs: "
        f"{', '.join(f'{r:.3f}' for r in pairs)}); best / best {b / a:.3f}  (target >= 0.95)"
    )


if __name__ == "__main__":
    main()
