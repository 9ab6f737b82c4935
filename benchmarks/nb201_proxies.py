"""NAS-Bench-201 on CIFAR-10: how well do zero-cost proxies rank cells, and what do they pick?

Library API only (:mod:`spos.proxies`, :mod:`spos.groundtruth`, :mod:`spos.estimator`,
:mod:`spos.stats`; no stages). Steps:

1. draw ``--num-archs`` isomorphism-unique cells of the ``nb201`` space uniformly (seeded by
   ``--cells-seed``) from the ground-truth CSV (``cifar10valid_valid_acc``);
2. one batch of ``--batch-size`` CIFAR-10 training images (from the 25k training half of the
   benchmark config's held-out split; drawn with ``--seed``), normalised with the training
   half's channel statistics;
3. every proxy of :func:`spos.proxies.list_proxies` on each cell's own standalone network at
   initialisation (``--channels`` C, ``--cells`` N; default the benchmark's C=16, N=5), one
   row per cell appended to ``<prefix>_scores.csv`` as soon as it is computed, so an
   interrupted run resumes where it stopped (same settings enforced through
   ``<prefix>_scores.meta.json``);
4. summary ``<prefix>.json`` / ``<prefix>.md``: per proxy Kendall tau, Spearman rho,
   precision@top-1% / top-5%, the true accuracy of its top pick and that pick's percentile;
   the constrained scenario (FLOPs at most the median of the drawn cells): the pick against
   the best feasible cell and its percentile among feasible cells; and rank-aggregation
   combinations (:class:`spos.estimator.PercentileEstimator`, pool = the drawn cells), which
   are chosen while looking at this ground truth and are therefore not unbiased estimates.

Run (resumable; 1 thread; see benchmarks/results/nb201/proxies.md for the measured time). The
defaults are the benchmark's network (C=16, N=5), which took 6.5 s/cell on a loaded 2-core
machine (about 2 h for 1,000 cells); the committed results use N=1 (``--cells 1``, the layout
the supernet benchmark ranks with, about 2.4 s/cell) and cross-check N=5 on the first 100 cells:
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/nb201_proxies.py --cells 1
Another seed or layout on a prefix of the same cells, then the cross-check in the summary:
    ... benchmarks/nb201_proxies.py --cells 5 --num-archs 100 --prefix proxies_c16n5_subset
    ... benchmarks/nb201_proxies.py --cells 1 --summary-only --compare-with proxies_c16n5_subset
Rebuild the summary from the CSV only:  ... --summary-only
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "nb201"
SHARED = ROOT.parent / "shared" / "data"
CSV = SHARED / "nb201" / "nb201_tss.csv"
ZIP = SHARED / "cifar10-jpeg" / "cifar10_jpeg.zip"
COLUMN = "cifar10valid_valid_acc"
#: The held-out split of configs/nb201_cifar10.yaml (data.val_size, seed 0): the batch comes
#: from its training half, the images the supernet benchmark trains on.
VAL_SIZE, SPLIT_SEED = 25000, 0

#: Rank-aggregation combinations evaluated on the ground truth: {label: {signal: weight}}.
COMBINATIONS: dict[str, dict[str, float]] = {
    "naswot+synflow": {"naswot": 1.0, "synflow": 1.0},
    "jacob_cov+naswot": {"jacob_cov": 1.0, "naswot": 1.0},
    "naswot+synflow+jacob_cov": {"naswot": 1.0, "synflow": 1.0, "jacob_cov": 1.0},
    "naswot+synflow-flops": {"naswot": 1.0, "synflow": 1.0, "flops": -1.0},
    "naswot-0.5flops": {"naswot": 1.0, "flops": -0.5},
}


def _command() -> str:
    return " ".join(["OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python", "benchmarks/nb201_proxies.py", *sys.argv[1:]])


def _batch(batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from spos.data import channel_stats, holdout_split, load_dataset, make_generator, to_float

    full = load_dataset("cifar10", root=ZIP, split="train", cache_dir=Path("~/.cache/spos").expanduser())
    train_index, _ = holdout_split(full.labels, size=VAL_SIZE, seed=SPLIT_SEED)
    train = full.subset(train_index)
    mean, std = channel_stats(train.images)
    pick = torch.randperm(len(train), generator=make_generator(seed, "proxy-batch"))[:batch_size]
    images = to_float(train.images[pick], mean, std, channels_last=False)
    return images, train.labels[pick]


def _read_rows(path: Path) -> dict[int, dict[str, str]]:
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        return {int(row["index"]): row for row in csv.DictReader(handle)}


def compute(args: argparse.Namespace, names: list[str], csv_path: Path) -> float:
    """Append the missing cells' rows to ``csv_path``; returns this call's wall seconds."""
    from spos.cost import CostModel
    from spos.groundtruth import GroundTruth
    from spos.proxies import compute_proxies
    from spos.space import create_space, make_rng

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    space = create_space("nb201", channels=args.channels, cells_per_stage=args.cells)
    truth = GroundTruth.load(CSV, space, COLUMN)
    chosen = truth.sample(args.num_archs, make_rng(args.cells_seed, "proxy-cells"))
    meta = {
        "layout": dict(space.layout), "seed": args.seed, "cells_seed": args.cells_seed,
        "batch_size": args.batch_size, "proxies": names, "column": COLUMN,
    }  # fmt: skip
    meta_path = csv_path.with_suffix(".meta.json")
    if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
        raise SystemExit(
            f"{csv_path} was computed with other settings ({meta_path}); "
            "choose another --prefix or delete both files"
        )
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    done = _read_rows(csv_path)
    todo = [i for i in chosen if i not in done]
    print(f"{len(chosen)} cells, {len(done)} already in {csv_path.name}, {len(todo)} to compute", flush=True)
    if not todo:
        return time.perf_counter() - started
    images, labels = _batch(args.batch_size, args.seed)
    costs = CostModel.from_space(space)
    header = ["index", "arch_str", "iso_group", "true_acc", *names, *(f"seconds_{n}" for n in names)]
    new_file = not csv_path.exists()
    with csv_path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(header)
        for count, index in enumerate(todo, start=1):
            arch = truth.archs[index]
            values, seconds = {}, {}
            for name in names:  # one call per proxy: its time is recorded on its own
                tick = time.perf_counter()
                values.update(compute_proxies(space, [arch], [name], images=images, labels=labels, seed=args.seed, costs=costs)[0])
                seconds[name] = time.perf_counter() - tick
            from spos.spaces.catalog import nb201_to_arch_str

            writer.writerow([
                index, nb201_to_arch_str([str(v) for _, v in arch.values]), truth.groups[index],
                truth.values[index], *(repr(values[n]) for n in names), *(f"{seconds[n]:.4f}" for n in names),
            ])  # fmt: skip
            handle.flush()
            if count % 10 == 0 or count == len(todo):
                rate = (time.perf_counter() - started) / count
                print(f"{count}/{len(todo)} cells, {rate:.2f} s/cell, eta {rate * (len(todo) - count) / 60:.1f} min", flush=True)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def _finite_floor(values: np.ndarray) -> np.ndarray:
    """``-inf`` (a degenerate network) becomes one below the smallest finite value: same order,
    and the percentile pool of the estimator accepts it."""
    finite = values[np.isfinite(values)]
    floor = (finite.min() - 1.0) if finite.size else 0.0
    return np.where(np.isfinite(values), values, floor)


def _pick(scores: np.ndarray, mask: np.ndarray | None = None) -> int:
    """Index of the highest score (first on ties) among ``mask``."""
    candidates = np.arange(len(scores)) if mask is None else np.flatnonzero(mask)
    order = np.argsort(-scores[candidates], kind="stable")
    return int(candidates[order[0]])


def _percentile(values: np.ndarray, value: float) -> float:
    """Share (%) of ``values`` strictly below ``value``."""
    return float(100.0 * np.mean(values < value))


def evaluate(truth: np.ndarray, scores: np.ndarray, feasible: np.ndarray) -> dict[str, Any]:
    from spos.stats import kendall_tau, precision_at_k, spearman_rho

    scores = _finite_floor(scores)
    pick = _pick(scores)
    constrained = _pick(scores, feasible)
    feasible_truth = truth[feasible]
    return {
        "kendall_tau": kendall_tau(truth, scores),
        "spearman_rho": spearman_rho(truth, scores),
        "precision_at_1pct": precision_at_k(truth, scores, 0.01),
        "precision_at_5pct": precision_at_k(truth, scores, 0.05),
        "pick_true_acc": float(truth[pick]),
        "pick_percentile": _percentile(truth, truth[pick]),
        "feasible_kendall_tau": kendall_tau(feasible_truth, scores[feasible]),
        "constrained_pick_true_acc": float(truth[constrained]),
        "constrained_pick_percentile": _percentile(feasible_truth, truth[constrained]),
    }


def summarise(args: argparse.Namespace, names: list[str], csv_path: Path, wall_seconds: float) -> dict[str, Any]:
    from spos.estimator import PercentileEstimator

    rows = list(_read_rows(csv_path).values())
    meta = json.loads(csv_path.with_suffix(".meta.json").read_text())
    truth = np.array([float(r["true_acc"]) for r in rows])
    signals = {n: np.array([float(r[n]) for r in rows]) for n in names}
    median_flops = float(np.median(signals["flops"]))
    feasible = signals["flops"] <= median_flops
    per_proxy = {n: evaluate(truth, signals[n], feasible) for n in names}
    for n in names:
        per_proxy[n]["degenerate_cells"] = int(np.sum(~np.isfinite(signals[n])))
        per_proxy[n]["mean_seconds_per_cell"] = float(np.mean([float(r[f"seconds_{n}"]) for r in rows]))
    combos = {}
    pool = {n: _finite_floor(signals[n]).tolist() for n in names}
    for label, weights in COMBINATIONS.items():
        estimator = PercentileEstimator(weights, pool)
        scores = np.array([estimator.score({n: pool[n][i] for n in weights}) for i in range(len(rows))])
        combos[label] = {"weights": weights, **evaluate(truth, scores, feasible)}
    best_feasible = float(truth[feasible].max())
    command, previous = _command(), OUT / f"{args.prefix}.json"
    if args.summary_only and previous.exists():  # keep the command and wall time that computed it
        old = json.loads(previous.read_text())
        command, wall_seconds = old["command"], old["wall_seconds_last_invocation"]
    result = {
        "command": command,
        "settings": meta,
        "num_cells": len(rows),
        "ground_truth": {"file": "../shared/data/nb201/nb201_tss.csv", "column": COLUMN},
        "best_drawn_true_acc": float(truth.max()),
        "mean_drawn_true_acc": float(truth.mean()),
        "constraint": {"flops_at_most": median_flops, "feasible_cells": int(feasible.sum()), "best_feasible_true_acc": best_feasible, "mean_feasible_true_acc": float(truth[feasible].mean())},
        "proxies": per_proxy,
        "combinations_on_ground_truth": combos,
        "compute_seconds_total": float(sum(float(r[f"seconds_{n}"]) for r in rows for n in names)),
        "wall_seconds_last_invocation": round(wall_seconds, 1),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads, "cpus": os.cpu_count(), "load_average": os.getloadavg()},
    }
    return result


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_markdown(result: dict[str, Any], path: Path) -> None:
    s, c = result["settings"], result["constraint"]
    layout = s["layout"]
    lines = [
        "# Zero-cost proxies on NAS-Bench-201 / CIFAR-10",
        "",
        f"{result['num_cells']} isomorphism-unique cells drawn uniformly (cells seed {s['cells_seed']}), each",
        f"scored at initialisation on its own standalone network (C={layout['channels']}, N={layout['cells_per_stage']};",
        f"init seed {s['seed']}) with one batch of {s['batch_size']} CIFAR-10 training images. Ground truth:",
        f"`{COLUMN}` (best drawn {result['best_drawn_true_acc']:.2f}%, mean {result['mean_drawn_true_acc']:.2f}%).",
        "Pick percentile = share of the drawn (or feasible) cells with lower true accuracy.",
        f"Constrained scenario: FLOPs <= {c['flops_at_most'] / 1e6:.2f}M (median of the drawn cells;",
        f"{c['feasible_cells']} feasible, best feasible {c['best_feasible_true_acc']:.2f}%, mean {c['mean_feasible_true_acc']:.2f}%).",
        "",
        "Single seed: proxies are deterministic given the seed.",
        "",
        "| signal | Kendall tau | Spearman rho | P@1% | P@5% | top pick acc (pctl) | tau among feasible | constrained pick acc (pctl among feasible) | s/cell | degenerate cells |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def row(label: str, r: dict[str, Any]) -> str:
        return "| " + " | ".join([
            label, _f(r["kendall_tau"]), _f(r["spearman_rho"]), _f(r["precision_at_1pct"], 2),
            _f(r["precision_at_5pct"], 2), f"{r['pick_true_acc']:.2f} ({r['pick_percentile']:.1f})",
            _f(r["feasible_kendall_tau"]),
            f"{r['constrained_pick_true_acc']:.2f} ({r['constrained_pick_percentile']:.1f})",
            _f(r.get("mean_seconds_per_cell"), 3) if "mean_seconds_per_cell" in r else "-",
            str(r.get("degenerate_cells", "-")),
        ]) + " |"  # fmt: skip

    ordered = sorted(result["proxies"].items(), key=lambda kv: -kv[1]["kendall_tau"])
    lines += [row(name, r) for name, r in ordered]
    lines += [
        "",
        "## Rank-aggregation combinations (measured on the ground truth)",
        "",
        "`PercentileEstimator` with the drawn cells as the reference pool (each signal a mid-rank",
        "percentile, weighted mean; a negative weight ranks that signal in reverse). These",
        "combinations were chosen while looking at this ground truth: their numbers are **not** an",
        "unbiased estimate of what a combination would do on an unseen benchmark.",
        "",
        "| combination (weights) | Kendall tau | Spearman rho | P@1% | P@5% | top pick acc (pctl) | tau among feasible | constrained pick acc (pctl among feasible) | s/cell | degenerate cells |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in result["combinations_on_ground_truth"].items():
        weights = ", ".join(f"{k} {v:+g}" for k, v in r["weights"].items())
        lines.append(row(f"{label} ({weights})", r))
    lines += [
        "",
        f"Compute: {result['compute_seconds_total'] / 60:.1f} min of proxy time in total "
        f"({result['compute_seconds_total'] / result['num_cells']:.2f} s/cell, {result['machine']['threads']} thread, "
        f"load average at the end {', '.join(f'{x:.1f}' for x in result['machine']['load_average'])}: a shared machine);",
        f"last invocation {result['wall_seconds_last_invocation'] / 60:.1f} min wall.",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    check = result.get("cross_check")
    if check:
        other = check["other_settings"]
        lines += [
            f"## Cross-check: the same cells under other settings (`{check['other_prefix']}`)",
            "",
            f"The first {check['num_cells']} cells again with init/batch seed {other['seed']}, layout "
            f"C={other['layout']['channels']}, N={other['layout']['cells_per_stage']}, batch {other['batch_size']}",
            f"(`{check['other_prefix']}_scores.csv`, `{check['other_prefix']}.md`): Kendall tau between the two runs'",
            "values of each proxy, and each run's tau against the truth on those cells.",
            "",
            "| proxy | tau(this run, other run) | tau vs truth, this run | tau vs truth, other run |",
            "| --- | --- | --- | --- |",
        ]
        for name, r in check["proxies"].items():
            lines.append(f"| {name} | {_f(r['tau_between_runs'])} | {_f(r['tau_truth_a'])} | {_f(r['tau_truth_b'])} |")
        lines.append("")
    notes = path.with_name(path.stem + "_notes.md")  # hand-written findings, kept next to the data
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    path.write_text("\n".join(lines))


def cross_check(names: list[str], csv_path: Path, other_prefix: str) -> dict[str, Any] | None:
    """Agreement with another run on the cells both scored (another seed or layout)."""
    from spos.stats import kendall_tau

    other_path = OUT / f"{other_prefix}_scores.csv"
    if not other_path.exists():
        return None
    first, second = _read_rows(csv_path), _read_rows(other_path)
    common = sorted(set(first) & set(second))
    if len(common) < 10:
        return None
    other_meta = json.loads(other_path.with_suffix(".meta.json").read_text())
    truth = np.array([float(first[i]["true_acc"]) for i in common])
    out: dict[str, Any] = {"num_cells": len(common), "other_settings": other_meta, "other_prefix": other_prefix, "proxies": {}}
    for name in names:
        if name in ("params", "flops") and other_meta["layout"] == json.loads(csv_path.with_suffix(".meta.json").read_text())["layout"]:
            continue  # a table lookup: identical in both runs
        a = _finite_floor(np.array([float(first[i][name]) for i in common]))
        b = _finite_floor(np.array([float(second[i][name]) for i in common]))
        out["proxies"][name] = {"tau_between_runs": kendall_tau(a, b), "tau_truth_a": kendall_tau(truth, a), "tau_truth_b": kendall_tau(truth, b)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-archs", type=int, default=1000, help="isomorphism-unique cells to score")
    parser.add_argument("--seed", type=int, default=0, help="network initialisation and image batch seed")
    parser.add_argument("--cells-seed", type=int, default=0, help="which cells are drawn")
    parser.add_argument("--batch-size", type=int, default=64, help="images in the one batch")
    parser.add_argument("--channels", type=int, default=16, help="nb201 layout channels (C)")
    parser.add_argument("--cells", type=int, default=5, help="nb201 layout cells_per_stage (N)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--prefix", default="proxies", help="results/nb201/<prefix>_scores.csv, <prefix>.json/.md")
    parser.add_argument(
        "--compare-with", default=None,
        help="prefix of another run on a prefix of the same cells (other seed or layout) to cross-check",
    )
    parser.add_argument("--summary-only", action="store_true", help="rebuild the summary from the CSV")
    args = parser.parse_args()
    from spos.proxies import list_proxies

    names = list_proxies()
    OUT.mkdir(parents=True, exist_ok=True)
    csv_path = OUT / f"{args.prefix}_scores.csv"
    for path in (CSV, ZIP):
        if not path.exists():
            print(f"missing {path}: this benchmark needs the shared NB201 CSV and CIFAR-10 zip", file=sys.stderr)
            return 2
    wall = 0.0 if args.summary_only else compute(args, names, csv_path)
    result = summarise(args, names, csv_path, wall)
    if args.compare_with and args.compare_with != args.prefix:
        check = cross_check(names, csv_path, args.compare_with)
        if check:
            result["cross_check"] = check
    (OUT / f"{args.prefix}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, OUT / f"{args.prefix}.md")
    print(json.dumps({n: {k: round(v, 3) for k, v in r.items() if isinstance(v, float)} for n, r in result["proxies"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
