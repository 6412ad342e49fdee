"""Small files lth writes and reads back: JSON records, written atomically.

Kept free of torch so commands that only read results (``lth report``) start fast.
"""

from __future__ import annotations

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
