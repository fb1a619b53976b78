"""Checks the CLI tests share."""

from __future__ import annotations


def fails_in_one_line(res, *words) -> str:
    """``res`` (a ``CliRunner`` result) exited with code 2 and printed exactly one
    non-blank line, naming every one of ``words``, and no traceback; returns that line."""
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    for w in words:
        assert w in lines[0], res.output
    return lines[0]
