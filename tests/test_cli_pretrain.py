"""``copsctl pretrain`` and ``copsctl dump-costs`` end to end on tiny synthetic data, in process.

The tiny recipe (``synthetic_tiny``: 64x64 crops, ResNet-18, narrow decoders, 4
iterations) on a 4 + 2 image synthetic dataset; a handful of CPU seconds per run.
"""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import copsctl.cli.pretrain as cli_pretrain
from copsctl.cli import app
from copsctl.config import load_recipe
from copsctl.costs.cache import CostFile
from copsctl.data.synthetic import make_synthetic
from copsctl.train.checkpoint import load_checkpoint, load_model
from copsctl.train.data import make_dataset, open_split
from copsctl.train.logging import read_metrics
from copsctl.train.validate import validate_pq
from cli_checks import fails_in_one_line

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(root, train=4, val=2, size=(64, 64), seed=3)
    return root


def _pretrain(*args):
    return runner.invoke(app, ["pretrain", *map(str, args)])


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    res = _pretrain("--recipe", "synthetic_tiny", "--out", out, "--set", f"data.root={data}")
    assert res.exit_code == 0, res.output
    assert "finished 4 iterations" in res.output and "validation: PQ" in res.output
    return out


def test_pretrain_writes_recipe_checkpoint_metrics_and_events(run, data):
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "metrics.jsonl",
                                                     "recipe.yaml", "tensorboard"]
    cfg = load_recipe(run / "recipe.yaml")
    assert cfg == load_recipe("synthetic_tiny", [f"data.root={data}"])
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert (ckpt["kind"], ckpt["iteration"], ckpt["world_size"]) == ("pretrain", 4, 1)
    assert [c["name"] for c in ckpt["categories"]][:2] == ["ball", "crate"]
    assert ckpt["recipe"] == cfg.dump()
    train = read_metrics(run / "metrics.jsonl", group="train")
    assert [r["iteration"] for r in train] == [1, 2, 3, 4]  # log_every 1
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
    assert {"loss_semantic", "loss_affinity", "affinity_d1", "affinity_d4", "lr",
            "images_per_s"} <= set(train[0])
    val = read_metrics(run / "metrics.jsonl", group="val")
    assert [r["iteration"] for r in val] == [4]
    assert {"PQ", "PQ_th", "PQ_st", "SQ", "RQ"} <= set(val[0])
    assert all(0 <= val[0][k] <= 100 for k in ("PQ", "PQ_th", "PQ_st"))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_refuses_a_non_empty_run_folder_and_a_changed_recipe_on_resume(run, data):
    fails_in_one_line(_pretrain("--recipe", "synthetic_tiny", "--out", run, "--set",
                                 f"data.root={data}"), str(run), "not empty", "--resume")
    fails_in_one_line(_pretrain("--out", run, "--resume", "--set", "train.lr=0.5"),
                       "train.lr", "0.5")
    res = _pretrain("--out", run, "--resume")  # a finished run stays finished
    assert res.exit_code == 0 and "already finished" in res.output, res.output
    # where and how often things happen may change on resume
    res = _pretrain("--out", run, "--resume", "--set", "train.log_every=3")
    assert res.exit_code == 0, res.output
    foreign = run.parent / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    fails_in_one_line(_pretrain("--out", foreign, "--resume"), "not a run folder", "notes.txt")


