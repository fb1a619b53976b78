"""Cost-cache storage benchmark: bytes per image, write and read speed, effect on the solver.

Run as::

    PYTHONPATH=. python -m copsctl.benchmarks.cost_cache [--preset cityscapes|coco|hard|hard-coco]
        [--problems N] [--repeat R] [--demo-run RUN --demo-data DIR]

Solver problems (:func:`copsctl.costs.synthetic.make_problem`, seeds 0 .. N-1, the
problems of :mod:`copsctl.benchmarks.solver`): for each storage of :mod:`copsctl.costs.cache`
(float32, float16, quantized) all N problems are written to one cost file and read back.

- **MB/image**: file size over N (MB = 10^6 bytes);
- **write ms**: ``CostWriter.add`` per image (the file is closed at the end, included);
- **read ms**: ``CostFile.read`` per image, best of R passes over the file;
- **solve ms**: one default ``solve_amwc`` of the float32 costs (what ``solve`` spends per
  image and thread), the yardstick the reading is compared with;
- **objective**: the solution found on the stored costs, its objective (2) computed with
  the original float32 costs, relative to the float32 solution's (``true``); ``own``: the
  objective the solver reports on the stored costs, relative likewise (both: the largest
  absolute value over the problems); ``true mean``: the mean of the signed ``true``
  differences (positive = worse than float32; the greedy solver can also land on a
  better solution from slightly different costs); ``labels``: the largest fraction of
  nodes whose class differs from the float32 solution.

With ``--demo-run`` (a ``copsctl pretrain``/``demo`` run folder) and ``--demo-data`` (its
synthetic dataset), the network path as the demo runs it: ``dump-costs`` of the val split
with each storage, ``solve``, exact PQ.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..cpus import available_cpus

FAMILIES = {"cityscapes": ("cityscapes", 0.0), "coco": ("coco", 0.0),
            "hard": ("cityscapes", 1.0), "hard-coco": ("coco", 1.0)}
STORAGES = ("float32", "float16", "quantized")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_family(name: str, problems: int, repeat: int, folder: Path) -> list[dict]:
    """One row per storage for one family of problems."""
    from ..costs.cache import CostFile, CostWriter, solver_problem
    from ..solver import objective, solve_amwc
    from ..costs.synthetic import make_problem

    preset, difficulty = FAMILIES[name]
    probs = [make_problem(preset, seed=i, difficulty=difficulty) for i in range(problems)]
    part = probs[0].partitionable
    refs, solve_s = [], []
    for p in probs:
        t0 = time.perf_counter()
        refs.append(solve_amwc(*solver_problem(p.node_costs, p.edge_maps, p.distances, part)))
        solve_s.append(time.perf_counter() - t0)
    rows = []
    for storage in STORAGES:
        path = folder / f"{name}-{storage}.h5"
        t0 = time.perf_counter()
        with CostWriter(path, p.categories, p.distances, dtype=storage) as writer:
            for i, p in enumerate(probs):
                writer.add(p.node_costs, p.edge_maps, image_id=i)
        write_s = (time.perf_counter() - t0) / problems
        best_read = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            with CostFile(path) as cf:
                stored = [cf.read(i)[:2] for i in range(problems)]
            best_read = min(best_read, (time.perf_counter() - t0) / problems)
        true_rel, own_rel, label_diff = [], [], []
        for p, ref, (nc, em) in zip(probs, refs, stored):
            exact = solver_problem(p.node_costs, p.edge_maps, p.distances, part)
            res = solve_amwc(*solver_problem(nc, em, p.distances, part))
            true = objective(exact[0], exact[1], exact[2], res.labels, res.edge_cut)
            true_rel.append((true - ref.objective) / abs(ref.objective))
            own_rel.append((res.objective - ref.objective) / abs(ref.objective))
            label_diff.append(float(np.mean(res.labels != ref.labels)))
        rows.append({"family": name, "storage": storage, "problems": problems,
                     "mb_per_image": path.stat().st_size / problems / 1e6,
                     "write_ms": 1e3 * write_s, "read_ms": 1e3 * best_read,
                     "solve_ms": 1e3 * float(np.mean(solve_s)),
                     "true_rel_max": float(np.max(np.abs(true_rel))),
                     "true_rel_mean": float(np.mean(true_rel)),
                     "own_rel_max": float(np.max(np.abs(own_rel))),
                     "labels_max": float(np.max(label_diff))})
        path.unlink()
    return rows


def demo_pq(run: Path, data: Path, folder: Path) -> list[dict]:
    """dump-costs -> solve -> PQ of a run's val split with each storage."""
    from ..costs.network import dump_costs
    from ..metrics.pq import evaluate
    from ..panoptic.solve import solve_costs

    rows = []
    for storage in STORAGES:
        costs = folder / f"demo-{storage}.h5"
        summary = dump_costs(costs, run=run, overrides=[f"data.root={data}"], dtype=storage,
                             device="cpu")
        pred = folder / f"demo-{storage}"
        solve_costs(costs, pred)
        result = evaluate(recipe=str(run / "recipe.yaml"), overrides=[f"data.root={data}"],
                          pred_dir=pred)
        rows.append({"storage": storage, "images": summary["images"],
                     "mb_per_image": costs.stat().st_size / summary["images"] / 1e6,
                     "PQ": 100 * result.all.pq, "PQ_th": 100 * result.things.pq,
                     "PQ_st": 100 * result.stuff.pq})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", action="append", choices=sorted(FAMILIES),
                        help="family to run (repeatable); default: cityscapes and coco")
    parser.add_argument("--problems", type=int, default=3, help="problems per family")
    parser.add_argument("--repeat", type=int, default=3, help="read passes (best is shown)")
    parser.add_argument("--demo-run", type=Path, help="run folder for the PQ comparison")
    parser.add_argument("--demo-data", type=Path, help="the run's synthetic dataset folder")
    args = parser.parse_args(argv)
    if args.problems < 1 or args.repeat < 1:
        parser.error("--problems and --repeat must be at least 1")
    if (args.demo_run is None) != (args.demo_data is None):
        parser.error("--demo-run and --demo-data go together")
    families = args.preset or ["cityscapes", "coco"]
    print(f"# copsctl cost-cache benchmark\n\n{time.strftime('%Y-%m-%d %H:%M')}, "
          f"{available_cpus()} CPUs available, load average {_load()}\n")
    print("| family | storage | MB/image | write ms | read ms | solve ms | objective true | "
          "true mean | objective own | labels |\n|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in families:
            for r in run_family(name, args.problems, args.repeat, Path(tmp)):
                print(f"| {r['family']} | {r['storage']} | {r['mb_per_image']:.2f} | "
                      f"{r['write_ms']:.0f} | {r['read_ms']:.0f} | {r['solve_ms']:.0f} | "
                      f"{r['true_rel_max']:.1e} | {r['true_rel_mean']:+.1e} | "
                      f"{r['own_rel_max']:.1e} | "
                      f"{r['labels_max']:.1e} |", flush=True)
        if args.demo_run is not None:
            print("\n| storage | images | MB/image | PQ | PQ things | PQ stuff |\n"
                  "|---|---|---|---|---|---|")
            for r in demo_pq(args.demo_run, args.demo_data, Path(tmp)):
                print(f"| {r['storage']} | {r['images']} | {r['mb_per_image']:.3f} | "
                      f"{r['PQ']:.2f} | {r['PQ_th']:.2f} | {r['PQ_st']:.2f} |", flush=True)
    print(f"\nobjective columns: largest |relative difference| over the problems; load "
          f"average at the end: {_load()}")


if __name__ == "__main__":
    from . import run

    run(main)
