"""Instance segmentation AP of the thing segments of a panoptic prediction.

Two ways, both on the thing categories of the ground-truth category list:

- **COCO AP** (:func:`coco_ap`): pycocotools' ``COCOeval`` with ``iouType="segm"`` on
  RLE masks, the numbers detectron2's ``COCOEvaluator`` reports: AP (IoU 0.50:0.95),
  AP50, AP75, AP for small, medium and large objects and AP per class. Every thing
  segment of the ground truth is an instance; crowd segments are ``iscrowd = 1`` (a
  prediction on one is neither a true nor a false positive). A predicted thing segment
  is a detection with the confidence of its ``score`` field (``copsctl solve`` writes
  it: :func:`copsctl.panoptic.postprocess.segment_scores`). An area range or class without
  ground-truth instances has no AP (``None``; COCOeval's -1).
- **Cityscapes AP** (:class:`CityscapesInstanceFiles`): cityscapesscripts'
  ``evalInstanceLevelSemanticLabeling`` on the files it reads, written from the panoptic
  sets: a ``*_gtFine_instanceIds.png`` per ground-truth image (``label * 1000 + k`` for
  thing instance ``k``, the label id for stuff and crowd regions, 0 for void) and per
  prediction a text file listing one binary mask PNG per predicted thing segment with
  its label id and score. Where Cityscapes' own ``gtFine/<split>`` annotations lie
  beside the panoptic ground truth, their instanceIds files are read instead
  (:func:`cityscapes_originals`): ``createPanopticImgs`` makes the caravan and trailer
  instances void, which the tool does not. This is the AP Panoptic-DeepLab reports on
  Cityscapes; the category ids must be Cityscapes label ids.

Masks are run-length encoded straight from the id maps (:func:`rle_encode`), in the
column-major order of COCO's RLE, without building a binary mask per segment.
All figures are fractions in [0, 1]. pycocotools and cityscapesscripts are imported
only when these functions run. This module never imports torch.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..panoptic.format import Category

__all__ = ["InstanceResult", "CityscapesResult", "rle_encode", "coco_ap",
           "CityscapesInstanceFiles", "cityscapes_originals"]


def rle_encode(ids: np.ndarray, seg_ids: Sequence[int]) -> list[dict]:
    """COCO compressed RLE of the mask of each of ``seg_ids`` in an id map.

    Parameters
    ----------
    ids : (H, W) integer ndarray
        Segment id map.
    seg_ids : sequence of int
        Ids to encode; each must occur in ``ids``.

    Returns
    -------
    list of dict
        ``{"size": [H, W], "counts": bytes}`` per id, in the order of ``seg_ids``, as
        ``pycocotools.mask.encode`` gives for the binary masks ``ids == id``.
    """
    from pycocotools import mask as mask_utils

    ids = np.asarray(ids)
    H, W = ids.shape
    wanted = np.asarray(seg_ids, dtype=np.int64).ravel()
    if wanted.size == 0:
        return []
    col = np.ascontiguousarray(ids.T).ravel()  # RLE runs go down the columns
    n = col.size
    start = np.flatnonzero(col[1:] != col[:-1]) + 1
    start = np.concatenate([[0], start])
    end = np.concatenate([start[1:], [n]])
    value = col[start].astype(np.int64)
    order = np.argsort(value, kind="stable")  # runs of one id stay in raster order
    value, start, end = value[order], start[order], end[order]
    lo = np.searchsorted(value, wanted, side="left")
    hi = np.searchsorted(value, wanted, side="right")
    missing = np.flatnonzero(lo == hi)
    if missing.size:
        raise InputError(f"segment id {int(wanted[missing[0]])} does not occur in the id map")
    objs = []
    for a, b in zip(lo.tolist(), hi.tolist()):
        s, e = start[a:b], end[a:b]
        counts = np.empty(2 * (b - a) + 1, np.int64)
        counts[0:-1:2] = s - np.concatenate([[0], e[:-1]])  # background before each run
        counts[1::2] = e - s
        counts[-1] = n - e[-1]
        if counts[-1] == 0:  # as pycocotools' encode: no empty run at the end
            counts = counts[:-1]
        objs.append({"size": [H, W], "counts": counts.tolist()})
    return mask_utils.frPyObjects(objs, H, W)


# ----------------------------------------------------------------------------- COCO AP


@dataclass(frozen=True)
class InstanceResult:
    """COCO mask AP of a set; ``None`` where COCOeval has no ground truth to rank."""

    ap: float | None
    ap50: float | None
    ap75: float | None
    ap_small: float | None
    ap_medium: float | None
    ap_large: float | None
    per_class: dict[int, float | None]
    num_gt: int = 0
    num_detections: int = 0

    def to_json(self) -> dict:
        """``{ap, ap50, ap75, ap_small, ap_medium, ap_large, per_class: {id: {ap}}}``."""
        return {"ap": self.ap, "ap50": self.ap50, "ap75": self.ap75,
                "ap_small": self.ap_small, "ap_medium": self.ap_medium,
                "ap_large": self.ap_large,
                "per_class": {str(cid): {"ap": v} for cid, v in self.per_class.items()}}


def _defined(value) -> float | None:
    value = float(value)
    return None if value < 0 else value


def coco_ap(gt: Sequence[dict], detections: Sequence[dict],
            image_sizes: Sequence[tuple[int, int]],
            category_ids: Sequence[int]) -> InstanceResult:
    """COCO mask AP with pycocotools' COCOeval.

    Parameters
    ----------
    gt : sequence of dict
        Ground-truth instances ``{image_id, category_id, segmentation, area, iscrowd}``
        with ``image_id`` in ``1 .. len(image_sizes)`` and ``segmentation`` a compressed
        RLE.
    detections : sequence of dict
        Predicted instances ``{image_id, category_id, segmentation, score}``.
    image_sizes : sequence of (H, W)
        Every image of the set, ``image_id`` 1 first (images without instances count too).
    category_ids : sequence of int
        The thing categories to evaluate.

    Returns
    -------
    InstanceResult
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i, "height": int(h), "width": int(w)}
              for i, (h, w) in enumerate(image_sizes, start=1)]
    cats = [{"id": int(c)} for c in category_ids]
    quiet = contextlib.redirect_stdout(io.StringIO())  # pycocotools prints progress
    with quiet:
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "categories": cats,
                           "annotations": [dict(a, id=i) for i, a in enumerate(gt, start=1)]}
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": images, "categories": cats, "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats
    precision = ev.eval["precision"]  # (IoU thresholds, recall, class, area, max dets)
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[int(cid)] = float(p.mean()) if p.size else None
    return InstanceResult(ap=_defined(stats[0]), ap50=_defined(stats[1]),
                          ap75=_defined(stats[2]), ap_small=_defined(stats[3]),
                          ap_medium=_defined(stats[4]), ap_large=_defined(stats[5]),
                          per_class={int(c): per_class.get(int(c)) for c in category_ids},
                          num_gt=len(gt), num_detections=len(detections))


