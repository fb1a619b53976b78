"""Exact PQ speed: cityscapesscripts' ``evaluatePanoptic`` against copsctl, one process each.

Run as ``python -m copsctl.benchmarks.pq [--images 150 --height 256 --width 512]``.

It generates a Cityscapes-like set (stuff regions with irregular boundaries, 20-40
segments per image, void, crowd regions) and a prediction with moved boundaries, missed,
split, merged and relabelled instances and spurious small segments, gives every segment
a random 24-bit id as COCO's are (``--ids sequential``: 1, 2, 3, ...) and every predicted
segment a random ``score``, writes both as COCO panoptic JSON + PNGs, then times on the
same files:

- **whole commands**, each a fresh process, start-up included: ``copsctl evaluate
  --metrics pq``, ``--metrics pq,semantic`` and ``copsctl evaluate`` with all its metrics
  (PQ, semantic, instance AP), each with ``--workers 1``, against a one-process run of
  cityscapesscripts' ``evaluatePanoptic`` (its multi-core step replaced by a direct call
  of its own ``pq_compute_single_core``, the function each of its pool workers runs);
  then ``--metrics pq`` and all metrics again with the default ``--workers`` (all CPUs).
  The commands run in turn, A B A B ..., and the ratio to the reference is taken pair by
  pair; medians are printed;
- **in process**: ``evaluatePanoptic`` as above, :func:`copsctl.metrics.pq.evaluate_files`
  (``workers=1``), :func:`copsctl.metrics.pq.evaluate_arrays` on id maps already in
  memory (what training uses; no PNG decoding), Pillow's decoding of all the PNGs alone
  (the floor of any file-based evaluation) and, with ``--workers N``, both copsctl paths
  again with N threads (this process keeps freed memory as the command does:
  :func:`copsctl.metrics.evaluation.keep_freed_memory`); best of ``--repeat`` rounds, the rows in turn so that load from
  other processes affects them alike.

It checks that all PQ numbers agree to 1e-9 and prints tables of seconds, images per
second and speed relative to cityscapesscripts, and the machine load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..cpus import available_cpus
from ..metrics.evaluation import keep_freed_memory
from ..metrics.pq import PanopticPair, PQResult, evaluate_arrays, evaluate_files
from ..panoptic.format import (Annotation, Category, Segment, segments_from_id_map,
                              write_panoptic_set)

CATEGORIES = [Category(i, f"stuff{i}", False) for i in (7, 8, 11, 17, 21, 23)] + \
             [Category(i, f"thing{i}", True) for i in (24, 25, 26, 27, 28, 33)]
_STUFF = [c.id for c in CATEGORIES if not c.isthing]
_THINGS = [c.id for c in CATEGORIES if c.isthing]


def _voronoi(seeds: np.ndarray, H: int, W: int, warp: np.ndarray) -> np.ndarray:
    """(H, W) index of the nearest seed, with a smooth warp so boundaries are not straight."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    yy += warp[0]
    xx += warp[1]
    best = np.full((H, W), np.inf, np.float32)
    arg = np.zeros((H, W), np.int64)
    for k, (sy, sx) in enumerate(seeds):
        d = (yy - sy) ** 2 + (xx - sx) ** 2
        closer = d < best
        best[closer] = d[closer]
        arg[closer] = k
    return arg


def _smooth_warp(rng, H, W, amp):
    """A low-frequency displacement field (2, H, W): bilinear upsampling of coarse noise."""
    coarse = rng.normal(0, amp, size=(2, 5, 9)).astype(np.float32)
    ys = np.linspace(0, 4, H, dtype=np.float32)
    xs = np.linspace(0, 8, W, dtype=np.float32)
    y0 = np.minimum(ys.astype(int), 3); x0 = np.minimum(xs.astype(int), 7)
    fy = (ys - y0)[:, None]; fx = (xs - x0)[None, :]
    out = np.empty((2, H, W), np.float32)
    for c in range(2):
        g = coarse[c]
        out[c] = ((1 - fy) * (1 - fx) * g[y0][:, x0] + (1 - fy) * fx * g[y0][:, x0 + 1]
                  + fy * (1 - fx) * g[y0 + 1][:, x0] + fy * fx * g[y0 + 1][:, x0 + 1])
    return out


