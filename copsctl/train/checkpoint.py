"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is one file written by ``torch.save`` through
:func:`copsctl.atomic.atomic_path` (a crash while saving leaves the previous checkpoint
intact). It holds only tensors and plain Python values, so it loads with
``torch.load(..., weights_only=True)``:

==================  ===========================================================
``format``          ``"copsctl-checkpoint"``
``version``         1
``kind``            what wrote it: ``"pretrain"``, ``"finetune"``, ...
``iteration``       optimizer steps completed
``model``           the model's ``state_dict`` (unwrapped from DDP)
``optimizer``       the optimizer's ``state_dict``
``scaler``          the AMP ``GradScaler`` ``state_dict`` (empty when disabled)
``rng``             one :func:`rng_state` per process (index = rank)
``loop``            the training loop's own counters (e.g. the open log window)
``recipe``          YAML text of the resolved recipe (:meth:`copsctl.config.Recipe.dump`)
``categories``      the class table (COCO ``categories`` list, contiguous order)
``world_size``      number of processes that trained
==================  ===========================================================

:func:`export_model` writes a *model file* with the same format: ``kind`` ``"model"``,
``iteration``, ``model``, ``recipe``, ``categories`` and ``exported_from`` only (no
optimizer, scaler, RNG or loop state), so whatever reads a checkpoint's weights
(``predict``, ``dump-costs``, ``finetune --weights``) reads a model file too. Anything
the model keeps in its state dict (such as the cost calibration of
:class:`~copsctl.model.CostTransform`) travels with the weights.

:func:`load_model` builds a :class:`~copsctl.model.PanopticModel` from such a file (or
from a bare ``state_dict`` file plus a recipe) for cost dumps and fine-tuning.

:func:`load_checkpoint` refuses, in one line naming the file as not a readable copsctl
checkpoint, a file torch cannot read (damaged, cut short, another kind of file), one
holding anything but a mapping with the ``format`` entry, and one whose entries are not
of the kinds in the table (or lack one the caller reads), before anything reads them.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..atomic import atomic_path, check_output, damaged_zip_member
from ..errors import InputError
from .logging import METRICS_NAME, TENSORBOARD_DIR

__all__ = ["FORMAT", "VERSION", "CHECKPOINT_NAME", "RECIPE_NAME", "RUN_FILES", "rng_state",
           "set_rng_state", "save_checkpoint", "load_checkpoint", "load_weights", "load_model",
           "checkpoint_recipe", "checkpoint_class_table", "run_inputs", "run_weights",
           "resolve_model", "export_model", "MODEL_KIND"]

FORMAT = "copsctl-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
"""The model of the run's best validation (exact PQ), beside the last checkpoint: kind
``"best"``, ``iteration``, ``model``, ``recipe``, ``categories`` and ``val`` (the
validation metrics), no optimizer state."""
"""File name of a run's latest checkpoint inside its run folder."""
MODEL_KIND = "model"
RECIPE_NAME = "recipe.yaml"
"""File name of a run's recipe inside its run folder."""
RUN_FILES = (RECIPE_NAME, CHECKPOINT_NAME, METRICS_NAME, TENSORBOARD_DIR, BEST_NAME,
             "calibration.yaml")
"""What a run folder may hold, besides ``eval_*`` folders; anything else is not a run."""
"""``kind`` of a model file written by :func:`export_model`."""


# ---------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's (global) and torch's (CPU and CUDA) generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by :func:`rng_state`."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _as_tuple(value):
    # random.setstate wants tuples; a round trip through some serialisers yields lists.
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


