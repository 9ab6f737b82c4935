"""Architectures: an immutable flat ``{label: choice}`` that names its space (SPEC section 5).

An :class:`Arch` is what search produces and retraining consumes. It is saved as a versioned
``arch.json`` that names its space and that space's version, so a file from another space is
refused with a clear error instead of being silently misread. Validation against the choices
of a space lives in :meth:`spos.space.SearchSpace.validate`. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from spos.errors import ArchError
from spos.io import atomic_write_text

__all__ = ["Arch", "Value", "ARCH_FORMAT", "ARCH_FORMAT_VERSION"]

Value = str | int | float
ARCH_FORMAT = "spos.arch"
ARCH_FORMAT_VERSION = 1



@dataclass(frozen=True)
class Arch(Mapping[str, Value]):
    """One architecture of a named space.

    Attributes:
        space: Name of the search space it belongs to.
        version: Version of that space.
        values: ``(label, value)`` pairs in the space's choice order.
    """

    space: str
    version: int
    values: tuple[tuple[str, Value], ...]

    def __getitem__(self, label: str) -> Value:
        for key, value in self.values:
            if key == label:
                return value
        raise KeyError(label)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.values)

    def __len__(self) -> int:
        return len(self.values)

    def __hash__(self) -> int:
        return hash((self.space, self.version, self.values))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Arch):
            return NotImplemented
        return (self.space, self.version, self.values) == (other.space, other.version, other.values)

    @cached_property
    def key(self) -> str:
        """Canonical short hash: equal architectures have equal keys (search caches use it)."""
        text = json.dumps([self.space, self.version, list(self.values)], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ARCH_FORMAT,
            "format_version": ARCH_FORMAT_VERSION,
            "space": self.space,
            "space_version": self.version,
            "arch": dict(self.values),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Arch:
        if not isinstance(data, Mapping) or data.get("format") != ARCH_FORMAT:
            raise ArchError(
                f"not an spos architecture (expected 'format': {ARCH_FORMAT!r}); "
                "write it with `spos search` or Arch.save"
            )
        version = data.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ArchError(f"arch.json format_version must be an integer, got {repr(version)[:40]}; regenerate it")
        if version > ARCH_FORMAT_VERSION:
            raise ArchError(
                f"arch.json format_version {version} is newer than this spos "
                f"understands ({ARCH_FORMAT_VERSION}); upgrade spos"
            )
        try:
            values = tuple((str(k), v) for k, v in dict(data["arch"]).items())
            return cls(str(data["space"]), int(data["space_version"]), values)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchError(f"malformed arch.json (missing or bad {exc})") from None

    def save(self, path: str | os.PathLike[str], **extra: Any) -> None:
        """Write ``arch.json`` atomically; ``extra`` keys (score, costs) ride along."""
        atomic_write_text(path, json.dumps({**self.to_json(), **extra}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Arch:
        path = Path(path)
        if not path.is_file():
            raise ArchError(f"architecture file {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArchError(f"{path} is not valid JSON ({exc}); regenerate it") from None
        except RecursionError:
            raise ArchError(f"{path} is nested too deeply to be an architecture; regenerate it") from None
        return cls.from_json(data)

    def short(self) -> str:
        """Compact human form: the values joined by commas."""
        return ",".join(str(v) for _, v in self.values)
