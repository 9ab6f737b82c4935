"""Hard constraints on the cost of an architecture, over any tables (SPEC section 4).

Search checks its constraints on every candidate before evaluating it, so a constraint reads
its metric from a *table*: anything with a ``metrics`` tuple and ``cost(arch, metric)``, a
lookup of microseconds. :class:`spos.cost.CostModel` (``flops``, ``params``, ``bitops``, ...)
and :class:`spos.latency.LatencyTable` (``latency``) are both tables, so a new constraint
metric is a table that provides it: this module names neither and needs no change.

A table that also answers ``bounds(metric) -> (low, high)`` lets :func:`build_constraints`
refuse bounds that no architecture of the space can meet before the search starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from spos.arch import Arch
from spos.errors import ConfigError

__all__ = ["Constraint", "Constraints", "CostTable", "build_constraints"]

Number = int | float


class CostTable(Protocol):
    """What a constraint needs of a table: the metrics it provides and a lookup."""

    @property
    def metrics(self) -> tuple[str, ...]: ...

    def cost(self, arch: Arch, metric: str) -> Number: ...


#: Where a metric that no table provides usually comes from (named in the error).
_METRIC_SOURCES = {"latency": "give search.latency_table from `spos latency-table`"}


@dataclass(frozen=True)
class Constraint:
    """``min <= metric(arch) <= max``; either bound may be None (SPEC section 4)."""

    metric: str
    min: float | None = None
    max: float | None = None

    def admits(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> dict[str, Any]:
        return {"metric": self.metric, "min": self.min, "max": self.max}


class Constraints:
    """Several hard constraints over cost metrics, checked before a candidate is evaluated.

    Args:
        constraints: The constraints (all must hold).
        metrics: ``name -> (arch -> value)`` for every metric that can be reported or bounded.
    """

    def __init__(
        self, constraints: Sequence[Constraint], *, metrics: Mapping[str, Callable[[Arch], Number]]
    ) -> None:
        self.constraints = tuple(constraints)
        self.metrics = dict(metrics)
        for constraint in self.constraints:
            if constraint.metric not in self.metrics:
                source = _METRIC_SOURCES.get(constraint.metric)
                raise ConfigError(
                    f"search.constraints names metric {constraint.metric!r}, but only "
                    f"{sorted(self.metrics)} are available" + (f" ({source})" if source else "")
                )

    def costs(self, arch: Arch) -> dict[str, Number]:
        """Every available metric of ``arch``."""
        return {name: metric(arch) for name, metric in self.metrics.items()}

    def violations(self, arch: Arch) -> list[str]:
        """Human-readable list of the constraints ``arch`` breaks (empty when feasible)."""
        broken = []
        for constraint in self.constraints:
            value = self.metrics[constraint.metric](arch)
            if not constraint.admits(value):
                broken.append(
                    f"{constraint.metric}={value} outside [{constraint.min}, {constraint.max}]"
                )
        return broken

    def is_feasible(self, arch: Arch) -> bool:
        return all(c.admits(self.metrics[c.metric](arch)) for c in self.constraints)

    def describe(self) -> list[dict[str, Any]]:
        return [c.describe() for c in self.constraints]


def build_constraints(configs: Sequence[Any], tables: Sequence[CostTable]) -> Constraints:
    """Constraints from config entries (objects with ``metric``, ``min``, ``max``) over ``tables``.

    Every metric of every table can be bounded and is reported; where two tables provide a
    metric, the first one given answers. Bounds that no architecture of the space can meet are
    refused here, with the space's range in the message, when the table providing the metric
    knows its ``bounds``.

    Raises:
        ConfigError: If a constraint names a metric no table provides, or admits nothing.
    """
    metrics: dict[str, Callable[[Arch], Number]] = {}
    providers: dict[str, CostTable] = {}
    for table in tables:
        for name in table.metrics:
            if name not in metrics:
                metrics[name] = lambda arch, table=table, name=name: table.cost(arch, name)
                providers[name] = table
    constraints = []
    for entry in configs:
        constraint = Constraint(str(entry.metric), entry.min, entry.max)
        bounds = getattr(providers.get(constraint.metric), "bounds", None)
        if bounds is not None:
            low, high = bounds(constraint.metric)
            if (
                (constraint.min is not None and constraint.min > high)
                or (constraint.max is not None and constraint.max < low)
                or (
                    constraint.min is not None
                    and constraint.max is not None
                    and constraint.min > constraint.max
                )
            ):
                raise ConfigError(
                    f"constraint on {constraint.metric} [{constraint.min}, {constraint.max}] admits no "
                    f"architecture: this space spans {low:,} to {high:,}; widen the bounds"
                )
        constraints.append(constraint)
    return Constraints(constraints, metrics=metrics)
