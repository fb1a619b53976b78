"""The README's ablation loop (``docs/ablation.sh``) run with bash on the tiny recipe.

The script fine-tunes once per value of a recipe key, dumps costs, solves and evaluates
each run through the installed ``copsctl`` command, and prints one PQ table from the
``evaluate --json`` files. Here: ``finetune.lambda_max`` in {10, 100} on a 4 + 2 image
synthetic dataset, from a 4-iteration pre-training (a handful of CPU seconds per command).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from copsctl.config import load_recipe

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "ablation.sh"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def weights(tiny_run):
    data, run = tiny_run
    return data, run / "checkpoint.pt"


@pytest.mark.skipif(shutil.which("bash") is None or not (BIN / "copsctl").is_file(),
                    reason="needs bash and the installed copsctl command beside the Python")
def test_ablation_script_runs_the_loop_and_prints_one_pq_table(weights, tmp_path):
    data, ckpt = weights
    out = tmp_path / "abl"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               RECIPE="synthetic_tiny", OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(SCRIPT), "finetune.lambda_max", "10 100", str(ckpt),
                           str(out), "--set", f"data.root={data}"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout.strip().splitlines()[-4:]
    assert table[:2] == ["| finetune.lambda_max | PQ | PQ_th | PQ_st |", "|---|---|---|---|"]
    for value, row in zip(("10", "100"), table[2:]):
        # each row is the run of that value, scored by `copsctl evaluate --json`
        assert load_recipe(out / value / "run" / "recipe.yaml").finetune.lambda_max == \
            float(value)
        pq = json.loads((out / value / "pq.json").read_text())
        expected = [value] + [f"{100 * pq[g]['pq']:.1f}" for g in ("All", "Things", "Stuff")]
        assert row == "| " + " | ".join(expected) + " |"
        assert (out / value / "pred" / "panoptic_pred.json").is_file()
        assert (out / value / "costs.h5").is_file()

    # a bad value stops the loop with copsctl's exit code 2 and a one-line error
    proc = subprocess.run(["bash", str(SCRIPT), "finetune.lambda_max", "0.5", str(ckpt),
                           str(tmp_path / "bad"), "--set", f"data.root={data}"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "finetune.lambda_min" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()
