"""Network -> solver costs: run a trained model over a split and dump the cost cache.

The library side of ``copsctl dump-costs`` and of validation during training. Images go
through the evaluation transform of :mod:`copsctl.data` (optional resize of the longer
side to ``data.val_size``, padding at the bottom and right to a multiple of 32), the
network gives costs at 1/4 of that resolution, and the costs are cropped to the part of
the canvas that shows the image (``ceil(scaled / 4)`` rows and columns), so padding never
becomes nodes. The solver's output at that grid is mapped back to the original image
size by :mod:`copsctl.panoptic.postprocess` (nearest upsampling), where the small-segment
thresholds of the recipe apply in original pixels.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch

from .cache import STORAGES, CostWriter
from ..errors import InputError

if TYPE_CHECKING:
    from ..data.loader import PanopticDataset

__all__ = ["network_costs", "dump_costs", "batch_costs"]


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def batch_costs(model: torch.nn.Module, images: torch.Tensor, *, device: torch.device,
                amp: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One forward pass of a model in eval mode: a batch of images -> its solver costs.

    Parameters
    ----------
    model : PanopticModel (or a DDP wrapper of one)
    images : (B, 3, H, W) float tensor
        Normalised images (:func:`copsctl.data.transforms.normalize_image`), on any device.
    device : torch.device
        Where the model lives.
    amp : bool
        float16 autocast on CUDA.

    Returns
    -------
    node_costs : (B, K, H/4, W/4) float32 ndarray
    edge_costs : (B, 2m, H/4, W/4) float32 ndarray
        Through the model's cost transform (:meth:`PanopticModel.costs`). Call under
        ``torch.inference_mode``.
    """
    images = images.to(device, non_blocking=True)
    with _autocast(device, amp):
        out = model(images)
    costs = getattr(model, "module", model).costs(out)
    return costs["node_costs"].float().cpu().numpy(), costs["edge_costs"].float().cpu().numpy()


