"""Width supernet convergence: full-width paths of a channel supernet vs the block supernet.

Issue 7 asks whether a block + channel supernet (``shufflenet_channel_cifar``, 8 mid-width
scales per block, the max-width weights sliced per path) still trains its full-width paths as
well as the block-only supernet (``shufflenet_cifar``) given the same optimiser steps, and
whether warming up at full width (``supernet.sampler.warmup_steps``, then widening over
``supernet.sampler.widen_steps``) helps. Three supernets are trained with the supernet stage on
Fashion-MNIST with identical recipes and seeds:

* ``block``: the block-only supernet;
* ``channel``: the channel supernet, widths uniform from the first step;
* ``channel+warmup``: the channel supernet, widths held at 1.0 for the first quarter of the
  steps, then widened linearly (nearest scales first) over the next half.

Then a fixed panel of block choices is scored on each (BN recalibration + validation top-1,
as search does), with every width at 1.0 on the channel supernets: the same networks (a
width-1.0 path is the block-only network), so the accuracies are directly comparable. The
channel supernets are also scored on the same block choices at random widths.

Run (1 thread, a few minutes):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/channel_supernet.py --steps 400
Writes benchmarks/results/channel_supernet.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from spos.config import load_config
from spos.data.prepare import prepare_data
from spos.dist import Runtime
from spos.rundir import RunDir
from spos.scoring import build_scorer
from spos.space import make_rng
from spos.stages import train_supernet
from spos.stages.common import build_space
from spos.supernet import build_supernet

ROOT = Path(__file__).resolve().parents[1]


def train(name: str, overrides: list[str], run_dir: Path, runtime: Runtime) -> tuple:
    """Train one supernet with the supernet stage; return (config, supernet, seconds)."""
    config = load_config(ROOT / "configs" / "default.yaml", overrides)
    started = time.perf_counter()
    train_supernet.run(config, run_dir, runtime=runtime)
    seconds = time.perf_counter() - started
    data = prepare_data(config.data, seed=config.seed)
    space = build_space(config, data)
    supernet = build_supernet(space)
    payload = torch.load(RunDir(run_dir).supernet_ckpt, map_location="cpu", weights_only=False)
    supernet.load_state_dict(payload["state"]["model"])
    print(f"[{name}] trained {config.supernet.steps} steps in {seconds:.0f} s", flush=True)
    return config, data, space, supernet, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.2, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=None, help="LR warm-up steps (default steps/20)")
    parser.add_argument("--panel", type=int, default=6, help="block choices scored")
    parser.add_argument("--recalibrate-images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "channel_supernet")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runtime = Runtime.from_env("cpu", threads=1)

    common = [
        f"seed={args.seed}",
        "device=cpu",
        "threads=1",
        f"supernet.steps={args.steps}",
        f"supernet.batch_size={args.batch_size}",
        f"supernet.optim.lr={args.lr}",
        f"supernet.optim.warmup_steps={args.warmup if args.warmup is not None else max(1, args.steps // 20)}",
        "supernet.panel.eval_every=0",
        "supernet.panel.size=0",
        f"supernet.checkpoint_every={args.steps}",
    ]
    variants = {
        "block": ["space.name=shufflenet_cifar"],
        "channel": ["space.name=shufflenet_channel_cifar"],
        "channel+warmup": [
            "space.name=shufflenet_channel_cifar",
            f"supernet.sampler.warmup_steps={args.steps // 4}",
            f"supernet.sampler.widen_steps={args.steps // 2}",
        ],
    }
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="spos-channel-bench-") as tmp:
        trained = {
            name: train(name, common + extra, Path(tmp) / name.replace("+", "_"), runtime)
            for name, extra in variants.items()
        }
    block_space = trained["block"][2]
    rng = make_rng(args.seed, "channel-benchmark-panel")
    panel = [block_space.sample(rng) for _ in range(args.panel)]
    width_rng = make_rng(args.seed, "channel-benchmark-widths")
    channel_space = trained["channel"][2]
    scales = channel_space.choice("width_00").options
    random_widths = [[width_rng.choice(scales) for _ in panel[0].values] for _ in panel]

    for name, (config, data, space, supernet, seconds) in trained.items():
        scorer = build_scorer(
            supernet,
            data,
            runtime,
            seed=config.seed,
            recalibrate_images=args.recalibrate_images,
            val_images=args.val_images,
            batch_size=500,
            channels_last=config.runtime.channels_last,
        )
        full, narrow = [], []
        for arch, widths in zip(panel, random_widths, strict=True):
            blocks = [value for _, value in arch.values]
            if space.family == "shufflenet":
                full.append(scorer.score(space.arch(blocks)))
            else:
                full.append(scorer.score(space.arch(blocks + [1.0] * len(blocks))))
                narrow.append(scorer.score(space.arch(blocks + widths)))
        results[name] = {
            "train_seconds": round(seconds, 1),
            "width_1.0_acc": [round(a, 2) for a in full],
            "width_1.0_mean": round(statistics.mean(full), 2),
            "random_width_acc": [round(a, 2) for a in narrow] or None,
            "random_width_mean": round(statistics.mean(narrow), 2) if narrow else None,
        }
        print(name, results[name], flush=True)

    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/channel_supernet.py " + " ".join(sys.argv[1:])
    record = {
        "command": command.strip(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "panel": [a.short() for a in panel],
        "random_widths": random_widths,
        "results": results,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": 1,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Channel supernet vs block supernet (full-width paths)",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Fashion-MNIST (configs/default.yaml recipe, peak LR {args.lr}), {args.steps} steps x batch {args.batch_size}, "
        f"1 CPU thread (machine shared with other jobs: seconds are indicative only). Panel: "
        f"{args.panel} fixed block choices, BN recalibrated on {args.recalibrate_images} train "
        f"images, top-1 on {args.val_images} held-out images.",
        "",
        "| supernet | train s | top-1 at width 1.0 (mean) | per arch | top-1 at random widths (mean) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['train_seconds']} | {r['width_1.0_mean']} | "
            f"{', '.join(str(a) for a in r['width_1.0_acc'])} | {r['random_width_mean'] or '-'} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
