"""Solve every image of a cost file and write COCO panoptic predictions.

The library side of ``copsctl solve``. Output folder layout (the COCO panoptic format
of :mod:`copsctl.panoptic.format`, ready for ``copsctl evaluate``)::

    OUT/panoptic_pred.json     images, annotations (segments_info), categories
    OUT/panoptic_pred/*.png    RGB-encoded segment ids at the original image size
    OUT/summary.json           settings used and timings (as returned by solve_costs)
    OUT/.copsctl-output.json   the manifest: every file above (copsctl.atomic)

Every ``segments_info`` entry carries a ``score``, the segment's confidence
(:func:`copsctl.panoptic.postprocess.segment_scores`), by which instance AP ranks predictions.

The folder is assembled under a temporary name beside ``OUT`` and renamed at the end,
so a failure leaves no partial ``OUT`` (:mod:`copsctl.atomic`). An existing ``OUT`` is
replaced only when it is empty or an earlier output of ``copsctl solve`` holding nothing
else (its manifest lists every file), unless ``overwrite``.

Settings not given explicitly come from the recipe stored in the cost file
(:func:`cost_file_recipe`): the small-segment thresholds from ``data.thing_area_threshold``
and ``data.stuff_area_threshold`` and the solver options from ``solver.*`` (the keys of
:mod:`copsctl.config`); a file without a recipe gets the code defaults (200 / 2048 and
``SolverOptions()``).
``overrides`` (``copsctl solve --set``) change those keys of the stored recipe, and the
recipe used is written beside the predictions as ``OUT/recipe.yaml``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..atomic import atomic_path, write_json
from ..calibration import Calibration
from ..costs.cache import CostFile, solver_problem
from ..cpus import available_cpus, check_workers
from ..errors import InputError
from ..atomic import check_output, check_output_folder, write_manifest
from .format import Annotation, Category, PanopticWriter
from .postprocess import PanopticPrediction, panoptic_from_solution, segment_scores
from ..solver import AMWCResult, SolverOptions, solve_many

if TYPE_CHECKING:
    from ..config import Recipe

PRED_JSON = "panoptic_pred.json"
PRED_DIR = "panoptic_pred"
SUMMARY_JSON = "summary.json"
RECIPE_YAML = "recipe.yaml"

# The recipe keys solving reads; `--set` may change only these.
_SOLVE_KEYS = ("data.thing_area_threshold", "data.stuff_area_threshold")


def apply_solve_overrides(recipe: "Recipe", overrides: Sequence[str]) -> "Recipe":
    """The recipe with ``section.key=value`` overrides of the keys solving reads.

    Parameters
    ----------
    recipe : Recipe
        The cost file's recipe (:attr:`copsctl.costs.cache.CostFile.recipe`).
    overrides : sequence of str
        ``solver.<key>=value`` (any key of :class:`copsctl.config.SolverConfig`) or
        ``data.thing_area_threshold`` / ``data.stuff_area_threshold``; values are checked
        by the recipe rules of :mod:`copsctl.config`.

    Returns
    -------
    Recipe
        A new recipe (recipes are immutable).
    """
    from ..config import parse_override

    for text in overrides:
        dotted, _ = parse_override(text)
        if not (dotted.startswith("solver.") or dotted in _SOLVE_KEYS):
            raise InputError(f"--set {dotted}: copsctl solve reads only solver.* and "
                             f"{', '.join(_SOLVE_KEYS)} (other keys belong to other commands)")
    return recipe.replace(list(overrides))


def cost_file_recipe(cf: CostFile) -> "Recipe":
    """The recipe to solve a cost file with: the one stored in it, else the code defaults
    (:mod:`copsctl.config`; thresholds 200 / 2048, ``SolverOptions()``) with the file's
    distances."""
    from ..config import Recipe

    stored = cf.recipe
    return stored if stored is not None else \
        Recipe().replace({"model.distances": list(cf.distances)})


def scored_prediction(result: AMWCResult, node_costs: np.ndarray,
                      categories: Sequence[Category], image_size: tuple[int, int], *,
                      thing_area: float, stuff_area: float) -> PanopticPrediction:
    """One image's solver result -> its panoptic prediction with a score per segment.

    Parameters
    ----------
    result : AMWCResult
        The solution on the ``h x w`` cost grid.
    node_costs : (K, h, w) float ndarray
        The node costs it was solved with (class-major maps; a view is fine).
    categories, image_size, thing_area, stuff_area
        As in :func:`copsctl.panoptic.postprocess.panoptic_from_solution`.

    Returns
    -------
    PanopticPrediction
        Every segment's ``score`` set by :func:`copsctl.panoptic.postprocess.segment_scores`.
    """
    K, h, w = node_costs.shape
    pred = panoptic_from_solution(result.labels, result.segments, (h, w), categories,
                                  image_size, thing_area=thing_area, stuff_area=stuff_area)
    class_index = {c.id: k for k, c in enumerate(categories)}
    scores = segment_scores(pred.cost_ids, {s.id: class_index[s.category_id]
                                            for s in pred.segments}, node_costs)
    for s in pred.segments:
        s.score = scores[s.id]
    return pred


def _png_names(file_names: list[str]) -> list[str]:
    """One distinct PNG name per image: the image's file name with a .png suffix."""
    names, seen = [], set()
    for i, fn in enumerate(file_names):
        name = Path(fn).with_suffix(".png").name or f"{i:06d}.png"
        if name in seen:
            name = f"{Path(name).stem}_{i:06d}.png"
        seen.add(name)
        names.append(name)
    return names


