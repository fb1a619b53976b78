"""``copsctl --help`` and ``--version``: commands in pipeline order, flags shown as flags."""

from __future__ import annotations

import re

import pytest

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
    assert rows["--set"] == "<key=value>"
    assert not rows["--resume"].startswith("<")  # the help text follows, no `<bool>`
    assert not rows["--help"].startswith("<")
    # every command and sub-command, and the root
    for args in ([], *([c] for c in COMMANDS), ["visualize", "image"]):
        res = runner.invoke(app, [*args, "--help"], terminal_width=120)
        assert res.exit_code == 0, (args, res.output)
        assert "<bool>" not in res.output, args


@pytest.mark.parametrize("args,message", [
    (["pretrain"], "error: Missing option '--out'. (see copsctl pretrain --help)"),
    (["pretrian"], "error: No such command 'pretrian'. Did you mean 'pretrain'? (see copsctl "
     "--help)"),
    (["evaluate", "--workers", "x"], "error: Invalid value for '--workers'"),
    (["--bogus"], "error: No such option: --bogus"),
    (["visualize", "imag"], "error: No such command 'imag'."),
])
def test_usage_errors_are_one_line_exit_2(args, message):
    res = runner.invoke(app, args, prog_name="copsctl")
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr
    assert res.stdout == ""


def test_no_arguments_still_prints_the_help():
    for args in ([], ["visualize"]):
        res = runner.invoke(app, args)
        assert "Usage:" in res.output and "Commands" in res.output


def test_help_paragraphs_flow_to_the_terminal_width():
    res = runner.invoke(app, ["check-data", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert ("The check pretrain and finetune run before they write anything: every image and "
            "panoptic PNG decoded") in res.output


def _commands():
    """``(name, click command)`` of every command and sub-command."""
    import typer

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from walk(cmd, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}", cmd

    return list(walk(typer.main.get_command(app), ""))


def test_one_vocabulary_for_predictions_ground_truth_and_workers():
    from copsctl.cli._app import RENAMED_OPTIONS

    names = {}
    for path, cmd in _commands():
        for param in cmd.params:
            for opt in getattr(param, "opts", ()):
                names.setdefault(opt, []).append(path)
                if opt == "--workers":  # CPU threads of the main work, all CPUs by default
                    assert "threads" in param.help and "all CPUs" in param.help, (path,
                                                                                  param.help)
    assert not set(RENAMED_OPTIONS) & set(names)  # old names are neither shown nor parsed
    pred_gt = {n for n in names if re.match(r"--(pred|gt)", n)}
    assert pred_gt == {"--pred", "--pred-json", "--gt", "--gt-json", "--gt-out"}, pred_gt
    assert sorted(names["--pred"]) == ["evaluate", "visualize image"]
    assert sorted(names["--gt"]) == ["calibrate", "evaluate", "visualize image"]


@pytest.mark.parametrize("path,args,param,value", [
    ("evaluate", ["--pred-dir", "p"], "pred", "p"),
    ("evaluate", ["--gt-dir=g"], "gt", "g"),
    ("calibrate", ["costs.h5", "--gt-dir", "g"], "gt", "g"),
    ("visualize image", ["costs.h5", "--out", "x.png", "--gt-dir", "g"], "gt", "g"),
])
def test_old_option_names_parse_as_the_new_ones(path, args, param, value, capsys):
    from pathlib import Path

    cmd = dict(_commands())[path]
    ctx = cmd.make_context(path, list(args))
    assert ctx.params[param] == Path(value)
    old = args[-2] if "=" not in args[-1] else args[-1].split("=")[0]
    assert f"note: {old} is now" in capsys.readouterr().err
