"""``fsar compare``: the paired accuracy difference of two evaluations on identical episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .console import cli_errors, console
from .options import DbOpt

__all__ = ["register", "compare_command"]


def compare_command(
    a: Annotated[
        str,
        typer.Argument(
            help="Evaluation A: an eval id, a head name (its latest evaluation at every shot) or "
            "key=value pairs over recipe, head, shot, split, benchmark (e.g. "
            "recipe=synth,head=otam)."
        ),
    ],
    b: Annotated[str, typer.Argument(help="Evaluation B, selected the same way.")],
    shot: Annotated[int | None, typer.Option("--shot", help="Only this K.")] = None,
    unpaired: Annotated[
        bool,
        typer.Option(
            "--unpaired",
            help="Allow evaluations on different episodes (Welch's t-test; no win/tie/loss).",
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the rows as CSV here.")
    ] = None,
    db: DbOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an --out file fsar did not write.")
    ] = False,
) -> None:
    """Is A better than B? The paired difference A - B on the same episodes.

    Per matched protocol (split, way, shot, query): the mean accuracy difference with its
    t-based 95% CI, how many episodes A won, tied and lost, and the paired t-test's p-value.
    Evaluations on different episodes are refused unless --unpaired.
    """
    from .. import atomic
    from ..ownership import claim, starts_with
    from ..results.compare import compare

    with cli_errors():
        if out is not None:  # refused before any work: fsar replaces only its own CSV
            claim(out, kind="file", ours=starts_with(b"eval_a,eval_b,"), overwrite=overwrite)
        result = compare(a, b, db=db, k_shot=shot, unpaired=unpaired)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic.replacing(out) as tmp:
                result.frame.to_csv(tmp, index=False)
    frame = result.frame
    first = frame.iloc[0]
    kind = "paired, same episodes" if result.paired else "UNPAIRED (Welch)"
    table = Table(
        title=escape(f"fsar compare: A = {first['method_a']}, B = {first['method_b']} ({kind})"),
        title_justify="left",
    )
    for col, just in (
        ("shot", "right"),
        ("eps", "right"),
        ("A %", "right"),
        ("B %", "right"),
        ("A - B (95% CI)", "right"),
        ("win/tie/loss", "right"),
        ("p", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for _, r in frame.iterrows():
        diff = f"{r['diff']:+.2f} [{r['diff_low']:+.2f}, {r['diff_high']:+.2f}]"
        colour = "green" if r["diff_low"] > 0 else ("red" if r["diff_high"] < 0 else "yellow")
        wtl = (
            "-"
            if r["wins"] is None or r["wins"] != r["wins"]
            else (f"{int(r['wins'])}/{int(r['ties'])}/{int(r['losses'])}")
        )
        table.add_row(
            f"{r['n_way']}w{r['k_shot']}s",
            f"{int(r['n_episodes']):,}",
            f"{r['acc_a']:.2f}",
            f"{r['acc_b']:.2f}",
            f"[{colour}]{diff}[/]",
            wtl,
            f"{r['p_value']:.2g}" if r["p_value"] > 0 else "<1e-300",
        )
    console.print(table)
    ids = ", ".join(f"{int(r['eval_a'])} vs {int(r['eval_b'])}" for _, r in frame.iterrows())
    console.print(
        f"eval ids {ids}; {first['benchmark']} / {first['split']}, seed {first['seed']}",
        markup=False,
        highlight=False,
    )
    for note in result.notes:
        console.print(f"[yellow]{escape(note)}[/]")
    if out is not None:
        console.print(f"wrote {len(frame)} rows to {out}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
