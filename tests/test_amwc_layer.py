"""The AMWC layer: Algorithm 1 against brute force, the lifted label set, robustness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from copsctl.errors import InputError
from copsctl.train.surrogate import pq_surrogate_mask_grads
from copsctl.solver import solve_amwc, solve_mwc
from copsctl.solver.grid import grid_edge_distance, grid_edge_mask, grid_edges, maps_to_edge_values
from copsctl.train.amwc_layer import (AMWCLayer, BackwardProblem, GroundTruth, algorithm1,
                                      lifted_pq_surrogate, panoptic_segments)


def _set_partitions(n):
    """All set partitions of range(n) as restricted growth strings."""
    def rec(prefix, m):
        if len(prefix) == n:
            yield tuple(prefix)
            return
        for b in range(m + 1):
            yield from rec(prefix + [b], max(m, b + 1))
    yield from rec([0], 1)


class Enumerated:
    """Every feasible solution of a tiny AMWC (or MWC) as rows of indicator matrices.

    ``X`` (M, n K) holds the one-hot classes and ``Y`` (M, E) the cut edges, so the
    optimum of any costs is ``min(X @ c_V.ravel() + Y @ c_E)``: exact and vectorised,
    which makes finite differences of optimal values cheap.
    """

    def __init__(self, n, k, edges, partitionable):
        u, v = edges[:, 0], edges[:, 1]
        xs, ys = [], []
        for blocks in _set_partitions(n):
            blocks = np.array(blocks)
            cut = blocks[u] != blocks[v]
            for classes in itertools.product(range(k), repeat=blocks.max() + 1):
                x = np.array(classes)[blocks]
                if np.any(cut & (x[u] == x[v]) & ~partitionable[x[u]]):
                    continue
                xs.append(np.eye(k)[x].ravel())
                ys.append(cut.astype(float))
        self.X, self.Y = np.array(xs), np.array(ys)

    def values(self, node_costs, edge_costs):
        return self.X @ node_costs.ravel() + self.Y @ edge_costs

    def opt(self, node_costs, edge_costs):
        return self.values(node_costs, edge_costs).min()


def _tiny(rng, h=2, w=3, k=3, labels_per_class=(1, 2, 1)):
    edges = grid_edges(h, w, (1,))
    n = h * w
    node_costs = rng.normal(size=(n, k))
    edge_costs = rng.normal(scale=1.5, size=len(edges))
    label_class = np.repeat(np.arange(k), labels_per_class)
    label_grads = rng.normal(size=(len(label_class), n))
    return node_costs, edges, edge_costs, label_class, label_grads


def test_algorithm1_equals_finite_difference_of_the_interpolated_loss():
    """(3) is the gradient of f_λ(c) = (OPT_lifted(c + λ ∂L/∂z) - OPT(c)) / λ, the interpolation
    of a loss linear in z; both optima by enumeration, the gradient by central differences."""
    rng = np.random.default_rng(0)
    partitionable = np.array([False, True, False])
    checked = 0
    edges = grid_edges(2, 3, (1,))
    amwc = Enumerated(6, 3, edges, partitionable)   # same graph in every trial
    mwc = Enumerated(6, 4, edges, np.zeros(4, bool))
    for trial in range(12):
        nc, edges, ec, label_class, g = _tiny(rng)
        n, k = nc.shape
        lam = float(rng.uniform(0.3, 3.0))
        fwd = solve_amwc(nc, edges, ec, partitionable)
        lifted = nc[:, label_class] + lam * g.T
        bwd = solve_mwc(lifted, edges, ec)
        # The layer is exact only where the solver is: compare on those problems.
        if (fwd.objective > amwc.opt(nc, ec) + 1e-9 or bwd.objective > mwc.opt(lifted, ec) + 1e-9):
            continue
        problem = BackwardProblem(nc, edges.astype(np.int32), ec, fwd.labels, fwd.edge_cut,
                                  label_class, g)
        [(grad_v, grad_e)], stats = algorithm1([problem], np.array([[lam]]), workers=1)
        assert stats["solves"] == 1

        def f(c_v, c_e):
            return (mwc.opt(c_v[:, label_class] + lam * g.T, c_e) - amwc.opt(c_v, c_e)) / lam

        eps = 1e-6
        fd_v = np.zeros_like(nc)
        for i, c in itertools.product(range(n), range(k)):
            d = np.zeros_like(nc)
            d[i, c] = eps
            fd_v[i, c] = (f(nc + d, ec) - f(nc - d, ec)) / (2 * eps)
        fd_e = np.zeros_like(ec)
        for e in range(len(ec)):
            d = np.zeros_like(ec)
            d[e] = eps
            fd_e[e] = (f(nc, ec + d) - f(nc, ec - d)) / (2 * eps)
        np.testing.assert_allclose(grad_v, fd_v, atol=1e-6)
        np.testing.assert_allclose(grad_e, fd_e, atol=1e-6)
        checked += np.abs(grad_v).sum() > 0  # a perturbation that changed something
    assert checked >= 4


def test_average_over_lambdas_and_descent_direction():
    """The robust average (4) is the mean of the single-λ gradients, and a small step against
    it lowers the interpolated loss (the sign convention of the whole layer)."""
    rng = np.random.default_rng(3)
    nc, edges, ec, label_class, g = _tiny(rng)
    x = solve_amwc(nc, edges, ec, np.array([False, True, False]))
    problem = BackwardProblem(nc, edges.astype(np.int32), ec, x.labels, x.edge_cut, label_class, g)
    lams = np.array([[0.5, 2.0, 7.0]])
    [(gv, ge)], _ = algorithm1([problem], lams, workers=1)
    singles = [algorithm1([problem], lams[:, i:i + 1], workers=1)[0][0] for i in range(3)]
    np.testing.assert_allclose(gv, np.mean([s[0] for s in singles], axis=0))
    np.testing.assert_allclose(ge, np.mean([s[1] for s in singles], axis=0))


def test_lifted_reference_is_the_finite_difference_of_one_solver():
    """reference="lifted" compares with the lifted problem solved unperturbed, so what the
    forward solution says does not enter; "forward" carries a forward/backward mismatch
    into the gradient with weight 1 / λ."""
    rng = np.random.default_rng(7)
    nc, edges, ec, label_class, g = _tiny(rng, h=3, w=3)
    part = np.array([False, True, False])
    x = solve_amwc(nc, edges, ec, part)
    mwc = solve_mwc(nc[:, label_class], edges, ec)
    x0 = label_class[mwc.labels]
    # A forward solution that disagrees with the lifted one at λ = 0 (as a heuristic's may).
    wrong = x.labels.copy()
    wrong[0] = (wrong[0] + 1) % 3
    lams = np.array([[0.5, 2.0]])
    out = {}
    for ref in ("forward", "lifted"):
        for name, labels in (("right", x.labels), ("wrong", wrong)):
            problem = BackwardProblem(nc, edges.astype(np.int32), ec, labels, x.edge_cut,
                                      label_class, g)
            out[ref, name] = algorithm1([problem], lams, workers=1, reference=ref)
    (gv_l, ge_l), stats = out["lifted", "wrong"][0][0], out["lifted", "wrong"][1]
    assert stats["solves"] == 3  # two perturbed, one unperturbed
    assert stats["reference_changed"] == pytest.approx(np.mean(x0 != wrong))
    np.testing.assert_array_equal(gv_l, out["lifted", "right"][0][0][0])
    np.testing.assert_array_equal(ge_l, out["lifted", "right"][0][0][1])
    # By hand: mean over λ of (W_lifted(c + λ g) - W_lifted(c)) / λ.
    ref_v, ref_e = np.zeros_like(nc), np.zeros_like(ec)
    for lam in lams[0]:
        res = solve_mwc(nc[:, label_class] + lam * g.T, edges, ec)
        ref_v += (np.eye(3)[label_class[res.labels]] - np.eye(3)[x0]) / (lam * 2)
        ref_e += (res.edge_cut.astype(float) - mwc.edge_cut) / (lam * 2)
    np.testing.assert_allclose(gv_l, ref_v, atol=1e-12)
    np.testing.assert_allclose(ge_l, ref_e, atol=1e-12)
    # "forward" with the wrong labels: node 0's mismatch enters with weight mean(1 / λ).
    gv_f = out["forward", "wrong"][0][0][0]
    gv_r = out["forward", "right"][0][0][0]
    delta = (gv_f - gv_r)[0]
    assert delta[wrong[0]] == pytest.approx(-np.mean(1 / lams))
    assert delta[x.labels[0]] == pytest.approx(np.mean(1 / lams))
    with pytest.raises(InputError, match="`reference` must be one of"):
        algorithm1([problem], lams, reference="other")


def test_two_sided_is_the_central_difference_of_the_perturbed_solutions():
    """two_sided=True: mean over λ of (W(c + λ g) - W(c - λ g)) / (2 λ), the lifted MWC
    solved at both signs; the forward solution does not enter."""
    rng = np.random.default_rng(11)
    nc, edges, ec, label_class, g = _tiny(rng, h=3, w=3)
    x = solve_amwc(nc, edges, ec, np.array([False, True, False]))
    wrong = x.labels.copy()
    wrong[0] = (wrong[0] + 1) % 3
    lams = np.array([[0.5, 2.0, 4.0]])
    ref_v, ref_e = np.zeros_like(nc), np.zeros_like(ec)
    for lam in lams[0]:
        plus = solve_mwc(nc[:, label_class] + lam * g.T, edges, ec)
        minus = solve_mwc(nc[:, label_class] - lam * g.T, edges, ec)
        ref_v += (np.eye(3)[label_class[plus.labels]] - np.eye(3)[label_class[minus.labels]]) \
            / (2 * lam * 3)
        ref_e += (plus.edge_cut.astype(float) - minus.edge_cut) / (2 * lam * 3)
    assert np.abs(ref_v).sum() > 0
    for labels in (x.labels, wrong):
        problem = BackwardProblem(nc, edges.astype(np.int32), ec, labels, x.edge_cut,
                                  label_class, g)
        [(gv, ge)], stats = algorithm1([problem], lams, workers=1, two_sided=True)
        assert stats["solves"] == 6
        np.testing.assert_allclose(gv, ref_v, atol=1e-12)
        np.testing.assert_allclose(ge, ref_e, atol=1e-12)
    with pytest.raises(InputError, match="two_sided"):
        algorithm1([problem], lams, reference="lifted", two_sided=True)
    with pytest.raises(InputError, match="two_sided"):
        AMWCLayer(distances=(1,), partitionable=[False, True], reference="lifted", two_sided=True)


def test_more_perturbations_lower_the_variance():
    rng = np.random.default_rng(5)
    nc, edges, ec, label_class, g = _tiny(rng, h=3, w=3)
    x = solve_amwc(nc, edges, ec, np.array([False, True, False]))
    problem = BackwardProblem(nc, edges.astype(np.int32), ec, x.labels, x.edge_cut, label_class, g)

    def variance(n):
        draws = np.random.default_rng(n)
        est = []
        for _ in range(150):
            [(gv, ge)], _ = algorithm1([problem], draws.uniform(0.2, 5.0, size=(1, n)), workers=1)
            est.append(np.concatenate([gv.ravel(), ge]))
        return np.var(np.array(est), axis=0).sum()

    v1, v5 = variance(1), variance(5)
    assert v1 > 0
    assert v5 < 0.4 * v1  # i.i.d. draws: about v1 / 5


def test_zero_loss_gradient_gives_exact_zeros_without_solving():
    rng = np.random.default_rng(1)
    nc, edges, ec, label_class, g = _tiny(rng)
    x = solve_amwc(nc, edges, ec, np.array([False, True, False]))
    problem = BackwardProblem(nc, edges.astype(np.int32), ec, x.labels, x.edge_cut, label_class,
                              np.zeros_like(g))
    [(gv, ge)], stats = algorithm1([problem], np.array([[1.0, 2.0]]), workers=1)
    assert stats["solves"] == 0 and not gv.any() and not ge.any()
    with pytest.raises(InputError, match=r"`lambdas` \(shape \(2, 1\)\) must have shape \(1, n\)"):
        algorithm1([problem], np.ones((2, 1)))
    with pytest.raises(InputError, match="`lambdas` must be positive"):
        algorithm1([problem], np.zeros((1, 1)))


def test_panoptic_segments_merge_stuff_and_keep_instances():
    labels = np.array([0, 0, 1, 1, 0, 2])
    segments = np.array([0, 0, 1, 2, 3, 4])  # class 0 (stuff) in two regions, class 1 split
    seg, cls = panoptic_segments(labels, segments, np.array([False, True, False]))
    assert seg[0] == seg[1] == seg[4]           # stuff regions merged
    assert len({seg[2], seg[3]}) == 2           # instances kept apart
    assert cls[seg].tolist() == labels.tolist()
    assert sorted(cls.tolist()) == [0, 1, 1, 2]


# ----------------------------------------------------------------------------- the layer

# Classes: 0 ground (stuff), 1 car (thing), 2 person (thing). Thresholds in input pixels,
# masks at 1/4 resolution (pixel_area 16): the paper's 200 for things, small for stuff.
PART = np.array([False, True, True])
THRESH = np.array([64.0, 200.0, 200.0])


def _scene(h=12, w=16):
    """Ground, two touching cars (ids 2, 3), one person (id 4)."""
    pan = np.ones((h, w), np.int64)
    pan[2:8, 1:6] = 2
    pan[2:8, 6:11] = 3
    pan[5:10, 12:15] = 4
    gt = GroundTruth.from_panoptic(pan, np.array([1, 2, 3, 4]), np.array([0, 1, 1, 2]),
                                   np.zeros(4, bool))
    return pan, gt


def _costs(pan, cls_of, distances=(1, 2), margin=3.0, boundary=2.0, split_cars=False):
    """Node costs favouring the true class; edge costs attractive inside segments and repulsive
    across class boundaries; between the two cars attractive (merged) unless ``split_cars``."""
    h, w = pan.shape
    sem = np.vectorize(cls_of.get)(pan)
    node = np.full((3, h, w), margin)
    for k in range(3):
        node[k][sem == k] = 0.0
    maps = np.zeros((2 * len(distances), h, w))
    for i, d in enumerate(distances):
        same_h = np.zeros((h, w), bool)
        same_h[:, :w - d] = pan[:, :w - d] == pan[:, d:]
        same_v = np.zeros((h, w), bool)
        same_v[:h - d] = pan[:h - d] == pan[d:]
        cls_h = np.zeros((h, w), bool)
        cls_h[:, :w - d] = sem[:, :w - d] == sem[:, d:]
        cls_v = np.zeros((h, w), bool)
        cls_v[:h - d] = sem[:h - d] == sem[d:]
        for c, same, samecls in ((2 * i, same_h, cls_h), (2 * i + 1, same_v, cls_v)):
            maps[c] = np.where(same, boundary, -boundary)
            if not split_cars:
                maps[c][samecls & ~same] = boundary  # instance boundary looks like interior
    return torch.tensor(node[None], dtype=torch.float32), torch.tensor(maps[None], dtype=torch.float32)


CLS_OF = {1: 0, 2: 1, 3: 1, 4: 2}


def test_forward_segments_and_lifted_label_set_of_a_merge():
    pan, gt = _scene()
    nc, ec = _costs(pan, CLS_OF)
    layer = AMWCLayer(distances=(1, 2), partitionable=PART, lambda_min=500, lambda_max=2000,
                      num_perturbations=2, workers=1)
    out = layer(nc, ec, [gt], seed=0)
    sol, lab = out.solutions[0], out.lifted[0]
    # Ground, one merged car, person.
    assert sorted(sol.segment_classes.tolist()) == [0, 1, 2]
    assert lab.num_pred == 3
    # One car is matched, the other is the unmatched ground truth with an empty label.
    assert lab.unmatched_gt.shape == (1,) and gt.classes[lab.unmatched_gt[0]] == 1
    assert lab.free_classes.size == 0
    assert lab.label_class.tolist() == sol.segment_classes.tolist() + [1]
    masks = out.label_masks[0]
    assert masks.shape == (4, 12, 16)
    assert torch.equal(masks[:3].sum(0), torch.ones(12, 16)) and not masks[3].any()
    assert out.label_classes[0].tolist() == lab.label_class.tolist()


def test_backward_splits_merged_instances():
    """The perturbed lifted MWC moves the missed car to its own label: the gradient asks to
    make the edges between the two cars cheaper to cut and leaves other edges alone."""
    pan, gt = _scene()
    nc, ec = _costs(pan, CLS_OF)
    nc.requires_grad_(True)
    ec.requires_grad_(True)
    layer = AMWCLayer(distances=(1, 2), partitionable=PART, lambda_min=500, lambda_max=2000,
                      num_perturbations=3, workers=2)
    out = layer(nc, ec, [gt], seed=0)
    loss = lifted_pq_surrogate(out, THRESH, pixel_area=16.0)
    loss.loss.backward()
    assert out.metrics["backward_solves"] == 3 and out.lambdas.shape == (1, 3)
    between = np.zeros((4, 12, 16), bool)
    between[0, 2:8, 5] = True  # horizontal d=1 edges (y, 5) -> (y, 6): car 2 | car 3
    between[2, 2:8, 4:6] = True  # d=2 edges across the same boundary
    g = ec.grad[0].numpy()
    assert (g[between] > 0).mean() > 0.8  # a gradient step lowers these costs: cut them
    assert np.abs(g[~between]).max() <= np.abs(g[between]).max()
    assert torch.isfinite(nc.grad).all()


def test_layer_gradient_is_algorithm1_of_the_surrogate_gradients():
    """The plumbing: the layer's backward equals Algorithm 1 fed with the surrogate's mask
    gradients (predicted segments) and empty-slot gradients (unmatched ground truth)."""
    pan, gt = _scene()
    rng = np.random.default_rng(0)
    nc, ec = _costs(pan, CLS_OF, margin=1.0, boundary=1.0)
    nc = (nc + torch.tensor(rng.normal(scale=0.6, size=nc.shape), dtype=torch.float32)).requires_grad_()
    ec = (ec + torch.tensor(rng.normal(scale=0.6, size=ec.shape), dtype=torch.float32)).requires_grad_()
    layer = AMWCLayer(distances=(1, 2), partitionable=PART, lambda_min=50, lambda_max=300,
                      num_perturbations=2, workers=1)
    out = layer(nc, ec, [gt], seed=7)
    res = lifted_pq_surrogate(out, THRESH, pixel_area=16.0)
    res.loss.backward()

    sol, lab = out.solutions[0], out.lifted[0]
    seg = torch.nn.functional.one_hot(torch.from_numpy(sol.segments), sol.num_segments).T
    ref, grads, gt_grads = pq_surrogate_mask_grads(
        [seg.reshape(-1, 12, 16).float()], [sol.segment_classes], [torch.from_numpy(gt.masks)],
        [gt.classes], THRESH, pixel_weights=[torch.from_numpy(gt.weights)], pixel_area=16.0,
        unmatched_gt_grads=True)
    assert float(ref.loss) == pytest.approx(float(res.loss.detach()), abs=1e-6)
    label_grads = np.concatenate([grads[0].reshape(lab.num_pred, -1).numpy(),
                                  gt_grads[0][lab.unmatched_gt].reshape(-1, 12 * 16).numpy(),
                                  np.zeros((lab.free_classes.size, 12 * 16))])
    node = nc.detach().numpy()[0].reshape(3, -1).T.astype(np.float64)
    edge = maps_to_edge_values(ec.detach().numpy()[0], (1, 2)).astype(np.float64)
    problem = BackwardProblem(node, grid_edges(12, 16, (1, 2)).astype(np.int32), edge, sol.labels,
                              sol.edge_cut, lab.label_class, label_grads,
                              grid_edge_distance(12, 16, (1, 2)) == 1)
    [(gv, ge)], _ = algorithm1([problem], out.lambdas, workers=1)
    np.testing.assert_allclose(nc.grad[0].numpy().reshape(3, -1).T, gv, atol=1e-5)
    np.testing.assert_allclose(maps_to_edge_values(ec.grad[0].numpy(), (1, 2)), ge, atol=1e-5)
    assert np.abs(gv).sum() + np.abs(ge).sum() > 0


def test_same_seed_same_gradient():
    pan, gt = _scene()
    grads = []
    for _ in range(2):
        nc, ec = _costs(pan, CLS_OF)
        ec.requires_grad_(True)
        layer = AMWCLayer(distances=(1, 2), partitionable=PART, lambda_min=1, lambda_max=5000,
                          num_perturbations=3, workers=2)
        out = layer(nc, ec, [gt], seed=11)
        lifted_pq_surrogate(out, THRESH, pixel_area=16.0).loss.backward()
        grads.append(ec.grad.clone())
    assert torch.equal(grads[0], grads[1])


def _run(pan, gt, cls_of, **kw):
    nc, ec = _costs(pan, cls_of, **kw)
    nc.requires_grad_(True)
    ec.requires_grad_(True)
    layer = AMWCLayer(distances=(1, 2), partitionable=PART, lambda_min=1, lambda_max=5000,
                      num_perturbations=2, workers=2)
    out = layer(nc, ec, [gt], seed=0)
    res = lifted_pq_surrogate(out, THRESH, pixel_area=16.0)
    res.loss.backward()
    return out, res, nc.grad, ec.grad


def test_robust_to_a_missed_ground_truth_class():
    pan, gt = _scene()
    # The costs say "ground" where the person is: no predicted person at all.
    out, res, gv, ge = _run(pan, gt, {1: 0, 2: 1, 3: 1, 4: 0}, split_cars=True)
    lab = out.lifted[0]
    assert 2 not in out.solutions[0].segment_classes
    assert gt.classes[lab.unmatched_gt].tolist() == [2]
    assert np.isfinite(res.pq) and torch.isfinite(gv).all() and torch.isfinite(ge).all()
    # The missed person's pixels are pushed from the class the forward pass gave them
    # towards person (class 2): a gradient step lowers the cost of class 2 and raises that
    # of the forward class there. (Ground by the node costs; a solver may instead cut the
    # blob out of the ground along its repulsive edges as a car, which costs less.)
    person = torch.from_numpy(pan == 4)
    forward = torch.from_numpy(out.solutions[0].labels.reshape(pan.shape))[person]
    assert (forward != 2).all()
    assert (gv[0, 2][person] > 0).float().mean() > 0.5
    assert (gv[0][:, person].gather(0, forward[None].long())[0] < 0).float().mean() > 0.5


def test_robust_without_thing_instances_and_with_empty_ground_truth():
    h, w = 10, 12
    pan = np.ones((h, w), np.int64)
    pan[5:] = 2
    gt = GroundTruth.from_panoptic(pan, np.array([1, 2]), np.array([0, 0]), np.zeros(2, bool))
    out, res, gv, ge = _run(pan, gt, {1: 0, 2: 0})
    assert not any(PART[c] for c in out.solutions[0].segment_classes)
    assert torch.isfinite(gv).all() and torch.isfinite(ge).all() and np.isfinite(res.pq)
    # All void: nothing to match (every weighted area is 0), a constant loss, exact zero
    # gradients and no backward solve.
    void = GroundTruth.from_panoptic(np.zeros((h, w), np.int64), np.zeros(0), np.zeros(0),
                                     np.zeros(0, bool))
    out, res, gv, ge = _run(pan, void, {1: 0, 2: 1})
    assert np.isfinite(float(res.loss.detach())) and res.pq == 0.0
    assert not gv.any() and not ge.any() and out.metrics["backward_solves"] == 0
    # Crowd only: also nothing to score.
    crowd = GroundTruth.from_panoptic(pan, np.array([1, 2]), np.array([1, 1]), np.ones(2, bool))
    assert crowd.masks.shape == (0, h, w) and not crowd.weights.any()


def test_bad_inputs():
    pan, gt = _scene()
    nc, ec = _costs(pan, CLS_OF)
    layer = AMWCLayer(distances=(1, 2), partitionable=PART)
    with pytest.raises(InputError, match=r"`edge_costs` \(shape \(1, 2, 12, 16\)\) must have shape"):
        layer(nc, ec[:, :2], [gt])
    with pytest.raises(InputError, match=r"`ground_truth` \(length 2\) must have one entry per image"):
        layer(nc, ec, [gt, gt])
    with pytest.raises(InputError, match=r"`node_costs` has 3 classes but `partitionable` has 2"):
        AMWCLayer(distances=(1, 2), partitionable=PART[:2])(nc, ec, [gt])
    with pytest.raises(InputError, match="lambda_min <= lambda_max"):
        AMWCLayer(distances=(1,), partitionable=PART, lambda_min=5, lambda_max=1)
    small = GroundTruth.from_panoptic(pan[:6], np.array([1]), np.array([0]), np.zeros(1, bool))
    with pytest.raises(InputError, match=r"`ground_truth\[0\]` .* cost resolution 12x16"):
        layer(nc, ec, [small])


def test_cost_normalisation_fixes_the_scale_and_keeps_the_segmentation():
    from copsctl.train.amwc_layer import normalize_cost_scale
    pan, gt = _scene()
    node, edge = _costs(pan, CLS_OF)
    node = torch.cat([node, 0.1 * node])  # two images at very different scales
    edge = torch.cat([edge, 0.1 * edge])
    n2, e2 = normalize_cost_scale(node, edge, 2.5, (1, 2))
    mask = torch.from_numpy(grid_edge_mask(12, 16, (1, 2)))
    for b in range(2):
        centred = n2[b] - n2[b].mean(dim=0, keepdim=True)
        values = torch.cat([centred.flatten(), e2[b][mask]])
        assert float(values.pow(2).mean().sqrt()) == pytest.approx(2.5, rel=1e-5)
    # One positive factor per image: both images become the same costs, and the solver's
    # segmentation is that of the unscaled costs.
    torch.testing.assert_close(n2[0], n2[1])
    torch.testing.assert_close(e2[0], e2[1])
    layer = AMWCLayer(distances=(1, 2), partitionable=PART, workers=1)
    before = layer(node[:1], edge[:1], [gt]).solutions[0]
    after = layer(n2[:1], e2[:1], [gt]).solutions[0]
    np.testing.assert_array_equal(before.labels, after.labels)
    np.testing.assert_array_equal(before.edge_cut, after.edge_cut)


def test_cost_normalisation_removes_the_pull_towards_smaller_costs():
    from copsctl.train.amwc_layer import normalize_cost_scale
    pan, gt = _scene()
    node, edge = _costs(pan, CLS_OF)
    grads = {}
    for norm in (False, True, None):
        nv = node.clone().requires_grad_(True)
        ev = edge.clone().requires_grad_(True)
        if norm is None:  # finetune.scale_invariant: the costs keep their values exactly
            n, e = normalize_cost_scale(nv, ev, None, (1, 2))
            assert torch.equal(n, node) and torch.equal(e, edge)
        else:
            n, e = normalize_cost_scale(nv, ev, 3.0, (1, 2)) if norm else (nv, ev)
        layer = AMWCLayer(distances=(1, 2), partitionable=PART, lambda_min=500,
                          lambda_max=2000, num_perturbations=3, workers=1)
        lifted_pq_surrogate(layer(n, e, [gt], seed=1), THRESH, pixel_area=16.0).loss.backward()
        mask = torch.from_numpy(grid_edge_mask(12, 16, (1, 2)))
        grads[norm] = float((nv.grad * node).sum() + (ev.grad * edge * mask).sum())
    # Plain interpolation: <grad, c> >= 0 (a descent step shrinks the costs) and here > 0;
    # through the normalisation the component along the costs is gone.
    assert grads[False] > 1e-6
    assert grads[True] == pytest.approx(0.0, abs=1e-6 * grads[False] + 1e-9)
    assert grads[None] == pytest.approx(0.0, abs=1e-6 * grads[False] + 1e-9)
    with pytest.raises(InputError, match="`target` must be positive"):
        normalize_cost_scale(node, edge, 0.0, (1, 2))
    with pytest.raises(InputError, match=r"`edge_costs` \(shape \(1, 2, 12, 16\)\) must have shape"):
        normalize_cost_scale(node, edge[:, :2], 1.0, (1, 2))
