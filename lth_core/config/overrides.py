"""``--set key.sub=value`` overrides and ``sweep:`` points: setting values by recipe path.

Both write a value at a dotted path of the raw recipe (before validation), so a point of a
sweep and an override are checked exactly like the same value written in the file.
"""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

from lth_core.config.messages import show_key
from lth_core.config.schema import shorthand
from lth_core.config.yaml_io import check_size, parse_yaml
from lth_core.errors import LthError


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"lottery.rate=0.1"`` -> (["lottery", "rate"], 0.1); the value is read as YAML."""
    if "=" not in text:
        raise LthError(f"--set {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise LthError(f"--set {text!r} has an empty key part")
    value = parse_yaml(raw, f"--set {text!r}: the value") if raw.strip() else ""
    check_size(value, f"--set {text!r}")
    return path, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """A copy of ``raw`` with every ``--set`` applied, in order. A top-level key lth does
    not know may be a plugin's section: it is checked with the plugins, not here."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        set_path(raw, path, value, f"--set {text!r}")
    return raw


def blame_override(message: str, source: str, overrides: list[str]) -> str:
    """``message`` about the recipe at ``source``, blamed on the ``--set`` that wrote the
    value it is about (its key, or its value quoted, is in the message): the file is fine,
    the command line is what to fix."""
    for text in reversed(overrides):
        key, _, value = text.partition("=")
        key, value = key.strip(), value.strip()
        at_key = re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message)
        words = [value, *re.findall(r"[\w.-]+", value)]  # the value, or a name in a list or mapping it holds
        at_value = any(w and (f"'{w}'" in message or f'"{w}"' in message) for w in words)
        at_section = f"unknown key '{key.split('.')[0]}'" in message  # a misspelt top-level section
        if at_key or at_value or at_section:
            rest = message[len(source) + 2:] if message.startswith(f"{source}: ") else message
            return f"--set {text}: {rest}"
    return message


def set_path(raw: dict, path: list[str], value: Any, where: str) -> None:
    """Set ``raw[a][b]...= value``; a numeric part indexes a list (``callbacks.0.density``)."""
    node: Any = raw
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise LthError(f"{where}: {part!r} is not an index of that list (0..{len(node) - 1})")
            part = int(part)  # type: ignore[assignment]
        elif not isinstance(node, dict):
            raise LthError(f"{where}: {path[i - 1]!r} is not a mapping or a list")
        elif not last and node.get(part) is None:
            node[part] = {}
        if last:
            node[part] = value
        else:
            if i == 0 and not isinstance(node[part], dict):
                node[part] = shorthand(part, node[part])  # `model: lenet300`, `tracking: none`
            node = node[part]


def sweep_points(sweep: dict) -> list[dict[str, Any]]:
    """Every combination of the sweep's values, in order: [{"path": value, ...}, ...]."""
    keys = list(sweep)
    if not keys:
        return []
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def point_raw(raw: dict, point: dict[str, Any], where: str) -> dict:
    """A copy of ``raw`` without ``sweep``, with one sweep point's values set."""
    out = copy.deepcopy({k: v for k, v in raw.items() if k != "sweep"})
    for key, value in point.items():
        set_path(out, key.split("."), copy.deepcopy(value), f"{where}.{show_key(key)}")
    return out


def point_name(point: dict[str, Any]) -> str:
    """A folder name for a sweep point: ``callbacks.0.density=0.3,model.hidden=600-200``."""
    def text(v: Any) -> str:
        if isinstance(v, list):
            return "-".join(text(x) for x in v)
        if isinstance(v, dict):
            return "-".join(f"{k}_{text(x)}" for k, x in v.items())
        return re.sub(r"[^A-Za-z0-9_.-]", "_", str(v))

    return ",".join(f"{k}={text(v)}" for k, v in point.items())
