"""Files lth writes and reads back: JSON records and tensors, written atomically.

Kept free of torch at import so commands that only read results (``lth report``) start fast.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path
from contextlib import contextmanager, suppress
from typing import Any, Iterator

from lth_core.errors import LthError


class OutputError(LthError):
    """lth could not create, write or rename its output: a full disk, a read-only file
    system, a file where a folder must go. One line naming the path and the system's reason;
    what was finished before (a run's earlier rounds) stays on disk."""


def output_error(exc: OSError, path: Path, action: str = "write") -> OutputError:
    """``cannot ACTION PATH: CAUSE`` for an OSError met while writing ``path``.

    Python's OSError from ``file.write`` names no file (and a temporary file's name means
    nothing to a user), so the path lth meant to write is named instead.
    """
    cause = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in (Path(path), *Path(path).parents) if p.exists() and not p.is_dir()), None)
        cause = f"{blocker} is a file, not a folder" if blocker is not None else cause
    return OutputError(f"cannot {action} {path}: {cause}")


@contextmanager
def writing(path: Path, action: str = "write") -> Iterator[None]:
    """Any OSError inside the block is one :class:`OutputError` line naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise output_error(exc, path, action) from exc


def make_dir(path: Path) -> Path:
    """``path`` as a folder (with its parents), or one :class:`OutputError` line saying why
    it cannot be one: a file in the way, a read-only file system, no permission."""
    path = Path(path)
    with writing(path, "create the folder"):
        path.mkdir(parents=True, exist_ok=True)
    return path


def os_error_line(exc: OSError) -> str:
    """One line for an OSError that reached the command line without a path lth knew it by."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"cannot use {' -> '.join(names)}: {cause}" if names else f"{cause} ({type(exc).__name__})"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an error it
    replaces ``path`` in one rename, so a reader (or a killed run's rerun) sees the old file
    or the new one, never half of one. On an error the temporary file is removed, and an
    OSError (a full disk, a read-only file system) is one :class:`OutputError` line naming
    ``path`` and the cause."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with writing(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        with suppress(OSError):  # nothing was written on a read-only file system
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
        try:
            save_file(cpu, str(tmp), metadata=metadata)
        except Exception as exc:  # noqa: BLE001 - safetensors reports a full disk as its own error type
            os_error = _os_error_of(exc)
            if os_error is None:
                raise
            raise os_error from exc


def _os_error_of(exc: Exception) -> OSError | None:
    """The OSError inside a safetensors error (``I/O error: No space left on device (os error 28)``)."""
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


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
