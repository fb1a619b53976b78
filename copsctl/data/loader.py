"""Torch dataset of network inputs and training targets, and its collate function.

:class:`PanopticDataset` wraps a :class:`~copsctl.data.datasets.PanopticReader`:
read -> augment (train) or resize/pad (eval) -> normalise -> targets at 1/stride.

Reproducibility: the augmentation of a sample is drawn from
``numpy.random.default_rng([seed, epoch, index])``. The key ``(epoch, index)`` comes
either from the sampler (``dataset[(epoch, index)]``, see
:class:`~copsctl.data.sampler.TrainSampler`) or from :meth:`PanopticDataset.set_epoch`
for a plain integer index. Either way a sample does not depend on which DataLoader
worker produced it, on the number of workers, or on where a run was resumed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from .categories import IGNORE_INDEX
from .datasets import PanopticReader
from .targets import make_targets
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, apply_placement, eval_placement,
                         normalize_image, sample_placement)

# Keys stacked into batch tensors, with the value used to pad them in collate.
_PAD_VALUES = {"image": 0.0, "semantic": IGNORE_INDEX, "semantic_weights": 0.0,
               "affinity": 0.0, "affinity_weights": 0.0, "panoptic": 0}


class WorkerInputError(InputError):
    """An :class:`InputError` that keeps its one-line message across DataLoader workers.

    A DataLoader re-raises a worker's exception in the main process as
    ``type(exc)("Caught ... in DataLoader worker process N.\nOriginal Traceback ...")``;
    the first line would no longer name the bad file. This type recovers the original
    message from the last line of that text, so the CLI still prints one useful line.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught "):
            prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
            lines = [line for line in message.splitlines() if line.startswith(prefix)]
            if lines:
                message = lines[-1][len(prefix):]
        super().__init__(message)


