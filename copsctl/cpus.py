"""The number of worker threads: the default (the CPUs this process may run on) and the one
check of a ``--workers`` value."""

from __future__ import annotations

import os

from .errors import InputError

__all__ = ["available_cpus", "check_workers"]


def available_cpus() -> int:
    """CPUs this process may use (its affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_workers(workers: int | None) -> int | None:
    """``workers`` as an int (None when not given: the caller's default), refusing fewer
    than one thread with the error every ``--workers`` gives."""
    if workers is None:
        return None
    if int(workers) < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    return int(workers)
