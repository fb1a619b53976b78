"""copsctl.benchmarks.finetune_direction on the tiny pre-trained model."""

import pytest

from copsctl.benchmarks.finetune_direction import main


def _args(tiny_run, *extra):
    data, run = tiny_run
    return ["--recipe", "synthetic_tiny", "--weights", str(run / "checkpoint.pt"),
            "--data", str(data), "--set", "train.batch_size=2", *extra]


@pytest.mark.parametrize("invariant", [False, True])
def test_scalars_joint_scale_pull(tiny_run, invariant, capsys):
    """Descent on the log node scale plus the log edge scales is -<grad, costs>: never
    positive (the interpolation's pull towards smaller costs), zero once the costs are
    divided by their own held scale (finetune.scale_invariant)."""
    rows = main(_args(tiny_run, "--scalars", "--batches", "2",
                      "--set", f"finetune.scale_invariant={str(invariant).lower()}"))
    assert len(rows) == 2
    for r in rows:
        joint = r["descent node"] + r["descent edge"]
        size = abs(r["descent node"]) + abs(r["descent edge"])
        if invariant:
            assert joint == pytest.approx(0.0, abs=1e-4 * size + 1e-9)
        else:
            assert joint <= 1e-9
        # Scaling node and edge costs together changes no solution: the finite
        # differences of the two scales cancel exactly.
        assert r["dsurrogate/dnode"] == pytest.approx(-r["dsurrogate/dedge"], abs=1e-6)
        assert r["dPQ/dnode"] == pytest.approx(-r["dPQ/dedge"], abs=1e-9)
    assert "| descent edge |" in capsys.readouterr().out


def test_heads_restores_the_model_between_steps(tiny_run, capsys):
    rows = main(_args(tiny_run, "--batches", "1", "--held-out", "1", "--alphas", "0", "0.05", "0"))
    assert [r["alpha"] for r in rows] == [0.0, 0.05, 0.0]
    assert rows[0]["A"] == rows[2]["A"] and rows[0]["B"] == rows[2]["B"]
    for r in rows:
        for part in ("A", "B"):
            assert all(0.0 <= v <= 1.0 for v in r[part].values())
    out = capsys.readouterr().out
    assert "| alpha | A surrogate |" in out and out.count("\n| 0 |") == 2


def test_heads_held_out_data_is_another_datasets_val_split(tiny_run, capsys):
    rows = main(_args(tiny_run, "--batches", "1", "--held-out", "1", "--alphas", "0",
                      "--held-out-data", str(tiny_run[0])))
    # Without --held-out-data set B is the training batch after A; with the tiny set's own
    # val split it is another batch, of other images.
    plain = main(_args(tiny_run, "--batches", "1", "--held-out", "1", "--alphas", "0"))
    assert rows[0]["A"] == plain[0]["A"]
    assert rows[0]["B"] != plain[0]["B"]
    assert "held-out batches of the val split of" in capsys.readouterr().out
