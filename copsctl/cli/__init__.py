"""The ``copsctl`` command line: one Typer app, one module per command.

Each command parses its options and calls one library function; the library never
imports the CLI.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="copsctl",
    help="Combinatorial Optimization for Panoptic Segmentation: stage-wise commands.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # One line per command; each module holds one command's options.
    pass


_register()


def main() -> None:
    app()
