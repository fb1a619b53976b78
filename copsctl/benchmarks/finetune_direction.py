"""Does a fine-tuning gradient raise exact PQ, on the images it was computed on and on others?

Run as::

    PYTHONPATH=. .venv/bin/python -m copsctl.benchmarks.finetune_direction --weights CKPT
        --data SYNTHETIC_DIR [--calibration RUN/calibration.yaml] [--recipe synthetic_finetune]
        [--batches 12] [--held-out 12] [--held-out-data DIR] [--loss pq_surrogate|cross_entropy]
        [--direction sign|gradient] [--alphas 0 1e-3 2e-3 3e-3] [--scalars] [--set key=value ...]

Two checks, both at a fixed model (the network in eval mode, no cost dropout, the
fine-tuning recipe's training batches in their fixed order):

- **Heads** (default). The gradient of the recipe's loss with respect to the trainable
  parts (``finetune.trainable``) is summed over ``--batches`` training batches (set A).
  The model is then moved by ``alpha`` along the descent direction, either
  ``-sign(g)`` (``sign``: the first step of Adam, every weight by ``alpha``) or
  ``-g`` rescaled to the norm of such a step (``gradient``: the direction of SGD), and
  the mean surrogate and exact PQ (at cost resolution, with the small-segment rejection,
  as the training log reports them) are measured on set A and on ``--held-out`` batches
  (set B) of images the gradient has not seen: training batches of the val split of
  ``--held-out-data`` (a dataset of the same kind made with another seed), or without it
  the training batches after set A (which repeat A's images, differently augmented,
  once A and B together exceed one epoch). A gradient that carries what generalises
  raises PQ on B as well as on A.
- **Cost scalars** (``--scalars``). Per batch, Algorithm 1's gradient with respect to
  the log node scale and the summed log edge scales of the cost transform is compared
  with central finite differences (step 0.15) of the surrogate and of exact PQ: the
  solution does not change when all costs are multiplied by one number, so any
  component of the gradient along the joint scale is a pull of the estimator, not of
  PQ.
"""

from __future__ import annotations

import argparse
import itertools
import os
import warnings

import numpy as np
import torch