# ----------------------------------------------------------------------------- Cityscapes


@dataclass(frozen=True)
class CityscapesResult:
    """cityscapesscripts' instance AP (IoU 0.50:0.95) and AP50, overall and per class."""

    ap: float | None
    ap50: float | None
    per_class: dict[int, dict] = field(default_factory=dict)  # id -> {"ap", "ap50"}

    def to_json(self) -> dict:
        return {"ap": self.ap, "ap50": self.ap50,
                "per_class": {str(cid): dict(v) for cid, v in self.per_class.items()}}


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _write_json_with_numpy(obj, path) -> None:
    import json

    def default(o):
        return o.item() if isinstance(o, np.generic) else o.__dict__

    with open(path, "w") as f:
        json.dump(obj, f, default=default)


def cityscapes_originals(gt_json: str | os.PathLike) -> Path | None:
    """Cityscapes' own annotation folder of the split beside a panoptic ground truth that
    ``createPanopticImgs`` made (``gtFine/cityscapes_panoptic_val.json`` ->
    ``gtFine/val``), when it exists."""
    gt_json = Path(gt_json)
    m = re.fullmatch(r"cityscapes_panoptic_(.+)\.json", gt_json.name)
    folder = gt_json.parent / m[1] if m else None
    return folder if folder is not None and folder.is_dir() else None


