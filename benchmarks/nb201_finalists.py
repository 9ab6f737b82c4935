"""Finalist re-ranking on NAS-Bench-201: does brief fine-tuning fix the supernet's top?

Issue 17 item 5. Takes a run of ``benchmarks/nb201_cifar10.py`` (its ``supernet.ckpt`` and the
``rank/scores.csv`` of ``spos rank``), picks the supernet's top ``--top-k`` ranked cells (and,
separately, the top ``--top-k`` among the cells within a FLOPs bound: the space's FLOPs at most
the median of the ranked cells), and re-scores each after fine-tuning its path alone for each
``--steps`` value from the supernet's weights (``ScoringSession.finetuned_score``, what
``search.final_finetune_steps`` runs). For every setting it reports the true accuracy of the
pick, its percentile among the ranked (feasible) cells, Kendall tau among the finalists, and
the seconds per finalist: the cost next to the gain. Steps 0 is the plain supernet score on
the same images.

    .venv/bin/python benchmarks/nb201_finalists.py --run runs/bench/nb201/NAME --top-k 10 \
        --steps 0,100,300 --lr 0.01

Writes ``benchmarks/results/nb201/finalists_<run name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "nb201"
COLUMN = "cifar10valid_valid_acc"


def _read_scores(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or COLUMN not in rows[0] or "supernet_score" not in rows[0]:
        raise SystemExit(f"{path} lacks the {COLUMN} / supernet_score columns of spos rank's scores.csv")
    return rows


def _percentile(value: float, population: list[float]) -> float:
    """Share (%) of ``population`` strictly below ``value``."""
    return 100.0 * sum(v < value for v in population) / len(population)


def rerank(session, scorer, finalists: list, truths: list[float], population: list[float], *, steps: int, lr: float) -> dict:
    """Scores of ``finalists`` after ``steps`` fine-tuning steps (0: plain), and what they pick."""
    from spos.stats import rank_correlations

    start = time.perf_counter()
    if steps:
        scores = [session.finetuned_score(scorer, arch, steps=steps, lr=lr) for arch in finalists]
    else:
        scores = [scorer.score(arch) for arch in finalists]
    seconds = time.perf_counter() - start
    pick = max(range(len(finalists)), key=lambda i: (scores[i], -i))  # ties: the better-screened one
    return {
        "steps": steps,
        "lr": lr if steps else None,
        "scores": scores,
        "pick_arch": finalists[pick].short(),
        "pick_true_acc": truths[pick],
        "pick_percentile": round(_percentile(truths[pick], population), 1),
        "kendall_tau_among_finalists": round(rank_correlations(truths, scores)["kendall_tau"], 3),
        "seconds_per_finalist": round(seconds / len(finalists), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="run directory of benchmarks/nb201_cifar10.py")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--steps", default="0,100,300", help="comma-separated fine-tuning steps (0: plain score)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from spos.checkpoint import load_checkpoint
    from spos.config import load_config
    from spos.cost import CostModel
    from spos.dist import Runtime
    from spos.stages.common import open_for_scoring

    run = args.run.resolve()
    rows = _read_scores(run / "rank" / "scores.csv")
    config = load_config(run / "config.yaml")
    runtime = Runtime.from_env("cpu", threads=args.threads)
    payload = load_checkpoint(run / "supernet.ckpt", kind="supernet", map_location="cpu")
    session = open_for_scoring(config, payload, run / "supernet.ckpt", runtime)
    scorer = session.scorer
    space = session.space
    costs = CostModel.from_space(space)
    archs = [space.arch(row["arch"].split(",")) for row in rows]
    truth = [float(row[COLUMN]) for row in rows]
    screen = [float(row["supernet_score"]) for row in rows]
    flops = [costs.flops(arch) for arch in archs]
    bound = sorted(flops)[len(flops) // 2]
    steps = [int(s) for s in args.steps.split(",")]

    scenarios = {}
    for name, members in (
        ("unconstrained", list(range(len(archs)))),
        (f"flops <= {bound} (median)", [i for i in range(len(archs)) if flops[i] <= bound]),
    ):
        order = sorted(members, key=lambda i: (-screen[i], i))[: args.top_k]
        population = [truth[i] for i in members]
        finalists, truths = [archs[i] for i in order], [truth[i] for i in order]
        scenarios[name] = {
            "cells": len(members),
            "best_true_acc": max(population),
            "best_true_acc_among_finalists": max(truths),
            "finalists": [a.short() for a in finalists],
            "finalists_true_acc": truths,
            "screen_scores": [screen[i] for i in order],
            "settings": [
                rerank(session, scorer, finalists, truths, population, steps=s, lr=args.lr) for s in steps
            ],
        }
        print(json.dumps({name: [{k: v for k, v in r.items() if k != "scores"} for r in scenarios[name]["settings"]]}, indent=1))

    result = {
        "run": run.name,
        "command": " ".join([sys.executable.replace(str(ROOT) + "/", ""), "benchmarks/nb201_finalists.py", *sys.argv[1:]]),
        "ranked_cells": len(archs),
        "top_k": args.top_k,
        "scoring": {"recalibrate_images": config.search.recalibrate_images, "val_images": config.search.val_images},
        "scenarios": scenarios,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"finalists_{run.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Finalist re-ranking: {run.name}",
        "",
        f"Top {args.top_k} of {len(archs)} ranked cells by the supernet score, re-scored after fine-tuning "
        "each path alone from the supernet's weights. Pick percentile: share of the scenario's cells "
        "with lower true accuracy. Single supernet, single seed.",
        "",
        f"Command: `{result['command']}`",
        "",
        "| scenario | cells | best true | best among finalists | steps | pick true acc | pick pctl | tau among finalists | s / finalist |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, scenario in scenarios.items():
        for r in scenario["settings"]:
            lines.append(
                f"| {name} | {scenario['cells']} | {scenario['best_true_acc']:.2f} | "
                f"{scenario['best_true_acc_among_finalists']:.2f} | {r['steps']} | {r['pick_true_acc']:.2f} | "
                f"{r['pick_percentile']:.1f} | {r['kendall_tau_among_finalists']:.3f} | {r['seconds_per_finalist']:.1f} |"
            )
    (RESULTS / f"finalists_{run.name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / f'finalists_{run.name}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
