"""Tiny panoptic datasets in the exact Cityscapes and COCO on-disk layouts, for tests.

Import from tests as ``from panoptic_fixtures import write_cityscapes, write_coco``
(pytest puts ``tests/`` on ``sys.path``).

* :func:`write_cityscapes` writes ``leftImg8bit`` images and ``gtFine/*_instanceIds.png``
  and then runs cityscapesscripts' own ``createPanopticImgs`` converter, so the panoptic
  JSON and PNGs are exactly what that tool writes (label ids as category ids, crowd
  segments for thing pixels without an instance, ignored labels dropped to void).
* :func:`write_coco` writes ``{split}/*.jpg`` and ``annotations/panoptic_{split}``
  with COCO-style (RGB-hash) segment ids, a crowd segment, void pixels and a category
  ("dog") that no image uses.

Both return, per image id, the ground truth drawn, so tests can check what a reader
returns against what was written.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from copsctl.panoptic.format import write_id_png

# --------------------------------------------------------------------------- Cityscapes

CITYSCAPES_SIZE = (24, 48)


def _cityscapes_scenes() -> dict[str, np.ndarray]:
    """image id -> (H, W) Cityscapes instanceIds map (label id, or label id * 1000 + k)."""
    H, W = CITYSCAPES_SIZE
    a = np.zeros((H, W), dtype=np.int32)
    a[0:8] = 23                      # sky
    a[8:16, :24] = 11                # building
    a[8:16, 24:] = 21                # vegetation
    a[16:] = 7                       # road
    a[10:20, 4:10] = 24000           # person #0
    a[10:20, 10:14] = 24001          # person #1, touching #0
    a[14:22, 30:40] = 26             # car pixels without instance id: a crowd segment
    a[22:, 0:6] = 0                  # unlabeled -> void
    a[20:, 40:] = 9                  # parking (ignoreInEval) -> void
    a[0:2, 44:] = 1                  # ego vehicle -> void
    b = np.zeros((H, W), dtype=np.int32)
    b[:6] = 23                       # sky
    b[6:14] = 8                      # sidewalk
    b[14:] = 7                       # road
    b[8:18, 2:16] = 26000            # car #0
    b[10:20, 14:26] = 26001          # car #1, occluding car #0
    b[6:16, 30:34] = 25000           # rider
    b[12:18, 28:38] = 33000          # bicycle
    b[20:, 44:] = 4                  # static -> void
    return {"aachen_000000_000019": a, "bochum_000000_000313": b}


def _random_image(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)


def write_cityscapes(root: str | Path, split: str = "val", seed: int = 0) -> dict[str, np.ndarray]:
    """Write a 2-image Cityscapes split (2 cities) under ``root`` in the official layout.

    Returns
    -------
    dict
        image id -> (H, W) instanceIds map it was generated from.
    """
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    root = Path(root)
    rng = np.random.default_rng(seed)
    scenes = _cityscapes_scenes()
    for image_id, inst in scenes.items():
        city = image_id.split("_")[0]
        img_dir = root / "leftImg8bit" / split / city
        gt_dir = root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_random_image(rng, inst.shape)).save(img_dir / f"{image_id}_leftImg8bit.png")
        # Cityscapes stores instance ids as 16-bit PNGs.
        Image.fromarray(inst.astype(np.uint16)).save(gt_dir / f"{image_id}_gtFine_instanceIds.png")
    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(cityscapesPath=str(root / "gtFine"), outputFolder=str(root / "gtFine"),
                         setNames=[split])
    return scenes


def cityscapes_expected_semantic(instance_ids: np.ndarray) -> np.ndarray:
    """(H, W) train id per pixel (255 for ignored labels), from cityscapesscripts' table."""
    from cityscapesscripts.helpers.labels import id2label

    label = np.where(instance_ids >= 1000, instance_ids // 1000, instance_ids)
    out = np.full(label.shape, 255, dtype=np.uint8)
    for lid in np.unique(label).tolist():
        lab = id2label[lid]
        if not lab.ignoreInEval:
            out[label == lid] = lab.trainId
    return out


# --------------------------------------------------------------------------- COCO

COCO_CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60], "supercategory": "person"},
    {"id": 3, "name": "car", "isthing": 1, "color": [0, 0, 142], "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "isthing": 1, "color": [255, 179, 240], "supercategory": "animal"},
    {"id": 149, "name": "road", "isthing": 0, "color": [128, 64, 128], "supercategory": "ground"},
    {"id": 184, "name": "tree-merged", "isthing": 0, "color": [107, 142, 35],
     "supercategory": "plant"},
    {"id": 187, "name": "sky-other-merged", "isthing": 0, "color": [70, 130, 180],
     "supercategory": "sky"},
]
"""Categories of the COCO fixture: ids with gaps like COCO's; "dog" is never used."""

