"""Cost calibration: the affine algebra, the fit, and the calibration's way through cost
files, predictions, checkpoints and fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from copsctl.calibration import Calibration, load_calibration
from copsctl.costs.calibrate import fit_calibration
from copsctl.cli import app
from copsctl.costs.cache import CostFile, CostWriter
from copsctl.errors import InputError
from copsctl.model import CostTransform
from copsctl.solver.grid import grid_edge_mask
from copsctl.costs.synthetic import write_synthetic_costs

runner = CliRunner()


def test_then_and_relative_to_are_inverse():
    a = Calibration(2.0, (1.5, 0.5), (1.0, -0.25))
    b = Calibration(0.5, (2.0, 1.0), (0.5, 0.75))
    node = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    edge = np.random.default_rng(1).normal(size=(4, 4, 5)).astype(np.float32)
    both = a.then(b)
    np.testing.assert_allclose(both.apply(node, edge)[1], b.apply(*a.apply(node, edge))[1], rtol=1e-6)
    np.testing.assert_allclose(both.apply(node, edge)[0], b.apply(*a.apply(node, edge))[0], rtol=1e-6)
    r = both.relative_to(a)
    assert r.node_scale == pytest.approx(b.node_scale)
    assert r.edge_scale == pytest.approx(b.edge_scale) and r.edge_offset == pytest.approx(b.edge_offset)
    assert Calibration.identity(2).is_identity() and not a.is_identity()


def test_model_applies_the_same_calibration_as_the_cost_files():
    """CostTransform's calibration buffers (network side) == Calibration.apply (cached side)."""
    cal = Calibration(1.7, (0.8, 1.3, 2.0), (0.5, -1.0, 0.25))
    ct = CostTransform(num_classes=4, num_edge_channels=6)
    ct.set_calibration(cal.node_scale, cal.edge_scale, cal.edge_offset)
    node = torch.randn(2, 4, 5, 6)
    edge = torch.randn(2, 6, 5, 6)
    n1, e1 = ct(node, edge)
    n2, e2 = cal.apply(node[1].numpy(), edge[1].numpy())
    np.testing.assert_allclose(n1[1].numpy(), n2, rtol=1e-6)
    np.testing.assert_allclose(e1[1].numpy(), e2, rtol=1e-6, atol=1e-6)
    # Not in the state dict: the recipe says which calibration applies.
    assert not any(k.startswith("calib_") for k in ct.state_dict())
    with pytest.raises(InputError, match="one entry per distance"):
        ct.set_calibration(1.0, (1.0,), ())


def test_old_checkpoints_with_one_edge_scale_load():
    ct = CostTransform(num_classes=3, num_edge_channels=4)
    state = ct.state_dict()
    state["log_edge_scale"] = torch.tensor(0.5)
    ct.load_state_dict(state)
    assert torch.equal(ct.log_edge_scale.detach(), torch.full((2,), 0.5))


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """Synthetic costs whose edge costs are all lowered by 2: the solver over-splits them,
    and the right calibration is an edge offset of about +2."""
    root = tmp_path_factory.mktemp("cal")
    info = write_synthetic_costs(root / "orig.h5", preset="tiny", num_images=6, seed=3)
    with CostFile(root / "orig.h5") as cf, \
            CostWriter(root / "shifted.h5", cf.categories, cf.distances,
                       recipe=cf.recipe) as w:
        for i in range(len(cf)):
            node, edge, meta = cf.read(i)
            w.add(node, edge - 2.0, image_id=meta["image_id"], file_name=meta["file_name"],
                  image_size=meta["image_size"])
    return root, info


def test_fit_finds_a_known_offset(shifted):
    root, info = shifted
    base = fit_calibration(root / "orig.h5", info["gt_json"], info["gt_dir"], rounds=0,
                           workers=1)
    fit = fit_calibration(root / "shifted.h5", info["gt_json"], info["gt_dir"], workers=1)
    assert fit.pq_after["pq"] > fit.pq_before["pq"] + 0.05
    # The offsets undo the shift (within the grid's resolution) and recover the PQ of the
    # unshifted costs.
    assert np.mean(fit.calibration.edge_offset) == pytest.approx(2.0, abs=0.75)
    assert fit.pq_after["pq"] >= base.pq_before["pq"] - 0.02


