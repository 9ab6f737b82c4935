"""The in-memory dataset and the seeded generators every random draw of the data comes from.

Every random draw of :mod:`spos.data` takes a ``torch.Generator`` made by
:func:`make_generator` from a seed and a purpose, so the same seed gives the same data order,
split and augmentation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spos.errors import DataError

__all__ = ["ArrayDataset", "make_generator"]


def make_generator(seed: int, purpose: str, *parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, purpose, *parts)``.

    Hashing the purpose in keeps streams that share a config seed (data order, augmentation,
    the held-out split) independent; ``parts`` (epoch, batch position, rank) make a generator
    per batch, so a resumed run draws exactly what an uninterrupted one would.
    """
    text = ":".join([str(int(seed)), purpose, *(str(int(p)) for p in parts)])
    digest = hashlib.sha256(text.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass
class ArrayDataset:
    """A whole dataset in memory as uint8 images and int64 labels.

    Attributes:
        images: ``uint8`` tensor of shape ``(N, C, H, W)``, contiguous.
        labels: ``int64`` tensor of shape ``(N,)`` with values in ``[0, len(classes))``.
        classes: Class names; label ``i`` is ``classes[i]``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        self.classes = tuple(str(name) for name in self.classes)
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"dataset images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} "
                f"of shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DataError(
                f"dataset labels must be an int64 (N,) tensor, got {self.labels.dtype} "
                f"of shape {tuple(self.labels.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        if not self.images.is_contiguous():
            self.images = self.images.contiguous()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ArrayDataset:
        """The samples at ``indices`` (in that order) as a new dataset with copied storage."""
        index = torch.as_tensor(indices, dtype=torch.int64, device=self.labels.device)
        return ArrayDataset(self.images[index].contiguous(), self.labels[index], self.classes)

    def to(self, device: torch.device | str) -> ArrayDataset:
        """The same dataset on ``device`` (keeping a small dataset on the GPU saves copies)."""
        return ArrayDataset(self.images.to(device), self.labels.to(device), self.classes)
