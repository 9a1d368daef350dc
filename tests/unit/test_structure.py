"""The layout stays readable (issue 12): no import cycle among runner's modules (imports inside functions
count, ``TYPE_CHECKING`` ones do not), at least 4 sub-packages, at most 15 modules directly in runner/, no
module over 700 lines."""
from __future__ import annotations

import ast
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[2] / "runner"


def _module_name(path: Path) -> str:
    parts = path.relative_to(RUNNER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in RUNNER.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """runner modules imported by one module, anywhere in it (functions included), TYPE_CHECKING excluded."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            for alias in node.names:
                found.add(f"{mod}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    out = set()
    for mod in found:
        # the module itself, or its closest known parent (a package's __init__)
        while mod and mod not in known:
            mod = mod.rpartition(".")[0]
        # `from runner import __version__` reaches runner/__init__.py, which imports nothing of runner
        if mod and mod != name and mod.startswith("runner."):
            out.add(mod)
    return out


def test_no_import_cycle_among_runners_modules():
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            dfs(name)
    assert not cycles, cycles[:5]


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    """The checker itself: two modules importing each other inside functions are found."""
    (tmp_path / "a.py").write_text("def f():\n    from runner.b import x\n")
    (tmp_path / "b.py").write_text("from runner import a\n")
    known = {"runner.a", "runner.b", "runner"}
    global RUNNER
    saved, RUNNER = RUNNER, tmp_path
    try:
        assert _imports("runner.a", tmp_path / "a.py", known) == {"runner.b"}
        assert _imports("runner.b", tmp_path / "b.py", known) == {"runner.a"}
    finally:
        RUNNER = saved


def test_layout_limits():
    packages = [p for p in RUNNER.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    flat = [p for p in RUNNER.glob("*.py") if p.name != "__init__.py"]
    assert len(packages) >= 4, packages
    assert len(flat) <= 15, sorted(p.name for p in flat)
    long = {str(p.relative_to(RUNNER)): n for p in RUNNER.rglob("*.py") if (n := len(p.read_text().splitlines())) > 700}
    assert not long, long
