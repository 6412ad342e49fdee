"""pydantic's validation errors as one line naming the key, the bad value and what is valid.

pydantic reports every error, several lines each, in its own words ("Input should be a
valid integer"). A user gets one :class:`LthError` line: the first problem, worded from the
model itself (the field's annotation, its ``Literal`` choices, its bounds, its
:class:`~lth_core.config.markers.Expect`), so ``lottery.rate: 1.5`` reads
``lottery.rate must be in (0, 1) (a fraction of remaining weights), got 1.5``.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from types import UnionType
from typing import Any

import annotated_types as at
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from lth_core.config.markers import MAX_COUNT, Expect
from lth_core.config.messages import a_types, admits, brief, choice_text, dotted, got, literal_choices, plain_types
from lth_core.errors import LthError, choices, did_you_mean, one_line

#: The error type of a check a model makes itself (``PydanticCustomError(LTH_ERROR, "as a
#: count must be >= 1")``): its message follows the key, then the value.
LTH_ERROR = "lth"


def option_error(message: str) -> PydanticCustomError:
    """What a check inside a recipe model (a plugin's section or options model included)
    raises for a bad value: ``raise option_error("must name distinct classes")`` reads
    ``extend.classes must name distinct classes, got [1, 1]``, on one line."""
    return PydanticCustomError(LTH_ERROR, message)


def parse(model: type[BaseModel], data: Any, where: str = "", source: str | None = None) -> BaseModel:
    """``model.model_validate(data)``, or one LthError line (``source: `` in front when given)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        line = explain(exc, model, data, where)
        raise LthError(f"{source}: {line}" if source else line) from None


@dataclass
class _Spot:
    """Where in the input an error is: the keys that lead there, the value, its annotation."""

    path: list = field(default_factory=list)
    value: Any = None
    annotation: Any = Any
    meta: list = field(default_factory=list)
    parent: Any = None
    expect: tuple | None = None  # (path, value, Expect) of the innermost Expect on the way
    key: Any = None  # the mapping key the error is about, when it is about a key


def explain(exc: ValidationError, model: Any, data: Any, where: str = "") -> str:
    """One line for the first value pydantic refused (``where`` is the key path in front).

    Of the errors inside that value, the deepest is the telling one: a union reports each
    member, and ``init: {name: 5}`` is about ``init.name``, not about ``init`` being no string.
    """
    errors = exc.errors(include_url=False)
    if errors[0]["type"] == "missing":  # a misspelt key is why the right one is missing: name it
        parent = errors[0]["loc"][:-1]
        errors.sort(key=lambda e: not (e["type"] == "extra_forbidden" and e["loc"][:-1] == parent))
    spots = [(e, _spot(model, data, e["loc"][:-1] if e["type"] == "invalid_key" else e["loc"], e["type"])) for e in errors]
    first = spots[0][1].path
    error, spot = max((s for s in spots if s[1].path[: len(first)] == first), key=lambda s: len(s[1].path))
    return one_line(_words(error, spot, where))


def _words(error: dict, spot: _Spot, where: str) -> str:
    kind, name = error["type"], dotted(spot.path, where)
    if kind == "extra_forbidden":
        return f"unknown key {name}{did_you_mean(spot.path[-1] if spot.path else None, _fields(spot.parent))}; valid: {choices(_fields(spot.parent))}"
    if kind == "invalid_key":
        return f"{name or 'the recipe'} keys must be names (strings), got {brief(error['input'])}"
    if kind == "missing":
        return f"{name} is required{_hint(spot.meta)}"
    if spot.key is not None:
        expect = _expect(spot.meta)
        return f"{name} keys must be {expect.text if expect else 'names (strings)'}, got {brief(spot.key)}"
    if spot.expect is not None:
        path, value, expect = spot.expect
        return f"{dotted(path, where)} must be {expect.text}, got {brief(value)}"
    return _value_words(error, spot, name)


def _value_words(error: dict, spot: _Spot, name: str) -> str:
    """A value of the wrong type, not among the choices, out of bounds, or refused by a check."""
    value = error["input"]
    types = plain_types(spot.annotation)
    if not admits(types, value):
        return f"{name} must be {a_types(types)}, got {got(value)}"
    allowed = literal_choices(spot.annotation)
    if allowed and not any(value == a and type(value) is type(a) for a in allowed):
        return f"{name} is {brief(value)}; valid: {choice_text(allowed)}"
    _, meta = _member(spot.annotation, spot.meta, value)
    if bounds_text(meta) and not within(value, meta):
        return f"{name} must be {bounds_text(meta, value)}{_hint(meta)}, got {brief(value)}"
    if error["type"] == LTH_ERROR:
        return f"{name} {error['msg']}, got {brief(value)}"
    message = error["msg"][:1].lower() + error["msg"][1:]
    return f"{name}: {message}, got {brief(value)}"


def _spot(model: Any, data: Any, loc: tuple, kind: str) -> _Spot:
    """Follow ``loc`` through the input and the annotations side by side. Parts that are
    not keys of the input (pydantic's names for union members) are skipped."""
    spot = _Spot(value=data)
    spot.annotation, spot.meta = _split(model)
    for i, part in enumerate(loc):
        node = spot.value
        annotation, meta = _member(spot.annotation, spot.meta, node)
        if i + 1 < len(loc) and loc[i + 1] == "[key]":
            spot.key, spot.annotation, spot.meta = part, *_split(_key_type(annotation))
            return spot
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_list or isinstance(node, dict) and part in node or part in _fields(annotation)):
            continue  # a union member's name
        spot.parent = annotation
        spot.path.append(part)
        spot.value = node[part] if in_list else node.get(part) if isinstance(node, dict) else None
        spot.annotation, spot.meta = _child(annotation, part)
        if _expect(spot.meta) and kind not in ("missing", "extra_forbidden", "invalid_key"):
            spot.expect = (list(spot.path), spot.value, _expect(spot.meta))
    return spot


