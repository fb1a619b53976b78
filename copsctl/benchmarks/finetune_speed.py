"""Seconds per fine-tuning iteration and where they go; prints a markdown table.

Run as::

    PYTHONPATH=. .venv/bin/python -m copsctl.benchmarks.finetune_speed
        [--recipe synthetic_finetune] [--weights CKPT] [--data DIR] [--batch 24]
        [--perturbations 5] [--workers 1 2] [--threads 1] [--iterations 3]
        [--set key=value ...]

One fine-tuning step as :func:`copsctl.train.finetune.finetune` runs it (network forward,
cost transform, :class:`~copsctl.train.amwc_layer.AMWCLayer`, the lifted PQ surrogate,
exact batch PQ, backward, Adam step), timed part by part:

- **network**: forward pass of the network and the costs;
- **fwd solve**: the B AMWC problems (``solve_many``) and the lifted label sets;
- **loss**: PQ surrogate and the exact PQ of the batch;
- **bwd solve**: Algorithm 1, the ``B × n`` perturbed multiway cuts in one ``solve_many``;
- **net bwd**: the rest of ``backward()`` (the trainable layers) and the optimizer step.

Each row is the mean over ``--iterations`` steps after one warm-up step, for every
solver thread count of ``--workers``; the solver share is (fwd + bwd solve) / total.
Without ``--weights`` the model has random weights (the solver then sees noisier costs
than after pre-training, which makes its share, if anything, pessimistic); without
``--data`` a temporary synthetic set of ``--batch`` images is made. The torch thread
count is ``--threads`` (on a small shared machine one thread is much faster for these
tiny convolutions). The CPU count and load average are printed so that a reader can
judge the figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..cpus import available_cpus


def _step_timed(model, layer, optimizer, batch, thresholds, categories, cfg, seed):
    from ..train.finetune import batch_exact_pq, layer_inputs, step_surrogate

    t = {}
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    node, edge, ground_truth = layer_inputs(model.costs(model(batch["image"])), batch, cfg, seed)
    t["network"] = time.perf_counter() - t0
    metrics: dict = {}
    solved = layer(node, edge, ground_truth, seed=seed, metrics=metrics)
    t["fwd solve"] = metrics["time_forward_solve"]
    t1 = time.perf_counter()
    res = step_surrogate(solved, thresholds, cfg)
    batch_exact_pq(solved.solutions, batch, categories, thing_area=cfg.data.thing_area_threshold,
                   stuff_area=cfg.data.stuff_area_threshold)
    t["loss"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    res.loss.backward()
    optimizer.step()
    t["bwd solve"] = metrics["time_backward_solve"]
    t["net bwd"] = time.perf_counter() - t2 - t["bwd solve"]
    t["total"] = time.perf_counter() - t0
    return t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="synthetic_finetune")
    ap.add_argument("--weights", default=None, help="pre-trained checkpoint (default: random)")
    ap.add_argument("--data", default=None, help="synthetic dataset folder (default: temporary)")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--perturbations", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)

    from ..config import load_recipe
    from ..data.loader import collate_panoptic
    from ..data.synthetic import make_synthetic
    from ..model import PanopticModel, freeze_for_finetuning
    from ..train.amwc_layer import AMWCLayer
    from ..train.checkpoint import load_model
    from ..train.data import make_dataset, open_split
    from ..train.finetune import surrogate_thresholds

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = str(Path(tmp) / "syn")
            make_synthetic(data, train=args.batch, val=1, size=(128, 128), seed=0)
        cfg = load_recipe(args.recipe, [f"data.root={data}", "train.device=cpu",
                                        f"finetune.num_perturbations={args.perturbations}"]
                          + args.overrides)
        table = open_split(cfg, cfg.data.train_split).class_table
        if args.weights:
            model, _, _ = load_model(args.weights, recipe=cfg)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.manual_seed(0)
                model = PanopticModel.from_config(cfg, table.num_classes)
        freeze_for_finetuning(model, trainable=cfg.finetune.trainable)
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ds = make_dataset(cfg, open_split(cfg, cfg.data.train_split), train=True)
        batch = collate_panoptic([ds[i % len(ds)] for i in range(args.batch)])
        thresholds = surrogate_thresholds(table.thing_mask, cfg)
        categories = table.to_categories()
        h, w = batch["panoptic"].shape[1:]
        print(f"recipe {args.recipe}: batch {args.batch}, n = {args.perturbations}, "
              f"{h}x{w} cost maps, distances {list(cfg.model.distances)}, "
              f"weights {'pre-trained' if args.weights else 'random'}; torch threads "
              f"{args.threads}; {available_cpus()} CPUs, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print()
        cols = ["network", "fwd solve", "loss", "bwd solve", "net bwd", "total"]
        print("| solver threads | " + " | ".join(f"{c} s" for c in cols) + " | solver share |")
        print("|" + "---|" * (len(cols) + 2))
        for workers in args.workers:
            # The recipe's layer (λ range, N, backward reference, solver options), with
            # this row's solver threads.
            layer = AMWCLayer.from_config(cfg, table.thing_mask)
            layer.workers = workers
            rows = [_step_timed(model, layer, optimizer, batch, thresholds, categories, cfg, s)
                    for s in range(args.iterations + 1)][1:]
            mean = {c: float(np.mean([r[c] for r in rows])) for c in cols}
            share = (mean["fwd solve"] + mean["bwd solve"]) / mean["total"]
            print(f"| {workers} | " + " | ".join(f"{mean[c]:.3f}" for c in cols)
                  + f" | {100 * share:.0f} % |")


if __name__ == "__main__":
    from . import run

    run(main)
