"""``copsctl evaluate``: exact PQ, semantic mIoU and instance AP of predictions."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import typer

from ._app import app
from ..errors import InputError
from ._util import (GT_HELP, GT_JSON_HELP, PRED_HELP, PRED_JSON_HELP, check_json_option,
                    cli_errors, console, err_console)
from ._progress import count_progress


def _fraction(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


_NO_INPUT = ("pass --run RUN (a pretrain/finetune run folder: dump-costs, solve and evaluate "
             "in one go), or --pred P (a copsctl solve or predict folder) with --gt-json G or "
             "--recipe NAME when P holds no recipe.yaml")


@app.command("evaluate")
@cli_errors
def evaluate_command(
    run: Optional[Path] = typer.Option(
        None, "--run", help="Run folder of copsctl pretrain/finetune: dump its costs of --split, "
        "solve them and evaluate, writing RUN/eval_<split>/costs.h5 and pred/."),
    pred: Optional[Path] = typer.Option(
        None, "--pred", "--pred-dir", help=PRED_HELP + " A solve folder's recipe.yaml names the "
        "ground truth when neither --gt-json nor --recipe is given."),
    pred_json: Optional[Path] = typer.Option(None, "--pred-json", help=PRED_JSON_HELP),
    gt: Optional[Path] = typer.Option(None, "--gt", "--gt-dir", help=GT_HELP),
    gt_json: Optional[Path] = typer.Option(None, "--gt-json", help=GT_JSON_HELP),
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help="Take the ground truth from this recipe's dataset instead."),
    split: Optional[str] = typer.Option(
        None, "--split", help="Split of the recipe's dataset (default: its data.val_split)."),
    overrides: List[str] = typer.Option(
        [], "--set", help="Override a key of the recipe (--recipe, the run's, or the one in "
        "--pred): section.key=value (e.g. data.root=...); repeatable."),
    metrics: str = typer.Option(
        "pq,semantic,instances", "--metrics",
        help="Comma-separated: pq (PQ, SQ, RQ), semantic (mIoU, fwIoU, accuracies), "
        "instances (COCO mask AP; needs `score` in the prediction's segments_info)."),
    cityscapes_ap: bool = typer.Option(
        False, "--cityscapes-ap", help="Also run cityscapesscripts' instance-level evaluation on "
        "instance files written from the sets (Cityscapes label ids; slow)."),
    out_json: Optional[Path] = typer.Option(
        None, "--json", help="Also write {All, Things, Stuff, per_class, semantic, instances} as "
        "JSON here."),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="CPU threads reading and counting images (default: all "
        "CPUs); with --run also the solver threads (default: the recipe's solver.workers if "
        "> 0, else all CPUs)."),
    device: str = typer.Option("auto", "--device", help="With --run: auto (CUDA when "
                               "available), cpu or cuda."),
    batch_size: int = typer.Option(4, "--batch-size", help="With --run: images per forward pass."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Count images without a prediction as all false negatives."),
) -> None:
    """Exact PQ (cityscapesscripts' numbers), semantic mIoU and COCO instance AP.

    Of a trained run (--run), of a solve folder (--pred), or of any COCO panoptic
    prediction against any ground truth (--pred/--pred-json and --gt/--gt-json).
    """
    from rich.table import Table

    from ..atomic import write_json
    from ..cpus import available_cpus, check_workers
    from ..metrics.evaluation import evaluate_files, keep_freed_memory, parse_metrics
    from ..metrics.pq import MissingPredictionWarning, ground_truth_from_recipe, resolve_paths

    wanted = parse_metrics(metrics)
    check_workers(workers)
    if run is not None:
        given = [name for name, v in (("--gt-json", gt_json), ("--gt", gt),
                 ("--pred-json", pred_json), ("--pred", pred), ("--recipe", recipe)) if v]
        if given:
            raise InputError(f"--run evaluates the run's own predictions on its dataset; drop "
                             f"{given[0]}")
        from ..train.run import RECIPE_NAME

        check_json_option(out_json, within={"run": run})
        if out_json is not None and (run / RECIPE_NAME).is_file():
            _check_json(out_json, *ground_truth_from_recipe(run / RECIPE_NAME, split, overrides))
        pred, split = _costs_and_predictions(run, split, overrides, device=device,
                                             batch_size=batch_size, workers=workers)
    elif pred_json is None and pred is None and gt_json is None and gt is None \
            and recipe is None:
        raise InputError(_NO_INPUT)
    if gt_json is None and gt is None and recipe is None:
        if pred is None:
            raise InputError("ground truth: pass --gt-json G (or --gt DIR), or --recipe NAME "
                             "[--split S], or --pred of a copsctl solve folder")
        recipe, split = _stored_recipe(pred, split, overrides)
    # The JSON and PNG folder of both sides, also those implied (--gt DIR -> DIR.json, a
    # solve folder, the recipe's dataset): --json must not overwrite any of them.
    gt_json, gt, pred_json, pred = resolve_paths(
        gt_json=gt_json, gt_dir=gt, pred_json=pred_json, pred_dir=pred, recipe=recipe,
        split=split, overrides=overrides)
    _check_json(out_json, gt_json, gt, pred_json, pred)
    keep_freed_memory()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingPredictionWarning)
        result = evaluate_files(gt_json, pred_json, gt, pred, metrics=wanted,
                                workers=available_cpus() if workers is None else workers,
                                allow_missing=allow_missing, cityscapes_ap=cityscapes_ap)
    for w in caught:
        err_console.print(f"[bold yellow]warning:[/] {w.message}", soft_wrap=True)
    for note in result.notes:
        err_console.print(f"[bold]note:[/] {note}", soft_wrap=True)

    if result.pq is not None:
        pq = result.pq
        table = Table(title=f"panoptic quality, {result.num_images} images")
        for col, justify in (("id", "right"), ("class", "left"), ("kind", "left"),
                             ("PQ", "right"), ("SQ", "right"), ("RQ", "right"), ("TP", "right"),
                             ("FP", "right"), ("FN", "right")):
            table.add_column(col, justify=justify)
        for cat in result.categories:
            r = pq.per_class[cat.id]
            table.add_row(str(cat.id), cat.name, "thing" if cat.isthing else "stuff",
                          f"{100 * r.pq:.1f}", f"{100 * r.sq:.1f}", f"{100 * r.rq:.1f}",
                          str(r.tp), str(r.fp), str(r.fn))
        table.add_section()
        for name, g in (("All", pq.all), ("Things", pq.things), ("Stuff", pq.stuff)):
            table.add_row("", f"[bold]{name}[/]", f"n={g.n}", f"[bold]{100 * g.pq:.1f}[/]",
                          f"{100 * g.sq:.1f}", f"{100 * g.rq:.1f}", "", "", "")
        console.print(table)
    if result.semantic is not None:
        sem = result.semantic
        table = Table(title=f"semantic segmentation (category maps), {result.num_images} images")
        for col, justify in (("id", "right"), ("class", "left"), ("IoU", "right"),
                             ("accuracy", "right")):
            table.add_column(col, justify=justify)
        for cat in result.categories:
            r = sem.per_class[cat.id]
            table.add_row(str(cat.id), cat.name, _fraction(r.iou), _fraction(r.accuracy))
        table.add_section()
        table.add_row("", f"[bold]mIoU[/] (n={sem.num_classes})", f"[bold]{_fraction(sem.miou)}[/]",
                      "")
        table.add_row("", "fwIoU", _fraction(sem.fwiou), "")
        table.add_row("", "pixel / mean accuracy", "", f"{_fraction(sem.pixel_accuracy)} / "
                      f"{_fraction(sem.mean_accuracy)}")
        console.print(table)
    if result.instances is not None:
        ins = result.instances
        table = Table(title=f"instance segmentation (COCO mask AP), {ins.num_gt} ground-truth "
                      f"instances, {ins.num_detections} detections")
        for col, justify in (("id", "right"), ("class", "left"), ("AP", "right")):
            table.add_column(col, justify=justify)
        for cat in result.categories:
            if cat.id in ins.per_class:
                table.add_row(str(cat.id), cat.name, _fraction(ins.per_class[cat.id]))
        table.add_section()
        for name, v in (("AP", ins.ap), ("AP50", ins.ap50), ("AP75", ins.ap75),
                        ("AP small", ins.ap_small), ("AP medium", ins.ap_medium),
                        ("AP large", ins.ap_large)):
            table.add_row("", f"[bold]{name}[/]" if name == "AP" else name, _fraction(v))
        console.print(table)
    if result.cityscapes is not None:
        cs = result.cityscapes
        table = Table(title="instance segmentation (cityscapesscripts)")
        for col, justify in (("id", "right"), ("class", "left"), ("AP", "right"),
                             ("AP50", "right")):
            table.add_column(col, justify=justify)
        names = {c.id: c.name for c in result.categories}
        for cid, r in cs.per_class.items():
            table.add_row(str(cid), names[cid], _fraction(r["ap"]), _fraction(r["ap50"]))
        table.add_section()
        table.add_row("", "[bold]AP[/]", f"[bold]{_fraction(cs.ap)}[/]", _fraction(cs.ap50))
        console.print(table)
    if out_json is not None:
        write_json(out_json, result.to_json())
        console.print(f"wrote {out_json}")


def _costs_and_predictions(run: Path, split, overrides, *, device, batch_size, workers):
    """dump-costs then solve of a run's split into RUN/eval_<split>/; the prediction folder
    and the split."""
    from ..atomic import check_output_folder
    from ..config import load_recipe
    from ..costs.network import dump_costs
    from ..panoptic.solve import solve_costs
    from ..train.run import EVAL_PREFIX, RECIPE_NAME

    if not (run / RECIPE_NAME).is_file():
        raise InputError(f"--run {run}: holds no {RECIPE_NAME}; pass the folder of a copsctl "
                         "pretrain or finetune run")
    split = split or load_recipe(run / RECIPE_NAME, overrides).data.val_split
    folder = run / f"{EVAL_PREFIX}{split}"
    costs, pred = folder / "costs.h5", folder / "pred"
    # The solve's check of its folder, before the costs are replaced: a refusal changes nothing.
    check_output_folder(pred, "--out", "solve", inputs={"COSTS": costs})
    with count_progress("dumping costs") as progress:
        summary = dump_costs(costs, run=run, overrides=overrides, split=split,
                             batch_size=batch_size, device=device, progress=progress)
    console.print(f"wrote costs of {summary['images']} {split} images to {costs} "
                  f"({summary['images_per_s']:.1f} images/s on {summary['device']}"
                  + (f", calibration {summary['calibration']}" if summary["calibration"] else "")
                  + ")")
    with count_progress("solving") as progress:
        solved = solve_costs(costs, pred, workers=workers, progress=progress)
    console.print(f"solved {solved['images']} images ({solved['seconds_per_image']:.3f} s per "
                  f"image, {solved['workers']} workers) -> {pred}")
    return pred, split


def _check_json(out_json, gt_json, gt_dir, pred_json=None, pred_dir=None) -> None:
    """``--json`` is none of the JSON files read and lies in none of the PNG folders."""
    check_json_option(out_json, within={"gt": gt_dir, "pred": pred_dir}, gt_json=gt_json,
                      pred_json=pred_json)


def _stored_recipe(pred_dir: Path, split, overrides):
    """The recipe a ``copsctl solve`` folder holds and the split whose ground truth to use."""
    from ..config import load_recipe
    from ..panoptic.solve import RECIPE_YAML

    stored = pred_dir / RECIPE_YAML
    if not pred_dir.is_dir():
        raise InputError(f"--pred {pred_dir}: no such folder")
    if not stored.is_file():
        raise InputError(f"--pred {pred_dir}: holds no {RECIPE_YAML} to find the ground "
                         "truth by; pass --gt-json G (or --gt DIR) or --recipe NAME [--split S]")
    r = load_recipe(stored, overrides)
    split = split or r.data.val_split
    if not r.data.root and r.data.dataset != "coco_panoptic":
        return str(stored), split  # no dataset (make-costs): evaluate says so in one line
    err_console.print(f"[bold]note:[/] ground truth: split {split!r} of the {r.data.dataset} "
                      f"dataset at {r.data.root} ({stored}; --split to choose another)",
                      soft_wrap=True)
    return str(stored), split

