"""PQ, semantic and instance metrics of a panoptic prediction set in one pass.

The library side of ``copsctl evaluate``. Each image's two PNGs are decoded once and
their segment intersections counted once (:func:`copsctl.metrics.pq.file_overlaps`);
every requested metric is computed from those:

- ``pq``: exact PQ, SQ and RQ (:mod:`copsctl.metrics.pq`, cityscapesscripts' numbers);
- ``semantic``: mIoU, fwIoU, pixel and mean accuracy of the category maps
  (:mod:`copsctl.metrics.semantic`), summed from the intersections;
- ``instances``: COCO mask AP of the thing segments (:mod:`copsctl.metrics.instances`),
  which needs a ``score`` on the predicted segments. Without any score it is left out
  with a note; with scores on only some predicted thing segments it is an error.

``cityscapes_ap=True`` adds cityscapesscripts' own instance AP on instance files written
from the two sets into a temporary folder (slow: one PNG per predicted instance).

This module never imports torch.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import InputError
from ..panoptic.format import Category
from . import pq as _pq
from .pq import PQCounts, PQResult

if TYPE_CHECKING:  # imported when computed: `--metrics pq` loads neither
    from .instances import CityscapesResult, InstanceResult
    from .semantic import SemanticResult

__all__ = ["METRICS", "Evaluation", "parse_metrics", "evaluate_files", "evaluate",
           "keep_freed_memory"]

METRICS = ("pq", "semantic", "instances")


def keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed memory instead of handing it back to the kernel.

    A process-wide setting, so the library never applies it on its own: ``copsctl
    evaluate`` (a short process) calls it first, and so does the PQ benchmark.

    Every image allocates a few id-sized arrays (half a megabyte at 256x512). Left to
    glibc's defaults they are mapped and unmapped per image, and faulting their pages in
    again cost about a fifth of the whole command on 150 such images (0.21 s of system
    time, 92 000 page faults; with this, 0.01 s and 2 600). A no-op on other C libraries.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 256 << 20)


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"pq,semantic"`` (or a sequence of names) -> the names in :data:`METRICS` order."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise InputError(f"--metrics {','.join(names) if names else text!r}: pick one or more "
                         f"of {', '.join(METRICS)} (comma-separated), got "
                         f"{unknown[0] if unknown else 'none'!r}")
    return tuple(m for m in METRICS if m in names)


@dataclass(frozen=True)
class Evaluation:
    """What ``copsctl evaluate`` reports; a metric not requested (or left out) is None."""

    categories: list[Category] = field(repr=False)
    num_images: int
    metrics: tuple[str, ...] = METRICS
    pq: PQResult | None = None
    semantic: SemanticResult | None = None
    instances: InstanceResult | None = None
    cityscapes: CityscapesResult | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """PQ's keys (``All``, ``Things``, ``Stuff``, ``per_class``) when PQ was computed,
        plus ``semantic`` and ``instances`` when requested (``instances`` is null when
        left out), ``cityscapes_instances`` with ``cityscapes_ap``, and ``notes``."""
        out = self.pq.to_json() if self.pq is not None else {}
        if self.semantic is not None:
            out["semantic"] = self.semantic.to_json()
        if "instances" in self.metrics:
            out["instances"] = None if self.instances is None else self.instances.to_json()
        if self.cityscapes is not None:
            out["cityscapes_instances"] = self.cityscapes.to_json()
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _check_scores(tasks, thing: np.ndarray, pred_json) -> bool:
    """True when every predicted thing segment carries a score (also when there is none:
    zero detections score AP 0); False when some lack one and no predicted segment has
    one."""
    scored = 0
    first_missing = None
    for t in tasks:
        has = ~np.isnan(t.pred_scores)
        scored += int(has.sum())
        lacking = thing[t.pred.category] & ~has
        if first_missing is None and lacking.any():
            first_missing = (t.image_id, int(t.pred.ids[np.flatnonzero(lacking)[0]]))
    if scored and first_missing is not None:
        image_id, sid = first_missing
        raise InputError(f"{pred_json}: image {image_id!r}: thing segment {sid} has no `score` "
                         f"while {scored} other segments have one (instance AP ranks by "
                         "score: give every predicted thing segment one, or none)")
    return scored > 0 or first_missing is None


def evaluate_files(gt_json: str | os.PathLike, pred_json: str | os.PathLike,
                   gt_dir: str | os.PathLike | None = None,
                   pred_dir: str | os.PathLike | None = None, *,
                   metrics: Sequence[str] = METRICS, workers: int = 1,
                   allow_missing: bool = False, cityscapes_ap: bool = False) -> Evaluation:
    """Metrics of a prediction set against a ground-truth set, both COCO panoptic files.

    Parameters
    ----------
    gt_json, pred_json, gt_dir, pred_dir, workers, allow_missing
        As in :func:`copsctl.metrics.pq.evaluate_files` (same checks, same errors).
    metrics : sequence of str
        Any of :data:`METRICS`.
    cityscapes_ap : bool
        Also run cityscapesscripts' instance-level evaluation (needs Cityscapes label ids
        as category ids, and scores).

    Returns
    -------
    Evaluation
    """
    metrics = parse_metrics(metrics)
    gt_set, tasks = _pq.file_tasks(gt_json, pred_json, gt_dir, pred_dir, allow_missing)
    categories = gt_set.categories
    C = len(categories)
    thing = np.array([bool(c.isthing) for c in categories])
    cat_id = np.array([int(c.id) for c in categories], np.int64)
    notes = []
    want_instances = "instances" in metrics or cityscapes_ap
    scored = want_instances and _check_scores(tasks, thing, pred_json)
    if want_instances and not scored:
        notes.append(f"instance AP left out: no predicted segment in {pred_json} has a `score` "
                     "(copsctl solve writes one)")
    if not thing.any() and scored:
        notes.append("instance AP left out: the ground truth lists no thing category")
        scored = False
    coco = scored and "instances" in metrics
    if coco:
        from .instances import rle_encode
    if "semantic" in metrics:
        from .semantic import image_confusion

    tmp = cs_files = None
    if cityscapes_ap and scored:
        from .instances import CityscapesInstanceFiles, cityscapes_originals

        tmp = tempfile.TemporaryDirectory(prefix="copsctl-cityscapes-")
        cs_files = CityscapesInstanceFiles(tmp.name, categories,
                                           originals=cityscapes_originals(gt_json))

    def one(item):
        index, task = item
        gt_ids, pred_ids = _pq.read_pair(task)
        ov = _pq.file_overlaps(task, gt_ids, pred_ids)
        out = {"size": gt_ids.shape}
        if "pq" in metrics:
            out["pq"] = _pq.pq_counts(ov, task.gt, task.pred, C)
        if "semantic" in metrics:
            out["semantic"] = image_confusion(ov.gt_row, ov.pred_row, ov.pixels,
                                              task.gt.category, task.pred.category, C)
        if coco or cs_files is not None:
            g_rows = np.flatnonzero(thing[task.gt.category])
            p_rows = np.flatnonzero(thing[task.pred.category])
        if coco:
            out["gt"] = [(int(cat_id[task.gt.category[r]]), bool(task.gt.crowd[r]),
                          int(ov.gt_area[r + 1]), rle)
                         for r, rle in zip(g_rows, rle_encode(gt_ids, task.gt.ids[g_rows]))]
            out["dt"] = [(int(cat_id[task.pred.category[r]]), float(task.pred_scores[r]), rle)
                         for r, rle in zip(p_rows, rle_encode(pred_ids, task.pred.ids[p_rows]))]
        if cs_files is not None:
            cs_files.add(index, gt_ids,
                         [(int(task.gt.ids[r]), int(cat_id[task.gt.category[r]]),
                           bool(task.gt.crowd[r])) for r in range(len(task.gt.ids))],
                         pred_ids,
                         [(int(task.pred.ids[r]), int(cat_id[task.pred.category[r]]),
                           float(task.pred_scores[r])) for r in p_rows], task.image_id)
        return out

    try:
        total = PQCounts.zeros(cat_id.tolist())
        confusion = np.zeros((C, C + 1), np.int64)
        gt_instances, detections, sizes = [], [], []
        for image, out in enumerate(_pq._map(one, enumerate(tasks), workers), start=1):
            sizes.append(out["size"])
            if "pq" in out:
                tp, fp, fn, iou = out["pq"]
                total.tp += tp
                total.fp += fp
                total.fn += fn
                total.iou += iou
            if "semantic" in out:
                confusion += out["semantic"]
            for cid, crowd, area, rle in out.get("gt", ()):
                gt_instances.append({"image_id": image, "category_id": cid, "segmentation": rle,
                                     "area": area, "iscrowd": int(crowd)})
            for cid, score, rle in out.get("dt", ()):
                detections.append({"image_id": image, "category_id": cid, "segmentation": rle,
                                   "score": score})
        result = {}
        if "pq" in metrics:
            result["pq"] = PQResult.from_counts(total, categories, num_images=len(tasks))
        if "semantic" in metrics:
            from .semantic import SemanticResult

            result["semantic"] = SemanticResult.from_confusion(confusion, categories)
        if coco:
            from .instances import coco_ap

            result["instances"] = coco_ap(gt_instances, detections, sizes,
                                          cat_id[thing].tolist())
        if cs_files is not None:
            result["cityscapes"] = cs_files.evaluate()
            if cs_files.num_originals < len(tasks):
                notes.append(f"Cityscapes AP: {len(tasks) - cs_files.num_originals} of "
                             f"{len(tasks)} images without their gtFine instanceIds file "
                             "beside the ground truth, rebuilt from the panoptic one, where "
                             "caravans and trailers are void (a prediction on one is no false "
                             "positive there)")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return Evaluation(categories=categories, num_images=len(tasks), metrics=metrics, notes=notes,
                      **result)


def evaluate(*, gt_json=None, gt_dir=None, pred_json=None, pred_dir=None, recipe=None,
             split=None, overrides: Sequence[str] = (), metrics: Sequence[str] = METRICS,
             workers: int = 1, allow_missing: bool = False,
             cityscapes_ap: bool = False) -> Evaluation:
    """:func:`evaluate_files` from paths as ``copsctl evaluate`` takes them
    (:func:`copsctl.metrics.pq.resolve_paths`)."""
    gt_json, gt_dir, pred_json, pred_dir = _pq.resolve_paths(
        gt_json=gt_json, gt_dir=gt_dir, pred_json=pred_json, pred_dir=pred_dir, recipe=recipe,
        split=split, overrides=overrides)
    return evaluate_files(gt_json, pred_json, gt_dir, pred_dir, metrics=metrics,
                          workers=workers, allow_missing=allow_missing,
                          cityscapes_ap=cityscapes_ap)
