"""Semantic segmentation metrics of a panoptic prediction, from its category map.

A panoptic id map and its segment table give a category per pixel; the ground truth's
and the prediction's category maps are compared pixel by pixel, as detectron2's
``SemSegEvaluator`` compares semantic maps, with its conventions:

- Ground-truth void pixels (id 0) are ignored.
- A pixel the prediction leaves void is a miss for its ground-truth class: it counts in
  that class's ground-truth pixels, and in no class's predicted pixels.
- With ``tp[k]`` the pixels of class ``k`` in both maps, ``gt[k]`` and ``pred[k]`` its
  pixels in each: ``accuracy[k] = tp[k] / gt[k]`` and ``iou[k] = tp[k] / (gt[k] + pred[k]
  - tp[k])``, both for the classes with ground-truth pixels only (``None`` for the
  others).
- ``miou`` is the sum of those IoUs divided by the number of classes with ground-truth
  *or* predicted pixels (so a class that is only predicted counts as IoU 0, and a class
  absent from both sides does not count); ``mean_accuracy`` is the mean accuracy over the
  classes with ground-truth pixels; ``fwiou`` weighs each IoU by ``gt[k] / sum(gt)``;
  ``pixel_accuracy = sum(tp) / sum(gt)``.
- Where nothing is defined (no ground-truth pixel at all) the figures are 0.

Crowd regions are ordinary pixels of their category here. Every figure is a fraction in
[0, 1]. The confusion is pooled over the set; per image it is a sum over the
(ground truth, prediction) segment intersections (:class:`copsctl.metrics.pq.Overlaps`),
so it costs nothing per pixel beyond what PQ already counted.

This module never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..panoptic.format import Category

__all__ = ["ClassSemantic", "SemanticResult", "image_confusion"]


def image_confusion(gt_row: np.ndarray, pred_row: np.ndarray, pixels: np.ndarray,
                    gt_category: np.ndarray, pred_category: np.ndarray,
                    num_categories: int) -> np.ndarray:
    """Pixel confusion of one image from its segment intersections.

    Parameters
    ----------
    gt_row, pred_row : (n,) int ndarray
        Intersection ``i`` lies in row ``gt_row[i] - 1`` of the ground-truth segment table
        and row ``pred_row[i] - 1`` of the predicted one (0 = void).
    pixels : (n,) int ndarray
        Pixels of each intersection.
    gt_category, pred_category : (G,) and (P,) int ndarray
        Category index (into the category list) of each table row.
    num_categories : int
        C, the length of the category list.

    Returns
    -------
    (C, C + 1) int64 ndarray
        ``[k, j]``: pixels of ground-truth class ``k`` predicted as class ``j``; column
        ``C`` holds the pixels the prediction leaves void. Ground-truth void is dropped.
    """
    C = int(num_categories)
    keep = np.asarray(gt_row) > 0
    gcat = np.asarray(gt_category, np.int64)[np.asarray(gt_row)[keep] - 1]
    pcat = np.concatenate([[C], np.asarray(pred_category, np.int64)])[np.asarray(pred_row)[keep]]
    conf = np.bincount(gcat * (C + 1) + pcat, weights=np.asarray(pixels)[keep],
                       minlength=C * (C + 1))
    return conf.astype(np.int64).reshape(C, C + 1)


@dataclass(frozen=True)
class ClassSemantic:
    """IoU and accuracy of one category; ``None`` where it has no ground-truth pixel."""

    iou: float | None
    accuracy: float | None
    gt_pixels: int
    pred_pixels: int

    def to_json(self) -> dict:
        return {"iou": self.iou, "accuracy": self.accuracy}


@dataclass(frozen=True)
class SemanticResult:
    """mIoU, fwIoU, pixel and mean accuracy, and per-class IoU and accuracy of a set."""

    miou: float
    fwiou: float
    pixel_accuracy: float
    mean_accuracy: float
    per_class: dict[int, ClassSemantic]
    num_classes: int  # classes with ground-truth or predicted pixels (mIoU's divisor)

    @classmethod
    def from_confusion(cls, confusion: np.ndarray,
                       categories: Sequence[Category]) -> "SemanticResult":
        """Figures from a pooled (C, C + 1) confusion (:func:`image_confusion`)."""
        categories = list(categories)
        C = len(categories)
        conf = np.asarray(confusion, np.int64)
        if conf.shape != (C, C + 1):
            raise InputError(f"`confusion` (shape {conf.shape}) must have shape ({C}, {C + 1}) "
                             f"for {C} categories")
        tp = np.diag(conf[:, :C]).astype(np.float64)
        gt = conf.sum(axis=1).astype(np.float64)  # includes pixels predicted void
        pred = conf[:, :C].sum(axis=0).astype(np.float64)
        has_gt = gt > 0
        counted = has_gt | (pred > 0)
        acc = np.divide(tp, gt, out=np.zeros(C), where=has_gt)
        iou = np.divide(tp, gt + pred - tp, out=np.zeros(C), where=has_gt)
        total = gt.sum()
        n = int(counted.sum())
        per_class = {
            c.id: ClassSemantic(float(iou[k]) if has_gt[k] else None,
                                float(acc[k]) if has_gt[k] else None, int(gt[k]), int(pred[k]))
            for k, c in enumerate(categories)}
        if total == 0:
            return cls(0.0, 0.0, 0.0, 0.0, per_class, n)
        return cls(miou=float(iou[has_gt].sum() / n),
                   fwiou=float((iou[has_gt] * gt[has_gt]).sum() / total),
                   pixel_accuracy=float(tp.sum() / total),
                   mean_accuracy=float(acc[has_gt].mean()),
                   per_class=per_class, num_classes=n)

    def to_json(self) -> dict:
        """``{miou, fwiou, pixel_accuracy, mean_accuracy, per_class: {id: {iou, accuracy}}}``."""
        return {"miou": self.miou, "fwiou": self.fwiou, "pixel_accuracy": self.pixel_accuracy,
                "mean_accuracy": self.mean_accuracy,
                "per_class": {str(cid): r.to_json() for cid, r in self.per_class.items()}}
