"""Asymmetric multiway cut (AMWC) and multiway cut (MWC) on graphs.

Problem (2) of the paper: choose a class ``x(i)`` for every node and a clustering with
cut indicator ``y`` minimising ::

    sum_i node_costs[i, x(i)] + sum_e edge_costs[e] * y(e)

subject to: nodes of different classes are in different clusters, and nodes of the same
*non-partitionable* class joined by an edge are in the same cluster. Only classes with
``partitionable[k]`` may be split into several clusters (instances).

Sign convention, stated once: a node cost is paid for the class chosen (lower is more
likely); an edge cost is paid when the edge is cut, so a **positive edge cost is
attractive** (it prefers the endpoints together) and a negative one repulsive.

Duplicate edges (the same pair listed twice, in either orientation) are allowed: the
objective pays each copy that is cut, so their costs add up. The pre-clustering phase
judges each copy alone, though (a copy of +1 beside one of -3 may be contracted), so sum
them first for the best solutions (``np.unique`` of the sorted pairs); the graphs of
:mod:`copsctl.solver.grid` have none. Self-loops are rejected.

This module never imports torch.
"""

from __future__ import annotations

import math
import numbers
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Sequence

import numpy as np

from ..cpus import available_cpus
from ..errors import InputError
from .grid import (edge_values_to_maps, grid_edge_distance, grid_edge_mask, grid_edges,
                   maps_to_edge_values)

__all__ = [
    "AMWCResult", "SolverOptions", "option_rule", "solve_amwc", "solve_mwc", "solve_many",
    "objective", "check_feasible", "grid_edges", "grid_edge_mask", "grid_edge_distance",
    "maps_to_edge_values", "edge_values_to_maps",
]


@dataclass(frozen=True)
class SolverOptions:
    """Tuning of the greedy solver; the defaults are what the benchmark measured best
    (``python -m copsctl.benchmarks.solver``, docs/solver.md).

    precluster_threshold
        Only edges with cost above this value are contracted in the pre-clustering phase.
    precluster_max_size
        Upper bound on a superpixel's node count in that phase; 1 disables it, which gives
        plain greedy additive edge contraction (GAEC) on the input graph.
    precluster_max_thing_size
        The same bound for superpixels of a partitionable class (things), whose weak
        boundaries between touching instances of one class a superpixel must not cross.
    precluster_margin
        With a value >= 0, a local edge is contracted only when both endpoints prefer the
        same class and each by at least this much over its second-best class (a merge
        the contraction would make anyway). A negative value selects the earlier rule:
        any two superpixels whose merge lowers the objective.
    improve
        Run the local improvement phase after the contraction: moves of whole superpixels
        (if ``superpixel_moves``), then single-node moves to a neighbouring cluster or
        class, then moves of pieces (if ``piece_moves``) and of nodes again, then
        boundary moves (if ``boundary_moves``), segment moves (if ``segment_moves``),
        instance splits (if ``instance_splits``), swaps (if ``swap_moves``) and nodes
        again where they moved.
    max_improve_rounds
        Bound on the unit visits of each improvement pass, in multiples of the unit count.
    superpixel_moves
        Move whole superpixels before single nodes (only when pre-clustering is on).
    piece_moves
        After the node moves, move the pieces they cut the superpixels into (connected
        parts within one cluster), then single nodes again (only when pre-clustering is
        on and a node moved).
    boundary_moves
        Longest sequence of Kernighan-Lin moves across the boundary of two touching
        clusters, or from a cluster to a class that some of its nodes prefer where no
        cluster next to them has it, after the other moves (only when pre-clustering is
        on); a sequence also ends ``boundary_moves // 5`` moves after its best point
        and keeps its best prefix. Each boundary node whose move alone loses no more
        than its edge costs to its own side also starts a short sequence of its own
        once (at most 64 moves, ending 8 after its best point). 0 disables these
        moves.
    segment_moves
        Largest segment (a connected part of one cluster, along local edges) moved as a
        whole to a neighbouring cluster or another class, last (only when pre-clustering
        is on): an island or instance fragment whose nodes, one at a time, are held by
        the edges between them. A larger segment that is not its cluster's largest (a
        region joined to the rest of its cluster by long-range edges only) is tried
        too, towards the neighbouring clusters only. 0 disables these moves.
    instance_splits
        After the segment moves (only when pre-clustering is on), partition the
        instances of each partitionable class anew by plain GAEC on their own nodes (a
        multicut on the edges inside a group of touching instances of one class, or
        inside one instance that holds a repelling edge), where the new parts cut less
        than the instances do: two touching instances that the contraction joined early,
        which no move of nodes or segments separates, and boundaries between touching
        instances drawn across noisy edges. The smallest groups take part first, up to a
        quarter of all nodes, then single repelling instances of the groups left out
        (``stats``: ``split_candidates`` nodes in such groups, ``split_nodes`` taking
        part, ``split_moves`` relabelled, ``seconds_splits`` the phase's thread CPU
        time).
    swap_moves
        After the splits (only when pre-clustering is on): for every two clusters that
        touch along a local edge, the nodes of either within this many local edges of
        their common boundary choose between the two at once, by a minimum cut (an
        alpha-beta swap; repelling edges enter as a bound that is exact at the current
        labelling, so a swap never raises the objective). Many nodes move together
        where each alone loses: part of an instance that belongs to the region around
        it, a tongue of one region reaching into the next (``stats``: ``swap_moves``
        swaps taken, ``swap_nodes`` nodes moved, ``swap_band_nodes`` the bands' nodes
        summed over the pairs, at most about 8 N, ``seconds_swaps``). 0 disables them.
    """

    precluster_threshold: float = 0.0
    precluster_max_size: int = 128
    improve: bool = True
    max_improve_rounds: int = 4
    # added later: keyword-only in practice, after the original four
    precluster_max_thing_size: int = 8
    precluster_margin: float = 0.0
    superpixel_moves: bool = True
    piece_moves: bool = True
    boundary_moves: int = 200
    segment_moves: int = 256
    instance_splits: bool = True
    swap_moves: int = 3

    def __post_init__(self):
        for f in fields(self):
            rule = option_rule(f.name, getattr(self, f.name))
            if rule is not None:
                raise InputError(f"SolverOptions.{f.name} = {getattr(self, f.name)!r}: must {rule}")


