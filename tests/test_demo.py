"""``copsctl demo --quick`` end to end in a temporary folder, checking every artifact.

The quick size is replaced by a test size (4 + 2 images of 64x64, the ``synthetic_tiny``
recipe for both training stages: a few iterations of a very narrow network) so that the
whole pipeline -- data, pre-training, costs, solve, PQ, fine-tuning through the solver,
again, pictures -- runs in seconds; the real sizes are measured by hand (README).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import copsctl.demo as demo
from copsctl.cli import app
from copsctl.calibration import load_calibration
from copsctl.config import load_recipe

runner = CliRunner()

TEST_SIZE = demo.DemoSize(train_images=4, val_images=2, image_size=(64, 64),
                          pretrain=("train.iterations=3",),
                          finetune=("train.iterations=2", "finetune.lambda_max=100"),
                          pictures=2, calibration_images=4)
STAGES = ["data", "pretrain", "pretrain-costs", "pretrain-solve", "pretrain-evaluate",
          "pretrain-pictures", "calibrate", "calibrated-costs", "calibrated-solve",
          "calibrated-evaluate", "calibrated-pictures", "finetune", "finetune-costs",
          "finetune-solve", "finetune-evaluate", "finetune-pictures"]


@pytest.fixture(autouse=True)
def test_size(monkeypatch):
    monkeypatch.setattr(demo, "PRETRAIN_RECIPE", "synthetic_tiny")
    monkeypatch.setattr(demo, "FINETUNE_RECIPE", "synthetic_tiny")
    monkeypatch.setitem(demo.DEMO_SIZES, "quick", TEST_SIZE)


def _demo(out, *args):
    return runner.invoke(app, ["demo", "--quick", "--out", str(out), "--workers", "1", *args])


def _check_png(path) -> None:
    with Image.open(path) as im:
        im.verify()  # decodable
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    # not blank: many colours, and not one flat tone
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    assert pixels.std() > 10


def test_demo_quick_writes_every_artifact_and_reuses_stages(tmp_path):
    out = tmp_path / "demo"
    res = _demo(out, "--json", str(tmp_path / "report.json"))
    assert res.exit_code == 0, res.output
    assert "copsctl demo (quick size, 2 val images)" in res.output

    # the summary: both stages, readable numbers, identical to --json
    summary = json.loads((out / "metrics.json").read_text())
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stages"] == summary["stages"] and report["ran"] == STAGES
    assert list(summary["stages"]) == ["pretrain", "calibrated", "finetune"]
    # The calibrated row: the pre-trained run with the calibration fitted on train images,
    # which fine-tuning starts from.
    cal = load_calibration(out / "runs" / "pretrain" / "calibration.yaml")
    assert json.loads((out / "costs" / "calibrated.json").read_text())["calibration"] == \
        str(out / "runs" / "pretrain" / "calibration.yaml")
    assert json.loads((out / "costs" / "pretrain.json").read_text())["calibration"] is None
    assert load_recipe(out / "runs" / "finetune" / "recipe.yaml").calibration == \
        load_recipe("synthetic_tiny", cal.to_overrides()).calibration
    for name, row in summary["stages"].items():
        pq = json.loads((out / "metrics" / f"{name}.json").read_text())
        assert row["pq"] == {k: pq[k] for k in ("All", "Things", "Stuff")}
        assert all(0.0 <= pq[k]["pq"] <= 1.0 for k in ("All", "Things", "Stuff"))
        assert row["iterations"] == {"pretrain": 3, "calibrated": 0, "finetune": 2}[name]
        assert row["seconds_per_image_network"] > 0 and row["seconds_per_image_solver"] > 0
        assert f"{100 * pq['All']['pq']:.1f}" in res.output

        # the run folder and its resolved recipe (the demo's overrides applied)
        run = out / "runs" / ("pretrain" if name == "calibrated" else name)
        assert {"recipe.yaml", "checkpoint.pt", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
        recipe = load_recipe(run / "recipe.yaml")
        assert recipe.data.root == str((out / "data").resolve())
        if name != "calibrated":
            assert json.loads((out / "runs" / f"{name}.json").read_text())["iteration"] == \
                recipe.train.iterations

        # the cost file and predictions: evaluable by `copsctl evaluate`
        assert json.loads((out / "costs" / f"{name}.json").read_text())["images"] == 2
        res_eval = runner.invoke(app, [
            "evaluate", "--gt-json", str(out / "data" / "annotations" / "panoptic_val2017.json"),
            "--pred", str(out / "pred" / name), "--metrics", "pq",
            "--json", str(tmp_path / f"{name}.json")])
        assert res_eval.exit_code == 0, res_eval.output
        assert json.loads((tmp_path / f"{name}.json").read_text()) == pq

        # the pictures: decodable and not blank
        for picture in ("curves", "val0", "val1")[name == "calibrated":]:
            _check_png(out / "pictures" / f"{name}_{picture}.png")
    assert load_recipe(out / "runs" / "finetune" / "recipe.yaml").finetune.lambda_max == 100

    # a second run reuses every stage and rewrites nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
              and p.name != "metrics.json"}
    res = _demo(out, "--json", str(tmp_path / "r1.json"))
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r1.json").read_text())
    assert (report["reused"], report["ran"]) == (STAGES, [])
    assert "pretrain: up to date, reused" in res.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # a training stage cut short (its record not written yet) continues its own run: here
    # the run had finished, so its checkpoint stays and the stages after it are reused
    ckpt = out / "runs" / "finetune" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    record = out / "stages" / "finetune.json"
    record.rename(out / "stages" / "finetune.started.json")
    res = _demo(out, "--json", str(tmp_path / "r1.json"))
    assert res.exit_code == 0, res.output
    assert "finetune: continuing" in res.output
    assert json.loads((tmp_path / "r1.json").read_text())["ran"] == ["finetune"]
    assert ckpt.stat().st_mtime_ns == stamp and record.is_file()
    assert not (out / "stages" / "finetune.started.json").exists()

    # a fine-tuning setting re-runs fine-tuning and what follows, not pre-training
    res = _demo(out, "--set", "finetune.lambda_max=10", "--json", str(tmp_path / "r2.json"))
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r2.json").read_text())
    assert report["ran"] == [s for s in STAGES if s.startswith("finetune")]
    assert load_recipe(out / "runs" / "finetune" / "recipe.yaml").finetune.lambda_max == 10

    # a solver setting re-solves every row and refits the calibration with it (the solve
    # stages read the demo's recipe, not the one the reused pre-training run saved), but
    # neither pre-trains again nor dumps the pre-trained costs again
    res = _demo(out, "--set", "finetune.lambda_max=10", "--set", "solver.segment_moves=0",
                "--json", str(tmp_path / "r3.json"))
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r3.json").read_text())
    assert report["ran"] == [s for s in STAGES if s not in ("data", "pretrain", "pretrain-costs")]
    for name in ("pretrain", "calibrated", "finetune"):
        solved = json.loads((out / "pred" / name / "summary.json").read_text())
        assert solved["solver_options"]["segment_moves"] == 0


def test_demo_bad_input_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "demo"
    for args, msg in ((["--set", "train.nope=1"], "unknown recipe key 'train.nope'"),
                      (["--set", "finetune.lambda_min=9999"], "must not exceed"),
                      (["--workers", "0"], "--workers must be at least 1")):
        res = _demo(out, *args)
        assert res.exit_code == 2, res.output
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and msg in lines[0], res.output
        assert not out.exists()