# ---------------------------------------------------------------------------- files


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (see the module table; ``format``/``version`` are added) atomically."""
    body = {"format": FORMAT, "version": VERSION}
    body.update(payload)
    with atomic_path(path) as tmp:
        torch.save(body, tmp)


def _whole(v, least: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _named_tensors(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                       for k, t in v.items())


def _optimizer_state(v) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("state"), dict)
            and isinstance(v.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                    for g in v["param_groups"]))


def _rng_states(v) -> bool:
    def one(state) -> bool:  # what set_rng_state reads
        if not (isinstance(state, dict) and isinstance(state.get("numpy"), dict)):
            return False
        n = state["numpy"]
        return (isinstance(state.get("python"), (list, tuple))
                and isinstance(state.get("torch"), torch.Tensor)
                and isinstance(n.get("kind"), str) and isinstance(n.get("keys"), torch.Tensor)
                and all(isinstance(n.get(k), (int, float)) for k in
                        ("pos", "has_gauss", "cached_gaussian")))
    return isinstance(v, list) and all(one(state) for state in v)


# What each entry of a copsctl checkpoint (module table, and best.pt's ``val``, a
# fine-tuning run's ``init_weights``, a model file's ``exported_from``) must hold; an
# entry holding None counts as absent. A file breaking this is damaged or not copsctl's.
_ENTRIES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": (lambda v: isinstance(v, str), "text"),
    "iteration": (_whole, "a whole number >= 0"),
    "model": (_named_tensors, "a state dict of named tensors"),
    "optimizer": (_optimizer_state, "an optimizer state dict"),
    "scaler": (lambda v: isinstance(v, dict), "a mapping"),
    "rng": (_rng_states, "a list of random states"),
    "loop": (lambda v: isinstance(v, dict), "a mapping"),
    "recipe": (lambda v: isinstance(v, str), "YAML text"),
    "categories": (lambda v: isinstance(v, list), "a list of categories"),
    "world_size": (lambda v: _whole(v, 1), "a whole number >= 1"),
    "val": (lambda v: isinstance(v, dict) and isinstance(v.get("PQ", 0.0), (int, float)),
            "validation metrics"),
    "init_weights": (lambda v: isinstance(v, str), "text"),
    "exported_from": (lambda v: isinstance(v, str), "text"),
}


def load_checkpoint(path: str | os.PathLike, *, allow_state_dict: bool = False,
                    needs: Sequence[str] = ()) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path
        The file.
    allow_state_dict
        Also accept a bare model ``state_dict`` (returned as ``{"model": state_dict}``).
    needs
        Entries the caller reads (e.g. ``("model",)``): a checkpoint without one is refused.

    Raises
    ------
    InputError
        Missing file; one that is not a readable copsctl checkpoint (damaged, cut short,
        of another kind, or holding an entry of the wrong kind or no entry it ``needs``);
        a checkpoint of another schema version.
    """
    path = Path(path)
    if path.is_dir():
        hint = f"{path / CHECKPOINT_NAME}" if (path / CHECKPOINT_NAME).is_file() else "a file"
        raise InputError(f"{path}: is a folder, not a checkpoint file; for a run folder pass "
                         f"--run {path} (dump-costs), or give its checkpoint, {hint}")
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file does not exist")

    def unreadable(why: str) -> InputError:
        return InputError(f"{path}: not a readable copsctl checkpoint ({why})")

    damaged = damaged_zip_member(path)
    if damaged is not None:
        raise unreadable(f"damaged: {damaged}")
    try:
        with warnings.catch_warnings():  # torch warns of the odd bytes it reads in a damaged file
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a checkpoint"
        # The first sentence: torch's zip reader goes on about "an internal miniz error".
        first = re.split(r"(?<=\w)\. ", str(exc).splitlines()[0], maxsplit=1)[0][:160] \
            if str(exc) else ""
        if "weights_only" in str(exc):  # torch's advice to load unsafely is not ours to give
            first = "objects other than tensors and plain data, which is all a checkpoint holds"
        raise unreadable(f"damaged, cut short or another kind of file; {type(exc).__name__}"
                         + (f": {first}" if first else "")) from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") != VERSION:
            raise InputError(f"{path}: checkpoint version {obj.get('version')!r} is not supported "
                             f"(this copsctl reads version {VERSION})")
        for name, (rule, what) in _ENTRIES.items():
            if obj.get(name) is not None and not rule(obj[name]):
                raise unreadable(f"its `{name}` entry is not {what}")
        for name in needs:
            if obj.get(name) is None:
                raise unreadable(f"it holds no `{name}` entry")
        if obj.get("categories") is not None:
            from ..data.categories import ClassTable

            try:
                ClassTable.from_json(obj["categories"])
            except InputError as exc:
                raise unreadable("its `categories` entry is not a class table: "
                                 + str(exc).removeprefix("categories: ")) from None
        return obj
    if allow_state_dict and isinstance(obj, dict) and obj and _named_tensors(obj):
        return {"model": obj}
    held = ("a mapping without" if isinstance(obj, dict) else
            f"an object of type {type(obj).__name__}, not a mapping with")
    raise unreadable(f"it holds {held} the entry format={FORMAT!r}"
                     + ("; nor is it a state dict of named tensors" if allow_state_dict else ""))


