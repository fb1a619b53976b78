"""``copsctl demo``: the main job on the embedded default, no download, CPU only.

First version: make a synthetic cost file with its ground truth
(:mod:`copsctl.synthetic_costs`), solve it (:func:`copsctl.predict.solve_costs`), and
score the predictions with exact PQ (:func:`copsctl.metrics.pq.evaluate_files`).
Everything lands in one folder::

    OUT/costs.h5                  synthetic cost file
    OUT/costs_gt/                 its ground truth (panoptic_gt.json + panoptic_gt/)
    OUT/pred/                     predictions (panoptic_pred.json + panoptic_pred/ + summary.json)
    OUT/metrics.json              PQ, as `copsctl evaluate --json` writes it
    OUT/stages/<stage>.json       what each finished stage was made from

Re-running with the same folder skips a stage whose record in ``OUT/stages`` matches
its settings and the fingerprints (size and modification time) of its inputs and whose
outputs exist; a changed setting or a regenerated input re-runs it and what follows.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .atomic import write_json
from .errors import InputError

# Settings of the two demo sizes: (preset, images). The default shows a Cityscapes-like
# class table at 1/4 of the Cityscapes cost-map size; --quick the tiny preset.
DEMO_SIZES = {"default": ("small", 24), "quick": ("tiny", 6)}
DEMO_SEED = 0


@dataclass
class DemoResult:
    """What the demo did: the row of its report and where the files are."""

    out: Path
    preset: str
    images: int
    seconds_per_image_solve: float
    segments_per_image: float
    objective_mean: float
    pq: dict  # {"All", "Things", "Stuff": {"pq", "sq", "rq", "n"}}
    reused: list[str]
    ran: list[str]
    seconds: float


def _fingerprint(path: Path) -> list:
    """Size and modification time of a file, or of every file below a folder."""
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


class _Stages:
    """Skip-or-run bookkeeping: one JSON record per finished stage."""

    def __init__(self, out: Path, log: Callable[[str], None]):
        self.dir = out / "stages"
        self.log = log
        self.reused: list[str] = []
        self.ran: list[str] = []

    def run(self, name: str, key: dict, outputs: list[Path], func: Callable[[], None]) -> None:
        record = self.dir / f"{name}.json"
        key = json.loads(json.dumps(key))  # normalise tuples etc. for the comparison
        if record.is_file() and all(p.exists() for p in outputs):
            try:
                old = json.loads(record.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
            if old == key:
                self.log(f"{name}: up to date, reused")
                self.reused.append(name)
                return
        if record.exists():
            record.unlink()  # stale: a crash below must not leave it claiming success
        t0 = time.perf_counter()
        func()
        write_json(record, key)
        self.ran.append(name)
        self.log(f"{name}: done in {time.perf_counter() - t0:.1f} s")


def run_demo(out: str | os.PathLike = "demo_out", quick: bool = False, workers: int | None = None,
             log: Callable[[str], None] | None = None) -> DemoResult:
    """Make synthetic costs, solve them and score the predictions, in ``out``.

    Parameters
    ----------
    out : path-like
        Demo folder (created). A file there, or a non-empty folder that is not a demo
        folder, is refused.
    quick : bool
        The ``tiny`` preset and fewer images (a few seconds) instead of ``small``.
    workers : int, optional
        Solver threads (default: all CPUs).
    log : callable, optional
        Receives one line per stage.

    Returns
    -------
    DemoResult
    """
    t_start = time.perf_counter()
    from .metrics.pq import evaluate_files
    from .predict import solve_costs
    from .synthetic_costs import write_synthetic_costs

    out = Path(out)
    log = log or (lambda msg: None)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "stages").is_dir():
        raise InputError(f"--out {out}: folder is not empty and is not a copsctl demo folder "
                         "(no stages/ inside); choose another")
    out.mkdir(parents=True, exist_ok=True)
    preset, images = DEMO_SIZES["quick" if quick else "default"]
    costs, gt_dir = out / "costs.h5", out / "costs_gt"
    pred, metrics = out / "pred", out / "metrics.json"
    stages = _Stages(out, log)

    stages.run("costs", {"preset": preset, "images": images, "seed": DEMO_SEED},
               [costs, gt_dir / "panoptic_gt.json"],
               lambda: write_synthetic_costs(costs, gt_out=gt_dir, preset=preset,
                                             num_images=images, seed=DEMO_SEED))
    stages.run("solve", {"costs": _fingerprint(costs)}, [pred / "summary.json"],
               lambda: solve_costs(costs, pred, workers=workers))

    def evaluate() -> None:
        result = evaluate_files(gt_dir / "panoptic_gt.json", pred / "panoptic_pred.json",
                                gt_dir / "panoptic_gt", pred / "panoptic_pred")
        write_json(metrics, result.to_json())

    stages.run("evaluate", {"gt": _fingerprint(gt_dir), "pred": _fingerprint(pred)}, [metrics],
               evaluate)

    summary = json.loads((pred / "summary.json").read_text())
    pq_json = json.loads(metrics.read_text())
    return DemoResult(out=out, preset=preset, images=int(summary["images"]),
                      seconds_per_image_solve=float(summary["seconds_per_image_solve"]),
                      segments_per_image=float(summary["segments_per_image"]),
                      objective_mean=float(summary["objective_mean"]),
                      pq={k: pq_json[k] for k in ("All", "Things", "Stuff")},
                      reused=stages.reused, ran=stages.ran,
                      seconds=time.perf_counter() - t_start)