def network_costs(model: torch.nn.Module, dataset: "PanopticDataset", *,
                  indices: Sequence[int] | None = None, batch_size: int = 4,
                  device: str | torch.device = "cpu", amp: bool = True, num_workers: int = 0,
                  should_stop: Callable[[], bool] | None = None
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """Run ``model`` over (a subset of) an evaluation dataset; yield each image's costs.

    Parameters
    ----------
    model : PanopticModel
        Put in eval mode; run under ``torch.inference_mode``.
    dataset : PanopticDataset
        With ``train=False``.
    indices : sequence of int, optional
        Images to run, in this order (default all).
    batch_size, num_workers : int
        Images per forward pass; DataLoader worker processes.
    device : str or torch.device
    amp : bool
        float16 autocast on CUDA (costs are returned as float32 either way).
    should_stop : callable, optional
        Checked between batches; True ends the iteration early.

    Yields
    ------
    node_costs : (K, h, w) float32 ndarray
    edge_maps : (2 m, h, w) float32 ndarray, grid layout
    meta : dict
        ``index``, ``image_id``, ``file_name`` (of the image), ``image_size`` (H, W)
        original, ``cost_size`` (h, w).
    """
    from ..train.data import eval_loader

    if dataset.train:
        raise InputError("`dataset` must be an evaluation dataset (train=False)")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    device = torch.device(device)
    loader = eval_loader(dataset, indices=indices, batch_size=batch_size,
                         num_workers=num_workers, pin_memory=device.type == "cuda")
    stride = dataset.stride
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in loader:
                node, edge = batch_costs(model, batch["image"], device=device, amp=amp)
                for b, meta in enumerate(batch["meta"]):
                    y0, y1, x0, x1 = meta["valid_box"]
                    if y0 or x0:
                        raise InputError("evaluation placements must start at the top-left corner")
                    h, w = math.ceil(y1 / stride), math.ceil(x1 / stride)
                    index = int(batch["index"][b])
                    yield (np.ascontiguousarray(node[b, :, :h, :w]),
                           np.ascontiguousarray(edge[b, :, :h, :w]),
                           {"index": index, "image_id": batch["image_id"][b],
                            "file_name": dataset.reader.image_path(index).name,
                            "image_size": tuple(int(v) for v in meta["orig_size"]),
                            "cost_size": (h, w)})
                if should_stop is not None and should_stop():
                    return
    finally:
        model.train(was_training)


def dump_costs(out: str | os.PathLike, *, run: str | os.PathLike | None = None,
               weights: str | os.PathLike | None = None, recipe: str | None = None,
               overrides: Sequence[str] = (), split: str | None = None,
               batch_size: int = 4, device: str = "auto", limit: int = 0,
               num_workers: int | None = None, dtype: str = "quantized", amp: bool = True,
               calibration: "str | os.PathLike | bool | None" = None,
               json_out: str | os.PathLike | None = None,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the cost cache of a trained network over one split.

    Parameters
    ----------
    out : path-like
        The cost file (:mod:`copsctl.costs.cache`), written atomically.
    run : path-like, optional
        A run folder of ``copsctl pretrain`` / ``finetune``: its ``checkpoint.pt`` and
        ``recipe.yaml``. Exclusive with ``weights``.
    weights : path-like, optional
        A checkpoint (or bare state-dict file, then with ``recipe``).
    recipe : str, optional
        Recipe for data and model settings; default the run's (or the checkpoint's).
    overrides : sequence of str
        ``--set`` overrides applied to that recipe.
    split : str, optional
        Default ``data.val_split``.
    batch_size, num_workers : int
        Images per forward pass; DataLoader workers (default ``data.num_workers``).
    device : str
        auto (CUDA when available), cpu or cuda.
    limit : int
        Only the first ``limit`` images (0: all).
    dtype : {"quantized", "float16", "float32"}
        Storage of the costs in the cost file (:mod:`copsctl.costs.cache`); float32 is exact.
    amp : bool
        float16 autocast on CUDA.
    calibration : path-like or bool, optional
        A calibration file (``copsctl calibrate``) to apply; None: the one beside the
        checkpoint (``calibration.yaml`` in the run folder) if there is one; False: none
        but the recipe's.
    json_out : path-like, optional
        Where the caller will write the summary (``--json``): checked with ``out``
        against the inputs and the split's files before any work, not written here.
    progress : callable, optional
        ``progress(done, total)`` after each image.

    Returns
    -------
    dict
        ``out``, ``images``, ``split``, ``checkpoint``, ``iteration``, ``seconds`` (all of
        it, loading the model included), ``images_per_s`` (images / ``seconds``),
        ``seconds_per_image`` (reading, the network and writing, per image, without the
        start-up), ``device``, ``recipe_hash`` (of the resolved recipe stored in the file).
    """
    from ..calibration import calibration_for
    from ..train.checkpoint import checkpoint_class_table, resolve_model, run_inputs
    from ..train.data import make_dataset, open_split
    from ..train.distributed import resolve_device

    t0 = time.perf_counter()
    if limit < 0:
        raise InputError(f"--limit must be >= 0, got {limit}")
    if num_workers is not None and num_workers < 0:
        raise InputError(f"--num-workers must be >= 0, got {num_workers}")
    if dtype not in STORAGES:  # before the model is loaded (CostWriter checks it there)
        raise InputError(f"--storage must be one of {', '.join(STORAGES)}, got {dtype!r}")
    dev = resolve_device(device, option="--device")
    model, ckpt, cfg, weights = resolve_model(run, weights, recipe=recipe, overrides=overrides,
                                              device=dev, calibration=calibration)
    cal_path = calibration_for(weights, calibration)
    split = split or cfg.data.val_split
    from ..data.check import check_output_beside_data

    reader = open_split(cfg, split)
    inputs = {"--weights" if run is None else "--run checkpoint": weights,
              "--run": run_inputs(run),
              "--recipe": recipe if recipe and os.path.isfile(recipe) else None}
    check_output_beside_data(out, "--out", {split: reader}, inputs=inputs)
    check_output_beside_data(json_out, "--json", {split: reader}, inputs={**inputs, "--out": out})
    dataset = make_dataset(cfg, reader, train=False)
    if dataset.thing_classes.shape[0] != model.num_classes:
        raise InputError(f"{weights}: the model predicts {model.num_classes} classes, the "
                         f"{split} split of {cfg.data.root} has {dataset.thing_classes.shape[0]}")
    stored = checkpoint_class_table(ckpt)
    if stored is not None and not stored.same_classes(reader.class_table):
        raise InputError(f"{weights}: the model was trained on other classes than the {split} "
                         f"split of {cfg.data.root} (category ids or thing flags differ: "
                         "channel k would be read as another class)")
    n = len(dataset) if not limit else min(limit, len(dataset))
    workers = cfg.data.num_workers if num_workers is None else int(num_workers)
    categories = reader.class_table.to_categories()
    t_loop = time.perf_counter()
    with CostWriter(out, categories, cfg.model.distances, recipe=cfg, dtype=dtype) as writer:
        for node, edge, meta in network_costs(model, dataset, indices=range(n),
                                              batch_size=batch_size, device=dev, amp=amp,
                                              num_workers=workers):
            writer.add(node, edge, image_id=meta["image_id"], file_name=meta["file_name"],
                       image_size=meta["image_size"])
            if progress is not None:
                progress(len(writer), n)
    seconds = time.perf_counter() - t0
    loop_seconds = time.perf_counter() - t_loop
    return {"out": str(out), "images": n, "split": split, "checkpoint": str(weights),
            "iteration": ckpt.get("iteration"), "seconds": seconds,
            "images_per_s": n / seconds if seconds > 0 else 0.0,
            "seconds_per_image": loop_seconds / n if n else 0.0, "device": str(dev),
            "recipe_hash": cfg.hash(), "calibration": str(cal_path) if cal_path else None}
