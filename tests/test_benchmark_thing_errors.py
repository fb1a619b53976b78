"""The outcome classes of copsctl.benchmarks.thing_errors, one constructed case each."""

from __future__ import annotations

import numpy as np

from copsctl.benchmarks.thing_errors import OUTCOMES, classify_things
from copsctl.panoptic.format import Segment

CAR, ROAD = 26, 7


def _seg(i, c, crowd=False):
    return Segment(i, c, 0, (0, 0, 0, 0), crowd)


def _classify(gt, gt_cats, kept, kept_cats, raw=None, raw_cats=None, min_area=8):
    raw = kept if raw is None else raw
    raw_cats = kept_cats if raw_cats is None else raw_cats
    return classify_things(gt, [_seg(i, c) for i, c in gt_cats.items()],
                           kept, [_seg(i, c) for i, c in kept_cats.items()],
                           raw, [_seg(i, c) for i, c in raw_cats.items()], {CAR}, min_area)


def _only(counts, outcome, n=1):
    assert set(counts) == set(OUTCOMES)
    assert counts == {k: (n if k == outcome else 0) for k in OUTCOMES}


def _scene():
    # Two touching cars (ids 1, 2) of 4x4 on a road (id 3) in an 8x12 image.
    gt = np.full((8, 12), 3)
    gt[2:6, 2:6] = 1
    gt[2:6, 6:10] = 2
    return gt, {1: CAR, 2: CAR, 3: ROAD}


def test_perfect_prediction_matches_every_thing():
    gt, cats = _scene()
    _only(_classify(gt, cats, gt, cats), "matched", 2)


def test_one_segment_over_two_instances_is_a_merge():
    gt, cats = _scene()
    pred = np.where(gt == 2, 1, gt)
    counts = _classify(gt, cats, pred, {1: CAR, 3: ROAD})
    # IoU 0.5 exactly with either car: not a match; the segment covers both.
    _only(counts, "merged", 2)


def test_a_segment_reaching_into_the_road_is_a_spill():
    gt, cats = _scene()
    pred = gt.copy()
    pred[0:2, 2:6] = 1
    pred[6:8, 2:6] = 1
    pred[1:7, 0:2] = 1          # car 1 grows from 16 to 36 pixels: IoU 16/36
    counts = _classify(gt, cats, pred, cats)
    assert counts["spilled"] == 1 and counts["matched"] == 1


def test_wrong_class_split_and_rejected():
    gt, cats = _scene()
    pred = gt.copy()
    pred[gt == 1] = 3                        # car 1 painted as road: wrong class
    pred[2:6, 6:8] = 4                       # car 2 in two halves of 8 px each: split
    pred[2:6, 8:10] = 5
    kept_cats = {2: CAR, 3: ROAD, 4: CAR, 5: CAR}
    counts = _classify(gt, cats, pred, kept_cats)
    assert counts["wrong class"] == 1 and counts["split"] == 1 and sum(counts.values()) == 2
    # A 12-px piece of car 2 rejected below a 16 px threshold (cars of 16 px still count).
    raw = gt.copy()
    raw[2:6, 6:9] = 6
    raw[2:6, 9:10] = 7
    kept = np.where(raw >= 6, 0, raw)
    counts = _classify(gt, cats, kept, {1: CAR, 3: ROAD}, raw, {1: CAR, 3: ROAD, 6: CAR, 7: CAR},
                       min_area=16)
    assert counts["rejected"] == 1 and counts["matched"] == 1


def test_small_and_crowd_things_and_stuff_are_not_counted():
    gt, cats = _scene()
    gt[0, 0] = 4                                   # a 1-px car
    segs = [_seg(1, CAR), _seg(2, CAR, crowd=True), _seg(3, ROAD), _seg(4, CAR)]
    counts = classify_things(gt, segs, gt, segs, gt, segs, {CAR}, 8)
    _only(counts, "matched", 1)


def test_the_command_follows_every_large_thing_of_a_trained_model(tiny_run, capsys):
    from copsctl.benchmarks.thing_errors import main

    data, run = tiny_run
    main(["--data", str(data), "--recipe", "synthetic_tiny",
          "--weights", str(run / "checkpoint.pt")])
    row = capsys.readouterr().out.strip().splitlines()[-1].split("|")[1:-1]
    things = int(row[1])
    counts = [int(cell.split()[0]) for cell in row[2:]]
    assert len(counts) == len(OUTCOMES) and things > 0 and sum(counts) == things