def test_calibrate_and_solve_round_trip_through_files(shifted, tmp_path):
    root, info = shifted
    cal_file = tmp_path / "cal.yaml"
    res = runner.invoke(app, ["calibrate", str(root / "shifted.h5"), "--gt-json", info["gt_json"],
                              "--gt", info["gt_dir"], "--out", str(cal_file), "--workers", "1",
                              "--json", str(tmp_path / "fit.json")])
    assert res.exit_code == 0, res.output
    fit = json.loads((tmp_path / "fit.json").read_text())
    cal = load_calibration(cal_file)
    assert cal.to_section() == fit["calibration"]
    res = runner.invoke(app, ["solve", str(root / "shifted.h5"), "--out", str(tmp_path / "pred"),
                              "--workers", "1", "--calibration", str(cal_file)])
    assert res.exit_code == 0, res.output
    stored = yaml.safe_load((tmp_path / "pred" / "recipe.yaml").read_text())
    assert stored["calibration"] == cal.to_section()
    res = runner.invoke(app, ["evaluate", "--gt-json", info["gt_json"], "--gt", info["gt_dir"],
                              "--pred", str(tmp_path / "pred"), "--json",
                              str(tmp_path / "pq.json")])
    assert res.exit_code == 0, res.output
    pq = json.loads((tmp_path / "pq.json").read_text())["All"]["pq"]
    assert pq == pytest.approx(fit["pq_after"]["pq"], abs=1e-12)


