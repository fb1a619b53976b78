"""What every training command does around its step function.

``copsctl pretrain`` and ``copsctl finetune`` differ in their model set-up and their step;
the rest is shared and lives here, in the order a command uses it:

0. :func:`check_run_dir` and :func:`resolve_run_recipe`: the run folder (:data:`RUN_FILES`)
   and its recipe (:data:`RECIPE_NAME`; a resumed run may change only
   :data:`RESUMABLE_KEYS`), checked before anything is read or written;
1. :func:`open_run_data`: the train and val datasets, read (and checked) before anything
   is written;
2. :func:`run_checkpoint`: the run's own checkpoint when resuming, checked for its kind
   (:func:`open_run` does 1 and 2 after the folder and batch-size checks);
3. :func:`train_batches`: the batch stream, continuing exactly where the checkpoint stopped;
4. :func:`make_optimizer`: Adam over the trainable parameters, the AMP scaler and, when
   resuming, their state and the random state of every process;
5. :func:`run_loop`: the run folder, the logs, the :class:`~copsctl.train.loop.TrainLoop`
   with atomic checkpoints (:func:`save_run_checkpoint`) and validation with exact PQ.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import InputError
from .checkpoint import (BEST_NAME, CHECKPOINT_NAME, RECIPE_NAME, RUN_FILES,
                         checkpoint_class_table, checkpoint_recipe, load_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .logging import MetricsLogger
from .loop import LoopResult, RunResult, TrainEvent, TrainLoop
from .schedule import WarmupPolySchedule

if TYPE_CHECKING:
    from ..config import Recipe
    from ..data.categories import ClassTable
    from .distributed import DistContext

__all__ = ["RECIPE_NAME", "RUN_FILES", "EVAL_PREFIX", "RESUMABLE_KEYS", "seed_everything", "resolve_run_recipe",
           "check_run_dir", "targets_to_device", "open_run", "check_batch_size", "open_run_data",
           "run_checkpoint", "train_batches", "make_optimizer", "save_run_checkpoint", "run_loop"]



EVAL_PREFIX = "eval_"
"""``copsctl evaluate --run RUN --split S`` writes its costs and predictions in RUN/eval_S/."""

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
    ckpt_path = run_dir / CHECKPOINT_NAME
    stored = checkpoint_recipe(load_checkpoint(ckpt_path), str(ckpt_path)) \
        if ckpt_path.is_file() else None
    # recipe.yaml is the run's record, not a place to change it: the checkpoint's copy
    # says what it was trained with (resumable keys may differ until the next checkpoint).
    edited = [k for k in _recipe_diff(stored, saved) if k not in RESUMABLE_KEYS] \
        if stored is not None else []
    if edited:
        k = edited[0]
        raise InputError(f"--resume: {saved_path} has `{k}` = {saved.get(k)!r}, but "
                         f"{ckpt_path.name} was trained with {stored.get(k)!r}; a run's "
                         f"{RECIPE_NAME} must not be edited (restore it, or start a new run)")
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


_KIND_NOTE = "run folder of copsctl {}"


def recipe_run_kind(path: Path) -> str | None:
    """The command (pretrain, finetune) whose run folder holds the recipe at ``path``, as
    its note says (None: no note, a folder of a version that wrote none)."""
    prefix = "# " + _KIND_NOTE.format("")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.startswith("#"):
                    break
                if line.startswith(prefix):
                    return line[len(prefix):].strip() or None
    except OSError:
        return None
    return None


def check_run_dir(run_dir: Path, resume: bool, kind: str | None = None) -> bool:
    """Check the run folder for a new or resumed run; return whether a checkpoint exists.

    ``kind`` (pretrain, finetune): the command resuming it; a folder whose recipe says it
    is another command's run is refused, checkpoint or not.

    When resuming, the temporaries of a write the interrupted run did not finish (a
    checkpoint being saved when it was killed) are removed (:func:`copsctl.atomic.recover`):
    the previous checkpoint next to them is intact.
    """
    from ..atomic import check_output, is_leftover, remove_leftovers

    check_output(run_dir, "--out", folder=True)
    if run_dir.is_dir():
        claim_run_dir(run_dir)
    if resume:
        remove_leftovers(run_dir)
    entries = sorted(p.name for p in run_dir.iterdir() if not is_leftover(p.name)) \
        if run_dir.is_dir() else []
    if not resume:
        if entries:
            raise InputError(f"--out {run_dir}: folder is not empty; pass --resume to continue "
                             "the run in it, or choose a new folder")
        return False
    foreign = [e for e in entries if e not in RUN_FILES and not e.startswith(EVAL_PREFIX)]
    if foreign:
        raise InputError(f"--out {run_dir}: not a run folder (holds {foreign[0]!r}); "
                         "--resume continues a folder written by copsctl pretrain")
    if entries and RECIPE_NAME not in entries:
        raise InputError(f"--out {run_dir}: holds no {RECIPE_NAME}; cannot resume it")
    other = recipe_run_kind(run_dir / RECIPE_NAME) if entries else None
    if kind is not None and other is not None and other != kind:
        raise InputError(f"--out {run_dir}: a copsctl {other} run ({RECIPE_NAME} says so), "
                         f"not one of copsctl {kind}; resume it with copsctl {other} --resume")
    return (run_dir / CHECKPOINT_NAME).is_file()


_CLAIMED: dict[Path, int] = {}


def claim_run_dir(run_dir: Path, must_be_empty: bool = False) -> None:
    """Hold an exclusive lock on an existing run folder for the rest of this process
    (:func:`check_run_dir` takes it, and the first write again for a folder made then): a
    second command training in it at the same time is refused, though both would find it
    empty when started together. ``must_be_empty``: check that again under the lock."""
    from ..atomic import is_leftover

    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        return
    key = run_dir.resolve()
    if key not in _CLAIMED:
        fd = os.open(run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"--out {run_dir}: another copsctl command is training in this "
                             "folder; wait for it to end or choose another folder") from None
        _CLAIMED[key] = fd
    if must_be_empty and any(not is_leftover(p.name) for p in run_dir.iterdir()):
        raise InputError(f"--out {run_dir}: folder is not empty; pass --resume to continue "
                         "the run in it, or choose a new folder")


def targets_to_device(batch: dict, device: torch.device) -> dict:
    """The image and the pre-training targets of a loader batch, on ``device``."""
    keys = ("image", "semantic", "semantic_weights", "affinity", "affinity_weights")
    nb = device.type == "cuda"
    return {k: batch[k].to(device, non_blocking=nb) for k in keys}


def open_run(out: Path, cfg: "Recipe", ctx: "DistContext", kind: str, *, resume: bool,
             json_out: str | os.PathLike | None = None,
             progress: Callable[[TrainEvent], None] | None = None):
    """Everything a run reads, before anything is written: the run folder
    (:func:`check_run_dir`, on rank 0), the batch size (:func:`check_batch_size`), the
    datasets (:func:`open_run_data`), that ``json_out`` (``--json``) is none of the
    datasets' files (on rank 0) and, when resuming, the run's checkpoint
    (:func:`run_checkpoint`).

    Returns
    -------
    (train_dataset, val_dataset, class_table, ckpt, start, checked)
        As :func:`open_run_data` and :func:`run_checkpoint` return them; ``checked`` holds
        the input check's report, to be said only once every check has passed.
    """
    has_ckpt = ctx.run_on_main(lambda: check_run_dir(out, resume, kind))
    check_batch_size(cfg, ctx)
    checked: list[str] = []
    train_dataset, val_dataset, class_table = open_run_data(cfg, ctx, progress=progress,
                                                             say=checked.append)
    if ctx.is_main:
        from ..data.check import check_output_beside_data

        check_output_beside_data(json_out, "--json", {cfg.data.train_split: train_dataset.reader,
                                                      cfg.data.val_split: val_dataset.reader})
    ckpt, start = run_checkpoint(out, has_ckpt, kind)
    stored = checkpoint_class_table(ckpt) if ckpt is not None else None
    if stored is not None and not stored.same_classes(class_table):
        raise InputError(f"--resume {out}: the run was trained on {stored.num_classes} classes "
                         f"(category ids {list(stored.category_ids)}), the dataset at "
                         f"{cfg.data.root} has {class_table.num_classes} (ids "
                         f"{list(class_table.category_ids)}) or other thing flags; data.root may "
                         "move the data, not change it")
    return train_dataset, val_dataset, class_table, ckpt, start, checked


def check_batch_size(cfg: "Recipe", ctx: "DistContext") -> None:
    """The batch must split evenly over the processes."""
    B = cfg.train.batch_size
    if B % ctx.world_size:
        raise InputError(f"`train.batch_size` ({B}) must be divisible by the number of "
                         f"processes ({ctx.world_size})")


def open_run_data(cfg: "Recipe", ctx: "DistContext", *,
                  progress: Callable[[TrainEvent], None] | None = None,
                  say: Callable[[str], None] | None = None):
    """The recipe's train dataset, val dataset (main process only, else None) and class table.

    Every image and label of both splits is read once first (:mod:`copsctl.data.check`,
    on the main process), so a broken file stops the run before anything is written;
    ``progress`` receives ``check`` events and ``say`` a line with the seconds it took.

    Raises
    ------
    InputError
        Missing or broken dataset files, or val categories that differ from train's.
    """
    from ..data.check import check_readers
    from .data import make_dataset, open_split

    train_reader = open_split(cfg, cfg.data.train_split)
    _require_images(train_reader, cfg.data.train_split, "training", "data.train_split")
    val_dataset = None
    if ctx.is_main:
        val_reader = open_split(cfg, cfg.data.val_split)
        _require_images(val_reader, cfg.data.val_split, "validation", "data.val_split")
        val_dataset = make_dataset(cfg, val_reader, train=False)
        if val_dataset.reader.class_table != train_reader.class_table:
            raise InputError(f"{val_dataset.reader.json_path}: categories differ from those "
                             f"of {train_reader.json_path}")

    def check() -> None:
        report = None if progress is None else \
            (lambda done, total: progress(TrainEvent("check", done, total)))
        readers = {cfg.data.train_split: train_reader}
        readers.setdefault(cfg.data.val_split, val_dataset.reader)
        r = check_readers(readers, progress=report)
        if say is not None:
            say(f"checked {r['total']} images and labels ("
                + ", ".join(f"{n} {s}" for s, n in r["images"].items())
                + f") in {r['seconds']:.1f} s")

    ctx.run_on_main(check)
    return make_dataset(cfg, train_reader, train=True), val_dataset, train_reader.class_table


def _require_images(reader, split: str, use: str, key: str) -> None:
    if len(reader) == 0:
        raise InputError(f"{reader.json_path}: split {split!r} holds no images; {use} needs "
                         f"some (`{key}` names the split)")


def run_checkpoint(out: Path, has_checkpoint: bool, kind: str) -> tuple[dict | None, int]:
    """The run's checkpoint (None for a new run) and the iteration it continues from."""
    ckpt = load_checkpoint(out / CHECKPOINT_NAME, needs=("kind", "iteration", "model",
                                                          "optimizer")) if has_checkpoint else None
    if ckpt is not None and ckpt.get("kind") != kind:
        raise InputError(f"{out / CHECKPOINT_NAME}: written by {ckpt.get('kind')!r}, not by {kind}")
    return ckpt, int(ckpt["iteration"]) if ckpt is not None else 0


