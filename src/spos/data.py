"""Datasets, the held-out validation split, tensor augmentation and resumable batch streams.

This module owns everything between files on disk and uint8 batches on a device:

* readers for Fashion-MNIST (IDX), CIFAR-10/100 (the official python pickles, unpickled with a
  restricted unpickler) and image trees or zips (``<split>/<class>/<file>.jpg``), all returning
  an in-memory :class:`ArrayDataset` that :func:`load_dataset` decodes once and caches as
  ``.npy``; :class:`LazyImageFolder` decodes ImageNet-sized trees on demand instead;
* the fixed, seeded, class-stratified validation split held out from the *training* set that
  search fitness is measured on (SPEC section 4: the official code's shifting per-candidate
  subset is a known bug and is not copied);
* batched uint8 augmentation (pad + random crop + flip, no per-sample Python loop) and
  normalisation, so data loading stays a small fraction of a training step (SPEC section 8);
  for streamed trees (``data.lazy``), the official ImageNet augmentation applied while
  decoding: RandomResizedCrop + flip + colour jitter / PCA lighting;
* :class:`BatchStream`, the deterministic, resumable, rank-sharded stream of training batches
  that supernet training (SPEC section 3) and retraining draw from, from memory or through a
  loader that decodes each batch (prefetching the next in the background).

Every random draw takes a ``torch.Generator`` made by :func:`make_generator` from a seed and a
purpose, so the same seed gives the same data order, split and augmentation.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import importlib
import io
import json
import logging
import math
import os
import pickle
import struct
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from spos.errors import ConfigError, DataError
from spos.io import atomic_write_bytes

__all__ = [
    "ArrayDataset",
    "BatchStream",
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "LazyImageFolder",
    "add_lighting",
    "apply_crop_flip",
    "cached_dataset",
    "channel_stats",
    "crop_flip_params",
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

logger = logging.getLogger(__name__)

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package installs the four IDX files."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
DATASET_NAMES = ("fashion_mnist", "cifar10", "cifar100", "image_folder", "synthetic")

_SPLITS = ("train", "test")
_SPLIT_FOLDERS = frozenset({"train", "test", "val", "valid", "validation"})
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CACHE_FORMAT_VERSION = 1


def make_generator(seed: int, purpose: str, *parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, purpose, *parts)``.

    Hashing the purpose in keeps streams that share a config seed (data order, augmentation,
    the held-out split) independent; ``parts`` (epoch, batch position, rank) make a generator
    per batch, so a resumed run draws exactly what an uninterrupted one would.
    """
    text = ":".join([str(int(seed)), purpose, *(str(int(p)) for p in parts)])
    digest = hashlib.sha256(text.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {list(_SPLITS)}")


# --------------------------------------------------------------------------------------------
# The in-memory dataset
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# --------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzip-compressed or not.

    Compression is detected from the gzip magic bytes, not the file name.

    Raises:
        DataError: If the file is missing, truncated or not an IDX file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable gzip file ({exc}); download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); download it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (incomplete IDX header); download it again")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header {shape} says {expected}; "
            "the file is truncated or corrupted, download it again"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _fashion_mnist_files(root: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    _check_split(split)
    root = Path(root)
    stem = "train" if split == "train" else "t10k"
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        name = f"{stem}-{kind}"
        for candidate in (root / f"{name}.gz", root / name):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            raise DataError(
                f"Fashion-MNIST file {name}[.gz] not found in {root}; install it with "
                "`apt-get install dataset-fashion-mnist` (puts it in "
                f"{FASHION_MNIST_ROOT}) or pass data.root=<folder with the IDX files>"
            )
    return found[0], found[1]


def read_fashion_mnist(root: str | os.PathLike[str] | None, split: str) -> ArrayDataset:
    """Read Fashion-MNIST from its four IDX files (``.gz`` or uncompressed).

    Args:
        root: Folder with ``train-images-idx3-ubyte[.gz]`` and friends; ``None`` means
            :data:`FASHION_MNIST_ROOT`.
        split: ``"train"`` (60k images) or ``"test"`` (10k).

    Returns:
        Images of shape ``(N, 1, 28, 28)`` and labels in ``[0, 10)``.

    Raises:
        DataError: If a file is missing or the images and labels disagree.
    """
    images_path, labels_path = _fashion_mnist_files(root or FASHION_MNIST_ROOT, split)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path} should hold uint8 images (N, H, W), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{labels_path} holds {labels.shape} labels for {len(images)} images in "
            f"{images_path}; the files do not belong together"
        )
    if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_path} has label {int(labels.max())}, expected 0..9")
    return ArrayDataset(
        torch.from_numpy(np.ascontiguousarray(images[:, None])),
        torch.from_numpy(labels.astype(np.int64)),
        FASHION_MNIST_CLASSES,
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10/100 (official python pickles, restricted unpickling)
# --------------------------------------------------------------------------------------------


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, str/bytes and numpy arrays, and refuses any other callable.

    The CIFAR files are pickles, and a pickle can run arbitrary code on load; only the few
    globals needed to rebuild an ndarray are resolved.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),  # numpy 1 names (the official files)
            ("numpy.core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
            ("numpy._core.multiarray", "_reconstruct"),  # numpy 2 names
            ("numpy._core.multiarray", "scalar"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
        }
    )

    def __init__(self, handle: Any, path: Path) -> None:
        super().__init__(handle, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise DataError(
                f"{self._path} is not a plain CIFAR pickle: it references {module}.{name}, "
                "which could run code, so it was not loaded; download the official "
                "python version from https://www.cs.toronto.edu/~kriz/cifar.html"
            )
        # numpy 2 moved numpy.core to numpy._core; files written by numpy 1 use the old name.
        modern = module.replace("numpy.core.", "numpy._core.", 1)
        try:
            return getattr(importlib.import_module(modern), name)
        except (ImportError, AttributeError):
            return getattr(importlib.import_module(module), name)


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = _RestrictedUnpickler(handle, path).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"CIFAR file {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(
            f"{path} is not a readable CIFAR pickle ({exc}); download it again"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"{path} should hold a dict, got {type(data).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in data.items()}


def _cifar_folder(root: Path, num_classes: int) -> Path:
    folder_name, probe = (
        ("cifar-10-batches-py", "data_batch_1")
        if num_classes == 10
        else ("cifar-100-python", "train")
    )
    for candidate in (root / folder_name, root):
        if (candidate / probe).is_file():
            return candidate
    url = "cifar-10-python.tar.gz" if num_classes == 10 else "cifar-100-python.tar.gz"
    raise DataError(
        f"CIFAR-{num_classes} pickles not found in {root} (looked for {root / folder_name / probe} "
        f"and {root / probe}); download https://www.cs.toronto.edu/~kriz/{url}, extract it and "
        "pass data.root=<the folder containing "
        f"{folder_name}>, or pass the CIFAR-10 JPEG zip as data.root"
    )


def _cifar_files(root: str | os.PathLike[str], split: str, num_classes: int) -> list[Path]:
    _check_split(split)
    if num_classes not in (10, 100):
        raise DataError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes}")
    folder = _cifar_folder(Path(root), num_classes)
    if num_classes == 10:
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    else:
        names = [split]
    files = [folder / name for name in names]
    for file in files:
        if not file.is_file():
            raise DataError(
                f"CIFAR-{num_classes} file {file} is missing; extract the archive again"
            )
    return files


