"""``copsctl make-synthetic``: write the synthetic panoptic dataset (COCO layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ._app import app
from ._util import check_json_option, cli_errors, console, write_json_option


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"`--size` must be HxW with integers, e.g. 128x128, got {text!r}") \
            from None
    return h, w


@app.command("make-synthetic")
@cli_errors
def make_synthetic_command(
    out: Path = typer.Option(..., "--out", help="Output folder (created; must be empty)."),
    train: int = typer.Option(200, "--train", help="Number of training images."),
    val: int = typer.Option(50, "--val", help="Number of validation images."),
    size: str = typer.Option("128x128", "--size", help="Image size HxW in pixels."),
    seed: int = typer.Option(0, "--seed", help="Seed; the dataset is a function of it."),
    small_fraction: float = typer.Option(
        0.4, "--small-fraction", help="Share of small thing instances (radius 3-7 px at "
        "128x128) among the things, in [0, 1]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
    out_json: Optional[Path] = typer.Option(None, "--json",
                                            help="Also write the summary as JSON here."),
) -> None:
    """Write a synthetic panoptic dataset: train and val splits in the COCO panoptic layout."""
    from ..data.synthetic import make_synthetic

    check_json_option(out_json, within={"out": out})
    summary = make_synthetic(out, train=train, val=val, size=_parse_size(size), seed=seed,
                             small_fraction=small_fraction, overwrite=overwrite)
    console.print(f"wrote {summary['train']} train and {summary['val']} val images "
                  f"({summary['size'][0]}x{summary['size'][1]}, seed {summary['seed']}) "
                  f"to {summary['out']}")
    write_json_option(out_json, summary)
