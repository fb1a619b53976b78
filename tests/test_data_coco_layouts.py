"""COCO panoptic data in every layout a detectron2 user has: the official one, detectron2's
(``panoptic_val2017/`` beside ``annotations/``), and explicit paths (``coco_panoptic``);
split names taken as the folders spell them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from copsctl.cli import app
from copsctl.config import load_recipe
from copsctl.data.datasets import open_data_split, open_reader
from copsctl.errors import InputError
from panoptic_fixtures import COCO_CATEGORIES, write_coco

runner = CliRunner()


def _check(reader, expected):
    assert sorted(reader.image_ids) == sorted(expected)
    assert list(reader.class_table.category_ids) == sorted(c["id"] for c in COCO_CATEGORIES)
    for i in range(len(reader)):
        s = reader[i]
        np.testing.assert_array_equal(s.panoptic, expected[s.image_id]["map"])
        np.testing.assert_array_equal(s.semantic, expected[s.image_id]["semantic"])


@pytest.mark.parametrize("layout", ["official", "detectron2"])
def test_both_coco_layouts_read_the_same(tmp_path, layout):
    expected = write_coco(tmp_path, "val2017", layout=layout)
    png_dir = "annotations/panoptic_val2017" if layout == "official" else "panoptic_val2017"
    assert (tmp_path / png_dir).is_dir() and (tmp_path / "val2017").is_dir()
    reader = open_reader("coco", tmp_path, "val2017")
    assert reader.png_dir == tmp_path / png_dir
    _check(reader, expected)


def test_split_names_are_not_renamed(tmp_path):
    write_coco(tmp_path / "a", "val2017")
    write_coco(tmp_path / "a", "train2017")
    with pytest.raises(InputError) as exc:
        open_reader("coco", tmp_path / "a", "val")
    msg = str(exc.value)
    assert "\n" not in msg and "no split 'val'" in msg and "splits found: train2017, val2017" in msg
    # folders named `val` are read as `val`
    expected = write_coco(tmp_path / "b", "val", layout="detectron2")
    _check(open_reader("coco", tmp_path / "b", "val"), expected)
    # a PNG folder in neither place
    shutil.rmtree(tmp_path / "b" / "panoptic_val")
    with pytest.raises(InputError, match="neither annotations/panoptic_val/ nor panoptic_val/"):
        open_reader("coco", tmp_path / "b", "val")


def test_synthetic_keeps_its_train_val_names(tmp_path):
    expected = write_coco(tmp_path, "val2017")
    _check(open_reader("synthetic", tmp_path, "val"), expected)
    _check(open_reader("synthetic", tmp_path, "val2017"), expected)


def _explicit(tmp_path):
    """A COCO panoptic split scattered over folders of the user's choosing."""
    src = tmp_path / "src"
    expected = write_coco(src, "val2017")
    (tmp_path / "labels").mkdir()
    shutil.move(src / "annotations" / "panoptic_val2017.json", tmp_path / "labels" / "mine.json")
    shutil.move(src / "annotations" / "panoptic_val2017", tmp_path / "labels" / "mine")
    shutil.move(src / "val2017", tmp_path / "pictures")
    shutil.rmtree(src)
    return expected


def test_coco_panoptic_at_explicit_paths(tmp_path, monkeypatch):
    expected = _explicit(tmp_path)
    # absolute paths; the PNG folder defaults to the JSON path without .json
    r = load_recipe(None, ["data.dataset=coco_panoptic", "data.val_split=holdout",
                           f"data.val_json={tmp_path / 'labels' / 'mine.json'}",
                           f"data.val_images={tmp_path / 'pictures'}"])
    _check(open_data_split(r.data, "holdout"), expected)
    # relative to the working directory (data.root is not used), with the PNG folder named
    shutil.move(tmp_path / "labels" / "mine", tmp_path / "pngs")
    monkeypatch.chdir(tmp_path)
    r = load_recipe(None, ["data.dataset=coco_panoptic", "data.root=elsewhere",
                           "data.train_json=labels/mine.json", "data.train_images=pictures",
                           "data.train_panoptic=pngs"])
    _check(open_data_split(r.data, "train"), expected)
    with pytest.raises(InputError, match="`data.val_json` is empty; .*--set data.val_json=PATH"):
        open_data_split(r.data, "val")
    with pytest.raises(InputError, match="split 'test' is neither data.train_split"):
        open_data_split(r.data, "test")


def test_evaluate_against_a_coco_panoptic_recipe(tmp_path):
    _explicit(tmp_path)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"data:\n  dataset: coco_panoptic\n  val_json: {tmp_path}/labels/mine.json\n"
                      f"  val_images: {tmp_path}/pictures\n")
    out = tmp_path / "pq.json"
    # the ground truth evaluated against itself
    res = runner.invoke(app, ["evaluate", "--recipe", str(recipe), "--pred-json",
                              str(tmp_path / "labels" / "mine.json"), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["All"]["pq"] == 1.0
    res = runner.invoke(app, ["check-data", "--recipe", str(recipe), "--split", "val"])
    assert res.exit_code == 0, res.output
    assert "mine.json: all 2 images and labels read" in res.output.replace("\n", "")


def test_missing_root_points_at_set_data_root(tmp_path):
    res = runner.invoke(app, ["evaluate", "--recipe", "cityscapes_pretrain", "--set",
                              f"data.root={tmp_path / 'nowhere'}", "--pred-json", "p.json"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "nowhere: dataset root folder does not exist (data.root; set " \
        "it with --set data.root=DIR)" in lines[0], res.stderr


def test_json_of_evaluate_and_check_data_never_overwrites_the_dataset(tmp_path):
    """The recipe's ground truth is an input like a typed one: --json may not be its JSON
    or lie in its PNG or image folder; one line, exit 2, the dataset as it was."""
    write_coco(tmp_path, "val2017")
    gt_json = tmp_path / "annotations" / "panoptic_val2017.json"
    before = gt_json.read_bytes()
    common = ["--recipe", "coco_pretrain", "--set", f"data.root={tmp_path}"]
    for args, words in (
            (["evaluate", *common, "--pred-json", str(gt_json), "--json", str(gt_json)],
             ["is also --gt-json"]),
            (["check-data", *common, "--split", "val2017", "--json", str(gt_json)],
             ["is also the val2017 ground truth"]),
            (["check-data", *common, "--split", "val2017", "--json",
              str(tmp_path / "val2017" / "x.json")], ["must not lie inside the val2017 images"])):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), res.stderr
    assert gt_json.read_bytes() == before and not (tmp_path / "val2017" / "x.json").exists()
