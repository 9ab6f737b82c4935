"""The score cache of search (in memory) and ``spos rank`` (a resumable JSON-lines file)."""

import json

from spos.dist import Runtime
from spos.scoring import CachedScorer, score_sharded
from spos.space import SearchSpace, make_rng

from .test_space import TOY


def _archs(count: int, space: SearchSpace = TOY) -> list:
    rng = make_rng(0, "test-archs")
    return [space.sample(rng) for _ in range(count)]


def _counting(calls: list):
    def score(arch) -> float:
        calls.append(arch.key)
        return float(len(calls))

    return score


def test_in_memory_cache_scores_each_architecture_once():
    archs = _archs(5)
    calls: list = []
    cache = CachedScorer(_counting(calls))
    first = cache.score_many(archs[:3])
    again = cache.score_many(archs)
    assert again[:3] == first and len(calls) == 5
    assert cache.missing(archs) == [] and cache.score(archs[0]) == first[0] and len(calls) == 5


def test_sharded_cache_matches_score_sharded_on_one_rank():
    archs = _archs(4)
    runtime = Runtime.from_env("cpu")
    expected = score_sharded(archs, _counting([]), runtime)
    cached = CachedScorer(_counting([]), runtime=runtime).score_many(archs)
    assert cached == [expected[arch.key] for arch in archs]


def test_file_store_resumes_only_matching_records(tmp_path):
    store = tmp_path / "rank" / "scores.jsonl"
    archs = _archs(4)
    tag = {"supernet": "abc", "settings": {"score": "accuracy", "seed": 0}}
    calls: list = []
    seen: list = []
    CachedScorer(_counting(calls), store=store, tag=tag).score_many(
        archs[:2], on_score=lambda arch, value: seen.append((arch.key, value))
    )
    lines = [json.loads(line) for line in store.read_text().splitlines()]
    # The on-disk format of rank/scores.jsonl, field order included.
    assert [list(record) for record in lines] == [["key", "score", "supernet", "settings"]] * 2
    assert [(r["key"], r["score"]) for r in lines] == seen == [(archs[0].key, 1.0), (archs[1].key, 2.0)]

    with store.open("a") as handle:  # a line cut by a kill, and a record of other weights
        handle.write(json.dumps({"key": archs[2].key, "score": 9.0, **tag, "supernet": "other"}) + "\n")
        handle.write('{"key": "cut')
    resumed_calls: list = []
    resumed = CachedScorer(_counting(resumed_calls), store=store, tag=tag)
    assert resumed.missing(archs) == archs[2:]
    assert resumed.score_many(archs)[:2] == [1.0, 2.0] and len(resumed_calls) == 2
    other = CachedScorer(_counting([]), store=store, tag={**tag, "settings": {"score": "loss", "seed": 0}})
    assert other.missing(archs) == archs
