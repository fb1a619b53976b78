"""``copsctl export``: a model file to share (weights, class table, recipe; no optimizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app
from ._util import RUN_HELP, cli_errors, console


@app.command("export")
@cli_errors
def export_command(
    out: Path = typer.Option(..., "--out", help="Model file to write (MODEL.pt)."),
    run: Optional[Path] = typer.Option(
        None, "--run", help=RUN_HELP),
    weights: Optional[Path] = typer.Option(None, "--weights",
                                           help="A checkpoint file instead of --run."),
) -> None:
    """Write the weights, class table and recipe of a checkpoint without its training state.

    predict, dump-costs and finetune --weights read the file as they read a checkpoint.
    """
    from ..train.checkpoint import export_model

    s = export_model(out, run=run, weights=weights)
    console.print(f"wrote {s['out']}: {s['classes']} classes, iteration {s['iteration']}, "
                  f"{s['bytes'] / 1e6:.1f} MB (checkpoint {s['source_bytes'] / 1e6:.1f} MB)")
