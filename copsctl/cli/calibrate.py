"""``copsctl calibrate``: fit the cost calibration that maximises exact PQ, with the solver only."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ._app import app
from ._util import GT_HELP, GT_JSON_HELP, cli_errors, console, write_json_option


@app.command("calibrate")
@cli_errors
def calibrate_command(
    costs: Optional[Path] = typer.Argument(
        None, help="Cost file (from dump-costs) to fit on; or use --run."),
    gt_json: Optional[Path] = typer.Option(None, "--gt-json", help="With COSTS: " + GT_JSON_HELP),
    gt: Optional[Path] = typer.Option(None, "--gt", "--gt-dir", help="With COSTS: " + GT_HELP),
    run: Optional[Path] = typer.Option(
        None, "--run", help="Run folder: dump the costs of --split with its checkpoint, fit, "
        "write RUN/calibration.yaml."),
    split: str = typer.Option("train", "--split", help="With --run: the split to fit on."),
    images: int = typer.Option(0, "--images", help="Fit on the first N images (0: all)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Calibration file to write (default with --run: RUN/calibration.yaml)."),
    rounds: int = typer.Option(2, "--rounds", help="Rounds of the per-distance search."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Solver threads (default: all CPUs)."),
    device: str = typer.Option("auto", "--device", help="With --run: auto, cpu or cuda."),
    overrides: List[str] = typer.Option(
        [], "--set", help="Override a recipe key, section.key=value; repeatable. With --run a "
        "key of the run's recipe (e.g. solver.boundary_moves=0); with COSTS solver.<key> or "
        "data.thing_area_threshold / data.stuff_area_threshold of the cost file's recipe."),
    out_json: Optional[Path] = typer.Option(None, "--json", help="Also write the fit as JSON here."),
) -> None:
    """Fit node-cost scale and per-distance edge-cost offsets and scales that maximise exact PQ.

    dump-costs, finetune and predict apply RUN/calibration.yaml by themselves; solve takes
    --calibration FILE.
    """
    from ..atomic import check_output
    from ..calibration import CALIBRATION_NAME, Calibration
    from ..costs.cache import CostFile
    from ..costs.calibrate import calibrate_run, fit_calibration
    from ..cpus import check_workers
    from ..errors import InputError
    from ..metrics.pq import set_paths

    if (costs is None) == (run is None):
        raise InputError("pass either COSTS (with --gt-json or --gt) or --run RUN")
    check_workers(workers)
    # Inputs: the run's files but the calibration (its default --out), or the costs and
    # the ground truth's JSON and PNG folder (also the one implied).
    if run is not None:
        from ..train.checkpoint import run_inputs

        inputs = {"--run": [f for f in run_inputs(run) if f.name != CALIBRATION_NAME]}
        within = {}
    else:
        gt_pair = (set_paths(gt_json, gt, "ground truth") if gt_json is not None
                   or gt is not None else (None, None))
        inputs, within = {"COSTS": costs, "--gt-json": gt_pair[0]}, {"--gt": gt_pair[1]}
    out_path = out if out is not None or run is None else run / CALIBRATION_NAME
    check_output(out_path, "--out", inputs=inputs, within=within)
    check_output(out_json, "--json", inputs={**inputs, "--out": out_path}, within=within)
    if run is not None:
        if gt_json is not None or gt is not None:
            raise InputError("--run takes its ground truth from the run's dataset; drop "
                             + ("--gt-json" if gt_json is not None else "--gt"))
        fit, full, path = calibrate_run(run, split=split, images=images, out=out, rounds=rounds,
                                        workers=workers, device=device, overrides=overrides,
                                        log=console.print)
    else:
        if gt_json is None and gt is None:
            raise InputError("COSTS needs its ground truth: pass --gt-json FILE (or --gt DIR)")
        gt_json, gt = set_paths(gt_json, gt, "ground truth")
        if out is None:
            raise InputError("COSTS needs --out FILE: where to write the calibration")
        with CostFile(costs) as cf:
            recipe = cf.recipe
            stored = recipe.calibration if recipe is not None else None
            m = len(cf.distances)
        fit = fit_calibration(costs, gt_json, gt, images=images, rounds=rounds,
                              workers=workers, overrides=overrides)
        full = Calibration.from_section(stored, m).then(fit.calibration)
        full.save(out, f"copsctl calibrate {costs}: {fit.images} images, exact PQ "
                       f"{100 * fit.pq_before['pq']:.2f} -> {100 * fit.pq_after['pq']:.2f}")
        path = out
    table = Table(title=f"copsctl calibrate: {fit.images} images, {fit.candidates} solver passes")
    for col in ("", "PQ", "PQ_th", "PQ_st"):
        table.add_column(col, justify="right")
    for name, r in (("before", fit.pq_before), ("after", fit.pq_after)):
        table.add_row(name, f"{100 * r['pq']:.2f}", f"{100 * r['pq_th']:.2f}",
                      f"{100 * r['pq_st']:.2f}")
    console.print(table)
    s = full.to_section()
    console.print(f"node_scale {s['node_scale']}, edge_scale {s['edge_scale']}, edge_offset "
                  f"{s['edge_offset']} -> {path}")
    write_json_option(out_json, {**fit.to_json(), "calibration": s, "out": str(path)})
