"""Tests for spos.data: readers, cache, held-out split, augmentation and batch streams."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spos import data
from spos.errors import ConfigError, DataError

SHARED_FASHION = Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion-mnist"


# ---------------------------------------------------------------------------------------------
# helpers that write tiny files in the official formats
# ---------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    """An IDX file written independently of the reader (uint8 payload)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def make_fashion(root: Path, *, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train": (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train)),
        "test": (rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test)),
    }
    root.mkdir(parents=True, exist_ok=True)
    for split, stem, compress in (("train", "train", True), ("test", "t10k", False)):
        images, labels = arrays[split]
        suffix = ".gz" if compress else ""
        write_idx(root / f"{stem}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(root / f"{stem}-labels-idx1-ubyte{suffix}", labels, compress=compress)
    return arrays


def make_cifar10(
    parent: Path, *, per_batch: int = 4, protocol: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    all_data, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": batch, b"labels": labels, b"batch_label": b"x"}, handle, protocol)
        all_data.append(batch)
        all_labels.append(labels)
    meta = {"label_names": list(data.CIFAR10_CLASSES), "num_cases_per_batch": per_batch}
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol)
    return np.concatenate(all_data), np.concatenate(all_labels)


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def make_tree(root: Path, files: dict[str, np.ndarray]) -> None:
    for name, array in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png_bytes(array))


