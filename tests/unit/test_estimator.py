"""Rank aggregation against a fixed reference pool (SPEC section 4, "Estimators")."""

from __future__ import annotations

import random

import pytest

from spos.estimator import PercentileEstimator, percentile_in


def _brute_force_percentile(pool: list[float], value: float) -> float:
    # Rank the candidate among the pool by pairwise comparison: 1 per pool value it beats,
    # 1/2 per tie, averaged over the pool.
    return sum(1.0 if value > v else 0.5 if value == v else 0.0 for v in pool) / len(pool)


def test_percentile_matches_pairwise_comparison_on_random_pools_with_ties():
    rng = random.Random(0)
    for _ in range(300):
        pool = [float(rng.randint(0, 9)) for _ in range(rng.randint(1, 30))]
        value = float(rng.randint(-1, 10))
        assert percentile_in(sorted(pool), value) == pytest.approx(_brute_force_percentile(pool, value))


def test_score_is_the_weighted_mean_percentile_brute_force():
    rng = random.Random(1)
    pool = {
        "supernet": [rng.uniform(50, 90) for _ in range(40)],
        "synflow": [rng.uniform(0, 1e30) for _ in range(40)],
        "flops": [rng.uniform(1e6, 2e8) for _ in range(40)],
    }
    weights = {"supernet": 2.0, "synflow": 1.0, "flops": -1.0, "params": 0.0}
    estimator = PercentileEstimator(weights, pool)
    for _ in range(50):
        candidate = {name: rng.choice(values) * rng.uniform(0.8, 1.2) for name, values in pool.items()}
        expected = (
            2 * _brute_force_percentile(pool["supernet"], candidate["supernet"])
            + _brute_force_percentile(pool["synflow"], candidate["synflow"])
            + (1 - _brute_force_percentile(pool["flops"], candidate["flops"]))
        ) / 4 * 100
        assert estimator.score(candidate) == pytest.approx(expected)
    assert estimator.signals == ["supernet", "synflow", "flops"]


def test_a_candidates_score_does_not_depend_on_other_candidates():
    estimator = PercentileEstimator({"a": 1.0, "b": 1.0}, {"a": [1, 2, 3, 4], "b": [10, 20, 30, 40]})
    first = estimator.score({"a": 2.5, "b": 35})
    for other in ({"a": 100, "b": 0}, {"a": -5, "b": 99}):
        estimator.score(other)
    assert estimator.score({"a": 2.5, "b": 35}) == first == pytest.approx((0.5 + 0.75) / 2 * 100)


def test_pure_supernet_weights_preserve_the_supernet_order():
    pool = {"supernet": [60.0, 70.0, 80.0]}
    estimator = PercentileEstimator({"supernet": 1.0}, pool)
    scores = [estimator.score({"supernet": value}) for value in (55, 65, 75, 85)]
    assert scores == sorted(scores) and scores == pytest.approx([0.0, 100 / 3, 200 / 3, 100.0])


@pytest.mark.parametrize(
    "weights, pool, message",
    [
        ({"a": 0.0}, {"a": [1.0]}, "no signal a non-zero weight"),
        ({"a": 1.0}, {}, "no values of signal 'a'"),
        ({"a": float("nan")}, {"a": [1.0]}, "must be finite"),
        ({"a": 1.0}, {"a": [1.0, float("inf")]}, "not all finite"),
    ],
)
def test_bad_estimators_are_refused(weights, pool, message):
    with pytest.raises(ValueError, match=message):
        PercentileEstimator(weights, pool)


def test_missing_or_nan_candidate_signals_are_refused():
    estimator = PercentileEstimator({"a": 1.0}, {"a": [1.0, 2.0]})
    with pytest.raises(ValueError, match="no value of signal 'a'"):
        estimator.score({"b": 1.0})
    with pytest.raises(ValueError, match="NaN"):
        estimator.score({"a": float("nan")})


def test_a_degenerate_networks_minus_infinity_ranks_lowest():
    # A proxy gives -inf for a network whose output ignores its input (spos.proxies).
    estimator = PercentileEstimator({"naswot": 1.0}, {"naswot": [float("-inf"), 1.0, 2.0, 3.0]})
    assert estimator.score({"naswot": float("-inf")}) == pytest.approx(12.5)
    assert estimator.score({"naswot": 0.5}) == pytest.approx(25.0)
    with pytest.raises(ValueError, match="not all finite"):
        PercentileEstimator({"a": 1.0}, {"a": [1.0, float("nan")]})
