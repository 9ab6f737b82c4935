"""What a stage needs from the ``data`` config section: datasets, training stream, eval batches.

:func:`prepare_data` loads the training set, holds out the fixed validation split (SPEC
section 4) and computes the channel statistics; :func:`load_test_split` loads the test split
that only the final report reads; :func:`train_stream` and :func:`eval_batches` turn a prepared
dataset into batches. Each takes the ``data`` section (:class:`~spos.config.DataConfig`) and
the run seed, not the whole run config.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from spos.data.augment import pad_to, random_crop_flip, to_float
from spos.data.dataset import ArrayDataset
from spos.data.lazy import LazyImageFolder
from spos.data.readers import check_classes, load_dataset
from spos.data.stream import BatchStream, channel_stats, holdout_split, iterate_batches
from spos.errors import ConfigError, DataError
from spos.space import seed_from

if TYPE_CHECKING:
    from spos.config import DataConfig
    from spos.dist import Runtime

__all__ = [
    "GPU_RESIDENT_BYTES",
    "LAZY_STATS_IMAGES",
    "PreparedData",
    "eval_batches",
    "load_test_split",
    "place_dataset",
    "prepare_data",
    "train_stream",
]

log = logging.getLogger(__name__)

#: Training images whose channel statistics normalise a lazily read dataset.
LAZY_STATS_IMAGES = 1024

#: In-memory datasets up to this size go onto the GPU whole (CIFAR-10: 150 MB); larger
#: ones stay in pinned host memory, and each batch is gathered into pinned staging memory
#: (BatchStream with ``device``), so the per-batch copy is asynchronous.
GPU_RESIDENT_BYTES = 4 * 2**30

_Dataset = TypeVar("_Dataset", ArrayDataset, LazyImageFolder)


@dataclass
class PreparedData:
    """Datasets of a run and what the model needs to know about them.

    Attributes:
        train: Training images minus the held-out validation split (in memory, or a
            :class:`~spos.data.LazyImageFolder` view read per batch with ``data.lazy``).
        val: The fixed held-out validation split (search fitness, panel accuracy).
        mean: Per-channel mean on the [0, 1] scale (from ``train``).
        std: Per-channel standard deviation on the [0, 1] scale.
        num_classes: Number of classes.
        channels: Image channels.
        image_size: Image side after padding.
    """

    train: ArrayDataset | LazyImageFolder
    val: ArrayDataset | LazyImageFolder
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int
    channels: int
    image_size: int

    def to_float(self, images: torch.Tensor, runtime: Runtime, *, channels_last: bool) -> torch.Tensor:
        """Normalise a uint8 batch and move it to the runtime's device."""
        return to_float(
            images, self.mean, self.std, channels_last=channels_last, device=runtime.device
        )


def _random_subset(dataset: _Dataset, limit: int | None, *, seed: int, split: str) -> _Dataset:
    """The first ``limit`` images of a seeded shuffle of ``dataset`` (all of it if no limit)."""
    if limit is None or limit >= len(dataset):
        return dataset
    # This seeding predates make_generator; it is kept so that subsets, and results, stay the same.
    generator = torch.Generator().manual_seed(seed * 1000 + (split == "test"))
    return dataset.subset(torch.randperm(len(dataset), generator=generator)[:limit])


def _hold_out(
    full: _Dataset, data_cfg: DataConfig, *, seed: int
) -> tuple[_Dataset, _Dataset]:
    """``(train, val)``: the training set split by :func:`~spos.data.holdout_split`."""
    if data_cfg.val_size >= len(full):
        raise ConfigError(
            f"config field 'data.val_size' ({data_cfg.val_size}) must be smaller than the "
            f"training set ({len(full)} images)"
        )
    train_index, val_index = holdout_split(full.labels, size=data_cfg.val_size, seed=seed)
    return full.subset(train_index), full.subset(val_index)


def _load_split(data_cfg: DataConfig, split: str, *, seed: int) -> ArrayDataset:
    options: dict[str, Any] = {}
    if data_cfg.dataset == "synthetic":
        options = {
            "size": data_cfg.synthetic_size,
            "image_size": data_cfg.synthetic_image_size,
            "seed": seed,
        }
    dataset = load_dataset(
        data_cfg.dataset,
        root=data_cfg.root,
        split=split,
        cache_dir=Path(data_cfg.cache_dir).expanduser(),
        **options,
    )
    limit = data_cfg.train_limit if split == "train" else data_cfg.test_limit
    dataset = _random_subset(dataset, limit, seed=seed, split=split)
    if data_cfg.pad_to is not None:
        dataset = ArrayDataset(pad_to(dataset.images, data_cfg.pad_to), dataset.labels, dataset.classes)
    return dataset