def test_an_edited_recipe_yaml_is_refused_on_resume(run, tmp_path):
    """recipe.yaml is the run's record: the checkpoint's stored recipe decides, and an edit
    (or a file cut short, whose missing sections would take the defaults) is refused."""
    edited = tmp_path / "run"
    shutil.copytree(run, edited)
    text = (edited / "recipe.yaml").read_text()
    assert "\n  lr: 0.001  #" in text
    (edited / "recipe.yaml").write_text(text.replace("\n  lr: 0.001  #", "\n  lr: 0.5  #"))
    fails_in_one_line(_pretrain("--out", edited, "--resume"), "train.lr", "0.5",
                      "must not be edited")
    (edited / "recipe.yaml").write_text(text[: len(text) // 3])
    res = _pretrain("--out", edited, "--resume")
    assert res.exit_code == 2 and "must not be edited" in res.output, res.output


def test_resume_on_a_dataset_of_other_classes_is_refused(run, data, tmp_path):
    """data.root may change on resume (the data moved), its classes may not: another class
    count failed in load_state_dict, renumbered ids relabelled the channels silently."""
    other = tmp_path / "other"
    shutil.copytree(data, other)
    for split in ("train", "val"):
        path = other / "annotations" / f"panoptic_{split}2017.json"
        d = json.loads(path.read_text())
        old_id = d["categories"][-1]["id"]
        d["categories"][-1]["id"] = old_id + 100
        for a in d["annotations"]:
            for seg in a["segments_info"]:
                if seg["category_id"] == old_id:
                    seg["category_id"] = old_id + 100
        path.write_text(json.dumps(d))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    fails_in_one_line(_pretrain("--out", run, "--resume", "--set", f"data.root={other}"),
                      "--resume", "trained on 8 classes", str(other))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_run_folder_another_process_trains_in_is_refused(data, tmp_path):
    """Two commands started together both found the folder empty and trained in it."""
    import subprocess
    import sys

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(out)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        fails_in_one_line(_pretrain("--recipe", "synthetic_tiny", "--out", out, "--set",
                                    f"data.root={data}"), "another copsctl command")
        assert list(out.iterdir()) == []
    finally:
        holder.kill()
        holder.wait()


def test_interrupted_run_resumed_equals_uninterrupted_run(data, tmp_path, monkeypatch):
    sets = ["--set", f"data.root={data}", "--set", "train.iterations=5", "--set",
            "train.checkpoint_every=2", "--set", "train.log_every=2", "--set",
            "train.validate_every=0"]
    res = _pretrain("--recipe", "synthetic_tiny", "--out", tmp_path / "a", *sets)
    assert res.exit_code == 0, res.output

    class CtrlCAfterThreeSteps(cli_pretrain.TrainProgress):
        def __call__(self, event):
            super().__call__(event)
            if event.kind == "step" and event.iteration == 3:
                signal.raise_signal(signal.SIGINT)

    with monkeypatch.context() as m:
        m.setattr(cli_pretrain, "TrainProgress", CtrlCAfterThreeSteps)
        res = _pretrain("--recipe", "synthetic_tiny", "--out", tmp_path / "b", *sets)
    assert res.exit_code == 130, res.output
    assert "interrupted at iteration 3 of 5" in res.output and "--resume" in res.output
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["iteration"] == 3
    res = _pretrain("--out", tmp_path / "b", "--resume")
    assert res.exit_code == 0, res.output

    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 5
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)

    def numbers(run):  # the logs agree too, up to wall-clock entries
        drop = {"time", "seconds_per_iter", "data_seconds", "images_per_s", "seconds",
                "solver_seconds"}
        return [{k: v for k, v in r.items() if k not in drop}
                for r in read_metrics(tmp_path / run / "metrics.jsonl")]

    assert numbers("a") == numbers("b")


def test_dump_costs_solve_evaluate_give_the_validation_pq(run, data, tmp_path):
    costs = tmp_path / "costs.h5"
    res = runner.invoke(app, ["dump-costs", "--run", str(run), "--out", str(costs),
                              "--batch-size", "2", "--device", "cpu", "--storage", "float32"])
    assert res.exit_code == 0, res.output
    cfg = load_recipe(run / "recipe.yaml")
    reader = open_split(cfg, "val")
    with CostFile(costs) as cf:
        assert len(cf) == 2 and cf.image_ids == reader.image_ids
        assert cf.file_names == [reader.image_path(i).name for i in range(2)]
        assert cf.image_sizes.tolist() == [[64, 64], [64, 64]]
        assert cf.cost_sizes.tolist() == [[16, 16], [16, 16]]
        assert cf.distances == cfg.model.distances
        assert [c.id for c in cf.categories] == list(reader.class_table.category_ids)
        assert cf.recipe == cfg

    pred = tmp_path / "pred"
    res = runner.invoke(app, ["solve", str(costs), "--out", str(pred), "--workers", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", "--recipe", str(run / "recipe.yaml"), "--split", "val",
                              "--pred", str(pred), "--json", str(tmp_path / "pq.json")])
    assert res.exit_code == 0, res.output
    files_pq = json.loads((tmp_path / "pq.json").read_text())

    # the same numbers, class by class, as the in-memory validation of the checkpoint
    model, _, _ = load_model(run / "checkpoint.pt")
    dataset = make_dataset(cfg, reader, train=False)
    result, timings = validate_pq(model, dataset, thing_area=cfg.data.thing_area_threshold,
                                  stuff_area=cfg.data.stuff_area_threshold,
                                  options=cfg.solver.options(), solver_workers=1, batch_size=2)
    assert timings["images"] == 2
    for cid, r in result.per_class.items():
        f = files_pq["per_class"][str(cid)]
        assert (r.tp, r.fp, r.fn) == (f["tp"], f["fp"], f["fn"]), cid
        assert r.pq == pytest.approx(f["pq"], abs=1e-12)
    assert result.all.pq == pytest.approx(files_pq["All"]["pq"], abs=1e-12)
    assert sum(r.fp + r.fn for r in result.per_class.values()) > 0  # not an empty comparison
    val = read_metrics(run / "metrics.jsonl", group="val")[-1]
    assert val["PQ"] == pytest.approx(100 * result.all.pq, abs=1e-9)

    # --weights with --recipe: the same costs (up to float rounding: another batch shape)
    res = runner.invoke(app, ["dump-costs", "--weights", str(run / "checkpoint.pt"), "--recipe",
                              str(run / "recipe.yaml"), "--out", str(tmp_path / "w.h5"),
                              "--limit", "1", "--device", "cpu", "--storage", "float32"])
    assert res.exit_code == 0, res.output
    with CostFile(costs) as a, CostFile(tmp_path / "w.h5") as b:
        assert len(b) == 1
        np.testing.assert_allclose(a.read(0)[0], b.read(0)[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(a.read(0)[1], b.read(0)[1], rtol=0, atol=1e-5)


def test_dump_costs_bad_arguments(run, tmp_path):
    out = tmp_path / "c.h5"
    fails_in_one_line(runner.invoke(app, ["dump-costs", "--out", str(out)]), "--run", "--weights")
    fails_in_one_line(runner.invoke(app, ["dump-costs", "--run", str(tmp_path), "--out", str(out)]),
                       "checkpoint.pt")
    fails_in_one_line(runner.invoke(app, ["dump-costs", "--weights", str(run / "recipe.yaml"),
                                           "--out", str(out)]), "recipe.yaml", "checkpoint")
    fails_in_one_line(runner.invoke(app, ["dump-costs", "--run", str(run), "--out", str(out),
                                           "--set", "model.distances=[1,3]"]),
                       "model.distances")
    assert not out.exists()


# ------------------------------------------------------------------------------ bad input


def _break_missing_image(root):
    next((root / "train2017").glob("*.png")).unlink()
    return "image file does not exist"


def _break_corrupt_label_pngs(root):
    for p in (root / "annotations" / "panoptic_train2017").glob("*.png"):
        p.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return "panoptic_train2017"


def _break_corrupt_images(root):
    for p in (root / "train2017").glob("*.png"):
        p.write_bytes(p.read_bytes()[:60])
    return "train2017"


def _break_corrupt_json(root):
    (root / "annotations" / "panoptic_train2017.json").write_text('{"images": [')
    return "panoptic_train2017.json"


def _break_image_size(root):
    for p in (root / "train2017").glob("*.png"):
        Image.open(p).resize((48, 64)).save(p)
    return "differs from the image size"


def _empty_split(split):
    def breaker(root):
        path = root / "annotations" / f"panoptic_{split}2017.json"
        d = json.loads(path.read_text())
        d["images"], d["annotations"] = [], []
        path.write_text(json.dumps(d))
        return f"split '{split}' holds no images"
    breaker.__name__ = f"_break_empty_{split}"
    return breaker


@pytest.mark.parametrize("breaker", [_break_missing_image, _break_corrupt_label_pngs,
                                     _break_corrupt_images, _break_corrupt_json,
                                     _break_image_size, _empty_split("train"),
                                     _empty_split("val")])
def test_broken_dataset_is_one_line_exit_2_and_writes_nothing(data, tmp_path, breaker):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    word = breaker(root)
    out = tmp_path / "run"
    line = fails_in_one_line(_pretrain("--recipe", "synthetic_tiny", "--out", out, "--set",
                                        f"data.root={root}"), word)
    assert str(root) in line  # the file is named by its path
    assert not out.exists()


@pytest.mark.parametrize("text, words", [
    ("_BASE_: synthetic_tiny.yaml\ntrain:\n  learning_rate: 0.1\n", ["train.learning_rate", "unknown"]),
    ("_BASE_: synthetic_tiny.yaml\ntrain:\n  iterations: many\n", ["train.iterations"]),
    ("_BASE_: synthetic_tiny.yaml\nmodel:\n  distances: 4\n", ["model.distances"]),
])
def test_bad_recipe_is_one_line_exit_2(data, tmp_path, text, words):
    from copsctl.config import _packaged_recipes

    shutil.copy(str(_packaged_recipes() / "synthetic_tiny.yaml"), tmp_path / "synthetic_tiny.yaml")
    shutil.copy(str(_packaged_recipes() / "synthetic_pretrain.yaml"),
                tmp_path / "synthetic_pretrain.yaml")
    shutil.copy(str(_packaged_recipes() / "Base-COPS.yaml"), tmp_path / "Base-COPS.yaml")
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    out = tmp_path / "run"
    line = fails_in_one_line(_pretrain("--recipe", recipe, "--out", out), *words)
    assert str(recipe) in line
    fails_in_one_line(_pretrain("--recipe", "synthetic_tiny", "--out", out, "--set",
                                 "train.lr=fast"), "train.lr", "--set")
    assert not out.exists()


def test_init_starts_a_new_run_from_a_checkpoint_or_an_export(run, data, tmp_path):
    from copsctl.data.datasets import open_data_split
    from copsctl.train.pretrain import _init_model

    model_file = tmp_path / "model.pt"
    assert runner.invoke(app, ["export", "--run", str(run), "--out", str(model_file)]).exit_code == 0
    cfg = load_recipe("synthetic_tiny", [f"data.root={data}"])
    source, _, _ = load_model(run / "checkpoint.pt")
    for init in (run / "checkpoint.pt", model_file):
        model = _init_model(init, cfg, open_data_split(cfg.data, "train").class_table)
        assert model.training
        for k, v in source.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), (init, k)

    res = _pretrain("--recipe", "synthetic_tiny", "--set", f"data.root={data}", "--set",
                    "train.iterations=1", "--init", model_file, "--out", tmp_path / "new")
    assert res.exit_code == 0, res.output
    flat = res.output.replace("\n", "")  # rich wraps long paths
    assert f"model weights from {model_file}" in flat and "finished 1 iterations" in flat
    assert load_checkpoint(tmp_path / "new" / "checkpoint.pt")["iteration"] == 1

    fails_in_one_line(_pretrain("--recipe", "synthetic_tiny", "--set", f"data.root={data}",
                                 "--init", model_file, "--resume", "--out", tmp_path / "new"),
                       "--resume continues the run in --out; pass one of them")
    fails_in_one_line(_pretrain("--recipe", "synthetic_tiny", "--set", f"data.root={data}",
                                 "--set", "model.aspp_channels=8", "--init", model_file,
                                 "--out", tmp_path / "other"),
                       "weights were trained with model.aspp_channels = 16")
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())


def test_device_option_sets_train_device(data, tmp_path):
    res = _pretrain("--recipe", "synthetic_tiny", "--set", f"data.root={data}", "--set",
                    "train.iterations=1", "--set", "train.device=auto", "--device", "cpu",
                    "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert load_recipe(tmp_path / "run" / "recipe.yaml").train.device == "cpu"
    for command in ("pretrain", "finetune"):
        res = runner.invoke(app, [command, "--recipe", "synthetic_tiny", "--device", "gpu",
                                  "--out", str(tmp_path / "never")])
        fails_in_one_line(res, "--device must be one of auto, cpu, cuda, got 'gpu'")
    assert not (tmp_path / "never").exists()


def test_cuda_missing_is_named_as_the_user_gave_the_device(run, data, tmp_path, monkeypatch):
    # the message named `device` (the library's argument) whatever the user had typed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in ("pretrain", "finetune"):
        res = runner.invoke(app, [command, "--recipe", "synthetic_tiny", "--set",
                                  f"data.root={data}", "--device", "cuda", "--out",
                                  str(tmp_path / "never")])
        fails_in_one_line(res, "error: --device cuda: CUDA is not available on this machine")
    res = _pretrain("--recipe", "synthetic_tiny", "--set", f"data.root={data}", "--set",
                    "train.device=cuda", "--out", tmp_path / "never")
    fails_in_one_line(res, "error: `train.device` = cuda: CUDA is not available")
    res = runner.invoke(app, ["dump-costs", "--run", str(run), "--device", "cuda", "--out",
                              str(tmp_path / "never.h5")])
    fails_in_one_line(res, "error: --device cuda: CUDA is not available")
    assert not (tmp_path / "never").exists() and not (tmp_path / "never.h5").exists()


def test_a_damaged_checkpoint_is_refused_in_one_line_on_resume(run, tmp_path):
    # cut short, a pickle torch trips over (it said "KeyError: 174812789"), entries of the
    # wrong kind (tracebacks from the optimizer, the RNG or the loop state)
    broken = tmp_path / "run"
    shutil.copytree(run, broken, ignore=shutil.ignore_patterns("checkpoint.pt"))
    before = {p.name: p.read_bytes() for p in broken.iterdir() if p.is_file()}
    with open(run / "checkpoint.pt", "rb") as f:
        head = f.read(100_000)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    for write in (lambda p: p.write_bytes(head),
                  lambda p: p.write_bytes(b"\x80\x02j\x35\x6a\x6b\x0a."),
                  lambda p: torch.save({**ckpt, "optimizer": "x"}, p),
                  lambda p: torch.save({**ckpt, "loop": [1]}, p)):
        write(broken / "checkpoint.pt")
        fails_in_one_line(_pretrain("--out", broken, "--resume"),
                          f"{broken / 'checkpoint.pt'}: not a readable copsctl checkpoint (")
        assert {p.name: p.read_bytes() for p in broken.iterdir()
                if p.is_file() and p.name != "checkpoint.pt"} == before


def test_outputs_that_would_overwrite_the_dataset_are_refused(run, data, tmp_path):
    """pretrain's --json and dump-costs' --out and --json were checked against the
    command's other files, not against the dataset: the split's panoptic JSON was
    replaced at the end of the run."""
    gt = data / "annotations" / "panoptic_val2017.json"
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    new = tmp_path / "new"
    fails_in_one_line(_pretrain("--recipe", "synthetic_tiny", "--out", new, "--set",
                                f"data.root={data}", "--json", gt), "--json", "val ground truth")
    fails_in_one_line(_pretrain("--recipe", "synthetic_tiny", "--out", new, "--set",
                                f"data.root={data}", "--json", data / "train2017" / "r.json"),
                      "--json", "must not lie inside the train images")
    assert not new.exists()
    for extra in (["--out", gt], ["--out", tmp_path / "c.h5", "--json",
                                  data / "annotations" / "panoptic_val2017" / "s.json"]):
        fails_in_one_line(runner.invoke(app, ["dump-costs", "--run", str(run), "--set",
                                              f"data.root={data}", *map(str, extra)]),
                          "val ground truth" if extra[1] == gt else "val panoptic PNGs")
    assert not (tmp_path / "c.h5").exists()
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
