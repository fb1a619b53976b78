"""``copsctl dump-costs``: run a trained network over a split and write the cost cache."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._app import app
from ..errors import InputError
from ._progress import count_progress
from ._util import RUN_HELP, SET_HELP, check_json_option, cli_errors, console, write_json_option


@app.command("dump-costs")
@cli_errors
def dump_costs_command(
    out: Path = typer.Option(..., "--out", help="Cost file to write (HDF5, copsctl.costs schema)."),
    run: Optional[Path] = typer.Option(
        None, "--run", help=RUN_HELP),
    weights: Optional[Path] = typer.Option(
        None, "--weights", help="A checkpoint file instead of --run."),
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help="Recipe (default: the run's, or the one stored in --weights)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    split: Optional[str] = typer.Option(None, "--split",
                                        help="Dataset split (default: the recipe's data.val_split)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
    limit: int = typer.Option(0, "--limit", help="Only the first N images (0: all)."),
    num_workers: Optional[int] = typer.Option(
        None, "--num-workers", help="DataLoader workers (default: the recipe's data.num_workers)."),
    storage: str = typer.Option(
        "quantized", "--storage", help="How costs are stored: quantized (about 3 MB per "
        "Cityscapes-size image, see docs/predict.md), float16 or float32 (exact, 16 MB)."),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", help="Calibration file to apply (default: calibration.yaml "
        "beside the checkpoint, if any)."),
    no_calibration: bool = typer.Option(
        False, "--no-calibration", help="Ignore calibration.yaml beside the checkpoint."),
    out_json: Optional[Path] = typer.Option(
        None, "--json", help="Also write the summary (images, seconds per image, recipe hash) "
        "as JSON here."),
) -> None:
    """Write the network's node and edge costs for every image of a split (then: copsctl solve)."""
    from ..costs.network import dump_costs
    from ..train.checkpoint import run_inputs

    if no_calibration and calibration is not None:
        raise InputError("--calibration and --no-calibration contradict each other; pass one")
    check_json_option(out_json, out=out, run=run_inputs(run), weights=weights)
    with count_progress("dumping costs") as progress:
        summary = dump_costs(out, run=run, weights=weights, recipe=recipe, overrides=overrides,
                             split=split, batch_size=batch_size, device=device, limit=limit,
                             num_workers=num_workers, dtype=storage,
                             calibration=False if no_calibration else calibration,
                             json_out=out_json, progress=progress)
    console.print(f"wrote costs of {summary['images']} {summary['split']} images to "
                  f"{summary['out']} ({summary['images_per_s']:.1f} images/s on "
                  f"{summary['device']}, checkpoint iteration {summary['iteration']})")
    write_json_option(out_json, summary)
