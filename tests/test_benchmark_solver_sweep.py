"""The sweep of generated problems of random settings (copsctl.benchmarks.solver_sweep)."""

import json

import numpy as np

from copsctl.benchmarks.solver_sweep import DIFFICULTIES, EDGE_FACTORS, main, sweep_problem


def test_each_seed_draws_its_own_settings_and_the_same_again():
    a, settings = sweep_problem("tiny", 3)
    b, again = sweep_problem("tiny", 3)
    assert settings == again
    assert settings["difficulty"] in DIFFICULTIES and settings["edge_factor"] in EDGE_FACTORS
    assert 0.7 <= settings["accuracy"] <= 0.95
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    seen = {tuple(sorted(sweep_problem("tiny", s)[1].items())) for s in range(6)}
    assert len(seen) == 6


def test_a_multiway_cut_has_one_label_per_segment_none_partitionable():
    seed = next(s for s in range(40) if sweep_problem("tiny", s)[1]["mwc"])
    (nc, _, _, part, _), _ = sweep_problem("tiny", seed)
    assert nc.shape[1] == part.shape[0] and not part.any()


def test_the_sweep_prints_every_problem_and_the_summary(tmp_path, capsys):
    out = tmp_path / "sweep.jsonl"
    main(["--presets", "tiny", "--seeds", "0", "3", "--jsonl", str(out)])
    text = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seed"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["delta"] == r["default"] - r["gaec_imp"]
        assert f"| tiny | {r['seed']} |" in text
    assert "| tiny | 3 |" in text   # the summary row: 3 problems


def test_a_jsonl_that_cannot_be_opened_is_one_line_and_exit_code_2(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "missing" / "sweep.jsonl"
    proc = subprocess.run([sys.executable, "-m", "copsctl.benchmarks.solver_sweep", "--presets",
                           "tiny", "--seeds", "0", "1", "--jsonl", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr and not bad.parent.exists()