def read_cifar_pickle(
    root: str | os.PathLike[str], split: str, *, num_classes: int = 10
) -> ArrayDataset:
    """Read the official python-pickle distribution of CIFAR-10 or CIFAR-100.

    Args:
        root: ``cifar-10-batches-py`` / ``cifar-100-python`` or the folder containing it.
        split: ``"train"`` or ``"test"``.
        num_classes: 10 for CIFAR-10, 100 for CIFAR-100 (fine labels).

    Returns:
        Images of shape ``(N, 3, 32, 32)`` in the files' order.

    Raises:
        DataError: If files are missing, malformed, or reference anything but numpy arrays.
    """
    files = _cifar_files(root, split, num_classes)
    label_key = "labels" if num_classes == 10 else "fine_labels"
    images, labels = [], []
    for file in files:
        batch = _load_pickle(file)
        data, batch_labels = batch.get("data"), batch.get(label_key)
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3072
        ):
            shape = getattr(data, "shape", None)
            raise DataError(f"{file}: 'data' should be a uint8 (N, 3072) array, got {shape}")
        if batch_labels is None or len(batch_labels) != len(data):
            raise DataError(f"{file}: '{label_key}' is missing or does not match 'data' in length")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch_labels, dtype=np.int64))
    label_array = np.concatenate(labels)
    if len(label_array) and (label_array.min() < 0 or label_array.max() >= num_classes):
        raise DataError(f"{files[0].parent}: labels outside 0..{num_classes - 1}")
    meta_name, names_key = (
        ("batches.meta", "label_names") if num_classes == 10 else ("meta", "fine_label_names")
    )
    meta_path = files[0].parent / meta_name
    classes: Sequence[str] = (
        CIFAR10_CLASSES if num_classes == 10 else tuple(f"class_{i}" for i in range(100))
    )
    if meta_path.is_file():
        names = _load_pickle(meta_path).get(names_key)
        if names is not None and len(names) == num_classes:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return ArrayDataset(
        torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
        torch.from_numpy(label_array),
        tuple(classes),
    )


