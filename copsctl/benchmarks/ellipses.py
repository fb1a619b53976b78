"""A second generator of grid AMWC problems, written apart from :mod:`copsctl.costs.synthetic`.

The solver's defaults were measured on problems of one generator; this one makes them
differently, so that a default tuned to the first one shows here:

- **scene**: a few stuff regions (the cells of random centres, stretched sideways) and
  many elliptic thing instances on top, most of them of a few classes, so that
  instances of one class often touch and only the edges separate them;
- **node costs**: ``-log softmax`` of logits with independent noise per pixel and class
  (``pixel_noise``) plus noise constant on square cells (``blob_noise``, smoothed over
  neighbouring cells), the ground-truth class raised by 2.5-4; class-major like a
  network's output;
- **edge costs**: the log-odds of "same segment" with noise per edge (``edge_noise``) and
  a smooth noise field, strength 2.5 for the local edges and 1.5 for the longer ones,
  divided by the square root of the edge's distance; the hard problems have more noise
  and edge costs x0.25.

Each seed draws its own settings; ``python -m copsctl.benchmarks.solver_sweep --generator
ellipses`` solves them against plain GAEC + improvement.
"""

from __future__ import annotations

import numpy as np

# height, width, classes, thing classes, distances, noise cell (pixels)
SIZES = {
    "tiny": (24, 32, 6, 3, (1, 2, 4), 3),
    "small": (64, 128, 19, 8, (1, 2, 4, 8, 16), 4),
    "coco": (160, 160, 133, 80, (1, 4, 16, 32, 64), 8),
    "cityscapes": (256, 512, 19, 8, (1, 4, 16, 32, 64, 128), 8),
}
# instances per image by size
THINGS = {"tiny": (2, 6), "small": (6, 20), "coco": (10, 40), "cityscapes": (20, 60)}


def _scene(rng: np.random.Generator, size: str) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) class map and (H, W) segment map."""
    h, w, k, t = SIZES[size][:4]
    yy, xx = np.mgrid[0:h, 0:w]
    n_stuff = int(rng.integers(3, 7))
    cy, cx = rng.uniform(0, h, n_stuff), rng.uniform(0, w, n_stuff)
    dist = (yy[None] - cy[:, None, None]) ** 2 + ((xx[None] - cx[:, None, None]) * 0.6) ** 2
    segments = dist.argmin(0)
    classes = rng.choice(np.arange(t, k), n_stuff, replace=n_stuff > k - t)[segments]
    next_id = n_stuff
    lo, hi = THINGS[size]
    for _ in range(int(rng.integers(lo, hi))):
        # most instances of a few classes: touching instances of one class are common
        c = rng.integers(0, min(t, 6)) if rng.random() < 0.6 else rng.integers(0, t)
        r = min(h, w) * np.exp(rng.uniform(np.log(0.015), np.log(0.15)))
        oy, ox = rng.uniform(0, h), rng.uniform(0, w)
        inside = ((yy - oy) / r) ** 2 + ((xx - ox) / (r * rng.uniform(0.4, 1.6))) ** 2 < 1
        if inside.sum() < 4:
            continue
        classes[inside] = c
        segments[inside] = next_id
        next_id += 1
    return classes, segments


def ellipse_problem(size: str, seed: int) -> tuple[tuple, dict]:
    """``(problem tuple for solve_amwc, settings)`` of one seed; settings hold the draws
    and the pixel and edge accuracy reached."""
    from scipy.ndimage import gaussian_filter

    from copsctl.errors import InputError
    from copsctl.solver import grid_edge_distance, grid_edges

    if size not in SIZES:
        raise InputError(f"`size` must be one of {sorted(SIZES)}, got {size!r}")
    h, w, k, t, distances, cell = SIZES[size]
    draw = np.random.default_rng([seed, 5])
    hard = bool(draw.random() < 0.5)
    blob_noise, pixel_noise = float(draw.uniform(1.0, 3.0)), float(draw.uniform(0.5, 1.2))
    rng = np.random.default_rng([seed, 77])
    classes, segments = _scene(rng, size)

    logits = rng.normal(0.0, pixel_noise, (k, h, w))
    ch, cw = -(-h // cell), -(-w // cell)
    blobs = gaussian_filter(rng.normal(0.0, blob_noise, (k, ch, cw)), (0, 1, 1))
    logits += blobs.repeat(cell, 1).repeat(cell, 2)[:, :h, :w]
    logits[classes, np.arange(h)[:, None], np.arange(w)[None]] += rng.uniform(2.5, 4.0)
    logits -= logits.max(0)
    costs = np.log(np.exp(logits).sum(0)) - logits
    node_costs = costs.reshape(k, h * w).T            # (N, K), class-major in memory

    edges = grid_edges(h, w, distances).astype(np.int32)
    dist = grid_edge_distance(h, w, distances)
    seg = segments.ravel()
    same = seg[edges[:, 0]] == seg[edges[:, 1]]
    strength = np.where(dist == 1, 2.5, 1.5)
    field = gaussian_filter(rng.normal(0.0, 4.0, (h, w)), 3).ravel()[edges[:, 0]]
    z = np.where(same, strength, -strength) + rng.normal(0.0, 3.0 if hard else 1.5,
                                                         len(edges)) + field
    edge_costs = np.clip(z, -9.21, 9.21) / np.sqrt(dist)   # log-odds of p in [1e-4, 1 - 1e-4]
    if hard:
        edge_costs *= 0.25
    partitionable = np.arange(k) < t
    settings = {"generator": "ellipses", "preset": size, "seed": int(seed), "hard": hard,
                "pixel_noise": pixel_noise, "blob_noise": blob_noise,
                "pixel_accuracy": float((node_costs.argmin(1) == classes.ravel()).mean()),
                "edge_accuracy": float(((z > 0) == same).mean())}
    return (node_costs, edges, edge_costs, partitionable, dist == 1), settings
