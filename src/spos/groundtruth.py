"""Ground-truth accuracy tables (e.g. NAS-Bench-201) for measuring how a supernet ranks.

A ground-truth file is a CSV with one row per architecture: a column naming the architecture
(``arch``: any text :meth:`spos.space.SearchSpace.parse` reads, or ``arch_str``: a
NAS-Bench-201 cell string), one or more numeric columns (true accuracies), and optionally an
``iso_group`` column: architectures computing the same function share it and count once in a
rank correlation (NAS-Bench-201 has 15,625 cells in 6,466 classes).

Torch-free: search-side code and its tests import it.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spos.arch import Arch
from spos.errors import ArchError, ConfigError, DataError
from spos.space import SearchSpace

__all__ = ["GroundTruth"]

_ARCH_COLUMNS = ("arch", "arch_str")
_GROUP_COLUMN = "iso_group"


@dataclass(frozen=True)
class GroundTruth:
    """True values of the architectures of one space, read from a CSV.

    Attributes:
        path: The file it was read from.
        column: The value column.
        archs: One architecture per row, in file order.
        values: The row's value in ``column``.
        groups: Isomorphism class of each row (the arch key when the file has none).
    """

    path: Path
    column: str
    archs: tuple[Arch, ...]
    values: tuple[float, ...]
    groups: tuple[str, ...]

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace, column: str) -> GroundTruth:
        """Read ``path`` and parse every row's architecture in ``space``.

        Raises:
            DataError: The file is missing or unreadable, or a row is malformed (named).
            ConfigError: ``column`` or an architecture column is absent (the columns listed).
        """
        path = Path(path).expanduser()
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                header = list(reader.fieldnames or [])
                rows = list(reader)
        except FileNotFoundError:
            raise DataError(f"ground-truth file {path} does not exist; pass an existing CSV") from None
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"cannot read ground-truth file {path}: {exc}") from None
        arch_column = next((name for name in _ARCH_COLUMNS if name in header), None)
        if arch_column is None:
            raise ConfigError(
                f"ground-truth file {path} has no architecture column ({' or '.join(_ARCH_COLUMNS)}); "
                f"its columns are {header}"
            )
        if column not in header:
            raise ConfigError(
                f"ground-truth file {path} has no column {column!r}; its columns are {header}"
            )
        archs, values, groups = [], [], []
        first_line: dict[str, tuple[int, float]] = {}  # arch key -> (line, value) of its first row
        for line, row in enumerate(rows, start=2):
            try:
                arch = space.parse(row[arch_column])
                value = float(row[column])
            except (ArchError, TypeError, ValueError) as exc:
                raise DataError(f"{path}, line {line}: {exc}") from None
            if not math.isfinite(value):
                raise DataError(f"{path}, line {line}: {column} is {row[column]!r}, not a number")
            if arch.key in first_line:
                earlier, earlier_value = first_line[arch.key]
                if earlier_value != value:
                    raise DataError(
                        f"{path}, lines {earlier} and {line} give the same architecture two "
                        f"different values of {column} ({earlier_value:g} and {value:g}); keep one"
                    )
                continue  # an exact repeat adds nothing
            first_line[arch.key] = (line, value)
            archs.append(arch)
            values.append(value)
            groups.append(str(row[_GROUP_COLUMN]) if row.get(_GROUP_COLUMN) not in (None, "") else arch.key)
        if not archs:
            raise DataError(f"ground-truth file {path} has no rows")
        return cls(path, column, tuple(archs), tuple(values), tuple(groups))

    def __len__(self) -> int:
        return len(self.archs)

    def sample(self, count: int, rng: random.Random) -> list[int]:
        """Row indices of ``count`` architectures drawn uniformly, one per isomorphism class.

        Rows are drawn uniformly (a uniform draw from the space when the file covers it); a row
        whose class was already drawn is skipped. Returns fewer when the file has fewer classes.
        """
        if count < 1:
            raise ConfigError(f"number of architectures to rank must be at least 1, got {count}")
        order = list(range(len(self.archs)))
        rng.shuffle(order)
        chosen, seen = [], set()
        for index in order:
            if self.groups[index] not in seen:
                seen.add(self.groups[index])
                chosen.append(index)
                if len(chosen) == count:
                    break
        return chosen

    def lookup(self, archs: Sequence[Arch]) -> list[float | None]:
        """The value of each architecture (``None`` for one the file lacks)."""
        by_key = {arch.key: value for arch, value in zip(self.archs, self.values, strict=True)}
        return [by_key.get(arch.key) for arch in archs]

    def best(self) -> float:
        """The largest value in the file."""
        return max(self.values)

    def percentile(self, value: float) -> float:
        """Share (%) of rows whose value is below ``value``."""
        return 100.0 * sum(v < value for v in self.values) / len(self.values)
