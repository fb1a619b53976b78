"""Solver benchmark on realistic synthetic problems; prints a markdown table.

Run as::

    PYTHONPATH=. .venv/bin/python -m copsctl.benchmarks.solver
        [--preset cityscapes|coco|hard|hard-coco] [--problems N] [--repeat R]
        [--workers W] [--no-memory]

Families (problems from :func:`copsctl.costs.synthetic.make_problem`, seeds 0 .. N-1):

- ``cityscapes``: 256 x 512 nodes, 19 classes, distances (1, 4, 16, 32, 64, 128),
  1.38 M edges;
- ``coco``: 160 x 160 nodes, 133 classes, distances (1, 4, 16, 32, 64);
- ``hard``: Cityscapes size with ``difficulty=1`` (weaker, noisier edge costs), where the
  improvement phase has work to do; ``hard-coco`` the same at COCO size.

Per problem, all in one run and one process:

- **solve**: ``solve_amwc`` with default ``SolverOptions()``, one thread, best of R
  wall-clock runs; its objective (value of (2));
- **no improve**: ``SolverOptions(improve=False)``: time and objective without the
  local improvement phase;
- **GAEC**: ``SolverOptions(precluster_max_size=1)``: plain greedy additive edge
  contraction on the pixel graph, without preclustering (improvement phase on);
- **peak MB**: growth of the resident set during one default solve, measured in a fresh
  process (``multiprocessing`` spawn, one task per process): the child loads the problem
  from ``.npy`` files, resets the kernel's peak-RSS mark to the current RSS (writing 5 to
  ``/proc/self/clear_refs``), solves once, and reports ``VmHWM`` after the solve minus
  ``VmRSS`` before it (``/proc/self/status``). This sees every allocation of the C++
  kernel and of the Python wrapper (including its int32 copy of the edge list), which
  ``tracemalloc`` would not. Where the reset is not allowed the figure is marked ``<=``
  when an earlier peak could hide the solve's;
- **cc**: the yardstick, ``scipy.sparse.csgraph.connected_components(coo_matrix((ones,
  (u, v)), shape=(N, N)), directed=False)`` on the same edge list: the time includes
  scipy's conversion of the edge list to CSR, as the solver's time includes building
  its adjacency. ``cc csr`` is the call alone on a CSR matrix built beforehand; the
  ratios ``x cc`` and ``x cc csr`` are solve time over each (best of 5R runs each).

Finally ``solve_many`` on all problems of a family with 1 and with W threads
(default 2): wall times and speed-up, next to the speed-up of a GIL-free reference load
(SHA-256 in threads) measured right after it: on a shared machine the reference shows
how many cores were actually free, so a low solver speed-up can be judged.

Timings depend on the machine and its load; the script prints the CPU count and load
average so that a reader can judge.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

FAMILIES = {
    "cityscapes": ("cityscapes", 0.0),
    "coco": ("coco", 0.0),
    "hard": ("cityscapes", 1.0),
    "hard-coco": ("coco", 1.0),
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


def _memory_child(folder: str, options: dict) -> dict:
    """Runs in a fresh spawned process: peak RSS growth of one solve."""
    from copsctl.solver import SolverOptions, solve_amwc

    arrays = [np.load(Path(folder) / f"{name}.npy")
              for name in ("node_costs", "edges", "edge_costs", "partitionable")]
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
        for name, arr in zip(("node_costs", "edges", "edge_costs", "partitionable"), problem):
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


def run_family(name: str, problems: int, repeat: int, workers: int, memory: bool,
               print_row) -> dict:
    from copsctl.solver import SolverOptions, solve_amwc, solve_many
    from copsctl.costs.synthetic import make_problem

    preset, difficulty = FAMILIES[name]
    rows, probs = [], []
    for seed in range(problems):
        synth = make_problem(preset, seed=seed, difficulty=difficulty)
        prob = synth.solver_problem()
        probs.append(prob)
        n, e = prob[0].shape[0], prob[1].shape[0]
        t_solve, res = _best_time(lambda: solve_amwc(*prob), repeat)
        t_noimp, res_noimp = _best_time(
            lambda: solve_amwc(*prob, options=SolverOptions(improve=False)), repeat)
        t_gaec, res_gaec = _best_time(
            lambda: solve_amwc(*prob, options=SolverOptions(precluster_max_size=1)), repeat)
        t_cc, t_csr = yardstick(prob[1], n, 5 * repeat)
        mem = measure_memory(prob, SolverOptions()) if memory else None
        row = {"family": name, "seed": seed, "nodes": n, "edges": e,
               "classes": prob[0].shape[1], "pixel_accuracy": synth.info["pixel_accuracy"],
               "edge_accuracy": synth.info["edge_accuracy"],
               "solve_s": t_solve, "objective": res.objective, "segments": res.num_segments,
               "noimprove_s": t_noimp, "noimprove_objective": res_noimp.objective,
               "gaec_s": t_gaec, "gaec_objective": res_gaec.objective,
               "peak_mb": mem["peak_growth"] / 2**20 if mem else None,
               "peak_exact": mem["exact"] if mem else True,
               "cc_s": t_cc, "cc_csr_s": t_csr}
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


HEADER = ("| family | seed | nodes | edges | pix acc | edge acc | solve s | objective | segs | "
          "no-improve s | no-improve obj | GAEC s | GAEC obj | peak MB | cc s | x cc | "
          "cc csr s | x cc csr |")


def format_row(r: dict) -> str:
    peak = "-" if r["peak_mb"] is None else \
        ("" if r["peak_exact"] else "<= ") + f"{r['peak_mb']:.0f}"
    return (f"| {r['family']} | {r['seed']} | {r['nodes']} | {r['edges']} | "
            f"{r['pixel_accuracy']:.3f} | {r['edge_accuracy']:.3f} | {r['solve_s']:.3f} | "
            f"{r['objective']:.1f} | {r['segments']} | {r['noimprove_s']:.3f} | "
            f"{r['noimprove_objective']:.1f} | {r['gaec_s']:.3f} | {r['gaec_objective']:.1f} | "
            f"{peak} | {r['cc_s']:.4f} | {r['solve_s'] / r['cc_s']:.1f} | "
            f"{r['cc_csr_s']:.4f} | {r['solve_s'] / r['cc_csr_s']:.1f} |")


def format_mean(name: str, rows: list[dict]) -> str:
    def mean(key):
        return statistics.fmean(r[key] for r in rows)

    peaks = [r["peak_mb"] for r in rows if r["peak_mb"] is not None]
    peak = f"{max(peaks):.0f} (max)" if peaks else "-"
    ratio = statistics.fmean(r["solve_s"] / r["cc_s"] for r in rows)
    ratio_csr = statistics.fmean(r["solve_s"] / r["cc_csr_s"] for r in rows)
    return (f"| **{name} mean** | | {rows[0]['nodes']} | {round(mean('edges'))} | "
            f"{mean('pixel_accuracy'):.3f} | {mean('edge_accuracy'):.3f} | "
            f"{mean('solve_s'):.3f} | {mean('objective'):.1f} | {mean('segments'):.1f} | "
            f"{mean('noimprove_s'):.3f} | {mean('noimprove_objective'):.1f} | "
            f"{mean('gaec_s'):.3f} | {mean('gaec_objective'):.1f} | {peak} | "
            f"{mean('cc_s'):.4f} | {ratio:.1f} | {mean('cc_csr_s'):.4f} | {ratio_csr:.1f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", action="append", choices=sorted(FAMILIES),
                        help="family to run (repeatable); default: all four")
    parser.add_argument("--problems", type=int, default=3, help="problems per family")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (best)")
    parser.add_argument("--workers", type=int, default=2,
                        help="threads for the solve_many speed-up (0 or 1: skip)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args(argv)
    if args.problems < 1 or args.repeat < 1:
        parser.error("--problems and --repeat must be at least 1")
    families = args.preset or list(FAMILIES)

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# copsctl solver benchmark\n\n{platform.processor() or platform.machine()}, "
          f"{cpus} CPUs available, load average {os.getloadavg()[0]:.2f}, numpy "
          f"{np.__version__}; times are the best of {args.repeat} runs, one thread.\n")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    results = {}
    for name in families:
        results[name] = run_family(name, args.problems, args.repeat, args.workers,
                                   not args.no_memory, lambda r: print(format_row(r), flush=True))
    for name in families:
        print(format_mean(name, results[name]["rows"]))
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
