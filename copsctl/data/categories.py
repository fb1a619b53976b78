"""Class tables: contiguous class indices <-> dataset category ids.

The network, the solver and the losses work with contiguous class indices ``0..K-1``
(the ``K`` columns of the node costs); the panoptic JSON files use dataset category ids
(Cityscapes label ids such as road = 7 and person = 24, COCO ids 1..200 with gaps).
A :class:`ClassTable` is the one translation between the two, together with the names,
the thing/stuff flags (the solver's ``partitionable``) and the display colours.

Contiguous indices follow increasing category id. For Cityscapes this reproduces the
official train ids (road = 0 ... bicycle = 18); for COCO and the synthetic data the
table is read from the annotation JSON, so train and val splits (which list the same
categories) get the same table even when a category never occurs in one split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..errors import InputError
from ..panoptic.format import Category

IGNORE_INDEX = 255
"""Semantic label of void pixels (and of padding) in contiguous-index maps."""

# The 19 Cityscapes classes evaluated by cityscapesscripts (those with ignoreInEval
# False): (label id, name, isthing, colour). createPanopticImgs writes these label ids
# as ``category_id`` and drops the other labels (their pixels become void, id 0).
_CITYSCAPES = (
    (7, "road", False, (128, 64, 128)),
    (8, "sidewalk", False, (244, 35, 232)),
    (11, "building", False, (70, 70, 70)),
    (12, "wall", False, (102, 102, 156)),
    (13, "fence", False, (190, 153, 153)),
    (17, "pole", False, (153, 153, 153)),
    (19, "traffic light", False, (250, 170, 30)),
    (20, "traffic sign", False, (220, 220, 0)),
    (21, "vegetation", False, (107, 142, 35)),
    (22, "terrain", False, (152, 251, 152)),
    (23, "sky", False, (70, 130, 180)),
    (24, "person", True, (220, 20, 60)),
    (25, "rider", True, (255, 0, 0)),
    (26, "car", True, (0, 0, 142)),
    (27, "truck", True, (0, 0, 70)),
    (28, "bus", True, (0, 60, 100)),
    (31, "train", True, (0, 80, 100)),
    (32, "motorcycle", True, (0, 0, 230)),
    (33, "bicycle", True, (119, 11, 32)),
)


@dataclass(frozen=True)
class ClassTable:
    """Contiguous class index <-> category id, with names, thing flags and colours.

    Parameters
    ----------
    category_ids : tuple of int, length K
        Dataset category id of each contiguous index, strictly increasing.
    names : tuple of str, length K
    isthing : tuple of bool, length K
        True for thing classes (instances are separated; the solver's ``partitionable``).
    colors : tuple of (int, int, int), length K
        RGB display colour of each class.
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]
    isthing: tuple[bool, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        k = len(self.category_ids)
        if not (len(self.names) == len(self.isthing) == len(self.colors) == k):
            raise InputError("class table: `category_ids`, `names`, `isthing` and `colors` "
                             f"must have the same length, got {k}, {len(self.names)}, "
                             f"{len(self.isthing)}, {len(self.colors)}")
        if k == 0:
            raise InputError("class table: must have at least one class")
        if k >= IGNORE_INDEX:
            raise InputError(f"class table: {k} classes leave no room for the ignore index "
                             f"{IGNORE_INDEX}")
        ids = list(self.category_ids)
        if any(b <= a for a, b in zip(ids, ids[1:])) or ids[0] < 1:
            raise InputError(f"class table: category ids must be positive and strictly "
                             f"increasing, got {ids}")

    @classmethod
    def from_categories(cls, categories: Iterable[Category]) -> "ClassTable":
        """Build a table from panoptic :class:`~copsctl.panoptic.format.Category` records.

        Categories are sorted by id; a duplicate id is an :class:`InputError`.
        """
        cats = sorted(categories, key=lambda c: c.id)
        ids = [c.id for c in cats]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise InputError(f"categories: duplicate category ids {dup}")
        return cls(category_ids=tuple(int(c.id) for c in cats),
                   names=tuple(str(c.name) for c in cats),
                   isthing=tuple(bool(c.isthing) for c in cats),
                   colors=tuple(tuple(int(v) for v in c.color) for c in cats))

    @classmethod
    def from_json(cls, obj: Sequence[dict]) -> "ClassTable":
        """Inverse of :meth:`to_json` (a COCO ``categories`` list)."""
        try:
            cats = [Category(int(c["id"]), str(c["name"]), bool(c["isthing"]),
                             tuple(int(v) for v in c.get("color", (128, 128, 128))))
                    for c in obj]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"categories: every entry needs 'id', 'name' and 'isthing' "
                             f"({exc})") from None
        return cls.from_categories(cats)

    # ------------------------------------------------------------------ queries

    @property
    def num_classes(self) -> int:
        """K, the number of contiguous classes."""
        return len(self.category_ids)

    @property
    def thing_mask(self) -> np.ndarray:
        """(K,) bool ndarray: True for thing classes (the solver's ``partitionable``)."""
        return np.asarray(self.isthing, dtype=bool)

    @property
    def thing_category_ids(self) -> tuple[int, ...]:
        return tuple(c for c, t in zip(self.category_ids, self.isthing) if t)

    @property
    def stuff_category_ids(self) -> tuple[int, ...]:
        return tuple(c for c, t in zip(self.category_ids, self.isthing) if not t)

    def same_classes(self, other: "ClassTable") -> bool:
        """The same category ids with the same thing flags, in the same order: a network
        trained on one reads its channels as the other's classes (names may differ)."""
        return (self.category_ids, self.isthing) == (other.category_ids, other.isthing)

    def index_of(self, category_id: int) -> int:
        """Contiguous index of ``category_id``; an unknown id is an :class:`InputError`."""
        try:
            return self._index[int(category_id)]
        except KeyError:
            raise InputError(f"category id {category_id} is not in the class table "
                             f"(ids {list(self.category_ids)})") from None

    def category_id_of(self, index: int) -> int:
        """Category id of contiguous ``index`` (0..K-1)."""
        if not 0 <= int(index) < self.num_classes:
            raise InputError(f"class index {index} is outside [0, {self.num_classes})")
        return self.category_ids[int(index)]

    def __contains__(self, category_id: object) -> bool:
        return isinstance(category_id, (int, np.integer)) and int(category_id) in self._index

    @property
    def _index(self) -> dict[int, int]:
        # Cached on first use; the dataclass is frozen, hence object.__setattr__.
        idx = self.__dict__.get("_index_cache")
        if idx is None:
            idx = {c: i for i, c in enumerate(self.category_ids)}
            object.__setattr__(self, "_index_cache", idx)
        return idx

    def indices_of(self, category_ids: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`index_of`: integer ndarray of ids -> int64 indices, same shape."""
        category_ids = np.asarray(category_ids, dtype=np.int64)
        lut = np.full(max(self.category_ids) + 1, -1, dtype=np.int64)
        lut[list(self.category_ids)] = np.arange(self.num_classes)
        bad = (category_ids < 0) | (category_ids >= lut.size)
        out = np.where(bad, -1, lut[np.clip(category_ids, 0, lut.size - 1)])
        if (out < 0).any():
            unknown = sorted(set(category_ids[out < 0].tolist()))
            raise InputError(f"category ids {unknown} are not in the class table "
                             f"(ids {list(self.category_ids)})")
        return out

    def category_ids_of(self, indices: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`category_id_of`: int ndarray of indices -> category ids."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_classes):
            raise InputError(f"class indices must lie in [0, {self.num_classes}), got range "
                             f"[{indices.min()}, {indices.max()}]")
        return np.asarray(self.category_ids, dtype=np.int64)[indices]

    def palette(self) -> np.ndarray:
        """(K, 3) uint8 ndarray of class colours, row = contiguous index."""
        return np.asarray(self.colors, dtype=np.uint8).reshape(self.num_classes, 3)

    def to_categories(self) -> list[Category]:
        """The table as panoptic :class:`~copsctl.panoptic.format.Category` records."""
        return [Category(c, n, t, col) for c, n, t, col in
                zip(self.category_ids, self.names, self.isthing, self.colors)]

    def to_json(self) -> list[dict]:
        """A COCO ``categories`` list (``id``, ``name``, ``isthing``, ``color``)."""
        return [c.to_json() for c in self.to_categories()]


def cityscapes_class_table() -> ClassTable:
    """The 19 Cityscapes train classes (11 stuff, 8 things) keyed by Cityscapes label id.

    Contiguous index = Cityscapes train id (road = 0, ..., bicycle = 18).
    """
    return ClassTable(category_ids=tuple(r[0] for r in _CITYSCAPES),
                      names=tuple(r[1] for r in _CITYSCAPES),
                      isthing=tuple(r[2] for r in _CITYSCAPES),
                      colors=tuple(r[3] for r in _CITYSCAPES))


def check_categories_match(table: ClassTable, categories: Iterable[Category], source: str) -> None:
    """Raise :class:`InputError` if ``categories`` (read from ``source``) disagree with ``table``.

    Every category must be in the table with the same thing/stuff flag; categories of the
    table missing from ``source`` are allowed (a split need not list every class).
    """
    for c in categories:
        if c.id not in table:
            raise InputError(f"{source}: category id {c.id} ({c.name!r}) is not one of the "
                             f"{table.num_classes} classes (ids {list(table.category_ids)})")
        if bool(c.isthing) != table.isthing[table.index_of(c.id)]:
            raise InputError(f"{source}: category id {c.id} ({c.name!r}) has isthing="
                             f"{int(c.isthing)}, expected {int(table.isthing[table.index_of(c.id)])}")
