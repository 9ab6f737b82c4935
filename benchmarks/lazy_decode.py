"""Streaming decode throughput of ``data.lazy`` (spos.data.LazyImageFolder) on this CPU.

Writes ImageNet-like JPEGs (random sizes around 500x375, quality 90, smooth content plus
noise) to a temporary folder, then times ``load_batch`` for training crops
(RandomResizedCrop 224 + flip + ColorJitter 0.4) and evaluation crops (resize 256, centre
crop 224) with 1 and N decoding threads, and the training crop with JPEG DCT-scale decoding
off (a full decode, for the ratio). Prints images per second.

    .venv/bin/python benchmarks/lazy_decode.py [--images 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

from spos import data
from spos.data import lazy


def write_tree(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    folder = root / "train" / "n00000000"
    folder.mkdir(parents=True)
    for i in range(count):
        width, height = int(rng.integers(400, 600)), int(rng.integers(300, 450))
        y, x = np.mgrid[0:height, 0:width] / 100.0
        smooth = np.stack([127 + 90 * np.sin(x * (c + 1) + y * (2 - c) + i) for c in range(3)], -1)
        pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)


def rate(folder: data.LazyImageFolder, *, train: bool, batch: int, repeats: int = 2) -> float:
    indices = torch.arange(len(folder))
    best = float("inf")
    for repeat in range(repeats):
        start = time.perf_counter()
        for first in range(0, len(folder), batch):
            generator = torch.Generator().manual_seed(repeat * 1000 + first)
            folder.load_batch(
                indices[first : first + batch], size=224, train=train, generator=generator,
                color_jitter=0.4 if train else 0.0,
            )  # fmt: skip
        best = min(best, time.perf_counter() - start)
    return len(folder) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        write_tree(Path(tmp), args.images)
        for threads in sorted({1, args.threads}):
            folder = data.LazyImageFolder(tmp, "train", num_workers=threads)
            train = rate(folder, train=True, batch=args.batch)
            evaluate = rate(folder, train=False, batch=args.batch)
            # _draft lives in spos.data.lazy since the data package split; patching the package
            # attribute (as this script did) raised AttributeError.
            with mock.patch.object(lazy, "_draft", lambda image, width, height: 1.0):
                full = rate(folder, train=True, batch=args.batch)
            print(
                f"{threads} thread(s): train crops {train:.0f} img/s, eval crops {evaluate:.0f} img/s, "
                f"train crops with full-size JPEG decoding {full:.0f} img/s "
                f"(DCT-scale speed-up x{train / full:.2f})"
            )


if __name__ == "__main__":
    main()
