"""``copsctl check-data``: read every image and label of a recipe's dataset once."""

from __future__ import annotations

from typing import List, Optional

import typer

from ._app import app
from ._progress import count_progress
from ._util import SET_HELP, check_json_option, cli_errors, console, write_json_option


@app.command("check-data")
@cli_errors
def check_data_command(
    recipe: str = typer.Option(..., "--recipe", help="Recipe file or packaged name; its "
                               "data.* keys locate the dataset."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    splits: List[str] = typer.Option([], "--split", help="Split to check (repeatable; default: "
                                     "the recipe's data.train_split and data.val_split)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Reading threads (default: "
                                          "all CPUs)."),
    out_json: Optional[str] = typer.Option(None, "--json", help="Also write the counts and "
                                           "seconds as JSON here."),
) -> None:
    """The check pretrain and finetune run before they write anything: every image and
    panoptic PNG decoded, sizes compared, every segment id looked up in the JSON."""
    from ..config import load_recipe
    from ..cpus import check_workers
    from ..data.check import check_output_beside_data, check_readers
    from ..train.data import open_split

    check_json_option(out_json)
    check_workers(workers)
    cfg = load_recipe(recipe, overrides)
    names = list(dict.fromkeys(splits or [cfg.data.train_split, cfg.data.val_split]))
    readers = {name: open_split(cfg, name) for name in names}
    check_output_beside_data(out_json, "--json", readers)
    with count_progress("checking data") as progress:
        result = check_readers(readers, workers=workers, progress=progress)
    per_split = ", ".join(f"{n} {s}" for s, n in result["images"].items())
    where = (", ".join(str(r.json_path) for r in readers.values())
             if cfg.data.dataset == "coco_panoptic" else cfg.data.root)
    console.print(f"{where}: all {result['total']} images and labels read ({per_split}) "
                  f"in {result['seconds']:.1f} s", soft_wrap=True)
    write_json_option(out_json, {"root": cfg.data.root, **result})
