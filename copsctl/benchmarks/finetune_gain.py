"""The paper's central claim on data we can run: fine-tuning through the solver vs a fair control.

Run as::

    PYTHONPATH=. .venv/bin/python -m copsctl.benchmarks.finetune_gain
        --weights PRETRAIN_RUN/checkpoint.pt --data SYNTHETIC_DIR --out DIR
        [--recipe synthetic_finetune] [--seeds 0 1 2] [--iterations N] [--threads 1]
        [--set key=value ...] [--control-set key=value ...] [--kinds control finetuned]

From one pre-trained checkpoint (``copsctl pretrain --recipe synthetic_pretrain``) and for
every seed (``train.seed``: data order, ``λ`` draws, dropout):

- **fine-tuned**: ``copsctl finetune`` with ``finetune.loss=pq_surrogate`` (COPS);
- **control**: the same command with ``finetune.loss=cross_entropy``: the pre-training
  losses, the same trainable parameters, schedule and number of iterations (continued
  pre-training; ``--control-set`` may adjust it, e.g. its learning rate);

each validated at its last iteration on the whole val split with exact PQ through the
solver (:func:`copsctl.train.validate.validate_from_recipe`); the **baseline** is the
pre-trained checkpoint on the same split. Runs live in ``DIR/<kind>_seed<s>`` and are
resumed when the script is run again (a finished run is only read), so the script can be
stopped and restarted. It writes ``DIR/results.json``, ``DIR/results.md`` (the table: mean
± sample standard deviation over seeds, and the gain over the control per seed) and
``DIR/figure5.png`` (surrogate and exact batch PQ per iteration of the first fine-tuned
run, as in the paper's Figure 5).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

KINDS = ("control", "finetuned")
_LOSS = {"control": "cross_entropy", "finetuned": "pq_surrogate"}
_COLS = ("PQ", "PQ_th", "PQ_st")


def _val_record(run: Path) -> dict | None:
    from ..train.logging import read_metrics

    records = read_metrics(run / "metrics.jsonl", "val")
    return records[-1] if records else None


def _baseline(weights: str, cfg) -> dict:
    from ..train.checkpoint import load_model
    from ..train.data import make_dataset, open_split
    from ..train.validate import validate_from_recipe

    model, _, _ = load_model(weights, recipe=cfg)
    ds = make_dataset(cfg, open_split(cfg, cfg.data.val_split), train=False)
    return validate_from_recipe(model, ds, cfg, device="cpu", batch_size=8)


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def table(results: dict) -> str:
    """Markdown table of :func:`main`'s ``results`` dict."""
    lines = ["| model | " + " | ".join(_COLS) + " |", "|---|" + "---|" * len(_COLS)]
    base = results["baseline"]
    lines.append("| baseline (pre-trained) | " + " | ".join(f"{base[c]:.1f}" for c in _COLS) + " |")
    for kind in KINDS:
        runs = results[kind]
        if runs:
            lines.append(f"| {kind} ({len(runs)} seeds) | "
                         + " | ".join(_fmt([r[c] for r in runs.values()]) for c in _COLS) + " |")
    seeds = sorted(set(results["control"]) & set(results["finetuned"]))
    if seeds:
        gains = {c: [results["finetuned"][s][c] - results["control"][s][c] for s in seeds]
                 for c in _COLS}
        lines.append("| gain over control | " + " | ".join(_fmt(gains[c]) for c in _COLS) + " |")
        gains = {c: [results["finetuned"][s][c] - base[c] for s in seeds] for c in _COLS}
        lines.append("| gain over baseline | " + " | ".join(_fmt(gains[c]) for c in _COLS) + " |")
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
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                    help="run only these arms (e.g. one per process on two cores); a final call "
                    "with all arms then only reads the finished runs and writes the table")
    args = ap.parse_args(argv)

    from ..atomic import write_json, write_text
    from ..config import load_recipe
    from ..train.finetune import finetune

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"data.root={os.path.abspath(args.data)}", "train.device=cpu", "train.val_images=0",
              "train.validate_every=0"] + list(args.overrides)
    if args.iterations:
        common.append(f"train.iterations={args.iterations}")
    cfg = load_recipe(args.recipe, common)
    results: dict = {"recipe": args.recipe, "weights": str(args.weights), "overrides": common,
                     "control_overrides": args.control_overrides, "seeds": args.seeds,
                     "control": {}, "finetuned": {}, "seconds": {}}
    saved = out / "results.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        if "baseline" in old and old.get("weights") == results["weights"]:
            results["baseline"] = old["baseline"]
    if "baseline" not in results:
        t = time.perf_counter()
        results["baseline"] = _baseline(args.weights, cfg)
        print(f"baseline: PQ {results['baseline']['PQ']:.1f} ({time.perf_counter() - t:.0f} s)",
              flush=True)
    for seed in args.seeds:
        for kind in args.kinds:
            run = out / f"{kind}_seed{seed}"
            overrides = common + [f"train.seed={seed}", f"finetune.loss={_LOSS[kind]}"]
            if kind == "control":
                overrides += args.control_overrides
            t = time.perf_counter()
            res = finetune(args.recipe, run, weights=args.weights, overrides=overrides,
                           resume=True, log=lambda msg: print(msg, flush=True))
            if res.interrupted:
                raise SystemExit(f"interrupted in {run}; run the script again to continue")
            val = _val_record(run)
            results[kind][seed] = {c: val[c] for c in _COLS}
            results["seconds"][f"{kind}_seed{seed}"] = time.perf_counter() - t
            print(f"{kind} seed {seed}: " + ", ".join(f"{c} {val[c]:.1f}" for c in _COLS)
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
