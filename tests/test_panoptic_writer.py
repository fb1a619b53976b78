"""The one writer of COCO panoptic sets (copsctl.panoptic.format.PanopticWriter).

Every command that writes a set goes through it: ``make-synthetic``, ``make-costs``
(ground truth), ``solve``, ``predict`` and :func:`write_panoptic_set`. Each set written
here is read back by the evaluator: a set against itself has PQ 1 on every class it
holds, a prediction against its ground truth counts its segments, and every PNG agrees
with its segment table.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from copsctl.config import Recipe, load_recipe
from copsctl.costs.cache import CostFile
from copsctl.costs.synthetic import make_problem, synthetic_recipe, write_synthetic_costs
from copsctl.data.synthetic import make_synthetic
from copsctl.metrics.pq import PanopticPair, evaluate_arrays, evaluate_files
from copsctl.panoptic.format import (Annotation, Category, PanopticWriter, load_panoptic_json,
                                     read_id_png, segments_from_id_map, write_panoptic_set)
from copsctl.panoptic.images import predict_images
from copsctl.panoptic.solve import solve_costs

CATS = [Category(7, "road", False), Category(24, "person", True)]


def _check_set(json_path, png_dir, images: int) -> None:
    """The set loads, each PNG matches its segment table, and it scores PQ 1 on itself."""
    pset = load_panoptic_json(json_path, png_dir)
    assert len(pset.annotations) == len(pset.images) == images
    sizes = {im["id"]: (im["height"], im["width"]) for im in pset.images}
    for ann in pset.annotations:
        ids = read_id_png(png_dir / ann.file_name, expected_size=sizes[ann.image_id])
        table = segments_from_id_map(ids, {s.id: s.category_id for s in ann.segments})
        assert [(s.id, s.category_id, s.area, s.bbox) for s in table] == \
            [(s.id, s.category_id, s.area, tuple(s.bbox)) for s in ann.segments]
    result = evaluate_files(json_path, json_path, png_dir, png_dir)
    assert result.num_images == images and result.all.n > 0
    assert result.all.pq == pytest.approx(1.0)


def _prediction_scores(gt_json, gt_dir, pred_json, pred_dir, images: int):
    """A prediction set against its ground truth: every image, every predicted segment
    counted (a true or a false positive, unless it lies mostly on void)."""
    result = evaluate_files(gt_json, pred_json, gt_dir, pred_dir)
    assert result.num_images == images
    assert 0.0 <= result.all.pq <= 1.0
    counted = sum(r.tp + r.fp for r in result.per_class.values())
    listed = sum(len(a.segments) for a in load_panoptic_json(pred_json, pred_dir).annotations)
    assert 0 < counted <= listed
    return result


def _maps(shift: int):
    gt = np.full((12, 16), 1, dtype=np.int64)
    gt[2:7, 3:9] = 2
    gt[8:11, 10:15] = 3
    pred = gt.copy()
    pred[2:7, 3:5] = 1          # the first person loses a third of its pixels
    pred[8:11, 10:15] = 1        # the second one is missed
    pred[0, shift:shift + 4] = 4  # a small false positive
    return gt, pred


def test_writer_layout_round_trip_and_atomic_rewrites(tmp_path):
    ids_a = np.array([[0, 1, 1], [2, 2, 1]], dtype=np.int64)
    ids_b = np.full((4, 5), 3, dtype=np.int64)
    cat_of = {1: 7, 2: 24, 3: 7}
    writer = PanopticWriter(tmp_path / "s.json", tmp_path / "s", CATS)
    writer.add(Annotation(5, "a.png", segments_from_id_map(ids_a, cat_of)), ids_a,
               image_file_name="a.jpg")
    writer.add(Annotation("b", "b.png", segments_from_id_map(ids_b, cat_of)), ids_b)
    assert len(writer) == 2 and "a.png" in writer and "c.png" not in writer
    writer.write_json()
    text = (tmp_path / "s.json").read_text()
    assert text.endswith("}\n") and text.count("\n") == 1  # compact, one line
    data = json.loads(text)
    assert list(data) == ["images", "annotations", "categories"]
    assert data["images"] == [{"id": 5, "file_name": "a.jpg", "height": 2, "width": 3},
                              {"id": "b", "file_name": "b.png", "height": 4, "width": 5}]
    assert np.array_equal(read_id_png(tmp_path / "s" / "a.png"), ids_a)
    _check_set(tmp_path / "s.json", tmp_path / "s", images=2)
    writer.write_json(newline=False)
    assert (tmp_path / "s.json").read_text() == text[:-1]

    # In place (predict): `info` first, each write lists every image so far, and no
    # temporary is left behind.
    live = PanopticWriter(tmp_path / "p.json", tmp_path / "p", CATS, info={"k": 1},
                          atomic=True)
    live.add(Annotation(5, "a.png", segments_from_id_map(ids_a, cat_of)), ids_a)
    live.write_json()
    first = json.loads((tmp_path / "p.json").read_text())
    assert list(first) == ["info", "images", "annotations", "categories"]
    assert first["info"] == {"k": 1} and len(first["annotations"]) == 1
    live.write_png("b.png", ids_b)
    assert "b.png" not in live  # written, not listed yet
    live.record({"id": "b", "file_name": "b.jpg", "height": 4, "width": 5},
                Annotation("b", "b.png", segments_from_id_map(ids_b, cat_of)).to_json())
    live.write_json()
    assert len(json.loads((tmp_path / "p.json").read_text())["annotations"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "p.json", "s", "s.json"]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["a.png", "b.png"]
    _check_set(tmp_path / "p.json", tmp_path / "p", images=2)


def test_write_panoptic_set_reads_back_as_the_arrays_it_was_given(tmp_path):
    pairs, gt_anns, pr_anns, gt_maps, pr_maps = [], [], [], [], []
    for i in range(2):
        gt, pred = _maps(i)
        gcat, pcat = {1: 7, 2: 24, 3: 24}, {1: 7, 2: 24, 4: 24}
        gs, ps = segments_from_id_map(gt, gcat), segments_from_id_map(pred, pcat)
        pairs.append(PanopticPair(f"i{i}", gt, gs, pred, ps))
        gt_anns.append(Annotation(f"i{i}", f"i{i}.png", gs))
        pr_anns.append(Annotation(f"i{i}", f"i{i}.png", ps))
        gt_maps.append(gt)
        pr_maps.append(pred)
    write_panoptic_set(tmp_path / "gt.json", tmp_path / "gt", gt_anns, gt_maps, CATS)
    write_panoptic_set(tmp_path / "pr.json", tmp_path / "pr", pr_anns, pr_maps, CATS)
    _check_set(tmp_path / "gt.json", tmp_path / "gt", images=2)
    from_files = evaluate_files(tmp_path / "gt.json", tmp_path / "pr.json", tmp_path / "gt",
                                tmp_path / "pr")
    in_memory = evaluate_arrays(pairs, CATS)
    assert from_files.to_json() == in_memory.to_json()
    assert 0.0 < from_files.all.pq < 1.0


def test_make_synthetic_sets_evaluate(tmp_path):
    make_synthetic(tmp_path / "d", train=1, val=2, size=(32, 40), seed=1)
    notes = tmp_path / "d" / "annotations"
    for split, n in (("train2017", 1), ("val2017", 2)):
        _check_set(notes / f"panoptic_{split}.json", notes / f"panoptic_{split}", images=n)
        # make-synthetic's files end without a newline, as they always have
        assert not (notes / f"panoptic_{split}.json").read_text().endswith("\n")


@pytest.fixture(scope="module")
def synthetic_costs(tmp_path_factory):
    root = tmp_path_factory.mktemp("writer_costs")
    info = write_synthetic_costs(root / "c.h5", preset="tiny", num_images=2, seed=4)
    return root, info


def test_make_costs_ground_truth_and_solve_predictions_evaluate(synthetic_costs):
    root, info = synthetic_costs
    gt_json, gt_dir = root / "c_gt" / "panoptic_gt.json", root / "c_gt" / "panoptic_gt"
    assert (info["gt_json"], info["gt_dir"]) == (str(gt_json), str(gt_dir))
    _check_set(gt_json, gt_dir, images=2)
    # the ground truth written is the problems' own
    pset = load_panoptic_json(gt_json, gt_dir)
    for i, ann in enumerate(pset.annotations):
        gt = make_problem("tiny", seed=[4, i]).ground_truth()
        assert np.array_equal(read_id_png(gt_dir / ann.file_name), gt.ids)

    solve_costs(root / "c.h5", root / "pred", workers=1)
    pred_json, pred_dir = root / "pred" / "panoptic_pred.json", root / "pred" / "panoptic_pred"
    _check_set(pred_json, pred_dir, images=2)
    assert _prediction_scores(gt_json, gt_dir, pred_json, pred_dir, images=2).all.pq > 0.3
    data = json.loads(pred_json.read_text())
    with CostFile(root / "c.h5") as cf:
        assert [im["file_name"] for im in data["images"]] == cf.file_names
    assert all("score" in s for a in data["annotations"] for s in a["segments_info"])


def test_make_costs_recipe_reads_back_as_a_recipe(synthetic_costs):
    root, _ = synthetic_costs
    with CostFile(root / "c.h5") as cf:
        recipe = cf.recipe
        assert isinstance(recipe, Recipe)
        assert recipe == synthetic_recipe("tiny")
        assert recipe.model.distances == cf.distances
        assert cf.synthetic == {"preset": "tiny", "num_images": 2, "seed": 4,
                                "difficulty": 0.0}
    # the preset's thresholds over the code defaults
    assert (recipe.data.thing_area_threshold, recipe.data.stuff_area_threshold) == (16, 64)
    assert recipe.solver == Recipe().solver
    # solve records the recipe it used, which resolves to the same Recipe
    solve_costs(root / "c.h5", root / "pred_recipe", workers=1)
    assert load_recipe(root / "pred_recipe" / "recipe.yaml") == recipe


def test_predict_predictions_evaluate(tiny_run, tmp_path):
    data, run = tiny_run
    out = tmp_path / "pred"
    predict_images([data / "val2017"], out, run=run, device="cpu", workers=1)
    pred_json, pred_dir = out / "panoptic_pred.json", out / "panoptic_pred"
    _check_set(pred_json, pred_dir, images=2)
    notes = data / "annotations"
    _prediction_scores(notes / "panoptic_val2017.json", notes / "panoptic_val2017", pred_json,
                       pred_dir, images=2)
