"""Pre-training (section 4.2): the network on the cross-entropy losses, ``copsctl pretrain``.

A run lives in one folder::

    RUN_DIR/recipe.yaml        the resolved recipe (written before the first step)
    RUN_DIR/checkpoint.pt      the latest checkpoint (copsctl.train.checkpoint), atomic
    RUN_DIR/metrics.jsonl      train and val records (copsctl.train.logging)
    RUN_DIR/tensorboard/       TensorBoard event files

What is specific to pre-training is here: the datasets, the model and Adam, the step
(forward, :class:`~copsctl.model.PretrainLoss`), and how a checkpoint is assembled. The
schedule, the loop, logging, checkpoints and the process group are the shared pieces of
:mod:`copsctl.train`.

Exact resume. A resumed run reproduces the uninterrupted one bit for bit (on the same
device, threads and world size) because everything that influences the next step is
restored: the model, Adam's moments and step counts, the AMP scaler, the iteration (which
fixes the learning rate and the position in the data stream), and the random state of
Python, NumPy and torch in every process (dropout). Samples are a function of their key
(:mod:`copsctl.data.loader`) and the keys a function of the stream position
(:class:`~copsctl.data.sampler.TrainSampler`), so neither DataLoader workers nor the
resume point change them. Bit-for-bit equality is a CPU property: on CUDA the resumed run
continues the same schedule, data and random streams, but cuDNN's fastest kernels are not
bitwise deterministic, so weights agree only to rounding.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import InputError
from .checkpoint import CHECKPOINT_NAME, load_weights
from .distributed import setup
from .loop import RunResult, TrainEvent
from .run import (check_run_dir, make_optimizer, open_run, resolve_run_recipe, run_loop,
                  save_run_checkpoint, seed_everything, targets_to_device, train_batches)

__all__ = ["pretrain"]


def pretrain(recipe: str | None, out: str | Path, *, overrides: Sequence[str] = (),
             resume: bool = False, init: str | os.PathLike | None = None,
             json_out: str | os.PathLike | None = None,
             progress: Callable[[TrainEvent], None] | None = None,
             log: Callable[[str], None] | None = None) -> RunResult:
    """Pre-train the COPS network; see the module notes for the run folder.

    Parameters
    ----------
    recipe : str, optional
        Recipe file or packaged recipe name; optional with ``resume`` (the run's own).
    out : path-like
        The run folder. Must be empty or absent unless ``resume``.
    overrides : sequence of str
        ``section.key=value`` strings applied to the recipe.
    resume : bool
        Continue the run in ``out`` from its checkpoint (start it if it has none).
    init : path-like, optional
        Start a new run from the model weights of this checkpoint (a copsctl checkpoint
        or ``copsctl export`` file, or a bare state dict); its optimizer state and
        iteration are not used. The recipe's ``model`` section must fit the weights.
    json_out : path-like, optional
        Where the caller will write the result (``--json``): checked against the
        dataset's files before anything is written (:func:`~copsctl.train.run.open_run`),
        not written here.
    progress : callable, optional
        Receives the loop's :class:`TrainEvent` (rank 0 only).
    log : callable, optional
        Receives one-line status messages (rank 0 only).

    Returns
    -------
    RunResult

    Raises
    ------
    InputError
        Bad recipe or override, a non-empty ``out`` without ``resume``, a resumed run
        whose recipe changed, missing or broken dataset files, a foreign checkpoint.
    """
    from ..model import PanopticModel, PretrainLoss, total_loss

    t_start = time.perf_counter()
    out = Path(out)
    say = log or (lambda msg: None)
    if init is not None and resume:
        raise InputError(f"--init {init}: starts a new run from those weights, --resume "
                         "continues the run in --out; pass one of them")
    if os.environ.get("RANK", "0") == "0":
        # Report a wrong run folder before recipe problems; the other ranks learn of it
        # from the run_on_main check below (or torchrun ends them when rank 0 exits).
        check_run_dir(out, resume, "pretrain")
    cfg = resolve_run_recipe(recipe, overrides, out, resume)
    ctx = setup(cfg.train.device, option="`train.device`")
    if ctx.device.type == "cuda":
        # Fixed crop sizes: let cuDNN pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
    try:
        train_dataset, val_dataset, class_table, ckpt, start, checked = open_run(
            out, cfg, ctx, "pretrain", resume=resume, json_out=json_out, progress=progress)
        batches = train_batches(train_dataset, cfg, ctx, start)

        seed_everything(cfg.train.seed)
        if init is not None:
            model = _init_model(init, cfg, class_table)
            checked.append(f"model weights from {init}")
        else:
            with warnings.catch_warnings():
                if ckpt is not None:  # the initialisation is overwritten by the checkpoint
                    warnings.simplefilter("ignore")
                model = PanopticModel.from_config(cfg, class_table.num_classes,
                                                  from_checkpoint=ckpt is not None)
        if ckpt is not None:
            load_weights(model, ckpt["model"], out / CHECKPOINT_NAME)
        model.to(ctx.device)
        if ctx.distributed and ctx.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        _, optimizer, scaler, amp = make_optimizer(model, cfg, ctx, ckpt, start, say)
        loss_fn = PretrainLoss.from_config(cfg)

        def step_fn(batch: dict, iteration: int):
            targets = targets_to_device(batch, ctx.device)
            outputs = net(targets["image"])
            losses = loss_fn(outputs, targets)
            return total_loss(losses), {k: v.detach() for k, v in losses.items()}

        def save_fn(iteration: int, loop_state: dict) -> None:
            save_run_checkpoint(out, "pretrain", ctx, iteration=iteration, loop_state=loop_state,
                                model=model, optimizer=optimizer, scaler=scaler, cfg=cfg,
                                class_table=class_table)

        for msg in checked:
            say(msg)
        return run_loop(out, cfg, ctx, "pretrain", model=model, net=net, optimizer=optimizer, scaler=scaler,
                        amp=amp, step_fn=step_fn, batches=batches, save_fn=save_fn,
                        val_dataset=val_dataset, class_table=class_table, ckpt=ckpt, start=start,
                        resume=resume,
                        t_start=t_start, say=say, progress=progress)
    finally:
        ctx.close()


def _init_model(init: str | os.PathLike, cfg, class_table):
    """The model of a new run with the weights of ``init`` (``pretrain --init``), in train
    mode; the weights must fit the recipe's model and the dataset's classes."""
    from .checkpoint import checkpoint_class_table, load_model

    model, ckpt, _ = load_model(init, recipe=cfg)
    stored = checkpoint_class_table(ckpt)
    if model.num_classes != class_table.num_classes or (
            stored is not None and stored.category_ids != class_table.category_ids):
        raise InputError(f"--init {init}: the weights predict {model.num_classes} classes "
                         + (f"(category ids {list(stored.category_ids)}) " if stored else "")
                         + f"but the dataset has {class_table.num_classes} (category ids "
                         f"{list(class_table.category_ids)})")
    return model.train()
