"""Validation during training: exact PQ of the network's costs through the AMWC solver.

The same path as ``copsctl dump-costs`` -> ``copsctl solve`` -> ``copsctl evaluate``,
without files, so both give the same numbers: costs of the evaluation transform
(:func:`copsctl.costs.network.network_costs`), the solver on each image (``solve_many`` on
:func:`copsctl.costs.cache.solver_problem`, pre-clustering on the shortest edges), stuff
merging, upsampling to the original size and small-segment rejection in original pixels
(:mod:`copsctl.panoptic.postprocess`, thresholds ``data.thing_area_threshold`` /
``data.stuff_area_threshold``), then exact PQ against the original-resolution ground
truth (:mod:`copsctl.metrics.pq`, counts pooled image by image so memory stays flat).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..costs.cache import solver_problem
from ..costs.network import network_costs
from ..metrics.pq import PanopticPair, PQCounts, PQResult, image_counts
from ..panoptic.format import Segment, read_id_png
from ..panoptic.postprocess import panoptic_from_solution
from ..solver import SolverOptions, solve_many

if TYPE_CHECKING:
    from ..config import Recipe
    from ..data.loader import PanopticDataset

__all__ = ["validate_pq", "validate_from_recipe", "pq_metrics", "ground_truth"]


def ground_truth(dataset: "PanopticDataset", index: int) -> tuple[np.ndarray, list[Segment]]:
    """Original-resolution id map and segment table of image ``index`` (the image is not read)."""
    reader = dataset.reader
    ids = read_id_png(reader.label_path(index))
    seg_ids, classes, crowd = reader.segments_of(index)
    cats = reader.class_table.category_ids_of(classes)
    # PQ reads only id, category and crowd flag; areas are counted from the map.
    segments = [Segment(int(i), int(c), 0, (0, 0, 0, 0), bool(k))
                for i, c, k in zip(seg_ids, cats, crowd)]
    return ids, segments


def pq_metrics(result: PQResult) -> dict[str, float]:
    """PQ, SQ, RQ of All, Things (``_th``) and Stuff (``_st``) in percent."""
    out = {}
    for suffix, g in (("", result.all), ("_th", result.things), ("_st", result.stuff)):
        out[f"PQ{suffix}"] = 100 * g.pq
        out[f"SQ{suffix}"] = 100 * g.sq
        out[f"RQ{suffix}"] = 100 * g.rq
    return out


def validate_pq(model: torch.nn.Module, dataset: "PanopticDataset", *,
                thing_area: float, stuff_area: float, options: SolverOptions | None = None,
                solver_workers: int | None = None, limit: int = 0, batch_size: int = 4,
                device: str | torch.device = "cpu", amp: bool = True, num_workers: int = 0,
                should_stop: Callable[[], bool] | None = None) -> tuple[PQResult, dict]:
    """Exact PQ of ``model`` on an evaluation dataset (module notes).

    Parameters
    ----------
    model : PanopticModel (or DDP-wrapped)
    dataset : PanopticDataset
        Evaluation dataset (``train=False``).
    thing_area, stuff_area : float
        Small-segment thresholds in original pixels.
    options : SolverOptions, optional
    solver_workers : int, optional
        Threads of ``solve_many`` (None: all CPUs).
    limit : int
        Only the first ``limit`` images (0: all).
    batch_size, device, amp, num_workers
        As in :func:`copsctl.costs.network.network_costs`; the images of one network batch
        are solved together.
    should_stop : callable, optional
        Checked between batches; True abandons the validation (returns None, {}).

    Returns
    -------
    (PQResult, timings)
        ``timings``: ``seconds``, ``network_seconds``, ``solver_seconds``, ``images``.
    """
    n = len(dataset) if not limit else min(int(limit), len(dataset))
    categories = dataset.reader.class_table.to_categories()
    partitionable = dataset.thing_classes.astype(bool)
    distances = dataset.distances
    options = options or SolverOptions()
    total = PQCounts.zeros([c.id for c in categories])
    t_start = time.perf_counter()
    t_solver = 0.0
    pending: list = []
    done = 0

    def flush() -> None:
        nonlocal total, t_solver, done
        if not pending:
            return
        t = time.perf_counter()
        problems = [solver_problem(nc, em, distances, partitionable) for nc, em, _ in pending]
        results = solve_many(problems, workers=solver_workers, options=options)
        t_solver += time.perf_counter() - t
        for (nc, em, meta), res in zip(pending, results):
            pred = panoptic_from_solution(res.labels, res.segments, meta["cost_size"],
                                          categories, meta["image_size"],
                                          thing_area=thing_area, stuff_area=stuff_area)
            gt_ids, gt_segments = ground_truth(dataset, meta["index"])
            total = total + image_counts(PanopticPair(meta["image_id"], gt_ids, gt_segments,
                                                      pred.ids, pred.segments), categories)
            done += 1
        pending.clear()

    stopped = False
    for item in network_costs(model, dataset, indices=range(n), batch_size=batch_size,
                              device=device, amp=amp, num_workers=num_workers):
        pending.append(item)
        if len(pending) >= batch_size:
            flush()
            if should_stop is not None and should_stop():
                stopped = True
                break
    if stopped:
        return None, {}
    flush()
    seconds = time.perf_counter() - t_start
    timings = {"seconds": seconds, "solver_seconds": t_solver,
               "network_seconds": seconds - t_solver, "images": done}
    return PQResult.from_counts(total, categories, num_images=done), timings


def validate_from_recipe(model: torch.nn.Module, dataset: "PanopticDataset", recipe: "Recipe", *,
                         device: str | torch.device, batch_size: int,
                         should_stop: Callable[[], bool] | None = None) -> dict[str, float] | None:
    """:func:`validate_pq` with the recipe's thresholds, solver settings and image limit;
    returns :func:`pq_metrics` plus ``seconds`` (None when stopped)."""
    s = recipe.solver
    result, timings = validate_pq(
        model, dataset, thing_area=recipe.data.thing_area_threshold,
        stuff_area=recipe.data.stuff_area_threshold, options=s.options(),
        solver_workers=s.workers or None, limit=recipe.train.val_images, batch_size=batch_size,
        device=device, amp=recipe.train.amp, num_workers=min(recipe.data.num_workers, 2),
        should_stop=should_stop)
    if result is None:
        return None
    metrics = pq_metrics(result)
    metrics["seconds"] = timings["seconds"]
    metrics["solver_seconds"] = timings["solver_seconds"]
    return metrics
