"""Readers for panoptic datasets stored in the COCO panoptic format.

All three datasets share one structure, a panoptic JSON plus a folder of id PNGs
(see :mod:`copsctl.panoptic.format`), and differ only in where the images live:

* **Cityscapes** (as written by cityscapesscripts' ``createPanopticImgs``)::

      ROOT/leftImg8bit/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
      ROOT/gtFine/cityscapes_panoptic_{split}.json
      ROOT/gtFine/cityscapes_panoptic_{split}/<city>_<seq>_<frame>_gtFine_panoptic.png

  ``image_id`` is ``"<city>_<seq>_<frame>"`` and ``category_id`` the Cityscapes label id;
  the class table is the fixed 19-class table of :mod:`copsctl.data.categories`.
  Thing pixels without an instance id are single crowd segments (``iscrowd = 1``) and
  labels outside the 19 classes are void (id 0), exactly as in the annotations.

* **COCO** (``coco``), with the split name as the folders spell it (``val2017``)::

      ROOT/{split}/<file_name>
      ROOT/annotations/panoptic_{split}.json
      ROOT/annotations/panoptic_{split}/<png file_name>   (the official layout), or
      ROOT/panoptic_{split}/<png file_name>               (detectron2's layout)

* The **synthetic** data of ``copsctl make-synthetic``: the COCO layout with splits
  ``train`` and ``val`` in folders ``train2017`` and ``val2017`` (the names it writes;
  ``val2017`` is accepted as well).

* **Any COCO panoptic dataset** (``coco_panoptic``) at explicit paths, per split: the
  JSON, the image folder and the PNG folder (default: the JSON path without ``.json``),
  recipe keys ``data.train_json`` / ``data.train_images`` / ``data.train_panoptic`` for
  ``data.train_split`` and ``data.val_*`` for ``data.val_split``; relative paths are
  relative to the working directory (as ``data.root`` is; this dataset does not use it).

  The class table of the COCO layouts is read from the JSON ``categories`` (sorted by id).

A :class:`PanopticReader` indexes one split and returns :class:`PanopticSample` records
(image, id map, segment table, semantic map in contiguous class indices). Every problem
with the files is an :class:`~copsctl.errors.InputError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..panoptic.format import VOID, Segment, load_panoptic_json, read_id_png
from .categories import (IGNORE_INDEX, ClassTable, check_categories_match,
                         cityscapes_class_table)

DATASETS = ("cityscapes", "coco", "coco_panoptic", "synthetic")
"""Dataset names understood by :func:`open_reader`."""


@dataclass
class PanopticSample:
    """One image with its panoptic ground truth, at the original resolution.

    Attributes
    ----------
    image_id : str or int
    image : (H, W, 3) uint8 ndarray
    panoptic : (H, W) int64 ndarray
        Segment id per pixel; 0 is void.
    segments : list of :class:`~copsctl.panoptic.format.Segment`
        Segment table as in the JSON (dataset category ids, area, bbox, iscrowd).
    semantic : (H, W) uint8 ndarray
        Contiguous class index per pixel; void is ``IGNORE_INDEX`` (255). Crowd pixels
        carry their class.
    segment_ids, segment_classes : (S,) int64 ndarray
        Segment ids and their contiguous class indices, in ``segments`` order.
    segment_iscrowd : (S,) bool ndarray
    image_path, label_path : Path
    """

    image_id: str | int
    image: np.ndarray
    panoptic: np.ndarray
    segments: list[Segment]
    semantic: np.ndarray
    segment_ids: np.ndarray
    segment_classes: np.ndarray
    segment_iscrowd: np.ndarray
    image_path: Path = field(default_factory=Path)
    label_path: Path = field(default_factory=Path)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG or JPEG image as an (H, W, 3) uint8 ndarray.

    Grey, palette and alpha images are converted to RGB; a 16-bit grey PNG keeps its high
    byte (Pillow's own conversion would clip every value above 255 to white), as Pillow
    does for 16-bit RGB. The stored orientation is kept (no EXIF rotation): labels are
    drawn on the stored pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image file does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I"):  # "I;16", "I;16B", ...; "I" in older Pillow
                grey = np.asarray(im).astype(np.int64) >> 8
                arr = np.repeat(grey.clip(0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
            else:
                arr = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None
    return arr


def semantic_from_panoptic(panoptic: np.ndarray, segment_ids: np.ndarray,
                           segment_classes: np.ndarray, source: str = "panoptic map") -> np.ndarray:
    """Map segment ids to contiguous class indices.

    Parameters
    ----------
    panoptic : (H, W) int ndarray
        Segment ids; 0 is void.
    segment_ids, segment_classes : (S,) int ndarray
        Segment id -> class index table (ids need not be sorted).
    source : str
        Name used in the error message (the PNG file).

    Returns
    -------
    (H, W) uint8 ndarray
        Class index per pixel, ``IGNORE_INDEX`` on void. A non-void id missing from
        ``segment_ids`` is an :class:`InputError`.
    """
    panoptic = np.asarray(panoptic)
    order = np.argsort(segment_ids, kind="stable")
    ids = np.asarray(segment_ids, dtype=np.int64)[order]
    cls = np.asarray(segment_classes, dtype=np.int64)[order]
    if ids.size == 0:
        ids = np.zeros(1, dtype=np.int64)
        cls = np.full(1, IGNORE_INDEX, dtype=np.int64)
    pos = np.clip(np.searchsorted(ids, panoptic), 0, ids.size - 1)
    found = ids[pos] == panoptic
    known = found | (panoptic == VOID)
    if not known.all():
        missing = sorted(set(np.unique(panoptic[~known]).tolist()))[:5]
        raise InputError(f"{source}: segment ids {missing} in the PNG are not listed in the "
                         "JSON's segments_info")
    return np.where(found & (panoptic != VOID), cls[pos], IGNORE_INDEX).astype(np.uint8)


class PanopticReader:
    """Index of one panoptic split: image paths, label PNGs and segment tables.

    Parameters
    ----------
    json_path : path
        The panoptic JSON of the split.
    png_dir : path
        Folder of the id PNGs named by the annotations' ``file_name``.
    image_dir : path
        Image folder; see ``layout``.
    layout : {"coco", "cityscapes"}
        Image path rule. ``"coco"``: ``image_dir/<file_name>`` of the JSON ``images``
        entry (or the annotation PNG name with a .jpg or .png suffix when the entry is
        missing). ``"cityscapes"``: ``image_dir/<city>/<file_name>`` with the city taken
        from ``image_id = "<city>_<seq>_<frame>"`` and the file name
        ``<image_id>_leftImg8bit.png`` (the JSON's ``images[].file_name``, which
        ``createPanopticImgs`` writes with a spurious ``_gtFine``, is not used).
    class_table : ClassTable, optional
        Contiguous class table. Default: built from the JSON's categories. When given,
        the JSON's categories must agree with it (ids and thing flags).
    check_files : bool
        Check up front that every image and PNG exists, so a missing file is reported
        in the main process rather than inside a DataLoader worker.

    Notes
    -----
    Per-image records are kept in flat arrays and lists of strings rather than one
    Python object per segment, so DataLoader workers forked from the main process do
    not duplicate a large annotation set by touching reference counts.
    """

    def __init__(self, *, json_path: str | os.PathLike, png_dir: str | os.PathLike,
                 image_dir: str | os.PathLike, layout: str = "coco",
                 class_table: ClassTable | None = None, check_files: bool = True) -> None:
        if layout not in ("coco", "cityscapes"):
            raise InputError(f"`layout` must be 'coco' or 'cityscapes', got {layout!r}")
        self.json_path = Path(json_path)
        self.png_dir = Path(png_dir)
        self.image_dir = Path(image_dir)
        self.layout = layout
        needed = "required" if class_table is None else "optional"
        pset = load_panoptic_json(self.json_path, self.png_dir, categories=needed)
        if class_table is None:
            if not pset.categories:
                raise InputError(f"{self.json_path}: 'categories' list is empty")
            class_table = ClassTable.from_categories(pset.categories)
        else:
            check_categories_match(class_table, pset.categories, str(self.json_path))
        self.class_table = class_table

        images = {}
        for entry in pset.images:
            if isinstance(entry, dict) and "id" in entry:
                images[entry["id"]] = entry
        self.image_ids: list = []
        self._image_paths: list[str] = []
        self._png_paths: list[str] = []
        seg_ids, seg_cats, seg_crowd, seg_area, seg_bbox, counts = [], [], [], [], [], []
        seen = set()
        for ann in pset.annotations:
            if ann.image_id in seen:
                raise InputError(f"{self.json_path}: image {ann.image_id!r} has two annotations")
            seen.add(ann.image_id)
            self.image_ids.append(ann.image_id)
            self._image_paths.append(str(self._image_path(ann, images.get(ann.image_id))))
            self._png_paths.append(str(self.png_dir / ann.file_name))
            ids = [s.id for s in ann.segments]
            if len(set(ids)) != len(ids) or VOID in ids:
                raise InputError(f"{self.json_path}: image {ann.image_id!r}: segment ids must be "
                                 "distinct and non-zero")
            seg_ids.extend(ids)
            seg_cats.extend(s.category_id for s in ann.segments)
            seg_crowd.extend(s.iscrowd for s in ann.segments)
            seg_area.extend(s.area for s in ann.segments)
            seg_bbox.extend(tuple(s.bbox)[:4] for s in ann.segments)
            counts.append(len(ids))
        self._seg_ids = np.asarray(seg_ids, dtype=np.int64)
        self._seg_cats = np.asarray(seg_cats, dtype=np.int64)
        self._seg_crowd = np.asarray(seg_crowd, dtype=bool)
        self._seg_area = np.asarray(seg_area, dtype=np.int64)
        try:
            self._seg_bbox = np.asarray(seg_bbox, dtype=np.int64).reshape(-1, 4)
        except ValueError:
            raise InputError(f"{self.json_path}: every segment 'bbox' must have 4 numbers") \
                from None
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._seg_classes = self._classes_or_error()
        if check_files:
            self.check_files()

    # ---------------------------------------------------------------- construction

    def _image_path(self, ann, entry: dict | None) -> Path:
        if self.layout == "cityscapes":
            image_id = str(ann.image_id)
            parts = image_id.rsplit("_", 2)
            if len(parts) != 3:
                raise InputError(f"{self.json_path}: image id {image_id!r} is not of the form "
                                 "<city>_<seq>_<frame>")
            # Not the JSON's images[].file_name: createPanopticImgs writes it as
            # "<id>_gtFine_leftImg8bit.png", which is not the name of the image file.
            return self.image_dir / parts[0] / f"{image_id}_leftImg8bit.png"
        if entry and entry.get("file_name"):
            return self.image_dir / str(entry["file_name"])
        stem = Path(ann.file_name).stem
        for suffix in (".jpg", ".png"):
            if (self.image_dir / (stem + suffix)).is_file():
                return self.image_dir / (stem + suffix)
        return self.image_dir / (stem + ".jpg")

    def _classes_or_error(self) -> np.ndarray:
        known = np.isin(self._seg_cats, np.asarray(self.class_table.category_ids))
        if not known.all():
            j = int(np.flatnonzero(~known)[0])
            i = int(np.searchsorted(self._offsets, j, side="right") - 1)
            raise InputError(f"{self.json_path}: image {self.image_ids[i]!r}: segment "
                             f"{int(self._seg_ids[j])} has unknown category id "
                             f"{int(self._seg_cats[j])}")
        return self.class_table.indices_of(self._seg_cats)

    def check_files(self) -> None:
        """Raise :class:`InputError` naming the first image or label PNG that is missing."""
        for img, png in zip(self._image_paths, self._png_paths):
            if not os.path.isfile(img):
                raise InputError(f"{img}: image file does not exist (listed in {self.json_path})")
            if not os.path.isfile(png):
                raise InputError(f"{png}: panoptic PNG does not exist (listed in "
                                 f"{self.json_path})")

    # ---------------------------------------------------------------- access

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return Path(self._image_paths[index])

    def label_path(self, index: int) -> Path:
        return Path(self._png_paths[index])

    def segments_of(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment table of image ``index``: ids, contiguous classes, iscrowd, each (S,)."""
        a, b = self._offsets[index], self._offsets[index + 1]
        return self._seg_ids[a:b], self._seg_classes[a:b], self._seg_crowd[a:b]

    def __getitem__(self, index: int) -> PanopticSample:
        """Read image ``index`` (0-based) with its ground truth."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = index % len(self)
        image_path, label_path = self.image_path(index), self.label_path(index)
        image = read_image(image_path)
        panoptic = read_id_png(label_path)
        if panoptic.shape != image.shape[:2]:
            raise InputError(f"{label_path}: label size {panoptic.shape[0]}x{panoptic.shape[1]} "
                             f"(HxW) differs from the image size {image.shape[0]}x"
                             f"{image.shape[1]} of {image_path}")
        ids, classes, crowd = self.segments_of(index)
        semantic = semantic_from_panoptic(panoptic, ids, classes, source=str(label_path))
        a, b = self._offsets[index], self._offsets[index + 1]
        cats = self.class_table.category_ids_of(classes)
        segments = [Segment(int(i), int(c), int(area), tuple(int(v) for v in box), bool(k))
                    for i, c, k, area, box in zip(ids, cats, crowd, self._seg_area[a:b],
                                                  self._seg_bbox[a:b])]
        return PanopticSample(image_id=self.image_ids[index], image=image, panoptic=panoptic,
                              segments=segments, semantic=semantic, segment_ids=ids.copy(),
                              segment_classes=classes.copy(), segment_iscrowd=crowd.copy(),
                              image_path=image_path, label_path=label_path)


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise InputError(f"{path}: {what} folder does not exist")


def cityscapes_reader(root: str | os.PathLike, split: str, *,
                      class_table: ClassTable | None = None,
                      check_files: bool = True) -> PanopticReader:
    """Reader for a Cityscapes split converted by ``createPanopticImgs`` (label ids)."""
    root = Path(root)
    _require_dir(root, "Cityscapes root")
    return PanopticReader(json_path=root / "gtFine" / f"cityscapes_panoptic_{split}.json",
                          png_dir=root / "gtFine" / f"cityscapes_panoptic_{split}",
                          image_dir=root / "leftImg8bit" / split, layout="cityscapes",
                          class_table=class_table or cityscapes_class_table(),
                          check_files=check_files)


def coco_reader(root: str | os.PathLike, split: str, *, class_table: ClassTable | None = None,
                check_files: bool = True, synthetic: bool = False) -> PanopticReader:
    """Reader for a COCO-layout panoptic split: the official layout or detectron2's.

    ``split`` is the name the folders use (``val2017``); with ``synthetic``, also the
    names ``train`` / ``val`` of ``copsctl make-synthetic`` (folders ``train2017`` ...).
    """
    root = Path(root)
    _require_dir(root, "dataset root")
    notes = root / "annotations"
    found = sorted(p.name[len("panoptic_"):-len(".json")]
                   for p in notes.glob("panoptic_*.json")) if notes.is_dir() else []
    names = [split, f"{split}2017"] if synthetic else [split]
    name = next((n for n in names if n in found), None)
    if name is None:
        raise InputError(f"{root}: no split {split!r} (annotations/panoptic_{split}.json); "
                         f"splits found: {', '.join(found) or 'none'} (data.train_split, "
                         "data.val_split or --split name one)")
    json_path = notes / f"panoptic_{name}.json"
    png_dir = next((d for d in (notes / f"panoptic_{name}", root / f"panoptic_{name}")
                    if d.is_dir()), None)
    if png_dir is None:
        raise InputError(f"{root}: no PNG folder of split {name!r}: neither annotations/"
                         f"panoptic_{name}/ nor panoptic_{name}/ (detectron2's layout) exists")
    return PanopticReader(json_path=json_path, png_dir=png_dir, image_dir=root / name,
                          layout="coco", class_table=class_table, check_files=check_files)


def coco_panoptic_reader(json_path: str | os.PathLike, image_dir: str | os.PathLike,
                         png_dir: str | os.PathLike | None = None, *,
                         class_table: ClassTable | None = None,
                         check_files: bool = True) -> PanopticReader:
    """Reader for a COCO panoptic split at explicit paths (PNG folder default: the JSON
    path without ``.json``, panopticapi's rule)."""
    json_path = Path(json_path)
    png_dir = json_path.with_suffix("") if png_dir is None else Path(png_dir)
    _require_dir(Path(image_dir), "image")
    _require_dir(png_dir, "panoptic PNG")
    return PanopticReader(json_path=json_path, png_dir=png_dir, image_dir=image_dir,
                          layout="coco", class_table=class_table, check_files=check_files)


def open_reader(dataset: str, root: str | os.PathLike, split: str, *,
                class_table: ClassTable | None = None, check_files: bool = True) -> PanopticReader:
    """Reader for ``dataset`` (one of :data:`DATASETS` but ``coco_panoptic``, whose paths
    :func:`open_data_split` takes from a recipe) stored under ``root``."""
    if dataset == "cityscapes":
        return cityscapes_reader(root, split, class_table=class_table, check_files=check_files)
    if dataset in ("coco", "synthetic"):
        return coco_reader(root, split, class_table=class_table, check_files=check_files,
                           synthetic=dataset == "synthetic")
    raise InputError(f"`dataset` must be one of {list(DATASETS)}, got {dataset!r}")


def open_data_split(data, split: str, *, class_table: ClassTable | None = None,
                    check_files: bool = True) -> PanopticReader:
    """Reader of ``split`` of a recipe's dataset (``data``: its :class:`~copsctl.config.
    DataConfig`): ``data.dataset`` under ``data.root``, or the ``coco_panoptic`` paths."""
    if data.dataset != "coco_panoptic":
        if not data.root:
            raise InputError("`data.root` is empty: set it in the recipe or with "
                             "--set data.root=DIR")
        if not Path(data.root).is_dir():
            raise InputError(f"{data.root}: dataset root folder does not exist (data.root; "
                             "set it with --set data.root=DIR)")
        return open_reader(data.dataset, data.root, split, class_table=class_table,
                           check_files=check_files)
    roles = {data.train_split: "train", data.val_split: "val"}
    if split not in roles:
        raise InputError(f"coco_panoptic: split {split!r} is neither data.train_split "
                         f"({data.train_split!r}) nor data.val_split ({data.val_split!r})")
    role = roles[split]
    json_path, images, panoptic = (getattr(data, f"{role}_{k}")
                                   for k in ("json", "images", "panoptic"))
    for key, value in (("json", json_path), ("images", images)):
        if not value:
            raise InputError(f"coco_panoptic: `data.{role}_{key}` is empty; set the {split} "
                             f"split's {'panoptic JSON' if key == 'json' else 'image folder'} "
                             f"with --set data.{role}_{key}=PATH")
    return coco_panoptic_reader(json_path, images, panoptic or None,
                                class_table=class_table, check_files=check_files)
