"""Every shell example in README.md that can run on the tiny recipe does run.

How the README is read (the rules an edit of the README must keep):

* Only fenced blocks opened with ```` ```bash ```` count. In them, as in a shell, a
  line ending in a backslash continues on the next line and a word starting with ``#``
  starts a comment (whole-line comments are skipped); every other line is one command.
* Each command either runs or is listed in :data:`SKIPPED`, which holds a piece of its
  text and why it cannot run here (a real dataset, an install, several processes). Each
  entry must match exactly one command, so a new command is never skipped silently and a
  stale entry is noticed.
* A command that runs is ``copsctl ...`` (or ``python -m copsctl ...``) without shell
  syntax (``&&``, pipes, redirections, variables). The commands run in the order they
  appear, in one empty temporary folder, through the CLI in-process: later ones read what
  earlier ones wrote, by the relative paths the README gives. The folder ``photos/``
  (two pictures) is there from the start, for the ``predict`` example.
* Small sizes are forced by the fixed substitutions in :data:`SUBSTITUTIONS` (the
  ``synthetic_tiny`` recipe for the synthetic ones, four training and two validation
  images of 64x64, two calibration images), applied to the command's text; nothing else
  is changed. A command must exit with 0, and each file or folder it names with ``--out``
  or ``--json`` must exist afterwards. A command that uses an option's old name (it still
  works, with a note) gives a warning in the test summary.
* The commands that run must include the whole pipeline, :data:`PIPELINE`.
"""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from copsctl.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"

# (pattern, replacement) on a command's text, in this order.
SUBSTITUTIONS = [
    (r"\bsynthetic_(pretrain|finetune)\b", "synthetic_tiny"),  # 4 iterations, 64x64 crops
    (r"(copsctl make-synthetic\b.*?--train) \d+", r"\1 4"),
    (r"(copsctl make-synthetic\b.*?--val) \d+", r"\1 2"),
    (r"(copsctl make-synthetic\b.*?--size) \S+", r"\1 64x64"),
    (r"^(copsctl make-synthetic\b(?!.*--size).*)$", r"\1 --size 64x64"),
    (r"(copsctl calibrate\b.*?--images) \d+", r"\1 2"),
]

# (piece of the command's text, why it does not run here)
SKIPPED = [
    ("python3 -m venv", "installs copsctl and runs the 5-minute demo"),
    ("pip install -e", "installs the test extras and runs this test suite"),
    ("evaluate --gt-json /data/cityscapes/", "needs the Cityscapes dataset"),
    ("evaluate --gt-json /data/coco/", "needs the COCO dataset"),
    ("pretrain --recipe cityscapes_pretrain", "needs the Cityscapes dataset (and a GPU)"),
    ("calibrate --run runs/cs_pre", "needs the Cityscapes run above"),
    ("finetune --recipe cityscapes_finetune", "needs the Cityscapes dataset (and a GPU)"),
    ("torchrun ", "several processes on the COCO dataset"),
]

# (command, flags of which it must have one; () any) that the commands which run must include
PIPELINE = [("make-synthetic", ()), ("check-data", ()), ("pretrain", ()), ("calibrate", ()),
            ("finetune", ()), ("evaluate", ("--run",)), ("dump-costs", ()), ("solve", ()),
            ("evaluate", ("--pred", "--pred-dir")), ("predict", ()), ("export", ())]

_SHELL = re.compile(r"^(&&|\|\|?|;|>>?|<|2>.*)$|[$`;]")


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks of ``text``: continuation lines joined, comments
    dropped, words separated by single spaces (as shlex quotes them)."""
    commands, block, pending = [], False, ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            block = not block and line.strip() == "```bash"
            pending = ""
            continue
        if not block:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lex = shlex.shlex(pending + line, posix=True)
        lex.whitespace_split, lex.commenters = True, ""
        pending = ""
        words = []
        for word in lex:
            if word.startswith("#"):  # a comment runs to the end of the line
                break
            words.append(word)
        if words:
            commands.append(shlex.join(words))
    return commands


def _small(command: str) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        command = re.sub(pattern, replacement, command)
    return command


def _skip_reason(command: str) -> str | None:
    hits = [why for piece, why in SKIPPED if piece in command]
    assert len(hits) <= 1, f"several SKIPPED entries match {command!r}"
    return hits[0] if hits else None


def _photos(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i, (h, w) in enumerate(((60, 80), (72, 64))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i}.png")


def test_parsing_follows_the_shell():
    text = ("intro\n```bash\n# a comment\ncopsctl a --x 1 \\\n    --y 'two words'  # note\n\n"
            "copsctl b --z=a#b\n```\n```\ncopsctl not-bash\n```\n```python\nx = 1\n```\n")
    assert readme_commands(text) == ["copsctl a --x 1 --y 'two words'", "copsctl b '--z=a#b'"]
    assert _small("copsctl make-synthetic --out d --train 400 --val 100 --seed 0") == \
        "copsctl make-synthetic --out d --train 4 --val 2 --seed 0 --size 64x64"
    assert _small("copsctl make-synthetic --size 128x128 --out d") == \
        "copsctl make-synthetic --size 64x64 --out d"
    assert _small("copsctl pretrain --recipe synthetic_pretrain --out r") == \
        "copsctl pretrain --recipe synthetic_tiny --out r"


def test_readme_commands_run(tmp_path, monkeypatch):
    commands = readme_commands(README.read_text())
    skipped = {c: why for c in commands if (why := _skip_reason(c)) is not None}
    for piece, _ in SKIPPED:
        matching = [c for c in skipped if piece in c]
        assert len(matching) == 1, (f"SKIPPED entry {piece!r} matches {len(matching)} README "
                                    f"commands, not exactly one: {matching}")
    runs = [c for c in commands if c not in skipped]
    for command in runs:
        words = shlex.split(command)
        assert not any(_SHELL.search(w) for w in words), (
            f"README command {command!r} uses shell syntax: split it, or list it in SKIPPED")
    for name, flags in PIPELINE:
        assert any(shlex.split(c)[1:2] == [name] and (not flags or set(flags) & set(shlex.split(c)))
                   for c in runs if c.startswith("copsctl ")), (
            f"the README runs no `copsctl {' '.join([name, ' or '.join(flags)]).strip()}` "
            "example")

    monkeypatch.chdir(tmp_path)
    _photos(tmp_path / "photos")
    runner = CliRunner()
    for command in runs:
        words = shlex.split(_small(command))
        if words[:3] == ["python", "-m", "copsctl"]:
            words = words[2:]
        assert words[0] == "copsctl", f"README command {command!r} is not a copsctl command: " \
                                      "list it in SKIPPED"
        res = runner.invoke(app, words[1:])
        assert res.exit_code == 0, f"README command {command!r} (run as {shlex.join(words)}) " \
                                   f"failed:\n{res.output}"
        if " is now " in res.stderr:
            warnings.warn(f"README command {command!r} uses an old option name: "
                          f"{res.stderr.strip().splitlines()[0]}")
        for flag in ("--out", "--json"):
            if flag in words:
                made = Path(words[words.index(flag) + 1])
                assert made.exists(), f"README command {command!r} wrote no {flag} {made}"
