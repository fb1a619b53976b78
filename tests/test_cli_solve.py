"""``copsctl make-costs``, ``copsctl solve`` and ``copsctl demo`` end to end, in process."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from copsctl.cli import app
from copsctl.costs.cache import CostFile
from copsctl.metrics.pq import evaluate_files
from copsctl.panoptic.format import load_panoptic_json, read_id_png, segments_from_id_map
from copsctl.panoptic.postprocess import nearest_index, segment_scores
from cli_checks import fails_in_one_line

runner = CliRunner()


def _lines(res) -> list[str]:
    return [line for line in res.output.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def costs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("costs")
    res = runner.invoke(app, ["make-costs", "--out", str(folder / "c.h5"), "--preset", "tiny",
                              "--images", "3", "--seed", "5"])
    assert res.exit_code == 0, res.output
    return folder / "c.h5"


def test_make_costs_writes_costs_and_ground_truth(costs):
    gt = costs.with_name("c_gt")
    assert (gt / "panoptic_gt.json").is_file()
    gt_set = load_panoptic_json(gt / "panoptic_gt.json", gt / "panoptic_gt")
    with CostFile(costs) as cf:
        assert len(cf) == 3
        assert [a.image_id for a in gt_set.annotations] == cf.image_ids
        assert cf.synthetic == {"preset": "tiny", "num_images": 3, "seed": 5,
                                "difficulty": 0.0}
        for a, size in zip(gt_set.annotations, cf.image_sizes.tolist()):
            ids = read_id_png(gt_set.png_dir / a.file_name, expected_size=tuple(size))
            cat_of = {s.id: s.category_id for s in a.segments}
            assert [s.to_json() for s in segments_from_id_map(ids, cat_of)] == \
                [s.to_json() for s in a.segments]


def test_solve_end_to_end(costs, tmp_path):
    out = tmp_path / "pred"
    res = runner.invoke(app, ["solve", str(costs), "--out", str(out), "--workers", "2",
                              "--json", str(tmp_path / "summary.json")])
    assert res.exit_code == 0, res.output
    assert "copsctl solve: 3 images" in res.output
    assert sorted(p.name for p in out.iterdir()) == [".copsctl-output.json", "panoptic_pred",
                                                     "panoptic_pred.json", "recipe.yaml",
                                                     "summary.json"]
    with CostFile(costs) as cf:
        assert yaml.safe_load((out / "recipe.yaml").read_text()) == cf.recipe.to_dict()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == json.loads((out / "summary.json").read_text())
    # defaults come from the cost file's recipe (tiny preset: 16 / 64)
    assert (summary["thing_area"], summary["stuff_area"]) == (16, 64)
    assert summary["images"] == 3 and summary["workers"] == 2
    assert summary["seconds_per_image_solve"] > 0 and summary["segments_per_image"] > 0

    pred = load_panoptic_json(out / "panoptic_pred.json", out / "panoptic_pred")
    raw = json.loads((out / "panoptic_pred.json").read_text())
    with CostFile(costs) as cf:
        assert [c.id for c in pred.categories] == [c.id for c in cf.categories]
        assert [im["id"] for im in raw["images"]] == cf.image_ids
        assert len(list((out / "panoptic_pred").glob("*.png"))) == 3
        for im, ann, size in zip(raw["images"], pred.annotations, cf.image_sizes.tolist()):
            assert [im["height"], im["width"]] == size
            ids = read_id_png(pred.png_dir / ann.file_name, expected_size=tuple(size))
            # PNG ids and JSON segments_info agree, with the right areas and boxes
            assert sorted(set(np.unique(ids).tolist()) - {0}) == sorted(s.id for s in ann.segments)
            cat_of = {s.id: s.category_id for s in ann.segments}
            assert [s.to_json() for s in segments_from_id_map(ids, cat_of)] == \
                [{k: v for k, v in s.to_json().items() if k != "score"} for s in ann.segments]
            for s in ann.segments:
                isthing = pred.category_map()[s.category_id].isthing
                assert s.area >= (16 if isthing else 64)
        # every segment's score is the mean class probability over its mask at cost
        # resolution (the grid is upsampled, so the first output pixel of each cost pixel
        # gives back the cost-resolution map)
        class_index = {c.id: k for k, c in enumerate(cf.categories)}
        for i, (im, ann) in enumerate(zip(raw["annotations"], pred.annotations)):
            node_costs, _, meta = cf.read(i)
            (h, w), (H, W) = meta["cost_size"], meta["image_size"]
            ids = read_id_png(pred.png_dir / ann.file_name)
            rows = np.searchsorted(nearest_index(h, H), np.arange(h))
            cols = np.searchsorted(nearest_index(w, W), np.arange(w))
            expected = segment_scores(ids[rows[:, None], cols[None, :]],
                                      {s.id: class_index[s.category_id] for s in ann.segments},
                                      node_costs)
            scores = {s["id"]: s["score"] for s in im["segments_info"]}
            assert scores == pytest.approx(expected, abs=1e-12)
            assert all(0 < v <= 1 for v in scores.values())

    # the predictions are scored by the exact PQ against the generated ground truth
    gt = costs.with_name("c_gt")
    result = evaluate_files(gt / "panoptic_gt.json", out / "panoptic_pred.json",
                            gt / "panoptic_gt", out / "panoptic_pred")
    assert result.num_images == 3
    assert result.all.pq > 0.5


def test_threshold_options_override_the_recipe(costs, tmp_path):
    out = tmp_path / "pred"
    res = runner.invoke(app, ["solve", str(costs), "--out", str(out), "--workers", "1",
                              "--thing-area", "0", "--stuff-area", "100000"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["thing_area"], summary["stuff_area"]) == (0, 100000)
    pred = load_panoptic_json(out / "panoptic_pred.json")
    cats = pred.category_map()
    # no stuff segment is that large: only things remain
    assert all(cats[s.category_id].isthing for a in pred.annotations for s in a.segments)
    # solving again into a prediction folder replaces it
    res = runner.invoke(app, ["solve", str(costs), "--out", str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["stuff_area"] == 64


def test_set_overrides_the_stored_recipe_and_is_recorded(costs, tmp_path):
    out = tmp_path / "pred"
    res = runner.invoke(app, ["solve", str(costs), "--out", str(out), "--workers", "1",
                              "--set", "data.stuff_area_threshold=100000",
                              "--set", "solver.precluster_max_size=1"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stuff_area"] == 100000 and summary["thing_area"] == 16
    assert summary["solver_options"]["precluster_max_size"] == 1
    assert summary["overrides"] == ["data.stuff_area_threshold=100000",
                                    "solver.precluster_max_size=1"]
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["data"]["stuff_area_threshold"] == 100000
    assert recipe["solver"]["precluster_max_size"] == 1
    # the rest of the stored recipe is kept
    with CostFile(costs) as cf:
        stored = cf.recipe.to_dict()
    stored["data"]["stuff_area_threshold"] = 100000
    stored["solver"]["precluster_max_size"] = 1
    assert recipe == stored and recipe["model"]["distances"] == [1, 2, 4]
    # an explicit option still wins over --set
    res = runner.invoke(app, ["solve", str(costs), "--out", str(out), "--workers", "1",
                              "--set", "data.stuff_area_threshold=100000", "--stuff-area", "7"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["stuff_area"] == 7

    # keys solving does not read, unknown keys and bad values: exit 2, nothing replaced
    stamp = (out / "summary.json").stat().st_mtime_ns
    for text, msg in (("train.lr=1", "copsctl solve reads only solver.*"),
                      ("solver.nope=1", "unknown recipe key 'solver.nope'"),
                      ("solver.precluster_max_size=0", "must be >= 1"),
                      ("data.thing_area_threshold=big", "must be an int")):
        res = runner.invoke(app, ["solve", str(costs), "--out", str(out), "--set", text])
        fails_in_one_line(res, msg)
    assert (out / "summary.json").stat().st_mtime_ns == stamp


def test_bad_cost_files_exit_2_and_write_nothing(costs, tmp_path):
    out = tmp_path / "pred"
    res = runner.invoke(app, ["solve", str(tmp_path / "missing.h5"), "--out", str(out)])
    fails_in_one_line(res, "missing.h5: cost file does not exist")

    truncated = tmp_path / "truncated.h5"
    data = costs.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    res = runner.invoke(app, ["solve", str(truncated), "--out", str(out)])
    fails_in_one_line(res, "truncated.h5: not a readable HDF5 file")

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(2)
    res = runner.invoke(app, ["solve", str(foreign), "--out", str(out)])
    fails_in_one_line(res, "foreign.h5: not a copsctl cost file")

    newer = tmp_path / "newer.h5"
    newer.write_bytes(data)
    with h5py.File(newer, "a") as f:
        f.attrs["version"] = 7
    res = runner.invoke(app, ["solve", str(newer), "--out", str(out)])
    fails_in_one_line(res, "cost file schema version 7 is not supported")

    # an image whose costs hold NaN: the error names the image, and nothing is written
    broken = tmp_path / "broken.h5"
    broken.write_bytes(data)
    with h5py.File(broken, "a") as f:
        ds = f["images/000002/node_costs"]
        arr = ds[()]
        arr[1, 2, 3] = np.nan
        ds[...] = arr
        bad_id = json.loads(f["index/image_id"][2])
    res = runner.invoke(app, ["solve", str(broken), "--out", str(out), "--workers", "1"])
    fails_in_one_line(res, f"image {bad_id!r}: 'images/000002/node_costs' must be finite")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "broken.h5", "foreign.h5", "newer.h5", "truncated.h5"]  # no temporaries left


def test_bad_options_exit_2_and_write_nothing(costs, tmp_path):
    out = tmp_path / "pred"
    for args, msg in ((["--workers", "0"], "--workers must be at least 1"),
                      (["--thing-area", "-1"], "--thing-area must be a non-negative number"),
                      (["--stuff-area", "nan"], "--stuff-area must be a non-negative number")):
        res = runner.invoke(app, ["solve", str(costs), "--out", str(out), *args])
        fails_in_one_line(res, msg)
        assert not out.exists()

    # a non-empty folder that is not a prediction folder is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = runner.invoke(app, ["solve", str(costs), "--out", str(mine)])
    fails_in_one_line(res, "is not an earlier output of copsctl solve")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    res = runner.invoke(app, ["solve", str(costs), "--out", str(a_file)])
    fails_in_one_line(res, "exists and is not a folder")

    res = runner.invoke(app, ["solve", str(costs), "--out", str(out), "--json",
                              str(out / "s.json")])
    fails_in_one_line(res, "must not lie inside --out")
    assert not out.exists()


def test_make_costs_bad_input(tmp_path):
    for args, msg in ((["--preset", "nope"], "`preset` must be one of"),
                      (["--images", "0"], "`num_images` must be at least 1"),
                      (["--difficulty", "2"], "`difficulty` must lie in [0, 1]")):
        res = runner.invoke(app, ["make-costs", "--out", str(tmp_path / "c.h5"), *args])
        fails_in_one_line(res, msg)
    assert list(tmp_path.iterdir()) == []


def test_demo_solver_only_runs_and_reuses_finished_stages(tmp_path):
    # The costs-only path of `copsctl demo` (the full demo is tests/test_demo.py).
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--out", str(out), "--solver-only", "--quick",
                              "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "copsctl demo --solver-only (quick)" in res.output
    metrics = json.loads((out / "metrics" / "synthetic.json").read_text())
    assert set(metrics) >= {"All", "Things", "Stuff", "per_class"}
    assert 0.0 < metrics["All"]["pq"] <= 1.0
    assert f"{100 * metrics['All']['pq']:.1f}" in res.output
    summary = out / "pred" / "synthetic" / "summary.json"
    assert json.loads(summary.read_text())["images"] == 6
    stamp = summary.stat().st_mtime_ns

    res = runner.invoke(app, ["demo", "--out", str(out), "--solver-only", "--quick",
                              "--workers", "1", "--json", str(tmp_path / "demo.json")])
    assert res.exit_code == 0, res.output
    assert "reused: synthetic-costs, synthetic-solve, synthetic-evaluate" in res.output
    assert summary.stat().st_mtime_ns == stamp
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["solver_only"] and report["ran"] == []
    (row,) = report["stages"].values()
    assert row["pq"]["All"] == metrics["All"]

    # --set has no recipe to override in the costs-only path
    res = runner.invoke(app, ["demo", "--out", str(out), "--solver-only", "--set",
                              "train.lr=1"])
    fails_in_one_line(res, "--solver-only runs no recipe")

    # a folder that is not a demo folder is refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("x")
    res = runner.invoke(app, ["demo", "--out", str(other), "--quick"])
    fails_in_one_line(res, "is not a copsctl demo folder")

def test_evaluate_by_the_folder_of_a_make_costs_solve_names_the_missing_dataset(costs, tmp_path):
    """make-costs stores a real recipe, which names no dataset: evaluating the solve folder
    by its recipe.yaml alone is one line saying so (the ground truth is beside the costs)."""
    out = tmp_path / "pred"
    assert runner.invoke(app, ["solve", str(costs), "--out", str(out), "--workers", "1"]
                         ).exit_code == 0
    res = runner.invoke(app, ["evaluate", "--pred", str(out)])
    fails_in_one_line(res, "recipe.yaml", "`data.root` is empty", "--gt-json")
    gt = costs.with_name("c_gt")
    res = runner.invoke(app, ["evaluate", "--pred", str(out), "--gt-json",
                              str(gt / "panoptic_gt.json")])
    assert res.exit_code == 0, res.output
