"""Rich rendering of a training run's events (``copsctl pretrain``, ``copsctl finetune``).

The training library reports :class:`~copsctl.train.loop.TrainEvent` objects through a
callback; :class:`TrainProgress` is that callback for the CLI: a progress bar with the
elapsed time, the ETA and the latest logged losses on a terminal, nothing per step
otherwise (logs, pipes), and one line per validation either way.
"""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

import typer

from ._util import console as default_console
from ._util import err_console, is_terminal, write_json_option

# Log-record entries shown beside the bar, with their short labels, when present.
_SHOWN = (("loss", "loss"), ("loss_semantic", "sem"), ("loss_affinity", "aff"),
          ("loss_pq", "pq"), ("pq_surrogate", "sPQ"), ("pq_exact", "PQ"))


def format_train_metrics(metrics: dict) -> str:
    """Short one-line summary of a ``train`` log record."""
    parts = [f"{label} {metrics[key]:.3f}" for key, label in _SHOWN
             if isinstance(metrics.get(key), (int, float))]
    if isinstance(metrics.get("lr"), (int, float)):
        parts.append(f"lr {metrics['lr']:.2e}")
    if isinstance(metrics.get("images_per_s"), (int, float)):
        parts.append(f"{metrics['images_per_s']:.1f} img/s")
    return "  ".join(parts)


def format_val_metrics(metrics: dict) -> str:
    """``PQ 41.2 (things 30.1, stuff 52.3)`` from :func:`copsctl.train.validate.pq_metrics`."""
    return (f"PQ {metrics.get('PQ', float('nan')):.1f} (things "
            f"{metrics.get('PQ_th', float('nan')):.1f}, stuff "
            f"{metrics.get('PQ_st', float('nan')):.1f})")


class TrainProgress:
    """Callback for ``TrainEvent`` objects; use as a context manager around the run."""

    def __init__(self, title: str, *, console: Console | None = None,
                 enabled: bool | None = None) -> None:
        self.console = console or default_console
        self.enabled = is_terminal() if enabled is None else bool(enabled)
        self.title = title
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                                  TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                  console=self.console, disable=not self.enabled,
                                  transient=False)
        self._task = None
        self._check_task = None

    def __enter__(self) -> "TrainProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def __call__(self, event) -> None:
        if event.kind == "check":
            if self._check_task is None:
                self._check_task = self._progress.add_task("checking data", total=event.total,
                                                           info="")
            self._progress.update(self._check_task, completed=event.iteration)
        elif event.kind == "start":
            self._task = self._progress.add_task(self.title, total=event.total,
                                                 completed=event.iteration, info="")
        elif self._task is None:
            return
        elif event.kind == "step":
            self._progress.update(self._task, completed=event.iteration)
        elif event.kind == "log":
            self._progress.update(self._task, completed=event.iteration,
                                  info=format_train_metrics(event.metrics))
        elif event.kind == "validation":
            self._progress.console.print(f"iteration {event.iteration}: validation "
                                         f"{format_val_metrics(event.metrics)}")


def report_run(result, command: str, out, out_json) -> None:
    """Print a training command's outcome and write its ``--json``; Ctrl-C exits with 130.

    ``result`` is a :class:`copsctl.train.loop.RunResult`; only the main process reports.
    """
    if not result.is_main:
        return
    write_json_option(out_json, result.to_json())
    if result.interrupted:
        err_console.print(f"interrupted at iteration {result.iteration} of {result.iterations}; "
                          f"checkpoint saved. Continue with: copsctl {command} --out {out} "
                          "--resume")
        raise typer.Exit(code=130)
    if result.resumed_from == result.iterations:
        default_console.print(f"{out}: the run had already finished "
                              f"({result.iterations} iterations)")
        return
    default_console.print(f"finished {result.iterations} iterations in {result.seconds:.0f} s "
                          f"-> {out}")
    if result.train_metrics:
        default_console.print(f"last log: {format_train_metrics(result.train_metrics)}")
    if result.val_metrics:
        default_console.print(f"validation: {format_val_metrics(result.val_metrics)}")


@contextlib.contextmanager
def count_progress(label: str):
    """A progress bar (on a terminal only) for a library's ``progress(done, total)`` callback.

    ``with count_progress("solving") as progress: solve_costs(..., progress=progress)``
    """
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=default_console, disable=not is_terminal(), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
