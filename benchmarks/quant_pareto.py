"""Mixed-precision search against uniform precision: accuracy vs BitOps (SPEC section 2, issue 7).

What it does, in one run, with the library's own stages (no benchmark-only training code):

1. trains the mixed-precision supernet of ``resnet20_quant_cifar`` with ``stage_repeats
   [1, 1, 1]`` (a CIFAR ResNet-8: 16/32/64 channels, 8 searchable convs, each choosing
   weight and activation bits from {2, 3, 4, 8}; stem and classifier full precision) on
   Fashion-MNIST (28x28), uniform single-path sampling;
2. searches it (evolution, BN recalibration per candidate, fitness on the held-out split)
   under each BitOps budget; the default budgets are the BitOps of uniform w4a4 and of
   w4a8 (16 and 32 bit-products per MAC), so a searched model has the budget of a uniform
   one. Tighter budgets (uniform 3-bit) are out of reach of the search's capped rejection
   sampling: a uniformly drawn architecture averages 4.25 x 4.25 bit-products per MAC;
3. retrains every searched configuration and the uniform w2a2, w4a4 and w8a8 versions of
   the same backbone under one protocol per recipe, identical for every model, each with
   ``--seeds`` retraining seeds (``retrain.seed``: initialisation, batch order and
   augmentation; the data subset and held-out split stay those of the run seed):

   - ``inherit``: quantisation-aware fine-tuning from the supernet (``retrain.init=inherit``;
     the uniform configurations are paths of the same supernet, so every model starts from
     weights trained equally long), ``--finetune-epochs`` at peak lr ``--finetune-lr``;
   - ``scratch``: quantisation-aware training from a fresh initialisation,
     ``--retrain-epochs`` at peak lr 0.1 with 100 warm-up steps;

   both cosine-decayed, batch 128, weight decay 5e-4, label smoothing 0.1, BN post-processing;
4. reports, per protocol, test top-1 (mean and half-range over seeds) against BitOps and,
   for each searched model, the uniform line's mean accuracy at the same BitOps (linear in
   log BitOps between the two neighbouring uniform points) and the difference; and the
   supernet score (held-out top-1 with inherited weights, BN recalibrated) of every model.

BitOps convention (spos.cost): multiply-accumulates x weight bits x activation bits; the
full-precision stem conv and classifier count 32 x 32, which at this size is a large share
(about 116M of the 153M BitOps of uniform 2-bit).

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quant_pareto.py        (~35 min, 1 thread)
      add --quick for a few-minute plumbing check (numbers meaningless).
Options: --seeds N (retraining seeds 0..N-1, default 2), --protocols inherit,scratch,
      --finetune-epochs (2), --finetune-lr (0.01), --retrain-epochs (scratch, 3),
      --supernet-steps (1200), --population/--generations (12 x 6), --budgets (w4a4,w4a8:
      uniform configurations whose BitOps are the search budgets), --train-limit (24000),
      --val-size (3000), --test-limit (10000), --threads (1), --work, --results.
Writes benchmarks/results/quant_pareto.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from spos.arch import Arch  # noqa: E402
from spos.checkpoint import load_checkpoint  # noqa: E402
from spos.config import load_config  # noqa: E402
from spos.cost import CostModel  # noqa: E402
from spos.data.prepare import prepare_data  # noqa: E402
from spos.dist import Runtime  # noqa: E402
from spos.rundir import RunDir  # noqa: E402
from spos.scoring import build_scorer  # noqa: E402
from spos.space import SearchSpace  # noqa: E402
from spos.stages import retrain, search, train_supernet  # noqa: E402
from spos.stages.common import build_space  # noqa: E402
from spos.supernet import build_supernet  # noqa: E402

UNIFORM_BITS = (2, 4, 8)


def _overrides(args: argparse.Namespace) -> list[str]:
    layout = json.dumps({"stage_repeats": [1, 1, 1], "stage_channels": [16, 32, 64]})
    return [
        "seed=0",
        "device=cpu",
        f"threads={args.threads}",
        "space.name=resnet20_quant_cifar",
        f"space.layout={layout}",
        f"data.train_limit={args.train_limit}",
        f"data.val_size={args.val_size}",
        f"data.test_limit={args.test_limit}",
        f"supernet.steps={args.supernet_steps}",
        "supernet.batch_size=128",
        "supernet.optim.lr=0.1",
        f"supernet.optim.warmup_steps={min(100, args.supernet_steps // 4)}",
        "supernet.optim.schedule=linear",
        "supernet.sampler.name=uniform",
        "supernet.panel.eval_every=0",
        "supernet.panel.size=0",
        "supernet.checkpoint_every=500",
        "runtime.log_every=100",
        f"search.population_size={args.population}",
        f"search.generations={args.generations}",
        f"search.top_k={max(2, args.population // 3)}",
        f"search.mutation_count={args.population // 3}",
        f"search.crossover_count={args.population // 3}",
        f"search.recalibrate_images={args.recalibrate_images}",
        f"search.val_images={args.val_size}",
        "search.batch_size=500",
        "search.random_baseline=false",
        "retrain.batch_size=128",
        "retrain.optim.schedule=cosine",
        "retrain.optim.weight_decay=0.0005",
        "retrain.checkpoint_every=2000",
    ]


def _protocol_overrides(args: argparse.Namespace, protocol: str, seed: int) -> list[str]:
    """The retraining recipe of ``protocol``; the same for every model."""
    if protocol == "inherit":
        recipe = ["retrain.init=inherit", f"retrain.epochs={args.finetune_epochs}",
                  f"retrain.optim.lr={args.finetune_lr}", "retrain.optim.warmup_steps=0"]  # fmt: skip
    else:
        recipe = ["retrain.init=scratch", f"retrain.epochs={args.retrain_epochs}", "retrain.optim.lr=0.1",
                  f"retrain.optim.warmup_steps={0 if args.quick else 100}"]  # fmt: skip
    return [*recipe, f"retrain.seed={seed}"]


def _uniform_line(points: list[tuple[float, float]], bitops: float) -> float:
    """Accuracy of the uniform line at ``bitops`` (linear in log BitOps; clamped at the ends)."""
    points = sorted(points)
    if bitops <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if bitops <= x1:
            t = (math.log(bitops) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return points[-1][1]


PROTOCOL_TITLES = {
    "inherit": "fine-tuned from the supernet (retrain.init=inherit)",
    "scratch": "trained from scratch",
}


def _plot(rows: list[dict[str, Any]], protocols: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4.2), squeeze=False)
    for axes, protocol in zip(panels[0], protocols, strict=True):
        mine = [r for r in rows if r["protocol"] == protocol]
        uniform = sorted((r for r in mine if r["kind"] == "uniform"), key=lambda r: r["bitops"])
        axes.errorbar([r["bitops"] / 1e6 for r in uniform], [r["test_top1_mean"] for r in uniform],
                      yerr=[r["test_top1_halfrange"] for r in uniform], fmt="o-", color="grey",
                      capsize=3, label="uniform precision")  # fmt: skip
        for r in uniform:
            axes.annotate(r["name"], (r["bitops"] / 1e6, r["test_top1_mean"]), textcoords="offset points",
                          xytext=(4, -12))  # fmt: skip
        searched = [r for r in mine if r["kind"] == "searched"]
        axes.errorbar([r["bitops"] / 1e6 for r in searched], [r["test_top1_mean"] for r in searched],
                      yerr=[r["test_top1_halfrange"] for r in searched], fmt="*", color="C3",
                      markersize=12, capsize=3, label="mixed precision (searched)")  # fmt: skip
        for r in mine:
            for value in r["test_top1"]:
                axes.plot(r["bitops"] / 1e6, value, ".", color="black", alpha=0.35, markersize=4)
        for r in searched:
            axes.axvline(r["budget"] / 1e6, color="C3", alpha=0.2, linestyle="--")
        axes.set_xscale("log")
        axes.set_xlabel("BitOps (millions; MACs x w_bits x a_bits, FP layers 32x32)")
        axes.set_ylabel("test top-1 (%), mean and range over seeds")
        axes.set_title(f"ResNet-8, Fashion-MNIST: {PROTOCOL_TITLES[protocol]}", fontsize=9)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/spos_quant_pareto"), help="run directories")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=24000)
    parser.add_argument("--val-size", type=int, default=3000)
    parser.add_argument("--test-limit", type=int, default=10000)
    parser.add_argument("--supernet-steps", type=int, default=1200)
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--recalibrate-images", type=int, default=1024)
    parser.add_argument("--protocols", default="inherit,scratch", help="retraining recipes: inherit, scratch")
    parser.add_argument("--seeds", type=int, default=2, help="retraining seeds 0..N-1 per model and protocol")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="epochs of the inherit protocol")
    parser.add_argument("--finetune-lr", type=float, default=0.01, help="peak lr of the inherit protocol")
    parser.add_argument("--retrain-epochs", type=int, default=3, help="epochs of the scratch protocol")
    parser.add_argument("--budgets", default="w4a4,w4a8", help="uniform configs whose BitOps are the budgets")
    parser.add_argument("--quick", action="store_true", help="tiny plumbing run (meaningless numbers)")
    args = parser.parse_args()
    protocols = args.protocols.split(",")
    if not set(protocols) <= set(PROTOCOL_TITLES):
        parser.error(f"--protocols takes {', '.join(PROTOCOL_TITLES)}")
    if args.quick:
        args.train_limit, args.val_size, args.test_limit = 2000, 500, 1000
        args.supernet_steps, args.population, args.generations = 30, 6, 2
        args.recalibrate_images, args.retrain_epochs, args.finetune_epochs = 256, 1, 1
        args.results = args.work / "results"

    torch.manual_seed(0)
    runtime = Runtime.from_env("cpu", threads=args.threads)
    config = load_config(ROOT / "configs" / "default.yaml", _overrides(args))
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    space = build_space(config)
    space = space.with_layout(in_channels=1, input_size=28, num_classes=10)
    costs = CostModel.from_space(space)
    layers = len(space.choices)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def uniform_arch(option: str) -> Arch:
        return space.arch([option] * layers)

    # 1. supernet
    clock = time.perf_counter()
    supernet_dir = args.work / "supernet"
    supernet_path = RunDir(supernet_dir).supernet_ckpt
    supernet_summary = train_supernet.run(config, supernet_dir, runtime=runtime)
    timings["supernet_s"] = round(time.perf_counter() - clock, 1)
    print(f"supernet: {supernet_summary['steps']} steps in {timings['supernet_s']} s", flush=True)

    # 2. search under each budget
    models: list[dict[str, Any]] = []
    for budget_name in args.budgets.split(","):
        budget = int(costs.cost(uniform_arch(budget_name), "bitops"))
        clock = time.perf_counter()
        search_dir = args.work / f"search_{budget_name}"
        search_config = load_config(
            ROOT / "configs" / "default.yaml",
            [*_overrides(args), f"search.constraints=[{{metric: bitops, max: {budget}}}]"],
        )
        result = search.run(search_config, search_dir, runtime=runtime, supernet_path=supernet_path)
        timings[f"search_{budget_name}_s"] = round(time.perf_counter() - clock, 1)
        history = [json.loads(line) for line in (search_dir / "history.jsonl").read_text().splitlines()]
        violations = sum(record["bitops"] > budget for record in history)
        found = Arch.load(search_dir / "arch.json")
        print(f"search <= {budget_name} ({budget / 1e6:.1f}M): {found.short()} score {result['best_score']:.2f}", flush=True)
        models.append({
            "name": f"searched_le_{budget_name}", "kind": "searched", "arch": found, "budget": budget,
            "budget_of": f"uniform {budget_name}", "supernet_score": result["best_score"],
            "evaluations": result["evaluations"], "violations": violations,
        })  # fmt: skip
    uniform = [{"name": f"w{b}a{b}", "kind": "uniform", "arch": uniform_arch(f"w{b}a{b}")} for b in UNIFORM_BITS]
    models += uniform

    # The uniform models' supernet score, measured as the search measured its candidates.
    clock = time.perf_counter()
    payload = load_checkpoint(supernet_path, kind="supernet", map_location="cpu")
    supernet = build_supernet(SearchSpace.from_dict(payload["space"]))
    supernet.load_state_dict(payload["state"]["model"])
    scorer = build_scorer(
        supernet.eval(), prepare_data(config.data, seed=config.seed), runtime, seed=config.seed,
        recalibrate_images=args.recalibrate_images, val_images=args.val_size, batch_size=500,
        channels_last=config.runtime.channels_last,
    )  # fmt: skip
    for model in uniform:
        model["supernet_score"] = scorer.score(model["arch"])
    del supernet, scorer, payload
    timings["score_uniform_s"] = round(time.perf_counter() - clock, 1)

    # 3. retrain every model under every protocol and seed, the same recipe for all
    rows: list[dict[str, Any]] = []
    for protocol in protocols:
        for model in models:
            arch: Arch = model["arch"]
            runs = []
            for seed in range(args.seeds):
                run_dir = args.work / f"{protocol}_{model['name']}_seed{seed}"
                run_dir.mkdir(parents=True, exist_ok=True)
                arch.save(run_dir / "arch.json")
                if protocol == "inherit":
                    RunDir(run_dir).supernet_ckpt.symlink_to(supernet_path)
                run_config = load_config(
                    ROOT / "configs" / "default.yaml", [*_overrides(args), *_protocol_overrides(args, protocol, seed)]
                )
                clock = time.perf_counter()
                summary = retrain.run(run_config, run_dir, runtime=runtime)
                seconds = round(time.perf_counter() - clock, 1)
                runs.append({"seed": seed, "test_top1": summary["test_top1"], "val_top1": summary["val_top1"],
                             "seconds": seconds})  # fmt: skip
                print(f"{protocol} {model['name']} seed {seed}: test top-1 {summary['test_top1']:.2f} ({seconds} s)",
                      flush=True)  # fmt: skip
            tests = [r["test_top1"] for r in runs]
            arch_costs = costs.costs(arch)
            rows.append({
                **{k: v for k, v in model.items() if k != "arch"},
                "protocol": protocol,
                "arch": dict(arch.items()),
                "bitops": int(arch_costs["bitops"]),
                "size_bits": int(arch_costs["size_bits"]),
                "flops": int(arch_costs["flops"]),
                "runs": runs,
                "test_top1": tests,
                "test_top1_mean": round(statistics.fmean(tests), 3),
                "test_top1_halfrange": round((max(tests) - min(tests)) / 2, 3),
                "test_top1_std": round(statistics.stdev(tests), 3) if len(tests) > 1 else None,
                "val_top1_mean": round(statistics.fmean(r["val_top1"] for r in runs), 3),
                "retrain_seconds": round(sum(r["seconds"] for r in runs), 1),
            })  # fmt: skip
            timings[f"{protocol}_{model['name']}_s"] = rows[-1]["retrain_seconds"]
        points = [(r["bitops"], r["test_top1_mean"]) for r in rows if r["protocol"] == protocol and r["kind"] == "uniform"]
        for row in rows:
            if row["protocol"] == protocol and row["kind"] == "searched":
                line = _uniform_line(points, row["bitops"])
                row["uniform_line_top1"] = round(line, 3)
                row["above_uniform_line_by"] = round(row["test_top1_mean"] - line, 3)
    timings["total_s"] = round(time.perf_counter() - started, 1)

    args.results.mkdir(parents=True, exist_ok=True)
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quant_pareto.py" + (" --quick" if args.quick else "")
    report = {
        "benchmark": "quant_pareto",
        "space": space.name,
        "layout": dict(space.layout),
        "dataset": "fashion_mnist",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "supernet": {k: supernet_summary.get(k) for k in ("steps", "images_seen", "train_seconds", "images_per_s")},
        "bitops_range": list(costs.bounds("bitops")),
        "rows": rows,
        "timings": timings,
        "command": command,
    }
    (args.results / "quant_pareto.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _plot(rows, protocols, args.results / "quant_pareto.png")
    lines = [
        "# Mixed-precision search vs uniform precision (accuracy against BitOps)",
        "",
        f"`{command}` - torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"total {timings['total_s'] / 60:.1f} min.",
        "",
        f"Backbone: `{space.name}` with stage_repeats [1, 1, 1] (ResNet-8, {layers} searchable convs, "
        "bits {2,3,4,8} for weights and activations; stem and classifier full precision), "
        f"Fashion-MNIST 28x28, {args.train_limit} training images ({args.val_size} of them held out "
        f"for search fitness), test top-1 on {args.test_limit} test images. Supernet "
        f"{args.supernet_steps} steps x 128; search {args.population} x {args.generations} (evolution). "
        f"Every model retrained with {args.seeds} seeds per protocol: `inherit` = fine-tuned from the "
        f"supernet for {args.finetune_epochs} epochs at peak lr {args.finetune_lr}; `scratch` = "
        f"trained from scratch for {args.retrain_epochs} epochs at peak lr 0.1. "
        "Accuracy: mean ± half-range over seeds (seed values in the JSON).",
        "",
        "| protocol | model | BitOps (M) | size (kbit) | supernet score | test top-1 | uniform line at same BitOps | difference |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in sorted(rows, key=lambda r: (protocols.index(r["protocol"]), r["bitops"])):
        line = f"{row['uniform_line_top1']:.2f}" if "uniform_line_top1" in row else ""
        diff = f"{row['above_uniform_line_by']:+.2f}" if "above_uniform_line_by" in row else ""
        lines.append(
            f"| {row['protocol']} | {row['name']} | {row['bitops'] / 1e6:.1f} | {row['size_bits'] / 1e3:.1f} | "
            f"{row['supernet_score']:.2f} | {row['test_top1_mean']:.2f} ± {row['test_top1_halfrange']:.2f} | "
            f"{line} | {diff} |"
        )
    lines += ["", "Searched configurations (supernet score = fitness on the held-out split):", ""]
    for row in rows:
        if row["kind"] == "searched" and row["protocol"] == protocols[0]:
            values = ", ".join(f"{k}={v}" for k, v in row["arch"].items())
            lines.append(
                f"- {row['name']} (budget {row['budget'] / 1e6:.1f}M = {row['budget_of']}): {values}; "
                f"supernet score {row['supernet_score']:.2f}, {row['evaluations']} evaluated, "
                f"{row['violations']} over budget"
            )
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()), ""]
    (args.results / "quant_pareto.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
