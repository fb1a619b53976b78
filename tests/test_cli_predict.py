"""``copsctl predict`` and ``copsctl export`` end to end on a tiny pre-trained model, in process.

The tiny recipe (``synthetic_tiny``, 4 iterations) on a 4 + 2 image synthetic dataset;
the inputs are generated JPEGs of mixed sizes (one grey), an RGBA PNG and the dataset's
own validation images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from copsctl.cli import app
from copsctl.costs.cache import CostFile
from copsctl.panoptic.format import read_id_png, segments_from_id_map
from copsctl.panoptic.images import collect_inputs, predict_images
from copsctl.errors import InputError
from copsctl.train.checkpoint import load_checkpoint
from cli_checks import fails_in_one_line

runner = CliRunner()

# (name, (height, width), mode): sizes of other aspects than the 64x64 training images.
_INPUTS = (("street.jpg", (50, 96), "RGB"), ("tall.jpg", (90, 40), "RGB"),
           ("grey.jpeg", (33, 47), "L"), ("000000000139.jpg", (128, 128), "RGB"))


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _ok(res):
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def data(tiny_run):
    return tiny_run[0]


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run[1]


@pytest.fixture(scope="module")
def images(data, tmp_path_factory):
    """A folder of generated JPEGs of mixed sizes and a single RGBA PNG beside it."""
    base = tmp_path_factory.mktemp("inputs")
    folder = base / "photos"
    folder.mkdir()
    source = Image.open(sorted((data / "val2017").iterdir())[0]).convert("RGB")
    for name, (h, w), mode in _INPUTS:
        source.resize((w, h)).convert(mode).save(folder / name, quality=90)
    (folder / "notes.txt").write_text("not an image: a folder gives only its JPEGs and PNGs")
    rgba = np.dstack([np.asarray(source), np.full((64, 64), 200, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(base / "alpha.png")
    return folder, base / "alpha.png"


@pytest.fixture(scope="module")
def predicted(run, images, tmp_path_factory):
    folder, single = images
    out = tmp_path_factory.mktemp("pred") / "out"
    res = _ok(_invoke("predict", "--run", run, folder, single, "--out", out, "--overlay",
                      "--workers", 2, "--batch-size", 2))
    assert "predicted 5 images" in res.output
    return out


def test_one_png_per_input_at_its_size(predicted, images):
    folder, single = images
    pngs = sorted(p.name for p in (predicted / "panoptic_pred").iterdir())
    assert pngs == sorted([f"{n.rsplit('.', 1)[0]}.png" for n, _, _ in _INPUTS] + ["alpha.png"])
    for name, size, _ in _INPUTS:
        stem = name.rsplit(".", 1)[0]
        assert read_id_png(predicted / "panoptic_pred" / f"{stem}.png").shape == size
        assert Image.open(predicted / "overlays" / f"{stem}.png").size == size[::-1]
    assert read_id_png(predicted / "panoptic_pred" / "alpha.png").shape == (64, 64)


def test_json_is_consistent_with_the_pngs(predicted):
    data = json.loads((predicted / "panoptic_pred.json").read_text())
    ids = {im["id"] for im in data["images"]}
    # Ids from the names: digits give the COCO integer id, other names the stem.
    assert ids == {"street", "tall", "grey", 139, "alpha"}
    assert {im["file_name"] for im in data["images"]} == {n for n, _, _ in _INPUTS} | {"alpha.png"}
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    categories = {c["id"] for c in data["categories"]}
    assert len(data["annotations"]) == 5
    n_segments = 0
    for ann in data["annotations"]:
        pred = read_id_png(predicted / "panoptic_pred" / ann["file_name"])
        assert pred.shape == sizes[ann["image_id"]]
        info = {s["id"]: s for s in ann["segments_info"]}
        from_png = segments_from_id_map(pred, {k: s["category_id"] for k, s in info.items()})
        assert sorted(info) == [s.id for s in from_png]
        for s in from_png:
            assert info[s.id]["area"] == s.area
            assert info[s.id]["bbox"] == list(s.bbox)
            assert info[s.id]["iscrowd"] == 0
            assert info[s.id]["category_id"] in categories
            assert 0 <= info[s.id]["score"] <= 1
        n_segments += len(info)
    assert n_segments >= 5


def test_predict_on_dataset_images_equals_dump_costs_then_solve(run, data, tmp_path):
    """At the images' own size the pipeline is the dataset one: same PNGs, same JSON."""
    pred = tmp_path / "pred"
    _ok(_invoke("predict", "--run", run, data / "val2017", "--out", pred, "--size", 64))
    costs = tmp_path / "costs.h5"
    _ok(_invoke("dump-costs", "--run", run, "--out", costs, "--storage", "float32"))
    solved = tmp_path / "solved"
    _ok(_invoke("solve", costs, "--out", solved))
    with CostFile(costs) as cf:
        names = [n.rsplit(".", 1)[0] + ".png" for n in cf.file_names]
    for name in names:
        np.testing.assert_array_equal(read_id_png(pred / "panoptic_pred" / name),
                                      read_id_png(solved / "panoptic_pred" / name))
    a = json.loads((pred / "panoptic_pred.json").read_text())
    b = json.loads((solved / "panoptic_pred.json").read_text())
    key = {x["image_id"]: x["segments_info"] for x in b["annotations"]}
    assert {x["image_id"]: x["segments_info"] for x in a["annotations"]} == key
    # copsctl evaluate reads the folder as it reads solve's.
    res = _ok(_invoke("evaluate", "--gt-json", data / "annotations" / "panoptic_val2017.json",
                      "--pred", pred, "--json", tmp_path / "pq_pred.json"))
    _ok(_invoke("evaluate", "--gt-json", data / "annotations" / "panoptic_val2017.json",
                "--pred", solved, "--json", tmp_path / "pq_solved.json"))
    assert "panoptic quality, 2 images" in res.output
    assert (json.loads((tmp_path / "pq_pred.json").read_text())
            == json.loads((tmp_path / "pq_solved.json").read_text()))


