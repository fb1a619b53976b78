"""The training data order: an endless, resumable, shardable stream of sample keys.

The global stream is position ``p = 0, 1, 2, ...`` -> key ``(epoch, index)`` with
``epoch = p // N`` and ``index = perm_epoch[p % N]``, where ``perm_epoch`` is a
permutation of the ``N`` samples drawn from ``default_rng([seed, epoch])``. Process
``rank`` of ``world_size`` takes positions ``start + rank, start + rank + world_size,
...``, so consecutive batches of all ranks together read the global stream in order.
Resuming after ``k`` iterations of global batch ``B`` is ``start = k * B``: the same
keys follow as in an uninterrupted run, and since the augmentation of a key is fixed
by the key (:class:`~copsctl.data.loader.PanopticDataset`), so are the samples.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from ..errors import InputError


class TrainSampler(Sampler):
    """Endless sampler of ``(epoch, index)`` keys (see the module notes).

    Parameters
    ----------
    size : int
        Number of samples N in the dataset.
    seed : int
        Seed of the per-epoch permutations.
    shuffle : bool
        False: every epoch visits 0..N-1 in order.
    start : int
        Global stream position to start at (samples consumed by all ranks so far).
    rank, world_size : int
        This process's shard of the stream.
    """

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True, start: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if size < 1:
            raise InputError(f"`size` must be positive (the dataset is empty), got {size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"`rank` must lie in [0, world_size), got rank {rank}, "
                             f"world_size {world_size}")
        if start < 0:
            raise InputError(f"`start` must be non-negative, got {start}")
        self.size, self.seed, self.shuffle = int(size), int(seed), bool(shuffle)
        self.start, self.rank, self.world_size = int(start), int(rank), int(world_size)

    def permutation(self, epoch: int) -> np.ndarray:
        """(N,) int64 ndarray: the visiting order of ``epoch``."""
        if not self.shuffle:
            return np.arange(self.size, dtype=np.int64)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.size)

    def key_at(self, position: int) -> tuple[int, int]:
        """``(epoch, index)`` at global stream ``position``."""
        epoch, pos = divmod(int(position), self.size)
        return epoch, int(self.permutation(epoch)[pos])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        p = self.start + self.rank
        epoch, perm = -1, None
        while True:
            e, pos = divmod(p, self.size)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            yield epoch, int(perm[pos])
            p += self.world_size
