"""Synthetic panoptic scenes in the COCO panoptic layout (``copsctl make-synthetic``).

Each scene is a small outdoor-like picture:

* **stuff** (4 classes, one segment each when present): ``sky`` (vertical gradient with
  soft clouds) above a wavy horizon, an optional ``wall`` (brick pattern with per-brick
  shade) standing on the horizon, ``grass`` (high-frequency green noise with blades
  and patches) and a ``road`` (grey trapezoid in perspective, fine grain, dashed centre
  line);
* **things** (4 classes) with class-specific shape and colour distributions: ``ball``
  (red/magenta disc with a specular highlight), ``crate`` (blue rotated rectangle with
  plank lines), ``cone`` (orange triangle with a white band) and ``egg`` (cream
  ellipse with speckles). Sizes mix small (radius 3-7 px at 128x128) and large (10-28
  px) instances. About half of the instances are placed against an earlier one, often
  of the same class, and instances are painted back to front by their lower edge, so
  objects touch and occlude each other.

Touching instances of the same class are separable but not trivially so: every
instance has its own colour jitter, a linear shading gradient in a random direction,
and (for 70 % of them) a thin darker rim, and the whole image gets sensor noise.

Annotations: crowd regions (a cluster of tiny objects of one class labelled as one
segment with ``iscrowd = 1``, in about a quarter of the scenes), void pixels (random
"clutter" patches of another texture, and visible fragments of things smaller than
``6 s²`` pixels, ``s = min(H, W) / 128``, as an annotator would skip them).

Everything is drawn with vectorised numpy from ``default_rng([seed, split, index])``,
so each image is a deterministic function of the seed, split and index.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_path, check_output
from ..errors import InputError
from ..panoptic.format import VOID, Annotation, Category, PanopticWriter, segments_from_id_map

# Things first (COCO-like ids 1..), stuff at 101.. so the contiguous mapping has gaps to
# bridge, as in COCO.
BALL, CRATE, CONE, EGG = 1, 2, 3, 4
SKY, WALL, GRASS, ROAD = 101, 102, 103, 104
SYNTHETIC_CATEGORIES = (
    Category(BALL, "ball", True, (220, 40, 80)),
    Category(CRATE, "crate", True, (60, 90, 200)),
    Category(CONE, "cone", True, (240, 140, 30)),
    Category(EGG, "egg", True, (230, 220, 170)),
    Category(SKY, "sky", False, (110, 160, 230)),
    Category(WALL, "wall", False, (150, 80, 60)),
    Category(GRASS, "grass", False, (70, 150, 50)),
    Category(ROAD, "road", False, (110, 110, 115)),
)

# Per-class mean RGB colour and per-instance jitter (std), in 0..255.
_THING_COLOR = {BALL: ((205, 45, 75), (30, 25, 35)), CRATE: ((60, 95, 190), (25, 30, 35)),
                CONE: ((235, 135, 35), (15, 30, 15)), EGG: ((228, 215, 172), (15, 20, 25))}
_SPLIT_CODE = {"train": 0, "val": 1}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 smooth noise, roughly N(0, 1): a coarse random grid, bilinearly upsampled."""
    coarse = rng.standard_normal((cells[0] + 1, cells[1] + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((shape[1], shape[0]), Image.BILINEAR))


def _jitter(rng, mean, std) -> np.ndarray:
    return np.clip(rng.normal(mean, std), 0, 255).astype(np.float32)


def _stuff_layout(rng, H, W, yy, xx):
    """(H, W) stuff category map and the horizon/road geometry used by the textures."""
    hy = rng.uniform(0.15, 0.55) * H
    amp = rng.uniform(0.0, 0.05) * H
    horizon = hy + amp * np.sin(2 * np.pi * xx[0] / (rng.uniform(0.5, 1.5) * W)
                                + rng.uniform(0, 2 * np.pi))
    above = yy < horizon[None, :]
    stuff = np.where(above, SKY, GRASS)
    if rng.random() < 0.75:
        width = rng.uniform(0.2, 0.7) * W
        xa = rng.uniform(-0.1 * W, W - 0.5 * width)
        top = rng.uniform(0.0, 0.8) * hy
        stuff[above & (yy >= top) & (xx >= xa) & (xx < xa + width)] = WALL
    road = None
    if rng.random() < 0.85:
        xb, hb = rng.uniform(0.2, 0.8) * W, rng.uniform(0.15, 0.4) * W
        xt, ht = xb + rng.uniform(-0.2, 0.2) * W, rng.uniform(0.01, 0.05) * W
        t = np.clip((yy - hy) / max(H - hy, 1.0), 0.0, 1.0)
        centre = xt + t * (xb - xt)
        half = ht + t * (hb - ht)
        on_road = ~above & (np.abs(xx - centre) < half)
        stuff[on_road] = ROAD
        road = (centre, half, t)
    return stuff, road


def _stuff_textures(rng, H, W, yy, xx, road, s) -> dict[int, np.ndarray]:
    """(H, W, 3) float32 texture of every stuff class over the whole image."""
    tex = {}
    # Sky: gradient plus soft clouds.
    top, bottom = _jitter(rng, (80, 130, 215), 15), _jitter(rng, (185, 210, 240), 10)
    t = (yy / H)[..., None]
    sky = top * (1 - t) + bottom * t
    clouds = np.clip((_smooth_noise(rng, (H, W), (3, 5)) - 0.4) * 1.5, 0, 0.8)[..., None]
    tex[SKY] = sky * (1 - clouds) + 245.0 * clouds
    # Wall: bricks with mortar joints and a random shade per brick.
    bh = max(3, int(round(rng.uniform(5, 9) * s)))
    bw = int(round(bh * rng.uniform(2.0, 3.0)))
    row = (yy // bh).astype(np.int64)
    shifted = xx + (row % 2) * (bw // 2)
    col = (shifted // bw).astype(np.int64)
    shade = rng.uniform(0.82, 1.18, size=(row.max() + 2, col.max() + 2)).astype(np.float32)
    base = _jitter(rng, [(160, 75, 55), (140, 140, 135), (190, 170, 130)][rng.integers(3)], 12)
    wall = base * shade[row, col][..., None]
    mortar = ((yy % bh) < 1) | ((shifted % bw) < 1)
    wall[mortar] = _jitter(rng, (205, 200, 190), 8)
    tex[WALL] = wall
    # Grass: strong fine noise, vertical blades, large light/dark patches.
    g = _jitter(rng, (70, 140, 50), (10, 18, 10))
    fine = rng.standard_normal((H, W)).astype(np.float32)
    blades = np.repeat(rng.standard_normal((1, W)).astype(np.float32), H, axis=0)
    patches = _smooth_noise(rng, (H, W), (4, 4))
    amp = (fine * 16 + blades * 10 + patches * 14)[..., None]
    tex[GRASS] = g + amp * np.array([0.6, 1.0, 0.5], dtype=np.float32)
    # Road: grey grain, stains and a dashed centre line.
    grey = rng.uniform(85, 130)
    grain = rng.standard_normal((H, W)).astype(np.float32) * 7 + _smooth_noise(rng, (H, W), (5, 5)) * 8
    road_tex = (grey + grain)[..., None] * np.array([1.0, 1.0, 1.04], dtype=np.float32)
    if road is not None and rng.random() < 0.7:
        centre, half, tt = road
        dash = max(2.0, 6 * s)
        line = (np.abs(xx - centre) < np.maximum(0.6, 0.01 * W * (0.3 + tt))) & \
               ((yy // dash) % 2 == 0) & (tt > 0)
        road_tex[line] = _jitter(rng, (225, 225, 205), 8)
    tex[ROAD] = road_tex
    return tex


def _shape_field(cls, u, v, r, aspect):
    """Signed inside-distance (pixels, > 0 inside) of a class's shape in local coordinates."""
    if cls == BALL:
        return r - np.sqrt(u * u + v * v)
    if cls == EGG:
        a, b = r, r * aspect
        q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        return (1 - q) * b
    if cls == CRATE:
        return np.minimum(r - np.abs(u), r * aspect - np.abs(v))
    # CONE: isosceles triangle, apex (0, -1.1 r) up, base corners (+-r, 0.9 r).
    h_top, h_base = -1.1 * r, 0.9 * r
    slope = r / (h_base - h_top)
    half_width = slope * (v - h_top)
    norm = np.sqrt(1 + slope * slope)
    return np.minimum(h_base - v, (half_width - np.abs(u)) / norm)


_THINGS = (BALL, CRATE, CONE, EGG)


def _instance(rng, cls, cy, cx, r) -> dict:
    """Random appearance parameters of one thing instance."""
    mean, std = _THING_COLOR[cls]
    ang = rng.uniform(0, 2 * np.pi)
    return {"cls": cls, "cy": cy, "cx": cx, "r": r,
            "aspect": rng.uniform(0.55, 0.85) if cls == EGG else rng.uniform(0.5, 1.0),
            # Cones stay roughly upright; the other shapes take any orientation.
            "theta": rng.uniform(-0.35, 0.35) if cls == CONE else rng.uniform(0, np.pi),
            "color": _jitter(rng, mean, std),
            "light": (np.sin(ang), np.cos(ang)), "gain": rng.uniform(0.1, 0.35),
            "rim": rng.uniform(0.8, 1.6) if rng.random() < 0.7 else 0.0,
            "rim_dark": rng.uniform(0.55, 0.85)}


def _radius(rng, s, small: bool) -> float:
    return (rng.uniform(3, 7) if small else rng.uniform(10, 28)) * s


def _paint(img, pan, inst, seg_id, rng, yy, xx) -> None:
    """Paint one shape into ``img``/``pan`` (in place) over its bounding window."""
    H, W = pan.shape
    cy, cx, r = inst["cy"], inst["cx"], inst["r"]
    R = 1.5 * r + 2
    y0, y1 = max(0, int(cy - R)), min(H, int(cy + R) + 1)
    x0, x1 = max(0, int(cx - R)), min(W, int(cx + R) + 1)
    if y1 <= y0 or x1 <= x0:
        return
    wy, wx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
    c, s_ = np.cos(inst["theta"]), np.sin(inst["theta"])
    u, v = c * wx + s_ * wy, -s_ * wx + c * wy
    cls = inst["cls"]
    f = _shape_field(cls, u, v, r, inst["aspect"])
    m = f > 0
    if not m.any():
        return
    ly, lx = inst["light"]
    shade = np.clip(1 + inst["gain"] * (ly * wy + lx * wx) / r, 0.5, 1.5)
    col = inst["color"] * shade[..., None]
    if cls == BALL:
        hy, hx = 0.4 * r * ly, 0.4 * r * lx
        spot = np.exp(-((wy - hy) ** 2 + (wx - hx) ** 2) / (2 * (0.2 * r) ** 2))
        col = col + 70 * spot[..., None]
    elif cls == CRATE:
        plank = max(2.0, r * inst["aspect"] * 2 / 3)
        col[np.abs(((v + r) % plank) - plank / 2) > plank / 2 - 0.7] *= 0.8
    elif cls == CONE:
        vn = (v + 1.1 * r) / (2.0 * r)
        band = (vn > 0.45) & (vn < 0.62)
        col[band] = np.float32(240) * shade[band][..., None]
    elif cls == EGG:
        col = col + (rng.standard_normal(m.shape).astype(np.float32) * 12)[..., None]
    if inst["rim"] > 0:
        col[f < inst["rim"]] *= inst["rim_dark"]
    img[y0:y1, x0:x1][m] = col[m]
    pan[y0:y1, x0:x1][m] = seg_id


def render_scene(rng: np.random.Generator, *, height: int, width: int,
                 small_fraction: float = 0.4) -> tuple[np.ndarray, np.ndarray, list]:
    """Draw one synthetic scene.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness.
    height, width : int
        Image size in pixels (at least 16 each).
    small_fraction : float
        Probability that a thing instance is small (radius 3-7 px at 128x128) rather
        than large (10-28 px). The random draws do not depend on it, so scenes with
        another fraction keep their layout.

    Returns
    -------
    image : (H, W, 3) uint8 ndarray
    panoptic : (H, W) int64 ndarray
        Segment ids (``category_id * 1000`` for stuff, ``category_id * 1000 + k`` for
        the k-th instance of a thing class); 0 is void.
    segments : list of :class:`~copsctl.panoptic.format.Segment`
        With area, bbox and iscrowd.
    """
    H, W = int(height), int(width)
    s = min(H, W) / 128.0
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    stuff, road = _stuff_layout(rng, H, W, yy, xx)
    tex = _stuff_textures(rng, H, W, yy, xx, road, s)
    img = np.zeros((H, W, 3), dtype=np.float32)
    for cat, t in tex.items():
        sel = stuff == cat
        img[sel] = t[sel]
    pan = (stuff * 1000).astype(np.int64)

    # Things: independent placements and placements against an earlier instance.
    n = int(round(rng.integers(3, 10) * max(1.0, H * W / 128.0**2) ** 0.75))
    insts = []
    for _ in range(n):
        small = rng.random() < small_fraction
        r = _radius(rng, s, small)
        if insts and rng.random() < 0.5:
            nb = insts[int(rng.integers(len(insts)))]
            cls = nb["cls"] if rng.random() < 0.6 else _THINGS[int(rng.integers(4))]
            ang = rng.uniform(0, 2 * np.pi)
            dist = (nb["r"] + r) * rng.uniform(0.55, 1.0)
            cy, cx = nb["cy"] + dist * np.sin(ang), nb["cx"] + dist * np.cos(ang)
        else:
            cls = _THINGS[int(rng.integers(4))]
            cy, cx = rng.uniform(0.25, 1.05) * H, rng.uniform(-0.05, 1.05) * W
        insts.append(_instance(rng, cls, cy, cx, r))
    # Paint back to front by the lower edge: nearer (lower) objects occlude.
    layers = [(i["cy"] + i["r"], "thing", [i]) for i in insts]
    if rng.random() < 0.25:  # a crowd: tiny objects of one class, annotated as one segment
        cls = _THINGS[int(rng.integers(4))]
        gy, gx = rng.uniform(0.4, 0.9) * H, rng.uniform(0.1, 0.9) * W
        members = [_instance(rng, cls, gy + rng.normal(0, 6 * s), gx + rng.normal(0, 9 * s),
                             rng.uniform(2, 4) * s) for _ in range(int(rng.integers(6, 13)))]
        layers.append((gy, "crowd", members))
    if rng.random() < 0.35:  # unlabelled clutter: painted like an object, labelled void
        clutter = _instance(rng, _THINGS[int(rng.integers(4))], rng.uniform(0.2, 1.0) * H,
                            rng.uniform(0, 1) * W, _radius(rng, s, rng.random() < 0.5))
        clutter["color"] = rng.uniform(40, 220, size=3).astype(np.float32)
        layers.append((clutter["cy"] + clutter["r"], "void", [clutter]))
    layers.sort(key=lambda layer: layer[0])

    counters = dict.fromkeys(_THINGS, 0)
    crowd_ids = set()
    for _, kind, members in layers:
        cls = members[0]["cls"]
        if kind == "void":
            seg_id = VOID
        else:
            counters[cls] += 1
            seg_id = cls * 1000 + counters[cls]
            if kind == "crowd":
                crowd_ids.add(seg_id)
        for inst in members:
            _paint(img, pan, inst, seg_id, rng, yy, xx)

    # Fragments of things too small to annotate become void.
    ids, counts = np.unique(pan, return_counts=True)
    tiny = [i for i, c in zip(ids.tolist(), counts.tolist())
            if i % 1000 and i not in crowd_ids and c < 6 * s * s]
    if tiny:
        pan[np.isin(pan, tiny)] = VOID

    img *= rng.uniform(0.85, 1.15)
    img += rng.normal(0, 3.0, size=img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    category_of = {int(i): int(i) // 1000 for i in np.unique(pan).tolist() if i != VOID}
    segments = segments_from_id_map(pan, category_of, {i: True for i in crowd_ids})
    return image, pan, segments


def make_synthetic(out: str | os.PathLike, *, train: int = 200, val: int = 50,
                   size: tuple[int, int] = (128, 128), seed: int = 0,
                   small_fraction: float = 0.4, overwrite: bool = False) -> dict:
    """Write a synthetic panoptic dataset with a train and a val split (COCO layout).

    Layout::

        OUT/{train,val}2017/<012d id>.png
        OUT/annotations/panoptic_{train,val}2017.json
        OUT/annotations/panoptic_{train,val}2017/<012d id>.png
        OUT/synthetic.json                    (the generation parameters)

    The folder is built under a temporary name and renamed at the end.

    Parameters
    ----------
    out : path
        Output folder; must not exist or be empty unless ``overwrite``.
    train, val : int
        Number of images per split (>= 0, not both 0).
    size : (int, int)
        Image size (H, W), each at least 16.
    seed : int
        Image ``i`` of a split is drawn from ``default_rng([seed, split, i])``.
    small_fraction : float
        Share of small thing instances, in [0, 1] (:func:`render_scene`).
    overwrite : bool
        Replace an existing non-empty ``out``.

    Returns
    -------
    dict
        Summary: ``out``, ``train``, ``val``, ``size``, ``seed``, ``segments`` (count per
        split).
    """
    import json

    out = Path(out)
    h, w = (int(v) for v in size)
    if h < 16 or w < 16:
        raise InputError(f"`size` must be at least 16x16, got {h}x{w}")
    if not 0.0 <= float(small_fraction) <= 1.0:
        raise InputError(f"`small_fraction` must lie in [0, 1], got {small_fraction}")
    if train < 0 or val < 0 or train + val == 0:
        raise InputError(f"`train` and `val` must be >= 0 and not both 0, got {train}, {val}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"`seed` (--seed) must be a non-negative integer, got {seed!r}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: output folder is not empty (`overwrite`, --overwrite, replaces it)")
    check_output(out, "--out", folder=True)
    counts = {}
    with atomic_path(out) as tmp:
        for split, n in (("train", train), ("val", val)):
            image_dir = tmp / f"{split}2017"
            image_dir.mkdir(parents=True)
            writer = PanopticWriter(tmp / "annotations" / f"panoptic_{split}2017.json",
                                    tmp / "annotations" / f"panoptic_{split}2017",
                                    SYNTHETIC_CATEGORIES)
            counts[split] = 0
            for i in range(n):
                rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], i])
                image, pan, segments = render_scene(rng, height=h, width=w,
                                                    small_fraction=float(small_fraction))
                image_id = (1_000_000 if split == "val" else 0) + i + 1
                name = f"{image_id:012d}.png"
                Image.fromarray(image).save(image_dir / name)
                writer.add(Annotation(image_id, name, segments), pan)
                counts[split] += len(segments)
            writer.write_json(newline=False)
        summary = {"out": str(out), "train": int(train), "val": int(val), "size": [h, w],
                   "seed": int(seed), "small_fraction": float(small_fraction),
                   "segments": counts}
        with open(tmp / "synthetic.json", "w") as f:
            json.dump({k: v for k, v in summary.items() if k != "out"}, f, indent=2)
    return summary
