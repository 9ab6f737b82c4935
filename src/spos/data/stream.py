"""The held-out validation split, channel statistics, and resumable batch streams.

* :func:`holdout_split`: the fixed, seeded, class-stratified validation split held out from the
  *training* set that search fitness is measured on (SPEC section 4: the official code's
  shifting per-candidate subset is a known bug and is not copied);
* :class:`BatchStream`: the deterministic, resumable, rank-sharded stream of training batches
  that supernet training (SPEC section 3) and retraining draw from, from memory or through a
  loader that decodes each batch (prepared ahead in a background thread or in DataLoader
  worker processes, into pinned memory for a GPU);
* :func:`iterate_batches`: in-order evaluation batches.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.data

from spos.data.dataset import ArrayDataset, make_generator
from spos.data.lazy import LazyImageFolder
from spos.errors import DataError, SposError

__all__ = ["BatchStream", "channel_stats", "gather_rows", "holdout_split", "iterate_batches"]


def holdout_split(
    labels: torch.Tensor | Sequence[int], *, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, class-stratified validation split held out from the training set.

    Each class gives ``size * class_count / n`` samples, rounded by largest remainder so the
    total is exactly ``size`` (a balanced set with ``size = 50 * classes`` gives 50 per class,
    the paper's ImageNet setting). The same ``seed`` always gives the same split.

    Args:
        labels: Training labels, shape ``(n,)``.
        size: Number of validation samples, ``0 <= size <= n - 1``.
        seed: Split seed.

    Returns:
        ``(train_indices, val_indices)`` as int64 tensors: train ascending, validation in a
        fixed shuffled order. Together they partition ``range(n)``.
    """
    labels = torch.as_tensor(labels).to("cpu", torch.int64).flatten()
    n = len(labels)
    if not 0 <= size <= n - 1:
        raise DataError(
            f"held-out validation size {size} must be between 0 and {n - 1} "
            f"(the training set has {n} images); lower data.val_size"
        )
    classes, counts = torch.unique(labels, return_counts=True)
    exact = [size * int(c) for c in counts]
    quota = [e // n for e in exact]
    by_remainder = sorted(range(len(quota)), key=lambda i: (-(exact[i] % n), i))
    for i in by_remainder[: size - sum(quota)]:
        quota[i] += 1
    generator = make_generator(seed, "holdout-split")
    grouped = torch.argsort(labels, stable=True).split(counts.tolist())
    train_parts, val_parts = [], []
    for members, take in zip(grouped, quota, strict=True):
        shuffled = members[torch.randperm(len(members), generator=generator)]
        val_parts.append(shuffled[:take])
        train_parts.append(shuffled[take:])
    val = torch.cat(val_parts)
    val = val[torch.randperm(len(val), generator=generator)]
    train = torch.cat(train_parts).sort().values
    return train, val


def channel_stats(
    images: torch.Tensor, *, chunk_size: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of uint8 images on the [0, 1] scale.

    Sums are exact integers, so the result does not depend on chunking. Compute it on the
    training part only.

    Returns:
        ``(mean, std)``, float32 tensors of shape ``(C,)``.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
        raise DataError(
            f"channel_stats needs non-empty uint8 (N, C, H, W) images, got {tuple(images.shape)}"
        )
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.int64)
    squares = torch.zeros(channels, dtype=torch.int64)
    for chunk in images.split(chunk_size):
        wide = chunk.to(torch.int64)
        total += wide.sum(dim=(0, 2, 3)).cpu()
        squares += (wide * wide).sum(dim=(0, 2, 3)).cpu()
    count = images.numel() // channels
    mean = total.double() / count
    var = (squares.double() / count - mean * mean).clamp_(min=0)
    return (mean / 255).float(), (var.sqrt() / 255).float()


def gather_rows(source: torch.Tensor, index: torch.Tensor, *, pin: bool = False) -> torch.Tensor:
    """``source[index]`` along the first dimension, into page-locked memory if ``pin``.

    Plain indexing of a pinned tensor allocates ordinary pageable memory, so a later
    ``to(device, non_blocking=True)`` would be a synchronous copy; this gathers straight into a
    staging tensor from torch's caching host allocator instead. That allocator records the
    copy's CUDA event when the staging tensor is freed and reuses the block only after it, so
    each batch has its own staging memory and a batch the caller keeps is never overwritten.
    """
    index = index.to(source.device)
    out = torch.empty((len(index), *source.shape[1:]), dtype=source.dtype, pin_memory=pin)
    return torch.index_select(source, 0, index, out=out)


@dataclass
class _WorkerFailure:
    """A user-fixable error raised in a worker process, re-raised as is by the stream."""

    error: SposError


class _PositionBatches(torch.utils.data.Dataset):
    """What a DataLoader worker runs: ``(epoch, position) -> (key, images, labels)``."""

    def __init__(self, stream: BatchStream) -> None:
        self.stream = stream

    def __getitem__(self, key: tuple[int, int]) -> Any:
        try:
            images, labels = self.stream._batch(*key)
        except SposError as error:
            # The DataLoader would re-raise it with the worker's traceback folded into the
            # message; the stream raises the exception itself, as the in-process path does.
            return _WorkerFailure(error)
        return key, images, labels


class _FromPosition(torch.utils.data.Sampler):
    """The stream's batch keys ``(epoch, position)``, endlessly, from ``start`` on."""

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.start = (0, 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, position = self.start
        while True:
            yield epoch, position
            epoch, position = _following(epoch, position, self.steps_per_epoch)


def _following(epoch: int, position: int, steps_per_epoch: int) -> tuple[int, int]:
    position += 1
    return (epoch + 1, 0) if position == steps_per_epoch else (epoch, position)


class BatchStream:
    """A deterministic, resumable, infinite stream of training batches.

    Epoch ``e`` visits the data in ``randperm`` order from a generator seeded by
    ``(seed, e)``; batch ``p`` of the epoch is the global slice ``[p * B, (p + 1) * B)``, of
    which rank ``r`` takes the ``r``-th contiguous ``B / world_size`` share. Augmentation gets a
    generator seeded by ``(seed, epoch, position)``, the same on every rank, and the share's
    place in the global batch, so a stream restored with :meth:`load_state_dict` continues
    with exactly the batches an uninterrupted one would have produced, and ``world_size``
    ranks together see exactly the augmented images one process with the same global batch
    sees (the data side of "checkpoints resume under another world size").

    Because a batch is a pure function of ``(epoch, position)``, a loader's batches can be
    prepared ahead anywhere: in one background thread (``prefetch``) or in DataLoader worker
    processes (``worker_processes``), off the training process's GIL. Either way the batches,
    and resuming, are the same as without.

    Args:
        dataset: The training data.
        batch_size: Global batch size (all ranks together); must divide by ``world_size``.
        seed: Stream seed.
        augment: ``augment(images, generator=..., start=..., total=...) -> images`` applied
            to each rank's uint8 share (rows ``[start, start + len(images))`` of a global
            batch of ``total``), or ``None``. It must draw its random parameters for all
            ``total`` images and use its rows (as :func:`random_crop_flip` does), so the
            result does not depend on the number of ranks.
        drop_last: Skip the incomplete last batch of each epoch (the default; keeps every
            rank's batch the same size under DDP).
        rank: This process's rank.
        world_size: Number of ranks.
        loader: For a dataset not held in memory (:class:`LazyImageFolder`):
            ``loader(indices, generator=..., start=..., total=...) -> uint8 images`` reads and
            augments a rank's share of dataset indices (e.g. ``load_batch`` with its transform
            bound), under the same contract as ``augment``, which must then be ``None``.
        prefetch: Prepare the next ``prefetch_depth`` batches in a background thread while the
            caller trains on this one (for a ``loader`` that decodes files).
        prefetch_depth: Batches prepared ahead: queued on the prefetch thread, or kept ready
            by each worker process (the DataLoader's ``prefetch_factor``).
        worker_processes: Run the ``loader`` in this many persistent ``DataLoader`` worker
            processes (0: in this process). Needs a picklable ``loader`` (a
            :class:`LazyImageFolder` reopens its zip in each worker).
        pin_memory: Return the loader's batches in page-locked memory, so the caller's
            ``to(device, non_blocking=True)`` really is asynchronous (no-op without CUDA).
        device: For in-memory data held on the host (a large dataset that
            :func:`~spos.data.prepare.place_dataset` pinned) while training on a GPU: each
            batch is gathered into pinned staging memory (:func:`gather_rows`), copied to
            ``device`` asynchronously and augmented there. ``None`` or a CPU device: batches
            stay where the data is.
        multiprocessing_context: Start method of the worker processes (default: the
            platform's).
    """

    def __init__(
        self,
        dataset: ArrayDataset | LazyImageFolder,
        *,
        batch_size: int,
        seed: int,
        augment: Callable[..., torch.Tensor] | None = None,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        loader: Callable[..., torch.Tensor] | None = None,
        prefetch: bool = False,
        prefetch_depth: int = 2,
        worker_processes: int = 0,
        pin_memory: bool = False,
        device: torch.device | str | None = None,
        multiprocessing_context: str | None = None,
    ) -> None:
        if loader is not None and augment is not None:
            raise ValueError("BatchStream takes augment (in-memory data) or loader, not both")
        if loader is None and not isinstance(dataset, ArrayDataset):
            raise ValueError(f"a {type(dataset).__name__} needs a loader to read its images")
        if worker_processes and loader is None:
            raise ValueError("worker processes run a loader; in-memory data is indexed in place")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise DataError(
                f"bad batch stream setup: batch_size={batch_size}, rank={rank}, world_size={world_size}"
            )
        if batch_size % world_size:
            raise DataError(
                f"batch size {batch_size} does not divide by the {world_size} ranks; "
                f"use a multiple of {world_size}"
            )
        if len(dataset) == 0 or (drop_last and len(dataset) < batch_size):
            raise DataError(
                f"the training set has {len(dataset)} images, fewer than one batch of "
                f"{batch_size}; lower the batch size"
            )
        if prefetch_depth < 1 or worker_processes < 0:
            raise DataError(
                f"bad batch stream setup: prefetch_depth={prefetch_depth} (>= 1), "
                f"worker_processes={worker_processes} (>= 0)"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.loader = loader
        self.prefetch = prefetch
        self.prefetch_depth = prefetch_depth
        self.worker_processes = worker_processes
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.device = None if device is None else torch.device(device)
        self.multiprocessing_context = multiprocessing_context
        self._epoch = 0
        self._position = 0
        self._reset_runtime_state()

    def _reset_runtime_state(self) -> None:
        # Caches, threads and worker processes: never pickled, never shared with a copy.
        self._permutations: dict[int, torch.Tensor] = {}
        self._permutation_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[tuple[int, int], Future]] = deque()
        self._workers: torch.utils.data.DataLoader | None = None
        self._worker_batches: Iterator[Any] | None = None
        self._worker_key: tuple[int, int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = {
            key: value
            for key, value in self.__dict__.items()
            if key
            not in {"_permutations", "_permutation_lock", "_executor", "_pending", "_workers",
                    "_worker_batches", "_worker_key"}
        }  # fmt: skip
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime_state()

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        """Index of the next batch within the current epoch."""
        return self._position

    def _epoch_permutation(self, epoch: int) -> torch.Tensor:
        # Locked: the prefetch thread may ask for the next epoch's order meanwhile.
        with self._permutation_lock:
            if epoch not in self._permutations:
                generator = make_generator(self.seed, "batch-order", epoch)
                permutation = torch.randperm(len(self.dataset), generator=generator)
                self._permutations = {
                    e: p for e, p in self._permutations.items() if e >= epoch - 1
                }
                self._permutations[epoch] = permutation.to(self.dataset.labels.device)
            return self._permutations[epoch]

    def _batch(self, epoch: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of global batch ``position`` of ``epoch`` (a pure function)."""
        start = position * self.batch_size
        global_batch = self._epoch_permutation(epoch)[start : start + self.batch_size]
        shares = global_batch.tensor_split(self.world_size)
        share = shares[self.rank]
        offset = sum(len(s) for s in shares[: self.rank])
        if self.loader is not None:
            generator = make_generator(self.seed, "augment", epoch, position)
            images = self.loader(
                share.cpu(), generator=generator, start=offset, total=len(global_batch)
            )
            return images, self.dataset.labels[share]
        images, labels = self.dataset.images, self.dataset.labels
        if self.device is not None and self.device.type != "cpu" and images.device.type == "cpu":
            # Host data for a GPU: pinned staging, asynchronous copy, augmentation on the GPU.
            share = share.cpu()
            images = gather_rows(images, share, pin=True).to(self.device, non_blocking=True)
            labels = gather_rows(labels, share, pin=True).to(self.device, non_blocking=True)
        else:
            images, labels = images[share], labels[share]
        if self.augment is not None:
            generator = make_generator(self.seed, "augment", epoch, position)
            images = self.augment(
                images, generator=generator, start=offset, total=len(global_batch)
            )
        return images, labels

    def _prepared(self, epoch: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self._batch(epoch, position)
        if self.pin_memory and images.device.type == "cpu":
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = (self._epoch, self._position)
        if self.worker_processes:
            images, labels = self._from_workers(key)
        else:
            images, labels = self._in_process(key)
        self._epoch, self._position = _following(*key, self.steps_per_epoch)
        if self.prefetch and not self.worker_processes:
            self._queue_ahead()
        return images, labels

    def _in_process(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pending and self._pending[0][0] != key:
            self._drop_pending()
        if self._pending:
            return self._pending.popleft()[1].result()
        return self._prepared(*key)

    def _queue_ahead(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="spos-prefetch")
        following = self._pending[-1][0] if self._pending else None
        while len(self._pending) < self.prefetch_depth:
            following = (
                (self._epoch, self._position)
                if following is None
                else _following(*following, self.steps_per_epoch)
            )
            self._pending.append((following, self._executor.submit(self._prepared, *following)))

    def _drop_pending(self) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()

    def _from_workers(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._workers is None:
            self._workers = torch.utils.data.DataLoader(
                # A detached copy (no threads, caches or workers; what pickling sends to a
                # spawned worker), so that the stream and its DataLoader form no cycle and
                # the workers stop as soon as the stream is dropped.
                _PositionBatches(copy.copy(self)),
                batch_size=None,
                sampler=_FromPosition(self.steps_per_epoch),
                num_workers=self.worker_processes,
                prefetch_factor=self.prefetch_depth,
                pin_memory=self.pin_memory,
                persistent_workers=True,
                multiprocessing_context=self.multiprocessing_context,
            )
        if self._worker_batches is None or self._worker_key != key:
            # (Re)start the key sequence here; persistent workers finish what they had queued.
            self._workers.sampler.start = key
            self._worker_batches = iter(self._workers)
        self._worker_key = None  # until this batch has arrived intact
        item = next(self._worker_batches)
        if isinstance(item, _WorkerFailure):
            raise item.error
        got, images, labels = item
        if tuple(got) != key:
            raise RuntimeError(f"worker batch {tuple(got)} arrived where {key} was expected")
        self._worker_key = _following(*key, self.steps_per_epoch)
        return images, labels

    def close(self) -> None:
        """Stop the prefetch thread and the worker processes (a later batch restarts them)."""
        self._drop_pending()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        workers, self._workers, self._worker_batches, self._worker_key = (
            self._workers, None, None, None
        )
        if workers is not None and workers._iterator is not None:
            workers._iterator._shutdown_workers()  # joins them now, not at garbage collection
            workers._iterator = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown: nothing left to release)
            pass

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def state_dict(self) -> dict[str, int]:
        """Where the stream is: ``{"epoch": ..., "position": ...}`` of the next batch."""
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a stream over the same data and seed."""
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"batch stream state {dict(state)!r} needs integer 'epoch' and 'position'"
            ) from None
        if epoch < 0 or not 0 <= position < self.steps_per_epoch:
            raise DataError(
                f"batch stream state epoch={epoch}, position={position} does not fit this stream "
                f"({self.steps_per_epoch} batches per epoch); was the dataset or batch size changed?"
            )
        self._epoch, self._position = epoch, position


def iterate_batches(
    dataset: ArrayDataset | LazyImageFolder, *, batch_size: int, size: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """In-order evaluation batches ``(images, labels)`` without augmentation, last one partial.

    A :class:`LazyImageFolder` is decoded batch by batch with its evaluation transform at
    ``size`` (required for it), the next batch decoding in the background meanwhile.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be positive, got {batch_size}")
    if isinstance(dataset, LazyImageFolder):
        if size is None:
            raise ValueError("iterate_batches over a LazyImageFolder needs the image size")
        yield from _iterate_lazy(dataset, batch_size=batch_size, size=size)
        return
    for start in range(0, len(dataset), batch_size):
        yield dataset.images[start : start + batch_size], dataset.labels[start : start + batch_size]


def _iterate_lazy(
    dataset: LazyImageFolder, *, batch_size: int, size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    starts = list(range(0, len(dataset), batch_size))

    def load(start: int) -> torch.Tensor:
        stop = min(start + batch_size, len(dataset))
        return dataset.load_batch(range(start, stop), size=size, train=False)

    with ThreadPoolExecutor(1, thread_name_prefix="spos-prefetch") as executor:
        pending = executor.submit(load, starts[0]) if starts else None
        for i, start in enumerate(starts):
            images = pending.result()
            pending = executor.submit(load, starts[i + 1]) if i + 1 < len(starts) else None
            yield images, dataset.labels[start : start + batch_size]
