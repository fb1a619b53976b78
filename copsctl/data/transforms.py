"""Geometric augmentation and image normalisation for (image, panoptic map) pairs.

Training: random scale, then a random crop of fixed size (padded where the scaled
image is smaller), then a random horizontal flip. Scale, crop and padding are one
mapping from output pixels to input pixels, so only the crop window is resampled
(a 2x-scaled Cityscapes image is never materialised): the image bilinearly (PIL,
antialiased when shrinking), the panoptic map by nearest neighbour on pixel centres, so
ids are never blended. Padding is void (id 0) in the map and the ImageNet mean colour
in the image (zero after normalisation).

Evaluation: optionally resize so the longer side has a given length, then pad at the
bottom and right to a multiple of a given size; no randomness.

All randomness comes from the ``numpy.random.Generator`` passed in, so a sample is a
function of the seed it was drawn with (see :mod:`copsctl.data.loader`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import InputError
from ..panoptic.format import VOID

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_COLOR = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)
"""Image padding colour: the ImageNet mean, which normalises to about zero."""


@dataclass(frozen=True)
class Placement:
    """How an input image maps onto an output canvas.

    Output pixel ``(yy, xx)`` (before flipping) shows scaled-image pixel
    ``(offset_y + yy, offset_x + xx)`` of the input resized to ``scaled_size``; negative
    offsets and positions beyond ``scaled_size`` are padding.

    Attributes
    ----------
    scaled_size : (int, int)
        Size (H, W) of the input after scaling.
    offset : (int, int)
        Top-left corner of the canvas in scaled-image coordinates (may be negative).
    out_size : (int, int)
        Canvas size (H, W).
    flip : bool
        Mirror the canvas horizontally at the end.
    """

    scaled_size: tuple[int, int]
    offset: tuple[int, int]
    out_size: tuple[int, int]
    flip: bool = False

    def valid_box(self) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1): canvas rows/columns showing image content (before flipping)."""
        (sh, sw), (oy, ox), (ch, cw) = self.scaled_size, self.offset, self.out_size
        return (max(0, -oy), min(ch, sh - oy), max(0, -ox), min(cw, sw - ox))


def _check_size(size, name: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"`{name}` must be a pair (H, W) of positive integers, got {size!r}") \
            from None
    if h < 1 or w < 1:
        raise InputError(f"`{name}` must be a pair (H, W) of positive integers, got {size!r}")
    return h, w


def sample_placement(rng: np.random.Generator, *, image_size: tuple[int, int],
                     crop_size: tuple[int, int], scale_range: tuple[float, float] = (0.5, 2.0),
                     flip: bool = True) -> Placement:
    """Draw a random scale (uniform in ``scale_range``), crop window and flip.

    Along each axis the crop lies inside the scaled image when that is larger than the
    crop, else the scaled image lies inside the crop; either way uniformly at random.
    """
    H, W = _check_size(image_size, "image_size")
    ch, cw = _check_size(crop_size, "crop_size")
    lo, hi = (float(v) for v in scale_range)
    if not 0 < lo <= hi:
        raise InputError(f"`scale_range` must satisfy 0 < low <= high, got {scale_range!r}")
    scale = rng.uniform(lo, hi) if hi > lo else lo
    sh, sw = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
    oy = int(rng.integers(min(0, sh - ch), max(0, sh - ch) + 1))
    ox = int(rng.integers(min(0, sw - cw), max(0, sw - cw) + 1))
    do_flip = bool(flip and rng.random() < 0.5)
    return Placement(scaled_size=(sh, sw), offset=(oy, ox), out_size=(ch, cw), flip=do_flip)


def eval_placement(*, image_size: tuple[int, int], longer_side: int | None = None,
                   pad_multiple: int = 32) -> Placement:
    """Deterministic placement: optional resize of the longer side, pad to a multiple.

    Parameters
    ----------
    image_size : (int, int)
        Input size (H, W).
    longer_side : int, optional
        Resize (keeping the aspect ratio) so that ``max(H, W)`` becomes this; None keeps
        the original resolution.
    pad_multiple : int
        Pad bottom and right so both canvas sides are multiples of this (1: no padding).
    """
    H, W = _check_size(image_size, "image_size")
    if pad_multiple < 1:
        raise InputError(f"`pad_multiple` must be a positive integer, got {pad_multiple}")
    if longer_side is None:
        sh, sw = H, W
    else:
        if longer_side < 1:
            raise InputError(f"`longer_side` must be a positive integer, got {longer_side}")
        scale = longer_side / max(H, W)
        sh, sw = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
    out = (math.ceil(sh / pad_multiple) * pad_multiple, math.ceil(sw / pad_multiple) * pad_multiple)
    return Placement(scaled_size=(sh, sw), offset=(0, 0), out_size=out, flip=False)


def apply_placement(image: np.ndarray, panoptic: np.ndarray,
                    placement: Placement) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``image`` and ``panoptic`` onto the canvas described by ``placement``.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
    panoptic : (H, W) int ndarray
        Segment ids; 0 is void.
    placement : Placement

    Returns
    -------
    image : (h, w, 3) uint8 ndarray
        ``(h, w) = placement.out_size``; padding is :data:`PAD_COLOR`.
    panoptic : (h, w) int64 ndarray
        Padding is void (0).
    """
    image = np.asarray(image)
    panoptic = np.asarray(panoptic)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"`image` (shape {image.shape}, dtype {image.dtype}) must be an "
                         "(H, W, 3) uint8 array")
    if panoptic.shape != image.shape[:2]:
        raise InputError(f"`panoptic` (shape {panoptic.shape}) must have the image's shape "
                         f"{image.shape[:2]}")
    H, W = panoptic.shape
    sh, sw = placement.scaled_size
    oy, ox = placement.offset
    ch, cw = placement.out_size
    y0, y1, x0, x1 = placement.valid_box()
    out_img = np.empty((ch, cw, 3), dtype=np.uint8)
    out_img[...] = PAD_COLOR
    out_pan = np.full((ch, cw), VOID, dtype=np.int64)
    if y1 > y0 and x1 > x0:
        # Scaled-image rows/columns shown on the canvas.
        r0, r1, c0, c1 = y0 + oy, y1 + oy, x0 + ox, x1 + ox
        if (sh, sw) == (H, W):
            out_img[y0:y1, x0:x1] = image[r0:r1, c0:c1]
            out_pan[y0:y1, x0:x1] = panoptic[r0:r1, c0:c1]
        else:
            fy, fx = H / sh, W / sw
            # PIL maps output pixel i of the box to source x0_box + (i + 0.5) * fx, the same
            # centre-to-centre rule as the nearest-neighbour indices of the label below.
            box = (c0 * fx, r0 * fy, c1 * fx, r1 * fy)
            resized = Image.fromarray(image).resize((c1 - c0, r1 - r0), Image.BILINEAR, box=box)
            out_img[y0:y1, x0:x1] = np.asarray(resized)
            rows = np.minimum(((np.arange(r0, r1) + 0.5) * fy).astype(np.int64), H - 1)
            cols = np.minimum(((np.arange(c0, c1) + 0.5) * fx).astype(np.int64), W - 1)
            out_pan[y0:y1, x0:x1] = panoptic[np.ix_(rows, cols)]
    if placement.flip:
        out_img = out_img[:, ::-1]
        out_pan = out_pan[:, ::-1]
    return np.ascontiguousarray(out_img), np.ascontiguousarray(out_pan)


def normalize_image(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32: ``(image / 255 - mean) / std`` per channel."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"`image` (shape {image.shape}) must have shape (H, W, 3)")
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    chw = image.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
    return (chw - mean) / std
