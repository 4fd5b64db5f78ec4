"""Imports point one way (DESIGN.md): the zoo's import graph, imports inside functions
included, has no cycles; ``converters`` imports neither zoo nor jax nor torch; nothing in
the library imports the command line (``zoo.cli``) but ``zoo/__main__.py``.

The graph is read from the source with ``ast`` (nothing is imported): an edge goes from a
module to each zoo / converters module it names in ``import a.b`` or ``from a.b import c``
(to ``a.b.c`` when that is a module, else to ``a.b``); relative imports are resolved.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("zoo", "converters")


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of the zoo's packages (``pkg`` for ``pkg/__init__.py``)."""
    out = {}
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            parts = list(file.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = file
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, int]]:
    """(imported top-level-qualified name, line) of every import statement in module ``name``."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                child = f"{module}.{alias.name}"
                found.append((child if child in MODULES else module, node.lineno))
    return found


def _graph() -> dict[str, dict[str, int]]:
    """module -> {zoo/converters module it imports: first line}."""
    graph = {}
    for name in MODULES:
        edges = {}
        for target, line in _imports(name):
            while target and target not in MODULES:  # `import zoo.a.b` of a name that is not a module
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:  # the shortest cycle through the component's first module, for the message
        start = min(component)
        parents, queue = {}, [start]
        while queue and start not in parents:
            v = queue.pop(0)
            for w in sorted(graph[v]):
                if w in component and w not in parents:
                    parents[w] = v
                    queue.append(w)
        path = [start]
        while parents[path[-1]] != start:
            path.append(parents[path[-1]])
        cycles.append([start] + path[::-1])
    return cycles


def _describe(cycle: list[str], graph) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:]) if b in graph[a]) + \
        f" -> {cycle[-1]}"


def test_the_graph_sees_the_modules():
    graph = _graph()
    assert {"zoo", "zoo.cli", "zoo.pretrained", "zoo.tasks", "zoo.data", "zoo.train", "converters"} <= set(graph)
    assert "zoo.tasks" in graph["zoo.finetune"] and "zoo.data" in graph["zoo.tasks"]


def test_no_import_cycles():
    graph = _graph()
    cycles = _cycles(graph)
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n".join(
        _describe(c, graph) for c in cycles)


def test_converters_import_neither_zoo_nor_jax_nor_torch():
    bad = []
    for name in MODULES:
        if name.split(".")[0] != "converters":
            continue
        for target, line in _imports(name):
            root = target.split(".")[0]
            if root in ("zoo", "jax", "jaxlib", "flax", "optax", "torch", "transformers"):
                bad.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_only_main_imports_the_cli():
    graph = _graph()
    importers = sorted(f"{MODULES[m].relative_to(ROOT)}:{edges['zoo.cli']}" for m, edges in graph.items()
                       if "zoo.cli" in edges and m != "zoo.__main__")
    assert not importers, "the library imports the command line: " + ", ".join(importers)


def test_package_face_and_cli_help_do_not_import_jax():
    """``import zoo`` and ``zoo --help`` (every subcommand's too) wait for neither jax nor flax:
    the names of the package face import their modules on first use."""
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\n"
        "import zoo\n"
        "from zoo.cli import build_parser\n"
        "parser = build_parser()\n"
        "for command in ('', 'convert', 'run', 'generate', 'finetune', 'demo'):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        parser.parse_args([command, '--help'] if command else ['--help'])\n"
        "heavy = sorted(m for m in ('jax', 'flax', 'torch', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert callable(zoo.from_pretrained) and zoo.parallel.__name__ == 'zoo.parallel'\n"
        "assert 'jax' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
