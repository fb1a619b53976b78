"""``copsctl visualize``: pictures (PNG) of an image's costs and prediction, a run's curves,
and the pipeline diagram."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from ._app import App, app
from ._util import (GT_HELP, GT_JSON_HELP, PRED_HELP, PRED_JSON_HELP, SET_HELP, cli_errors,
                    console, err_console, write_json_option)

visualize_app = App(name="visualize", no_args_is_help=True,
                    help="Pictures (PNG): an image's costs and prediction, a run's "
                    "training curves, the pipeline diagram.")
app.add_typer(visualize_app)

_HELP_JSON = "Also write what was drawn as JSON here."


@visualize_app.command("image")
@cli_errors
def image_command(
    costs: Path = typer.Argument(..., help="Cost file (from dump-costs or make-costs)."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    pred: Optional[Path] = typer.Option(None, "--pred", help=PRED_HELP),
    pred_json: Optional[Path] = typer.Option(None, "--pred-json", help=PRED_JSON_HELP),
    index: Optional[int] = typer.Option(None, "--index", help="Position of the image in the "
                                        "cost file (default 0)."),
    image_id: Optional[str] = typer.Option(None, "--image-id", help="Id of the image instead "
                                           "of --index."),
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help="Recipe locating the dataset (default: the one stored in the "
        "cost file)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    split: Optional[str] = typer.Option(None, "--split", help="Dataset split holding the image "
                                        "(default: the recipe's data.val_split)."),
    gt_json: Optional[Path] = typer.Option(None, "--gt-json",
                                           help=GT_JSON_HELP + " Instead of the dataset's."),
    gt: Optional[Path] = typer.Option(None, "--gt", "--gt-dir",
                                      help=GT_HELP + " Instead of the dataset's."),
    out_json: Optional[Path] = typer.Option(None, "--json", help=_HELP_JSON),
) -> None:
    """Input, ground truth and prediction overlays, semantic argmin and cut probabilities."""
    from ..atomic import check_output
    from ..visualize.image import visualize_image

    inputs = {"COSTS": costs, "--pred": pred, "--pred-json": pred_json, "--gt": gt,
              "--gt-json": gt_json}
    check_output(out, "--out", inputs=inputs)
    check_output(out_json, "--json", inputs={**inputs, "--out": out})
    r = visualize_image(costs, out, pred=pred, pred_json=pred_json, index=index,
                        image_id=image_id, recipe=recipe, overrides=overrides, split=split,
                        gt_json=gt_json, gt_dir=gt)
    pq = f", image PQ {r['pq']:.1f}" if r["pq"] is not None else ""
    console.print(f"wrote {r['out']} (image {r['image_id']}{pq})")
    write_json_option(out_json, r)


@visualize_app.command("run")
@cli_errors
def run_command(
    run_dir: Path = typer.Argument(..., help="Run folder of copsctl pretrain or finetune."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    out_json: Optional[Path] = typer.Option(None, "--json", help=_HELP_JSON),
) -> None:
    """Training curves from the run's metrics.jsonl (fine-tuning: surrogate vs exact PQ)."""
    from ..atomic import check_output
    from ..visualize.curves import run_figure

    check_output(out, "--out", inputs={"RUN_DIR": run_dir})
    check_output(out_json, "--json", inputs={"--out": out})
    r = run_figure(run_dir, out)
    for note in r["notes"]:
        err_console.print(f"[bold]note:[/] {escape(note)}", soft_wrap=True)
    console.print(f"wrote {r['out']} ({r['train_records']} training and {r['val_records']} "
                  f"validation records, up to iteration {r['last_iteration']})")
    write_json_option(out_json, r)


@visualize_app.command("pipeline")
@cli_errors
def pipeline_command(
    out: Path = typer.Option(Path("pipeline.png"), "--out", help="PNG file to write, by default "
                             "in the current folder (the repository's picture: --out "
                             "docs/pipeline.png)."),
) -> None:
    """The pipeline diagram: image -> network -> costs -> solver -> panoptic -> PQ, and back."""
    from ..atomic import check_output
    from ..visualize.pipeline import pipeline_figure

    check_output(out, "--out")
    r = pipeline_figure(out)
    console.print(f"wrote {r['out']} ({r['bytes'] / 1024:.0f} KB)")
