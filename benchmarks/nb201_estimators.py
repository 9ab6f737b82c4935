"""NAS-Bench-201 / CIFAR-10: does combining the supernet score with zero-cost proxies and cost
metrics rank cells better than the supernet alone? (issue 17, estimator levers; no new training)

Library API only (:mod:`spos.proxies`, :mod:`spos.estimator`, :mod:`spos.stats`,
:mod:`spos.groundtruth`, :mod:`spos.cost`; no stages). Inputs are the per-architecture supernet
scores that ``benchmarks/nb201_cifar10.py`` saved for two supernet seeds (s2, s3), each at its
final 20k step and its kept 15k checkpoint (``results/nb201/uniform_20k_s{2,3}_c16n1[_at15k]
_scores.csv``; 200 isomorphism-unique cells per seed, C=16, N=1 layout).

1. **Proxies** of every cell of those files at the layout of ``proxies.md`` (C=16, N=1, one
   batch of 64 training images, seed 0, the batch drawn exactly as ``nb201_proxies.py`` draws
   it): a cell whose exact architecture is in ``proxies_scores.csv`` reuses that row; the others
   are computed and appended one row per cell to ``estimators_proxies.csv`` (resumable: done
   cells are skipped; settings enforced through ``estimators_proxies.meta.json``).
2. **Estimators** (:class:`spos.estimator.PercentileEstimator`). Reference pools: for every
   proxy / cost signal the 1,000 cells of ``proxies_scores.csv`` (a fixed pool, not the
   evaluated cells); for the supernet signal the score file's own 200 scores (no other supernet
   scores of these weights exist). ``-inf`` proxy values (degenerate cells) become one below the
   smallest finite value in the pool; an evaluated ``-inf`` gets percentile 0.
3. **Avoiding fitting to the ground truth.** A grid of combinations (``grid()``, declared
   before any result was seen) is scored on one seed's two checkpoints; the combination with
   the best mean criterion there (``tau``: Kendall tau; ``top``: mean of P@5% and P@10%,
   ties by tau) is reported on the *other* seed. ``FIXED`` rules are pre-declared and never
   tuned. Checkpoint score ensembling = the mean of the 15k and 20k percentiles.
4. Per estimator and file: Kendall tau, Spearman rho, P@top-1 (is the pick the best cell),
   P@5%, P@10%, the true accuracy of the pick and its percentile; the constrained scenario
   (NB201 ``flops_cifar10_M`` at most the median of the 200 cells): the pick, the best feasible
   cell, the pick's percentile among feasible cells; a paired bootstrap (over cells) of the
   tau difference against the supernet alone on the same file.

Run (1 thread; resumable):
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/nb201_estimators.py
Rebuild the summary from the caches only:  ... --summary-only
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
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
TRUTH_CSV = SHARED / "nb201" / "nb201_tss.csv"
COLUMN = "cifar10valid_valid_acc"
FLOPS_COLUMN = "flops_cifar10_M"
POOL_CSV = OUT / "proxies_scores.csv"
CACHE = OUT / "estimators_proxies.csv"
PROXIES = ["flops", "grad_norm", "jacob_cov", "naswot", "params", "snip", "synflow"]
SEEDS = ("s2", "s3")
#: (seed, checkpoint) -> score file stem under results/nb201.
FILES = {
    ("s2", "20k"): "uniform_20k_s2_c16n1",
    ("s2", "15k"): "uniform_20k_s2_c16n1_at15k",
    ("s3", "20k"): "uniform_20k_s3_c16n1",
    ("s3", "15k"): "uniform_20k_s3_c16n1_at15k",
}
#: Pre-declared, untuned rules: {label: {signal: weight}} ("supernet" = the file's score).
FIXED: dict[str, dict[str, float]] = {
    "fixed: supernet + jacob_cov + naswot": {"supernet": 1.0, "jacob_cov": 1.0, "naswot": 1.0},
}
#: Checkpoint score ensembling (per seed: the 15k and 20k files' percentiles, mean).
ENSEMBLES: dict[str, dict[str, float]] = {
    "ckpt ensemble: supernet 15k + 20k": {"supernet_15k": 0.5, "supernet_20k": 0.5},
    "ckpt ensemble + jacob_cov + naswot (fixed)": {"supernet_15k": 0.5, "supernet_20k": 0.5, "jacob_cov": 1.0, "naswot": 1.0},
}
BOOTSTRAP = 1000


def grid() -> dict[str, dict[str, float]]:
    """Candidate combinations the cross-seed selection chooses from (supernet weight 1)."""
    out: dict[str, dict[str, float]] = {}

    def add(weights: dict[str, float]) -> None:
        label = "supernet " + " ".join(f"{'+' if w > 0 else '-'} {abs(w):g}*{n}" for n, w in weights.items())
        out[label] = {"supernet": 1.0, **weights}

    for name in PROXIES:
        for w in (0.25, 0.5, 1.0, 2.0):
            add({name: w})
    for name in ("flops", "params"):
        for w in (0.25, 0.5, 1.0):
            add({name: -w})
    for a, b in itertools.combinations(["synflow", "naswot", "jacob_cov", "flops"], 2):
        for wa, wb in itertools.product((0.5, 1.0), repeat=2):
            add({a: wa, b: wb})
    for name in ("synflow", "naswot", "jacob_cov"):
        for w, v in itertools.product((0.5, 1.0), (0.25, 0.5)):
            add({name: w, "flops": -v})
    return out


def _command() -> str:
    return " ".join(["OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python", "benchmarks/nb201_estimators.py", *sys.argv[1:]])


def _nb201_proxies_module() -> Any:
    """``benchmarks/nb201_proxies.py`` (its ``_batch`` draws the batch proxies.md used)."""
    spec = importlib.util.spec_from_file_location("nb201_proxies", Path(__file__).with_name("nb201_proxies.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _space() -> Any:
    from spos.space import create_space

    return create_space("nb201", channels=16, cells_per_stage=1)


def _score_files(space: Any) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out = {}
    for key, stem in FILES.items():
        rows = _read_csv(OUT / f"{stem}_scores.csv")
        if len(rows) != 200:
            raise SystemExit(f"{stem}_scores.csv: expected 200 rows, got {len(rows)}")
        out[key] = [{"arch": space.parse(r["arch"]), "truth": float(r[COLUMN]), "supernet": float(r["supernet_score"])} for r in rows]
    return out


def _meta(space: Any) -> dict[str, Any]:
    return {"layout": dict(space.layout), "seed": 0, "batch_size": 64, "proxies": PROXIES, "reuse_from": POOL_CSV.name}


def compute(args: argparse.Namespace) -> float:
    """Fill ``CACHE`` with every evaluated cell's proxies; returns this call's wall seconds."""
    from spos.cost import CostModel
    from spos.proxies import compute_proxies

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    space = _space()
    meta = _meta(space)
    meta_path = CACHE.with_suffix(".meta.json")
    if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
        raise SystemExit(f"{CACHE} was computed with other settings ({meta_path}); delete both files to recompute")
    pool_meta = json.loads(POOL_CSV.with_suffix(".meta.json").read_text())
    if pool_meta["layout"] != meta["layout"] or pool_meta["seed"] != 0 or pool_meta["batch_size"] != 64:
        raise SystemExit(f"{POOL_CSV} is not at C=16, N=1, batch 64, seed 0: nothing to reuse")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    archs: dict[str, Any] = {}
    for rows in _score_files(space).values():
        for row in rows:
            archs.setdefault(row["arch"].key, row["arch"])
    done = {space.parse(r["arch"]).key for r in _read_csv(CACHE)}
    pool = {space.parse(r["arch_str"]).key: r for r in _read_csv(POOL_CSV)}
    todo = [a for k, a in archs.items() if k not in done]
    reused = [a for a in todo if a.key in pool]
    fresh = [a for a in todo if a.key not in pool]
    print(f"{len(archs)} distinct cells; {len(done)} cached, {len(reused)} to reuse from {POOL_CSV.name}, {len(fresh)} to compute", flush=True)
    header = ["arch", "source", *PROXIES, "seconds"]
    new_file = not CACHE.exists()
    with CACHE.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(header)
        for arch in reused:
            writer.writerow([arch.short(), POOL_CSV.name, *(pool[arch.key][n] for n in PROXIES), ""])
        handle.flush()
        if not fresh:
            return time.perf_counter() - started
        images, labels = _nb201_proxies_module()._batch(64, 0)
        costs = CostModel.from_space(space)
        for count, arch in enumerate(fresh, start=1):
            tick = time.perf_counter()
            values = compute_proxies(space, [arch], PROXIES, images=images, labels=labels, seed=0, costs=costs)[0]
            writer.writerow([arch.short(), "computed", *(repr(values[n]) for n in PROXIES), f"{time.perf_counter() - tick:.3f}"])
            handle.flush()
            if count % 10 == 0 or count == len(fresh):
                rate = (time.perf_counter() - started) / count
                print(f"{count}/{len(fresh)} cells, {rate:.2f} s/cell, eta {rate * (len(fresh) - count) / 60:.1f} min", flush=True)
    return time.perf_counter() - started


def verify_reuse(count: int) -> list[dict[str, Any]]:
    """Recompute ``count`` cells of ``proxies_scores.csv`` and compare with the stored values."""
    from spos.cost import CostModel
    from spos.proxies import compute_proxies

    space = _space()
    images, labels = _nb201_proxies_module()._batch(64, 0)
    costs = CostModel.from_space(space)
    out = []
    for row in _read_csv(POOL_CSV)[:count]:
        arch = space.parse(row["arch_str"])
        values = compute_proxies(space, [arch], PROXIES, images=images, labels=labels, seed=0, costs=costs)[0]
        diff = {n: abs(values[n] - float(row[n])) / max(1e-12, abs(float(row[n]))) for n in PROXIES if math.isfinite(values[n])}
        out.append({"arch": arch.short(), "max_relative_difference": max(diff.values())})
    return out


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _floor(values: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """``-inf`` -> one below the smallest finite value (of ``reference`` when given)."""
    ref = values if reference is None else reference
    finite = ref[np.isfinite(ref)]
    return np.where(np.isfinite(values), values, (finite.min() - 1.0) if finite.size else 0.0)


def _pick(scores: np.ndarray, mask: np.ndarray | None = None) -> int:
    """Highest score among ``mask`` (the earliest row on ties, as ``spos.stats`` breaks them)."""
    candidates = np.arange(len(scores)) if mask is None else np.flatnonzero(mask)
    return int(candidates[np.argsort(-scores[candidates], kind="stable")[0]])


def evaluate(truth: np.ndarray, scores: np.ndarray, feasible: np.ndarray) -> dict[str, float]:
    from spos.stats import precision_at_k, rank_correlations

    scores = _floor(scores)
    pick, constrained = _pick(scores), _pick(scores, feasible)
    ft = truth[feasible]
    return {
        **rank_correlations(truth, scores),
        "precision_at_top1": precision_at_k(truth, scores, 1.0 / len(truth)),
        "pick_true_acc": float(truth[pick]),
        "top10_mean_true_acc": float(truth[np.argsort(-scores, kind="stable")[:10]].mean()),
        "constrained_top5_mean_true_acc": float(truth[np.flatnonzero(feasible)[np.argsort(-scores[feasible], kind="stable")[:5]]].mean()),
        "pick_percentile": float(100.0 * np.mean(truth < truth[pick])),
        "constrained_pick_true_acc": float(truth[constrained]),
        "best_feasible_true_acc": float(ft.max()),
        "constrained_pick_percentile": float(100.0 * np.mean(ft < truth[constrained])),
    }


def _tau_fast(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b, variant="b")[0])


def bootstrap_delta_tau(truth: np.ndarray, scores: np.ndarray, base: np.ndarray, seed: int) -> dict[str, float]:
    """Paired bootstrap over cells of tau(scores) - tau(base): mean, s.d., 2.5% and 97.5%."""
    rng = np.random.default_rng(seed)
    scores, base = _floor(scores), _floor(base)
    deltas = np.empty(BOOTSTRAP)
    for i in range(BOOTSTRAP):
        idx = rng.integers(0, len(truth), len(truth))
        deltas[i] = _tau_fast(truth[idx], scores[idx]) - _tau_fast(truth[idx], base[idx])
    return {"sd": float(deltas.std(ddof=1)), "lo95": float(np.quantile(deltas, 0.025)), "hi95": float(np.quantile(deltas, 0.975))}


class Data:
    """Signals of every evaluated cell, the reference pools, and the constraint."""

    def __init__(self) -> None:
        from spos.groundtruth import GroundTruth

        space = _space()
        self.files = _score_files(space)
        cache = {space.parse(r["arch"]).key: r for r in _read_csv(CACHE)}
        pool_rows = _read_csv(POOL_CSV)
        raw_pool = {n: np.array([float(r[n]) for r in pool_rows]) for n in PROXIES}
        self.pool = {n: _floor(v).tolist() for n, v in raw_pool.items()}
        flops_truth = GroundTruth.load(TRUTH_CSV, space, FLOPS_COLUMN)
        self.signals: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self.truth: dict[tuple[str, str], np.ndarray] = {}
        self.feasible: dict[tuple[str, str], np.ndarray] = {}
        self.nb201_flops: dict[tuple[str, str], np.ndarray] = {}
        for key, rows in self.files.items():
            missing = [r["arch"].short() for r in rows if r["arch"].key not in cache]
            if missing:
                raise SystemExit(f"{len(missing)} cells of {FILES[key]} have no proxies in {CACHE.name}; run without --summary-only")
            sig = {n: np.array([float(cache[r["arch"].key][n]) for r in rows]) for n in PROXIES}
            sig["supernet"] = np.array([r["supernet"] for r in rows])
            self.signals[key] = sig
            self.truth[key] = np.array([r["truth"] for r in rows])
            flops = np.array(flops_truth.lookup([r["arch"] for r in rows]), dtype=float)
            self.nb201_flops[key] = flops
            self.feasible[key] = flops <= np.median(flops)
        for seed in SEEDS:  # the two checkpoints of a seed rank the same cells in the same order
            a, b = self.files[(seed, "20k")], self.files[(seed, "15k")]
            if [r["arch"].key for r in a] != [r["arch"].key for r in b]:
                raise SystemExit(f"{seed}: the 15k and 20k score files list different cells or orders")

    def combined(self, key: tuple[str, str], weights: dict[str, float]) -> np.ndarray:
        from spos.estimator import PercentileEstimator

        seed = key[0]
        sig = dict(self.signals[key])
        sig["supernet_20k"] = self.signals[(seed, "20k")]["supernet"]
        sig["supernet_15k"] = self.signals[(seed, "15k")]["supernet"]
        pool = dict(self.pool)
        pool["supernet"] = sig["supernet"].tolist()
        pool["supernet_20k"] = sig["supernet_20k"].tolist()
        pool["supernet_15k"] = sig["supernet_15k"].tolist()
        estimator = PercentileEstimator(weights, pool)
        n = len(sig["supernet"])
        return np.array([estimator.score({s: float(sig[s][i]) for s in estimator.signals}) for i in range(n)])


def _criterion(result: dict[str, float], name: str) -> tuple[float, float]:
    if name == "tau":
        return (result["kendall_tau"], 0.0)
    return ((result["precision_at_5pct"] + result["precision_at_10pct"]) / 2, result["kendall_tau"])


def summarise(data: Data) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []

    def add(label: str, kind: str, chosen_on: str, weights: dict[str, float] | None, key: tuple[str, str], scores: np.ndarray) -> dict[str, Any]:
        truth, feasible = data.truth[key], data.feasible[key]
        row = {"label": label, "kind": kind, "chosen_on": chosen_on, "weights": weights, "seed": key[0], "checkpoint": key[1],
               **evaluate(truth, scores, feasible)}  # fmt: skip
        if kind != "single" or label != "supernet":  # ensembles are evaluated on the 20k file's key
            row["delta_tau_vs_supernet"] = row["kendall_tau"] - evaluate(truth, data.signals[key]["supernet"], feasible)["kendall_tau"]
        rows.append(row)
        return row

    # Single signals (nothing chosen): the paper's supernet score, each proxy, params/flops.
    for key in FILES:
        for name in ["supernet", *PROXIES]:
            add(name, "single", "-", None, key, data.signals[key][name])
    # The grid on every file (in-sample numbers kept in the JSON; the markdown shows cross-seed picks).
    candidates = grid()
    grid_results = {label: {f"{s}_{c}": evaluate(data.truth[(s, c)], data.combined((s, c), w), data.feasible[(s, c)]) for s, c in FILES} for label, w in candidates.items()}
    selections = {}
    for criterion in ("tau", "top"):
        for chosen_on, other in (("s2", "s3"), ("s3", "s2")):

            def value(label: str, chosen_on: str = chosen_on, criterion: str = criterion) -> tuple[float, float]:
                pair = [_criterion(grid_results[label][f"{chosen_on}_{c}"], criterion) for c in ("20k", "15k")]
                return (sum(p[0] for p in pair) / 2, sum(p[1] for p in pair) / 2)

            best = max(candidates, key=value)
            selections[f"{criterion}_on_{chosen_on}"] = {"label": best, "weights": candidates[best], "selection_value": value(best)}
            for c in ("20k", "15k"):
                key = (other, c)
                add(f"chosen by {criterion} on {chosen_on}: {best}", f"cross-seed ({criterion})", chosen_on, candidates[best], key, data.combined(key, candidates[best]))
                add(f"in-sample best by {criterion} on {chosen_on}: {best}", f"in-sample ({criterion})", chosen_on, candidates[best], (chosen_on, c), data.combined((chosen_on, c), candidates[best]))
    for label, weights in FIXED.items():
        for key in FILES:
            add(label, "fixed", "none (pre-declared)", weights, key, data.combined(key, weights))
    for label, weights in ENSEMBLES.items():
        for seed in SEEDS:  # evaluated against the 20k file's truth (the same cells)
            key = (seed, "20k")
            scores = data.combined(key, weights)
            row = add(label, "ensemble", "none (pre-declared)", weights, key, scores)
            row["checkpoint"] = "15k+20k"
    # Paired bootstrap of the tau difference for the reported non-single rows.
    for i, row in enumerate(rows):
        if row["kind"] == "single":
            continue
        ckpt = "20k" if row["checkpoint"] == "15k+20k" else row["checkpoint"]
        key = (row["seed"], ckpt)
        scores = data.combined(key, row["weights"])
        row["bootstrap_delta_tau"] = bootstrap_delta_tau(data.truth[key], scores, data.signals[key]["supernet"], seed=i)
    flops_agree = {f"{s}_{c}": _tau_fast(data.nb201_flops[(s, c)], data.signals[(s, c)]["flops"]) for s, c in FILES}
    constraint = {f"{s}_{c}": {"flops_cifar10_M_at_most": float(np.median(data.nb201_flops[(s, c)])), "feasible_cells": int(data.feasible[(s, c)].sum()),
                               "best_feasible_true_acc": float(data.truth[(s, c)][data.feasible[(s, c)]].max()),
                               "best_true_acc": float(data.truth[(s, c)].max())} for s, c in FILES}  # fmt: skip
    return {"rows": rows, "grid": grid_results, "grid_weights": candidates, "selections": selections,
            "constraint": constraint, "tau_nb201_flops_vs_cost_table_flops": flops_agree}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_markdown(result: dict[str, Any], path: Path) -> None:
    head = "| estimator | chosen on | seed | ckpt | tau | Δtau vs supernet [95% paired bootstrap] | rho | P@top1 | P@5% | P@10% | pick acc (pctl) | constrained pick acc (pctl among feasible) / best feasible |"
    sep = "|" + " --- |" * 12

    def line(r: dict[str, Any]) -> str:
        boot = r.get("bootstrap_delta_tau")
        delta = "-" if "delta_tau_vs_supernet" not in r else f"{r['delta_tau_vs_supernet']:+.3f}"
        if boot:
            delta += f" [{boot['lo95']:+.3f}, {boot['hi95']:+.3f}]"
        return "| " + " | ".join([
            r["label"], r["chosen_on"], r["seed"], r["checkpoint"], _f(r["kendall_tau"]), delta, _f(r["spearman_rho"]),
            _f(r["precision_at_top1"], 0), _f(r["precision_at_5pct"], 1), _f(r["precision_at_10pct"], 2),
            f"{r['pick_true_acc']:.2f} ({r['pick_percentile']:.1f})",
            f"{r['constrained_pick_true_acc']:.2f} ({r['constrained_pick_percentile']:.1f}) / {r['best_feasible_true_acc']:.2f}",
        ]) + " |"  # fmt: skip

    rows = result["rows"]
    lines = [
        "# Estimators on saved NB201 supernets: supernet score + zero-cost proxies + cost metrics",
        "",
        "Issue 17 item 1 (estimator levers on saved supernets) and item 4's checkpoint score ensembling.",
        "No new supernet training: the scores are those `benchmarks/nb201_cifar10.py` saved for two",
        "uniform supernets (seeds 2 and 3; C=16, N=1; 20k steps and the kept 15k checkpoint), 200",
        "isomorphism-unique cells per seed (the two seeds' cells overlap in 1 cell). Ground truth",
        f"`{COLUMN}`. Proxies at initialisation, C=16, N=1, one batch of 64 training images, seed 0",
        "(the settings of `proxies.md`).",
        "",
        "**Reference pools** of `PercentileEstimator`: every proxy/cost signal against the 1,000 cells of",
        "`proxies_scores.csv` (fixed, drawn independently of the evaluated cells; about 15 of each seed's",
        "200 cells are also in it); the supernet signal against the score file's own 200 scores (there are",
        "no other scores of these supernet weights; a candidate's supernet percentile therefore does",
        "depend on the evaluated set, which is monotone and does not change any ranking of the supernet alone).",
        "",
        "**Constrained scenario**: NB201 `flops_cifar10_M` (the benchmark network's FLOPs) at most the",
        "median of the file's 200 cells. Pick percentile = share of the 200 (or feasible) cells with lower",
        "true accuracy. P@top1 = 1 when the pick is the best of the 200 cells. Ties in a score (e.g.",
        "flops alone) are broken by file order, as `spos.stats` does.",
        "",
    ]
    for key, c in result["constraint"].items():
        lines.append(f"- {key}: best cell {c['best_true_acc']:.2f}%; FLOPs <= {c['flops_cifar10_M_at_most']:.2f}M, {c['feasible_cells']} feasible, best feasible {c['best_feasible_true_acc']:.2f}%")
    lines += [
        "",
        "**Noise.** With 200 cells Kendall tau has a sampling s.d. of about 0.034; P@5% is over 10 cells",
        "(steps of 0.1) and P@10% over 20 (steps of 0.05); a top pick is one cell. The bracket is a paired",
        f"bootstrap over cells ({BOOTSTRAP} resamples) of tau(estimator) - tau(supernet alone) on the same",
        "file, which is tighter than the unpaired 0.034 because both rank the same cells. Differences",
        "inside these bounds, and single-pick differences, are not evidence. The two checkpoints of one",
        "seed share cells and most of their training, so they are not independent replicates: there are",
        "effectively two independent supernets here.",
        "",
        "## Which rows were chosen on which data",
        "",
        "- **single**: one signal, nothing chosen.",
        "- **fixed (pre-declared)**: `supernet + jacob_cov + naswot`, equal weights, written into the script",
        "  before any estimator result was computed; never tuned.",
        "- **cross-seed**: the combination with the best mean criterion over one seed's two checkpoints",
        f"  ({len(result['grid_weights'])} candidates, `grid()` in the script), reported on the *other* seed. Criterion `tau`:",
        "  Kendall tau; `top`: mean of P@5% and P@10% (ties by tau).",
        "- **in-sample**: the same chosen combination on the data it was chosen on (optimistic; shown only",
        "  to size the selection effect).",
        "- **ensemble**: checkpoint score ensembling, mean of the 15k and 20k supernet percentiles (each in",
        "  its own file's 200 scores), alone and with the fixed proxies; pre-declared; evaluated on the seed's",
        "  cells; Δtau is against the 20k supernet alone.",
        "",
        "## Results",
        "",
        head,
        sep,
    ]
    order = ["single", "fixed", "ensemble", "cross-seed (tau)", "cross-seed (top)", "in-sample (tau)", "in-sample (top)"]
    for kind in order:
        for r in rows:
            if r["kind"] == kind and (kind != "single" or r["label"] in ("supernet", "jacob_cov", "naswot", "synflow", "flops")):
                lines.append(line(r))
    lines += [
        "",
        "Single-signal rows of `snip`, `grad_norm` and `params` are in `estimators.json` (params ranks",
        "like flops; snip/grad_norm are near zero at N=1, as in `proxies.md`).",
        "",
        "## Means over the two seeds (20k checkpoints; 15k in parentheses)",
        "",
        "Top-10 mean acc = mean true accuracy of the estimator's 10 best cells (less noisy than one pick);",
        "constrained top-5 = the same for its 5 best feasible cells.",
        "",
        "| estimator | tau | P@5% | P@10% | pick acc | top-10 mean acc | constrained pick pctl among feasible | constrained top-5 mean acc |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, kinds in result["means"].items():
        a, b = kinds["20k"], kinds.get("15k")

        def both(field: str, digits: int, a: dict[str, float] = a, b: dict[str, float] | None = b) -> str:
            return f"{a[field]:.{digits}f}" + (f" ({b[field]:.{digits}f})" if b else "")

        lines.append(f"| {label} | {both('kendall_tau', 3)} | {both('precision_at_5pct', 2)} | {both('precision_at_10pct', 2)} | {both('pick_true_acc', 2)} | {both('top10_mean_true_acc', 2)} | {both('constrained_pick_percentile', 1)} | {both('constrained_top5_mean_true_acc', 2)} |")
    lines += [
        "",
        "Cross-seed selections: " + "; ".join(f"{k}: `{v['label']}`" for k, v in result["selections"].items()) + ".",
        "",
        "FLOPs agreement: Kendall tau between NB201 `flops_cifar10_M` (N=5 network) and the cost-table FLOPs at",
        "N=1 over each file's cells: " + ", ".join(f"{k} {v:.3f}" for k, v in result["tau_nb201_flops_vs_cost_table_flops"].items()) + ".",
        "",
        f"Proxy compute: {result['proxy_cells']['computed']} cells computed here ({result['proxy_cells']['compute_seconds'] / 60:.1f} min of proxy time,",
        f"{result['proxy_cells']['compute_seconds'] / max(1, result['proxy_cells']['computed']):.2f} s/cell, 1 thread, shared 2-core machine), "
        f"{result['proxy_cells']['reused']} reused from `proxies_scores.csv`",
        f"(reuse check: {len(result['reuse_check'])} of its cells recomputed here, max relative difference "
        f"{max((r['max_relative_difference'] for r in result['reuse_check']), default=float('nan')):.2e}).",
        f"Per-cell cache: `estimators_proxies.csv`. Wall time: {result['wall_seconds_compute'] / 60:.1f} min for the proxy computation, "
        f"{result['wall_seconds_summary'] / 60:.1f} min for the evaluation (last invocation).",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    notes = path.with_name(path.stem + "_notes.md")
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    path.write_text("\n".join(lines))


def _means(rows: list[dict[str, Any]]) -> dict[str, Any]:
    fields = ["kendall_tau", "precision_at_5pct", "precision_at_10pct", "pick_true_acc", "top10_mean_true_acc",
              "constrained_pick_percentile", "constrained_top5_mean_true_acc"]
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        if r["kind"] == "single" and r["label"] not in ("supernet", "jacob_cov", "naswot", "synflow", "flops"):
            continue
        if r["kind"].startswith("in-sample"):
            continue
        label = r["label"] if not r["kind"].startswith("cross-seed") else f"cross-seed by {r['kind'][12:-1]} (each seed's pick from the other)"
        ckpt = "20k" if r["checkpoint"] in ("20k", "15k+20k") else "15k"
        groups.setdefault(label, {}).setdefault(ckpt, []).append(r)
    return {label: {c: {f: float(np.mean([r[f] for r in rs])) for f in fields} for c, rs in by.items()} for label, by in groups.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--summary-only", action="store_true", help="rebuild the summary from the caches")
    parser.add_argument("--verify-reuse", type=int, default=2, help="recompute this many proxies_scores.csv cells to check reuse")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for path in (TRUTH_CSV, POOL_CSV):
        if not path.exists():
            print(f"missing {path}", file=sys.stderr)
            return 2
    previous = OUT / "estimators.json"
    old = json.loads(previous.read_text()) if previous.exists() else {}
    if args.summary_only:
        wall_compute, reuse_check = old.get("wall_seconds_compute", 0.0), old.get("reuse_check", [])
    else:
        wall_compute = compute(args)
        reuse_check = verify_reuse(args.verify_reuse) if args.verify_reuse else []
    tick = time.perf_counter()
    data = Data()
    result = summarise(data)
    cache_rows = _read_csv(CACHE)
    computed = [r for r in cache_rows if r["source"] == "computed"]
    result = {
        "command": _command() if not args.summary_only else old.get("command", _command()),
        "files": {f"{s}_{c}": f"{stem}_scores.csv" for (s, c), stem in FILES.items()},
        "proxy_settings": _meta(_space()),
        "pools": {"proxies_and_costs": f"{POOL_CSV.name} (1,000 cells)", "supernet": "the score file's own 200 scores"},
        "proxy_cells": {"computed": len(computed), "reused": len(cache_rows) - len(computed), "compute_seconds": float(sum(float(r["seconds"]) for r in computed))},
        "reuse_check": reuse_check,
        "means": _means(result["rows"]),
        **result,
        "wall_seconds_compute": round(wall_compute, 1),
        "wall_seconds_summary": round(time.perf_counter() - tick, 1),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads, "cpus": os.cpu_count(), "load_average": os.getloadavg()},
    }
    (OUT / "estimators.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, OUT / "estimators.md")
    for label, kinds in result["means"].items():
        print(label, {c: {k: round(v, 3) for k, v in m.items()} for c, m in kinds.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
