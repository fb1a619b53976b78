"""The package list in pyproject.toml covers every subpackage (a missing one breaks `pip install .`)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "copsctl").rglob("__init__.py")}
    found |= {"copsctl_ext", "copsctl.recipes"}
    assert found <= listed, f"add to pyproject.toml packages: {sorted(found - listed)}"
    assert config["package-dir"]["copsctl.recipes"] == "recipes"


def test_recipes_and_extension_sources_exist():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for ext in config["ext-modules"]:
        for src in ext["sources"]:
            assert (ROOT / src).is_file(), src
    assert list((ROOT / "recipes").glob("*.yaml"))
