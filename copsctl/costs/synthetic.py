"""Synthetic AMWC problems that look like a panoptic network's output.

Used by ``copsctl make-costs``, ``copsctl demo`` and the solver benchmark, so that the
solver and the whole cost -> prediction -> PQ path can be exercised before any network
exists. Everything is vectorised numpy and deterministic given a seed (image ``i`` of a
set with seed ``s`` is drawn from ``numpy.random.default_rng([s, i])``, so it does not
depend on how many images the set has).

A problem is made in three steps, at cost resolution ``h x w``:

**Scene.** A few stuff classes split the image by the argmax of smooth random fields
(two scales, so boundaries are irregular) plus a per-class preferred height (sky-like
classes high, road-like classes low). Thing instances of a few thing classes are then
painted back to front, ordered by their lower edge so nearer objects occlude farther
ones. Each instance is an ellipse with a wavy boundary, its radius log-uniform from
1.5 cost pixels to a sixth of the image height, with a per-class aspect ratio; about
half are placed right beside the previous instance of their class, so instances of one
class touch and overlap. Stuff classes are one segment each (the COCO panoptic
convention); an instance hidden entirely is dropped. There is no void.

**Node costs** ``(K, h, w)`` are ``-log softmax`` of logits ``a * B + n``: ``B`` is the
ground-truth one-hot map blurred by one cost pixel (so boundaries are uncertain) and
``n`` is noise that is mostly spatially correlated (bilinear upsampling of coarse
Gaussian noise) with a small i.i.d. part, so errors come in blobs as with a real CNN;
classes absent from the image get a lower offset so confusions are mostly among the
classes present. One segment in five is also "confused": another class of its kind
gets 50-125% (things) or 30-90% (stuff) of its evidence, so objects are partly or
wholly mislabelled. The margin ``a`` is found by bisection so that the pixel accuracy
(argmin of the costs against the ground truth) hits a target drawn uniformly from
[0.86, 0.91] per image (or the ``accuracy`` argument).

**Edge costs** in the grid layout of :mod:`copsctl.solver.grid` are
``logit(clip(p, 1e-4, 1 - 1e-4))`` of a noisy same-segment probability
``p = sigmoid(s_d * (+1 if same segment else -1) + noise)``: ``s_d`` shrinks with the
distance ``d`` (long-range affinities are less sure), is weaker still between touching
instances of one class, and the noise is again spatially correlated. Positive costs
attract, as in the solver's sign convention; positions without an edge hold 0.
``difficulty`` (0 = normal, 1 = the "hard" family) weakens ``s_d`` by up to 50% and
makes the noise up to 70% stronger.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from scipy import ndimage

from ..atomic import atomic_paths, check_output, check_output_folder, write_manifest
from .cache import CostWriter, solver_problem
from ..errors import InputError
from ..panoptic.format import Annotation, Category, PanopticWriter
from ..panoptic.postprocess import panoptic_from_segments

if TYPE_CHECKING:
    from ..config import Recipe

EDGE_PROB_EPS = 1e-4


# ----------------------------------------------------------------------------------------
# Class tables and presets

# Cityscapes' 19 training classes in train-id order: (label id, name, isthing, colour).
_CITYSCAPES = [
    (7, "road", False, (128, 64, 128)), (8, "sidewalk", False, (244, 35, 232)),
    (11, "building", False, (70, 70, 70)), (12, "wall", False, (102, 102, 156)),
    (13, "fence", False, (190, 153, 153)), (17, "pole", False, (153, 153, 153)),
    (19, "traffic light", False, (250, 170, 30)), (20, "traffic sign", False, (220, 220, 0)),
    (21, "vegetation", False, (107, 142, 35)), (22, "terrain", False, (152, 251, 152)),
    (23, "sky", False, (70, 130, 180)), (24, "person", True, (220, 20, 60)),
    (25, "rider", True, (255, 0, 0)), (26, "car", True, (0, 0, 142)),
    (27, "truck", True, (0, 0, 70)), (28, "bus", True, (0, 60, 100)),
    (31, "train", True, (0, 80, 100)), (32, "motorcycle", True, (0, 0, 230)),
    (33, "bicycle", True, (119, 11, 32)),
]
# Preferred vertical position (0 = top) of each Cityscapes stuff class, for the layout.
_CITYSCAPES_HEIGHT = {"road": 0.95, "sidewalk": 0.8, "building": 0.3, "wall": 0.5,
                      "fence": 0.6, "pole": 0.45, "traffic light": 0.25,
                      "traffic sign": 0.3, "vegetation": 0.35, "terrain": 0.75, "sky": 0.0}


def _palette(n: int, seed: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(30, 256, size=3)) for _ in range(n)]


def cityscapes_categories() -> list[Category]:
    """The 19 Cityscapes classes (11 stuff, 8 things) with their label ids."""
    return [Category(cid, name, isthing, color) for cid, name, isthing, color in _CITYSCAPES]


def coco_like_categories() -> list[Category]:
    """133 classes shaped like COCO panoptic: 80 things (ids 1-80), 53 stuff (ids 101-153).

    The names are placeholders; the ids are deliberately not contiguous so that the
    class-index -> category-id mapping is exercised.
    """
    colors = _palette(133, seed=133)
    things = [Category(i + 1, f"thing-{i + 1:02d}", True, colors[i]) for i in range(80)]
    stuff = [Category(101 + i, f"stuff-{i + 1:02d}", False, colors[80 + i]) for i in range(53)]
    return things + stuff


def tiny_categories() -> list[Category]:
    """Five classes (3 stuff, 2 things) with non-contiguous ids, for tests and the demo."""
    return [Category(7, "ground", False, (128, 64, 128)), Category(11, "wall", False, (70, 70, 70)),
            Category(23, "sky", False, (70, 130, 180)), Category(24, "person", True, (220, 20, 60)),
            Category(26, "car", True, (0, 0, 142))]


@dataclass(frozen=True)
class Preset:
    """Shape of a family of synthetic problems.

    height, width : cost-grid size (nodes ``height * width``).
    image_height, image_width : original image size the predictions are upsampled to.
    categories : class table, contiguous class index -> Category.
    distances : grid-edge distances (see :mod:`copsctl.solver.grid`).
    thing_area, stuff_area : small-segment rejection thresholds at the original size.
    stuff_per_image, things_per_image, thing_classes_per_image : inclusive ranges.
    max_radius : largest instance radius as a fraction of ``height``.
    layout : weight of the per-class preferred height of stuff classes (0 = none).
    noise_cell : cost pixels per cell of the correlated node-cost noise.
    """

    name: str
    height: int
    width: int
    image_height: int
    image_width: int
    categories: tuple[Category, ...]
    distances: tuple[int, ...]
    thing_area: int
    stuff_area: int
    stuff_per_image: tuple[int, int]
    things_per_image: tuple[int, int]
    thing_classes_per_image: tuple[int, int]
    max_radius: float = 1 / 6
    layout: float = 1.5
    noise_cell: int = 8

    @property
    def num_classes(self) -> int:
        return len(self.categories)


PRESETS: dict[str, Preset] = {
    "cityscapes": Preset("cityscapes", 256, 512, 1024, 2048, tuple(cityscapes_categories()),
                         (1, 4, 16, 32, 64, 128), thing_area=200, stuff_area=2048,
                         stuff_per_image=(5, 9), things_per_image=(8, 30),
                         thing_classes_per_image=(2, 5), noise_cell=8),
    "coco": Preset("coco", 160, 160, 640, 640, tuple(coco_like_categories()),
                   (1, 4, 16, 32, 64), thing_area=200, stuff_area=4096,
                   stuff_per_image=(2, 6), things_per_image=(2, 14),
                   thing_classes_per_image=(1, 4), layout=0.5, noise_cell=5),
    # A scaled-down Cityscapes for the demo: seconds, not minutes.
    "small": Preset("small", 64, 128, 256, 512, tuple(cityscapes_categories()),
                    (1, 2, 4, 8, 16), thing_area=48, stuff_area=256,
                    stuff_per_image=(4, 7), things_per_image=(4, 12),
                    thing_classes_per_image=(2, 4), noise_cell=4),
    "tiny": Preset("tiny", 24, 32, 96, 128, tuple(tiny_categories()), (1, 2, 4),
                   thing_area=16, stuff_area=64, stuff_per_image=(2, 3),
                   things_per_image=(2, 5), thing_classes_per_image=(1, 2), layout=1.0,
                   noise_cell=3),
}


def get_preset(preset: str | Preset) -> Preset:
    """Look up a preset by name (``cityscapes``, ``coco``, ``small``, ``tiny``)."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise InputError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}")
    return PRESETS[preset]


