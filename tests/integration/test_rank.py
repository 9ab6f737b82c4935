"""`spos rank` on a tiny NAS-Bench-201 supernet, against a ground-truth file the test writes."""

from __future__ import annotations

import csv
import json
import random

from scipy.stats import kendalltau, spearmanr

from spos.cost import CostModel
from spos.space import create_space
from spos.spaces.nb201 import nb201_to_arch_str
from tests.conftest import SMOKE, run_cli

NB201 = [
    "space.name=nb201",
    "space.layout={channels: 4, cells_per_stage: 1}",
    "data.synthetic_image_size=32",
    "supernet.steps=30",
    "supernet.panel.eval_every=0",
    "supernet.panel.size=0",
    "threads=1",
]


def test_rank_reports_correlations_that_match_its_own_scores(tmp_path):
    space = create_space("nb201")
    rng = random.Random(0)
    rows = {}
    while len(rows) < 24:
        arch = space.sample(rng)
        ops = [value for _, value in arch.values]
        # A made-up "truth": more 3x3 convs is better.
        rows[nb201_to_arch_str(ops)] = 80 + 2 * ops.count("nor_conv_3x3") + 0.01 * len(rows)
    truth = tmp_path / "truth.csv"
    truth.write_text("arch_str,acc\n" + "".join(f"{a},{v}\n" for a, v in rows.items()))

    run_dir = tmp_path / "run"
    trained = run_cli("train-supernet", "--config", str(SMOKE), "--out", str(run_dir), *NB201)
    assert trained.returncode == 0, trained.stderr[-2000:]
    args = ["rank", "--run", str(run_dir), "--ground-truth", str(truth), "--column", "acc", "--num-archs", "12"]
    ranked = run_cli(*args, "threads=1")
    assert ranked.returncode == 0, ranked.stderr[-2000:]
    assert "Kendall tau" in ranked.stdout

    report = json.loads((run_dir / "rank" / "rank.json").read_text())
    assert report["num_archs"] == 12 == len(report["points"])
    true_values = [p[0] for p in report["points"]]
    scores = [p[1] for p in report["points"]]
    assert len(set(true_values)) == 12  # 12 distinct rows of the file
    assert report["kendall_tau"] == round(kendalltau(true_values, scores)[0], 4)
    assert report["spearman_rho"] == round(spearmanr(true_values, scores)[0], 4)
    assert (run_dir / "rank" / "scatter.png").stat().st_size > 1000
    with (run_dir / "rank" / "scores.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 12
    # Option bias: the made-up truth rewards 3x3 convs, and rank.json says so from the archs.
    conv3 = [row["arch"].split(",").count("nor_conv_3x3") for row in table]
    truth_col = [float(row["acc"]) for row in table]
    score_col = [float(row["supernet_score"]) for row in table]
    bias = {row["option"]: row for row in report["option_bias"]}
    assert bias["nor_conv_3x3"]["tau_truth"] == round(kendalltau(conv3, truth_col)[0], 4) > 0.8
    assert bias["nor_conv_3x3"]["tau_proxy"] == round(kendalltau(conv3, score_col)[0], 4)
    assert "the supernet" in ranked.stdout and ("overrates" in ranked.stdout or "underrates" in ranked.stdout)
    assert json.loads((run_dir / "summary.json").read_text())["rank"]["kendall_tau"] == report["kendall_tau"]
    # The zero-cost baseline: ranking the same archs by parameter count (of the run's layout).
    tiny = create_space("nb201", channels=4, cells_per_stage=1)
    costs = CostModel.from_space(tiny)
    params = [costs.params(tiny.arch(row["arch"].split(","))) for row in table]
    assert report["cost_baselines"]["params"]["kendall_tau"] == round(kendalltau(truth_col, params)[0], 4)
    assert "Kendall tau of params" in ranked.stdout

    # A rerun reads the score cache (keyed by the weights) and scores nothing again.
    cache = run_dir / "rank" / "scores.jsonl"
    lines = cache.read_text().count("\n")
    again = run_cli(*args, "threads=1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert cache.read_text().count("\n") == lines
    assert json.loads((run_dir / "rank" / "rank.json").read_text())["points"] == report["points"]

    # Scored another way (fewer validation images), nothing comes from the cache.
    other = run_cli(*args, "threads=1", "search.val_images=16")
    assert other.returncode == 0, other.stderr[-2000:]
    assert cache.read_text().count("\n") == lines + 12
    assert json.loads((run_dir / "rank" / "rank.json").read_text())["val_images"] == 16

    # Zero-cost proxies beside the supernet: per-signal figures, one csv column each, cached.
    with_proxies = [*args, "--proxies", "naswot,synflow", "threads=1", "search.estimator.proxy_batch=8"]
    proxied = run_cli(*with_proxies)
    assert proxied.returncode == 0, proxied.stderr[-2000:]
    report = json.loads((run_dir / "rank" / "rank.json").read_text())
    assert list(report["signals"]) == ["supernet", "naswot", "synflow", "params", "flops"]
    assert report["proxy_batch"] == 8
    with (run_dir / "rank" / "scores.csv").open() as handle:
        table = list(csv.DictReader(handle))
    truth_col = [float(row["acc"]) for row in table]
    for name in ("naswot", "synflow", "params", "flops"):
        column_values = [float(row[name]) for row in table]
        assert report["signals"][name]["kendall_tau"] == round(kendalltau(truth_col, column_values)[0], 4)
    assert report["signals"]["params"] == report["cost_baselines"]["params"]
    assert report["signals"]["supernet"]["kendall_tau"] == report["kendall_tau"]
    assert "naswot" in proxied.stdout and "synflow" in proxied.stdout and "P@5%" in proxied.stdout
    proxy_cache = run_dir / "rank" / "proxies.jsonl"
    assert proxy_cache.read_text().count("\n") == 2 * 12
    again = run_cli(*with_proxies)
    assert again.returncode == 0 and proxy_cache.read_text().count("\n") == 2 * 12  # resumed, not recomputed
    assert json.loads((run_dir / "rank" / "rank.json").read_text())["signals"] == report["signals"]
    unknown = run_cli(*args, "--proxies", "naswot,zen", "threads=1")
    assert unknown.returncode == 2 and "unknown proxies ['zen']" in unknown.stderr and "synflow" in unknown.stderr

    bad = run_cli(*args[:-4], "--column", "top1", "--num-archs", "12")
    assert bad.returncode == 2 and "no column 'top1'" in bad.stderr and "Traceback" not in bad.stderr
