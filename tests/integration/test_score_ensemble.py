"""Checkpoint score ensembling, ``search.score_checkpoints`` (issue 17 item 4; Ning et al.,
NeurIPS 2021): a candidate's supernet score is the mean of its scores on the final supernet and
on kept checkpoints, in search and in ``spos rank``, resumable, and never mixed with the
scores of another checkpoint set."""

from __future__ import annotations

import csv
import json
import random
import shutil

import pytest

from spos.checkpoint import load_checkpoint
from spos.config import load_config
from spos.dist import Runtime
from spos.scoring import ArchScorer
from spos.space import create_space, make_rng
from spos.spaces.nb201 import nb201_to_arch_str
from spos.stages import search, train_supernet
from spos.stages.common import open_for_scoring
from tests.conftest import SMOKE, run_cli
from tests.integration.test_rank import NB201 as RANK_NB201

NB201 = [*RANK_NB201, "supernet.keep_checkpoints=[10, 20]"]  # the rank tests' tiny supernet, keeping two steps
SEARCH = [
    "search.generations=3",
    "search.population_size=6",
    "search.top_k=3",
    "search.mutation_count=3",
    "search.crossover_count=3",
]
ENSEMBLE = [*NB201, *SEARCH, "search.score_checkpoints=[20, 10]"]
CHECKPOINTS = ("supernet.ckpt", "supernet_step10.ckpt", "supernet_step20.ckpt")


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A tiny NB-201 supernet trained for 30 steps that kept its weights at steps 10 and 20."""
    run_dir = tmp_path_factory.mktemp("kept")
    train_supernet.run(load_config(SMOKE, NB201), run_dir, runtime=Runtime.from_env("cpu", threads=1))
    return run_dir


def _copy(kept, target, names=CHECKPOINTS):
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(kept / name, target / name)
    return target


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ensembled(kept, tmp_path_factory):
    """An uninterrupted search with the 10/20/30 ensemble and the final re-scoring of its top 2."""
    run_dir = _copy(kept, tmp_path_factory.mktemp("ensembled"))
    config = load_config(SMOKE, [*ENSEMBLE, "search.final_top_k=2"])
    summary = search.run(config, run_dir, runtime=Runtime.from_env("cpu", threads=1))
    return run_dir, summary


def test_an_ensemble_score_is_the_mean_of_each_checkpoints_own_score(kept):
    """Scored alone, each checkpoint gives its own numbers (they differ: the test can fail);
    the ensemble's score is their mean whatever order the candidates come in."""
    runtime = Runtime.from_env("cpu", threads=1)
    scoring = ["search.score=loss"]  # minus the mean loss: a real number per checkpoint
    config = load_config(SMOKE, [*NB201, *scoring, "search.score_checkpoints=[20, 10]"])
    session = open_for_scoring(config, load_checkpoint(kept / "supernet.ckpt"), kept / "supernet.ckpt", runtime)
    assert session.score_steps == [10, 20, 30]
    assert len({session.fingerprint, *(m.fingerprint for m in session.ensemble)}) == 3

    rng = make_rng(0, "ensemble-test")
    archs = [session.space.sample(rng) for _ in range(5)]
    alone = {}
    for step, name in ((10, "supernet_step10.ckpt"), (20, "supernet_step20.ckpt"), (30, "supernet.ckpt")):
        single = open_for_scoring(load_config(SMOKE, [*NB201, *scoring]), load_checkpoint(kept / name), kept / name, runtime)
        assert single.step == step and not single.ensemble
        alone[step] = [single.scorer.score(arch) for arch in archs]
    means = [(a + b + c) / 3 for a, b, c in zip(alone[10], alone[20], alone[30], strict=True)]
    assert max(abs(mean - last) for mean, last in zip(means, alone[30], strict=True)) > 1e-3

    ensemble = session.scores()
    assert ensemble.score_many(archs[::-1])[::-1] == pytest.approx(means, rel=1e-9)
    for i, arch in enumerate(archs):
        assert ensemble.parts(arch) == pytest.approx({"10": alone[10][i], "20": alone[20][i], "30": alone[30][i]}, rel=1e-9)


