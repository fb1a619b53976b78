"""Solver benchmark on realistic synthetic problems; prints markdown tables.

Run as::

    PYTHONPATH=. .venv/bin/python -m copsctl.benchmarks.solver
        [--preset cityscapes|coco|hard|hard-coco|mwc|mwc-coco] [--problems N]
        [--repeat R] [--workers W] [--no-memory]

Families (problems from :func:`copsctl.costs.synthetic.make_problem`, seeds 0 .. N-1):

- ``cityscapes``: 256 x 512 nodes, 19 classes, distances (1, 4, 16, 32, 64, 128),
  1.38 M edges;
- ``coco``: 160 x 160 nodes, 133 classes, distances (1, 4, 16, 32, 64);
- ``hard`` and ``hard-coco``: the same sizes with weak, noisy edges: ``difficulty``
  1, 0.875, 0.75 for seeds 0, 1, 2 (repeating), which gives an edge accuracy of about
  0.72-0.80, and every edge cost multiplied by 0.25, so that the node costs dominate and
  the solver must weigh many small edge costs;
- ``mwc`` and ``mwc-coco``: the multiway cut of the fine-tuning backward pass on the
  normal problems: one label per ground-truth segment, none partitionable (as
  :func:`copsctl.train.amwc_layer.algorithm1` builds them); the cost of label ``j`` at a
  node is the cost of the segment's class there, minus 0.5 inside the segment (a
  stand-in for the perturbation ``λ ∂L/∂x``, which tells labels of one class apart).

Per problem, all in one run and one process, three solvers, each with its objective
(value of (2)), its best wall-clock time of R runs (one thread, including the Python
wrapper's input checks) and its peak memory:

- **default**: ``SolverOptions()``;
- **GAEC**: ``SolverOptions(precluster_max_size=1, improve=False)``: plain greedy
  additive edge contraction on the pixel graph;
- **GAEC+imp**: ``SolverOptions(precluster_max_size=1)``: plain GAEC followed by the
  improvement phase, the quality reference the default is held to;
- **legacy**: the earlier default (``LEGACY_SOLVER``: 128-node superpixels of any
  classes while a merge gains, no superpixel or piece moves), objective and time only;

and beside them the objective of the ground-truth labelling (``gt obj``: ground-truth
classes and segments, edges between segments cut; with MWC the labels are the
segments), ``Δ obj`` = default - GAEC+imp (negative: the default is better),
``x GAEC`` = default time / GAEC time, and the connected-components yardstick:

- **cc**: ``scipy.sparse.csgraph.connected_components(coo_matrix((ones, (u, v)),
  shape=(N, N)), directed=False)`` on the same edge list: the time includes scipy's
  conversion of the edge list to CSR, as the solver's time includes building its
  adjacency; **cc csr** is the call alone on a CSR matrix built beforehand; ``x cc``
  and ``x cc csr`` are the default's time over each (best of 5R runs each);
- **peak MB**: growth of the resident set during one solve, measured in a fresh process
  (``multiprocessing`` spawn, one task per process): the child loads the problem from
  ``.npy`` files, resets the kernel's peak-RSS mark to the current RSS (writing 5 to
  ``/proc/self/clear_refs``), solves once, and reports ``VmHWM`` after the solve minus
  ``VmRSS`` before it (``/proc/self/status``). This sees every allocation of the C++
  kernel and of the Python wrapper (including its int32 copy of the edge list), which
  ``tracemalloc`` would not. Where the reset is not allowed the figure is marked ``<=``
  when an earlier peak could hide the solve's.

Finally ``solve_many`` on all problems of a family with 1 and with W threads
(default 2): wall times and speed-up, next to the speed-up of a GIL-free reference load
(SHA-256 in threads) measured right after it: on a shared machine the reference shows
how many cores were actually free, so a low solver speed-up can be judged.

Timings depend on the machine and its load; the script prints the CPU count and the
load average at the start and the end, so that a reader can judge; the ratios compare
figures measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from copsctl.cpus import available_cpus

# family -> (preset, difficulty per seed (cycled), edge cost factor, multiway cut)
FAMILIES = {
    "cityscapes": ("cityscapes", (0.0,), 1.0, False),
    "coco": ("coco", (0.0,), 1.0, False),
    "hard": ("cityscapes", (1.0, 0.875, 0.75), 0.25, False),
    "hard-coco": ("coco", (1.0, 0.875, 0.75), 0.25, False),
    "mwc": ("cityscapes", (0.0,), 1.0, True),
    "mwc-coco": ("coco", (0.0,), 1.0, True),
}

# The solver's earlier rule, before class-agreement superpixels, superpixel, piece and
# boundary and segment moves, instance splits and swaps.
LEGACY_SOLVER = {"precluster_margin": -1.0, "precluster_max_thing_size": 128,
                 "superpixel_moves": False, "piece_moves": False, "boundary_moves": 0,
                 "segment_moves": 0, "instance_splits": False, "swap_moves": 0}

SOLVERS = {
    "default": {},
    "GAEC": {"precluster_max_size": 1, "improve": False},
    "GAEC+imp": {"precluster_max_size": 1},
    "legacy": LEGACY_SOLVER,
}


def _best_time(func, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = func()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


PROBLEM_ARRAYS = ("node_costs", "edges", "edge_costs", "partitionable", "local_edges")


def _memory_child(folder: str, options: dict) -> dict:
    """Runs in a fresh spawned process: peak RSS growth of one solve."""
    from copsctl.solver import SolverOptions, solve_amwc

    arrays = [np.load(Path(folder) / f"{name}.npy") for name in PROBLEM_ARRAYS]
    # Imports and unpickling leave a high-water mark above the current RSS; reset it so
    # that the mark after the solve is the solve's own peak.
    exact = _reset_peak()
    rss_before = _status_bytes("VmRSS")
    hwm_before = _status_bytes("VmHWM")
    solve_amwc(*arrays, options=SolverOptions(**options))
    hwm_after = _status_bytes("VmHWM")
    # Without the reset the growth is only an upper bound when an earlier peak was higher.
    exact = exact or hwm_before <= rss_before
    return {"rss_before": rss_before, "hwm_before": hwm_before,
            "peak_growth": hwm_after - rss_before, "exact": exact}


def measure_memory(problem, options) -> dict:
    """Peak RSS growth (bytes) of one solve of ``problem``, in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="copsctl-bench-") as folder:
        for name, arr in zip(PROBLEM_ARRAYS, problem):
            np.save(Path(folder) / f"{name}.npy", arr)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1) as pool:
            return pool.submit(_memory_child, folder, dataclasses.asdict(options)).result()


