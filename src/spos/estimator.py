"""Rank aggregation of several signals into one fitness (SPEC section 4, "Estimators").

The paper scores a candidate by its supernet accuracy alone. Weight sharing biases that score
towards low-complexity paths (Ning et al., NeurIPS 2021), so ``spos`` can combine it with
zero-cost proxies computed at initialisation (:mod:`spos.proxies`) and cost metrics.

Signals live on unrelated scales (an accuracy in %, a log-determinant, a parameter count), so
each becomes a **percentile in a fixed reference pool**: a seeded sample of architectures that
is scored once, before the search. A candidate's fitness is the weighted mean of its
percentiles. Because the pool is fixed, a candidate's fitness depends only on the candidate
(not on what else evolution happened to evaluate), so fitness values of different generations,
of a resumed search and of a random-search baseline are comparable. A negative weight means
"lower is better" for that signal (e.g. FLOPs under a tight budget).

This module is pure Python plus numpy: it never sees a model.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["PercentileEstimator", "percentile_in"]


def percentile_in(pool_sorted: Sequence[float], value: float) -> float:
    """Mid-rank percentile of ``value`` in a sorted pool, in [0, 1].

    ``(number of pool values below + half the number equal) / pool size``: a value below the
    whole pool is 0, above it 1, and ties share the middle of their block, so a candidate equal
    to a pool member is neither favoured nor penalised.
    """
    if not pool_sorted:
        raise ValueError("the reference pool is empty")
    if math.isnan(value):
        raise ValueError("a signal value is NaN")
    below = bisect.bisect_left(pool_sorted, value)
    equal = bisect.bisect_right(pool_sorted, value) - below
    return (below + 0.5 * equal) / len(pool_sorted)


@dataclass(frozen=True)
class PercentileEstimator:
    """Weighted mean of per-signal percentiles against a fixed reference pool.

    Args:
        weights: ``{signal: weight}``; a weight of 0 records a signal without using it, a
            negative weight ranks that signal in reverse (lower is better).
        pool: ``{signal: values of the reference architectures}`` for every weighted signal.

    Raises:
        ValueError: No signal has a non-zero weight, a weighted signal has no pool values,
            or a pool value is NaN or +inf (-inf, a degenerate network's proxy value, ranks
            lowest).
    """

    weights: Mapping[str, float]
    pool: Mapping[str, Sequence[float]]

    def __post_init__(self) -> None:
        if not any(weight != 0 for weight in self.weights.values()):
            raise ValueError(f"estimator weights {dict(self.weights)} give no signal a non-zero weight")
        for name, weight in self.weights.items():
            if not math.isfinite(weight):
                raise ValueError(f"estimator weight of {name!r} must be finite, got {weight!r}")
            if weight == 0:
                continue
            values = self.pool.get(name)
            if not values:
                raise ValueError(f"the reference pool has no values of signal {name!r}")
            # -inf is a proxy's value for a degenerate network (its output ignores its input):
            # it ranks below every other, which a percentile handles. NaN and +inf are errors.
            if not all(math.isfinite(v) or v == -math.inf for v in values):
                raise ValueError(f"the reference pool's values of {name!r} are not all finite")
        # Sorted once: each candidate then costs one binary search per signal.
        sorted_pool = {name: sorted(self.pool[name]) for name, w in self.weights.items() if w != 0}
        object.__setattr__(self, "_sorted", sorted_pool)

    @property
    def signals(self) -> list[str]:
        """Signals with a non-zero weight (the ones a candidate must provide)."""
        return [name for name, weight in self.weights.items() if weight != 0]

    def percentiles(self, values: Mapping[str, float]) -> dict[str, float]:
        """Each weighted signal's percentile in the pool (reversed for negative weights)."""
        out = {}
        for name in self.signals:
            if name not in values:
                raise ValueError(f"candidate has no value of signal {name!r}")
            p = percentile_in(self._sorted[name], float(values[name]))  # type: ignore[attr-defined]
            out[name] = p if self.weights[name] > 0 else 1.0 - p
        return out

    def score(self, values: Mapping[str, float]) -> float:
        """Fitness in [0, 100]: the weighted mean percentile of the candidate's signals."""
        percentiles = self.percentiles(values)
        total = sum(abs(self.weights[name]) for name in percentiles)
        return 100.0 * sum(abs(self.weights[n]) * p for n, p in percentiles.items()) / total
