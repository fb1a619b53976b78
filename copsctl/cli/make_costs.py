"""``copsctl make-costs``: a synthetic cost file and its ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app
from ._util import check_json_option, cli_errors, console, write_json_option

_HELP_DIFFICULTY = "0 = normal, 1 = the hard family (weaker, noisier edge costs)."
_HELP_GT = "Ground-truth folder (panoptic_gt.json + panoptic_gt/); default: <out stem>_gt."


@app.command("make-costs")
@cli_errors
def make_costs_command(
    out: Path = typer.Option(..., "--out", help="Cost file to write (HDF5)."),
    preset: str = typer.Option("tiny", "--preset", help="cityscapes | coco | small | tiny."),
    images: int = typer.Option(4, "--images", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Seed; the file is a function of it."),
    difficulty: float = typer.Option(0.0, "--difficulty", help=_HELP_DIFFICULTY),
    gt_out: Optional[Path] = typer.Option(None, "--gt-out", help=_HELP_GT),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --gt-out even when it "
                                   "holds files copsctl make-costs did not write."),
    out_json: Optional[Path] = typer.Option(None, "--json",
                                            help="Also write the summary as JSON here."),
) -> None:
    """Write synthetic AMWC costs (no network needed) plus their COCO panoptic ground truth."""
    from ..costs.synthetic import default_gt_out, write_synthetic_costs

    check_json_option(out_json, out=out, gt_out=default_gt_out(out, gt_out))
    s = write_synthetic_costs(out, gt_out=gt_out, preset=preset, num_images=images, seed=seed,
                              difficulty=difficulty, overwrite=overwrite)
    console.print(f"wrote {s['images']} {preset} images to {s['costs']} (pixel accuracy "
                  f"{s['pixel_accuracy']:.3f}, edge accuracy {s['edge_accuracy']:.3f}) and the "
                  f"ground truth to {s['gt_json']} + {s['gt_dir']}")
    write_json_option(out_json, s)