COCO_CONTIGUOUS = {1: 0, 3: 1, 18: 2, 149: 3, 184: 4, 187: 5}


def _coco_scenes() -> list[dict]:
    """Per image: id, size, id map and segments ``{id: (category_id, iscrowd)}``."""
    # COCO segment ids are arbitrary values of R + 256 G + 256² B.
    sky, road, tree, p1, p2, car, crowd = 7895160, 3226956, 10066329, 4604999, 6979964, 2368548, 9211020
    a = np.full((20, 30), sky, dtype=np.int64)
    a[8:] = road
    a[4:14, 22:28] = tree
    a[6:16, 3:8] = p1
    a[6:16, 8:12] = p2               # touching p1, same class
    a[12:18, 14:22] = car
    a[0:4, 0:10] = crowd             # a crowd of people
    a[18:, 26:] = 0                  # void
    b = np.full((24, 16), road, dtype=np.int64)
    b[:6] = sky
    b[10:20, 2:9] = car
    b[12:22, 8:14] = car + 1         # a second car, touching
    b[0:3, 12:] = 0                  # void
    return [
        {"id": 139, "size": a.shape, "map": a,
         "segments": {sky: (187, 0), road: (149, 0), tree: (184, 0), p1: (1, 0), p2: (1, 0),
                      car: (3, 0), crowd: (1, 1)}},
        {"id": 285, "size": b.shape, "map": b,
         "segments": {road: (149, 0), sky: (187, 0), car: (3, 0), car + 1: (3, 0)}},
    ]


def write_coco(root: str | Path, split: str = "val2017", seed: int = 0, *,
               layout: str = "official") -> dict[int, dict]:
    """Write a 2-image COCO panoptic split under ``root``: ``split/*.jpg``,
    ``annotations/panoptic_{split}.json`` and the PNGs in ``annotations/panoptic_{split}/``
    (``layout="official"``) or ``panoptic_{split}/`` beside ``annotations/`` (detectron2's).

    Returns
    -------
    dict
        image id -> ``{"map": (H, W) id map, "segments": {id: (category_id, iscrowd)},
        "semantic": (H, W) contiguous class index (255 void)}``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    img_dir = root / split
    png_dir = (root / "annotations" if layout == "official" else root) / f"panoptic_{split}"
    img_dir.mkdir(parents=True, exist_ok=True)
    png_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, expected = [], [], {}
    for scene in _coco_scenes():
        name = f"{scene['id']:012d}"
        h, w = scene["size"]
        Image.fromarray(_random_image(rng, (h, w))).save(img_dir / f"{name}.jpg", quality=90)
        write_id_png(png_dir / f"{name}.png", scene["map"])
        images.append({"id": scene["id"], "file_name": f"{name}.jpg", "height": h, "width": w})
        infos = []
        for sid, (cat, crowd) in scene["segments"].items():
            ys, xs = np.nonzero(scene["map"] == sid)
            infos.append({"id": int(sid), "category_id": cat, "iscrowd": crowd,
                          "area": int(ys.size),
                          "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                   int(ys.max() - ys.min() + 1)]})
        annotations.append({"image_id": scene["id"], "file_name": f"{name}.png",
                            "segments_info": infos})
        semantic = np.full((h, w), 255, dtype=np.uint8)
        for sid, (cat, _) in scene["segments"].items():
            semantic[scene["map"] == sid] = COCO_CONTIGUOUS[cat]
        expected[scene["id"]] = {"map": scene["map"], "segments": scene["segments"],
                                 "semantic": semantic}
    (root / "annotations").mkdir(exist_ok=True)
    with open(root / "annotations" / f"panoptic_{split}.json", "w") as f:
        json.dump({"info": {}, "licenses": [], "images": images, "annotations": annotations,
                   "categories": COCO_CATEGORIES}, f)
    return expected
