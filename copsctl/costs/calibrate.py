"""Fitting the cost calibration (:class:`~copsctl.calibration.Calibration`) that maximises
exact PQ: ``copsctl calibrate``.

The search (:func:`fit_calibration`): a joint grid of the node scale and one common edge
offset, then per distance the offset and then the scale, each in steps that halve every
round. A change is kept only if it raises PQ by more than ``tol``: PQ is piecewise
constant, and among equal scores the one closest to the identity is kept. Fit on the
train split, report on val.

No torch: the search works on cached costs (:mod:`copsctl.costs.cache`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..calibration import CALIBRATION_NAME, Calibration, load_calibration
from ..cpus import available_cpus
from ..errors import InputError

__all__ = ["CalibrationFit", "fit_calibration", "calibrate_run"]


@dataclass
class CalibrationFit:
    """Result of :func:`fit_calibration`: the calibration (relative to the costs' own),
    exact PQ before and after (fractions), the number of candidates scored, the images."""

    calibration: Calibration
    pq_before: dict
    pq_after: dict
    candidates: int
    images: int
    history: list = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return {"calibration": self.calibration.to_section(), "pq_before": self.pq_before,
                "pq_after": self.pq_after, "candidates": self.candidates, "images": self.images}


class _Scorer:
    """Exact PQ of the solver's output for one calibration, over cached images."""

    def __init__(self, images, ground_truth, categories, distances, partitionable, *,
                 thing_area: float, stuff_area: float, options, workers: int):
        self.images, self.gt = images, ground_truth
        self.categories, self.distances = categories, tuple(distances)
        self.partitionable = partitionable
        self.thing_area, self.stuff_area = thing_area, stuff_area
        self.options, self.workers = options, workers
        self.calls = 0

    def __call__(self, cal: Calibration):
        from .cache import solver_problem
        from ..metrics.pq import PanopticPair, evaluate_arrays
        from ..panoptic.postprocess import panoptic_from_solution
        from ..solver import solve_many

        self.calls += 1
        problems = [solver_problem(*cal.apply(node, edge), self.distances, self.partitionable)
                    for node, edge, _ in self.images]
        results = solve_many(problems, workers=self.workers, options=self.options)
        pairs = []
        for (_, _, meta), res, (gt_ids, gt_segments) in zip(self.images, results, self.gt):
            pred = panoptic_from_solution(res.labels, res.segments, meta["cost_size"],
                                          self.categories, meta["image_size"],
                                          thing_area=self.thing_area, stuff_area=self.stuff_area)
            pairs.append(PanopticPair(meta["image_id"], gt_ids, gt_segments, pred.ids,
                                      pred.segments))
        r = evaluate_arrays(pairs, self.categories)
        return {"pq": r.all.pq, "pq_th": r.things.pq, "pq_st": r.stuff.pq}


def _check_search(images: int, rounds: int) -> None:
    """The search arguments of :func:`fit_calibration` and :func:`calibrate_run`, checked
    before any work."""
    if int(images) < 0:
        raise InputError(f"--images must be >= 0, got {images}")
    if int(rounds) < 0:
        raise InputError(f"--rounds must be >= 0, got {rounds}")


def fit_calibration(costs: str | os.PathLike, gt_json: str | os.PathLike,
                    gt_dir: str | os.PathLike | None = None, *, images: int = 0,
                    rounds: int = 2, workers: int | None = None, tol: float = 1e-4,
                    fit_scales: bool = True, overrides: Sequence[str] = (),
                    progress: Callable[[int, dict], None] | None = None) -> CalibrationFit:
    """Fit the calibration of a cost file's costs that maximises exact PQ (module notes).

    Parameters
    ----------
    costs : path-like
        Cost file (:mod:`copsctl.costs.cache`); its recipe gives the thresholds and solver settings.
    gt_json, gt_dir : path-like
        Its ground truth (COCO panoptic JSON and PNG folder; the folder defaults to the
        JSON path without suffix).
    images : int
        Use the first N images of the file (0: all).
    rounds : int
        Rounds of the per-distance search (steps halve every round).
    workers : int, optional
        Solver threads (default all CPUs).
    tol : float
        Smallest PQ gain (fraction) that moves a parameter.
    fit_scales : bool
        Also search a scale per distance (after the offsets).
    overrides : sequence of str
        ``solver.<key>=value`` and area-threshold changes of the file's recipe, as
        ``copsctl solve --set`` takes them (:func:`copsctl.panoptic.solve.apply_solve_overrides`).
    progress : callable, optional
        ``progress(candidates_scored, best_so_far)``.

    Returns
    -------
    CalibrationFit
        The calibration relative to the file's costs; compose it with the file's own
        (``Calibration.from_section(cf.recipe.calibration, m).then(fit.calibration)``)
        to apply it to the network's costs.
    """
    from .cache import CostFile
    from ..panoptic.format import load_panoptic_json, read_id_png
    from ..panoptic.solve import apply_solve_overrides, cost_file_recipe

    costs = Path(costs)
    _check_search(images, rounds)
    gt_json = Path(gt_json)
    gt_dir = Path(gt_dir) if gt_dir is not None else gt_json.with_suffix("")
    gt_set = load_panoptic_json(gt_json, gt_dir)
    by_id = {str(a.image_id): a for a in gt_set.annotations}
    with CostFile(costs) as cf:
        recipe = apply_solve_overrides(cost_file_recipe(cf), overrides)
        n = len(cf) if not images else min(int(images), len(cf))
        if n == 0:
            raise InputError(f"{costs}: cost file holds no images")
        loaded, gts = [], []
        for i in range(n):
            node, edge, meta = cf.read(i)
            ann = by_id.get(str(meta["image_id"]))
            if ann is None:
                raise InputError(f"--gt-json {gt_json}: has no annotation of image "
                                 f"{meta['image_id']!r} of {costs}")
            ids = read_id_png(gt_dir / ann.file_name, expected_size=meta["image_size"])
            loaded.append((node, edge, meta))
            gts.append((ids, ann.segments))
        categories, distances, part = cf.categories, tuple(cf.distances), cf.partitionable
    if workers is None:
        workers = available_cpus()
    score = _Scorer(loaded, gts, categories, distances, part,
                    thing_area=recipe.data.thing_area_threshold,
                    stuff_area=recipe.data.stuff_area_threshold,
                    options=recipe.solver.options(), workers=int(workers))
    return _search(score, len(distances), rounds=int(rounds), tol=float(tol),
                   fit_scales=fit_scales, progress=progress, images=n)


def _search(score: Callable[[Calibration], dict], m: int, *, rounds: int, tol: float,
            fit_scales: bool, progress, images: int) -> CalibrationFit:
    """Coordinate search from the identity (module notes)."""
    cur = Calibration.identity(m)
    before = score(cur)
    best = dict(before)
    history = [(cur, before)]

    def consider(cand: Calibration) -> bool:
        nonlocal cur, best
        got = score(cand)
        history.append((cand, got))
        if progress is not None:
            progress(len(history), best)
        if got["pq"] > best["pq"] + tol:
            cur, best = cand, got
            return True
        return False

    # 1. Node scale and one common edge offset, jointly on a grid.
    for s in (0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0):
        for o in (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0):
            if s == 1.0 and o == 0.0:
                continue
            consider(Calibration(s, (1.0,) * m, (o,) * m))
    # 2. Per distance, offsets then scales, in halving steps; the node scale last.
    step_o, step_s = 0.5, 1.41
    for _ in range(rounds):
        for i in range(m):
            for sign in (1, -1):
                while True:
                    off = list(cur.edge_offset)
                    off[i] += sign * step_o
                    if not consider(dataclasses.replace(cur, edge_offset=tuple(off))):
                        break
        if fit_scales:
            for i in range(m):
                for f in (step_s, 1 / step_s):
                    sc = list(cur.edge_scale)
                    sc[i] *= f
                    consider(dataclasses.replace(cur, edge_scale=tuple(sc)))
        for f in (step_s, 1 / step_s):
            consider(dataclasses.replace(cur, node_scale=cur.node_scale * f))
        step_o, step_s = step_o / 2, math.sqrt(step_s)
    return CalibrationFit(cur, before, best, len(history), images, history)


def calibrate_run(run: str | os.PathLike, *, split: str = "train", images: int = 0,
                  out: str | os.PathLike | None = None, rounds: int = 2,
                  workers: int | None = None, batch_size: int = 4, device: str = "auto",
                  overrides: Sequence[str] = (), log: Callable[[str], None] | None = None,
                  progress: Callable[[int, dict], None] | None = None) -> tuple[CalibrationFit, Calibration, Path]:
    """Calibrate a run's checkpoint on one split of its dataset (``copsctl calibrate --run``).

    Dumps the split's costs (the first ``images``; 0: all) to a temporary cost file, fits
    the calibration on them (:func:`fit_calibration`), composes it with the calibration
    the costs already had and writes the result to ``out`` (default
    ``RUN/calibration.yaml``), where ``dump-costs``, ``finetune`` and ``predict`` find it.
    ``overrides`` (``section.key=value``) change the run's recipe for the dump and the fit,
    e.g. its ``solver`` keys.

    Returns
    -------
    (fit, calibration, path)
        The fit (relative to the dumped costs), the composed calibration, the file.
    """
    import tempfile

    from ..config import load_recipe
    from .network import dump_costs
    from ..metrics.pq import ground_truth_from_recipe

    say = log or (lambda msg: None)
    _check_search(images, rounds)
    run = Path(run)
    recipe_path = run / "recipe.yaml"
    if not run.is_dir():
        raise InputError(f"--run {run}: run folder does not exist")
    if not recipe_path.is_file():
        raise InputError(f"--run {run}: holds no recipe.yaml (not a copsctl run folder)")
    out = Path(out) if out is not None else run / CALIBRATION_NAME
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; name the calibration file to write")
    cfg = load_recipe(recipe_path, list(overrides))
    gt_json, gt_dir = ground_truth_from_recipe(recipe_path, split, overrides)
    with tempfile.TemporaryDirectory(prefix="copsctl-calibrate-") as tmp:
        costs = Path(tmp) / "costs.h5"
        say(f"dumping the costs of {images or 'all'} {split} images")
        # The run's recipe and the calibration already beside the checkpoint, if any:
        # the fit is relative to those costs.
        summary = dump_costs(costs, run=run, split=split, limit=images, batch_size=batch_size,
                             device=device, overrides=overrides)
        base = cfg.calibration
        if summary.get("calibration"):
            base = load_calibration(summary["calibration"])
        base = Calibration.from_section(base, len(cfg.model.distances))
        say("fitting the calibration with the solver")
        fit = fit_calibration(costs, gt_json, gt_dir, rounds=rounds, workers=workers,
                              progress=progress)
    full = base.then(fit.calibration)
    full.save(out, f"copsctl calibrate --run {run} --split {split}: {fit.images} images, "
                   f"exact PQ {100 * fit.pq_before['pq']:.2f} -> {100 * fit.pq_after['pq']:.2f}\n"
                   "applied after the network's costs by dump-costs, finetune and predict")
    return fit, full, out