def _calibrated_problem(cf: CostFile, i: int, calibration: Calibration):
    """:meth:`CostFile.problem` with ``calibration`` applied to the cached costs."""
    node, edge, meta = cf.read(i)
    return solver_problem(*calibration.apply(node, edge), cf.distances, cf.partitionable), meta


def solve_costs(costs: str | os.PathLike, out: str | os.PathLike, *, workers: int | None = None,
                thing_area: float | None = None, stuff_area: float | None = None,
                overwrite: bool = False,
                options: SolverOptions | None = None, batch_size: int | None = None,
                summary_json: str | os.PathLike | None = None,
                overrides: Sequence[str] = (), calibration: Calibration | None = None,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Solve all images of a cost file; write panoptic predictions to ``out``.

    Parameters
    ----------
    costs : path-like
        Cost file (:mod:`copsctl.costs.cache`).
    out : path-like
        Prediction folder (see the module docstring), written atomically.
    overwrite : bool
        Replace ``out`` even when it holds files ``copsctl solve`` did not write.
    workers : int, optional
        Threads solving concurrently (default: the recipe's ``solver.workers`` when it is
        positive, else all CPUs).
    thing_area, stuff_area : float, optional
        Small-segment rejection thresholds in pixels at the original image size.
    options : SolverOptions, optional
        Solver settings; default from the cost file's recipe.
    batch_size : int, optional
        Images read and solved together (default ``2 * workers``); bounds memory.
    summary_json : path-like, optional
        Also write the returned summary there (atomically).
    overrides : sequence of str
        ``section.key=value`` changes of the stored recipe's solver keys
        (:func:`apply_solve_overrides`); explicit arguments still win over them.
    calibration : Calibration, optional
        The cost calibration to solve with (:mod:`copsctl.calibration`), stated for the
        network's costs: the costs in the file are already calibrated by their recipe's
        ``calibration`` section, so only the difference is applied; the prediction
        folder's recipe records the new one.
    progress : callable, optional
        Called as ``progress(done, total)`` after each batch.

    Returns
    -------
    dict
        ``images``, ``seconds_per_image_solve`` (wall time of the solves divided by the
        images), ``seconds_per_image`` (everything), ``segments_per_image`` (after
        rejection), ``solver_segments_per_image`` (before merging stuff and rejection),
        ``rejected_per_image``, ``objective_mean``, the settings used and the paths.
    """
    t_start = time.perf_counter()
    costs, out = Path(costs), Path(out)
    workers = check_workers(workers)
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"`batch_size` must be at least 1, got {batch_size}")
    for name, v in (("--thing-area", thing_area), ("--stuff-area", stuff_area)):
        if v is not None and (not np.isfinite(v) or v < 0):
            raise InputError(f"{name} must be a non-negative number, got {v}")
    check_output_folder(out, "--out", "solve", overwrite=overwrite, inputs={"COSTS": costs})
    check_output(summary_json, "--json", inputs={"COSTS": costs}, within={"--out": out})

    with CostFile(costs) as cf:
        recipe = cost_file_recipe(cf)
        # recipe.yaml records the recipe used when there is one to record.
        record_recipe = bool(cf.recipe_text.strip() or overrides or calibration is not None)
        if overrides:
            recipe = apply_solve_overrides(recipe, overrides)
        if thing_area is None:
            thing_area = recipe.data.thing_area_threshold
        if stuff_area is None:
            stuff_area = recipe.data.stuff_area_threshold
        if options is None:
            options = recipe.solver.options()
        n = len(cf)
        if n == 0:
            raise InputError(f"{costs}: cost file holds no images")
        relative = None
        if calibration is not None:
            m = len(cf.distances)
            base = Calibration.from_section(recipe.calibration, m)
            calibration = calibration.check(m, "--calibration")
            relative = calibration.relative_to(base)
            recipe = recipe.replace({f"calibration.{k}": v
                                     for k, v in calibration.to_section().items()})
        if workers is None:
            # The recipe's solver.workers (0 = all cores) when --workers is not given.
            workers = recipe.solver.workers or available_cpus()
        workers = int(workers)
        batch = int(batch_size) if batch_size is not None else 2 * workers
        png_names = _png_names(cf.file_names)
        categories = cf.categories

        solve_seconds = 0.0
        n_segments = n_solver_segments = n_rejected = 0
        objectives = []
        with atomic_path(out) as tmp, ThreadPoolExecutor(max_workers=1) as reader:
            writer = PanopticWriter(tmp / PRED_JSON, tmp / PRED_DIR, categories)
            # One batch is read (and decoded) while the one before it is solved.
            def read(indices) -> list:
                return [cf.problem(i) if relative is None else _calibrated_problem(cf, i, relative)
                        for i in indices]

            ahead = reader.submit(read, range(min(batch, n)))
            for start in range(0, n, batch):
                idx = list(range(start, min(start + batch, n)))
                loaded = ahead.result()
                ahead = reader.submit(read, range(idx[-1] + 1, min(idx[-1] + 1 + batch, n)))
                t0 = time.perf_counter()
                try:
                    results = solve_many([p for p, _ in loaded], workers=workers,
                                         options=options)
                except InputError as exc:
                    # solve_many names problems[j]; name the image instead.
                    msg = str(exc)
                    if msg.startswith("`problems["):
                        j = int(msg[len("`problems["):msg.index("]")])
                        msg = f"image {loaded[j][1]['image_id']!r}" + msg[msg.index("`:") + 1:]
                    raise InputError(f"{costs}: {msg}") from None
                solve_seconds += time.perf_counter() - t0
                for (prob, meta), res in zip(loaded, results):
                    h, w = meta["cost_size"]
                    # The solver input holds the node costs as a transposed (N, K) view.
                    node_costs = prob[0].T.reshape(len(categories), h, w)
                    pred = scored_prediction(res, node_costs, categories, meta["image_size"],
                                             thing_area=thing_area, stuff_area=stuff_area)
                    writer.add(Annotation(meta["image_id"], png_names[meta["index"]],
                                          pred.segments), pred.ids,
                               image_file_name=meta["file_name"], image_size=meta["image_size"])
                    n_segments += len(pred.segments)
                    n_solver_segments += res.num_segments
                    n_rejected += pred.num_rejected
                    objectives.append(res.objective)
                if progress is not None:
                    progress(idx[-1] + 1, n)
            writer.write_json()
            if record_recipe:
                (tmp / RECIPE_YAML).write_text(
                    f"# recipe of {costs}" + (f" with --set {' '.join(overrides)}" if overrides
                                               else "") + "\n"
                    "# copsctl solve reads solver.* and data.{thing,stuff}_area_threshold\n"
                    + recipe.dump())
            summary = {
                "costs": str(costs), "out": str(out), "pred_json": str(out / PRED_JSON),
                "pred_dir": str(out / PRED_DIR), "images": n, "workers": workers,
                "thing_area": thing_area, "stuff_area": stuff_area,
                "solver_options": dataclasses.asdict(options), "overrides": list(overrides),
                "seconds_solve": solve_seconds,
                "seconds_per_image_solve": solve_seconds / n,
                "segments_per_image": n_segments / n,
                "solver_segments_per_image": n_solver_segments / n,
                "rejected_per_image": n_rejected / n,
                "objective_mean": float(np.mean(objectives)),
            }
            summary["seconds_per_image"] = (time.perf_counter() - t_start) / n
            with open(tmp / SUMMARY_JSON, "w") as f:
                json.dump(summary, f, indent=2)
                f.write("\n")
            write_manifest(tmp, "solve")
    if summary_json is not None:
        write_json(summary_json, summary)
    return summary