class CityscapesInstanceFiles:
    """Writes cityscapesscripts' instance-level files into ``folder`` and evaluates them.

    Call :meth:`add` once per image (thread-safe: every image writes its own files),
    then :meth:`evaluate`.

    Parameters
    ----------
    folder : path-like
        An empty folder of the caller's (e.g. a temporary one); ``gt/`` and ``pred/`` are
        written inside it.
    categories : sequence of Category
        The ground truth's category list; every id must be a Cityscapes label id, and
        every thing category one of Cityscapes' instance classes.
    originals : path-like, optional
        The folder of Cityscapes' own annotations of the split (``gtFine/val``, holding
        ``<city>/<image id>_gtFine_instanceIds.png``): where an image's file is there, the
        tool reads it, not one rebuilt from the panoptic ground truth, in which
        ``createPanopticImgs`` has made the caravan and trailer instances void
        (:func:`cityscapes_originals`).
    """

    def __init__(self, folder: str | os.PathLike, categories: Sequence[Category],
                 originals: str | os.PathLike | None = None):
        try:
            from cityscapesscripts.helpers.labels import id2label
        except ImportError:
            raise InputError("--cityscapes-ap needs cityscapesscripts (pip install "
                             "'copsctl[cityscapes]')") from None

        self.folder = Path(folder)
        self.categories = list(categories)
        for c in self.categories:
            label = id2label.get(int(c.id))
            if label is None or label.id < 0:
                raise InputError(f"--cityscapes-ap: category {c.id} ({c.name}) is not a "
                                 "Cityscapes label id")
            if c.isthing and not label.hasInstances:
                raise InputError(f"--cityscapes-ap: thing category {c.id} ({c.name}) is not a "
                                 "Cityscapes instance class")
        self.gt_dir = self.folder / "gt"
        self.pred_dir = self.folder / "pred"
        self.gt_dir.mkdir(parents=True, exist_ok=True)
        self.pred_dir.mkdir(parents=True, exist_ok=True)
        self.originals = Path(originals) if originals is not None else None
        self.num_originals = 0
        self._gt_files: dict[int, Path] = {}
        self._pred_files: dict[int, Path] = {}

    def add(self, index: int, gt_ids: np.ndarray, gt_segments: Sequence[tuple[int, int, bool]],
            pred_ids: np.ndarray, pred_segments: Sequence[tuple[int, int, float]],
            image_id: str | int | None = None) -> None:
        """Write the files of image ``index``.

        ``gt_segments`` lists ``(id, category_id, iscrowd)`` of every ground-truth segment,
        ``pred_segments`` ``(id, category_id, score)`` of the predicted thing segments;
        ``image_id`` finds the image's file among the ``originals``.
        """
        from PIL import Image

        # cityscapesscripts finds files by the name pattern <city>_<seq>_<frame>_*.
        stem = f"copsctl_{index:06d}_000000"
        original = self._original(image_id, np.shape(gt_ids))
        if original is not None:
            gt_file = original
        else:
            gt_file = self.gt_dir / f"{stem}_gtFine_instanceIds.png"
            self._write_gt(gt_file, gt_ids, gt_segments, index)
        lines = []
        pred = np.asarray(pred_ids)
        for j, (sid, cid, score) in enumerate(pred_segments):
            name = f"{stem}_{j:04d}.png"
            Image.fromarray(((pred == sid) * 255).astype(np.uint8), mode="L").save(
                self.pred_dir / name)
            lines.append(f"{name} {int(cid)} {float(score)!r}\n")
        pred_file = self.pred_dir / f"{stem}_pred.txt"
        pred_file.write_text("".join(lines))
        self._gt_files[index] = gt_file
        self._pred_files[index] = pred_file

    def _original(self, image_id, shape) -> Path | None:
        """Cityscapes' own instanceIds file of an image, if there (and of its size)."""
        from PIL import Image

        if self.originals is None or not isinstance(image_id, str):
            return None
        path = (self.originals / image_id.split("_")[0]
                / f"{image_id}_gtFine_instanceIds.png")
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                size = im.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"{path}: not a readable PNG ({exc})") from None
        if size[::-1] != tuple(shape):
            raise InputError(f"{path}: size {size[1]}x{size[0]} (HxW) differs from the "
                             f"panoptic ground truth of {image_id!r}, {shape[0]}x{shape[1]}")
        self.num_originals += 1
        return path

    def _write_gt(self, gt_file: Path, gt_ids: np.ndarray,
                  gt_segments: Sequence[tuple[int, int, bool]], index: int) -> None:
        """An instanceIds PNG rebuilt from the panoptic ground truth."""
        from PIL import Image

        thing = {c.id for c in self.categories if c.isthing}
        ids = np.asarray(gt_ids)
        uniq, inverse = np.unique(ids, return_inverse=True)
        value = np.zeros(uniq.size, np.int64)  # void stays 0 (Cityscapes' "unlabeled")
        of_id = {int(s): (int(c), bool(k)) for s, c, k in gt_segments}
        instances: dict[int, int] = {}
        for j, sid in enumerate(uniq.tolist()):
            if sid == 0:
                continue
            cid, crowd = of_id[sid]
            if cid in thing and not crowd:
                k = instances.get(cid, 0)
                if k >= 1000:
                    raise InputError(f"--cityscapes-ap: image {index} has more than 1000 "
                                     f"instances of category {cid}")
                instances[cid] = k + 1
                value[j] = cid * 1000 + k
            else:
                value[j] = cid
        Image.fromarray(value[inverse].reshape(ids.shape).astype(np.uint16)).save(gt_file)

    def evaluate(self) -> CityscapesResult:
        """Run ``evalInstanceLevelSemanticLabeling.evaluateImgLists`` on the files."""
        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cs
        from cityscapesscripts.helpers.labels import name2label

        order = sorted(self._gt_files)
        settings = {"predictionPath": str(self.pred_dir.resolve()), "predictionWalk": None,
                    "gtInstancesFile": str(self.folder.resolve() / "gtInstances.json"),
                    "exportFile": str(self.folder.resolve() / "result.json"),
                    "JSONOutput": False, "quiet": True}
        saved = {k: getattr(cs.args, k) for k in settings}
        shim = not hasattr(np, "in1d")
        write_dict = cs.writeDict2JSON
        try:
            for k, v in settings.items():
                setattr(cs.args, k, v)
            # cityscapesscripts 2.3 predates NumPy 2.4: it calls np.in1d (removed; isin is
            # its successor, in1d flattened), and its JSON dumps of intermediate results
            # fail on NumPy integers, which count_nonzero now returns. Its evaluation
            # itself is left as it is.
            if shim:
                np.in1d = lambda a, b, **kw: np.isin(a, b, **kw).ravel()
            cs.writeDict2JSON = _write_json_with_numpy
            # It writes matches.json into the working directory.
            with contextlib.chdir(self.folder), contextlib.redirect_stdout(io.StringIO()):
                res = cs.evaluateImgLists([str(self._pred_files[i].resolve()) for i in order],
                                          [str(self._gt_files[i].resolve()) for i in order],
                                          cs.args)
        except SystemExit:  # its printError exits the process
            raise InputError("--cityscapes-ap: cityscapesscripts could not evaluate the "
                             "instance files") from None
        finally:
            for k, v in saved.items():
                setattr(cs.args, k, v)
            if shim:
                del np.in1d
            cs.writeDict2JSON = write_dict
        avg = res["averages"]
        per_class = {}
        for name, r in avg["classes"].items():
            cid = name2label[name].id
            if any(c.id == cid for c in self.categories):
                per_class[cid] = {"ap": _finite(r["ap"]), "ap50": _finite(r["ap50%"])}
        return CityscapesResult(ap=_finite(avg["allAp"]), ap50=_finite(avg["allAp50%"]),
                                per_class=per_class)
