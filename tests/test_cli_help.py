"""``copsctl --help`` and ``--version``: commands in pipeline order, flags shown as flags."""

from __future__ import annotations

import re

from typer.testing import CliRunner

import copsctl
from copsctl.cli import COMMANDS, app

runner = CliRunner()


def test_version_prints_the_package_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"copsctl {copsctl.__version__}"


def test_commands_are_listed_in_pipeline_order():
    res = runner.invoke(app, ["--help"], terminal_width=100)
    assert res.exit_code == 0, res.output
    listed = [m.group(1) for line in res.output.splitlines()
              if (m := re.match(r"\W*([a-z][a-z-]+)\s{2,}\S", line)) and m.group(1) in COMMANDS]
    assert listed == list(COMMANDS)
    assert listed[:3] == ["make-synthetic", "check-data", "pretrain"]


def _option_rows(args):
    res = runner.invoke(app, [*args, "--help"], terminal_width=120)
    assert res.exit_code == 0, res.output
    return {m.group(1): m.group(2) for line in res.output.splitlines()
            if (m := re.match(r"\W*(--[a-z-]+)\s+(\S*)", line))}


def test_flags_are_shown_without_a_value_type():
    rows = _option_rows(["pretrain"])
    assert rows["--out"] == "<path>"
    assert not rows["--resume"].startswith("<")  # the help text follows, no `<bool>`
    assert not rows["--help"].startswith("<")
    # every command and sub-command, and the root
    for args in ([], *([c] for c in COMMANDS), ["visualize", "image"]):
        res = runner.invoke(app, [*args, "--help"], terminal_width=120)
        assert res.exit_code == 0, (args, res.output)
        assert "<bool>" not in res.output, args
