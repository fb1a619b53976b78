"""Solver output at cost resolution -> a panoptic id map at the original image size.

The solver labels the nodes of the cost grid (``h x w``, typically 1/4 of the image in
each dimension). Turning that into a COCO panoptic prediction takes four steps, all
here so that ground truth and predictions go through the same code:

1. **Stuff merging.** The solver returns one segment per connected region; in the COCO
   panoptic format a stuff category is one segment per image (its regions need not be
   connected), so with ``merge_stuff=True`` (the default) all segments of one stuff
   class become one panoptic segment. Thing segments stay separate instances.
2. **Nearest upsampling** to the original size ``(H, W)``: output row ``Y`` reads cost
   row ``floor((Y + 0.5) * h / H)`` (the pixel-centre convention), columns alike. The
   map is never interpolated, so segment ids survive intact.
3. **Small-segment rejection** (section 4.1 of the paper): a segment whose area *at the
   original resolution* is below its threshold (``thing_area`` for thing classes,
   ``stuff_area`` for stuff classes; defaults 200 and 2048, the paper's Cityscapes
   values) is removed and its pixels become void (id 0). A segment is kept when its
   area is at least the threshold.
4. **Segment ids.** The kept segments are numbered ``1 .. M`` in raster order of their
   first pixel (row-major at cost resolution); 0 is void. The scheme never overflows
   (M is at most the node count, far below ``256**3``), and the category of an id is
   read from the segment table, not from the id.

Areas and bounding boxes are computed at cost resolution with each cost pixel weighted
by the number of output pixels it covers, which is exact for nearest upsampling and
avoids a pass over the full-resolution map.

Each predicted segment also gets a confidence, :func:`segment_scores`: the mean
probability of its class over its mask at cost resolution (COCO instance AP ranks
predictions by it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError
from .format import Category, Segment

DEFAULT_THING_AREA = 200
DEFAULT_STUFF_AREA = 2048


@dataclass
class PanopticPrediction:
    """One image's panoptic prediction at the original image size.

    ids : (H, W) int32 ndarray
        Segment id per pixel, ``0`` = void.
    segments : list of Segment
        One entry per id ``1 .. M``: category id, area and COCO bbox ``[x, y, w, h]``
        at the original size.
    num_rejected : int
        Segments removed by the small-segment rejection.
    rejected_area : int
        Pixels (original size) turned void by the rejection.
    cost_ids : (h, w) int32 ndarray or None
        The same segment ids at cost resolution (``ids`` is its nearest upsampling);
        what :func:`segment_scores` reads.
    """

    ids: np.ndarray
    segments: list[Segment] = field(default_factory=list)
    num_rejected: int = 0
    rejected_area: int = 0
    cost_ids: np.ndarray | None = None


def nearest_index(src: int, dst: int) -> np.ndarray:
    """(dst,) int64 ndarray: the source index each of ``dst`` output positions reads.

    Pixel-centre nearest neighbour: output ``i`` reads ``floor((i + 0.5) * src / dst)``.
    """
    if src < 1 or dst < 1:
        raise InputError(f"sizes must be positive, got src={src}, dst={dst}")
    idx = ((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst)).astype(np.int64)
    return np.minimum(idx, src - 1)


def upsample_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) ndarray -> (H, W) ndarray by the nearest rule of :func:`nearest_index`."""
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise InputError(f"`arr` (shape {arr.shape}) must have shape (h, w)")
    H, W = _check_size(size, "size")
    rows = nearest_index(arr.shape[0], H)
    cols = nearest_index(arr.shape[1], W)
    return arr[rows[:, None], cols[None, :]]


def _check_size(size, name: str) -> tuple[int, int]:
    try:
        H, W = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"`{name}` must be a pair (height, width), got {size!r}") from None
    if H < 1 or W < 1:
        raise InputError(f"`{name}` must be positive, got {H}x{W}")
    return H, W


