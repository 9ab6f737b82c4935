"""Constraints over any tables: cost model and latency table alike (SPEC section 4)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from spos import create_space, make_rng
from spos.constraints import build_constraints
from spos.cost import CostModel
from spos.errors import ConfigError
from spos.latency import LatencyTable


def _bound(metric, low=None, high=None):
    return SimpleNamespace(metric=metric, min=low, max=high)


@pytest.fixture(scope="module")
def space():
    return create_space("shufflenet_cifar", stage_repeats=[1, 1, 1, 1])


@pytest.fixture(scope="module")
def tables(space):
    """The FLOPs table and a made-up latency table: 1 ms per option index, 0.5 ms fixed."""
    latency = LatencyTable(
        space_name=space.name,
        space_version=space.version,
        fixed_ms=0.5,
        layers=[(c.label, {o: float(i) for i, o in enumerate(c.options)}) for c in space.choices],
    )
    return CostModel.from_space(space), latency


def test_every_metric_of_every_table_is_reported_and_bounded(space, tables):
    costs, latency = tables
    constraints = build_constraints([_bound("flops", high=1e12), _bound("latency", high=2.5)], tables)
    arch = space.sample(make_rng(0, "constraints"))
    assert constraints.costs(arch) == {**costs.costs(arch), "latency": latency.latency(arch)}
    cheap, dear = space.from_indices([0, 0, 1, 1]), space.from_indices([0, 1, 1, 1])
    assert constraints.is_feasible(cheap) and not constraints.is_feasible(dear)
    assert constraints.violations(dear) == ["latency=3.5 outside [None, 2.5]"]


def test_a_metric_no_table_provides_is_refused_with_its_source(tables):
    with pytest.raises(ConfigError, match=r"'latency'.*search.latency_table"):
        build_constraints([_bound("latency", high=3.0)], tables[:1])
    with pytest.raises(ConfigError, match="'energy'"):
        build_constraints([_bound("energy", high=3.0)], tables)


@pytest.mark.parametrize("entry", [_bound("flops", high=1.0), _bound("latency", low=100.0)])
def test_bounds_no_architecture_meets_are_refused_for_any_table(tables, entry):
    with pytest.raises(ConfigError, match=f"constraint on {entry.metric}.*admits no architecture"):
        build_constraints([entry], tables)


def test_the_first_table_providing_a_metric_answers(space, tables):
    costs, _ = tables
    doubled = SimpleNamespace(metrics=("flops",), cost=lambda arch, metric: 2 * costs.flops(arch))
    arch = space.sample(make_rng(1, "constraints"))
    assert build_constraints([], [doubled, costs]).costs(arch)["flops"] == 2 * costs.flops(arch)
    assert build_constraints([], [costs, doubled]).costs(arch)["flops"] == costs.flops(arch)
