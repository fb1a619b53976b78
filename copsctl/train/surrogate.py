"""The differentiable panoptic quality surrogate, equation (6) of the paper (torch).

Per class ``l`` the predicted segments are matched to the ground-truth segments of that
class by a maximum-weight bipartite matching on IoU (no 0.5 threshold). By default pairs
that do not overlap at all are not matched; ``matching="all"`` keeps every pair of the
assignment, overlapping or not, as the authors' code does (a prediction assigned to a
ground-truth segment it does not touch then has IoU 0: no true positive, and in the
official counts no false positive either). With

- ``h(u) = u⁴ / (u⁴ + (1 - u)⁴)``, the soft probability that a matched pair of IoU ``u``
  is a true positive, and
- ``σ_l(p) = sigmoid(0.1 (|p| - t_l))``, the soft probability that prediction ``p`` of area
  ``|p|`` survives the small-segment rejection with the class's area threshold ``t_l``,

the soft counts of class ``l``, pooled over all images of the batch, are ::

    TP_l  = Σ_matched h(u) σ(p)               IoU_l = Σ_matched h(u) σ(p) u
    FP_l  = Σ_unmatched pred σ(p)  [+ Σ_matched σ(p) (1 - h(u))]
    FN_l  = |unmatched gt|          [+ Σ_matched (1 - h(u) σ(p))]
    PQ_l  = IoU_l / (TP_l + FP_l / 2 + FN_l / 2)

Without the bracketed terms this is equation (6) exactly (``formulation="paper"``). The
default ``formulation="complete"`` adds them: a matched pair that is not a true positive
is then a false positive *and* a false negative, as it is for the exact metric. Equation
(6) as printed drops such a pair from the denominator altogether, so a class whose only
match has IoU 0.3 scores ≈ 0.3 instead of 0, and pushing that IoU further down raises the
surrogate; with the bracketed terms the denominator is ``(|G_l| + Σ_p σ(p)) / 2`` whatever
the IoUs, and hard masks with IoUs away from 0.5 give the exact PQ.

The loss is ``1 - Σ_l ω_l PQ_l / Σ_l ω_l`` over the classes present in the batch:
``ω_l = 1`` for a class with ground truth; a class with predictions only has ``PQ_l = 0``
and the soft presence ``ω_l = 1 - Π_p (1 - σ(p))`` (1 when a prediction survives the
rejection for sure), so that such spurious predictions get a gradient that shrinks them.

Per-pixel weights (0 on void and crowd pixels) enter every intersection, union and area.
Areas are measured in pixels of the resolution the thresholds are stated at: a loss
computed on masks downsampled by ``s`` in each direction passes ``pixel_area = s²``.

Gradients reach every predicted mask; :func:`pq_surrogate_mask_grads` returns
``∂L/∂(mask of each predicted segment)`` together with the matching, which is what the
lifted label set of the AMWC backward pass needs (:mod:`copsctl.train.amwc_layer`).

That label set also has one label per *unmatched* ground-truth segment ``g``: a
prediction whose mask ``q`` is still empty. Its gradient is the derivative of the loss
at ``q = 0`` when ``q`` enters as a prediction matched to ``g`` (growing inside ``g``
makes it ``g``'s best match), supplied through ``gt_slots``. The slot's gate is
``σ̃(q) = σ(q) - σ(∅)``, the gate relative to an empty mask, so that an empty slot
changes nothing: the loss value is the same with or without slots. Its terms are those
of a matched pair (TP ``h σ̃``, IoU ``h σ̃ u``, FP ``σ̃ (1 - h)`` in the complete
formulation only, FN ``1 - h σ̃``). At ``q = 0`` every ``h`` term has zero derivative
(``h`` is flat at 0), so the gradient is the gate's FP term: positive, i.e. a small
penalty for growing a segment that is not yet a true positive, and exactly zero in the
paper's formulation. It is largest where the area thresholds are small in mask pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import InputError

__all__ = ["soft_tp", "area_gate", "class_area_thresholds", "Matching", "MATCHINGS",
           "SurrogateResult", "match_segments", "pq_surrogate", "pq_surrogate_mask_grads"]

_FORMULATIONS = ("complete", "paper", "official")
_GATES = ("area", "intersection")
_SLOPE = 0.1  # of the area gate, per pixel of the threshold's resolution (paper, eq. 6)


def soft_tp(iou: torch.Tensor) -> torch.Tensor:
    """``h(u) = u⁴ / (u⁴ + (1 - u)⁴)``: soft indicator of ``u > 0.5``, elementwise."""
    a = iou ** 4
    return a / (a + (1 - iou) ** 4)


def area_gate(area: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``σ(p) = sigmoid(0.1 (area - threshold))``: soft survival of small-segment rejection."""
    return torch.sigmoid(_SLOPE * (area - threshold))


