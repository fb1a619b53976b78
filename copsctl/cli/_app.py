"""The one Typer app every command module registers its command on (``from ._app import
app``), with what makes it read well: commands in pipeline order, flags shown as flags,
one-line usage errors, ``--version``, old option names that keep working. :mod:`copsctl.cli`
imports the command modules, which keeps the import graph acyclic."""

from __future__ import annotations

import re

import typer
from typer.core import TyperCommand, TyperGroup

# The commands in pipeline order, as `copsctl --help` lists them; each one's module is the
# name with underscores (make-synthetic -> make_synthetic.py).
COMMANDS = ("make-synthetic", "check-data", "pretrain", "calibrate", "finetune", "dump-costs",
            "solve", "evaluate", "predict", "export", "visualize", "demo", "make-costs",
            "recipe")

# Options renamed for one vocabulary across the commands (issue 17), old name -> new name. A
# command declares the old name after the new one (typer.Option(None, "--pred", "--pred-dir"))
# where it used to take it: the old name keeps working for one release, with a note on
# stderr, and the help shows only the new one.
RENAMED_OPTIONS = {"--pred-dir": "--pred", "--gt-dir": "--gt"}


def _flags_as_flags(params):
    # Typer shows every option's type, a flag's as `<bool>` as if it took a value; an empty
    # metavar leaves a flag's type column blank (click's plain help never shows one). The
    # recipe overrides show their form rather than `<list[str]>`.
    for param in params:
        if param.metavar is None and getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.metavar is None and "--set" in getattr(param, "opts", ()):
            param.metavar = "<key=value>"
    return params


try:  # Typer >= 0.22 carries its own click
    from typer._click.exceptions import UsageError as _UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError as _UsageError


def _one_line(method):
    # A usage error (missing option, bad value, unknown command) as one line on stderr with
    # exit code 2, like every other input error, instead of Typer's usage text and panel.
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except _UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed: keep it
                raise
            from rich.markup import escape

            from ._util import err_console

            path = exc.ctx.command_path if exc.ctx is not None else "copsctl"
            err_console.print(f"[bold red]error:[/] {escape(exc.format_message())} "
                              f"(see {escape(path)} --help)", soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper


def _flowing(text):
    # A docstring's paragraphs are wrapped at 100 columns in the source; Typer keeps those
    # line breaks, which break lines mid-sentence on a terminal of another width.
    return text if not text else re.sub(r"(?<=\S)[ \t]*\n(?=[ \t]*\S)", " ", text)


def _drop_renamed(params) -> dict:
    # The old names out of the options (so neither the help nor the parser sees them); which
    # old name stands for which new one.
    renamed = {}
    for param in params:
        for old in [o for o in getattr(param, "opts", ()) if o in RENAMED_OPTIONS]:
            new = RENAMED_OPTIONS[old]
            assert new in param.opts, f"{old} must be declared beside {new}"
            param.opts.remove(old)
            renamed[old] = new
    return renamed


def _renamed_args(args, renamed: dict) -> list:
    # Old option names in the arguments as the new ones, each noted once on stderr.
    out, noted = [], set()
    for i, arg in enumerate(args):
        if arg == "--":  # what follows is no option
            return out + list(args[i:])
        name, eq, value = arg.partition("=")
        if name in renamed:
            if name not in noted:
                from ._util import err_console

                err_console.print(f"[bold]note:[/] {name} is now {renamed[name]} (the old name "
                                  "goes in the next release)", soft_wrap=True)
                noted.add(name)
            arg = renamed[name] + eq + value
        out.append(arg)
    return out


class _Command(TyperCommand):
    make_context = _one_line(TyperCommand.make_context)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.help = _flowing(self.help)
        self._renamed = _drop_renamed(self.params)

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _renamed_args(args, self._renamed) if self._renamed
                                  else args)

    def get_params(self, ctx):
        return _flags_as_flags(super().get_params(ctx))


class _Group(TyperGroup):
    make_context = _one_line(TyperGroup.make_context)
    resolve_command = _one_line(TyperGroup.resolve_command)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.help = _flowing(self.help)

    def get_params(self, ctx):
        return _flags_as_flags(super().get_params(ctx))

    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMANDS)}
        return sorted(names, key=lambda n: rank.get(n, len(COMMANDS)))


class App(typer.Typer):
    """The Typer app of copsctl and its sub-groups: commands in pipeline order, flags shown
    as flags."""

    def __init__(self, **kwargs):
        kwargs.setdefault("cls", _Group)
        kwargs.setdefault("add_completion", False)
        super().__init__(**kwargs)

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = App(
    name="copsctl",
    help="Combinatorial Optimization for Panoptic Segmentation: stage-wise commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"copsctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version of copsctl and exit."),
) -> None:
    # An explicit group callback keeps `copsctl <command>` a sub-command even while only
    # one command is registered (Typer otherwise runs a lone command as the app itself).
    pass
