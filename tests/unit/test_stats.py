"""Ranking statistics against O(n^2) brute-force references (SPEC section 4)."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spos.stats import kendall_tau, option_bias, precision_at_k, spearman_rho


def kendall_tau_b_reference(x: list[float], y: list[float]) -> float:
    concordant = discordant = tied_x = tied_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0:
                tied_x += 1
            if dy == 0:
                tied_y += 1
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    pairs = n * (n - 1) // 2
    denominator = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return math.nan if denominator == 0 else (concordant - discordant) / denominator


def average_ranks(values: list[float]) -> list[float]:
    return [
        sum(v < value for v in values) + (sum(v == value for v in values) + 1) / 2
        for value in values
    ]


def spearman_reference(x: list[float], y: list[float]) -> float:
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    covariance = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    spread = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return math.nan if spread == 0 else covariance / spread


def precision_reference(truth: list[float], predicted: list[float], k: int) -> float:
    def top(scores: list[float]) -> set[int]:
        # Index i ranks above j when its score is higher, or equal with i < j.
        return {
            i
            for i in range(len(scores))
            if sum(s > scores[i] or (s == scores[i] and j < i) for j, s in enumerate(scores)) < k
        }

    return len(top(truth) & top(predicted)) / k


paired_scores = st.integers(2, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 4).map(float), min_size=n, max_size=n),  # many ties
        st.lists(st.floats(-10, 10, allow_nan=False), min_size=n, max_size=n),
    )
)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=200, deadline=None)
@given(paired_scores, st.booleans())
def test_rank_correlations_match_brute_force(pair, swap):
    x, y = pair if not swap else pair[::-1]
    assert same(kendall_tau(x, y), kendall_tau_b_reference(x, y))
    assert same(spearman_rho(x, y), spearman_reference(x, y))


@settings(max_examples=200, deadline=None)
@given(paired_scores, st.sampled_from([0.05, 0.1, 0.25, 0.5, 1.0]))
def test_precision_at_k_matches_brute_force(pair, fraction):
    truth, predicted = pair
    k = max(1, math.floor(fraction * len(truth) + 0.5))
    assert precision_at_k(truth, predicted, fraction) == precision_reference(truth, predicted, k)


def test_known_values():
    rng = random.Random(0)
    values = [rng.random() for _ in range(30)]
    assert kendall_tau(values, values) == pytest.approx(1.0)
    assert spearman_rho(values, [-v for v in values]) == pytest.approx(-1.0)
    assert precision_at_k(values, values, 0.1) == 1.0
    assert precision_at_k(values, [-v for v in values], 0.1) == 0.0
    # 0.1 * 30 is 3.0000000000000004 in floating point: k must still be 3 (2/3), not 4 (1).
    truth = [30.0 - i for i in range(30)]
    predicted = [99.0, 98.0, 97.0, 100.0] + [0.0] * 26
    assert precision_at_k(truth, predicted, 0.1) == pytest.approx(2 / 3)
    assert math.isnan(kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(spearman_rho([1.0], [2.0]))


def test_option_bias_names_the_option_the_proxy_misjudges():
    # 60 networks of 6 choices over three options. The truth rewards "conv", the proxy rewards
    # "pool" instead, and neither cares about "skip" beyond what the other counts imply.
    rng = random.Random(1)
    nets = [[rng.choice(["conv", "pool", "skip"]) for _ in range(6)] for _ in range(60)]
    counts = {option: [net.count(option) for net in nets] for option in ("conv", "pool", "skip", "always")}
    counts["always"] = [1] * 60  # the same for every network: carries no information
    truth = [net.count("conv") + 0.01 * rng.random() for net in nets]
    proxy = [net.count("pool") + 0.01 * rng.random() for net in nets]
    rows = {row["option"]: row for row in option_bias(counts, truth, proxy)}
    assert set(rows) == {"conv", "pool", "skip"}
    assert rows["conv"]["tau_truth"] == pytest.approx(kendall_tau(counts["conv"], truth))
    assert rows["conv"]["tau_proxy"] == pytest.approx(kendall_tau(counts["conv"], proxy))
    assert rows["conv"]["tau_truth"] > 0.8 and rows["conv"]["bias"] < -0.8  # underrated
    assert rows["pool"]["tau_proxy"] > 0.8 and rows["pool"]["bias"] > 0.8  # overrated
    ordered = [row["option"] for row in option_bias(counts, truth, proxy)]
    assert set(ordered[:2]) == {"conv", "pool"} and ordered[2] == "skip"  # largest |bias| first
    # A perfect proxy has no bias at all.
    assert all(abs(row["bias"]) < 1e-12 for row in option_bias(counts, truth, truth))


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="fraction"):
        precision_at_k([1.0, 2.0], [1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="NaN"):
        spearman_rho([1.0, float("nan")], [1.0, 2.0])


def test_module_imports_no_torch():
    code = "import sys, spos.stats; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