_INT_MAX = 2 ** 31 - 1


def option_rule(name: str, value) -> str | None:
    """The rule that ``value`` breaks as :class:`SolverOptions` field ``name``, phrased to
    follow "must" (None: it keeps them). :mod:`copsctl.config` checks the recipe's
    ``solver`` keys with it too."""
    kind = type(SolverOptions.__dataclass_fields__[name].default)
    if kind is bool:
        return None if isinstance(value, (bool, np.bool_)) else "be true or false"
    if kind is int:
        if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
            return "be an integer"
        least = 1 if name in ("precluster_max_size", "precluster_max_thing_size") else 0
        if value < least:
            return f"be >= {least}"
        return None if value <= _INT_MAX else f"be <= {_INT_MAX} (the kernel's int)"
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        return "be a number"
    return None if not math.isnan(value) else "be a number, not NaN"


@dataclass
class AMWCResult:
    """A feasible AMWC solution.

    labels : (N,) int32 ndarray
        Class of every node.
    segments : (N,) int32 ndarray
        Panoptic segment of every node, numbered ``0 .. M-1`` in order of first
        appearance: the connected components of the uncut edges.
    edge_cut : (E,) uint8 ndarray
        1 where the edge joins two different segments.
    objective : float
        Value of (2) for this solution, recomputed from the inputs.
    stats : dict
        Solver bookkeeping: seconds per phase, cluster counts, objective before improvement.
    """

    labels: np.ndarray
    segments: np.ndarray
    edge_cut: np.ndarray
    objective: float
    stats: dict = field(default_factory=dict)

    @property
    def num_segments(self) -> int:
        return int(self.segments.max()) + 1 if self.segments.size else 0


