"""No data loss (issue 11): one test per case of the issue, numbered as there.

Outputs never delete what copsctl did not write, never overwrite an input, and replace a
folder so that the whole old or the whole new one is there at every moment; bad input is
one line and exit code 2 before anything is written. (The SIGKILL trials are in
tests/test_fault_injection.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from copsctl.atomic import MANIFEST, atomic_path, check_output, recover, write_json
from copsctl.cli import app
from copsctl.config import load_recipe
from copsctl.data.synthetic import make_synthetic
from copsctl.errors import InputError

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _fails(res, *needles):
    """Exit code 2 and one error line naming every needle, no traceback."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and lines[0] == res.output.splitlines()[-1], res.output
    for needle in needles:
        assert str(needle) in lines[0], res.output
    return lines[0]


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "syn"
    make_synthetic(root, train=2, val=2, size=(32, 32), seed=3)
    return root


TINY = ("train.iterations=1", "train.warmup_iters=1", "train.val_images=1")


def _tiny(data):
    args = ["--recipe", "synthetic_tiny", "--set", f"data.root={data}"]
    for o in TINY:
        args += ["--set", o]
    return args


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "pre"
    res = _run("pretrain", *_tiny(data), "--out", out)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def costs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("costs")
    res = _run("make-costs", "--out", folder / "c.h5", "--images", 2)
    assert res.exit_code == 0, res.output
    return folder / "c.h5"


# 1 ------------------------------------------------------------------------------------


def test_1_a_file_output_naming_a_folder_is_refused_and_the_folder_kept(data, run_dir, costs,
                                                                        tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "keep.txt").write_text("mine")
    before = _tree(victim)
    gt = data / "annotations" / "panoptic_val2017.json"
    for args in (["evaluate", "--gt-json", gt, "--pred-json", gt, "--json", victim],
                 ["solve", costs, "--out", tmp_path / "pred", "--json", victim],
                 ["pretrain", *_tiny(data), "--out", tmp_path / "p", "--json", victim],
                 ["recipe", "synthetic_tiny", "--out", victim],
                 ["make-costs", "--out", victim],
                 ["make-costs", "--out", tmp_path / "c.h5", "--json", victim],
                 ["dump-costs", "--run", run_dir, "--out", victim]):
        _fails(_run(*args), victim, "is an existing folder")
        assert _tree(victim) == before
    assert not (tmp_path / "pred").exists() and not (tmp_path / "p").exists()
    # `copsctl recipe synthetic_tiny --out .` in a working directory keeps it
    monkeypatch.chdir(victim)
    _fails(_run("recipe", "synthetic_tiny", "--out", "."), "is an existing folder")
    assert _tree(victim) == before
    # the library refuses it too (the last line of defence)
    with pytest.raises(InputError, match="is an existing folder"):
        write_json(victim, {})
    assert _tree(victim) == before


# 2 ------------------------------------------------------------------------------------


def test_2_make_costs_gt_out_does_not_replace_a_foreign_folder(tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "notes.txt").write_text("keep me")
    res = _run("make-costs", "--out", tmp_path / "c.h5", "--gt-out", gt)
    _fails(res, "--gt-out", "is not an earlier output of copsctl make-costs", "--overwrite")
    assert _tree(gt) == {"notes.txt": b"keep me"} and not (tmp_path / "c.h5").exists()
    # its own earlier output is replaced on a rerun ...
    own = tmp_path / "own"
    for seed in (0, 1):
        res = _run("make-costs", "--out", tmp_path / "d.h5", "--gt-out", own, "--seed", seed)
        assert res.exit_code == 0, res.output
    assert "s1_" in (own / "panoptic_gt.json").read_text()
    # ... unless the user added a file to it
    (own / "panoptic_gt" / "extra.png").write_bytes(b"x")
    _fails(_run("make-costs", "--out", tmp_path / "d.h5", "--gt-out", own),
           "panoptic_gt/extra.png", "did not write")
    res = _run("make-costs", "--out", tmp_path / "c.h5", "--gt-out", gt, "--overwrite")
    assert res.exit_code == 0, res.output
    assert (gt / "panoptic_gt.json").is_file() and not (gt / "notes.txt").exists()


