"""Training targets at the network's output resolution (1/stride of the input).

From a panoptic id map at input resolution (after augmentation) this builds:

* the **semantic target**: contiguous class index per output pixel, ``ignore_index``
  on void;
* **semantic pixel weights**: 1, times ``small_weight`` on pixels of small instances,
  0 on void (those pixels carry no loss anyway);
* for each distance ``d`` of the grid layout (:mod:`copsctl.solver.grid`: channel
  ``2 i`` horizontal ``(y, x) -> (y, x + d_i)``, channel ``2 i + 1`` vertical
  ``(y, x) -> (y + d_i, x)``) the **affinity target**, 1 when both endpoints lie in the
  same panoptic segment, and its **weight**.

Choices (section 4.2 of the paper and Panoptic-DeepLab, made explicit here):

Downsampling
    The output pixel ``(y, x)`` takes the panoptic id of input pixel
    ``(min(s y + s // 2, H - 1), min(s x + s // 2, W - 1))``, i.e. nearest neighbour at
    the centre of its ``s x s`` cell. The output size is ``(ceil(H / s), ceil(W / s))``,
    the size of a ResNet's stride-``s`` feature map.
Small instances
    A non-crowd thing segment whose area *at input resolution, within the crop* is below
    ``small_area`` (64² by default, as in Panoptic-DeepLab) is small.
Affinity weights
    ``1 x thing_weight`` (4) if at least one endpoint is on a thing class, ``x
    small_weight`` (3) if at least one endpoint is on a small instance; the factors
    multiply, so an edge touching a small instance weighs 12.
Void
    An edge with a void endpoint (id 0: unlabelled pixels and crop padding) has weight 0
    and target 0.
Crowd
    A crowd segment is one region covering several unseparated instances, so whether two
    of its pixels belong to the same object is unknown: an edge with *both* endpoints in
    the same crowd segment has weight 0 (and target 0, like every weight-0 edge). An edge leaving a crowd segment is a true
    boundary (target 0) and keeps its ordinary weight; crowd pixels keep their class in
    the semantic target; crowd segments are never small.
No edge
    Positions whose partner pixel falls outside the map (the layout's non-edges) have
    target 0 and weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..panoptic.format import VOID
from ..solver.grid import grid_edge_mask
from .categories import IGNORE_INDEX


@dataclass
class Targets:
    """Targets of one image at output resolution ``(h, w)`` for ``m`` distances.

    Attributes
    ----------
    semantic : (h, w) int64 ndarray
        Class index, ``ignore_index`` on void.
    semantic_weights : (h, w) float32 ndarray
    affinity : (2 m, h, w) float32 ndarray
        1 where both endpoints are in the same segment, else 0 (grid layout).
    affinity_weights : (2 m, h, w) float32 ndarray
    panoptic : (h, w) int64 ndarray
        Downsampled segment ids, 0 on void.
    segment_ids, segment_classes : (S,) int64 ndarray
        Segments present in ``panoptic`` and their class indices.
    segment_iscrowd : (S,) bool ndarray
    segment_area : (S,) int64 ndarray
        Pixel count in ``panoptic`` (output resolution).
    segment_area_input : (S,) int64 ndarray
        Pixel count in the input-resolution map the targets were built from.
    """

    semantic: np.ndarray
    semantic_weights: np.ndarray
    affinity: np.ndarray
    affinity_weights: np.ndarray
    panoptic: np.ndarray
    segment_ids: np.ndarray
    segment_classes: np.ndarray
    segment_iscrowd: np.ndarray
    segment_area: np.ndarray
    segment_area_input: np.ndarray


def downsample_panoptic(panoptic: np.ndarray, stride: int) -> np.ndarray:
    """(H, W) id map -> (ceil(H/stride), ceil(W/stride)) by the cell-centre pixel."""
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2:
        raise InputError(f"`panoptic` (shape {panoptic.shape}) must have shape (H, W)")
    stride = int(stride)
    if stride < 1:
        raise InputError(f"`stride` must be a positive integer, got {stride}")
    H, W = panoptic.shape
    ys = np.minimum(np.arange(0, H, stride) + stride // 2, H - 1)
    xs = np.minimum(np.arange(0, W, stride) + stride // 2, W - 1)
    return panoptic[np.ix_(ys, xs)]


def _segment_index(panoptic: np.ndarray, ids_sorted: np.ndarray, source: str) -> np.ndarray:
    """(H, W) ids -> (H, W) position in ``ids_sorted``, ``len(ids_sorted)`` for void."""
    n = ids_sorted.size
    if n == 0:
        if (panoptic != VOID).any():
            raise InputError(f"{source}: has non-void pixels but no segments")
        return np.zeros(panoptic.shape, dtype=np.int64)
    pos = np.minimum(np.searchsorted(ids_sorted, panoptic), n - 1)
    found = ids_sorted[pos] == panoptic
    void = panoptic == VOID
    if not (found | void).all():
        bad = sorted(set(np.unique(panoptic[~(found | void)]).tolist()))[:5]
        raise InputError(f"{source}: segment ids {bad} have no entry in the segment table")
    return np.where(void, n, pos)


def make_targets(panoptic: np.ndarray, *, segment_ids: np.ndarray, segment_classes: np.ndarray,
                 segment_iscrowd: np.ndarray, thing_classes: np.ndarray,
                 distances: Sequence[int], stride: int = 4, small_area: int = 64 * 64,
                 small_weight: float = 3.0, thing_weight: float = 4.0,
                 ignore_index: int = IGNORE_INDEX, source: str = "panoptic map") -> Targets:
    """Semantic and affinity targets with their loss weights (see the module notes).

    Parameters
    ----------
    panoptic : (H, W) int ndarray
        Segment ids at input resolution; 0 is void (including padding).
    segment_ids, segment_classes : (S,) int ndarray
        The segment table: id and contiguous class index of every segment that may
        occur in ``panoptic`` (segments absent from it are dropped).
    segment_iscrowd : (S,) bool ndarray
    thing_classes : (K,) bool ndarray
        True for thing classes (``ClassTable.thing_mask``).
    distances : sequence of int
        Affinity distances at output resolution, in the grid layout's order.
    stride : int
        Output stride: targets have shape ``(ceil(H / stride), ceil(W / stride))``.
    small_area : int
        Instances with fewer input-resolution pixels than this are small.
    small_weight, thing_weight : float
        Weight factors for small instances and thing endpoints.
    ignore_index : int
        Semantic label of void pixels.
    source : str
        Name of the input used in error messages.

    Returns
    -------
    Targets
    """
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2 or not np.issubdtype(panoptic.dtype, np.integer):
        raise InputError(f"`panoptic` (shape {panoptic.shape}, dtype {panoptic.dtype}) must be "
                         "an (H, W) integer array")
    seg_ids = np.asarray(segment_ids, dtype=np.int64).reshape(-1)
    seg_cls = np.asarray(segment_classes, dtype=np.int64).reshape(-1)
    seg_crowd = np.asarray(segment_iscrowd, dtype=bool).reshape(-1)
    thing_classes = np.asarray(thing_classes, dtype=bool).reshape(-1)
    if not (seg_ids.size == seg_cls.size == seg_crowd.size):
        raise InputError(f"`segment_ids`, `segment_classes` and `segment_iscrowd` must have the "
                         f"same length, got {seg_ids.size}, {seg_cls.size}, {seg_crowd.size}")
    if seg_cls.size and (seg_cls.min() < 0 or seg_cls.max() >= thing_classes.size):
        raise InputError(f"`segment_classes` must lie in [0, {thing_classes.size}) "
                         f"(the length of `thing_classes`), got range "
                         f"[{seg_cls.min()}, {seg_cls.max()}]")
    distances = [int(d) for d in distances]

    order = np.argsort(seg_ids, kind="stable")
    seg_ids, seg_cls, seg_crowd = seg_ids[order], seg_cls[order], seg_crowd[order]
    if seg_ids.size and ((np.diff(seg_ids) == 0).any() or (seg_ids == VOID).any()):
        raise InputError("`segment_ids` must be distinct and non-zero")
    n = seg_ids.size

    # Areas at input resolution decide which instances are small.
    full_index = _segment_index(panoptic, seg_ids, source)
    area_input = np.bincount(full_index.ravel(), minlength=n + 1)[:n]
    seg_thing = thing_classes[seg_cls] if n else np.zeros(0, dtype=bool)
    seg_small = seg_thing & ~seg_crowd & (area_input < small_area)

    # Per-segment lookup tables with one extra row (index n) for void.
    cls_t = np.append(seg_cls, ignore_index)
    thing_t = np.append(seg_thing, False)
    small_t = np.append(seg_small, False)
    crowd_t = np.append(seg_crowd, False)

    small_pan = downsample_panoptic(panoptic, stride)
    # Indexing the full-resolution index map gives the same cells as small_pan.
    H, W = panoptic.shape
    ys = np.minimum(np.arange(0, H, stride) + stride // 2, H - 1)
    xs = np.minimum(np.arange(0, W, stride) + stride // 2, W - 1)
    j = full_index[np.ix_(ys, xs)]
    h, w = j.shape

    void = j == n
    semantic = cls_t[j]
    semantic_weights = np.where(small_t[j], np.float32(small_weight), np.float32(1.0))
    semantic_weights[void] = 0.0

    # Per-pixel weight factor: an edge's factor is the product over "any endpoint" flags,
    # so compute the flags per pixel once and OR them per edge.
    thing_px = thing_t[j]
    small_px = small_t[j]
    crowd_px = crowd_t[j]

    mask = grid_edge_mask(h, w, distances)
    affinity = np.zeros(mask.shape, dtype=np.float32)
    weights = np.zeros(mask.shape, dtype=np.float32)
    for i, d in enumerate(distances):
        for ch, (a, b) in ((2 * i, (np.s_[:, : w - d], np.s_[:, d:])),
                           (2 * i + 1, (np.s_[: h - d, :], np.s_[d:, :]))):
            if (ch % 2 == 0 and d >= w) or (ch % 2 == 1 and d >= h):
                continue  # no edge of this direction fits
            ja, jb = j[a], j[b]
            same = ja == jb
            dead = void[a] | void[b] | (same & crowd_px[a])
            wgt = np.where(thing_px[a] | thing_px[b], np.float32(thing_weight), np.float32(1.0))
            wgt = wgt * np.where(small_px[a] | small_px[b], np.float32(small_weight),
                                 np.float32(1.0))
            wgt[dead] = 0.0
            affinity[ch][a] = (same & ~dead).astype(np.float32)
            weights[ch][a] = wgt

    present = np.bincount(j.ravel(), minlength=n + 1)[:n]
    keep = present > 0
    return Targets(semantic=semantic.astype(np.int64), semantic_weights=semantic_weights,
                   affinity=affinity, affinity_weights=weights,
                   panoptic=small_pan.astype(np.int64), segment_ids=seg_ids[keep],
                   segment_classes=seg_cls[keep], segment_iscrowd=seg_crowd[keep],
                   segment_area=present[keep].astype(np.int64),
                   segment_area_input=area_input[keep].astype(np.int64))