def test_rerun_skips_finished_images(predicted, run, images):
    folder, single = images
    before = {p.name: p.stat().st_mtime_ns for p in (predicted / "panoptic_pred").iterdir()}
    res = _ok(_invoke("predict", "--run", run, folder, single, "--out", predicted, "--overlay"))
    assert "predicted 0 images, 5 already done" in res.output
    assert {p.name: p.stat().st_mtime_ns for p in (predicted / "panoptic_pred").iterdir()} \
        == before
    # Other settings into the same folder are refused, not mixed in.
    line = fails_in_one_line(_invoke("predict", "--run", run, folder, "--out", predicted,
                                      "--size", 96), "size", "another --out")
    assert str(predicted) in line


def test_a_removed_png_is_predicted_again(run, images, tmp_path):
    folder, _ = images
    out = tmp_path / "out"
    _ok(_invoke("predict", "--run", run, folder, "--out", out))
    first = read_id_png(out / "panoptic_pred" / "tall.png")
    (out / "panoptic_pred" / "tall.png").unlink()
    res = _ok(_invoke("predict", "--run", run, folder, "--out", out))
    assert "predicted 1 images, 3 already done" in res.output
    np.testing.assert_array_equal(read_id_png(out / "panoptic_pred" / "tall.png"), first)