def _finite_sum(arr: np.ndarray) -> bool:
    """Whether the sum of ``arr`` is finite: then every element is, which this proves
    without an element-wise temporary; a sum that overflows (elements near 1e308) does
    not, so callers fall back to the element-wise test."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(arr.sum()))


def _as_node_costs(node_costs) -> np.ndarray:
    arr = np.asarray(node_costs)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise InputError(f"`node_costs` must be a real-valued array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise InputError(f"`node_costs` (shape {arr.shape}) must have shape (N, K)")
    if arr.shape[0] == 0:
        raise InputError("`node_costs` must have at least one node (N >= 1): the graph is empty")
    if arr.shape[1] == 0:
        raise InputError("`node_costs` must have at least one class (K >= 1), got K = 0")
    # any memory layout: the kernel reads strided rows, so (K, N) network output needs no
    # copy; but it counts strides in whole doubles (a field of a structured array is not)
    arr = np.asarray(arr, dtype=np.float64)
    if any(s % arr.itemsize for s in arr.strides):
        arr = np.ascontiguousarray(arr)
    if not _finite_sum(arr) and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise InputError(f"`node_costs` must be finite, found {arr[tuple(bad)]} at "
                         f"{tuple(int(b) for b in bad)}")
    return arr


def _as_edges(edges, num_nodes: int) -> np.ndarray:
    arr = np.asarray(edges)
    if arr.size == 0:  # no edges, of any dtype ([] is float64 to numpy)
        arr = np.zeros((0, 2), dtype=np.int32)
    if arr.dtype.kind not in "iu":
        raise InputError(f"`edges` must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"`edges` (shape {arr.shape}) must have shape (E, 2)")
    if arr.shape[0]:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_nodes:
            raise InputError(f"`edges` must index nodes in [0, {num_nodes}), "
                             f"got range [{lo}, {hi}]")
        loops = np.flatnonzero(arr[:, 0] == arr[:, 1])
        if loops.size:
            raise InputError(f"`edges` must not contain self-loops, edge {int(loops[0])} is "
                             f"({int(arr[loops[0], 0])}, {int(arr[loops[0], 1])})")
    if num_nodes >= 2**31:
        raise InputError(f"`node_costs` has {num_nodes} nodes; at most 2**31 - 1 are supported")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _as_edge_costs(edge_costs, num_edges: int) -> np.ndarray:
    arr = np.asarray(edge_costs)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise InputError(f"`edge_costs` must be a real-valued array, got dtype {arr.dtype}")
    if arr.shape != (num_edges,):
        raise InputError(f"`edge_costs` (shape {arr.shape}) must have shape ({num_edges},), "
                         "one cost per edge")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not _finite_sum(arr) and not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise InputError(f"`edge_costs` must be finite, found {arr[bad]} at edge {bad}")
    return arr


def _as_partitionable(partitionable, num_classes: int) -> np.ndarray:
    arr = np.asarray(partitionable)
    if arr.dtype != np.bool_:
        raise InputError(f"`partitionable` must be a bool array, got dtype {arr.dtype}")
    if arr.shape != (num_classes,):
        raise InputError(f"`partitionable` (shape {arr.shape}) must have shape ({num_classes},), "
                         "one flag per class")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _as_local_edges(local_edges, num_edges: int) -> np.ndarray:
    if local_edges is None:
        return np.ones(num_edges, dtype=np.uint8)
    arr = np.asarray(local_edges)
    if arr.dtype != np.bool_:
        raise InputError(f"`local_edges` must be a bool array, got dtype {arr.dtype}")
    if arr.shape != (num_edges,):
        raise InputError(f"`local_edges` (shape {arr.shape}) must have shape ({num_edges},), "
                         "one flag per edge")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _as_options(options) -> SolverOptions:
    if options is None:
        return SolverOptions()
    if not isinstance(options, SolverOptions):
        raise InputError(f"`options` must be a SolverOptions (SolverOptions(**fields)), got "
                         f"{type(options).__name__}")
    return options


def _describe(p) -> str:
    return f"{len(p)} items" if isinstance(p, (tuple, list)) else f"a {type(p).__name__}"


def _validate(node_costs, edges, edge_costs, partitionable, local_edges=None):
    nc = _as_node_costs(node_costs)
    ed = _as_edges(edges, nc.shape[0])
    ec = _as_edge_costs(edge_costs, ed.shape[0])
    pa = _as_partitionable(partitionable, nc.shape[1])
    lo = _as_local_edges(local_edges, ed.shape[0])
    return nc, ed, ec, pa, lo


def objective(node_costs, edges, edge_costs, labels, edge_cut) -> float:
    """Value of (2): node costs of the chosen classes plus the costs of the cut edges
    (+-inf, without a warning, where finite costs add up beyond float64)."""
    nc = np.asarray(node_costs, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.shape != (nc.shape[0],):
        raise InputError(f"`labels` (shape {labels.shape}) must have shape ({nc.shape[0]},)")
    ec = np.asarray(edge_costs, dtype=np.float64)
    cut = np.asarray(edge_cut).astype(bool)
    if cut.shape != ec.shape:
        raise InputError(f"`edge_cut` (shape {cut.shape}) must have the shape of `edge_costs` "
                         f"{ec.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        node_term = float(nc[np.arange(nc.shape[0]), labels.astype(np.int64)].sum())
        return node_term + float(ec[cut].sum())


def check_feasible(edges, partitionable, labels, segments, edge_cut=None) -> None:
    """Raise :class:`ValueError` naming the first violated constraint of (2), else return.

    Checks that ``edge_cut`` (if given) marks exactly the edges between different
    segments, that every segment has one class, that non-partitionable classes have no
    internal cuts, and that every segment is connected through uncut edges.
    """
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    labels = np.asarray(labels, dtype=np.int64)
    segments = np.asarray(segments, dtype=np.int64)
    part = np.asarray(partitionable, dtype=bool)
    if labels.shape != segments.shape or labels.ndim != 1:
        raise InputError("`labels` and `segments` must be 1-D arrays of the same length")
    u, v = edges[:, 0], edges[:, 1]
    seg_cut = segments[u] != segments[v]
    if edge_cut is not None:
        cut = np.asarray(edge_cut).astype(bool)
        bad = np.flatnonzero(cut != seg_cut)
        if bad.size:
            where = "in different" if seg_cut[bad[0]] else "in the same"
            raise InputError(f"edge {int(bad[0])} has edge_cut={int(cut[bad[0]])} but its "
                             f"endpoints are {where} segments")
    nseg = int(segments.max()) + 1 if segments.size else 0
    first = np.full(nseg, -1, dtype=np.int64)
    first[segments[::-1]] = labels[::-1]
    bad = np.flatnonzero(first[segments] != labels)
    if bad.size:
        raise InputError(f"segment {int(segments[bad[0]])} holds more than one class "
                         f"(node {int(bad[0])} has class {int(labels[bad[0]])})")
    same = labels[u] == labels[v]
    bad = np.flatnonzero(same & seg_cut & ~part[labels[u]])
    if bad.size:
        e = int(bad[0])
        raise InputError(f"edge {e} is cut inside non-partitionable class {int(labels[u[e]])}")
    # every segment connected through uncut edges
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    keep = ~seg_cut
    n = labels.shape[0]
    graph = coo_matrix((np.ones(int(keep.sum())), (u[keep], v[keep])), shape=(n, n))
    ncomp, comp = connected_components(graph, directed=False)
    if ncomp != nseg:
        raise InputError(f"segments must be connected: {nseg} segment ids but {ncomp} connected "
                         "components of uncut edges")


def _kernel():
    try:
        from copsctl_ext import _amwc
    except ImportError as exc:  # pragma: no cover - only when the build is broken
        raise ImportError("copsctl's compiled solver (copsctl_ext._amwc) is missing; reinstall "
                          "with `pip install -e .`") from exc
    return _amwc


def _solve_validated(nc, ed, ec, pa, lo, options: SolverOptions) -> AMWCResult:
    kernel = _kernel()
    n = nc.shape[0]
    labels = np.empty(n, dtype=np.int32)
    segments = np.empty(n, dtype=np.int32)
    edge_cut = np.empty(ed.shape[0], dtype=np.uint8)
    stats = kernel.solve(nc, ed, ec, pa, lo, float(options.precluster_threshold),
                         int(options.precluster_max_size),
                         int(options.precluster_max_thing_size), float(options.precluster_margin),
                         bool(options.improve),
                         int(options.max_improve_rounds), bool(options.superpixel_moves),
                         bool(options.piece_moves), int(options.boundary_moves),
                         int(options.segment_moves), bool(options.instance_splits),
                         int(options.swap_moves),
                         labels, segments, edge_cut)
    obj = objective(nc, ed, ec, labels, edge_cut)
    if not np.isfinite(obj):
        # finite costs whose sums overflow: the kernel's cluster sums did too, so its
        # labels mean nothing
        raise InputError(f"`node_costs` and `edge_costs` (largest magnitude "
                         f"{max(np.abs(nc).max(), np.abs(ec).max(initial=0.0)):.3g}) must be small "
                         "enough that sums of them stay finite: the objective overflows "
                         "float64; scale the costs down")
    return AMWCResult(labels=labels, segments=segments, edge_cut=edge_cut, objective=obj,
                      stats=stats)


def solve_amwc(node_costs, edges, edge_costs, partitionable, local_edges=None,
               options: SolverOptions | None = None) -> AMWCResult:
    """Solve the asymmetric multiway cut (2) greedily.

    Parameters
    ----------
    node_costs : (N, K) float ndarray
        Cost of giving node ``i`` class ``k``.
    edges : (E, 2) int ndarray
        Node pairs; duplicates add up (sum them first: module docstring), self-loops
        rejected.
    edge_costs : (E,) float ndarray
        Cost paid when the edge is cut (positive = attractive).
    partitionable : (K,) bool ndarray
        Classes that may hold several segments (things).
    local_edges : (E,) bool ndarray, optional
        Edges eligible for the pre-clustering phase (default: all). On pixel grids with
        long-range edges pass the short ones (``grid_edge_distance(...) == 1``): superpixels
        should be compact, and long edges are better judged by the contraction phase, where
        they are summed per cluster pair. On graphs that are not grids (no notion of a
        short edge) pass all false: nothing is pre-clustered and the contraction runs on
        the nodes, as plain GAEC; superpixels grown along arbitrary edges are not compact,
        and on random graphs the default is then several times slower than plain GAEC
        with local search (the boundary moves and swaps along every edge; on the two
        random graphs measured, not behind it).
    options : SolverOptions, optional

    Returns
    -------
    AMWCResult
        A feasible solution; ``objective`` is recomputed from the inputs.

    Examples
    --------
    >>> import numpy as np
    >>> node_costs = np.array([[0., 1.], [0., 1.], [1., 0.]])
    >>> edges = np.array([[0, 1], [1, 2]])
    >>> r = solve_amwc(node_costs, edges, np.array([2., -1.]), np.array([False, True]))
    >>> r.labels.tolist(), r.segments.tolist(), r.objective
    ([0, 0, 1], [0, 0, 1], -1.0)
    """
    valid = _validate(node_costs, edges, edge_costs, partitionable, local_edges)
    return _solve_validated(*valid, _as_options(options))


def solve_mwc(node_costs, edges, edge_costs, local_edges=None,
              options: SolverOptions | None = None) -> AMWCResult:
    """Solve the multiway cut: :func:`solve_amwc` with no partitionable class.

    Every class then forms one segment per connected region; the fine-tuning backward pass
    calls this with one label per panoptic segment (K of about 50-150).
    """
    nc = _as_node_costs(node_costs)
    return solve_amwc(nc, edges, edge_costs, np.zeros(nc.shape[1], dtype=bool), local_edges,
                      options)


def solve_many(problems: Sequence, workers: int | None = None,
               options: SolverOptions | None = None) -> list[AMWCResult]:
    """Solve many problems concurrently in threads (the compiled kernel releases the GIL).

    ``problems`` holds tuples ``(node_costs, edges, edge_costs, partitionable)``, optionally
    with ``local_edges`` as a fifth item; the results come back in the same order.
    ``workers`` defaults to the number of CPUs this process may use.
    """
    opts = _as_options(options)
    validated = []
    for i, p in enumerate(problems):
        if not isinstance(p, (tuple, list)) or len(p) not in (4, 5):
            raise InputError(f"`problems[{i}]` must be (node_costs, edges, edge_costs, "
                             f"partitionable[, local_edges]), got {_describe(p)}")
        try:
            validated.append(_validate(*p))
        except InputError as exc:
            raise InputError(f"`problems[{i}]`: {exc}") from None
    if workers is None:
        workers = available_cpus()
    workers = max(1, min(int(workers), len(validated) or 1))
    if workers == 1:
        return [_solve_validated(*v, opts) for v in validated]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda v: _solve_validated(*v, opts), validated))
