"""The cost cache: one HDF5 file holding the AMWC costs of many images.

Written by ``copsctl dump-costs`` (the network) and ``copsctl make-costs`` (synthetic
problems), read by ``copsctl solve``. Schema, version 3; versions 1 and 2 are read as
well (a version 1 file is a version 2 file with float storage only; version 2 differs
from 3 only in its quantized code, below)::

    /                          attributes
        format      = "copsctl-costs"            identifies the file
        version     = 3                          this schema
        distances   = (m,) int64                 grid-edge distances d_1 .. d_m
        recipe      = str                        YAML text of the resolved recipe that
                                                 produced the costs (Recipe.dump() of
                                                 copsctl.config); "" when unknown
        synthetic   = str                        only in make-costs files: JSON of the
                                                 parameters that make the file again
                                                 (preset, num_images, seed, difficulty)
        num_classes = K
    /classes/category_id  (K,)   int64           contiguous class index -> category id
    /classes/name         (K,)   utf-8 str
    /classes/isthing      (K,)   uint8           1 = thing (partitionable), 0 = stuff
    /classes/color        (K, 3) uint8           display colour (COCO "color")
    /index/image_id       (n,)   utf-8 str       JSON encoding of each image id, so an
                                                 integer id 17 and a string "17" stay apart
    /index/file_name      (n,)   utf-8 str       file name of the original image
    /index/image_size     (n, 2) int64           original image (H, W)
    /index/cost_size      (n, 2) int64           cost grid (h, w)
    /images/<i:06d>/node_costs  (K, h, w)        cost of class k at node (y, x)
    /images/<i:06d>/edge_costs  (2m, h, w)       grid layout of :mod:`copsctl.solver.grid`:
                                                 channel 2j is the edge (y, x)-(y, x + d_j),
                                                 channel 2j+1 the edge (y, x)-(y + d_j, x);
                                                 0 where no edge
    /images/<i:06d>/node_offset (h, w) int32     only with quantized storage (below)

Files that ``make-costs`` wrote before it stored a resolved recipe hold in ``recipe`` a
partial one with a ``synthetic`` section of those parameters; they read the same way.

Costs follow the solver's sign convention (node cost paid for the class chosen, edge
cost paid when the edge is cut, positive = attractive). Readers always return float32.

Storage (the writer's ``dtype``; every image of a file uses the same one):

- ``float32``, ``float16``: the cost maps as they are, contiguous (unchunked).
- ``quantized`` (what ``copsctl dump-costs`` writes by default): integers, compressed
  with filters built into every HDF5 (deflate level 3, after a byte shuffle for the
  int16 and int32 arrays), one chunk per channel; the grids are attributes of the
  datasets, defaults :data:`QUANTIZED`.

  Node costs: each node's cheapest cost ``c_min`` on the grid ``node_step``
  (``node_offset = rint(c_min / node_step)``, int32; attribute ``step`` of
  ``node_costs``), and each class's difference ``r = c - c_min`` to it as a uint8 code
  into the table ``levels`` (attribute of ``node_costs``, at most 256 values): the cost
  reads as ``node_offset * step + levels[code]``. The code companding the differences
  (:func:`node_levels`): code 0 is ``r = 0``, the cheapest class itself, so every node
  keeps its cheapest class and no other class ties with it; then intervals of width
  1/64 up to ``r`` = 1, 1/32 up to 3, 1/4 up to 6, 1 up to 8 and 2 up to 10, each read
  as its midpoint (the argmin and the close runners-up, where the solver decides, get
  the fine steps; classes 6-10 nats above the best, which the solver takes only where
  the edges insist, coarse ones); ``r`` above the top, 10 nats (a probability ratio
  below 1/22000 to the best class), reads as exactly 10. So a difference up to the top
  is off by at most half its interval's width, and the cost itself by at most that
  plus ``node_step / 2``.
  Edge costs: ``edge_costs = rint(e / step)`` (int16) with one ``step`` per channel
  (attribute, shape (2m,)): ``local_edge_step`` (1/256) for the smallest distance,
  whose edges the solver's pre-clustering contracts and which move its objective most,
  ``edge_step`` (1/16) for the others; off by at most half a step.
  Version 2 files (attributes ``step`` and ``clip`` of ``node_costs``, no ``levels``;
  one scalar edge ``step``) read as before: ``(node_costs + node_offset) * step``, a
  linear grid of 1/32 with differences clipped at 6 nats.
  Sizes, speeds and the effect on the solver and on PQ are measured by
  :mod:`copsctl.benchmarks.cost_cache` (docs/predict.md).

Design choices, measured on this project's machine (2 shared cores, h5py 3.16) with
synthetic Cityscapes-size problems (19 x 256 x 512 node costs + 12 x 256 x 512 edge
costs, 16.3 MB per image in float32):

- One group per image: reading image ``i`` touches only its datasets; the small
  ``/index`` table is read once on open.
- Float storage is not compressed: network costs are noisy floats and barely compress
  (lzf: -4% size at 10x the write time; gzip-1 with shuffle: -24% size at 8x the read
  time). Compression pays only after quantization, which removes the noise bits.
- The writer writes to a temporary name beside the target and renames it on a clean
  close, so a crash never leaves a half-written cost file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import h5py
import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from ..panoptic.format import Category

if TYPE_CHECKING:
    from ..config import Recipe

FORMAT = "copsctl-costs"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
_LEGACY_SYNTHETIC = "synthetic"  # the section of make-costs parameters in older files' recipe
STORAGES = ("float32", "float16", "quantized")
"""Storage types of the cost maps (the module docstring)."""
QUANTIZED = {"node_step": 1 / 64,
             "node_ranges": ((1.0, 1 / 64), (3.0, 1 / 32), (6.0, 1 / 4), (8.0, 1.0), (10.0, 2.0)),
             "edge_step": 1 / 16, "local_edge_step": 1 / 256}
"""Grids of ``quantized`` storage (the module docstring): ``node_step``, the grid of each
node's cheapest cost; ``node_ranges``, ``(end, step)`` pairs from 0 up, the intervals of a
cost's difference to its node's cheapest class (the top ``end`` is where costs are cut
off); ``edge_step`` and ``local_edge_step``, the grids of the edge costs of the longer
distances and of the smallest distance."""
# Filters of quantized storage: deflate level 3, after a byte shuffle where the bytes of a
# value differ in entropy (int16, int32); level 3 instead of 1 makes the files 3 % smaller
# (hard Cityscapes-size problems: 3.05 -> 2.96 MB) for about 60 ms more writing per image,
# and reads as fast. The version 2 code used lzf for the node costs of more than 32
# classes, to read them faster; the companded codes (most of them the cut-off code) make
# deflate both smaller and about as fast there (COCO-size node codes, K = 133: 1.56 MB
# and 14.7 ms to read against lzf's 2.32 MB and 13.0 ms).
_DEFLATE_LEVEL = 3


def _compression(dataset: str) -> dict:
    return {"compression": "gzip", "compression_opts": _DEFLATE_LEVEL,
            "shuffle": dataset != "node_costs"}


def _encode_id(image_id) -> str:
    if isinstance(image_id, (bool, np.bool_)) or not isinstance(image_id, (int, np.integer, str)):
        raise InputError(f"`image_id` must be an int or a str, got {type(image_id).__name__}")
    return json.dumps(int(image_id) if isinstance(image_id, np.integer) else image_id)


def _decode_str(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def solver_problem(node_costs: np.ndarray, edge_maps: np.ndarray, distances: Sequence[int],
                   partitionable: np.ndarray):
    """Cost maps of one image -> the arguments of :func:`copsctl.solver.solve_amwc`.

    Parameters
    ----------
    node_costs : (K, h, w) ndarray
    edge_maps : (2 m, h, w) ndarray in the grid layout
    distances : sequence of m ints
    partitionable : (K,) bool ndarray

    Returns
    -------
    tuple
        ``(node_costs (N, K) float64, edges (E, 2) int32, edge_costs (E,) float64,
        partitionable (K,) bool, local_edges (E,) bool)`` with ``N = h * w`` nodes numbered
        row-major; ``node_costs`` is a transposed view of the class-major maps (the solver
        reads any layout), ``edges`` and ``local_edges`` are shared read-only arrays.
    """
    from ..solver.grid import grid_graph, maps_to_edge_values

    node_costs = np.asarray(node_costs)
    if node_costs.ndim != 3:
        raise InputError(f"`node_costs` (shape {node_costs.shape}) must have shape (K, h, w)")
    K, h, w = node_costs.shape
    edge_maps = np.asarray(edge_maps)
    if edge_maps.ndim != 3 or edge_maps.shape[1:] != (h, w):
        raise InputError(f"`edge_maps` (shape {edge_maps.shape}) must have shape (2m, {h}, {w})")
    nc = node_costs.reshape(K, h * w).astype(np.float64, copy=False).T
    ds = tuple(int(d) for d in distances)
    ec = maps_to_edge_values(edge_maps, ds).astype(np.float64)
    graph = grid_graph(h, w, ds)
    return nc, graph.edges, ec, np.asarray(partitionable, dtype=bool), graph.local_edges


def _check_categories(categories: Sequence[Category]) -> list[Category]:
    cats = list(categories)
    if not cats:
        raise InputError("`categories` must hold at least one class")
    for c in cats:
        if not isinstance(c, Category):
            raise InputError(f"`categories` must hold Category objects, got {type(c).__name__}")
    ids = [int(c.id) for c in cats]
    if len(set(ids)) != len(ids):
        raise InputError(f"`categories` must have distinct ids, got {ids}")
    return cats


def node_levels(ranges=None) -> tuple[np.ndarray, np.ndarray]:
    """The companding code of quantized node costs.

    Parameters
    ----------
    ranges : sequence of (end, step) pairs, optional
        Consecutive ranges of a cost's difference ``r`` to its node's cheapest class,
        starting at 0, each cut into intervals of width ``step``; default
        ``QUANTIZED["node_ranges"]``.

    Returns
    -------
    bounds : (n + 1,) float64 ndarray
        ``0 = b_0 < b_1 < ... < b_n``, the interval ends; ``b_n`` is the top.
    levels : (n + 2,) float64 ndarray
        What each uint8 code reads as: code 0 is ``r = 0`` (the cheapest class), code
        ``j`` in ``1 .. n`` the interval ``(b_(j-1), b_j]`` read as its midpoint, code
        ``n + 1`` every ``r > b_n``, read as ``b_n``.
    """
    ranges = QUANTIZED["node_ranges"] if ranges is None else ranges
    bounds, start = [np.zeros(1)], 0.0
    for end, step in ranges:
        count = (end - start) / step
        if step <= 0 or end <= start or abs(count - round(count)) > 1e-9 \
                or np.frexp(step)[0] != 0.5:
            raise InputError(f"node range ({end}, {step}) must start at {start} and hold a "
                             "whole number of steps, a step being a power of two")
        bounds.append(start + step * np.arange(1, int(round(count)) + 1))
        start = float(end)
    bounds = np.concatenate(bounds)
    levels = np.concatenate([[0.0], (bounds[1:] + bounds[:-1]) / 2, bounds[-1:]])
    if levels.size > 256:
        raise InputError(f"node ranges make {levels.size} codes; uint8 holds 256")
    return bounds, levels


def _quantize(nc: np.ndarray, em: np.ndarray, distances: Sequence[int], image_id) -> dict:
    """One image's cost maps in ``quantized`` storage: {dataset name: (array, attributes)}."""
    node_step = QUANTIZED["node_step"]
    bounds, levels = node_levels()
    # Readers decode in float32: offset * node_step + level is exact below this limit
    # (the levels are multiples of half the finest node step, node_step / 2).
    limit = 2 ** 23 * node_step
    if np.abs(nc).max() > limit:
        raise InputError(f"image {image_id!r}: node costs beyond +-{limit:.3g} do not fit "
                         "quantized storage; use float32")
    nc = nc.astype(np.float64)
    cheapest = nc.min(axis=0)
    offset = np.rint(cheapest / node_step).astype(np.int32)
    # Code 0 only for the cheapest class itself (and exact ties): each node keeps its
    # argmin, and the solver's class margins keep their sign. Every bound is a multiple of
    # the finest step `fine` (powers of two, so `rel / fine` is exact): the code is a table
    # lookup by ceil(rel / fine), 15x faster than a search among the bounds.
    fine = min(step for _end, step in QUANTIZED["node_ranges"])
    grid = int(round(bounds[-1] / fine)) + 1
    table = np.searchsorted(bounds, np.arange(grid + 1) * fine, side="left").astype(np.uint8)
    rel = nc - cheapest
    codes = table[np.minimum(np.ceil(rel / fine), grid).astype(np.intp)]
    steps = _edge_steps(distances)
    limits = np.iinfo(np.int16).max * steps
    for c in range(em.shape[0]):
        if em[c].size and np.abs(em[c]).max() > limits[c]:
            raise InputError(f"image {image_id!r}: edge costs of distance {distances[c // 2]} "
                             f"beyond +-{limits[c]:.4g} do not fit quantized storage; use float32")
    qe = np.rint(em.astype(np.float64) / steps[:, None, None]).astype(np.int16)
    return {"node_costs": (codes, {"step": node_step, "levels": levels}),
            "node_offset": offset,
            "edge_costs": (qe, {"step": steps})}


