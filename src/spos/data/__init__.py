"""Datasets, the held-out validation split, tensor augmentation and resumable batch streams.

This package owns everything between files on disk and uint8 batches on a device:

* :mod:`~spos.data.readers`: Fashion-MNIST (IDX), CIFAR-10/100 (the official python pickles,
  unpickled with a restricted unpickler), image trees or zips and a synthetic dataset, one
  registered reader per dataset name; :func:`load_dataset` decodes a dataset once into an
  in-memory :class:`ArrayDataset` (:mod:`~spos.data.dataset`) and caches it as ``.npy``
  (:mod:`~spos.data.cache`);
* :mod:`~spos.data.lazy`: :class:`LazyImageFolder`, which decodes ImageNet-sized trees on
  demand instead (on the CPU, or optionally on the GPU: :mod:`~spos.data.gpu_decode`);
* :mod:`~spos.data.augment`: batched uint8 augmentation and normalisation (SPEC section 8);
* :mod:`~spos.data.stream`: the fixed held-out validation split (SPEC section 4), channel
  statistics and :class:`BatchStream`, the deterministic, resumable, rank-sharded stream of
  training batches (SPEC section 3);
* :mod:`~spos.data.prepare`: what a stage needs from the ``data`` config section: the
  prepared datasets, training stream and evaluation batches.

Every random draw takes a ``torch.Generator`` made by :func:`make_generator` from a seed and a
purpose, so the same seed gives the same data order, split and augmentation.

The names below are imported from their modules on first access, so ``import spos.data``
(and the torch-free :mod:`~spos.data.readers`, which the config validates dataset names
against) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spos.data.augment import (
        add_lighting,
        apply_crop_flip,
        crop_flip_params,
        jitter_colors,
        pad_to,
        random_crop_flip,
        random_resized_crop_box,
        to_float,
    )
    from spos.data.cache import cached_dataset, source_fingerprint
    from spos.data.dataset import ArrayDataset, make_generator
    from spos.data.lazy import DECODE_BACKENDS, LazyImageFolder, check_decode_backend
    from spos.data.readers import (
        CIFAR10_CLASSES,
        DATASET_NAMES,
        FASHION_MNIST_CLASSES,
        FASHION_MNIST_ROOT,
        load_dataset,
        read_cifar_pickle,
        read_fashion_mnist,
        read_idx,
        read_image_folder,
        synthetic_dataset,
    )
    from spos.data.stream import (
        BatchStream,
        channel_stats,
        gather_rows,
        holdout_split,
        iterate_batches,
    )

__all__ = [
    "ArrayDataset",
    "BatchStream",
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "DECODE_BACKENDS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "LazyImageFolder",
    "add_lighting",
    "apply_crop_flip",
    "cached_dataset",
    "channel_stats",
    "check_decode_backend",
    "crop_flip_params",
    "gather_rows",
    "holdout_split",
    "iterate_batches",
    "jitter_colors",
    "load_dataset",
    "make_generator",
    "pad_to",
    "random_crop_flip",
    "random_resized_crop_box",
    "read_cifar_pickle",
    "read_fashion_mnist",
    "read_idx",
    "read_image_folder",
    "source_fingerprint",
    "synthetic_dataset",
    "to_float",
]

_MODULES = {
    "augment": (
        "add_lighting",
        "apply_crop_flip",
        "crop_flip_params",
        "jitter_colors",
        "pad_to",
        "random_crop_flip",
        "random_resized_crop_box",
        "to_float",
    ),
    "cache": ("cached_dataset", "source_fingerprint"),
    "dataset": ("ArrayDataset", "make_generator"),
    "lazy": ("DECODE_BACKENDS", "LazyImageFolder", "check_decode_backend"),
    "readers": (
        "CIFAR10_CLASSES",
        "DATASET_NAMES",
        "FASHION_MNIST_CLASSES",
        "FASHION_MNIST_ROOT",
        "load_dataset",
        "read_cifar_pickle",
        "read_fashion_mnist",
        "read_idx",
        "read_image_folder",
        "synthetic_dataset",
    ),
    "stream": ("BatchStream", "channel_stats", "gather_rows", "holdout_split", "iterate_batches"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}



def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
