"""``copsctl finetune``: train through the AMWC solver with the PQ surrogate (section 3.3)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._app import app
from ._progress import TrainProgress, report_run
from ._util import (DEVICE_HELP, RESUME_HELP, RUN_JSON_HELP, RUN_OUT_HELP, SET_HELP,
                    check_json_option, cli_errors, with_device)

@app.command("finetune")
@cli_errors
def finetune_command(
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help="Recipe file or packaged name (e.g. synthetic_finetune); "
        "optional with --resume."),
    weights: Optional[Path] = typer.Option(
        None, "--weights", help="Pre-trained checkpoint to start from (RUN/checkpoint.pt of "
        "copsctl pretrain); not needed to resume."),
    out: Path = typer.Option(..., "--out", help=RUN_OUT_HELP),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", help="Start from this cost calibration (default: "
        "calibration.yaml beside --weights, if any)."),
    no_calibration: bool = typer.Option(
        False, "--no-calibration", help="Ignore calibration.yaml beside --weights."),
    out_json: Optional[Path] = typer.Option(None, "--json", help=RUN_JSON_HELP),
) -> None:
    """Fine-tune through the solver: PQ surrogate, Algorithm 1 gradients, frozen backbone.

    finetune.loss=cross_entropy runs the control instead: the pre-training losses with the
    same trainable parameters and iterations.
    """
    from ..train.finetune import finetune

    check_json_option(out_json, within={"out": out}, recipe=recipe, weights=weights)
    overrides = with_device(overrides, device)
    with TrainProgress("finetune") as bar:
        result = finetune(recipe, out, weights=weights, overrides=overrides, resume=resume,
                          calibration=False if no_calibration else calibration,
                          json_out=out_json, progress=bar,
                          log=lambda msg: bar.console.print(msg))
    report_run(result, "finetune", out, out_json)