def _edge_steps(distances: Sequence[int]) -> np.ndarray:
    """(2 m,) float64: the grid of each edge channel (finer for the smallest distance)."""
    local = min(distances)
    return np.array([QUANTIZED["local_edge_step"] if d == local else QUANTIZED["edge_step"]
                     for d in distances for _ in (0, 1)])


class CostWriter:
    """Write a cost file image by image; the file appears under its name only on close.

    Parameters
    ----------
    path : path-like
        Target file; an existing file is replaced when the writer closes cleanly.
    categories : sequence of Category, length K
        The class table in contiguous class order.
    distances : sequence of int
        Grid-edge distances of the edge-cost maps.
    recipe : Recipe, optional
        The resolved recipe that produced the costs (:class:`copsctl.config.Recipe`),
        stored as its YAML text.
    synthetic : dict, optional
        ``make-costs`` only: the parameters that make the file again, stored as JSON.
    dtype : {"float32", "float16", "quantized"}
        Storage of the cost maps (module docstring).

    Examples
    --------
    >>> with CostWriter("costs.h5", categories, (1, 4)) as writer:   # doctest: +SKIP
    ...     writer.add(node_costs, edge_maps, image_id=1, file_name="a.jpg",
    ...                image_size=(512, 512))
    """

    def __init__(self, path: str | os.PathLike, categories: Sequence[Category],
                 distances: Sequence[int], recipe: "Recipe | None" = None,
                 dtype: str = "float32", synthetic: dict | None = None):
        from ..config import Recipe
        from ..solver.grid import _check_distances

        self.path = Path(path)
        self.categories = _check_categories(categories)
        self.distances = _check_distances(distances)
        if recipe is not None and not isinstance(recipe, Recipe):
            raise InputError(f"`recipe` must be a copsctl.config.Recipe or None, got "
                             f"{type(recipe).__name__}")
        self.recipe = "" if recipe is None else recipe.dump()
        self.synthetic = None if synthetic is None else json.dumps(synthetic)
        if str(dtype) not in STORAGES:
            raise InputError(f"`dtype` must be one of {list(STORAGES)}, got {dtype!r}")
        self.storage = str(dtype)
        self._atomic = None
        self._file: h5py.File | None = None
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._names: list[str] = []
        self._image_sizes: list[tuple[int, int]] = []
        self._cost_sizes: list[tuple[int, int]] = []

    def __enter__(self) -> "CostWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._file = h5py.File(tmp, "w")
            f = self._file
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["distances"] = np.asarray(self.distances, dtype=np.int64)
            f.attrs["recipe"] = self.recipe
            if self.synthetic is not None:
                f.attrs["synthetic"] = self.synthetic
            f.attrs["num_classes"] = len(self.categories)
            g = f.create_group("classes")
            g["category_id"] = np.array([c.id for c in self.categories], dtype=np.int64)
            g.create_dataset("name", data=[c.name for c in self.categories],
                             dtype=h5py.string_dtype())
            g["isthing"] = np.array([bool(c.isthing) for c in self.categories], dtype=np.uint8)
            g["color"] = np.array([tuple(c.color) for c in self.categories],
                                  dtype=np.uint8).reshape(-1, 3)
            f.create_group("images")
        except BaseException:
            self._abort()
            raise
        return self

    def _abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._atomic is not None:
            atomic, self._atomic = self._atomic, None
            try:
                atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, node_costs: np.ndarray, edge_maps: np.ndarray, image_id: int | str,
            file_name: str | None = None, image_size: tuple[int, int] | None = None) -> int:
        """Append one image; return its index in the file.

        Parameters
        ----------
        node_costs : (K, h, w) float ndarray
        edge_maps : (2 m, h, w) float ndarray in the grid layout (values at positions
            without an edge are stored as 0)
        image_id : int or str
            Unique within the file.
        file_name : str, optional
            Original image file name; default ``"<image_id>.png"``.
        image_size : (H, W), optional
            Original image size; default the cost size ``(h, w)``.
        """
        if self._file is None:
            raise RuntimeError("CostWriter.add() called outside its `with` block")
        from ..solver.grid import grid_edge_mask

        key = _encode_id(image_id)
        if key in self._seen:
            raise InputError(f"`image_id` {image_id!r} is already in {self.path}")
        K, m = len(self.categories), len(self.distances)
        nc = np.asarray(node_costs)
        em = np.asarray(edge_maps)
        if nc.dtype.kind != "f" or nc.ndim != 3 or nc.shape[0] != K:
            raise InputError(f"image {image_id!r}: `node_costs` (shape {nc.shape}, dtype "
                             f"{nc.dtype}) must be a float array of shape ({K}, h, w)")
        h, w = nc.shape[1:]
        if em.dtype.kind != "f" or em.shape != (2 * m, h, w):
            raise InputError(f"image {image_id!r}: `edge_maps` (shape {em.shape}, dtype "
                             f"{em.dtype}) must be a float array of shape ({2 * m}, {h}, {w})")
        if not np.isfinite(nc).all():
            raise InputError(f"image {image_id!r}: `node_costs` must be finite (found NaN or inf)")
        mask = grid_edge_mask(h, w, self.distances)
        if not np.isfinite(em[mask]).all():
            raise InputError(f"image {image_id!r}: `edge_maps` must be finite (found NaN or inf)")
        if image_size is None:
            image_size = (h, w)
        try:
            H, W = (int(v) for v in image_size)
        except (TypeError, ValueError):
            raise InputError(f"image {image_id!r}: `image_size` must be (H, W), "
                             f"got {image_size!r}") from None
        if H < 1 or W < 1:
            raise InputError(f"image {image_id!r}: `image_size` must be positive, got {H}x{W}")
        name = str(image_id) + ".png" if file_name is None else str(file_name)
        em = np.where(mask, em, 0)
        index = len(self._ids)
        if self.storage == "quantized":
            arrays = _quantize(nc, em, self.distances, image_id)
        else:
            arrays = {"node_costs": nc.astype(self.storage, copy=False),
                      "edge_costs": em.astype(self.storage, copy=False)}
        g = self._file["images"].create_group(f"{index:06d}")
        for dataset, (data, attrs) in ((k, v if isinstance(v, tuple) else (v, {}))
                                       for k, v in arrays.items()):
            if self.storage == "quantized":
                chunks = (1,) + data.shape[1:] if data.ndim == 3 else data.shape
                ds = g.create_dataset(dataset, data=data, chunks=chunks,
                                      **_compression(dataset))
            else:
                ds = g.create_dataset(dataset, data=data)
            for attr, value in attrs.items():
                ds.attrs[attr] = value
        self._ids.append(key)
        self._seen.add(key)
        self._names.append(name)
        self._image_sizes.append((H, W))
        self._cost_sizes.append((h, w))
        return index

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            g = self._file.create_group("index")
            g.create_dataset("image_id", data=self._ids, dtype=h5py.string_dtype(),
                             shape=(len(self._ids),))
            g.create_dataset("file_name", data=self._names, dtype=h5py.string_dtype(),
                             shape=(len(self._names),))
            g["image_size"] = np.asarray(self._image_sizes, dtype=np.int64).reshape(-1, 2)
            g["cost_size"] = np.asarray(self._cost_sizes, dtype=np.int64).reshape(-1, 2)
            self._file.close()
            self._file = None
        except BaseException:
            self._abort()
            raise
        atomic, self._atomic = self._atomic, None
        atomic.__exit__(None, None, None)


