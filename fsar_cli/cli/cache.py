"""``fsar cache``: encode every video of a recipe's splits with CLIP and cache the features.

Under ``torchrun --nproc_per_node N -m fsar_cli cache ...`` rank ``r`` caches shard ``r/N`` and
rank 0 assembles the stores, shows the progress bar and prints the table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .console import cli_errors, console, progress
from .options import OverrideOpt, SplitsOpt

__all__ = ["register", "cache"]


def _render(result: Any) -> None:
    random = " [bold red]RANDOM WEIGHTS — not OpenAI CLIP[/]" if result.is_random else ""
    console.print(
        f"encoder [bold]{escape(result.encoder)}[/]{random}  (weights SHA-256 "
        f"{result.weights_sha256[:12]}…, {escape(result.device)})",
        highlight=False,
    )
    table = Table(title=escape(f"feature cache {result.cache_dir}"))
    for col in ("split", "videos", "ok", "failed", "missing", "seconds", "frames/s", "state"):
        table.add_column(col, justify="left" if col in ("split", "state") else "right")
    for s in result.splits.values():
        table.add_row(
            s.split,
            str(s.videos),
            str(s.ok),
            f"[red]{s.failed}[/]" if s.failed else "0",
            f"[yellow]{s.missing}[/]" if s.missing else "0",
            f"{s.seconds:.1f}",
            f"{s.frames_per_s:.1f}",
            escape(s.state),
        )
    console.print(table)
    for s in result.splits.values():
        for key, reason in s.failures:
            text = escape(f"{s.split}/{key}: {reason}")  # [brackets] in names are not markup
            console.print(f"[red]failed[/] {text}", highlight=False)
        if s.missing:
            console.print(
                f"[yellow]{s.missing} {s.split} videos missing[/]: listed in "
                f"{escape(str(s.path / 'index.csv'))} with status 'missing'",
                highlight=False,
            )


def cache(
    recipe: Annotated[str, typer.Argument(help="Recipe name (see `fsar recipes`) or YAML file.")],
    split: Annotated[
        list[str] | None,
        typer.Option("--split", help="Split to cache (repeatable). Default: train, val, test."),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            help="CLIP model: RN50, ViT-B/16, ..., or random:<name> / random:tiny "
            "(random weights, for tests). Default: features.encoder."
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Local CLIP weights file (OpenAI .pt, state dict, or visual tower), or a run "
            "folder of `fsar train --mode finetune` (its tower.pt; the encoder from its "
            "tower.json unless --encoder is given)."
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/n: encode only every n-th chunk starting at i (n independent processes); "
            "the last one to finish assembles the store. Not needed under torchrun, where rank "
            "r of n caches shard r/n."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    splits: SplitsOpt = None,
    overrides: OverrideOpt = None,
) -> None:
    """Cache per-frame CLIP features of every video (resumable; rerun to finish; shardable)."""
    with cli_errors():
        from .. import distributed
        from ..features.cache import cache_features, parse_shard
        from ..recipe import SPLITS, load_recipe, write_resolved

        cfg = load_recipe(recipe, list(overrides or [])).with_split_dir(splits)
        feats = cfg.features
        weights_v = str(weights) if weights is not None else feats.weights
        if weights_v is not None:  # a fine-tuned run folder -> its tower.pt (+ tower.json's name)
            from ..encoders.clip import resolve_weights

            path, encoder = resolve_weights(weights_v, encoder)
            weights_v = str(path)
        feats = dataclasses.replace(feats, encoder=encoder or feats.encoder, weights=weights_v)
        cfg = dataclasses.replace(cfg, features=feats)
        shard_t = parse_shard(shard) if shard else None
        dev = distributed.init(device).device(device)  # checks the device; torchrun's GPU
        d = distributed.current()  # a no-op unless launched by torchrun
        bar = progress("cache") if d.is_main else contextlib.nullcontext(lambda n=1, **_kw: None)
        try:
            with bar as advance:
                result = cache_features(
                    cfg,
                    splits=tuple(split or SPLITS),
                    shard=shard_t,
                    on_progress=advance,
                    device=str(dev),
                )
        finally:
            distributed.shutdown()
        if not d.is_main:
            return
        write_resolved(cfg, result.cache_dir, argv=["fsar", *sys.argv[1:]])
    _render(result)


def register(app: typer.Typer) -> None:
    app.command("cache")(cache)
