"""The pixel grid graph and the one layout of per-distance affinity maps.

Layout (used by the network's affinity head, the cost cache and the solver alike):
for distances ``(d_1, ..., d_m)`` the affinity maps are one array of shape
``(2 m, H, W)``. Channel ``2 i`` holds the horizontal edge from pixel ``(y, x)`` to
``(y, x + d_i)``; channel ``2 i + 1`` the vertical edge from ``(y, x)`` to
``(y + d_i, x)``. Positions whose partner pixel falls outside the image carry no edge
and are ignored (they read back as ``fill``). Nodes are numbered row-major,
``node = y * W + x``. The edge list enumerates the valid positions channel by channel,
each in row-major order, which is the order of ``maps[grid_edge_mask(...)]``.

Costs follow the solver's sign convention: an edge cost is paid when the edge is cut,
so a positive cost is attractive.
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple, Sequence

import numpy as np

from ..errors import InputError


def _whole(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v).is_integer()


def _check_size(height, width) -> tuple[int, int]:
    if not (_whole(height) and _whole(width)) or height < 1 or width < 1:
        raise InputError(f"grid size must be positive integers, got {height}x{width}")
    return int(height), int(width)


def _check_distances(distances: Sequence[int]) -> tuple[int, ...]:
    if not all(_whole(d) for d in distances):
        raise InputError(f"`distances` must be distinct positive integers, got {list(distances)}")
    ds = tuple(int(d) for d in distances)
    if not ds:
        raise InputError("`distances` must name at least one distance")
    if any(d < 1 for d in ds) or len(set(ds)) != len(ds):
        raise InputError(f"`distances` must be distinct positive integers, got {list(ds)}")
    return ds


def grid_edge_mask(height: int, width: int, distances: Sequence[int]) -> np.ndarray:
    """(2 m, H, W) bool ndarray: True where the layout has an edge."""
    ds = _check_distances(distances)
    if height < 1 or width < 1:
        raise InputError(f"grid size must be positive, got {height}x{width}")
    mask = np.zeros((2 * len(ds), height, width), dtype=bool)
    for i, d in enumerate(ds):
        mask[2 * i, :, : max(width - d, 0)] = True
        mask[2 * i + 1, : max(height - d, 0), :] = True
    return mask


def grid_edges(height: int, width: int, distances: Sequence[int]) -> np.ndarray:
    """(E, 2) int64 ndarray of node pairs in the layout's edge order."""
    ds = _check_distances(distances)
    parts = []
    for d in ds:
        ys, xs = np.mgrid[0:height, 0 : max(width - d, 0)]
        src = (ys * width + xs).ravel()
        parts.append(np.stack([src, src + d], axis=1))
        ys, xs = np.mgrid[0 : max(height - d, 0), 0:width]
        src = (ys * width + xs).ravel()
        parts.append(np.stack([src, src + d * width], axis=1))
    return np.concatenate(parts).astype(np.int64, copy=False)


def grid_edge_distance(height: int, width: int, distances: Sequence[int]) -> np.ndarray:
    """(E,) int64 ndarray: the distance of each edge of :func:`grid_edges`."""
    mask = grid_edge_mask(height, width, distances)
    ds = np.repeat(np.asarray(_check_distances(distances), dtype=np.int64), 2)
    return np.repeat(ds, mask.reshape(len(ds), -1).sum(axis=1))


def maps_to_edge_values(maps: np.ndarray, distances: Sequence[int]) -> np.ndarray:
    """(2 m, H, W) affinity maps -> (E,) values in the layout's edge order."""
    maps = np.asarray(maps)
    ds = _check_distances(distances)
    if maps.ndim != 3 or maps.shape[0] != 2 * len(ds):
        raise InputError(f"`maps` (shape {maps.shape}) must have shape (2 * {len(ds)}, H, W) "
                         f"for distances {list(ds)}")
    return maps[grid_edge_mask(maps.shape[1], maps.shape[2], ds)]


def edge_values_to_maps(values: np.ndarray, height: int, width: int, distances: Sequence[int],
                        fill=0) -> np.ndarray:
    """(E,) values in the layout's edge order -> (2 m, H, W) maps; ``fill`` where no edge is."""
    values = np.asarray(values)
    mask = grid_edge_mask(height, width, distances)
    n = int(mask.sum())
    if values.shape != (n,):
        raise InputError(f"`values` (shape {values.shape}) must have shape ({n},) for a "
                         f"{height}x{width} grid with distances {list(distances)}")
    out = np.full(mask.shape, fill, dtype=values.dtype)
    out[mask] = values
    return out


class GridGraph(NamedTuple):
    """The edges of a grid and the short edges the solver may pre-cluster on.

    edges : (E, 2) int32 ndarray, read-only, as :func:`grid_edges` (the solver's index
        type, so that solving does not convert them).
    local_edges : (E,) bool ndarray, read-only: edges of the smallest distance.
    edge_mask : (2 m, H, W) bool ndarray, read-only: :func:`grid_edge_mask`, where the
        maps hold an edge.

    The one grid adapter: cost files, validation, ``solve`` and the fine-tuning layer all
    build their solver problems from it.
    """

    edges: np.ndarray
    local_edges: np.ndarray
    edge_mask: np.ndarray


@functools.lru_cache(maxsize=8)
def _grid_graph(height: int, width: int, distances: tuple[int, ...]) -> GridGraph:
    edges = np.ascontiguousarray(grid_edges(height, width, distances), dtype=np.int32)
    local = grid_edge_distance(height, width, distances) == min(distances)
    mask = grid_edge_mask(height, width, distances)
    for a in (edges, local, mask):
        a.flags.writeable = False  # shared between calls
    return GridGraph(edges, local, mask)


def grid_graph(height: int, width: int, distances: Sequence[int]) -> GridGraph:
    """Cached :class:`GridGraph` of an ``height`` x ``width`` grid (shared, read-only arrays).

    The local edges are what :func:`copsctl.solver.solve_amwc` should receive as
    ``local_edges`` on grids: superpixels grown along short edges stay compact.
    """
    return _grid_graph(*_check_size(height, width), _check_distances(distances))
