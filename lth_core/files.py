"""Small files lth writes and reads back: JSON records, written atomically.

Kept free of torch so commands that only read results (``lth report``) start fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lth_core.errors import LthError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")  # read_json reads UTF-8 whatever the locale
    os.replace(tmp, path)


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
