"""Pieces every stage recipe shares: data preparation, plugins and the configured space, the
progress-reporting protocol, opening a supernet checkpoint for scoring, and the run's fixed
facts (``space.json``, ``cost_table.json``). Run-directory files: :mod:`spos.rundir`; the
evaluator: :mod:`spos.scoring`; optimiser, training state and metrics: :mod:`spos.train`.

Stages stay short recipes (setup, run, save) because the plumbing lives here once.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from spos import data as spos_data
from spos.checkpoint import check_space, state_dict_sha256
from spos.config import DataConfig, RunConfig
from spos.cost import CostModel
from spos.dist import Runtime
from spos.errors import ConfigError, DataError
from spos.io import write_json
from spos.rundir import RunDir
from spos.scoring import ScoringSession
from spos.space import SearchSpace, create_space, seed_from
from spos.supernet import build_supernet

__all__ = [
    "Progress",
    "ProgressFactory",
    "null_progress",
    "open_for_scoring",
    "run_costs",
    "write_run_facts",
    "PreparedData",
    "prepare_data",
    "place_dataset",
    "load_test_split",
    "train_stream",
    "eval_batches",
    "build_space",
]

log = logging.getLogger(__name__)


class Progress(Protocol):
    """What a stage needs from a progress bar (the CLI passes a tqdm-backed one)."""

    def update(self, count: int = 1, **postfix: Any) -> None: ...

    def close(self) -> None: ...


ProgressFactory = Callable[..., Progress]


class _NullProgress:
    def update(self, count: int = 1, **postfix: Any) -> None:
        del count, postfix

    def close(self) -> None:
        return None


def null_progress(*, total: int, initial: int = 0, description: str = "") -> Progress:
    """A progress reporter that shows nothing (library use, non-main ranks)."""
    del total, initial, description
    return _NullProgress()


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

    train: spos_data.ArrayDataset | spos_data.LazyImageFolder
    val: spos_data.ArrayDataset | spos_data.LazyImageFolder
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int
    channels: int
    image_size: int

    def to_float(self, images: torch.Tensor, runtime: Runtime, *, channels_last: bool) -> torch.Tensor:
        """Normalise a uint8 batch and move it to the runtime's device."""
        return spos_data.to_float(
            images, self.mean, self.std, channels_last=channels_last, device=runtime.device
        )


def _load_split(cfg: DataConfig, split: str, *, seed: int) -> spos_data.ArrayDataset:
    kwargs: dict[str, Any] = {}
    if cfg.dataset == "synthetic":
        kwargs = {"size": cfg.synthetic_size, "image_size": cfg.synthetic_image_size, "seed": seed}
    dataset = spos_data.load_dataset(
        cfg.dataset, root=cfg.root, split=split, cache_dir=Path(cfg.cache_dir).expanduser(), **kwargs
    )
    limit = cfg.train_limit if split == "train" else cfg.test_limit
    if limit is not None and limit < len(dataset):
        generator = torch.Generator().manual_seed(seed * 1000 + (split == "test"))
        dataset = dataset.subset(torch.randperm(len(dataset), generator=generator)[:limit])
    if cfg.pad_to is not None:
        dataset = spos_data.ArrayDataset(
            spos_data.pad_to(dataset.images, cfg.pad_to), dataset.labels, dataset.classes
        )
    return dataset


#: Training images whose channel statistics normalise a lazily read dataset.
LAZY_STATS_IMAGES = 1024


def _limit(dataset: Any, limit: int | None, *, seed: int, split: str) -> Any:
    if limit is not None and limit < len(dataset):
        generator = torch.Generator().manual_seed(seed * 1000 + (split == "test"))
        dataset = dataset.subset(torch.randperm(len(dataset), generator=generator)[:limit])
    return dataset


def _open_lazy(
    cfg: DataConfig, split: str, *, seed: int, classes: Any = None
) -> spos_data.LazyImageFolder:
    if cfg.root is None:
        raise DataError(
            "dataset 'image_folder' needs data.root: a folder with train/<class>/<image> "
            "(and val/<class>/<image> or test/<class>/<image>) files, or a .zip of one"
        )
    folder = spos_data.LazyImageFolder(
        Path(cfg.root).expanduser(), split, classes=classes, num_workers=cfg.num_workers
    )
    limit = cfg.train_limit if split == "train" else cfg.test_limit
    return _limit(folder, limit, seed=seed, split=split)