def class_area_thresholds(isthing: Sequence[bool], thing_area: float, stuff_area: float
                          ) -> np.ndarray:
    """(K,) float64 area threshold per class: ``thing_area`` for things, else ``stuff_area``.

    The thresholds are in pixels of the full-resolution image (the paper: 200 and 2048 for
    Cityscapes, 200 and 4096 for COCO); pass the loss's ``pixel_area`` to
    :func:`pq_surrogate` when the masks are at a lower resolution.
    """
    isthing = np.asarray(isthing, dtype=bool)
    if isthing.ndim != 1:
        raise InputError(f"`isthing` (shape {isthing.shape}) must have shape (K,)")
    return np.where(isthing, float(thing_area), float(stuff_area))


@dataclass
class Matching:
    """The per-class bipartite matching of one image (indices into that image's inputs).

    Attributes
    ----------
    pred, gt : (M,) int64 ndarray
        Matched pairs: predicted segment ``pred[i]`` with ground-truth segment ``gt[i]``.
    iou : (M,) float64 ndarray
        Their (weighted) IoU.
    unmatched_pred : (S - M,) int64 ndarray
        Predicted segments without a match: soft false positives.
    unmatched_gt : int64 ndarray
        Ground-truth segments without a match: false negatives.
    ignored_gt : int64 ndarray
        Ground-truth segments of zero weighted area (all void or crowd), left out.
    """

    pred: np.ndarray
    gt: np.ndarray
    iou: np.ndarray
    unmatched_pred: np.ndarray
    unmatched_gt: np.ndarray
    ignored_gt: np.ndarray


@dataclass
class SurrogateResult:
    """Loss, its parts per class and the matchings.

    Attributes
    ----------
    loss : scalar Tensor
        ``1 - surrogate PQ``; differentiable with respect to the predicted masks.
    pq : float
        The surrogate PQ (``1 - loss``), for logging.
    per_class : dict
        ``{class: {"pq", "tp", "fp", "fn", "iou", "weight"}}`` (floats) for every class
        present in the batch; ``tp``, ``fp``, ``fn``, ``iou`` are the soft pooled counts
        and ``weight`` is ``ω_l``.
    matchings : list of Matching
        One per image.
    """

    loss: torch.Tensor
    pq: float
    per_class: dict[int, dict[str, float]]
    matchings: list[Matching] = field(repr=False)


MATCHINGS = ("overlapping", "all")
"""Which pairs of the per-class assignment count as matched (module docstring)."""


def _match(iou: np.ndarray, inter: np.ndarray, pc: np.ndarray, gc: np.ndarray,
           kept_g: np.ndarray, matching: str = "overlapping") -> Matching:
    """Per-class max-weight matching on IoU; with ``matching="overlapping"`` pairs
    without overlap stay unmatched, with ``"all"`` every assigned pair is kept."""
    S = pc.shape[0]
    mp, mg = [], []
    for c in np.unique(np.concatenate([pc, gc[kept_g]])):
        rows = np.flatnonzero(pc == c)
        cols = np.flatnonzero((gc == c) & kept_g)
        if rows.size == 0 or cols.size == 0:
            continue
        r, k = linear_sum_assignment(iou[np.ix_(rows, cols)], maximize=True)
        overlap = inter[rows[r], cols[k]] > 0 if matching == "overlapping" else slice(None)
        mp.append(rows[r][overlap])
        mg.append(cols[k][overlap])
    mp = np.concatenate(mp).astype(np.int64) if mp else np.zeros(0, np.int64)
    mg = np.concatenate(mg).astype(np.int64) if mg else np.zeros(0, np.int64)
    return Matching(mp, mg, iou[mp, mg].astype(np.float64), np.setdiff1d(np.arange(S), mp),
                    np.setdiff1d(np.flatnonzero(kept_g), mg), np.flatnonzero(~kept_g))