def test_corrupt_image_exits_2_and_keeps_finished(run, images, tmp_path):
    folder, _ = images
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("street.jpg", "tall.jpg"):
        (mixed / name).write_bytes((folder / name).read_bytes())
    (mixed / "broken.jpg").write_bytes((folder / "street.jpg").read_bytes()[:300])
    out = tmp_path / "out"
    # Sorted order: broken.jpg, street.jpg, tall.jpg; the single street.jpg goes first.
    fails_in_one_line(_invoke("predict", "--run", run, folder / "street.jpg", mixed / "broken.jpg",
                               mixed / "tall.jpg", "--out", out), "broken.jpg",
                       "not a readable image")
    data = json.loads((out / "panoptic_pred.json").read_text())
    assert [im["id"] for im in data["images"]] == ["street"]
    assert sorted(p.name for p in (out / "panoptic_pred").iterdir()) == ["street.png"]
    # --skip-bad goes on and lists the file at the end; street is already done.
    res = _ok(_invoke("predict", "--run", run, mixed, "--out", out, "--skip-bad"))
    assert "predicted 1 images, 1 already done" in res.output
    assert "skipped:" in res.output and "broken.jpg" in res.output
    data = json.loads((out / "panoptic_pred.json").read_text())
    assert sorted(im["id"] for im in data["images"]) == ["street", "tall"]


def test_a_new_image_under_a_finished_name_is_predicted(run, images, tmp_path):
    """Finished means the same file name and size: another picture called tall.jpg (a new
    camera's IMG_0001.jpg) is predicted again, not given the old one's prediction."""
    folder, _ = images
    out, other = tmp_path / "out", tmp_path / "other"
    _ok(_invoke("predict", "--run", run, folder / "tall.jpg", "--out", out))
    other.mkdir()
    Image.open(folder / "street.jpg").save(other / "tall.jpg")
    res = _ok(_invoke("predict", "--run", run, other / "tall.jpg", "--out", out))
    assert "predicted 1 images" in res.output
    entry, = json.loads((out / "panoptic_pred.json").read_text())["images"]
    assert (entry["height"], entry["width"]) == (50, 96)
    assert read_id_png(out / "panoptic_pred" / "tall.png").shape == (50, 96)


def test_a_failure_before_the_first_image_leaves_no_folder(run, images, tmp_path):
    """A new --out that nothing was finished in is removed on an error, so the next run
    (with other settings too) starts afresh; a folder of someone else's PNGs without
    predict's JSON is refused; --out under a file is a one-line error."""
    folder, _ = images
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((folder / "street.jpg").read_bytes()[:300])
    out = tmp_path / "out"
    fails_in_one_line(_invoke("predict", "--run", run, broken, "--out", out),
                      "not a readable image")
    assert not out.exists()
    foreign = tmp_path / "foreign"
    (foreign / "panoptic_pred").mkdir(parents=True)
    (foreign / "panoptic_pred" / "tall.png").write_bytes(b"someone else's")
    fails_in_one_line(_invoke("predict", "--run", run, folder / "tall.jpg", "--out", foreign),
                      "holds no panoptic_pred.json")
    assert (foreign / "panoptic_pred" / "tall.png").read_bytes() == b"someone else's"
    (tmp_path / "file").write_text("x")
    fails_in_one_line(_invoke("predict", "--run", run, folder / "tall.jpg", "--out",
                              tmp_path / "file" / "sub"), "--out", "is not a folder")


def test_interrupt_keeps_finished_images_listed(run, images, tmp_path):
    folder, _ = images
    out = tmp_path / "out"

    def stop_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_images([folder], out, run=run, batch_size=1, workers=1, progress=stop_after_two)
    data = json.loads((out / "panoptic_pred.json").read_text())
    listed = [a["file_name"] for a in data["annotations"]]
    # The interrupted image and whatever the solver thread had finished besides it.
    assert 2 <= len(listed) <= 4
    assert sorted(p.name for p in (out / "panoptic_pred").iterdir()) == sorted(listed)
    summary = predict_images([folder], out, run=run, batch_size=1, workers=1)
    assert (summary["images"], summary["skipped"]) == (4 - len(listed), len(listed))


