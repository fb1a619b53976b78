"""``copsctl demo``: data -> pre-train -> solve -> PQ -> fine-tune -> solve -> PQ, in one folder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ._app import app
from ._progress import TrainProgress
from ._util import cli_errors, console, write_json_option

_HELP_SET = ("Override a key of both training recipes: section.key=value (value read as "
             "YAML), applied after the demo size's own; repeatable.")


class _StageBars:
    """One progress bar per training stage (``progress(stage, event)`` of run_demo)."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar: TrainProgress | None = None

    def __call__(self, stage: str, event) -> None:
        if stage != self.stage:
            self.close()
            self.stage, self.bar = stage, TrainProgress(stage).__enter__()
        self.bar(event)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        self.stage = self.bar = None


@app.command("demo")
@cli_errors
def demo_command(
    out: Path = typer.Option(Path("demo_out"), "--out",
                             help="Demo folder; re-running reuses finished stages."),
    quick: bool = typer.Option(False, "--quick",
                               help="Small data and short training: a first look in minutes."),
    solver_only: bool = typer.Option(
        False, "--solver-only", help="Only synthetic costs -> solve -> PQ (no network; seconds)."),
    overrides: List[str] = typer.Option([], "--set", help=_HELP_SET),
    workers: Optional[int] = typer.Option(None, "--workers",
                                          help="Solver threads (default: all CPUs)."),
    out_json: Optional[Path] = typer.Option(None, "--json",
                                            help="Also write the summary (metrics.json) here."),
) -> None:
    """Run COPS on synthetic data, CPU only: pre-train, solve, fine-tune through the solver,
    and compare PQ before and after fine-tuning."""
    from ..demo import run_demo

    bars = _StageBars()
    try:
        r = run_demo(out, quick=quick, solver_only=solver_only, overrides=overrides,
                     workers=workers, log=lambda msg: console.print(f"  {msg}"), progress=bars)
    finally:
        bars.close()
    title = (f"copsctl demo --solver-only ({r.size}) -> {r.out}" if r.solver_only
             else f"copsctl demo ({r.size} size, {r.images} val images) -> {r.out}")
    table = Table(title=title)
    # Short headers: the table must fit an 80-column terminal.
    for col in ("stage", "iters", "train s", "PQ", "PQ_th", "PQ_st", "net s/img",
                "solve s/img"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in r.stages:
        table.add_row(s.name, str(s.iterations), f"{s.train_seconds:.0f}",
                      f"{100 * s.pq['All']['pq']:.1f}", f"{100 * s.pq['Things']['pq']:.1f}",
                      f"{100 * s.pq['Stuff']['pq']:.1f}",
                      f"{s.seconds_per_image_network:.3f}", f"{s.seconds_per_image_solver:.3f}")
    console.print(table)
    reused = f"; reused: {', '.join(r.reused)}" if r.reused else ""
    console.print(f"finished in {r.seconds:.1f} s{reused}.")
    if r.solver_only:
        console.print(f"Files: {r.files['pred']} (predictions), {r.files['metrics']} (PQ)")
    else:
        console.print(f"Files in {r.out}: runs/, costs/, pred/, metrics/, pictures/ and "
                      "metrics.json (this table)")
    write_json_option(out_json, r.to_json())