# 3 ------------------------------------------------------------------------------------


def test_3_resume_removes_a_stale_checkpoint_temporary(data, tmp_path):
    run = tmp_path / "run"
    args = _tiny(data) + ["--set", "train.iterations=2", "--set", "train.checkpoint_every=1"]
    res = _run("pretrain", *args[:-2], "--set", "train.iterations=1", "--out", run)
    assert res.exit_code == 0, res.output
    # what a SIGKILL in the middle of torch.save leaves: the pid-less name of earlier
    # versions and one of a process that is no longer running
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = [run / ".checkpoint.pt.x1y2z3w4.tmp", run / f".checkpoint.pt.{dead}-0a1b2c3d.tmp",
             run / f".metrics.jsonl.{dead}-0a1b2c3d.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    res = _run("pretrain", "--out", run, "--resume", "--set", "train.iterations=2")
    _fails(res, "train.iterations")  # the recipe of a run cannot change on resume ...
    res = _run("pretrain", "--out", run, "--resume")
    assert res.exit_code == 0, res.output  # ... but the leftovers no longer block it
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "metrics.jsonl",
                                                     "recipe.yaml", "tensorboard"]


# 4 ------------------------------------------------------------------------------------


def test_4_an_output_that_is_an_input_is_refused(data, run_dir, costs, tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_bytes((data / "annotations" / "panoptic_val2017.json").read_bytes())
    before = gt.read_bytes()
    _fails(_run("evaluate", "--gt-json", gt, "--gt", data / "annotations" / "panoptic_val2017",
                "--pred-json", gt, "--json", gt), "--json", "is also --gt-json")
    assert gt.read_bytes() == before
    c_before = costs.read_bytes()
    _fails(_run("solve", costs, "--out", tmp_path / "o", "--json", costs), "is also COSTS")
    assert costs.read_bytes() == c_before and not (tmp_path / "o").exists()
    # a prediction folder holding its own cost file would delete it when replaced
    inside = tmp_path / "o2"
    inside.mkdir()
    (inside / "c.h5").write_bytes(c_before)
    _fails(_run("solve", inside / "c.h5", "--out", inside, "--overwrite"), "holds COSTS")
    assert (inside / "c.h5").read_bytes() == c_before
    ckpt = run_dir / "checkpoint.pt"
    k_before = ckpt.read_bytes()
    _fails(_run("dump-costs", "--run", run_dir, "--out", ckpt), "is also --run checkpoint")
    _fails(_run("dump-costs", "--weights", ckpt, "--out", ckpt), "is also --weights")
    assert ckpt.read_bytes() == k_before
    recipe = tmp_path / "r.yaml"
    recipe.write_text("_BASE_: synthetic_tiny.yaml\n")
    _fails(_run("recipe", recipe, "--out", recipe), "is also RECIPE")
    _fails(_run("make-costs", "--out", tmp_path / "x.h5", "--json", tmp_path / "x.h5"),
           "is also --out")


def test_4_no_output_overwrites_a_file_of_the_run_it_reads(data, run_dir, tmp_path):
    """Every command that reads --run takes all the run's files as inputs: its recipe,
    checkpoint and log, not only the checkpoint; one line, exit 2, the run as it was."""
    before = _tree(run_dir)
    ckpt, recipe, log = (run_dir / n for n in ("checkpoint.pt", "recipe.yaml", "metrics.jsonl"))
    img = data / "val2017" / sorted(os.listdir(data / "val2017"))[0]
    for args in (["dump-costs", "--run", run_dir, "--out", tmp_path / "c.h5", "--json", ckpt],
                 ["dump-costs", "--run", run_dir, "--out", recipe],
                 ["dump-costs", "--run", run_dir, "--out", log],
                 ["export", "--run", run_dir, "--out", recipe],
                 ["predict", "--run", run_dir, img, "--out", tmp_path / "p", "--json", ckpt],
                 ["calibrate", "--run", run_dir, "--out", ckpt],
                 ["calibrate", "--run", run_dir, "--json", recipe]):
        _fails(_run(*args), "is also --run", run_dir)
    assert _tree(run_dir) == before
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "p").exists()


