"""Latency lookup tables: measurement, lookups, files, validation (SPEC section 4)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from spos import make_rng
from spos.cost import CostModel
from spos.errors import ArchError, ConfigError, SposError
from spos.latency import (
    LATENCY_METRIC,
    LatencyTable,
    measure_latency_table,
    time_interleaved,
    validate_latency_table,
)
from spos.space import create_space, iter_options
from spos.spaces.shufflenet import shufflenet_space

# One thread: the suite shares two cores, and OpenMP threads waiting on a busy core turn
# sub-millisecond calls into scheduler time slices.
THREADS = 1


def _tiny_space(name: str = "tiny_shufflenet", **overrides):
    """Four choice blocks at 16x16: the whole table is measured in well under a second."""
    options = dict(
        input_size=16,
        in_channels=3,
        num_classes=10,
        stem_channels=8,
        stem_stride=1,
        stage_repeats=[1, 1, 1, 1],
        stage_channels=[16, 32, 48, 64],
        stage_strides=[2, 2, 2, 1],
        head_channels=64,
        dropout=0.0,
    )
    options.update(overrides)
    return shufflenet_space(name, **options)


@pytest.fixture(scope="module")
def space():
    return _tiny_space()


@pytest.fixture(scope="module")
def table(space):
    return measure_latency_table(space, device="cpu", repeats=3, warmup=1, threads=THREADS)


def test_the_table_covers_every_option_and_records_how_it_was_measured(space, table):
    assert table.space_name == space.name and table.space_version == space.version
    assert [label for label, _ in table.layers] == list(space.labels)
    for label, option in iter_options(space):
        entry = table.entry(label, option)
        assert math.isfinite(entry) and entry > 0
    meta = table.metadata
    # The stem and head timed alone always cost something; the end-to-end residual may cancel
    # them when a loaded machine slows the per-layer timings more than the whole network's.
    assert meta["fixed_parts_ms"] > 0 and table.fixed_ms >= 0
    assert meta["batch_size"] == 1 and meta["repeats"] == 3 and meta["threads"] == THREADS
    assert meta["device"] == "cpu" and meta["device_name"]
    assert meta["torch_version"] == torch.__version__
    assert meta["fixed_parts"] == ["head", "stem", "end_to_end_residual"]
    assert table.fixed_ms == pytest.approx(meta["fixed_parts_ms"] + meta["end_to_end_residual_ms"])
    assert meta["fixed_parts_ms"] > 0


def test_the_end_to_end_correction_can_be_left_out(space):
    table = measure_latency_table(
        space, device="cpu", repeats=1, warmup=0, threads=THREADS, end_to_end_correction=False
    )
    assert table.metadata["fixed_parts"] == ["head", "stem"]
    assert table.metadata["end_to_end_residual_ms"] is None
    assert table.fixed_ms == table.metadata["fixed_parts_ms"]


def test_latency_of_an_arch_is_the_fixed_part_plus_its_entries(space, table):
    rng = make_rng(0, "latency-test")
    for _ in range(5):
        arch = space.sample(rng)
        expected = table.fixed_ms + sum(table.entry(label, value) for label, value in arch.items())
        assert table.latency(arch) == pytest.approx(expected, rel=1e-12)
        assert table(arch) == table.latency(arch)
    low, high = table.bounds()
    assert low <= table.latency(arch) <= high


def test_measuring_restores_threads_and_records_the_batch(space):
    # Whether heavier options measure slower is a timing claim: it is checked by
    # benchmarks/search_throughput.py (LUT against measured children), not by a test that
    # other jobs on the machine could make fail.
    threads = torch.get_num_threads()
    table = measure_latency_table(
        space, device="cpu", batch_size=32, repeats=3, warmup=1, threads=THREADS
    )
    assert torch.get_num_threads() == threads  # the thread setting is restored
    assert table.metadata["batch_size"] == 32
    arch = space.arch(["xception"] * len(space.choices))
    assert table.latency(arch) > 0


def test_an_arch_of_another_space_is_refused(table):
    other = _tiny_space("other_space")
    with pytest.raises(ArchError, match="other_space"):
        table.latency(other.sample(make_rng(0, "x")))


def test_save_and_load_round_trip(space, table, tmp_path):
    path = tmp_path / "tables" / "latency.json"
    table.save(path)
    loaded = LatencyTable.load(path, space=space)
    assert loaded.to_dict() == table.to_dict()
    arch = space.sample(make_rng(1, "x"))
    assert loaded.latency(arch) == table.latency(arch)
    # The file is a cost table with one latency metric: the cost model reads it too.
    costs = CostModel.from_dict(json.loads(path.read_text()))
    assert costs.metrics == (LATENCY_METRIC,)
    assert costs.cost(arch, LATENCY_METRIC) == pytest.approx(table.latency(arch))


def test_loading_a_table_of_another_space_is_a_clear_error(space, table, tmp_path):
    path = tmp_path / "latency.json"
    table.save(path)
    with pytest.raises(ConfigError, match=r"not 'other_space'.*measure a new one"):
        LatencyTable.load(path, space=_tiny_space("other_space"))
    with pytest.raises(ConfigError, match=r"another layout.*input_size"):
        LatencyTable.load(path, space=_tiny_space(input_size=32))
    fewer = space.__class__(
        space.name,
        space.version,
        space.family,
        tuple(c.__class__(c.label, c.options[:3]) for c in space.choices),
        dict(space.layout),
    )
    with pytest.raises(ConfigError, match="does not cover the space's choices"):
        LatencyTable.load(path, space=fewer)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ('{"format": "spos.arch"}', "not an spos latency table"),
        ('{"format": "spos.cost_table", "metrics": ["flops"]}', "not a latency table"),
        ('{"format": "spos.cost_table", "metrics": ["latency_ms"]}', "malformed"),
    ],
)
def test_missing_or_corrupt_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "latency.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SposError, match=message) as info:
        LatencyTable.load(path)
    assert str(path) in str(info.value)


def test_negative_latencies_are_refused(table):
    data = table.to_dict()
    data["fixed"][LATENCY_METRIC] = -1.0
    with pytest.raises(ConfigError, match="negative or non-finite"):
        LatencyTable.from_dict(data)


def test_validation_reports_error_and_rank_agreement(space, table):
    report = validate_latency_table(
        table, space, device="cpu", seed=0, num_archs=5, repeats=3, warmup=1, threads=THREADS
    )
    assert report["num_archs"] == 5 and len(report["pairs"]) == 5
    assert len({pair["arch"] for pair in report["pairs"]}) == 5
    assert math.isfinite(report["mape_percent"]) and report["mape_percent"] >= 0
    assert -1.0 <= report["kendall_tau"] <= 1.0
    for pair in report["pairs"]:
        assert pair["measured_ms"] > 0 and pair["predicted_ms"] > 0
        error = 100 * (pair["predicted_ms"] - pair["measured_ms"]) / pair["measured_ms"]
        assert pair["error_percent"] == pytest.approx(error)
    assert report["mape_percent"] == pytest.approx(
        sum(abs(pair["error_percent"]) for pair in report["pairs"]) / 5
    )
    assert report["measurement"]["batch_size"] == 1  # the table's batch size by default


def test_validation_refuses_a_table_of_another_space(table):
    with pytest.raises(ConfigError, match="other_space"):
        validate_latency_table(table, _tiny_space("other_space"), device="cpu", seed=0)


def test_bad_counts_are_config_errors(space):
    with pytest.raises(ConfigError, match="repeats"):
        measure_latency_table(space, device="cpu", repeats=0)
    with pytest.raises(ConfigError, match="batch_size"):
        measure_latency_table(space, device="cpu", batch_size=0)


def test_time_interleaved_returns_one_median_per_call():
    calls = [lambda: sum(range(10)), lambda: sum(range(100_000))]
    fast, slow = time_interleaved(calls, device="cpu", repeats=5, warmup=1)
    assert 0 < fast < slow


def test_ops_that_do_no_work_cost_nothing_and_cells_add_up():
    """NAS-Bench-201's 'none' edge is listed by the path but never called (it used to have no
    slot: `spos latency-table --space nb201` failed with KeyError 'none')."""
    space = create_space("nb201", channels=4, cells_per_stage=2)
    table = measure_latency_table(
        space, device="cpu", repeats=1, warmup=0, threads=THREADS, end_to_end_correction=False
    )
    assert [label for label, _ in table.layers] == list(space.labels)
    for label in space.labels:
        assert table.entry(label, "none") == 0.0
        assert table.entry(label, "nor_conv_3x3") > 0
    assert table.metadata["fixed_parts"] == ["head", "reduction_2", "reduction_5", "stem"]
    assert table.latency(space.parse("000000")) == table.fixed_ms


@pytest.mark.parametrize(
    ("name", "layout", "first_layer"),
    [
        ("shufflenet_channel_cifar", dict(input_size=16, stage_repeats=[1, 1, 1, 1], stage_channels=[24, 32, 48, 64], head_channels=64, width_scales=[0.5, 1.0]), "block_00"),  # fmt: skip
        ("resnet20_quant_channel_cifar", dict(stage_repeats=[1, 1, 1], in_channels=1, input_size=8, weight_bits=[2, 8], activation_bits=[4], width_scales=[0.5, 1.0]), "s1b0_conv1"),  # fmt: skip
    ],
)
def test_layers_reading_several_choices_get_one_entry_per_combination(tmp_path, name, layout, first_layer):
    space = create_space(name, **layout)
    table = measure_latency_table(space, device="cpu", repeats=1, warmup=0, threads=THREADS)
    key, options = table.layers[0]
    reads = table.reads[0]
    assert key == first_layer and len(reads) == 2
    assert set(options) == set(itertools.product(*(space.choice(label).options for label in reads)))
    assert all(math.isfinite(ms) and ms > 0 for _, options in table.layers for ms in options.values())
    rng = make_rng(0, "latency-test")
    for _ in range(3):
        arch = space.sample(rng)
        expected = table.fixed_ms + sum(
            table.entry(key, tuple(arch[label] for label in reads) if len(reads) > 1 else arch[reads[0]])
            for (key, _), reads in zip(table.layers, table.reads, strict=True)
        )
        assert table.latency(arch) == pytest.approx(expected, rel=1e-12)
    path = tmp_path / "latency.json"
    table.save(path)
    loaded = LatencyTable.load(path, space=space)
    assert loaded.to_dict() == table.to_dict() and loaded.reads == table.reads
    report = validate_latency_table(table, space, device="cpu", seed=0, num_archs=2, repeats=1, warmup=0)
    assert report["num_archs"] == 2 and math.isfinite(report["mape_percent"])