def match_segments(pred_segments: np.ndarray, pred_classes, gt_masks: np.ndarray, gt_classes,
                   pixel_weights: np.ndarray | None = None,
                   matching: str = "overlapping") -> Matching:
    """The matching :func:`pq_surrogate` uses, for one image with hard masks (numpy, no torch).

    Parameters
    ----------
    pred_segments : (H, W) int ndarray
        Predicted segment index per pixel, ``0 .. S-1`` (every pixel in one segment).
    pred_classes : (S,) int ndarray
        Class of each predicted segment.
    gt_masks : (G, H, W) bool ndarray
        Ground-truth segment masks.
    gt_classes : (G,) int ndarray
    pixel_weights : (H, W) float ndarray, optional
        As in :func:`pq_surrogate` (0 on void and crowd pixels).
    matching : {"overlapping", "all"}
        As in :func:`pq_surrogate`.

    Returns
    -------
    Matching
        Identical to the one :func:`pq_surrogate` finds for the one-hot masks of
        ``pred_segments`` (IoUs are computed in float64 here).
    """
    _check_choice(matching, MATCHINGS, "matching")
    seg = np.asarray(pred_segments)
    if seg.ndim != 2 or seg.dtype.kind not in "iu":
        raise InputError(f"`pred_segments` (shape {seg.shape}, dtype {seg.dtype}) must be an "
                         "(H, W) integer array")
    pc = np.asarray(pred_classes, dtype=np.int64).reshape(-1)
    S = pc.shape[0]
    if seg.size and (seg.min() < 0 or seg.max() >= S):
        raise InputError(f"`pred_segments` must index `pred_classes` in [0, {S}), got range "
                         f"[{seg.min()}, {seg.max()}]")
    gm = np.asarray(gt_masks, dtype=bool)
    gc = np.asarray(gt_classes, dtype=np.int64).reshape(-1)
    if gm.ndim != 3 or gm.shape[1:] != seg.shape or gm.shape[0] != gc.shape[0]:
        raise InputError(f"`gt_masks` (shape {gm.shape}) must have shape ({gc.shape[0]}, "
                         f"{seg.shape[0]}, {seg.shape[1]})")
    w = (np.ones(seg.shape) if pixel_weights is None
         else np.asarray(pixel_weights, dtype=np.float64)).reshape(-1)
    if w.shape[0] != seg.size:
        raise InputError(f"`pixel_weights` (shape {np.shape(pixel_weights)}) must have shape {seg.shape}")
    flat = seg.reshape(-1).astype(np.int64)
    g = gm.reshape(gm.shape[0], seg.size)
    area_p = np.bincount(flat, weights=w, minlength=S)
    area_g = (g * w).sum(axis=1)
    # Segments do not overlap: one weighted bincount per gt segment gives its row of intersections.
    inter = np.stack([np.bincount(flat[m], weights=w[m], minlength=S) for m in g], axis=1) \
        if gm.shape[0] else np.zeros((S, 0))
    union = area_p[:, None] + area_g[None, :] - inter
    iou = inter / np.where(union > 0, union, 1.0)
    return _match(iou, inter, pc, gc, area_g > 0, matching)


def _check_choice(value: str, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise InputError(f"`{name}` must be one of {list(choices)}, got {value!r}")


def _as_classes(x, n: int, K: int, name: str, b: int) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = arr.reshape(-1) if arr.size == 0 else arr
    if arr.shape != (n,):
        raise InputError(f"`{name}[{b}]` (shape {arr.shape}) must have shape ({n},), one class "
                         "per mask")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"`{name}[{b}]` (dtype {arr.dtype}) must be integer class indices")
    if arr.size and (arr.min() < 0 or arr.max() >= K):
        bad = int(arr.max() if arr.max() >= K else arr.min())
        raise InputError(f"`{name}[{b}]` holds class {bad} outside [0, {K}) "
                         "(K = len(area_thresholds))")
    return arr.astype(np.int64)