@contextlib.contextmanager
def _corrupt_is_input_error(where: str):
    """HDF5's errors on damaged metadata (OSError, RuntimeError, KeyError from h5py) as
    one :class:`InputError` naming ``where``."""
    try:
        yield
    except (OSError, RuntimeError, KeyError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{where} (truncated or corrupt?): {first}") from None


class CostFile:
    """Read a cost file; images are read one at a time, on demand.

    Opening reads only the attributes, the class table and the index; :meth:`read`
    reads one image's two datasets. Use as a context manager or call :meth:`close`.

    Raises :class:`InputError` naming the file and the rule when the file is missing,
    not HDF5 (or truncated), not a copsctl cost file, of another schema version, or
    structurally inconsistent.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = None
        if not self.path.is_file():
            raise InputError(f"{self.path}: cost file does not exist")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(f"{self.path}: not a readable HDF5 file (truncated or corrupt?): "
                             f"{str(exc).splitlines()[0]}") from None
        try:
            with _corrupt_is_input_error(str(self.path)):
                self._load_header()
        except BaseException:
            self._file.close()
            raise

    # -- header ---------------------------------------------------------------------------

    def _fail(self, rule: str):
        raise InputError(f"{self.path}: {rule}")

    def _dataset(self, name: str) -> np.ndarray:
        if name not in self._file or not isinstance(self._file[name], h5py.Dataset):
            self._fail(f"incomplete cost file: dataset '{name}' is missing")
        try:
            return self._file[name][()]
        except OSError as exc:
            self._fail(f"cannot read '{name}' (truncated or corrupt?): {str(exc).splitlines()[0]}")

    def _load_header(self) -> None:
        attrs = self._file.attrs
        fmt = attrs.get("format")
        if fmt is None:
            self._fail(f"not a copsctl cost file (no 'format' attribute; expected "
                       f"format={FORMAT!r})")
        fmt = _decode_str(fmt)
        if fmt != FORMAT:
            self._fail(f"not a copsctl cost file (format={fmt!r}, expected {FORMAT!r})")
        version = attrs.get("version")
        try:
            version = int(version)
        except (TypeError, ValueError):
            self._fail(f"cost file has no valid 'version' attribute (got {version!r})")
        if version not in READABLE_VERSIONS:
            self._fail(f"cost file schema version {version} is not supported (this copsctl "
                       f"reads versions {', '.join(map(str, READABLE_VERSIONS))})")
        try:
            from ..solver.grid import _check_distances

            self.distances: tuple[int, ...] = _check_distances(
                np.asarray(attrs.get("distances", []), dtype=np.int64).ravel().tolist())
        except InputError as exc:
            self._fail(f"bad 'distances' attribute: {exc}")
        self.recipe_text: str = _decode_str(attrs.get("recipe", ""))
        self._synthetic_text: str = _decode_str(attrs.get("synthetic", ""))

        cid = np.asarray(self._dataset("classes/category_id"), dtype=np.int64).ravel()
        names = [_decode_str(v) for v in np.asarray(self._dataset("classes/name")).ravel()]
        isthing = np.asarray(self._dataset("classes/isthing")).ravel().astype(bool)
        color = np.asarray(self._dataset("classes/color")).reshape(-1, 3)
        K = cid.size
        if K == 0 or not (len(names) == isthing.size == color.shape[0] == K):
            self._fail(f"class table is inconsistent: {K} category ids, {len(names)} names, "
                       f"{isthing.size} isthing flags, {color.shape[0]} colours")
        if int(attrs.get("num_classes", K)) != K:
            self._fail(f"attribute num_classes={int(attrs['num_classes'])} but the class table "
                       f"has {K} classes")
        self.categories: list[Category] = [
            Category(int(cid[k]), names[k], bool(isthing[k]), tuple(int(v) for v in color[k]))
            for k in range(K)]

        raw_ids = [_decode_str(v) for v in np.asarray(self._dataset("index/image_id")).ravel()]
        try:
            self.image_ids: list[int | str] = [json.loads(v) for v in raw_ids]
        except json.JSONDecodeError:
            self._fail("index/image_id holds a value that is not a JSON-encoded id")
        self.file_names: list[str] = [
            _decode_str(v) for v in np.asarray(self._dataset("index/file_name")).ravel()]
        self.image_sizes = np.asarray(self._dataset("index/image_size"), dtype=np.int64)
        self.cost_sizes = np.asarray(self._dataset("index/cost_size"), dtype=np.int64)
        n = len(self.image_ids)
        if not (len(self.file_names) == n and self.image_sizes.shape == (n, 2)
                and self.cost_sizes.shape == (n, 2)):
            self._fail(f"index is inconsistent: {n} image ids, {len(self.file_names)} file "
                       f"names, image_size {self.image_sizes.shape}, cost_size "
                       f"{self.cost_sizes.shape}")
        if "images" not in self._file:
            self._fail("incomplete cost file: group 'images' is missing")
        self._check_index()

    def _check_index(self) -> None:
        """Per-image rules of the index: what the writer guarantees, checked on reading."""
        seen: set = set()
        for i, image_id in enumerate(self.image_ids):
            if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
                self._fail(f"index/image_id[{i}] must be an int or a string, got {image_id!r}")
            if image_id in seen:
                self._fail(f"image id {image_id!r} appears more than once in index/image_id "
                           "(ids must be unique)")
            seen.add(image_id)
            if not self.file_names[i].strip():
                self._fail(f"image {image_id!r}: index/file_name is empty (every image needs "
                           "its file name)")
            for what, sizes in (("image_size", self.image_sizes), ("cost_size", self.cost_sizes)):
                H, W = (int(v) for v in sizes[i])
                if H < 1 or W < 1:
                    self._fail(f"image {image_id!r} ({self.file_names[i]}): index/{what} "
                               f"{H}x{W} must be positive")

    # -- access ---------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def partitionable(self) -> np.ndarray:
        """(K,) bool ndarray: the thing classes."""
        return np.array([c.isthing for c in self.categories], dtype=bool)

    @property
    def recipe(self) -> "Recipe | None":
        """The resolved recipe stored with the costs, or None when the file has none.

        Read by :func:`copsctl.config.recipe_from_text`: keys the file does not set have
        their code defaults; an unknown key or a bad value is an :class:`InputError`.
        """
        from ..config import recipe_from_text

        return recipe_from_text(self.recipe_text, f"{self.path}: the 'recipe' attribute",
                                legacy_sections=(_LEGACY_SYNTHETIC,))

    @property
    def synthetic(self) -> dict | None:
        """``make-costs`` files: the parameters that make the file again; else None.

        (Older make-costs files keep them in the ``synthetic`` section of ``recipe_text``.)
        """
        if not self._synthetic_text:
            return None
        try:
            data = json.loads(self._synthetic_text)
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            self._fail("the 'synthetic' attribute must hold a JSON object")
        return data

    def __len__(self) -> int:
        return len(self.image_ids)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Read image ``i`` (0-based position in the file).

        Returns
        -------
        node_costs : (K, h, w) float32 ndarray
        edge_maps : (2 m, h, w) float32 ndarray, grid layout
        meta : dict
            ``index``, ``image_id``, ``file_name``, ``image_size`` (H, W) and
            ``cost_size`` (h, w).
        """
        n = len(self)
        if not isinstance(i, (int, np.integer)) or not 0 <= int(i) < n:
            raise InputError(f"{self.path}: image index {i!r} out of range [0, {n})")
        i = int(i)
        image_id = self.image_ids[i]
        where = f"{self.path}: image {image_id!r}"
        h, w = (int(v) for v in self.cost_sizes[i])
        K, m2 = self.num_classes, 2 * len(self.distances)
        arrays = []
        for name, first in (("node_costs", K), ("edge_costs", m2)):
            key = f"images/{i:06d}/{name}"
            with _corrupt_is_input_error(f"{where}: cannot read '{key}'"):
                if key not in self._file:
                    raise InputError(f"{where}: dataset '{key}' is missing")
                ds = self._file[key]
                if ds.shape != (first, h, w) or ds.dtype.kind not in "fiu":
                    raise InputError(f"{where}: '{key}' (shape {ds.shape}, dtype {ds.dtype}) "
                                     f"must be a numeric array of shape ({first}, {h}, {w})")
                raw = ds[()]
                if raw.dtype.kind == "f":
                    arr = raw.astype(np.float32, copy=False)
                elif name == "node_costs":
                    arr = self._dequantize_nodes(raw, ds, f"images/{i:06d}/node_offset", where)
                else:
                    arr = raw.astype(np.float32)
                    arr *= self._step(ds, key, where, channels=m2).astype(np.float32)
            if not np.isfinite(arr).all():
                raise InputError(f"{where}: '{key}' must be finite (found NaN or inf)")
            arrays.append(arr)
        meta = {"index": i, "image_id": image_id, "file_name": self.file_names[i],
                "image_size": tuple(int(v) for v in self.image_sizes[i]), "cost_size": (h, w)}
        return arrays[0], arrays[1], meta

    @staticmethod
    def _step(ds, key: str, where: str, channels: int | None = None) -> np.ndarray:
        """The ``step`` attribute: () float64, or (channels, 1, 1) when ``channels`` is
        given (one step for all channels, as version 2 writes it, or one per channel)."""
        step = np.asarray(ds.attrs.get("step", np.nan), dtype=np.float64)
        sizes = (1,) if channels is None else (1, channels)
        if step.size not in sizes or not np.isfinite(step).all() or (step <= 0).any():
            raise InputError(f"{where}: quantized '{key}' has no valid 'step' attribute "
                             f"(got {ds.attrs.get('step')!r})")
        return step.reshape(()) if channels is None else step.reshape(-1, 1, 1)

    def _dequantize_nodes(self, raw: np.ndarray, ds, offset_key: str, where: str) -> np.ndarray:
        if offset_key not in self._file:
            raise InputError(f"{where}: dataset '{offset_key}' is missing (quantized node costs)")
        offset = self._file[offset_key][()]
        if offset.shape != raw.shape[1:] or offset.dtype.kind not in "iu":
            raise InputError(f"{where}: '{offset_key}' (shape {offset.shape}, dtype "
                             f"{offset.dtype}) must be an integer array of shape {raw.shape[1:]}")
        key = ds.name.lstrip("/")
        step = np.float32(self._step(ds, key, where))
        if "levels" not in ds.attrs:
            # Version 2: codes on the linear grid `step`, no level table.
            # float32 throughout: exact, as the writer keeps every integer below 2**24.
            arr = raw.astype(np.float32)
            arr += offset.astype(np.float32)
            arr *= step
            return arr
        levels = np.asarray(ds.attrs["levels"], dtype=np.float64)
        if levels.ndim != 1 or not 1 <= levels.size <= 256 or not np.isfinite(levels).all():
            raise InputError(f"{where}: quantized '{key}' has no valid 'levels' attribute "
                             f"(got shape {levels.shape})")
        if raw.size and int(raw.max()) >= levels.size:
            raise InputError(f"{where}: '{key}' holds code {int(raw.max())}, beyond its "
                             f"{levels.size} levels")
        arr = levels.astype(np.float32)[raw]
        arr += offset.astype(np.float32) * step
        return arr

    def problem(self, i: int):
        """Image ``i`` as solver input: ``((node_costs, edges, edge_costs, partitionable),
        meta)`` as :func:`solver_problem` and :meth:`read` give them."""
        nc, em, meta = self.read(i)
        return solver_problem(nc, em, self.distances, self.partitionable), meta

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "CostFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
