"""The packages import strictly downwards: ui -> app -> rl -> graph -> data, with no cycles.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a function-local
import that hides a cycle is still a cycle (only a script's ``if __name__ == "__main__":`` entry is
left out: it never runs on import). The one exception: the command line (``app.cli`` and its
command modules, ``app.commands``) may wire in the UI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("data", "graph", "rl", "app", "ui")  # lowest first
CLI = ("app.cli", "app.commands")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` names the module ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(_without_main_guard(ast.parse(path.read_text(encoding="utf-8"), str(path)))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # "app.runtime.Runtime" -> "app.runtime"
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in LAYERS and target != name:
                found.add(target)
    return found


def _without_main_guard(tree: ast.Module) -> ast.Module:
    """The module without its ``if __name__ == "__main__":`` block: a script's entry never runs on
    import, so what it imports cannot close an import cycle."""
    tree.body = [
        node
        for node in tree.body
        if not (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__"
        )
    ]
    return tree


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def _is_cli(module: str) -> bool:
    return any(module == c or module.startswith(c + ".") for c in CLI)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{src} imports {dst}"
        for src, targets in graph.items()
        for dst in targets
        if _layer(dst) > _layer(src) and not (_is_cli(src) and dst.startswith("ui"))
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_every_package_and_real_imports():
    graph = _graph()
    assert {m.split(".")[0] for m in graph} == set(LAYERS)
    assert "app.runtime" in graph["app.evaluation.runner"]  # evaluation drives the runtime
    assert "data.answers" in graph["graph.nodes"] and "data.answers" in graph["rl.rewards"]


def test_no_package_imports_one_above_it():
    assert upward_imports(_graph()) == []


def test_no_import_cycles():
    assert cycles(_graph()) == []


@pytest.mark.parametrize(
    ("graph", "upward", "cyclic"),
    [
        ({"rl.evaluate": {"app.runtime"}, "app.runtime": {"rl.rewards"}, "rl.rewards": set()}, 1, 0),
        ({"app.a": {"app.b"}, "app.b": {"app.c"}, "app.c": {"app.a"}}, 0, 1),
        ({"app.cli": {"ui.app"}, "ui.app": {"app.runtime"}, "app.runtime": set()}, 0, 0),
        ({"app.commands.web_ui": {"ui.app"}, "ui.app": set()}, 0, 0),
        ({"app.studio": {"ui.app"}, "ui.app": set()}, 1, 0),
    ],
)
def test_the_checks_catch_what_they_should(graph, upward, cyclic):
    """The checks themselves, on made-up graphs: the old rl -> app edge is caught."""
    assert len(upward_imports(graph)) == upward
    assert len(cycles(graph)) == cyclic