def _check_masks(m, name: str, b: int, hw=None) -> torch.Tensor:
    if not isinstance(m, torch.Tensor):
        raise InputError(f"`{name}[{b}]` must be a torch.Tensor, got {type(m).__name__}")
    if m.dim() != 3 or (hw is not None and tuple(m.shape[1:]) != hw):
        want = f"(S, {hw[0]}, {hw[1]})" if hw is not None else "(S, H, W)"
        raise InputError(f"`{name}[{b}]` (shape {tuple(m.shape)}) must have shape {want}")
    if m.numel():
        lo, hi = float(m.detach().min()), float(m.detach().max())
        if lo < 0 or hi > 1:
            raise InputError(f"`{name}[{b}]` must hold mask values in [0, 1], got range "
                             f"[{lo:g}, {hi:g}]")
    return m


def _check_matching(m, pc: np.ndarray, gc: np.ndarray, kept_g: np.ndarray, b: int) -> Matching:
    """A given matching, checked against the image's segments (see ``matchings``)."""
    if not isinstance(m, Matching):
        raise InputError(f"`matchings[{b}]` must be a Matching, got {type(m).__name__}")
    S, G = pc.shape[0], gc.shape[0]
    pred = np.asarray(m.pred, np.int64)
    gt = np.asarray(m.gt, np.int64)
    ok = (pred.shape == gt.shape and (pred.size == 0 or (pred.min() >= 0 and pred.max() < S
          and gt.min() >= 0 and gt.max() < G)))
    if ok and pred.size:
        ok = bool(np.all(pc[pred] == gc[gt]) and np.all(kept_g[gt]))
    ok = ok and np.array_equal(np.sort(np.concatenate([pred, m.unmatched_pred])), np.arange(S)) \
        and np.array_equal(np.sort(np.concatenate([gt, m.unmatched_gt])), np.flatnonzero(kept_g))
    if not ok:
        raise InputError(f"`matchings[{b}]` does not fit image {b}: pairs must join segments of "
                         "one class, and matched plus unmatched must list every segment once")
    return Matching(pred, gt, np.asarray(m.iou, np.float64), np.asarray(m.unmatched_pred, np.int64),
                    np.asarray(m.unmatched_gt, np.int64), np.flatnonzero(~kept_g))


