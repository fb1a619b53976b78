"""Targets on hand-made panoptic maps: semantic, affinities and their weights."""

import numpy as np
import pytest

from copsctl.data.targets import downsample_panoptic, make_targets
from copsctl.errors import InputError
from copsctl.solver.grid import grid_edge_mask, grid_edges, maps_to_edge_values

ROAD, A, B, CROWD = 7000, 24001, 24002, 26
# Classes: 0 road (stuff), 1 person (thing), 2 car (thing).
THING = np.array([False, True, True])


def _scene():
    """8x12 map: two touching persons A (4x4) and B (3x4), a car crowd, a void corner."""
    pan = np.full((8, 12), ROAD, dtype=np.int64)
    pan[0:4, 0:4] = A        # area 16
    pan[0:3, 4:8] = B        # area 12, touching A on its right
    pan[4:6, 8:12] = CROWD
    pan[6:8, 10:12] = 0      # void
    table = dict(segment_ids=np.array([ROAD, A, B, CROWD]),
                 segment_classes=np.array([0, 1, 1, 2]),
                 segment_iscrowd=np.array([False, False, False, True]))
    return pan, table


def _targets(**kw):
    pan, table = _scene()
    args = dict(thing_classes=THING, distances=(1, 4), stride=1, small_area=14,
                small_weight=3.0, thing_weight=4.0)
    args.update(kw)
    return make_targets(pan, **table, **args)


def _edge(t, d_index, direction, y, x):
    ch = 2 * d_index + (0 if direction == "h" else 1)
    return t.affinity[ch, y, x], t.affinity_weights[ch, y, x]


def test_semantic_target_and_weights():
    t = _targets()
    assert t.semantic.dtype == np.int64 and t.semantic.shape == (8, 12)
    assert t.semantic[0, 0] == 1 and t.semantic[7, 0] == 0 and t.semantic[4, 8] == 2
    assert t.semantic[7, 11] == 255
    assert t.semantic_weights[0, 0] == 1.0      # A: 16 px, not small
    assert t.semantic_weights[0, 4] == 3.0      # B: 12 px < 14, small
    assert t.semantic_weights[7, 0] == 1.0      # stuff
    assert t.semantic_weights[4, 8] == 1.0      # crowd is never small
    assert t.semantic_weights[7, 11] == 0.0     # void


@pytest.mark.parametrize("case", [
    # (distance index, direction, y, x, target, weight, what)
    (0, "h", 0, 0, 1, 4, "inside A (thing)"),
    (0, "h", 0, 3, 0, 12, "A -> B: same class, different instance; B small"),
    (0, "h", 0, 4, 1, 12, "inside small B"),
    (0, "v", 3, 0, 0, 4, "A -> road below"),
    (0, "v", 2, 4, 0, 12, "B -> road below"),
    (0, "h", 7, 0, 1, 1, "road -> road"),
    (0, "h", 7, 9, 0, 0, "road -> void"),
    (0, "v", 5, 10, 0, 0, "crowd -> void"),
    (0, "h", 4, 8, 0, 0, "inside the crowd: unknown, weight 0"),
    (0, "v", 4, 8, 0, 0, "inside the crowd, vertical"),
    (0, "h", 4, 7, 0, 4, "road -> crowd: a true boundary of a thing"),
    (1, "h", 0, 0, 0, 12, "d=4: A (0,0) -> B (0,4), B small"),
    (1, "h", 0, 4, 0, 12, "d=4: B (0,4) -> road (0,8)"),
    (1, "v", 0, 4, 0, 12, "d=4: B (0,4) -> road (4,4)"),
    (1, "v", 3, 0, 0, 4, "d=4: A (3,0) -> road (7,0)"),
])
def test_affinity_targets_and_weights_d1_and_d4(case):
    d_index, direction, y, x, target, weight, what = case
    t = _targets()
    assert _edge(t, d_index, direction, y, x) == (target, weight), what


def test_long_range_edges_d4_both_directions():
    t = _targets()
    assert _edge(t, 1, "h", 3, 0) == (0, 4)     # A (3,0) -> road (3,4)
    assert _edge(t, 1, "h", 1, 4) == (0, 12)    # B (1,4) -> road (1,8)
    assert _edge(t, 1, "h", 6, 0) == (1, 1)     # road -> road
    assert _edge(t, 1, "h", 4, 8) == (0, 0)     # crowd (4,8) -> no partner: x + 4 = 12
    assert _edge(t, 1, "h", 5, 7) == (0, 4)     # road (5,7) -> crowd (5,11)
    assert _edge(t, 1, "v", 0, 0) == (0, 4)     # A (0,0) -> road (4,0)
    assert _edge(t, 1, "v", 0, 1) == (0, 4)
    assert _edge(t, 1, "v", 1, 8) == (0, 4)     # road (1,8) -> crowd (5,8)
    assert _edge(t, 1, "v", 3, 11) == (0, 0)    # road (3,11) -> void (7,11)
    assert _edge(t, 1, "v", 2, 1) == (0, 4)     # A (2,1) -> road (6,1)
    assert _edge(t, 1, "v", 3, 6) == (1, 1)     # road (3,6) -> road (7,6)
    # The vertical partner of row 4 and beyond is outside the map: no edge.
    assert (t.affinity_weights[3, 4:] == 0).all() and (t.affinity[3, 4:] == 0).all()


