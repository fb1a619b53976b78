"""Learning-rate schedule: linear warm-up, then poly decay (Panoptic-DeepLab's schedule).

The schedule is a pure function of the iteration, so resuming a run needs no schedule
state: the factor of iteration ``it`` (the ``it``-th optimizer step, counting from 0) is ::

    warm-up (it < warmup_iters):  alpha = it / warmup_iters
                                  factor = warmup_factor * (1 - alpha) + alpha
    always:                       factor *= (1 - it / iterations) ** poly_power

and the learning rate of each parameter group is its base rate times the factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import InputError

if TYPE_CHECKING:
    from ..config import TrainConfig

__all__ = ["WarmupPolySchedule"]


@dataclass(frozen=True)
class WarmupPolySchedule:
    """Warm-up then poly decay of a base learning rate (see the module notes).

    Parameters
    ----------
    base_lr : float
        Learning rate after warm-up, before decay (``train.lr``).
    iterations : int
        Length of the run; the rate reaches 0 at ``it = iterations``.
    warmup_iters : int
        Iterations of linear warm-up (0: none).
    warmup_factor : float
        Factor at iteration 0 of the warm-up, in (0, 1].
    poly_power : float
        Exponent of the decay (0: constant after warm-up).
    decay_iters : int
        The decay is planned over this many steps (0: ``iterations``); the authors'
        fine-tuning plans 20 000 and stops at 3 000, so the rate stays near the base rate.
    """

    base_lr: float
    iterations: int
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    poly_power: float = 0.9
    decay_iters: int = 0

    def __post_init__(self) -> None:
        if self.base_lr <= 0:
            raise InputError(f"`base_lr` must be > 0, got {self.base_lr}")
        if self.iterations < 1:
            raise InputError(f"`iterations` must be >= 1, got {self.iterations}")
        if not 0 <= self.warmup_iters <= self.iterations:
            raise InputError(f"`warmup_iters` must lie in [0, iterations={self.iterations}], "
                             f"got {self.warmup_iters}")
        if not 0 < self.warmup_factor <= 1:
            raise InputError(f"`warmup_factor` must lie in (0, 1], got {self.warmup_factor}")
        if self.poly_power < 0:
            raise InputError(f"`poly_power` must be >= 0, got {self.poly_power}")
        if self.decay_iters and self.decay_iters < self.iterations:
            raise InputError(f"`decay_iters` must be 0 or >= iterations={self.iterations}, "
                             f"got {self.decay_iters}")

    @classmethod
    def from_config(cls, train: "TrainConfig") -> "WarmupPolySchedule":
        """The schedule of a recipe's ``train`` section."""
        return cls(base_lr=train.lr, iterations=train.iterations, warmup_iters=train.warmup_iters,
                   warmup_factor=train.warmup_factor, poly_power=train.poly_power,
                   decay_iters=train.decay_iters)

    def factor(self, iteration: int) -> float:
        """Multiplier of the base rate at step ``iteration`` (0-based)."""
        it = min(max(int(iteration), 0), self.iterations)
        f = 1.0
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            f = self.warmup_factor * (1 - alpha) + alpha
        return f * (1 - it / (self.decay_iters or self.iterations)) ** self.poly_power

    def lr(self, iteration: int) -> float:
        """Learning rate at step ``iteration``."""
        return self.base_lr * self.factor(iteration)

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set every parameter group's rate for step ``iteration``; return the rate.

        A group may scale the schedule with its own ``lr_scale`` entry (default 1), e.g.
        to train some parts slower.
        """
        lr = self.lr(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr
