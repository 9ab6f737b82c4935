"""Diagnostic: does blending supernet scores with each other or with a zero-cost prior rank better?

Reads the per-architecture scores the NAS-Bench-201 benchmark saves
(``benchmarks/results/nb201/<name>_scores.csv``) and reports Kendall tau, Spearman rho and
precision@5%/10% against ``cifar10valid_valid_acc`` for

* each file's supernet scores alone,
* ranking by parameter count alone (the zero-cost baseline ``spos rank`` also reports),
* the mean of the supernet's and the parameter count's normalised ranks (equal weights: a
  fixed rule, nothing fitted to the truth),
* with ``--mean-of`` groups, the mean of the normalised ranks of several score files that
  rank the same architectures (e.g. two checkpoints of one run).

It reads results only; nothing here is a library option.

    .venv/bin/python benchmarks/nb201_score_blend.py benchmarks/results/nb201/A_scores.csv ... \
        --mean-of A_at15k_scores.csv,A_scores.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "nb201_cifar10.yaml"
COLUMN = "cifar10valid_valid_acc"


def _read(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "supernet_score" not in rows[0]:
        raise SystemExit(f"error: {path} is not a scores.csv of spos rank (no supernet_score column)")
    return (
        [row["arch"] for row in rows],
        np.array([float(row[COLUMN]) for row in rows]),
        np.array([float(row["supernet_score"]) for row in rows]),
    )


def _unit_ranks(values: np.ndarray) -> np.ndarray:
    return (rankdata(values) - 1) / max(1, values.size - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scores", nargs="*", type=Path, help="scores CSVs to evaluate one by one")
    parser.add_argument("--mean-of", action="append", default=[], help="comma-separated scores CSVs of the same architectures")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    from spos.config import load_config
    from spos.cost import CostModel
    from spos.stages.common import build_space
    from spos.stats import rank_correlations

    space = build_space(load_config(CONFIG, []))
    costs = CostModel.from_space(space)

    def params_of(archs: list[str]) -> np.ndarray:
        return np.array([float(costs.cost(space.parse(a), "params")) for a in archs])

    rows: list[dict] = []

    def add(label: str, truth: np.ndarray, predicted: np.ndarray, archs: list[str]) -> None:
        figures = rank_correlations(truth, predicted)
        best = int(np.argmax(predicted))
        rows.append({"variant": label, **{k: round(v, 4) for k, v in figures.items()}, "top_arch_true": float(truth[best]), "top_arch": archs[best]})

    for path in args.scores:
        archs, truth, score = _read(path)
        params = params_of(archs)
        name = path.name.removesuffix("_scores.csv")
        add(f"{name}: supernet", truth, score, archs)
        add(f"{name}: params", truth, params, archs)
        add(f"{name}: supernet + params ranks", truth, _unit_ranks(score) + _unit_ranks(params), archs)
    for group in args.mean_of:
        paths = [Path(p) for p in group.split(",")]
        loaded = [_read(p) for p in paths]
        archs, truth, _ = loaded[0]
        if any(other[0] != archs for other in loaded[1:]):
            raise SystemExit(f"error: {group} do not rank the same architectures in the same order")
        names = "+".join(p.name.removesuffix("_scores.csv") for p in paths)
        add(f"mean rank of {names}", truth, sum(_unit_ranks(s) for _, _, s in loaded), archs)

    width = max(len(r["variant"]) for r in rows) if rows else 10
    print(f"{'variant':<{width}}  tau    rho    P@5%  P@10%  top-1 true acc")
    for r in rows:
        print(
            f"{r['variant']:<{width}}  {r['kendall_tau']:.3f}  {r['spearman_rho']:.3f}  "
            f"{r['precision_at_5pct']:.2f}  {r['precision_at_10pct']:.2f}   {r['top_arch_true']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