def test_4_calibrate_keeps_out_of_the_ground_truth_folder(costs, tmp_path):
    res = _run("make-costs", "--out", tmp_path / "m.h5", "--images", 2, "--gt-out", tmp_path / "gt")
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp_path / "gt" / "panoptic_gt").iterdir())
    before = _tree(tmp_path / "gt")
    for option in ("--out", "--json"):
        args = ["calibrate", tmp_path / "m.h5", "--gt-json", tmp_path / "gt" / "panoptic_gt.json",
                "--out", tmp_path / "cal.yaml", option, pngs[0]]
        _fails(_run(*args), "must not lie inside --gt")
    assert _tree(tmp_path / "gt") == before and not (tmp_path / "cal.yaml").exists()


# 5 ------------------------------------------------------------------------------------


def _replace_in_child(path: Path, fault: str, exchange: bool = True) -> int:
    """Replace folder ``path`` by a new one in a child process killed at ``fault``."""
    code = ("import sys; from pathlib import Path; import copsctl.atomic as a\n"
            + ("" if exchange else "a._exchange = lambda x, y: False\n")
            + "p = Path(sys.argv[1])\n"
              "with a.atomic_path(p) as tmp:\n"
              "    (tmp / 'deep').mkdir(parents=True)\n"
              "    for i in range(20): (tmp / 'deep' / f'{i}.txt').write_text('new')\n")
    env = dict(os.environ, COPSCTL_FAULT=fault, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code, str(path)], env=env).returncode


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
@pytest.mark.parametrize("fault", ["atomic.written:1", "atomic.aside:1", "atomic.swapped:1"])
def test_5_a_folder_is_replaced_whole_at_every_moment(tmp_path, fault, exchange):
    out = tmp_path / "out"
    (out / "deep").mkdir(parents=True)
    for i in range(20):
        (out / "deep" / f"{i}.txt").write_text("old")
    rc = _replace_in_child(out, fault, exchange)
    reached = not (fault == "atomic.aside:1" and exchange)  # an exchange never sets aside
    assert rc == (-9 if reached else 0)
    # whatever the moment of the kill: the complete old or the complete new folder ...
    recover(out)  # (what the next write of `out` does first)
    contents = {p.read_text() for p in (out / "deep").iterdir()}
    assert len(list((out / "deep").iterdir())) == 20 and len(contents) == 1
    expected = "old" if fault in ("atomic.written:1", "atomic.aside:1") else "new"
    assert contents == {expected if reached else "new"}
    # ... and no leftover beside it
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_5_solve_keeps_files_the_user_put_in_an_earlier_prediction_folder(costs, tmp_path):
    pred = tmp_path / "pred"
    assert _run("solve", costs, "--out", pred, "--workers", 1).exit_code == 0
    assert (pred / MANIFEST).is_file()
    # rerunning into its own output replaces it
    assert _run("solve", costs, "--out", pred, "--workers", 1, "--thing-area", 0).exit_code == 0
    assert json.loads((pred / "summary.json").read_text())["thing_area"] == 0
    (pred / "my_notes.txt").write_text("keep")
    _fails(_run("solve", costs, "--out", pred, "--workers", 1), "my_notes.txt", "--overwrite")
    assert (pred / "my_notes.txt").read_text() == "keep"
    # a folder without copsctl's manifest is not its output either
    other = tmp_path / "other"
    other.mkdir()
    (other / "panoptic_pred.json").write_text("{}")
    _fails(_run("solve", costs, "--out", other, "--workers", 1), "not an earlier output")
    res = _run("solve", costs, "--out", pred, "--workers", 1, "--overwrite")
    assert res.exit_code == 0 and not (pred / "my_notes.txt").exists()


# 6 ------------------------------------------------------------------------------------


