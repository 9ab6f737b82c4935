"""The decoded-dataset cache: a dataset decoded once is stored as ``.npy`` arrays.

An entry is three files, ``<key>.images.npy``, ``<key>.labels.npy`` and ``<key>.json`` (classes,
source and a fingerprint of the source files), each written atomically, the json last. An entry
whose fingerprint no longer matches its source (the files changed) is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from spos.data.dataset import ArrayDataset
from spos.errors import DataError
from spos.io import atomic_write_bytes

__all__ = ["cached_dataset", "source_fingerprint"]

logger = logging.getLogger(__name__)

_CACHE_FORMAT_VERSION = 1


def source_fingerprint(paths: Sequence[str | os.PathLike[str]]) -> str:
    """A hex digest of each file's resolved path, size and modification time."""
    records = []
    for p in paths:
        stat = os.stat(p)
        records.append([str(Path(p).resolve()), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(records).encode()).hexdigest()


def _read_cache(stem: Path, fingerprint: str) -> ArrayDataset | None:
    meta_path = stem.with_name(stem.name + ".json")
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if (
            meta.get("format_version") != _CACHE_FORMAT_VERSION
            or meta.get("fingerprint") != fingerprint
        ):
            return None
        images = np.load(stem.with_name(stem.name + ".images.npy"), allow_pickle=False)
        labels = np.load(stem.with_name(stem.name + ".labels.npy"), allow_pickle=False)
        if list(images.shape) != meta["images_shape"] or labels.shape != (images.shape[0],):
            raise ValueError("array shapes do not match the cache's json")
        return ArrayDataset(
            torch.from_numpy(images), torch.from_numpy(labels), tuple(meta["classes"])
        )
    except (OSError, ValueError, KeyError, TypeError, DataError) as exc:
        logger.warning("ignoring unreadable dataset cache %s (%s); decoding again", stem, exc)
        return None


def _write_cache(stem: Path, dataset: ArrayDataset, *, fingerprint: str, source: str) -> None:
    images = dataset.images.cpu().numpy()
    labels = dataset.labels.cpu().numpy()
    meta = {
        "format_version": _CACHE_FORMAT_VERSION,
        "source": source,
        "fingerprint": fingerprint,
        "classes": list(dataset.classes),
        "images_shape": list(images.shape),
    }
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(stem.with_name(stem.name + ".images.npy"), lambda h: np.save(h, images))
        atomic_write_bytes(stem.with_name(stem.name + ".labels.npy"), lambda h: np.save(h, labels))
        # The json is written last: it is what marks the cache entry as complete.
        text = json.dumps(meta, indent=1).encode()
        atomic_write_bytes(stem.with_name(stem.name + ".json"), lambda h: h.write(text))
    except OSError as exc:
        logger.warning("could not write dataset cache %s (%s); continuing without it", stem, exc)


def cached_dataset(
    cache_dir: str | os.PathLike[str] | None,
    *,
    key: str,
    fingerprint: str,
    source: str,
    build: Callable[[], ArrayDataset],
) -> ArrayDataset:
    """Return the cached dataset for ``(key, fingerprint)``, or ``build()`` it and cache it.

    The cache is three files in ``cache_dir``: ``<key>.images.npy``, ``<key>.labels.npy`` and
    ``<key>.json`` (classes, the source and its fingerprint), each written atomically. A cache
    whose fingerprint differs from ``fingerprint`` (the source changed) is rebuilt.

    Args:
        cache_dir: Cache folder; ``None`` disables caching.
        key: File stem of the cache entry.
        fingerprint: Digest of the source files (see :func:`source_fingerprint`).
        source: Human-readable source path, stored in the json.
        build: Decodes the dataset from its source.
    """
    if cache_dir is None:
        return build()
    stem = Path(cache_dir).expanduser() / key
    dataset = _read_cache(stem, fingerprint)
    if dataset is not None:
        logger.info("loaded dataset %s from cache %s", key, stem)
        return dataset
    dataset = build()
    _write_cache(stem, dataset, fingerprint=fingerprint, source=source)
    return dataset