def make_zip(path: Path, files: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, array in files.items():
            archive.writestr(name, png_bytes(array))


def rgb(seed: int, size: tuple[int, int] = (6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def index_dataset(n: int, *, channels: int = 1, size: int = 4) -> data.ArrayDataset:
    """Labels equal to the sample index, so batches reveal which samples they hold."""
    images = torch.arange(n * channels * size * size).reshape(n, channels, size, size) % 251
    return data.ArrayDataset(
        images.to(torch.uint8), torch.arange(n), tuple(str(i) for i in range(n))
    )


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST / IDX
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip_is_exact(tmp_path, compress):
    array = np.random.default_rng(0).integers(0, 256, (7, 3, 5), dtype=np.uint8)
    write_idx(tmp_path / "x.idx", array, compress=compress)
    out = data.read_idx(tmp_path / "x.idx")
    assert out.dtype == np.uint8 and out.shape == (7, 3, 5)
    np.testing.assert_array_equal(out, array)


def test_read_fashion_mnist_gz_and_plain(tmp_path):
    arrays = make_fashion(tmp_path / "fm")
    for split in ("train", "test"):
        dataset = data.read_fashion_mnist(tmp_path / "fm", split)
        images, labels = arrays[split]
        assert dataset.images.shape == (len(labels), 1, 28, 28)
        assert dataset.images.dtype == torch.uint8 and dataset.images.is_contiguous()
        np.testing.assert_array_equal(dataset.images[:, 0].numpy(), images)
        np.testing.assert_array_equal(dataset.labels.numpy(), labels)
        assert dataset.classes[0] == "T-shirt/top" and len(dataset.classes) == 10


def test_fashion_mnist_missing_dir_names_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        data.read_fashion_mnist(missing, "train")
    message = str(info.value)
    assert str(missing) in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root=" in message


def test_truncated_idx_names_the_file(tmp_path):
    make_fashion(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated") as info:
        data.read_fashion_mnist(tmp_path, "test")
    assert str(path) in str(info.value)


def test_not_an_idx_file(tmp_path):
    (tmp_path / "bad").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file") as info:
        data.read_idx(tmp_path / "bad")
    assert str(tmp_path / "bad") in str(info.value)


# ---------------------------------------------------------------------------------------------
# CIFAR pickles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 5])
def test_read_cifar10_pickles_exact(tmp_path, protocol):
    raw, labels = make_cifar10(tmp_path, protocol=protocol)
    train = data.read_cifar_pickle(tmp_path, "train")
    assert train.images.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(train.labels.numpy(), labels[:20])
    # Channel-major rows of 1024 pixels: [R plane | G plane | B plane], each row-major 32x32.
    i, c, y, x = 13, 2, 5, 30
    assert int(train.images[i, c, y, x]) == int(raw[i, c * 1024 + y * 32 + x])
    np.testing.assert_array_equal(train.images.reshape(20, -1).numpy(), raw[:20])
    test = data.read_cifar_pickle(tmp_path / "cifar-10-batches-py", "test")  # the folder itself
    np.testing.assert_array_equal(test.images.reshape(4, -1).numpy(), raw[20:])
    assert test.classes == data.CIFAR10_CLASSES


def test_read_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    fine = [0, 99, 5, 42, 7, 3]
    for split in ("train", "test"):
        with open(folder / split, "wb") as handle:
            pickle.dump({"data": raw, "fine_labels": fine, "coarse_labels": [0] * 6}, handle)
    names = [f"name{i}" for i in range(100)]
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": names}, handle)
    dataset = data.read_cifar_pickle(tmp_path, "train", num_classes=100)
    assert dataset.labels.tolist() == fine
    assert dataset.classes[99] == "name99" and len(dataset.classes) == 100
    np.testing.assert_array_equal(dataset.images.reshape(6, -1).numpy(), raw)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_rejects_code(tmp_path):
    make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({"data": _Exploit(marker), "labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="system") as info:
        data.read_cifar_pickle(tmp_path, "train")
    assert str(batch) in str(info.value)
    assert not marker.exists()


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz") as info:
        data.read_cifar_pickle(tmp_path / "none", "train")
    assert str(tmp_path / "none") in str(info.value)
    make_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="not a readable CIFAR pickle") as info:
        data.read_cifar_pickle(tmp_path, "test")
    assert str(batch) in str(info.value)


# ---------------------------------------------------------------------------------------------
# image trees and zips
# ---------------------------------------------------------------------------------------------


def _tree_files() -> dict[str, np.ndarray]:
    return {
        "train/dog/0.png": rgb(0),
        "train/dog/1.png": rgb(1),
        "train/cat/0.png": rgb(2),
        "train/ant/5.png": rgb(3),
        "test/cat/0.png": rgb(4),
        "test/dog/0.png": rgb(5),
    }


@pytest.mark.parametrize("kind", ["dir", "zip"])
def test_read_image_folder_exact(tmp_path, kind):
    files = _tree_files()
    path = tmp_path / "tree.zip" if kind == "zip" else tmp_path / "tree"
    (make_zip if kind == "zip" else make_tree)(path, files)
    train = data.read_image_folder(path, "train", num_workers=2)
    assert train.classes == ("ant", "cat", "dog")
    assert train.labels.tolist() == [0, 1, 2, 2]
    assert train.images.shape == (4, 3, 6, 5)
    expected = [
        files[n]
        for n in ("train/ant/5.png", "train/cat/0.png", "train/dog/0.png", "train/dog/1.png")
    ]
    np.testing.assert_array_equal(train.images.permute(0, 2, 3, 1).numpy(), np.stack(expected))
    test = data.read_image_folder(path, "test", classes=["dog", "cat", "ant"])
    assert test.classes == ("dog", "cat", "ant") and test.labels.tolist() == [1, 0]


def test_image_folder_without_split_level_is_train(tmp_path):
    grey = np.full((4, 4), 77, dtype=np.uint8)
    make_tree(tmp_path / "flat", {"b/x.png": grey, "a/y.png": grey + 1})
    train = data.read_image_folder(tmp_path / "flat", "train")
    assert train.classes == ("a", "b") and train.images.shape == (2, 1, 4, 4)
    assert train.images[:, 0, 0, 0].tolist() == [78, 77]
    with pytest.raises(DataError, match="test/<class>") as info:
        data.read_image_folder(tmp_path / "flat", "test")
    assert str(tmp_path / "flat") in str(info.value)


def test_image_folder_mixed_grey_and_rgb_gives_rgb(tmp_path):
    grey = np.full((4, 4), 9, dtype=np.uint8)
    make_tree(tmp_path / "t", {"train/a/0.png": grey, "train/b/0.png": rgb(7, (4, 4))})
    dataset = data.read_image_folder(tmp_path / "t", "train")
    assert dataset.images.shape == (2, 3, 4, 4)
    assert (dataset.images[0] == 9).all()


def test_image_folder_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        data.read_image_folder(tmp_path / "absent", "train")
    assert str(tmp_path / "absent") in str(info.value)
    make_tree(
        tmp_path / "sizes", {"train/a/0.png": rgb(0, (4, 4)), "train/a/1.png": rgb(1, (5, 4))}
    )
    with pytest.raises(DataError, match="one size") as info:
        data.read_image_folder(tmp_path / "sizes", "train")
    assert "train/a/1.png" in str(info.value)
    make_tree(tmp_path / "bad", {"train/a/0.png": rgb(0, (4, 4))})
    (tmp_path / "bad" / "train" / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode") as info:
        data.read_image_folder(tmp_path / "bad", "train")
    assert "train/a/1.png" in str(info.value)
    with pytest.raises(DataError, match="that the training set does not have"):
        data.read_image_folder(tmp_path / "bad", "train", classes=["z"])


def test_random_resized_crop_box_bounds_and_fallback():
    generator = torch.Generator().manual_seed(0)
    for width, height in [(100, 60), (30, 200), (7, 7)]:
        for _ in range(50):
            uniforms = torch.rand(10, 4, generator=generator, dtype=torch.float64).tolist()
            left, top, w, h = data.random_resized_crop_box(width, height, uniforms)
            assert 0 <= left <= width - w and 0 <= top <= height - h and w > 0 and h > 0
    # First attempt: area fraction 0.08 + 0.5 * 0.92 = 0.54, ratio exp(0) = 1 -> 147x147 of 200x200.
    assert data.random_resized_crop_box(200, 200, [[0.5, 0.5, 0.0, 0.999999]]) == (53, 0, 147, 147)
    # No attempt fits: centre crop with the ratio clamped to 4/3.
    assert data.random_resized_crop_box(100, 10, []) == (43, 0, 13, 10)


@pytest.mark.parametrize("kind", ["dir", "zip"])
def test_lazy_image_folder(tmp_path, kind):
    files = {
        "train/a/0.png": np.full((30, 40, 3), 200, dtype=np.uint8),
        "train/a/1.png": rgb(1, (50, 25)),
        "train/b/0.png": np.full((20, 20), 31, dtype=np.uint8),
    }
    path = tmp_path / "tree.zip" if kind == "zip" else tmp_path / "tree"
    (make_zip if kind == "zip" else make_tree)(path, files)
    folder = data.LazyImageFolder(path, "train", num_workers=2)
    assert len(folder) == 3 and folder.classes == ("a", "b") and folder.labels.tolist() == [0, 0, 1]
    evaluated = folder.load_batch([0, 2], size=16, train=False)
    assert evaluated.shape == (2, 3, 16, 16) and evaluated.dtype == torch.uint8
    assert (evaluated[0] == 200).all() and (evaluated[1] == 31).all()

    def train_batch(seed: int, workers: int) -> torch.Tensor:
        lazy = data.LazyImageFolder(path, "train", num_workers=workers)
        out = lazy.load_batch(
            torch.tensor([1, 0, 1]),
            size=12,
            train=True,
            generator=torch.Generator().manual_seed(seed),
        )
        lazy.close()
        return out

    first = train_batch(0, 1)
    assert first.shape == (3, 3, 12, 12)
    assert torch.equal(first, train_batch(0, 3))
    assert not torch.equal(first, train_batch(1, 1))
    assert (first[1] == 200).all()


# ---------------------------------------------------------------------------------------------
# load_dataset and the cache
# ---------------------------------------------------------------------------------------------


def test_cached_dataset_builds_once(tmp_path):
    calls = []

    def build() -> data.ArrayDataset:
        calls.append(1)
        return data.synthetic_dataset(10, channels=1, size=4, num_classes=2, seed=0)

    kwargs = dict(key="k", fingerprint="f1", source="src", build=build)
    first = data.cached_dataset(tmp_path, **kwargs)
    second = data.cached_dataset(tmp_path, **kwargs)
    assert len(calls) == 1
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.classes == first.classes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.images.npy", "k.json", "k.labels.npy"]
    data.cached_dataset(tmp_path, **{**kwargs, "fingerprint": "f2"})  # source changed: rebuild
    assert len(calls) == 2
    (tmp_path / "k.images.npy").write_bytes(b"broken")  # unreadable cache: rebuild, no crash
    data.cached_dataset(tmp_path, **{**kwargs, "fingerprint": "f2"})
    assert len(calls) == 3


def test_load_dataset_uses_cache_until_source_changes(tmp_path):
    root, cache = tmp_path / "fm", tmp_path / "cache"
    arrays = make_fashion(root)
    first = data.load_dataset("fashion_mnist", root=root, split="test", cache_dir=cache)
    np.testing.assert_array_equal(first.images[:, 0].numpy(), arrays["test"][0])
    assert len(list(cache.glob("fashion_mnist-test-*.json"))) == 1
    # Same size and mtime but other pixels: the cache must answer, so the decoder never ran.
    path = root / "t10k-images-idx3-ubyte"
    stat = path.stat()
    write_idx(path, 255 - arrays["test"][0], compress=False)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = data.load_dataset("fashion_mnist", root=root, split="test", cache_dir=cache)
    assert torch.equal(second.images, first.images)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # now the source changed
    third = data.load_dataset("fashion_mnist", root=root, split="test", cache_dir=cache)
    assert torch.equal(third.images, 255 - first.images)


def test_load_dataset_cifar10_from_zip_uses_cifar_order(tmp_path):
    make_zip(
        tmp_path / "c.zip",
        {"train/truck/0.png": rgb(0), "train/airplane/0.png": rgb(1), "train/cat/0.png": rgb(2)},
    )
    dataset = data.load_dataset(
        "cifar10", root=tmp_path / "c.zip", split="train", cache_dir=tmp_path / "cache"
    )
    assert dataset.classes == data.CIFAR10_CLASSES
    assert dataset.labels.tolist() == [0, 3, 9]
    again = data.load_dataset(
        "cifar10", root=tmp_path / "c.zip", split="train", cache_dir=tmp_path / "cache"
    )
    assert torch.equal(again.images, dataset.images)


def test_load_dataset_cifar10_pickles(tmp_path):
    raw, _ = make_cifar10(tmp_path / "data")
    dataset = data.load_dataset("cifar10", root=tmp_path / "data", split="test", cache_dir=None)
    np.testing.assert_array_equal(dataset.images.reshape(4, -1).numpy(), raw[20:])


def test_load_dataset_rejects_bad_names_and_options(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset"):
        data.load_dataset("mnist", split="train")
    with pytest.raises(ConfigError, match="classes"):
        data.load_dataset("fashion_mnist", split="train", classes=["a"])
    with pytest.raises(DataError, match="data.root"):
        data.load_dataset("cifar10", split="train")
    with pytest.raises(DataError, match="split"):
        data.load_dataset("synthetic", split="val")


def test_synthetic_is_deterministic_balanced_and_learnable():
    train = data.load_dataset("synthetic", split="train", size=400, image_size=8, seed=3)
    again = data.load_dataset("synthetic", split="train", size=400, image_size=8, seed=3)
    test = data.load_dataset("synthetic", split="test", size=400, image_size=8, seed=3)
    assert train.images.shape == (400, 3, 8, 8) and len(test) == 100
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert torch.bincount(train.labels).tolist() == [40] * 10
    # A nearest-class-mean classifier fitted on train separates the test split.
    features = train.images.flatten(1).float()
    means = torch.stack([features[train.labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(test.images.flatten(1).float(), means).argmin(1)
    assert (predicted == test.labels).float().mean() > 0.9


# ---------------------------------------------------------------------------------------------
# held-out split and statistics
# ---------------------------------------------------------------------------------------------


def test_holdout_split_deterministic_disjoint_stratified():
    labels = torch.arange(300) % 10
    train, val = data.holdout_split(labels, size=50, seed=7)
    train2, val2 = data.holdout_split(labels, size=50, seed=7)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert train.dtype == val.dtype == torch.int64
    assert len(val) == 50 and len(train) == 250
    assert sorted(torch.cat([train, val]).tolist()) == list(range(300))
    assert torch.bincount(labels[val], minlength=10).tolist() == [5] * 10
    assert not torch.equal(val, val.sort().values)  # shuffled, in a fixed order
    assert not torch.equal(data.holdout_split(labels, size=50, seed=8)[1], val)


def test_holdout_split_proportional_with_largest_remainder():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    _, val = data.holdout_split(labels, size=10, seed=0)
    assert torch.bincount(labels[val]).tolist() == [6, 3, 1]
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)  # quotas 2.5, 1.5, 1.0
    _, val = data.holdout_split(labels, size=5, seed=0)
    assert torch.bincount(labels[val], minlength=3).tolist() == [3, 1, 1]


def test_holdout_split_too_large():
    with pytest.raises(DataError, match="between 0 and 9"):
        data.holdout_split(torch.zeros(10, dtype=torch.int64), size=10, seed=0)


def test_channel_stats_matches_numpy():
    images = torch.randint(
        0, 256, (37, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    mean, std = data.channel_stats(images, chunk_size=8)
    scaled = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean.numpy(), scaled.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), scaled.std(axis=(0, 2, 3)), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------


def reference_crop_flip(images, padding, top, left, flips):
    """Naive per-sample crop and flip, numpy only."""
    x = images.numpy()
    height, width = x.shape[-2:]
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.empty_like(x)
    for i in range(len(x)):
        crop = padded[i, :, top[i] : top[i] + height, left[i] : left[i] + width]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return out


@pytest.mark.parametrize("shape", [(64, 1, 28, 28), (32, 3, 32, 32), (5, 2, 7, 9)])
def test_random_crop_flip_matches_reference(shape):
    images = torch.randint(
        0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    out = data.random_crop_flip(images, padding=4, generator=torch.Generator().manual_seed(5))
    top, left, flips = data.crop_flip_params(
        shape[0], padding=4, generator=torch.Generator().manual_seed(5)
    )
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert 0 < int(flips.sum()) < shape[0] and int(top.max()) <= 8
    np.testing.assert_array_equal(
        out.numpy(), reference_crop_flip(images, 4, top.tolist(), left.tolist(), flips.tolist())
    )


def test_crop_flip_special_cases():
    images = torch.randint(
        0, 256, (8, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(
        data.random_crop_flip(images, padding=0, generator=generator, flip=False), images
    )
    zeros = torch.zeros(8, dtype=torch.int64)
    flipped = data.apply_crop_flip(
        images, padding=0, top=zeros, left=zeros, flips=torch.ones(8, dtype=torch.bool)
    )
    assert torch.equal(flipped, images.flip(-1))
    corner = data.apply_crop_flip(images, padding=2, top=zeros, left=zeros, flips=zeros.bool())
    assert (corner[:, :, :2] == 0).all() and torch.equal(corner[:, :, 2:, 2:], images[:, :, :4, :4])


def test_pad_to_and_to_float():
    images = torch.randint(
        1, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    padded = data.pad_to(images, 32)
    assert padded.shape == (4, 1, 32, 32) and torch.equal(padded[:, :, 2:30, 2:30], images)
    assert int(padded.sum()) == int(images.sum())
    with pytest.raises(DataError, match="pad"):
        data.pad_to(images, 20)
    batch = torch.randint(
        0, 256, (4, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(4)
    )
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.25, 0.2, 0.1])
    out = data.to_float(batch, mean, std, device="cpu")
    expected = (batch.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    plain = data.to_float(batch, mean, std, channels_last=False)
    assert plain.is_contiguous()
    torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# batch streams
# ---------------------------------------------------------------------------------------------


def test_stream_resume_is_exact():
    dataset = data.synthetic_dataset(50, channels=1, size=6, num_classes=5, seed=0)
    make = partial(
        data.BatchStream,
        dataset,
        batch_size=8,
        seed=11,
        augment=partial(data.random_crop_flip, padding=2),
    )
    straight = make()
    assert straight.steps_per_epoch == 6
    expected = [next(straight) for _ in range(7)]  # crosses into epoch 1
    first = make()
    head = [next(first) for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 0, "position": 3}
    resumed = make()
    resumed.load_state_dict(state)
    got = head + [next(resumed) for _ in range(4)]
    for (x1, y1), (x2, y2) in zip(expected, got, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert resumed.state_dict() == {"epoch": 1, "position": 1}
    # Augmentation really changes images, and differs between batches of the same samples.
    raw = data.BatchStream(dataset, batch_size=8, seed=11)
    assert not torch.equal(next(raw)[0], expected[0][0])


def test_stream_epochs_cover_every_sample_once():
    stream = data.BatchStream(index_dataset(48), batch_size=8, seed=0)
    epoch0 = torch.cat([next(stream)[1] for _ in range(6)])
    epoch1 = torch.cat([next(stream)[1] for _ in range(6)])
    assert sorted(epoch0.tolist()) == list(range(48)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)
    last = data.BatchStream(index_dataset(10), batch_size=4, seed=0, drop_last=False)
    assert last.steps_per_epoch == 3 and [len(next(last)[1]) for _ in range(4)] == [4, 4, 2, 4]


def test_stream_rank_shards_concatenate_to_single_rank_batch():
    dataset = index_dataset(40)
    single = data.BatchStream(dataset, batch_size=8, seed=5)
    ranks = [
        data.BatchStream(dataset, batch_size=8, seed=5, rank=r, world_size=2) for r in range(2)
    ]
    for _ in range(7):
        images, labels = next(single)
        shares = [next(stream) for stream in ranks]
        assert all(len(share[1]) == 4 for share in shares)
        assert torch.equal(torch.cat([s[1] for s in shares]), labels)
        assert torch.equal(torch.cat([s[0] for s in shares]), images)


def test_augmented_rank_shards_concatenate_to_single_rank_batch():
    # Each rank augments only its share, yet draws as if it augmented the whole global
    # batch: N ranks together see exactly what one process with the same batch sees.
    dataset = data.synthetic_dataset(40, channels=1, size=6, num_classes=5, seed=1)
    augment = partial(data.random_crop_flip, padding=2)
    single = data.BatchStream(dataset, batch_size=8, seed=5, augment=augment)
    ranks = [
        data.BatchStream(dataset, batch_size=8, seed=5, augment=augment, rank=r, world_size=2)
        for r in range(2)
    ]
    raw = data.BatchStream(dataset, batch_size=8, seed=5)
    for _ in range(6):
        images, _ = next(single)
        assert not torch.equal(images, next(raw)[0])  # augmentation is on
        assert torch.equal(torch.cat([next(stream)[0] for stream in ranks]), images)
    with pytest.raises(DataError, match="outside a batch of 4"):
        augment(dataset.images[:3], generator=torch.Generator(), start=2, total=4)


def test_stream_errors():
    dataset = index_dataset(20)
    with pytest.raises(DataError, match="divide by the 3 ranks"):
        data.BatchStream(dataset, batch_size=8, seed=0, world_size=3)
    with pytest.raises(DataError, match="fewer than one batch"):
        data.BatchStream(dataset, batch_size=32, seed=0)
    stream = data.BatchStream(dataset, batch_size=8, seed=0)
    with pytest.raises(DataError, match="does not fit"):
        stream.load_state_dict({"epoch": 0, "position": 2})
    with pytest.raises(DataError, match="epoch"):
        stream.load_state_dict({"position": 0})


def test_iterate_batches_in_order_keeps_last_partial():
    dataset = index_dataset(10)
    batches = list(data.iterate_batches(dataset, batch_size=4))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([labels for _, labels in batches]), torch.arange(10))
    assert torch.equal(torch.cat([images for images, _ in batches]), dataset.images)


def test_array_dataset_subset_and_validation():
    dataset = index_dataset(6)
    part = dataset.subset([4, 1])
    assert part.labels.tolist() == [4, 1] and torch.equal(part.images[0], dataset.images[4])
    with pytest.raises(DataError, match="uint8"):
        data.ArrayDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64), ("a",))


def test_public_names_resolve_and_readers_are_torch_free():
    for name in data.__all__:
        assert getattr(data, name) is not None, name
    code = (
        "import sys, spos.data, spos.data.readers, spos.config; "
        "assert 'torch' not in sys.modules, 'the dataset registry imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dataset_names_are_the_registered_readers():
    from spos.config import config_from_dict
    from spos.data import readers

    assert data.DATASET_NAMES == tuple(readers._READERS)
    with pytest.raises(ConfigError, match="'data.dataset' must be one of"):
        config_from_dict({"data": {"dataset": "mnist"}})

# ---------------------------------------------------------------------------------------------
# the real Fashion-MNIST files, when the shared data folder is present
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_FASHION.is_dir(), reason=f"shared data {SHARED_FASHION} not present")
def test_real_fashion_mnist_statistics():
    train = data.read_fashion_mnist(SHARED_FASHION, "train")
    assert train.images.shape == (60000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    mean, std = data.channel_stats(train.images)
    assert abs(float(mean[0]) - 0.2860) < 1e-4 and abs(float(std[0]) - 0.3530) < 1e-4


# --- pinned staging for a GPU (issue 18 item 2) ------------------------------------------

_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")


def test_gather_rows_equals_plain_indexing():
    images = torch.randint(0, 256, (50, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(50) * 3
    index = torch.tensor([49, 0, 7, 7, 23])
    gathered = data.gather_rows(images, index)
    assert gathered.dtype == torch.uint8 and gathered.shape == (5, 3, 5, 7) and gathered.is_contiguous()
    assert torch.equal(gathered, images[index])
    assert data.gather_rows(labels, index).tolist() == [147, 0, 21, 21, 69]


def test_an_in_memory_stream_with_a_cpu_device_is_unchanged():
    dataset = data.synthetic_dataset(40, size=8, seed=0)
    augment = partial(data.random_crop_flip, padding=2)

    def batches(**kwargs):
        stream = data.BatchStream(dataset, batch_size=8, seed=1, augment=augment, **kwargs)
        return [next(stream) for _ in range(6)]

    reference = batches()
    for got, expected in zip(batches(device="cpu", pin_memory=True), reference, strict=True):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@_CUDA
def test_gather_rows_into_pinned_memory():
    images = torch.randint(0, 256, (20, 3, 4, 4), dtype=torch.uint8).pin_memory()
    index = torch.tensor([3, 1, 19])
    gathered = data.gather_rows(images, index, pin=True)
    assert gathered.is_pinned() and not images[index].is_pinned()
    assert torch.equal(gathered, images[index])


@_CUDA
def test_a_pinned_host_dataset_is_staged_copied_and_augmented_on_the_gpu():
    dataset = data.synthetic_dataset(40, size=8, seed=0)
    pinned = data.ArrayDataset(dataset.images.pin_memory(), dataset.labels.pin_memory(), dataset.classes)
    augment = partial(data.random_crop_flip, padding=2)
    plain = data.BatchStream(dataset, batch_size=8, seed=1, augment=augment)
    staged = data.BatchStream(pinned, batch_size=8, seed=1, augment=augment, device="cuda")
    for _ in range(6):
        (images, labels), (expected_images, expected_labels) = next(staged), next(plain)
        assert images.is_cuda and labels.is_cuda
        assert torch.equal(images.cpu(), expected_images) and torch.equal(labels.cpu(), expected_labels)