def test_6_make_costs_publishes_nothing_when_the_ground_truth_fails(tmp_path, monkeypatch):
    import copsctl.panoptic.format as fmt

    def broken(path, ids):
        raise InputError(f"{path}: disk full (simulated)")

    monkeypatch.setattr(fmt, "write_id_png", broken)
    _fails(_run("make-costs", "--out", tmp_path / "c.h5"), "disk full")
    assert list(tmp_path.iterdir()) == []


# 7 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("where, field, value, rule", [
    ("segment", "id", "abc", "'id' must be an integer"),
    ("segment", "category_id", None, "'category_id' must be an integer"),
    ("segment", "area", "x", "'area' must be an integer"),
    ("segment", "bbox", 5, "'bbox' must be a list of 4 numbers"),
    ("annotation", "image_id", [1], "'image_id' must be a string or an integer, got [1]"),
    ("segment", "id", 2 ** 70, "'id' must lie in [1, 16777216)"),
    ("annotation", "image_id", 2 ** 63, "'image_id' must lie in"),
    ("category", "color", "red", "'color' must be a list of 3 integers"),
    ("segment", "id", 1001.9, "'id' must be an integer, got 1001.9"),
])
def test_7_evaluate_rejects_json_fields_of_the_wrong_type(data, tmp_path, where, field, value,
                                                         rule):
    gt = data / "annotations" / "panoptic_val2017.json"
    pred = json.loads(gt.read_text())
    target = {"segment": pred["annotations"][0]["segments_info"][0],
              "annotation": pred["annotations"][0], "category": pred["categories"][0]}[where]
    target[field] = value
    (tmp_path / "p.json").write_text(json.dumps(pred))
    pngs = data / "annotations" / "panoptic_val2017"
    if where == "category":  # only the ground truth's categories are read
        _fails(_run("evaluate", "--gt-json", tmp_path / "p.json", "--gt", pngs, "--pred-json", gt,
                    "--pred", pngs), "p.json", rule)
        return
    _fails(_run("evaluate", "--gt-json", gt, "--pred-json", tmp_path / "p.json",
                "--pred", pngs), "p.json", rule)


def _edit_index(path: Path, name: str, values) -> None:
    with h5py.File(path, "r+") as f:
        data = f["index"][name][()]
        del f["index"][name]
        if data.dtype.kind in "OSU":
            f["index"].create_dataset(name, data=values, dtype=h5py.string_dtype())
        else:
            f["index"][name] = np.asarray(values, dtype=data.dtype)


def test_7_and_12_bad_cost_file_indexes_are_one_line_errors(costs, tmp_path):
    cases = [("file_name", ["", "b.png"], "index/file_name is empty"),
             ("image_id", ['"tiny_s0_000000"', '"tiny_s0_000000"'],
              "'tiny_s0_000000' appears more than once"),
             ("image_size", [[0, 0], [64, 64]], "index/image_size 0x0 must be positive")]
    for name, values, rule in cases:
        path = tmp_path / f"{name}.h5"
        path.write_bytes(costs.read_bytes())
        _edit_index(path, name, values)
        line = _fails(_run("solve", path, "--out", tmp_path / "o"), path.name, rule)
        if name == "image_size":  # names the image and its file
            assert "image 'tiny_s0_000000' (tiny_s0_000000.png)" in line
        assert not (tmp_path / "o").exists()


def test_7_a_cost_file_damaged_anywhere_is_read_or_a_one_line_error(costs, tmp_path):
    """64 bytes overwritten every 512 bytes, one place at a time: HDF5's errors on damaged
    metadata (RuntimeError, KeyError, OSError from h5py) are InputErrors too."""
    from copsctl.costs.cache import CostFile

    src = costs.read_bytes()
    refused = 0
    for offset in range(0, len(src), 512):
        damaged = bytearray(src)
        damaged[offset:offset + 64] = b"\x5a" * 64
        path = tmp_path / "damaged.h5"
        path.write_bytes(bytes(damaged))
        try:
            with CostFile(path) as cf:
                for i in range(len(cf)):
                    cf.read(i)
        except InputError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            refused += 1
    assert refused >= 5


