"""Where the perturbed solutions of Algorithm 1 move pixels: towards their ground-truth class or away.

Run as::

    PYTHONPATH=. .venv/bin/python -m copsctl.benchmarks.finetune_flips --weights CKPT
        --data SYNTHETIC_DIR [--recipe synthetic_finetune] [--images 72] [--batch 24]
        [--lambdas 1000 5000 20000 100000] [--gates area intersection]
        [--references forward lifted] [--solvers default legacy] [--set key=value ...]

For the first ``--images`` training images (no augmentation randomness beyond the
dataset's, the network in eval mode), the forward AMWC solutions and the PQ surrogate's
label gradients are computed once; then, for every fixed ``λ`` (no averaging), surrogate
gate and reference, Algorithm 1's perturbed solutions are compared with the reference
solution pixel by pixel. A pixel whose class changed is counted as

- **to gt**: the perturbed class is the pixel's ground-truth class;
- **away**: the reference class was the ground-truth class and the perturbed one is not;
- **other**: neither (or a void pixel).

A gradient step makes the perturbed classes more likely, so "away" flips teach the
network wrong classes. The table shows how the surrogate's area gate decides this.

``--solvers`` runs the forward and backward solves with the recipe's solver settings
(``default``) and with the same settings but the solver's earlier pre-clustering rule
(``legacy``: superpixels of up to 128 nodes of any classes, grown while a merge gains,
and no superpixel or piece moves), side by side in the same run, so that a change of the
solver can be judged by how its backward pass follows the perturbations.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import warnings

import numpy as np
import torch


def _flip_counts(grads, refs, gt_classes):
    to_gt = away = other = 0
    for (node_grad, _), ref, gt in zip(grads, refs, gt_classes):
        flipped = np.flatnonzero(np.abs(node_grad).sum(axis=1) > 0)
        if not flipped.size:
            continue
        new = node_grad[flipped].argmax(axis=1)
        truth, old = gt[flipped], ref[flipped]
        valid = truth != 255
        to_gt += int(np.sum(valid & (new == truth)))
        away += int(np.sum(valid & (old == truth) & (new != truth)))
        other += int(np.sum(~valid | ((new != truth) & (old != truth))))
    return to_gt, away, other


def _count_batch(layer, options, solver, node, edge, batch, args, thresholds, edges, local,
                 nc, ec, gt, counts) -> None:
    """Forward solves of one batch with ``options``, then every gate, reference and λ."""
    from ..train.amwc_layer import (algorithm1, backward_problems, ground_truth_from_batch,
                                    lifted_pq_surrogate)
    from ..train.finetune import STRIDE

    B = node.shape[0]
    layer.options = options
    # The forward solutions do not depend on the gate: solve once, differentiate per gate.
    solved = layer(node, edge, ground_truth_from_batch(batch))
    label_masks = solved.label_masks.detach()
    for gate in args.gates:
        masks = label_masks.clone().requires_grad_(True)
        solved.label_masks = masks
        lifted_pq_surrogate(solved, thresholds, pixel_area=float(STRIDE ** 2),
                            gate=gate).loss.backward()
        problems = backward_problems(solved.solutions, solved.lifted,
                                     masks.grad.double().numpy().reshape(B, masks.shape[1], -1),
                                     nc, edges, ec, local)
        for ref in args.references:
            for lam in args.lambdas:
                grads, _ = algorithm1(problems, np.full((B, 1), float(lam)),
                                      workers=layer.workers, options=options, reference=ref)
                # The reference classes: -1 entries of the node gradient (forward or lifted).
                refs = [np.where(gv.min(axis=1) < 0, gv.argmin(axis=1), sol.labels)
                        for (gv, _), sol in zip(grads, solved.solutions)]
                key = (solver, gate, ref, lam)
                c = _flip_counts(grads, refs, gt)
                counts[key] = tuple(a + b for a, b in zip(counts.get(key, (0, 0, 0)), c))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--recipe", default="synthetic_finetune")
    ap.add_argument("--images", type=int, default=72)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--lambdas", type=float, nargs="+", default=[1000, 5000, 20000, 100000])
    ap.add_argument("--gates", nargs="+", default=["area", "intersection"],
                    choices=["area", "intersection"])
    ap.add_argument("--references", nargs="+", default=["forward"], choices=["forward", "lifted"])
    ap.add_argument("--solvers", nargs="+", default=["default", "legacy"],
                    choices=["default", "legacy"])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)

    from ..config import load_recipe
    from ..data.loader import collate_panoptic
    from ..train.surrogate import class_area_thresholds
    from ..train.amwc_layer import AMWCLayer, solver_inputs
    from .solver import LEGACY_SOLVER
    from ..train.checkpoint import load_model
    from ..train.data import make_dataset, open_split

    cfg = load_recipe(args.recipe, [f"data.root={os.path.abspath(args.data)}"] + args.overrides)
    reader = open_split(cfg, cfg.data.train_split)
    dataset = make_dataset(cfg, reader, train=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _, _ = load_model(args.weights, recipe=cfg)
    model.eval()
    table = reader.class_table
    thresholds = class_area_thresholds(table.thing_mask, cfg.data.thing_area_threshold,
                                       cfg.data.stuff_area_threshold)
    layer = AMWCLayer.from_config(cfg, table.thing_mask)
    solver_options = {"default": layer.options,
                      "legacy": dataclasses.replace(layer.options, **LEGACY_SOLVER)}
    counts: dict = {}
    n = min(args.images, len(dataset))
    for start in range(0, n, args.batch):
        batch = collate_panoptic([dataset[i] for i in range(start, min(start + args.batch, n))])
        with torch.no_grad():
            costs = model.costs(model(batch["image"]))
        node, edge = costs["node_costs"], costs["edge_costs"]
        B, K, h, w = node.shape
        edges, local, nc, ec = solver_inputs(node, edge, cfg.model.distances)
        gt = torch.nn.functional.interpolate(batch["semantic"][:, None].float(), size=(h, w),
                                             mode="nearest")[:, 0].long().numpy().reshape(B, -1)
        for solver in args.solvers:
            options = solver_options[solver]
            _count_batch(layer, options, solver, node, edge, batch, args, thresholds, edges,
                         local, nc, ec, gt, counts)

    print(f"recipe {args.recipe}, weights {args.weights}: {n} training images, "
          f"{cfg.model.distances} distances, network in eval mode\n")
    print("| solver | gate | reference | λ | flips to gt | away from gt | other |")
    print("|---|---|---|---|---|---|---|")
    for (solver, gate, ref, lam), (a, b, c) in sorted(counts.items()):
        print(f"| {solver} | {gate} | {ref} | {lam:g} | {a} | {b} | {c} |")


if __name__ == "__main__":
    from . import run

    run(main)
