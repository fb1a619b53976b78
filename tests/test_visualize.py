"""``copsctl visualize``: overlay arithmetic, and the image, run and pipeline pictures.

The image picture is drawn here from a ``make-costs`` file and its ``solve`` output (no
network); the demo test draws it from network costs with the dataset's images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from copsctl.cli import app
from copsctl.errors import InputError
from copsctl.panoptic.format import Category, Segment
from copsctl.panoptic.solve import solve_costs
from copsctl.costs.synthetic import write_synthetic_costs
from copsctl.visualize.overlay import (boundaries, class_map_colors, cut_probability,
                                       panoptic_overlay, segment_colors, semantic_argmin)
from cli_checks import fails_in_one_line

runner = CliRunner()
CATS = [Category(1, "ball", True, (200, 0, 0)), Category(7, "sky", False, (0, 0, 200))]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _not_blank(pixels: np.ndarray) -> bool:
    return len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50 and pixels.std() > 10


# ----------------------------------------------------------------------------- overlay


def test_segment_colors_class_colour_for_stuff_and_crowd_own_colour_per_instance():
    segs = [Segment(3, 7), Segment(4, 1), Segment(5, 1), Segment(6, 1, iscrowd=True)]
    colors = segment_colors(segs, CATS)
    assert colors[3].tolist() == [0, 0, 200]  # stuff: the class colour
    assert colors[6].tolist() == [200, 0, 0]  # crowd: the class colour
    assert colors[4].tolist() != colors[5].tolist()  # two instances differ
    assert colors[4].tolist() == segment_colors([Segment(4, 1)], CATS)[4].tolist()  # stable
    with pytest.raises(InputError, match="category id 9"):
        segment_colors([Segment(1, 9)], CATS)


def test_boundaries_mark_both_sides_of_a_border():
    ids = np.array([[1, 1, 2, 2]] * 3)
    assert boundaries(ids).tolist() == [[False, True, True, False]] * 3
    assert not boundaries(np.ones((3, 3), int)).any()


def test_panoptic_overlay_colours_void_and_outlines():
    ids = np.zeros((6, 6), np.int64)
    ids[:, 3:] = 3  # stuff
    ids[1:4, 0:2] = 4  # an instance
    image = np.full((6, 6, 3), 90, np.uint8)
    out = panoptic_overlay(ids, [Segment(3, 7), Segment(4, 1)], CATS, image, alpha=1.0)
    assert out[0, 0].tolist() == [90, 90, 90]  # void shows the image
    assert out[:, 4].tolist() == [[0, 0, 200]] * 6  # stuff interior: class colour, no outline
    assert out[2, 1].tolist() == [255, 255, 255]  # instance border: white outline
    blended = panoptic_overlay(ids, [Segment(3, 7), Segment(4, 1)], CATS, image, alpha=0.5)
    assert blended[0, 5].tolist() == [45, 45, 145]
    assert panoptic_overlay(ids, [Segment(3, 7), Segment(4, 1)], CATS).shape == (6, 6, 3)
    with pytest.raises(InputError, match="segment id 4 of the id map"):
        panoptic_overlay(ids, [Segment(3, 7)], CATS)
    with pytest.raises(InputError, match="must have shape \\(6, 6, 3\\)"):
        panoptic_overlay(ids, [Segment(3, 7), Segment(4, 1)], CATS, image[:5])


def test_cut_probability_is_sigmoid_of_minus_cost_max_over_directions():
    # distances (1,): channel 0 horizontal, channel 1 vertical, on a 2x2 grid
    maps = np.zeros((2, 2, 2))
    maps[0, 0, 0] = -800.0  # repulsive horizontal edge (0,0)-(0,1): cut for sure
    maps[1, 0, 1] = 800.0  # attractive vertical edge (0,1)-(1,1): never cut
    p = cut_probability(maps, (1,))
    assert p.shape == (1, 2, 2)
    assert p[0, 0, 0] == pytest.approx(1.0)
    assert p[0, 0, 1] == pytest.approx(0.0)  # its only edge is the attractive one
    assert p[0, 1, 0] == pytest.approx(0.5)  # cost 0: even odds
    assert p[0, 1, 1] == 0.0  # no edge leaves the bottom-right pixel
    with pytest.raises(InputError, match="for distances"):
        cut_probability(maps, (1, 2))


def test_semantic_argmin_and_class_colours():
    node = np.array([[[0.1, 2.0]], [[1.0, 0.5]]])  # (K=2, 1, 2)
    classes = semantic_argmin(node)
    assert classes.tolist() == [[0, 1]]
    assert class_map_colors(classes, CATS).tolist() == [[[200, 0, 0], [0, 0, 200]]]
    with pytest.raises(InputError, match="must lie in \\[0, 2\\)"):
        class_map_colors(np.array([[2]]), CATS)


# ----------------------------------------------------------------------------- pictures


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    root = tmp_path_factory.mktemp("vis")
    costs = root / "c.h5"
    write_synthetic_costs(costs, preset="tiny", num_images=2, seed=1)
    solve_costs(costs, root / "pred", workers=1)
    return costs, root / "pred"


def test_visualize_image_from_synthetic_costs(solved, tmp_path):
    costs, pred = solved
    out = tmp_path / "img.png"
    res = runner.invoke(app, ["visualize", "image", str(costs), "--pred", str(pred), "--out",
                              str(out), "--index", "1", "--json", str(tmp_path / "img.json")])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "img.json").read_text())
    # make-costs has no image; its ground truth is found beside the cost file
    assert (info["image"], info["gt"], info["pred"]) == (False, True, True)
    assert 0.0 <= info["pq"] <= 100.0 and f"image PQ {info['pq']:.1f}" in res.output
    assert _not_blank(_pixels(out))

    # the same image by id; without a prediction folder the panel says so
    res = runner.invoke(app, ["visualize", "image", str(costs), "--out", str(out),
                              "--image-id", info["image_id"]])
    assert res.exit_code == 0, res.output
    assert _not_blank(_pixels(out))


def test_visualize_image_takes_the_prediction_as_json_and_folder(solved, tmp_path):
    costs, pred = solved
    pq = {}
    for name, args in (("folder", ["--pred", str(pred)]),
                       ("json", ["--pred-json", str(pred / "panoptic_pred.json"), "--pred",
                                 str(pred / "panoptic_pred")])):
        res = runner.invoke(app, ["visualize", "image", str(costs), *args, "--out",
                                  str(tmp_path / f"{name}.png"), "--json",
                                  str(tmp_path / f"{name}.json")])
        assert res.exit_code == 0, res.output
        info = json.loads((tmp_path / f"{name}.json").read_text())
        assert info["pred"] is True
        pq[name] = info["pq"]
    assert pq["folder"] == pq["json"]


def test_visualize_image_bad_input_exits_2(solved, tmp_path):
    costs, pred = solved
    out = tmp_path / "img.png"
    for args, msg in ((["--index", "5"], "image index 5 out of range"),
                      (["--image-id", "nope"], "holds no image with id 'nope'"),
                      (["--index", "0", "--image-id", "x"], "either --index or --image-id"),
                      # make-costs stores a real recipe, whose data.root (none) --set changes
                      (["--set", "data.root=x"], "x: dataset root folder does not exist"),
                      (["--pred", str(tmp_path)], "panoptic JSON file does not exist"),
                      (["--split", "val"], "--split needs a dataset")):
        res = runner.invoke(app, ["visualize", "image", str(costs), "--out", str(out), *args])
        fails_in_one_line(res, msg)
    res = runner.invoke(app, ["visualize", "image", str(costs), "--out", str(tmp_path / "a.jpg")])
    fails_in_one_line(res, "must be a .png file")
    res = runner.invoke(app, ["visualize", "image", str(tmp_path / "none.h5"), "--out", str(out)])
    fails_in_one_line(res, "cost file does not exist")
    assert not out.exists()


def _write_log(run: Path, records: list[dict]) -> None:
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_visualize_run_pretraining_and_finetuning_curves(tmp_path):
    pre = [{"iteration": i, "group": "train", "loss": 3.0 / i, "loss_semantic": 2.0 / i,
            "loss_affinity": 1.0 / i} for i in range(1, 21)]
    pre += [{"iteration": i, "group": "val", "PQ": 4.0 * i, "PQ_th": 3.0 * i, "PQ_st": 5.0 * i}
            for i in (10, 20)]
    _write_log(tmp_path / "pre", pre)
    res = runner.invoke(app, ["visualize", "run", str(tmp_path / "pre"), "--out",
                              str(tmp_path / "pre.png"), "--json", str(tmp_path / "pre.json")])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "pre.json").read_text())
    assert (info["kind"], info["train_records"], info["val_records"]) == ("train", 20, 2)
    assert _not_blank(_pixels(tmp_path / "pre.png"))

    ft = [{"iteration": i, "group": "train", "loss": 1 - 0.02 * i, "pq_surrogate": 0.02 * i,
           "pq_exact": 0.015 * i} for i in range(1, 16)]
    ft.append({"iteration": 15, "group": "val", "PQ": 30.0})
    _write_log(tmp_path / "ft", ft)
    res = runner.invoke(app, ["visualize", "run", str(tmp_path / "ft"), "--out",
                              str(tmp_path / "ft.png"), "--json", str(tmp_path / "ft.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ft.json").read_text())["kind"] == "finetune"
    assert _not_blank(_pixels(tmp_path / "ft.png"))


def test_visualize_run_gaps_for_undrawable_values_and_skips_bad_iterations(tmp_path):
    # ±1e308 crashed matplotlib's axis arithmetic (linear and log axes), a JSON bool was
    # taken as iteration 1; both are gaps or skipped now, with a note for the skipped
    run = tmp_path / "odd"
    _write_log(run, [{"iteration": i, "group": "train", "loss": v, "loss_semantic": 1e-300 * i}
                     for i, v in enumerate([1.0, 1e308, -1e308, 2.0, None, True, 0.5], 1)])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 8, "group": "train", "loss": Infinity, "loss_semantic": NaN}\n')
        for it in ("true", "1.5", '"9"', "-1", "1" + "0" * 400):
            f.write(f'{{"iteration": {it}, "group": "train", "loss": 1.0}}\n')
        f.write('{"iteration": 8, "group": "val", "PQ": 1e308}\n')
    out = tmp_path / "odd.png"
    res = runner.invoke(app, ["visualize", "run", str(run), "--out", str(out), "--json",
                              str(tmp_path / "odd.json")])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "Warning" not in res.output
    assert "skipped 5 records whose iteration is not a whole number in [0, 2**63) (first: True)" \
        in res.output
    info = json.loads((tmp_path / "odd.json").read_text())
    assert (info["train_records"], info["val_records"], info["last_iteration"]) == (8, 1, 8)
    assert len(info["notes"]) == 1
    assert _pixels(out).std() > 10
    # only undrawable iterations: the error says why there is no training record
    _write_log(tmp_path / "bool", [{"iteration": True, "group": "train", "loss": 1e308}])
    res = runner.invoke(app, ["visualize", "run", str(tmp_path / "bool"), "--out",
                              str(tmp_path / "bool.png")])
    fails_in_one_line(res, "holds no training record yet", "skipped 1 record", "(first: True)")
    assert not (tmp_path / "bool.png").exists()


def test_visualize_run_bad_input_exits_2(tmp_path):
    out = tmp_path / "c.png"
    res = runner.invoke(app, ["visualize", "run", str(tmp_path / "none"), "--out", str(out)])
    fails_in_one_line(res, "run folder does not exist")
    res = runner.invoke(app, ["visualize", "run", str(tmp_path), "--out", str(out)])
    fails_in_one_line(res, "holds no metrics.jsonl")
    _write_log(tmp_path / "empty", [{"iteration": 0, "group": "val", "PQ": 1.0}])
    res = runner.invoke(app, ["visualize", "run", str(tmp_path / "empty"), "--out", str(out)])
    fails_in_one_line(res, "holds no training record")
    assert not out.exists()


def test_visualize_pipeline_and_the_committed_picture(tmp_path):
    out = tmp_path / "pipeline.png"
    res = runner.invoke(app, ["visualize", "pipeline", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert _not_blank(_pixels(out)) and out.stat().st_size < 200_000
    committed = Path(__file__).resolve().parent.parent / "docs" / "pipeline.png"
    assert _pixels(committed).shape == _pixels(out).shape
    assert committed.stat().st_size < 200_000


def test_visualize_pipeline_default_out_is_pipeline_png_in_the_current_folder(tmp_path,
                                                                            monkeypatch):
    # it was docs/pipeline.png, creating a docs folder wherever the command ran
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["visualize", "pipeline"])
    assert res.exit_code == 0, res.output
    assert "wrote pipeline.png" in res.output
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline.png"]
    assert _not_blank(_pixels(tmp_path / "pipeline.png"))
    res = runner.invoke(app, ["visualize", "pipeline", "--help"], terminal_width=200)
    assert "by default in the current folder" in res.output
    assert "[default: pipeline.png]" in res.output
