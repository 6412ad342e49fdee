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
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """A JSON file lth wrote; a damaged one is a one-line LthError naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LthError(f"{path} is corrupt: {exc}") from exc


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks (tickets record it to detect damage)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