def test_7_negative_seeds_are_one_line_errors(tmp_path):
    _fails(_run("make-synthetic", "--out", tmp_path / "s", "--seed", -1), "--seed", "-1")
    _fails(_run("make-costs", "--out", tmp_path / "c.h5", "--seed", -1), "--seed", "-1")
    assert list(tmp_path.iterdir()) == []


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked
    probe = Path("/sys")  # read-only even for root
    try:
        (probe / "copsctl-probe").touch()
    except OSError:
        return probe
    pytest.skip("no unwritable folder available")


def test_7_unwritable_output_locations_are_one_line_errors(data, costs, tmp_path):
    locked = _unwritable(tmp_path)
    gt = data / "annotations" / "panoptic_val2017.json"
    for args in (["solve", costs, "--out", locked / "pred"],
                 ["solve", costs, "--out", tmp_path / "pred", "--json", locked / "s.json"],
                 ["evaluate", "--gt-json", gt, "--pred-json", gt, "--json", locked / "pq.json"],
                 ["make-costs", "--out", locked / "c.h5"],
                 ["make-synthetic", "--out", locked / "syn"],
                 ["pretrain", *_tiny(data), "--out", locked / "run"]):
        _fails(_run(*args), locked, "cannot write")
    assert not (tmp_path / "pred").exists()


# 8, 9, 10 -----------------------------------------------------------------------------


def test_8_set_values_of_string_keys_are_taken_literally():
    assert load_recipe(None, ["data.root=/x/syn #2"]).data.root == "/x/syn #2"
    for name in ("123", "yes", "null", "1e-3", "[a]"):
        assert load_recipe(None, [f"data.root={name}"]).data.root == name
    assert load_recipe(None, ["data.root='quoted'"]).data.root == "quoted"
    # typed keys still read YAML; a '#' there would be cut off as a comment: refused
    assert load_recipe(None, ["data.crop_size=[64, 96]"]).data.crop_size == (64, 96)
    with pytest.raises(InputError, match="must not contain '#'"):
        load_recipe(None, ["train.lr=1e-3 #fast"])
    # the value survives the resolved recipe's YAML
    res = _run("recipe", "--set", "data.root=/x/syn #2")
    assert res.exit_code == 0 and "root: '/x/syn #2'" in res.output


