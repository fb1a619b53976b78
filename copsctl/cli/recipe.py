"""``copsctl recipe``: show a resolved recipe (or every declared key) without running anything."""

from __future__ import annotations

from pathlib import Path

import typer
from ._app import app
from ._util import SET_HELP, cli_errors


@app.command("recipe")
@cli_errors
def recipe_command(
    recipe: str = typer.Argument(None, help="Recipe YAML file or shipped recipe name; omitted: the code defaults."),
    overrides: list[str] = typer.Option([], "--set", help=SET_HELP),
    out: Path = typer.Option(None, "--out", help="Also write the resolved recipe to this file."),
    keys: bool = typer.Option(False, "--keys", help="List every declared key with its default and comment instead."),
    names: bool = typer.Option(False, "--list", help="List the shipped recipe names instead."),
) -> None:
    """Print the resolved recipe as YAML, with its hash: what a run with these options would use."""
    from ..config import describe_keys, load_recipe, recipe_names, save_recipe

    if names:
        for name in recipe_names():
            typer.echo(name)
        return
    if keys:
        for key, default, type_name, comment in describe_keys():
            typer.echo(f"{key} = {default!r}  ({type_name}) {comment}")
        return
    from ..atomic import check_output

    check_output(out, "--out", inputs={"RECIPE": recipe if recipe and Path(recipe).is_file()
                                       else None})
    resolved = load_recipe(recipe, overrides)
    if out is not None:
        save_recipe(resolved, out)
    typer.echo(f"# hash {resolved.hash()}")
    typer.echo(resolved.dump(), nl=False)
