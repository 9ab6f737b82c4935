"""NAS-Bench-201: training levers against the complexity bias, paired with a baseline supernet.

Issue 17 item 4. Each variant is a run of ``benchmarks/nb201_cifar10.py`` that differs from the
baseline run only in a training lever (``supernet.complexity_lr_power``: DYNAS's complexity-aware
learning rate; ``supernet.sampler.name=gradnorm``: PA&DA's gradient-norm path sampling) and was
ranked on the same cells (same seed, same ``--num-archs``), so the comparison is paired: a
bootstrap over cells of the difference in Kendall tau. For the baseline and every variant:
tau, rho, P@5%, P@10%, the pick of the supernet score alone and of the pre-declared fixed
estimator (supernet + jacob_cov + naswot, equal weights, percentile pools as in
``estimators.md``), the params-only and FLOPs-only picks, and the constrained scenario
(NB201 FLOPs at most the median of the ranked cells): the pick's true accuracy and its
percentile among feasible cells; and the op composition of each estimator's top 50 cells
against the truth's top 50. Evolution's and random search's picks come from each run's JSON
(where the run searched).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/nb201_levers.py \
        --baseline uniform_20k_s2_c16n1_at15k --variants calr2_15of20k_s2_c16n1,gradnorm_15of20k_s2_c16n1

Reads ``results/nb201/<name>_scores.csv`` and ``<name>.json``; proxies of the cells from
``estimators_proxies.csv`` / ``proxies_scores.csv`` (computed by ``nb201_estimators.py``; cells
missing there are left out of the estimator rows, and their number is printed). Writes
``results/nb201/levers.json`` and ``levers.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "nb201"
FIXED = {"supernet": 1.0, "jacob_cov": 1.0, "naswot": 1.0}


def _load(est: Any, space: Any, name: str) -> dict[str, Any]:
    rows = est._read_csv(OUT / f"{name}_scores.csv")
    if not rows:
        raise SystemExit(f"no {name}_scores.csv under {OUT}")
    meta = json.loads((OUT / f"{name}.json").read_text()) if (OUT / f"{name}.json").exists() else {}
    return {
        "archs": [space.parse(r["arch"]) for r in rows],
        "truth": np.array([float(r[est.COLUMN]) for r in rows]),
        "supernet": np.array([float(r["supernet_score"]) for r in rows]),
        "meta": meta,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--variants", required=True, help="comma-separated run names")
    args = parser.parse_args()

    import nb201_estimators as est  # benchmarks/ is on sys.path when this script runs

    from spos.estimator import PercentileEstimator
    from spos.groundtruth import GroundTruth
    space = est._space()
    base = _load(est, space, args.baseline)
    keys = [a.key for a in base["archs"]]
    proxies = {space.parse(r["arch"]).key: r for r in est._read_csv(est.CACHE)}
    pool_rows = est._read_csv(est.POOL_CSV)
    for r in pool_rows:
        proxies.setdefault(space.parse(r["arch_str"]).key, r)
    pool = {n: est._floor(np.array([float(r[n]) for r in pool_rows])).tolist() for n in est.PROXIES}
    flops = np.array(GroundTruth.load(est.TRUTH_CSV, space, est.FLOPS_COLUMN).lookup(base["archs"]), dtype=float)
    feasible = flops <= np.median(flops)
    have = np.array([k in proxies for k in keys])
    print(f"{have.sum()} of {len(keys)} cells have proxies")
    signal = {n: np.array([float(proxies[k][n]) if k in proxies else np.nan for k in keys]) for n in est.PROXIES}

    def fixed(scores: np.ndarray) -> np.ndarray:
        estimator = PercentileEstimator(FIXED, {**pool, "supernet": scores.tolist()})
        return np.array([
            estimator.score({"supernet": float(scores[i]), "jacob_cov": float(signal["jacob_cov"][i]), "naswot": float(signal["naswot"][i])})
            if have[i] else -np.inf
            for i in range(len(keys))
        ])

    def search_picks(meta: dict[str, Any]) -> dict[str, Any]:
        found = meta.get("search") or {}
        return {
            "evolution_pick_true_acc": (found.get("evolution") or {}).get("true_acc"),
            "random_pick_true_acc": (found.get("random") or {}).get("true_acc"),
        }

    truth = base["truth"]
    ops = sorted({str(v) for a in base["archs"] for _, v in a.values})

    def composition(scores: np.ndarray, mask: np.ndarray, top: int = 50) -> dict[str, float]:
        """Mean number of edges per cell with each op among the ``top`` cells by ``scores``."""
        index = np.flatnonzero(mask)[np.argsort(-est._floor(scores[mask]), kind="stable")[:top]]
        return {op: round(float(np.mean([sum(str(v) == op for _, v in base["archs"][i].values) for i in index])), 2) for op in ops}

    compositions = [{"run": "-", "estimator": "truth", **composition(truth, np.ones(len(keys), bool))}]
    rows: list[dict[str, Any]] = []
    for label, scores in (("params only", signal["params"]), ("flops only", signal["flops"])):
        rows.append({"run": "-", "estimator": label, **est.evaluate(truth[have], scores[have], feasible[have]), "cells": int(have.sum())})
        compositions.append({"run": "-", "estimator": label, **composition(scores, have)})
    for name in [args.baseline, *args.variants.split(",")]:
        run = base if name == args.baseline else _load(est, space, name)
        order = {a.key: i for i, a in enumerate(run["archs"])}
        if set(order) != set(keys):
            raise SystemExit(f"{name} ranked other cells than {args.baseline}: not a paired comparison")
        scores = np.array([run["supernet"][order[k]] for k in keys])
        for label, values, mask in (("supernet", scores, np.ones(len(keys), bool)), ("fixed: supernet + jacob_cov + naswot", fixed(scores), have)):
            row = {"run": name, "estimator": label, **est.evaluate(truth[mask], values[mask], feasible[mask]), "cells": int(mask.sum())}
            compositions.append({"run": name, "estimator": label, **composition(values, mask)})
            if name != args.baseline and label == "supernet":
                row["delta_tau_vs_baseline"] = row["kendall_tau"] - rows[2]["kendall_tau"]
                row["delta_tau_bootstrap"] = est.bootstrap_delta_tau(truth, scores, base["supernet"], seed=0)
            if label == "supernet":
                row.update(search_picks(run["meta"]))
                row["overrides"] = run["meta"].get("overrides")
            rows.append(row)

    result = {"baseline": args.baseline, "variants": args.variants.split(","), "cells": len(keys),
              "feasible_cells": int(feasible.sum()), "best_true_acc": float(truth.max()),
              "best_feasible_true_acc": float(truth[feasible].max()), "rows": rows, "top50_composition": compositions,
              "command": " ".join(["OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/nb201_levers.py", *sys.argv[1:]])}  # fmt: skip
    (OUT / "levers.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    f = est._f
    lines = [
        "# NB201 training levers against the complexity bias (issue 17 item 4): single-seed screening",
        "",
        f"Baseline `{args.baseline}`; every variant trained with the same seed, data, schedule and steps and "
        f"ranked on the same {len(keys)} cells (paired). Best of these cells {truth.max():.2f}%; constrained "
        f"scenario: NB201 FLOPs at most their median, {int(feasible.sum())} feasible cells, best feasible "
        f"{truth[feasible].max():.2f}%. Δtau: against the baseline's supernet score, [95% paired bootstrap over "
        "cells]. One seed: a screen, not evidence of a gain (tau's sampling s.d. over 200 cells is about 0.034; "
        "picks are single cells).",
        "",
        f"Command: `{result['command']}`",
        "",
        "| run | estimator | tau | Δtau [95%] | rho | P@5% | P@10% | pick acc (pctl) | constrained pick acc (pctl of feasible) | evolution pick | random pick |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        boot = r.get("delta_tau_bootstrap")
        delta = f"{r['delta_tau_vs_baseline']:+.3f} [{boot['lo95']:+.3f}, {boot['hi95']:+.3f}]" if boot else "-"
        lines.append(
            f"| {r['run']} | {r['estimator']} | {f(r['kendall_tau'])} | {delta} | {f(r['spearman_rho'])} | "
            f"{f(r['precision_at_5pct'], 2)} | {f(r['precision_at_10pct'], 2)} | {r['pick_true_acc']:.2f} ({r['pick_percentile']:.1f}) | "
            f"{r['constrained_pick_true_acc']:.2f} ({r['constrained_pick_percentile']:.1f}) | "
            f"{f(r.get('evolution_pick_true_acc'), 2)} | {f(r.get('random_pick_true_acc'), 2)} |"
        )
    lines += [
        "",
        "Op composition of the top 50 cells (mean edges per cell, of 6) by each estimator against the truth's top 50:",
        "",
        "| run | estimator | " + " | ".join(ops) + " |",
        "| --- | --- | " + " | ".join("---" for _ in ops) + " |",
    ]
    lines += [f"| {c['run']} | {c['estimator']} | " + " | ".join(f"{c[op]:.2f}" for op in ops) + " |" for c in compositions]
    (OUT / "levers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
