"""The PQ surrogate (equation 6): agreement with exact PQ, gradients, monotonicity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from copsctl.errors import InputError
from copsctl.metrics.pq import PanopticPair, evaluate_arrays
from copsctl.train.surrogate import (area_gate, class_area_thresholds, pq_surrogate,
                                       pq_surrogate_mask_grads, soft_tp)
from copsctl.panoptic.format import Category, segments_from_id_map

# Classes 0 (stuff), 1 and 2 (things); category id == class index for the exact metric.
CATS = [Category(0, "ground", False), Category(1, "car", True), Category(2, "person", True)]
SMALL_T = np.array([5.0, 5.0, 5.0])  # far below every segment area in these tests


def _masks(ids: np.ndarray, cls_of: dict[int, int], dtype=torch.float64):
    """(S, H, W) masks and (S,) classes of the non-void ids of a map, in id order."""
    sids = [s for s in np.unique(ids) if s != 0]
    m = torch.tensor(np.stack([ids == s for s in sids]) if sids else
                     np.zeros((0,) + ids.shape, bool), dtype=dtype)
    return m, np.array([cls_of[s] for s in sids], np.int64)


def _exact(images):
    pairs = []
    for i, (gt, gcls, pr, pcls) in enumerate(images):
        pairs.append(PanopticPair(i, gt, segments_from_id_map(gt, gcls), pr,
                                  segments_from_id_map(pr, pcls)))
    return evaluate_arrays(pairs, CATS)


def _surrogate(images, thresholds=SMALL_T, **kw):
    pm, pc, gm, gc = [], [], [], []
    for gt, gcls, pr, pcls in images:
        m, c = _masks(pr, pcls); pm.append(m); pc.append(c)
        m, c = _masks(gt, gcls); gm.append(m); gc.append(c)
    return pq_surrogate(pm, pc, gm, gc, thresholds, **kw)


def _scene(shift_a=1, far_b=True):
    """160x160: ground (class 0, IoU 0.94); car A 20x20, predicted 1 px off (IoU 0.905); car B 20x20,
    predicted far off (IoU 0.03) or 1 px off; person C missed; a spurious person elsewhere.
    Every IoU is >= 0.9 or <= 0.1, where h is within 2e-3 of a step."""
    gt = np.full((160, 160), 1, np.int64)
    gt[2:22, 2:22] = 2; gt[40:60, 40:60] = 3; gt[2:26, 50:74] = 4
    pr = np.full((160, 160), 11, np.int64)
    pr[2 + shift_a:22 + shift_a, 2:22] = 12
    if far_b:
        pr[52:72, 55:75] = 13
    else:
        pr[40:60, 41:61] = 13
    pr[62:78, 2:22] = 14
    return gt, {1: 0, 2: 1, 3: 1, 4: 2}, pr, {11: 0, 12: 1, 13: 1, 14: 2}


def test_soft_functions():
    u = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    assert soft_tp(u).tolist() == pytest.approx([0.0, 1 / 6562, 0.5, 6561 / 6562, 1.0])
    g = area_gate(torch.tensor([200.0, 300.0, 100.0]), torch.tensor(200.0))
    assert g.tolist() == pytest.approx([0.5, 1 / (1 + np.exp(-10)), 1 / (1 + np.exp(10))])
    assert class_area_thresholds([True, False, True], 200, 2048).tolist() == [200, 2048, 200]


def test_close_to_exact_pq_on_hard_masks():
    # Matches, a non-match, a miss and a spurious segment; two images pooled.
    images = [_scene(), _scene(far_b=False)]
    exact = _exact(images)
    sur = _surrogate(images)
    assert sur.pq == pytest.approx(exact.all.pq, abs=2e-3)
    for c in (0, 1, 2):
        e = exact.per_class[c]
        s = sur.per_class[c]
        assert s["pq"] == pytest.approx(e.pq, abs=2e-3), c
        assert s["tp"] == pytest.approx(e.tp, abs=5e-3)
        assert s["fp"] == pytest.approx(e.fp, abs=5e-3)
        assert s["fn"] == pytest.approx(e.fn, abs=5e-3)
    assert exact.per_class[1].fp == 1 and exact.per_class[2].pq == 0.0  # the cases occurred
    assert float(sur.loss) == pytest.approx(1 - exact.all.pq, abs=2e-3)


def test_paper_formulation_matches_only_when_matches_are_good():
    # All matched IoUs > 0.5: equation (6) as printed is close to exact PQ as well.
    good = [_scene(far_b=False)]
    assert _surrogate(good, formulation="paper").pq == pytest.approx(_exact(good).all.pq,
                                                                       abs=2e-3)
    # A lone match of IoU 0.14: exact PQ of the class is 0; eq. (6) as printed drops the
    # pair from its denominator and reports about the IoU itself.
    gt = np.full((20, 20), 1, np.int64); gt[0:10, 0:10] = 2
    pr = np.full((20, 20), 1, np.int64); pr[4:14, 6:16] = 2
    img = [(gt, {1: 0, 2: 1}, pr, {1: 0, 2: 1})]
    iou = 24 / 176
    assert _exact(img).per_class[1].pq == 0.0
    assert _surrogate(img, formulation="paper").per_class[1]["pq"] == pytest.approx(iou, rel=1e-6)
    assert _surrogate(img).per_class[1]["pq"] < 1e-3


@pytest.mark.parametrize("formulation", ["complete", "paper"])
def test_gradcheck(formulation):
    g = torch.Generator().manual_seed(0)
    H, W = 3, 4
    gt0 = torch.zeros(3, H, W, dtype=torch.float64)
    gt0[0, :1] = 1; gt0[1, 1:, :2] = 1; gt0[2, 1:, 2:] = 1
    gt1 = torch.zeros(2, H, W, dtype=torch.float64)
    gt1[0, :, :2] = 1; gt1[1, :, 2:] = 1
    p0 = (0.1 + 0.8 * torch.rand(4, H, W, generator=g, dtype=torch.float64)).requires_grad_()
    p1 = (0.1 + 0.8 * torch.rand(2, H, W, generator=g, dtype=torch.float64)).requires_grad_()
    w0 = torch.ones(H, W, dtype=torch.float64); w0[0, 0] = 0; w0[2, 3] = 0.5
    w1 = torch.ones(H, W, dtype=torch.float64)
    classes = dict(pred_classes=[np.array([0, 1, 1, 2]), np.array([0, 2])],
                   gt_classes=[np.array([0, 1, 1]), np.array([0, 1])])
    thresholds = np.array([5.0, 3.0, 4.0])  # areas are ~2-6: the gate is in its slope

    def f(a, b):
        return pq_surrogate([a, b], classes["pred_classes"], [gt0, gt1], classes["gt_classes"],
                            thresholds, pixel_weights=[w0, w1], formulation=formulation).loss

    assert torch.autograd.gradcheck(f, (p0, p1), eps=1e-6, atol=1e-6)
    grads = torch.autograd.grad(f(p0, p1), (p0, p1))
    assert all(gr.abs().sum() > 0 for gr in grads)  # every predicted mask gets a gradient
    assert grads[0][:, 0, 0].abs().max() == 0  # zero-weight pixels get none


def test_growing_a_matched_prediction_lowers_the_loss():
    gt = np.full((30, 30), 1, np.int64); gt[5:25, 5:25] = 2
    losses = []
    for size in range(6, 21, 2):
        pr = np.full((30, 30), 1, np.int64); pr[5:5 + size, 5:5 + size] = 2
        losses.append(float(_surrogate([(gt, {1: 0, 2: 1}, pr, {1: 0, 2: 1})]).loss))
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] == pytest.approx(0.0, abs=1e-6)
    # The gradient says the same: negative on the uncovered part of the gt, positive outside.
    pr = np.full((30, 30), 1, np.int64); pr[5:17, 5:17] = 2
    pm, pc = _masks(pr, {1: 0, 2: 1})
    gm, gc = _masks(gt, {1: 0, 2: 1})
    res, grads = pq_surrogate_mask_grads([pm], [pc], [gm], [gc], SMALL_T)
    car = int(np.flatnonzero(pc == 1)[0])
    assert grads[0][car, 20, 20] < 0 and grads[0][car, 27, 27] > 0
    assert res.matchings[0].pred.tolist() == [0, 1] and res.matchings[0].gt.tolist() == [0, 1]


def test_intersection_gate_never_rewards_wrong_pixels():
    """A matched car of 20 mask px (320 px at 1/4 resolution) against a threshold of 330: with
    the area gate (eq. (6)) adding
    *any* pixel helps it pass the threshold, so the gradient is negative far outside its
    ground truth too (what drove fine-tuning to paint stuff with thing classes); with the
    intersection gate only pixels inside its ground truth help."""
    gt = np.full((30, 30), 1, np.int64); gt[5:10, 5:10] = 2      # a 25 px car
    pr = np.full((30, 30), 1, np.int64); pr[5:9, 5:10] = 2       # predicted: 20 px of it
    pm, pc = _masks(pr, {1: 0, 2: 1})
    gm, gc = _masks(gt, {1: 0, 2: 1})
    thresholds = np.array([80.0, 330.0, 330.0])
    car = int(np.flatnonzero(pc == 1)[0])
    grads = {}
    for gate in ("area", "intersection"):
        res, (g,) = pq_surrogate_mask_grads([pm], [pc], [gm], [gc], thresholds, gate=gate,
                                            pixel_area=16.0)
        grads[gate] = g[car]
        assert g[car, 9, 7] < 0  # the uncovered gt row: growing there helps either way
    assert grads["area"][25, 25] < 0          # the pathology
    assert grads["intersection"][25, 25] > 0  # outside: only the IoU speaks
    # Inside its gt the intersection is the area: same loss for a prediction within its gt.
    same = [float(pq_surrogate([pm], [pc], [gm], [gc], thresholds, gate=gate,
                               pixel_area=16.0).loss)
            for gate in ("area", "intersection")]
    assert same[0] == pytest.approx(same[1], abs=1e-12)
    # The empty slot of a missed gt: growing it outside the gt does not help either.
    res, _, (slot,) = pq_surrogate_mask_grads([pm[:1]], [pc[:1]], [gm], [gc], thresholds,
                                              gate="intersection", pixel_area=16.0,
                                              unmatched_gt_grads=True)
    assert res.matchings[0].unmatched_gt.tolist() == [1]
    assert float(slot[1][25, 25]) >= 0
    with pytest.raises(InputError, match="`gate` must be one of"):
        pq_surrogate([pm], [pc], [gm], [gc], thresholds, gate="other")


def test_small_spurious_segment_costs_less_than_a_large_one():
    gt = np.full((60, 60), 1, np.int64); gt[5:25, 5:25] = 2
    t = np.array([50.0, 200.0, 200.0])

    def loss(spurious_side, cls):
        pr = np.full((60, 60), 1, np.int64); pr[5:25, 5:25] = 2
        pr[40:40 + spurious_side, 40:40 + spurious_side] = 3
        return float(_surrogate([(gt, {1: 0, 2: 1}, pr, {1: 0, 2: 1, 3: cls})], t).loss)

    base = float(_surrogate([(gt, {1: 0, 2: 1}, gt.copy(), {1: 0, 2: 1})], t).loss)
    for cls in (1, 2):  # a class with ground truth, and one without
        small, large = loss(4, cls), loss(18, cls)   # areas 16 and 324 against threshold 200
        assert base < small < large, (cls, base, small, large)
        assert small - base < 0.01 < large - base


def test_matching_is_max_weight_without_threshold():
    # One gt car split into two predictions (IoUs 0.6 and 0.4): the larger piece matches,
    # the other is unmatched; a second gt car is covered only at IoU 0.3 and still matches.
    gt = np.full((20, 40), 1, np.int64); gt[0:10, 0:10] = 2; gt[0:10, 20:30] = 3
    pr = np.full((20, 40), 1, np.int64)
    pr[0:10, 0:6] = 5; pr[0:10, 6:10] = 6; pr[0:10, 27:30] = 7
    res = _surrogate([(gt, {1: 0, 2: 1, 3: 1}, pr, {1: 0, 5: 1, 6: 1, 7: 1})])
    m = res.matchings[0]
    pairs = sorted(zip(m.pred.tolist(), m.gt.tolist(), m.iou.tolist()))
    # pred order: ids 1, 5, 6, 7 -> 0..3; gt order: ids 1, 2, 3 -> 0..2
    assert [(p, g) for p, g, _ in pairs] == [(0, 0), (1, 1), (3, 2)]
    assert pairs[1][2] == pytest.approx(0.6) and pairs[2][2] == pytest.approx(0.3)
    assert m.unmatched_pred.tolist() == [2] and m.unmatched_gt.tolist() == []


def test_pairs_without_overlap_are_not_matched():
    # A gt car and a predicted car that do not touch: unmatched on both sides (under the
    # paper's formulation a zero-IoU "match" would vanish from the denominator).
    gt = np.full((20, 20), 1, np.int64); gt[0:5, 0:5] = 2
    pr = np.full((20, 20), 1, np.int64); pr[10:15, 10:15] = 2
    img = [(gt, {1: 0, 2: 1}, pr, {1: 0, 2: 1})]
    for formulation in ("complete", "paper"):
        res = _surrogate(img, formulation=formulation)
        m = res.matchings[0]
        assert m.pred.tolist() == [0] and m.gt.tolist() == [0]
        assert m.unmatched_pred.tolist() == [1] and m.unmatched_gt.tolist() == [1]
        assert res.per_class[1]["fn"] == 1.0 and res.per_class[1]["pq"] == 0.0


def test_pixel_area_scales_the_gate():
    # A 5x5 car at 1/4 resolution is 400 full-resolution pixels: above a 200 threshold.
    gt = np.full((16, 16), 1, np.int64)
    pr = np.full((16, 16), 1, np.int64); pr[0:5, 0:5] = 2
    t = np.array([10.0, 200.0, 200.0])
    img = [(gt, {1: 0}, pr, {1: 0, 2: 1})]
    full = _surrogate(img, t, pixel_area=16.0).per_class[1]
    low = _surrogate(img, t, pixel_area=1.0).per_class[1]
    assert full["fp"] == pytest.approx(float(area_gate(torch.tensor(400.0), torch.tensor(200.0))))
    assert low["fp"] == pytest.approx(float(area_gate(torch.tensor(25.0), torch.tensor(200.0))))


def test_void_and_crowd_pixels_do_not_count():
    gt = np.full((20, 20), 1, np.int64); gt[0:10, 0:10] = 2
    pr = gt.copy(); pr[10:20, 0:10] = 2  # the prediction spills onto a void region
    w = torch.ones(20, 20, dtype=torch.float64); w[10:20, 0:10] = 0
    pm, pc = _masks(pr, {1: 0, 2: 1})
    gm, gc = _masks(gt, {1: 0, 2: 1})
    weighted = pq_surrogate([pm], [pc], [gm], [gc], SMALL_T, pixel_weights=[w])
    plain = pq_surrogate([pm], [pc], [gm], [gc], SMALL_T)
    assert weighted.matchings[0].iou.tolist() == pytest.approx([1.0, 1.0])
    assert weighted.pq > plain.pq


def test_degenerate_batches_give_finite_or_zero_gradients():
    H, W = 8, 8
    empty_gt = torch.zeros(0, H, W)
    pm = torch.zeros(2, H, W); pm[0, :4] = 1; pm[1, 4:] = 1
    # No ground-truth segment at all and everything void.
    res, grads = pq_surrogate_mask_grads([pm], [np.array([0, 1])], [empty_gt],
                                         [np.zeros(0, np.int64)], SMALL_T,
                                         pixel_weights=[torch.zeros(H, W)])
    assert np.isfinite(float(res.loss)) and all(torch.isfinite(g).all() for g in grads)
    # No prediction for a ground-truth class; no predictions at all.
    gm = torch.zeros(1, H, W); gm[0, 2:6, 2:6] = 1
    res, grads = pq_surrogate_mask_grads([pm], [np.array([0, 0])], [gm], [np.array([1])],
                                         SMALL_T)
    assert res.per_class[1]["pq"] == 0.0 and all(torch.isfinite(g).all() for g in grads)
    res, grads = pq_surrogate_mask_grads([torch.zeros(0, H, W)], [np.zeros(0, np.int64)], [gm],
                                         [np.array([1])], SMALL_T)
    assert float(res.loss) == 1.0 and grads[0].shape == (0, H, W)
    # Nothing at all: zero loss, backward still works.
    out = pq_surrogate([torch.zeros(0, H, W, requires_grad=True)], [np.zeros(0, np.int64)],
                       [empty_gt], [np.zeros(0, np.int64)], SMALL_T)
    assert float(out.loss.detach()) == 0.0
    out.loss.backward()


def test_bad_inputs():
    m = torch.zeros(1, 4, 4)
    c = [np.array([0])]
    with pytest.raises(InputError, match=r"`gt_masks\[0\]` \(shape \(1, 4, 5\)\) must have shape \(S, 4, 4\)"):
        pq_surrogate([m], c, [torch.zeros(1, 4, 5)], c, SMALL_T)
    with pytest.raises(InputError, match=r"`pred_classes\[0\]` holds class 3 outside \[0, 3\)"):
        pq_surrogate([m], [np.array([3])], [m], c, SMALL_T)
    with pytest.raises(InputError, match=r"`pred_classes\[0\]` \(shape \(2,\)\) must have shape \(1,\)"):
        pq_surrogate([m], [np.array([0, 1])], [m], c, SMALL_T)
    with pytest.raises(InputError, match=r"`formulation` must be one of"):
        pq_surrogate([m], c, [m], c, SMALL_T, formulation="other")
    with pytest.raises(InputError, match=r"mask values in \[0, 1\]"):
        pq_surrogate([m + 2], c, [m], c, SMALL_T)
    with pytest.raises(InputError, match=r"`gt_classes` \(length 2\) must have one entry per image"):
        pq_surrogate([m], c, [m], c * 2, SMALL_T)
    with pytest.raises(InputError, match=r"`pixel_weights\[0\]`"):
        pq_surrogate([m], c, [m], c, SMALL_T, pixel_weights=[torch.ones(3, 3)])
    with pytest.raises(InputError, match=r"`pixel_area` must be positive"):
        pq_surrogate([m], c, [m], c, SMALL_T, pixel_area=0)


def test_metrics_pq_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, copsctl.metrics.pq; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_matching_all_keeps_pairs_without_overlap_against_hand_computed_values():
    """matching="all" (the authors' code): the assignment's zero-IoU pair is matched; in the
    official counts it adds the false negative 1 - h(0) = 1 and no false positive."""
    gt = torch.zeros(1, 4, 4, dtype=torch.float64)
    gt[0, :2] = 1                       # 8 px
    pred = torch.zeros(1, 4, 4, dtype=torch.float64)
    pred[0, 3] = 1                      # 4 px, disjoint
    eps = 0.1
    s = 1 / (1 + math.exp(-0.1 * (4 - 2)))  # gate: area 4, threshold 2
    expected = {"overlapping": eps / (0.5 * s + 0.5 * 1 + eps),  # FP s, FN 1
                "all": eps / (0.5 * 1 + eps)}                     # FN 1 - h(0), no FP
    for matching, want in expected.items():
        r = pq_surrogate([pred], [[0]], [gt], [[0]], [2.0], formulation="official", eps=eps,
                         matching=matching)
        assert r.pq == pytest.approx(want, rel=1e-9)
        m = r.matchings[0]
        paired = matching == "all"
        assert (m.pred.tolist(), m.gt.tolist()) == (([0], [0]) if paired else ([], []))
        assert m.unmatched_pred.tolist() == ([] if paired else [0])
        assert m.unmatched_gt.tolist() == ([] if paired else [0])
        assert r.per_class[0]["fp"] == pytest.approx(0.0 if paired else s)
    # The complete counts score a matched zero-IoU pair as FP and FN: the same as unmatched.
    a, b = (pq_surrogate([pred], [[0]], [gt], [[0]], [2.0], matching=m).pq
            for m in ("overlapping", "all"))
    assert a == pytest.approx(b, rel=1e-12)
    with pytest.raises(InputError, match="matching"):
        pq_surrogate([pred], [[0]], [gt], [[0]], [2.0], matching="nearest")


def test_matching_all_in_match_segments_and_the_lifted_labels():
    """Two same-class gt cars and two predicted cars, one pair overlapping, the other
    not: "all" pairs the disjoint ones too, so no ground-truth slot is lifted for it."""
    from copsctl.train.amwc_layer import GroundTruth, ImageSolution, lift_labels
    from copsctl.train.surrogate import match_segments
    gt = np.zeros((10, 10), np.int64); gt[0:4, 0:4] = 1; gt[6:10, 6:10] = 2
    seg = np.zeros((10, 10), np.int64); seg[0:4, 0:3] = 1; seg[6:10, 0:3] = 2
    classes = np.array([0, 1, 1])                     # background stuff, two cars
    gm = np.stack([gt == 1, gt == 2])
    over = match_segments(seg, classes, gm, [1, 1])
    every = match_segments(seg, classes, gm, [1, 1], matching="all")
    assert sorted(zip(over.pred.tolist(), over.gt.tolist())) == [(1, 0)]
    assert sorted(zip(every.pred.tolist(), every.gt.tolist())) == [(1, 0), (2, 1)]
    assert every.iou.tolist() == [pytest.approx(12 / 16), 0.0]
    truth = GroundTruth(gm, np.array([1, 1]), np.ones((10, 10), np.float32))
    sol = ImageSolution(classes[seg.reshape(-1)], seg.reshape(-1), classes,
                        np.zeros(0, np.uint8), 0.0)
    for matching, unmatched in (("overlapping", [1]), ("all", [])):
        lab = lift_labels(sol, truth, 3, (10, 10), matching)
        assert lab.unmatched_gt.tolist() == unmatched
        assert lab.num_labels == 3 + len(unmatched) + 1  # + the free class 2


def test_match_segments_agrees_with_the_surrogate():
    from copsctl.train.surrogate import match_segments
    gt, gcls, pr, pcls = _scene()
    sids = [s for s in np.unique(pr) if s != 0]
    seg = np.searchsorted(sids, pr)
    res = _surrogate([(gt, gcls, pr, pcls)])
    gm, gc = _masks(gt, gcls)
    weights = np.ones(gt.shape)
    weights[:10, :10] = 0  # weights change IoUs; both sides must see the same ones
    m = match_segments(seg, np.array([pcls[s] for s in sids]), gm.numpy() > 0, gc, weights)
    pm, pc = _masks(pr, pcls)
    ref = pq_surrogate([pm], [pc], [gm], [gc], SMALL_T,
                       pixel_weights=[torch.tensor(weights)]).matchings[0]
    for a in ("pred", "gt", "unmatched_pred", "unmatched_gt", "ignored_gt"):
        assert getattr(m, a).tolist() == getattr(ref, a).tolist()
    assert m.iou == pytest.approx(ref.iou)
    assert res.matchings[0].unmatched_gt.tolist() == [3]  # the missed person


def test_given_matchings_are_used_and_checked():
    from copsctl.train.surrogate import Matching
    gt, gcls, pr, pcls = _scene()
    pm, pc = _masks(pr, pcls)
    gm, gc = _masks(gt, gcls)
    ref = pq_surrogate([pm], [pc], [gm], [gc], SMALL_T)
    same = pq_surrogate([pm], [pc], [gm], [gc], SMALL_T, matchings=ref.matchings)
    assert float(same.loss) == pytest.approx(float(ref.loss))
    # Car B's prediction left unmatched on purpose: one FP and one FN more.
    m = ref.matchings[0]
    keep = m.pred != 2
    forced = Matching(m.pred[keep], m.gt[keep], m.iou[keep], np.sort(np.r_[m.unmatched_pred, 2]),
                      np.sort(np.r_[m.unmatched_gt, m.gt[~keep]]), m.ignored_gt)
    other = pq_surrogate([pm], [pc], [gm], [gc], SMALL_T, matchings=[forced])
    assert other.per_class[1]["fp"] > ref.per_class[1]["fp"]
    bad = Matching(np.array([0]), np.array([1]), np.array([0.5]), np.array([1, 2, 3]),
                   np.array([0, 2, 3]), np.zeros(0, np.int64))  # ground matched to a car
    with pytest.raises(InputError, match=r"`matchings\[0\]` does not fit image 0"):
        pq_surrogate([pm], [pc], [gm], [gc], SMALL_T, matchings=[bad])


@pytest.mark.parametrize("formulation", ["complete", "paper"])
def test_empty_slots_of_unmatched_ground_truth(formulation):
    """Empty slots leave the loss unchanged; their gradient is the one-sided derivative of
    growing the empty mask (only the gate term: h is flat at 0); zero for matched segments."""
    gt, gcls, pr, pcls = _scene()
    pr[pr == 13] = 11  # car B not predicted at all: unmatched, like person C
    pm, pc = _masks(pr, pcls)
    gm, gc = _masks(gt, gcls)
    t = np.array([5.0, 40.0, 40.0])  # a gate that is soft at small areas
    kw = dict(formulation=formulation)
    plain = pq_surrogate([pm], [pc], [gm], [gc], t, **kw)
    res, grads, gt_grads = pq_surrogate_mask_grads([pm], [pc], [gm], [gc], t,
                                                   unmatched_gt_grads=True, **kw)
    assert float(res.loss) == pytest.approx(float(plain.loss), abs=1e-12)
    assert gt_grads[0].shape == gm.shape
    assert res.matchings[0].unmatched_gt.tolist() == [2, 3]  # car B, person C
    missed, person = 2, 3
    assert not gt_grads[0][:2].any()  # matched: unused slots
    # Person has no true positive at all (PQ 0 whatever its counts): no gradient.
    assert not gt_grads[0][person].any()
    eps = 1e-4
    for y, x in ((45, 45), (100, 100)):  # inside the missed car, and far away
        slot = torch.zeros_like(gm)
        slot[missed, y, x] = eps
        grown = pq_surrogate([pm], [pc], [gm], [gc], t, gt_slots=[slot], **kw)
        fd = (float(grown.loss) - float(plain.loss)) / eps
        assert float(gt_grads[0][missed, y, x]) == pytest.approx(fd, rel=1e-3, abs=1e-9)
    if formulation == "paper":
        assert not gt_grads[0].any()
    else:
        assert float(gt_grads[0][missed].min()) > 0  # a not-yet-true positive costs a little


def _one_pair():
    """A 4x4 image: ground truth rows 0-1 (8 px), prediction rows 0-1 cols 0-2 (6 px), IoU 0.75."""
    gt = torch.zeros(1, 4, 4)
    gt[0, :2] = 1
    pred = torch.zeros(1, 4, 4)
    pred[0, :2, :3] = 1
    return pred, gt


@pytest.mark.parametrize("formulation,eps", [("official", 0.1), ("paper", 0.1), ("complete", 0.0),
                                             ("official", 0.0)])
def test_formulations_and_eps_against_hand_computed_values(formulation, eps):
    pred, gt = _one_pair()
    u = 0.75
    h = u ** 4 / (u ** 4 + (1 - u) ** 4)
    s = 1 / (1 + math.exp(-0.1 * (6 - 4)))  # gate: area 6, threshold 4, slope 0.1
    num = h * s * u
    den = {"official": h * s + 0.5 * (1 - h),
           "paper": h * s,
           "complete": h * s + 0.5 * (s - h * s) + 0.5 * (1 - h * s)}[formulation]
    r = pq_surrogate([pred], [[0]], [gt], [[0]], [4.0, 4.0], formulation=formulation, eps=eps)
    assert r.pq == pytest.approx((num + eps) / (den + eps), rel=1e-6)


def test_official_form_scores_a_prediction_only_class_with_eps():
    """The authors' code averages over every class present; a class with predictions only
    scores eps / (FP / 2 + eps)."""
    pred, gt = _one_pair()
    extra = torch.zeros(1, 4, 4)
    extra[0, 3] = 1  # 4 px of class 1, no ground truth of class 1
    u, eps = 0.75, 0.1
    h = u ** 4 / (u ** 4 + (1 - u) ** 4)
    s0 = 1 / (1 + math.exp(-0.1 * (6 - 4)))
    s1 = 1 / (1 + math.exp(-0.1 * (4 - 4)))
    pq0 = (h * s0 * u + eps) / (h * s0 + 0.5 * (1 - h) + eps)
    pq1 = eps / (0.5 * s1 + eps)
    r = pq_surrogate([torch.cat([pred, extra])], [[0, 1]], [gt], [[0]], [4.0, 4.0],
                     formulation="official", eps=eps)
    assert r.pq == pytest.approx((pq0 + pq1) / 2, rel=1e-6)
    with pytest.raises(InputError, match="eps"):
        pq_surrogate([pred], [[0]], [gt], [[0]], [4.0, 4.0], eps=float("nan"))


def test_official_gate_thresholds_are_in_cost_pixels():
    """finetune.surrogate_gate=official: things t / 4, stuff t / 16, one cost pixel = 1."""
    from copsctl.config import load_recipe
    from copsctl.train.finetune import surrogate_thresholds

    cfg = load_recipe("synthetic_tiny", ["finetune.surrogate_gate=official"])
    values, area = surrogate_thresholds([True, False], cfg)
    assert area == 1.0
    assert values.tolist() == [cfg.data.thing_area_threshold / 4, cfg.data.stuff_area_threshold / 16]
    values, area = surrogate_thresholds([True, False], load_recipe("synthetic_tiny"))
    assert area == 16.0 and values.tolist() == [cfg.data.thing_area_threshold,
                                                 cfg.data.stuff_area_threshold]
