"""The solver's objective against plain GAEC + improvement on generated problems of random settings.

Run as::

    PYTHONPATH=. .venv/bin/python -m copsctl.benchmarks.solver_sweep
        [--presets tiny small coco] [--seeds 0 160] [--jsonl FILE] [--generator ellipses]

The benchmark families (``copsctl.benchmarks.solver``) fix their settings; problems the
solver meets elsewhere differ in how noisy their node and edge costs are. Here every seed
``s`` of every preset draws its own settings (``numpy.random.default_rng(10000 + s)``):
``difficulty`` from {0, 0.5, 0.8, 1} (edge noise), edge costs scaled by one of {0.1, 0.25,
0.5, 1, 2}, a target pixel accuracy of the node costs uniform in [0.7, 0.95] (the
families: [0.86, 0.91]), and with probability 1/4 the backward pass's multiway cut
(``multiway_cut_costs``); the problem is ``make_problem(preset, seed=s + 100, ...)``,
seeds the families never use. Per problem it prints the default's objective minus that
of ``SolverOptions(precluster_max_size=1)`` (GAEC+imp; negative: the default is
better) and the CPU seconds of both; at the end, per preset, how many problems the
default is behind GAEC+imp on, by more than 1 and more than 10 units, the worst, and the
sum. Objectives do not depend on the machine or its load.

``--generator ellipses`` takes the problems from :mod:`copsctl.benchmarks.ellipses`
instead, a generator written apart from ``make_problem`` (other scenes, independent
pixel noise, log-odds edge costs; half of the seeds hard), with the same comparison.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .ellipses import ellipse_problem
from .solver import multiway_cut_costs

DIFFICULTIES = (0.0, 0.5, 0.8, 1.0)
EDGE_FACTORS = (0.1, 0.25, 0.5, 1.0, 2.0)


def sweep_problem(preset: str, seed: int):
    """``(problem tuple for solve_amwc, settings dict)`` of one seed of the sweep."""
    from copsctl.costs.synthetic import make_problem

    rng = np.random.default_rng(10_000 + seed)
    settings = {"preset": preset, "seed": seed,
                "difficulty": float(rng.choice(DIFFICULTIES)),
                "edge_factor": float(rng.choice(EDGE_FACTORS)),
                "accuracy": float(rng.uniform(0.7, 0.95)),
                "mwc": bool(rng.random() < 0.25)}
    synth = make_problem(preset, seed=seed + 100, difficulty=settings["difficulty"],
                         accuracy=settings["accuracy"])
    nc, edges, ec, part, local = synth.solver_problem()
    if settings["mwc"]:
        nc, part = multiway_cut_costs(nc, synth)
    return (nc, edges, ec * settings["edge_factor"], part, local), settings


def _synthetic_cells(settings: dict) -> str:
    return (f"{settings['difficulty']:g} | {settings['edge_factor']:g} | "
            f"{settings['accuracy']:.3f} | {'yes' if settings['mwc'] else 'no'}")


def _ellipse_cells(settings: dict) -> str:
    return (f"{'yes' if settings['hard'] else 'no'} | {settings['pixel_accuracy']:.3f} | "
            f"{settings['edge_accuracy']:.3f}")


# --generator: the problems of one seed, the table's settings columns, their cells
GENERATORS = {
    "synthetic": (sweep_problem, "difficulty | edges x | accuracy | MWC", _synthetic_cells),
    "ellipses": (ellipse_problem, "hard | pixel acc | edge acc", _ellipse_cells),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "coco"],
                        choices=["tiny", "small", "coco", "cityscapes"])
    parser.add_argument("--seeds", nargs=2, type=int, default=[0, 160], metavar=("FIRST", "END"))
    parser.add_argument("--jsonl", help="also append one JSON line per problem to this file")
    parser.add_argument("--generator", choices=sorted(GENERATORS), default="synthetic",
                        help="make_problem with random settings (default) or "
                             "copsctl.benchmarks.ellipses")
    args = parser.parse_args(argv)
    if not 0 <= args.seeds[0] < args.seeds[1]:
        parser.error("--seeds must be FIRST < END, both >= 0")
    from copsctl.solver import SolverOptions, solve_amwc

    from copsctl.errors import InputError

    try:
        out = open(args.jsonl, "a") if args.jsonl else None
    except OSError as exc:
        raise InputError(f"--jsonl {args.jsonl}: cannot be opened for appending "
                         f"({exc.strerror})") from None
    reference = SolverOptions(precluster_max_size=1)
    deltas: dict[str, list[float]] = {p: [] for p in args.presets}
    make, columns, cells = GENERATORS[args.generator]
    header = f"preset | seed | {columns} | Δ obj | default s | GAEC+imp s"
    print(f"| {header} |\n|" + "---|" * (header.count("|") + 1))
    for seed in range(*args.seeds):
        for preset in args.presets:
            problem, settings = make(preset, seed)
            t = time.thread_time()
            default = solve_amwc(*problem)
            t_default = time.thread_time() - t
            t = time.thread_time()
            ref = solve_amwc(*problem, options=reference)
            t_ref = time.thread_time() - t
            delta = default.objective - ref.objective
            deltas[preset].append(delta)
            print(f"| {preset} | {seed} | {cells(settings)} | {delta:+.2f} | {t_default:.3f} | "
                  f"{t_ref:.3f} |", flush=True)
            if out:
                out.write(json.dumps({**settings, "default": default.objective,
                                      "gaec_imp": ref.objective, "delta": delta}) + "\n")
                out.flush()
    print("\n| preset | problems | behind GAEC+imp | by > 1 | by > 10 | worst Δ obj | sum Δ obj |"
          "\n|---|---|---|---|---|---|---|")
    for preset, d in deltas.items():
        d = np.asarray(d)
        print(f"| {preset} | {d.size} | {int((d > 1e-6).sum())} | {int((d > 1).sum())} | "
              f"{int((d > 10).sum())} | {d.max():+.2f} | {d.sum():+.1f} |")
    if out:
        out.close()


if __name__ == "__main__":
    from . import run

    run(main)
