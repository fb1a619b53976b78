"""The sweep of generated problems of random settings (copsctl.benchmarks.solver_sweep)."""

import json

import numpy as np
import pytest

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


def test_ellipse_problems_are_class_major_grid_problems_of_their_own_settings():
    from copsctl.benchmarks.ellipses import SIZES, ellipse_problem
    from copsctl.solver import check_feasible, grid_edge_distance, solve_amwc
    h, w, k, t, distances, _ = SIZES["small"]
    (nc, edges, ec, part, local), settings = ellipse_problem("small", 1)
    (nc2, *_), again = ellipse_problem("small", 1)
    assert settings == again and settings["generator"] == "ellipses"
    np.testing.assert_array_equal(nc, nc2)
    assert nc.shape == (h * w, k) and nc.strides == (8, 8 * h * w)   # class-major
    assert np.isfinite(nc).all() and (nc >= 0).all()
    assert part.sum() == t and not part[t:].any()
    np.testing.assert_array_equal(local, grid_edge_distance(h, w, distances) == 1)
    assert np.isfinite(ec).all() and (ec > 0).any() and (ec < 0).any()
    assert 0.3 < settings["pixel_accuracy"] <= 1 and 0.6 < settings["edge_accuracy"] < 1
    hard = [ellipse_problem("tiny", s)[1]["hard"] for s in range(12)]
    assert any(hard) and not all(hard)
    result = solve_amwc(nc, edges, ec, part, local)
    check_feasible(edges, part, result.labels, result.segments, result.edge_cut)
    from copsctl.errors import InputError
    with pytest.raises(InputError, match=r"`size` must be one of .*got 'huge'"):
        ellipse_problem("huge", 0)


def test_the_sweep_takes_the_ellipse_problems_on_request(tmp_path, capsys):
    out = tmp_path / "sweep.jsonl"
    main(["--generator", "ellipses", "--presets", "tiny", "--seeds", "0", "2", "--jsonl",
          str(out)])
    text = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["generator"], r["seed"]) for r in rows] == [("ellipses", 0), ("ellipses", 1)]
    assert "| preset | seed | hard | pixel acc |" in text
    for r in rows:
        assert r["delta"] == r["default"] - r["gaec_imp"]
        assert f"| tiny | {r['seed']} | {'yes' if r['hard'] else 'no'} |" in text
