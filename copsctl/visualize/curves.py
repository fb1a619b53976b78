"""Training curves of a run folder: ``copsctl visualize run``.

Reads ``RUN_DIR/metrics.jsonl`` (:mod:`copsctl.train.logging`) and draws, side by side:

- the **losses** of the ``train`` records (``loss`` and every ``loss_*`` entry) against
  the iteration, on a log scale when all are positive;
- for a fine-tuning run with the PQ surrogate (records with ``pq_surrogate``), the
  paper's Figure 5: the surrogate PQ (6) and the exact PQ (5) of the training batches
  (``pq_surrogate``, ``pq_exact``) with the validation PQ of the ``val`` records;
- otherwise, when the run validated, the validation PQ, PQ_things and PQ_stuff.

All PQ values are drawn in percent (the ``val`` records hold percent, the per-batch
training values fractions in [0, 1]).

A value that cannot be drawn (null, as the log writes a non-finite number, infinity, a
bool, or a magnitude beyond float32's range, in which training computes: matplotlib's
axis arithmetic overflows on numbers near float64's) leaves a gap in its curve. A record
whose ``iteration`` is not a whole number in [0, 2**63) (a bool, a float, text: no
record ``copsctl`` writes) is skipped, with a note.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import InputError

__all__ = ["run_figure"]


# The largest magnitude drawn: float32's (every logged loss is computed in float32).
_LARGEST = 3.4028234663852886e38


def _drawable(v) -> bool:
    """Whether ``v`` is a number a curve can show (module notes)."""
    # NaN compares false, and an int compares exactly, however large
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= _LARGEST


def _iteration_ok(r: dict) -> bool:
    it = r.get("iteration")
    return isinstance(it, int) and not isinstance(it, bool) and 0 <= it < 2 ** 63


def _series(records: list[dict], key: str, scale: float = 1.0) -> tuple[list, list]:
    """The points of ``key`` over the records holding it; an undrawable value is a gap (NaN)."""
    xs, ys = [], []
    for r in records:
        if key in r:
            xs.append(r["iteration"])
            ys.append(scale * r[key] if _drawable(r[key]) else math.nan)
    return xs, ys


def _plot(ax, xs, ys, label: str, **kw) -> None:
    # A run with one record would draw an invisible line, and so would a point between two
    # gaps: mark every point of a short run, and those points of a longer one.
    n = len(ys)
    mark = list(range(n)) if n < 3 else [
        i for i in range(n) if not math.isnan(ys[i])
        and (i == 0 or math.isnan(ys[i - 1])) and (i == n - 1 or math.isnan(ys[i + 1]))]
    ax.plot(xs, ys, label=label, marker="o" if mark else None, markevery=mark or None,
            markersize=3, **kw)


def run_figure(run_dir: str | os.PathLike, out: str | os.PathLike, *, title: str | None = None,
               dpi: int = 100) -> dict:
    """Draw the curves of a run folder to a PNG (module notes).

    Parameters
    ----------
    run_dir : path-like
        Folder of ``copsctl pretrain`` or ``copsctl finetune`` (its ``metrics.jsonl``).
    out : path-like
        PNG file, written atomically.
    title : str, optional
        Figure title (default: the folder name and the kind of run).

    Returns
    -------
    dict
        ``out``, ``kind`` (``"finetune"`` for a PQ-surrogate run, else ``"train"``),
        ``train_records``, ``val_records``, ``last_iteration``, ``notes`` (the records
        skipped, as lines for the user).

    Raises
    ------
    InputError
        No run folder, or no training record in its log.
    """
    from ..atomic import atomic_path
    from ..train.logging import METRICS_NAME, read_metrics
    from ._mpl import new_figure, save_figure

    run_dir, out = Path(run_dir), Path(out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out}: must be a .png file")
    log = run_dir / METRICS_NAME
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder does not exist")
    if not log.is_file():
        raise InputError(f"{run_dir}: holds no {METRICS_NAME} (not a copsctl run folder?)")
    records = [r for r in read_metrics(log) if r.get("group") in ("train", "val")]
    bad = [repr(r.get("iteration")) for r in records if not _iteration_ok(r)]
    skipped = (f"skipped {len(bad)} record{'s' if len(bad) > 1 else ''} whose iteration is not "
               f"a whole number in [0, 2**63) (first: {bad[0][:40]}"
               f"{'...' if len(bad[0]) > 40 else ''})") if bad else ""
    train = [r for r in records if r["group"] == "train" and _iteration_ok(r)]
    val = [r for r in records if r["group"] == "val" and _iteration_ok(r)]
    if not train:
        raise InputError(f"{log}: holds no training record yet" + (f"; {skipped}" if bad else ""))
    surrogate = any(_drawable(r.get("pq_surrogate")) for r in train)
    loss_keys = sorted({k for r in train for k in r
                        if (k == "loss" or k.startswith("loss_")) and _drawable(r[k])},
                       key=lambda k: (k != "loss", k))

    fig = new_figure(figsize=(10.0, 3.6))
    left, right = fig.subplots(1, 2)
    for key in loss_keys:
        _plot(left, *_series(train, key), label=key, lw=1)
    values = [v for key in loss_keys for v in _series(train, key)[1] if not math.isnan(v)]
    if values and min(values) > 0 and max(values) > 10 * min(values):
        left.set_yscale("log")
    left.set_xlabel("iteration")
    left.set_title("training losses", fontsize=10)
    if left.lines:
        left.legend(fontsize=8)

    if surrogate:
        _plot(right, *_series(train, "pq_surrogate", 100.0), label="surrogate PQ (train batch)",
              lw=1)
        _plot(right, *_series(train, "pq_exact", 100.0), label="exact PQ (train batch)", lw=1)
        if val:
            _plot(right, *_series(val, "PQ"), label="PQ (validation)", lw=1.5, color="k")
        right.set_title("surrogate vs exact PQ (cf. the paper's Figure 5)", fontsize=10)
    elif val:
        for key, label in (("PQ", "PQ"), ("PQ_th", "PQ things"), ("PQ_st", "PQ stuff")):
            _plot(right, *_series(val, key), label=label, lw=1.5)
        right.set_title("validation PQ (exact, through the solver)", fontsize=10)
    else:
        right.text(0.5, 0.5, "no validation yet", ha="center", va="center",
                   transform=right.transAxes, color="#666666")
        right.set_title("validation PQ", fontsize=10)
    right.set_xlabel("iteration")
    right.set_ylabel("PQ (%)")
    if right.lines:
        right.legend(fontsize=8)
    kind = "finetune" if surrogate else "train"
    what = "fine-tuning through the solver" if surrogate else "training"
    fig.suptitle(title or f"{run_dir.name} ({what})", fontsize=11)
    with atomic_path(out, suffix=".png") as tmp:
        save_figure(fig, tmp, dpi=dpi)
    return {"out": str(out), "kind": kind, "train_records": len(train), "val_records": len(val),
            "last_iteration": max(r["iteration"] for r in train),
            "notes": [f"{log}: {skipped}"] if bad else []}
