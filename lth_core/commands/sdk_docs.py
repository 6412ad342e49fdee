"""``docs/sdk.md``: the SDK's reference, made from the names ``lth_core`` exports and the
hooks of :mod:`lth_core.plugin_api.hookspecs`, with their signatures and docstrings.

``python -m lth_core.commands.sdk_docs`` rewrites it; ``tests/test_sdk.py`` fails while
the page and the code disagree, so the reference cannot go stale.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from pathlib import Path
from typing import Any

import lth_core
from lth_core.plugin_api import hookspecs

PAGE = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
INTRO = """# The plugin SDK: `lth_core`

Everything a plugin may use is importable from `lth_core` itself
(`from lth_core import Mask, hookimpl`); the bundled plugins use nothing else, and
`tests/test_sdk.py` fails when a file under `plugins/` reaches past it or uses a private
torch or Lightning name. The rest of the package is private and may change in any release.
Names load on first use, so `import lth_core` imports neither torch nor Lightning.

This page is made by `python -m lth_core.commands.sdk_docs` from the code's own signatures
and docstrings.
"""


def _signature(name: str, obj: Any) -> str:
    if typing.get_origin(obj) is typing.Annotated:  # a type for models' fields (Number), not a callable
        return f"{name} = {_alias(obj)}"
    if inspect.isclass(obj):
        try:
            return f"class {name}{inspect.signature(obj)}"
        except (TypeError, ValueError):
            return f"class {name}"
    if callable(obj):
        try:
            return f"def {name}{inspect.signature(obj)}"
        except (TypeError, ValueError):
            return f"{name}(...)"
    return f"{name}: {type(obj).__name__}"


def _alias(obj: Any) -> str:
    """``Annotated[float, BeforeValidator(yaml11_number)]``: a type alias as a user writes it."""
    base = getattr(obj.__origin__, "__name__", repr(obj.__origin__))
    marks = [f"{type(m).__name__}({getattr(getattr(m, 'func', None), '__name__', '')})" if hasattr(m, "func") else repr(m)
             for m in obj.__metadata__]
    return f"Annotated[{', '.join([base, *marks])}]"


def _members(obj: Any) -> list[str]:
    """A class's public methods and properties, one line each: signature and first sentence."""
    lines = []
    for attr, value in vars(obj).items():
        if attr.startswith("_") or not (inspect.isfunction(value) or isinstance(value, (property, classmethod, staticmethod))):
            continue
        doc = (inspect.getdoc(value) or "").split("\n\n")[0].replace("\n", " ")
        fn = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
        shown = f"{attr}" if isinstance(value, property) else f"{attr}{inspect.signature(fn)}"
        lines.append(f"- `{shown}`: {doc}" if doc else f"- `{shown}`")
    return lines


def _comment_doc(name: str) -> str:
    """The ``#:`` comment above ``NAME = ...`` in the module defining an SDK type alias
    (an alias has no docstring of its own: ``inspect.getdoc`` would give typing's)."""
    module, there = lth_core.SDK[name]
    lines = inspect.getsource(importlib.import_module(module)).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"{there} = "))
    comment = []
    while at > 0 and lines[at - 1].startswith("#:"):
        at -= 1
        comment.insert(0, lines[at][2:].strip())
    return " ".join(comment)


def _entry(name: str, obj: Any) -> list[str]:
    doc = _comment_doc(name) if typing.get_origin(obj) is typing.Annotated else inspect.getdoc(obj) or ""
    parts = [f"### `{name}`", "", "```python", _signature(name, obj), "```", "", doc, ""]
    if inspect.isclass(obj):
        members = _members(obj)
        parts += (["Members:", "", *members, ""] if members else [])
    return parts


def sdk_reference() -> str:
    """The page's text."""
    parts = [INTRO, "## Hooks a plugin implements", "",
             "Decorate functions with `hookimpl` (a `pluggy.HookimplMarker('lth')`); register the module "
             "through the `lth` entry-point group.", ""]
    specs = [fn for _, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "lth_spec")]
    for fn in sorted(specs, key=lambda f: f.__code__.co_firstlineno):  # in the order hookspecs.py explains them
        parts += _entry(fn.__name__, fn)
    parts += ["## `hookimpl` and `__version__`", "", f"`hookimpl` marks a hook implementation; `__version__` is `{lth_core.__version__!r}`.", ""]
    for section, names in lth_core.SECTIONS.items():
        parts += [f"## {section}", ""]
        for name in names:
            parts += _entry(name, getattr(lth_core, name))
    return "\n".join(parts).rstrip() + "\n"


def main() -> None:
    PAGE.write_text(sdk_reference())
    print(PAGE)


if __name__ == "__main__":
    main()
