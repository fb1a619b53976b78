"""The synthetic problem generator: determinism, shapes, calibration, ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from copsctl.errors import InputError
from copsctl.solver.grid import grid_edge_mask, grid_edges
from copsctl.costs.synthetic import PRESETS, get_preset, make_problem


def test_presets_have_the_documented_sizes():
    cs, coco = PRESETS["cityscapes"], PRESETS["coco"]
    assert (cs.height, cs.width, cs.num_classes, cs.distances) == (256, 512, 19,
                                                                   (1, 4, 16, 32, 64, 128))
    assert sum(c.isthing for c in cs.categories) == 8
    assert (coco.height, coco.width, coco.num_classes, coco.distances) == (160, 160, 133,
                                                                          (1, 4, 16, 32, 64))
    assert sum(c.isthing for c in coco.categories) == 80
    # Cityscapes-size problems have the 1.38 M edges of the benchmark
    assert len(grid_edges(cs.height, cs.width, cs.distances)) == 1_384_704
    with pytest.raises(InputError, match="`preset` must be one of"):
        get_preset("kitti")


def test_deterministic_given_a_seed():
    a = make_problem("tiny", seed=[3, 1])
    b = make_problem("tiny", seed=[3, 1])
    c = make_problem("tiny", seed=[3, 2])
    assert np.array_equal(a.node_costs, b.node_costs) and np.array_equal(a.edge_maps, b.edge_maps)
    assert np.array_equal(a.gt_segments, b.gt_segments)
    assert not np.array_equal(a.node_costs, c.node_costs)


@pytest.mark.parametrize("preset", ["tiny", "small", "coco"])
def test_shapes_costs_and_accuracy(preset):
    p = get_preset(preset)
    for seed in range(2):
        prob = make_problem(preset, seed=seed)
        K, h, w = p.num_classes, p.height, p.width
        assert prob.node_costs.shape == (K, h, w) and prob.node_costs.dtype == np.float32
        assert prob.edge_maps.shape == (2 * len(p.distances), h, w)
        assert prob.edge_maps.dtype == np.float32
        # -log softmax: non-negative, and the probabilities sum to one
        assert prob.node_costs.min() >= 0
        np.testing.assert_allclose(np.exp(-prob.node_costs.astype(np.float64)).sum(axis=0), 1.0,
                                   rtol=1e-4)
        mask = grid_edge_mask(h, w, p.distances)
        assert (prob.edge_maps[~mask] == 0).all()
        assert np.isfinite(prob.edge_maps).all()
        assert np.abs(prob.edge_maps).max() <= np.log((1 - 1e-4) / 1e-4) + 1e-4
        acc = float((prob.node_costs.argmin(axis=0) == prob.gt_labels).mean())
        assert acc == pytest.approx(prob.info["pixel_accuracy"])
        assert 0.85 <= acc <= 0.92
        # edge costs agree in sign with the ground truth most of the time
        assert prob.info["edge_accuracy"] > 0.9


def test_ground_truth_has_stuff_and_thing_segments():
    prob = make_problem("small", seed=0)
    part = prob.partitionable
    seg_class = prob.gt_segment_class
    assert part[seg_class].sum() >= 2 and (~part[seg_class]).sum() >= 2
    # stuff classes are one segment each; every segment is used
    stuff = seg_class[~part[seg_class]]
    assert len(set(stuff.tolist())) == len(stuff)
    assert set(np.unique(prob.gt_segments).tolist()) == set(range(len(seg_class)))
    gt = prob.ground_truth()
    assert gt.ids.shape == prob.image_size
    assert len(gt.segments) == len(seg_class) and (gt.ids > 0).all()


def test_hard_family_has_weaker_edges_same_scene():
    easy = make_problem("small", seed=4, difficulty=0.0)
    hard = make_problem("small", seed=4, difficulty=1.0)
    assert np.array_equal(easy.gt_segments, hard.gt_segments)
    assert hard.info["edge_accuracy"] < easy.info["edge_accuracy"] - 0.1


def test_target_accuracy_and_bad_arguments():
    prob = make_problem("tiny", seed=0, accuracy=0.7)
    assert prob.info["pixel_accuracy"] == pytest.approx(0.7, abs=0.02)
    with pytest.raises(InputError, match="`difficulty` must lie in"):
        make_problem("tiny", difficulty=1.5)
    with pytest.raises(InputError, match="`accuracy` must lie in"):
        make_problem("tiny", accuracy=1.0)


def test_solver_problem_shapes():
    prob = make_problem("tiny", seed=0)
    nc, edges, ec, part, local = prob.solver_problem()
    K, h, w = prob.node_costs.shape
    assert nc.shape == (h * w, K) and ec.shape == (len(edges),)
    assert part.dtype == bool and part.shape == (K,)
