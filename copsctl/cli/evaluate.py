"""``copsctl evaluate``: exact panoptic quality of predictions against a ground truth."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from . import app
from ._util import check_json_option, cli_errors, console, err_console


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
    out_json: Optional[Path] = typer.Option(
        None, "--json", help="Also write {All, Things, Stuff, per_class} as JSON here."),
    workers: int = typer.Option(1, "--workers", help="Threads reading and counting images."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Count images without a prediction as all false negatives."),
) -> None:
    """Exact PQ, SQ and RQ per class and for All, Things and Stuff (cityscapesscripts' numbers)."""
    from ..atomic import write_json
    from ..metrics.pq import MissingPredictionWarning, evaluate

    check_json_option(out_json, gt_json=gt_json, gt_dir=gt_dir, pred_json=pred_json,
                      pred_dir=pred_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingPredictionWarning)
        result = evaluate(gt_json=gt_json, gt_dir=gt_dir, pred_json=pred_json, pred_dir=pred_dir,
                          recipe=recipe, split=split, overrides=overrides, workers=workers,
                          allow_missing=allow_missing)
    for w in caught:
        err_console.print(f"[bold yellow]warning:[/] {w.message}", soft_wrap=True)

    table = Table(title=f"panoptic quality, {result.num_images} images")
    for col, justify in (("id", "right"), ("class", "left"), ("kind", "left"), ("PQ", "right"),
                         ("SQ", "right"), ("RQ", "right"), ("TP", "right"), ("FP", "right"),
                         ("FN", "right")):
        table.add_column(col, justify=justify)
    for cat in result.categories:
        r = result.per_class[cat.id]
        table.add_row(str(cat.id), cat.name, "thing" if cat.isthing else "stuff",
                      f"{100 * r.pq:.1f}", f"{100 * r.sq:.1f}", f"{100 * r.rq:.1f}",
                      str(r.tp), str(r.fp), str(r.fn))
    table.add_section()
    for name, g in (("All", result.all), ("Things", result.things), ("Stuff", result.stuff)):
        table.add_row("", f"[bold]{name}[/]", f"n={g.n}", f"[bold]{100 * g.pq:.1f}[/]",
                      f"{100 * g.sq:.1f}", f"{100 * g.rq:.1f}", "", "", "")
    console.print(table)
    if out_json is not None:
        write_json(out_json, result.to_json())
        console.print(f"wrote {out_json}")
