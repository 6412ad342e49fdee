"""Lightning's ``Trainer`` parameters and accelerator names, read from its source files.

Checking a recipe's ``trainer:`` needs the ``Trainer``'s parameters, their types and the
accelerator names. Importing ``pytorch_lightning`` for them costs about 5 s of CPU and
0.3 GB here (it imports torch, torchmetrics, torchvision, dynamo), so every recipe mistake,
even a typo, waited for it. The source is read instead, with :mod:`ast`: the parameters
of ``Trainer.__init__`` with their annotations, whose names are followed through
Lightning's own modules (``_PRECISION_INPUT`` is a ``Literal`` two imports away); a class
from anywhere else stays opaque (no recipe can write one). Nothing is imported but
``typing``-like standard modules.

What this reader does not understand raises :class:`Unreadable`, and the caller imports
Lightning as before; ``tests/test_startup.py`` checks the result against the imported
``Trainer`` of the installed version.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import importlib.util
import inspect
import typing
from pathlib import Path
from typing import Any

#: Packages whose source is followed; a name from another package is an opaque class.
FOLLOWED = ("pytorch_lightning", "lightning_fabric")
#: Standard modules cheap and safe to import for what annotations name (``Optional``, ``timedelta``).
STANDARD = ("typing", "typing_extensions", "collections.abc", "datetime", "pathlib", "os", "numbers")


class Unreadable(Exception):
    """The source does not have the shape this reader knows: import Lightning instead."""


def module_file(module: str) -> Path:
    """The source file of ``module`` in a followed package, found without importing it."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top) if top in FOLLOWED else None  # a top-level package is found, not run
    if spec is None or not spec.submodule_search_locations:
        raise Unreadable(f"no source for {module}")
    base = Path(list(spec.submodule_search_locations)[0]).joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise Unreadable(f"no source for {module}")


@functools.lru_cache(maxsize=None)
def _tree(module: str) -> ast.Module:
    return ast.parse(module_file(module).read_text(encoding="utf-8"))


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """Statements at module level, including those inside top-level ``if``/``try`` blocks."""
    out: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.If):
            out += node.body + node.orelse
        elif isinstance(node, ast.Try):
            out += node.body + [s for h in node.handlers for s in h.body] + node.orelse
        else:
            out.append(node)
    return out


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an ``import from`` names, relative imports made absolute."""
    if not node.level:
        return node.module or ""
    package = module if module_file(module).name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imported(source: str, name: str, depth: int) -> Any:
    """``name`` from module ``source``: followed into Lightning, real from the standard
    modules, an opaque class from anything else (torch's ``Optimizer``, a Lightning class)."""
    if source.split(".")[0] in FOLLOWED:
        return resolve(source, name, depth + 1)
    if source in STANDARD:
        return getattr(importlib.import_module(source), name)
    return type(name, (), {})


def resolve(module: str, name: str, depth: int = 0) -> Any:
    """What ``name`` denotes at the top level of ``module``: an alias is evaluated, an
    import followed, a class is opaque."""
    if depth > 25:
        raise Unreadable(f"{module}.{name}: too deep")
    for node in _top_level(_tree(module)):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return evaluate(module, node.value, depth)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name and node.value:
            return evaluate(module, node.value, depth)
        if isinstance(node, ast.ClassDef) and node.name == name:
            return type(name, (), {})
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _imported(_absolute(module, node), alias.name, depth)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (alias.asname or alias.name.split(".")[0]) == name:
                    full = alias.name if alias.asname else name
                    return importlib.import_module(full) if full in STANDARD else None  # None: a module not followed
    if hasattr(builtins, name):
        return getattr(builtins, name)
    raise Unreadable(f"{module}.{name} not found")


def evaluate(module: str, node: ast.expr, depth: int = 0) -> Any:
    """An annotation expression of ``module`` as the typing object Python would build."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):  # a forward reference
            return evaluate(module, ast.parse(node.value, mode="eval").body, depth)
        return node.value
    if isinstance(node, ast.Name):
        return resolve(module, node.id, depth)
    if isinstance(node, ast.Attribute):
        base = evaluate(module, node.value, depth)
        return getattr(base, node.attr) if inspect.ismodule(base) else type(node.attr, (), {})  # pl.Callback: opaque
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return typing.Union[evaluate(module, node.left, depth), evaluate(module, node.right, depth)]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [evaluate(module, e, depth) for e in node.elts]
    if isinstance(node, ast.Subscript):
        return _subscript(module, node, depth)
    raise Unreadable(f"{module}: cannot read {ast.dump(node)[:80]}")


def _subscript(module: str, node: ast.Subscript, depth: int) -> Any:
    """``Optional[...]``, ``Union[...]``, ``list[int]``; ``Literal``'s strings are values."""
    base = evaluate(module, node.value, depth)
    items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
    if base is typing.Literal:
        values = [ast.literal_eval(e) for e in items]
        return typing.Literal[tuple(values)] if len(values) > 1 else typing.Literal[values[0]]
    args = [evaluate(module, e, depth) for e in items]
    args = [tuple(a) if isinstance(a, list) and base is not typing.Callable else a for a in args]
    return base[tuple(args)] if len(args) > 1 else base[args[0]]


@functools.lru_cache(maxsize=1)
def trainer_parameters() -> dict[str, inspect.Parameter]:
    """``Trainer.__init__``'s parameters (``self`` aside) with their annotations evaluated."""
    trainer = next((n for n in _tree("pytorch_lightning.trainer.trainer").body
                    if isinstance(n, ast.ClassDef) and n.name == "Trainer"), None)
    init = next((n for n in trainer.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None) if trainer else None
    if init is None:
        raise Unreadable("no Trainer.__init__")
    a = init.args
    kinds = ([(arg, inspect.Parameter.POSITIONAL_ONLY) for arg in a.posonlyargs]
             + [(arg, inspect.Parameter.POSITIONAL_OR_KEYWORD) for arg in a.args]
             + [(arg, inspect.Parameter.KEYWORD_ONLY) for arg in a.kwonlyargs])
    module = "pytorch_lightning.trainer.trainer"
    return {arg.arg: inspect.Parameter(arg.arg, kind, annotation=evaluate(module, arg.annotation) if arg.annotation
                                       else inspect.Parameter.empty)
            for arg, kind in kinds if arg.arg != "self"}


@functools.lru_cache(maxsize=1)
def accelerator_names() -> frozenset[str]:
    """The names Lightning's accelerators register: each class in ``pytorch_lightning/accelerators``
    that has ``register_accelerators`` and whose ``name()`` returns a string."""
    folder = module_file("pytorch_lightning.accelerators").parent
    names = set()
    for path in sorted(folder.glob("*.py")):
        for cls in (n for n in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(n, ast.ClassDef)):
            methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
            if "register_accelerators" not in methods or "name" not in methods:
                continue
            returned = [r.value for r in ast.walk(methods["name"]) if isinstance(r, ast.Return)]
            if len(returned) != 1 or not isinstance(returned[0], ast.Constant) or not isinstance(returned[0].value, str):
                raise Unreadable(f"{path.name}: {cls.name}.name() is not a constant")
            names.add(returned[0].value)
    if not names:
        raise Unreadable("no accelerators found")
    return frozenset(names)
