"""Files lth writes and reads back: JSON records and tensors, written atomically.

Kept free of torch at import so commands that only read results (``lth report``) start fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

from lth_core.errors import LthError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an error it
    replaces ``path`` in one rename, so a reader (or a killed run's rerun) sees the old file
    or the new one, never half of one. On an error the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`), as UTF-8 whatever the locale."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_tensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write named tensors to ``path`` as safetensors (never pickle), atomically, from CPU
    copies so the file holds what the tensors were when this was called."""
    from safetensors.torch import save_file  # lazily: reading results never needs torch

    cpu = {n: t.detach().to("cpu").contiguous().clone() for n, t in tensors.items()}  # own storage: safetensors refuses shared
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=metadata)


def read_json(path: Path, kind: type = dict) -> Any:
    """A JSON record lth wrote (an object, or a list with ``kind=list``: curves.json);
    anything else is a one-line LthError.

    Damage arrives as bytes that are not UTF-8, text that is not JSON, or JSON of another
    shape (a list, a number): each would otherwise surface later as a traceback far from
    the file, so it is refused here, naming the file.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise LthError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise LthError(f"{path} is corrupt: not UTF-8 text (byte {exc.start})") from exc
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LthError(f"{path} is corrupt: {exc}") from exc
    if not isinstance(record, kind):
        expected = "object" if kind is dict else kind.__name__
        raise LthError(f"{path} is corrupt: a JSON {type(record).__name__}, not the {expected} lth writes")
    return record


def json_digest(payload: Any) -> str:
    """SHA-256 of JSON data in one canonical form (sorted keys): a record's own checksum.

    JSON floats round-trip exactly, so a record read back digests as it did when written.
    """
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks (tickets record it to detect damage)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
