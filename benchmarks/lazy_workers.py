"""Decoded training images/s of ``data.lazy`` in the training process against DataLoader workers.

Issue 18 item 1: how many decoding workers does a GPU need? For each dataset it times the
training stream (:class:`spos.data.BatchStream` over a :class:`spos.data.LazyImageFolder`,
RandomResizedCrop + flip) with nothing else to do, so the figure is pure input-pipeline
throughput, for:

* ``in-process x T``: ``data.worker_processes=0`` (the default), T decoding threads in the
  training process, batches prepared ahead by one background thread;
* ``workers x P``: ``data.worker_processes=P``, one decoding thread in each process.

"Per worker" divides by T or P. Datasets:

* ``cifar10-zip``: the CIFAR-10 JPEG zip (32x32 JPEGs read from the zip, 32-pixel crops, no
  colour jitter), a seeded subset of ``--cifar-images`` training images; skipped with a
  message if the zip is missing;
* ``generated-224``: ``--images`` generated ImageNet-like JPEGs (random sizes around 500x375,
  quality 90, as ``benchmarks/lazy_decode.py``) in a temporary folder, 224-pixel crops with
  ColorJitter(0.4) (the official SPOS ImageNet recipe).

The configurations are measured in interleaved rounds (each round runs every configuration
once; the best round counts), so the ratios compare like with like on a loaded machine. Worker
start-up (forking, first batch) is timed apart from the steady rate.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/lazy_workers.py
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from lazy_decode import (
    write_tree,  # the same generated ImageNet-like JPEGs (benchmarks/ is on sys.path)
)

from spos import data

CIFAR_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg" / "cifar10_jpeg.zip"
RESULTS = Path(__file__).resolve().parent / "results"



def run_once(
    folder: data.LazyImageFolder, *, mode: str, count: int, size: int, jitter: float, batch: int, batches: int
) -> dict[str, float]:
    view = data.LazyImageFolder.__new__(data.LazyImageFolder)
    view.__setstate__(folder.__getstate__())  # a fresh copy: no zip handle shared with the last run
    view.num_workers = count if mode == "in-process" else 1
    loader = functools.partial(view.load_batch, size=size, train=True, color_jitter=jitter)
    workers = count if mode == "workers" else 0
    stream = data.BatchStream(
        view, batch_size=batch, seed=0, loader=loader, prefetch=True, prefetch_depth=2, worker_processes=workers
    )
    try:
        start = time.perf_counter()
        next(stream)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        steady = time.perf_counter() - start
    finally:
        stream.close()
        view.close()
    return {"first_batch_s": first, "images_per_s": batches * batch / steady}


def measure(name: str, folder: data.LazyImageFolder, args: argparse.Namespace, *, size: int, jitter: float) -> list[dict]:
    configs = [("in-process", 1), ("in-process", 2), ("workers", 1), ("workers", 2)]
    batches = args.batches if name == "cifar10-zip" else args.batches_224
    rounds: dict[tuple[str, int], list[dict]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for mode, count in configs:
            rounds[(mode, count)].append(
                run_once(folder, mode=mode, count=count, size=size, jitter=jitter, batch=args.batch, batches=batches)
            )
    rows = []
    for (mode, count), runs in rounds.items():
        best = max(run["images_per_s"] for run in runs)
        rows.append(
            {
                "dataset": name,
                "mode": mode,
                "count": count,
                "images_per_s": best,
                "per_worker": best / count,
                "rounds": [run["images_per_s"] for run in runs],
                "first_batch_s": min(run["first_batch_s"] for run in runs),
                "images_timed": batches * args.batch,
            }
        )
    base = rows[0]["images_per_s"]
    for row in rows:
        row["vs_in_process_1"] = row["images_per_s"] / base
    return rows


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320, help="generated 500x375-ish JPEGs")
    parser.add_argument("--cifar-images", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=24, help="timed batches (CIFAR)")
    parser.add_argument("--batches-224", type=int, default=8, help="timed batches (generated)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cifar-zip", type=Path, default=CIFAR_ZIP)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = load_average()
    rows: list[dict] = []
    notes: list[str] = []
    if args.cifar_zip.exists():
        cifar = data.LazyImageFolder(args.cifar_zip, "train")
        subset = torch.randperm(len(cifar), generator=torch.Generator().manual_seed(0))[: args.cifar_images]
        rows += measure("cifar10-zip", cifar.subset(subset), args, size=32, jitter=0.0)
    else:
        notes.append(f"CIFAR-10 JPEG zip not found at {args.cifar_zip}: skipped")
        print(notes[-1])
    with tempfile.TemporaryDirectory() as tmp:
        write_tree(Path(tmp), args.images)
        rows += measure("generated-224", data.LazyImageFolder(tmp, "train"), args, size=224, jitter=0.4)
    load_end = load_average()

    header = "| dataset | configuration | images/s | per worker | vs in-process x1 | first batch (s) | rounds (images/s) |"
    lines = [header, "|---|---|---:|---:|---:|---:|---|"]
    for row in rows:
        label = f"{row['mode']} x{row['count']}"
        lines.append(
            f"| {row['dataset']} | {label} | {row['images_per_s']:.0f} | {row['per_worker']:.0f} | "
            f"{row['vs_in_process_1']:.2f} | {row['first_batch_s']:.2f} | "
            + ", ".join(f"{v:.0f}" for v in row["rounds"])
            + " |"
        )
    table = "\n".join(lines)
    print(table)
    loaded = max(load_start, load_end) > 2
    if loaded:
        notes.append(
            f"The machine was loaded by other jobs (1-minute load average {load_start:.2f} at start, "
            f"{load_end:.2f} at end, on {os.cpu_count()} cores): absolute rates are low and scaling with "
            "more workers is understated; compare the ratios within a round."
        )
    command = "OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/lazy_workers.py"
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": load_end,
        "batch": args.batch,
        "rounds": args.rounds,
    }
    (RESULTS / "lazy_workers.json").write_text(json.dumps({"meta": meta, "rows": rows, "notes": notes}, indent=2) + "\n")
    (RESULTS / "lazy_workers.md").write_text(
        "# Lazy decoding: in-process threads against DataLoader worker processes (issue 18 item 1)\n\n"
        f"`{command}`\n\n"
        f"{meta['date']}, torch {meta['torch']}, {meta['cores']} cores, batch {args.batch}, "
        f"best of {args.rounds} interleaved rounds. Load average (1 min) {load_start:.2f} at start, "
        f"{load_end:.2f} at end.\n\n"
        "Training crops (RandomResizedCrop + flip; generated-224 also ColorJitter 0.4) decoded per second "
        "by the stream alone, nothing training. \"per worker\": divided by the decoding threads "
        "(in-process) or worker processes. First batch: start-up plus one batch.\n\n"
        f"{table}\n\n" + "".join(f"- {note}\n" for note in notes)
    )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