def load_weights(model: torch.nn.Module, state: dict, source: str | os.PathLike) -> None:
    """Put the state dict ``state`` into ``model``; InputError naming ``source`` when the
    names or shapes of its tensors differ from the model's."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise InputError(f"{source}: weights do not fit the recipe's model "
                         f"({lines[0] if lines else str(exc).splitlines()[0]})") from None
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise InputError(f"{source}: weights do not fit the recipe's model ({what}; "
                         f"{len(missing)} missing, {len(unexpected)} unexpected keys)")


def checkpoint_recipe(ckpt: dict[str, Any], source: str):
    """The :class:`~copsctl.config.Recipe` stored in a checkpoint, or None."""
    from ..config import recipe_from_text

    return recipe_from_text(ckpt.get("recipe"), f"{source} (stored recipe)")


def checkpoint_class_table(ckpt: dict[str, Any]):
    """The :class:`~copsctl.data.categories.ClassTable` stored in a checkpoint, or None."""
    from ..data.categories import ClassTable

    cats = ckpt.get("categories")
    return ClassTable.from_json(cats) if cats else None


def load_model(path: str | os.PathLike, *, recipe=None, num_classes: int | None = None,
               device: str | torch.device = "cpu"):
    """A :class:`~copsctl.model.PanopticModel` with the weights of a checkpoint.

    Parameters
    ----------
    path
        A copsctl checkpoint, or a bare ``state_dict`` file (then ``recipe`` is required).
    recipe : Recipe, optional
        Model settings; default: the recipe stored in the checkpoint. Its ``model``
        section must describe the stored weights.
    num_classes : int, optional
        K; default: from the checkpoint's class table, else from the weights.
    device
        Where the model is placed; it is returned in eval mode.

    Returns
    -------
    (model, checkpoint dict, recipe)
    """
    from ..model import PanopticModel

    ckpt = load_checkpoint(path, allow_state_dict=True, needs=("model",))
    stored = checkpoint_recipe(ckpt, str(path))
    recipe = recipe if recipe is not None else stored
    if recipe is None:
        raise InputError(f"{path}: holds no recipe; pass one (--recipe)")
    state = ckpt["model"]
    if num_classes is None:
        table = checkpoint_class_table(ckpt)
        key = "semantic_head.predictor.weight"
        if table is not None:
            num_classes = table.num_classes
        elif key in state:
            num_classes = int(state[key].shape[0])
        else:
            raise InputError(f"{path}: cannot tell the number of classes (no class table and "
                             f"no {key!r})")
    if stored is not None and stored.model != recipe.model:
        # model.pretrained only says how training started; it does not shape the weights.
        diff = next((k for k in type(recipe.model).__dataclass_fields__
                     if k != "pretrained" and getattr(stored.model, k) != getattr(recipe.model, k)),
                    None)
        if diff is not None:
            raise InputError(f"{path}: weights were trained with model.{diff} = "
                             f"{getattr(stored.model, diff)!r}, the recipe says "
                             f"{getattr(recipe.model, diff)!r}")
    model = PanopticModel.from_config(recipe, num_classes, from_checkpoint=True)
    load_weights(model, state, path)
    return model.to(device).eval(), ckpt, recipe


def run_inputs(run: str | os.PathLike | None) -> list[Path]:
    """The :data:`RUN_FILES` a run folder holds: inputs of every command that reads the
    run, which none of its outputs may overwrite (empty for None)."""
    if run is None:
        return []
    return [Path(run) / name for name in RUN_FILES if (Path(run) / name).exists()]


def run_weights(run: str | os.PathLike | None, weights: str | os.PathLike | None
                ) -> tuple[Path, Path | None]:
    """The weights file of ``--run RUN | --weights FILE`` and the run's recipe file.

    Returns
    -------
    (weights path, recipe path or None)
        For a run folder its ``checkpoint.pt`` and ``recipe.yaml``; for ``weights`` the
        file itself and None (the recipe stored in the file applies).
    """
    if (run is None) == (weights is None):
        raise InputError("pass either --run RUN_DIR or --weights CHECKPOINT")
    if weights is not None:
        return Path(weights), None
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"--run {run}: run folder does not exist")
    path = run / CHECKPOINT_NAME
    if not path.is_file():
        raise InputError(f"--run {run}: holds no {CHECKPOINT_NAME} (has the run written a "
                         "checkpoint yet?)")
    return path, run / RECIPE_NAME


def resolve_model(run: str | os.PathLike | None = None,
                  weights: str | os.PathLike | None = None, *, recipe: str | None = None,
                  overrides=(), device: str | torch.device = "cpu", calibration=None):
    """The model of ``--run RUN | --weights FILE`` with ``--recipe`` and ``--set``.

    The one translation of those options, shared by ``dump-costs``, ``predict`` and
    ``export``. The recipe is ``recipe`` if given, else the run's ``recipe.yaml``, else
    the one stored in the file; ``overrides`` apply to it, then the cost calibration
    (``calibration``: a ``copsctl calibrate`` file; None: ``calibration.yaml`` beside the
    checkpoint if there is one; False: only the recipe's).

    Returns
    -------
    (model in eval mode on ``device``, checkpoint dict, resolved Recipe, weights path)
    """
    from ..config import load_recipe

    from ..calibration import calibration_for, load_calibration

    path, run_recipe = run_weights(run, weights)
    cal_path = calibration_for(path, calibration)
    if cal_path is not None:
        overrides = list(overrides) + load_calibration(cal_path).to_overrides()
    if recipe is None and run_recipe is not None:
        recipe = str(run_recipe)
    cfg = load_recipe(recipe, overrides) if recipe is not None else None
    if cfg is None and overrides:
        stored = checkpoint_recipe(load_checkpoint(path), str(path))
        if stored is None:
            raise InputError(f"{path}: holds no recipe; pass --recipe")
        cfg = stored.replace(list(overrides))
    model, ckpt, cfg = load_model(path, recipe=cfg, device=device)
    return model, ckpt, cfg, path


def export_model(out: str | os.PathLike, *, run: str | os.PathLike | None = None,
                 weights: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write a model file: weights, class table and resolved recipe of a checkpoint.

    Parameters
    ----------
    out : path-like
        The model file (written atomically; conventionally ``.pt``).
    run, weights : path-like
        A run folder (its checkpoint and ``recipe.yaml``) or a checkpoint or model file.

    Returns
    -------
    dict
        ``out``, ``source``, ``kind`` (of the source), ``iteration``, ``bytes`` (of the
        model file), ``source_bytes``, ``parameters`` (tensor elements), ``classes``.
    """
    # load_model checks that the weights fit the recipe.
    _, ckpt, cfg, path = resolve_model(run, weights)
    table = checkpoint_class_table(ckpt)
    if table is None:
        raise InputError(f"{path}: holds no class table (a bare state dict); export a "
                         "checkpoint of copsctl pretrain or finetune")
    out = check_output(out, "--out", inputs={"--run": run_inputs(run), "--weights": path})
    save_checkpoint(out, {"kind": MODEL_KIND, "iteration": ckpt.get("iteration"),
                          "model": ckpt["model"], "recipe": cfg.dump(),
                          "categories": table.to_json(), "exported_from": str(path)})
    return {"out": str(out), "source": str(path), "kind": ckpt.get("kind"),
            "iteration": ckpt.get("iteration"), "bytes": out.stat().st_size,
            "source_bytes": path.stat().st_size,
            "parameters": int(sum(v.numel() for v in ckpt["model"].values())),
            "classes": table.num_classes}
