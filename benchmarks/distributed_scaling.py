"""Distributed scaling: supernet training on 1 process against 2 under torchrun (issue 6).

What it measures, on this machine, with the same global batch and the same steps:

(A) ``1x1``: ``python -m spos train-supernet`` on 1 process with 1 thread;
(C) ``2x1``: ``python -m torch.distributed.run --nproc_per_node=2 -m spos train-supernet``:
    2 gloo processes with 1 thread each, each taking half of every global batch;
(B) ``1x2``, only with ``--settings 1x1,1x2,2x1``: 1 process with 2 threads, the other way to
    use 2 cores. Left out by default: on a loaded machine 2 OpenMP threads that spin-wait for
    each other collapse (60-210 images/s against 1 thread's 1500 when this was written), which
    makes runs slow and the ratio meaningless.

The figure per run is the stage's own ``images_per_s`` from ``summary.json``: global images
per second of the training loop on rank 0 (process start-up, data preparation and the panel
evaluation excluded). Settings alternate round by round so load from other jobs spreads over
all of them; the headline is the ratio of the medians, C / A (and C / B). On 2 idle cores C / A
can approach 2 less the cost of one gradient all-reduce per step; on cores shared with other
jobs the second process mostly competes for the same time slices. The point is that distributed training is correct (see
``tests/distributed``) and its cost is measured, not that 2 CPU processes are fast.

Run:  .venv/bin/python benchmarks/distributed_scaling.py      (about 2-3 minutes on 2 cores)
Writes benchmarks/results/distributed_scaling.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _overrides(args: argparse.Namespace, threads: int) -> list[str]:
    return [
        f"threads={threads}",
        f"supernet.steps={args.steps}",
        f"supernet.batch_size={args.batch_size}",
        f"runtime.log_every={args.steps}",
        f"supernet.checkpoint_every={args.steps}",
        "supernet.panel.eval_every=0",
        "supernet.panel.size=0",
        f"data.synthetic_size={args.images}",
        f"data.synthetic_image_size={args.image_size}",
    ]


def command(args: argparse.Namespace, setting: str, out: Path) -> list[str]:
    """The CLI command of one setting (``1x1``, ``1x2`` or ``2x1``: processes x threads)."""
    processes, threads = (int(part) for part in setting.split("x"))
    stage = ["-m", "spos", "train-supernet", "--config", str(args.config), "--out", str(out)]
    launcher = [sys.executable]
    if processes > 1:
        launcher += [
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            f"--master_port={_free_port()}",
        ]
    return [*launcher, *stage, *_overrides(args, threads)]


def run_once(args: argparse.Namespace, setting: str, workdir: Path, index: int) -> dict[str, Any]:
    out = workdir / f"{setting}-{index}"
    threads = setting.split("x")[1]
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    result = subprocess.run(
        command(args, setting, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{setting} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())["supernet"]
    return {
        "setting": setting,
        "images_per_s": summary["images_per_s"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds": round(wall, 2),
        "world_size": summary["world_size"],
        "parameters_equal_on_ranks": len(set(summary["parameters_sha256_per_rank"])) == 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "smoke.yaml")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--images", type=int, default=2048, help="synthetic training images")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--settings", default="1x1,2x1", help="processes x threads, comma-separated (1x2 possible)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "distributed_scaling.json")
    args = parser.parse_args()

    settings = tuple(args.settings.split(","))
    if not {"1x1", "2x1"} <= set(settings) or not set(settings) <= {"1x1", "1x2", "2x1"}:
        raise SystemExit("--settings must include 1x1 and 2x1, and may add 1x2")
    load_start = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="spos-scaling-") as tmp:
        for index in range(args.rounds):
            for setting in settings:
                record = run_once(args, setting, Path(tmp), index)
                runs.append(record)
                print(f"round {index} {setting}: {record['images_per_s']:.1f} img/s")
    load_end = os.getloadavg()
    median = {
        s: statistics.median(r["images_per_s"] for r in runs if r["setting"] == s) for s in settings
    }
    ratios = {f"2x1_over_{s}": median["2x1"] / median[s] for s in settings if s != "2x1"}
    exact = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributed_scaling.py" + (
        " " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""
    )
    result = {
        "command": exact,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": load_end,
        "settings": {
            "config": str(args.config.relative_to(ROOT)),
            "steps": args.steps,
            "global_batch": args.batch_size,
            "synthetic_images": args.images,
            "image_size": args.image_size,
            "rounds": args.rounds,
        },
        "median_images_per_s": median,
        "ratios": ratios,
        "runs": runs,
        "example_commands": {s: " ".join(command(args, s, Path("RUN"))[1:]) for s in settings},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(result))
    print(
        "median img/s: "
        + ", ".join(f"{s} {median[s]:.1f}" for s in settings)
        + "; ratios: "
        + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
    )


NAMES = {
    "1x1": " (python -m spos)",
    "1x2": " (python -m spos, threads=2)",
    "2x1": " (torchrun, DDP, gloo)",
}


def _markdown(result: dict[str, Any]) -> str:
    median, ratios, settings = result["median_images_per_s"], result["ratios"], result["settings"]
    lines = [
        "# Distributed scaling: supernet training, 1 process against 2 (torchrun, gloo, CPU)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; torch {result['torch']}; {result['cpu_count']} CPU cores; "
        f"load average {result['load_average_start'][0]:.2f} at start, "
        f"{result['load_average_end'][0]:.2f} at end.",
        "",
        f"Work: `{settings['config']}` (shufflenet_cifar smoke layout), {settings['steps']} steps, "
        f"global batch {settings['global_batch']}, synthetic {settings['image_size']}x"
        f"{settings['image_size']} images; {settings['rounds']} rounds, settings interleaved. "
        "Figure: the stage's training-loop images/s (start-up excluded), median over rounds.",
        "",
        "| setting (processes x threads) | median images/s |",
        "|---|---|",
        *(f"| {s}{NAMES[s]} | {median[s]:.1f} |" for s in median),
        "",
        "Ratios of the medians: "
        + "; ".join(f"{k.replace('_over_', ' / ')} = **{v:.2f}**" for k, v in ratios.items())
        + ".",
        "",
        "Per run:",
        "",
        "| setting | images/s | train s | wall s | parameters equal on ranks |",
        "|---|---|---|---|---|",
        *(
            f"| {r['setting']} | {r['images_per_s']:.1f} | {r['train_seconds']} | "
            f"{r['wall_seconds']} | {r['parameters_equal_on_ranks']} |"
            for r in result["runs"]
        ),
        "",
        "Indicative only: the 2 cores were shared with other engineers' CPU jobs during the "
        "run (see the load averages), and 2 processes on 2 cores compete with each other and "
        "with those jobs; DDP also adds one gradient all-reduce per step. The benchmark shows "
        "the distributed path works and what it costs here, not multi-GPU speed-up.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
