"""Search stage end to end on the smoke supernet (SPEC section 4, issue: search)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from spos.arch import Arch
from spos.checkpoint import load_checkpoint
from spos.config import load_config
from spos.dist import Runtime
from spos.stages import search, train_supernet
from spos.stages.common import open_for_scoring
from tests.conftest import ROOT, SMOKE, run_cli

FLOPS_MAX = 340_000  # the smoke space spans 266,784 to 408,160 MACs: about half is feasible
SEARCH = [
    "search.generations=8",
    "search.population_size=8",
    "search.top_k=4",
    "search.mutation_count=3",
    "search.crossover_count=3",
    f"search.constraints=[{{metric: flops, max: {FLOPS_MAX}}}]",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("supernet")
    train_supernet.run(load_config(SMOKE), run_dir, runtime=Runtime.from_env("cpu", threads=2))
    return run_dir


def _copy_supernet(trained, target):
    target.mkdir(parents=True, exist_ok=True)
    (target / "supernet.ckpt").write_bytes((trained / "supernet.ckpt").read_bytes())
    return target


@pytest.fixture(scope="module")
def searched(trained, tmp_path_factory):
    run_dir = _copy_supernet(trained, tmp_path_factory.mktemp("search"))
    config = load_config(SMOKE, [*SEARCH, "search.random_baseline=true"])
    summary = search.run(config, run_dir, runtime=Runtime.from_env("cpu", threads=2))
    return run_dir, summary


def test_search_writes_its_files_and_respects_the_constraint(searched):
    run_dir, summary = searched
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert len(history) == summary["evaluations"] == 8 * 8
    assert all(record["flops"] <= FLOPS_MAX for record in history)
    keys = [record["key"] for record in history]
    assert len(keys) == len(set(keys))  # never evaluated twice
    best = Arch.load(run_dir / "arch.json")
    assert best.short() == summary["best_arch"]
    assert summary["best_score"] == max(record["score"] for record in history)
    front = json.loads((run_dir / "pareto.json").read_text())["front"]
    flops = [p["flops"] for p in front]
    scores = [p["score"] for p in front]
    assert flops == sorted(flops) and scores == sorted(scores)  # cheaper never better
    assert json.loads((run_dir / "summary.json").read_text())["search"]["best_score"] == summary["best_score"]
    baseline = [json.loads(line) for line in (run_dir / "baseline" / "history.jsonl").read_text().splitlines()]
    assert len(baseline) == 64 and summary["baseline"]["evaluations"] == 64


def test_search_is_deterministic_and_resumes_after_sigkill(trained, searched, tmp_path):
    reference, _ = searched
    run_dir = _copy_supernet(trained, tmp_path / "killed")
    command = [sys.executable, "-m", "spos", "search", "--config", str(SMOKE), "--out", str(run_dir), *SEARCH]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run_dir / "search_state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not state.exists():
        time.sleep(0.005)
    killed = process.poll() is None
    if killed:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    generation_at_kill = json.loads(state.read_text())["state"]["generation"] if state.exists() else 0
    result = run_cli("search", "--config", str(SMOKE), "--out", str(run_dir), *SEARCH)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run_dir / "arch.json").read_text())["arch"] == json.loads((reference / "arch.json").read_text())["arch"]
    history = (run_dir / "history.jsonl").read_text().splitlines()
    assert history == (reference / "history.jsonl").read_text().splitlines()
    assert killed and generation_at_kill < 8, "the search finished before it could be killed"


def test_infeasible_constraint_is_a_clear_error(trained, tmp_path):
    run_dir = _copy_supernet(trained, tmp_path / "r")
    result = run_cli("search", "--config", str(SMOKE), "--out", str(run_dir), "search.constraints=[{metric: flops, max: 1000}]")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "admits no architecture" in result.stderr


def test_search_refuses_a_supernet_of_another_space(trained, tmp_path):
    run_dir = _copy_supernet(trained, tmp_path / "r")
    result = run_cli("search", "--config", str(SMOKE), "--out", str(run_dir), "space.name=shufflenet_imagenet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trained in space 'shufflenet_cifar'" in result.stderr


def test_missing_supernet_is_a_clear_error(tmp_path):
    result = run_cli("search", "--config", str(SMOKE), "--out", str(tmp_path / "none"))
    assert result.returncode == 2 and "supernet.ckpt" in result.stderr and "does not exist" in result.stderr


def test_final_rescoring_picks_the_best_of_the_top_k_on_the_larger_sample(trained, searched, tmp_path):
    """search.final_top_k: screen on 64 validation images, settle the top 4 on all 128."""
    reference, reference_summary = searched
    run_dir = _copy_supernet(trained, tmp_path / "final")
    overrides = [*SEARCH, "search.final_top_k=4", "search.final_recalibrate_images=128"]
    config = load_config(SMOKE, overrides)
    runtime = Runtime.from_env("cpu", threads=2)
    summary = search.run(config, run_dir, runtime=runtime)

    # Screening is untouched: the same candidates with the same scores.
    assert (run_dir / "history.jsonl").read_text() == (reference / "history.jsonl").read_text()
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    top4 = sorted(history, key=lambda r: -r["score"])[:4]
    finalists = summary["finalists"]
    payload = load_checkpoint(run_dir / "supernet.ckpt", kind="supernet", map_location="cpu")
    session = open_for_scoring(config, payload, run_dir / "supernet.ckpt", runtime)
    assert sorted(f["arch"] for f in finalists) == sorted(session.space.arch(r["arch"]).short() for r in top4)

    # Each final score is what a scorer with the final budgets gives, and the winner has the best.
    fine = session.scorer_with(recalibrate_images=128, val_images=None)
    for finalist in finalists:
        assert fine.score(session.space.arch(finalist["arch"].split(","))) == pytest.approx(finalist["final_score"])
    assert [f["final_score"] for f in finalists] == sorted((f["final_score"] for f in finalists), reverse=True)
    assert summary["best_arch"] == finalists[0]["arch"] and summary["best_score"] == finalists[0]["final_score"]
    saved = json.loads((run_dir / "arch.json").read_text())
    assert saved["score"] == finalists[0]["final_score"]
    assert reference_summary["best_score"] == top4[0]["score"]


def test_finalist_finetuning_rescores_each_finalist_from_the_supernet_weights(trained, searched, tmp_path):
    """search.final_finetune_steps: each finalist's path is trained briefly, from the supernet's
    own weights every time, then re-scored; the checkpoint is left as it was."""
    reference, _ = searched
    run_dir = _copy_supernet(trained, tmp_path / "finetune")
    overrides = [*SEARCH, "search.final_top_k=3", "search.final_finetune_steps=6", "search.final_finetune_lr=0.05"]
    config = load_config(SMOKE, overrides)
    runtime = Runtime.from_env("cpu", threads=2)
    before = (run_dir / "supernet.ckpt").read_bytes()
    summary = search.run(config, run_dir, runtime=runtime)
    assert (run_dir / "supernet.ckpt").read_bytes() == before
    assert (run_dir / "history.jsonl").read_text() == (reference / "history.jsonl").read_text()
    finalists = summary["finalists"]
    assert len(finalists) == 3 and summary["final_seconds"] > 0
    assert summary["best_arch"] == finalists[0]["arch"]

    # A finalist scored alone, in another order, gets the same score: the fine-tuning starts
    # from the supernet's weights and its batches depend on the candidate only.
    payload = load_checkpoint(run_dir / "supernet.ckpt", kind="supernet", map_location="cpu")
    session = open_for_scoring(config, payload, run_dir / "supernet.ckpt", runtime)
    scorer = session.scorer_with(recalibrate_images=config.search.recalibrate_images, val_images=None)
    plain = []
    for finalist in reversed(finalists):
        arch = session.space.arch(finalist["arch"].split(","))
        assert session.finetuned_score(scorer, arch, steps=6, lr=0.05) == pytest.approx(finalist["final_score"])
        plain.append(scorer.score(arch))
    assert sorted(plain) != sorted(f["final_score"] for f in finalists)  # the fine-tuning did something


ESTIMATOR = [
    "search.generations=3",
    "search.population_size=6",
    "search.top_k=3",
    "search.mutation_count=3",
    "search.crossover_count=2",
    "search.estimator={weights: {supernet: 1.0, flops: -1.0, params: 0}, pool_size: 12}",
]


@pytest.fixture(scope="module")
def estimated(trained, tmp_path_factory):
    run_dir = _copy_supernet(trained, tmp_path_factory.mktemp("estimator"))
    summary = search.run(load_config(SMOKE, ESTIMATOR), run_dir, runtime=Runtime.from_env("cpu", threads=2))
    return run_dir, summary


def test_estimator_fitness_is_the_percentile_estimators_value_of_the_recorded_signals(estimated):
    from spos.estimator import PercentileEstimator

    run_dir, summary = estimated
    pool = json.loads((run_dir / "estimator_pool.json").read_text())
    assert len(pool["archs"]) == 12 and set(pool["signals"]) == {"supernet", "flops"}  # weight 0: no pool
    estimator = PercentileEstimator({"supernet": 1.0, "flops": -1.0, "params": 0.0}, pool["signals"])
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert len(history) == 18
    for record in history:
        assert set(record["signals"]) == {"supernet", "flops", "params"}
        assert record["signals"]["flops"] == record["flops"] and record["signals"]["params"] == record["params"]
        assert record["score"] == estimator.score(record["signals"])
    # The pure supernet scores are accuracies on 64 images; the fitness mixes in FLOPs (lower is better).
    assert all(float(r["signals"]["supernet"] * 64 / 100).is_integer() for r in history)
    best = max(history, key=lambda r: r["score"])
    assert summary["best_score"] == best["score"]
    assert summary["estimator"]["weights"] == {"supernet": 1.0, "flops": -1.0, "params": 0.0}
    assert summary["estimator"]["best_percentiles"] == {
        k: round(100 * v, 2) for k, v in estimator.percentiles(best["signals"]).items()
    }
    saved = json.loads((run_dir / "arch.json").read_text())
    assert saved["estimator"] == {"supernet": 1.0, "flops": -1.0, "params": 0.0}
    assert json.loads((run_dir / "summary.json").read_text())["search"]["estimator"] == summary["estimator"]


def test_estimator_search_resumes_to_the_uninterrupted_result(trained, estimated, tmp_path):
    reference, _ = estimated
    run_dir = _copy_supernet(trained, tmp_path / "resumed")
    runtime = Runtime.from_env("cpu", threads=2)
    # Stopped after its first generation (a search's state is saved after each one) ...
    search.run(load_config(SMOKE, [*ESTIMATOR, "search.generations=1"]), run_dir, runtime=runtime)
    pool = (run_dir / "estimator_pool.json").read_bytes()
    stamp = (run_dir / "estimator_pool.json").stat().st_mtime_ns
    assert json.loads((run_dir / "search_state.json").read_text())["state"]["generation"] == 1
    # ... then resumed: the saved pool is reused as is and the result is the uninterrupted one.
    search.run(load_config(SMOKE, ESTIMATOR), run_dir, runtime=runtime)
    assert (run_dir / "estimator_pool.json").read_bytes() == pool == (reference / "estimator_pool.json").read_bytes()
    assert (run_dir / "estimator_pool.json").stat().st_mtime_ns == stamp
    assert (run_dir / "history.jsonl").read_text() == (reference / "history.jsonl").read_text()
    assert (run_dir / "arch.json").read_text() == (reference / "arch.json").read_text()
    # Another estimator cannot resume this state.
    other = run_cli("search", "--config", str(SMOKE), "--out", str(run_dir), *ESTIMATOR[:-1],
                    "search.estimator.weights={supernet: 1.0, flops: -0.5}")  # fmt: skip
    assert other.returncode == 2 and "search.estimator" in other.stderr and "Traceback" not in other.stderr
