"""The package layout: no import cycle among copsctl modules (function-level imports
included), and the torch-free stages import without torch."""

import ast
import functools
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "copsctl"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@functools.lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported(modules: dict[str, Path]):
    """``(module, imported name)`` for every ``import`` statement of every copsctl module
    (module level, inside functions and under ``TYPE_CHECKING``), relative imports
    resolved; ``from X import y`` names ``X.y`` where that is a module, else ``X``."""
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield name, alias.name
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    yield name, sub if sub in modules else source


def import_graph() -> dict[str, set[str]]:
    """``module -> copsctl modules it imports`` (every import, see :func:`_imported`)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, target in _imported(modules):
        if target in modules and target != name:
            graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_lazy_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    # module level, relative: the cost writer of the network's costs
    assert "copsctl.costs.cache" in graph["copsctl.costs.network"]
    # inside a function: the CLI command imports its library function when it runs
    assert "copsctl.panoptic.solve" in graph["copsctl.cli.solve"]
    # `from . import pq` in copsctl.metrics names the module
    assert "copsctl.metrics.pq" in graph["copsctl.metrics.evaluation"]


def test_every_copsctl_import_names_a_module():
    # A stale path in a function-level import fails only when that function runs.
    modules = _modules()
    stale = sorted({(name, target) for name, target in _imported(modules)
                    if target.split(".")[0] == "copsctl" and target not in modules})
    assert not stale, "imports of modules that do not exist: " + ", ".join(
        f"{name} imports {target}" for name, target in stale)


def test_no_import_cycle_among_copsctl_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_module_imports():
    names = sorted(n for n in _modules() if not n.endswith("__main__"))
    proc = _run("import importlib\n"
                f"for name in {names!r}:\n"
                "    importlib.import_module(name)\n"
                "print('imported', len(" f"{names!r}" "))")
    assert proc.returncode == 0, proc.stderr
    assert f"imported {len(names)}" in proc.stdout


def test_solver_metrics_and_cost_cache_import_without_torch():
    metrics = sorted(n for n in _modules() if n.startswith("copsctl.metrics."))
    torch_free = ["copsctl.solver", "copsctl.solver.grid", "copsctl.metrics", *metrics,
                  "copsctl.costs", "copsctl.costs.cache", "copsctl.panoptic.format",
                  "copsctl.panoptic.postprocess"]
    proc = _run("import importlib, sys\n"
                f"for name in {torch_free!r}:\n"
                "    importlib.import_module(name)\n"
                "    assert 'torch' not in sys.modules, name + ' imports torch'\n"
                "print('torch-free')")
    assert proc.returncode == 0, proc.stderr
    assert "torch-free" in proc.stdout
