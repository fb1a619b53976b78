"""The one Typer app every command module registers its command on (``from ._app import
app``); :mod:`copsctl.cli` imports the command modules, which keeps the import graph
acyclic."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="copsctl",
    help="Combinatorial Optimization for Panoptic Segmentation: stage-wise commands.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    # An explicit group callback keeps `copsctl <command>` a sub-command even while only
    # one command is registered (Typer otherwise runs a lone command as the app itself).
    pass
