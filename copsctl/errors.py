"""The one exception type for bad input, and the one way a command reports it.

Library functions raise :class:`InputError` (a :class:`ValueError`) whose message is a
single line naming the offending input and the rule it breaks. A command (the CLI's, via
:func:`copsctl.cli._util.cli_errors`, and a benchmark's, via
:func:`copsctl.benchmarks.run`) turns it into a one-line message on stderr and exit code
2, without a traceback (:func:`reporting_errors`).
"""

from __future__ import annotations

import functools
from typing import Callable

__all__ = ["InputError", "reporting_errors"]


class InputError(ValueError):
    """Bad input: a one-line message naming the input and the rule it breaks."""


def reporting_errors(func: Callable, say: Callable[[str, str], None]) -> Callable:
    """``func`` run as a command: an :class:`InputError` ends it with
    ``say("error", first line of its message)`` and exit code 2, a :class:`MemoryError`
    (an image or size too large for this machine) the same way, Ctrl-C with
    ``say("interrupted", "")`` and exit code 130; none prints a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            say("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise SystemExit(2) from None
        except (MemoryError, RuntimeError) as exc:
            # torch's allocators raise RuntimeErrors: torch.OutOfMemoryError on CUDA, "can't
            # allocate memory" on the CPU; any other RuntimeError is a bug and propagates.
            if not isinstance(exc, MemoryError) and not _out_of_memory(exc):
                raise
            first = str(exc).splitlines()[0][:200] if str(exc) else "no detail"
            say("error", f"out of memory ({first}); smaller images, sizes or batches need less")
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            say("interrupted", "")
            raise SystemExit(130) from None

    return wrapper


def _out_of_memory(exc: RuntimeError) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc)
