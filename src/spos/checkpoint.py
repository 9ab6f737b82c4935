"""Versioned, atomic, self-describing checkpoints with safe loading (SPEC section 6).

A checkpoint is one file holding a header (format, version, kind, the search space's full
description, the resolved config, the step) and the states needed to resume bit-identically
(model, optimiser, scheduler, samplers, data stream, RNGs). It is written to a temporary file
and moved into place, so a process killed at any moment leaves either the previous checkpoint
or the new one. Loading uses ``torch.load(weights_only=True)``: tensors, numbers, strings,
lists and dicts only, never arbitrary objects.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from spos.errors import CheckpointError
from spos.io import atomic_write_bytes
from spos.space import SearchSpace

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "check_space",
    "state_dict_sha256",
]

CHECKPOINT_FORMAT = "spos.checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    kind: str,
    space: SearchSpace,
    config: Mapping[str, Any],
    step: int,
    state: Mapping[str, Any],
) -> None:
    """Atomically write a checkpoint.

    Args:
        path: Destination file.
        kind: What it holds (``"supernet"``, ``"search"``, ``"child"``).
        space: The search space; its full description is stored, so the model can be rebuilt.
        config: The resolved run config as a dict.
        step: Progress counter (optimiser step, generation).
        state: Everything else (state dicts, RNG states); only tensors and plain data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "kind": kind,
        "space": space.to_dict(),
        "space_fingerprint": space.fingerprint(),
        "config": dict(config),
        "step": int(step),
        "state": dict(state),
    }
    atomic_write_bytes(path, lambda handle: torch.save(payload, handle))


def _first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of an exception message (torch appends paragraphs of advice about
    ``weights_only`` that do not apply: spos never unpickles arbitrary objects)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 3].rsplit(" ", 1)[0] + "..."


def load_checkpoint(
    path: str | os.PathLike[str], *, kind: str | None = None, map_location: Any = "cpu"
) -> dict[str, Any]:
    """Load and check a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: The file is missing, truncated, not an spos checkpoint, from a newer
            format, holds objects other than plain data, or is of another ``kind``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        reason = _first_sentence(str(exc)) or type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read safely ({reason}); it is corrupted or not an "
            "spos checkpoint: delete it to start over, or point at the right file"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an spos checkpoint")
    version = payload.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path} has a malformed format_version {str(version)[:40]!r}; it is not a valid spos checkpoint")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format_version']}, newer than this spos "
            f"({CHECKPOINT_VERSION}); upgrade spos"
        )
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(
            f"{path} is a {payload.get('kind')!r} checkpoint, but a {kind!r} checkpoint is needed"
        )
    return payload


def check_space(payload: Mapping[str, Any], space: SearchSpace, *, path: Any = "") -> SearchSpace:
    """Refuse a checkpoint whose space name or version differs from ``space``.

    Returns the checkpoint's own space (its layout may carry dataset-specific values).
    """
    stored = SearchSpace.from_dict(payload["space"])
    if stored.name != space.name or stored.version != space.version:
        raise CheckpointError(
            f"checkpoint {path} was trained in space {stored.name!r} v{stored.version}, but the "
            f"config asks for {space.name!r} v{space.version}; use a matching config or checkpoint"
        )
    if stored.choices != space.choices:
        raise CheckpointError(
            f"checkpoint {path} has different choices than space {space.name!r}; it was written "
            "by an incompatible spos version"
        )
    differing = sorted(key for key in set(stored.layout) | set(space.layout) if stored.layout.get(key) != space.layout.get(key))
    if differing:
        pairs = ", ".join(f"{key}: {stored.layout.get(key)!r} vs {space.layout.get(key)!r}" for key in differing[:6])
        raise CheckpointError(
            f"checkpoint {path} was trained with another layout of space {space.name!r} "
            f"(checkpoint vs config: {pairs}); use the run's space.layout or a new run directory"
        )
    return stored


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict: keys sorted, each key then the tensor's raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key]
        digest.update(key.encode())
        if isinstance(tensor, torch.Tensor):
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(str(data.dtype).encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        else:
            digest.update(repr(tensor).encode())
    return digest.hexdigest()