def train_batches(dataset, cfg: "Recipe", ctx: "DistContext", start: int) -> Iterator[dict]:
    """This process's batches from iteration ``start`` on.

    The loader has its own generator, so building it and reading the first batch (which
    fails early on a broken file, before anything is written) leave the global random
    state alone.
    """
    from .data import train_loader

    B = cfg.train.batch_size
    loader = train_loader(dataset, batch_size=B // ctx.world_size, seed=cfg.train.seed,
                          start=start * B, rank=ctx.rank, world_size=ctx.world_size,
                          num_workers=cfg.data.num_workers,
                          pin_memory=ctx.device.type == "cuda")
    batches = iter(loader)
    return itertools.chain([next(batches)], batches)


def make_optimizer(model: torch.nn.Module, cfg: "Recipe", ctx: "DistContext", ckpt: dict | None,
                   start: int, say: Callable[[str], None],
                   groups: Sequence[tuple[Sequence[torch.nn.Parameter], float]] | None = None):
    """Adam over ``model``'s trainable parameters and the AMP scaler, restored when resuming.

    ``groups``: optional ``(parameters, learning-rate factor)`` pairs, one Adam parameter
    group each (the schedule multiplies its rate by the group's ``lr_scale``); default one
    group of every trainable parameter at factor 1.

    When resuming, the random state of every process is restored too; a checkpoint
    written by another number of processes re-seeds instead (the data order still
    continues exactly, only dropout and other draws differ from an uninterrupted run).
    A new run gives every process but the first its own torch seed.

    Returns
    -------
    (params, optimizer, scaler, amp)
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if groups is None:
        optimizer = torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    else:
        param_groups = [{"params": list(ps), "lr": cfg.train.lr * f, "lr_scale": float(f)}
                        for ps, f in groups if len(ps)]
        optimizer = torch.optim.Adam(param_groups, lr=cfg.train.lr,
                                     weight_decay=cfg.train.weight_decay)
        params = [p for g in param_groups for p in g["params"]]
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
            seed_everything(cfg.train.seed + 1000 * start + ctx.rank)
            if ctx.is_main:
                say(f"checkpoint was written by {len(rngs)} process(es), this run has "
                    f"{ctx.world_size}: random state re-seeded")
    elif ctx.rank:
        torch.manual_seed(cfg.train.seed + ctx.rank)  # different dropout per process
    return params, optimizer, scaler, amp


def save_run_checkpoint(out: Path, kind: str, ctx: "DistContext", *, iteration: int,
                        loop_state: dict, model: torch.nn.Module, optimizer, scaler,
                        cfg: "Recipe", class_table: "ClassTable", **extra: Any) -> None:
    """Write the run's checkpoint atomically (main process); every process adds its random state."""
    rngs = ctx.gather(rng_state())
    if ctx.is_main:
        save_checkpoint(out / CHECKPOINT_NAME, {
            "kind": kind, "iteration": iteration, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "rng": rngs, "loop": loop_state, "recipe": cfg.dump(),
            "categories": class_table.to_json(), "world_size": ctx.world_size, **extra})