def yardstick(edges: np.ndarray, num_nodes: int, repeat: int) -> tuple[float, float]:
    """(seconds of connected_components on the edge list, seconds on a prebuilt CSR)."""
    from scipy.sparse import coo_matrix, csr_matrix
    from scipy.sparse.csgraph import connected_components

    u, v = edges[:, 0], edges[:, 1]
    ones = np.ones(len(edges))

    def from_edges():
        return connected_components(coo_matrix((ones, (u, v)), shape=(num_nodes, num_nodes)),
                                    directed=False)

    csr = csr_matrix((ones, (u, v)), shape=(num_nodes, num_nodes))
    t_edges, _ = _best_time(from_edges, repeat)
    t_csr, _ = _best_time(lambda: connected_components(csr, directed=False), repeat)
    return t_edges, t_csr


def reference_speedup(workers: int, repeat: int) -> float:
    """Speed-up of a GIL-free reference load (SHA-256 of 64 MiB per thread) on ``workers``
    threads against one: what the machine's free cores allow at that moment."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    data = bytes(64 * 2**20)

    def run(n):
        with ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(lambda _: hashlib.sha256(data).digest(), range(workers)))

    t1, _ = _best_time(lambda: run(1), repeat)
    tw, _ = _best_time(lambda: run(workers), repeat)
    return t1 / tw


def multiway_cut_costs(node_costs: np.ndarray, synth) -> tuple[np.ndarray, np.ndarray]:
    """The backward pass's multiway cut on a synthetic problem: ``(node costs (N, S), no
    partitionable label (S,))`` with one label per ground-truth segment, costing the
    segment's class, minus 0.5 inside the segment."""
    segments = synth.gt_segments.ravel()
    onehot = np.zeros((node_costs.shape[0], synth.gt_segment_class.shape[0]))
    onehot[np.arange(node_costs.shape[0]), segments] = 1.0
    nc = node_costs[:, synth.gt_segment_class] - 0.5 * onehot
    return nc, np.zeros(nc.shape[1], dtype=bool)


