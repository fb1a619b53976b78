"""The oracles of copsctl.benchmarks.pq_ceiling: the ground truth pushed through the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from copsctl.benchmarks.pq_ceiling import _cost_grid_segments, ceiling_rows
from copsctl.config import load_recipe
from copsctl.data.synthetic import make_synthetic
from copsctl.panoptic.format import read_id_png


def test_each_cost_pixel_takes_the_majority_segment_of_its_upsampled_block():
    # 8x8 image, 2x2 cost grid: cost pixel (r, c) is upsampled to rows 4r..4r+3, cols 4c..4c+3.
    ids = np.zeros((8, 8), np.int64)
    ids[:4, :4] = 7
    ids[:4, :1] = 9          # 4 of 16 pixels: 7 keeps the majority
    ids[:4, 4:] = 9
    ids[:2, 4:] = 0          # 8 void, 8 of segment 9: void does not vote
    ids[4:, :4] = 5          # 5 is a crowd/unknown id: not listed, so it counts as void
    ids[4:, 4:] = 7
    ids[7, 7] = 9
    seg = _cost_grid_segments(ids, np.array([9, 7]), (2, 2))
    np.testing.assert_array_equal(seg, [[1, 0], [-1, 1]])
    # At full resolution every listed pixel keeps its segment.
    full = _cost_grid_segments(ids, np.array([9, 7]), (8, 8))
    np.testing.assert_array_equal(full, np.select([ids == 9, ids == 7], [0, 1], -1))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ceiling") / "data"
    make_synthetic(root, train=1, val=3, size=(96, 128), seed=5)
    return root


def _recipe(data, *overrides):
    return load_recipe("synthetic_finetune", [f"data.root={data}", *overrides])


def test_the_full_resolution_oracle_without_rejection_scores_100(data):
    rows = dict(ceiling_rows(_recipe(data, "data.thing_area_threshold=0",
                                     "data.stuff_area_threshold=0"), "val"))
    full = rows["ground truth at full resolution, rejection"]
    assert full["PQ"] == pytest.approx(100.0)
    # The cost grid loses segment shapes (and the small segments altogether).
    grid = rows["ground truth on the cost grid, no rejection"]
    assert 0 < grid["PQ"] < 100 and grid["SQ_th"] < 100


def test_rejection_alone_costs_exactly_the_small_thing_segments(data):
    cfg = _recipe(data)
    full = dict(ceiling_rows(cfg, "val"))["ground truth at full resolution, rejection"]
    # Count from the files: a thing segment survives if its area reaches the threshold.
    meta = json.loads((data / "annotations" / "panoptic_val2017.json").read_text())
    thing = {c["id"] for c in meta["categories"] if c["isthing"]}
    kept, small = {}, {}
    for ann in meta["annotations"]:
        ids = read_id_png(data / "annotations" / "panoptic_val2017" / ann["file_name"])
        for s in ann["segments_info"]:
            if s["category_id"] in thing:
                big = int((ids == s["id"]).sum()) >= cfg.data.thing_area_threshold
                count = kept if big else small
                count[s["category_id"]] = count.get(s["category_id"], 0) + 1
    assert sum(kept.values()) and sum(small.values())
    # Kept segments are exact (IoU 1), rejected ones are misses: per class
    # RQ = 2 TP / (2 TP + FN), averaged over the thing classes with ground truth.
    rq = [2 * kept.get(c, 0) / (2 * kept.get(c, 0) + small.get(c, 0)) for c in kept | small]
    assert full["SQ_th"] == pytest.approx(100.0)
    assert full["RQ_th"] == pytest.approx(100.0 * np.mean(rq))


def test_bad_input_ends_a_benchmark_with_one_line_and_exit_code_2(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "missing"
    proc = subprocess.run([sys.executable, "-m", "copsctl.benchmarks.pq_ceiling", "--data",
                           str(missing)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {missing}: dataset root folder does not exist (data.root; set it with --set "
        "data.root=DIR)"]
    assert proc.stdout == ""
