"""SIGKILL at random moments of six commands, then the rerun or ``--resume``: is anything lost?

``python -m copsctl.benchmarks.fault_injection --trials N [--commands ...]``

For each command an uninterrupted run gives the reference result first. Then each of
``N`` trials starts the command as a separate process over an earlier, complete result
(the "old" one) where the command replaces one, and kills it with SIGKILL:

* odd trials at a uniformly random moment of the command's measured wall time (after
  Python's start-up);
* even trials exactly inside a critical window, through the fault points of
  :mod:`copsctl.atomic` (``COPSCTL_FAULT``): with every temporary written but nothing
  published, between two outputs being published, after a folder swap but before the
  old folder is deleted, and inside a checkpoint write of a training run.

Right after the kill every output under its real name must be either the complete old
result or the complete new one (files readable and equal to one of them; a run's
checkpoint loadable). Then the command is run again (training: ``--resume``), which must
succeed and give exactly the reference result: bit for bit for the files, and for
training every tensor of the model and the Adam state and the log. Files of the user
beside the outputs must be untouched and no temporary may be left.

The table counts trials, faults injected (the process died of the SIGKILL; a trial whose
command finished first is counted as finished), faults survived, and trials where
something was lost (an output neither old nor new, a failed rerun, a result differing
from the reference, a deleted user file, or a leftover temporary).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

COMMANDS = ("make-synthetic", "make-costs", "solve", "dump-costs", "pretrain", "finetune")
_REPO = Path(__file__).resolve().parent.parent.parent
_TRAIN_SETS = ("train.iterations=3", "train.warmup_iters=1", "train.checkpoint_every=1",
               "train.log_every=1", "train.validate_every=0", "train.val_images=1",
               "data.num_workers=0")


def _is_timing(key: str) -> bool:
    """A wall-clock entry of the metrics log; everything else must agree after a resume."""
    return key.startswith("time") or "seconds" in key or key.endswith("_per_s")


# ---------------------------------------------------------------------------- digests


def _tree_digest(folder: Path, skip: tuple[str, ...] = ()) -> str | None:
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in skip:
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _solve_digest(folder: Path) -> str | None:
    """The prediction folder without its timings, plus the thresholds it used."""
    tree = _tree_digest(folder, skip=("summary.json", ".copsctl-output.json"))
    if tree is None:
        return None
    try:
        summary = json.loads((folder / "summary.json").read_text())
        manifest = json.loads((folder / ".copsctl-output.json").read_text())
    except (OSError, ValueError):
        return "corrupt"
    return f"{tree}:{summary['thing_area']}:{len(manifest['files'])}"


def _cost_digest(path: Path) -> str | None:
    if not path.exists():
        return None
    from ..costs.cache import CostFile
    from ..errors import InputError

    h = hashlib.sha256()
    try:
        with CostFile(path) as cf:
            h.update(json.dumps([cf.image_ids, cf.file_names, cf.image_sizes.tolist(),
                                 cf.recipe_text]).encode())
            for i in range(len(cf)):
                node, edge, _ = cf.read(i)
                h.update(node.tobytes() + edge.tobytes())
    except InputError:
        return "corrupt"
    return h.hexdigest()


def _run_digest(folder: Path) -> str | None:
    """A run's checkpoint (every tensor of model and optimizer, the iteration) and log."""
    ckpt_path = folder / "checkpoint.pt"
    if not ckpt_path.exists():
        return None
    import torch

    from ..errors import InputError
    from ..train.checkpoint import load_checkpoint
    from ..train.logging import read_metrics

    try:
        ckpt = load_checkpoint(ckpt_path)
    except InputError:
        return "corrupt"
    h = hashlib.sha256(str(ckpt["iteration"]).encode())

    def add(obj) -> None:
        if isinstance(obj, torch.Tensor):
            h.update(obj.contiguous().numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(str(k).encode())
                add(obj[k])
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                add(v)
        else:
            h.update(repr(obj).encode())

    add(ckpt["model"])
    add(ckpt["optimizer"])
    records = [{k: v for k, v in r.items() if not _is_timing(k)}
               for r in read_metrics(folder / "metrics.jsonl")
               if r.get("iteration", 0) <= ckpt["iteration"]]
    h.update(json.dumps(records, sort_keys=True).encode())
    return f"{ckpt['iteration']}:{h.hexdigest()}"


def _run_complete(folder: Path) -> bool:
    """Right after a kill: the run folder's checkpoint, if any, loads."""
    return _run_digest(folder) != "corrupt"


# ---------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    """One command: how to make its old result, its new run, its rerun and its outputs."""

    name: str
    new: Callable[[Path], list]               # args of the run that is killed
    rerun: Callable[[Path], list]             # args after the kill
    outputs: Callable[[Path], dict]           # {output path: digest function}
    points: tuple[str, ...]                   # fault points for the even trials
    old: Callable[[Path], list] | None = None  # args that make the old result
    reference: dict = field(default_factory=dict)
    old_digests: dict = field(default_factory=dict)
    seconds: float = 0.0
    training: bool = False


def _cmd(args: list) -> list[str]:
    return [sys.executable, "-m", "copsctl", *[str(a) for a in args]]


def _env(fault: str | None = None) -> dict:
    env = dict(os.environ)
    # one thread: bit-identical resumes need a fixed reduction order (as in the tests)
    env.update(PYTHONPATH=str(_REPO) + os.pathsep + env.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("COPSCTL_FAULT", None)
    if fault:
        env["COPSCTL_FAULT"] = fault
    return env


def _invoke(args: list) -> tuple[int, str]:
    """Run copsctl in this process (exit code, output): the runs that are not killed.

    In-process runs save a Python and torch start-up each; they give the same bits as
    the killed subprocesses because both compute on one thread.
    """
    import torch
    from typer.testing import CliRunner

    from ..cli import app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
    return res.exit_code, res.output


def _check(args: list, what: str) -> float:
    """Run copsctl in this process; raise unless it succeeds; return its seconds."""
    t0 = time.perf_counter()
    code, output = _invoke(args)
    if code != 0:
        raise RuntimeError(f"{what} failed ({code}): {output.strip()[-500:]}")
    return time.perf_counter() - t0


def _wall_seconds(args: list, what: str) -> float:
    """Seconds of an uninterrupted run as a separate process (the timer kills' window)."""
    t0 = time.perf_counter()
    res = subprocess.run(_cmd(args), env=_env(), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


def scenarios(shared: Path) -> dict[str, Scenario]:
    """The six scenarios over inputs in ``shared`` (made by :func:`prepare_shared`)."""
    data, pre, costs = shared / "data", shared / "pre", shared / "costs.h5"
    tiny = ["--recipe", "synthetic_tiny", "--set", f"data.root={data}"]
    for s in _TRAIN_SETS:
        tiny += ["--set", s]
    return {
        "make-synthetic": Scenario(
            "make-synthetic",
            old=lambda w: ["make-synthetic", "--out", w / "syn", "--train", 3, "--val", 2,
                           "--size", "32x32", "--seed", 1],
            new=lambda w: ["make-synthetic", "--out", w / "syn", "--train", 3, "--val", 2,
                           "--size", "32x32", "--seed", 2, "--overwrite"],
            rerun=lambda w: ["make-synthetic", "--out", w / "syn", "--train", 3, "--val", 2,
                             "--size", "32x32", "--seed", 2, "--overwrite"],
            outputs=lambda w: {w / "syn": _tree_digest},
            points=("atomic.swapped:1", "atomic.written:1")),
        "make-costs": Scenario(
            "make-costs",
            old=lambda w: ["make-costs", "--out", w / "c.h5", "--images", 3, "--seed", 1],
            new=lambda w: ["make-costs", "--out", w / "c.h5", "--images", 3, "--seed", 2],
            rerun=lambda w: ["make-costs", "--out", w / "c.h5", "--images", 3, "--seed", 2],
            outputs=lambda w: {w / "c.h5": _cost_digest, w / "c_gt": _tree_digest},
            points=("atomic.between:1", "atomic.swapped:1", "atomic.written:2",
                    "atomic.written:1")),
        "solve": Scenario(
            "solve",
            old=lambda w: ["solve", costs, "--out", w / "pred", "--workers", 1,
                           "--thing-area", 0],
            new=lambda w: ["solve", costs, "--out", w / "pred", "--workers", 1],
            rerun=lambda w: ["solve", costs, "--out", w / "pred", "--workers", 1],
            outputs=lambda w: {w / "pred": _solve_digest},
            points=("atomic.swapped:1", "atomic.written:1")),
        "dump-costs": Scenario(
            "dump-costs",
            old=lambda w: ["dump-costs", "--run", pre, "--out", w / "d.h5", "--limit", 1,
                           "--device", "cpu"],
            new=lambda w: ["dump-costs", "--run", pre, "--out", w / "d.h5", "--device", "cpu"],
            rerun=lambda w: ["dump-costs", "--run", pre, "--out", w / "d.h5", "--device", "cpu"],
            outputs=lambda w: {w / "d.h5": _cost_digest},
            points=("atomic.written:1",)),
        "pretrain": Scenario(
            "pretrain", training=True,
            new=lambda w: ["pretrain", *tiny, "--out", w / "run"],
            rerun=lambda w: ["pretrain", *tiny, "--out", w / "run", "--resume"],
            outputs=lambda w: {w / "run": _run_digest},
            # 1: recipe.yaml; 2, 3, 4: the checkpoints of iterations 1, 2, 3
            points=("atomic.written:3", "atomic.written:2", "atomic.written:4")),
        "finetune": Scenario(
            "finetune", training=True,
            new=lambda w: ["finetune", *tiny, "--weights", pre / "checkpoint.pt",
                           "--out", w / "run"],
            rerun=lambda w: ["finetune", *tiny, "--weights", pre / "checkpoint.pt",
                             "--out", w / "run", "--resume"],
            outputs=lambda w: {w / "run": _run_digest},
            points=("atomic.written:3", "atomic.written:2", "atomic.written:4")),
    }


def prepare_shared(shared: Path) -> None:
    """The inputs every scenario reads: a dataset, a pre-trained run, a cost file."""
    _check(["make-synthetic", "--out", shared / "data", "--train", 3, "--val", 2,
            "--size", "32x32", "--seed", 0], "make-synthetic (inputs)")
    sets = []
    for s in _TRAIN_SETS:
        sets += ["--set", s]
    _check(["pretrain", "--recipe", "synthetic_tiny", "--set", f"data.root={shared / 'data'}",
            *sets, "--out", shared / "pre"], "pretrain (inputs)")
    _check(["make-costs", "--out", shared / "costs.h5", "--images", 3], "make-costs (inputs)")


def _digests(sc: Scenario, work: Path) -> dict:
    """``{output path relative to the work folder: digest}``."""
    return {p.relative_to(work).as_posix(): fn(p) for p, fn in sc.outputs(work).items()}


def _old_dir(sc: Scenario, root: Path) -> Path:
    return root / f"{sc.name}-old"


def _copy_outputs(sc: Scenario, src: Path, dst: Path) -> None:
    for path in sc.outputs(src):
        target = dst / path.relative_to(src)
        if path.is_dir():
            shutil.copytree(path, target)
        elif path.exists():
            shutil.copy2(path, target)


def calibrate(sc: Scenario, root: Path, timed: bool) -> None:
    """The old result (kept for the trials), the reference result and, when ``timed``,
    the wall time of the command as a process."""
    if sc.old is not None:
        old = _old_dir(sc, root)
        old.mkdir()
        _check(sc.old(old), f"{sc.name} (old result)")
        sc.old_digests = _digests(sc, old)
    for kind in ("reference", "timed") if timed else ("reference",):
        work = root / f"{sc.name}-{kind}"
        work.mkdir()
        if sc.old is not None:
            _copy_outputs(sc, _old_dir(sc, root), work)
        if kind == "reference":
            _check(sc.new(work), f"{sc.name} (reference)")
            sc.reference = _digests(sc, work)
        else:
            sc.seconds = _wall_seconds(sc.new(work), f"{sc.name} (timed)")
        shutil.rmtree(work)


@dataclass
class TrialResult:
    killed: bool
    lost: str | None  # what was lost, None when nothing


def _leftovers(work: Path) -> list[str]:
    from ..atomic import is_leftover

    return [p.name for p in work.rglob("*") if is_leftover(p.name)]


def trial(sc: Scenario, root: Path, index: int, rng: random.Random,
          startup: float = 0.0) -> TrialResult:
    """One kill and rerun of scenario ``sc``; see the module notes for what is checked.

    Even trials kill at the fault points in turn, odd ones at a moment drawn uniformly
    between ``startup`` (the seconds Python needs to start copsctl, when nothing can be
    written yet) and the command's wall time.
    """
    work = root / f"{sc.name}-{index}"
    work.mkdir()
    try:
        notes = work / "user_notes.txt"
        notes.write_text("the user's own file")
        if sc.old is not None:
            _copy_outputs(sc, _old_dir(sc, root), work)
        fault = None
        if index % 2 == 0:
            fault = sc.points[(index // 2) % len(sc.points)]
            proc = subprocess.Popen(_cmd(sc.new(work)), env=_env(fault),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            proc.wait()
        else:
            proc = subprocess.Popen(_cmd(sc.new(work)), env=_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                proc.wait(timeout=rng.uniform(startup, max(startup, sc.seconds)))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        killed = proc.returncode == -signal.SIGKILL
        if not killed and proc.returncode != 0:
            return TrialResult(False, f"the command failed ({proc.returncode}) without a fault")

        # right after the kill: every output the complete old or the complete new one
        now = _digests(sc, work)
        for path, digest in now.items():
            if sc.training:
                if not _run_complete(work / path):
                    return TrialResult(killed, f"{path}: unreadable checkpoint after the kill")
                continue
            allowed = {sc.reference[path], sc.old_digests.get(path)}
            if digest not in allowed:
                return TrialResult(killed, f"{path}: neither the old nor the new result "
                                           f"after the kill ({fault or 'timer'})")

        code, output = _invoke(sc.rerun(work))
        if code != 0:
            return TrialResult(killed, f"the rerun failed ({code}): "
                                       f"{output.strip().splitlines()[-1:]}")
        if _digests(sc, work) != sc.reference:
            return TrialResult(killed, f"the rerun's result differs from the reference "
                                       f"({fault or 'timer'})")
        if not notes.is_file() or notes.read_bytes() != b"the user's own file":
            return TrialResult(killed, "the user's file beside the outputs was changed")
        left = _leftovers(work)
        if left:
            return TrialResult(killed, f"temporaries left after the rerun: {left[:3]}")
        return TrialResult(killed, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(trials: int, commands=COMMANDS, seed: int = 0, root: Path | None = None,
        log: Callable[[str], None] | None = None) -> list[dict]:
    """Run ``trials`` trials of each command; one table row per command."""
    say = log or (lambda msg: None)
    rng = random.Random(seed)
    own = root is None
    root = Path(tempfile.mkdtemp(prefix="copsctl-faults-")) if own else Path(root)
    rows = []
    try:
        shared = root / "shared"
        shared.mkdir()
        prepare_shared(shared)
        startup = _wall_seconds(["--help"], "copsctl --help")
        all_scenarios = scenarios(shared)
        for name in commands:
            sc = all_scenarios[name]
            calibrate(sc, root, timed=trials > 1)
            killed = survived = 0
            problems = []
            t0 = time.perf_counter()
            for i in range(trials):
                r = trial(sc, root, i, rng, startup)
                killed += r.killed
                survived += r.killed and r.lost is None
                if r.lost is not None:
                    problems.append(r.lost)
            rows.append({"command": name, "trials": trials, "faults": killed,
                         "survived": survived, "finished_first": trials - killed,
                         "lost": len(problems), "problems": problems,
                         "reference_s": sc.seconds, "seconds": time.perf_counter() - t0})
            say(_row_text(rows[-1]))
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def _row_text(r: dict) -> str:
    return (f"| {r['command']} | {r['trials']} | {r['faults']} | {r['survived']} | "
            f"{r['finished_first']} | {r['lost']} | {r['seconds']:.0f} |")


HEADER = ("| command | trials | faults injected | faults survived | finished before the kill "
          "| trials with something lost | seconds |\n|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10, help="trials per command")
    ap.add_argument("--commands", nargs="*", default=list(COMMANDS), choices=COMMANDS)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"fault injection: {args.trials} trials per command, seed {args.seed}, "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(HEADER, flush=True)
    rows = run(args.trials, args.commands, seed=args.seed, log=lambda s: print(s, flush=True))
    total = {k: sum(r[k] for r in rows) for k in ("trials", "faults", "survived",
                                                  "finished_first", "lost")}
    print(f"| all | {total['trials']} | {total['faults']} | {total['survived']} | "
          f"{total['finished_first']} | {total['lost']} | |")
    for r in rows:
        for p in r["problems"]:
            print(f"{r['command']}: {p}")
    if args.json:
        from ..atomic import write_json

        write_json(args.json, rows)
    return 1 if total["lost"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