def _prepare_lazy(config: RunConfig) -> PreparedData:
    """:func:`prepare_data` for ``data.lazy``: only file names and labels are read now."""
    cfg = config.data
    full = _open_lazy(cfg, "train", seed=config.seed)
    if cfg.val_size >= len(full):
        raise ConfigError(
            f"config field 'data.val_size' ({cfg.val_size}) must be smaller than the "
            f"training set ({len(full)} images)"
        )
    train_index, val_index = spos_data.holdout_split(
        full.labels, size=cfg.val_size, seed=config.seed
    )
    train = full.subset(train_index)
    generator = torch.Generator().manual_seed(seed_from(config.seed, "normalisation-images"))
    sample = torch.randperm(len(train), generator=generator)[:LAZY_STATS_IMAGES].sort().values
    images = train.load_batch(sample, size=cfg.input_size, train=False)
    mean, std = spos_data.channel_stats(images)
    return PreparedData(
        train=train,
        val=full.subset(val_index),
        mean=mean,
        std=std,
        num_classes=len(full.classes),
        channels=3,
        image_size=cfg.input_size,
    )


def prepare_data(config: RunConfig) -> PreparedData:
    """Load the training set, hold out the fixed validation split, compute channel stats."""
    if config.data.lazy:
        return _prepare_lazy(config)
    full = _load_split(config.data, "train", seed=config.seed)
    if config.data.val_size >= len(full):
        raise ConfigError(
            f"config field 'data.val_size' ({config.data.val_size}) must be smaller than the "
            f"training set ({len(full)} images)"
        )
    train_index, val_index = spos_data.holdout_split(
        full.labels, size=config.data.val_size, seed=config.seed
    )
    train, val = full.subset(train_index), full.subset(val_index)
    mean, std = spos_data.channel_stats(train.images)
    return PreparedData(
        train=train,
        val=val,
        mean=mean,
        std=std,
        num_classes=len(full.classes),
        channels=int(full.images.shape[1]),
        image_size=int(full.images.shape[-1]),
    )


#: In-memory datasets up to this size go onto the GPU whole (CIFAR-10: 150 MB); larger
#: ones stay in pinned host memory so the per-batch copy is asynchronous.
GPU_RESIDENT_BYTES = 4 * 2**30


def place_dataset(dataset: spos_data.ArrayDataset, runtime: Runtime) -> spos_data.ArrayDataset:
    """Where a dataset should live for ``runtime``: unchanged on CPU; on CUDA on the GPU if
    it is small (indexing, augmentation and normalisation then never leave the GPU), else
    pinned host memory. A lazily read dataset is returned unchanged."""
    if runtime.device.type != "cuda" or not isinstance(dataset, spos_data.ArrayDataset):
        return dataset
    size = dataset.images.numel() * dataset.images.element_size()
    if size <= GPU_RESIDENT_BYTES:
        return dataset.to(runtime.device)
    return spos_data.ArrayDataset(
        dataset.images.pin_memory(), dataset.labels.pin_memory(), dataset.classes
    )


def load_test_split(
    config: RunConfig, *, classes: Any = None
) -> spos_data.ArrayDataset | spos_data.LazyImageFolder:
    """The test split: only the final report reads it (SPEC section 4).

    With ``data.lazy`` a folder view (``test/`` or ImageNet's ``val/``); pass the training
    ``classes`` so that its labels follow the training label order.
    """
    if config.data.lazy:
        return _open_lazy(config.data, "test", seed=config.seed, classes=classes)
    return _load_split(config.data, "test", seed=config.seed)


def train_stream(
    config: RunConfig,
    data: PreparedData,
    runtime: Runtime,
    *,
    batch_size: int,
    seed: int,
) -> spos_data.BatchStream:
    """The augmented, resumable, rank-sharded training stream of a stage.

    In memory: pad + random crop + flip (``data.crop_padding``, ``data.flip``). With
    ``data.lazy``: decode per batch with RandomResizedCrop + flip (+ colour jitter, lighting),
    the next batch prefetched in the background. Either way a batch is a function of
    ``(seed, epoch, position)`` and of the global batch only.
    """
    cfg = config.data
    common = dict(
        batch_size=batch_size, seed=seed, rank=runtime.rank, world_size=runtime.world_size
    )
    if isinstance(data.train, spos_data.LazyImageFolder):
        loader = functools.partial(
            data.train.load_batch,
            size=data.image_size,
            train=True,
            scale=(cfg.crop_min_scale, 1.0),
            flip=cfg.flip,
            color_jitter=cfg.color_jitter,
            lighting=cfg.lighting,
        )
        return spos_data.BatchStream(data.train, loader=loader, prefetch=True, **common)
    augment = functools.partial(
        spos_data.random_crop_flip, padding=cfg.crop_padding, flip=cfg.flip
    )
    return spos_data.BatchStream(data.train, augment=augment, **common)


