"""``copsctl demo``: synthetic costs -> solve -> exact PQ, in one folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from . import app
from ._util import cli_errors, console


@app.command("demo")
@cli_errors
def demo_command(
    out: Path = typer.Option(Path("demo_out"), "--out",
                             help="Demo folder; re-running reuses finished stages."),
    quick: bool = typer.Option(False, "--quick", help="Tiny problems: a first look in seconds."),
    workers: Optional[int] = typer.Option(None, "--workers",
                                          help="Solver threads (default: all CPUs)."),
) -> None:
    """Run the pipeline on the embedded default: make synthetic costs, solve them, score PQ."""
    from ..demo import run_demo

    r = run_demo(out, quick=quick, workers=workers, log=lambda msg: console.print(f"  {msg}"))
    table = Table(title=f"copsctl demo ({r.preset} preset) -> {r.out}")
    # Short headers: the table must fit an 80-column terminal.
    for col in ("images", "solve s/img", "seg/img", "objective", "PQ", "PQ_th", "PQ_st"):
        table.add_column(col, justify="right")
    table.add_row(str(r.images), f"{r.seconds_per_image_solve:.3f}",
                  f"{r.segments_per_image:.1f}", f"{r.objective_mean:.0f}",
                  f"{100 * r.pq['All']['pq']:.1f}", f"{100 * r.pq['Things']['pq']:.1f}",
                  f"{100 * r.pq['Stuff']['pq']:.1f}")
    console.print(table)
    reused = f"; reused: {', '.join(r.reused)}" if r.reused else ""
    console.print(f"finished in {r.seconds:.1f} s{reused}. Files: {r.out / 'pred'} (predictions), "
                  f"{r.out / 'metrics.json'} (PQ)")
