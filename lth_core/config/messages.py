"""How a recipe message words keys, values and types.

Every recipe mistake is one line naming the key, the bad value and what is valid; these
helpers keep that wording in one place (the schema's errors, the trainer rules and the
plugin-option checks all use them).
"""

from __future__ import annotations

import collections.abc
import re
import typing
from types import NoneType, UnionType
from typing import Any

from pydantic import BaseModel

_PLAIN_KEY = re.compile(r"[\w.*?\[\]-]+")


def show_key(key: Any) -> str:
    """A key as it goes into ``section.key`` in a message: as written when it is a plain
    name, else its repr, so a key holding a line break cannot split the one-line error."""
    return key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else repr(key)


def brief(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message quotes a value, not a file's worth."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def dotted(parts: list | tuple, prefix: str = "") -> str:
    """``["lottery", "rate"]`` -> ``lottery.rate`` (``prefix.`` in front when given)."""
    return ".".join([prefix] * bool(prefix) + [show_key(p) if not isinstance(p, int) else str(p) for p in parts])


_TYPE_NAMES = {bool: "true/false", int: "integer", float: "number", str: "string", list: "list", dict: "mapping", NoneType: "null"}


def a_types(types: tuple) -> str:
    """``a number``, ``an integer or null``: the type names with their article."""
    text = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
    return f"an {text}" if text[0] in "aeiou" else f"a {text}"


def got(value: Any) -> str:
    """The ``got ...`` of a type mistake: ``int 5``, ``str 'x'``, or ``True`` for a boolean."""
    return repr(value) if isinstance(value, bool) else f"{type(value).__name__} {brief(value)}"


def choice_text(values: list) -> str:
    """Literal choices as a recipe writes them, in the order the schema declares them."""
    words = {True: "true", False: "false", None: "null"}
    return ", ".join(words[v] if v is None or isinstance(v, bool) else str(v) for v in values)


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = annotation.__origin__
    return annotation


def plain_types(annotation: Any) -> tuple[type, ...] | None:
    """The YAML-level types an annotation admits (``None``: anything), in declaration order.

    ``float`` admits integers too (a bool is never a number); a pydantic model is a mapping
    and a tuple is written as a list. Used to word a type mistake as the recipe sees it.
    """
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if annotation in (Any, object):
        return None
    if origin in (typing.Union, UnionType):
        members = [plain_types(a) for a in typing.get_args(annotation)]
        return None if any(m is None for m in members) else tuple(dict.fromkeys(t for m in members for t in m))
    if origin is typing.Literal:
        return tuple(dict.fromkeys(type(v) for v in typing.get_args(annotation)))
    if annotation is None or annotation is NoneType:
        return (NoneType,)
    base = origin or annotation
    if isinstance(base, type) and issubclass(base, BaseModel):
        return (dict,)
    if base in (tuple, list, collections.abc.Sequence):
        return (list,)
    if base in (dict, collections.abc.Mapping):
        return (dict,)
    return (base,) if isinstance(base, type) else None


def admits(types: tuple[type, ...] | None, value: Any) -> bool:
    """Whether ``value`` has one of ``types`` (a bool is never an int or a float)."""
    if types is None:
        return True
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def literal_choices(annotation: Any) -> list:
    """The values a ``Literal`` (or ``bool | Literal[...]``) admits, or [] for an open type."""
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return list(typing.get_args(annotation))
    if annotation is bool:
        return [True, False]
    if annotation is None or annotation is NoneType:
        return [None]
    if origin in (typing.Union, UnionType):
        members = [literal_choices(a) for a in typing.get_args(annotation)]
        return [] if not all(members) else [v for m in members for v in m]
    return []