def test_export_then_predict_is_identical(run, images, tmp_path, predicted):
    folder, single = images
    model = tmp_path / "model.pt"
    res = _ok(_invoke("export", "--run", run, "--out", model))
    assert "wrote" in res.output
    ckpt = load_checkpoint(model)
    full = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["kind"] == "model" and "optimizer" not in ckpt and "rng" not in ckpt
    assert ckpt["categories"] == full["categories"] and ckpt["recipe"] == full["recipe"]
    assert set(ckpt["model"]) == set(full["model"])  # cost_transform included
    assert model.stat().st_size < (run / "checkpoint.pt").stat().st_size
    out = tmp_path / "out"
    _ok(_invoke("predict", "--weights", model, folder, single, "--out", out, "--overlay",
                "--workers", 2, "--batch-size", 2))
    for png in (predicted / "panoptic_pred").iterdir():
        assert (out / "panoptic_pred" / png.name).read_bytes() == png.read_bytes()
    a = json.loads((out / "panoptic_pred.json").read_text())
    b = json.loads((predicted / "panoptic_pred.json").read_text())
    assert a["annotations"] == b["annotations"] and a["images"] == b["images"]
    # dump-costs reads a model file as it reads a checkpoint.
    costs = tmp_path / "costs.h5"
    _ok(_invoke("dump-costs", "--weights", model, "--out", costs, "--limit", 1))
    with CostFile(costs) as cf:
        assert len(cf) == 1


def test_finetune_starts_from_a_model_file(run, data, tmp_path):
    model = tmp_path / "model.pt"
    _ok(_invoke("export", "--weights", run / "checkpoint.pt", "--out", model))
    tiny = ["--recipe", "synthetic_tiny", "--set", f"data.root={data}", "--set",
            "train.iterations=1", "--set", "train.warmup_iters=1", "--set", "train.val_images=1"]
    _ok(_invoke("finetune", *tiny, "--weights", model, "--out", tmp_path / "ft", "--json",
                tmp_path / "ft.json"))
    assert json.loads((tmp_path / "ft.json").read_text())["iteration"] == 1


def test_bad_arguments_fail_in_one_line(run, images, tmp_path):
    folder, _ = images
    out = tmp_path / "out"
    fails_in_one_line(_invoke("predict", "--run", run, tmp_path / "nope.jpg", "--out", out),
                       "nope.jpg", "no such file")
    fails_in_one_line(_invoke("predict", "--run", run, str(tmp_path / "*.jpg"), "--out", out),
                       "pattern matches no")
    fails_in_one_line(_invoke("predict", folder, "--out", out), "--run")
    fails_in_one_line(_invoke("predict", "--run", run, folder, "--out", out, "--workers", 0),
                       "--workers")
    fails_in_one_line(_invoke("predict", "--weights", tmp_path / "none.pt", folder,
                               "--out", out), "none.pt")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("user data")
    fails_in_one_line(_invoke("predict", "--run", run, folder, "--out", busy), "not empty")
    fails_in_one_line(_invoke("export", "--run", tmp_path / "norun", "--out", tmp_path / "m.pt"),
                       "norun")


def test_collect_inputs_folders_globs_and_duplicate_stems(images, tmp_path):
    folder, single = images
    got = collect_inputs([folder, str(folder / "*.jp*g"), single])
    assert [im.stem for im in got] == sorted(n.rsplit(".", 1)[0] for n, _, _ in _INPUTS) + ["alpha"]
    (tmp_path / "street.png").write_bytes(single.read_bytes())
    with pytest.raises(InputError, match="same name stem 'street'"):
        collect_inputs([folder, tmp_path / "street.png"])


