"""Image trees too large for memory (ImageNet), listed once and decoded per batch.

:class:`LazyImageFolder` applies the official SPOS / ShuffleNetV2 ImageNet augmentation while
decoding: RandomResizedCrop + flip (+ colour jitter, PCA lighting) for training, resize +
centre crop for evaluation.
"""

from __future__ import annotations

import copy
import io
import os
import threading
import weakref
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from spos.data.augment import add_lighting, jitter_colors, random_resized_crop_box
from spos.data.readers import default_workers, index_images
from spos.errors import ConfigError, DataError

__all__ = ["DECODE_BACKENDS", "LazyImageFolder", "check_decode_backend"]

#: Where training JPEGs are decoded: ``cpu`` (Pillow / libjpeg-turbo, in threads or worker
#: processes) or ``nvjpeg`` (batched on the GPU through ``torchvision.io.decode_jpeg``).
DECODE_BACKENDS = ("cpu", "nvjpeg")

# Every folder in this process, so that a forked child drops the zip handle and lock it
# inherited (a handle shared across processes shares its file offset; a lock held by another
# thread at fork time would never be released in the child).
_LIVE: weakref.WeakSet[LazyImageFolder] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for folder in list(_LIVE):
        folder._archive, folder._archive_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def check_decode_backend(name: str, *, field: str = "data.decode_backend") -> None:
    """Refuse a decode backend this installation cannot run, naming the fix.

    Raises:
        ConfigError: ``name`` is unknown, or ``nvjpeg`` without torchvision or without CUDA.
    """
    if name not in DECODE_BACKENDS:
        raise ConfigError(f"config field {field!r} must be one of {list(DECODE_BACKENDS)}, got {name!r}")
    if name == "cpu":
        return
    try:
        import torchvision.io  # noqa: F401  (optional: only this backend needs it)
    except ImportError:
        raise ConfigError(
            f"config field {field!r} is 'nvjpeg', which decodes JPEGs on the GPU through "
            "torchvision.io.decode_jpeg, but torchvision is not installed; install a torchvision "
            f"built for this torch ({torch.__version__}) with CUDA, or set {field}=cpu"
        ) from None
    if not torch.cuda.is_available():
        raise ConfigError(
            f"config field {field!r} is 'nvjpeg', which decodes on the GPU, but CUDA is not "
            f"available (torch {torch.__version__}); run on a CUDA machine with CUDA builds of "
            f"torch and torchvision, or set {field}=cpu"
        )


