"""What becomes of every ground-truth thing: matched, merged, split, wrong class, rejected.

Run as::

    PYTHONPATH=. .venv/bin/python -m copsctl.benchmarks.thing_errors --data DATA_DIR
        --weights CKPT [CKPT ...] [--recipe synthetic_finetune] [--split val]
        [--set key=value ...]

Each checkpoint's costs go through the same path as validation (solver, stuff merging,
nearest upsampling, small-segment rejection; :mod:`copsctl.train.validate`). Every
non-crowd ground-truth thing segment ``g`` that is at least the thing threshold in area
(the smaller ones are rejected even when predicted perfectly; see
:mod:`copsctl.benchmarks.pq_ceiling`) gets the first outcome that applies:

- **matched**: a kept predicted segment of its class has IoU > 0.5 with it (a true
  positive of exact PQ);
- **wrong class**: fewer than half of its pixels are predicted as its class;
- **merged**: the predicted segment of its class that covers most of ``g`` covers more
  than half of ``g`` and at least 30 % of another ground-truth instance of the class
  (a missing internal boundary);
- **spilled**: that segment covers more than half of ``g`` but no other instance: it
  reaches into other pixels;
- **rejected**: before rejection one segment of its class covered more than half of
  ``g``, and the small-segment rejection removed it;
- **split**: no segment of its class covers half of ``g`` (it is in pieces).

The fine-tuning table of the README uses it to show what training through the solver
changes.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np

OUTCOMES = ("matched", "wrong class", "merged", "spilled", "rejected", "split")


def _overlaps(a: np.ndarray, b: np.ndarray) -> dict[tuple[int, int], int]:
    """Pixel counts of every (id in a, id in b) pair."""
    pairs, counts = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1, return_counts=True)
    return {(int(x), int(y)): int(n) for (x, y), n in zip(pairs.T, counts)}


def classify_things(gt_ids: np.ndarray, gt_segments: Sequence, kept_ids: np.ndarray,
                    kept_segments: Sequence, raw_ids: np.ndarray, raw_segments: Sequence,
                    thing_categories: set[int], min_area: float) -> dict[str, int]:
    """Outcome counts (module docstring) of one image's ground-truth things.

    ``kept_ids`` / ``kept_segments`` are the prediction after the small-segment rejection,
    ``raw_ids`` / ``raw_segments`` the same prediction without it; id 0 is void; segments
    need ``id``, ``category_id`` (and ``iscrowd`` for the ground truth).
    """
    gt_cat = {int(s.id): int(s.category_id) for s in gt_segments}
    kept_cat = {int(s.id): int(s.category_id) for s in kept_segments}
    raw_cat = {int(s.id): int(s.category_id) for s in raw_segments}
    gt_area = dict(zip(*(v.tolist() for v in np.unique(gt_ids, return_counts=True))))
    kept_area = dict(zip(*(v.tolist() for v in np.unique(kept_ids, return_counts=True))))
    raw_area = dict(zip(*(v.tolist() for v in np.unique(raw_ids, return_counts=True))))
    with_kept = _overlaps(gt_ids, kept_ids)
    with_raw = _overlaps(gt_ids, raw_ids)
    counts = dict.fromkeys(OUTCOMES, 0)
    for s in gt_segments:
        g, c = int(s.id), int(s.category_id)
        area = gt_area.get(g, 0)
        if c not in thing_categories or s.iscrowd or area < min_area:
            continue
        kept = {p: n for (q, p), n in with_kept.items() if q == g and p and kept_cat[p] == c}
        raw = {p: n for (q, p), n in with_raw.items() if q == g and p and raw_cat[p] == c}
        best = max(kept, key=kept.get, default=None)
        if any(n / (area + kept_area[p] - n) > 0.5 for p, n in kept.items()):
            outcome = "matched"
        elif sum(raw.values()) < area / 2:
            outcome = "wrong class"
        elif best is not None and kept[best] > area / 2:
            others = [o for (o, p), n in with_kept.items()
                      if p == best and o not in (0, g) and gt_cat.get(o) == c
                      and n >= 0.3 * gt_area[o]]
            outcome = "merged" if others else "spilled"
        elif raw and max(raw.values()) > area / 2 and \
                raw_area[max(raw, key=raw.get)] < min_area:
            outcome = "rejected"
        else:
            outcome = "split"
        counts[outcome] += 1
    return counts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True, nargs="+")
    ap.add_argument("--recipe", default="synthetic_finetune")
    ap.add_argument("--split", default="val")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)

    import warnings

    import torch

    from ..config import load_recipe
    from ..costs.cache import solver_problem
    from ..costs.network import network_costs
    from ..panoptic.postprocess import panoptic_from_solution
    from ..solver import solve_many
    from ..train.checkpoint import load_model
    from ..train.data import make_dataset, open_split
    from ..train.validate import ground_truth

    cfg = load_recipe(args.recipe, [f"data.root={os.path.abspath(args.data)}"] + args.overrides)
    split = {"val": cfg.data.val_split, "train": cfg.data.train_split}.get(args.split, args.split)
    dataset = make_dataset(cfg, open_split(cfg, split), train=False)
    categories = dataset.reader.class_table.to_categories()
    things = {c.id for c in categories if c.isthing}
    partitionable = dataset.thing_classes.astype(bool)
    thing_t, stuff_t = cfg.data.thing_area_threshold, cfg.data.stuff_area_threshold
    rows = []  # printed at the end: a bad checkpoint leaves no half table
    for path in args.weights:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _, _ = load_model(path, recipe=cfg)
        with torch.inference_mode():
            items = list(network_costs(model, dataset, batch_size=8, amp=False))
        results = solve_many([solver_problem(nc, em, dataset.distances, partitionable)
                              for nc, em, _ in items], options=cfg.solver.options())
        total = dict.fromkeys(OUTCOMES, 0)
        for (_, _, meta), res in zip(items, results):
            preds = [panoptic_from_solution(res.labels, res.segments, meta["cost_size"],
                                            categories, meta["image_size"], thing_area=t,
                                            stuff_area=s)
                     for t, s in ((thing_t, stuff_t), (0, 0))]
            gt_ids, gt_segments = ground_truth(dataset, meta["index"])
            counts = classify_things(gt_ids, gt_segments, preds[0].ids, preds[0].segments,
                                     preds[1].ids, preds[1].segments, things, thing_t)
            total = {k: total[k] + counts[k] for k in OUTCOMES}
        n = sum(total.values())
        rows.append(f"| {path} | {n} | " + " | ".join(
            f"{total[k]} ({100 * total[k] / max(n, 1):.0f} %)" for k in OUTCOMES) + " |")
    print(f"recipe {args.recipe}, data {args.data}, split {split}: ground-truth things of at "
          f"least {thing_t:g} px\n")
    print("| weights | things | " + " | ".join(OUTCOMES) + " |")
    print("|---|---|" + "---|" * len(OUTCOMES))
    print("\n".join(rows))


if __name__ == "__main__":
    from . import run

    run(main)