def pq_surrogate(pred_masks: Sequence[torch.Tensor], pred_classes: Sequence,
                 gt_masks: Sequence[torch.Tensor], gt_classes: Sequence,
                 area_thresholds, *, pixel_weights: Sequence[torch.Tensor] | None = None,
                 pixel_area: float = 1.0, formulation: str = "complete",
                 matchings: Sequence[Matching] | None = None,
                 gt_slots: Sequence[torch.Tensor] | None = None,
                 gate: str = "area", eps: float = 0.0,
                 matching: str = "overlapping") -> SurrogateResult:
    """PQ surrogate loss of a batch, pooled per class over its images.

    Parameters
    ----------
    pred_masks : sequence of (S_b, H_b, W_b) float Tensor
        Predicted segment masks of each image, values in [0, 1] (hard masks from the
        solver, or soft ones). Gradients flow back to them.
    pred_classes : sequence of (S_b,) integer Tensor or ndarray
        Class index in ``[0, K)`` of each predicted segment.
    gt_masks : sequence of (G_b, H_b, W_b) bool or float Tensor
        Ground-truth segment masks (crowd segments excluded: give their pixels weight 0).
    gt_classes : sequence of (G_b,) integer Tensor or ndarray
    area_thresholds : (K,) array-like or Tensor
        Small-segment threshold of every class, in pixels at the resolution where one
        mask pixel has area ``pixel_area`` (see :func:`class_area_thresholds`).
    pixel_weights : sequence of (H_b, W_b) float Tensor, optional
        Per-pixel weights: 0 on void and crowd pixels, 1 elsewhere by default.
    pixel_area : float
        Area of one mask pixel in threshold pixels: ``s²`` when the masks are the
        full-resolution image downsampled by ``s`` in each direction. The area gate uses
        ``pixel_area * Σ weight * mask``.
    formulation : {"complete", "paper", "official"}
        ``"paper"``: equation (6) as printed. ``"complete"`` (default): a matched pair
        that is not a soft true positive also counts as false positive and false
        negative (see the module docstring). ``"official"``: the authors' released code:
        a matched pair adds the false negative ``1 - h(u)`` (not gated) and no false
        positive, and every class present (ground truth or prediction) weighs 1.
    matchings : sequence of Matching, optional
        One per image, used instead of computing the matching (e.g. the one
        :func:`match_segments` found for the lifted label set, so that both agree
        exactly); every pair must join a prediction and a kept ground-truth segment of
        the same class, and the unmatched lists must complete them.
    gt_slots : sequence of (G_b, H_b, W_b) float Tensor, optional
        One mask per ground-truth segment (normally zeros, as leaves to differentiate):
        the slot of an *unmatched* segment ``g`` enters as a prediction matched to ``g``
        with the gate taken relative to an empty mask (module docstring); slots of
        matched or ignored segments are unused. An all-zero slot leaves the loss value
        unchanged.
    gate : {"area", "intersection"}
        What the area gate ``σ`` of a *matched* prediction (and of a ground-truth slot)
        measures. ``"area"`` (eq. (6)): its whole area. ``"intersection"``: its
        intersection with its ground-truth segment, so that only correct pixels help
        it survive the rejection (module docstring, "The area gate"). Unmatched
        predictions are gated by their area either way.
    eps : float
        Per-class smoothing: ``PQ_l = (IoU_l + eps) / (denominator_l + eps)`` for the
        classes with ground truth (the authors: 0.1; default 0, the printed form).
    matching : {"overlapping", "all"}
        Which pairs of the per-class maximum-IoU assignment are matched when
        ``matchings`` is not given: those that overlap (default), or all of them, as the
        authors' code does (module docstring).

    Returns
    -------
    SurrogateResult
    """
    _check_choice(gate, _GATES, "gate")
    _check_choice(formulation, _FORMULATIONS, "formulation")
    _check_choice(matching, MATCHINGS, "matching")
    B = len(pred_masks)
    for name, seq in (("pred_classes", pred_classes), ("gt_masks", gt_masks),
                      ("gt_classes", gt_classes)):
        if len(seq) != B:
            raise InputError(f"`{name}` (length {len(seq)}) must have one entry per image "
                             f"(len(pred_masks) = {B})")
    for name, seq in (("matchings", matchings), ("gt_slots", gt_slots)):
        if seq is not None and len(seq) != B:
            raise InputError(f"`{name}` (length {len(seq)}) must have one entry per image "
                             f"(len(pred_masks) = {B})")
    if pixel_weights is not None and len(pixel_weights) != B:
        raise InputError(f"`pixel_weights` (length {len(pixel_weights)}) must have one entry "
                         f"per image (len(pred_masks) = {B})")
    if B == 0:
        raise InputError("`pred_masks` must hold at least one image")
    if not (float(pixel_area) > 0):
        raise InputError(f"`pixel_area` must be positive, got {pixel_area}")
    ref = _check_masks(pred_masks[0], "pred_masks", 0)
    dtype, device = (ref.dtype if ref.is_floating_point() else torch.float32), ref.device
    thresholds = torch.as_tensor(area_thresholds, dtype=dtype, device=device)
    if thresholds.dim() != 1:
        raise InputError(f"`area_thresholds` (shape {tuple(thresholds.shape)}) must have "
                         "shape (K,)")
    K = thresholds.shape[0]
    zeros = torch.zeros(K, dtype=dtype, device=device)
    tp, fp, fn, iou_sum = zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone()
    log_absent = zeros.clone()  # Σ log(1 - σ) of predictions, per class
    gt_count = np.zeros(K, np.int64)
    pred_count = np.zeros(K, np.int64)
    found = []
    if not (math.isfinite(eps) and eps >= 0):
        raise InputError(f"`eps` must be a finite number >= 0, got {eps}")
    complete = formulation == "complete"
    official = formulation == "official"
    by_intersection = gate == "intersection"
    for b in range(B):
        pm = _check_masks(pred_masks[b], "pred_masks", b)
        hw = tuple(pm.shape[1:])
        gm = _check_masks(gt_masks[b], "gt_masks", b, hw)
        S, G = pm.shape[0], gm.shape[0]
        pc = _as_classes(pred_classes[b], S, K, "pred_classes", b)
        gc = _as_classes(gt_classes[b], G, K, "gt_classes", b)
        if pixel_weights is None:
            w = torch.ones(hw, dtype=dtype, device=device)
        else:
            w = pixel_weights[b]
            if not isinstance(w, torch.Tensor) or tuple(w.shape) != hw:
                raise InputError(f"`pixel_weights[{b}]` (shape {tuple(getattr(w, 'shape', ()))})"
                                 f" must be a Tensor of shape {hw}")
            w = w.to(dtype=dtype, device=device)
        n = hw[0] * hw[1]
        p = pm.to(dtype).reshape(S, n)
        g = gm.to(dtype=dtype, device=device).reshape(G, n)
        wf = w.reshape(-1)
        pw = p * wf
        inter = pw @ g.T                              # (S, G)
        area_p = pw.sum(1)                            # (S,)
        area_g = (g * wf).sum(1)                      # (G,)
        union = area_p[:, None] + area_g[None, :] - inter
        kept_g = (area_g > 0).detach().cpu().numpy()
        # Union >= area of the gt segment > 0 for every kept gt segment.
        iou = inter / torch.where(union > 0, union, torch.ones_like(union))
        gate = area_gate(pixel_area * area_p, thresholds[torch.as_tensor(pc, device=device)])

        if matchings is None:
            found_b = _match(iou.detach().cpu().numpy(), inter.detach().cpu().numpy(), pc, gc,
                             kept_g, matching)
        else:
            found_b = _check_matching(matchings[b], pc, gc, kept_g, b)
        found.append(found_b)
        mp, mg, un_p, un_g = found_b.pred, found_b.gt, found_b.unmatched_pred, found_b.unmatched_gt

        dev = lambda a: torch.as_tensor(a, device=device)  # noqa: E731

        def add_pairs(cls, u, sp, paper_fn: bool) -> None:
            # Predictions matched to ground truth (IoU u, gate sp) and their counts; the
            # printed form counts a false negative only for a ground-truth slot.
            nonlocal tp, iou_sum, fp, fn
            h = soft_tp(u)
            hs = h * sp
            tp = tp.index_add(0, cls, hs)
            iou_sum = iou_sum.index_add(0, cls, hs * u)
            if complete:
                fp = fp.index_add(0, cls, sp - hs)
                fn = fn.index_add(0, cls, 1 - hs)
            elif official:
                fn = fn.index_add(0, cls, 1 - h)
            elif paper_fn:
                fn = fn.index_add(0, cls, 1 - hs)

        if mp.size:
            if by_intersection:
                sp = area_gate(pixel_area * inter[dev(mp), dev(mg)], thresholds[dev(pc[mp])])
            else:
                sp = gate[dev(mp)]
            add_pairs(dev(pc[mp]), iou[dev(mp), dev(mg)], sp, paper_fn=False)
        if un_p.size:
            fp = fp.index_add(0, dev(pc[un_p]), gate[dev(un_p)])
        if un_g.size and gt_slots is not None:
            q = _check_masks(gt_slots[b], "gt_slots", b, hw)
            if q.shape[0] != G:
                raise InputError(f"`gt_slots[{b}]` (shape {tuple(q.shape)}) must have one mask "
                                 f"per ground-truth segment ({G})")
            qw = q[dev(un_g)].to(dtype).reshape(len(un_g), n) * wf
            area_q = qw.sum(1)
            inter_q = (qw * g[dev(un_g)]).sum(1)
            u = inter_q / (area_q + area_g[dev(un_g)] - inter_q)  # union >= area of g > 0
            t = thresholds[dev(gc[un_g])]
            sq = (area_gate(pixel_area * (inter_q if by_intersection else area_q), t)
                  - area_gate(torch.zeros_like(t), t))
            add_pairs(dev(gc[un_g]), u, sq, paper_fn=True)
        elif un_g.size:
            fn = fn.index_add(0, dev(gc[un_g]), torch.ones(len(un_g), dtype=dtype, device=device))
        if S:
            # log(1 - sigmoid(x)) = -softplus(x): finite even where the gate saturates at 1.
            x = _SLOPE * (pixel_area * area_p - thresholds[dev(pc)])
            log_absent = log_absent.index_add(0, dev(pc), -torch.nn.functional.softplus(x))
        np.add.at(gt_count, gc[kept_g], 1)
        np.add.at(pred_count, pc, 1)

    has_gt = torch.as_tensor(gt_count > 0, device=device)
    present = np.flatnonzero((gt_count > 0) | (pred_count > 0))
    denom = tp + 0.5 * fp + 0.5 * fn
    safe = torch.where(has_gt, denom.clamp_min(torch.finfo(dtype).tiny), torch.ones_like(denom))
    if official:
        # Every present class counts, smoothed: a class with predictions only scores
        # eps / (FP / 2 + eps).
        pq_class = (iou_sum + eps) / (denom + eps).clamp_min(torch.finfo(dtype).tiny)
        weight = torch.as_tensor((gt_count > 0) | (pred_count > 0), dtype=dtype, device=device)
    else:
        pq_class = torch.where(has_gt, (iou_sum + eps) / (safe + eps), torch.zeros_like(denom))
        weight = torch.where(has_gt, torch.ones_like(denom), -torch.expm1(log_absent))
    total_weight = weight.sum()
    if present.size == 0 or float(total_weight.detach()) <= 0:
        # Nothing to score (no ground truth, no prediction that can survive): zero loss,
        # still attached to the masks so that backward() works and gives zeros.
        attached = list(pred_masks) + list(gt_slots or [])
        loss = sum((m.sum() * 0 for m in attached), torch.zeros((), dtype=dtype, device=device))
        return SurrogateResult(loss, 1.0, {}, found)
    pq = (weight * pq_class).sum() / total_weight
    loss = 1 - pq
    per_class = {}
    values = torch.stack([pq_class, tp, fp, fn, iou_sum, weight]).detach().cpu().numpy()
    for c in present.tolist():
        per_class[c] = dict(zip(("pq", "tp", "fp", "fn", "iou", "weight"),
                                (float(v) for v in values[:, c])))
    return SurrogateResult(loss, float(pq.detach()), per_class, found)


