"""Benchmark scripts: run as ``python -m copsctl.benchmarks.<name>``; they print figures."""

from __future__ import annotations

import sys
from typing import Callable

from ..errors import reporting_errors


def _say(kind: str, msg: str) -> None:
    print(f"{kind}: {msg}" if msg else kind, file=sys.stderr)


def run(main: Callable[[], None]) -> None:
    """Run a benchmark's ``main`` as the CLI runs a command
    (:func:`copsctl.errors.reporting_errors`): bad input ends it with a one-line ``error:``
    message on stderr and exit code 2, no traceback."""
    reporting_errors(main, _say)()
