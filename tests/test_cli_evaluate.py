"""``copsctl evaluate``: the table, ``--json``, the recipe form and one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from copsctl.cli import app
from copsctl.metrics.pq import evaluate_files
from copsctl.panoptic.format import Annotation, Category, segments_from_id_map, write_panoptic_set

CATEGORIES = [Category(7, "road", False), Category(23, "sky", False),
              Category(24, "person", True), Category(26, "car", True)]


def _image(rng, H=16, W=20):
    """A ground truth and a prediction that gets some segments right and some wrong."""
    gt = np.full((H, W), 1, np.int64); gt[: H // 2] = 2
    gt[3:9, 2:7] = 24001; gt[8:14, 10:16] = 26001; gt[0:2, 0:3] = 0
    pr = np.full((H, W), 5, np.int64); pr[: H // 2 + 1] = 6
    pr[3:9, 2:8] = 7; pr[9:14, 12:18] = 8; pr[1:3, 15:17] = 9
    gcat = {1: 7, 2: 23, 24001: 24, 26001: 26}
    pcat = {5: 7, 6: 23, 7: 24, 8: 26, 9: 24}
    return gt, segments_from_id_map(gt, gcat), pr, segments_from_id_map(pr, pcat)


def _write(root, n=3, *, gt_json="gt.json", gt_dir="gt", pred_json="pred.json", pred_dir="pred"):
    rng = np.random.default_rng(0)
    pairs = [_image(rng) for _ in range(n)]
    gt_anns = [Annotation(f"im{i}", f"im{i}.png", p[1]) for i, p in enumerate(pairs)]
    pr_anns = [Annotation(f"im{i}", f"im{i}_pred.png", p[3]) for i, p in enumerate(pairs)]
    write_panoptic_set(root / gt_json, root / gt_dir, gt_anns, [p[0] for p in pairs], CATEGORIES)
    write_panoptic_set(root / pred_json, root / pred_dir, pr_anns, [p[2] for p in pairs],
                       CATEGORIES)
    return root / gt_json, root / gt_dir, root / pred_json, root / pred_dir


@pytest.fixture
def files(tmp_path):
    return _write(tmp_path)


def _run(*args):
    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


def _args(files, out=None, *extra):
    gt_json, gt_dir, pred_json, pred_dir = files
    a = ["--gt-json", gt_json, "--gt", gt_dir, "--pred-json", pred_json, "--pred", pred_dir]
    if out is not None:
        a += ["--json", out]
    return [*a, *extra]


def test_table_and_json(files, tmp_path):
    out = tmp_path / "res" / "pq.json"
    r = _run(*_args(files, out))
    assert r.exit_code == 0, r.output
    for word in ("road", "sky", "person", "car", "All", "Things", "Stuff", "TP", "FP", "FN"):
        assert word in r.stdout
    for word in ("mIoU", "fwIoU", "accuracy"):
        assert word in r.stdout
    # no score in the prediction: AP is left out, with a note
    assert "note:" in r.stderr and "instance AP left out" in r.stderr
    data = json.loads(out.read_text())
    assert set(data) == {"All", "Things", "Stuff", "per_class", "semantic", "instances", "notes"}
    assert data["instances"] is None
    for g in ("All", "Things", "Stuff"):
        assert set(data[g]) == {"pq", "sq", "rq", "n"}
        assert all(0.0 <= data[g][k] <= 1.0 for k in ("pq", "sq", "rq"))
    assert set(data["per_class"]) == {"7", "23", "24", "26"}
    for v in data["per_class"].values():
        assert set(v) == {"pq", "sq", "rq", "tp", "fp", "fn"}
    expected = evaluate_files(files[0], files[2], files[1], files[3]).to_json()
    assert {k: data[k] for k in expected} == json.loads(json.dumps(expected))
    sem = data["semantic"]
    assert set(sem) == {"miou", "fwiou", "pixel_accuracy", "mean_accuracy", "per_class"}
    assert set(sem["per_class"]) == {"7", "23", "24", "26"}
    assert all(0.0 <= sem[k] <= 1.0 for k in ("miou", "fwiou", "pixel_accuracy",
                                               "mean_accuracy"))
    # person: the 6x6 prediction covers all 30 px of the 6x5 gt -> IoU 30/36 > 0.5 in each
    # image; the small spurious person is a FP.
    assert (data["per_class"]["24"]["tp"], data["per_class"]["24"]["fp"]) == (3, 3)
    assert list((tmp_path / "res").iterdir()) == [out]  # no temporaries left behind


def test_default_dirs_and_workers(files):
    gt_json, _, pred_json, _ = files
    r = _run("--gt-json", gt_json, "--pred-json", pred_json, "--workers", 2)
    assert r.exit_code == 0, r.output
    assert "All" in r.stdout


def test_workers_default_to_all_cpus_and_do_not_change_the_result(files, tmp_path, monkeypatch):
    import copsctl.cpus
    import copsctl.metrics.pq as pq

    used = []
    real_map = pq._map

    def recording_map(func, items, workers):
        used.append(workers)
        return real_map(func, items, workers)

    monkeypatch.setattr(pq, "_map", recording_map)
    monkeypatch.setattr(copsctl.cpus, "available_cpus", lambda: 3)
    results = {}
    for label, extra in (("default", []), ("1", ["--workers", "1"]), ("4", ["--workers", "4"])):
        out = tmp_path / f"pq_{label}.json"
        r = _run(*_args(files, out), *extra)
        assert r.exit_code == 0, r.output
        results[label] = json.loads(out.read_text())
    assert used == [3, 1, 4]
    assert results["default"] == results["1"] == results["4"]


def test_old_option_names_keep_working_with_a_note(files, tmp_path):
    gt_json, gt_dir, pred_json, pred_dir = files
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    r = _run("--gt-json", gt_json, "--gt", gt_dir, "--pred-json", pred_json, "--pred", pred_dir,
             "--json", new)
    assert r.exit_code == 0, r.output
    assert "is now" not in r.stderr
    r = _run("--gt-json", gt_json, "--gt-dir", gt_dir, "--pred-json", pred_json,
             f"--pred-dir={pred_dir}", "--json", old)
    assert r.exit_code == 0, r.output
    assert json.loads(old.read_text()) == json.loads(new.read_text())
    notes = [line for line in r.stderr.splitlines() if "is now" in line]
    assert notes == ["note: --gt-dir is now --gt (the old name goes in the next release)",
                     "note: --pred-dir is now --pred (the old name goes in the next release)"]


def test_recipe_form_with_a_solve_output_folder(tmp_path):
    root = tmp_path / "data"
    # COCO layout of the synthetic dataset; the "prediction" is the ground truth itself,
    # stored the way `copsctl solve` writes it.
    _write(root, gt_json="annotations/panoptic_val2017.json",
           gt_dir="annotations/panoptic_val2017", pred_json="x.json", pred_dir="x")
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(root / "annotations/panoptic_val2017.json", pred / "panoptic_pred.json")
    shutil.copytree(root / "annotations/panoptic_val2017", pred / "panoptic_pred")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  dataset: synthetic\n  root: {root}\n")
    out = tmp_path / "pq.json"
    r = _run("--recipe", recipe, "--split", "val", "--pred", pred, "--json", out)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["All"]["pq"] == 1.0 and data["All"]["n"] == 4


def test_allow_missing_warns_and_succeeds(files, tmp_path):
    pred_json = files[2]
    d = json.loads(pred_json.read_text())
    d["annotations"].pop(0)
    pred_json.write_text(json.dumps(d))
    out = tmp_path / "pq.json"
    r = _run(*_args(files, out, "--allow-missing"))
    assert r.exit_code == 0, r.output
    assert "warning" in r.stderr and "'im0'" in r.stderr
    assert out.is_file()


def _break_missing(files):
    d = json.loads(files[2].read_text())
    d["annotations"] = d["annotations"][1:2]
    files[2].write_text(json.dumps(d))
    return r"no prediction for 2 ground-truth image\(s\): 'im0', 'im2'"


def _break_png_id(files):
    d = json.loads(files[2].read_text())
    d["annotations"][1]["segments_info"] = d["annotations"][1]["segments_info"][1:]
    files[2].write_text(json.dumps(d))
    return r"image 'im1': segment id 5 is in the prediction \(im1_pred.png\) PNG but not in its JSON"


def _break_json_id(files):
    d = json.loads(files[2].read_text())
    d["annotations"][2]["segments_info"].append({"id": 77, "category_id": 24})
    files[2].write_text(json.dumps(d))
    return r"image 'im2': segment id 77 is in the prediction .* JSON but not in its PNG"


def _break_category(files):
    d = json.loads(files[0].read_text())
    d["annotations"][0]["segments_info"][0]["category_id"] = 99
    files[0].write_text(json.dumps(d))
    return r"image 'im0': ground-truth segment id 1 has unknown category_id 99"


def _break_size(files):
    Image.fromarray(np.zeros((16, 21, 3), np.uint8)).save(files[3] / "im1_pred.png")
    return r"image 'im1': .*im1_pred.png: PNG size 16x21 \(HxW\) differs from the expected 16x20"


def _break_mode(files):
    Image.fromarray(np.zeros((16, 20), np.uint8), mode="L").save(files[3] / "im2_pred.png")
    return r"image 'im2': .*im2_pred.png: panoptic PNG must be RGB \(or RGBA\) mode, got L"


def _break_gt_json(files):
    files[0].unlink()
    return r"gt.json: panoptic JSON file does not exist"


def _break_pred_dir(files):
    shutil.rmtree(files[3])
    return r"pred: prediction PNG folder does not exist"


def _break_json_syntax(files):
    files[2].write_text("{not json")
    return r"pred.json: not valid JSON"


@pytest.mark.parametrize("breaker", [_break_missing, _break_png_id, _break_json_id,
                                     _break_category, _break_size, _break_mode, _break_gt_json,
                                     _break_pred_dir, _break_json_syntax])
def test_bad_input_exit_2_one_line_nothing_written(files, tmp_path, breaker):
    import re
    pattern = breaker(files)
    out = tmp_path / "out" / "pq.json"
    r = _run(*_args(files, out))
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:")
    assert re.search(pattern, " ".join(lines)), lines[0]
    assert "Traceback" not in r.output
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("args,pattern", [
    (["--pred-json", "p.json"], r"ground truth: pass --gt-json G .* or --recipe NAME"),
    (["--gt-json", "g.json"], r"prediction: pass its JSON file, its PNG folder, or both"),
    (["--gt-json", "g.json", "--recipe", "r.yaml", "--pred-json", "p.json"],
     r"either --recipe .* or --gt-json/--gt, not both"),
    (["--gt-json", "g.json", "--split", "val", "--pred-json", "p.json"],
     r"--split needs --recipe"),
    (["--recipe", "no_such_recipe_xyz", "--pred-json", "p.json"], r"no_such_recipe_xyz"),
])
def test_bad_arguments(tmp_path, args, pattern):
    import re
    r = _run(*args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), r.stderr


def test_json_never_overwrites_an_input_also_an_implied_one(files, tmp_path):
    """--gt DIR reads DIR.json and DIR/*.png, --pred DIR the same: --json is none of those
    files and lies in neither folder; one line, exit 2, every file as it was."""
    gt_json, gt_dir, pred_json, pred_dir = files
    before = {p: p.read_bytes() for p in (gt_json, pred_json, *sorted(pred_dir.iterdir()))}
    for args, words in (
            (["--gt", gt_dir, "--pred", pred_dir, "--json", gt_json], ["is also --gt-json"]),
            (["--gt", gt_dir, "--pred", pred_dir, "--json", pred_json], ["is also --pred-json"]),
            (["--gt", gt_dir, "--pred", pred_dir, "--json", pred_dir / "im0_pred.png"],
             ["must not lie inside --pred"]),
            (["--gt-json", gt_json, "--pred-json", pred_json, "--json", gt_dir / "x.json"],
             ["must not lie inside --gt"])):
        r = _run(*args)
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), r.stderr
    assert {p: p.read_bytes() for p in before} == before
    assert not (gt_dir / "x.json").exists()


def test_rgba_pngs_are_read_by_their_rgb(files, tmp_path):
    """panopticapi reads the ids from R, G and B of any PNG it can open as an array."""
    want = _run(*_args(files, tmp_path / "want.json"))
    assert want.exit_code == 0, want.output
    for png in files[3].iterdir():
        rgb = np.asarray(Image.open(png))
        alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
        Image.fromarray(np.concatenate([rgb, alpha], axis=2), mode="RGBA").save(png)
    got = _run(*_args(files, tmp_path / "got.json"))
    assert got.exit_code == 0, got.output
    assert json.loads((tmp_path / "got.json").read_text()) == json.loads(
        (tmp_path / "want.json").read_text())


def test_prediction_categories_are_not_read(files, tmp_path):
    """The evaluators read only the ground truth's categories: a prediction's broken ones
    change nothing; integral float colours (numpy-made JSON) are accepted in both."""
    gt_json, gt_dir, pred_json, pred_dir = files
    want = _run(*_args(files, tmp_path / "want.json"))
    assert want.exit_code == 0, want.output
    d = json.loads(pred_json.read_text())
    d["categories"] = [{"id": 1, "name": None, "color": "red"}]
    pred_json.write_text(json.dumps(d))
    g = json.loads(gt_json.read_text())
    for c in g["categories"]:
        c["color"] = [float(v) for v in c["color"]]
    gt_json.write_text(json.dumps(g))
    got = _run(*_args(files, tmp_path / "got.json"))
    assert got.exit_code == 0, got.output
    assert json.loads((tmp_path / "got.json").read_text()) == json.loads(
        (tmp_path / "want.json").read_text())


def test_bad_workers(files, tmp_path):
    r = _run(*_args(files, tmp_path / "o.json", "--workers", "0"))
    assert r.exit_code == 2 and "--workers must be at least 1, got 0" in r.stderr
    assert not (tmp_path / "o.json").exists()


def _add_scores(pred_json, value=...):
    d = json.loads(pred_json.read_text())
    for i, a in enumerate(d["annotations"]):
        for j, seg in enumerate(a["segments_info"]):
            seg["score"] = 0.5 + 0.01 * (i + j) if value is ... else value
    pred_json.write_text(json.dumps(d))


def test_metrics_pick_and_instances_with_scores(files, tmp_path):
    _add_scores(files[2])
    out = tmp_path / "all.json"
    r = _run(*_args(files, out))
    assert r.exit_code == 0, r.output
    assert "COCO mask AP" in r.stdout and "AP50" in r.stdout and "note:" not in r.stderr
    data = json.loads(out.read_text())
    ins = data["instances"]
    assert set(ins) == {"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "per_class"}
    assert set(ins["per_class"]) == {"24", "26"}
    assert all(v is None or 0.0 <= v <= 1.0 for k, v in ins.items() if k != "per_class")
    for metrics, keys in (("pq", {"All", "Things", "Stuff", "per_class"}),
                          ("semantic", {"semantic"}), ("instances,pq", {"All", "Things", "Stuff",
                                                                        "per_class", "instances"})):
        out = tmp_path / f"{metrics}.json"
        r = _run(*_args(files, out, "--metrics", metrics))
        assert r.exit_code == 0, r.output
        part = json.loads(out.read_text())
        assert set(part) == keys, metrics
        assert all(part[k] == data[k] for k in keys)
    assert "mIoU" not in _run(*_args(files, None, "--metrics", "pq")).stdout


@pytest.mark.parametrize("metrics", ["pq,ap", "", "semantic,,bogus"])
def test_bad_metrics(files, tmp_path, metrics):
    r = _run(*_args(files, tmp_path / "o.json", "--metrics", metrics))
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--metrics" in lines[0] and "pq, semantic, instances" in lines[0]
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("score", [float("nan"), -0.1, 1.5, "0.9", True, None])
def test_bad_scores_exit_2_in_one_line(files, tmp_path, score):
    _add_scores(files[2], score)
    out = tmp_path / "o.json"
    r = _run(*_args(files, out, "--metrics", "pq"))
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "pred.json: image 'im0': segment" in lines[0]
    assert "`score` must be a number in [0, 1], got" in lines[0]
    assert "Traceback" not in r.output and not out.exists()


def test_evaluate_does_not_import_torch(files):
    import subprocess
    import sys

    gt_json, gt_dir, pred_json, pred_dir = files
    code = ("import sys\n"
            "from copsctl.cli import app\n"
            "try:\n"
            f"    app(['evaluate', '--gt-json', {str(gt_json)!r}, '--pred-json', {str(pred_json)!r}])\n"
            "except SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\n"
            "assert 'torch' not in sys.modules\n"
            "assert 'pycocotools' not in sys.modules  # no scores: AP is not computed\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
