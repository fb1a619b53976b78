"""Semantic metrics of the category maps: a hand-computed confusion on tiny maps."""

from __future__ import annotations

import numpy as np
import pytest

from copsctl.errors import InputError
from copsctl.metrics.evaluation import evaluate_files
from copsctl.metrics.semantic import SemanticResult, image_confusion
from copsctl.panoptic.format import Annotation, Category, segments_from_id_map, write_panoptic_set

# 4 (never) occurs on neither side; 5 is only predicted.
CATS = [Category(1, "a", False), Category(2, "b", False), Category(3, "t", True),
        Category(4, "never", False), Category(5, "only-predicted", True)]


def _tiny_set(tmp_path):
    # Categories per pixel (0 = void):
    #   ground truth  a a b b      prediction  a b b p
    #                 t t 0 a                  t 0 t a
    gt = np.array([[10, 10, 20, 20],
                   [30, 30, 0, 11]])
    pr = np.array([[100, 200, 200, 500],
                   [300, 0, 301, 101]])
    gcat = {10: 1, 11: 1, 20: 2, 30: 3}     # two segments of class a
    pcat = {100: 1, 101: 1, 200: 2, 300: 3, 301: 3, 500: 5}
    gt2 = np.full((2, 4), 20)                # a second image: all b, predicted all b
    pr2 = np.full((2, 4), 7)
    paths = (tmp_path / "gt.json", tmp_path / "gt", tmp_path / "pred.json", tmp_path / "pred")
    write_panoptic_set(paths[0], paths[1], [
        Annotation("i0", "i0.png", segments_from_id_map(gt, gcat)),
        Annotation("i1", "i1.png", segments_from_id_map(gt2, {20: 2}))], [gt, gt2], CATS)
    write_panoptic_set(paths[2], paths[3], [
        Annotation("i0", "i0.png", segments_from_id_map(pr, pcat)),
        Annotation("i1", "i1.png", segments_from_id_map(pr2, {7: 2}))], [pr, pr2], CATS)
    return paths


def test_miou_against_a_hand_computed_confusion(tmp_path):
    paths = _tiny_set(tmp_path)
    res = evaluate_files(*paths[::2], *paths[1::2], metrics=["semantic"])
    sem = res.semantic
    assert res.pq is None and res.instances is None
    # Confusion (rows ground truth a, b, t; ground-truth void dropped):
    #   a: a a . a -> 3 px, 2 right, 1 as b       b: b p + 8 b of image 2 -> 10 px, 9 right
    #   t: t, void -> 2 px, 1 right (the void prediction is a miss)
    # predicted: a 2, b 1 + 1 + 8 = 10, t 1 (the t on ground-truth void is ignored), p 1.
    iou = {1: 2 / (3 + 2 - 2), 2: 9 / (10 + 10 - 9), 3: 1 / (2 + 1 - 1)}
    acc = {1: 2 / 3, 2: 9 / 10, 3: 1 / 2}
    for cid in (1, 2, 3):
        assert sem.per_class[cid].iou == pytest.approx(iou[cid], abs=1e-12)
        assert sem.per_class[cid].accuracy == pytest.approx(acc[cid], abs=1e-12)
    # classes without ground truth have no IoU; "only predicted" still counts in mIoU
    assert sem.per_class[4].iou is None and sem.per_class[5].iou is None
    assert sem.per_class[5].accuracy is None and sem.per_class[5].pred_pixels == 1
    assert sem.num_classes == 4
    assert sem.miou == pytest.approx(sum(iou.values()) / 4, abs=1e-12)
    assert sem.mean_accuracy == pytest.approx(sum(acc.values()) / 3, abs=1e-12)
    assert sem.pixel_accuracy == pytest.approx(12 / 15, abs=1e-12)
    assert sem.fwiou == pytest.approx((3 * iou[1] + 10 * iou[2] + 2 * iou[3]) / 15, abs=1e-12)
    js = res.to_json()["semantic"]
    assert set(js) == {"miou", "fwiou", "pixel_accuracy", "mean_accuracy", "per_class"}
    assert js["per_class"]["4"] == {"iou": None, "accuracy": None}
    assert set(js["per_class"]) == {"1", "2", "3", "4", "5"}


def test_image_confusion_counts_intersections():
    # intersections: (gt row, pred row, pixels); rows are 1-based, 0 = void
    conf = image_confusion(np.array([1, 1, 2, 0, 2]), np.array([1, 0, 2, 2, 1]),
                           np.array([5, 2, 3, 7, 1]), np.array([0, 2]), np.array([0, 1]), 3)
    assert conf.tolist() == [[5, 0, 0, 2],     # class 0: 5 right, 2 predicted void
                             [0, 0, 0, 0],
                             [1, 3, 0, 0]]     # ground-truth void (7 px) is dropped
    # no prediction at all: everything is in the void column
    conf = image_confusion(np.array([1]), np.array([0]), np.array([4]), np.array([1]),
                           np.array([], np.int64), 2)
    assert conf.tolist() == [[0, 0, 0], [0, 0, 4]]


def test_nothing_to_measure_reports_zero():
    res = SemanticResult.from_confusion(np.zeros((2, 3), np.int64), CATS[:2])
    assert (res.miou, res.fwiou, res.pixel_accuracy, res.mean_accuracy) == (0, 0, 0, 0)
    with pytest.raises(InputError, match=r"must have shape \(2, 3\)"):
        SemanticResult.from_confusion(np.zeros((2, 2), np.int64), CATS[:2])
