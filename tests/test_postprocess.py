"""Post-processing: nearest upsampling, stuff merging, small-segment rejection, segment table."""

from __future__ import annotations

import numpy as np
import pytest

from copsctl.errors import InputError
from copsctl.panoptic.format import Category, segments_from_id_map
from copsctl.panoptic.postprocess import (nearest_index, panoptic_from_segments,
                                         panoptic_from_solution, segment_scores,
                                         upsample_nearest)

# Contiguous class index -> category: 0 road (stuff), 1 sky (stuff), 2 car (thing).
CATS = [Category(7, "road", False), Category(23, "sky", False), Category(26, "car", True)]


def _table_from_map(pred, cats=CATS):
    """The segment table recomputed from the full-resolution id map by panoptic.py."""
    cat_of = {s.id: s.category_id for s in pred.segments}
    return [s.to_json() for s in segments_from_id_map(pred.ids, cat_of)]


def test_nearest_index():
    assert nearest_index(2, 4).tolist() == [0, 0, 1, 1]
    assert nearest_index(3, 7).tolist() == [0, 0, 1, 1, 1, 2, 2]  # centres (i+.5)*3/7
    assert nearest_index(4, 2).tolist() == [1, 3]   # output centres fall at source 1.0 and 3.0
    assert nearest_index(5, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(InputError):
        nearest_index(0, 3)


def test_upsample_by_an_integer_factor_repeats_pixels():
    a = np.arange(6).reshape(2, 3)
    assert np.array_equal(upsample_nearest(a, (8, 12)), np.kron(a, np.ones((4, 4), int)))
    with pytest.raises(InputError, match="`size`"):
        upsample_nearest(a, (0, 3))
    with pytest.raises(InputError, match="`arr`"):
        upsample_nearest(np.zeros(3), (2, 2))


def test_hand_checked_prediction():
    # Cost grid 2x4, image 4x8 (factor 2). Road (class 0) appears in two separate
    # segments 0 and 3; a car (class 2) is segment 1; sky is segment 2.
    seg = np.array([[2, 2, 1, 3],
                    [0, 0, 1, 3]])
    seg_class = np.array([0, 2, 1, 0])
    pred = panoptic_from_segments(seg, seg_class, CATS, (4, 8), thing_area=0, stuff_area=0)
    # Raster order of first pixels: sky (0,0) -> 1, car (0,2) -> 2, road (0,3) -> 3.
    expected_small = np.array([[1, 1, 2, 3],
                               [3, 3, 2, 3]])
    assert pred.ids.dtype == np.int32
    assert np.array_equal(pred.ids, np.kron(expected_small, np.ones((2, 2), int)))
    table = [s.to_json() for s in pred.segments]
    assert table == [
        {"id": 1, "category_id": 23, "area": 8, "bbox": [0, 0, 4, 2], "iscrowd": 0},
        {"id": 2, "category_id": 26, "area": 8, "bbox": [4, 0, 2, 4], "iscrowd": 0},
        # the two road regions are one stuff segment: area 4*4, bbox over both
        {"id": 3, "category_id": 7, "area": 16, "bbox": [0, 0, 8, 4], "iscrowd": 0},
    ]
    assert pred.num_rejected == 0 and pred.rejected_area == 0


def test_without_stuff_merging_each_region_is_a_segment():
    seg = np.array([[2, 2, 1, 3],
                    [0, 0, 1, 3]])
    pred = panoptic_from_segments(seg, np.array([0, 2, 1, 0]), CATS, (2, 4), thing_area=0,
                                  stuff_area=0, merge_stuff=False)
    assert [(s.id, s.category_id, s.area) for s in pred.segments] == [
        (1, 23, 2), (2, 26, 2), (3, 7, 2), (4, 7, 2)]


def test_thing_instances_stay_separate():
    seg = np.array([[0, 1], [0, 1]])
    pred = panoptic_from_segments(seg, np.array([2, 2]), CATS, (2, 2), 0, 0)
    assert [(s.id, s.category_id, s.area) for s in pred.segments] == [(1, 26, 2), (2, 26, 2)]


def test_small_segment_rejection_uses_full_resolution_areas_and_per_kind_thresholds():
    # Factor 4: one cost pixel = 16 image pixels.
    seg = np.array([[0, 0, 0, 1],
                    [0, 0, 0, 2],
                    [3, 3, 3, 3]])
    seg_class = np.array([0, 2, 2, 1])  # road 6 px, car 1 px, car 1 px, sky 4 px
    # thing threshold 16 keeps the 16-pixel cars (area == threshold is kept);
    # stuff threshold 65 rejects the 64-pixel sky but keeps the 96-pixel road.
    pred = panoptic_from_segments(seg, seg_class, CATS, (12, 16), thing_area=16, stuff_area=65)
    assert [(s.category_id, s.area) for s in pred.segments] == [(7, 96), (26, 16), (26, 16)]
    assert pred.num_rejected == 1 and pred.rejected_area == 64
    assert (pred.ids[8:, :] == 0).all()  # the sky row became void
    assert _table_from_map(pred) == [s.to_json() for s in pred.segments]
    # thing threshold 17 rejects both cars; ids stay 1..M without gaps
    pred = panoptic_from_segments(seg, seg_class, CATS, (12, 16), thing_area=17, stuff_area=0)
    assert [(s.id, s.category_id) for s in pred.segments] == [(1, 7), (2, 23)]
    assert pred.num_rejected == 2 and pred.rejected_area == 32
    assert set(np.unique(pred.ids).tolist()) == {0, 1, 2}


@pytest.mark.parametrize("cost_size, image_size", [((5, 7), (13, 16)), ((6, 9), (24, 36)),
                                                   ((8, 8), (5, 3)), ((4, 6), (4, 6))])
def test_table_matches_the_full_resolution_map(cost_size, image_size):
    rng = np.random.default_rng(sum(cost_size) + sum(image_size))
    seg = rng.integers(0, 6, size=cost_size)
    seg_class = rng.integers(0, 3, size=6)
    pred = panoptic_from_segments(seg, seg_class, CATS, image_size, thing_area=3, stuff_area=5)
    assert pred.ids.shape == image_size
    assert _table_from_map(pred) == [s.to_json() for s in pred.segments]
    # every kept segment passed its threshold, in full-resolution pixels
    for s in pred.segments:
        assert s.area >= (3 if s.category_id == 26 else 5)
    # the map is the nearest upsampling of the small map, up to renumbering and rejection
    up = upsample_nearest(seg, image_size)
    for s in pred.segments:
        sources = np.unique(up[pred.ids == s.id])
        assert all(CATS[seg_class[v]].id == s.category_id for v in sources)


def test_void_input_pixels_stay_void():
    seg = np.array([[-1, 0], [0, 0]])
    pred = panoptic_from_segments(seg, np.array([1]), CATS, (2, 2), 0, 0)
    assert pred.ids.tolist() == [[0, 1], [1, 1]]
    assert pred.segments[0].area == 3


def test_from_solution():
    labels = np.array([0, 0, 2, 2, 0, 0, 2, 1])
    segments = np.array([0, 0, 1, 2, 3, 3, 1, 4])
    pred = panoptic_from_solution(labels, segments, (2, 4), CATS, (4, 8), thing_area=0,
                                  stuff_area=0)
    # road segments 0 and 3 merge; cars 1 and 2 stay apart; sky alone
    assert [(s.id, s.category_id, s.area) for s in pred.segments] == [
        (1, 7, 16), (2, 26, 8), (3, 26, 4), (4, 23, 4)]
    assert _table_from_map(pred) == [s.to_json() for s in pred.segments]


def test_bad_input():
    with pytest.raises(InputError, match="segment 0 holds more than one class"):
        panoptic_from_solution(np.array([0, 1]), np.array([0, 0]), (1, 2), CATS, (2, 4))
    with pytest.raises(InputError, match=r"must have shape \(6,\) for a 2x3 grid"):
        panoptic_from_solution(np.zeros(4, int), np.zeros(4, int), (2, 3), CATS, (4, 6))
    with pytest.raises(InputError, match="`segment_class` must index `categories`"):
        panoptic_from_segments(np.zeros((2, 2), int), np.array([3]), CATS, (2, 2))
    with pytest.raises(InputError, match="`segment_map` holds segment 1"):
        panoptic_from_segments(np.ones((2, 2), int), np.array([0]), CATS, (2, 2))
    with pytest.raises(InputError, match="`segment_map`"):
        panoptic_from_segments(np.zeros((2, 2)), np.array([0]), CATS, (2, 2))
    with pytest.raises(InputError, match="`image_size`"):
        panoptic_from_segments(np.zeros((2, 2), int), np.array([0]), CATS, (2, -1))
    with pytest.raises(InputError, match="`categories`"):
        panoptic_from_segments(np.zeros((2, 2), int), np.array([0]), [], (2, 2))


def test_segment_scores_are_mean_class_probabilities_at_cost_resolution():
    # 2x3 grid, K=3; segment 5 (class 2) covers three pixels, segment 9 (class 0) two,
    # the last pixel is void (0, not listed).
    seg = np.array([[5, 5, 9],
                    [5, 9, 0]])
    prob = np.array([[[0.1, 0.2, 0.6], [0.3, 0.8, 0.2]],
                     [[0.1, 0.2, 0.2], [0.3, 0.1, 0.2]],
                     [[0.8, 0.6, 0.2], [0.4, 0.1, 0.6]]])
    costs = -np.log(prob)
    before = costs.copy()
    scores = segment_scores(seg, {9: 0, 5: 2}, costs.astype(np.float32))
    assert scores == pytest.approx({5: (0.8 + 0.6 + 0.4) / 3, 9: (0.6 + 0.8) / 2}, rel=1e-6)
    assert list(scores) == [5, 9] and all(isinstance(v, float) for v in scores.values())
    assert np.array_equal(costs, before)
    assert segment_scores(seg, {}, costs) == {}
    # a negative cost (not a log probability) is clipped: scores stay in (0, 1]
    assert segment_scores(seg, {9: 0}, costs - 5.0) == {9: 1.0}


def test_prediction_keeps_the_ids_at_cost_resolution():
    seg = np.array([[2, 2, 1, 3],
                    [0, 0, 1, 3]])
    pred = panoptic_from_segments(seg, np.array([0, 2, 1, 0]), CATS, (4, 8), thing_area=0,
                                  stuff_area=0)
    assert np.array_equal(pred.cost_ids, [[1, 1, 2, 3], [3, 3, 2, 3]])
    assert np.array_equal(upsample_nearest(pred.cost_ids, (4, 8)), pred.ids)


def test_segment_scores_bad_input():
    seg = np.array([[1, 2]])
    costs = np.zeros((2, 1, 2))
    with pytest.raises(InputError, match="`node_costs`"):
        segment_scores(seg, {1: 0}, np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="`segment_map`"):
        segment_scores(seg.astype(float), {1: 0}, costs)
    with pytest.raises(InputError, match=r"class indices in \[0, 2\)"):
        segment_scores(seg, {1: 2}, costs)
    with pytest.raises(InputError, match="segment 7, which has no pixel"):
        segment_scores(seg, {1: 0, 7: 1}, costs)
