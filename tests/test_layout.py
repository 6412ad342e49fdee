"""The core's layout by concern: imports point one way, and functions stay short.

Packages are layered (``LAYERS``): a module may import its own package and the layers
below it, never above; imports inside functions count too, so no cycle hides behind a
late import. Only the SDK facade (``lth_core/__init__.py``) names every layer, and no core
module below the commands imports it back. No function in the core or the bundled plugins is longer than
``MAX_LINES`` lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "lth_core"
#: Lowest first. A module of layer i imports only from layers 0..i (its own layer included).
LAYERS = [
    {"errors", "files", "seeds", "version", "quiet", "private_apis"},
    {"config"},
    {"tickets", "data"},
    {"plugin_api"},
    {"reporting"},
    {"engines"},
    {"lottery"},
    {"commands"},
]
MAX_LINES = 60


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``lth_core`` module ``path`` imports, anywhere in it (functions included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "lth_core":
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if (CORE / Path(*node.module.split(".")[1:]) / f"{a.name}.py").is_file()]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "lth_core"]
    return found


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return next(i for i, names in enumerate(LAYERS) if part in names)


CORE_FILES = sorted(p for p in CORE.rglob("*.py") if p != CORE / "__init__.py")


def test_every_core_module_is_in_a_layer():
    unplaced = sorted({_module_name(p).split(".")[1] for p in CORE_FILES} - set().union(*LAYERS))
    assert not unplaced, f"add these packages or modules of lth_core to LAYERS: {unplaced}"


@pytest.mark.parametrize("path", CORE_FILES, ids=[str(p.relative_to(ROOT)) for p in CORE_FILES])
def test_imports_point_down_the_layers(path: Path):
    mine, wrong = _layer(_module_name(path)), []
    for line, target in _imports(path):
        if target == "lth_core" and mine < len(LAYERS) - 1:  # commands may use the public SDK like any user
            wrong.append(f"line {line}: imports the SDK facade lth_core (import the module that defines the name)")
        elif target != "lth_core" and _layer(target) > mine:
            wrong.append(f"line {line}: imports {target}, a layer above {_module_name(path)}")
    assert not wrong, wrong


def test_the_core_has_no_import_cycle():
    graph = {_module_name(p): {t for _, t in _imports(p) if t != "lth_core"} for p in CORE_FILES}
    graph = {m: {t for t in targets if t in graph} for m, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(target):] + [target]) if target in path else target)
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_layer_check_sees_a_late_upward_import(tmp_path: Path):
    """An import inside a function counts (the layer test cannot pass by not looking there)."""
    probe = CORE / "tickets" / "_layout_probe.py"
    probe.write_text("def f():\n    from lth_core.lottery.train import train\n    return train\n")
    try:
        assert [t for _, t in _imports(probe)] == ["lth_core.lottery.train"]
        assert _layer("lth_core.lottery.train") > _layer(_module_name(probe))
    finally:
        probe.unlink()


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]


def test_no_function_is_longer_than_sixty_lines():
    files = sorted(CORE.rglob("*.py")) + sorted((ROOT / "plugins").rglob("*.py"))
    assert [f for p in files for f in _long_functions(p)] == []
