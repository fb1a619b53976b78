"""The COCO panoptic file format, used for ground truth and predictions alike.

A panoptic set is a JSON file and a folder of PNGs. The JSON holds ``images``,
``annotations`` and ``categories``; each annotation names its PNG (``file_name``) and
lists ``segments_info`` entries ``{id, category_id, area, bbox, iscrowd}``. A PNG pixel
encodes its segment id as ``id = R + 256 * G + 256**2 * B``; id 0 is void. This is the
format of COCO's panoptic annotations and of cityscapesscripts' ``createPanopticImgs``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..atomic import atomic_path, atomic_paths, write_json
from ..errors import InputError

VOID = 0


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 ndarray -> (H, W) int64 segment ids ``R + 256 G + 256² B``."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"`rgb` (shape {rgb.shape}) must have shape (H, W, 3)")
    # Channel by channel with in-place shifts: a third of the time of widening the
    # whole (H, W, 3) array first, which matters when evaluating thousands of PNGs.
    ids = rgb[..., 2].astype(np.int64)
    ids <<= 8
    ids += rgb[..., 1]
    ids <<= 8
    ids += rgb[..., 0]
    return ids


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) integer segment ids -> (H, W, 3) uint8 colours; inverse of :func:`rgb2id`."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise InputError(f"`ids` must lie in [0, 256**3), got range [{ids.min()}, {ids.max()}]")
    out = np.empty(ids.shape + (3,), dtype=np.uint8)
    out[..., 0] = ids % 256
    out[..., 1] = (ids // 256) % 256
    out[..., 2] = ids // 65536
    return out


@dataclass
class Category:
    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int] = (128, 128, 128)

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "isthing": int(self.isthing),
                "color": list(self.color)}


@dataclass
class Segment:
    id: int
    category_id: int
    area: int = 0
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    iscrowd: bool = False
    score: float | None = None   # a prediction's confidence in [0, 1]; written when set

    def to_json(self) -> dict:
        out = {"id": int(self.id), "category_id": int(self.category_id), "area": int(self.area),
               "bbox": [int(v) for v in self.bbox], "iscrowd": int(self.iscrowd)}
        if self.score is not None:
            out["score"] = float(self.score)
        return out


@dataclass
class Annotation:
    """One image's panoptic annotation: its PNG name and segment table."""

    image_id: str | int
    file_name: str
    segments: list[Segment] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"image_id": self.image_id, "file_name": self.file_name,
                "segments_info": [s.to_json() for s in self.segments]}


@dataclass
class PanopticSet:
    """A parsed panoptic JSON: images, per-image annotations and categories (written by
    :class:`PanopticWriter`)."""

    images: list[dict]
    annotations: list[Annotation]
    categories: list[Category]
    png_dir: Path | None = None

    def by_image_id(self) -> dict:
        return {a.image_id: a for a in self.annotations}

    def category_map(self) -> dict[int, Category]:
        return {c.id: c for c in self.categories}


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise InputError(msg)


def _score(segment: dict, where: str) -> float | None:
    """A segment's optional ``score``: a number in [0, 1] (a prediction's confidence)."""
    if "score" not in segment:
        return None
    value = segment["score"]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    if not ok:  # also NaN, which fails both comparisons
        raise InputError(f"{where}: `score` must be a number in [0, 1], got {value!r}")
    return float(value)


_INT_LIMIT = 2 ** 63  # ids and counts are int64 everywhere downstream