# ----------------------------------------------------------------------------------------
# The problem


@dataclass
class SyntheticProblem:
    """One synthetic AMWC problem with its ground truth.

    node_costs : (K, h, w) float32 ndarray
        ``-log softmax`` of the noisy logits.
    edge_maps : (2 m, h, w) float32 ndarray
        Edge costs in the grid layout for ``distances`` (0 where there is no edge).
    distances : tuple of int
    categories : list of Category, length K
    gt_segments : (h, w) int32 ndarray
        Ground-truth segment index per node, ``0 .. S-1``.
    gt_segment_class : (S,) int64 ndarray
        Contiguous class index of each ground-truth segment.
    image_size : (H, W)
        Original image size.
    info : dict
        ``pixel_accuracy``, ``edge_accuracy``, ``target_accuracy``, ``margin``, ``seconds``.
    """

    node_costs: np.ndarray
    edge_maps: np.ndarray
    distances: tuple[int, ...]
    categories: list[Category]
    gt_segments: np.ndarray
    gt_segment_class: np.ndarray
    image_size: tuple[int, int]
    info: dict = field(default_factory=dict)

    @property
    def cost_size(self) -> tuple[int, int]:
        return tuple(self.node_costs.shape[1:])

    @property
    def gt_labels(self) -> np.ndarray:
        """(h, w) int64 ndarray: ground-truth class index per node."""
        return self.gt_segment_class[self.gt_segments]

    @property
    def partitionable(self) -> np.ndarray:
        """(K,) bool ndarray: the thing classes."""
        return np.array([c.isthing for c in self.categories], dtype=bool)

    def solver_problem(self) -> tuple:
        """``(node_costs (N, K), edges (E, 2), edge_costs (E,), partitionable (K,),
        local_edges (E,))`` as :func:`copsctl.costs.cache.solver_problem`."""
        return solver_problem(self.node_costs, self.edge_maps, self.distances,
                              self.partitionable)

    def ground_truth(self):
        """The ground truth at the original size as a ``PanopticPrediction`` (ids + segments)."""
        return panoptic_from_segments(self.gt_segments, self.gt_segment_class, self.categories,
                                      self.image_size, thing_area=0, stuff_area=0,
                                      merge_stuff=True)