def _ellipse(ids, cy, cx, ry, rx, value):
    H, W = ids.shape
    y0, y1 = max(0, int(cy - ry)), min(H, int(cy + ry) + 1)
    x0, x1 = max(0, int(cx - rx)), min(W, int(cx + rx) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1
    ids[y0:y1, x0:x1][inside] = value


def make_pair(rng: np.random.Generator, H: int = 512, W: int = 1024):
    """One Cityscapes-like image: ``(gt_ids, gt_segments, pred_ids, pred_segments)``."""
    next_id = iter(range(1, 10 ** 6))
    gt = np.zeros((H, W), np.int64)
    pr = np.zeros((H, W), np.int64)
    gcat, pcat, gcrowd = {}, {}, {}
    # Stuff: warped Voronoi cells; the prediction moves the seeds and the warp a little.
    n_stuff = int(rng.integers(5, 11))
    seeds = np.stack([rng.uniform(0, H, n_stuff), rng.uniform(0, W, n_stuff)], 1)
    warp = _smooth_warp(rng, H, W, 40.0)
    cell = _voronoi(seeds, H, W, warp)
    pcell = _voronoi(seeds + rng.normal(0, 6, seeds.shape), H, W,
                     warp + _smooth_warp(rng, H, W, 4.0))
    for k in range(n_stuff):
        c = int(rng.choice(_STUFF))
        sid = next(next_id); gcat[sid] = c; gt[cell == k] = sid
        pc = c if rng.random() > 0.1 else int(rng.choice(_STUFF))
        pid = next(next_id); pcat[pid] = pc; pr[pcell == k] = pid
    # Things: ellipses, a few crowd; predictions shifted, scaled, missed, split, relabelled.
    for _ in range(int(rng.integers(15, 30))):
        c = int(rng.choice(_THINGS))
        cy, cx = rng.uniform(H * 0.3, H * 0.9), rng.uniform(0, W)
        ry, rx = rng.uniform(6, 60), rng.uniform(6, 60)
        sid = next(next_id); gcat[sid] = c; gcrowd[sid] = bool(rng.random() < 0.05)
        _ellipse(gt, cy, cx, ry, rx, sid)
        r = rng.random()
        if r < 0.1:
            continue
        pc = c if rng.random() > 0.1 else int(rng.choice(_THINGS))
        py, px = cy + rng.normal(0, ry * 0.15), cx + rng.normal(0, rx * 0.15)
        pry, prx = ry * rng.uniform(0.8, 1.2), rx * rng.uniform(0.8, 1.2)
        if r < 0.2:
            for half in (-1, 1):
                pid = next(next_id); pcat[pid] = pc
                _ellipse(pr, py, px + half * prx / 2, pry, prx / 2, pid)
        else:
            pid = next(next_id); pcat[pid] = pc
            _ellipse(pr, py, px, pry, prx, pid)
    for _ in range(int(rng.integers(2, 8))):  # spurious small predictions
        c = int(rng.choice(_THINGS + _STUFF))
        pid = next(next_id); pcat[pid] = c
        _ellipse(pr, rng.uniform(0, H), rng.uniform(0, W), rng.uniform(2, 6),
                 rng.uniform(2, 6), pid)
    gt[int(H * 0.88):, int(W * 0.2):int(W * 0.8)] = 0  # ego vehicle: void
    gt[:, :4] = 0
    pr[int(H * 0.9):, int(W * 0.25):int(W * 0.75)] = 0
    return gt, segments_from_id_map(gt, gcat, gcrowd), pr, segments_from_id_map(pr, pcat)


def random_ids(rng: np.random.Generator, ids: np.ndarray, segments) -> tuple:
    """The id map and segment table with every segment id replaced by a distinct random
    24-bit id (COCO's ids are such values, R + 256 G + 256² B of a colour)."""
    new = rng.choice(np.arange(1, 256 ** 3), size=len(segments), replace=False)
    old = np.array([s.id for s in segments], np.int64)
    order = np.argsort(old)
    lut_keys, lut_vals = old[order], new[order]
    out = np.zeros_like(ids)
    nz = ids != 0
    out[nz] = lut_vals[np.searchsorted(lut_keys, ids[nz])]
    mapping = dict(zip(old.tolist(), new.tolist()))
    return out, [Segment(mapping[s.id], s.category_id, s.area, s.bbox, s.iscrowd, s.score)
                 for s in segments]


_REFERENCE_SCRIPT = """
import sys
from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as ref
def single_core(matched, gt_folder, pred_folder, categories):
    return ref.pq_compute_single_core(0, matched, gt_folder, pred_folder, categories)
ref.pq_compute_multi_core = single_core
ref.evaluatePanoptic(*sys.argv[1:6])
"""


def _run_timed(cmd, env) -> tuple[float, float]:
    """(wall, cpu) seconds of one command, a fresh process; output discarded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed: {proc.stderr.strip()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def time_commands(commands, runs: int, env=None):
    """Median wall and cpu seconds of each ``(name, argv)``, and the median pair-by-pair
    ratio of wall and cpu to the first command (the reference). The commands run in
    turn, once each per round, after one untimed round."""
    env = dict(os.environ if env is None else env)
    rows = {name: [] for name, _ in commands}
    for r in range(runs + 1):
        for name, cmd in commands:
            t = _run_timed(cmd, env)
            if r:
                rows[name].append(t)
    ref = np.array(rows[commands[0][0]])
    out = []
    for name, _ in commands:
        t = np.array(rows[name])
        out.append((name, float(np.median(t[:, 0])), float(np.median(t[:, 1])),
                    float(np.median(t[:, 0] / ref[:, 0])), float(np.median(t[:, 1] / ref[:, 1]))))
    return out


def _reference(paths, results_file):
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as ref

    def single_core(matched, gt_folder, pred_folder, categories):
        # The function each of the reference's pool workers runs, here on all images.
        return ref.pq_compute_single_core(0, matched, gt_folder, pred_folder, categories)

    orig = ref.pq_compute_multi_core
    ref.pq_compute_multi_core = single_core
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return ref.evaluatePanoptic(str(paths[0]), str(paths[1]), str(paths[2]),
                                        str(paths[3]), str(results_file))
    finally:
        ref.pq_compute_multi_core = orig


def _max_difference(ours: PQResult, ref: dict) -> float:
    diff = 0.0
    for group, g in (("All", ours.all), ("Things", ours.things), ("Stuff", ours.stuff)):
        diff = max(diff, *(abs(getattr(g, m) - ref[group][m]) for m in ("pq", "sq", "rq")))
        if g.n != ref[group]["n"]:
            return float("inf")
    for cid, r in ours.per_class.items():
        diff = max(diff, *(abs(getattr(r, m) - ref["per_class"][cid][m])
                           for m in ("pq", "sq", "rq")))
    return diff


def _decode_all(pngs) -> None:
    """Decode every PNG with Pillow: the part of any file-based evaluation that is fixed."""
    for path in pngs:
        with Image.open(path) as im:
            im.load()


def _time_rows(rows, repeat):
    """Best-of-``repeat`` seconds and last result of each ``(name, fn)``.

    The rows run in turn within each round, so that load from other processes on a
    shared machine affects them alike.
    """
    best = {name: float("inf") for name, _ in rows}
    out = {}
    for _ in range(repeat):
        for name, fn in rows:
            t0 = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return [(name, best[name], out[name]) for name, _ in rows]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=150)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--ids", choices=("random", "sequential"), default="random",
                    help="segment ids: random 24-bit (default, as COCO's) or 1, 2, 3, ...")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many in-process rounds")
    ap.add_argument("--runs", type=int, default=5,
                    help="whole-command runs of each command (0: skip them)")
    ap.add_argument("--workers", type=int, default=0,
                    help="also time the in-process copsctl paths with this many workers")
    ap.add_argument("--out", type=Path, default=None, help="keep the generated set here")
    args = ap.parse_args(argv)
    keep_freed_memory()  # as `copsctl evaluate` does, for the in-process rows alike

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    pairs = []
    for _ in range(args.images):
        g, gs, p, ps = make_pair(rng, args.height, args.width)
        ps = [Segment(s.id, s.category_id, s.area, s.bbox, s.iscrowd,
                      score=float(rng.uniform(0.05, 1.0))) for s in ps]
        if args.ids == "random":
            (g, gs), (p, ps) = random_ids(rng, g, gs), random_ids(rng, p, ps)
        pairs.append((g, gs, p, ps))
    nseg = np.mean([len(p[1]) for p in pairs]), np.mean([len(p[3]) for p in pairs])
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        gt_anns, pr_anns = [], []
        for i, (_, gs, _, ps) in enumerate(pairs):
            gt_anns.append(Annotation(f"img{i:04d}", f"img{i:04d}_gt.png", gs))
            pr_anns.append(Annotation(f"img{i:04d}", f"img{i:04d}_pred.png", ps))
        paths = (root / "gt.json", root / "gt", root / "pred.json", root / "pred")
        write_panoptic_set(paths[0], paths[1], gt_anns, [p[0] for p in pairs], CATEGORIES)
        write_panoptic_set(paths[2], paths[3], pr_anns, [p[2] for p in pairs], CATEGORIES)
        print(f"{args.images} images {args.height}x{args.width}, {args.ids} ids, "
              f"{nseg[0]:.1f} ground-truth and {nseg[1]:.1f} predicted segments per image "
              f"(generated and written in {time.perf_counter() - t0:.1f} s)")
        mem = [PanopticPair(i, g, gs, p, ps) for i, (g, gs, p, ps) in enumerate(pairs)]

        ref_name = "cityscapesscripts evaluatePanoptic (1 process)"
        rows = [(ref_name, lambda: _reference(paths, root / "reference.json")),
                ("copsctl evaluate_files (workers=1)",
                 lambda: evaluate_files(paths[0], paths[2], paths[1], paths[3])),
                ("copsctl evaluate_arrays, in memory (workers=1)",
                 lambda: evaluate_arrays(mem, CATEGORIES))]
        pngs = sorted(paths[1].iterdir()) + sorted(paths[3].iterdir())
        rows.append(("(floor: Pillow PNG decoding alone, gt + pred)", lambda: _decode_all(pngs)))
        w = args.workers
        if w > 1:
            rows += [(f"copsctl evaluate_files (workers={w})",
                      lambda: evaluate_files(paths[0], paths[2], paths[1], paths[3], workers=w)),
                     (f"copsctl evaluate_arrays, in memory (workers={w})",
                      lambda: evaluate_arrays(mem, CATEGORIES, workers=w))]
        timed = _time_rows(rows, args.repeat)

        commands = []
        if args.runs > 0:
            import copsctl

            env = dict(os.environ)
            src = str(Path(copsctl.__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in
                                                         [env.get("PYTHONPATH")] if p])
            files = [str(paths[0]), str(paths[1]), str(paths[2]), str(paths[3])]
            default = [sys.executable, "-m", "copsctl", "evaluate", "--gt-json", files[0],
                       "--gt", files[1], "--pred-json", files[2], "--pred", files[3]]
            cop = [*default, "--workers", "1"]
            pq_json, all_json = root / "copsctl_pq.json", root / "copsctl_all.json"
            commands = time_commands([
                ("cityscapesscripts evaluatePanoptic", [sys.executable, "-c", _REFERENCE_SCRIPT,
                                                       *files, str(root / "ref_cmd.json")]),
                ("copsctl evaluate --metrics pq", [*cop, "--metrics", "pq", "--json",
                                                   str(pq_json)]),
                ("copsctl evaluate --metrics pq,semantic", [*cop, "--metrics", "pq,semantic"]),
                ("copsctl evaluate (pq, semantic, instances)", [*cop, "--json", str(all_json)]),
                (f"copsctl evaluate (all), default ({available_cpus()} workers)", [*default]),
                (f"copsctl evaluate --metrics pq, default ({available_cpus()} workers)",
                 [*default, "--metrics", "pq"]),
            ], args.runs, env)
            from_cmd = [json.loads(pq_json.read_text()), json.loads(all_json.read_text())]
    ref = timed[0][2]
    t_ref = timed[0][1]
    rows = [(name, t, None if res is None else 0.0 if name == ref_name
             else _max_difference(res, ref)) for name, t, res in timed]

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"{available_cpus()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}")
    if commands:
        print(f"\nwhole commands, start-up included (median of {args.runs} runs)")
        print(f"{'command':<46} {'wall s':>7} {'cpu s':>7} {'wall/ref':>9} {'cpu/ref':>8}")
        for name, wall, cpu, rw, rc in commands:
            print(f"{name:<46} {wall:7.2f} {cpu:7.2f} {rw:9.2f} {rc:8.2f}")
        for data in from_cmd:
            diff = max(abs(data[g][m] - ref[g][m]) for g in ("All", "Things", "Stuff")
                       for m in ("pq", "sq", "rq"))
            diff = max(diff, *(abs(data["per_class"][str(c)][m] - ref["per_class"][c][m])
                               for c in ref["per_class"] for m in ("pq", "sq", "rq")))
            rows.append(("copsctl evaluate (command) --json", 0.0, diff))
    print(f"\nin process (best of {args.repeat})")
    print(f"{'path':<50} {'seconds':>8} {'images/s':>9} {'speed-up':>9} {'max |diff|':>11}")
    for name, t, diff in rows:
        if name.startswith("copsctl evaluate (command)"):
            continue
        shown = "-" if diff is None else f"{diff:.1e}"
        print(f"{name:<50} {t:8.2f} {args.images / t:9.1f} {t_ref / t:8.1f}x {shown:>11}")
    worst = max(d for _, _, d in rows if d is not None)
    print(f"PQ {ref['All']['pq']:.4f} (things {ref['Things']['pq']:.4f}, stuff "
          f"{ref['Stuff']['pq']:.4f}); all numbers agree to 1e-9: {worst <= 1e-9}")
    if worst > 1e-9:
        raise SystemExit("copsctl and cityscapesscripts disagree")


if __name__ == "__main__":
    from . import run

    run(main)
