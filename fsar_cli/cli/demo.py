"""`fsar demo`: the whole pipeline on a synthetic benchmark, offline, in minutes."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from .console import cli_errors, console, staged_progress
from .options import OverrideOpt


def demo(
    out: Annotated[
        str, typer.Option("--out", "-o", help="Folder for everything the demo makes.")
    ] = "fsar-demo",
    backbone: Annotated[
        str,
        typer.Option(help="offline (fsar's small CLIP, no network) or a CLIP name, e.g. ViT-B/32."),
    ] = "offline",
    videos_per_class: Annotated[int, typer.Option(help="Synthetic videos per class.")] = 16,
    episodes: Annotated[int | None, typer.Option(help="Test episodes per head and shot.")] = None,
    steps: Annotated[int | None, typer.Option(help="Meta-training steps per trained head.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic dataset.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace a synth or frames folder in --out that the demo did not make. "
            "(Stages whose settings changed are redone without it.)",
        ),
    ] = False,
    overrides: OverrideOpt = None,
) -> None:
    """Run synth -> extract -> cache -> train -> eval on a synthetic benchmark and print the table.

    Offline and on a CPU in minutes. Reruns reuse every finished stage made with the same
    settings, and redo the stages whose settings changed.
    """
    with cli_errors():
        from ..demo import run_demo

        with staged_progress() as (on_stage, on_progress):
            res = run_demo(
                out,
                backbone=backbone,
                seed=seed,
                videos_per_class=videos_per_class,
                episodes=episodes,
                train_steps=steps,
                overrides=overrides or [],
                device=device,
                overwrite=overwrite,
                on_stage=on_stage,
                on_progress=on_progress,
            )
    _render(res)


def _render(res: Any) -> None:
    desc = res.encoder_note
    if desc.startswith(f"{res.encoder}:"):
        desc = desc[len(res.encoder) + 1 :].strip()
    note = f"[bold]{escape(res.encoder)}[/]: {escape(desc)}"
    if res.encoder_zero_shot:
        zs = res.encoder_zero_shot
        chance = zs.get("chance", {})
        parts = [
            f"{k} {100 * zs[k]:.1f}% (chance {100 * chance.get(k, 0):.1f}%)"
            for k in ("position", "size", "colour", "full")
            if k in zs
        ]
        note += "\nzero-shot on held-out captioned frames: " + ", ".join(parts)
        if "path" in zs:
            note += (
                f"\nzero-shot on held-out clips: motion {100 * zs['motion']:.1f}% "
                f"(chance {100 * chance.get('motion', 0):.1f}%), path either way "
                f"{100 * zs['path']:.1f}% (chance {100 * chance.get('path', 0):.1f}%)"
            )
    console.print(Panel(note, title="encoder", expand=False))

    shots = sorted({r.k_shot for r in res.rows})
    table = Table(
        title="5-way few-shot accuracy on the synthetic novel classes (%, mean ± 95% CI)",
        caption="every test class has its time-reversed twin among the test classes",
    )
    table.add_column("head")
    for k in shots:
        table.add_column(f"{k}-shot", justify="right")
    table.add_column("note")
    for head in dict.fromkeys(r.head for r in res.rows):
        cells = []
        note = ""
        for k in shots:
            r = next(r for r in res.rows if r.head == head and r.k_shot == k)
            cells.append(f"{r.acc_mean:.1f} ± {r.acc_ci95:.1f}")
            note = r.note
        table.add_row(escape(head), *cells, escape(note))
    console.print(table)

    lines = []
    for k in shots:
        for a, b, what in (
            ("otam", "proto", "aligning frames in time vs frame-averaged prototypes"),
            ("clipfsar-notext", "otam", "meta-training the head, no text, vs untrained OTAM"),
            ("clipfsar", "clipfsar-notext", "what the class-text token adds"),
        ):
            (ma, ca), (mb, cb) = res.acc(a, k), res.acc(b, k)
            lines.append(
                f"{k}-shot {a} - {b}: {ma - mb:+.1f} points ({what}; CIs ±{ca:.1f} / ±{cb:.1f})"
            )
    console.print("\n".join(lines), highlight=False)
    secs = res.stage_seconds
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in secs.items() if k != "total")
    console.print(f"time: {secs.get('total', 0):.0f}s ({timing})", highlight=False)
    if res.reused:
        console.print(
            f"reused from an earlier run: {', '.join(res.reused)}", markup=False, highlight=False
        )
    console.print(
        f"table written to {res.csv_path}; everything else is in {res.out_dir}/",
        markup=False,
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