def test_image_ids_duplicates_and_hidden_files(images, tmp_path):
    """COCO digits and Cityscapes' _leftImg8bit give the ground truth's ids; two names of
    one id are refused; hidden files (macOS ._NAME.jpg) in a folder are skipped, as a
    pattern skips them; a stem of non-ASCII digits is a string id, not a crash."""
    _, single = images
    photo = single.read_bytes()
    named = tmp_path / "named"
    named.mkdir()
    for name in ("000000000285.png", "frankfurt_000000_000294_leftImg8bit.png", "²³.png",
                 "._000000000285.png"):
        (named / name).write_bytes(photo)
    got = collect_inputs([named])
    assert [im.image_id for im in got] == [285, "frankfurt_000000_000294", "²³"]
    (tmp_path / "285.png").write_bytes(photo)
    with pytest.raises(InputError, match="same image id 285"):
        collect_inputs([named, tmp_path / "285.png"])
    (tmp_path / "frankfurt_000000_000294.png").write_bytes(photo)
    with pytest.raises(InputError, match="same image id 'frankfurt_000000_000294'"):
        collect_inputs([named, tmp_path / "frankfurt_000000_000294.png"])


def test_sixteen_bit_grey_keeps_its_high_byte(tmp_path):
    """Pillow's own RGB conversion of an I;16 PNG clips every value above 255 to white."""
    from copsctl.data.datasets import read_image

    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(1, 256).repeat(3, axis=0)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I;16")
    rgb = read_image(tmp_path / "grey16.png")
    assert rgb.shape == (3, 256, 3) and rgb.dtype == np.uint8
    assert (rgb == np.arange(256, dtype=np.uint8)[None, :, None]).all()


def test_an_oversized_image_is_a_one_line_error(tmp_path):
    """Pillow's decompression-bomb guard (not an OSError) is an InputError everywhere."""
    import struct
    import zlib

    from copsctl.data.datasets import read_image
    from copsctl.panoptic.format import read_id_png

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 30000x30000 RGB
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(bytes(10))) + chunk(b"IEND", b""))
    for read in (read_image, read_id_png):
        with pytest.raises(InputError, match="bomb.png: not a readable"):
            read(bomb)


def test_json_must_not_overwrite_an_input_image(run, images, tmp_path):
    folder, _ = images
    target = folder / "street.jpg"
    before = target.read_bytes()
    fails_in_one_line(_invoke("predict", "--run", run, folder, "--out", tmp_path / "o",
                              "--json", target), "--json", "is also INPUT")
    fails_in_one_line(_invoke("predict", "--run", run, folder, "--out", tmp_path / "o",
                              "--json", tmp_path / "o" / "s.json"), "must not lie inside --out")
    assert target.read_bytes() == before and not (tmp_path / "o").exists()


def test_the_calibration_beside_a_run_reaches_predict_and_export(run, images, tmp_path):
    """A calibrated run (copsctl calibrate writes RUN/calibration.yaml): predict applies it,
    export carries it in the model file's recipe, and predicting from that file gives the
    same output as predicting from the calibrated run."""
    import shutil

    from copsctl.calibration import Calibration
    from copsctl.config import recipe_from_dict

    folder, _ = images
    calibrated = tmp_path / "run"
    shutil.copytree(run, calibrated)
    cal = Calibration(3.0, (1.0, 0.5, 2.0), (2.0, 1.0, -1.0))
    cal.save(calibrated / "calibration.yaml")
    a, b, model = tmp_path / "a", tmp_path / "b", tmp_path / "model.pt"
    _ok(_invoke("predict", "--run", calibrated, folder, "--out", a))
    _ok(_invoke("export", "--run", calibrated, "--out", model))
    recipe = recipe_from_dict(yaml.safe_load(load_checkpoint(model)["recipe"]))
    assert (recipe.calibration.node_scale, recipe.calibration.edge_offset) == (3.0, (2.0, 1.0, -1.0))
    _ok(_invoke("predict", "--weights", model, folder, "--out", b))
    pngs = sorted((a / "panoptic_pred").iterdir())
    assert pngs and all((b / "panoptic_pred" / p.name).read_bytes() == p.read_bytes() for p in pngs)
    plain = tmp_path / "plain"
    _ok(_invoke("predict", "--run", run, folder, "--out", plain))
    assert any((plain / "panoptic_pred" / p.name).read_bytes() != p.read_bytes() for p in pngs)
