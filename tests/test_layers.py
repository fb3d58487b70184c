"""The package's import graph: no cycle between modules, and no import from a layer up into a higher one.

The layers, bottom to top (a module may import its own layer and the ones below):

  0  the package's leaves (_version, checks) and ops/ (kernels: they know no model)
  1  models/ (networks, checkpoints) and data/ (datasets)
  2  smoothing/ (Smooth, its statistics, the noise-address scheme: anything that draws noise reads it)
  3  diffusion/ (schedules, flags, the denoiser, the reverse process)
  4  engine/ (the methods' base classifiers and how fast they run)
  5  bench/ (benchmarks of the library)
  6  run/ (the command-line application, which offers ``bench`` as a subcommand)
  7  demo/ (scripts that train and compare with the application)
  8  the package's public API (__init__, __main__)

Imports are read from the source (every ``import`` and ``from ... import``, lazy ones inside functions included),
so a cycle hidden in a function body counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import diffsmooth_fast

PACKAGE = Path(diffsmooth_fast.__file__).resolve().parent
LAYERS = {"_version": 0, "checks": 0, "ops": 0, "models": 1, "data": 1, "smoothing": 2, "diffusion": 3,
          "engine": 4, "bench": 5, "run": 6, "demo": 7, "": 8, "__main__": 8}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports (for ``from X import y``: X.y if that is a module, else X)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "diffsmooth_fast":
                base = node.module.split(".")[1:]
            else:
                continue
            base_name = ".".join(base)
            for alias in node.names:
                child = ".".join([*base, alias.name])
                found.add(child if child in modules else base_name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "diffsmooth_fast":
                    found.add(".".join(alias.name.split(".")[1:]))
    return {m for m in found if m in modules and m != name}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    assert top in LAYERS, f"{module}: its folder has no layer in this test; add it to LAYERS"
    return LAYERS[top]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_module_imports_a_higher_layer():
    upward = [f"{a} ({_layer(a)}) -> {b} ({_layer(b)})" for a, deps in _graph().items() for b in deps
              if _layer(b) > _layer(a)]
    assert not upward, "imports up the layers:\n" + "\n".join(sorted(upward))


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_imports_and_layers():
    """The graph is not empty and knows a few edges that must be there (so the tests above cannot pass vacuously)."""
    graph = _graph()
    assert "smoothing.noise_address" in graph["engine.counting"]
    assert "engine.options" in graph["run.build"]
    assert "ops" in graph["smoothing.certify"]
    assert _layer("run.cli") > _layer("engine.options") > _layer("smoothing.certify") > _layer("ops.vote")
