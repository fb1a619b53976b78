"""The highest exact PQ the COPS pipeline can reach on a split: the ground truth as prediction.

Run as::

    PYTHONPATH=. .venv/bin/python -m copsctl.benchmarks.pq_ceiling --data DATA_DIR
        [--recipe synthetic_finetune] [--split val] [--set key=value ...]
        [--thing-areas 0 64 128 ...]

The network predicts costs at 1/4 of the (evaluation-transformed) image, the solver labels
that grid, and :mod:`copsctl.panoptic.postprocess` upsamples the labels (nearest) and rejects
segments below the recipe's area thresholds. A perfect network and a perfect solver
still lose what those two steps lose. This script measures it with three oracles that
are scored by the same exact PQ (:mod:`copsctl.metrics.pq`) as every model:

- **ground truth at full resolution, rejection**: the ground-truth segments themselves,
  with the small-segment rejection applied (what the rejection alone costs);
- **ground truth on the cost grid, no rejection**: every cost pixel takes the
  ground-truth segment that covers most of the image pixels it is upsampled to (void
  only where all of them are void), then the pipeline's upsampling (what the
  resolution alone costs);
- **ground truth on the cost grid, rejection**: both, i.e. the pipeline's ceiling.

With ``--thing-areas`` the last oracle is repeated for other thing thresholds. A model's
PQ can exceed the ceiling only by tricks the oracle does not play (for example growing a
small segment past the threshold while its IoU stays above 0.5).
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def _cost_grid_segments(gt_ids: np.ndarray, seg_ids: np.ndarray, cost_size: tuple[int, int]
                        ) -> np.ndarray:
    """(h, w) index into ``seg_ids`` per cost pixel: the segment covering most of the image
    pixels the pipeline's nearest upsampling gives that cost pixel (-1: only void)."""
    from ..panoptic.postprocess import nearest_index

    H, W = gt_ids.shape
    h, w = cost_size
    cell = (nearest_index(h, H)[:, None] * w + nearest_index(w, W)[None, :]).ravel()
    row = {int(v): j for j, v in enumerate(seg_ids)}
    values, inverse = np.unique(gt_ids, return_inverse=True)
    seg = np.asarray([row.get(int(v), -1) for v in values], np.int64)[inverse.ravel()]
    known = seg >= 0
    S = len(seg_ids)
    votes = np.zeros((h * w, max(S, 1)), np.int64)
    np.add.at(votes, (cell[known], seg[known]), 1)
    best = votes.argmax(axis=1)
    best[votes.sum(axis=1) == 0] = -1
    return best.reshape(h, w)


def ceiling_rows(cfg, split: str, thing_areas=()) -> list[tuple[str, dict[str, float]]]:
    """``(oracle name, pq_metrics)`` of each oracle (module docstring) on ``split`` of the
    recipe ``cfg``'s dataset; ``thing_areas`` adds rows with other thing thresholds."""
    from ..data.transforms import eval_placement
    from ..metrics.pq import PanopticPair, PQCounts, PQResult, image_counts
    from ..panoptic.postprocess import panoptic_from_segments
    from ..train.data import make_dataset, open_split
    from ..train.validate import ground_truth, pq_metrics

    reader = open_split(cfg, split)
    dataset = make_dataset(cfg, reader, train=False)
    categories = reader.class_table.to_categories()
    index_of = {c.id: i for i, c in enumerate(categories)}
    thing_t, stuff_t = cfg.data.thing_area_threshold, cfg.data.stuff_area_threshold
    oracles = [("ground truth at full resolution, rejection", "full", thing_t, stuff_t),
               ("ground truth on the cost grid, no rejection", "grid", 0.0, 0.0),
               ("ground truth on the cost grid, rejection", "grid", thing_t, stuff_t)]
    oracles += [(f"ground truth on the cost grid, thing threshold {t:g} px", "grid", t, stuff_t)
                for t in thing_areas]
    totals = [PQCounts.zeros([c.id for c in categories]) for _ in oracles]
    for i in range(len(dataset)):
        gt_ids, gt_segments = ground_truth(dataset, i)
        # Crowd regions are ignored by PQ; the oracle leaves them void.
        own = np.asarray([s.id for s in gt_segments if not s.iscrowd], np.int64)
        own_class = np.asarray([index_of[s.category_id] for s in gt_segments if not s.iscrowd],
                               np.int64)
        # The evaluation transform's image size, as network_costs sees it (no image read).
        sh, sw = eval_placement(image_size=gt_ids.shape, longer_side=dataset.eval_longer_side,
                                pad_multiple=dataset.eval_pad_multiple).scaled_size
        cost_size = (-(-sh // dataset.stride), -(-sw // dataset.stride))
        maps = {"full": _cost_grid_segments(gt_ids, own, gt_ids.shape),
                "grid": _cost_grid_segments(gt_ids, own, cost_size)}
        for k, (_, grid, t_thing, t_stuff) in enumerate(oracles):
            pred = panoptic_from_segments(maps[grid], own_class, categories, gt_ids.shape,
                                          thing_area=t_thing, stuff_area=t_stuff)
            totals[k] = totals[k] + image_counts(
                PanopticPair(i, gt_ids, gt_segments, pred.ids, pred.segments), categories)
    return [(name, pq_metrics(PQResult.from_counts(total, categories, num_images=len(dataset))))
            for (name, *_), total in zip(oracles, totals)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--recipe", default="synthetic_finetune")
    ap.add_argument("--split", default="val")
    ap.add_argument("--thing-areas", type=float, nargs="*", default=[])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)

    from ..config import load_recipe

    cfg = load_recipe(args.recipe, [f"data.root={os.path.abspath(args.data)}"] + args.overrides)
    split = {"val": cfg.data.val_split, "train": cfg.data.train_split}.get(args.split, args.split)
    rows = ceiling_rows(cfg, split, args.thing_areas)
    print(f"recipe {args.recipe}, data {args.data}, split {split}: thresholds things "
          f"{cfg.data.thing_area_threshold:g} px, stuff {cfg.data.stuff_area_threshold:g} px\n")
    print("| oracle | PQ | PQ_th | PQ_st | RQ_th | SQ_th |")
    print("|---|---|---|---|---|---|")
    for name, m in rows:
        print(f"| {name} | {m['PQ']:.1f} | {m['PQ_th']:.1f} | {m['PQ_st']:.1f} | "
              f"{m['RQ_th']:.1f} | {m['SQ_th']:.1f} |")


if __name__ == "__main__":
    from . import run

    run(main)
