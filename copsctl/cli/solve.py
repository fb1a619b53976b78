"""``copsctl solve``: solve a cost file, write COCO panoptic predictions."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ._app import app
from ._progress import count_progress
from ._util import cli_errors, console

_HELP_OUT = ("Prediction folder: panoptic_pred.json + panoptic_pred/ PNGs (+ summary.json, "
             "recipe.yaml).")
_HELP_THING = ("Reject thing segments below this area, in full-resolution pixels "
               "(default: the cost file's recipe, else 200).")
_HELP_SET = ("Override a key of the cost file's recipe that solving reads: solver.<key>=value "
             "or data.thing_area_threshold / data.stuff_area_threshold; repeatable.")
_HELP_STUFF = ("Reject stuff segments below this area, in full-resolution pixels "
               "(default: the cost file's recipe, else 2048).")


@app.command("solve")
@cli_errors
def solve_command(
    costs: Path = typer.Argument(..., help="Cost file (HDF5, from dump-costs or make-costs)."),
    out: Path = typer.Option(..., "--out", help=_HELP_OUT),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="Solver threads (default: the recipe's solver.workers if > 0, "
        "else all CPUs)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even when it "
                                   "holds files copsctl solve did not write."),
    thing_area: Optional[float] = typer.Option(None, "--thing-area", help=_HELP_THING),
    stuff_area: Optional[float] = typer.Option(None, "--stuff-area", help=_HELP_STUFF),
    overrides: List[str] = typer.Option([], "--set", help=_HELP_SET),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", help="Calibration file (copsctl calibrate) to solve with."),
    summary_json: Optional[Path] = typer.Option(None, "--json",
                                                help="Also write the summary here."),
) -> None:
    """Solve the AMWC problem of every image in COSTS and write panoptic predictions to --out."""
    from ..calibration import load_calibration
    from ..panoptic.solve import solve_costs

    with count_progress("solving") as progress:
        summary = solve_costs(costs, out, overwrite=overwrite, workers=workers,
                              thing_area=thing_area,
                              stuff_area=stuff_area, summary_json=summary_json,
                              overrides=overrides, progress=progress,
                              calibration=load_calibration(calibration) if calibration else None)
    table = Table(title=f"copsctl solve: {summary['images']} images -> {summary['out']}")
    # Short headers: the table must fit an 80-column terminal.
    for col in ("images", "workers", "solve s/img", "total s/img", "seg/img", "rej/img",
                "objective"):
        table.add_column(col, justify="right")
    table.add_row(str(summary["images"]), str(summary["workers"]),
                  f"{summary['seconds_per_image_solve']:.3f}",
                  f"{summary['seconds_per_image']:.3f}", f"{summary['segments_per_image']:.1f}",
                  f"{summary['rejected_per_image']:.1f}", f"{summary['objective_mean']:.1f}")
    console.print(table)
    console.print(f"thresholds: thing {summary['thing_area']:g}, stuff {summary['stuff_area']:g} "
                  f"pixels; predictions in {summary['pred_json']}")
