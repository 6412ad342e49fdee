"""Markers and field types that recipe models (the core's and plugins') are built from.

A marker sits in a field's ``Annotated[...]`` and says something pydantic does not know:
whether the key enters the recipe hash (:data:`Unhashed`, :data:`HashedUnlessDefault`),
whether it is stored when not given (:data:`GivenOnly`), and how to word a mistake in it
(:class:`Expect`). The hash and the error messages read the markers from the models, so a
new key carries its rules where it is declared, not in a list kept elsewhere::

    steps_per_call: Annotated[int, Unhashed] = Field(50, ge=1)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, WrapValidator
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class _Marker:
    name: str

    def __repr__(self) -> str:
        return self.name


#: The largest count of steps, examples, rounds or labels: torch's int64, which holds them
#: (step counters, indices). Larger values never meant anything and would overflow there.
#: A ceiling, not a choice: messages name it only to a value above it.
MAX_COUNT = 2**63 - 1

#: The key says how to compute, not what (where files go, how often to checkpoint, how
#: trials are scheduled): never hashed, so a run folder is the same run with or without it.
Unhashed = _Marker("Unhashed")
#: The key came after runs already existed: hashed only when it differs from its default,
#: so upgrading lth never orphans an existing run folder.
HashedUnlessDefault = _Marker("HashedUnlessDefault")
#: Stored in the recipe only when the recipe gives it (its consumer has its own default).
GivenOnly = _Marker("GivenOnly")


@dataclass(frozen=True)
class Expect:
    """What a valid value is, in the user's words, for any mistake inside the value:
    ``Expect("increasing positive step numbers")`` words ``optimizer.milestones: [5, 3]``
    as ``optimizer.milestones must be increasing positive step numbers, got [5, 3]``."""

    text: str


def has_marker(field: FieldInfo | None, marker: Any) -> bool:
    """Whether a model field carries ``marker`` in its ``Annotated`` metadata."""
    return field is not None and marker in field.metadata


def _as_given(value: Any, handler: Any) -> Any:
    handler(value)
    return value


#: Validate against the annotation, but keep the value as written: the recipe (and its
#: hash) holds ``{last: 0}``, not the ``{last: 0.0}`` a ``dict[str, float]`` would make.
AsGiven = WrapValidator(_as_given)

#: ``1e-3`` is a string to YAML 1.1 (PyYAML wants ``1.0e-3``); read it as the number users mean.
SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def yaml11_number(value: Any) -> Any:
    """A string in scientific notation as the float it means; anything else unchanged."""
    if isinstance(value, str) and SCIENTIFIC.fullmatch(value.strip()):
        return float(value)
    return value


#: A real number stored as a float (``lr: 1`` is ``1.0``), accepting ``1e-3`` as written.
Number = Annotated[float, BeforeValidator(yaml11_number)]
