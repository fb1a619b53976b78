"""Fine-tuning through the solver: trainable parameters, cost dropout, batch PQ, the command."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from copsctl.cli import app
from copsctl.config import load_recipe
from copsctl.data.synthetic import make_synthetic
from copsctl.errors import InputError
from copsctl.train.surrogate import class_area_thresholds
from copsctl.solver.grid import grid_edge_mask
from copsctl.model import PanopticModel, freeze_for_finetuning
from copsctl.train.amwc_layer import (AMWCLayer, ImageSolution, ground_truth_from_batch,
                                      lifted_pq_surrogate, panoptic_segments)
from copsctl.train.checkpoint import load_checkpoint, save_checkpoint
from copsctl.train.data import make_dataset, open_split
from copsctl.train.finetune import batch_exact_pq, drop_costs, finetune
from copsctl.train.logging import read_metrics

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny synthetic dataset and a 'pre-trained' checkpoint of the tiny recipe's model."""
    root = tmp_path_factory.mktemp("ft")
    make_synthetic(root / "syn", train=4, val=2, size=(64, 64), seed=0)
    overrides = [f"data.root={root / 'syn'}", "train.device=cpu", "data.num_workers=0"]
    cfg = load_recipe("synthetic_tiny", overrides)
    table = open_split(cfg, "train").class_table
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random weights"):
        model = PanopticModel.from_config(cfg, table.num_classes)
    save_checkpoint(root / "pre.pt", {"kind": "pretrain", "iteration": 0,
                                      "model": model.state_dict(), "recipe": cfg.dump(),
                                      "categories": table.to_json()})
    return root, overrides, cfg, table


def _batch(cfg, n=2):
    from copsctl.data.loader import collate_panoptic

    ds = make_dataset(cfg, open_split(cfg, "train"), train=True)
    return collate_panoptic([ds[i] for i in range(n)])


def test_gradients_reach_exactly_the_trainable_parameters(setup):
    root, overrides, cfg, table = setup
    from copsctl.train.checkpoint import load_model

    model, _, _ = load_model(root / "pre.pt", recipe=cfg)
    trainable = freeze_for_finetuning(model, learn_cost_scale=True, learn_cost_offset=True)
    assert trainable and not any(n.startswith("backbone.") for n in trainable)
    model.train()
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    batch = _batch(cfg)
    costs = model.costs(model(batch["image"]))
    layer = AMWCLayer(distances=cfg.model.distances, partitionable=table.thing_mask,
                      lambda_min=1000, lambda_max=5000, num_perturbations=2, workers=1)
    solved = layer(costs["node_costs"], costs["edge_costs"], ground_truth_from_batch(batch), seed=0)
    loss = lifted_pq_surrogate(solved, class_area_thresholds(table.thing_mask, 32, 128),
                               pixel_area=16.0).loss
    loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == set(trainable)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    for part in ("semantic_head.", "affinity_head.", "semantic_decoder.", "affinity_decoder.",
                 "cost_transform."):
        assert sum(float(g.abs().sum()) for n, g in grads.items() if n.startswith(part)) > 0, part
    # Frozen batch-norm statistics stay put in training mode.
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, bn_before[k]), k


