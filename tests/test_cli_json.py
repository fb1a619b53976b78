"""``--json PATH`` and ``--set`` for shell loops: machine-readable results, recipe overrides.

(``solve``, ``demo`` and ``visualize`` are checked in their own tests.) One tiny
pipeline: make-synthetic -> pretrain (1 iteration) -> dump-costs -> finetune (1
iteration), plus make-costs; and ``evaluate --recipe --set``.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from copsctl.cli import app

runner = CliRunner()


def _ok(args: list) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def test_json_of_make_and_training_commands(tmp_path):
    data, j = tmp_path / "data", tmp_path / "json"
    _ok(["make-synthetic", "--out", data, "--train", 2, "--val", 1, "--size", "64x64",
         "--json", j / "data.json"])
    assert json.loads((j / "data.json").read_text())["train"] == 2

    _ok(["make-costs", "--out", tmp_path / "c.h5", "--images", 1, "--json", j / "costs.json"])
    made = json.loads((j / "costs.json").read_text())
    assert made["images"] == 1 and made["costs"] == str(tmp_path / "c.h5")

    tiny = ["--recipe", "synthetic_tiny", "--set", f"data.root={data}", "--set",
            "train.iterations=1", "--set", "train.warmup_iters=1", "--set", "train.val_images=1"]
    _ok(["pretrain", *tiny, "--out", tmp_path / "pre", "--json", j / "pre.json"])
    pre = json.loads((j / "pre.json").read_text())
    assert (pre["iteration"], pre["iterations"], pre["interrupted"]) == (1, 1, False)
    assert pre["run_dir"] == str(tmp_path / "pre") and "loss" in pre["train"]
    assert set(pre["val"]) >= {"PQ", "PQ_th", "PQ_st"}

    _ok(["dump-costs", "--run", tmp_path / "pre", "--out", tmp_path / "pre.h5",
         "--json", j / "dump.json"])
    dump = json.loads((j / "dump.json").read_text())
    assert dump["images"] == 1 and dump["seconds_per_image"] > 0 and len(dump["recipe_hash"]) == 16

    _ok(["finetune", *tiny, "--weights", tmp_path / "pre" / "checkpoint.pt",
         "--out", tmp_path / "ft", "--json", j / "ft.json"])
    ft = json.loads((j / "ft.json").read_text())
    assert ft["iteration"] == 1 and "pq_surrogate" in ft["train"]

    # --json inside a run folder would make the folder unresumable: refused up front
    res = runner.invoke(app, ["pretrain", *tiny, "--out", str(tmp_path / "pre2"), "--json",
                              str(tmp_path / "pre2" / "r.json")])
    assert res.exit_code == 2 and "must not lie inside --out" in res.output
    assert not (tmp_path / "pre2").exists()


def test_evaluate_set_overrides_the_recipe_dataset(tmp_path):
    from copsctl.data.synthetic import make_synthetic

    data = tmp_path / "data"
    make_synthetic(data, train=1, val=2, size=(32, 32), seed=1)
    gt = data / "annotations" / "panoptic_val2017"
    # the ground truth scored against itself: PQ 1; the recipe's data.root set on the line
    _ok(["evaluate", "--recipe", "synthetic_tiny", "--set", f"data.root={data}",
         "--pred-json", f"{gt}.json", "--json", tmp_path / "pq.json"])
    assert json.loads((tmp_path / "pq.json").read_text())["All"]["pq"] == 1.0
    res = runner.invoke(app, ["evaluate", "--gt-json", f"{gt}.json", "--pred-json", f"{gt}.json",
                              "--set", "data.root=x"])
    assert res.exit_code == 2 and "--set needs --recipe" in res.output
    res = runner.invoke(app, ["evaluate", "--recipe", "synthetic_tiny", "--set", "data.nope=1",
                              "--pred-json", f"{gt}.json"])
    assert res.exit_code == 2 and "unknown recipe key 'data.nope'" in res.output