class _Probe:
    """One fine-tuning step's forward pass, loss and batch PQ at the current weights."""

    def __init__(self, args):
        from ..calibration import load_calibration
        from ..config import load_recipe
        from ..errors import InputError
        from ..model import PretrainLoss, freeze_for_finetuning
        from ..train.amwc_layer import AMWCLayer
        from ..train.checkpoint import load_model
        from ..train.data import make_dataset, open_split
        from ..train.distributed import setup
        from ..train.finetune import surrogate_thresholds
        from ..train.run import train_batches

        overrides = [f"data.root={os.path.abspath(args.data)}", "train.device=cpu",
                     "finetune.cost_dropout=0"]
        if args.calibration:
            overrides = load_calibration(args.calibration).to_overrides() + overrides
        self.cfg = cfg = load_recipe(args.recipe, overrides + args.overrides)
        self.ctx = setup("cpu")
        reader = open_split(cfg, cfg.data.train_split)
        dataset = make_dataset(cfg, reader, train=True)
        table = reader.class_table
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model, _, _ = load_model(args.weights, recipe=cfg,
                                          num_classes=table.num_classes)
        f = cfg.finetune
        freeze_for_finetuning(self.model, trainable=() if args.scalars else f.trainable,
                              learn_cost_scale=args.scalars, learn_cost_offset=False,
                              freeze_batchnorm=True)
        self.model.eval()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.layer = AMWCLayer.from_config(cfg, table.thing_mask)
        self.thresholds = surrogate_thresholds(table.thing_mask, cfg)
        self.categories = table.to_categories()
        self.ce = PretrainLoss.from_config(cfg)
        n = args.batches + (0 if args.scalars or args.held_out_data else args.held_out)
        self.batches = list(itertools.islice(train_batches(dataset, cfg, self.ctx, 0), n))
        if args.held_out_data and not args.scalars:
            other = cfg.replace({"data.root": os.path.abspath(args.held_out_data)})
            unseen = make_dataset(other, open_split(other, other.data.val_split), train=True)
            if unseen.reader.class_table != table:
                raise InputError(f"--held-out-data {args.held_out_data}: other classes than "
                                 f"--data {args.data}")
            self.batches += list(itertools.islice(train_batches(unseen, other, self.ctx, 0),
                                                  args.held_out))

    def __call__(self, batch: dict, *, loss: str | None = None) -> dict:
        """Surrogate and exact PQ of ``batch``; with ``loss``, also backward of that loss."""
        from ..model import total_loss
        from ..train.finetune import batch_exact_pq, layer_inputs, step_surrogate
        from ..train.run import targets_to_device

        cfg = self.cfg
        targets = targets_to_device(batch, self.ctx.device)
        with torch.set_grad_enabled(loss is not None):
            outputs = self.model(targets["image"])
            if loss == "cross_entropy":
                total_loss(self.ce(outputs, targets)).backward()
                return {}
            node, edge, ground_truth = layer_inputs(self.model.costs(outputs), batch, cfg, 0)
            solved = self.layer(node, edge, ground_truth, seed=1)
            result = step_surrogate(solved, self.thresholds, cfg)
            if loss is not None:
                (cfg.finetune.loss_weight * result.loss).backward()
        pq = batch_exact_pq(solved.solutions, batch, self.categories,
                            thing_area=cfg.data.thing_area_threshold,
                            stuff_area=cfg.data.stuff_area_threshold)
        return {"surrogate": float(result.pq), "pq": pq.all.pq, "pq_th": pq.things.pq,
                "pq_st": pq.stuff.pq}

    def mean(self, batches) -> dict:
        with torch.no_grad():
            rows = [self(b) for b in batches]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _heads(probe: _Probe, args) -> list[dict]:
    a_set, b_set = probe.batches[:args.batches], probe.batches[args.batches:]
    probe.model.zero_grad()
    for batch in a_set:
        probe(batch, loss=args.loss)
    grads = [p.grad.detach().clone() for p in probe.params]
    if args.direction == "sign":
        steps = [g.sign() for g in grads]
    else:
        norm = float(torch.sqrt(sum((g ** 2).sum() for g in grads)))
        n = sum(g.numel() for g in grads)
        steps = [g * (n ** 0.5 / max(norm, 1e-30)) for g in grads]
    where = f"the val split of {args.held_out_data}" if args.held_out_data else "training"
    print(f"# {args.loss} gradient of {args.batches} batches (set A), "
          f"{len(b_set)} held-out batches of {where} (set B), direction {args.direction}")
    print("| alpha | A surrogate | A PQ | A PQ_th | A PQ_st | B surrogate | B PQ | B PQ_th | B PQ_st |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for alpha in args.alphas:
        with torch.no_grad():
            for p, s in zip(probe.params, steps):
                p.sub_(alpha * s)
        a, b = probe.mean(a_set), probe.mean(b_set)
        with torch.no_grad():
            for p, s in zip(probe.params, steps):
                p.add_(alpha * s)
        rows.append({"alpha": alpha, "A": a, "B": b})
        cells = [f"{100 * r[k]:.2f}" for r in (a, b) for k in ("surrogate", "pq", "pq_th", "pq_st")]
        print(f"| {alpha:g} | " + " | ".join(cells) + " |", flush=True)
    return rows


def _scalars(probe: _Probe, args, step: float = 0.15) -> list[dict]:
    ct = probe.model.cost_transform

    def shifted(batch, dn: float, de: float) -> dict:
        with torch.no_grad():
            ct.log_node_scale.add_(dn)
            ct.log_edge_scale.add_(de)
        try:
            with torch.no_grad():
                return probe(batch)
        finally:
            with torch.no_grad():
                ct.log_node_scale.sub_(dn)
                ct.log_edge_scale.sub_(de)

    rows = []
    for batch in probe.batches:
        probe.model.zero_grad()
        probe(batch, loss="pq_surrogate")
        row = {"descent node": -float(ct.log_node_scale.grad),
               "descent edge": -float(ct.log_edge_scale.grad.sum())}
        for name, dn, de in (("node", step, 0.0), ("edge", 0.0, step)):
            hi, lo = shifted(batch, dn, de), shifted(batch, -dn, -de)
            row[f"dsurrogate/d{name}"] = (hi["surrogate"] - lo["surrogate"]) / (2 * step)
            row[f"dPQ/d{name}"] = (hi["pq"] - lo["pq"]) / (2 * step)
        rows.append(row)
    print(f"# {len(rows)} batches: Algorithm 1's descent direction on the log cost scales "
          "against finite differences (per unit of log scale; PQ as a fraction)")
    print("| quantity | mean | standard error | batches > 0 |")
    print("|---|---|---|---|")
    for k in rows[0]:
        v = np.array([r[k] for r in rows])
        print(f"| {k} | {v.mean():+.4f} | {v.std() / np.sqrt(len(v)):.4f} | {int((v > 0).sum())} "
              f"of {len(v)} |")
    return rows


def main(argv=None) -> list[dict]:
    """Run the check of ``argv``; returns its rows (per alpha, or per batch with --scalars)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--calibration", default=None)
    ap.add_argument("--recipe", default="synthetic_finetune")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--held-out", type=int, default=12)
    ap.add_argument("--held-out-data", default=None)
    ap.add_argument("--loss", default="pq_surrogate", choices=["pq_surrogate", "cross_entropy"])
    ap.add_argument("--direction", default="sign", choices=["sign", "gradient"])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 1e-3, 2e-3, 3e-3])
    ap.add_argument("--scalars", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    if args.held_out_data and not os.path.isdir(args.held_out_data):
        from ..errors import InputError

        raise InputError(f"--held-out-data {args.held_out_data}: no such folder")
    torch.manual_seed(0)
    probe = _Probe(args)
    return (_scalars if args.scalars else _heads)(probe, args)


if __name__ == "__main__":
    from . import run

    run(main)