def eval_batches(
    dataset: spos_data.ArrayDataset | spos_data.LazyImageFolder,
    data: PreparedData,
    *,
    batch_size: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """In-order uint8 evaluation batches ``(images, labels)`` (lazy data: resize + centre crop)."""
    return spos_data.iterate_batches(dataset, batch_size=batch_size, size=data.image_size)


def load_plugins(paths: list[str]) -> None:
    """Import user plugin files or modules (they register spaces and ops)."""
    import importlib
    import importlib.util
    import sys

    for entry in paths:
        path = Path(entry).expanduser()
        if path.suffix == ".py":
            if not path.is_file():
                raise ConfigError(f"config field 'space.plugins' names {entry}, which does not exist")
            name = f"spos_plugin_{path.stem}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(entry)
            except ImportError as exc:
                raise ConfigError(f"config field 'space.plugins': cannot import {entry!r} ({exc})") from None


def build_space(config: RunConfig, data: PreparedData | None = None) -> SearchSpace:
    """The configured space, with input channels, classes and size taken from the data."""
    load_plugins(config.space.plugins)
    space = create_space(config.space.name)
    updates: dict[str, Any] = {}
    if data is not None:
        derived = {
            "in_channels": data.channels,
            "num_classes": data.num_classes,
            "input_size": data.image_size,
        }
        updates.update({k: v for k, v in derived.items() if k in space.layout})
    updates.update(config.space.layout)
    return create_space(config.space.name, **updates) if updates else space


def open_for_scoring(
    config: RunConfig, payload: dict[str, Any], checkpoint_path: Path, runtime: Runtime
) -> ScoringSession:
    """A trained supernet checkpoint made ready to score paths as search does.

    The space is checked against the checkpoint, the supernet is in eval mode on the device,
    ``fingerprint`` is the hash of its weights, and ``scorer`` uses the ``search`` section's
    recalibration/validation images and score metric.
    """
    data = prepare_data(config)
    space = check_space(payload, build_space(config, data), path=checkpoint_path)
    supernet = build_supernet(space)
    supernet.load_state_dict(payload["state"]["model"])
    fingerprint = state_dict_sha256(supernet.state_dict())
    supernet = supernet.to(runtime.device)
    if config.runtime.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    supernet.eval()
    return ScoringSession(space, supernet, fingerprint, config, data, runtime)


def write_run_facts(run: RunDir, space: SearchSpace, costs: CostModel, runtime: Runtime) -> None:
    """Write the run's fixed facts, ``space.json`` and ``cost_table.json`` (main rank only),
    unless the run directory already holds them unchanged. The first stage calls it; later
    stages read them with :func:`run_costs` instead of measuring the space again."""
    if not runtime.is_main:
        return
    for path, data in ((run.space_json, space.to_dict()), (run.cost_table, costs.to_dict())):
        if _read_json(path) != data:
            write_json(path, data)


def run_costs(run: RunDir, space: SearchSpace, runtime: Runtime) -> CostModel:
    """The cost table of ``space`` from the run's ``cost_table.json``.

    The table is used when the run's ``space.json`` describes ``space`` exactly (layout
    included). A run directory written before these files existed gets them now (measured and
    written); facts of another space (another config, ``--supernet`` from elsewhere) are left
    alone and ``space`` is measured instead.
    """
    stored_space, table = _read_json(run.space_json), _read_json(run.cost_table)
    if stored_space is None and table is None:
        costs = CostModel.from_space(space)
        write_run_facts(run, space, costs, runtime)
        return costs
    if stored_space != space.to_dict() or table is None:
        log.info("%s does not hold the cost table of this space; measuring it", run.path)
        return CostModel.from_space(space)
    costs = CostModel.from_dict(table)
    costs.check_space(space)
    return costs


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