class PanopticDataset(Dataset):
    """Network inputs and COPS pre-training targets for one split.

    Parameters
    ----------
    reader : PanopticReader
    distances : sequence of int
        Affinity distances at output resolution (grid layout order).
    train : bool
        True: random scale, crop and flip. False: no randomness; the whole image,
        optionally resized (``eval_longer_side``) and padded to ``eval_pad_multiple``.
    seed : int
        Base seed of the augmentation.
    crop_size : (int, int)
        Training crop (H, W): 512x1024 for Cityscapes, 640x640 for COCO.
    scale_range : (float, float)
        Range of the uniform random scale factor.
    flip : bool
        Random horizontal flips (probability 1/2).
    eval_longer_side : int, optional
        Evaluation: resize so the longer side has this length (COCO: 640).
    eval_pad_multiple : int
        Evaluation: pad bottom/right to a multiple of this.
    stride : int
        Output stride of the network (targets at ``ceil(H / stride)``).
    small_area, small_weight, thing_weight : see :func:`~copsctl.data.targets.make_targets`.
    mean, std : 3-tuples of float
        Image normalisation (ImageNet statistics by default).

    Each item is a dict:

    - ``image``: (3, H, W) float32 tensor, normalised;
    - ``semantic``: (h, w) int64 tensor, ``IGNORE_INDEX`` on void;
    - ``semantic_weights``: (h, w) float32 tensor;
    - ``affinity``, ``affinity_weights``: (2 m, h, w) float32 tensors (grid layout);
    - ``panoptic``: (h, w) int64 tensor of segment ids at output resolution;
    - ``segments``: dict of (S,) tensors ``ids``, ``classes``, ``iscrowd``, ``area``
      (output resolution), ``area_input`` (input resolution), for segments present
      in ``panoptic``;
    - ``image_id``; ``index`` (int); ``meta``: dict with ``orig_size`` (H0, W0),
      ``scaled_size``, ``offset``, ``flip`` and ``valid_box`` (rows/cols of the canvas
      showing the image, before flipping), so predictions can be mapped back.
    """

    def __init__(self, reader: PanopticReader, *, distances: Sequence[int], train: bool = True,
                 seed: int = 0, crop_size: tuple[int, int] = (512, 1024),
                 scale_range: tuple[float, float] = (0.5, 2.0), flip: bool = True,
                 eval_longer_side: int | None = None, eval_pad_multiple: int = 32,
                 stride: int = 4, small_area: int = 64 * 64, small_weight: float = 3.0,
                 thing_weight: float = 4.0, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.reader = reader
        self.distances = tuple(int(d) for d in distances)
        self.train = bool(train)
        self.seed = int(seed)
        self.crop_size = tuple(int(v) for v in crop_size)
        self.scale_range = tuple(float(v) for v in scale_range)
        self.flip = bool(flip)
        self.eval_longer_side = eval_longer_side
        self.eval_pad_multiple = int(eval_pad_multiple)
        self.stride = int(stride)
        self.small_area = int(small_area)
        self.small_weight = float(small_weight)
        self.thing_weight = float(thing_weight)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.thing_classes = reader.class_table.thing_mask
        self.epoch = 0
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise InputError(f"`crop_size` must be (H, W) positive, got {crop_size!r}")
        if self.stride < 1:
            raise InputError(f"`stride` must be a positive integer, got {stride}")

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for integer keys (``dataset[index]``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key) -> dict:
        if isinstance(key, (tuple, list)):
            epoch, index = (int(v) for v in key)
        else:
            epoch, index = self.epoch, int(key)
        try:
            return self._item(epoch, index)
        except InputError as exc:
            raise WorkerInputError(str(exc)) from None

    def _item(self, epoch: int, index: int) -> dict:
        sample = self.reader[index]
        image, panoptic = sample.image, sample.panoptic
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            placement = sample_placement(rng, image_size=image.shape[:2],
                                         crop_size=self.crop_size,
                                         scale_range=self.scale_range, flip=self.flip)
        else:
            placement = eval_placement(image_size=image.shape[:2],
                                       longer_side=self.eval_longer_side,
                                       pad_multiple=self.eval_pad_multiple)
        image, panoptic = apply_placement(image, panoptic, placement)
        t = make_targets(panoptic, segment_ids=sample.segment_ids,
                         segment_classes=sample.segment_classes,
                         segment_iscrowd=sample.segment_iscrowd,
                         thing_classes=self.thing_classes, distances=self.distances,
                         stride=self.stride, small_area=self.small_area,
                         small_weight=self.small_weight, thing_weight=self.thing_weight,
                         source=str(sample.label_path))
        return {
            "image": torch.from_numpy(normalize_image(image, self.mean, self.std)),
            "semantic": torch.from_numpy(t.semantic),
            "semantic_weights": torch.from_numpy(t.semantic_weights),
            "affinity": torch.from_numpy(t.affinity),
            "affinity_weights": torch.from_numpy(t.affinity_weights),
            "panoptic": torch.from_numpy(t.panoptic),
            "segments": {"ids": torch.from_numpy(t.segment_ids),
                         "classes": torch.from_numpy(t.segment_classes),
                         "iscrowd": torch.from_numpy(t.segment_iscrowd),
                         "area": torch.from_numpy(t.segment_area),
                         "area_input": torch.from_numpy(t.segment_area_input)},
            "image_id": sample.image_id,
            "index": index,
            "meta": {"orig_size": tuple(sample.image.shape[:2]),
                     "scaled_size": placement.scaled_size, "offset": placement.offset,
                     "flip": placement.flip, "valid_box": placement.valid_box()},
        }


def _pad_to(t: torch.Tensor, size: tuple[int, int], value) -> torch.Tensor:
    dh, dw = size[0] - t.shape[-2], size[1] - t.shape[-1]
    if dh == 0 and dw == 0:
        return t
    return torch.nn.functional.pad(t, (0, dw, 0, dh), value=value)


def collate_panoptic(batch: list[dict]) -> dict:
    """Stack a list of :class:`PanopticDataset` items into a batch.

    Images and maps of different sizes (evaluation) are padded at the bottom and right
    to the largest in the batch: the image with 0 (the normalised mean), ``semantic``
    with ``IGNORE_INDEX``, weights, affinities and ``panoptic`` with 0, so padding never
    contributes to a loss and the grid layout stays valid. ``segments``, ``image_id``
    and ``meta`` stay per-sample lists; ``index`` becomes an int64 tensor.
    """
    if not batch:
        raise InputError("`batch` must not be empty")
    out = {}
    for key, value in _PAD_VALUES.items():
        tensors = [item[key] for item in batch]
        size = (max(t.shape[-2] for t in tensors), max(t.shape[-1] for t in tensors))
        out[key] = torch.stack([_pad_to(t, size, value) for t in tensors])
    out["segments"] = [item["segments"] for item in batch]
    out["image_id"] = [item["image_id"] for item in batch]
    out["meta"] = [item["meta"] for item in batch]
    out["index"] = torch.tensor([item["index"] for item in batch], dtype=torch.int64)
    return out