def test_cost_dropout():
    node = torch.rand(2, 3, 8, 8, requires_grad=True)
    edge = torch.rand(2, 4, 8, 8, requires_grad=True)
    assert drop_costs(node, edge, 0.0, torch.Generator()) == (node, edge)
    g = torch.Generator().manual_seed(3)
    n1, e1 = drop_costs(node, edge, 0.5, g)
    n2, e2 = drop_costs(node, edge, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(n1, n2) and torch.equal(e1, e2)
    dropped = (n1 == 0).all(dim=1)  # whole pixels: every class cost
    assert 0.3 < float(dropped.float().mean()) < 0.7
    assert torch.equal(n1[:, :, ~dropped[0]][0], node[0][:, ~dropped[0]])  # kept: not rescaled
    assert 0.4 < float((e1 == 0).float().mean()) < 0.6
    (n1.sum() + e1.sum()).backward()
    assert torch.equal(node.grad[0, 0], (~dropped[0]).float())
    with pytest.raises(InputError, match=r"`p` must lie in \[0, 1\)"):
        drop_costs(node, edge, 1.0, g)


def test_gradient_weights_keep_the_costs_and_weight_their_gradients(setup):
    """finetune.gradient_weights: node gradients 0 on void and crowd pixels, edge gradients
    times the affinity loss weights of the batch; the costs themselves unchanged."""
    from copsctl.train.finetune import weight_gradients

    _, _, cfg, table = setup
    batch = _batch(cfg)
    gt = ground_truth_from_batch(batch)
    pixel_w = torch.from_numpy(np.stack([g.weights for g in gt]))
    edge_w = batch["affinity_weights"]
    B, m2, h, w = edge_w.shape
    pixel_w[0, :2] = 0  # as on void pixels
    assert (edge_w > 1).any() and (edge_w == 0).any()  # thing-weighted and ignored edges
    node = torch.randn(B, table.num_classes, h, w, requires_grad=True)
    edge = torch.randn(B, m2, h, w, requires_grad=True)
    wn, we = weight_gradients(node, edge, pixel_w, edge_w)
    assert torch.equal(wn, node) and torch.equal(we, edge)
    gn, ge = torch.randn_like(node), torch.randn_like(edge)
    torch.autograd.backward([wn, we], [gn, ge])
    assert torch.equal(node.grad, gn * pixel_w[:, None])
    assert torch.equal(edge.grad, ge * edge_w)
    # layer_inputs applies them when the recipe asks for it, with the batch's own weights
    from copsctl.train.finetune import layer_inputs
    for on in (False, True):
        node.grad = edge.grad = None
        ln, le, truth = layer_inputs({"node_costs": node, "edge_costs": edge}, batch,
                                     cfg.replace({"finetune.gradient_weights": on}), 0)
        assert len(truth) == B and torch.equal(ln, node)
        torch.autograd.backward([ln, le], [gn, ge])
        own = torch.from_numpy(np.stack([g.weights for g in truth]))[:, None]
        assert torch.equal(node.grad, gn * own if on else gn)
        assert torch.equal(edge.grad, ge * edge_w if on else ge)
    with pytest.raises(InputError, match="pixel_weights"):
        weight_gradients(node, edge, pixel_w[:, :-1], edge_w)
    with pytest.raises(InputError, match="edge_weights"):
        weight_gradients(node, edge, pixel_w, edge_w[:, :-1])


def test_batch_exact_pq_of_the_ground_truth_is_one(setup):
    _, _, cfg, table = setup
    batch = _batch(cfg)
    sols = []
    for b in range(2):
        pan = batch["panoptic"][b].numpy().ravel()
        seg = batch["segments"][b]
        cls_of = dict(zip(seg["ids"].tolist(), seg["classes"].tolist()))
        # Void pixels joined to the first segment: void is ignored by PQ anyway.
        labels = np.array([cls_of.get(int(i), seg["classes"][0].item()) for i in pan])
        ids = np.where(pan == 0, seg["ids"][0].item(), pan)
        s, c = panoptic_segments(labels, np.unique(ids, return_inverse=True)[1],
                                 table.thing_mask)
        sols.append(ImageSolution(labels, s, c, np.zeros(0, np.uint8), 0.0))
    # Thresholds 0: nothing is rejected; crowd segments are matched by nothing and ignored.
    pq = batch_exact_pq(sols, batch, table.to_categories(), thing_area=0, stuff_area=0)
    assert pq.all.pq == pytest.approx(1.0)


def _args(root, overrides, out, *extra):
    args = ["finetune", "--recipe", "synthetic_tiny", "--out", str(out)]
    for o in overrides + ["train.iterations=4", "train.checkpoint_every=2",
                          "train.validate_every=0", "train.val_images=1"] + list(extra):
        args += ["--set", o]
    return args


def test_finetune_end_to_end_and_exact_resume(setup, tmp_path):
    root, overrides, _, _ = setup
    full = tmp_path / "full"
    res = runner.invoke(app, _args(root, overrides, full, "finetune.cost_dropout=0.2") +
                        ["--weights", str(root / "pre.pt")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in full.iterdir()) == ["best.pt", "checkpoint.pt", "metrics.jsonl",
                                                      "recipe.yaml", "tensorboard"]
    best = load_checkpoint(full / "best.pt")
    assert best["kind"] == "best" and "optimizer" not in best and best["iteration"] in (0, 4)
    train = read_metrics(full / "metrics.jsonl", "train")
    assert [r["iteration"] for r in train] == [1, 2, 3, 4]
    for key in ("pq_surrogate", "pq_exact", "pq_exact_th", "pq_exact_st", "time_network",
                "time_forward_solve", "time_backward_solve", "time_loss", "changed_nodes"):
        assert all(np.isfinite(r[key]) for r in train), key
    assert all(0 <= r["pq_surrogate"] <= 1 and r["loss"] == pytest.approx(1 - r["pq_surrogate"],
                                                                          abs=1e-5) for r in train)
    assert read_metrics(full / "metrics.jsonl", "val")[0]["iteration"] == 4
    ckpt = load_checkpoint(full / "checkpoint.pt")
    assert ckpt["kind"] == "finetune" and ckpt["iteration"] == 4
    assert ckpt["init_weights"] == str(root / "pre.pt")
    # Frozen parts are exactly the pre-trained weights.
    pre = load_checkpoint(root / "pre.pt")["model"]
    for k, v in ckpt["model"].items():
        if k.startswith("backbone.") or "running" in k:
            assert torch.equal(v, pre[k]), k
    assert not torch.equal(ckpt["model"]["semantic_head.predictor.weight"],
                           pre["semantic_head.predictor.weight"])

    # The same run, stopped by Ctrl-C after iteration 2, then resumed: identical weights.
    part = tmp_path / "part"

    def stop_at_2(event):
        if event.kind == "step" and event.iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)

    cfg_args = overrides + ["train.iterations=4", "train.checkpoint_every=2",
                            "train.validate_every=0", "train.val_images=1",
                            "finetune.cost_dropout=0.2"]
    stopped = finetune("synthetic_tiny", part, weights=root / "pre.pt", overrides=cfg_args,
                       progress=stop_at_2)
    assert stopped.interrupted and stopped.iteration == 2
    res = runner.invoke(app, ["finetune", "--out", str(part), "--resume"])
    assert res.exit_code == 0, res.output
    resumed = load_checkpoint(part / "checkpoint.pt")
    for k, v in ckpt["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    a = [r["loss"] for r in read_metrics(full / "metrics.jsonl", "train")]
    b = [r["loss"] for r in read_metrics(part / "metrics.jsonl", "train")]
    assert a == b


def test_control_run_uses_the_pretraining_losses(setup, tmp_path):
    root, overrides, _, _ = setup
    out = tmp_path / "ce"
    res = runner.invoke(app, _args(root, overrides, out, "finetune.loss=cross_entropy",
                                   "train.iterations=2") + ["--weights", str(root / "pre.pt")])
    assert res.exit_code == 0, res.output
    rec = read_metrics(out / "metrics.jsonl", "train")[-1]
    assert "loss_semantic" in rec and "loss_affinity" in rec and "pq_surrogate" not in rec
    ckpt = load_checkpoint(out / "checkpoint.pt")
    pre = load_checkpoint(root / "pre.pt")["model"]
    changed = {k for k, v in ckpt["model"].items() if not torch.equal(v, pre[k])}
    assert changed and all(k in ckpt["trainable"] for k in changed)


def test_gate_reference_and_cost_norm_reach_the_step(setup, tmp_path, monkeypatch):
    """finetune.surrogate_gate / backward_reference / cost_norm: recorded in the run's recipe
    and used by the step (the lifted reference adds one solve per image; the normalised
    costs have the requested root mean square)."""
    import copsctl.train.amwc_layer as amwc

    root, overrides, _, _ = setup
    seen = {"rms": [], "gate": []}
    real_norm, real_loss = amwc.normalize_cost_scale, amwc.lifted_pq_surrogate

    def norm(node, edge, target, distances):
        n, e = real_norm(node, edge, target, distances)
        mask = torch.from_numpy(grid_edge_mask(n.shape[2], n.shape[3], distances))
        centred = n[0] - n[0].mean(dim=0, keepdim=True)
        vals = torch.cat([centred.flatten(), e[0][mask]])
        seen["rms"].append(float(vals.detach().pow(2).mean().sqrt()))
        return n, e

    def loss(*args, gate="area", **kwargs):
        seen["gate"].append(gate)
        return real_loss(*args, gate=gate, **kwargs)

    monkeypatch.setattr(amwc, "normalize_cost_scale", norm)
    monkeypatch.setattr(amwc, "lifted_pq_surrogate", loss)
    out = tmp_path / "opts"
    res = runner.invoke(app, _args(root, overrides, out, "train.iterations=2",
                                   "finetune.surrogate_gate=intersection",
                                   "finetune.backward_reference=lifted",
                                   "finetune.cost_norm=1.5", "finetune.num_perturbations=2")
                        + ["--weights", str(root / "pre.pt")])
    assert res.exit_code == 0, res.output
    assert seen["gate"] == ["intersection"] * 2
    assert seen["rms"] and all(r == pytest.approx(1.5, rel=1e-4) for r in seen["rms"])
    recipe = (out / "recipe.yaml").read_text()
    for line in ("surrogate_gate: intersection", "backward_reference: lifted", "cost_norm: 1.5"):
        assert line in recipe
    train = read_metrics(out / "metrics.jsonl", "train")
    # N = 2 perturbed solves and one unperturbed lifted solve per image with a gradient.
    assert all(r["backward_solves"] % 3 == 0 and 0 <= r["reference_changed"] <= 1
               for r in train)
    assert any(r["backward_solves"] > 0 for r in train)


def test_bad_inputs_exit_2_with_one_line(setup, tmp_path):
    root, overrides, cfg, table = setup
    res = runner.invoke(app, _args(root, overrides, tmp_path / "a"))
    assert res.exit_code == 2 and "--weights is required" in res.output
    assert not (tmp_path / "a").exists()
    other = load_recipe("synthetic_tiny", ["model.semantic_head_channels=8"])
    with pytest.warns(UserWarning):
        m = PanopticModel.from_config(other, table.num_classes)
    save_checkpoint(tmp_path / "other.pt", {"kind": "pretrain", "model": m.state_dict(),
                                            "recipe": other.dump()})
    res = runner.invoke(app, _args(root, overrides, tmp_path / "b") +
                        ["--weights", str(tmp_path / "other.pt")])
    assert res.exit_code == 2 and "model.semantic_head_channels" in res.output
    assert len(res.output.strip().splitlines()) == 1
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("x")
    res = runner.invoke(app, _args(root, overrides, tmp_path / "c") +
                        ["--weights", str(root / "pre.pt")])
    assert res.exit_code == 2 and "not empty" in res.output
    res = runner.invoke(app, _args(root, overrides, tmp_path / "d", "finetune.lambda_min=0") +
                        ["--weights", str(root / "pre.pt")])
    assert res.exit_code == 2 and "finetune.lambda_min" in res.output


def test_speed_benchmark_runs(setup, capsys):
    from copsctl.benchmarks.finetune_speed import main

    root, overrides, _, _ = setup
    main(["--recipe", "synthetic_tiny", "--weights", str(root / "pre.pt"), "--data",
          str(root / "syn"), "--batch", "2", "--perturbations", "2", "--workers", "1", "2",
          "--iterations", "1"])
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| solver threads | network s")
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["1", "2"]


def test_gain_table():
    from copsctl.benchmarks.finetune_gain import table

    res = {"baseline": {"PQ": 40.0, "PQ_th": 30.0, "PQ_st": 50.0},
           "calibrated": {"PQ": 42.0, "PQ_th": 33.0, "PQ_st": 51.0},
           "control": {0: {"PQ": 41.0, "PQ_th": 31.0, "PQ_st": 51.0},
                       1: {"PQ": 43.0, "PQ_th": 33.0, "PQ_st": 53.0}},
           "finetuned": {0: {"PQ": 45.0, "PQ_th": 37.0, "PQ_st": 52.0},
                         1: {"PQ": 45.0, "PQ_th": 39.0, "PQ_st": 52.0}},
           "ablations": {"no loss weight": {"PQ": 44.0, "PQ_th": 36.0, "PQ_st": 52.0}}}
    md = table(res).splitlines()
    assert md[2] == "| baseline | 40.0 | 30.0 | 50.0 |"
    assert md[3] == "| calibrated | 42.0 | 33.0 | 51.0 |"
    assert md[4] == "| control (2 seeds) | 42.0 ± 1.4 | 32.0 ± 1.4 | 52.0 ± 1.4 |"
    assert md[6] == "| fine-tuned, no loss weight (1 seed) | 44.0 | 36.0 | 52.0 |"
    assert md[7] == "| gain over control | 3.0 ± 1.4 | 6.0 ± 0.0 | 0.0 ± 1.4 |"
    assert md[8] == "| gain over calibrated | 3.0 ± 0.0 | 5.0 ± 1.4 | 1.0 ± 0.0 |"


def test_gain_benchmark_end_to_end(setup, tmp_path, capsys):
    """Baseline, calibrated (fitted first), control, fine-tuned and one ablation, scored on
    a held-out dataset; a second call only reads the finished runs."""
    import shutil

    from copsctl.benchmarks.finetune_gain import main

    root, overrides, _, _ = setup
    weights = tmp_path / "pre" / "checkpoint.pt"
    weights.parent.mkdir()
    shutil.copy(root / "pre.pt", weights)
    from copsctl.config import save_recipe

    save_recipe(load_recipe("synthetic_tiny", overrides), weights.parent / "recipe.yaml")
    make_synthetic(tmp_path / "test", train=1, val=2, size=(64, 64), seed=5)
    args = ["--recipe", "synthetic_tiny", "--weights", str(weights), "--data", str(root / "syn"),
            "--test", str(tmp_path / "test"), "--out", str(tmp_path / "gain"), "--seeds", "0",
            "--iterations", "1", "--ablate", "no dropout:finetune.cost_dropout=0,finetune.lr_factors=[1,1,1,1]"]
    main(args)
    assert (weights.parent / "calibration.yaml").is_file()
    res = json.loads((tmp_path / "gain" / "results.json").read_text())
    assert set(res) >= {"baseline", "calibrated", "control", "finetuned", "ablations"}
    assert list(res["ablations"]) == ["no dropout"]
    ablated = load_recipe(tmp_path / "gain" / "ablate_0" / "recipe.yaml").finetune
    assert ablated.cost_dropout == 0 and ablated.lr_factors == (1.0,) * 4
    md = (tmp_path / "gain" / "results.md").read_text()
    assert "| fine-tuned, no dropout (1 seed) |" in md and "| gain over calibrated |" in md
    stamp = (tmp_path / "gain" / "finetuned_seed0" / "checkpoint.pt").stat().st_mtime_ns
    main(args)
    assert (tmp_path / "gain" / "finetuned_seed0" / "checkpoint.pt").stat().st_mtime_ns == stamp


_AUTHORS = ["finetune.trainable=[semantic_head,affinity_head]", "finetune.lr_factors=[0.05,0.025]",
            "finetune.learn_cost_scale=true", "finetune.learn_cost_offset=true",
            "finetune.cost_lr_factor=2", "finetune.loss_weight=10",
            "finetune.surrogate_gate=official", "finetune.surrogate_form=official",
            "finetune.surrogate_eps=0.1", "finetune.cost_dropout=0.1",
            "finetune.min_instance_size=3", "finetune.surrogate_matching=all",
            "finetune.gradient_weights=true"]


def test_parameter_groups_get_exactly_their_learning_rates(setup):
    from copsctl.model import finetuning_groups, part_modules
    from copsctl.train.checkpoint import load_model
    from copsctl.train.schedule import WarmupPolySchedule

    root, overrides, cfg, _ = setup
    model, _, _ = load_model(root / "pre.pt", recipe=cfg)
    freeze_for_finetuning(model, trainable=["semantic_head", "affinity_head"],
                          learn_cost_scale=True, learn_cost_offset=True)
    groups = finetuning_groups(model, ["semantic_head", "affinity_head"], [0.05, 0.025], 2.0)
    parts = part_modules(model)
    ids = [{id(p) for p in ps} for ps, _ in groups]
    assert ids[0] == {id(p) for p in parts["semantic_head"].parameters() if p.requires_grad}
    assert ids[1] == {id(p) for p in parts["affinity_head"].parameters() if p.requires_grad}
    assert ids[2] == {id(p) for p in model.cost_transform.parameters()}
    assert [f for _, f in groups] == [0.05, 0.025, 2.0]
    opt = torch.optim.Adam([{"params": ps, "lr": 1.0, "lr_scale": f} for ps, f in groups])
    sched = WarmupPolySchedule(base_lr=1e-3, iterations=10, warmup_iters=0, warmup_factor=1.0,
                               poly_power=0.9)
    lr = sched.apply(opt, 3)
    assert [g["lr"] for g in opt.param_groups] == [lr * 0.05, lr * 0.025, lr * 2.0]
    # All factors 1: one group, as before these keys existed.
    assert finetuning_groups(model, ["semantic_head"], (), 1.0) is None
    with pytest.raises(InputError, match="one factor per"):
        finetuning_groups(model, ["semantic_head", "affinity_head"], [0.1], 1.0)


def test_authors_settings_run_and_resume_exactly_with_a_calibration(setup, tmp_path):
    """The authors' settings, a calibration beside the weights, learned cost scalars in
    their own Adam group: the calibration lands in the run's recipe, best.pt is kept, the
    optimizer groups carry their rates, and an interrupted run resumes bit-exactly."""
    import shutil

    from copsctl.calibration import Calibration

    root, overrides, _, _ = setup
    weights = tmp_path / "pre" / "checkpoint.pt"
    weights.parent.mkdir()
    shutil.copy(root / "pre.pt", weights)
    Calibration(2.0, (1.0, 0.5, 1.0), (1.0, 0.5, 0.0)).save(weights.parent / "calibration.yaml")
    sets = overrides + ["train.iterations=4", "train.checkpoint_every=2", "train.validate_every=2",
                        "train.val_images=1", "train.warmup_iters=0"] + _AUTHORS
    full = finetune("synthetic_tiny", tmp_path / "full", weights=weights, overrides=sets)
    assert not full.interrupted
    rec = load_recipe(tmp_path / "full" / "recipe.yaml")
    assert rec.calibration.node_scale == 2.0 and rec.calibration.edge_offset == (1.0, 0.5, 0.0)
    ckpt = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    scales = [g["lr_scale"] for g in ckpt["optimizer"]["param_groups"]]
    assert scales == [0.05, 0.025, 2.0]
    assert (tmp_path / "full" / "best.pt").is_file()
    assert not torch.equal(ckpt["model"]["cost_transform.edge_offset"],
                           torch.zeros_like(ckpt["model"]["cost_transform.edge_offset"]))

    def stop_at_3(event):
        if event.kind == "step" and event.iteration == 3:
            os.kill(os.getpid(), signal.SIGINT)

    part = finetune("synthetic_tiny", tmp_path / "part", weights=weights, overrides=sets,
                    progress=stop_at_3)
    assert part.interrupted and part.iteration == 3
    finetune(None, tmp_path / "part", resume=True)
    resumed = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    for k, v in ckpt["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    a = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl", "train")]
    b = [r["loss"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl", "train")]
    assert a == b
    best = load_checkpoint(tmp_path / "full" / "best.pt")
    assert best["val"]["PQ"] >= max(r["PQ"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl", "val"))


def test_small_predictions_leave_the_loss_and_free_their_ground_truth():
    from copsctl.train.surrogate import Matching
    from copsctl.train.amwc_layer import _drop_predictions

    m = Matching(pred=np.array([0, 2]), gt=np.array([1, 0]), iou=np.array([0.9, 0.4]),
                 unmatched_pred=np.array([1, 3]), unmatched_gt=np.array([2]),
                 ignored_gt=np.array([], np.int64))
    d = _drop_predictions(m, np.array([True, False, False, True]))
    # Prediction 2 (matched to gt 0) and 1 are dropped; 3 becomes 1.
    assert d.pred.tolist() == [0] and d.gt.tolist() == [1] and d.iou.tolist() == [0.9]
    assert d.unmatched_pred.tolist() == [1] and d.unmatched_gt.tolist() == [0, 2]


def test_a_run_folder_is_resumed_only_by_the_command_that_made_it(setup, tmp_path):
    """recipe.yaml notes the command of its run: ``pretrain --resume`` on a fine-tuning
    folder that has no checkpoint yet (stopped before the first one) trained a pre-training
    run into it; with a checkpoint, its kind was already checked."""
    from cli_checks import fails_in_one_line

    root, overrides, _, _ = setup
    ft = tmp_path / "ft"
    res = runner.invoke(app, _args(root, overrides, ft, "train.iterations=1") +
                        ["--weights", str(root / "pre.pt")])
    assert res.exit_code == 0, res.output
    assert "# run folder of copsctl finetune\n" in (ft / "recipe.yaml").read_text()
    pre = tmp_path / "pre"
    args = ["pretrain", "--recipe", "synthetic_tiny", "--out", str(pre)]
    for o in overrides + ["train.iterations=1", "train.val_images=1"]:
        args += ["--set", o]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    (ft / "checkpoint.pt").unlink()
    before = {p.name: p.read_bytes() for p in ft.iterdir() if p.is_file()}
    fails_in_one_line(runner.invoke(app, ["pretrain", "--out", str(ft), "--resume"]),
                      str(ft), "copsctl finetune run", "copsctl finetune --resume")
    assert {p.name: p.read_bytes() for p in ft.iterdir() if p.is_file()} == before
    for cut in (False, True):
        if cut:
            (pre / "checkpoint.pt").unlink()
        fails_in_one_line(runner.invoke(app, ["finetune", "--out", str(pre), "--resume"]),
                          str(pre), "copsctl pretrain run", "copsctl pretrain --resume")
    # a folder of a version that wrote no note is resumed as before
    text = (pre / "recipe.yaml").read_text().replace("# run folder of copsctl pretrain\n", "")
    (pre / "recipe.yaml").write_text(text)
    res = runner.invoke(app, ["pretrain", "--out", str(pre), "--resume"])
    assert res.exit_code == 0, res.output
