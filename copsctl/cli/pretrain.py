"""``copsctl pretrain``: pre-train the COPS network (cross-entropy losses, section 4.2)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._app import app
from ._progress import TrainProgress, report_run
from ._util import (DEVICE_HELP, RESUME_HELP, RUN_JSON_HELP, RUN_OUT_HELP, SET_HELP,
                    check_json_option, cli_errors, with_device)

@app.command("pretrain")
@cli_errors
def pretrain_command(
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help="Recipe file or packaged name (e.g. synthetic_pretrain); "
        "optional with --resume."),
    out: Path = typer.Option(..., "--out", help=RUN_OUT_HELP),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    init: Optional[Path] = typer.Option(
        None, "--init", help="Start a new run from the model weights of this checkpoint "
        "(RUN/checkpoint.pt or a `copsctl export` file); the recipe's model section must fit "
        "them. Not with --resume."),
    out_json: Optional[Path] = typer.Option(None, "--json", help=RUN_JSON_HELP),
) -> None:
    """Pre-train the network: Adam, warm-up and poly decay, checkpoints, validation with exact PQ.

    Multi-GPU: torchrun --nproc_per_node N -m copsctl pretrain ... (train.batch_size is the
    total over all processes).
    """
    from ..train.pretrain import pretrain

    check_json_option(out_json, within={"out": out}, recipe=recipe, init=init)
    overrides = with_device(overrides, device)
    with TrainProgress("pretrain") as bar:
        result = pretrain(recipe, out, overrides=overrides, resume=resume, init=init,
                          json_out=out_json, progress=bar,
                          log=lambda msg: bar.console.print(msg))
    report_run(result, "pretrain", out, out_json)