def _open_lazy(
    data_cfg: DataConfig, split: str, *, seed: int, classes: Any = None
) -> LazyImageFolder:
    if data_cfg.root is None:
        raise DataError(
            "dataset 'image_folder' needs data.root: a folder with train/<class>/<image> "
            "(and val/<class>/<image> or test/<class>/<image>) files, or a .zip of one"
        )
    folder = LazyImageFolder(
        Path(data_cfg.root).expanduser(),
        split,
        classes=classes,
        num_workers=data_cfg.num_workers,
        decode_backend=data_cfg.decode_backend,
    )
    limit = data_cfg.train_limit if split == "train" else data_cfg.test_limit
    return _random_subset(folder, limit, seed=seed, split=split)


def _normalisation(images: torch.Tensor, data_cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(mean, std)`` of the training ``images`` that normalise every batch.

    A channel with zero standard deviation (the same value in every pixel of every image)
    would normalise to 0/0 = NaN. As scikit-learn's ``StandardScaler`` does for a constant
    feature, such a channel is centred but not scaled (its std is taken as 1, so it reads as 0
    everywhere and the other channels carry the signal); the choice is logged. When every
    channel is constant the images carry no information at all, which is a broken dataset,
    not a training problem: that is refused.

    Raises:
        DataError: Every channel of the training images is constant.
    """
    mean, std = channel_stats(images)
    constant = [index for index, value in enumerate(std.tolist()) if value == 0.0]
    where = f"dataset {data_cfg.dataset!r}" + (f" at {data_cfg.root}" if data_cfg.root else "")
    if len(constant) == len(std):
        values = ", ".join(f"{round(v * 255)}" for v in mean.tolist())
        raise DataError(
            f"every training image of {where} is one flat colour (channel values {values} in "
            "every pixel, standard deviation 0): there is nothing to learn and normalising would "
            "divide by zero; check data.root and the image files"
        )
    if constant:
        log.warning(
            "channel(s) %s of the training images of %s are constant (standard deviation 0); "
            "they are centred but not scaled",
            constant,
            where,
        )
        std = std.clone()
        std[constant] = 1.0
    return mean, std


def _prepare_lazy(data_cfg: DataConfig, *, seed: int) -> PreparedData:
    """:func:`prepare_data` for ``data.lazy``: only file names and labels are read now."""
    full = _open_lazy(data_cfg, "train", seed=seed)
    train, val = _hold_out(full, data_cfg, seed=seed)
    generator = torch.Generator().manual_seed(seed_from(seed, "normalisation-images"))
    sample = torch.randperm(len(train), generator=generator)[:LAZY_STATS_IMAGES].sort().values
    mean, std = _normalisation(train.load_batch(sample, size=data_cfg.input_size, train=False), data_cfg)
    return PreparedData(
        train=train,
        val=val,
        mean=mean,
        std=std,
        num_classes=len(full.classes),
        channels=3,
        image_size=data_cfg.input_size,
    )


def prepare_data(data_cfg: DataConfig, *, seed: int) -> PreparedData:
    """Load the training set, hold out the fixed validation split, compute channel stats.

    A constant channel is centred but not scaled; all channels constant is refused
    (:func:`_normalisation`).

    Args:
        data_cfg: The ``data`` config section.
        seed: The run seed (training subset, held-out split, normalisation sample).
    """
    if data_cfg.lazy:
        return _prepare_lazy(data_cfg, seed=seed)
    full = _load_split(data_cfg, "train", seed=seed)
    train, val = _hold_out(full, data_cfg, seed=seed)
    mean, std = _normalisation(train.images, data_cfg)
    return PreparedData(
        train=train,
        val=val,
        mean=mean,
        std=std,
        num_classes=len(full.classes),
        channels=int(full.images.shape[1]),
        image_size=int(full.images.shape[-1]),
    )


def place_dataset(dataset: ArrayDataset, runtime: Runtime) -> ArrayDataset:
    """Where a dataset should live for ``runtime``: unchanged on CPU; on CUDA on the GPU if
    it is small (indexing, augmentation and normalisation then never leave the GPU), else
    pinned host memory. A lazily read dataset is returned unchanged."""
    if runtime.device.type != "cuda" or not isinstance(dataset, ArrayDataset):
        return dataset
    size = dataset.images.numel() * dataset.images.element_size()
    if size <= GPU_RESIDENT_BYTES:
        return dataset.to(runtime.device)
    return ArrayDataset(dataset.images.pin_memory(), dataset.labels.pin_memory(), dataset.classes)


def load_test_split(
    data_cfg: DataConfig, *, seed: int, classes: Any = None
) -> ArrayDataset | LazyImageFolder:
    """The test split: only the final report reads it (SPEC section 4).

    With ``data.lazy`` a folder view (``test/`` or ImageNet's ``val/``). Pass the training
    ``classes`` so that the labels follow the training label order: an image tree's test split
    has its own class folders, and a class folder missing (or empty) in one split but not the
    other would otherwise shift every label after it. A test class that training lacks is
    refused; a training class with no test images is fine.

    Raises:
        DataError: The test split has a class the training classes lack.
    """
    if data_cfg.lazy:
        return _open_lazy(data_cfg, "test", seed=seed, classes=classes)
    test = _load_split(data_cfg, "test", seed=seed)
    return test if classes is None else _relabel(test, tuple(classes), data_cfg)


def _relabel(dataset: ArrayDataset, classes: tuple[str, ...], data_cfg: DataConfig) -> ArrayDataset:
    """``dataset`` with its labels mapped from its own class list onto ``classes``.

    Done after loading, not by the reader, so a cached decode of the split stays valid.
    """
    if dataset.classes == classes:
        return dataset
    where = f"the test split of {data_cfg.root or data_cfg.dataset}"
    check_classes(dataset.classes, classes, where=where)
    lookup = {name: index for index, name in enumerate(classes)}
    mapping = torch.tensor([lookup[name] for name in dataset.classes], dtype=torch.int64)
    return ArrayDataset(dataset.images, mapping[dataset.labels], classes)


def train_stream(
    data_cfg: DataConfig,
    data: PreparedData,
    runtime: Runtime,
    *,
    batch_size: int,
    seed: int,
) -> BatchStream:
    """The augmented, resumable, rank-sharded training stream of a stage.

    In memory: pad + random crop + flip (``data.crop_padding``, ``data.flip``); a dataset in
    pinned host memory on CUDA (:func:`place_dataset`) is gathered into pinned staging memory,
    copied asynchronously and augmented on the GPU. With ``data.lazy``: decode per batch with
    RandomResizedCrop + flip (+ colour jitter, lighting), ``data.prefetch_batches`` ahead, in a
    background thread or in ``data.worker_processes`` DataLoader workers, into pinned memory on
    CUDA. Either way a batch is a function of ``(seed, epoch, position)`` and of the global
    batch only.
    """
    cuda = runtime.device.type == "cuda"
    common = dict(
        batch_size=batch_size, seed=seed, rank=runtime.rank, world_size=runtime.world_size
    )
    if isinstance(data.train, LazyImageFolder):
        folder = data.train
        if data_cfg.worker_processes and data_cfg.num_workers is None:
            # One decoding thread per worker process unless asked: the processes are the
            # parallelism, and CPU-count threads in each would oversubscribe the cores.
            folder = copy.copy(folder)
            folder.num_workers = 1
        loader = functools.partial(
            folder.load_batch,
            size=data.image_size,
            train=True,
            scale=(data_cfg.crop_min_scale, 1.0),
            flip=data_cfg.flip,
            color_jitter=data_cfg.color_jitter,
            lighting=data_cfg.lighting,
        )
        return BatchStream(
            data.train,
            loader=loader,
            prefetch=True,
            prefetch_depth=data_cfg.prefetch_batches,
            worker_processes=data_cfg.worker_processes,
            pin_memory=cuda,
            **common,
        )
    augment = functools.partial(random_crop_flip, padding=data_cfg.crop_padding, flip=data_cfg.flip)
    return BatchStream(data.train, augment=augment, device=runtime.device, **common)


def eval_batches(
    dataset: ArrayDataset | LazyImageFolder,
    data: PreparedData,
    *,
    batch_size: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """In-order uint8 evaluation batches ``(images, labels)`` (lazy data: resize + centre crop)."""
    return iterate_batches(dataset, batch_size=batch_size, size=data.image_size)