def _coverage(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per source index: output count, first and last output index it covers."""
    idx = nearest_index(src, dst)
    count = np.bincount(idx, minlength=src)
    first = np.searchsorted(idx, np.arange(src), side="left")
    last = np.searchsorted(idx, np.arange(src), side="right") - 1
    return count, first, last


def panoptic_from_segments(segment_map: np.ndarray, segment_class: np.ndarray,
                           categories: Sequence[Category], image_size: tuple[int, int],
                           thing_area: float = DEFAULT_THING_AREA,
                           stuff_area: float = DEFAULT_STUFF_AREA,
                           merge_stuff: bool = True) -> PanopticPrediction:
    """Turn a segmentation at cost resolution into a panoptic prediction.

    Parameters
    ----------
    segment_map : (h, w) int ndarray
        Segment index per cost pixel, ``0 .. S-1`` (negative = void).
    segment_class : (S,) int ndarray
        Contiguous class index of each segment, indexing ``categories``.
    categories : sequence of Category, length K
        Class table: contiguous class index -> category id and thing/stuff.
    image_size : (H, W)
        Original image size; the output has this shape.
    thing_area, stuff_area : float
        Rejection thresholds in pixels at the original size (area below -> void).
    merge_stuff : bool
        Join all segments of one stuff class into one panoptic segment.

    Returns
    -------
    PanopticPrediction
    """
    seg = np.asarray(segment_map)
    if seg.ndim != 2 or seg.dtype.kind not in "iu":
        raise InputError(f"`segment_map` (shape {seg.shape}, dtype {seg.dtype}) must be an "
                         "(h, w) integer array")
    h, w = seg.shape
    H, W = _check_size(image_size, "image_size")
    seg_cls = np.asarray(segment_class, dtype=np.int64).ravel()
    K = len(categories)
    if K == 0:
        raise InputError("`categories` must hold at least one class")
    if seg_cls.size and (seg_cls.min() < 0 or seg_cls.max() >= K):
        raise InputError(f"`segment_class` must index `categories` in [0, {K}), got range "
                         f"[{seg_cls.min()}, {seg_cls.max()}]")
    S = seg_cls.size
    flat = seg.ravel().astype(np.int64)
    if flat.size and flat.max() >= S:
        raise InputError(f"`segment_map` holds segment {int(flat.max())} but `segment_class` "
                         f"has only {S} entries")
    isthing = np.array([bool(c.isthing) for c in categories])
    cat_id = np.array([int(c.id) for c in categories], dtype=np.int64)

    # Group = output segment before rejection: thing segments stay, stuff segments of one
    # class share the group S + k.
    valid = flat >= 0
    group_of_seg = np.arange(S, dtype=np.int64)
    if merge_stuff and S:
        stuff = ~isthing[seg_cls]
        group_of_seg[stuff] = S + seg_cls[stuff]
    group_class = np.concatenate([seg_cls, np.arange(K, dtype=np.int64)])
    G = S + K
    group = np.full(flat.shape, -1, dtype=np.int64)
    group[valid] = group_of_seg[flat[valid]]

    rcount, rfirst, rlast = _coverage(h, H)
    ccount, cfirst, clast = _coverage(w, W)
    weight = (rcount[:, None] * ccount[None, :]).ravel()
    # Cost pixels covering no output pixel (when downsampling) must not count at all.
    live = valid & (weight > 0)
    g = group[live]
    area = np.bincount(g, weights=weight[live], minlength=G).astype(np.int64)
    rows = np.repeat(np.arange(h), w)[live]
    cols = np.tile(np.arange(w), h)[live]
    rmin = np.full(G, h); rmax = np.full(G, -1); cmin = np.full(G, w); cmax = np.full(G, -1)
    np.minimum.at(rmin, g, rows); np.maximum.at(rmax, g, rows)
    np.minimum.at(cmin, g, cols); np.maximum.at(cmax, g, cols)

    threshold = np.where(isthing[group_class], float(thing_area), float(stuff_area))
    present = area > 0
    keep = present & (area >= threshold)

    # Number the kept groups 1..M in raster order of their first pixel.
    first_pos = np.full(G, flat.size, dtype=np.int64)
    np.minimum.at(first_pos, g, np.flatnonzero(live))
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(first_pos[kept], kind="stable")]
    new_id = np.zeros(G + 1, dtype=np.int32)  # index G (= -1 via wrap below) stays void
    new_id[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    small = np.where(group >= 0, group, G)
    ids_small = new_id[small].reshape(h, w)
    ids = ids_small[nearest_index(h, H)[:, None], nearest_index(w, W)[None, :]]

    segments = []
    for j, gi in enumerate(kept.tolist(), start=1):
        x0 = int(cfirst[cmin[gi]]); y0 = int(rfirst[rmin[gi]])
        x1 = int(clast[cmax[gi]]); y1 = int(rlast[rmax[gi]])
        segments.append(Segment(id=j, category_id=int(cat_id[group_class[gi]]),
                                area=int(area[gi]), bbox=(x0, y0, x1 - x0 + 1, y1 - y0 + 1),
                                iscrowd=False))
    rejected = present & ~keep
    return PanopticPrediction(ids=np.ascontiguousarray(ids), segments=segments,
                              num_rejected=int(rejected.sum()),
                              rejected_area=int(area[rejected].sum()),
                              cost_ids=ids_small)


def segment_classes(labels: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """The class of every solver segment, read from its nodes.

    Parameters
    ----------
    labels, segments : (N,) int ndarray
        ``AMWCResult.labels`` and ``AMWCResult.segments`` (non-negative); every segment
        holds one class, as the solver guarantees.

    Returns
    -------
    (S,) int64 ndarray
        ``S = segments.max() + 1``; an index that no node has gets class 0.
    """
    segments = np.asarray(segments)
    seg_cls = np.zeros(int(segments.max()) + 1 if segments.size else 0, dtype=np.int64)
    seg_cls[segments] = labels
    return seg_cls


def panoptic_from_solution(labels: np.ndarray, segments: np.ndarray, cost_size: tuple[int, int],
                           categories: Sequence[Category], image_size: tuple[int, int],
                           thing_area: float = DEFAULT_THING_AREA,
                           stuff_area: float = DEFAULT_STUFF_AREA,
                           merge_stuff: bool = True) -> PanopticPrediction:
    """Panoptic prediction from an AMWC solution on the cost grid.

    Parameters
    ----------
    labels : (N,) int ndarray
        Class per node (``AMWCResult.labels``), ``N = h * w`` in row-major order.
    segments : (N,) int ndarray
        Segment per node, ``0 .. M-1`` (``AMWCResult.segments``); every segment holds one
        class, as the solver guarantees.
    cost_size : (h, w)
        Size of the cost grid.
    categories, image_size, thing_area, stuff_area, merge_stuff
        As in :func:`panoptic_from_segments`.
    """
    h, w = _check_size(cost_size, "cost_size")
    labels = np.asarray(labels)
    segments = np.asarray(segments)
    if labels.shape != (h * w,) or segments.shape != (h * w,):
        raise InputError(f"`labels` (shape {labels.shape}) and `segments` (shape "
                         f"{segments.shape}) must have shape ({h * w},) for a {h}x{w} grid")
    if segments.size and segments.min() < 0:
        raise InputError("`segments` must be non-negative segment indices")
    seg_cls = segment_classes(labels, segments)
    if np.any(seg_cls[segments] != labels):
        bad = int(np.flatnonzero(seg_cls[segments] != labels)[0])
        raise InputError(f"segment {int(segments[bad])} holds more than one class "
                         f"(node {bad} has class {int(labels[bad])})")
    return panoptic_from_segments(segments.reshape(h, w), seg_cls, categories, image_size,
                                  thing_area=thing_area, stuff_area=stuff_area,
                                  merge_stuff=merge_stuff)


def segment_scores(segment_map: np.ndarray, segment_class: Mapping[int, int],
                   node_costs: np.ndarray) -> dict[int, float]:
    """Confidence of each segment: the mean probability of its class over its mask.

    Node costs are negative log class probabilities (``-log softmax`` of the semantic
    logits), so ``exp(-node_costs[k])`` is the probability of class ``k`` at each node.
    A segment's score is the mean of that probability for the segment's own class over
    the segment's pixels *at cost resolution*, each cost pixel counting once. This is how
    Panoptic-DeepLab scores its instances (the mean semantic probability of the class
    over the instance mask); it needs nothing but the costs the solver already read, and
    it lies in ``(0, 1]``: a negative cost (not a log probability) would give a value
    above 1 and is clipped to 1.

    Parameters
    ----------
    segment_map : (h, w) int ndarray
        Segment id per cost pixel (e.g. :attr:`PanopticPrediction.cost_ids`); ids that
        are not keys of ``segment_class`` (such as void) are ignored.
    segment_class : mapping of int to int
        Segment id -> contiguous class index ``0 .. K-1`` (indexing ``node_costs``).
    node_costs : (K, h, w) float ndarray
        Node costs of the image, on the grid of ``segment_map``.

    Returns
    -------
    dict
        ``{segment id: score}`` for every key of ``segment_class``, as Python floats.

    Examples
    --------
    >>> costs = -np.log(np.array([[[0.5, 0.25]], [[0.5, 0.75]]]))   # K=2, 1x2 grid
    >>> segment_scores(np.array([[1, 1]]), {1: 1}, costs)
    {1: 0.625}
    """
    seg = np.asarray(segment_map)
    nc = np.asarray(node_costs)
    if seg.ndim != 2 or seg.dtype.kind not in "iu":
        raise InputError(f"`segment_map` (shape {seg.shape}, dtype {seg.dtype}) must be an "
                         "(h, w) integer array")
    if nc.ndim != 3 or nc.shape[1:] != seg.shape or nc.dtype.kind != "f":
        raise InputError(f"`node_costs` (shape {nc.shape}, dtype {nc.dtype}) must be a float "
                         f"array of shape (K, {seg.shape[0]}, {seg.shape[1]})")
    K = nc.shape[0]
    if not segment_class:
        return {}
    ids = np.fromiter((int(k) for k in segment_class.keys()), np.int64, len(segment_class))
    cls = np.fromiter((int(v) for v in segment_class.values()), np.int64, len(segment_class))
    if cls.min() < 0 or cls.max() >= K:
        raise InputError(f"`segment_class` must map to class indices in [0, {K}), got range "
                         f"[{cls.min()}, {cls.max()}]")
    order = np.argsort(ids, kind="stable")
    ids, cls = ids[order], cls[order]
    flat = seg.ravel().astype(np.int64, copy=False)
    pos = np.minimum(np.searchsorted(ids, flat), ids.size - 1)
    pixels = np.flatnonzero(ids[pos] == flat)
    index = pos[pixels]
    prob = np.exp(-nc.reshape(K, -1)[cls[index], pixels].astype(np.float64))
    np.minimum(prob, 1.0, out=prob)
    counts = np.bincount(index, minlength=ids.size)
    if not counts.all():
        missing = int(ids[np.flatnonzero(counts == 0)[0]])
        raise InputError(f"`segment_class` lists segment {missing}, which has no pixel in "
                         "`segment_map`")
    means = np.bincount(index, weights=prob, minlength=ids.size) / counts
    return dict(zip(ids.tolist(), means.tolist()))
