"""Pictures as arrays: panoptic colour overlays, class maps and cut probabilities.

Everything here is NumPy only and returns ``uint8`` RGB or ``float`` arrays, so the
figures of :mod:`copsctl.visualize` (matplotlib) and any other viewer show the same
colours:

- a **stuff** segment is drawn in its category's colour (the COCO ``color`` field), so
  the same class has the same colour in ground truth and prediction;
- a **thing** segment (an instance) gets its own colour, half its category's colour and
  half a colour drawn from its segment id, so touching instances of one class differ
  while the class stays recognisable; instances are outlined in white;
- a **crowd** segment is drawn in its category's colour, without an outline (it is a
  region, not an instance);
- **void** (id 0) shows the image unchanged (black where there is no image).

Node costs are cheaper for likelier classes (the solver pays the cost of the class it
chooses), so the network's semantic prediction is the argmin of the node costs. An edge
cost is paid when its edge is cut and positive is attractive; the network's edge costs
are affinity logits, so ``sigmoid(-cost)`` is the predicted probability that the edge is
cut (its two pixels lie in different segments).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from ..panoptic.format import VOID, Category, Segment

__all__ = ["segment_colors", "boundaries", "panoptic_overlay", "class_map_colors",
           "semantic_argmin", "cut_probability"]

_OUTLINE = np.array([255, 255, 255], dtype=np.uint8)


def _id_color(segment_id: int) -> np.ndarray:
    """A bright colour that is a fixed function of a segment id."""
    rng = np.random.default_rng([int(segment_id), 7])
    return rng.uniform(40, 255, size=3)


def segment_colors(segments: Sequence[Segment], categories: Sequence[Category]
                   ) -> dict[int, np.ndarray]:
    """The display colour of every segment (module notes).

    Parameters
    ----------
    segments : sequence of Segment
    categories : sequence of Category
        Must hold the category of every segment.

    Returns
    -------
    dict
        Segment id -> (3,) uint8 RGB colour.
    """
    by_id = {int(c.id): c for c in categories}
    colors = {}
    for s in segments:
        cat = by_id.get(int(s.category_id))
        if cat is None:
            raise InputError(f"segment {s.id}: category id {s.category_id} is not among the "
                             f"categories {sorted(by_id)}")
        base = np.asarray(cat.color, dtype=np.float64)
        if cat.isthing and not s.iscrowd:
            base = 0.5 * base + 0.5 * _id_color(s.id)
        colors[int(s.id)] = np.clip(np.rint(base), 0, 255).astype(np.uint8)
    return colors


def boundaries(ids: np.ndarray) -> np.ndarray:
    """(H, W) bool ndarray: pixels with a 4-neighbour of another id (both sides of a border).

    Parameters
    ----------
    ids : (H, W) integer ndarray
    """
    from skimage.segmentation import find_boundaries

    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise InputError(f"`ids` (shape {ids.shape}) must have shape (H, W)")
    return find_boundaries(ids, connectivity=1, mode="thick")


def panoptic_overlay(ids: np.ndarray, segments: Sequence[Segment],
                     categories: Sequence[Category], image: np.ndarray | None = None,
                     alpha: float = 0.6) -> np.ndarray:
    """Colour a panoptic id map over an image (module notes for the colours).

    Parameters
    ----------
    ids : (H, W) integer ndarray
        Segment id per pixel, 0 = void.
    segments : sequence of Segment
        The segment table of ``ids`` (every non-zero id must be listed).
    categories : sequence of Category
    image : (H, W, 3) uint8 ndarray, optional
        Shown under the colours and in void pixels; black when absent.
    alpha : float
        Opacity of the segment colours in (0, 1].

    Returns
    -------
    (H, W, 3) uint8 ndarray
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise InputError(f"`ids` (shape {ids.shape}) must have shape (H, W)")
    if not 0 < alpha <= 1:
        raise InputError(f"`alpha` must lie in (0, 1], got {alpha}")
    H, W = ids.shape
    if image is None:
        base = np.zeros((H, W, 3), dtype=np.float64)
    else:
        image = np.asarray(image)
        if image.shape != (H, W, 3):
            raise InputError(f"`image` (shape {image.shape}) must have shape ({H}, {W}, 3) "
                             "like `ids`")
        base = image.astype(np.float64)
    colors = segment_colors(segments, categories)
    present = np.unique(ids)
    unknown = [int(i) for i in present if i != VOID and int(i) not in colors]
    if unknown:
        raise InputError(f"segment id {unknown[0]} of the id map is not in the segment table")
    # One lookup table over the dense rank of each id: no per-segment pass over the image.
    rank = np.searchsorted(present, ids)
    table = np.zeros((len(present), 3), dtype=np.float64)
    painted = np.zeros(len(present), dtype=bool)
    for j, sid in enumerate(present.tolist()):
        if sid != VOID:
            table[j] = colors[int(sid)]
            painted[j] = True
    out = base.copy()
    mask = painted[rank]
    out[mask] = (1 - alpha) * base[mask] + alpha * table[rank[mask]]
    things = {int(s.id) for s in segments if _is_instance(s, categories)}
    if things:
        outline = boundaries(ids) & np.isin(ids, np.fromiter(things, dtype=np.int64))
        out[outline] = _OUTLINE
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _is_instance(s: Segment, categories: Sequence[Category]) -> bool:
    for c in categories:
        if int(c.id) == int(s.category_id):
            return bool(c.isthing) and not s.iscrowd
    return False