def test_9_a_users_recipe_inherits_from_a_packaged_one(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("_BASE_: synthetic_tiny.yaml\ntrain:\n  lr: 0.01\n")
    r = load_recipe(mine)
    tiny = load_recipe("synthetic_tiny")
    assert r.train.lr == 0.01 and r.train.iterations == tiny.train.iterations
    # a file beside it still wins over the packaged one
    (tmp_path / "synthetic_tiny.yaml").write_text("train:\n  lr: 0.5\n  weight_decay: 0.25\n")
    assert load_recipe(mine).train.weight_decay == 0.25
    (tmp_path / "bad.yaml").write_text("_BASE_: no_such_recipe.yaml\n")
    with pytest.raises(InputError, match="among the packaged recipes"):
        load_recipe(tmp_path / "bad.yaml")


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e999"])
def test_10_non_finite_numbers_are_rejected(value):
    with pytest.raises(InputError, match="`train.lr` must be a finite number"):
        load_recipe(None, [f"train.lr={value}"])


# 11 -----------------------------------------------------------------------------------


def test_11_a_broken_image_stops_the_run_before_anything_is_written(data, tmp_path):
    broken = tmp_path / "syn"
    broken.mkdir()
    for p in data.rglob("*"):
        if p.is_file():
            (broken / p.relative_to(data)).parent.mkdir(parents=True, exist_ok=True)
            (broken / p.relative_to(data)).write_bytes(p.read_bytes())
    res = _run("check-data", "--recipe", "synthetic_tiny", "--set", f"data.root={broken}",
               "--json", tmp_path / "ok.json")
    assert res.exit_code == 0 and "all 4 images and labels read (2 train, 2 val)" in res.output
    assert json.loads((tmp_path / "ok.json").read_text())["total"] == 4
    # a mis-sized training image (the second one, never the first sampled) ...
    names = sorted((broken / "train2017").iterdir())
    Image.new("RGB", (30, 32)).save(names[1])
    args = ["--recipe", "synthetic_tiny", "--set", f"data.root={broken}"]
    _fails(_run("check-data", *args), names[1].name, "differs from the image size")
    for cmd in (["pretrain", *_tiny(broken)],
                ["finetune", *_tiny(broken), "--weights", tmp_path / "none.pt"]):
        _fails(_run(*cmd, "--out", tmp_path / "run"), names[1].name)
        assert not (tmp_path / "run").exists()
    # ... and a corrupt validation image
    Image.new("RGB", (32, 32)).save(names[1])
    val = sorted((broken / "val2017").iterdir())[-1]
    val.write_bytes(val.read_bytes()[:40])
    _fails(_run("check-data", *args), val.name, "not a readable image")
    _fails(_run("check-data", *args, "--split", "train", "--split", "val"), val.name)
    assert _run("check-data", *args, "--split", "train").exit_code == 0


# 12 -----------------------------------------------------------------------------------


def test_12_weights_naming_a_run_folder_suggests_run(run_dir, data, tmp_path):
    _fails(_run("dump-costs", "--weights", run_dir, "--out", tmp_path / "c.h5"),
           "is a folder", f"--run {run_dir}", "checkpoint.pt")
    _fails(_run("finetune", *_tiny(data), "--weights", run_dir, "--out", tmp_path / "ft"),
           "is a folder", "checkpoint.pt")


def test_recover_leaves_a_running_writers_temporary_alone(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("{}")
    live = tmp_path / f".out.json.{os.getpid()}-0a1b2c3d.tmp"
    live.write_text("being written")
    dead = tmp_path / ".out.json.x1y2z3w4.tmp"
    dead.write_text("left by a killed process")
    recover(out)
    assert live.exists() and not dead.exists() and out.read_text() == "{}"
    # a folder renamed aside by a killed swap (no renameat2) is put back
    out2 = tmp_path / "folder"
    aside = tmp_path / ".folder.x1y2z3w4.old"
    aside.mkdir()
    (aside / "a.txt").write_text("old")
    recover(out2)
    assert (out2 / "a.txt").read_text() == "old" and not aside.exists()


def test_make_costs_refuses_a_cost_file_inside_its_ground_truth_folder(tmp_path):
    _fails(_run("make-costs", "--out", tmp_path / "gt" / "c.h5", "--gt-out", tmp_path / "gt"),
           "--gt-out", "holds --out")
    assert not (tmp_path / "gt").exists()


def test_check_output_unit(tmp_path):
    assert check_output(None) is None
    with pytest.raises(InputError, match="is not a folder"):
        (tmp_path / "f").write_text("x")
        check_output(tmp_path / "f", "--out", folder=True)
    with pytest.raises(InputError, match="holds IN"):
        check_output(tmp_path, "--out", inputs={"IN": tmp_path / "f"}, folder=True)
    # an error inside the block publishes nothing and leaves no temporary
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "g") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_out_of_memory_is_a_one_line_error():
    """A size too large for the machine ends like bad input: one line, exit code 2."""
    from copsctl.errors import reporting_errors

    said = []

    def allocate():
        raise MemoryError("Unable to allocate 1.2 TiB for an array")

    with pytest.raises(SystemExit) as exit_:
        reporting_errors(allocate, lambda kind, msg: said.append((kind, msg)))()
    assert exit_.value.code == 2
    assert said == [("error", "out of memory (Unable to allocate 1.2 TiB for an array); smaller "
                              "images, sizes or batches need less")]

    def cpu_allocator():  # what torch's CPU allocator raises
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 10995116277760 bytes.")

    with pytest.raises(SystemExit):
        reporting_errors(cpu_allocator, lambda kind, msg: said.append((kind, msg)))()
    assert said[-1][1].startswith("out of memory ([enforce fail")

    def bug():
        raise RuntimeError("a bug, not a lack of memory")

    with pytest.raises(RuntimeError, match="a bug"):
        reporting_errors(bug, lambda kind, msg: said.append((kind, msg)))()
