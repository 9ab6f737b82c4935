"""Tests for streaming image folders (data.lazy): decode-time crops, batched colour
augmentation, split-invariant random draws, and the loader-backed, resumable BatchStream."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from spos import data
from spos.errors import DataError


def _smooth(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth RGB image (so that decode-scale differences stay small)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    phase = rng.uniform(0, 6, 3)
    channels = [127 + 100 * np.sin(4 * x + 3 * y + p) for p in phase]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """train/<class>/ with JPEGs and PNGs of different sizes, one greyscale; val/ as the test split."""
    root = tmp_path_factory.mktemp("lazy") / "tree"
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("val", 2)):
        for label, name in enumerate(["a", "b"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                height, width = (int(v) for v in rng.integers(20, 90, 2))
                pixels = _smooth(height, width, seed=10 * label + i)
                if i == 1:
                    Image.fromarray(pixels[..., 0]).save(folder / f"{i}.JPEG", quality=95)
                elif i % 2:
                    Image.fromarray(pixels).save(folder / f"{i}.png")
                else:
                    Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=95)
    big = root / "big" / "c"
    big.mkdir(parents=True)
    Image.fromarray(_smooth(400, 300, seed=99)).save(big / "x.jpg", quality=98)
    return root


def test_val_folder_is_the_test_split(tree):
    folder = data.LazyImageFolder(tree, "test", num_workers=1)
    assert len(folder) == 4 and folder.classes == ("a", "b")


def test_shapes_and_ranges(tree):
    folder = data.LazyImageFolder(tree, "train", num_workers=2)
    assert len(folder) == 12 and folder.labels.tolist() == [0] * 6 + [1] * 6
    evaluated = folder.load_batch(range(12), size=24, train=False)
    assert evaluated.shape == (12, 3, 24, 24) and evaluated.dtype == torch.uint8
    assert torch.equal(evaluated[1, 0], evaluated[1, 1])  # the greyscale JPEG comes out RGB grey
    generator = torch.Generator().manual_seed(0)
    trained = folder.load_batch(
        range(12), size=24, train=True, generator=generator, color_jitter=0.4, lighting=0.1
    )
    assert trained.shape == (12, 3, 24, 24) and trained.dtype == torch.uint8
    assert trained.is_contiguous() and 0 < trained.float().mean() < 255
    with pytest.raises(ValueError, match="generator"):
        folder.load_batch([0], size=8, train=True)


def test_draws_for_the_global_batch_so_shares_equal_the_whole(tree):
    folder = data.LazyImageFolder(tree, "train", num_workers=2)
    load = functools.partial(folder.load_batch, size=16, train=True, color_jitter=0.4, lighting=0.1)
    indices = torch.tensor([5, 0, 11, 3, 7, 2])
    whole = load(indices, generator=torch.Generator().manual_seed(3))
    shares = [
        load(
            indices[start : start + 2],
            generator=torch.Generator().manual_seed(3),
            start=start,
            total=6,
        )
        for start in (0, 2, 4)
    ]
    assert torch.equal(torch.cat(shares), whole)
    single = data.LazyImageFolder(tree, "train", num_workers=1)
    assert torch.equal(
        single.load_batch(indices, size=16, train=True, color_jitter=0.4, lighting=0.1,
                          generator=torch.Generator().manual_seed(3)),
        whole,
    )  # fmt: skip
    with pytest.raises(DataError, match="outside a batch"):
        load(indices[:2], generator=torch.Generator(), start=5, total=6)


def test_reduced_scale_jpeg_decoding_matches_a_full_decode(tree):
    """The DCT-scale shortcut changes pixels only a little, and the crop lands where it should."""
    folder = data.LazyImageFolder(tree / "big", "train", num_workers=1)  # tree without splits
    full = Image.open(tree / "big" / "c" / "x.jpg").convert("RGB")  # 300x400, decoded at full size
    evaluated = folder.load_batch([0], size=56, train=False)[0]
    reference = full.resize((64, 85), Image.Resampling.BILINEAR).crop((4, 14, 60, 70))
    expected = torch.from_numpy(np.array(reference)).permute(2, 0, 1)
    assert (evaluated.float() - expected.float()).abs().mean() < 3.0
    generator = torch.Generator().manual_seed(5)
    trained = folder.load_batch([0], size=32, train=True, flip=False, generator=generator)[0]
    uniforms = torch.rand(1, 10, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    left, top, width, height = data.random_resized_crop_box(300, 400, uniforms[0].tolist())
    reference = full.resize(
        (32, 32), Image.Resampling.BILINEAR, box=(left, top, left + width, top + height)
    )
    expected = torch.from_numpy(np.array(reference)).permute(2, 0, 1)
    assert (trained.float() - expected.float()).abs().mean() < 3.0


def test_colour_jitter_and_lighting_numbers():
    images = torch.tensor([[[[100, 200]], [[50, 50]], [[0, 250]]]], dtype=torch.uint8)  # 1x3x1x2
    same = data.jitter_colors(images, torch.ones(1, 3))
    assert torch.equal(same, images)
    brighter = data.jitter_colors(images, torch.tensor([[2.0, 1.0, 1.0]]))
    assert brighter[0, :, 0, 0].tolist() == [200, 100, 0] and brighter[0, 0, 0, 1] == 255
    grey = data.jitter_colors(images, torch.tensor([[1.0, 1.0, 0.0]]))
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    luma = 0.299 * 100 + 0.587 * 50 + 0.114 * 0
    assert abs(int(grey[0, 0, 0, 0]) - luma) <= 0.5 + 1e-6
    flat = data.jitter_colors(images, torch.tensor([[1.0, 0.0, 1.0]]))
    assert flat.unique().numel() == 1  # contrast 0: every pixel the mean grey
    assert torch.equal(data.add_lighting(images, torch.zeros(1, 3)), images)
    lit = data.add_lighting(images, torch.tensor([[1.0, 0.0, 0.0]]))
    shift = 0.2175 * torch.tensor([-0.5675, -0.5808, -0.5836]) * 255
    assert torch.allclose(
        lit[0, :, 0, 0].float(), (images[0, :, 0, 0].float() + shift).round().clamp(0, 255)
    )


def test_loader_stream_is_resumable_rank_invariant_and_prefetch_neutral(tree):
    folder = data.LazyImageFolder(tree, "train", num_workers=2)
    loader = functools.partial(folder.load_batch, size=12, train=True, color_jitter=0.4)

    def stream(**kwargs):
        return data.BatchStream(folder, batch_size=4, seed=7, loader=loader, **kwargs)

    reference = [next(stream_) for stream_ in [stream()] for _ in range(7)]  # crosses 2 epochs
    prefetched = stream(prefetch=True)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(reference, [next(prefetched) for _ in range(7)], strict=True)
    )
    resumed = stream(prefetch=True)
    next(resumed)  # leaves a prefetched batch behind, which the restore must discard
    resumed.load_state_dict({"epoch": 1, "position": 1})
    assert torch.equal(next(resumed)[0], reference[4][0]) and torch.equal(
        next(resumed)[0], reference[5][0]
    )
    ranks = [stream(rank=r, world_size=2) for r in (0, 1)]
    for images, labels in reference[:4]:
        shares = [next(s) for s in ranks]
        assert torch.equal(torch.cat([s[0] for s in shares]), images)
        assert torch.equal(torch.cat([s[1] for s in shares]), labels)
    with pytest.raises(ValueError, match="loader"):
        data.BatchStream(folder, batch_size=4, seed=0)


def test_iterate_batches_over_a_lazy_folder(tree):
    folder = data.LazyImageFolder(tree, "train", num_workers=2).subset([3, 1, 10, 4, 0])
    batches = list(data.iterate_batches(folder, batch_size=2, size=8))
    assert [len(labels) for _, labels in batches] == [2, 2, 1]
    assert torch.cat([labels for _, labels in batches]).tolist() == [0, 0, 1, 0, 0]
    assert torch.equal(
        torch.cat([images for images, _ in batches]),
        folder.load_batch(range(5), size=8, train=False),
    )


# --- DataLoader worker processes (data.worker_processes) ---------------------------------


def _zipped(tree, tmp_path):
    import zipfile

    archive = tmp_path / "tree.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted((tree / "train").rglob("*")):
            if path.is_file():
                handle.write(path, path.relative_to(tree).as_posix())
    return archive


def _equal_batches(left, right):
    return len(left) == len(right) and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(left, right, strict=True)
    )


def test_folder_pickles_without_its_zip_handle_and_reopens(tree, tmp_path):
    import pickle

    folder = data.LazyImageFolder(_zipped(tree, tmp_path), "train", num_workers=1)
    expected = folder.load_batch([0, 5, 7], size=12, train=False)
    assert folder._archive is not None  # open now, and holding a lock
    copy_ = pickle.loads(pickle.dumps(folder))
    assert copy_._archive is None and folder._archive is not None
    assert torch.equal(copy_.load_batch([0, 5, 7], size=12, train=False), expected)
    assert copy_._archive is not None  # reopened on its first read
    folder.close()
    copy_.close()


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "zip"])
def test_worker_processes_give_the_same_batches_resume_and_shares(tree, tmp_path, archive):
    import multiprocessing

    root = _zipped(tree, tmp_path) if archive else tree
    folder = data.LazyImageFolder(root, "train", num_workers=2)
    loader = functools.partial(folder.load_batch, size=12, train=True, color_jitter=0.4, lighting=0.1)
    folder.load_batch([0], size=8, train=False)  # the parent holds an open zip when forking

    def stream(**kwargs):
        return data.BatchStream(folder, batch_size=4, seed=7, loader=loader, **kwargs)

    before = set(multiprocessing.active_children())
    plain = stream()
    reference = [next(plain) for _ in range(7)]  # 3 batches per epoch: crosses two epochs
    workers = stream(worker_processes=2, prefetch_depth=3, pin_memory=True)  # pin: no-op on CPU
    assert _equal_batches([next(workers) for _ in range(7)], reference)
    assert workers.state_dict() == {"epoch": 2, "position": 1}
    workers.load_state_dict({"epoch": 1, "position": 1})  # back, mid-epoch, batches in flight
    assert _equal_batches([next(workers) for _ in range(3)], reference[4:7])
    children = set(multiprocessing.active_children()) - before
    assert len(children) == 2
    workers.close()
    assert not any(child.is_alive() for child in children)

    ranks = [stream(rank=r, world_size=2, worker_processes=1) for r in (0, 1)]
    for images, labels in reference:
        shares = [next(s) for s in ranks]
        assert torch.equal(torch.cat([s[0] for s in shares]), images)
        assert torch.equal(torch.cat([s[1] for s in shares]), labels)
    for s in ranks:
        s.close()
    assert set(multiprocessing.active_children()) <= before


def test_worker_processes_start_by_spawn_too(tree):
    """Under spawn (Python 3.14's default is forkserver) the stream and folder are pickled."""
    folder = data.LazyImageFolder(tree, "train", num_workers=1)
    loader = functools.partial(folder.load_batch, size=8, train=True)
    plain = data.BatchStream(folder, batch_size=4, seed=3, loader=loader)
    with data.BatchStream(
        folder, batch_size=4, seed=3, loader=loader, worker_processes=1, multiprocessing_context="spawn"
    ) as spawned:
        assert _equal_batches([next(spawned) for _ in range(2)], [next(plain) for _ in range(2)])


def test_a_corrupt_image_in_a_worker_raises_the_same_data_error(tree, tmp_path):
    import multiprocessing
    import shutil

    root = tmp_path / "corrupt"
    shutil.copytree(tree / "train", root / "train")
    (root / "train" / "a" / "0.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    folder = data.LazyImageFolder(root, "train", num_workers=1)
    loader = functools.partial(folder.load_batch, size=8, train=True)

    def first_error(**kwargs):
        stream = data.BatchStream(folder, batch_size=12, seed=0, loader=loader, **kwargs)
        with pytest.raises(DataError) as caught:
            next(stream)
        assert stream.state_dict() == {"epoch": 0, "position": 0}  # nothing was consumed
        with pytest.raises(DataError):  # asked again, the same batch fails again
            next(stream)
        stream.close()
        return str(caught.value)

    before = set(multiprocessing.active_children())
    in_process = first_error()
    assert "cannot decode image" in in_process and "0.JPEG" in in_process
    assert first_error(worker_processes=1) == in_process
    assert first_error(prefetch=True) == in_process
    assert set(multiprocessing.active_children()) <= before


def test_worker_processes_need_a_loader():
    dataset = data.ArrayDataset(torch.zeros(8, 1, 4, 4, dtype=torch.uint8), torch.zeros(8, dtype=torch.int64), ("x",))
    with pytest.raises(ValueError, match="loader"):
        data.BatchStream(dataset, batch_size=4, seed=0, worker_processes=1)
    with pytest.raises(DataError, match="prefetch_depth"):
        data.BatchStream(dataset, batch_size=4, seed=0, prefetch_depth=0)


_INHERITED = {}  # reaches a forked child by inheritance, not pickling


def _inherited_archive_state():
    folder = _INHERITED["folder"]
    return folder._archive is None, folder._archive_lock.acquire(timeout=2)


def test_a_forked_child_drops_the_inherited_zip_handle_and_lock(tree, tmp_path):
    import multiprocessing

    folder = data.LazyImageFolder(_zipped(tree, tmp_path), "train", num_workers=1)
    folder.load_batch([0], size=8, train=False)
    _INHERITED["folder"] = folder
    with folder._archive_lock:  # held by this thread while the child is forked
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply(_inherited_archive_state) == (True, True)
    _INHERITED.clear()
    assert folder._archive is not None
    folder.close()


def test_dropping_a_worker_stream_stops_its_workers(tree):
    import gc
    import multiprocessing

    folder = data.LazyImageFolder(tree, "train", num_workers=1)
    loader = functools.partial(folder.load_batch, size=8, train=True)
    before = set(multiprocessing.active_children())
    stream = data.BatchStream(folder, batch_size=4, seed=0, loader=loader, worker_processes=1)
    next(stream)
    children = list(set(multiprocessing.active_children()) - before)
    assert len(children) == 1
    gc.disable()  # no cycle collector: reference counting alone must release the workers
    try:
        del stream
        assert not children[0].is_alive()
    finally:
        gc.enable()


# --- the data config: worker processes, prefetch depth, decode backend -------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.worker_processes=-1"], "'data.worker_processes' must be >= 0"),
        (["data.worker_processes=2"], "'data.worker_processes' decodes lazily read images"),
        (["data.prefetch_batches=0"], "'data.prefetch_batches' must be >= 1"),
        (["data.decode_backend=gpu"], "'data.decode_backend' must be one of"),
        (["data.decode_backend=nvjpeg"], "'data.decode_backend' nvjpeg decodes lazily read JPEGs"),
        (
            ["data.dataset=image_folder", "data.lazy=true", "data.decode_backend=nvjpeg", "data.worker_processes=2"],
            "CUDA cannot be used in forked DataLoader workers",
        ),
    ],
)
def test_bad_loader_settings_name_the_field(overrides, message):
    from spos.config import load_config
    from spos.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_nvjpeg_without_torchvision_or_cuda_is_one_clear_error(tree, monkeypatch):
    """Only the error path can run here (no GPU); the decode itself is untested on CPU."""
    import sys
    import types

    from spos.errors import ConfigError

    data.check_decode_backend("cpu")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    with pytest.raises(ConfigError, match="torchvision is not installed.*or set data.decode_backend=cpu"):
        data.LazyImageFolder(tree, "train", decode_backend="nvjpeg")
    fake = types.ModuleType("torchvision")
    fake.io = types.ModuleType("torchvision.io")
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.io", fake.io)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available.*or set data.decode_backend=cpu"):
        data.check_decode_backend("nvjpeg")
    with pytest.raises(ConfigError, match="must be one of"):
        data.check_decode_backend("dali")


