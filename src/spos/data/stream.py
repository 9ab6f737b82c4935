"""The held-out validation split, channel statistics, and resumable batch streams.

* :func:`holdout_split`: the fixed, seeded, class-stratified validation split held out from the
  *training* set that search fitness is measured on (SPEC section 4: the official code's
  shifting per-candidate subset is a known bug and is not copied);
* :class:`BatchStream`: the deterministic, resumable, rank-sharded stream of training batches
  that supernet training (SPEC section 3) and retraining draw from, from memory or through a
  loader that decodes each batch (prefetching the next in the background);
* :func:`iterate_batches`: in-order evaluation batches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from spos.data.dataset import ArrayDataset, make_generator
from spos.data.lazy import LazyImageFolder
from spos.errors import DataError

__all__ = ["BatchStream", "channel_stats", "holdout_split", "iterate_batches"]


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
        prefetch: Prepare the next batch in a background thread while the caller trains on
            this one (for a ``loader`` that decodes files). Batches stay a function of
            ``(seed, epoch, position)``, so results and resuming are unchanged.
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
    ) -> None:
        if loader is not None and augment is not None:
            raise ValueError("BatchStream takes augment (in-memory data) or loader, not both")
        if loader is None and not isinstance(dataset, ArrayDataset):
            raise ValueError(f"a {type(dataset).__name__} needs a loader to read its images")
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
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.loader = loader
        self.prefetch = prefetch
        self._epoch = 0
        self._position = 0
        self._permutations: dict[int, torch.Tensor] = {}
        self._permutation_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pending: tuple[tuple[int, int], Any] | None = None

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
        labels = self.dataset.labels[share]
        offset = sum(len(s) for s in shares[: self.rank])
        if self.loader is not None:
            generator = make_generator(self.seed, "augment", epoch, position)
            images = self.loader(
                share.cpu(), generator=generator, start=offset, total=len(global_batch)
            )
            return images, labels
        images = self.dataset.images[share]
        if self.augment is not None:
            generator = make_generator(self.seed, "augment", epoch, position)
            images = self.augment(
                images, generator=generator, start=offset, total=len(global_batch)
            )
        return images, labels

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = (self._epoch, self._position)
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key:
            images, labels = pending[1].result()
        else:
            images, labels = self._batch(*key)
        self._position += 1
        if self._position == self.steps_per_epoch:
            self._epoch, self._position = self._epoch + 1, 0
        if self.prefetch:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="spos-prefetch")
            following = (self._epoch, self._position)
            self._pending = (following, self._executor.submit(self._batch, *following))
        return images, labels

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
