"""Process group and device of a training run: one process on CPU or GPU, or many under torchrun.

``torchrun --nproc_per_node N -m copsctl pretrain ...`` starts N processes with the
environment variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; with
``WORLD_SIZE > 1`` :func:`setup` joins the process group (NCCL on CUDA, Gloo on CPU) and
each process drives the GPU ``LOCAL_RANK``. Without those variables the run is a single
process. Only rank 0 writes files; the others compute.

Decisions that depend on the file system (is the run folder empty, is there a checkpoint)
are taken by rank 0 and shared with :meth:`DistContext.run_on_main`, so all ranks fail
with the same one-line error instead of waiting for each other.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..errors import InputError

__all__ = ["DistContext", "setup", "resolve_device"]

# Rank 0 validates alone while the others wait at a barrier; a full Cityscapes validation
# takes far longer than the default 10-minute collective timeout.
_TIMEOUT = datetime.timedelta(hours=3)


def resolve_device(device: str, local_rank: int = 0, *, option: str = "`device`") -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"`` -> the device of this process.

    ``option`` names the setting in messages as the user gave it: a command's
    ``"--device"``, the recipe's ``"`train.device`"``; by default this argument.
    """
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"{option} must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        shown = f"{option} {device}" if option.startswith("--") else f"{option} = {device}"
        if not torch.cuda.is_available():
            raise InputError(f"{shown}: CUDA is not available on this machine (use cpu or auto)")
        if device == "cuda":
            device = f"cuda:{local_rank}"
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise InputError(f"{shown}: only {torch.cuda.device_count()} GPU(s) visible")
    return torch.device(device)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} must be an integer") from None


@dataclass
class DistContext:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list | None:
        """Every rank's ``obj``, as a list on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def run_on_main(self, func: Callable[[], Any]) -> Any:
        """Run ``func`` on rank 0 only; return its result on every rank.

        An :class:`InputError` raised by ``func`` is raised on every rank.
        """
        result, error = None, None
        if self.is_main:
            try:
                result = func()
            except InputError as exc:
                error = str(exc)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise InputError(error)
        return result

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average of ``values`` over the ranks (same keys on every rank)."""
        if not self.distributed or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        t /= self.world_size
        return dict(zip(keys, t.tolist()))

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str = "auto", *, option: str = "`device`") -> DistContext:
    """Read torchrun's environment, pick this process's device, join the process group.

    Parameters
    ----------
    device
        ``train.device``: auto, cpu or cuda. Under torchrun with CUDA each process takes
        the GPU ``LOCAL_RANK``.
    option
        How messages name ``device`` (:func:`resolve_device`).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"RANK={rank} and WORLD_SIZE={world_size} must satisfy 0 <= RANK < WORLD_SIZE")
    dev = resolve_device(device, local_rank, option=option)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    ctx = DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=_TIMEOUT, **kwargs)
    return ctx