def _json_int(value, where: str, field: str, low: int = 0, high: int = _INT_LIMIT) -> int:
    """A JSON integer field (an integral float such as ``3.0`` too) in ``[low, high)``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: '{field}' must be an integer, got {value!r}")
    if not low <= value < high:
        raise InputError(f"{where}: '{field}' must lie in [{low}, {high}), got {value}")
    return value


def _json_image_id(value, where: str, field: str = "image_id"):
    """An image id: a string or an integer (hashable, fits int64)."""
    if isinstance(value, str):
        return value
    _require(isinstance(value, (int, float)) and not isinstance(value, bool),
             f"{where}: '{field}' must be a string or an integer, got {value!r}")
    return _json_int(value, where, field, -_INT_LIMIT)


def _json_segment(s, where: str) -> Segment:
    _require(isinstance(s, dict) and "id" in s and "category_id" in s,
             f"{where}: every segment needs 'id' and 'category_id'")
    sid = _json_int(s["id"], where, "id", 1, 256 ** 3)
    where = f"{where}: segment {sid}"
    bbox = s.get("bbox", (0, 0, 0, 0))
    _require(isinstance(bbox, (list, tuple)) and len(bbox) == 4,
             f"{where}: 'bbox' must be a list of 4 numbers (x, y, w, h), got {bbox!r}")
    _require(all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox),
             f"{where}: 'bbox' must be a list of 4 numbers (x, y, w, h), got {bbox!r}")
    iscrowd = s.get("iscrowd", 0)
    _require(iscrowd in (0, 1) and not isinstance(iscrowd, float) or iscrowd in (True, False),
             f"{where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
    return Segment(sid, _json_int(s["category_id"], where, "category_id", -_INT_LIMIT),
                   _json_int(s.get("area", 0), where, "area"), tuple(bbox), bool(iscrowd),
                   _score(s, where))


def _json_category(c, where: str) -> Category:
    _require(isinstance(c, dict) and "id" in c, f"{where}: every category needs an 'id'")
    cid = _json_int(c["id"], where, "category id", -_INT_LIMIT)
    where = f"{where}: category {cid}"
    color = c.get("color", (128, 128, 128))
    _require(isinstance(color, (list, tuple)) and len(color) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()
        and 0 <= v <= 255 for v in color),
        f"{where}: 'color' must be a list of 3 integers in [0, 255], got {color!r}")
    color = tuple(int(v) for v in color)  # integral floats (3.0) too, as for ids
    name = c.get("name", cid)
    _require(isinstance(name, (str, int)) and not isinstance(name, bool),
             f"{where}: 'name' must be a string, got {name!r}")
    isthing = c.get("isthing", 0)
    _require(isthing in (0, 1) and not isinstance(isthing, float) or isthing in (True, False),
             f"{where}: 'isthing' must be 0 or 1, got {isthing!r}")
    return Category(cid, str(name), bool(isthing), tuple(color))


def load_panoptic_json(json_path: str | os.PathLike, png_dir: str | os.PathLike | None = None,
                       categories: str = "required") -> PanopticSet:
    """Read and check a COCO panoptic JSON file.

    ``categories`` says what the caller needs of the JSON's ``categories`` list:
    ``"required"``, ``"optional"`` (none is an empty list) or ``"ignored"`` (not read, an
    empty list: a prediction's, as the evaluators read only the ground truth's).

    Raises :class:`InputError` naming the file and the broken rule when the file is
    missing, not JSON, or lacks the COCO panoptic structure.
    """
    if categories not in ("required", "optional", "ignored"):
        raise ValueError(f"categories must be 'required', 'optional' or 'ignored', got "
                         f"{categories!r}")
    json_path = Path(json_path)
    if not json_path.is_file():
        raise InputError(f"{json_path}: panoptic JSON file does not exist")
    try:
        with open(json_path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{json_path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise InputError(f"{json_path}: cannot be read ({exc.strerror or exc})") from None
    _require(isinstance(data, dict) and isinstance(data.get("annotations"), list),
             f"{json_path}: must be a JSON object with an 'annotations' list")
    cats = []
    raw_cats = data.get("categories") if categories != "ignored" else []
    if raw_cats is None:
        _require(categories == "optional", f"{json_path}: must have a 'categories' list")
        raw_cats = []
    _require(isinstance(raw_cats, list), f"{json_path}: 'categories' must be a list")
    for c in raw_cats:
        cats.append(_json_category(c, str(json_path)))
    anns = []
    for a in data["annotations"]:
        _require(isinstance(a, dict) and "image_id" in a and "file_name" in a
                 and isinstance(a.get("segments_info"), list),
                 f"{json_path}: every annotation needs 'image_id', 'file_name' and 'segments_info'")
        image_id = _json_image_id(a["image_id"], f"{json_path}: annotation")
        where = f"{json_path}: image {image_id!r}"
        _require(isinstance(a["file_name"], str) and a["file_name"].strip() != "",
                 f"{where}: 'file_name' must be a non-empty string, got {a['file_name']!r}")
        segs = [_json_segment(s, where) for s in a["segments_info"]]
        anns.append(Annotation(image_id, a["file_name"], segs))
    images = data.get("images", [])
    _require(isinstance(images, list), f"{json_path}: 'images' must be a list")
    for im in images:
        _require(isinstance(im, dict) and "id" in im,
                 f"{json_path}: every entry of 'images' needs an 'id'")
        _json_image_id(im["id"], f"{json_path}: 'images' entry", "id")
    if png_dir is None:
        png_dir = json_path.with_suffix("")
    return PanopticSet(images=images, annotations=anns, categories=cats, png_dir=Path(png_dir))


def read_id_png(path: str | os.PathLike, expected_size: tuple[int, int] | None = None,
                dtype=np.int64) -> np.ndarray:
    """Read a panoptic PNG into an (H, W) id map.

    ``expected_size`` is (H, W); a PNG of another size or not in RGB mode (RGBA is read
    as its RGB, as panopticapi does) is an :class:`InputError` naming the file. ``dtype``
    is ``np.int64`` (default) or ``np.uint32`` (ids are below 256**3; saves a conversion
    where speed matters).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: panoptic PNG does not exist")
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("RGB", "RGBA"):
                raise InputError(f"{path}: panoptic PNG must be RGB (or RGBA) mode, got {mode}")
            im.load()
            if mode == "RGBA":  # the ids are in R, G, B; panopticapi ignores the alpha too
                im = im.convert("RGB")
            w, h = im.size
            # Pillow keeps RGB pixels as 4 bytes; exporting them as RGBX is a plain copy
            # and gives the little-endian word R + 256 G + 256² B + 256³ X directly.
            raw = im.tobytes("raw", "RGBX")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: not a readable PNG ({exc})") from None
    if expected_size is not None and (h, w) != tuple(expected_size):
        raise InputError(f"{path}: PNG size {h}x{w} (HxW) differs from the "
                         f"expected {expected_size[0]}x{expected_size[1]}")
    ids = np.frombuffer(raw, dtype="<u4").reshape(h, w) & np.uint32(0xFFFFFF)
    return ids if np.dtype(dtype) == np.uint32 else ids.astype(dtype)


