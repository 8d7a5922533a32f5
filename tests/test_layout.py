"""The layout a learner reads: sft/ has no import cycle, and its subpackages are the steps of SFT."""

import ast
from pathlib import Path

from conftest import ROOT

SFT = ROOT / "sft"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_inside_sft() -> dict[str, set[str]]:
    """module -> the sft modules it imports, at the top or inside a function (both can make a cycle)."""
    modules = {module_name(path): path for path in SFT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    if target in modules and target != name:
                        found.add(target)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name in modules}
        graph[name] = found - {"sft"} if name != "sft" else found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, found by depth-first search (each reported once, from its smallest module)."""
    found, seen = [], set()

    def visit(node, path):
        for target in sorted(graph.get(node, ())):
            if target in path:
                cycle = path[path.index(target):]
                start = cycle.index(min(cycle))
                key = tuple(cycle[start:] + cycle[:start])
                if key not in seen:
                    seen.add(key)
                    found.append(list(key) + [key[0]])
            elif len(path) < 30:
                visit(target, path + [target])

    for module in sorted(graph):
        visit(module, [module])
    return found


def test_no_import_cycle_inside_sft():
    graph = imports_inside_sft()
    assert len(graph) > 30 and "sft.data.masking" in graph["sft.data.token_cache"]  # the graph is really read
    assert cycles(graph) == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles(graph))


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_shared_base_imports_no_step():
    """errors, devices, models, generation...: usable from every step, so they import none of them."""
    base = {name: targets for name, targets in imports_inside_sft().items() if name.count(".") == 1}
    steps = ("sft.data", "sft.train", "sft.eval", "sft.serve")
    assert {name: sorted(t for t in targets if t.startswith(steps)) for name, targets in base.items()
            if any(t.startswith(steps) for t in targets)} == {}