def class_map_colors(class_map: np.ndarray, categories: Sequence[Category]) -> np.ndarray:
    """Colour a map of contiguous class indices with the categories' colours.

    Parameters
    ----------
    class_map : (h, w) integer ndarray
        Values in ``[0, K)``, the index into ``categories``.
    categories : sequence of K Category

    Returns
    -------
    (h, w, 3) uint8 ndarray
    """
    class_map = np.asarray(class_map)
    K = len(categories)
    if class_map.size and (class_map.min() < 0 or class_map.max() >= K):
        raise InputError(f"`class_map` values must lie in [0, {K}), got range "
                         f"[{class_map.min()}, {class_map.max()}]")
    palette = np.array([tuple(c.color) for c in categories], dtype=np.uint8).reshape(K, 3)
    return palette[class_map]


def semantic_argmin(node_costs: np.ndarray) -> np.ndarray:
    """(K, h, w) node costs -> (h, w) int64 class index of the cheapest class per pixel."""
    node_costs = np.asarray(node_costs)
    if node_costs.ndim != 3:
        raise InputError(f"`node_costs` (shape {node_costs.shape}) must have shape (K, h, w)")
    return np.argmin(node_costs, axis=0).astype(np.int64)


def cut_probability(edge_maps: np.ndarray, distances: Sequence[int]) -> np.ndarray:
    """Per distance, the larger cut probability ``sigmoid(-cost)`` of a pixel's two edges.

    Parameters
    ----------
    edge_maps : (2 m, h, w) float ndarray
        Edge costs in the grid layout of :mod:`copsctl.solver.grid`.
    distances : sequence of m ints

    Returns
    -------
    (m, h, w) float64 ndarray
        In [0, 1]; the maximum over the horizontal edge ``(y, x)-(y, x + d)`` and the
        vertical edge ``(y, x)-(y + d, x)``, 0 where a pixel has neither (its partners
        lie outside the image).
    """
    from ..solver.grid import grid_edge_mask

    edge_maps = np.asarray(edge_maps, dtype=np.float64)
    ds = tuple(int(d) for d in distances)
    if edge_maps.ndim != 3 or edge_maps.shape[0] != 2 * len(ds):
        raise InputError(f"`edge_maps` (shape {edge_maps.shape}) must have shape "
                         f"(2 * {len(ds)}, h, w) for distances {list(ds)}")
    mask = grid_edge_mask(edge_maps.shape[1], edge_maps.shape[2], ds)
    # exp(-|x|) never overflows; this is sigmoid(-x) for either sign of x.
    e = np.exp(-np.abs(edge_maps))
    p = np.where(edge_maps >= 0, e / (1 + e), 1 / (1 + e))
    p = np.where(mask, p, 0.0)
    return np.maximum(p[0::2], p[1::2])
