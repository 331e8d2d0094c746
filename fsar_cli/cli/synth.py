"""``fsar synth``: render the synthetic few-shot action dataset (and, optionally, its encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .console import cli_errors, console, progress

__all__ = ["register", "synth"]


def synth(
    out: Annotated[Path, typer.Argument(help="Folder to render the dataset into.")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of every nuisance draw.")] = 0,
    videos_per_class: Annotated[
        int, typer.Option("--videos-per-class", help="Videos rendered per class.")
    ] = 16,
    frames: Annotated[int, typer.Option("--frames", help="Frames per video.")] = 16,
    size: Annotated[int, typer.Option("--size", help="Frame side in pixels.")] = 64,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a folder rendered with other settings.")
    ] = False,
    encoder: Annotated[
        bool,
        typer.Option(
            "--encoder",
            help="Also train (once, ~1 min) the offline demo encoder; show its zero-shot accuracy.",
        ),
    ] = False,
) -> None:
    """Render a synthetic few-shot action dataset: shapes moving along paths, in reversed pairs.

    Each class has a twin that is the same frames in reverse order ("left to right" and "right to
    left"), so only a method that sees frame order can tell them apart. The folder is laid out like
    UCF101 (videos/, splits/{train,val,test}_few_shot.txt, classes.json); recipe 'synth' reads it.
    """
    from ..data.synth import render_dataset

    with cli_errors():
        with progress("rendering") as advance:
            result = render_dataset(
                out,
                seed=seed,
                videos_per_class=videos_per_class,
                num_frames=frames,
                size=size,
                overwrite=overwrite,
                on_progress=advance,
            )
        scores = None
        if encoder:
            from ..encoders.offline import ensure_offline_encoder, evaluate_offline_encoder

            with progress("offline encoder") as advance:
                weights = ensure_offline_encoder(on_progress=advance)
            scores = evaluate_offline_encoder(weights)

    verb = "reused (same settings)" if result.reused else "rendered"
    table = Table(title=escape(f"fsar synth -> {result.root} ({verb})"))
    for col in ("split", "classes", "videos", "example class"):
        table.add_column(col, justify="left" if col in ("split", "example class") else "right")
    for split, names in result.classes.items():
        table.add_row(split, str(len(names)), str(result.videos[split]), escape(names[0]))
    console.print(table)
    console.print(
        f"split files in {result.split_dir}; each class id 2p+1 is class 2p played backwards. "
        f"Frames {size}x{size}, {frames} per video, seed {seed}.",
        markup=False,
        highlight=False,
    )
    if scores is not None:
        _print_encoder(weights, scores)


def _print_encoder(weights: Path, scores: dict[str, Any]) -> None:
    from ..encoders.offline import OFFLINE_ENCODER_DESCRIPTION, read_training_stats

    stats = read_training_stats(weights) or {}
    table = Table(title="offline demo encoder: zero-shot accuracy on held-out frames and clips")
    for col in ("attribute", "accuracy", "chance"):
        table.add_column(col, justify="left" if col == "attribute" else "right")
    labels = {"full": "full caption", "motion": "motion (clips)", "path": "path, either way"}
    for name in ("position", "size", "colour", "full", "motion", "path"):
        if name not in scores:
            continue
        label = labels.get(name, name)
        acc, chance = 100 * float(scores[name]), 100 * float(scores["chance"][name])
        table.add_row(label, f"{acc:.1f}%", f"{chance:.1f}%")
    console.print(table)
    seconds = stats.get("train_seconds")
    trained = f", trained in {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
    console.print(
        f"{OFFLINE_ENCODER_DESCRIPTION}\nweights: {weights}{trained}", markup=False, highlight=False
    )


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
