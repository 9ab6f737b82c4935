"""The one exception type for errors a user can cause.

Anything raised as :class:`SposError` (bad config value, missing data file, wrong or corrupted
checkpoint, malformed architecture string) is printed by the CLI as a single message without a
traceback, and the process exits non-zero. Library code raises it with a message that names the
offending field or file and says how to fix it.
"""

from __future__ import annotations

__all__ = ["SposError", "ConfigError", "DataError", "CheckpointError", "ArchError", "DivergenceError", "RunDirLocked"]


class SposError(Exception):
    """A problem the user can fix (the message says how)."""


class ConfigError(SposError):
    """A config key, type or value is wrong."""


class DataError(SposError):
    """A dataset is missing, unreadable or inconsistent."""


class CheckpointError(SposError):
    """A checkpoint is missing, corrupted, unsafe, or from another search space."""


class ArchError(SposError):
    """An architecture does not belong to its search space or cannot be parsed."""


class DivergenceError(SposError):
    """Training produced a non-finite loss or gradient norm; the last good checkpoint is kept."""


class RunDirLocked(SposError):
    """Another process is working in the same run directory."""