# --------------------------------------------------------------------------------------------
# Image trees and zips
# --------------------------------------------------------------------------------------------


def _list_tree(path: Path) -> list[str]:
    """Relative ``/``-separated names of the image files in a directory tree or zip."""
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
    elif path.is_dir():
        names = []
        for folder, dirs, files in os.walk(path, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            relative = Path(folder).relative_to(path).as_posix()
            prefix = "" if relative == "." else relative + "/"
            names.extend(prefix + f for f in files)
    elif path.exists():
        raise DataError(f"{path} is neither a folder nor a zip archive of images")
    else:
        raise DataError(f"image folder {path} does not exist; pass data.root=<folder or .zip>")
    return [
        n for n in names
        if n.lower().endswith(_IMAGE_SUFFIXES)
        and not any(part.startswith(".") or part == "__MACOSX" for part in n.split("/"))
    ]  # fmt: skip


def _index_images(
    path: Path, split: str, classes: Sequence[str] | None
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """The ``split``'s image names (sorted), their labels and the class names."""
    _check_split(split)
    parts = [name.split("/") for name in _list_tree(path)]
    in_split = [p for p in parts if len(p) >= 3 and p[0] == split]
    if not in_split and split == "test":
        # ImageNet's layout: the labelled 50k validation images are the test split.
        in_split = [p for p in parts if len(p) >= 3 and p[0] == "val"]
    if in_split:
        entries = sorted(("/".join(p), p[1]) for p in in_split)
    else:
        tops = sorted({p[0] for p in parts if len(p) >= 2})
        if split != "train" or _SPLIT_FOLDERS.intersection(tops):
            raise DataError(
                f"{path} has no '{split}/<class>/<image>' files (top-level folders: {tops[:10]}); "
                f"lay the images out as {split}/<class>/<file>.jpg"
                + (" (or val/<class>/<file>.jpg)" if split == "test" else "")
            )
        # No split level at all: the whole tree is the training set.
        entries = sorted(("/".join(p), p[0]) for p in parts if len(p) >= 2)
    if not entries:
        raise DataError(
            f"no .jpg/.png images found in {path}; expected <split>/<class>/<file>.jpg "
            "(or <class>/<file>.jpg for a training-only tree)"
        )
    found = sorted({name for _, name in entries})
    if classes is None:
        classes = found
    else:
        unknown = [name for name in found if name not in classes]
        if unknown:
            raise DataError(
                f"{path}: class folders {unknown} are not in the given classes {list(classes)}"
            )
    lookup = {name: i for i, name in enumerate(classes)}
    return [e for e, _ in entries], [lookup[c] for _, c in entries], tuple(classes)


def _open_image(source: Path | bytes, where: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(
            f"cannot decode image {where} ({exc}); replace or delete the file"
        ) from None
    return image


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def read_image_folder(
    path: str | os.PathLike[str],
    split: str,
    *,
    classes: Sequence[str] | None = None,
    num_workers: int | None = None,
) -> ArrayDataset:
    """Decode a whole ``<split>/<class>/<file>.jpg|png`` tree or zip into memory.

    A tree without split folders counts as the training set. All images must have the same
    size; they come out RGB, or single-channel if every one of them is greyscale. Decoding runs
    in a thread pool (Pillow releases the GIL while decoding).

    Args:
        path: A directory or a ``.zip`` archive.
        split: ``"train"`` or ``"test"``.
        classes: Label order; defaults to the class folder names sorted (for the CIFAR-10 zip,
            sorted order equals :data:`CIFAR10_CLASSES`).
        num_workers: Decoding threads (default: CPU count, at most 8).

    Raises:
        DataError: If the path or split is missing, a file cannot be decoded, or sizes differ.
    """
    path = Path(path)
    names, labels, class_names = _index_images(path, split, classes)
    if path.is_dir():
        sources: list[Path | bytes] = [path / name for name in names]
    else:
        # One sequential pass over the (usually stored, uncompressed) archive; threads only decode.
        with zipfile.ZipFile(path) as archive:
            sources = [archive.read(name) for name in names]
    first = _open_image(sources[0], f"{path}/{names[0]}")
    height, width = first.height, first.width
    out = np.empty((len(names), height, width, 3), dtype=np.uint8)
    grey = np.zeros(len(names), dtype=bool)

    def decode(index: int) -> None:
        where = f"{path}/{names[index]}"
        image = _open_image(sources[index], where)
        if image.size != (width, height):
            raise DataError(
                f"{where} is {image.width}x{image.height} but {path}/{names[0]} is "
                f"{width}x{height}; all images must have one size (resize them, or use "
                "data.lazy=true to stream variable-size images)"
            )
        if image.mode in ("L", "LA", "1"):
            grey[index] = True
            out[index] = np.asarray(image.convert("L"))[:, :, None]
        else:
            out[index] = np.asarray(image.convert("RGB"))

    def decode_chunk(chunk: range) -> None:
        for index in chunk:
            decode(index)

    chunks = [range(i, min(i + 256, len(names))) for i in range(0, len(names), 256)]
    with ThreadPoolExecutor(num_workers or _default_workers()) as pool:
        for _ in pool.map(decode_chunk, chunks):
            pass
    images = torch.from_numpy(out).permute(0, 3, 1, 2)
    if grey.all():
        images = images[:, :1]
    return ArrayDataset(images.contiguous(), torch.tensor(labels, dtype=torch.int64), class_names)


def random_resized_crop_box(
    width: int,
    height: int,
    uniforms: Sequence[Sequence[float]],
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """The ``(left, top, crop_width, crop_height)`` of an Inception-style random crop.

    The same algorithm as torchvision's ``RandomResizedCrop``: up to ``len(uniforms)`` attempts
    at an area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``, then a centre
    crop with the ratio clamped. The randomness comes in as pre-drawn uniforms in ``[0, 1)``,
    four per attempt, so a batch can draw them from one generator before decoding in threads.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for u_area, u_ratio, u_top, u_left in uniforms:
        target = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(log_low + u_ratio * (log_high - log_low))
        crop_w = int(round(math.sqrt(target * aspect)))
        crop_h = int(round(math.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = min(int(u_top * (height - crop_h + 1)), height - crop_h)
            left = min(int(u_left * (width - crop_w + 1)), width - crop_w)
            return left, top, crop_w, crop_h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_w, crop_h = int(round(height * ratio[1])), height
    else:
        crop_w, crop_h = width, height
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


#: ImageNet's RGB eigenvalues and eigenvectors (columns) on the [0, 1] scale, for AlexNet-style
#: PCA "lighting" noise (Krizhevsky et al. 2012; fb.resnet.torch).
_LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
_LIGHTING_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L")


def jitter_colors(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation jitter on a uint8 RGB batch, batched.

    Args:
        images: ``uint8`` ``(N, 3, H, W)``.
        factors: ``(N, 3)`` brightness, contrast and saturation factors (1 = unchanged),
            applied in that order, each clamped to [0, 255] as torchvision's ``ColorJitter``
            does (which picks a random order per image; this one is fixed).

    Returns:
        The jittered ``uint8`` batch.
    """
    if images.shape[1] != 3:
        raise DataError(f"colour jitter needs RGB images, got {images.shape[1]} channels")
    shape = (-1, 1, 1, 1)
    factors = factors.to(images.device, torch.float32)
    grey_weights = torch.tensor(_GREY_WEIGHTS, device=images.device).view(1, 3, 1, 1)
    out = images.to(torch.float32)
    out.mul_(factors[:, 0].view(shape)).clamp_(0, 255)
    mean = (out * grey_weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    contrast = factors[:, 1].view(shape)
    out.mul_(contrast).add_((1 - contrast) * mean).clamp_(0, 255)
    grey = (out * grey_weights).sum(1, keepdim=True)
    saturation = factors[:, 2].view(shape)
    out.mul_(saturation).add_((1 - saturation) * grey).clamp_(0, 255)
    return out.round_().to(torch.uint8)


def add_lighting(images: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """AlexNet PCA lighting noise on a uint8 RGB batch: add ``eigvec @ (alpha * eigval)``.

    Args:
        images: ``uint8`` ``(N, 3, H, W)``.
        alphas: ``(N, 3)`` normal draws times the lighting strength (commonly 0.1).
    """
    eigval = torch.tensor(_LIGHTING_EIGVAL, device=images.device)
    eigvec = torch.tensor(_LIGHTING_EIGVEC, device=images.device)
    shift = (alphas.to(images.device, torch.float32) * eigval) @ eigvec.T * 255  # (N, 3)
    out = images.to(torch.float32).add_(shift[:, :, None, None])
    return out.round_().clamp_(0, 255).to(torch.uint8)


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
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        classes: Sequence[str] | None = None,
        num_workers: int | None = None,
    ) -> None:
        self.root = Path(root)
        names, labels, self.classes = _index_images(self.root, split, classes)
        self.names = names
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.num_workers = num_workers or _default_workers()
        self._is_archive = not self.root.is_dir()
        self._archive: zipfile.ZipFile | None = None
        self._archive_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> LazyImageFolder:
        """The images at ``indices`` (in that order) as a new folder view (no decoding)."""
        index = torch.as_tensor(indices, dtype=torch.int64).flatten()
        view = copy.copy(self)
        view.names = [self.names[i] for i in index.tolist()]
        view.labels = self.labels[index]
        view._archive, view._archive_lock = None, threading.Lock()
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
            ``uint8`` tensor of shape ``(len(indices), 3, size, size)``.
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


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def synthetic_dataset(
    n: int,
    *,
    channels: int = 3,
    size: int = 32,
    num_classes: int = 10,
    seed: int = 0,
    pattern_seed: int = 0,
) -> ArrayDataset:
    """A learnable toy dataset: a smooth per-class pattern with random contrast and noise.

    The class patterns depend only on ``pattern_seed`` (shared by train and test), the samples
    and labels on ``seed``. Labels are balanced (``n // num_classes`` or one more per class).

    Args:
        n: Number of images.
        channels: Image channels.
        size: Image side length.
        num_classes: Number of classes.
        seed: Seed of the samples and their order.
        pattern_seed: Seed of the class patterns.
    """
    if n < 1 or channels < 1 or size < 1 or num_classes < 1:
        raise DataError(
            f"synthetic dataset needs positive sizes, got n={n}, channels={channels}, "
            f"size={size}, num_classes={num_classes}"
        )
    pattern_generator = make_generator(pattern_seed, "synthetic-patterns")
    coarse = torch.rand(num_classes, channels, 4, 4, generator=pattern_generator) * 2 - 1
    patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    generator = make_generator(seed, "synthetic-samples")
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=generator)
    noise = torch.randn(n, channels, size, size, generator=generator)
    pixels = 128 + 80 * contrast * patterns[labels] + 30 * noise
    images = pixels.round_().clamp_(0, 255).to(torch.uint8)
    return ArrayDataset(images, labels, tuple(f"class_{i}" for i in range(num_classes)))


# --------------------------------------------------------------------------------------------
# Decoded-dataset cache and the load_dataset entry point
# --------------------------------------------------------------------------------------------


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


_OPTIONS = {
    "fashion_mnist": set(),
    "cifar10": {"num_workers"},
    "cifar100": {"num_workers"},
    "image_folder": {"classes", "num_workers"},
    "synthetic": {"size", "image_size", "channels", "num_classes", "seed"},
}


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    split: str,
    cache_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> ArrayDataset:
    """Load a dataset by name into memory, decoding it once and caching the arrays.

    Args:
        name: ``"fashion_mnist"`` (root defaults to :data:`FASHION_MNIST_ROOT`), ``"cifar10"``
            / ``"cifar100"`` (root: the pickle folder, or a JPEG zip such as
            ``cifar10_jpeg.zip``), ``"image_folder"`` (root: a tree or zip), or
            ``"synthetic"`` (root ignored, never cached).
        root: Where the data lives.
        split: ``"train"`` or ``"test"``.
        cache_dir: Folder for the decoded ``.npy`` cache; ``None`` disables it.
        **options: ``image_folder``: ``classes``, ``num_workers``; ``cifar10``/``cifar100``:
            ``num_workers`` (zip only); ``synthetic``: ``size`` (training images, default
            2048; the test split has a quarter as many), ``image_size`` (default 32),
            ``channels`` (3), ``num_classes`` (10), ``seed`` (0; the test split derives its
            own).

    Raises:
        ConfigError: For an unknown name or option.
        DataError: If the data is missing or malformed.
    """
    if name not in _OPTIONS:
        raise ConfigError(
            f"unknown dataset {name!r} in data.dataset; use one of {list(DATASET_NAMES)}"
        )
    unknown = sorted(set(options) - _OPTIONS[name])
    if unknown:
        raise ConfigError(
            f"dataset {name!r} takes no option(s) {unknown}; allowed: {sorted(_OPTIONS[name])}"
        )
    _check_split(split)
    if name == "synthetic":
        seed = int(options.get("seed", 0))
        count = int(options.get("size", 2048))
        if split == "test":
            seed = int(make_generator(seed, "synthetic-test-seed").initial_seed())
            count = max(1, count // 4)
        return synthetic_dataset(
            count,
            channels=int(options.get("channels", 3)),
            size=int(options.get("image_size", 32)),
            num_classes=int(options.get("num_classes", 10)),
            seed=seed,
        )

    build: Callable[[], ArrayDataset]
    if name == "fashion_mnist":
        root_path = Path(root or FASHION_MNIST_ROOT)
        sources: list[Path] = list(_fashion_mnist_files(root_path, split))

        def build() -> ArrayDataset:
            return read_fashion_mnist(root_path, split)

    else:
        if root is None:
            raise DataError(
                f"dataset {name!r} needs data.root: the folder with the data"
                + (" (the CIFAR pickles or a JPEG .zip)" if name != "image_folder" else "")
            )
        root_path = Path(root)
        is_archive = root_path.is_file() and root_path.suffix.lower() == ".zip"
        if name in ("cifar10", "cifar100") and not is_archive:
            num_classes = 10 if name == "cifar10" else 100
            sources = _cifar_files(root_path, split, num_classes)

            def build() -> ArrayDataset:
                return read_cifar_pickle(root_path, split, num_classes=num_classes)

        else:
            classes = options.get("classes")
            if name == "cifar10" and classes is None:
                classes = CIFAR10_CLASSES
            if is_archive:
                sources = [root_path]
            else:
                names, _, _ = _index_images(root_path, split, classes)
                sources = [root_path / n for n in names]

            def build() -> ArrayDataset:
                return read_image_folder(
                    root_path, split, classes=classes, num_workers=options.get("num_workers")
                )

    fingerprint = source_fingerprint(sources)
    return cached_dataset(
        cache_dir,
        key=f"{name}-{split}-{fingerprint[:16]}",
        fingerprint=fingerprint,
        source=str(root_path.resolve()),
        build=build,
    )


# --------------------------------------------------------------------------------------------
# Held-out split and statistics
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Batched tensor augmentation
# --------------------------------------------------------------------------------------------


def crop_flip_params(
    batch: int, *, padding: int, generator: torch.Generator, flip: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crop offsets and flips for a batch, drawn from ``generator``.

    Returns:
        ``(top, left, flips)``: offsets in ``[0, 2 * padding]`` into the padded image (int64,
        ``(batch,)``) and a bool ``(batch,)`` flip mask (all False when ``flip`` is False).
    """
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    if not flip:
        flips = torch.zeros_like(flips)
    return offsets[0], offsets[1], flips


def apply_crop_flip(
    images: torch.Tensor,
    *,
    padding: int,
    top: torch.Tensor,
    left: torch.Tensor,
    flips: torch.Tensor,
) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to the input size at ``(top, left)``, flip.

    One ``gather`` over the flattened padded images; no loop over samples.
    """
    n, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    padded_width = width + 2 * padding
    rows = top.to(device)[:, None] + torch.arange(height, device=device)
    columns = torch.arange(width, device=device).expand(n, width)
    columns = torch.where(flips.to(device)[:, None], width - 1 - columns, columns)
    columns = columns + left.to(device)[:, None]
    index = (rows[:, :, None] * padded_width + columns[:, None, :]).view(n, 1, height * width)
    flat = padded.reshape(n, channels, -1)
    return flat.gather(2, index.expand(n, channels, height * width)).view(
        n, channels, height, width
    )


def random_crop_flip(
    images: torch.Tensor,
    *,
    padding: int,
    generator: torch.Generator,
    flip: bool = True,
    start: int = 0,
    total: int | None = None,
) -> torch.Tensor:
    """The CIFAR augmentation on a uint8 batch: pad with zeros, random crop, random h-flip.

    Args:
        images: ``(N, C, H, W)`` batch (any dtype; uint8 stays uint8).
        padding: Zero padding on each side before cropping back to ``H x W``.
        generator: Source of every random draw (see :func:`crop_flip_params`).
        flip: Also flip each image horizontally with probability 1/2.
        start: Row of ``images[0]`` within the global batch this batch is a share of.
        total: Size of that global batch (default ``start + N``). Parameters are drawn for
            all ``total`` images and rows ``[start, start + N)`` are used, so a batch
            augmented in rank shards equals the same batch augmented whole.
    """
    total = start + len(images) if total is None else total
    if not 0 <= start <= total - len(images):
        raise DataError(f"share [{start}, {start + len(images)}) lies outside a batch of {total}")
    top, left, flips = crop_flip_params(total, padding=padding, generator=generator, flip=flip)
    share = slice(start, start + len(images))
    return apply_crop_flip(
        images, padding=padding, top=top[share], left=left[share], flips=flips[share]
    )


def pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad ``(N, C, H, W)`` images centrally to ``size x size`` (e.g. 28 -> 32)."""
    height, width = images.shape[-2:]
    if size < height or size < width:
        raise DataError(
            f"cannot pad {height}x{width} images to {size}x{size}; pad_to must be >= the image size"
        )
    top, left = (size - height) // 2, (size - width) // 2
    return F.pad(images, (left, size - width - left, top, size - height - top)).contiguous()


def to_float(
    images: torch.Tensor,
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
    *,
    channels_last: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Move a uint8 batch to ``device`` (as uint8: 4x less to copy) and normalise to float32.

    Returns:
        ``(images / 255 - mean) / std`` per channel, in ``channels_last`` memory format if
        asked (the faster layout for convolutions on CPU and GPU).
    """
    if device is not None:
        images = images.to(device, non_blocking=True)
    shape = (1, -1, 1, 1)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(shape)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = images.to(dtype=torch.float32, memory_format=memory_format)
    return out.sub_(mean * 255).div_(std * 255)


# --------------------------------------------------------------------------------------------
# Batch streams
# --------------------------------------------------------------------------------------------


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
