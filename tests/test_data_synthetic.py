"""make-synthetic: determinism, scene content, the COCO layout, the CLI and bad input."""

import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from copsctl.cli import app
from copsctl.data import synthetic
from copsctl.data.datasets import open_reader
from copsctl.data.synthetic import SYNTHETIC_CATEGORIES, make_synthetic, render_scene
from copsctl.errors import InputError
from copsctl.panoptic.format import read_id_png


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = make_synthetic(tmp_path / "a", train=3, val=2, size=(48, 64), seed=7)
    make_synthetic(tmp_path / "b", train=3, val=2, size=(48, 64), seed=7)
    make_synthetic(tmp_path / "c", train=3, val=2, size=(48, 64), seed=8)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert a["train"] == 3 and a["val"] == 2 and a["size"] == [48, 64]
    # Adding images does not change the earlier ones (per-image seeding).
    make_synthetic(tmp_path / "d", train=4, val=2, size=(48, 64), seed=7)
    one = tmp_path / "a" / "train2017" / "000000000002.png"
    assert one.read_bytes() == (tmp_path / "d" / "train2017" / "000000000002.png").read_bytes()


def test_layout_is_coco_panoptic_and_reads_back(tmp_path):
    make_synthetic(tmp_path / "s", train=4, val=2, size=(64, 64), seed=0)
    root = tmp_path / "s"
    for split, n in (("train", 4), ("val", 2)):
        data = json.loads((root / "annotations" / f"panoptic_{split}2017.json").read_text())
        assert len(data["images"]) == len(data["annotations"]) == n
        assert [c["id"] for c in data["categories"]] == [c.id for c in SYNTHETIC_CATEGORIES]
        ann = data["annotations"][0]
        ids = read_id_png(root / "annotations" / f"panoptic_{split}2017" / ann["file_name"])
        for seg in ann["segments_info"]:
            assert seg["area"] == int((ids == seg["id"]).sum())
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in ann["segments_info"]}
        reader = open_reader("synthetic", root, split)
        assert len(reader) == n and reader.class_table.num_classes == 8
        sample = reader[0]
        assert sample.image.shape == (64, 64, 3)
    assert not list(tmp_path.glob(".s.*"))  # no temporary left behind


def test_scenes_make_the_task_real():
    """Over a few scenes: all classes, touching same-class instances, crowd, void, sizes."""
    thing_ids = {c.id for c in SYNTHETIC_CATEGORIES if c.isthing}
    seen_cats, areas = set(), []
    touching_same_class = crowd = void = 0
    for i in range(40):
        image, pan, segs = render_scene(np.random.default_rng([0, 0, i]), height=128, width=128)
        assert image.dtype == np.uint8 and pan.shape == (128, 128)
        cat = {s.id: s.category_id for s in segs}
        seen_cats |= set(cat.values())
        areas += [s.area for s in segs if s.category_id in thing_ids and not s.iscrowd]
        crowd += any(s.iscrowd for s in segs)
        void += int((pan == 0).any())
        for a, b in ((pan[:, :-1], pan[:, 1:]), (pan[:-1], pan[1:])):
            diff = (a != b) & (a % 1000 != 0) & (b % 1000 != 0) & (a // 1000 == b // 1000)
            touching_same_class += int(diff.any())
    assert seen_cats == {c.id for c in SYNTHETIC_CATEGORIES}
    assert touching_same_class >= 10
    assert crowd >= 3 and void >= 5
    assert min(areas) < 64 and max(areas) > 1000


def test_generation_is_fast():
    import time

    t0 = time.perf_counter()
    for i in range(20):
        render_scene(np.random.default_rng([0, 0, i]), height=128, width=128)
    assert time.perf_counter() - t0 < 3.0  # ~10 ms per 128x128 scene on one core


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def boom(rng, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return render_scene(rng, **kwargs)

    monkeypatch.setattr(synthetic, "render_scene", boom)
    with pytest.raises(RuntimeError):
        make_synthetic(tmp_path / "out", train=4, val=1, size=(32, 32))
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="`size` must be at least 16x16"):
        make_synthetic(tmp_path / "x", size=(8, 64))
    with pytest.raises(InputError, match="not both 0"):
        make_synthetic(tmp_path / "x", train=0, val=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="output folder is not empty"):
        make_synthetic(tmp_path / "full", train=1, val=1)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    make_synthetic(tmp_path / "full", train=1, val=1, size=(32, 32), overwrite=True)
    assert not (tmp_path / "full" / "keep.txt").exists()
    with pytest.raises(InputError, match=r"`small_fraction` must lie in \[0, 1\], got 1.5"):
        make_synthetic(tmp_path / "y", small_fraction=1.5)
    assert not (tmp_path / "y").exists()


def test_small_fraction_sets_the_share_of_small_things_and_keeps_the_layout():
    def things(fraction, index):
        rng = np.random.default_rng([5, 0, index])
        _, pan, segments = render_scene(rng, height=128, width=128, small_fraction=fraction)
        return pan, [s.area for s in segments if s.id % 1000 and not s.iscrowd]

    small, large = [], []
    for i in range(6):
        pan_s, a_s = things(1.0, i)
        pan_l, a_l = things(0.0, i)
        small += a_s
        large += a_l
        # The same draws: the stuff layout under the things is the same scene.
        both_stuff = (pan_s % 1000 == 0) & (pan_l % 1000 == 0) & (pan_s > 0) & (pan_l > 0)
        assert both_stuff.any() and np.array_equal(pan_s[both_stuff], pan_l[both_stuff])
    assert np.median(large) > 4 * np.median(small)


def test_cli_writes_the_dataset_and_reports_bad_input_in_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["make-synthetic", "--out", str(tmp_path / "d"), "--train", "2",
                              "--val", "1", "--size", "32x48", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "wrote 2 train and 1 val images" in res.output
    assert len(list((tmp_path / "d" / "train2017").glob("*.png"))) == 2
    assert json.loads((tmp_path / "d" / "synthetic.json").read_text())["seed"] == 3
    assert json.loads((tmp_path / "d" / "synthetic.json").read_text())["small_fraction"] == 0.4
    for args, msg in ((["--size", "32by48"], "`--size` must be HxW"),
                      (["--size", "8x8"], "`size` must be at least 16x16"),
                      ([], "output folder is not empty")):
        res = runner.invoke(app, ["make-synthetic", "--out", str(tmp_path / "d"), *args])
        assert res.exit_code == 2
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and msg in lines[0], res.output
