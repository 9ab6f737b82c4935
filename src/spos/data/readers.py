"""Dataset readers and the registry of dataset names: from files on disk to an ArrayDataset.

* Fashion-MNIST from its IDX files, CIFAR-10/100 from the official python pickles (unpickled
  with a restricted unpickler), image trees or zips (``<split>/<class>/<file>.jpg``), and a
  learnable synthetic dataset;
* :func:`load_dataset`, which loads a dataset by name, decoding it once and caching the arrays
  as ``.npy`` (:mod:`spos.data.cache`).

Each dataset name is one function registered with ``@_reader(name)``: it locates the dataset's
files and says how to decode them; its keyword-only parameters are the options the dataset
takes. The registry is the one list of dataset names (:data:`DATASET_NAMES`), which
:class:`spos.config.DataConfig` validates ``data.dataset`` against, so this module imports no
torch at import time: torch is imported where a decoded dataset is wrapped or generated.
"""

from __future__ import annotations

import gzip
import importlib
import inspect
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from spos.errors import ConfigError, DataError

if TYPE_CHECKING:
    from spos.data.dataset import ArrayDataset

__all__ = [
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
]

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


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {list(_SPLITS)}")


def _array_dataset(
    images: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> ArrayDataset:
    """Decoded arrays as an :class:`~spos.data.ArrayDataset` (sharing their memory)."""
    import torch

    from spos.data.dataset import ArrayDataset

    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), tuple(classes))


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
    except (OSError, EOFError, zlib.error) as exc:
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
    return _array_dataset(
        np.ascontiguousarray(images[:, None]), labels.astype(np.int64), FASHION_MNIST_CLASSES
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
    return _array_dataset(np.ascontiguousarray(np.concatenate(images)), label_array, classes)


# --------------------------------------------------------------------------------------------
# Image trees and zips
# --------------------------------------------------------------------------------------------


def _walk_files(root: Path) -> list[str]:
    """Relative ``/``-separated names of the files under ``root`` (hidden folders skipped).

    Directory symlinks are followed (trees assembled from links are common), but a link back
    to one of its own parent folders is refused: following it would list the same images again
    and again under ever longer names, each copy labelled by the wrong class folder. Folders
    are identified by ``(st_dev, st_ino)``, so a loop is found whatever path leads into it. A
    link to a folder elsewhere in the tree is not a loop and is listed under its own name.

    Raises:
        DataError: A directory symlink loops back to one of its parents.
    """
    names: list[str] = []
    start = root.stat()
    # (folder, its name relative to root, the (st_dev, st_ino) of it and of its parents)
    stack: list[tuple[Path, str, frozenset[tuple[int, int]]]] = [
        (root, "", frozenset({(start.st_dev, start.st_ino)}))
    ]
    while stack:
        folder, prefix, ancestors = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir()  # follows symlinks; a dangling link is no folder
                except OSError:
                    is_dir = False
                if not is_dir:
                    names.append(prefix + entry.name)
                    continue
                if entry.name.startswith("."):
                    continue
                info = entry.stat()
                key = (info.st_dev, info.st_ino)
                if key in ancestors:
                    raise DataError(
                        f"{entry.path} is a symbolic link to {os.path.realpath(entry.path)}, one of "
                        "its own parent folders: reading through it would list the same images "
                        "again and again under wrong classes; remove the link"
                    )
                stack.append((Path(entry.path), f"{prefix}{entry.name}/", ancestors | {key}))
    return names


def _list_tree(path: Path) -> list[str]:
    """Relative ``/``-separated names of the image files in a directory tree or zip."""
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
    elif path.is_dir():
        names = _walk_files(path)
    elif path.exists():
        raise DataError(f"{path} is neither a folder nor a zip archive of images")
    else:
        raise DataError(f"image folder {path} does not exist; pass data.root=<folder or .zip>")
    return [
        n for n in names
        if n.lower().endswith(_IMAGE_SUFFIXES)
        and not any(part.startswith(".") or part == "__MACOSX" for part in n.split("/"))
    ]  # fmt: skip


def _shown(names: Sequence[str], limit: int = 10) -> str:
    """``names`` as a list, cut after ``limit`` (ImageNet has 1000 classes)."""
    shown = ", ".join(repr(name) for name in list(names)[:limit])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"


def check_classes(found: Sequence[str], classes: Sequence[str], *, where: str) -> None:
    """Refuse classes in ``found`` (a split's class folders) that ``classes`` (the training
    classes, which define the labels) lacks; a training class missing from ``found`` is fine.

    Raises:
        DataError: Naming ``where``, the unknown classes and the training classes.
    """
    known = set(classes)
    unknown = [name for name in found if name not in known]
    if unknown:
        raise DataError(
            f"{where} has class folder(s) {_shown(unknown)} that the training set does not have "
            f"(training classes: {_shown(classes)}); a model cannot be scored on classes it "
            "never learnt: remove those folders or add training images for them"
        )


def index_images(
    path: Path, split: str, classes: Sequence[str] | None
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """The ``split``'s image names (sorted), their labels and the class names.

    ``classes`` (the training classes, for the test split) fixes the label order; a class
    folder it lacks is refused (:func:`check_classes`). ``None``: the split's own class folders,
    sorted.
    """
    _check_split(split)
    parts = [name.split("/") for name in _list_tree(path)]
    in_split = [p for p in parts if len(p) >= 3 and p[0] == split]
    if not in_split and split == "test":
        # ImageNet's layout: the labelled 50k validation images are the test split.
        in_split = [p for p in parts if len(p) >= 3 and p[0] == "val"]
    where = path
    if in_split:
        entries = sorted(("/".join(p), p[1]) for p in in_split)
        where = path / in_split[0][0]
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
        check_classes(found, classes, where=str(where))
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


def default_workers() -> int:
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
    names, labels, class_names = index_images(path, split, classes)
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
    with ThreadPoolExecutor(num_workers or default_workers()) as pool:
        for _ in pool.map(decode_chunk, chunks):
            pass
    images = out.transpose(0, 3, 1, 2)
    if grey.all():
        images = images[:, :1]
    return _array_dataset(
        np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64), class_names
    )



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
    import torch
    import torch.nn.functional as F

    from spos.data.dataset import ArrayDataset, make_generator

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
# The registry of dataset names and the load_dataset entry point
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Located:
    """A dataset found on disk, not decoded yet.

    Attributes:
        root: Where it lives (recorded in the cache's json).
        files: The source files; their paths, sizes and modification times key the cache.
        decode: Decodes the whole split into memory.
    """

    root: Path
    files: Sequence[Path]
    decode: Callable[[], ArrayDataset]


#: ``reader(root, split, **options)``: a :class:`_Located` dataset to decode and cache, or an
#: ``ArrayDataset`` that is not cached (generated data).
_Reader = Callable[..., Any]
_READERS: dict[str, _Reader] = {}


def _reader(name: str) -> Callable[[_Reader], _Reader]:
    """Register ``reader`` as dataset ``name``; its keyword-only parameters are the options."""

    def register(reader: _Reader) -> _Reader:
        _READERS[name] = reader
        return reader

    return register


def _options(reader: _Reader) -> set[str]:
    parameters = inspect.signature(reader).parameters.values()
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _required_root(name: str, root: str | os.PathLike[str] | None, hint: str = "") -> Path:
    if root is None:
        raise DataError(f"dataset {name!r} needs data.root: the folder with the data{hint}")
    return Path(root)


def _is_zip(root: Path) -> bool:
    return root.is_file() and root.suffix.lower() == ".zip"


def _image_tree(
    root: Path, split: str, *, classes: Sequence[str] | None, num_workers: int | None
) -> _Located:
    if _is_zip(root):
        files = [root]
    else:
        names, _, _ = index_images(root, split, classes)
        files = [root / name for name in names]
    return _Located(
        root,
        files,
        lambda: read_image_folder(root, split, classes=classes, num_workers=num_workers),
    )


def _cifar(
    root: str | os.PathLike[str] | None, split: str, *, num_classes: int, num_workers: int | None
) -> _Located:
    root = _required_root(f"cifar{num_classes}", root, " (the CIFAR pickles or a JPEG .zip)")
    if _is_zip(root):
        classes = CIFAR10_CLASSES if num_classes == 10 else None
        return _image_tree(root, split, classes=classes, num_workers=num_workers)
    files = _cifar_files(root, split, num_classes)
    return _Located(root, files, lambda: read_cifar_pickle(root, split, num_classes=num_classes))


@_reader("fashion_mnist")
def _fashion_mnist(root: str | os.PathLike[str] | None, split: str) -> _Located:
    root = Path(root or FASHION_MNIST_ROOT)
    files = list(_fashion_mnist_files(root, split))
    return _Located(root, files, lambda: read_fashion_mnist(root, split))


@_reader("cifar10")
def _cifar10(
    root: str | os.PathLike[str] | None, split: str, *, num_workers: int | None = None
) -> _Located:
    return _cifar(root, split, num_classes=10, num_workers=num_workers)


@_reader("cifar100")
def _cifar100(
    root: str | os.PathLike[str] | None, split: str, *, num_workers: int | None = None
) -> _Located:
    return _cifar(root, split, num_classes=100, num_workers=num_workers)


@_reader("image_folder")
def _image_folder(
    root: str | os.PathLike[str] | None,
    split: str,
    *,
    classes: Sequence[str] | None = None,
    num_workers: int | None = None,
) -> _Located:
    root = _required_root("image_folder", root)
    return _image_tree(root, split, classes=classes, num_workers=num_workers)


@_reader("synthetic")
def _synthetic(
    root: str | os.PathLike[str] | None,
    split: str,
    *,
    size: int = 2048,
    image_size: int = 32,
    channels: int = 3,
    num_classes: int = 10,
    seed: int = 0,
) -> ArrayDataset:
    del root  # generated, never cached
    from spos.data.dataset import make_generator

    seed, count = int(seed), int(size)
    if split == "test":
        seed = int(make_generator(seed, "synthetic-test-seed").initial_seed())
        count = max(1, count // 4)
    return synthetic_dataset(
        count,
        channels=int(channels),
        size=int(image_size),
        num_classes=int(num_classes),
        seed=seed,
    )


DATASET_NAMES = tuple(_READERS)
"""The names ``data.dataset`` accepts, one per registered reader."""


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
    reader = _READERS.get(name)
    if reader is None:
        raise ConfigError(
            f"unknown dataset {name!r} in data.dataset; use one of {list(DATASET_NAMES)}"
        )
    allowed = _options(reader)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            f"dataset {name!r} takes no option(s) {unknown}; allowed: {sorted(allowed)}"
        )
    _check_split(split)
    located = reader(root, split, **options)
    if not isinstance(located, _Located):
        return located
    from spos.data.cache import cached_dataset, source_fingerprint

    fingerprint = source_fingerprint(located.files)
    return cached_dataset(
        cache_dir,
        key=f"{name}-{split}-{fingerprint[:16]}",
        fingerprint=fingerprint,
        source=str(located.root.resolve()),
        build=located.decode,
    )
