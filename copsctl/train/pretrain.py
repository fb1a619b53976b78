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

import itertools
import os
import random
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ..errors import InputError
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .distributed import setup
from .logging import METRICS_NAME, TENSORBOARD_DIR, MetricsLogger
from .loop import LoopResult, RunResult, TrainEvent, TrainLoop
from .schedule import WarmupPolySchedule

if TYPE_CHECKING:
    from ..config import Recipe

__all__ = ["RECIPE_NAME", "RESUMABLE_KEYS", "pretrain", "resolve_run_recipe",
           "check_run_dir", "seed_everything"]

RECIPE_NAME = "recipe.yaml"
RUN_FILES = (RECIPE_NAME, CHECKPOINT_NAME, METRICS_NAME, TENSORBOARD_DIR)
"""What a run folder may hold; a folder with anything else is not a run."""

RESUMABLE_KEYS = frozenset({
    "data.root", "data.num_workers", "train.device", "train.log_every",
    "train.checkpoint_every", "train.validate_every", "train.val_images", "solver.workers",
})
"""Keys that ``--resume`` may change: where and how often things happen, never what is
computed (changing anything else would make the resumed run a different run)."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _recipe_diff(a: "Recipe", b: "Recipe") -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s][k]]


def resolve_run_recipe(recipe: str | None, overrides: Sequence[str], run_dir: Path,
                       resume: bool) -> "Recipe":
    """The recipe of a new run, or of a resumed one (its saved recipe, with only
    :data:`RESUMABLE_KEYS` allowed to change)."""
    from ..config import load_recipe

    saved_path = run_dir / RECIPE_NAME
    if not (resume and saved_path.is_file()):
        if recipe is None:
            raise InputError("--recipe is required to start a run (only --resume of an existing "
                             "run folder can do without it)")
        return load_recipe(recipe, overrides)
    saved = load_recipe(saved_path)
    if recipe is None and not overrides:
        return saved
    wanted = load_recipe(recipe, overrides) if recipe is not None else saved.replace(list(overrides))
    changed = [k for k in _recipe_diff(saved, wanted) if k not in RESUMABLE_KEYS]
    if changed:
        k = changed[0]
        raise InputError(f"--resume: `{k}` is {wanted.get(k)!r} but the run was started with "
                         f"{saved.get(k)!r} ({saved_path}); a resumed run may only change "
                         f"{', '.join(sorted(RESUMABLE_KEYS))}")
    return wanted


def check_run_dir(run_dir: Path, resume: bool) -> bool:
    """Check the run folder for a new or resumed run; return whether a checkpoint exists."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--out {run_dir}: exists and is not a folder")
    entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if not resume:
        if entries:
            raise InputError(f"--out {run_dir}: folder is not empty; pass --resume to continue "
                             "the run in it, or choose a new folder")
        return False
    foreign = [e for e in entries if e not in RUN_FILES]
    if foreign:
        raise InputError(f"--out {run_dir}: not a run folder (holds {foreign[0]!r}); "
                         "--resume continues a folder written by copsctl pretrain")
    if entries and RECIPE_NAME not in entries:
        raise InputError(f"--out {run_dir}: holds no {RECIPE_NAME}; cannot resume it")
    return (run_dir / CHECKPOINT_NAME).is_file()


def _to_device(batch: dict, device: torch.device) -> dict:
    keys = ("image", "semantic", "semantic_weights", "affinity", "affinity_weights")
    nb = device.type == "cuda"
    return {k: batch[k].to(device, non_blocking=nb) for k in keys}