def _upsample_bilinear(low: np.ndarray, h: int, w: int) -> np.ndarray:
    """(C, lh, lw) -> (C, h, w) by separable linear interpolation (corners aligned)."""
    _, lh, lw = low.shape
    ys = np.linspace(0.0, lh - 1.0, h)
    xs = np.linspace(0.0, lw - 1.0, w)
    y0 = np.minimum(ys.astype(np.int64), lh - 2); fy = (ys - y0).astype(np.float32)
    x0 = np.minimum(xs.astype(np.int64), lw - 2); fx = (xs - x0).astype(np.float32)
    rows = low[:, y0, :] * (1 - fy)[None, :, None] + low[:, y0 + 1, :] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx)[None, None, :] + rows[:, :, x0 + 1] * fx[None, None, :]


def _smooth_noise(rng: np.random.Generator, channels: int, h: int, w: int,
                  cell: float) -> np.ndarray:
    """(C, h, w) float32 spatially correlated noise with unit variance, correlation ~ cell."""
    lh = max(int(math.ceil(h / cell)) + 1, 2)
    lw = max(int(math.ceil(w / cell)) + 1, 2)
    low = rng.standard_normal((channels, lh, lw), dtype=np.float32)
    up = _upsample_bilinear(low, h, w)
    # Linear interpolation shrinks the variance between lattice points; restore it.
    return up / np.float32(max(float(up.std()), 1e-6))


