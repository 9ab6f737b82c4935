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