def test_search_records_each_checkpoints_score_and_ensembles_the_final_rescoring(ensembled):
    run_dir, summary = ensembled
    history = _lines(run_dir / "history.jsonl")
    assert len(history) == summary["evaluations"] == 18
    for record in history:
        parts = record["supernet_at"]
        assert list(parts) == ["10", "20", "30"]
        assert record["score"] == pytest.approx(sum(parts.values()) / 3, rel=1e-12)
    assert any(len(set(r["supernet_at"].values())) > 1 for r in history)  # the checkpoints disagree
    assert summary["score_steps"] == [10, 20, 30]
    # Each checkpoint's scores are stored once per candidate, under that checkpoint's weights.
    stored = _lines(run_dir / "signals.jsonl")
    assert len(stored) == 3 * 18 and len({r["supernet"] for r in stored}) == 3

    # The finalists are re-scored on the whole validation split by the same three checkpoints.
    runtime = Runtime.from_env("cpu", threads=1)
    config = load_config(SMOKE, ENSEMBLE)
    session = open_for_scoring(config, load_checkpoint(run_dir / "supernet.ckpt"), run_dir / "supernet.ckpt", runtime)
    final = session.scores(session.scorer_with(recalibrate_images=config.search.recalibrate_images, val_images=None))
    assert len(summary["finalists"]) == 2
    for finalist in summary["finalists"]:
        arch = session.space.arch(finalist["arch"].split(","))
        assert finalist["final_score"] == pytest.approx(sum(final.parts(arch).values()) / 3, rel=1e-12)
    assert summary["best_score"] == summary["finalists"][0]["final_score"]


class _Interrupted(Exception):
    pass


def test_an_interrupted_ensemble_search_resumes_to_the_uninterrupted_result(kept, ensembled, tmp_path, monkeypatch):
    """Killed half-way through a generation's step-10 scores, then resumed: the same history
    and pick, and no checkpoint score computed twice (the stored ones are reused)."""
    reference, _ = ensembled
    run_dir = _copy(kept, tmp_path / "resumed")
    config = load_config(SMOKE, [*ENSEMBLE, "search.final_top_k=2"])
    calls = []
    real_score = ArchScorer.score

    def interrupted(self, arch):
        calls.append(arch.key)
        if len(calls) > 3 * 6 + 4:  # generation 0 (6 candidates x 3 checkpoints), then 4 more
            raise _Interrupted
        return real_score(self, arch)

    monkeypatch.setattr(ArchScorer, "score", interrupted)
    with pytest.raises(_Interrupted):
        search.run(config, run_dir, runtime=Runtime.from_env("cpu", threads=1))
    monkeypatch.undo()
    assert json.loads((run_dir / "search_state.json").read_text())["state"]["generation"] == 1
    assert len(_lines(run_dir / "signals.jsonl")) == 3 * 6 + 4

    search.run(config, run_dir, runtime=Runtime.from_env("cpu", threads=1))
    assert (run_dir / "history.jsonl").read_text() == (reference / "history.jsonl").read_text()
    assert (run_dir / "arch.json").read_text() == (reference / "arch.json").read_text()
    key = lambda r: (r["supernet"], r["key"])  # noqa: E731
    assert sorted(_lines(run_dir / "signals.jsonl"), key=key) == sorted(_lines(reference / "signals.jsonl"), key=key)


def test_another_checkpoint_set_is_not_resumed_and_scores_with_its_own_checkpoints(kept, ensembled, tmp_path):
    reference, _ = ensembled
    run_dir = tmp_path / "changed"
    shutil.copytree(reference, run_dir)
    # The finished search state holds 10/20/30 means: another set may not continue it.
    refused = run_cli("search", "--config", str(SMOKE), "--out", str(run_dir), *NB201, *SEARCH,
                      "search.score_checkpoints=[20]")  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "search.score_checkpoints" in refused.stderr and "search_state.json" in refused.stderr

    # Restarted with steps 20 and 30 only: their stored scores are reused, and the candidates'
    # scores are means over those two checkpoints, not the old three-checkpoint numbers.
    (run_dir / "search_state.json").unlink()
    stored = len(_lines(run_dir / "signals.jsonl"))
    config = load_config(SMOKE, [*NB201, *SEARCH, "search.score_checkpoints=[20]"])
    summary = search.run(config, run_dir, runtime=Runtime.from_env("cpu", threads=1))
    assert summary["score_steps"] == [20, 30]
    history = _lines(run_dir / "history.jsonl")
    old = {r["key"]: r for r in _lines(reference / "history.jsonl")}
    for record in history:
        assert list(record["supernet_at"]) == ["20", "30"]
        assert record["score"] == pytest.approx(sum(record["supernet_at"].values()) / 2, rel=1e-12)
        if record["key"] in old:
            assert record["supernet_at"] == {k: old[record["key"]]["supernet_at"][k] for k in ("20", "30")}
    assert any(record["key"] in old and record["score"] != old[record["key"]]["score"] for record in history)
    new_keys = {r["key"] for r in history} - set(old)
    assert len(_lines(run_dir / "signals.jsonl")) == stored + 2 * len(new_keys)


