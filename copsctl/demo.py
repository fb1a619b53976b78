"""``copsctl demo``: the main job on the embedded default, CPU only, no download.

The whole pipeline of the paper on the synthetic dataset, in one folder:

1. ``data``: :func:`copsctl.data.synthetic.make_synthetic` (train and val splits);
2. ``pretrain``: :func:`copsctl.train.pretrain.pretrain` with the ``synthetic_pretrain``
   recipe, shortened to the demo size;
3. ``pretrain-costs`` -> ``pretrain-solve`` -> ``pretrain-evaluate``: the network's costs of
   the val split (:func:`copsctl.costs.network.dump_costs`), the AMWC solver
   (:func:`copsctl.panoptic.solve.solve_costs`) and exact PQ (:func:`copsctl.metrics.pq.evaluate`);
   ``calibrate`` then fits the cost calibration on train images
   (:func:`copsctl.costs.calibrate.calibrate_run`, ``OUT/runs/pretrain/calibration.yaml``) and
   ``calibrated-costs`` -> ``calibrated-solve`` -> ``calibrated-evaluate`` score it;
4. ``finetune``: :func:`copsctl.train.finetune.finetune` through the solver with the PQ
   surrogate (``synthetic_finetune``), from the pre-trained checkpoint and its calibration;
5. ``finetune-costs`` -> ``finetune-solve`` -> ``finetune-evaluate``, as in 3;
6. ``pretrain-pictures``, ``finetune-pictures``: :mod:`copsctl.visualize` (training
   curves and the first val images).

Layout::

    OUT/data/                         synthetic dataset (COCO panoptic layout)
    OUT/runs/<stage>/                 run folders (recipe.yaml, checkpoint.pt, metrics.jsonl)
    OUT/runs/<stage>.json             the run's result, as `pretrain|finetune --json` writes it
    OUT/costs/<stage>.h5 (+ .json)    cost file of the val split (+ dump-costs --json)
    OUT/pred/<stage>/                 predictions (panoptic_pred.json + PNGs + summary.json)
    OUT/metrics/<stage>.json          PQ, as `copsctl evaluate --json` writes it
    OUT/pictures/<stage>_*.png        curves and per-image pictures
    OUT/metrics.json                  both stages side by side (DemoResult.to_json)
    OUT/stages/<name>.json            what each finished stage was made from

With ``solver_only`` the demo is the first version's costs-only path instead: synthetic
costs (:mod:`copsctl.costs.synthetic`, no network) -> solve -> PQ, in
``OUT/costs/synthetic.h5``, ``OUT/costs/synthetic_gt/``, ``OUT/pred/synthetic/`` and
``OUT/metrics/synthetic.json``; it checks the solver in seconds.

Stage reuse: re-running with the same folder skips a stage whose record in
``OUT/stages`` matches its key and whose outputs exist. A key holds the hash of the
recipe sections the stage depends on (:meth:`copsctl.config.Recipe.hash`, with the
machine-specific ``data.root`` left out) and the fingerprints (size and modification
time) of its input files, so a changed setting or a regenerated input re-runs that stage
and everything after it. An interrupted training stage (Ctrl-C) keeps its checkpoint and
continues from it on the next run when its recipe is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .atomic import write_json
from .calibration import CALIBRATION_NAME
from .cpus import check_workers
from .errors import InputError

DEMO_SEED = 0
PRETRAIN_RECIPE = "synthetic_pretrain"
FINETUNE_RECIPE = "synthetic_finetune"
TRAIN_STAGES = ("pretrain", "finetune")
CALIBRATED = "calibrated"
"""The row of the pre-trained network with the cost calibration fitted on train images."""


@dataclass(frozen=True)
class DemoSize:
    """One demo size: the dataset and the overrides shortening the two recipes."""

    train_images: int
    val_images: int
    image_size: tuple[int, int]
    pretrain: tuple[str, ...]
    finetune: tuple[str, ...]
    pictures: int = 2
    calibration_images: int = 64  # train images the calibration is fitted on


# Pre-training dominates the time. The short schedules use a higher learning rate than
# the recipe's (measured on this data: 150 iterations at 2e-3 reach PQ 56 on the val
# split, 1e-3 needs about 500 for 64). Fine-tuning runs synthetic_finetune (the authors'
# settings with the printed gate) from the calibration fitted on train images. 128x128
# crops of the 128x128 images keep whole objects in view. The README lists the measured
# times of both sizes.
DEMO_SIZES = {
    "default": DemoSize(
        train_images=200, val_images=24, image_size=(128, 128),
        pretrain=("train.iterations=300", "train.lr=2e-3", "train.warmup_iters=20",
                  "train.log_every=10", "train.validate_every=100", "train.val_images=8",
                  "train.checkpoint_every=100"),
        finetune=("train.iterations=100", "train.log_every=2", "train.validate_every=50",
                  "train.val_images=8", "train.checkpoint_every=50")),
    "quick": DemoSize(
        train_images=64, val_images=8, image_size=(128, 128),
        pretrain=("train.iterations=80", "train.lr=2e-3", "train.warmup_iters=8",
                  "train.log_every=5", "train.validate_every=40", "train.val_images=8",
                  "train.checkpoint_every=40"),
        finetune=("train.iterations=10", "train.warmup_iters=2", "train.log_every=1",
                  "train.validate_every=0", "train.val_images=8", "train.checkpoint_every=10"),
        pictures=1, calibration_images=16),
}

# The costs-only path (`--solver-only`): (synthetic_costs preset, images).
SOLVER_ONLY_SIZES = {"default": ("small", 24), "quick": ("tiny", 6)}

# Recipe sections whose values change what a training stage computes.
_SECTIONS = {"pretrain": ("data", "model", "loss", "train"),
             "finetune": ("data", "model", "loss", "train", "solver", "finetune")}


@dataclass
class StageResult:
    """One row of the demo's comparison: a trained network through the solver."""

    name: str
    iterations: int
    train_seconds: float  # in training steps (validation and checkpoints not counted)
    pq: dict  # {"All", "Things", "Stuff": {"pq", "sq", "rq", "n"}}
    seconds_per_image_network: float
    seconds_per_image_solver: float
    segments_per_image: float

    def to_json(self) -> dict:
        return {"name": self.name, "iterations": self.iterations,
                "train_seconds": self.train_seconds, "pq": self.pq,
                "seconds_per_image_network": self.seconds_per_image_network,
                "seconds_per_image_solver": self.seconds_per_image_solver,
                "segments_per_image": self.segments_per_image}


