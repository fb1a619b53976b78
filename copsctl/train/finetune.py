"""Fully differentiable training through the AMWC solver (sections 3.3, 4.2): ``copsctl finetune``.

Starts from a pre-trained checkpoint (``--weights``) and trains the parts named by
``finetune.trainable`` (the paper: the semantic and affinity heads and the last layer of
each decoder; the backbone and every batch-norm layer frozen, see
:func:`copsctl.model.freeze_for_finetuning`), optionally with learnable cost scales and
offsets (``finetune.learn_cost_scale`` / ``learn_cost_offset``).

Two losses (``finetune.loss``):

``pq_surrogate`` (COPS)
    costs -> optional cost dropout -> :class:`~copsctl.train.amwc_layer.AMWCLayer` (the
    solver forward, Algorithm 1 backward) -> the PQ surrogate (6) of the segmentation
    (:func:`~copsctl.train.amwc_layer.lifted_pq_surrogate`), the only loss.
``cross_entropy`` (the control)
    the pre-training losses (:class:`~copsctl.model.PretrainLoss`) with the same
    trainable parameters, schedule and iterations: continued pre-training, to tell what
    the solver-in-the-loop training adds.

The run folder, checkpoints (``kind = "finetune"``), exact resume, the JSONL and
TensorBoard logs and validation with exact PQ are those of :mod:`copsctl.train.pretrain`
and the shared loop. Per iteration the surrogate run logs (the paper's Figure 5):

- ``pq_surrogate``: the surrogate PQ of the batch (``1 - loss``), in [0, 1];
- ``pq_exact``, ``pq_exact_th``, ``pq_exact_st``: exact PQ of the batch's solver output
  at cost resolution after small-segment rejection (thresholds divided by 16), against
  the batch's ground truth at that resolution, in [0, 1];
- the time split in seconds: ``time_network`` (forward pass of the network and the cost
  transform), ``time_forward_solve``, ``time_loss`` (surrogate and exact PQ),
  ``time_backward_solve`` (Algorithm 1); the rest of ``seconds_per_iter`` is the
  network's backward pass, the optimizer step and ``data_seconds``;
- ``labels_per_image`` (lifted labels), ``changed_nodes`` (fraction of nodes whose class
  a perturbation changed) and, when learned, the cost scales.

Reproducibility: the ``λ`` draws and the cost-dropout masks of iteration ``it`` are
drawn from generators seeded with ``(train.seed, it, rank)``, so a resumed run repeats
them exactly.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ..errors import InputError
from .checkpoint import CHECKPOINT_NAME, checkpoint_class_table, load_model, load_weights
from .distributed import setup
from .loop import RunResult, TrainEvent
from .run import (RECIPE_NAME, make_optimizer, open_run, resolve_run_recipe, run_loop,
                  save_run_checkpoint, seed_everything, targets_to_device, train_batches)

if TYPE_CHECKING:
    from ..config import Recipe
    from ..panoptic.format import Category

__all__ = ["finetune", "drop_costs", "weight_gradients", "layer_inputs", "surrogate_thresholds",
           "step_surrogate", "batch_exact_pq", "iteration_seed", "STRIDE"]

STRIDE = 4
"""The network's output stride: costs are at 1/4 of the input resolution."""


