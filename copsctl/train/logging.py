"""Run metrics: one JSON line per record in ``RUN_DIR/metrics.jsonl`` and TensorBoard events.

Each record is ``{"iteration": it, "group": "train" | "val" | ..., "time": unix seconds,
<name>: <number>, ...}``; the same numbers go to TensorBoard as ``<group>/<name>`` at
step ``it`` (event files in ``RUN_DIR/tensorboard``). ``iteration`` counts the optimizer
steps completed when the record was made.

Resuming from a checkpoint of iteration ``k`` first drops the records with
``iteration > k`` (written after that checkpoint by the interrupted run; the resumed run
writes them again) and tells TensorBoard to purge its events from step ``k + 1`` on, so
both logs read as one uninterrupted run. A line cut short by a crash is dropped too.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Mapping

from ..atomic import write_text

__all__ = ["METRICS_NAME", "TENSORBOARD_DIR", "MetricsLogger", "read_metrics"]

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(path: str | os.PathLike, group: str | None = None) -> list[dict]:
    """The records of a metrics file (of one ``group`` if given); broken lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a run killed mid-write
        if isinstance(rec, dict) and (group is None or rec.get("group") == group):
            records.append(rec)
    return records


class MetricsLogger:
    """Append metric records to a run folder (JSONL and TensorBoard).

    Parameters
    ----------
    run_dir
        The run folder (created if needed).
    resume_iteration
        Resuming after this many iterations: drop later records first (module notes).
    tensorboard
        Also write TensorBoard event files.
    """

    def __init__(self, run_dir: str | os.PathLike, *, resume_iteration: int | None = None,
                 tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_NAME
        kept = []
        if resume_iteration is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("iteration", 0) <= resume_iteration]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._kept = {(r.get("iteration", 0), r.get("group", "train")) for r in kept}
        self._file = open(self.path, "a")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_iteration is None else resume_iteration + 1
            self._writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR),
                                         purge_step=purge)

    def log(self, iteration: int, metrics: Mapping[str, float], *, group: str = "train") -> dict:
        """Append one record; return it. Non-finite numbers are written as null."""
        record = {"iteration": int(iteration), "group": group, "time": round(time.time(), 3)}
        for name, value in metrics.items():
            value = float(value)
            record[name] = value if math.isfinite(value) else None
            if self._writer is not None:
                self._writer.add_scalar(f"{group}/{name}", value, int(iteration))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        return record

    def has(self, iteration: int, group: str) -> bool:
        """Whether the log a resumed run kept holds a record of ``group`` at ``iteration``."""
        return (int(iteration), group) in self._kept

    def flush(self) -> None:
        self._file.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
