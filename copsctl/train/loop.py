"""The generic training loop shared by pre-training and fine-tuning.

:class:`TrainLoop` owns what every run does the same way -- learning-rate schedule,
mixed precision, the optimizer step, log windows, checkpoint and validation cadence,
and a clean stop on Ctrl-C -- and calls a *step function* for what differs::

    step_fn(batch, iteration) -> (loss, metrics)

``loss`` is a 0-dim tensor to minimise (the loop calls ``backward`` through the AMP
scaler and steps the optimizer); ``metrics`` maps names to numbers or 0-dim tensors to
average over the log window (tensors are synchronised only when a window closes, so a
GPU run is not stalled every step). The step function runs under
``torch.autocast`` when mixed precision is on.

Cadence, with ``it`` the number of optimizer steps completed (1-based):

- log when ``it % log_every == 0`` and at the last iteration: window means of the
  metrics plus ``lr``, ``seconds_per_iter``, ``data_seconds`` (waiting for the batch)
  and ``images_per_s``, averaged over processes, to the :class:`MetricsLogger`;
- checkpoint when ``it % checkpoint_every == 0`` and at the last iteration;
- validate (rank 0; the others wait) when ``validate_every > 0`` and
  ``it % validate_every == 0``, and at the last iteration.

Ctrl-C (SIGINT) or SIGTERM sets a flag that the loop reads after the current step: it
then saves a checkpoint of the completed iterations (unless one was just written) and
returns with ``interrupted=True``. A second Ctrl-C (more than two seconds later)
interrupts at once. Under torchrun the flag is shared by all processes each step, so they
stop at the same iteration.

Exact resume: the loop keeps no hidden state beyond its open log window, which it puts
in the checkpoint (``loop_state``) and takes back on resume; the schedule is a function
of the iteration, and the data order and random state are the caller's (see
:mod:`copsctl.train.pretrain`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from ..errors import InputError
from .distributed import DistContext
from .logging import MetricsLogger
from .schedule import WarmupPolySchedule

__all__ = ["TrainEvent", "LoopResult", "RunResult", "TrainLoop", "StepFn"]

StepFn = Callable[[Any, int], "tuple[torch.Tensor, dict[str, Any]]"]


@dataclass
class TrainEvent:
    """What the loop reports to its ``progress`` callback (rank 0 only).

    ``kind`` is one of ``start``, ``step``, ``log``, ``checkpoint``, ``validation``,
    ``interrupted`` and ``end``; ``iteration`` the steps completed; ``total`` the run
    length; ``metrics`` the numbers of a ``log`` or ``validation`` event. Before the loop,
    ``check`` events count the samples read by the input check (``iteration`` of
    ``total``; :func:`copsctl.train.run.open_run_data`).
    """

    kind: str
    iteration: int
    total: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LoopResult:
    iteration: int
    interrupted: bool
    train_metrics: dict[str, float]
    val_metrics: dict[str, float] | None


@dataclass
class RunResult:
    """What a training command (``pretrain``, ``finetune``) returns, on every rank."""

    run_dir: Any
    iteration: int
    iterations: int
    interrupted: bool
    resumed_from: int | None
    seconds: float
    train_metrics: dict
    val_metrics: dict | None
    is_main: bool = True

    @classmethod
    def from_loop(cls, run_dir, result: LoopResult, *, iterations: int,
                  resumed_from: int | None, seconds: float, is_main: bool) -> "RunResult":
        return cls(run_dir=run_dir, iteration=result.iteration, iterations=iterations,
                   interrupted=result.interrupted, resumed_from=resumed_from, seconds=seconds,
                   train_metrics=result.train_metrics, val_metrics=result.val_metrics,
                   is_main=is_main)

    def to_json(self) -> dict:
        """The result as plain JSON (``--json`` of the command; the demo's run record)."""
        return {"run_dir": str(self.run_dir), "iteration": self.iteration,
                "iterations": self.iterations, "interrupted": self.interrupted,
                "resumed_from": self.resumed_from, "seconds": self.seconds,
                "train": dict(self.train_metrics or {}),
                "val": dict(self.val_metrics) if self.val_metrics is not None else None}


class _StopFlag:
    """SIGINT/SIGTERM -> a flag read between steps; a second SIGINT raises KeyboardInterrupt.

    A SIGINT within :attr:`GRACE` seconds of the first counts as the same Ctrl-C: under
    torchrun a worker gets the terminal's SIGINT and, a moment later, the one torchrun
    forwards while shutting down.
    """

    GRACE = 2.0

    def __init__(self) -> None:
        self.set = False
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        now = time.monotonic()
        if self.set and signum == signal.SIGINT and now - self._first > self.GRACE:
            raise KeyboardInterrupt
        if not self.set:
            self.set, self._first = True, now

    def __enter__(self) -> "_StopFlag":
        # Signal handlers can only be installed from the main thread; elsewhere (a loop run
        # in a worker thread) Ctrl-C keeps its default behaviour.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainLoop:
    """Run optimizer steps from ``start_iteration`` to ``iterations`` (module notes).

    Parameters
    ----------
    model : torch.nn.Module
        The (possibly DDP-wrapped) model; put in train mode before each step.
    optimizer : torch.optim.Optimizer
    schedule : WarmupPolySchedule
    step_fn : callable
        ``step_fn(batch, iteration) -> (loss, metrics)`` with ``iteration`` 0-based.
    batches : iterator
        Endless iterator of batches, already positioned at ``start_iteration``.
    ctx : DistContext
    iterations, start_iteration : int
        Run length and steps already done (resume).
    log_every, checkpoint_every, validate_every : int
        Cadence (``validate_every = 0``: only at the end).
    images_per_step : int
        Global batch size, for ``images_per_s``.
    amp : bool
        Mixed precision (only honoured on CUDA: float16 autocast and a GradScaler).
    scaler : torch.amp.GradScaler, optional
        The scaler, e.g. with state loaded from a checkpoint; default a new one.
    save_fn : callable
        ``save_fn(iteration, loop_state)``, called on every rank (it may gather state).
    validate_fn : callable, optional
        ``validate_fn(iteration) -> dict of numbers``, called on rank 0.
    logger : MetricsLogger, optional
        Rank 0's logger.
    progress : callable, optional
        ``progress(TrainEvent)``, called on rank 0.
    loop_state : dict, optional
        The ``loop_state`` of the checkpoint resumed from.
    """

    def __init__(self, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 schedule: WarmupPolySchedule, step_fn: StepFn, batches: Iterator,
                 ctx: DistContext, iterations: int, start_iteration: int = 0,
                 log_every: int = 20, checkpoint_every: int = 1000, validate_every: int = 0,
                 images_per_step: int = 1, amp: bool = False,
                 scaler: "torch.amp.GradScaler | None" = None,
                 save_fn: Callable[[int, dict], None] | None = None,
                 validate_fn: Callable[[int], dict] | None = None,
                 logger: MetricsLogger | None = None,
                 progress: Callable[[TrainEvent], None] | None = None,
                 loop_state: dict | None = None) -> None:
        if not 0 <= start_iteration <= iterations:
            raise InputError(f"`start_iteration` ({start_iteration}) must lie in [0, iterations="
                             f"{iterations}]")
        for name, v in (("log_every", log_every), ("checkpoint_every", checkpoint_every)):
            if v < 1:
                raise InputError(f"`{name}` must be >= 1, got {v}")
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.step_fn, self.batches, self.ctx = step_fn, batches, ctx
        self.iterations, self.start_iteration = int(iterations), int(start_iteration)
        self.log_every, self.checkpoint_every = int(log_every), int(checkpoint_every)
        self.validate_every = int(validate_every)
        self.images_per_step = int(images_per_step)
        self.amp = bool(amp) and ctx.device.type == "cuda"
        self.scaler = scaler if scaler is not None else \
            torch.amp.GradScaler(ctx.device.type, enabled=self.amp)
        self.save_fn, self.validate_fn = save_fn, validate_fn
        self.logger, self.progress = logger, progress
        self._window = _Window.from_state(loop_state)
        self._validation_due = bool((loop_state or {}).get("validation_due", False))
        self._flag: _StopFlag | None = None

    @property
    def stop_requested(self) -> bool:
        """True once Ctrl-C or SIGTERM was received during :meth:`run`."""
        return self._flag is not None and self._flag.set

    # ------------------------------------------------------------------ helpers

    def _emit(self, kind: str, iteration: int, metrics: dict | None = None) -> None:
        if self.progress is not None and self.ctx.is_main:
            self.progress(TrainEvent(kind, iteration, self.iterations, dict(metrics or {})))

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def _should_stop(self, flag: _StopFlag) -> bool:
        if not self.ctx.distributed:
            return flag.set
        return self.ctx.mean({"stop": float(flag.set)})["stop"] > 0

    def _save(self, iteration: int, validation_due: bool = False) -> None:
        if self.save_fn is not None:
            self.save_fn(iteration, {**self._window.state(), "validation_due": validation_due})
        self._emit("checkpoint", iteration)

    def _log(self, iteration: int, lr: float) -> dict[str, float]:
        metrics = self.ctx.mean(self._window.means())
        if self._window.count:
            sec = metrics.pop("_seconds")
            metrics["lr"] = lr
            metrics["seconds_per_iter"] = sec
            metrics["data_seconds"] = metrics.pop("_data_seconds")
            metrics["images_per_s"] = self.images_per_step / sec if sec > 0 else 0.0
        self._window = _Window()
        if self.ctx.is_main:
            if self.logger is not None:
                self.logger.log(iteration, metrics, group="train")
            self._emit("log", iteration, metrics)
        return metrics

    def _validate(self, iteration: int, redo: bool = False) -> dict[str, float] | None:
        """Validate on rank 0; ``redo``: a resumed run's validation of its checkpoint's
        iteration, skipped when the log already holds it."""
        result = None
        if self.validate_fn is not None:
            done = redo and self.logger is not None and self.logger.has(iteration, "val")
            if self.ctx.is_main and not done:
                result = self.validate_fn(iteration)
                if result is not None:
                    if self.logger is not None:
                        self.logger.log(iteration, result, group="val")
                    self._emit("validation", iteration, result)
            self.ctx.barrier()
        return result

    # ------------------------------------------------------------------ the loop

    def run(self) -> LoopResult:
        it = self.start_iteration
        last_train: dict[str, float] = {}
        last_val = None
        saved_at = self.start_iteration
        self._emit("start", it)
        with _StopFlag() as flag:
            self._flag = flag
            if self._validation_due and it > 0:
                # The checkpoint was written just before a validation that a stop may have
                # cut short: do it now, from the same state, unless the log holds it.
                last_val = self._validate(it, redo=True)
                if self._should_stop(flag):
                    self._emit("interrupted", it)
                    return LoopResult(it, True, last_train, last_val)
            while it < self.iterations:
                t0 = time.perf_counter()
                batch = next(self.batches)
                t_data = time.perf_counter() - t0
                lr = self.schedule.apply(self.optimizer, it)
                self.model.train()
                self.optimizer.zero_grad(set_to_none=True)
                with self._autocast():
                    loss, metrics = self.step_fn(batch, it)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                it += 1
                values = {"loss": loss.detach()}
                values.update(metrics)
                self._window.add(values, seconds=time.perf_counter() - t0, data_seconds=t_data)
                self._emit("step", it)

                last = it == self.iterations
                validate = bool(self.validate_every and it % self.validate_every == 0) or last
                if it % self.log_every == 0 or last:
                    last_train = self._log(it, lr)
                if it % self.checkpoint_every == 0 or last or validate:
                    # Before a validation, so that a run stopped inside it resumes from the
                    # state it began in and does it again (validation_due).
                    self._save(it, validation_due=validate and self.validate_fn is not None)
                    saved_at = it
                if validate:
                    last_val = self._validate(it) or last_val
                if self._should_stop(flag) and (not last or self.validate_fn is not None):
                    if saved_at != it:
                        self._save(it)
                    self._emit("interrupted", it)
                    return LoopResult(it, True, last_train, last_val)
        if self.logger is not None:
            self.logger.flush()
        self._emit("end", it, last_train)
        return LoopResult(it, False, last_train, last_val)


class _Window:
    """Sums of the metrics since the last log record."""

    def __init__(self) -> None:
        self.count = 0
        self.sums: dict[str, Any] = {}

    @classmethod
    def from_state(cls, state: dict | None) -> "_Window":
        w = cls()
        if state and "window" in state:
            w.count = int(state["window"]["count"])
            w.sums = {k: float(v) for k, v in state["window"]["sums"].items()}
        return w

    def add(self, values: dict[str, Any], *, seconds: float, data_seconds: float) -> None:
        self.count += 1
        values = dict(values)
        values["_seconds"] = seconds
        values["_data_seconds"] = data_seconds
        for k, v in values.items():
            if isinstance(v, torch.Tensor):
                v = v.detach().float()
            self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {k: float(v) / self.count for k, v in self.sums.items()}

    def state(self) -> dict:
        return {"window": {"count": self.count,
                           "sums": {k: float(v) for k, v in self.sums.items()}}}