def _best_pq(out: Path) -> float | None:
    """The exact val PQ stored in the run's ``best.pt``, if there is one."""
    path = out / BEST_NAME
    if not path.is_file():
        return None
    return float(load_checkpoint(path).get("val", {}).get("PQ", float("-inf")))


def run_loop(out: Path, cfg: "Recipe", ctx: "DistContext", kind: str, *, model: torch.nn.Module,
             net: torch.nn.Module, optimizer, scaler, amp: bool,
             step_fn: Callable, batches: Iterator[dict], save_fn: Callable[[int, dict], None],
             val_dataset, ckpt: dict | None, start: int, resume: bool, t_start: float,
             say: Callable[[str], None], class_table: "ClassTable", keep_best: bool = False,
             start_message: str | None = None,
             progress: Callable[[TrainEvent], None] | None = None) -> RunResult:
    """Write the run folder's recipe and logs, run the loop and return its :class:`RunResult`.

    Parameters
    ----------
    model, net : Module
        The network and what the step calls (``net`` may wrap ``model`` for DDP);
        validation runs ``model``.
    step_fn, save_fn
        As in :class:`~copsctl.train.loop.TrainLoop`.
    val_dataset
        The val split (main process), validated with exact PQ through the solver.
    kind : str
        The command (pretrain, finetune), noted in the run's recipe for ``--resume``.
    class_table
        The dataset's classes (stored in ``best.pt``).
    start_message : str, optional
        Said when a new run starts (a resumed run says where it resumes).

    With ``keep_best`` (fine-tuning's ``finetune.keep_best``), every validation that beats the best exact PQ so far
    (the model at iteration 0 included, for a new run) writes ``best.pt``
    (:data:`~copsctl.train.checkpoint.BEST_NAME`).
    """
    from ..config import save_recipe
    from .validate import validate_from_recipe

    keep_best = keep_best and ctx.is_main
    best = {"pq": _best_pq(out) if keep_best and ckpt is not None else None}

    def validate_fn(iteration: int):
        # Ctrl-C during a long validation abandons it; the loop then saves and stops.
        stop = (lambda: loop.stop_requested) if iteration else (lambda: False)
        metrics = validate_from_recipe(model, val_dataset, cfg, device=ctx.device,
                                       batch_size=cfg.train.batch_size // ctx.world_size,
                                       should_stop=stop)
        if keep_best and metrics is not None and (best["pq"] is None or metrics["PQ"] > best["pq"]):
            best["pq"] = metrics["PQ"]
            save_checkpoint(out / BEST_NAME, {
                "kind": "best", "iteration": iteration, "model": model.state_dict(),
                "recipe": cfg.dump(), "categories": class_table.to_json(), "val": metrics})
        return metrics

    logger = None
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        claim_run_dir(out, must_be_empty=not resume)
        save_recipe(cfg, out / RECIPE_NAME, note=_KIND_NOTE.format(kind))
        logger = MetricsLogger(out, resume_iteration=start if resume else None)
        if ckpt is not None:
            say(f"resuming {out} at iteration {start} of {cfg.train.iterations}")
        elif start_message:
            say(start_message)
        if keep_best and ckpt is None and val_dataset is not None:
            # The starting point competes too: a run that drifts keeps the model it began with.
            first = validate_fn(0)
            if first is not None:
                say(f"iteration 0: validation PQ {first['PQ']:.1f} (things {first['PQ_th']:.1f}, "
                    f"stuff {first['PQ_st']:.1f})")
    ctx.barrier()
    try:
        loop = TrainLoop(model=net, optimizer=optimizer,
                         schedule=WarmupPolySchedule.from_config(cfg.train), step_fn=step_fn,
                         batches=batches, ctx=ctx, iterations=cfg.train.iterations,
                         start_iteration=start, log_every=cfg.train.log_every,
                         checkpoint_every=cfg.train.checkpoint_every,
                         validate_every=cfg.train.validate_every,
                         images_per_step=cfg.train.batch_size, amp=amp, scaler=scaler,
                         save_fn=save_fn, validate_fn=validate_fn, logger=logger,
                         progress=progress,
                         loop_state=ckpt.get("loop") if ckpt is not None else None)
        result: LoopResult = loop.run()
    finally:
        if logger is not None:
            logger.close()
    return RunResult.from_loop(out, result, iterations=cfg.train.iterations,
                               resumed_from=start if ckpt is not None else None,
                               seconds=time.perf_counter() - t_start, is_main=ctx.is_main)
