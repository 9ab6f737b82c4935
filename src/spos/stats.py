"""Ranking statistics for judging a supernet as a proxy (SPEC section 4).

A one-shot supernet is useful when the order it gives candidates matches the order of their
stand-alone (retrained) accuracies. This module measures that agreement: Kendall's tau-b,
Spearman's rho, and precision at k (how many of the truly best candidates the proxy also ranks
among its best). numpy and scipy only, no torch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["kendall_tau", "spearman_rho", "precision_at_k", "rank_correlations", "option_bias"]


def _paired(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    first = np.asarray(x, dtype=float).reshape(-1)
    second = np.asarray(y, dtype=float).reshape(-1)
    if first.shape != second.shape:
        raise ValueError(f"x and y must have the same length, got {first.size} and {second.size}")
    if np.isnan(first).any() or np.isnan(second).any():
        raise ValueError("x and y must not contain NaN")
    return first, second


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation (ties handled), in [-1, 1].

    Returns NaN when fewer than two values are given or either input is constant.
    """
    first, second = _paired(x, y)
    if first.size < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
        return float(scipy_stats.kendalltau(first, second, variant="b")[0])


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks), in [-1, 1].

    Returns NaN when fewer than two values are given or either input is constant.
    """
    first, second = _paired(x, y)
    if first.size < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(scipy_stats.spearmanr(first, second)[0])


def _top_indices(scores: np.ndarray, k: int) -> set[int]:
    # Stable sort on the negated scores: among equal scores the earlier index ranks higher.
    return {int(i) for i in np.argsort(-scores, kind="stable")[:k]}


def precision_at_k(
    true_scores: Sequence[float], predicted_scores: Sequence[float], fraction: float
) -> float:
    """Share of the true top ``k`` that the prediction also places in its top ``k``.

    ``k = max(1, round(fraction * n))`` (halves round up). Ties are broken by position, the
    earlier element ranking higher, so the result is deterministic.

    Args:
        true_scores: Ground truth, e.g. stand-alone accuracies (higher is better).
        predicted_scores: The proxy, e.g. supernet accuracies, aligned with ``true_scores``.
        fraction: Size of the top set as a fraction of ``n``, in (0, 1].

    Returns:
        ``|top_k(true) & top_k(predicted)| / k``, in [0, 1].

    Raises:
        ValueError: Inputs are empty, of different lengths, contain NaN, or ``fraction`` is
            outside (0, 1].
    """
    truth, predicted = _paired(true_scores, predicted_scores)
    if truth.size == 0:
        raise ValueError("precision_at_k needs at least one score")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    k = min(truth.size, max(1, math.floor(fraction * truth.size + 0.5)))
    return len(_top_indices(truth, k) & _top_indices(predicted, k)) / k


def rank_correlations(true_scores: Sequence[float], predicted_scores: Sequence[float]) -> dict[str, float]:
    """Kendall tau, Spearman rho and precision at the top 5% and 10% of a ranking.

    Args:
        true_scores: Ground truth (higher is better), e.g. NAS-Bench-201 accuracies.
        predicted_scores: The proxy aligned with it, e.g. supernet scores.

    Returns:
        ``{"kendall_tau", "spearman_rho", "precision_at_5pct", "precision_at_10pct"}``.
    """
    return {
        "kendall_tau": kendall_tau(true_scores, predicted_scores),
        "spearman_rho": spearman_rho(true_scores, predicted_scores),
        "precision_at_5pct": precision_at_k(true_scores, predicted_scores, 0.05),
        "precision_at_10pct": precision_at_k(true_scores, predicted_scores, 0.10),
    }


def option_bias(
    counts: Mapping[str, Sequence[float]],
    true_scores: Sequence[float],
    predicted_scores: Sequence[float],
) -> list[dict[str, float | str]]:
    """Which options does the proxy over- or under-rate? One row per option, worst first.

    For each option (e.g. ``avg_pool_3x3``) ``counts[option][i]`` is how many of candidate
    ``i``'s choices take it. ``tau_truth`` is Kendall tau between that count and the truth (does
    using the option more make a network better?), ``tau_proxy`` the same against the proxy, and
    ``bias = tau_proxy - tau_truth``: positive means the proxy likes the option more than the
    truth does (it overrates networks that use it), negative that it underrates them. Options
    whose count is the same for every candidate say nothing and are left out.

    Returns:
        ``[{"option", "tau_truth", "tau_proxy", "bias"}, ...]`` sorted by ``|bias|``, largest first.
    """
    rows: list[dict[str, float | str]] = []
    for option, column in counts.items():
        values = np.asarray(column, dtype=float)
        if values.size < 2 or np.all(values == values[0]):
            continue
        tau_truth = kendall_tau(values, true_scores)
        tau_proxy = kendall_tau(values, predicted_scores)
        rows.append({"option": option, "tau_truth": tau_truth, "tau_proxy": tau_proxy, "bias": tau_proxy - tau_truth})
    return sorted(rows, key=lambda row: -abs(float(row["bias"])) if not math.isnan(float(row["bias"])) else 0.0)

