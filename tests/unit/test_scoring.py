"""The score cache of search (in memory) and ``spos rank`` (a resumable JSON-lines file), and
the checkpoint ensemble built on it."""

import json

import pytest

from spos.dist import Runtime
from spos.scoring import CachedScorer, CheckpointEnsemble, score_sharded
from spos.space import SearchSpace, make_rng

from .test_space import TOY


def _archs(count: int, space: SearchSpace = TOY) -> list:
    rng = make_rng(0, "test-archs")
    return [space.sample(rng) for _ in range(count)]


def _smoke_supernet(*, val_size: int):
    """The smoke config's data (96 synthetic training images), space and a seeded supernet."""
    import torch

    from spos.config import load_config
    from spos.data.prepare import prepare_data
    from spos.stages.common import build_space
    from spos.supernet import build_supernet
    from tests.conftest import SMOKE

    config = load_config(SMOKE, ["data.synthetic_size=96", f"data.val_size={val_size}"])
    data = prepare_data(config.data, seed=config.seed)
    space = build_space(config, data)
    torch.manual_seed(0)
    return data, space, build_supernet(space).to(memory_format=torch.channels_last), Runtime.from_env("cpu")


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


def test_scorer_holds_uint8_images_on_the_device_and_scores_as_float_batches_did():
    """Issue 18 item 6: the fixed scoring images stay uint8 (a quarter of float32's memory)
    and are normalised per batch; the scores equal those of float32 batches prepared up front
    (the previous behaviour) exactly."""
    import torch

    from spos.data import iterate_batches
    from spos.scoring import ArchScorer, build_scorer
    from spos.space import seed_from

    data, space, supernet, runtime = _smoke_supernet(val_size=32)
    kwargs = dict(seed=0, recalibrate_images=40, val_images=24, batch_size=16, channels_last=True)
    scorer = build_scorer(supernet, data, runtime, **kwargs)
    for held in (scorer.recalibrate_batches, scorer.val_batches):
        assert [tuple(images.shape) for images, _ in held.batches][0] == (16, 3, 16, 16)
        assert all(images.dtype == torch.uint8 and images.device == runtime.device for images, _ in held.batches)
        inputs, labels = held[0]  # normalised when read
        assert inputs.dtype == torch.float32 and inputs.is_contiguous(memory_format=torch.channels_last)
    assert sum(len(labels) for _, labels in scorer.recalibrate_batches.batches) == 40

    def as_float(dataset):
        return [(data.to_float(images, runtime, channels_last=True), labels) for images, labels in iterate_batches(dataset, batch_size=16)]

    generator = torch.Generator().manual_seed(seed_from(0, "recalibration-images"))  # build_scorer's draw
    recal = data.train.subset(torch.randperm(len(data.train), generator=generator)[:40])
    reference = ArchScorer(supernet, recalibrate_batches=as_float(recal), val_batches=as_float(data.val.subset(torch.arange(24))))
    archs = _archs(3, space)
    assert [scorer.score(arch) for arch in archs] == [reference.score(arch) for arch in archs]
    scorer.metric = reference.metric = "loss"
    assert [scorer.score(arch) for arch in archs] == [reference.score(arch) for arch in archs]


def _constant(value: float, calls: list):
    def score(arch) -> float:
        calls.append(arch.key)
        return value + len(arch.key) / 100  # differs per architecture

    return score


def test_checkpoint_ensemble_is_the_mean_of_its_checkpoints_in_any_order():
    archs = _archs(4)
    calls: list = []
    members = {"10": CachedScorer(_constant(1.0, calls)), "20": CachedScorer(_constant(4.0, calls))}
    ensemble = CheckpointEnsemble(members)
    backwards = ensemble.score_many(archs[::-1])[::-1]
    for arch, score in zip(archs, backwards, strict=True):
        assert score == (1.0 + 4.0) / 2 + len(arch.key) / 100
        assert ensemble.parts(arch) == {"10": 1.0 + len(arch.key) / 100, "20": 4.0 + len(arch.key) / 100}
    assert ensemble.score_many(archs) == backwards and len(calls) == 2 * 4  # each checkpoint once
    single = CheckpointEnsemble({"30": CachedScorer(_constant(2.5, []))})
    assert single.score(archs[0]) == 2.5 + len(archs[0].key) / 100  # one checkpoint: its score as is


def test_a_changed_checkpoint_set_reuses_only_the_stored_scores_of_the_same_weights(tmp_path):
    """The store keys each checkpoint's scores by its weight hash: an ensemble of other
    checkpoints recomputes theirs and never takes the old ensemble's numbers."""
    store = tmp_path / "signals.jsonl"
    archs = _archs(3)

    def ensemble(weights: dict, calls: list) -> CheckpointEnsemble:
        return CheckpointEnsemble(
            {label: CachedScorer(_constant(value, calls), store=store, tag={"supernet": f"hash{label}"})
             for label, value in weights.items()}
        )  # fmt: skip

    first_calls: list = []
    first = ensemble({"10": 1.0, "30": 3.0}, first_calls)
    first_scores = first.score_many(archs)
    assert len(first_calls) == 6 and first.pending(archs) == 0
    other_calls: list = []
    other = ensemble({"20": 2.0, "30": 3.0}, other_calls)
    assert other.missing(archs) == archs and other.pending(archs) == 3  # the step-20 scores only
    other_scores = other.score_many(archs)
    assert len(other_calls) == 3
    assert [b - a for a, b in zip(first_scores, other_scores, strict=True)] == pytest.approx([0.5] * 3)
    assert len(store.read_text().splitlines()) == 9


def test_folded_scoring_matches_the_supernet_path_and_folds_every_plain_conv_bn_pair():
    """Issue 18 item 3: candidates are evaluated as standalone networks with BN folded into
    the convolutions; the scores are those of ``supernet(x, arch)`` in eval mode (accuracy
    exactly on this data, loss to float rounding), and the supernet is left as it was."""
    import torch
    from torch import nn

    from spos.childnet import evaluation_network, fold_batchnorms
    from spos.scoring import build_scorer

    data, space, supernet, runtime = _smoke_supernet(val_size=48)
    kwargs = dict(seed=0, recalibrate_images=48, val_images=48, batch_size=16, channels_last=True)
    folded = build_scorer(supernet, data, runtime, **kwargs)
    plain = build_scorer(supernet, data, runtime, fold_batchnorm=False, **kwargs)
    state = {name: t.clone() for name, t in supernet.state_dict().items()}
    archs = _archs(4, space)
    assert [folded.score(a) for a in archs] == [plain.score(a) for a in archs]
    folded.metric = plain.metric = "loss"
    for arch in archs:
        assert abs(folded.score(arch) - plain.score(arch)) < 1e-5
    assert all(torch.equal(t, state[name]) for name, t in supernet.state_dict().items())

    network = evaluation_network(supernet, archs[0])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    assert next(network.parameters()).is_contiguous(memory_format=torch.channels_last)

    class Custom(nn.Conv2d):  # e.g. a quantised conv: its arithmetic is not foldable
        pass

    torch.manual_seed(1)
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          Custom(4, 4, 1), nn.BatchNorm2d(4))
    block[1].running_mean.uniform_(-1, 1)
    block[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 5, 5)
    expected = block.eval()(x)
    fold_batchnorms(block)
    assert [type(m).__name__ for m in block] == ["Conv2d", "Identity", "ReLU", "Custom", "BatchNorm2d"]
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-6)