def test_targets_agree_with_the_solver_edge_list():
    pan, table = _scene()
    t = _targets()
    edges = grid_edges(8, 12, (1, 4))
    a, b = pan.ravel()[edges[:, 0]], pan.ravel()[edges[:, 1]]
    void = (a == 0) | (b == 0)
    in_crowd = (a == CROWD) & (b == CROWD)
    np.testing.assert_array_equal(maps_to_edge_values(t.affinity, (1, 4)),
                                  ((a == b) & ~void & ~in_crowd).astype(np.float32))
    assert (maps_to_edge_values(t.affinity_weights, (1, 4))[void | in_crowd] == 0).all()
    mask = grid_edge_mask(8, 12, (1, 4))
    assert (t.affinity_weights[~mask] == 0).all() and (t.affinity[~mask] == 0).all()


def test_thing_and_small_factors_are_configurable():
    t = _targets(thing_weight=2.0, small_weight=5.0, small_area=1)
    assert _edge(t, 0, "h", 0, 3) == (0, 2)     # nothing small any more
    t = _targets(thing_weight=2.0, small_weight=5.0, small_area=100)
    assert _edge(t, 0, "h", 0, 3) == (0, 10)    # A and B both small
    assert t.semantic_weights[0, 0] == 5.0


def test_downsampling_takes_the_cell_centre_and_areas_are_counted_at_input():
    pan = np.zeros((9, 10), dtype=np.int64)
    pan[:] = np.arange(10)[None, :] + 100 * np.arange(9)[:, None] + 1
    small = downsample_panoptic(pan, 4)
    assert small.shape == (3, 3)              # ceil(9/4), ceil(10/4)
    assert small[0, 0] == pan[2, 2] and small[1, 1] == pan[6, 6]
    assert small[2, 2] == pan[8, 9]           # partial last cell: clamped to the border
    big = np.full((16, 16), ROAD, dtype=np.int64)
    big[4:8, 4:8] = A                          # 16 px at input, one cell at stride 4
    t = make_targets(big, segment_ids=np.array([ROAD, A, B]),
                     segment_classes=np.array([0, 1, 1]),
                     segment_iscrowd=np.zeros(3, dtype=bool), thing_classes=THING,
                     distances=(1,), stride=4, small_area=17)
    assert t.panoptic.shape == (4, 4) and t.panoptic[1, 1] == A
    assert t.semantic_weights[1, 1] == 3.0
    # Segments absent from the map (B) are dropped; areas at output and input resolution.
    assert t.segment_ids.tolist() == [ROAD, A]
    assert t.segment_area.tolist() == [15, 1] and t.segment_area_input.tolist() == [240, 16]


def test_bad_inputs():
    pan, table = _scene()
    with pytest.raises(InputError, match=r"segment ids \[5\] have no entry"):
        bad = pan.copy(); bad[0, 0] = 5
        make_targets(bad, **table, thing_classes=THING, distances=(1,))
    with pytest.raises(InputError, match="`segment_classes` must lie in"):
        make_targets(pan, **{**table, "segment_classes": np.array([0, 1, 1, 3])},
                     thing_classes=THING, distances=(1,))
    with pytest.raises(InputError, match="`distances`"):
        make_targets(pan, **table, thing_classes=THING, distances=(0,))
    with pytest.raises(InputError, match="must be an \\(H, W\\) integer array"):
        make_targets(pan.astype(float), **table, thing_classes=THING, distances=(1,))
    with pytest.raises(InputError, match="`stride`"):
        downsample_panoptic(pan, 0)


def test_inputs_not_modified_and_fast():
    import time

    pan, table = _scene()
    before = pan.copy()
    _targets()
    assert (pan == before).all()
    rng = np.random.default_rng(0)
    big = rng.integers(1, 40, size=(512 // 8, 1024 // 8)).repeat(8, 0).repeat(8, 1)
    ids = np.arange(1, 40)
    t0 = time.perf_counter()
    t = make_targets(big, segment_ids=ids, segment_classes=ids % 3,
                     segment_iscrowd=ids % 7 == 0, thing_classes=THING,
                     distances=(1, 4, 16, 32, 64, 128))
    elapsed = time.perf_counter() - t0
    assert t.affinity.shape == (12, 128, 256)
    assert elapsed < 1.0, elapsed  # a Cityscapes crop; typically ~0.05 s
