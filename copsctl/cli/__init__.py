"""The ``copsctl`` command line: one Typer app, one module per command.

Each command parses its options and calls one library function; the library never
imports the CLI.
"""

from __future__ import annotations

import importlib
import os

# OpenMP threads that spin while waiting make torch on a busy machine many times slower:
# one pre-training step (2 threads, another 2-thread job beside it on 2 cores) took 25 s
# with the default spin-waiting and 1.9 s with passive waiting. Set before torch loads
# OpenMP (the commands import torch lazily); a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._app import COMMANDS, app  # noqa: E402  (after the OpenMP setting)

__all__ = ["app", "main", "COMMANDS"]

for _name in COMMANDS:
    importlib.import_module(f".{_name.replace('-', '_')}", __name__)


def main() -> None:
    app()