def write_id_png(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write an (H, W) id map as an RGB panoptic PNG."""
    Image.fromarray(id2rgb(ids), mode="RGB").save(path)


def segments_from_id_map(ids: np.ndarray, category_of: dict[int, int],
                         iscrowd: dict[int, bool] | None = None) -> list[Segment]:
    """Segment table for an id map: area and COCO bbox ``[x, y, w, h]`` per non-void id."""
    ids = np.asarray(ids)
    flat = ids.ravel()
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    H, W = ids.shape
    rows = np.repeat(np.arange(H), W)
    cols = np.tile(np.arange(W), H)
    n = len(uniq)
    rmin = np.full(n, H); rmax = np.full(n, -1); cmin = np.full(n, W); cmax = np.full(n, -1)
    np.minimum.at(rmin, inverse, rows); np.maximum.at(rmax, inverse, rows)
    np.minimum.at(cmin, inverse, cols); np.maximum.at(cmax, inverse, cols)
    segs = []
    for j, sid in enumerate(uniq.tolist()):
        if sid == VOID:
            continue
        if sid not in category_of:
            raise InputError(f"segment id {sid} has no category")
        segs.append(Segment(int(sid), int(category_of[sid]), int(counts[j]),
                            (int(cmin[j]), int(rmin[j]), int(cmax[j] - cmin[j] + 1),
                             int(rmax[j] - rmin[j] + 1)),
                            bool(iscrowd.get(sid, False)) if iscrowd else False))
    return segs


def image_entry(image_id: str | int, file_name: str, image_size: tuple[int, int]) -> dict:
    """The JSON ``images`` entry of one image: ``{id, file_name, height, width}``."""
    return {"id": image_id, "file_name": file_name,
            "height": int(image_size[0]), "width": int(image_size[1])}


class PanopticWriter:
    """The writer of COCO panoptic sets: id PNGs one at a time, then the JSON listing them.

    Every command that writes a panoptic set (``solve``, ``predict``, ``make-costs``,
    ``make-synthetic``, :func:`write_panoptic_set`) goes through this class, so the JSON
    has one layout: ``info`` (when given), ``images``, ``annotations``, ``categories``.

    Parameters
    ----------
    json_path, png_dir : path-like
        Where the JSON and the PNGs go; ``png_dir`` is created.
    categories : sequence of Category
    info : dict, optional
        The JSON's ``info`` entry.
    atomic : bool
        False (default): the caller makes the paths safe, as they lie inside a folder
        being built by :func:`copsctl.atomic.atomic_paths`, published once complete.
        True: the set is written in place and never half-written all the same: each PNG
        under a temporary name then renamed, the JSON by :func:`copsctl.atomic.write_json`,
        so :meth:`write_json` may run again and again as images finish (``predict``).
    """

    def __init__(self, json_path: str | os.PathLike, png_dir: str | os.PathLike,
                 categories: Sequence[Category], *, info: dict | None = None,
                 atomic: bool = False):
        self.json_path, self.png_dir = Path(json_path), Path(png_dir)
        self.categories = list(categories)
        self.info = info
        self.atomic = atomic
        # By PNG file name, in the order first listed.
        self.images: dict[str, dict] = {}
        self.annotations: dict[str, dict] = {}
        self.png_dir.mkdir(parents=True, exist_ok=True)

    def __contains__(self, file_name: str) -> bool:
        return file_name in self.annotations

    def __len__(self) -> int:
        return len(self.annotations)

    def write_png(self, file_name: str, ids: np.ndarray) -> None:
        """Write the (H, W) id map of one image as ``png_dir/file_name``; lists nothing.

        Safe to call from several threads at once (for different names).
        """
        path = self.png_dir / file_name
        if self.atomic:
            with atomic_path(path, suffix=".png") as tmp:
                write_id_png(tmp, ids)
        else:
            write_id_png(path, ids)

    def record(self, image: dict, annotation: dict) -> None:
        """List one image whose PNG is written: its ``images`` entry (:func:`image_entry`)
        and its annotation as JSON (:meth:`Annotation.to_json`)."""
        name = annotation["file_name"]
        self.images[name] = image
        self.annotations[name] = annotation

    def add(self, annotation: Annotation, ids: np.ndarray, *,
            image_file_name: str | None = None,
            image_size: tuple[int, int] | None = None) -> None:
        """Write one image's PNG (``annotation.file_name``) and list it.

        ``image_file_name`` is the ``images`` entry's file name (the input image; default
        the PNG's name); ``image_size`` its (H, W) (default the id map's shape).
        """
        self.write_png(annotation.file_name, ids)
        self.record(image_entry(annotation.image_id, image_file_name or annotation.file_name,
                              np.shape(ids) if image_size is None else image_size),
                  annotation.to_json())

    def to_json(self) -> dict:
        out = {} if self.info is None else {"info": self.info}
        out.update(images=list(self.images.values()),
                   annotations=list(self.annotations.values()),
                   categories=[c.to_json() for c in self.categories])
        return out

    def write_json(self, *, newline: bool = True) -> None:
        """Write the JSON listing every image so far (compact, ending in a newline).

        ``newline=False`` leaves out the final newline (``make-synthetic``'s files have
        none; kept so that datasets made before stay byte-identical).
        """
        if self.atomic:
            write_json(self.json_path, self.to_json(), indent=None)
            return
        with open(self.json_path, "w") as f:
            json.dump(self.to_json(), f)
            if newline:
                f.write("\n")


def write_panoptic_set(json_path: str | os.PathLike, png_dir: str | os.PathLike,
                       annotations: list[Annotation], id_maps: list[np.ndarray],
                       categories: list[Category]) -> None:
    """Write a whole panoptic set at once: one PNG per annotation and the JSON file.

    Parameters
    ----------
    json_path, png_dir
        Destinations; both are built under temporary names and published together
        once complete (:func:`copsctl.atomic.atomic_paths`), so a failure leaves
        neither half-written.
    annotations : list of Annotation
        One per image; ``file_name`` names its PNG inside ``png_dir``.
    id_maps : list of (H, W) integer ndarray
        The segment id map of each annotation, in the same order.
    categories : list of Category
    """
    if len(annotations) != len(id_maps):
        raise InputError(f"`id_maps` (length {len(id_maps)}) must have one map per annotation "
                         f"(length {len(annotations)})")
    with atomic_paths([png_dir, json_path]) as (tmp_dir, tmp_json):
        writer = PanopticWriter(tmp_json, tmp_dir, categories)
        for ann, ids in zip(annotations, id_maps):
            writer.add(ann, ids)
        writer.write_json()