def family_problem(name: str, seed: int):
    """``(problem tuple for solve_amwc, ground-truth objective, edge accuracy)``."""
    from copsctl.solver import objective
    from copsctl.costs.synthetic import make_problem

    preset, difficulties, edge_factor, mwc = FAMILIES[name]
    synth = make_problem(preset, seed=seed, difficulty=difficulties[seed % len(difficulties)])
    nc, edges, ec, part, local = synth.solver_problem()
    ec = ec * edge_factor
    gt_segments = synth.gt_segments.ravel()
    gt_labels = synth.gt_labels.ravel()
    if mwc:
        nc, part = multiway_cut_costs(nc, synth)
        gt_labels = gt_segments
    cut = gt_segments[edges[:, 0]] != gt_segments[edges[:, 1]]
    gt_obj = objective(nc, edges, ec, gt_labels, cut)
    return (nc, edges, ec, part, local), gt_obj, synth.info["edge_accuracy"]


def run_family(name: str, problems: int, repeat: int, workers: int, memory: bool,
               print_row) -> dict:
    from copsctl.solver import SolverOptions, solve_amwc, solve_many

    rows, probs = [], []
    for seed in range(problems):
        prob, gt_obj, edge_acc = family_problem(name, seed)
        probs.append(prob)
        n, e = prob[0].shape[0], prob[1].shape[0]
        row = {"family": name, "seed": seed, "nodes": n, "edges": e,
               "classes": prob[0].shape[1], "edge_accuracy": edge_acc, "gt_objective": gt_obj}
        for label, kwargs in SOLVERS.items():
            opts = SolverOptions(**kwargs)
            t, res = _best_time(lambda: solve_amwc(*prob, options=opts), repeat)
            mem = measure_memory(prob, opts) if memory and label != "legacy" else None
            row[label] = {"s": t, "objective": res.objective, "segments": res.num_segments,
                          "peak_mb": mem["peak_growth"] / 2**20 if mem else None,
                          "peak_exact": mem["exact"] if mem else True}
        row["cc_s"], row["cc_csr_s"] = yardstick(prob[1], n, 5 * repeat)
        rows.append(row)
        print_row(row)
    speed = None
    if workers > 1 and len(probs) > 1:
        t1, _ = _best_time(lambda: solve_many(probs, workers=1), repeat)
        tw, _ = _best_time(lambda: solve_many(probs, workers=workers), repeat)
        speed = {"family": name, "problems": len(probs), "workers": workers,
                 "one_s": t1, "many_s": tw, "speedup": t1 / tw,
                 "reference": reference_speedup(workers, repeat)}
    return {"rows": rows, "solve_many": speed}


HEADER = ("| family | seed | K | edge acc | gt obj | default obj | default s | default MB | "
          "GAEC obj | GAEC s | GAEC MB | GAEC+imp obj | GAEC+imp s | GAEC+imp MB | legacy obj | "
          "legacy s | Δ obj | x GAEC | cc s | x cc | cc csr s | x cc csr |")


def _peak(run: dict) -> str:
    if run["peak_mb"] is None:
        return "-"
    return ("" if run["peak_exact"] else "<= ") + f"{run['peak_mb']:.0f}"