def test_train_stream_runs_the_configured_worker_processes(tree):
    import multiprocessing

    from spos.config import load_config
    from spos.data.prepare import prepare_data, train_stream
    from spos.dist import Runtime

    def stream(*extra):
        config = load_config(
            None,
            ["data.dataset=image_folder", "data.lazy=true", f"data.root={tree}", "data.val_size=2",
             "data.input_size=8", "data.color_jitter=0.4", *extra],
        )  # fmt: skip
        prepared = prepare_data(config.data, seed=0)
        return train_stream(config.data, prepared, Runtime(torch.device("cpu")), batch_size=4, seed=5)

    before = set(multiprocessing.active_children())
    default = stream()
    assert default.worker_processes == 0 and default.prefetch and not default.pin_memory
    workers = stream("data.worker_processes=2", "data.prefetch_batches=3")
    assert workers.worker_processes == 2 and workers.prefetch_depth == 3
    assert workers.loader.func.__self__.num_workers == 1  # one thread in each worker process
    assert _equal_batches([next(workers) for _ in range(4)], [next(default) for _ in range(4)])
    workers.close()
    default.close()
    assert set(multiprocessing.active_children()) <= before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
@pytest.mark.parametrize("worker_processes", [0, 1])
def test_lazy_batches_come_pinned_when_asked(tree, worker_processes):
    folder = data.LazyImageFolder(tree, "train", num_workers=1)
    loader = functools.partial(folder.load_batch, size=8, train=True)
    plain = data.BatchStream(folder, batch_size=4, seed=2, loader=loader)
    with data.BatchStream(
        folder, batch_size=4, seed=2, loader=loader, prefetch=True, pin_memory=True,
        worker_processes=worker_processes,
    ) as pinned:  # fmt: skip
        for _ in range(4):
            (images, labels), expected = next(pinned), next(plain)
            assert images.is_pinned() and labels.is_pinned()
            assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])