def pretrain(recipe: str | None, out: str | Path, *, overrides: Sequence[str] = (),
             resume: bool = False, progress: Callable[[TrainEvent], None] | None = None,
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
    from ..config import save_recipe
    from ..model import PanopticModel, PretrainLoss, total_loss
    from .data import make_dataset, open_split, train_loader
    from .validate import validate_from_recipe

    t_start = time.perf_counter()
    out = Path(out)
    say = log or (lambda msg: None)
    if os.environ.get("RANK", "0") == "0":
        # Report a wrong run folder before recipe problems; the other ranks learn of it
        # from the run_on_main check below (or torchrun ends them when rank 0 exits).
        check_run_dir(out, resume)
    cfg = resolve_run_recipe(recipe, overrides, out, resume)
    ctx = setup(cfg.train.device)
    if ctx.device.type == "cuda":
        # Fixed crop sizes: let cuDNN pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
    try:
        has_ckpt = ctx.run_on_main(lambda: check_run_dir(out, resume))
        B = cfg.train.batch_size
        if B % ctx.world_size:
            raise InputError(f"`train.batch_size` ({B}) must be divisible by the number of "
                             f"processes ({ctx.world_size})")
        per_rank = B // ctx.world_size

        # Everything that reads input comes before anything is written.
        train_reader = open_split(cfg, cfg.data.train_split)
        val_dataset = None
        if ctx.is_main:
            val_dataset = make_dataset(cfg, open_split(cfg, cfg.data.val_split), train=False)
            if val_dataset.reader.class_table != train_reader.class_table:
                raise InputError(f"{val_dataset.reader.json_path}: categories differ from those "
                                 f"of {train_reader.json_path}")
        train_dataset = make_dataset(cfg, train_reader, train=True)
        class_table = train_reader.class_table

        ckpt = load_checkpoint(out / CHECKPOINT_NAME) if has_ckpt else None
        if ckpt is not None and ckpt.get("kind") != "pretrain":
            raise InputError(f"{out / CHECKPOINT_NAME}: written by {ckpt.get('kind')!r}, not by "
                             "pretrain")
        start = int(ckpt["iteration"]) if ckpt is not None else 0

        loader = train_loader(train_dataset, batch_size=per_rank, seed=cfg.train.seed,
                              start=start * B, rank=ctx.rank, world_size=ctx.world_size,
                              num_workers=cfg.data.num_workers,
                              pin_memory=ctx.device.type == "cuda")
        # The loader has its own generator, so building it and reading the first batch
        # (which fails early on a broken file, before anything is written) leave the
        # global random state alone.
        batches = iter(loader)
        batches = itertools.chain([next(batches)], batches)

        seed_everything(cfg.train.seed)
        with warnings.catch_warnings():
            if ckpt is not None:  # the initialisation is overwritten by the checkpoint
                warnings.simplefilter("ignore")
            model = PanopticModel.from_config(cfg, class_table.num_classes,
                                              from_checkpoint=ckpt is not None)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
        model.to(ctx.device)
        if ctx.distributed and ctx.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        amp = cfg.train.amp and ctx.device.type == "cuda"
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp)
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            if amp and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            rngs = ckpt.get("rng") or []
            if len(rngs) == ctx.world_size:
                set_rng_state(rngs[ctx.rank])
            else:
                # Another number of processes: the data order still continues exactly, only
                # dropout draws differ from an uninterrupted run.
                seed_everything(cfg.train.seed + 1000 * start + ctx.rank)
                if ctx.is_main:
                    say(f"checkpoint was written by {len(rngs)} process(es), this run has "
                        f"{ctx.world_size}: random state re-seeded")
        elif ctx.rank:
            torch.manual_seed(cfg.train.seed + ctx.rank)  # different dropout per process

        loss_fn = PretrainLoss.from_config(cfg)

        def step_fn(batch: dict, iteration: int):
            targets = _to_device(batch, ctx.device)
            outputs = net(targets["image"])
            losses = loss_fn(outputs, targets)
            return total_loss(losses), {k: v.detach() for k, v in losses.items()}

        def save_fn(iteration: int, loop_state: dict) -> None:
            rngs = ctx.gather(rng_state())
            if ctx.is_main:
                save_checkpoint(out / CHECKPOINT_NAME, {
                    "kind": "pretrain", "iteration": iteration, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                    "rng": rngs, "loop": loop_state, "recipe": cfg.dump(),
                    "categories": class_table.to_json(), "world_size": ctx.world_size})

        def validate_fn(iteration: int):
            # Ctrl-C during a long validation abandons it; the loop then saves and stops.
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
        ctx.barrier()
        try:
            loop = TrainLoop(model=net, optimizer=optimizer,
                             schedule=WarmupPolySchedule.from_config(cfg.train), step_fn=step_fn,
                             batches=batches, ctx=ctx, iterations=cfg.train.iterations,
                             start_iteration=start, log_every=cfg.train.log_every,
                             checkpoint_every=cfg.train.checkpoint_every,
                             validate_every=cfg.train.validate_every, images_per_step=B,
                             amp=amp, scaler=scaler, save_fn=save_fn,
                             validate_fn=validate_fn,
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
