"""What the model sees, for one image: ``copsctl visualize image``.

One PNG with two rows:

- the input image, the ground truth and the prediction as colour overlays
  (:func:`copsctl.visualize.overlay.panoptic_overlay`), the semantic costs as the map of
  the cheapest class per pixel (argmin of the node costs, i.e. the argmax of the class
  probabilities), and a legend of the class colours;
- the affinity costs as cut-probability maps ``sigmoid(-edge cost)``, one per edge
  distance (the larger of a pixel's horizontal and vertical edge), brighter = more
  likely a boundary.

Inputs: a cost file (:mod:`copsctl.costs.cache`, from ``dump-costs`` or ``make-costs``), the
prediction folder ``copsctl solve`` wrote from it, and the dataset the costs were
computed on. The dataset comes from the recipe stored in the cost file (or
``recipe`` / ``overrides``); a ground-truth JSON given explicitly, or the ``<stem>_gt``
folder ``make-costs`` writes beside its cost file, replaces the dataset's ground truth.
Panels whose input is not available (no image for synthetic costs, no prediction folder)
say so instead of failing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..panoptic.format import Category, Segment, load_panoptic_json, read_id_png
from .overlay import (class_map_colors, cut_probability, panoptic_overlay, semantic_argmin)

__all__ = ["ImageView", "load_image_view", "image_figure", "visualize_image"]


@dataclass
class ImageView:
    """Everything one image's picture shows.

    Attributes
    ----------
    image_id : int or str
    file_name : str
    categories : list of K Category
        Contiguous class order of the node costs.
    distances : tuple of m ints
    node_costs : (K, h, w) float32 ndarray
    edge_maps : (2 m, h, w) float32 ndarray, grid layout
    image : (H, W, 3) uint8 ndarray or None
    gt : (ids (H, W) ndarray, list of Segment) or None
    pred : (ids (H, W) ndarray, list of Segment) or None
    """

    image_id: int | str
    file_name: str
    categories: list[Category]
    distances: tuple[int, ...]
    node_costs: np.ndarray
    edge_maps: np.ndarray
    image: np.ndarray | None = None
    gt: tuple[np.ndarray, list[Segment]] | None = None
    pred: tuple[np.ndarray, list[Segment]] | None = None


def _annotation(pset, image_id, json_path: Path):
    for ann in pset.annotations:
        if ann.image_id == image_id:
            return ann
    raise InputError(f"{json_path}: holds no annotation of image {image_id!r}")


def _read_set_image(json_path: Path, png_dir: Path, image_id, size) -> tuple[np.ndarray, list]:
    pset = load_panoptic_json(json_path, png_dir, categories="optional")
    ann = _annotation(pset, image_id, json_path)
    return read_id_png(png_dir / ann.file_name, expected_size=size), list(ann.segments)


def load_image_view(costs: str | os.PathLike, *, pred: str | os.PathLike | None = None,
                    index: int | None = None, image_id: int | str | None = None,
                    recipe: str | None = None, overrides: Sequence[str] = (),
                    split: str | None = None, gt_json: str | os.PathLike | None = None,
                    gt_dir: str | os.PathLike | None = None,
                    pred_json: str | os.PathLike | None = None) -> ImageView:
    """Gather one image's costs, prediction, ground truth and input (module notes).

    Parameters
    ----------
    costs : path-like
        Cost file.
    pred : path-like, optional
        Prediction folder: of ``copsctl solve``, or a COCO panoptic PNG folder (or a
        panoptic JSON + PNG folder of the same name without suffix).
    pred_json : path-like, optional
        Prediction COCO panoptic JSON; its PNG folder is ``pred`` if given, else the JSON
        path without suffix.
    index, image_id : optional
        Which image: its position in the cost file, or its id (default: position 0).
    recipe, overrides : optional
        Recipe (and ``--set`` overrides) locating the dataset; default the cost file's
        stored recipe (overrides then apply to it).
    split : str, optional
        Dataset split holding the image (default the recipe's ``data.val_split``).
    gt_json, gt_dir : path-like, optional
        Ground truth in COCO panoptic format, used instead of the dataset's.

    Returns
    -------
    ImageView
    """
    from ..config import load_recipe
    from ..costs.cache import CostFile
    from ..metrics.pq import set_paths

    costs = Path(costs)
    if index is not None and image_id is not None:
        raise InputError("pass either --index or --image-id, not both")
    with CostFile(costs) as cf:
        if image_id is not None:
            wanted = [i for i, v in enumerate(cf.image_ids) if str(v) == str(image_id)]
            if not wanted:
                raise InputError(f"{costs}: holds no image with id {image_id!r}")
            index = wanted[0]
        node, edge, meta = cf.read(0 if index is None else index)
        categories, distances, stored = list(cf.categories), tuple(cf.distances), cf.recipe
    image_id, size = meta["image_id"], meta["image_size"]

    if recipe is not None:
        cfg = load_recipe(recipe, overrides)
    else:
        cfg = stored
        if cfg is not None and overrides:
            cfg = cfg.replace(list(overrides))
        elif overrides:
            raise InputError(f"--set: {costs} stores no copsctl recipe to override; pass "
                             "--recipe")

    image = gt = None
    if cfg is not None and cfg.data.root:
        from ..data.datasets import open_reader

        split = split or cfg.data.val_split
        reader = open_reader(cfg.data.dataset, cfg.data.root, split, check_files=False)
        if image_id not in reader.image_ids:
            raise InputError(f"image {image_id!r} of {costs} is not in the {split} split of "
                             f"{cfg.data.root} (pass --split, or --set data.root=...)")
        sample = reader[reader.image_ids.index(image_id)]
        if sample.image.shape[:2] != tuple(size):
            raise InputError(f"{sample.image_path}: size {sample.image.shape[0]}x"
                             f"{sample.image.shape[1]} differs from the size {size[0]}x{size[1]} "
                             f"recorded in {costs}")
        image, gt = sample.image, (sample.panoptic, list(sample.segments))
    elif split is not None:
        raise InputError("--split needs a dataset: the cost file stores no recipe with "
                         "data.root; pass --recipe")

    if gt_json is None and gt_dir is None and gt is None:
        # make-costs writes its ground truth beside the cost file (<stem>_gt/).
        beside = costs.with_name(costs.stem + "_gt") / "panoptic_gt.json"
        if beside.is_file():
            gt_json = beside
    if gt_json is not None or gt_dir is not None:
        gj, gd = set_paths(gt_json, gt_dir, "ground truth")
        gt = _read_set_image(gj, gd, image_id, size)

    pred_view = None
    if pred_json is not None or pred is not None:
        pj, pd = set_paths(pred_json, pred, "prediction") \
            if pred_json is not None or Path(pred).is_dir() else set_paths(pred, None, "prediction")
        pred_view = _read_set_image(pj, pd, image_id, size)
    return ImageView(image_id=image_id, file_name=meta["file_name"], categories=categories,
                     distances=distances, node_costs=node, edge_maps=edge, image=image, gt=gt,
                     pred=pred_view)


def _image_pq(view: ImageView) -> float | None:
    """PQ of this one image (percent), when both ground truth and prediction are there."""
    if view.gt is None or view.pred is None:
        return None
    from ..metrics.pq import PanopticPair, evaluate_arrays

    pair = PanopticPair(view.image_id, view.gt[0], view.gt[1], view.pred[0], view.pred[1])
    return 100.0 * evaluate_arrays([pair], view.categories).all.pq


def image_figure(view: ImageView, out: str | os.PathLike, *, title: str | None = None,
                 dpi: int = 100) -> Path:
    """Draw :class:`ImageView` to a PNG (module notes for the panels); return its path."""
    from ..atomic import atomic_path
    from ._mpl import new_figure, save_figure

    K = len(view.categories)
    m = len(view.distances)
    H, W = (view.image.shape[:2] if view.image is not None else
            view.gt[0].shape if view.gt is not None else
            view.pred[0].shape if view.pred is not None else view.node_costs.shape[1:])
    extent = (0, W, H, 0)  # cost-resolution maps drawn over the image's pixel frame
    cols = max(5, m)
    fig = new_figure(figsize=(2.3 * cols, 5.0))
    grid = fig.add_gridspec(2, cols)

    def panel(row: int, col: int, name: str):
        ax = fig.add_subplot(grid[row, col])
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

    def missing(ax, what: str) -> None:
        ax.set_facecolor("#eeeeee")
        ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", fontsize=8,
                transform=ax.transAxes, color="#666666")

    ax = panel(0, 0, "input")
    if view.image is not None:
        ax.imshow(view.image, extent=extent, interpolation="nearest")
    else:
        missing(ax, "image (synthetic costs)")
    ax = panel(0, 1, "ground truth")
    if view.gt is not None:
        ax.imshow(panoptic_overlay(view.gt[0], view.gt[1], view.categories, view.image),
                  extent=extent, interpolation="nearest")
    else:
        missing(ax, "ground truth")
    pq = _image_pq(view)
    ax = panel(0, 2, "prediction" + (f" (PQ {pq:.1f})" if pq is not None else ""))
    if view.pred is not None:
        ax.imshow(panoptic_overlay(view.pred[0], view.pred[1], view.categories, view.image),
                  extent=extent, interpolation="nearest")
    else:
        missing(ax, "prediction")
    ax = panel(0, 3, "semantic costs: argmin")
    ax.imshow(class_map_colors(semantic_argmin(view.node_costs), view.categories),
              extent=extent, interpolation="nearest")

    import matplotlib.patches as mpatches

    ax = fig.add_subplot(grid[0, 4:])
    ax.axis("off")
    handles = [mpatches.Patch(color=np.asarray(c.color) / 255.0,
                              label=f"{c.name}{'' if c.isthing else ' (stuff)'}")
               for c in view.categories]
    ax.legend(handles=handles, loc="center left", fontsize=7, frameon=False,
              ncol=1 if K <= 10 else 2, title="classes", title_fontsize=8)

    cut = cut_probability(view.edge_maps, view.distances)
    image_mappable = None
    for i, d in enumerate(view.distances):
        ax = panel(1, i, f"cut probability, d = {d}")
        image_mappable = ax.imshow(cut[i], extent=extent, vmin=0.0, vmax=1.0, cmap="magma",
                                   interpolation="nearest")
    if image_mappable is not None:
        fig.colorbar(image_mappable, ax=[fig.axes[-1]], fraction=0.046, pad=0.04)
    fig.suptitle(title or f"image {view.image_id} ({view.file_name})", fontsize=10)
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        save_figure(fig, tmp, dpi=dpi)
    return out


def visualize_image(costs: str | os.PathLike, out: str | os.PathLike, *,
                    pred: str | os.PathLike | None = None, index: int | None = None,
                    image_id: int | str | None = None, recipe: str | None = None,
                    overrides: Sequence[str] = (), split: str | None = None,
                    gt_json: str | os.PathLike | None = None,
                    gt_dir: str | os.PathLike | None = None,
                    pred_json: str | os.PathLike | None = None, title: str | None = None) -> dict:
    """Load one image's view (:func:`load_image_view`) and draw it to ``out`` (PNG).

    Returns
    -------
    dict
        ``out``, ``image_id``, ``file_name``, ``pq`` (this image's PQ in percent, or None
        without ground truth or prediction) and which panels had data (``image``, ``gt``,
        ``pred``: bool).
    """
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out}: must be a .png file")
    view = load_image_view(costs, pred=pred, index=index, image_id=image_id, recipe=recipe,
                           overrides=overrides, split=split, gt_json=gt_json, gt_dir=gt_dir,
                           pred_json=pred_json)
    image_figure(view, out, title=title)
    return {"out": str(out), "image_id": view.image_id, "file_name": view.file_name,
            "pq": _image_pq(view), "image": view.image is not None, "gt": view.gt is not None,
            "pred": view.pred is not None}
