"""The layout of docs/ARCHITECTURE.md holds: imports run one way, protocols stand alone, the CLI loads lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("topologies", "clients", "etree", "experiments")

# rank of each part; a module imports only parts of lower or equal rank (siblings of equal rank not at all)
RANKS = {
    "etree.core": 0,
    "topologies": 1,
    "clients": 1,
    "etree.network": 2,
    "etree.backends": 3,
    "etree.engine": 4,
    "etree.trees": 5,
    "etree.protocols": 6,
    "experiments": 7,
    "etree": 8,  # etree/__init__.py: the public facade over everything
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Project modules ``module`` imports anywhere in its body (function-level imports count)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            target = _resolve(name)
            if target and target != module:
                out.add(target)
    return out


GRAPH = {module: _imports(module) for module in MODULES}


def _part(module: str) -> str:
    """The part of RANKS a module belongs to (the longest matching prefix)."""
    return max((p for p in RANKS if module == p or module.startswith(p + ".")), key=len)


def test_no_two_files_import_each_other_in_a_cycle() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
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
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert cycles == []


def test_imports_run_down_the_layers() -> None:
    wrong = []
    for module, targets in sorted(GRAPH.items()):
        mine = _part(module)
        for target in sorted(targets):
            theirs = _part(target)
            upward = RANKS[theirs] > RANKS[mine]
            sideways = RANKS[theirs] == RANKS[mine] and theirs != mine
            if upward or sideways:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def _imports_between(source: str, target: str) -> list[str]:
    """Imports from modules under ``source`` into modules under ``target``."""
    return [
        f"{module} -> {imported}"
        for module, imports in GRAPH.items()
        if module.startswith(source)
        for imported in imports
        if imported.startswith(target)
    ]


def test_classification_never_imports_recommendation() -> None:
    assert _imports_between("clients.classification", "clients.recommendation") == []


def test_protocols_never_import_each_other() -> None:
    assert _imports_between("etree.protocols.", "etree.protocols") == []


def _loaded_after(code: str) -> list[str]:
    """Protocol modules imported once ``code`` ran in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in sys.modules if m.startswith('etree.protocols.')))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_help_imports_no_protocol() -> None:
    code = "from experiments.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert _loaded_after(code) == []


@pytest.mark.parametrize("name", ["fedavg", "gossip"])
def test_a_run_imports_only_the_protocols_it_runs(name: str) -> None:
    code = f"from etree.protocols import make_protocol\nmake_protocol({name!r}, 'x', {{}})"
    assert _loaded_after(code) == [f"etree.protocols.{name}"]