@dataclass
class DemoResult:
    """What the demo did: the rows of its report and where the files are."""

    out: Path
    size: str
    images: int
    stages: list[StageResult]
    files: dict[str, str]
    reused: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    seconds: float = 0.0
    solver_only: bool = False

    def to_json(self) -> dict:
        return {"out": str(self.out), "size": self.size, "solver_only": self.solver_only,
                "images": self.images, "stages": {s.name: s.to_json() for s in self.stages},
                "files": self.files, "reused": self.reused, "ran": self.ran,
                "seconds": self.seconds}


def _fingerprint(path: Path) -> list:
    """Size and modification time of a file, or of every file below a folder."""
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _load_record(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _digest(path: Path) -> str:
    """SHA-256 of a small file's bytes: for inputs rewritten with the same content (a run's
    log is rewritten when the run is continued)."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


class _Stages:
    """Skip-or-run bookkeeping: one JSON record per finished stage.

    ``stages/<name>.json`` is written when a stage has finished; ``stages/<name>.started.json``
    while it runs. :attr:`resuming` tells the running stage whether an earlier attempt
    with the same key was cut short (a training stage then continues its checkpoint).
    """

    def __init__(self, out: Path, log: Callable[[str], None]):
        self.dir = out / "stages"
        self.log = log
        self.reused: list[str] = []
        self.ran: list[str] = []
        self.resuming = False

    def run(self, name: str, key: dict, outputs: list[Path], func: Callable[[], None]) -> None:
        record = self.dir / f"{name}.json"
        started = self.dir / f"{name}.started.json"
        key = json.loads(json.dumps(key))  # normalise tuples etc. for the comparison
        if record.is_file() and all(p.exists() for p in outputs) and _load_record(record) == key:
            self.log(f"{name}: up to date, reused")
            self.reused.append(name)
            return
        if record.exists():
            record.unlink()  # stale: a crash below must not leave it claiming success
        self.resuming = started.is_file() and _load_record(started) == key
        write_json(started, key)
        self.log(f"{name}: {'continuing' if self.resuming else 'running'}")
        t0 = time.perf_counter()
        func()
        write_json(record, key)
        started.unlink()
        self.ran.append(name)
        self.log(f"{name}: done in {time.perf_counter() - t0:.1f} s")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "stages").is_dir():
        raise InputError(f"--out {out}: folder is not empty and is not a copsctl demo folder "
                         "(no stages/ inside); choose another")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read this demo file ({exc}); delete "
                         f"{path.parent.parent / 'stages'} to redo every stage") from None


def run_demo(out: str | os.PathLike = "demo_out", *, quick: bool = False,
             solver_only: bool = False, overrides: Sequence[str] = (),
             workers: int | None = None, log: Callable[[str], None] | None = None,
             progress: Callable[[str, object], None] | None = None) -> DemoResult:
    """Run the demo in ``out`` (module notes); finished stages are reused.

    Parameters
    ----------
    out : path-like
        Demo folder (created). A file there, or a non-empty folder that is not a demo
        folder, is refused.
    quick : bool
        The small size (:data:`DEMO_SIZES` ``"quick"``): a first look in a few minutes;
        its numbers say little.
    solver_only : bool
        Only synthetic costs -> solve -> PQ (no network; seconds).
    overrides : sequence of str
        ``section.key=value`` applied to both training recipes after the size's own
        overrides (e.g. ``finetune.lambda_max=100``); not with ``solver_only``.
    workers : int, optional
        Solver threads (default: all CPUs).
    log : callable, optional
        Receives one line per stage (and the training runs' messages).
    progress : callable, optional
        ``progress(stage, event)`` with each :class:`~copsctl.train.loop.TrainEvent` of
        the training stages.

    Returns
    -------
    DemoResult

    Raises
    ------
    InputError
        A bad ``out`` or override (before anything is written).
    KeyboardInterrupt
        Ctrl-C during training; the checkpoint is kept and the next run continues.
    """
    t_start = time.perf_counter()
    out = Path(out)
    log = log or (lambda msg: None)
    _check_out(out)
    workers = check_workers(workers)
    size = "quick" if quick else "default"
    if solver_only:
        if overrides:
            raise InputError("--set: --solver-only runs no recipe (synthetic costs only)")
        return _solver_only(out, size, workers, log, t_start)

    spec = DEMO_SIZES[size]
    data_dir = (out / "data").resolve()
    recipes = _resolve_recipes(spec, data_dir, overrides)  # bad overrides fail here
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(out, log)

    def make_data() -> None:
        from .data.synthetic import make_synthetic

        make_synthetic(data_dir, train=spec.train_images, val=spec.val_images,
                       size=spec.image_size, seed=DEMO_SEED, overwrite=True)

    stages.run("data", {"train": spec.train_images, "val": spec.val_images,
                        "size": list(spec.image_size), "seed": DEMO_SEED},
               [data_dir / "synthetic.json"], make_data)

    rows, files = [], {"data": str(data_dir)}
    weights = None
    for stage in TRAIN_STAGES:
        row = _train_and_score(out, stage, recipes[stage], spec, data_dir, weights, stages,
                               workers, log, progress)
        rows.append(row)
        weights = out / "runs" / stage / "checkpoint.pt"
        names = [stage]
        if stage == "pretrain":
            rows.append(_calibrate_and_score(out, recipes[stage][2], spec, data_dir, stages,
                                             workers, log))
            names.append(CALIBRATED)
        for name in names:
            for kind, path in (("run", out / "runs" / stage),
                               ("costs", out / "costs" / f"{name}.h5"),
                               ("pred", out / "pred" / name),
                               ("metrics", out / "metrics" / f"{name}.json"),
                               ("pictures", out / "pictures")):
                files[f"{name}_{kind}"] = str(path)
    result = DemoResult(out=out, size=size, images=spec.val_images, stages=rows, files=files,
                        reused=stages.reused, ran=stages.ran,
                        seconds=time.perf_counter() - t_start)
    files["summary"] = str(out / "metrics.json")
    write_json(out / "metrics.json", result.to_json())
    return result


def _resolve_recipes(spec: DemoSize, data_dir: Path, overrides: Sequence[str]) -> dict:
    """``{stage: (recipe name, overrides, resolved Recipe)}`` of the two training stages."""
    from .config import load_recipe

    base = [f"data.root={data_dir}"]
    resolved = {}
    for stage, name, own in (("pretrain", PRETRAIN_RECIPE, spec.pretrain),
                             ("finetune", FINETUNE_RECIPE, spec.finetune)):
        sets = base + list(own) + list(overrides)
        resolved[stage] = (name, sets, load_recipe(name, sets))
    return resolved


def _stage_hash(recipe, stage: str) -> str:
    """Hash of the sections ``stage`` depends on, without the machine-specific data.root."""
    return recipe.replace({"data.root": ""}).hash(_SECTIONS[stage])


def _train(stage: str, recipe: tuple, run_dir: Path, weights: Path | None, resuming: bool,
           log, progress) -> None:
    """Run one training stage into ``run_dir``; save its result JSON beside.

    The run left by an interrupted attempt of the same stage key and recipe is continued
    from its checkpoint; any other leftover run folder is replaced.
    """
    from .config import load_recipe

    name, sets, resolved = recipe
    calibration = weights.parent / CALIBRATION_NAME if weights is not None else None
    if calibration is not None and calibration.is_file():
        from .calibration import load_calibration

        # Fine-tuning starts from the calibration beside the weights (its run recipe has it).
        sets = load_calibration(calibration).to_overrides() + list(sets)
        resolved = load_recipe(name, sets)
    if run_dir.exists():
        saved = run_dir / "recipe.yaml"
        same = False
        if resuming and saved.is_file():
            try:
                same = load_recipe(saved).hash() == resolved.hash()
            except InputError:
                same = False
        if not same:
            shutil.rmtree(run_dir)
    events = (lambda event: progress(stage, event)) if progress is not None else None
    with warnings.catch_warnings():
        # The synthetic recipes start from random weights on purpose (no download).
        warnings.filterwarnings("ignore", message=".*starts from random weights")
        if stage == "pretrain":
            from .train.pretrain import pretrain

            result = pretrain(name, run_dir, overrides=sets, resume=True, progress=events,
                              log=log)
        else:
            from .train.finetune import finetune

            result = finetune(name, run_dir, weights=weights, overrides=sets, resume=True,
                              calibration=False, progress=events, log=log)
    if result.interrupted:
        log(f"{stage}: interrupted at iteration {result.iteration}; run the demo again with "
            "the same --out to continue")
        raise KeyboardInterrupt
    write_json(run_dir.parent / f"{stage}.json", result.to_json())


def _train_and_score(out: Path, stage: str, recipe, spec: DemoSize, data_dir: Path,
                     weights: Path | None, stages: _Stages, workers, log,
                     progress) -> StageResult:
    run_dir = out / "runs" / stage
    run_json = out / "runs" / f"{stage}.json"
    ckpt = run_dir / "checkpoint.pt"

    key = {"recipe": _stage_hash(recipe[2], stage),
           "data": _fingerprint(data_dir / "synthetic.json")}
    if weights is not None:
        key["weights"] = _fingerprint(weights)
        calibration = weights.parent / CALIBRATION_NAME
        if calibration.is_file():
            key["calibration"] = _fingerprint(calibration)
    stages.run(stage, key, [ckpt, run_json],
               lambda: _train(stage, recipe, run_dir, weights, stages.resuming, log,
                              progress))
    return _score(out, stage, recipe[2], run_dir, spec, data_dir, stages, workers,
                  calibration=False,
                  iterations=int(_read_json(run_json)["iteration"]),
                  train_seconds=_step_seconds(run_dir))


def _calibrate_and_score(out: Path, recipe, spec: DemoSize, data_dir: Path, stages: _Stages,
                         workers, log) -> StageResult:
    """Fit the pre-trained network's cost calibration on train images, then score it."""
    from .costs.calibrate import calibrate_run

    run_dir = out / "runs" / "pretrain"
    target = run_dir / CALIBRATION_NAME
    stages.run("calibrate", {"checkpoint": _fingerprint(run_dir / "checkpoint.pt"),
                             "images": spec.calibration_images, "solver": _solver_key(recipe)},
               [target], lambda: calibrate_run(run_dir, split="train",
                                               images=spec.calibration_images,
                                               workers=workers,
                                               overrides=recipe.overrides("solver"), log=log))
    return _score(out, CALIBRATED, recipe, run_dir, spec, data_dir, stages, workers,
                  calibration=target, iterations=0, train_seconds=0.0)


def _solver_key(recipe) -> dict:
    """The solver settings of ``recipe`` that change a solution (not its thread count)."""
    return dataclasses.asdict(recipe.solver.options())


def _score(out: Path, name: str, recipe, run_dir: Path, spec: DemoSize, data_dir: Path,
           stages: _Stages, workers, *, calibration, iterations: int,
           train_seconds: float) -> StageResult:
    """The val split of a trained run through the pipeline: costs, solve, PQ, pictures.

    Solved with the solver section of ``recipe`` (the demo's resolved recipe of the stage),
    which a ``--set solver.*`` on a reused run changes, not with the one saved in the run.
    """
    from .costs.network import dump_costs
    from .metrics.pq import evaluate
    from .panoptic.solve import solve_costs
    from .visualize.curves import run_figure
    from .visualize.image import visualize_image

    ckpt = run_dir / "checkpoint.pt"
    costs, costs_json = out / "costs" / f"{name}.h5", out / "costs" / f"{name}.json"
    pred, metrics = out / "pred" / name, out / "metrics" / f"{name}.json"
    pictures = out / "pictures"
    gt_json = data_dir / "annotations" / "panoptic_val2017.json"
    stage = name

    def dump() -> None:
        summary = dump_costs(costs, run=run_dir, overrides=[f"data.root={data_dir}"],
                             batch_size=8, calibration=calibration)
        write_json(costs_json, summary)

    key = {"checkpoint": _fingerprint(ckpt)}
    if calibration:
        key["calibration"] = _fingerprint(calibration)
    stages.run(f"{stage}-costs", key, [costs, costs_json], dump)
    stages.run(f"{stage}-solve", {"costs": _fingerprint(costs), "solver": _solver_key(recipe)},
               [pred / "summary.json"],
               lambda: solve_costs(costs, pred, workers=workers,
                                   overrides=recipe.overrides("solver")))

    def score() -> None:
        result = evaluate(gt_json=gt_json, pred_dir=pred)
        write_json(metrics, result.to_json())

    stages.run(f"{stage}-evaluate", {"gt": _fingerprint(gt_json), "pred": _fingerprint(pred)},
               [metrics], score)

    n_pictures = min(spec.pictures, spec.val_images)
    curves = [pictures / f"{stage}_curves.png"] if stage in TRAIN_STAGES else []
    drawn = curves + [pictures / f"{stage}_val{i}.png" for i in range(n_pictures)]

    def draw() -> None:
        if curves:
            run_figure(run_dir, curves[0], title=f"demo: {stage}")
        for i in range(n_pictures):
            visualize_image(costs, drawn[len(curves) + i], pred=pred, index=i,
                            overrides=[f"data.root={data_dir}"],
                            title=f"demo: {stage}, val image {i}")

    stages.run(f"{stage}-pictures", {"log": _digest(run_dir / "metrics.jsonl"),
                                     "costs": _fingerprint(costs),
                                     "pred": _fingerprint(pred / "panoptic_pred.json")},
               drawn, draw)

    dumped = _read_json(costs_json)
    solved = _read_json(pred / "summary.json")
    pq = _read_json(metrics)
    return StageResult(name=stage, iterations=iterations, train_seconds=train_seconds,
                       pq={k: pq[k] for k in ("All", "Things", "Stuff")},
                       seconds_per_image_network=float(dumped["seconds_per_image"]),
                       seconds_per_image_solver=float(solved["seconds_per_image_solve"]),
                       segments_per_image=float(solved["segments_per_image"]))


def _step_seconds(run_dir: Path) -> float:
    """Seconds spent in training steps, from the run's log (whole run, across resumes)."""
    from .train.logging import METRICS_NAME, read_metrics

    total, last = 0.0, 0
    for r in read_metrics(run_dir / METRICS_NAME, "train"):
        if isinstance(r.get("seconds_per_iter"), (int, float)):
            total += r["seconds_per_iter"] * (r["iteration"] - last)
        last = r["iteration"]
    return total


def _solver_only(out: Path, size: str, workers, log, t_start: float) -> DemoResult:
    """The costs-only path: synthetic costs -> solve -> PQ (module notes)."""
    from .metrics.pq import evaluate_files
    from .panoptic.solve import solve_costs
    from .costs.synthetic import write_synthetic_costs

    preset, images = SOLVER_ONLY_SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    costs, gt_dir = out / "costs" / "synthetic.h5", out / "costs" / "synthetic_gt"
    pred, metrics = out / "pred" / "synthetic", out / "metrics" / "synthetic.json"
    stages = _Stages(out, log)
    stages.run("synthetic-costs", {"preset": preset, "images": images, "seed": DEMO_SEED},
               [costs, gt_dir / "panoptic_gt.json"],
               lambda: write_synthetic_costs(costs, gt_out=gt_dir, preset=preset,
                                             num_images=images, seed=DEMO_SEED))
    stages.run("synthetic-solve", {"costs": _fingerprint(costs)}, [pred / "summary.json"],
               lambda: solve_costs(costs, pred, workers=workers))

    def score() -> None:
        result = evaluate_files(gt_dir / "panoptic_gt.json", pred / "panoptic_pred.json",
                                gt_dir / "panoptic_gt", pred / "panoptic_pred")
        write_json(metrics, result.to_json())

    stages.run("synthetic-evaluate", {"gt": _fingerprint(gt_dir), "pred": _fingerprint(pred)},
               [metrics], score)
    solved = _read_json(pred / "summary.json")
    pq = _read_json(metrics)
    row = StageResult(name=f"synthetic costs ({preset})", iterations=0, train_seconds=0.0,
                      pq={k: pq[k] for k in ("All", "Things", "Stuff")},
                      seconds_per_image_network=0.0,
                      seconds_per_image_solver=float(solved["seconds_per_image_solve"]),
                      segments_per_image=float(solved["segments_per_image"]))
    return DemoResult(out=out, size=size, images=images, stages=[row],
                      files={"costs": str(costs), "gt": str(gt_dir), "pred": str(pred),
                             "metrics": str(metrics)},
                      reused=stages.reused, ran=stages.ran,
                      seconds=time.perf_counter() - t_start, solver_only=True)