def _class_traits(preset: Preset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed per-class traits: preferred height of stuff, aspect and size of things."""
    rng = np.random.default_rng(12345)
    K = preset.num_classes
    height = rng.uniform(0.0, 1.0, size=K)
    for k, c in enumerate(preset.categories):
        if c.name in _CITYSCAPES_HEIGHT:
            height[k] = _CITYSCAPES_HEIGHT[c.name]
    aspect = np.exp(rng.uniform(-0.7, 0.7, size=K))   # ry / rx
    size = np.exp(rng.uniform(-0.4, 0.4, size=K))
    return height, aspect, size


def _make_scene(rng: np.random.Generator, preset: Preset) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth at cost resolution: (h, w) segment index map and (S,) segment classes."""
    h, w = preset.height, preset.width
    cats = preset.categories
    stuff_cls = np.array([k for k, c in enumerate(cats) if not c.isthing])
    thing_cls = np.array([k for k, c in enumerate(cats) if c.isthing])
    pref_height, aspect, size_scale = _class_traits(preset)

    # Stuff: argmax of smooth fields at two scales plus a preferred-height prior.
    n_stuff = int(rng.integers(preset.stuff_per_image[0], preset.stuff_per_image[1] + 1))
    n_stuff = min(n_stuff, stuff_cls.size)
    present_stuff = np.sort(rng.choice(stuff_cls, size=n_stuff, replace=False))
    fields = (_smooth_noise(rng, n_stuff, h, w, cell=max(h, w) / 3)
              + 0.35 * _smooth_noise(rng, n_stuff, h, w, cell=max(h, w) / 14))
    ys = (np.arange(h, dtype=np.float32) / max(h - 1, 1))[None, :, None]
    centre = pref_height[present_stuff].astype(np.float32)[:, None, None]
    fields -= np.float32(preset.layout) * ((ys - centre) / 0.35) ** 2
    stuff_map = np.argmax(fields, axis=0)
    # Segment index s < n_stuff is the stuff class present_stuff[s].
    seg = stuff_map.astype(np.int32)
    seg_class = list(present_stuff.tolist())

    # Things: back-to-front painting ordered by lower edge.
    n_tcls = int(rng.integers(preset.thing_classes_per_image[0],
                              preset.thing_classes_per_image[1] + 1))
    present_things = rng.choice(thing_cls, size=min(n_tcls, thing_cls.size), replace=False)
    n_inst = int(rng.integers(preset.things_per_image[0], preset.things_per_image[1] + 1))
    r_min, r_max = 1.5, max(2.0, preset.max_radius * h)
    inst = []
    last_of_class: dict[int, tuple[float, float, float]] = {}
    for _ in range(n_inst):
        k = int(rng.choice(present_things))
        r = float(np.exp(rng.uniform(np.log(r_min), np.log(r_max)))) * float(size_scale[k])
        r = min(max(r, r_min), r_max)
        asp = float(aspect[k]) * float(np.exp(rng.uniform(-0.15, 0.15)))
        rx, ry = r / math.sqrt(asp), r * math.sqrt(asp)
        if k in last_of_class and rng.random() < 0.5:
            # Beside the previous instance of this class: touching or overlapping.
            py, px, prx = last_of_class[k]
            side = 1.0 if rng.random() < 0.5 else -1.0
            cx = px + side * (prx + rx) * rng.uniform(0.6, 1.0)
            cy = py + rng.uniform(-0.3, 0.3) * ry
        else:
            cx = rng.uniform(0, w)
            cy = rng.uniform(0.15, 1.0) * h
        last_of_class[k] = (cy, cx, rx)
        angle = rng.uniform(-0.35, 0.35)
        harmonics = [(kk, rng.uniform(0.0, 0.12), rng.uniform(0, 2 * np.pi)) for kk in (2, 3, 5)]
        inst.append((cy + ry, k, cy, cx, ry, rx, angle, harmonics))
    inst.sort(key=lambda t: t[0])
    seg_ids = []
    for _, k, cy, cx, ry, rx, angle, harmonics in inst:
        R = 1.4 * max(rx, ry)
        y0, y1 = max(int(cy - R), 0), min(int(cy + R) + 2, h)
        x0, x1 = max(int(cx - R), 0), min(int(cx + R) + 2, w)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
        ca, sa = math.cos(angle), math.sin(angle)
        u = (dx * ca + dy * sa) / rx
        v = (-dx * sa + dy * ca) / ry
        theta = np.arctan2(v, u)
        bound = np.ones_like(theta)
        for kk, amp, phase in harmonics:
            bound += amp * np.cos(kk * theta + phase)
        inside = (u * u + v * v) < bound * bound
        if not inside.any():
            continue
        s = len(seg_class)
        seg_class.append(k)
        seg_ids.append(s)
        seg[y0:y1, x0:x1][inside] = s
    # Renumber to drop instances hidden completely (and unused stuff classes).
    used = np.zeros(len(seg_class), dtype=bool)
    used[np.unique(seg)] = True
    remap = np.cumsum(used) - 1
    seg = remap[seg].astype(np.int32)
    seg_class = np.asarray(seg_class, dtype=np.int64)[used]
    return seg, seg_class


def _node_costs(rng: np.random.Generator, preset: Preset, seg: np.ndarray,
                seg_class: np.ndarray, target_accuracy: float,
                confusion: float = 0.2) -> tuple[np.ndarray, float, float]:
    """(K, h, w) float32 node costs, the margin used, and the pixel accuracy reached."""
    K, (h, w) = preset.num_classes, seg.shape
    labels = seg_class[seg]
    isthing = np.array([c.isthing for c in preset.categories], dtype=bool)
    # Evidence per class: 1 on the class's own pixels; on a "confused" segment (chance
    # `confusion`) another class of the same kind gets part of it too (things 0.5-1.25,
    # stuff 0.3-0.9), so objects are mislabelled, as a CNN mislabels a truck as a bus.
    S = seg_class.size
    conf_class = np.full(S, -1, dtype=np.int64)
    conf_weight = np.zeros(S, dtype=np.float32)
    for s, k in enumerate(seg_class.tolist()):
        if rng.random() >= confusion:
            continue
        same_kind = np.flatnonzero((isthing == isthing[k]) & (np.arange(K) != k))
        if same_kind.size:
            conf_class[s] = int(rng.choice(same_kind))
            # Above 1 the rival wins on the whole segment: a wholly mislabelled object.
            # Only things go that far, so that the accuracy target stays reachable.
            conf_weight[s] = rng.uniform(0.5, 1.25) if isthing[k] else rng.uniform(0.3, 0.9)
    present = np.union1d(seg_class, conf_class[conf_class >= 0])
    slot = np.searchsorted(present, seg_class)          # segment -> boost channel
    boost = np.zeros((present.size, h, w), dtype=np.float32)
    yy, xx = np.indices((h, w))
    boost[slot[seg], yy, xx] = 1.0
    confused = conf_class[seg] >= 0
    boost[np.searchsorted(present, conf_class[seg][confused]), yy[confused],
          xx[confused]] += conf_weight[seg][confused]
    # Blurred by a cost pixel, so that boundaries are uncertain.
    boost = ndimage.gaussian_filter(boost, sigma=(0, 1.0, 1.0), mode="nearest")

    noise = 1.5 * _smooth_noise(rng, K, h, w, cell=preset.noise_cell)
    noise += 0.35 * rng.standard_normal((K, h, w), dtype=np.float32)
    absent = np.ones(K, dtype=bool)
    absent[present] = False
    noise[absent] -= np.float32(1.0)

    # Accuracy for margin a: the true class must beat every other boosted class and the
    # best other class (whose logit does not depend on a); ties have probability 0.
    pos = slot[seg]
    noise_p = noise[present]
    best_absent = (noise[absent].max(axis=0) if absent.any()
                   else np.full((h, w), -np.inf, np.float32))

    def accuracy(a: float) -> float:
        score = np.float32(a) * boost
        score += noise_p
        ok = (score.argmax(axis=0) == pos) & (score.max(axis=0) > best_absent)
        return float(ok.mean())

    lo, hi = 0.0, 8.0
    while accuracy(hi) < target_accuracy and hi < 64.0:
        lo, hi = hi, hi * 2
    for _ in range(10):
        mid = 0.5 * (lo + hi)
        if accuracy(mid) < target_accuracy:
            lo = mid
        else:
            hi = mid
    margin = hi
    logits = noise
    logits[present] += np.float32(margin) * boost
    top = logits.max(axis=0, keepdims=True)
    lse = top + np.log(np.exp(logits - top).sum(axis=0, keepdims=True))
    costs = (lse - logits).astype(np.float32)
    acc = float((costs.argmin(axis=0) == labels).mean())
    return costs, margin, acc


def _edge_maps(rng: np.random.Generator, preset: Preset, seg: np.ndarray, labels: np.ndarray,
               isthing: np.ndarray, difficulty: float) -> tuple[np.ndarray, float]:
    """(2 m, h, w) float32 edge-cost maps in the grid layout, and the edge accuracy."""
    h, w = seg.shape
    m = len(preset.distances)
    maps = np.zeros((2 * m, h, w), dtype=np.float32)
    strength_scale = 1.0 - 0.5 * difficulty
    noise_scale = 1.0 + 0.7 * difficulty
    noise = _smooth_noise(rng, 2 * m, h, w, cell=max(2, preset.noise_cell // 2))
    lim = float(np.log((1 - EDGE_PROB_EPS) / EDGE_PROB_EPS))
    correct = total = 0
    for i, d in enumerate(preset.distances):
        strength = 3.0 * strength_scale / (1.0 + 0.15 * math.log2(d))
        for c, (sl_a, sl_b) in enumerate((
                ((slice(None), slice(0, w - d)), (slice(None), slice(d, None))),
                ((slice(0, h - d), slice(None)), (slice(d, None), slice(None))))):
            a_seg, b_seg = seg[sl_a], seg[sl_b]
            if a_seg.size == 0:
                continue
            same = a_seg == b_seg
            # Two touching instances of one thing class are the hard boundaries.
            twin = (~same) & (labels[sl_a] == labels[sl_b]) & isthing[labels[sl_a]]
            s = np.where(twin, 0.6 * strength, strength).astype(np.float32)
            n = noise[2 * i + c][sl_a] + 0.4 * rng.standard_normal(a_seg.shape, dtype=np.float32)
            z = np.where(same, s, -s) + np.float32(noise_scale) * n
            # logit(clip(sigmoid(z), eps, 1 - eps)) == clip(z, -lim, lim)
            z = np.clip(z, -lim, lim)
            maps[2 * i + c][sl_a] = z
            correct += int(((z > 0) == same).sum())
            total += same.size
    return maps, correct / max(total, 1)


def make_problem(preset: str | Preset = "cityscapes", seed: int | Sequence[int] = 0,
                 difficulty: float = 0.0, accuracy: float | None = None) -> SyntheticProblem:
    """Generate one synthetic problem with its ground truth.

    Parameters
    ----------
    preset : str or Preset
        ``cityscapes`` (256x512 nodes, 19 classes), ``coco`` (160x160, 133 classes),
        ``small`` (64x128, 19 classes) or ``tiny`` (24x32, 5 classes).
    seed : int or sequence of int
        Seed of ``numpy.random.default_rng``; the same seed gives the same problem.
    difficulty : float in [0, 1]
        0 for the normal family, 1 for the hard family (weaker, noisier edge costs).
    accuracy : float, optional
        Target pixel accuracy of the node costs; default drawn from U[0.86, 0.91].

    Returns
    -------
    SyntheticProblem
    """
    p = get_preset(preset)
    if not 0.0 <= float(difficulty) <= 1.0:
        raise InputError(f"`difficulty` must lie in [0, 1], got {difficulty}")
    if accuracy is not None and not 0.0 < float(accuracy) < 1.0:
        raise InputError(f"`accuracy` must lie in (0, 1), got {accuracy}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    seg, seg_class = _make_scene(rng, p)
    labels = seg_class[seg]
    target = float(accuracy) if accuracy is not None else float(rng.uniform(0.86, 0.91))
    node_costs, margin, acc = _node_costs(rng, p, seg, seg_class, target)
    isthing = np.array([c.isthing for c in p.categories], dtype=bool)
    edge_maps, edge_acc = _edge_maps(rng, p, seg, labels, isthing, float(difficulty))
    info = {"pixel_accuracy": acc, "target_accuracy": target, "margin": margin,
            "edge_accuracy": edge_acc, "difficulty": float(difficulty),
            "seconds": time.perf_counter() - t0}
    return SyntheticProblem(node_costs=node_costs, edge_maps=edge_maps, distances=p.distances,
                            categories=list(p.categories), gt_segments=seg,
                            gt_segment_class=seg_class,
                            image_size=(p.image_height, p.image_width), info=info)


# ----------------------------------------------------------------------------------------
# A cost file with its ground truth


def synthetic_recipe(preset: str | Preset) -> "Recipe":
    """The resolved recipe stored in a synthetic cost file of ``preset``.

    The code defaults of :mod:`copsctl.config` with the preset's small-segment thresholds
    (``data.thing_area_threshold``, ``data.stuff_area_threshold``), which ``copsctl
    solve`` takes as its defaults, and its edge distances (``model.distances``), as in
    the recipe of a network run.
    """
    from ..config import recipe_from_dict

    p = get_preset(preset)
    return recipe_from_dict({"data": {"thing_area_threshold": int(p.thing_area),
                                      "stuff_area_threshold": int(p.stuff_area)},
                             "model": {"distances": list(p.distances)}},
                            source=f"synthetic preset {p.name!r}")


def default_gt_out(out: str | os.PathLike, gt_out: str | os.PathLike | None = None) -> Path:
    """The ground-truth folder of cost file ``out``: ``gt_out``, else ``<out stem>_gt``."""
    out = Path(out)
    return Path(gt_out) if gt_out is not None else out.with_name(out.stem + "_gt")


def write_synthetic_costs(out: str | os.PathLike, gt_out: str | os.PathLike | None = None,
                          preset: str | Preset = "tiny", num_images: int = 4, seed: int = 0,
                          difficulty: float = 0.0, overwrite: bool = False,
                          progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a synthetic cost file and its ground truth in COCO panoptic format.

    Parameters
    ----------
    out : path-like
        The cost file (schema of :mod:`copsctl.costs.cache`).
    gt_out : path-like, optional
        Folder for the ground truth: ``panoptic_gt.json`` and the PNG folder
        ``panoptic_gt/`` at the original image size. Default: ``<out stem>_gt`` beside
        ``out``. Both are written under temporary names and published only once
        both are complete (:func:`copsctl.atomic.atomic_paths`). An existing non-empty
        folder is replaced only when it is an earlier ``make-costs`` ground truth.
    preset, seed, difficulty
        As in :func:`make_problem`; image ``i`` uses seed ``[seed, i]`` (``seed >= 0``).
    overwrite : bool
        Replace ``gt_out`` even when it holds files that make-costs did not write.
    num_images : int
        Number of images (at least 1).
    progress : callable, optional
        Called as ``progress(done, total)`` after each image.

    Returns
    -------
    dict
        ``costs``, ``gt_json``, ``gt_dir``, ``images``, ``pixel_accuracy`` (mean),
        ``edge_accuracy`` (mean), ``seconds``.
    """
    p = get_preset(preset)
    if int(num_images) < 1:
        raise InputError(f"`num_images` must be at least 1, got {num_images}")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise InputError(f"`difficulty` must lie in [0, 1], got {difficulty}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"`seed` (--seed) must be a non-negative integer, got {seed!r}")
    out = Path(out)
    gt_out = default_gt_out(out, gt_out)
    if gt_out.resolve() == out.resolve():
        raise InputError(f"`gt_out` ({gt_out}) must differ from the cost file path")
    check_output(out, "--out", inputs={"--gt-out": gt_out})
    check_output_folder(gt_out, "--gt-out", "make-costs", overwrite=overwrite,
                        inputs={"--out": out})
    recipe = synthetic_recipe(p)
    made_with = {"preset": p.name, "num_images": int(num_images), "seed": int(seed),
                 "difficulty": float(difficulty)}
    t0 = time.perf_counter()
    acc, eacc = [], []
    with atomic_paths([out, gt_out]) as (cost_tmp, gt_tmp), \
            CostWriter(cost_tmp, p.categories, p.distances, recipe=recipe,
                       synthetic=made_with) as writer:
        gt_writer = PanopticWriter(gt_tmp / "panoptic_gt.json", gt_tmp / "panoptic_gt",
                                   p.categories)
        for i in range(int(num_images)):
            prob = make_problem(p, seed=[int(seed), i], difficulty=difficulty)
            image_id = f"{p.name}_s{int(seed)}_{i:06d}"
            file_name = image_id + ".png"
            writer.add(prob.node_costs, prob.edge_maps, image_id=image_id,
                       file_name=file_name, image_size=prob.image_size)
            gt = prob.ground_truth()
            gt_writer.add(Annotation(image_id, file_name, gt.segments), gt.ids,
                          image_size=prob.image_size)
            acc.append(prob.info["pixel_accuracy"])
            eacc.append(prob.info["edge_accuracy"])
            if progress is not None:
                progress(i + 1, int(num_images))
        gt_writer.write_json()
        write_manifest(gt_tmp, "make-costs")
    return {"costs": str(out), "gt_json": str(gt_out / "panoptic_gt.json"),
            "gt_dir": str(gt_out / "panoptic_gt"), "images": int(num_images),
            "pixel_accuracy": float(np.mean(acc)), "edge_accuracy": float(np.mean(eacc)),
            "seconds": time.perf_counter() - t0}
