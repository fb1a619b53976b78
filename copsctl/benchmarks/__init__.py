"""Benchmark scripts: run as ``python -m copsctl.benchmarks.<name>``; they print figures."""

from __future__ import annotations

import sys
from typing import Callable

from ..errors import InputError


def run(main: Callable[[], None]) -> None:
    """Run a benchmark's ``main`` as the CLI runs a command: bad input (:class:`InputError`)
    ends it with a one-line ``error:`` message on stderr and exit code 2, no traceback."""
    try:
        main()
    except InputError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
