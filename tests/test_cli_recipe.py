"""``copsctl recipe``: the resolved recipe as YAML, its hash, and one-line errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from copsctl.cli import app
from copsctl.config import load_recipe, recipe_names

runner = CliRunner()


def test_prints_and_writes_the_resolved_recipe(tmp_path):
    out = tmp_path / "resolved.yaml"
    res = runner.invoke(app, ["recipe", "synthetic_tiny", "--set", "train.seed=7", "--out", str(out)])
    assert res.exit_code == 0, res.output
    expected = load_recipe("synthetic_tiny", ["train.seed=7"])
    assert res.output.splitlines()[0] == f"# hash {expected.hash()}"
    printed = tmp_path / "printed.yaml"
    printed.write_text(res.output)
    assert load_recipe(printed) == expected == load_recipe(out)


def test_lists_names_and_keys():
    res = runner.invoke(app, ["recipe", "--list"])
    assert res.exit_code == 0 and res.output.split() == recipe_names()
    res = runner.invoke(app, ["recipe", "--keys"])
    assert res.exit_code == 0 and "finetune.num_perturbations" in res.output


def test_bad_key_is_one_line_exit_2(tmp_path):
    res = runner.invoke(app, ["recipe", "synthetic_tiny", "--set", "train.learning_rate=1"])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown recipe key 'train.learning_rate'" in lines[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  depth: '50'\n")
    res = runner.invoke(app, ["recipe", str(bad), "--out", str(tmp_path / "never.yaml")])
    assert res.exit_code == 2 and "bad.yaml: `model.depth` must be an int" in res.output
    assert not (tmp_path / "never.yaml").exists()


@pytest.mark.parametrize("key,hint", [
    ("finetune.num_perturbation", "(did you mean 'finetune.num_perturbations'?)"),
    ("train.learning_rate", "(did you mean 'train.lr'?)"),
    ("trian.lr", "(did you mean 'train.lr'"),
    ("data.iterations", "(did you mean 'train.iterations'"),
    ("finetune.nosuch", "(`copsctl recipe --keys` lists them all)"),
])
def test_unknown_key_suggests_the_nearest(tmp_path, key, hint):
    res = runner.invoke(app, ["recipe", "synthetic_tiny", "--set", f"{key}=3"])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"unknown recipe key {key!r} {hint}" in lines[0], lines
    # the same in a recipe file
    section, name = key.split(".")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"{section}:\n  {name}: 3\n")
    res = runner.invoke(app, ["recipe", str(bad)])
    assert res.exit_code == 2
    assert hint in res.output or (section == "trian" and "did you mean 'train'?" in res.output)
