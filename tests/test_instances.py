"""Instance AP: equal to pycocotools run directly on the masks, and to cityscapesscripts'
instance-level evaluation run on its own file formats."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from copsctl.errors import InputError
from copsctl.metrics.evaluation import evaluate_files
from copsctl.metrics.instances import rle_encode
from copsctl.panoptic.format import read_id_png
from test_pq import CATEGORIES, THINGS, make_pair, write_sets

mask_utils = pytest.importorskip("pycocotools.mask")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def _scored_set(tmp_path, seed=0, n=5, H=40, W=56):
    """A generated set with random 24-bit ids and a random score on every prediction."""
    rng = np.random.default_rng(seed)
    paths = write_sets(tmp_path, [make_pair(rng, H, W, style="random") for _ in range(n)])
    d = json.loads(paths[2].read_text())
    for a in d["annotations"]:
        for s in a["segments_info"]:
            s["score"] = float(rng.uniform(0.01, 1.0))
    paths[2].write_text(json.dumps(d))
    return paths


def test_rle_encode_equals_pycocotools_encode():
    rng = np.random.default_rng(4)
    ids = rng.choice(np.array([0, 7, 2 ** 23 + 5, 99]), size=(13, 9))
    ids[:, 0] = 99  # a run over a whole column and across column boundaries
    ids[-1, -1] = 42  # a segment of one pixel in the last position
    want = [99, 7, 2 ** 23 + 5, 42]
    got = rle_encode(ids, want)
    for sid, rle in zip(want, got):
        ref = mask_utils.encode(np.asfortranarray((ids == sid).astype(np.uint8)))
        assert rle["size"] == ref["size"] == [13, 9]
        assert rle["counts"] == ref["counts"], sid
    assert rle_encode(ids, []) == []
    with pytest.raises(InputError, match="segment id 5 does not occur"):
        rle_encode(ids, [5])


def _direct_coco(paths):
    """COCOeval run directly on binary masks cut from the PNGs, as a user would."""
    gt = json.loads(paths[0].read_text())
    pr = json.loads(paths[2].read_text())
    thing = {c.id for c in CATEGORIES if c.isthing}
    preds = {a["image_id"]: a for a in pr["annotations"]}
    images, gts, dts = [], [], []
    for i, a in enumerate(gt["annotations"], start=1):
        g = read_id_png(paths[1] / a["file_name"])
        p = read_id_png(paths[3] / preds[a["image_id"]]["file_name"])
        images.append({"id": i, "height": g.shape[0], "width": g.shape[1]})
        for s in a["segments_info"]:
            if s["category_id"] in thing:
                m = np.asfortranarray((g == s["id"]).astype(np.uint8))
                gts.append({"id": len(gts) + 1, "image_id": i, "category_id": s["category_id"],
                            "segmentation": mask_utils.encode(m), "area": int(m.sum()),
                            "iscrowd": s["iscrowd"]})
        for s in preds[a["image_id"]]["segments_info"]:
            if s["category_id"] in thing:
                m = np.asfortranarray((p == s["id"]).astype(np.uint8))
                dts.append({"image_id": i, "category_id": s["category_id"],
                            "segmentation": mask_utils.encode(m), "score": s["score"]})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": gts,
                        "categories": [{"id": c} for c in sorted(thing)]}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dts), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        per_class[cid] = float(p[p > -1].mean()) if (p > -1).any() else None
    return ev.stats, per_class


@pytest.mark.parametrize("seed", [0, 1])
def test_ap_equals_pycocotools_on_the_same_masks_and_scores(tmp_path, seed):
    paths = _scored_set(tmp_path, seed)
    res = evaluate_files(paths[0], paths[2], paths[1], paths[3], metrics=["instances"])
    stats, per_class = _direct_coco(paths)
    ins = res.instances
    ours = [ins.ap, ins.ap50, ins.ap75, ins.ap_small, ins.ap_medium, ins.ap_large]
    for got, want in zip(ours, stats[:6]):
        assert (got is None and want == -1) or got == pytest.approx(want, abs=1e-12)
    assert ins.ap is not None and 0 < ins.ap < 1
    assert ins.per_class == pytest.approx(per_class, abs=1e-12)
    assert set(ins.per_class) == set(THINGS) | {300}  # every thing category of the list
    assert ins.per_class[300] is None  # a thing category without instances has no AP
    js = res.to_json()
    assert set(js) == {"instances"}
    assert set(js["instances"]) == {"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
                                    "per_class"}
    assert js["instances"]["per_class"]["300"] == {"ap": None}


def test_without_scores_ap_is_left_out_with_a_note(tmp_path):
    rng = np.random.default_rng(2)
    paths = write_sets(tmp_path, [make_pair(rng) for _ in range(2)])
    res = evaluate_files(paths[0], paths[2], paths[1], paths[3])
    assert res.instances is None and res.pq is not None and res.semantic is not None
    assert len(res.notes) == 1 and "no predicted segment" in res.notes[0]
    js = res.to_json()
    assert js["instances"] is None and js["notes"] == res.notes


def test_a_prediction_without_thing_segments_scores_ap_zero(tmp_path):
    """Zero detections against ground-truth instances: COCOeval's AP 0 (not left out as if
    the segments lacked scores)."""
    paths = _scored_set(tmp_path, n=2)
    d = json.loads(paths[2].read_text())
    for a in d["annotations"]:
        a["segments_info"] = []
        Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(paths[3] / a["file_name"])
    paths[2].write_text(json.dumps(d))
    res = evaluate_files(paths[0], paths[2], paths[1], paths[3])
    assert res.instances is not None and res.instances.num_detections == 0
    assert res.instances.num_gt > 0 and res.instances.ap == 0.0
    assert not res.notes


def test_scores_on_only_some_thing_segments_are_an_error(tmp_path):
    paths = _scored_set(tmp_path, n=2)
    d = json.loads(paths[2].read_text())
    thing = {c.id for c in CATEGORIES if c.isthing}
    s = next(s for s in d["annotations"][1]["segments_info"] if s["category_id"] in thing)
    del s["score"]
    paths[2].write_text(json.dumps(d))
    with pytest.raises(InputError, match=rf"image 'city_000001_000019': thing segment {s['id']} "
                                         "has no `score`"):
        evaluate_files(paths[0], paths[2], paths[1], paths[3], metrics=["instances"])
    # PQ alone does not need scores
    assert evaluate_files(paths[0], paths[2], paths[1], paths[3], metrics=["pq"]).pq is not None


# ----------------------------------------------------------------------------- Cityscapes

CITY = "copsville"


def _cityscapes_set(root, n=3, H=64, W=128, seed=0, caravan=False):
    """Cityscapes instanceIds ground truth (converted to panoptic by cityscapesscripts)
    and a scored panoptic prediction; returns the paths and the instanceIds files. With
    ``caravan``, every image has a caravan instance (void in the panoptic ground truth)
    that a car segment of the prediction covers."""
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    rng = np.random.default_rng(seed)
    gt_dir = root / "gtFine" / "val" / CITY
    gt_dir.mkdir(parents=True)
    pred_maps, pred_segs, gt_files = [], [], []
    for i in range(n):
        inst = np.full((H, W), 7, np.int32)           # road
        inst[: H // 3] = 23                           # sky
        inst[H // 3: H // 2, : W // 2] = 11           # building
        pr = np.zeros((H, W), np.int64)
        segs = {}
        for label in (7, 23, 11):
            sid = int(rng.integers(1, 2 ** 24))
            segs[sid] = (label, None)
            pr[inst == label] = sid
        k = {24: 0, 26: 0, 33: 0}
        for _ in range(int(rng.integers(4, 8))):
            label = int(rng.choice([24, 26, 33]))
            h, w = int(rng.integers(9, 24)), int(rng.integers(9, 30))
            y, x = int(rng.integers(0, H - h)), int(rng.integers(0, W - w))
            inst[y:y + h, x:x + w] = label * 1000 + k[label]
            k[label] += 1
            if rng.random() < 0.15:
                continue                              # missed
            dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
            plabel = label if rng.random() > 0.15 else int(rng.choice([24, 26, 33]))
            sid = int(rng.integers(1, 2 ** 24))
            segs[sid] = (plabel, float(rng.uniform(0.05, 1.0)))
            pr[max(0, y + dy):y + dy + h, max(0, x + dx):x + dx + w] = sid
        if caravan:
            inst[H // 2: H // 2 + 8, W - 20: W - 6] = 29000
            sid = int(rng.integers(1, 2 ** 24))
            segs[sid] = (26, 0.95)
            pr[H // 2: H // 2 + 8, W - 20: W - 6] = sid
        inst[H - 10:, : W // 4] = 26                  # a crowd of cars
        inst[H - 6:, W // 2: W // 2 + 20] = 9         # parking: ignored, void in panoptic
        inst[:4, :10] = 0                             # unlabeled
        for _ in range(2):                            # spurious small predictions
            sid = int(rng.integers(1, 2 ** 24))
            segs[sid] = (24, float(rng.uniform(0.05, 1.0)))
            y, x = int(rng.integers(0, H - 5)), int(rng.integers(0, W - 5))
            pr[y:y + 4, x:x + 4] = sid
        present = set(np.unique(pr).tolist())
        pred_maps.append(pr)
        pred_segs.append({s: v for s, v in segs.items() if s in present})
        f = gt_dir / f"{CITY}_{i:06d}_000019_gtFine_instanceIds.png"
        Image.fromarray(inst.astype(np.uint16)).save(f)
        gt_files.append(f)
    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(cityscapesPath=str(root / "gtFine"), outputFolder=str(root / "gtFine"),
                         setNames=["val"])
    gt_json = root / "gtFine" / "cityscapes_panoptic_val.json"
    gt = json.loads(gt_json.read_text())
    from copsctl.panoptic.format import Annotation, Segment, load_panoptic_json, write_panoptic_set

    cats = load_panoptic_json(gt_json).categories
    anns = [Annotation(a["image_id"], f"{a['image_id']}_pred.png",
                       [Segment(s, c, score=sc) for s, (c, sc) in segs.items()])
            for a, segs in zip(gt["annotations"], pred_segs)]
    write_panoptic_set(root / "pred.json", root / "pred", anns, pred_maps, cats)
    return gt_json, root / "pred.json", pred_maps, pred_segs, gt_files


def _official_instance_ap(root, pred_maps, pred_segs, gt_files, monkeypatch):
    """cityscapesscripts on the original instanceIds files and its own prediction format."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cs

    from copsctl.metrics.instances import _write_json_with_numpy

    res_dir = root / "results"
    res_dir.mkdir()
    pred_files = []
    for i, (pr, segs) in enumerate(zip(pred_maps, pred_segs)):
        lines = []
        for j, (sid, (label, score)) in enumerate(segs.items()):
            if label in (24, 26, 33):
                Image.fromarray(((pr == sid) * 255).astype(np.uint8)).save(
                    res_dir / f"m{i}_{j}.png")
                lines.append(f"m{i}_{j}.png {label} {score}\n")
        f = res_dir / f"{CITY}_{i:06d}_000019_pred.txt"
        f.write_text("".join(lines))
        pred_files.append(str(f))
    # The same two NumPy 2.4 shims copsctl applies (the tool predates NumPy 2.4).
    if not hasattr(np, "in1d"):
        monkeypatch.setattr(np, "in1d", lambda a, b, **kw: np.isin(a, b, **kw).ravel(),
                            raising=False)
    monkeypatch.setattr(cs, "writeDict2JSON", _write_json_with_numpy)
    for k, v in {"predictionPath": str(res_dir), "predictionWalk": None, "quiet": True,
                 "gtInstancesFile": str(root / "gtInstances.json"), "JSONOutput": False}.items():
        monkeypatch.setattr(cs.args, k, v)
    monkeypatch.chdir(root)
    with contextlib.redirect_stdout(io.StringIO()):
        return cs.evaluateImgLists(pred_files, [str(f) for f in gt_files], cs.args)