def _split(annotation: Any, meta: list | None = None) -> tuple[Any, list]:
    """An annotation without ``Annotated``, and its metadata (a FieldInfo's flattened in)."""
    meta = list(meta or [])
    while typing.get_origin(annotation) is typing.Annotated:
        for m in annotation.__metadata__:
            meta += [m, *m.metadata] if isinstance(m, FieldInfo) else [m]
        annotation = annotation.__origin__
    return annotation, meta


def _member(annotation: Any, meta: list, value: Any) -> tuple[Any, list]:
    """The member of a union that ``value`` belongs to (its own metadata added)."""
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        members = typing.get_args(annotation)
        named = [m for m in members if _named_by(m, value)]  # a union told apart by its ``name`` (data.augment)
        for member in named or members:
            if admits(plain_types(member), value):
                return _split(member, meta)
    return annotation, meta


def _named_by(member: Any, value: Any) -> bool:
    """Whether ``member`` is a model whose ``name`` field is a ``Literal`` of ``value``'s name."""
    found = _fields(member).get("name")
    return (isinstance(value, dict) and found is not None and typing.get_origin(found.annotation) is typing.Literal
            and value.get("name") in typing.get_args(found.annotation))


def _child(annotation: Any, part: Any) -> tuple[Any, list]:
    """The annotation of ``part`` inside a value of ``annotation`` (a model, dict or list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found = _fields(annotation).get(part)
        return _split(found.annotation, [found, *found.metadata]) if found else (Any, [])
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation) or annotation
    if origin is dict and len(args) == 2:
        return _split(args[1])
    if origin in (list, tuple) and args:
        return _split(args[0] if origin is list or args[-1] is Ellipsis else args[min(part, len(args) - 1)])
    return Any, []


def _key_type(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    return args[0] if (typing.get_origin(annotation) or annotation) is dict and len(args) == 2 else str


def _fields(model: Any) -> dict[str, FieldInfo]:
    """A model's fields by the name a recipe writes (the alias, when the field has one)."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return {}
    return {f.alias or n: f for n, f in model.model_fields.items()}


def _expect(meta: list) -> Expect | None:
    return next((m for m in meta if isinstance(m, Expect)), None)


def _hint(meta: list) -> str:
    """`` (what the key means)`` from the field's description, if it has one."""
    description = next((m.description for m in meta if isinstance(m, FieldInfo) and m.description), None)
    return f" ({description})" if description else ""


def bounds_text(meta: list, value: Any = None) -> str:
    """``in (0, 1)``, ``>= 1``, ``a finite number > 0``: the bounds a field declares.

    The int64 ceiling of counts (:data:`MAX_COUNT`) is named only to a ``value`` above it:
    ``rounds: -1`` reads "must be >= 0", not "in [0, 9223372036854775807]".
    """
    low = _bound(meta, (at.Ge, ">=", "[", "ge"), (at.Gt, ">", "(", "gt"))
    high = _bound(meta, (at.Le, "<=", "]", "le"), (at.Lt, "<", ")", "lt"))
    if high and high[2] == MAX_COUNT and low:
        above = isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_COUNT
        low, high = (None, high) if above else (low, None)
    finite = "a finite number" if any(getattr(m, "allow_inf_nan", True) is False for m in meta) else ""
    if low and high:
        text = f"in {low[1]}{low[2]}, {high[2]}{high[1]}"
    else:
        text = " ".join(map(str, (low or high)[::2])) if low or high else ""
    return " ".join(t for t in (finite, text) if t)


def _bound(meta: list, *kinds: tuple) -> tuple | None:
    """The first bound of ``kinds`` in ``meta``: (operator, bracket, limit)."""
    for kind, op, bracket, attr in kinds:
        for m in meta:
            if isinstance(m, kind):
                return op, bracket, getattr(m, attr)
    return None


def within(value: Any, meta: list) -> bool:
    """Whether ``value`` meets every bound in ``meta`` (NaN meets none)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return True
    checks = [(at.Ge, lambda m: value >= m.ge), (at.Gt, lambda m: value > m.gt), (at.Le, lambda m: value <= m.le), (at.Lt, lambda m: value < m.lt)]
    if any(getattr(m, "allow_inf_nan", True) is False for m in meta) and not math.isfinite(value):
        return False
    return all(check(m) for kind, check in checks for m in meta if isinstance(m, kind))