def test_a_missing_kept_checkpoint_is_one_line_naming_the_file_and_the_fix(kept, tmp_path):
    run_dir = _copy(kept, tmp_path / "missing", names=("supernet.ckpt", "supernet_step10.ckpt"))
    result = run_cli("search", "--config", str(SMOKE), "--out", str(run_dir), *ENSEMBLE)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(run_dir / "supernet_step20.ckpt") in result.stderr and "does not exist" in result.stderr
    assert "supernet.keep_checkpoints" in result.stderr
    assert not (run_dir / "history.jsonl").exists()
    # A kept checkpoint searched as the supernet cannot also be one of its ensemble.
    itself = run_cli("search", "--config", str(SMOKE), "--out", str(run_dir), "--supernet",
                     str(run_dir / "supernet_step10.ckpt"), *NB201, *SEARCH, "search.score_checkpoints=[10]")  # fmt: skip
    assert itself.returncode == 2 and "Traceback" not in itself.stderr
    assert "lists step 10, the step of the scored supernet" in itself.stderr


def test_an_estimators_supernet_signal_is_the_ensemble_score(kept, tmp_path):
    run_dir = _copy(kept, tmp_path / "estimator")
    weights = "search.estimator={weights: {supernet: 1.0, flops: -1.0}, pool_size: 8}"
    config = load_config(SMOKE, [*ENSEMBLE, weights, "search.generations=2"])
    runtime = Runtime.from_env("cpu", threads=1)
    search.run(config, run_dir, runtime=runtime)
    for record in _lines(run_dir / "history.jsonl"):
        parts = record["supernet_at"]
        assert list(parts) == ["10", "20", "30"]
        assert record["signals"]["supernet"] == pytest.approx(sum(parts.values()) / 3, rel=1e-12)
    # The reference pool's supernet values are ensemble scores too, and tagged as such.
    session = open_for_scoring(config, load_checkpoint(run_dir / "supernet.ckpt"), run_dir / "supernet.ckpt", runtime)
    pool = json.loads((run_dir / "estimator_pool.json").read_text())
    assert pool["tag"]["supernet"] == session.score_fingerprint != session.fingerprint
    first = session.space.arch(pool["archs"][0].split(","))
    assert pool["signals"]["supernet"][0] == pytest.approx(session.scores().score(first), rel=1e-12)


def _truth(path, count: int = 24):
    space = create_space("nb201")
    rng = random.Random(0)
    rows = {}
    while len(rows) < count:
        ops = [value for _, value in space.sample(rng).values]
        rows[nb201_to_arch_str(ops)] = 80 + 2 * ops.count("nor_conv_3x3") + 0.01 * len(rows)
    path.write_text("arch_str,acc\n" + "".join(f"{a},{v}\n" for a, v in rows.items()))
    return path


def test_rank_reports_the_ensemble_and_caches_each_checkpoint_apart(kept, tmp_path):
    run_dir = _copy(kept, tmp_path / "rank")
    truth = _truth(tmp_path / "truth.csv")
    args = ["rank", "--run", str(run_dir), "--config", str(SMOKE), "--ground-truth", str(truth), "--column", "acc",
            "--num-archs", "12", *NB201]  # fmt: skip
    cache = run_dir / "rank" / "scores.jsonl"

    single = run_cli(*args)
    assert single.returncode == 0, single.stderr[-2000:]
    alone = json.loads((run_dir / "rank" / "rank.json").read_text())
    assert "checkpoint_ensemble" not in alone and "checkpoint ensemble" not in single.stdout
    assert len(_lines(cache)) == 12

    ensembled = run_cli(*args, "search.score_checkpoints=[10]")
    assert ensembled.returncode == 0, ensembled.stderr[-2000:]
    assert "checkpoint ensemble" in ensembled.stdout and "[10, 30]" in ensembled.stdout
    # Only the step-10 scores were computed: the final supernet's came from the cache.
    records = _lines(cache)
    assert len(records) == 24 and len({r["supernet"] for r in records[12:]}) == 1
    assert records[12]["supernet"] not in {r["supernet"] for r in records[:12]}
    report = json.loads((run_dir / "rank" / "rank.json").read_text())
    assert report["checkpoint_ensemble"]["steps"] == [10, 30]
    assert report["checkpoint_ensemble"]["weights_sha256"]["30"] == report["supernet_weights_sha256"]
    with (run_dir / "rank" / "scores.csv").open() as handle:
        table = list(csv.DictReader(handle))
    for row, point in zip(table, report["points"], strict=True):
        mean = (float(row["supernet_score_at_10"]) + float(row["supernet_score_at_30"])) / 2
        assert float(row["supernet_score"]) == pytest.approx(mean, rel=1e-12) == point[1]
    assert [float(row["supernet_score_at_30"]) for row in table] == [p[1] for p in alone["points"]]
    assert [p[1] for p in report["points"]] != [p[1] for p in alone["points"]]
