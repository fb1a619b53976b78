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

import itertools
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ..errors import InputError
from .checkpoint import (CHECKPOINT_NAME, checkpoint_class_table, load_checkpoint, load_model,
                         rng_state, save_checkpoint, set_rng_state)
from .distributed import setup
from .logging import MetricsLogger
from .loop import LoopResult, RunResult, TrainEvent, TrainLoop
from .pretrain import RECIPE_NAME, check_run_dir, resolve_run_recipe, seed_everything
from .schedule import WarmupPolySchedule

if TYPE_CHECKING:
    from ..config import Recipe
    from ..panoptic import Category

__all__ = ["finetune", "drop_costs", "batch_exact_pq", "iteration_seed",
           "STRIDE"]

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
    from ..panoptic import Segment
    from ..postprocess import panoptic_from_segments

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


def _to_device(batch: dict, device: torch.device) -> dict:
    keys = ("image", "semantic", "semantic_weights", "affinity", "affinity_weights")
    nb = device.type == "cuda"
    return {k: batch[k].to(device, non_blocking=nb) for k in keys}


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
    progress, log : callable, optional
        As in :func:`copsctl.train.pretrain.pretrain`.

    Returns
    -------
    RunResult
    """
    from ..config import save_recipe
    from ..metrics.surrogate import class_area_thresholds
    from ..model import PanopticModel, PretrainLoss, freeze_for_finetuning, total_loss
    from .amwc_layer import AMWCLayer, ground_truth_from_batch, lifted_pq_surrogate
    from .data import make_dataset, open_split, train_loader
    from .validate import validate_from_recipe

    t_start = time.perf_counter()
    out = Path(out)
    say = log or (lambda msg: None)
    cfg = resolve_run_recipe(recipe, overrides, out, resume)
    ctx = setup(cfg.train.device)
    try:
        has_ckpt = ctx.run_on_main(lambda: check_run_dir(out, resume))
        B = cfg.train.batch_size
        if B % ctx.world_size:
            raise InputError(f"`train.batch_size` ({B}) must be divisible by the number of "
                             f"processes ({ctx.world_size})")
        per_rank = B // ctx.world_size

        # Everything that reads input comes before anything is written.
        train_reader = open_split(cfg, cfg.data.train_split)
        class_table = train_reader.class_table
        val_dataset = None
        if ctx.is_main:
            val_dataset = make_dataset(cfg, open_split(cfg, cfg.data.val_split), train=False)
            if val_dataset.reader.class_table != class_table:
                raise InputError(f"{val_dataset.reader.json_path}: categories differ from those "
                                 f"of {train_reader.json_path}")
        train_dataset = make_dataset(cfg, train_reader, train=True)

        ckpt = load_checkpoint(out / CHECKPOINT_NAME) if has_ckpt else None
        if ckpt is not None and ckpt.get("kind") != "finetune":
            raise InputError(f"{out / CHECKPOINT_NAME}: written by {ckpt.get('kind')!r}, not by "
                             "finetune")
        start = int(ckpt["iteration"]) if ckpt is not None else 0
        if ckpt is None:
            model = _initial_model(cfg, weights, class_table.num_classes, class_table)
            init_weights = str(weights)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = PanopticModel.from_config(cfg, class_table.num_classes,
                                                  from_checkpoint=True)
            model.load_state_dict(ckpt["model"])
            init_weights = str(ckpt.get("init_weights", ""))
            if weights is not None and ctx.is_main:
                say(f"resuming from {out / CHECKPOINT_NAME}; --weights is not used")

        loader = train_loader(train_dataset, batch_size=per_rank, seed=cfg.train.seed,
                              start=start * B, rank=ctx.rank, world_size=ctx.world_size,
                              num_workers=cfg.data.num_workers,
                              pin_memory=ctx.device.type == "cuda")
        batches = iter(loader)
        batches = itertools.chain([next(batches)], batches)

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
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        amp = cfg.train.amp and ctx.device.type == "cuda"
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp)
        seed_everything(cfg.train.seed)
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            if amp and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            rngs = ckpt.get("rng") or []
            if len(rngs) == ctx.world_size:
                set_rng_state(rngs[ctx.rank])
            else:
                seed_everything(cfg.train.seed + 1000 * start + ctx.rank)
        elif ctx.rank:
            torch.manual_seed(cfg.train.seed + ctx.rank)

        categories = class_table.to_categories()
        thresholds = class_area_thresholds(class_table.thing_mask, cfg.data.thing_area_threshold,
                                           cfg.data.stuff_area_threshold)
        layer = AMWCLayer.from_config(cfg, class_table.thing_mask)
        ce_loss = PretrainLoss.from_config(cfg)
        surrogate = f.loss == "pq_surrogate"
        ct = model.cost_transform

        def step_fn(batch: dict, iteration: int):
            t0 = time.perf_counter()
            targets = _to_device(batch, ctx.device)
            outputs = net(targets["image"])
            if not surrogate:
                losses = ce_loss(outputs, targets)
                return total_loss(losses), {k: v.detach() for k, v in losses.items()}
            costs = model.costs(outputs)
            node, edge = costs["node_costs"], costs["edge_costs"]
            seed = iteration_seed(cfg.train.seed, iteration, ctx.rank)
            if f.cost_dropout > 0:
                gen = torch.Generator(device=node.device)
                gen.manual_seed(seed)
                node, edge = drop_costs(node, edge, f.cost_dropout, gen)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            metrics: dict = {"time_network": time.perf_counter() - t0}
            # The layer records its timings here; time_backward_solve arrives during
            # backward, before the loop reads the dict.
            solved = layer(node, edge, ground_truth_from_batch(batch), seed=seed, metrics=metrics)
            t1 = time.perf_counter()
            # Areas and IoUs need float32 at least: no autocast for the loss.
            with torch.autocast(device_type=ctx.device.type, enabled=False):
                result = lifted_pq_surrogate(solved, thresholds, pixel_area=float(STRIDE ** 2))
            pq = batch_exact_pq(solved.solutions, batch, categories,
                                thing_area=cfg.data.thing_area_threshold,
                                stuff_area=cfg.data.stuff_area_threshold)
            metrics.update(pq_surrogate=result.pq, pq_exact=pq.all.pq, pq_exact_th=pq.things.pq,
                           pq_exact_st=pq.stuff.pq, time_loss=time.perf_counter() - t1)
            if f.learn_cost_scale:
                metrics.update(node_scale=float(ct.log_node_scale.exp()),
                               edge_scale=float(ct.log_edge_scale.exp()))
            return result.loss, metrics

        def save_fn(iteration: int, loop_state: dict) -> None:
            rngs = ctx.gather(rng_state())
            if ctx.is_main:
                save_checkpoint(out / CHECKPOINT_NAME, {
                    "kind": "finetune", "iteration": iteration, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                    "rng": rngs, "loop": loop_state, "recipe": cfg.dump(),
                    "categories": class_table.to_json(), "world_size": ctx.world_size,
                    "init_weights": init_weights, "trainable": trainable})

        def validate_fn(iteration: int):
            return validate_from_recipe(model, val_dataset, cfg, device=ctx.device,
                                        batch_size=per_rank,
                                        should_stop=lambda: loop.stop_requested)

        logger = None
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_recipe(cfg, out / RECIPE_NAME)
            logger = MetricsLogger(out, resume_iteration=start if resume else None)
            if ckpt is not None:
                say(f"resuming {out} at iteration {start} of {cfg.train.iterations}")
            else:
                say(f"fine-tuning {len(trainable)} parameter tensors "
                    f"({sum(p.numel() for p in params)} weights) with loss {f.loss}")
        ctx.barrier()
        try:
            loop = TrainLoop(model=net, optimizer=optimizer,
                             schedule=WarmupPolySchedule.from_config(cfg.train), step_fn=step_fn,
                             batches=batches, ctx=ctx, iterations=cfg.train.iterations,
                             start_iteration=start, log_every=cfg.train.log_every,
                             checkpoint_every=cfg.train.checkpoint_every,
                             validate_every=cfg.train.validate_every, images_per_step=B,
                             amp=amp, scaler=scaler, save_fn=save_fn, validate_fn=validate_fn,
                             logger=logger, progress=progress,
                             loop_state=ckpt.get("loop") if ckpt is not None else None)
            result: LoopResult = loop.run()
        finally:
            if logger is not None:
                logger.close()
        return RunResult.from_loop(out, result, iterations=cfg.train.iterations,
                                   resumed_from=start if ckpt is not None else None,
                                   seconds=time.perf_counter() - t_start, is_main=ctx.is_main)
    finally:
        ctx.close()
