"""The report's tables: key figures per stage, the run's settings, and the cell formatting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spos.report.files import _dotted, _number, _params_baseline_tau, _RunFiles, _section


def _format_count(value: Any, unit: str = "") -> str:
    """``322918720`` -> ``'322.9 M'`` (SI prefix, four significant digits)."""
    number = _number(value)
    if number is None:
        return "—"
    suffix = f" {unit}" if unit else ""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= scale:
            return f"{number / scale:.4g} {prefix}{unit}"
    return f"{number:.4g}{suffix}"


def _format_percent(value: Any) -> str:
    number = _number(value)
    return "—" if number is None else f"{number:.2f} %"


def _format_seconds(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "—"
    if number < 120:
        return f"{number:.1f} s"
    if number < 7200:
        return f"{number / 60:.1f} min"
    return f"{number / 3600:.2f} h"


def _format_value(value: Any) -> str:
    """Generic table cell: numbers to 4 significant digits, booleans as yes/no."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(item) for item in value) or "—"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {_format_value(item)}" for key, item in value.items()) or "—"
    return str(value)


def _format_constraints(constraints: Any) -> str:
    """``[{"metric": "flops", "max": 3.3e8}]`` -> ``'flops ≤ 330 M'``."""
    if isinstance(constraints, Mapping):  # {metric: {min, max}} also accepted
        constraints = [
            {"metric": key, **value}
            for key, value in constraints.items()
            if isinstance(value, Mapping)
        ]
    if not isinstance(constraints, list) or not constraints:
        return "none"
    parts = []
    for constraint in constraints:
        if not isinstance(constraint, Mapping):
            parts.append(str(constraint))
            continue
        metric = str(constraint.get("metric", "?"))
        low, high = constraint.get("min"), constraint.get("max")
        if low is not None and high is not None:
            parts.append(f"{_format_count(low)} ≤ {metric} ≤ {_format_count(high)}")
        elif high is not None:
            parts.append(f"{metric} ≤ {_format_count(high)}")
        elif low is not None:
            parts.append(f"{metric} ≥ {_format_count(low)}")
        else:
            parts.append(f"{metric} (no bound)")
    return "; ".join(parts)


def _short_hash(value: Any) -> str:
    return f"{value[:12]}…" if isinstance(value, str) and len(value) > 12 else _format_value(value)


_Row = tuple[str, str, str]


def _key_figures(run: _RunFiles) -> list[_Row]:
    """``(stage, quantity, value)`` rows of the headline numbers that exist."""
    return [
        *_supernet_figures(run),
        *_search_figures(_section(run.summary, "search")),
        *_retrain_figures(_section(run.summary, "retrain")),
        *_export_figures(_section(run.summary, "export")),
        *_rank_figures(run.rank),
    ]


def _coverage_counts(coverage: Any) -> list[Any]:
    """Every per-option training count of ``summary.json``'s ``supernet.coverage``."""
    if not isinstance(coverage, dict):
        return []
    return [
        n
        for c in coverage.values()
        if isinstance(c, dict)
        for n in c.values()
        if _number(n) is not None
    ]


def _supernet_figures(run: _RunFiles) -> list[_Row]:
    supernet = _section(run.summary, "supernet")
    if not supernet:
        if not run.metrics:
            return []
        steps = [s for s in (_number(r.get("step")) for r in run.metrics) if s is not None]
        logged = _format_value(int(max(steps))) if steps else "—"
        return [("supernet", "steps logged (unfinished)", logged)]
    rows = [
        ("supernet", "steps", _format_value(supernet.get("steps"))),
        ("supernet", "sampler", _format_value(supernet.get("sampler"))),
        ("supernet", "throughput", f"{_format_value(supernet.get('images_per_s'))} img/s"),
        ("supernet", "training time", _format_seconds(supernet.get("train_seconds"))),
        ("supernet", "panel mean val. acc.", _format_percent(supernet.get("panel_mean_acc"))),
        ("supernet", "panel best val. acc.", _format_percent(supernet.get("panel_best_acc"))),
    ]
    counts = _coverage_counts(supernet.get("coverage"))
    if counts:
        rows.append(("supernet", "coverage min / max", f"{min(counts):.0f} / {max(counts):.0f}"))
    if supernet.get("weights_sha256"):
        rows.append(("supernet", "weights sha256", _short_hash(supernet["weights_sha256"])))
    return rows