@pytest.mark.parametrize("originals", [True, False])
def test_cityscapes_ap_equals_cityscapesscripts(tmp_path, monkeypatch, originals):
    """With gtFine/val beside the panoptic ground truth, its instanceIds files are read,
    so a car predicted on a caravan (void in the panoptic ground truth) is the official
    tool's false positive; without them the files are rebuilt from the panoptic ground
    truth (here without caravans: the same numbers), with a note."""
    pytest.importorskip("cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling")
    from cityscapesscripts.helpers.labels import name2label

    gt_json, pred_json, pred_maps, pred_segs, gt_files = _cityscapes_set(tmp_path,
                                                                        caravan=originals)
    if not originals:
        moved = tmp_path / "gtFine" / "original_val"
        (tmp_path / "gtFine" / "val").rename(moved)
        gt_files = [moved / f.parent.name / f.name for f in gt_files]
    res = evaluate_files(gt_json, pred_json, metrics=["pq"], cityscapes_ap=True)
    assert any("rebuilt from the panoptic" in n for n in res.notes) == (not originals)
    official = _official_instance_ap(tmp_path, pred_maps, pred_segs, gt_files, monkeypatch)
    avg = official["averages"]
    assert res.cityscapes.ap == pytest.approx(avg["allAp"], abs=1e-12)
    assert res.cityscapes.ap50 == pytest.approx(avg["allAp50%"], abs=1e-12)
    assert 0 < res.cityscapes.ap < 1
    for name in ("person", "car", "bicycle"):
        cid = name2label[name].id
        assert res.cityscapes.per_class[cid]["ap"] == pytest.approx(avg["classes"][name]["ap"],
                                                                    abs=1e-12)
        assert res.cityscapes.per_class[cid]["ap50"] == pytest.approx(
            avg["classes"][name]["ap50%"], abs=1e-12)
    js = res.to_json()
    assert set(js["cityscapes_instances"]) == {"ap", "ap50", "per_class"}
    # classes without ground truth: cityscapesscripts gives NaN, reported as null
    assert js["cityscapes_instances"]["per_class"][str(name2label["truck"].id)]["ap"] is None


def test_cityscapes_ap_needs_cityscapes_label_ids(tmp_path):
    paths = _scored_set(tmp_path, n=1)
    with pytest.raises(InputError, match=r"--cityscapes-ap: category 300 \(never-thing\) is "
                                         "not a Cityscapes label id"):
        evaluate_files(paths[0], paths[2], paths[1], paths[3], metrics=["pq"],
                       cityscapes_ap=True)


def test_workers_give_the_same_numbers_for_every_metric(tmp_path):
    paths = _scored_set(tmp_path, seed=3, n=4)
    one = evaluate_files(paths[0], paths[2], paths[1], paths[3])
    two = evaluate_files(paths[0], paths[2], paths[1], paths[3], workers=2)
    assert one.instances is not None and one.semantic is not None
    assert one.to_json() == two.to_json()