def _draft(image: Image.Image, width: int, height: int) -> float:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the result stays at least
    ``width x height`` (a DCT-domain downscale: large photos and small crops decode several
    times faster; ImageNet's typical 500x375 rarely qualifies for 224 crops); returns the
    scale (1.0: full size)."""
    if image.format != "JPEG" or width < 1 or height < 1:
        return 1.0
    original = image.width
    result = image.draft(None, (width, height))
    return 1.0 if result is None else original / result[1][2]


class LazyImageFolder:
    """An image tree too large for memory (ImageNet): files listed once, decoded per batch.

    Training batches get RandomResizedCrop (``scale``, ratio 3/4-4/3, bilinear) + horizontal
    flip, optionally colour jitter and PCA lighting (the official SPOS / ShuffleNetV2 ImageNet
    recipe: RandomResizedCrop + ColorJitter(0.4) + flip); evaluation batches get
    resize-shorter-side-to ``size / 0.875`` (256 for 224) + centre crop. Decoding, crop,
    resize and the colour ops run per image in a thread pool (Pillow and torch release the
    GIL; JPEGs are decoded at a reduced DCT scale when the crop allows); the flip runs batched
    on the decoded ``uint8`` tensor. Random parameters are drawn up front from the caller's
    generator for the whole global batch, so the result depends neither on thread
    scheduling nor on how the batch is split across ranks.

    Attributes:
        root: The directory or zip.
        names: Image paths relative to ``root``, sorted.
        labels: ``int64`` labels, one per name.
        classes: Class names.
        decode_backend: ``cpu`` or ``nvjpeg`` (training batches decoded on the GPU; see
            :data:`DECODE_BACKENDS`).

    The folder pickles without its open zip handle (a DataLoader worker process reopens the
    zip on its first read), and a forked child drops the handle it inherited.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        classes: Sequence[str] | None = None,
        num_workers: int | None = None,
        decode_backend: str = "cpu",
    ) -> None:
        check_decode_backend(decode_backend)
        self.root = Path(root)
        names, labels, self.classes = index_images(self.root, split, classes)
        self.names = names
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.num_workers = num_workers or default_workers()
        self.decode_backend = decode_backend
        self._is_archive = not self.root.is_dir()
        self._archive: zipfile.ZipFile | None = None
        self._archive_lock = threading.Lock()
        _LIVE.add(self)

    def __getstate__(self) -> dict:
        # A worker process reopens the zip itself, on its first read.
        state = self.__dict__.copy()
        state["_archive"] = state["_archive_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._archive_lock = threading.Lock()
        _LIVE.add(self)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> LazyImageFolder:
        """The images at ``indices`` (in that order) as a new folder view (no decoding)."""
        index = torch.as_tensor(indices, dtype=torch.int64).flatten()
        view = copy.copy(self)
        view.names = [self.names[i] for i in index.tolist()]
        view.labels = self.labels[index]
        view._archive, view._archive_lock = None, threading.Lock()
        _LIVE.add(view)
        return view

    def close(self) -> None:
        """Close the zip archive, if one is open."""
        with self._archive_lock:
            if self._archive is not None:
                self._archive.close()
                self._archive = None

    def _read_archive(self, index: int) -> bytes:
        # One ZipFile handle is not shared by concurrent readers: reads are serialised here
        # (they are cheap next to decoding, which runs in the pool).
        with self._archive_lock:
            if self._archive is None:
                self._archive = zipfile.ZipFile(self.root)
            return self._archive.read(self.names[index])

    def _read_bytes(self, index: int) -> bytes:
        if self._is_archive:
            return self._read_archive(index)
        try:
            return (self.root / self.names[index]).read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read image {self.root}/{self.names[index]} ({exc})") from None

    def load_batch(
        self,
        indices: torch.Tensor | Sequence[int],
        *,
        size: int,
        train: bool,
        generator: torch.Generator | None = None,
        start: int = 0,
        total: int | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        flip: bool = True,
        color_jitter: float = 0.0,
        lighting: float = 0.0,
    ) -> torch.Tensor:
        """Decode and transform the images at ``indices``.

        Args:
            indices: Which images.
            size: Output side length.
            train: Random crop + flip (needs ``generator``) instead of resize + centre crop.
            generator: Source of every random draw (training only).
            start: Row of ``indices[0]`` within the global batch this batch is a share of.
            total: Size of that global batch (default ``start + len(indices)``); parameters
                are drawn for all ``total`` images and rows ``[start, start + len)`` are used,
                as in :func:`random_crop_flip`.
            scale: Area fraction range of the random-resized crop.
            flip: Flip horizontally with probability 1/2.
            color_jitter: Brightness, contrast and saturation factors uniform in
                ``[1 - color_jitter, 1 + color_jitter]`` (0 disables; official: 0.4).
            lighting: Standard deviation of the PCA lighting noise (0 disables; AlexNet: 0.1).

        Returns:
            ``uint8`` tensor of shape ``(len(indices), 3, size, size)``; on the GPU for a
            training batch with ``decode_backend="nvjpeg"`` (same crop boxes, flips and colour
            draws; the resize is torch's antialiased bilinear, not Pillow's, so pixels differ
            slightly from the CPU backend).
        """
        index_list = [int(i) for i in torch.as_tensor(indices, dtype=torch.int64).flatten()]
        count = len(index_list)
        total = start + count if total is None else total
        if not 0 <= start <= total - count:
            raise DataError(f"share [{start}, {start + count}) lies outside a batch of {total}")
        if train:
            if generator is None:
                raise ValueError("load_batch(train=True) needs a generator for its random crops")
            rows = slice(start, start + count)
            uniforms = torch.rand(total, 10, 4, generator=generator, dtype=torch.float64)
            uniforms = uniforms[rows].tolist()
            flips = torch.rand(total, generator=generator)[rows] < 0.5
            if not flip:
                flips = torch.zeros_like(flips)
            factors = alphas = None
            if color_jitter:
                draws = torch.rand(total, 3, generator=generator)[rows]
                factors = (1 + color_jitter * (2 * draws - 1)).clamp_(min=0)
            if lighting:
                alphas = torch.randn(total, 3, generator=generator)[rows] * lighting
        if train and self.decode_backend == "nvjpeg":
            from spos.data.gpu_decode import decode_train_crops

            sources = [self._read_bytes(i) for i in index_list]
            return decode_train_crops(
                sources,
                [f"{self.root}/{self.names[i]}" for i in index_list],
                uniforms,
                size=size,
                scale=scale,
                flips=flips,
                factors=factors,
                alphas=alphas,
            )
        sources = [self._read_archive(i) for i in index_list] if self._is_archive else None
        out = torch.empty((count, 3, size, size), dtype=torch.uint8)
        resize_to = int(round(size / 0.875))

        def work(slot: int) -> None:
            index = index_list[slot]
            where = f"{self.root}/{self.names[index]}"
            source = sources[slot] if sources is not None else self.root / self.names[index]
            try:
                image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
                width, height = image.size
                if train:
                    left, top, crop_w, crop_h = random_resized_crop_box(
                        width, height, uniforms[slot], scale=scale
                    )
                    reduce = _draft(image, -(-width * size // crop_w), -(-height * size // crop_h))
                    image = image.convert("RGB")
                    box = (left, top, left + crop_w, top + crop_h)
                    image = image.resize(
                        (size, size), Image.Resampling.BILINEAR, box=tuple(v / reduce for v in box)
                    )
                else:
                    short = min(width, height)
                    new_w = resize_to if width == short else int(resize_to * width / short)
                    new_h = resize_to if height == short else int(resize_to * height / short)
                    _draft(image, new_w, new_h)
                    image = image.convert("RGB").resize((new_w, new_h), Image.Resampling.BILINEAR)
                    top = int(round((new_h - size) / 2.0))
                    left = int(round((new_w - size) / 2.0))
                    image = image.crop((left, top, left + size, top + size))
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise DataError(
                    f"cannot decode image {where} ({exc}); replace or delete the file"
                ) from None
            pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
            # Colour ops per image, in this thread: a cache-sized image is ~6x faster than
            # the same ops over the whole batch (measured on CPU), and threads run in parallel.
            if train and factors is not None:
                pixels = jitter_colors(pixels, factors[slot : slot + 1])
            if train and alphas is not None:
                pixels = add_lighting(pixels, alphas[slot : slot + 1])
            out[slot] = pixels[0]

        with ThreadPoolExecutor(min(self.num_workers, max(1, count))) as pool:
            for _ in pool.map(work, range(count)):
                pass
        if train:
            out = torch.where(flips[:, None, None, None], out.flip(-1), out)
        return out
