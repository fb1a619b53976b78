"""``copsctl evaluate``: exact PQ, semantic mIoU and instance AP of predictions."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import typer

from ._app import app
from ._util import check_json_option, cli_errors, console, err_console


def _fraction(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


@app.command("evaluate")
@cli_errors
def evaluate_command(
    gt_json: Optional[Path] = typer.Option(None, "--gt-json", help="Ground-truth COCO panoptic JSON."),
    gt_dir: Optional[Path] = typer.Option(
        None, "--gt-dir", help="Ground-truth PNG folder (default: --gt-json without .json)."),
    pred_json: Optional[Path] = typer.Option(None, "--pred-json", help="Prediction COCO panoptic JSON."),
    pred_dir: Optional[Path] = typer.Option(
        None, "--pred-dir", help="Prediction PNG folder (default: --pred-json without .json), or "
        "a `copsctl solve` output folder."),
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help="Take the ground truth from this recipe's dataset instead."),
    split: Optional[str] = typer.Option(
        None, "--split", help="Split of the recipe's dataset (default: its data.val_split)."),
    overrides: List[str] = typer.Option(
        [], "--set", help="Override a key of --recipe: section.key=value (e.g. data.root=...); "
        "repeatable."),
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
    workers: int = typer.Option(1, "--workers", help="Threads reading and counting images."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Count images without a prediction as all false negatives."),
) -> None:
    """Exact PQ (cityscapesscripts' numbers), semantic mIoU and COCO instance AP."""
    from rich.table import Table

    from ..atomic import write_json
    from ..metrics.evaluation import evaluate, keep_freed_memory, parse_metrics
    from ..metrics.pq import MissingPredictionWarning

    check_json_option(out_json, gt_json=gt_json, gt_dir=gt_dir, pred_json=pred_json,
                      pred_dir=pred_dir)
    keep_freed_memory()
    wanted = parse_metrics(metrics)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingPredictionWarning)
        result = evaluate(gt_json=gt_json, gt_dir=gt_dir, pred_json=pred_json, pred_dir=pred_dir,
                          recipe=recipe, split=split, overrides=overrides, metrics=wanted,
                          workers=workers, allow_missing=allow_missing,
                          cityscapes_ap=cityscapes_ap)
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
