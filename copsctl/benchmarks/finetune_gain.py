"""The paper's central claim on data we can run: fine-tuning through the solver vs a fair control.

Run as::

    PYTHONPATH=. .venv/bin/python -m copsctl.benchmarks.finetune_gain
        --weights PRETRAIN_RUN/checkpoint.pt --data SYNTHETIC_DIR --out DIR
        [--test TEST_DIR] [--recipe synthetic_finetune] [--seeds 0 1 2] [--iterations N]
        [--threads 1] [--set key=value ...] [--control-set key=value ...]
        [--ablate "name:key=value,key=value" ...] [--kinds control finetuned]

From one pre-trained checkpoint (``copsctl pretrain --recipe synthetic_pretrain``) and for
every seed (``train.seed``: data order, ``λ`` draws, dropout):

- **baseline**: the pre-trained checkpoint, uncalibrated;
- **calibrated**: the same with the cost calibration beside it (``copsctl calibrate --run``
  on train images; fitted here first when ``calibration.yaml`` is missing);
- **fine-tuned**: ``copsctl finetune`` with ``finetune.loss=pq_surrogate`` (COPS), starting
  from the calibration;
- **control**: the same command with ``finetune.loss=cross_entropy``: the pre-training
  losses, the same trainable parameters, schedule and number of iterations (continued
  pre-training; ``--control-set`` may adjust it, e.g. its learning rate);
- **ablations** (``--ablate``, first seed only): the fine-tuned run with the named
  overrides added, e.g. ``"no loss weight:finetune.loss_weight=1"``.

Each is scored at its last iteration with exact PQ through the solver on the val split of
``--test`` (a held-out dataset; default the val split of ``--data``). Runs live in
``DIR/<kind>_seed<s>`` (``DIR/ablate_<i>``) and are resumed when the script is run again (a
finished run is only read), so the script can be stopped and restarted. It writes
``DIR/results.json``, ``DIR/results.md`` (the table: mean ± sample standard deviation over
seeds, and the gains per seed) and ``DIR/figure5.png`` (surrogate and exact batch PQ per
iteration of the first fine-tuned run, as in the paper's Figure 5).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

KINDS = ("control", "finetuned")
_LOSS = {"control": "cross_entropy", "finetuned": "pq_surrogate"}
_COLS = ("PQ", "PQ_th", "PQ_st")


def _score(weights: Path, cfg, test: str | None, calibration: bool = True) -> dict:
    """Exact PQ of a checkpoint on the test split (its calibration applied unless False)."""
    from ..calibration import calibration_for, load_calibration
    from ..train.checkpoint import load_model
    from ..train.data import make_dataset, open_split
    from ..train.validate import validate_from_recipe

    model, _, run_cfg = load_model(weights)
    sets = [f"data.root={test or cfg.data.root}", "train.val_images=0", "train.device=cpu"]
    path = calibration_for(weights, None if calibration else False)
    if path is not None:
        sets += load_calibration(path).to_overrides()
    run_cfg = run_cfg.replace(sets)
    model.cost_transform.set_calibration(run_cfg.calibration.node_scale,
                                         run_cfg.calibration.edge_scale,
                                         run_cfg.calibration.edge_offset)
    ds = make_dataset(run_cfg, open_split(run_cfg, run_cfg.data.val_split), train=False)
    return {c: v for c, v in validate_from_recipe(model, ds, run_cfg, device="cpu",
                                                  batch_size=8).items() if c in _COLS}


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def table(results: dict) -> str:
    """Markdown table of :func:`main`'s ``results`` dict."""
    lines = ["| model | " + " | ".join(_COLS) + " |", "|---|" + "---|" * len(_COLS)]
    for name in ("baseline", "calibrated"):
        if name in results:
            lines.append(f"| {name} | " + " | ".join(f"{results[name][c]:.1f}" for c in _COLS)
                         + " |")
    for kind in KINDS:
        runs = results[kind]
        if runs:
            lines.append(f"| {kind} ({len(runs)} seeds) | "
                         + " | ".join(_fmt([r[c] for r in runs.values()]) for c in _COLS) + " |")
    for name, r in results.get("ablations", {}).items():
        lines.append(f"| fine-tuned, {name} (1 seed) | " + " | ".join(f"{r[c]:.1f}" for c in _COLS)
                     + " |")
    seeds = sorted(set(results["control"]) & set(results["finetuned"]))
    if seeds:
        for label, ref in (("gain over control", lambda s, c: results["control"][s][c]),
                           ("gain over calibrated", lambda s, c: results["calibrated"][c]),
                           ("gain over baseline", lambda s, c: results["baseline"][c])):
            gains = {c: [results["finetuned"][s][c] - ref(s, c) for s in seeds] for c in _COLS}
            lines.append(f"| {label} | " + " | ".join(_fmt(gains[c]) for c in _COLS) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipe", default="synthetic_finetune")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--control-set", dest="control_overrides", action="append", default=[])
    ap.add_argument("--test", default=None, help="dataset whose val split scores every model "
                    "(default: the val split of --data)")
    ap.add_argument("--ablate", action="append", default=[],
                    help="'name:key=value,key=value': one more fine-tuned run (first seed)")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                    help="run only these arms (e.g. one per process on two cores); a final call "
                    "with all arms then only reads the finished runs and writes the table")
    args = ap.parse_args(argv)

    from ..atomic import write_json, write_text
    from ..calibration import CALIBRATION_NAME
    from ..costs.calibrate import calibrate_run
    from ..config import load_recipe
    from ..errors import InputError
    from ..train.finetune import finetune

    ablations = []
    for spec in args.ablate:
        name, sep, sets = spec.partition(":")
        if not sep or not name or not sets:
            raise InputError(f"--ablate {spec!r}: must have the form 'name:key=value,key=value'")
        # Commas inside [...] belong to a list value.
        ablations.append((name, re.split(r",(?![^\[]*\])", sets)))
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = Path(args.weights)
    common = [f"data.root={os.path.abspath(args.data)}", "train.device=cpu", "train.val_images=0",
              "train.validate_every=0"] + list(args.overrides)
    if args.iterations:
        common.append(f"train.iterations={args.iterations}")
    cfg = load_recipe(args.recipe, common)
    test = os.path.abspath(args.test) if args.test else None
    results: dict = {"recipe": args.recipe, "weights": str(weights), "test": test,
                     "overrides": common, "control_overrides": args.control_overrides,
                     "seeds": args.seeds, "control": {}, "finetuned": {}, "ablations": {},
                     "seconds": {}}
    saved = out / "results.json"
    old = json.loads(saved.read_text()) if saved.is_file() else {}
    same = old.get("weights") == results["weights"] and old.get("test") == test
    if not (weights.parent / CALIBRATION_NAME).is_file():
        print("fitting the calibration on train images", flush=True)
        calibrate_run(weights.parent, split="train", images=64, log=print)
    for name, cal in (("baseline", False), ("calibrated", True)):
        if same and name in old:
            results[name] = old[name]
        else:
            t = time.perf_counter()
            results[name] = _score(weights, cfg, test, calibration=cal)
            print(f"{name}: PQ {results[name]['PQ']:.1f} ({time.perf_counter() - t:.0f} s)",
                  flush=True)
    jobs = [(kind, seed, out / f"{kind}_seed{seed}", []) for seed in args.seeds
            for kind in args.kinds]
    jobs += [("ablation", args.seeds[0], out / f"ablate_{i}", sets)
             for i, (_, sets) in enumerate(ablations)]
    names = {out / f"ablate_{i}": name for i, (name, _) in enumerate(ablations)}
    for kind, seed, run, extra in jobs:
        loss = _LOSS["control" if kind == "control" else "finetuned"]
        overrides = common + [f"train.seed={seed}", f"finetune.loss={loss}"] + extra
        if kind == "control":
            overrides += args.control_overrides
        t = time.perf_counter()
        res = finetune(args.recipe, run, weights=weights, overrides=overrides, resume=True,
                       log=lambda msg: print(msg, flush=True))
        if res.interrupted:
            raise SystemExit(f"interrupted in {run}; run the script again to continue")
        val = _score(run / "checkpoint.pt", cfg, test)
        if kind == "ablation":
            results["ablations"][names[run]] = val
        else:
            results[kind][seed] = val
        results["seconds"][run.name] = time.perf_counter() - t
        print(f"{run.name}: " + ", ".join(f"{c} {val[c]:.1f}" for c in _COLS)
              + f" ({time.perf_counter() - t:.0f} s)", flush=True)
        write_json(saved, results)
    md = table(results)
    write_text(out / "results.md", md + "\n")
    first = out / f"finetuned_seed{args.seeds[0]}"
    if "finetuned" in args.kinds and first.is_dir():
        from ..visualize.curves import run_figure

        run_figure(first, out / "figure5.png", title=f"fine-tuned, seed {args.seeds[0]}")
    print(md)


if __name__ == "__main__":
    from . import run

    run(main)
