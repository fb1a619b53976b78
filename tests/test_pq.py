"""Exact PQ: every number against cityscapesscripts' ``evaluatePanoptic``.

The sets are generated here in the exact on-disk format (COCO panoptic JSON + RGB PNGs)
and cover crowd regions, void, IoU exactly 0.5, categories absent from both sides, label
swaps, merged and split instances, spurious small segments and ids that are not
Cityscapes-style.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pytest

from copsctl.errors import InputError
from copsctl.metrics.pq import (MissingPredictionWarning, PanopticPair, PQCounts, PQResult,
                                evaluate_arrays, evaluate_files, image_counts)
from copsctl.panoptic.format import (Annotation, Category, Segment, read_id_png,
                                    segments_from_id_map, write_id_png, write_panoptic_set)

evalpan = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")

# Non-contiguous, non-Cityscapes category ids; 5 and 300 never occur anywhere.
CATEGORIES = [
    Category(3, "road", False), Category(5, "never-stuff", False), Category(11, "sky", False),
    Category(17, "wall", False), Category(24, "person", True), Category(26, "car", True),
    Category(300, "never-thing", True), Category(4000, "bike", True),
]
STUFF = [3, 11, 17]
THINGS = [24, 26, 4000]


# ----------------------------------------------------------------------------- generator


class _Ids:
    """Hands out segment ids: Cityscapes-style (cat * 1000 + k) or random 24-bit."""

    def __init__(self, rng, style):
        self.rng, self.style, self.used, self.k = rng, style, set(), 0

    def __call__(self, cat):
        while True:
            self.k += 1
            sid = (cat * 1000 + self.k if self.style == "cityscapes"
                   else int(self.rng.integers(1, 256 ** 3)))
            if sid not in self.used:
                self.used.add(sid)
                return sid


def _rect(rng, H, W, hmin, hmax, wmin, wmax):
    h, w = int(rng.integers(hmin, hmax + 1)), int(rng.integers(wmin, wmax + 1))
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    return y, x, h, w


def make_pair(rng, H=40, W=56, style="random"):
    """A ground truth and a perturbed prediction of one image: (gt_ids, gt_segs, pr_ids, pr_segs)."""
    new_gt, new_pr = _Ids(rng, style), _Ids(rng, style)
    gt = np.zeros((H, W), np.int64)
    pr = np.zeros((H, W), np.int64)
    gcat, pcat, gcrowd = {}, {}, {}
    # Stuff: vertical bands; the prediction's boundaries move and a band may change class.
    cuts = np.sort(rng.choice(np.arange(8, W - 8), size=int(rng.integers(1, 4)), replace=False))
    edges = [0, *cuts.tolist(), W]
    for a, b in zip(edges[:-1], edges[1:]):
        c = int(rng.choice(STUFF))
        sid = new_gt(c); gcat[sid] = c; gt[:, a:b] = sid
        pc = c if rng.random() > 0.2 else int(rng.choice(STUFF))            # label swap
        da, db = (int(v) for v in rng.integers(-5, 6, size=2))
        pid = new_pr(pc); pcat[pid] = pc
        pr[:, max(0, a + da):max(0, min(W, b + db))] = pid
    # Things: rectangles, some crowd; the prediction jitters, drops, splits, merges, swaps.
    merge_target = {}
    for _ in range(int(rng.integers(3, 8))):
        c = int(rng.choice(THINGS))
        y, x, h, w = _rect(rng, H, W, 3, 14, 3, 16)
        crowd = rng.random() < 0.2
        sid = new_gt(c); gcat[sid] = c; gcrowd[sid] = crowd
        gt[y:y + h, x:x + w] = sid
        r = rng.random()
        if r < 0.12:
            continue                                                         # missed
        pc = c if rng.random() > 0.15 else int(rng.choice(THINGS))          # label swap
        dy, dx, dh, dw = (int(v) for v in rng.integers(-3, 4, size=4))
        y2, x2 = max(0, y + dy), max(0, x + dx)
        h2, w2 = max(1, h + dh), max(1, w + dw)
        if r < 0.3 and h2 >= 2:                                              # split
            for part in (slice(y2, y2 + h2 // 2), slice(y2 + h2 // 2, y2 + h2)):
                pid = new_pr(pc); pcat[pid] = pc; pr[part, x2:x2 + w2] = pid
        elif r < 0.45 and pc in merge_target:                                # merge
            pr[y2:y2 + h2, x2:x2 + w2] = merge_target[pc]
        else:
            pid = new_pr(pc); pcat[pid] = pc; pr[y2:y2 + h2, x2:x2 + w2] = pid
            merge_target[pc] = pid
    # Spurious small predictions, some on void.
    for _ in range(int(rng.integers(0, 4))):
        c = int(rng.choice(THINGS + STUFF))
        y, x, h, w = _rect(rng, H, W, 1, 3, 1, 4)
        pid = new_pr(c); pcat[pid] = c; pr[y:y + h, x:x + w] = pid
    # Void patches in both.
    for arr in (gt, gt, pr):
        if rng.random() < 0.6:
            y, x, h, w = _rect(rng, H, W, 2, 10, 2, 14)
            arr[y:y + h, x:x + w] = 0
    gsegs = segments_from_id_map(gt, gcat, gcrowd)
    psegs = segments_from_id_map(pr, pcat)
    return gt, gsegs, pr, psegs


def write_sets(tmp_path, pairs, name="set"):
    """Write ground-truth and prediction sets; return (gt_json, gt_dir, pred_json, pred_dir)."""
    gt_anns, pr_anns, gt_maps, pr_maps = [], [], [], []
    for i, (gt, gsegs, pr, psegs) in enumerate(pairs):
        image_id = f"city_{i:06d}_000019"
        gt_anns.append(Annotation(image_id, f"{image_id}_gtFine_panoptic.png", gsegs))
        pr_anns.append(Annotation(image_id, f"{image_id}_pred.png", psegs))
        gt_maps.append(gt)
        pr_maps.append(pr)
    d = tmp_path / name
    paths = (d / "gt.json", d / "gt", d / "pred.json", d / "pred")
    write_panoptic_set(paths[0], paths[1], gt_anns, gt_maps, CATEGORIES)
    write_panoptic_set(paths[2], paths[3], pr_anns, pr_maps, CATEGORIES)
    return paths


# ----------------------------------------------------------------------------- reference


def reference(paths, tmp_path):
    """(results, per-category stats) of cityscapesscripts, single process, output muted."""
    gt_json, gt_dir, pred_json, pred_dir = (str(p) for p in paths)

    def single_core(matched, gt_folder, pred_folder, categories):
        return evalpan.pq_compute_single_core(0, matched, gt_folder, pred_folder, categories)

    stats = {}

    def keep(matched, gt_folder, pred_folder, categories):
        stat = single_core(matched, gt_folder, pred_folder, categories)
        stats.update({k: (v.tp, v.fp, v.fn, v.iou) for k, v in stat.pq_per_cat.items()})
        return stat

    orig = evalpan.pq_compute_multi_core
    evalpan.pq_compute_multi_core = keep  # the reference forks cpu_count() workers otherwise
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            results = evalpan.evaluatePanoptic(gt_json, gt_dir, pred_json, pred_dir,
                                               str(tmp_path / "reference_results.json"))
    finally:
        evalpan.pq_compute_multi_core = orig
    return results, stats


def assert_same(ours: PQResult, ref: dict, ref_stats: dict):
    for group, key in (("All", ours.all), ("Things", ours.things), ("Stuff", ours.stuff)):
        for m in ("pq", "sq", "rq"):
            assert getattr(key, m) == pytest.approx(ref[group][m], abs=1e-9), (group, m)
        assert key.n == ref[group]["n"], group
    assert set(ours.per_class) == set(ref["per_class"])
    for cid, r in ours.per_class.items():
        for m in ("pq", "sq", "rq"):
            assert getattr(r, m) == pytest.approx(ref["per_class"][cid][m], abs=1e-9), (cid, m)
        tp, fp, fn, iou = ref_stats.get(cid, (0, 0, 0, 0.0))
        assert (r.tp, r.fp, r.fn) == (tp, fp, fn), cid
        assert r.iou == pytest.approx(iou, abs=1e-9), cid


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed,style", [(0, "random"), (1, "cityscapes"), (2, "random"),
                                        (3, "random"), (4, "cityscapes")])
def test_generated_sets_match_reference(tmp_path, seed, style):
    rng = np.random.default_rng(seed)
    pairs = [make_pair(rng, style=style) for _ in range(6)]
    paths = write_sets(tmp_path, pairs)
    ref, ref_stats = reference(paths, tmp_path)
    ours = evaluate_files(paths[0], paths[2], paths[1], paths[3])
    assert_same(ours, ref, ref_stats)
    # The in-memory path gives the same numbers without touching PNGs.
    mem = evaluate_arrays([PanopticPair(i, g, gs, p, ps) for i, (g, gs, p, ps)
                           in enumerate(pairs)], CATEGORIES)
    assert_same(mem, ref, ref_stats)
    # Every kind of event of interest occurred somewhere in these sets.
    totals = np.array([[r.tp, r.fp, r.fn] for r in ours.per_class.values()]).sum(0)
    assert (totals > 0).all()


def test_generated_sets_cover_the_edge_cases():
    """The generator really produces crowd, void, swaps, splits and absent categories."""
    rng = np.random.default_rng(0)
    crowd = void_gt = void_pr = 0
    used = set()
    for _ in range(30):
        gt, gsegs, pr, psegs = make_pair(rng)
        crowd += sum(s.iscrowd for s in gsegs)
        void_gt += int((gt == 0).any())
        void_pr += int((pr == 0).any())
        used |= {s.category_id for s in gsegs} | {s.category_id for s in psegs}
    assert crowd > 0 and void_gt > 0 and void_pr > 0
    assert 5 not in used and 300 not in used


def _handmade_pairs():
    """Hand-built images for the boundary rules; expected counts are stated per case."""
    H, W = 10, 12
    cases = []
    # (a) IoU exactly 0.5 (not a match): gt 4x4 = 16 px, prediction covers 8 of them and
    #     8 px outside: inter 8, union 24 -> 1/3; second prediction: inter 8, union 16.
    gt = np.zeros((H, W), np.int64); gt[:, :] = 70001
    gt[0:4, 0:4] = 1_234_567
    pr = np.zeros((H, W), np.int64); pr[:, :] = 90001
    pr[0:2, 0:4] = 555                          # 8 px inside the 16-px gt: IoU = 8/16
    cases.append((gt, {70001: 3, 1_234_567: 24}, {}, pr, {90001: 3, 555: 24}))
    # (b) IoU just above 0.5 thanks to void: gt 4x4, prediction 9 px = 8 on gt + 1 on void.
    gt = np.full((H, W), 70002, np.int64)
    gt[0:4, 0:4] = 42; gt[5, 0] = 0
    pr = np.full((H, W), 90002, np.int64)
    pr[0:2, 0:4] = 43; pr[5, 0] = 43
    cases.append((gt, {70002: 3, 42: 24}, {}, pr, {90002: 3, 43: 24}))
    # (c) Two crowd segments of one category: the reference uses the last listed one, so
    #     a prediction lying on the first is a false positive, on the second it is not.
    gt = np.full((H, W), 7, np.int64)
    gt[0:3, 0:3] = 100; gt[6:9, 6:9] = 200     # both crowd, category 26
    pr = np.full((H, W), 8, np.int64)
    pr[0:3, 0:3] = 11; pr[6:9, 6:9] = 12
    cases.append((gt, {7: 17, 100: 26, 200: 26}, {100: True, 200: True}, pr,
                  {8: 17, 11: 26, 12: 26}))
    # (d) A prediction exactly half on void (not ignored: the rule is "more than half").
    gt = np.full((H, W), 9, np.int64)
    gt[0:2, 0:2] = 0
    pr = np.full((H, W), 10, np.int64)
    pr[0:2, 0:4] = 13
    cases.append((gt, {9: 11}, {}, pr, {10: 11, 13: 24}))
    out = []
    for gt, gcat, gcrowd, pr, pcat in cases:
        out.append((gt, segments_from_id_map(gt, gcat, gcrowd), pr,
                    segments_from_id_map(pr, pcat)))
    return out


def test_handmade_boundary_cases_match_reference(tmp_path):
    pairs = _handmade_pairs()
    paths = write_sets(tmp_path, pairs)
    ref, ref_stats = reference(paths, tmp_path)
    ours = evaluate_files(paths[0], paths[2], paths[1], paths[3])
    assert_same(ours, ref, ref_stats)
    # Stated by hand: person (24): (a) 8/16 is not > 0.5 -> FP + FN; (b) 8/(9+16-8-1) = 0.5
    # exactly again -> FP + FN; (d) a 8-px person, 4 px on void (= half) -> FP.
    assert (ours.per_class[24].tp, ours.per_class[24].fp, ours.per_class[24].fn) == (0, 3, 2)
    # car (26): both gt segments are crowd (never FN); the prediction on the first crowd
    # region is a FP, the one on the last-listed crowd region is ignored.
    assert (ours.per_class[26].tp, ours.per_class[26].fp, ours.per_class[26].fn) == (0, 1, 0)


def test_image_counts_by_hand():
    # gt: stuff 1 everywhere except a 4x5 person; prediction: the person shifted by one
    # row (inter 15, union 25 -> IoU 0.6); stuff: 44 px each, inter 64 - 25 = 39 -> 39/49.
    gt = np.full((8, 8), 1, np.int64); gt[2:6, 1:6] = 2
    pr = np.full((8, 8), 5, np.int64); pr[3:7, 1:6] = 6
    cats = [Category(3, "road", False), Category(24, "person", True)]
    pair = PanopticPair("x", gt, [Segment(1, 3), Segment(2, 24)], pr,
                        [Segment(5, 3), Segment(6, 24)])
    c = image_counts(pair, cats)
    assert c.tp.tolist() == [1, 1] and c.fp.tolist() == [0, 0] and c.fn.tolist() == [0, 0]
    assert c.iou[1] == 15 / 25
    assert c.iou[0] == 39 / 49
    res = PQResult.from_counts(c + PQCounts.zeros([3, 24]), cats)
    assert res.things.pq == 15 / 25 and res.stuff.pq == 39 / 49
    assert res.all.n == 2


def test_empty_group_reports_zero_not_an_error():
    cats = [Category(3, "road", False), Category(24, "person", True)]
    gt = np.full((4, 4), 1, np.int64)
    pair = PanopticPair(0, gt, [Segment(1, 3)], gt.copy(), [Segment(1, 3)])
    res = evaluate_arrays([pair], cats)
    assert res.things.n == 0 and res.things.pq == 0.0
    assert res.stuff.pq == 1.0 and res.all.n == 1
    js = res.to_json()
    assert set(js) == {"All", "Things", "Stuff", "per_class"}
    assert js["per_class"]["24"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
    assert set(js["All"]) == {"pq", "sq", "rq", "n"}
    json.dumps(js)  # plain Python numbers only


def test_workers_give_the_same_numbers(tmp_path):
    rng = np.random.default_rng(7)
    pairs = [make_pair(rng) for _ in range(6)]
    paths = write_sets(tmp_path, pairs)
    one = evaluate_files(paths[0], paths[2], paths[1], paths[3], workers=1).to_json()
    two = evaluate_files(paths[0], paths[2], paths[1], paths[3], workers=2).to_json()
    assert one == two
    mem = [PanopticPair(i, g, gs, p, ps) for i, (g, gs, p, ps) in enumerate(pairs)]
    assert evaluate_arrays(mem, CATEGORIES, workers=2).to_json() == \
        evaluate_arrays(mem, CATEGORIES, workers=1).to_json()


def test_inputs_are_not_modified():
    rng = np.random.default_rng(3)
    gt, gsegs, pr, psegs = make_pair(rng)
    before = (gt.copy(), pr.copy(), [s.to_json() for s in gsegs], [s.to_json() for s in psegs])
    evaluate_arrays([PanopticPair(0, gt, gsegs, pr, psegs)], CATEGORIES)
    assert (gt == before[0]).all() and (pr == before[1]).all()
    assert [s.to_json() for s in gsegs] == before[2] and [s.to_json() for s in psegs] == before[3]


def test_huge_in_memory_ids_use_the_search_path():
    cats = [Category(3, "road", False), Category(24, "person", True)]
    gt = np.full((6, 6), 2 ** 40, np.int64); gt[0:3, 0:3] = 2 ** 33
    pr = np.full((6, 6), 7, np.int64); pr[0:3, 0:3] = 2 ** 50
    res = evaluate_arrays([PanopticPair(0, gt, [Segment(2 ** 40, 3), Segment(2 ** 33, 24)],
                                        pr, [Segment(7, 3), Segment(2 ** 50, 24)])], cats)
    assert res.all.pq == 1.0
    with pytest.raises(InputError, match=r"segment id 9 is in the prediction PNG but not"):
        pr2 = pr.copy(); pr2[5, 5] = 9
        evaluate_arrays([PanopticPair(0, gt, [Segment(2 ** 40, 3), Segment(2 ** 33, 24)],
                                      pr2, [Segment(7, 3), Segment(2 ** 50, 24)])], cats)


@pytest.mark.parametrize("side", ["gt", "pred"])
@pytest.mark.parametrize("where", ["same-bucket", "below", "between", "above", "2**24-1"])
def test_unlisted_ids_are_found_whatever_their_bucket(side, where):
    from copsctl.metrics.pq import _hash_table

    cats = [Category(3, "road", False), Category(24, "person", True)]
    rng = np.random.default_rng(5)
    ids = rng.choice(np.arange(1000, 2 ** 24 - 1), size=6, replace=False)
    gt = np.repeat(ids[:3], 8).reshape(4, 6)
    pr = np.repeat(ids[3:], 8).reshape(4, 6)
    gsegs = [Segment(int(i), 3 if k else 24) for k, i in enumerate(ids[:3])]
    psegs = [Segment(int(i), 3 if k else 24) for k, i in enumerate(ids[3:])]
    target = gt if side == "gt" else pr
    listed = np.sort(np.concatenate([[0], np.unique(target)])).astype(np.uint32)
    if where == "same-bucket":  # an id the hash puts where a listed id sits
        mult, shift, _, _ = _hash_table(listed)
        bucket = (listed * mult) >> shift
        cand = np.arange(1, 2 ** 20, dtype=np.uint32)
        hit = cand[np.isin((cand * mult) >> shift, bucket[1:]) & ~np.isin(cand, listed)]
        bad = int(hit[0])
    else:
        bad = {"below": int(listed[1]) - 1, "between": (int(listed[1]) + int(listed[2])) // 2,
               "above": int(listed[-1]) + 1, "2**24-1": 2 ** 24 - 1}[where]
    target[2, 3] = bad
    name = "ground truth" if side == "gt" else "prediction"
    with pytest.raises(InputError, match=rf"segment id {bad} is in the {name} PNG but not"):
        evaluate_arrays([PanopticPair(0, gt, gsegs, pr, psegs)], cats)


def test_hash_and_search_paths_agree(tmp_path, monkeypatch):
    import copsctl.metrics.pq as pq_module

    rng = np.random.default_rng(8)
    paths = write_sets(tmp_path, [make_pair(rng, style="random") for _ in range(4)])
    hashed = evaluate_files(paths[0], paths[2], paths[1], paths[3])
    monkeypatch.setattr(pq_module, "_HASH_MULTIPLIERS", ())  # no hash: binary search
    searched = evaluate_files(paths[0], paths[2], paths[1], paths[3])
    assert hashed.to_json() == searched.to_json()


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def small_set(tmp_path):
    rng = np.random.default_rng(11)
    pairs = [make_pair(rng, H=16, W=24, style="cityscapes") for _ in range(3)]
    return write_sets(tmp_path, pairs)


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_missing_prediction_is_an_error_listing_ids(small_set):
    gt_json, gt_dir, pred_json, pred_dir = small_set
    _edit_json(pred_json, lambda d: d["annotations"].pop(1))
    with pytest.raises(InputError, match=r"no prediction for 1 ground-truth image\(s\): "
                                         r"'city_000001_000019'") as e:
        evaluate_files(gt_json, pred_json, gt_dir, pred_dir)
    assert "\n" not in str(e.value)


def test_allow_missing_counts_false_negatives(small_set):
    gt_json, gt_dir, pred_json, pred_dir = small_set
    full = evaluate_files(gt_json, pred_json, gt_dir, pred_dir)
    dropped = json.loads(gt_json.read_text())["annotations"][1]
    pred_json_backup = pred_json.read_text()
    _edit_json(pred_json, lambda d: d["annotations"].pop(1))
    with pytest.warns(MissingPredictionWarning, match="city_000001_000019"):
        res = evaluate_files(gt_json, pred_json, gt_dir, pred_dir, allow_missing=True)
    # Versus the full set: that image's TP turn into FN and its FP disappear.
    pred_ann = json.loads(pred_json_backup)["annotations"][1]
    img = image_counts(PanopticPair(
        dropped["image_id"], read_id_png(gt_dir / dropped["file_name"]),
        [Segment(s["id"], s["category_id"], iscrowd=bool(s["iscrowd"]))
         for s in dropped["segments_info"]],
        read_id_png(pred_dir / pred_ann["file_name"]),
        [Segment(s["id"], s["category_id"]) for s in pred_ann["segments_info"]]), CATEGORIES)
    for i, c in enumerate(CATEGORIES):
        a, b = full.per_class[c.id], res.per_class[c.id]
        assert (b.tp, b.fp, b.fn) == (a.tp - img.tp[i], a.fp - img.fp[i], a.fn + img.tp[i])
    # Equivalent to writing an all-void prediction for that image.
    _edit_json(pred_json, lambda d: d["annotations"].insert(
        1, {"image_id": dropped["image_id"], "file_name": "void.png", "segments_info": []}))
    write_id_png(pred_dir / "void.png", np.zeros((16, 24), np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explicit = evaluate_files(gt_json, pred_json, gt_dir, pred_dir)
    assert explicit.to_json() == res.to_json()
    assert full.to_json() != res.to_json()


def test_png_id_not_in_json(small_set):
    gt_json, gt_dir, pred_json, pred_dir = small_set
    first = json.loads(pred_json.read_text())["annotations"][0]
    dropped = first["segments_info"][0]["id"]
    _edit_json(pred_json, lambda d: d["annotations"][0]["segments_info"].pop(0))
    with pytest.raises(InputError, match=rf"image 'city_000000_000019': segment id {dropped} "
                                         r"is in the prediction .* PNG but not in its JSON"):
        evaluate_files(gt_json, pred_json, gt_dir, pred_dir)


def test_json_id_not_in_png(small_set):
    gt_json, gt_dir, pred_json, pred_dir = small_set
    _edit_json(gt_json, lambda d: d["annotations"][2]["segments_info"].append(
        {"id": 999999, "category_id": 24, "iscrowd": 0, "area": 0, "bbox": [0, 0, 0, 0]}))
    with pytest.raises(InputError, match=r"image 'city_000002_000019': segment id 999999 is "
                                         r"in the ground-truth .* JSON but not in its PNG"):
        evaluate_files(gt_json, pred_json, gt_dir, pred_dir)


def test_unknown_category(small_set):
    gt_json, gt_dir, pred_json, pred_dir = small_set

    def edit(d):
        d["annotations"][0]["segments_info"][0]["category_id"] = 77
    _edit_json(pred_json, edit)
    with pytest.raises(InputError, match=r"image 'city_000000_000019': predicted segment id "
                                         r"\d+ has unknown category_id 77"):
        evaluate_files(gt_json, pred_json, gt_dir, pred_dir)


def test_wrong_png_size_and_mode(small_set):
    from PIL import Image
    gt_json, gt_dir, pred_json, pred_dir = small_set
    name = json.loads(pred_json.read_text())["annotations"][0]["file_name"]
    Image.fromarray(np.zeros((16, 23, 3), np.uint8)).save(pred_dir / name)
    with pytest.raises(InputError, match=r"image 'city_000000_000019': .*PNG size 16x23"):
        evaluate_files(gt_json, pred_json, gt_dir, pred_dir)
    Image.fromarray(np.zeros((16, 24), np.uint8), mode="L").save(pred_dir / name)
    with pytest.raises(InputError, match=r"image 'city_000000_000019': .*must be RGB \(or RGBA\) mode, got L"):
        evaluate_files(gt_json, pred_json, gt_dir, pred_dir)


def test_gt_area_disagreeing_with_png(small_set):
    gt_json, gt_dir, pred_json, pred_dir = small_set

    def edit(d):
        d["annotations"][0]["segments_info"][0]["area"] += 1
    _edit_json(gt_json, edit)
    with pytest.raises(InputError, match=r"has area \d+ in the JSON but \d+ pixels in the PNG"):
        evaluate_files(gt_json, pred_json, gt_dir, pred_dir)


def test_duplicate_ids_and_bad_maps():
    cats = [Category(3, "road", False)]
    gt = np.full((4, 4), 1, np.int64)
    with pytest.raises(InputError, match="segment id 1 is listed twice"):
        evaluate_arrays([PanopticPair(0, gt, [Segment(1, 3), Segment(1, 3)], gt,
                                      [Segment(1, 3)])], cats)
    with pytest.raises(InputError, match=r"`pred_ids` \(shape \(4,\)\) must have shape"):
        evaluate_arrays([PanopticPair(0, gt, [Segment(1, 3)], gt[0], [Segment(1, 3)])], cats)
    with pytest.raises(InputError, match=r"prediction size 4x3 \(HxW\) differs"):
        evaluate_arrays([PanopticPair(0, gt, [Segment(1, 3)], gt[:, :3], [Segment(1, 3)])],
                        cats)
    with pytest.raises(InputError, match="`workers` \\(0\\) must be at least 1"):
        evaluate_arrays([], cats, workers=0)


def test_png_round_trip_of_24_bit_ids(tmp_path):
    """The id PNG codec used above: every 24-bit id survives, in both read dtypes."""
    ids = np.random.default_rng(5).integers(0, 256 ** 3, size=(7, 9))
    ann = Annotation("a", "a.png", segments_from_id_map(ids, {int(v): 3 for v in np.unique(ids)}))
    write_panoptic_set(tmp_path / "s.json", tmp_path / "s", [ann], [ids], CATEGORIES)
    back = read_id_png(tmp_path / "s" / "a.png")
    assert back.dtype == np.int64 and (back == ids).all()
    assert (read_id_png(tmp_path / "s" / "a.png", dtype=np.uint32) == ids).all()
    with pytest.raises(InputError, match=r"must have one map per annotation"):
        write_panoptic_set(tmp_path / "t.json", tmp_path / "t", [ann], [], CATEGORIES)
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "t").exists()


def test_benchmark_script_runs_and_agrees(capsys):
    from copsctl.benchmarks.pq import main
    main(["--images", "2", "--height", "64", "--width", "96", "--repeat", "1", "--workers", "2",
          "--runs", "1"])
    out = capsys.readouterr().out
    assert "all numbers agree to 1e-9: True" in out
    assert "cityscapesscripts evaluatePanoptic" in out and "in memory (workers=2)" in out
    assert "random ids" in out and "whole commands, start-up included" in out
    assert "copsctl evaluate --metrics pq" in out and "load average" in out
