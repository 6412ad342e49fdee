"""Reading recipe files: ``yaml.safe_load`` only, every failure one line, size limits.

A recipe is a page of YAML written by a person or shared by one; a file that is not
UTF-8, too big, not YAML, that repeats a key, or that expands (through aliases) to more
values than a recipe could hold is refused with one :class:`LthError` line before
anything walks it.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import yaml

from lth_core.errors import LthError, choices, did_you_mean, one_line

#: A recipe is a page of YAML; a bigger file is a mistake (or an attack on the parser).
MAX_RECIPE_BYTES = 1 << 20
#: Values a recipe may expand to, and how deeply they may nest. YAML anchors and aliases
#: let a few lines expand to billions of values (hashing or copying them would never end),
#: or hold a value inside itself; a real recipe has a few hundred values, nested 5 deep.
MAX_NODES = 100_000
MAX_DEPTH = 50


class DuplicateKey(yaml.YAMLError):
    """A mapping that gives one key twice: YAML forbids it, PyYAML keeps the last silently."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping repeating a key (three ``seed:`` lines
    would otherwise run with the last one), naming the key and the lines that give it.

    Everything else is ``yaml.safe_load``'s: the same tags, types and merge keys (a key
    given next to ``<<: *base`` overrides the merged one, as YAML 1.1 says; only keys
    written twice in one mapping are refused).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            self._refuse_repeats(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_repeats(self, node: yaml.MappingNode) -> None:
        marks: dict[Any, list[yaml.Mark]] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                marks.setdefault(key, []).append(key_node.start_mark)
            except TypeError:  # an unhashable key: PyYAML's own constructor refuses it
                continue
        for key, where in marks.items():
            if len(where) > 1:
                raise DuplicateKey(f"key {key!r} is given {len(where)} times, {_places(where)}; "
                                   "a recipe gives each key once (YAML keeps only the last)")


def _places(marks: list[yaml.Mark]) -> str:
    """``on lines 2, 5 and 9``; ``at 1:5, 1:11 (line:column)`` when a line repeats (a one-line mapping)."""
    lines = [m.line + 1 for m in marks]
    if len(set(lines)) == len(lines):
        return f"on lines {', '.join(map(str, lines[:-1]))} and {lines[-1]}"
    return f"at {', '.join(f'{m.line + 1}:{m.column + 1}' for m in marks)} (line:column)"


def parse_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` (through :class:`UniqueKeyLoader`) whose every failure is one
    LthError line. PyYAML's constructors raise ValueError, KeyError or AttributeError for
    some values (``2001-13-45``, ``!!int x``, ``!!bool maybe``, ``!!timestamp x``), and deep
    nesting a RecursionError."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
        raise LthError(one_line(f"{what} is not valid YAML{at}: {problem}")) from None
    except RecursionError:
        raise LthError(f"{what} is not valid YAML: it nests too deeply") from None
    except Exception as exc:  # noqa: BLE001 - see above: PyYAML's constructors raise anything
        raise LthError(one_line(f"{what} is not valid YAML: {type(exc).__name__}: {exc}")) from None


def check_size(raw: Any, source: str) -> None:
    """Refuse a structure of more than :data:`MAX_NODES` values or :data:`MAX_DEPTH` levels,
    counting an alias each time it is used (iteratively: deep nesting must not recurse)."""
    stack, count = [(raw, 1)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise LthError(f"{source}: the recipe expands to more than {MAX_NODES} values (YAML aliases of aliases?); a recipe has a few hundred")
        if depth > MAX_DEPTH:
            raise LthError(f"{source}: the recipe nests more than {MAX_DEPTH} levels deep (a YAML alias inside itself?)")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in value)


def read_yaml(path: Path) -> Any:
    """A YAML file's content, or one LthError line saying why it is not a recipe."""
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise LthError(f"{path} is {size} bytes; a recipe is a YAML text file of at most {MAX_RECIPE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LthError(f"cannot read recipe {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise LthError(f"{path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); a recipe is a YAML text file") from None
    raw = parse_yaml(text, str(path))
    check_size(raw, str(path))
    return raw


def bundled_recipes() -> dict[str, Path]:
    """Recipes shipped with lth (the repository's ``recipes/`` folder), by name."""
    root = importlib.resources.files("lth_recipes")
    return {
        Path(str(p)).stem: Path(str(p))
        for p in root.iterdir()
        if str(p).endswith(".yaml")
    }


def resolve_recipe_path(spec: str) -> Path:
    """A path to a YAML file, or the name of a bundled recipe."""
    path = Path(spec)
    if path.is_file():
        return path
    bundled = bundled_recipes()
    if spec in bundled:
        return bundled[spec]
    if path.suffix in (".yaml", ".yml") and path.name and Path(path.name).stem in bundled and not path.exists():
        return bundled[Path(path.name).stem]
    raise LthError(f"recipe {spec!r} not found{did_you_mean(spec, bundled)}: not a file and not a bundled recipe ({choices(bundled)})")
