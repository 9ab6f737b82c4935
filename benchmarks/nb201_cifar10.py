"""NAS-Bench-201 on CIFAR-10: does the supernet rank architectures like the ground truth?

One variant = one full measurement, run through the library's own stages:

1. train an ``nb201`` supernet on the CIFAR-10 JPEG zip split like NB201's ``cifar10-valid``
   (25k train / 25k held-out validation) for a CPU budget (``--minutes``; the step count is set
   from a short throughput probe), logging the rank correlation of a 50-arch ground-truth panel
   every ``supernet.panel.eval_every`` steps;
2. ``spos rank``: score ``--num-archs`` architectures (uniform, one per isomorphism class) and
   report Kendall tau, Spearman rho and precision@5%/10% against ``cifar10valid_valid_acc``;
3. ``spos search``: evolutionary search and random search with the same evaluation budget, and
   the ground-truth accuracy of each one's chosen architecture.

Each variant writes ``benchmarks/results/nb201/<name>.json`` (+ the rank scatter PNG and the
per-architecture scores, ``<name>_scores.csv``); the ablation table
``benchmarks/results/nb201_cifar10.md`` is rebuilt from every variant's JSON.

Run the recommended CPU proxy: the benchmark's width (C=16) with one cell per stage (N=1) for
20,000 steps (tau 0.53-0.64 over four seeds, mean 0.61; 45-80 minutes on one thread, plus
10-20 for ranking and search). Width matters (C=8: tau 0.53-0.55) and, at this budget, depth hurts
(C=8, N=5: 0.26); stopping at 3/4 of the schedule (``--steps 15000
supernet.schedule_steps=20000``) ranked at 0.676 for one de-isomorphic run but 0.479 / 0.614
for uniform sampling on seeds 0 / 1. See benchmarks/results/nb201/notes.md:
    .venv/bin/python benchmarks/nb201_cifar10.py --name uniform_20k_c16n1 --steps 20000 \
        --num-archs 200 threads=1 space.layout.channels=16 space.layout.cells_per_stage=1
``--minutes M`` instead of ``--steps`` sets the step count from a throughput probe. Ablation
variants add dotted config overrides, e.g. ``supernet.sampler.name=fair``.
Rescore an existing supernet with other scoring settings (no training):
    .venv/bin/python benchmarks/nb201_cifar10.py --name main_loss --reuse main search.score=loss
Score an earlier checkpoint of a run (train it with "supernet.keep_checkpoints=[15000]"),
ranking only, with the source run's overrides:
    .venv/bin/python benchmarks/nb201_cifar10.py --name NAME_at15k --reuse NAME --no-search \
        --snapshot runs/bench/nb201/NAME/supernet_step15000.ckpt <the overrides of NAME>
Checkpoint score ensembling (the mean of the final and the kept step-15000 scores), ranking
only, on a run trained with "supernet.keep_checkpoints=[15000]":
    .venv/bin/python benchmarks/nb201_cifar10.py --name NAME_ens15k --reuse NAME --no-search \
        "search.score_checkpoints=[15000]" <the overrides of NAME>
Rebuild the table only:  .venv/bin/python benchmarks/nb201_cifar10.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"
CONFIG = ROOT / "configs" / "nb201_cifar10.yaml"
CSV = SHARED / "nb201" / "nb201_tss.csv"
ZIP = SHARED / "cifar10-jpeg" / "cifar10_jpeg.zip"
COLUMN = "cifar10valid_valid_acc"


def _load(overrides: list[str]):
    from spos.config import load_config

    return load_config(
        CONFIG,
        [
            f"data.root={ZIP}",
            f"ground_truth.path={CSV}",
            f"ground_truth.column={COLUMN}",
            *overrides,
        ],
    )


def _probe_images_per_s(config, runtime, *, steps: int = 25) -> float:
    """Training images/s of the supernet at the config's batch size (random paths, fake data)."""
    import random

    import torch.nn.functional as F

    from spos.stages.common import build_space
    from spos.supernet import build_supernet
    from spos.train import make_sgd

    space = build_space(config)
    supernet = build_supernet(space).to(runtime.device).to(memory_format=torch.channels_last)
    optimizer = make_sgd(supernet, lr=0.01, momentum=0.9, nesterov=False, weight_decay=0.0)
    batch = config.supernet.batch_size
    images = torch.randn(batch, 3, 32, 32, device=runtime.device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), device=runtime.device)
    rng = random.Random(0)
    for step in range(steps + 5):
        if step == 5:
            start = time.perf_counter()
        loss = F.cross_entropy(supernet(images, space.sample(rng)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def run_variant(
    name: str,
    minutes: float,
    num_archs: int,
    overrides: list[str],
    reuse: str | None,
    steps: int | None = None,
    snapshot: Path | None = None,
    with_search: bool = True,
) -> dict:
    from spos.arch import Arch
    from spos.dist import Runtime
    from spos.groundtruth import GroundTruth
    from spos.stages import rank, search, train_supernet
    from spos.stages.common import build_space

    run_dir = ROOT / "runs" / "bench" / "nb201" / name
    # a fixed step count goes in from the start: options checked against it (keep_checkpoints) validate
    config = _load([*overrides, f"supernet.steps={steps}"] if steps else overrides)
    runtime = Runtime.from_env(
        config.device,
        threads=config.threads,
        backend=config.runtime.dist_backend,
        timeout_s=config.runtime.dist_timeout_s,
        deterministic=config.runtime.deterministic,
    )
    started = time.perf_counter()
    probe = None
    averaged_from = None  # the steps a weight-averaged snapshot (benchmarks/average_weights.py) averages
    if reuse:
        source = ROOT / "runs" / "bench" / "nb201" / reuse
        run_dir.mkdir(parents=True, exist_ok=True)
        # rank/scores.jsonl: the source's scores are reused only where the scoring settings match
        # search.score_checkpoints (checkpoint score ensembling) reads the kept checkpoints
        # from beside the scored supernet: they come along.
        kept = [f"supernet_step{step}.ckpt" for step in config.search.score_checkpoints]
        for item in ("supernet.ckpt", "metrics.jsonl", "summary.json", "rank/scores.jsonl", *kept):
            origin = snapshot if (snapshot and item == "supernet.ckpt") else source / item
            if origin.exists() and not (run_dir / item).exists():
                (run_dir / item).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, run_dir / item)
        supernet_summary = json.loads((source / "summary.json").read_text())["supernet"]
        if snapshot:  # an earlier checkpoint of the source run (same schedule, fewer steps done)
            from spos.checkpoint import load_checkpoint

            payload = load_checkpoint(run_dir / "supernet.ckpt", kind="supernet")
            done, averaged_from = int(payload["step"]), payload["state"].get("averaged_from_steps")
            seconds = supernet_summary["train_seconds"] * done / supernet_summary["steps"]
            supernet_summary = {**supernet_summary, "steps": done, "images_seen": done * config.supernet.batch_size, "train_seconds": round(seconds, 1)}
    else:
        if not (run_dir / "supernet.ckpt").exists():
            if steps is None:  # a CPU budget: set the step count from a throughput probe
                probe = _probe_images_per_s(config, runtime)
                steps = max(100, int(minutes * 60 * probe / config.supernet.batch_size * 0.9))
            config = _load([*overrides, f"supernet.steps={steps}", f"supernet.panel.eval_every={max(50, steps // 4)}"])
        else:  # resuming: keep the step count of the interrupted run
            import yaml

            saved = yaml.safe_load((run_dir / "config.yaml").read_text())
            config = _load([*overrides, f"supernet.steps={saved['supernet']['steps']}", f"supernet.panel.eval_every={saved['supernet']['panel']['eval_every']}"])
        supernet_summary = train_supernet.run(config, run_dir, runtime=runtime)
    trained = time.perf_counter()
    ranked = rank.run(config, run_dir, runtime=runtime, num_archs=num_archs)
    ranked_at = time.perf_counter()
    searched = search.run(config, run_dir, runtime=runtime) if with_search else None
    done = time.perf_counter()

    space = build_space(config)
    truth = GroundTruth.load(CSV, space, COLUMN)

    def chosen(summary: dict, arch_file: Path) -> dict:
        arch = space.validate(Arch.load(arch_file))
        value = truth.lookup([arch])[0]
        return {
            "arch": arch.short(),
            "supernet_score": summary["best_score"],
            "evaluations": summary.get("evaluations"),
            "true_acc": value,
            "true_percentile": truth.percentile(value) if value is not None else None,
            "finalists": [  # search.final_top_k: the re-scored candidates, best final score first
                {**f, "true_acc": truth.lookup([space.validate(space.arch(f["arch"].split(",")))])[0]}
                for f in summary.get("finalists", [])
            ],
        }

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = [{"step": r["step"], "kendall_tau": r["kendall_tau"]} for r in metrics if "kendall_tau" in r]
    result: dict[str, Any] = {
        "name": name,
        "command": " ".join([sys.executable.replace(str(ROOT) + "/", ""), "benchmarks/nb201_cifar10.py", *sys.argv[1:]]),
        "overrides": overrides,
        "reuses_supernet_of": reuse,
        "snapshot_step": supernet_summary["steps"] if snapshot else None,
        "snapshot_averaged_from_steps": averaged_from,
        "layout": dict(space.layout),
        "supernet": {
            "steps": supernet_summary["steps"],
            "batch_size": config.supernet.batch_size,
            "epochs_of_25k": round(supernet_summary["images_seen"] / 25000, 1),
            "train_seconds": supernet_summary["train_seconds"],
            "probe_images_per_s": round(probe, 1) if probe else None,
            "lr": config.supernet.optim.lr,
            "schedule": config.supernet.optim.schedule,
            "sampler": config.supernet.sampler.name,
            "distinct_networks": config.supernet.sampler.distinct_networks,
            "panel_tau_curve": curve,
        },
        "rank": {k: ranked[k] for k in ("num_archs", "kendall_tau", "spearman_rho", "precision_at_5pct", "precision_at_10pct", "score_metric", "recalibrate_images", "val_images", "supernet_top_arch", "supernet_top_arch_true_value")}
        | {"option_bias": ranked.get("option_bias")}  # which ops the supernet over/under-rates
        | {"cost_baselines": ranked.get("cost_baselines")},  # ranking by params / FLOPs alone
        "search": {
            "evolution": chosen(searched, run_dir / "arch.json"),
            "random": chosen(searched["baseline"], run_dir / "baseline" / "arch.json") if "baseline" in searched else None,
            "true_best_in_space": truth.best(),
        }
        if searched is not None
        else None,
        "seconds": {
            "supernet": round(trained - started, 1),
            "rank": round(ranked_at - trained, 1),
            "search": round(done - ranked_at, 1),
        },
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
    }
    out = RESULTS / "nb201"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copy2(run_dir / "rank" / "scatter.png", out / f"{name}_scatter.png")
    # the per-architecture scores outlive runs/ (git-ignored), so later diagnostics need no rescoring
    shutil.copy2(run_dir / "rank" / "scores.csv", out / f"{name}_scores.csv")
    return result


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _variant_label(result: dict) -> str:
    """The variant's name, with the run whose supernet it rescored (and which snapshot of it)."""
    source = result.get("reuses_supernet_of")
    if not source:
        return result["name"]
    averaged = result.get("snapshot_averaged_from_steps")
    if averaged:
        source += f", weights averaged over steps {'/'.join(map(str, averaged))}"
    elif result.get("snapshot_step"):
        source += f" at step {result['snapshot_step']}"
    return f"{result['name']} (reuses {source})"


def write_table() -> Path:
    rows = []
    for path in sorted((RESULTS / "nb201").glob("*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and {"name", "supernet", "rank"} <= set(record):  # a variant, not another benchmark's file
            rows.append(record)
    rows.sort(key=lambda r: (r["name"] != "main", r["name"]))
    lines = [
        "# NAS-Bench-201 / CIFAR-10: supernet ranking and search against ground truth",
        "",
        "Ground truth: `cifar10valid_valid_acc` of `../shared/data/nb201/nb201_tss.csv` (best in the",
        "space 91.61%). Supernets trained on the CIFAR-10 JPEG zip split 25k train / 25k validation",
        "(stratified, seeded; NB201's own split is not published with the zip). Rank correlations over",
        "`num_archs` architectures drawn uniformly, one per isomorphism class; the last column ranks the",
        "same architectures by parameter count alone (no training), the baseline to beat. Written by",
        "`benchmarks/nb201_cifar10.py`; one JSON per variant under `benchmarks/results/nb201/`.",
        "",
        "| variant | skeleton C/N | steps (epochs of 25k) | train min | score | recal/val imgs | archs | Kendall tau | Spearman rho | P@5% | P@10% | evolution pick: true acc | random pick: true acc | tau of params alone |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s, k, q = r["supernet"], r["rank"], r["search"]
        layout = r["layout"]
        lines.append(
            "| " + " | ".join([
                _variant_label(r),
                f"{layout['channels']}/{layout['cells_per_stage']}",
                f"{s['steps']} ({s['epochs_of_25k']})",
                _fmt(s["train_seconds"] / 60, 1),
                k["score_metric"],
                f"{k['recalibrate_images']}/{k['val_images']}",
                str(k["num_archs"]),
                _fmt(k["kendall_tau"]),
                _fmt(k["spearman_rho"]),
                _fmt(k["precision_at_5pct"], 2),
                _fmt(k["precision_at_10pct"], 2),
                _fmt(q["evolution"]["true_acc"], 2) if q else "-",
                _fmt(q["random"]["true_acc"], 2) if q and q["random"] else "-",
                _fmt(((k.get("cost_baselines") or {}).get("params") or {}).get("kendall_tau")),
            ]) + " |"
        )
    lines += ["", "Commands:", ""] + [
        f"- `{r['name']}`: " + (f"`{r['snapshot_made_by']}`, then " if r.get("snapshot_made_by") else "") + f"`{r['command']}`"
        for r in rows
    ] + [""]
    notes = RESULTS / "nb201" / "notes.md"  # hand-written findings, kept next to the data
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    path = RESULTS / "nb201_cifar10.md"
    path.write_text("\n".join(lines))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="main", help="variant name (results file and run directory)")
    parser.add_argument("--minutes", type=float, default=60.0, help="supernet training budget")
    parser.add_argument("--steps", type=int, default=None, help="fixed supernet steps (overrides --minutes; equal-step ablations)")
    parser.add_argument("--num-archs", type=int, default=200, help="architectures ranked")
    parser.add_argument("--reuse", default=None, help="rescore the supernet of another variant (no training)")
    parser.add_argument(
        "--snapshot", type=Path, default=None,
        help="with --reuse: score this earlier checkpoint of that variant's run instead of its last",
    )
    parser.add_argument("--table", action="store_true", help="only rebuild the ablation table")
    parser.add_argument("--no-search", action="store_true", help="rank only: skip evolution and random search")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parser.parse_args()
    if not args.table:
        for path in (CSV, ZIP):
            if not path.exists():
                print(f"missing {path}: this benchmark needs the shared NB201 CSV and CIFAR-10 zip", file=sys.stderr)
                return 2
        if args.snapshot and not args.reuse:
            parser.error("--snapshot needs --reuse NAME (the run it was taken from)")
        from spos.errors import SposError

        try:
            result = run_variant(args.name, args.minutes, args.num_archs, args.overrides, args.reuse, args.steps, args.snapshot, not args.no_search)
        except SposError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(json.dumps({k: result[k] for k in ("name", "rank", "search", "seconds")}, indent=2))
    print(f"table: {write_table()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