def test_calibrate_fits_with_the_set_solver_keys(shifted, tmp_path):
    # --set changes the cost file's solving keys for the fit, as for copsctl solve: the
    # fit's starting PQ is that of solve --set with the same keys on the same costs.
    root, info = shifted
    sets = ["--set", "data.thing_area_threshold=1000000", "--set", "solver.segment_moves=0"]
    fits = {}
    for name, extra in (("default", []), ("set", sets)):
        res = runner.invoke(app, ["calibrate", str(root / "shifted.h5"), "--gt-json",
                                  info["gt_json"], "--gt", info["gt_dir"], "--out",
                                  str(tmp_path / f"{name}.yaml"), "--workers", "1", "--rounds",
                                  "0", "--json", str(tmp_path / f"{name}.json"), *extra])
        assert res.exit_code == 0, res.output
        fits[name] = json.loads((tmp_path / f"{name}.json").read_text())
    res = runner.invoke(app, ["solve", str(root / "shifted.h5"), "--out", str(tmp_path / "pred"),
                              "--workers", "1", *sets])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", "--gt-json", info["gt_json"], "--gt", info["gt_dir"],
                              "--pred", str(tmp_path / "pred"), "--json", str(tmp_path / "pq.json")])
    assert res.exit_code == 0, res.output
    pq = json.loads((tmp_path / "pq.json").read_text())["All"]["pq"]
    assert fits["set"]["pq_before"]["pq"] == pytest.approx(pq, abs=1e-12)
    assert fits["set"]["pq_before"]["pq"] != fits["default"]["pq_before"]["pq"]
    res = runner.invoke(app, ["calibrate", str(root / "shifted.h5"), "--gt-json", info["gt_json"],
                              "--gt", info["gt_dir"], "--out", str(tmp_path / "bad.yaml"),
                              "--set", "train.lr=1"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "train.lr" in lines[0], res.output
    assert not (tmp_path / "bad.yaml").exists()


def test_bad_calibration_files_are_one_line_errors(shifted, tmp_path):
    root, _ = shifted
    bad = tmp_path / "bad.yaml"
    for text, rule in (("calibration: 3\n", "must hold a `calibration:` mapping"),
                       ("calibration: {node_scale: x}\n", "must be a number"),
                       ("calibration: {nosuch: 1}\n", "unknown key"),
                       ("calibration: {edge_offset: [1, 2]}\n", "distances"),
                       ("calibration: {node_scale: 1.0e+300}\n", "finite in float32")):
        bad.write_text(text)
        res = runner.invoke(app, ["solve", str(root / "shifted.h5"), "--out",
                                  str(tmp_path / "p"), "--calibration", str(bad)])
        assert res.exit_code == 2 and rule in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "p").exists()
    res = runner.invoke(app, ["calibrate", str(root / "shifted.h5"), "--out", str(tmp_path / "c.yaml")])
    assert res.exit_code == 2 and "--gt-json" in res.output


def test_dump_costs_applies_the_calibration_beside_the_checkpoint(tmp_path):
    """A run's calibration.yaml reaches the cost file: the costs are the uncalibrated ones
    through Calibration.apply, and the file's recipe records it (so solve can compose)."""
    import warnings

    from copsctl.config import load_recipe, save_recipe
    from copsctl.data.synthetic import make_synthetic
    from copsctl.costs.network import dump_costs
    from copsctl.model import PanopticModel
    from copsctl.train.checkpoint import save_checkpoint
    from copsctl.train.data import open_split

    make_synthetic(tmp_path / "syn", train=1, val=2, size=(64, 64), seed=0)
    cfg = load_recipe("synthetic_tiny", [f"data.root={tmp_path / 'syn'}", "train.device=cpu"])
    table = open_split(cfg, "val").class_table
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PanopticModel.from_config(cfg, table.num_classes)
    run = tmp_path / "run"
    run.mkdir()
    save_recipe(cfg, run / "recipe.yaml")
    save_checkpoint(run / "checkpoint.pt", {"kind": "pretrain", "iteration": 0,
                                            "model": model.state_dict(), "recipe": cfg.dump(),
                                            "categories": table.to_json()})
    dump_costs(tmp_path / "plain.h5", run=run, device="cpu", dtype="float32")
    cal = Calibration(1.5, (1.0, 2.0, 0.5), (0.5, -0.5, 1.0))
    cal.save(run / "calibration.yaml")
    summary = dump_costs(tmp_path / "cal.h5", run=run, device="cpu", dtype="float32")
    assert summary["calibration"] == str(run / "calibration.yaml")
    with CostFile(tmp_path / "plain.h5") as plain, CostFile(tmp_path / "cal.h5") as calibrated:
        assert calibrated.recipe.to_dict()["calibration"] == cal.to_section()
        for i in range(len(plain)):
            node, edge, _ = plain.read(i)
            want = cal.apply(node, edge)
            got = calibrated.read(i)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
            # Only where the layout has an edge (the rest of the maps is padding).
            mask = grid_edge_mask(*node.shape[1:], plain.distances)
            np.testing.assert_allclose(got[1][mask], want[1][mask], rtol=1e-5, atol=1e-5)


def test_calibrate_never_overwrites_its_inputs_or_a_folder(shifted, tmp_path):
    root, info = shifted
    before = (root / "shifted.h5").read_bytes()
    for out, rule in ((root / "shifted.h5", "COSTS"), (tmp_path, "folder")):
        res = runner.invoke(app, ["calibrate", str(root / "shifted.h5"), "--gt-json",
                                  info["gt_json"], "--out", str(out)])
        assert res.exit_code == 2 and rule in res.output and "Traceback" not in res.output, res.output
    assert (root / "shifted.h5").read_bytes() == before


def test_a_calibration_of_node_scale_only_fills_the_edges_as_a_recipe_does():
    """Empty edge_scale / edge_offset mean 1 and 0 for every distance, in a file too."""
    from copsctl.calibration import Calibration

    cal = Calibration(2.0).check(3, "--calibration")
    assert cal == Calibration(2.0, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert Calibration(1.0, (), (0.5, 0.5)).check(2, "x") == Calibration(1.0, (1.0, 1.0),
                                                                         (0.5, 0.5))
