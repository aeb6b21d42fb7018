"""The engine's modules form a hierarchy: no two import each other, not even lazily inside a
function (a lazy import only hides a cycle; it still means neither module can be understood or
changed alone). engine.model <-> engine.parallel was such a pair."""

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def module_graph() -> dict[str, set[str]]:
    mods = {}
    for p in ENGINE.rglob("*.py"):
        parts = p.relative_to(ENGINE.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
                targets = [n for n in names if n in mods] or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            # importing a submodule runs its package's __init__ first: not an edge worth counting
            graph[m] |= {t for t in targets if t in mods and t != m and not m.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        path.pop()
        state[u] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_engine_has_no_import_cycles():
    graph = module_graph()
    assert "engine.parallel" in graph["engine.training"]  # the scan sees lazy imports
    cycle = find_cycle(graph)
    assert cycle is None, "engine modules import each other: " + " -> ".join(cycle)


def test_the_scan_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
