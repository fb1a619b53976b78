"""``copsctl evaluate --run RUN``: dump-costs -> solve -> evaluate in one command, and
``evaluate --pred P`` finding the ground truth through the recipe stored in P."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from copsctl.cli import app
from copsctl.train.run import check_run_dir

runner = CliRunner()


def _ok(*args) -> "object":
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    data = tmp / "data"
    _ok("make-synthetic", "--out", data, "--train", 2, "--val", 2, "--size", "64x64")
    _ok("pretrain", "--recipe", "synthetic_tiny", "--set", f"data.root={data}",
        "--set", "train.iterations=1", "--set", "train.val_images=1", "--out", tmp / "run")
    return tmp / "run"


def test_run_dumps_solves_and_evaluates_into_the_run_folder(run, tmp_path):
    out = tmp_path / "pq.json"
    res = _ok("evaluate", "--run", run, "--device", "cpu", "--workers", 1, "--json", out)
    folder = run / "eval_val"
    assert (folder / "costs.h5").is_file()
    assert (folder / "pred" / "panoptic_pred.json").is_file()
    assert (folder / "pred" / "recipe.yaml").is_file()
    # the predictions carry the dataset's file names (the ground truth's PNG names)
    gt = json.loads((run.parent / "data" / "annotations" / "panoptic_val2017.json").read_text())
    pred = json.loads((folder / "pred" / "panoptic_pred.json").read_text())
    names = sorted(a["file_name"] for a in gt["annotations"])
    assert sorted(a["file_name"] for a in pred["annotations"]) == names
    assert sorted(p.name for p in (folder / "pred" / "panoptic_pred").iterdir()) == names
    assert "panoptic quality, 2 images" in res.output
    first = json.loads(out.read_text())
    assert set(first) >= {"All", "Things", "Stuff", "semantic"}

    # the same predictions evaluated by their folder alone: the stored recipe names the
    # ground truth (its data.val_split), and the note says which split
    again = tmp_path / "again.json"
    res = runner.invoke(app, ["evaluate", "--pred", str(folder / "pred"), "--json",
                              str(again)])
    assert res.exit_code == 0, res.output
    assert "ground truth: split 'val' of the synthetic dataset" in res.stderr
    assert json.loads(again.read_text())["All"] == first["All"]

    # a second evaluation replaces its own files; the run stays resumable
    _ok("evaluate", "--run", run, "--device", "cpu", "--workers", 1, "--metrics", "pq")
    assert check_run_dir(run, resume=True) is True


@pytest.mark.parametrize("args,pattern", [
    ([], "pass --run RUN"),
    (["--pred-json", "p.json"], "ground truth: pass --gt-json G .* or --recipe NAME"),
    (["--run", "{run}", "--gt-json", "g.json"], "drop --gt-json"),
    (["--run", "{tmp}"], "holds no recipe.yaml; pass the folder of a copsctl pretrain"),
    (["--pred", "{tmp}"], r"holds no recipe.yaml to find the ground truth by; pass "
     "--gt-json"),
    (["--run", "{run}", "--json", "{run}/x.json"], "must not lie inside --run"),
])
def test_bad_arguments_name_the_flags(run, tmp_path, args, pattern):
    import re

    args = [a.format(run=run, tmp=tmp_path) for a in args]
    res = runner.invoke(app, ["evaluate", *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), res.stderr
    assert not (run / "x.json").exists()


def test_a_refused_prediction_folder_changes_nothing(run, tmp_path):
    """The solve's folder check comes before the costs are replaced."""
    _ok("evaluate", "--run", run, "--device", "cpu", "--workers", 1, "--metrics", "pq")
    folder = run / "eval_val"
    costs = (folder / "costs.h5").read_bytes()
    (folder / "pred" / "my_notes.txt").write_text("mine")
    try:
        res = runner.invoke(app, ["evaluate", "--run", str(run), "--device", "cpu",
                                  "--metrics", "pq", "--set", "solver.boundary_moves=0"])
        assert res.exit_code == 2 and "my_notes.txt" in res.output, res.output
        assert (folder / "costs.h5").read_bytes() == costs
    finally:
        (folder / "pred" / "my_notes.txt").unlink()


def test_dump_costs_refuses_a_dataset_of_other_classes(run, tmp_path):
    """Same number of classes, other ids or thing flags: channel k would be another class."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(run.parent / "data", data)
    for split in ("train", "val"):
        path = data / "annotations" / f"panoptic_{split}2017.json"
        d = json.loads(path.read_text())
        stuff = next(c for c in d["categories"] if not c["isthing"])
        thing = next(c for c in d["categories"] if c["isthing"])
        stuff["isthing"], thing["isthing"] = 1, 0
        path.write_text(json.dumps(d))
    res = runner.invoke(app, ["dump-costs", "--run", str(run), "--out", str(tmp_path / "c.h5"),
                              "--device", "cpu", "--set", f"data.root={data}"])
    assert res.exit_code == 2 and "trained on other classes" in res.output, res.output
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("args,words", [
    (["--num-workers", "-1"], ["--num-workers must be >= 0"]),
    (["--storage", "float64"], ["--storage must be one of", "quantized"]),
    (["--calibration", "cal.yaml", "--no-calibration"], ["contradict"]),
])
def test_dump_costs_option_errors(run, tmp_path, args, words):
    from cli_checks import fails_in_one_line

    res = runner.invoke(app, ["dump-costs", "--run", str(run), "--out", str(tmp_path / "c.h5"),
                              *args])
    fails_in_one_line(res, *words)
    assert not (tmp_path / "c.h5").exists()
