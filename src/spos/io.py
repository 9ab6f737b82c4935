"""Atomic file writes: a reader sees the old file or the new one, never half of either.

A leaf module (no ``spos`` imports) so that every layer, from ``arch`` to the stages and the
report, writes run files the same way: into a temporary file in the target's folder, flushed
and fsynced, then renamed over the target. A failure at any point (full disk, signal) leaves
the previous file in place and removes the temporary one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

__all__ = ["atomic_write_bytes", "atomic_write_text", "finite_json", "read_jsonl", "write_json"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, or a function that writes to a binary handle) to ``path``.

    The parent folder is created if missing; the file gets mode 0644 (``mkstemp`` makes 0600,
    but run files are meant to be shared).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_json(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None (JSON has no such numbers;
    Python's ``json`` would write bare ``NaN`` that other readers reject)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(value) for value in data]
    return data


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON (one trailing newline) to ``path`` atomically; non-finite
    floats are written as null."""
    atomic_write_text(path, json.dumps(finite_json(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, in order; ``[]`` when the file does not exist.

    Blank lines and lines that are not a JSON object are skipped with a logged warning: the
    half-written last line a kill or a full disk leaves in the middle of an append, or the
    line a still-running stage is writing.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                log.warning("%s line %d is not a JSON record; skipped", path, number)
    return records