def _search_figures(search: Mapping[str, Any]) -> list[_Row]:
    if not search:
        return []
    costs = search.get("best_costs") if isinstance(search.get("best_costs"), dict) else {}
    rows = [
        ("search", "strategy", _format_value(search.get("strategy"))),
        ("search", "evaluations", _format_value(search.get("evaluations"))),
        ("search", "generations", _format_value(search.get("generations"))),
        ("search", "search time", _format_seconds(search.get("seconds"))),
        _best_score_row(search),
        ("search", "best FLOPs (multiply-accumulates)", _format_count(costs.get("flops"), "FLOPs")),
        ("search", "best params", _format_count(costs.get("params"))),
        ("search", "constraints", _format_constraints(search.get("constraints"))),
    ]
    if costs.get("params_total") is not None:
        rows.append(
            ("search", "best params (every parameter)", _format_count(costs["params_total"]))
        )
    for key in ("latency", "bitops"):
        if costs.get(key) is not None:
            rows.append(("search", f"best {key}", _format_value(costs[key])))
    rows += _estimator_rows(search)
    baseline = _section(search, "baseline")
    if baseline:
        rows += [
            ("search", "random baseline best", _format_percent(baseline.get("best_score"))),
            ("search", "random baseline evaluations", _format_value(baseline.get("evaluations"))),
            ("search", "evolution beats baseline", _format_value(search.get("beats_baseline"))),
        ]
    return rows


def _best_score_row(search: Mapping[str, Any]) -> _Row:
    if not isinstance(search.get("estimator"), dict):
        return ("search", "best val. score", _format_percent(search.get("best_score")))
    return ("search", "best fitness (weighted mean percentile)", f"{_format_value(search.get('best_score'))} / 100")


def _estimator_rows(search: Mapping[str, Any]) -> list[_Row]:
    """Which signals drove the pick: the estimator's weights, then each signal of the chosen
    architecture with its percentile in the reference pool (reversed for negative weights)."""
    estimator = search.get("estimator")
    if not isinstance(estimator, dict) or not isinstance(estimator.get("weights"), dict):
        return []
    weights = estimator["weights"]
    rows = [
        ("search", "estimator weights", ", ".join(f"{k} {_format_value(v)}" for k, v in weights.items())),
        ("search", "estimator reference pool", f"{_format_value(estimator.get('pool_size'))} architectures"),
    ]
    values = estimator.get("best_signals") if isinstance(estimator.get("best_signals"), dict) else {}
    percentiles = estimator.get("best_percentiles") if isinstance(estimator.get("best_percentiles"), dict) else {}
    for name in weights:
        cell = _format_value(values.get(name))
        if _number(percentiles.get(name)) is not None:
            cell += f" (percentile {percentiles[name]:.1f})"
        rows.append(("search", f"chosen arch: {name}", cell))
    return rows


def _retrain_figures(retrain: Mapping[str, Any]) -> list[_Row]:
    if not retrain:
        return []
    return [
        ("retrain", "test top-1", _format_percent(retrain.get("test_top1"))),
        ("retrain", "test top-5", _format_percent(retrain.get("test_top5"))),
        ("retrain", "params", _format_count(retrain.get("params"))),
        ("retrain", "FLOPs (multiply-accumulates)", _format_count(retrain.get("flops"), "FLOPs")),
        ("retrain", "epochs", _format_value(retrain.get("epochs"))),
        ("retrain", "training time", _format_seconds(retrain.get("seconds"))),
    ]


def _export_figures(export: Mapping[str, Any]) -> list[_Row]:
    return [
        ("export", key.replace("_", " "), _short_hash(value) if "sha" in key else _format_value(value))
        for key, value in export.items()
        if key != "stage"
    ]


def _rank_figures(rank: Mapping[str, Any] | None) -> list[_Row]:
    if rank is None:
        return []
    rows = [
        ("rank", name, f"{rank[key]:.3f}")
        for key, name in (
            ("kendall_tau", "Kendall tau"),
            ("spearman_rho", "Spearman rho"),
            ("precision_at_5pct", "precision@5%"),
            ("precision_at_10pct", "precision@10%"),
        )
        if _number(rank.get(key)) is not None
    ]
    params_tau = _params_baseline_tau(rank)
    if params_tau is not None:
        rows.append(("rank", "Kendall tau of params alone (baseline)", f"{params_tau:.3f}"))
    signals = rank.get("signals") if isinstance(rank.get("signals"), dict) else {}
    for name, figures in signals.items():
        if name != "supernet" and isinstance(figures, dict) and _number(figures.get("kendall_tau")) is not None:
            p5 = _number(figures.get("precision_at_5pct"))
            rows.append(("rank", f"{name}: Kendall tau, P@5%", f"{figures['kendall_tau']:.3f}, {p5 if p5 is not None else float('nan'):.2f}"))
    return rows


_SETTINGS = (
    ("seed", "seed"),
    ("space.name", "search space"),
    ("data.dataset", "dataset"),
    ("supernet.steps", "supernet steps"),
    ("supernet.batch_size", "supernet batch size"),
    ("supernet.optim.lr", "supernet peak lr"),
    ("supernet.sampler.name", "path sampler"),
    ("search.strategy", "search strategy"),
    ("search.population_size", "population"),
    ("search.generations", "generations"),
    ("search.constraints", "constraints"),
    ("search.random_baseline", "random baseline"),
    ("retrain.epochs", "retrain epochs"),
    ("retrain.init", "retrain init"),
)


def _settings(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for dotted, name in _SETTINGS:
        value = _dotted(config, dotted)
        if dotted == "search.constraints" and "search" in config:
            rows.append((name, _format_constraints(value)))  # an empty list is worth showing
        elif value is not None:
            rows.append((name, _format_value(value)))
    return rows
