"""The AMWC layer: the solver in the forward pass, perturbed lifted multiway cuts backward.

Section 3.3 of the paper. Forward: the node costs ``c_V`` (B, K, h, w) and edge costs
``c_E`` (B, 2m, h, w, grid layout of :mod:`copsctl.solver.grid`) of a batch go to the
CPU and every image's asymmetric multiway cut is solved concurrently
(:func:`copsctl.solver.solve_many`, threads; the kernel releases the GIL). The result is
the panoptic labeling ``z``: one segment per thing instance and one per stuff class
(the COCO panoptic convention, as in :mod:`copsctl.panoptic.postprocess`), returned as one-hot
masks of the *lifted label set* (below), ready for the PQ surrogate.

Backward, Algorithm 1 with the robust average (4). Write ``x`` for the one-hot classes
(N, K) and ``y`` for the edge-cut indicators (E,) of the forward solution, ``m(l)`` for
the class of lifted label ``l`` and ``g_l = ∂L/∂z(l)`` (N,) for the loss gradient with
respect to label ``l``'s mask. For each of ``n`` values ``λ_i`` drawn uniformly from
``[λ_min, λ_max]``:

1. lifted, perturbed node costs ``c'_V(v, l) = c_V(v, m(l)) + λ_i g_l(v)``;
2. ``(z_p, y_p) = MWC(c'_V, c_E)`` with the **unperturbed** edge costs;
3. ``x_p(v) = m(z_p(v))``;
4. ``∂L/∂c_V += (x_p - x) / λ_i`` and ``∂L/∂c_E += (y_p - y) / λ_i``;

then both are divided by ``n``. All ``B × n`` multiway cuts of a batch are solved by one
:func:`~copsctl.solver.solve_many` call.

Sign convention, checked against finite differences in ``tests/test_amwc_layer.py``: the
solver *minimises* ``<c, (x, y)>`` (node costs paid for the class chosen, edge costs paid
when cut). With ``W(c) = argmin_s <c, s>`` the perturbation is ``c + λ ∂L/∂z`` and (3)
reads ``(W(c + λ ∂L/∂z) - W(c)) / λ``: it is the exact gradient of the piecewise-linear
interpolation ``(OPT(c + λ ∂L/∂z) - OPT(c)) / λ`` of a loss that is linear in ``z``,
``OPT`` being the optimal objective. A gradient step lowers the costs of what the
perturbed solution chose instead, as it should.

**The lifted label set** (built in :func:`lift_labels`). The AMWC has one node cost per
*class*, the loss has one gradient per *panoptic segment*; the backward pass therefore
solves a multiway cut (no partitionable class) whose labels are panoptic segments. Per
class, the predicted segments are matched to the ground-truth segments by the
surrogate's matching (:func:`copsctl.train.surrogate.match_segments`: max-weight
bipartite matching on IoU, overlapping pairs only unless the layer's ``matching`` is
``"all"``). The labels of an image are, in this order:

* one per **predicted segment** (``S`` labels), class = its class, ``g_l`` = the
  surrogate's gradient with respect to its mask;
* one per **unmatched ground-truth segment** (``U`` labels; its mask in the prediction
  is empty), class = the segment's class, ``g_l`` = the surrogate's gradient with
  respect to an empty prediction matched to it (``gt_slots`` of
  :func:`~copsctl.train.surrogate.pq_surrogate`);
* one per **class that has neither** a predicted segment nor an unmatched ground-truth
  segment (``F`` labels), ``g_l = 0``, so that every class stays available.

Ground-truth segments of zero weighted area (void or crowd only) get no label. With
``λ = 0`` the forward solution, one label per predicted segment, is feasible for the
lifted problem and has the same objective, so ``W`` of the lifted problem at ``λ = 0``
reproduces ``(x, y)`` whenever the solver is exact.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..panoptic.postprocess import segment_classes
from ..solver import SolverOptions, solve_many
from ..solver.grid import edge_values_to_maps, grid_graph
from .surrogate import MATCHINGS, Matching, SurrogateResult, match_segments, pq_surrogate

if TYPE_CHECKING:
    from ..config import Recipe

__all__ = ["GroundTruth", "ImageSolution", "LiftedLabels", "BackwardProblem", "AMWCBatch",
           "AMWCLayer", "ground_truth_from_batch", "panoptic_segments", "lift_labels",
           "solver_inputs", "backward_problems", "algorithm1", "lifted_pq_surrogate",
           "normalize_cost_scale"]


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class GroundTruth:
    """One image's ground truth at cost resolution ``(h, w)``.

    Attributes
    ----------
    masks : (G, h, w) bool ndarray
        Non-crowd ground-truth segments.
    classes : (G,) int64 ndarray
        Their contiguous class indices.
    weights : (h, w) float32 ndarray
        0 on void and crowd pixels, 1 elsewhere (the surrogate's pixel weights).
    """

    masks: np.ndarray
    classes: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_panoptic(cls, panoptic: np.ndarray, segment_ids: np.ndarray,
                      segment_classes: np.ndarray, segment_iscrowd: np.ndarray) -> "GroundTruth":
        """From an id map at cost resolution (0 = void) and its segment table.

        Parameters
        ----------
        panoptic : (h, w) int ndarray
        segment_ids, segment_classes : (S,) int ndarray
        segment_iscrowd : (S,) bool ndarray
        """
        pan = np.asarray(panoptic)
        if pan.ndim != 2:
            raise InputError(f"`panoptic` (shape {pan.shape}) must have shape (h, w)")
        ids = np.asarray(segment_ids, np.int64).reshape(-1)
        classes = np.asarray(segment_classes, np.int64).reshape(-1)
        crowd = np.asarray(segment_iscrowd, bool).reshape(-1)
        if not (ids.shape == classes.shape == crowd.shape):
            raise InputError("`segment_ids`, `segment_classes` and `segment_iscrowd` must have "
                             f"one entry per segment, got lengths {ids.size}, {classes.size}, "
                             f"{crowd.size}")
        keep = ~crowd & (ids != 0)
        masks = pan[None] == ids[keep][:, None, None]
        weights = (pan != 0) & ~np.isin(pan, ids[crowd])
        return cls(masks, classes[keep], weights.astype(np.float32))


def ground_truth_from_batch(batch: dict) -> list[GroundTruth]:
    """The :class:`GroundTruth` of every image of a :func:`copsctl.data.loader.collate_panoptic` batch."""
    pan = batch["panoptic"].cpu().numpy()
    out = []
    for b, seg in enumerate(batch["segments"]):
        out.append(GroundTruth.from_panoptic(pan[b], seg["ids"].numpy(), seg["classes"].numpy(),
                                             seg["iscrowd"].numpy()))
    return out


# ----------------------------------------------------------------------------- per image


@dataclass
class ImageSolution:
    """The forward AMWC solution of one image, as panoptic segments.

    Attributes
    ----------
    labels : (N,) int64 ndarray
        Class of every node (``x``), ``N = h w`` row-major.
    segments : (N,) int64 ndarray
        Panoptic segment of every node, ``0 .. S-1``: thing instances, then one segment
        per stuff class present (see :func:`panoptic_segments`).
    segment_classes : (S,) int64 ndarray
    edge_cut : (E,) uint8 ndarray
        ``y``: 1 where the edge joins two segments (grid layout edge order).
    objective : float
    """

    labels: np.ndarray
    segments: np.ndarray
    segment_classes: np.ndarray
    edge_cut: np.ndarray
    objective: float

    @property
    def num_segments(self) -> int:
        return int(self.segment_classes.shape[0])


def panoptic_segments(labels: np.ndarray, segments: np.ndarray, partitionable: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Solver segments -> panoptic segments: every stuff class becomes one segment.

    Parameters
    ----------
    labels, segments : (N,) int ndarray
        ``AMWCResult.labels`` and ``AMWCResult.segments``.
    partitionable : (K,) bool ndarray

    Returns
    -------
    segment : (N,) int64 ndarray
        Panoptic segment per node, numbered thing segments first (in solver order),
        then stuff classes by class index.
    segment_class : (S,) int64 ndarray
    """
    segments = np.asarray(segments, np.int64)
    cls0 = segment_classes(labels, segments)
    s0 = cls0.shape[0]
    part = np.asarray(partitionable, bool)
    # Stuff segments of one class share the key s0 + class, so np.unique merges them.
    key = np.where(part[cls0], np.arange(s0), s0 + cls0)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return inverse[segments].astype(np.int64), cls0[first]


@dataclass
class LiftedLabels:
    """The lifted label set of one image (module docstring), labels ``0 .. J-1``.

    Attributes
    ----------
    label_class : (J,) int64 ndarray
        ``m(l)``: the class of every label.
    num_pred : int
        ``S``: labels ``0 .. S-1`` are the predicted segments.
    unmatched_gt : (U,) int64 ndarray
        Ground-truth segments (indices into :class:`GroundTruth`) of labels ``S .. S+U-1``.
    free_classes : (F,) int64 ndarray
        Classes with neither a prediction nor an unmatched ground truth: labels ``S+U .. J-1``.
    matching : Matching
        The surrogate's matching between predicted and ground-truth segments.
    """

    label_class: np.ndarray
    num_pred: int
    unmatched_gt: np.ndarray
    free_classes: np.ndarray
    matching: Matching

    @property
    def num_labels(self) -> int:
        return int(self.label_class.shape[0])


def lift_labels(solution: ImageSolution, ground_truth: GroundTruth, num_classes: int,
                shape: tuple[int, int], matching: str = "overlapping") -> LiftedLabels:
    """Build the lifted label set of one image (see the module docstring).

    Parameters
    ----------
    solution : ImageSolution
    ground_truth : GroundTruth
    num_classes : int
        K.
    shape : (h, w)
        The cost grid.
    matching : {"overlapping", "all"}
        Which pairs of the assignment count as matched
        (:func:`~copsctl.train.surrogate.match_segments`); a ground-truth segment
        matched to a prediction it does not overlap gets no label of its own.
    """
    found = match_segments(solution.segments.reshape(shape), solution.segment_classes,
                           ground_truth.masks, ground_truth.classes, ground_truth.weights,
                           matching)
    unmatched = np.asarray(found.unmatched_gt, np.int64)
    covered = np.zeros(num_classes, bool)
    covered[solution.segment_classes] = True
    covered[ground_truth.classes[unmatched]] = True
    free = np.flatnonzero(~covered).astype(np.int64)
    label_class = np.concatenate([solution.segment_classes, ground_truth.classes[unmatched], free])
    return LiftedLabels(label_class.astype(np.int64), solution.num_segments, unmatched, free,
                        found)


# ----------------------------------------------------------------------------- Algorithm 1


@dataclass
class BackwardProblem:
    """What Algorithm 1 needs for one image.

    Attributes
    ----------
    node_costs : (N, K) float64 ndarray
        ``c_V`` (any memory layout).
    edges : (E, 2) int32 ndarray
    edge_costs : (E,) float64 ndarray
        ``c_E``, left unperturbed.
    labels : (N,) int ndarray
        ``x``: the forward solution's class per node.
    edge_cut : (E,) uint8 ndarray
        ``y``: the forward solution's cut edges.
    label_class : (J,) int ndarray
        ``m``: class of each lifted label.
    label_grads : (J, N) float ndarray
        ``∂L/∂z(l)`` for every lifted label.
    local_edges : (E,) bool ndarray, optional
        Edges eligible for the solver's pre-clustering (``solve_amwc``).
    """

    node_costs: np.ndarray
    edges: np.ndarray
    edge_costs: np.ndarray
    labels: np.ndarray
    edge_cut: np.ndarray
    label_class: np.ndarray
    label_grads: np.ndarray
    local_edges: np.ndarray | None = None


def solver_inputs(node_costs: torch.Tensor, edge_costs: torch.Tensor, distances: Sequence[int]):
    """The layer's cost maps as the solver's arrays, for a batch.

    Returns
    -------
    edges : (E, 2) int32 ndarray
        The grid's edges (:mod:`copsctl.solver.grid`), shared by all images.
    local : (E,) bool ndarray
        The edges of the smallest distance (pre-clustering), as ``solve`` has them.
    nc : (B, K, N) float64 ndarray
        Node costs, class-major.
    ec : list of B (E,) float64 ndarrays
        Edge costs of the grid's edges.
    """
    B, K, h, w = node_costs.shape
    edges, local, mask = grid_graph(h, w, distances)
    nc = node_costs.detach().to("cpu", torch.float64).numpy().reshape(B, K, h * w)
    ec_maps = edge_costs.detach().to("cpu", torch.float64).numpy()
    ec = [np.ascontiguousarray(ec_maps[b][mask]) for b in range(B)]
    return edges, local, nc, ec


def backward_problems(solutions: Sequence["ImageSolution"], lifted: Sequence["LiftedLabels"],
                      label_grads: np.ndarray, nc: np.ndarray, edges: np.ndarray,
                      ec: Sequence[np.ndarray], local: np.ndarray | None
                      ) -> list[BackwardProblem]:
    """One :class:`BackwardProblem` per image from the forward solutions, their lifted
    label sets and ``∂L/∂z`` of the labels (``label_grads``, (B, >= J, N)); ``nc``,
    ``edges``, ``ec``, ``local`` as :func:`solver_inputs` returns them."""
    problems = []
    for b, (sol, lab) in enumerate(zip(solutions, lifted)):
        g = np.array(label_grads[b, :lab.num_labels], np.float64)
        # Labels of classes with neither prediction nor unmatched gt carry no gradient.
        g[lab.num_pred + lab.unmatched_gt.shape[0]:] = 0.0
        problems.append(BackwardProblem(nc[b].T, edges, ec[b], sol.labels, sol.edge_cut,
                                        lab.label_class, g, local))
    return problems


REFERENCES = ("forward", "lifted")


def _check_backward(reference: str, two_sided: bool) -> None:
    """The rules of the backward pass's settings, for :func:`algorithm1` and the layer."""
    if reference not in REFERENCES:
        raise InputError(f"`reference` must be one of {REFERENCES}, got {reference!r}")
    if two_sided and reference != "forward":
        raise InputError("`two_sided` compares the two perturbed solutions with each other: "
                         "it takes no `reference`")


def algorithm1(problems: Sequence[BackwardProblem], lambdas: np.ndarray, *,
               workers: int | None = None, options: SolverOptions | None = None,
               reference: str = "forward", two_sided: bool = False
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """Algorithm 1 with the robust average (4), for a batch, all solves concurrent.

    Parameters
    ----------
    problems : sequence of B BackwardProblem
    lambdas : (B, n) float ndarray
        The interpolation ranges ``λ_i`` of every image (positive).
    workers : int, optional
        Solver threads (default: all cores).
    options : SolverOptions, optional
    reference : {"forward", "lifted"}
        What the perturbed solutions are compared with. ``"forward"`` is Algorithm 1 as
        printed: ``x, y`` of the forward AMWC. ``"lifted"`` solves the lifted problem
        once more *unperturbed* (``λ = 0``) and uses its solution ``x_0, y_0``: the
        finite difference (3) of one and the same solver. With a heuristic solver the
        lifted MWC, which has more labels and takes another path than the forward AMWC,
        can return other classes than ``x`` even for ``λ → 0``; with ``"forward"`` such
        differences, which have nothing to do with the loss, enter the gradient with
        weight ``1 / λ`` and dominate it for small ``λ``. One more solve per image.
    two_sided : bool
        Solve every draw twice, perturbed by ``+λ ∂L/∂z`` and by ``-λ ∂L/∂z``, and
        return the central difference ``(s_+ - s_-) / (2 λ)`` instead of
        ``(s_+ - s) / λ`` (``reference`` is then not used). The one-sided difference
        always has a non-negative inner product with the costs (``s`` minimises
        ``<c, .>``, so ``<c, s_+ - s> >= 0``): descending along it shrinks the costs,
        whatever the loss asks. The central difference has no such sign. Twice the
        solves. (At λ up to 5 000 the ``-λ`` side changes far more than the ``+λ``
        side and fine-tuning drifted faster: docs/finetuning.md.)

    Returns
    -------
    grads : list of B pairs
        ``(∂L/∂c_V (N, K) float64, ∂L/∂c_E (E,) float64)``, averaged over the ``n``
        perturbations. An image whose label gradients are all zero gets exact zeros
        without solving (the perturbed problem is then the unperturbed one).
    stats : dict
        ``solves`` (number of multiway cuts solved), ``changed_nodes`` (mean fraction
        of nodes whose class the perturbation changed), ``reference_changed`` (with
        ``"lifted"``: mean fraction of nodes where the unperturbed lifted solution's
        class differs from the forward solution's, else 0), ``seconds``.
    """
    lambdas = np.asarray(lambdas, np.float64)
    if lambdas.ndim != 2 or lambdas.shape[0] != len(problems):
        raise InputError(f"`lambdas` (shape {lambdas.shape}) must have shape ({len(problems)}, n)")
    if lambdas.size and not (lambdas > 0).all():
        raise InputError("`lambdas` must be positive")
    _check_backward(reference, two_sided)
    t0 = time.perf_counter()
    jobs, owners = [], []
    for b, p in enumerate(problems):
        g = np.asarray(p.label_grads, np.float64)
        lc = np.asarray(p.label_class, np.int64)
        N, K = p.node_costs.shape
        if g.shape != (lc.shape[0], N):
            raise InputError(f"`problems[{b}].label_grads` (shape {g.shape}) must have shape "
                             f"({lc.shape[0]}, {N})")
        if not np.any(g):
            continue
        # (J, N) rows: the class costs of each label, then the perturbation per draw.
        base = np.ascontiguousarray(np.asarray(p.node_costs, np.float64).T[lc])
        draws = list(lambdas[b]) + ([0.0] if reference == "lifted" else [])
        if two_sided:
            draws = [sign * lam for lam in lambdas[b] for sign in (1.0, -1.0)]
        for lam in draws:
            lifted = base + lam * g if lam else base
            problem = (lifted.T, p.edges, p.edge_costs, np.zeros(lc.shape[0], bool))
            jobs.append(problem + ((p.local_edges,) if p.local_edges is not None else ()))
            owners.append((b, float(lam)))
    results = solve_many(jobs, workers=workers, options=options) if jobs else []

    # The reference (x, y) of every image: the forward solution or the lifted one at λ = 0.
    refs = {b: (np.asarray(p.labels, np.int64), np.asarray(p.edge_cut, np.float64))
            for b, p in enumerate(problems)}
    ref_changed = []
    for (b, lam), res in zip(owners, results):
        if lam == 0.0:
            x0 = np.asarray(problems[b].label_class, np.int64)[res.labels]
            ref_changed.append(float(np.mean(x0 != refs[b][0])))
            refs[b] = (x0, res.edge_cut.astype(np.float64))

    grads = []
    for p in problems:
        N, K = p.node_costs.shape
        grads.append((np.zeros((N, K)), np.zeros(p.edge_cut.shape[0])))
    changed = []
    n = lambdas.shape[1]
    for (b, lam), res in zip(owners, results):
        if lam == 0.0:
            continue
        x_p = np.asarray(problems[b].label_class, np.int64)[res.labels]
        node_grad, edge_grad = grads[b]
        rows = np.arange(x_p.shape[0])
        if two_sided:
            # Each solve enters once with its sign: Σ (s_+ - s_-) / (2 λ n).
            np.add.at(node_grad, (rows, x_p), 1.0 / (2 * lam * n))
            edge_grad += res.edge_cut.astype(np.float64) / (2 * lam * n)
            changed.append(float(np.mean(x_p != refs[b][0])))
            continue
        x, y = refs[b]
        np.add.at(node_grad, (rows, x_p), 1.0 / (lam * n))
        np.add.at(node_grad, (rows, x), -1.0 / (lam * n))
        edge_grad += (res.edge_cut.astype(np.float64) - y) / (lam * n)
        changed.append(float(np.mean(x_p != x)))
    stats = {"solves": len(jobs), "changed_nodes": float(np.mean(changed)) if changed else 0.0,
             "reference_changed": float(np.mean(ref_changed)) if ref_changed else 0.0,
             "seconds": time.perf_counter() - t0}
    return grads, stats


def normalize_cost_scale(node_costs: torch.Tensor, edge_costs: torch.Tensor,
                         target: float | None, distances: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale every image's costs so that their root mean square is ``target``.

    The AMWC solution does not change when all costs of an image are multiplied by one
    positive number, but the interpolation (3) does: its gradient ``(s_p - s) / λ`` has a
    non-negative component along the costs themselves (``<c, s_p - s> >= 0`` because
    ``s`` minimises ``<c, .>``), so every step of plain fine-tuning makes the costs
    smaller, the perturbation ``λ ∂L/∂z`` grows relative to them and the network drifts
    towards flat, indecisive costs (measured on the synthetic recipe: the mean gap between
    the best and second-best class cost fell from 6.1 to 1.6 in 100 steps at lr 3e-4,
    and PQ collapsed). Dividing by a differentiable scale makes the loss exactly
    invariant to that direction, so its gradient has no such component, and the solver
    always sees costs of the same size, which fixes what ``λ`` means.

    The scale is the root mean square over the node costs, centred per pixel (a constant
    added to one pixel's class costs changes nothing either), and the edge costs present
    in the grid layout. One factor per image multiplies node and edge costs alike, so
    the segmentation is that of the unscaled costs: inference needs no such step.

    Parameters
    ----------
    node_costs : (B, K, h, w) Tensor
    edge_costs : (B, 2m, h, w) Tensor
        Grid layout of :mod:`copsctl.solver.grid`; positions without an edge are ignored.
    target : float or None
        The root mean square after scaling (positive). ``None``: each image's own root
        mean square, not differentiated, so the costs keep their values and only the
        gradient changes: it loses its component along the costs (``finetune.scale_invariant``).
    distances : sequence of int
        The layout's edge distances.

    Returns
    -------
    (node_costs, edge_costs) : Tensors of the input shapes
    """
    if target is not None and not target > 0:
        raise InputError(f"`target` must be positive, got {target}")
    B, K, h, w = node_costs.shape
    mask = grid_graph(h, w, distances).edge_mask
    if tuple(edge_costs.shape) != (B,) + mask.shape:
        raise InputError(f"`edge_costs` (shape {tuple(edge_costs.shape)}) must have shape "
                         f"{(B,) + mask.shape}")
    m = torch.tensor(mask, dtype=edge_costs.dtype, device=edge_costs.device)
    centred = node_costs - node_costs.mean(dim=1, keepdim=True)
    total = centred.pow(2).flatten(1).sum(1) + (edge_costs.pow(2) * m).flatten(1).sum(1)
    count = K * h * w + float(mask.sum())
    rms = (total / count).clamp_min(1e-24).sqrt()
    factor = ((rms.detach() if target is None else target) / rms).view(B, 1, 1, 1)
    return node_costs * factor, edge_costs * factor


# ----------------------------------------------------------------------------- the layer


@dataclass
class AMWCBatch:
    """One call of :class:`AMWCLayer`: inputs kept for the backward pass, outputs, timings.

    Attributes
    ----------
    label_masks : (B, J, h, w) float32 Tensor
        One-hot masks of the lifted labels of every image (``J`` = the largest label
        count; padding channels are zero): the predicted segments are 1 on their
        pixels, the other labels are empty. Differentiable: backward runs Algorithm 1.
    label_classes : (B, J) int64 Tensor
        ``m(l)``, -1 on padding channels.
    solutions : list of ImageSolution
    lifted : list of LiftedLabels
    ground_truth : list of GroundTruth
    seed : int
        Seed of the ``λ`` draws of the backward pass.
    metrics : dict
        Numbers for the training log: ``time_forward_solve`` (seconds of the AMWC
        solves and the lifted label sets) and ``labels_per_image`` at once; after
        backward ``time_backward_solve`` (seconds of Algorithm 1, all perturbed solves),
        ``backward_solves`` and ``changed_nodes`` (mean fraction of nodes whose class a
        perturbation changed).
    lambdas : (B, n) ndarray
        The draws of ``λ``, once backward has run (else empty).
    """

    label_masks: torch.Tensor
    label_classes: torch.Tensor
    solutions: list[ImageSolution]
    lifted: list[LiftedLabels]
    ground_truth: list[GroundTruth]
    seed: int
    metrics: dict = field(default_factory=dict)
    lambdas: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


class _LambdaSink:
    """Hands the backward pass's draws to the :class:`AMWCBatch` through a weak reference
    (the batch holds the outputs, see the note in :meth:`_AMWCFunction.forward`)."""

    def __init__(self, state: AMWCBatch) -> None:
        self._ref = weakref.ref(state)

    def put(self, lambdas: np.ndarray) -> None:
        state = self._ref()
        if state is not None:
            state.lambdas = lambdas


class _AMWCFunction(torch.autograd.Function):
    """Forward: AMWC of every image -> lifted label masks. Backward: Algorithm 1."""

    @staticmethod
    def forward(ctx, node_costs, edge_costs, layer, state):
        t0 = time.perf_counter()
        B, K, h, w = node_costs.shape
        N = h * w
        edges, local, nc, ec = solver_inputs(node_costs, edge_costs, layer.distances)
        # (K, N) rows transposed: the solver reads (N, K) with strides, no copy.
        problems = [(nc[b].T, edges, ec[b], layer.partitionable, local) for b in range(B)]
        results = solve_many(problems, workers=layer.workers, options=layer.options)
        solutions, lifted = [], []
        for b, res in enumerate(results):
            seg, seg_cls = panoptic_segments(res.labels, res.segments, layer.partitionable)
            sol = ImageSolution(res.labels.astype(np.int64), seg, seg_cls, res.edge_cut,
                                res.objective)
            solutions.append(sol)
            lifted.append(lift_labels(sol, state.ground_truth[b], K, (h, w), layer.matching))
        J = max(lab.num_labels for lab in lifted)
        masks = torch.zeros((B, J, N), dtype=torch.float32)
        classes = torch.full((B, J), -1, dtype=torch.int64)
        for b, (sol, lab) in enumerate(zip(solutions, lifted)):
            masks[b].scatter_(0, torch.from_numpy(sol.segments)[None], 1.0)
            classes[b, :lab.num_labels] = torch.from_numpy(lab.label_class)
        state.solutions, state.lifted = solutions, lifted
        state.metrics["time_forward_solve"] = time.perf_counter() - t0
        state.metrics["labels_per_image"] = float(np.mean([lab.num_labels for lab in lifted]))
        # Only tensor-free objects go on ctx: the state holds the outputs, and an output
        # referenced from its own autograd node would form a cycle the GC cannot see.
        ctx.layer, ctx.solutions, ctx.lifted, ctx.seed = layer, solutions, lifted, state.seed
        ctx.metrics, ctx.state_ref = state.metrics, _LambdaSink(state)
        ctx.nc, ctx.ec, ctx.edges, ctx.local = nc, ec, edges, local
        ctx.shape, ctx.device, ctx.dtypes = (B, K, h, w), node_costs.device, \
            (node_costs.dtype, edge_costs.dtype)
        classes = classes.to(node_costs.device)
        ctx.mark_non_differentiable(classes)
        return masks.reshape(B, J, h, w).to(node_costs.device), classes

    @staticmethod
    def backward(ctx, grad_masks, grad_classes):
        layer = ctx.layer
        B, K, h, w = ctx.shape
        N = h * w
        rng = np.random.default_rng(ctx.seed)
        lambdas = rng.uniform(layer.lambda_min, layer.lambda_max, size=(B, layer.num_perturbations))
        if grad_masks is None:
            grad_masks = torch.zeros((B, 1, h, w))
        gm = grad_masks.detach().to("cpu", torch.float64).numpy().reshape(B, -1, N)
        problems = backward_problems(ctx.solutions, ctx.lifted, gm, ctx.nc, ctx.edges, ctx.ec,
                                     ctx.local)
        grads, stats = algorithm1(problems, lambdas, workers=layer.workers, options=layer.options,
                                  reference=layer.reference, two_sided=layer.two_sided)
        ctx.metrics.update(time_backward_solve=stats["seconds"], backward_solves=stats["solves"],
                           changed_nodes=stats["changed_nodes"],
                           reference_changed=stats["reference_changed"])
        ctx.state_ref.put(lambdas)
        node_grad = np.stack([g[0].T.reshape(K, h, w) for g in grads])
        edge_grad = np.stack([edge_values_to_maps(g[1], h, w, layer.distances) for g in grads])
        return (torch.from_numpy(node_grad).to(ctx.device, ctx.dtypes[0]),
                torch.from_numpy(edge_grad).to(ctx.device, ctx.dtypes[1]), None, None)


class AMWCLayer:
    """The AMWC solver as a differentiable layer (module docstring).

    Parameters
    ----------
    distances : sequence of int
        The grid layout's edge distances (``model.distances``).
    partitionable : (K,) bool array-like
        Thing classes.
    lambda_min, lambda_max : float
        Range of the interpolation ranges ``λ`` (uniform draws).
    num_perturbations : int
        ``n`` of the robust average (4).
    workers : int, optional
        Solver threads for the forward and backward solves (default: all cores).
    options : SolverOptions, optional
    reference : {"forward", "lifted"}
        The solution the perturbed ones are compared with (see :func:`algorithm1`).
    matching : {"overlapping", "all"}
        The surrogate's matching, which decides the lifted label set (:func:`lift_labels`).
    two_sided : bool
        Central differences in the backward pass (see :func:`algorithm1`).

    Call
    ----
    ``layer(node_costs (B, K, h, w), edge_costs (B, 2m, h, w), ground_truth, seed=...)``
    returns an :class:`AMWCBatch`; feed it to :func:`lifted_pq_surrogate` and call
    ``backward()`` on the loss. ``seed`` fixes the ``λ`` draws of this batch; ``metrics``
    is the dict the layer records its numbers in (:attr:`AMWCBatch.metrics`), e.g. the
    step's metrics dict of a training loop that reads it after ``backward``.
    """

    def __init__(self, *, distances: Sequence[int], partitionable, lambda_min: float = 1.0,
                 lambda_max: float = 5000.0, num_perturbations: int = 5,
                 workers: int | None = None, options: SolverOptions | None = None,
                 reference: str = "forward", matching: str = "overlapping",
                 two_sided: bool = False):
        self.distances = tuple(int(d) for d in distances)
        self.partitionable = np.asarray(partitionable, dtype=bool)
        if not (0 < lambda_min <= lambda_max):
            raise InputError(f"`lambda_min` ({lambda_min}) and `lambda_max` ({lambda_max}) must "
                             "satisfy 0 < lambda_min <= lambda_max")
        if num_perturbations < 1:
            raise InputError(f"`num_perturbations` must be >= 1, got {num_perturbations}")
        self.lambda_min, self.lambda_max = float(lambda_min), float(lambda_max)
        self.num_perturbations = int(num_perturbations)
        self.workers = workers
        self.options = options or SolverOptions()
        _check_backward(reference, two_sided)
        self.reference = reference
        self.two_sided = bool(two_sided)
        if matching not in MATCHINGS:
            raise InputError(f"`matching` must be one of {list(MATCHINGS)}, got {matching!r}")
        self.matching = matching

    @classmethod
    def from_config(cls, cfg: "Recipe", partitionable) -> "AMWCLayer":
        """The layer of a resolved recipe (``finetune.*``, ``solver.*``, ``model.distances``)."""
        f = cfg.finetune
        return cls(distances=cfg.model.distances, partitionable=partitionable,
                   lambda_min=f.lambda_min, lambda_max=f.lambda_max,
                   num_perturbations=f.num_perturbations,
                   workers=cfg.solver.workers or None, options=cfg.solver.options(),
                   reference=f.backward_reference, matching=f.surrogate_matching,
                   two_sided=f.two_sided)

    def __call__(self, node_costs: torch.Tensor, edge_costs: torch.Tensor,
                 ground_truth: Sequence[GroundTruth], *, seed: int = 0,
                 metrics: dict | None = None) -> AMWCBatch:
        if node_costs.dim() != 4:
            raise InputError(f"`node_costs` (shape {tuple(node_costs.shape)}) must have shape "
                             "(B, K, h, w)")
        B, K, h, w = node_costs.shape
        if K != self.partitionable.shape[0]:
            raise InputError(f"`node_costs` has {K} classes but `partitionable` has "
                             f"{self.partitionable.shape[0]}")
        want = (B, 2 * len(self.distances), h, w)
        if tuple(edge_costs.shape) != want:
            raise InputError(f"`edge_costs` (shape {tuple(edge_costs.shape)}) must have shape {want}")
        if len(ground_truth) != B:
            raise InputError(f"`ground_truth` (length {len(ground_truth)}) must have one entry "
                             f"per image ({B})")
        for b, gt in enumerate(ground_truth):
            if gt.weights.shape != (h, w) or gt.masks.shape[1:] != (h, w):
                raise InputError(f"`ground_truth[{b}]` (masks {gt.masks.shape}) must be at the "
                                 f"cost resolution {h}x{w}")
            if gt.classes.size and (gt.classes.min() < 0 or gt.classes.max() >= K):
                raise InputError(f"`ground_truth[{b}]` has a class outside [0, {K})")
        state = AMWCBatch(torch.empty(0), torch.empty(0), [], [], list(ground_truth), int(seed),
                          metrics if metrics is not None else {})
        state.label_masks, state.label_classes = _AMWCFunction.apply(node_costs, edge_costs,
                                                                     self, state)
        return state


def lifted_pq_surrogate(batch: AMWCBatch, area_thresholds, *, pixel_area: float = 1.0,
                        formulation: str = "complete", gate: str = "area", eps: float = 0.0,
                        min_size: int = 0) -> SurrogateResult:
    """The PQ surrogate (6) of the layer's segmentation, differentiable through the layer.

    The predicted-segment labels enter as predicted masks, the unmatched ground-truth
    labels as the empty ``gt_slots`` of their segments, with the layer's matching (so
    that loss and lifted label set agree). The labels of classes with neither do not
    enter the loss.

    Parameters
    ----------
    batch : AMWCBatch
    area_thresholds : (K,) array-like
        As in :func:`~copsctl.train.surrogate.pq_surrogate` (use ``pixel_area``).
    pixel_area : float
        Area of one cost pixel in the thresholds' unit (16 input pixels at 1/4 resolution).
    formulation : {"complete", "paper", "official"}
    gate : {"area", "intersection"}
    eps : float
        As in :func:`~copsctl.train.surrogate.pq_surrogate`.
    min_size : int
        Predicted segments of fewer cost pixels are left out of the loss (no gradient,
        no false positive); a ground-truth segment matched to one counts as unmatched.
    """
    masks = batch.label_masks
    B, _, h, w = masks.shape
    pred, pred_cls, gt_masks, gt_cls, weights, slots, matchings = [], [], [], [], [], [], []
    for b, (lab, gt) in enumerate(zip(batch.lifted, batch.ground_truth)):
        S, U = lab.num_pred, lab.unmatched_gt.shape[0]
        keep = np.ones(S, bool)
        if min_size > 0 and S:
            keep = masks[b, :S].detach().reshape(S, -1).sum(1).cpu().numpy() >= min_size
        pred.append(masks[b, :S][torch.from_numpy(keep).to(masks.device)] if not keep.all()
                    else masks[b, :S])
        pred_cls.append(lab.label_class[:S][keep])
        matchings.append(_drop_predictions(lab.matching, keep))
        gm = torch.from_numpy(gt.masks).to(masks.device)
        gt_masks.append(gm)
        gt_cls.append(gt.classes)
        weights.append(torch.from_numpy(gt.weights).to(masks.device))
        slot = torch.zeros((gt.masks.shape[0], h, w), dtype=masks.dtype, device=masks.device)
        if U:
            slot = slot.index_copy(0, torch.from_numpy(lab.unmatched_gt).to(masks.device),
                                   masks[b, S:S + U])
        slots.append(slot)
    return pq_surrogate(pred, pred_cls, gt_masks, gt_cls, area_thresholds, pixel_weights=weights,
                        pixel_area=pixel_area, formulation=formulation, matchings=matchings,
                        gt_slots=slots, gate=gate, eps=eps)


def _drop_predictions(matching: Matching, keep: np.ndarray) -> Matching:
    """``matching`` without the predictions where ``keep`` is False, re-indexed; their
    ground-truth partners become unmatched (their slots stay empty)."""
    if keep.all():
        return matching
    new_index = np.cumsum(keep) - 1
    pair_kept = keep[matching.pred]
    return Matching(pred=new_index[matching.pred[pair_kept]], gt=matching.gt[pair_kept],
                    iou=matching.iou[pair_kept],
                    unmatched_pred=new_index[matching.unmatched_pred[keep[matching.unmatched_pred]]],
                    unmatched_gt=np.sort(np.concatenate([matching.unmatched_gt,
                                                         matching.gt[~pair_kept]])),
                    ignored_gt=matching.ignored_gt)
