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