def pq_surrogate_mask_grads(pred_masks: Sequence[torch.Tensor], pred_classes: Sequence,
                            gt_masks: Sequence[torch.Tensor], gt_classes: Sequence,
                            area_thresholds, *, unmatched_gt_grads: bool = False, **kwargs):
    """:func:`pq_surrogate` plus ``∂L/∂(mask)`` of every predicted segment.

    The masks are taken as constants (detached copies), so this works on hard masks
    coming out of the solver. Keyword arguments are those of :func:`pq_surrogate`.

    Parameters
    ----------
    unmatched_gt_grads : bool
        Also return the gradient with respect to the empty mask of a prediction that
        stands for each ground-truth segment (``gt_slots`` of :func:`pq_surrogate`).

    Returns
    -------
    result : SurrogateResult
        With ``loss`` detached.
    grads : list of (S_b, H_b, W_b) Tensor
        ``∂L/∂pred_masks[b]``: negative where growing the segment lowers the loss.
    gt_grads : list of (G_b, H_b, W_b) Tensor
        Only with ``unmatched_gt_grads``: the gradient for each ground-truth segment's
        empty slot; zero for matched and ignored segments.
    """
    def leaf(m):
        return m.detach().to(torch.float64 if m.dtype == torch.float64 else torch.float32
                             ).requires_grad_(True)

    leaves = [leaf(m) for m in pred_masks]
    slots = None
    if unmatched_gt_grads:
        dtype = leaves[0].dtype if leaves else torch.float32
        slots = [torch.zeros(tuple(g.shape), dtype=dtype, device=g.device, requires_grad=True)
                 for g in gt_masks]
    result = pq_surrogate(leaves, pred_classes, gt_masks, gt_classes, area_thresholds,
                          gt_slots=slots, **kwargs)
    wrt = leaves + (slots or [])
    if result.loss.requires_grad:
        grads = list(torch.autograd.grad(result.loss, wrt, allow_unused=True))
    else:
        grads = [None] * len(wrt)
    grads = [torch.zeros_like(m) if gr is None else gr for m, gr in zip(wrt, grads)]
    result.loss = result.loss.detach()
    if unmatched_gt_grads:
        return result, grads[:len(leaves)], grads[len(leaves):]
    return result, grads
