"""What the frozen-mode adapter buys: CLIP-FSAR trained with ``model.adapter`` none vs residual.

In the frozen mode the cached features cannot change, so the video-text loss reaches only the
scalar ``scale`` unless something trainable sits between the cache and the losses. fsar offers a
zero-initialised residual adapter (``model.adapter: residual``) for that; this script measures
whether it helps, on the offline demo's synthetic benchmark (built, or reused, with ``fsar demo``'s
own stages), training the ``clipfsar`` head with:

- ``none``            the reference head (what fsar trains by default)
- ``residual``        the adapter, at the recipe's ``lambda_vt``
- ``residual, lvt=X`` the adapter with a smaller video-text weight

and evaluating each on the same seeded test episodes (5-way, 1 and 5 shots).

Usage: ``python benchmarks/adapter_effect.py [--out fsar-demo] [--episodes 2000] [--lvt 0.1]``
(any recipe with a finished cache works too: ``--recipe PATH``, then ``--out`` is where runs go).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fsar_cli.demo import _demo_recipe, run_demo
from fsar_cli.encoders.offline import ensure_offline_encoder
from fsar_cli.evaluation.evaluate import evaluate
from fsar_cli.recipe import load_recipe
from fsar_cli.train.frozen import meta_train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default="fsar-demo", help="demo folder (built if missing) or runs folder"
    )
    ap.add_argument("--recipe", default=None, help="a recipe with cached train/val/test instead")
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--lvt", type=float, default=0.1, help="the smaller lambda_vt to try")
    args = ap.parse_args()
    out = Path(args.out)
    if args.recipe:
        recipe = load_recipe(args.recipe)
    else:
        run_demo(out)  # reuses every finished stage
        doc = json.loads((out / "synth" / "classes.json").read_text())
        classes = {split: doc[split] for split in ("train", "val", "test")}
        recipe = _demo_recipe(out, classes, "offline", ensure_offline_encoder(), [])
    lvt = recipe.train.lambda_vt
    variants = {
        "none": {"adapter": "none", "lambda_vt": lvt},
        f"residual, lvt={lvt:g}": {"adapter": "residual", "lambda_vt": lvt},
        f"residual, lvt={args.lvt:g}": {"adapter": "residual", "lambda_vt": args.lvt},
    }
    rows = []
    for name, v in variants.items():
        r = dataclasses.replace(
            recipe,
            model=dataclasses.replace(recipe.model, head="clipfsar", adapter=v["adapter"]),
            train=dataclasses.replace(recipe.train, lambda_vt=v["lambda_vt"]),
        )
        run = out / "adapter_effect" / name.replace(", ", "_").replace("=", "")
        if not (run / "summary.json").is_file():
            meta_train(r, run, resume=(run / "last.pt").is_file())
        accs = []
        for k in (1, 5):
            e = evaluate(
                r, checkpoint=run, k_shot=k, episodes=args.episodes, db=out / "adapter.sqlite"
            )
            accs.append((100 * e.mean, 100 * e.ci95))
        rows.append((name, accs))
        (a1, c1), (a5, c5) = accs
        print(f"{name:<22} 1-shot {a1:.1f} ± {c1:.1f}   5-shot {a5:.1f} ± {c5:.1f}", flush=True)
    base = rows[0][1]
    for name, accs in rows[1:]:
        d1, d5 = accs[0][0] - base[0][0], accs[1][0] - base[1][0]
        print(f"{name} - none: 1-shot {d1:+.1f}, 5-shot {d5:+.1f} points")


if __name__ == "__main__":
    main()
