"""Helpers shared by the CLI commands: error reporting and consoles."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from ..errors import InputError, reporting_errors

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _say(kind: str, msg: str) -> None:
    # escaped: a message may quote input such as "[1]", which is not rich markup
    err_console.print(f"[bold red]{kind}:[/] {escape(msg)}" if msg else f"[bold red]{kind}[/]",
                      soft_wrap=True)


def cli_errors(func):
    """Turn :class:`InputError` into one line on stderr and exit code 2, Ctrl-C into exit
    code 130 (:func:`copsctl.errors.reporting_errors`)."""
    return reporting_errors(func, _say)


def is_terminal() -> bool:
    return sys.stdout.isatty()


def write_json_option(path, obj) -> None:
    """Write a command's machine-readable result for ``--json PATH`` (nothing when None)."""
    if path is None:
        return
    from ..atomic import write_json

    write_json(path, obj)
    console.print(f"wrote {path}")


def check_json_option(path, *, within=None, **inputs) -> None:
    """Check ``--json PATH`` before any work (:func:`copsctl.atomic.check_output`).

    ``inputs`` maps option names (``out`` for ``--out``; underscores for dashes) to the
    command's inputs and other outputs, which ``--json`` must not overwrite; ``within``
    maps option names to folders it must not lie inside (a run folder, a folder that is
    read or replaced as a whole).
    """
    from ..atomic import check_output

    def named(paths):
        return {"--" + k.replace("_", "-"): v for k, v in (paths or {}).items()}

    check_output(path, "--json", inputs=named(inputs), within=named(within))


def with_device(overrides, device):
    """``--set`` overrides plus ``train.device`` from a command's ``--device`` (which wins),
    checked here so that a device this machine lacks is named as the user gave it."""
    if device is None:
        return list(overrides)
    from ..config import TrainConfig
    from ..train.distributed import resolve_device

    choices = TrainConfig.__dataclass_fields__["device"].metadata["choices"]
    if device not in choices:
        raise InputError(f"--device must be one of {', '.join(choices)}, got {device!r}")
    resolve_device(device, option="--device")
    return [*overrides, f"train.device={device}"]


SET_HELP = ("Override a recipe key: section.key=value, e.g. data.root=DIR (string keys take "
            "the text as it is, others read it as YAML); repeatable.")
RUN_HELP = "Run folder of copsctl pretrain/finetune (its checkpoint.pt and recipe.yaml)."
RUN_OUT_HELP = ("Run folder: recipe.yaml, checkpoint.pt, metrics.jsonl, tensorboard/. Must be "
                "new or empty without --resume.")
RESUME_HELP = "Continue the run in --out exactly where it stopped."
RUN_JSON_HELP = ("Also write the result (iterations, seconds, last train and validation "
                 "metrics) as JSON here.")
DEVICE_HELP = ("auto (CUDA when available), cpu or cuda; the recipe's train.device, which it "
               "overrides.")


# The prediction and ground-truth options, spelled and explained the same in every command.
PRED_HELP = ("Prediction folder: a `copsctl solve` or `predict` output folder, or a COCO "
             "panoptic PNG folder (its JSON: --pred-json, default the folder path plus .json).")
PRED_JSON_HELP = ("Prediction COCO panoptic JSON (its PNG folder: --pred, default the JSON path "
                  "without .json).")
GT_HELP = ("Ground-truth COCO panoptic PNG folder (its JSON: --gt-json, default the folder path "
           "plus .json).")
GT_JSON_HELP = ("Ground-truth COCO panoptic JSON (its PNG folder: --gt, default the JSON path "
                "without .json).")
