"""The grid layout of copsctl.solver.grid: edges, masks, distances and map round trips."""

from __future__ import annotations

import numpy as np
import pytest

from copsctl.errors import InputError
from copsctl.solver.grid import (edge_values_to_maps, grid_edge_distance, grid_edge_mask,
                                 grid_edges, maps_to_edge_values)

H, W = 5, 7
DISTANCES = (1, 3)


def test_edges_of_a_hand_checked_grid():
    # 2x3 grid, distance 1: nodes 0 1 2 / 3 4 5.
    edges = grid_edges(2, 3, (1,))
    horizontal = [[0, 1], [1, 2], [3, 4], [4, 5]]
    vertical = [[0, 3], [1, 4], [2, 5]]
    assert edges.tolist() == horizontal + vertical
    assert edges.dtype == np.int64


def test_edge_order_is_channel_then_row_major():
    edges = grid_edges(H, W, DISTANCES)
    mask = grid_edge_mask(H, W, DISTANCES)
    # Recompute each edge from the mask position it comes from.
    c, y, x = np.nonzero(mask)  # C order: channel, then row, then column
    d = np.asarray(DISTANCES)[c // 2]
    horizontal = c % 2 == 0
    src = y * W + x
    dst = np.where(horizontal, y * W + x + d, (y + d) * W + x)
    assert edges.tolist() == np.stack([src, dst], axis=1).tolist()


def test_mask_counts_and_border():
    mask = grid_edge_mask(H, W, DISTANCES)
    assert mask.shape == (2 * len(DISTANCES), H, W)
    for i, d in enumerate(DISTANCES):
        assert mask[2 * i].sum() == H * (W - d)
        assert mask[2 * i + 1].sum() == (H - d) * W
        assert not mask[2 * i, :, W - d:].any()      # partner to the right falls outside
        assert not mask[2 * i + 1, H - d:, :].any()  # partner below falls outside
    assert len(grid_edges(H, W, DISTANCES)) == mask.sum()


def test_distance_larger_than_the_grid_gives_no_edges_in_that_direction():
    edges = grid_edges(2, 10, (4,))
    # horizontal: 2 rows x 6; vertical: none (only 2 rows)
    assert len(edges) == 12
    assert (edges[:, 1] - edges[:, 0] == 4).all()
    assert not grid_edge_mask(2, 10, (4,))[1].any()


def test_edge_distance():
    dist = grid_edge_distance(H, W, DISTANCES)
    edges = grid_edges(H, W, DISTANCES)
    assert dist.shape == (len(edges),)
    ys, xs = np.divmod(edges, W)
    manhattan = np.abs(ys[:, 0] - ys[:, 1]) + np.abs(xs[:, 0] - xs[:, 1])
    assert (dist == manhattan).all()
    assert sorted(set(dist.tolist())) == list(DISTANCES)


def test_maps_to_edges_to_maps_round_trip():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((2 * len(DISTANCES), H, W)).astype(np.float32)
    values = maps_to_edge_values(maps, DISTANCES)
    assert values.shape == (len(grid_edges(H, W, DISTANCES)),)
    back = edge_values_to_maps(values, H, W, DISTANCES, fill=np.nan)
    mask = grid_edge_mask(H, W, DISTANCES)
    assert np.array_equal(back[mask], maps[mask])
    assert np.isnan(back[~mask]).all()
    assert back.dtype == np.float32


def test_edges_to_maps_to_edges_round_trip_and_value_placement():
    n = len(grid_edges(H, W, DISTANCES))
    values = np.arange(n, dtype=np.int64)
    maps = edge_values_to_maps(values, H, W, DISTANCES, fill=-1)
    assert np.array_equal(maps_to_edge_values(maps, DISTANCES), values)
    # The value of edge ((y, x), (y, x + 3)) sits at channel 2, position (y, x).
    edges = grid_edges(H, W, DISTANCES)
    e = int(np.flatnonzero((edges[:, 0] == 2 * W + 1) & (edges[:, 1] == 2 * W + 4))[0])
    assert maps[2, 2, 1] == e
    # ... and of edge ((y, x), (y + 1, x)) at channel 1.
    e = int(np.flatnonzero((edges[:, 0] == 3 * W + 6) & (edges[:, 1] == 4 * W + 6))[0])
    assert maps[1, 3, 6] == e


@pytest.mark.parametrize("distances", [(), (0,), (-1, 2), (2, 2)])
def test_bad_distances(distances):
    with pytest.raises(InputError, match="`distances`"):
        grid_edges(H, W, distances)


def test_bad_grid_size():
    with pytest.raises(InputError, match="grid size"):
        grid_edge_mask(0, 5, (1,))


def test_maps_of_the_wrong_shape():
    with pytest.raises(InputError, match=r"`maps` \(shape \(3, 5, 7\)\)"):
        maps_to_edge_values(np.zeros((3, H, W)), DISTANCES)
    with pytest.raises(InputError, match="`maps`"):
        maps_to_edge_values(np.zeros((4, H)), DISTANCES)


def test_values_of_the_wrong_length():
    with pytest.raises(InputError, match="`values`"):
        edge_values_to_maps(np.zeros(3), H, W, DISTANCES)


def test_training_validation_and_solve_build_the_same_problem_without_distance_1():
    """One grid adapter: the fine-tuning layer (solver_inputs), validation and `solve`
    (costs.solver_problem) agree on edges, pre-clustering edges and edge costs, also for
    a distance set without 1 (the local edges are those of the smallest distance)."""
    import torch

    from copsctl.costs.cache import solver_problem
    from copsctl.train.amwc_layer import solver_inputs

    distances = (2, 4, 8)
    rng = np.random.default_rng(0)
    node = rng.normal(size=(1, 3, 9, 11)).astype(np.float32)
    edge = rng.normal(size=(1, 6, 9, 11)).astype(np.float32)
    edges, local, nc, ec = solver_inputs(torch.from_numpy(node), torch.from_numpy(edge), distances)
    p_nc, p_edges, p_ec, _, p_local = solver_problem(node[0], edge[0], distances,
                                                     np.array([True, False, True]))
    assert np.array_equal(edges, p_edges) and np.array_equal(local, p_local)
    assert edges.dtype == np.int32 and local.any()
    d = np.abs(edges[:, 1] - edges[:, 0])
    assert set(np.unique(np.where(d >= 9, d // 11, d)[local])) == {2}  # only distance-2 edges
    np.testing.assert_array_equal(ec[0], p_ec)
    np.testing.assert_array_equal(nc[0].T, p_nc)
