"""``copsctl predict``: a trained model on your own images -> COCO panoptic predictions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from ._app import app
from ._util import RUN_HELP, cli_errors, console, err_console, is_terminal, write_json_option

_HELP_INPUTS = ("Image files (JPEG, PNG; any size, grey and RGBA converted), folders of them, "
                "or glob patterns (quote them; ** recurses).")
_HELP_OUT = ("Prediction folder: panoptic_pred.json + panoptic_pred/<stem>.png (+ overlays/, "
             "summary.json). A rerun into it skips finished images.")


@app.command("predict")
@cli_errors
def predict_command(
    inputs: List[str] = typer.Argument(..., help=_HELP_INPUTS, metavar="INPUT"),
    out: Path = typer.Option(..., "--out", help=_HELP_OUT),
    run: Optional[Path] = typer.Option(
        None, "--run", help=RUN_HELP),
    weights: Optional[Path] = typer.Option(
        None, "--weights", help="A model file (copsctl export) or checkpoint instead of --run."),
    size: Optional[int] = typer.Option(
        None, "--size", help="Resize so the longer side has this many pixels (default: the "
        "recipe's data.val_size, else the longer side of data.crop_size)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="Solver threads (default: the recipe's solver.workers if > 0, "
        "else all CPUs)."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write overlays/<stem>.png: the "
                                 "image with segments, instance contours and class names."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Go on past unreadable images and "
                                  "list them at the end (default: stop with exit code 2)."),
    out_json: Optional[Path] = typer.Option(
        None, "--json", help="Also write the summary (images, timings) as JSON here."),
) -> None:
    """Panoptic segmentation of plain images with a trained model (no dataset needed)."""
    from ..panoptic.images import predict_images

    start = time.perf_counter()
    with Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, disable=not is_terminal(), transient=True) as bar:
        task = bar.add_task("predict", total=None, rate="")

        def progress(done: int, total: int) -> None:
            seconds = time.perf_counter() - start
            bar.update(task, completed=done, total=total,
                       rate=f"{done / seconds:.2f} img/s" if seconds > 0 else "")

        summary = predict_images(inputs, out, run=run, weights=weights, size=size,
                                 batch_size=batch_size, device=device, workers=workers,
                                 overlay=overlay, skip_bad=skip_bad, json_out=out_json,
                                 progress=progress)
    skipped = f", {summary['skipped']} already done" if summary["skipped"] else ""
    console.print(f"predicted {summary['images']} images{skipped} -> {summary['pred_json']} "
                  f"({summary['images_per_s']:.2f} images/s on {summary['device']}, size "
                  f"{summary['size']}, {summary['workers']} solver threads)")
    for message in summary["bad"]:
        err_console.print(f"[bold yellow]skipped:[/] {message}", soft_wrap=True)
    write_json_option(out_json, summary)