def format_row(r: dict) -> str:
    d, g, gi = r["default"], r["GAEC"], r["GAEC+imp"]
    return (f"| {r['family']} | {r['seed']} | {r['classes']} | {r['edge_accuracy']:.3f} | "
            f"{r['gt_objective']:.1f} | {d['objective']:.1f} | {d['s']:.3f} | {_peak(d)} | "
            f"{g['objective']:.1f} | {g['s']:.3f} | {_peak(g)} | "
            f"{gi['objective']:.1f} | {gi['s']:.3f} | {_peak(gi)} | "
            f"{r['legacy']['objective']:.1f} | {r['legacy']['s']:.3f} | "
            f"{d['objective'] - gi['objective']:+.1f} | {d['s'] / g['s']:.3f} | "
            f"{r['cc_s']:.4f} | {d['s'] / r['cc_s']:.1f} | {r['cc_csr_s']:.4f} | "
            f"{d['s'] / r['cc_csr_s']:.1f} |")


SUMMARY_HEADER = ("| family | problems | default ≤ GAEC+imp | worst Δ obj | worst Δ obj % | "
                  "legacy ≤ GAEC+imp | legacy worst Δ obj | max x GAEC | max x cc | "
                  "max x cc csr | max default MB |")


def format_summary(name: str, rows: list[dict]) -> str:
    deltas = [r["default"]["objective"] - r["GAEC+imp"]["objective"] for r in rows]
    legacy = [r["legacy"]["objective"] - r["GAEC+imp"]["objective"] for r in rows]
    rel = [100.0 * dlt / max(abs(r["GAEC+imp"]["objective"]), 1e-12)
           for dlt, r in zip(deltas, rows)]
    tol = [1e-9 * (1.0 + abs(r["GAEC+imp"]["objective"])) for r in rows]
    wins = sum(dlt <= t for dlt, t in zip(deltas, tol))
    legacy_wins = sum(dlt <= t for dlt, t in zip(legacy, tol))
    peaks = [r["default"]["peak_mb"] for r in rows if r["default"]["peak_mb"] is not None]
    peak = f"{max(peaks):.0f}" if peaks else "-"
    return (f"| {name} | {len(rows)} | {wins} of {len(rows)} | {max(deltas):+.1f} | "
            f"{max(rel):+.3f} | {legacy_wins} of {len(rows)} | {max(legacy):+.1f} | "
            f"{max(r['default']['s'] / r['GAEC']['s'] for r in rows):.3f} | "
            f"{max(r['default']['s'] / r['cc_s'] for r in rows):.1f} | "
            f"{max(r['default']['s'] / r['cc_csr_s'] for r in rows):.1f} | "
            f"{peak} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", action="append", choices=list(FAMILIES),
                        help="family to run (repeatable); default: all")
    parser.add_argument("--problems", type=int, default=3, help="problems per family")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (best)")
    parser.add_argument("--workers", type=int, default=2,
                        help="threads for the solve_many speed-up (0 or 1: skip)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args(argv)
    if args.problems < 1 or args.repeat < 1:
        parser.error("--problems and --repeat must be at least 1")
    families = args.preset or list(FAMILIES)

    cpus = available_cpus()
    print(f"# copsctl solver benchmark\n\n{platform.processor() or platform.machine()}, "
          f"{cpus} CPUs available, load average {os.getloadavg()[0]:.2f}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, numpy {np.__version__}; times are the best "
          f"of {args.repeat} runs, one thread.\n")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    results = {}
    for name in families:
        results[name] = run_family(name, args.problems, args.repeat, args.workers,
                                   not args.no_memory, lambda r: print(format_row(r), flush=True))
    print("\n" + SUMMARY_HEADER)
    print("|" + "---|" * (SUMMARY_HEADER.count("|") - 1))
    for name in families:
        print(format_summary(name, results[name]["rows"]))
    speeds = [results[n]["solve_many"] for n in families if results[n]["solve_many"]]
    if speeds:
        print("\n| family | problems | solve_many 1 thread s | solve_many W threads s | W | "
              "speed-up | reference speed-up |\n|---|---|---|---|---|---|---|")
        for s in speeds:
            print(f"| {s['family']} | {s['problems']} | {s['one_s']:.3f} | {s['many_s']:.3f} | "
                  f"{s['workers']} | {s['speedup']:.2f} | {s['reference']:.2f} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    from . import run

    run(main)
