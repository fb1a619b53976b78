"""Recipe -> datasets and data loaders: the one translation of the ``data`` and ``loss``
keys into :class:`~copsctl.data.loader.PanopticDataset` arguments.

======================================  ==========================================
recipe key                              PanopticDataset argument
======================================  ==========================================
``data.crop_size``                      ``crop_size``
``data.min_scale``, ``data.max_scale``  ``scale_range``
``data.flip``                           ``flip``
``data.val_size`` (0: keep the size)    ``eval_longer_side``
``data.small_instance_area``            ``small_area``
``loss.small_instance_weight``          ``small_weight``
``loss.thing_edge_weight``              ``thing_weight``
``model.distances``                     ``distances``
``train.seed``                          ``seed``
======================================  ==========================================

Training loaders draw keys from a :class:`~copsctl.data.sampler.TrainSampler` started at
the global stream position of the resumed iteration, so a resumed run sees the same
samples as an uninterrupted one. Loaders get their own ``torch.Generator``: creating a
loader iterator then never consumes the global torch random state, which the training
steps (dropout) own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from ..data.datasets import PanopticReader, open_data_split
from ..data.loader import PanopticDataset, collate_panoptic
from ..data.sampler import TrainSampler

if TYPE_CHECKING:
    from ..config import Recipe

__all__ = ["open_split", "make_dataset", "train_loader", "eval_loader"]


def open_split(recipe: "Recipe", split: str, *, check_files: bool = True) -> PanopticReader:
    """The reader of ``split`` of the recipe's dataset (:func:`copsctl.data.datasets.open_data_split`)."""
    return open_data_split(recipe.data, split, check_files=check_files)


def make_dataset(recipe: "Recipe", reader: PanopticReader, *, train: bool) -> PanopticDataset:
    """A :class:`PanopticDataset` over ``reader`` with the recipe's settings (module table)."""
    d, loss = recipe.data, recipe.loss
    return PanopticDataset(reader, distances=recipe.model.distances, train=train,
                           seed=recipe.train.seed, crop_size=d.crop_size,
                           scale_range=(d.min_scale, d.max_scale), flip=d.flip,
                           eval_longer_side=d.val_size or None, small_area=d.small_instance_area,
                           small_weight=loss.small_instance_weight,
                           thing_weight=loss.thing_edge_weight)


def _loader_kwargs(num_workers: int, pin_memory: bool) -> dict:
    kwargs = {"num_workers": int(num_workers), "collate_fn": collate_panoptic,
              "pin_memory": bool(pin_memory), "generator": torch.Generator()}
    if num_workers > 0:
        kwargs["persistent_workers"] = False
        kwargs["prefetch_factor"] = 2
    return kwargs


def train_loader(dataset: PanopticDataset, *, batch_size: int, seed: int, start: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """Endless loader of training batches of ``batch_size`` (per process).

    Parameters
    ----------
    start : int
        Global stream position (samples consumed by all processes so far).
    """
    sampler = TrainSampler(len(dataset), seed=seed, start=start, rank=rank,
                           world_size=world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False,
                      **_loader_kwargs(num_workers, pin_memory))


def eval_loader(dataset: PanopticDataset, *, indices=None, batch_size: int = 1,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Loader of evaluation batches in index order (``indices``: a subset, default all)."""
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, shuffle=False,
                      **_loader_kwargs(num_workers, pin_memory))
