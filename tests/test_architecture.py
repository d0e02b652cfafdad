"""The package's shape: subpackages along the flow corpus -> tokens -> model -> engine -> training /
chat / eval / serve -> recipe, imports that only point down it, no import circle, no module over 500
lines, imports of the project's own modules at module top (the lazy public API and the CLI's
per-command import excepted)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chitchat"
# floor of each part of the package: a module may import from its own floor's part or from lower floors
FLOORS = {"errors": 0, "files": 0, "options": 0, "corpus": 1, "tokens": 2, "model": 3, "retrieval": 3,
          "engine": 5, "training": 6, "chat": 6, "eval": 6, "serve": 6, "recipe": 7, "commands": 8, "cli": 9, "__main__": 10,
          "__init__": 10}
LAZY_ALLOWED = {"chitchat/__init__.py", "chitchat/cli.py"}  # PEP 562 public API; one command's module only
# elsewhere an import inside a function must say why on the line above (a heavy dependency loaded on use)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, modules: dict[str, Path]) -> set[tuple[str, bool]]:
    """(imported chitchat module, at module top or explained?) for each import of the project's own code;
    `chitchat` itself (the package's face, for `__version__`) is left out."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    top = {id(node) for node in tree.body}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("chitchat"):
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                explained = id(node) in top or lines[node.lineno - 2].strip().startswith("#")
                if name in modules and name != "chitchat":
                    found.add((name, explained))
    return found


def test_every_subpackage_says_what_it_is_for_and_no_module_is_over_500_lines():
    for name, path in _modules().items():
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 500, f"{path} is over 500 lines"
        if path.name == "__init__.py":
            assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{path} has no docstring"
        assert _part(name) in FLOORS, f"{name}: a part of the package with no floor in the flow"


def test_imports_point_down_the_flow_and_sit_at_module_top():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        here = _part(name)
        for target, at_top in _imports(path, modules):
            there = _part(target)
            if target.startswith(name + ".") or target == name:
                continue  # a package's own modules
            if FLOORS[there] > FLOORS[here] or (FLOORS[there] == FLOORS[here] and there != here and FLOORS[here] > 0):
                wrong.append(f"{name} -> {target}")
            rel = str(path.relative_to(PACKAGE.parent))
            if not at_top and rel not in LAZY_ALLOWED:
                wrong.append(f"{name} imports {target} inside a function, with no comment saying why")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    modules = _modules()
    graph = {name: {t for t, _ in _imports(path, modules) if t != name and not t.startswith(name + ".")}
             for name, path in modules.items()}
    graph["chitchat"] = set()  # the lazy public API imports on use, never at import time
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_test_files_have_unique_names():
    """pytest imports test modules by their file name: two folders' test_x.py would not both collect."""
    names = [p.name for p in PACKAGE.parent.joinpath("tests").rglob("test_*.py")]
    assert sorted(names) == sorted(set(names)), sorted(n for n in set(names) if names.count(n) > 1)


def test_no_test_module_is_over_500_lines():
    tests = PACKAGE.parent / "tests"
    long = [str(p.relative_to(tests)) for p in tests.rglob("*.py") if len(p.read_text(encoding="utf-8").splitlines()) > 500]
    assert not long, f"over 500 lines: {', '.join(sorted(long))}"