def iteration_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """A 63-bit seed for the random draws of one training step."""
    return int(np.random.SeedSequence([seed, iteration, rank]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def drop_costs(node_costs: torch.Tensor, edge_costs: torch.Tensor, p: float,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Cost dropout: each pixel loses all its node costs, each edge its cost, with prob. ``p``.

    A dropped pixel gets cost 0 for every class (no preference; its neighbours decide
    through the edges) and a dropped edge cost 0 (indifferent). The kept costs are not
    rescaled: costs are energies whose balance decides the solution, and scaling by
    ``1 / (1 - p)`` would shift it. Gradients reach the kept costs only.

    Parameters
    ----------
    node_costs : (B, K, h, w) Tensor
    edge_costs : (B, 2m, h, w) Tensor
    p : float
        Drop probability in [0, 1).
    generator : torch.Generator
        On the costs' device; fixes the masks.
    """
    if not 0 <= p < 1:
        raise InputError(f"`p` must lie in [0, 1), got {p}")
    if p == 0:
        return node_costs, edge_costs
    B, _, h, w = node_costs.shape
    dev = node_costs.device
    keep_node = torch.rand((B, 1, h, w), generator=generator, device=dev) >= p
    keep_edge = torch.rand(tuple(edge_costs.shape), generator=generator, device=dev) >= p
    return node_costs * keep_node, edge_costs * keep_edge


class _GradientWeights(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by fixed weights."""

    @staticmethod
    def forward(ctx, x, weights):
        ctx.save_for_backward(weights)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (weights,) = ctx.saved_tensors
        return grad * weights, None


def weight_gradients(node_costs: torch.Tensor, edge_costs: torch.Tensor,
                     pixel_weights: torch.Tensor, edge_weights: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The costs unchanged, their gradients weighted as the authors' backward pass does
    (``finetune.gradient_weights``): node gradients times ``pixel_weights`` (0 on void
    and crowd pixels, 1 elsewhere), edge gradients times the affinity loss weights
    (0 on edges the affinity loss ignores; the thing and small-instance factors of
    :mod:`copsctl.data.targets` elsewhere).

    Parameters
    ----------
    node_costs : (B, K, h, w) Tensor
    edge_costs : (B, 2m, h, w) Tensor
    pixel_weights : (B, h, w) Tensor
    edge_weights : (B, 2m, h, w) Tensor
    """
    B, _, h, w = node_costs.shape
    if tuple(pixel_weights.shape) != (B, h, w):
        raise InputError(f"`pixel_weights` (shape {tuple(pixel_weights.shape)}) must have "
                         f"shape {(B, h, w)}")
    if edge_weights.shape != edge_costs.shape:
        raise InputError(f"`edge_weights` (shape {tuple(edge_weights.shape)}) must have the "
                         f"shape of the edge costs {tuple(edge_costs.shape)}")
    pw = pixel_weights.to(node_costs.device, node_costs.dtype)[:, None]
    ew = edge_weights.to(edge_costs.device, edge_costs.dtype)
    return _GradientWeights.apply(node_costs, pw), _GradientWeights.apply(edge_costs, ew)


def layer_inputs(costs: dict, batch: dict, cfg: "Recipe", seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor, list]:
    """What the AMWC layer gets in a fine-tuning step: the network's node and edge costs
    (:meth:`~copsctl.model.PanopticModel.costs`) after the recipe's cost dropout (masks
    drawn from ``seed``), cost normalisation (``finetune.cost_norm``, ``scale_invariant``)
    and gradient weights (``finetune.gradient_weights``), and the batch's ground truth
    (:func:`~copsctl.train.amwc_layer.ground_truth_from_batch`)."""
    from .amwc_layer import ground_truth_from_batch, normalize_cost_scale

    f = cfg.finetune
    node, edge = costs["node_costs"], costs["edge_costs"]
    if f.cost_dropout > 0:
        gen = torch.Generator(device=node.device)
        gen.manual_seed(seed)
        node, edge = drop_costs(node, edge, f.cost_dropout, gen)
    if f.cost_norm > 0 or f.scale_invariant:   # at most one of them (copsctl.config)
        node, edge = normalize_cost_scale(node, edge, f.cost_norm if f.cost_norm > 0 else None,
                                          cfg.model.distances)
    ground_truth = ground_truth_from_batch(batch)
    if f.gradient_weights:
        pixel_w = torch.from_numpy(np.stack([gt.weights for gt in ground_truth]))
        node, edge = weight_gradients(node, edge, pixel_w, batch["affinity_weights"])
    return node, edge, ground_truth


def surrogate_thresholds(isthing, cfg: "Recipe") -> tuple[np.ndarray, float]:
    """(K,) area thresholds of the surrogate's gate and the area of one cost pixel in
    their unit, for the recipe's ``finetune.surrogate_gate``.

    ``area`` and ``intersection`` state them in input pixels (``data.*_area_threshold``;
    one cost pixel is ``STRIDE²`` of them). ``official`` is the authors' training gate:
    thresholds in cost pixels, ``t / STRIDE`` for things and ``t / STRIDE²`` for stuff
    (the authors lower the stuff threshold on training crops), slope 0.1 per cost pixel.
    """
    from .surrogate import class_area_thresholds

    d = cfg.data
    if cfg.finetune.surrogate_gate == "official":
        return class_area_thresholds(isthing, d.thing_area_threshold / STRIDE,
                                     d.stuff_area_threshold / STRIDE ** 2), 1.0
    return class_area_thresholds(isthing, d.thing_area_threshold, d.stuff_area_threshold), \
        float(STRIDE ** 2)


def step_surrogate(solved, thresholds, cfg: "Recipe"):
    """The PQ surrogate of a fine-tuning step: the layer's segmentation at cost resolution
    (``1 / STRIDE``) with the recipe's gate, counts, smoothing and minimum segment size
    (``finetune.surrogate_*``, ``min_instance_size``); ``thresholds`` from
    :func:`surrogate_thresholds`."""
    from .amwc_layer import lifted_pq_surrogate

    f = cfg.finetune
    values, pixel_area = thresholds
    return lifted_pq_surrogate(solved, values, pixel_area=pixel_area,
                               formulation=f.surrogate_form,
                               gate="area" if f.surrogate_gate == "official" else f.surrogate_gate,
                               eps=f.surrogate_eps, min_size=f.min_instance_size)


def batch_exact_pq(solutions, batch: dict, categories: Sequence["Category"], *,
                   thing_area: float, stuff_area: float, stride: int = STRIDE):
    """Exact PQ of the layer's segmentation of a batch, at cost resolution.

    Parameters
    ----------
    solutions : sequence of :class:`~copsctl.train.amwc_layer.ImageSolution`
    batch : dict
        The :func:`~copsctl.data.loader.collate_panoptic` batch (``panoptic`` and
        ``segments`` at cost resolution).
    categories : sequence of Category
        The class table's categories, contiguous order.
    thing_area, stuff_area : float
        Small-segment thresholds in input pixels (divided by ``stride²`` here).

    Returns
    -------
    PQResult
    """
    from ..metrics.pq import PanopticPair, evaluate_arrays
    from ..panoptic.format import Segment
    from ..panoptic.postprocess import panoptic_from_segments

    pan = batch["panoptic"].cpu().numpy()
    h, w = pan.shape[1:]
    area = float(stride * stride)
    pairs = []
    for b, sol in enumerate(solutions):
        pred = panoptic_from_segments(sol.segments.reshape(h, w), sol.segment_classes, categories,
                                      (h, w), thing_area=thing_area / area,
                                      stuff_area=stuff_area / area)
        seg = batch["segments"][b]
        gt = [Segment(int(i), int(categories[int(c)].id), 0, (0, 0, 0, 0), bool(k))
              for i, c, k in zip(seg["ids"].tolist(), seg["classes"].tolist(),
                                 seg["iscrowd"].tolist())]
        pairs.append(PanopticPair(b, pan[b], gt, pred.ids, pred.segments))
    return evaluate_arrays(pairs, categories)


def _initial_model(cfg: "Recipe", weights: str | Path | None, num_classes: int, class_table):
    """The pre-trained model of a new run, checked against the recipe and the dataset."""
    if weights is None:
        raise InputError("--weights is required to start a fine-tuning run (a pre-trained "
                         "checkpoint, e.g. RUN/checkpoint.pt of copsctl pretrain)")
    model, ckpt, _ = load_model(weights, recipe=cfg, num_classes=num_classes)
    stored = checkpoint_class_table(ckpt)
    if stored is not None and stored != class_table:
        raise InputError(f"--weights {weights}: trained on other classes than the recipe's "
                         "dataset")
    return model


def finetune(recipe: str | None, out: str | Path, *, weights: str | Path | None = None,
             overrides: Sequence[str] = (), resume: bool = False,
             calibration: "str | Path | bool | None" = None,
             json_out: str | Path | None = None,
             progress: Callable[[TrainEvent], None] | None = None,
             log: Callable[[str], None] | None = None) -> RunResult:
    """Fine-tune a pre-trained network through the solver (module notes).

    Parameters
    ----------
    recipe : str, optional
        Recipe file or packaged name (e.g. ``synthetic_finetune``); optional with
        ``resume`` (the run's own).
    out : path-like
        The run folder (``recipe.yaml``, ``checkpoint.pt``, ``metrics.jsonl``,
        ``tensorboard/``); must be empty or absent unless ``resume``.
    weights : path-like, optional
        The pre-trained checkpoint to start from; required unless resuming a run that
        has a checkpoint (then the run's own checkpoint is used and ``weights`` ignored).
    overrides : sequence of str
        ``section.key=value`` strings applied to the recipe.
    resume : bool
        Continue the run in ``out`` from its checkpoint.
    calibration : path-like or bool, optional
        Start from this cost calibration (a ``copsctl calibrate`` file, put into the run's
        recipe); None: ``calibration.yaml`` beside ``weights`` if there is one; False: the
        recipe's. A resumed run checks it against the calibration it started from.
    json_out, progress, log
        As in :func:`copsctl.train.pretrain.pretrain`.

    Returns
    -------
    RunResult
    """
    from ..model import (PanopticModel, PretrainLoss, finetuning_groups, freeze_for_finetuning,
                         total_loss)
    from .amwc_layer import AMWCLayer

    t_start = time.perf_counter()
    out = Path(out)
    say = log or (lambda msg: None)
    from ..calibration import calibration_for, load_calibration

    # On resume too: the run's recipe holds the calibration it started from.
    cal_path = calibration_for(weights, calibration) if weights is not None else None
    if cal_path is not None:
        overrides = load_calibration(cal_path).to_overrides() + list(overrides)
    new_run = not (resume and (out / RECIPE_NAME).is_file())
    cfg = resolve_run_recipe(recipe, overrides, out, resume)
    if cal_path is not None and new_run:
        say(f"starting from the cost calibration in {cal_path}")
    ctx = setup(cfg.train.device, option="`train.device`")
    try:
        train_dataset, val_dataset, class_table, ckpt, start, checked = open_run(
            out, cfg, ctx, "finetune", resume=resume, json_out=json_out, progress=progress)
        if ckpt is None:
            model = _initial_model(cfg, weights, class_table.num_classes, class_table)
            init_weights = str(weights)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = PanopticModel.from_config(cfg, class_table.num_classes,
                                                  from_checkpoint=True)
            load_weights(model, ckpt["model"], out / CHECKPOINT_NAME)
            init_weights = str(ckpt.get("init_weights", ""))
            if weights is not None and ctx.is_main:
                say(f"resuming from {out / CHECKPOINT_NAME}; --weights is not used")
        batches = train_batches(train_dataset, cfg, ctx, start)

        f = cfg.finetune
        trainable = freeze_for_finetuning(model, trainable=f.trainable,
                                          learn_cost_scale=f.learn_cost_scale,
                                          learn_cost_offset=f.learn_cost_offset,
                                          freeze_batchnorm=True)
        model.to(ctx.device)
        net = model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        seed_everything(cfg.train.seed)
        groups = finetuning_groups(model, f.trainable, f.lr_factors, f.cost_lr_factor)
        params, optimizer, scaler, amp = make_optimizer(model, cfg, ctx, ckpt, start, say,
                                                        groups=groups)

        categories = class_table.to_categories()
        thresholds = surrogate_thresholds(class_table.thing_mask, cfg)
        layer = AMWCLayer.from_config(cfg, class_table.thing_mask)
        ce_loss = PretrainLoss.from_config(cfg)
        surrogate = f.loss == "pq_surrogate"
        ct = model.cost_transform

        def step_fn(batch: dict, iteration: int):
            t0 = time.perf_counter()
            targets = targets_to_device(batch, ctx.device)
            outputs = net(targets["image"])
            if not surrogate:
                losses = ce_loss(outputs, targets)
                return total_loss(losses), {k: v.detach() for k, v in losses.items()}
            seed = iteration_seed(cfg.train.seed, iteration, ctx.rank)
            node, edge, ground_truth = layer_inputs(model.costs(outputs), batch, cfg, seed)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            metrics: dict = {"time_network": time.perf_counter() - t0}
            # The layer records its timings here; time_backward_solve arrives during
            # backward, before the loop reads the dict.
            solved = layer(node, edge, ground_truth, seed=seed, metrics=metrics)
            t1 = time.perf_counter()
            # Areas and IoUs need float32 at least: no autocast for the loss.
            with torch.autocast(device_type=ctx.device.type, enabled=False):
                result = step_surrogate(solved, thresholds, cfg)
            pq = batch_exact_pq(solved.solutions, batch, categories,
                                thing_area=cfg.data.thing_area_threshold,
                                stuff_area=cfg.data.stuff_area_threshold)
            metrics.update(pq_surrogate=result.pq, pq_exact=pq.all.pq, pq_exact_th=pq.things.pq,
                           pq_exact_st=pq.stuff.pq, time_loss=time.perf_counter() - t1)
            if f.learn_cost_scale:
                metrics.update(node_scale=float(ct.log_node_scale.detach().exp()),
                               edge_scale=float(ct.log_edge_scale.detach().exp().mean()))
            # The weight scales dL/dz, hence the perturbation of Algorithm 1 (Adam's step
            # does not depend on it).
            return f.loss_weight * result.loss, metrics

        def save_fn(iteration: int, loop_state: dict) -> None:
            save_run_checkpoint(out, "finetune", ctx, iteration=iteration, loop_state=loop_state,
                                model=model, optimizer=optimizer, scaler=scaler, cfg=cfg,
                                class_table=class_table, init_weights=init_weights,
                                trainable=trainable)

        for msg in checked:
            say(msg)
        return run_loop(out, cfg, ctx, "finetune", model=model, net=net, optimizer=optimizer, scaler=scaler,
                        amp=amp, step_fn=step_fn, batches=batches, save_fn=save_fn,
                        val_dataset=val_dataset, class_table=class_table, keep_best=f.keep_best,
                        ckpt=ckpt, start=start, resume=resume,
                        t_start=t_start, say=say, progress=progress,
                        start_message=f"fine-tuning {len(trainable)} parameter tensors "
                                      f"({sum(p.numel() for p in params)} weights) with loss "
                                      f"{f.loss}")
    finally:
        ctx.close()
