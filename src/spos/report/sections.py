"""The report's sections: which plots each stage's files allow, each rendered at once so that a
bad input costs one plot (a skipped line), not the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spos.report.files import _dotted, _number, _RunFiles, _section
from spos.report.plots import (
    _plot_coverage,
    _plot_option_bias,
    _plot_panel,
    _plot_rank_during_training,
    _plot_rank_scatter,
    _plot_retrain,
    _plot_supernet_training,
    _png_bytes,
    _style,
)
from spos.report.search_plots import (
    _metric_name,
    _plot_accuracy_vs_cost,
    _plot_architecture,
    _plot_search_progress,
)
from spos.report.tables import _format_count

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


@dataclass
class _Plot:
    filename: str
    caption: str
    png: bytes


@dataclass
class _Section:
    heading: str
    plots: list[_Plot] = field(default_factory=list)
    code: list[str] = field(default_factory=list)  # verbatim text (an arch string) before the plots
    skipped: list[str] = field(default_factory=list)  # one line per skipped plot


class _Builder:
    """Collects sections; renders each plot at once so a bad input costs one plot, not all."""

    def __init__(self) -> None:
        self.sections: list[_Section] = []

    def section(self, heading: str) -> _Section:
        self.sections.append(_Section(heading))
        return self.sections[-1]

    @staticmethod
    def add_plot(
        section: _Section, filename: str, caption: str, make: Callable[[], Figure]
    ) -> None:
        try:
            with _style():
                png = _png_bytes(make())
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
            # Run files are ours, but a report must not die on one odd record: say so instead.
            log.warning("report plot %s failed", filename, exc_info=True)
            section.skipped.append(
                f"{caption}: skipped (could not plot: {type(exc).__name__}: {exc})"
            )
            return
        section.plots.append(_Plot(filename, caption, png))


def _supernet_section(builder: _Builder, run: _RunFiles) -> None:
    section = builder.section("Supernet training")
    supernet = _section(run.summary, "supernet")
    train_lines = [r for r in run.metrics if "loss" in r]
    panel_lines = [r for r in run.metrics if isinstance(r.get("panel"), dict) and r["panel"]]
    rank_lines = [r for r in run.metrics if "kendall_tau" in r or "spearman_rho" in r]
    if train_lines:
        builder.add_plot(
            section,
            "supernet_training.png",
            "Supernet loss, training accuracy and learning rate",
            lambda: _plot_supernet_training(train_lines, sampler=supernet.get("sampler")),
        )
    else:
        section.skipped.append(
            "Supernet training curves: skipped (no training lines in metrics.jsonl)"
        )
    if panel_lines:
        builder.add_plot(
            section,
            "panel_accuracy.png",
            "Validation accuracy of the fixed panel of architectures",
            lambda: _plot_panel(panel_lines),
        )
    else:
        section.skipped.append("Panel accuracy: skipped (no panel lines in metrics.jsonl)")
    if rank_lines:
        builder.add_plot(
            section,
            "rank_during_training.png",
            "Rank correlation of the supernet during training",
            lambda: _plot_rank_during_training(rank_lines),
        )
    else:
        section.skipped.append(
            "Rank correlation during training: skipped (no kendall_tau lines in metrics.jsonl)"
        )
    coverage = supernet.get("coverage")
    if (
        isinstance(coverage, dict)
        and coverage
        and all(isinstance(v, dict) for v in coverage.values())
    ):
        builder.add_plot(
            section,
            "coverage.png",
            "How often each option of each choice was trained",
            lambda: _plot_coverage(coverage, steps=supernet.get("steps")),
        )
    else:
        section.skipped.append("Training coverage: skipped (no supernet.coverage in summary.json)")


def _cost_metric(run: _RunFiles) -> str:
    """The cost the search's Pareto front runs along: ``pareto.json``'s ``x`` (BitOps for a
    mixed-precision search, whose FLOPs do not vary), else FLOPs."""
    metric = run.pareto.get("x") if run.pareto is not None else None
    return metric if isinstance(metric, str) and metric else "flops"


def _pareto_records(run: _RunFiles, metric: str) -> list[dict[str, Any]] | None:
    """``pareto.json``'s front along ``metric``; ``None`` when the file does not give one."""
    if run.pareto is None or run.pareto.get("x") != metric:
        return None
    front = run.pareto.get("front")
    if not isinstance(front, list):
        return None
    return [record for record in front if isinstance(record, dict)]


def _chosen_point(run: _RunFiles, metric: str) -> tuple[float, float] | None:
    """``(cost, score)`` of ``arch.json``, looked up in the history when it lacks them."""
    if run.arch is None:
        return None
    costs = run.arch.get("costs") if isinstance(run.arch.get("costs"), dict) else {}
    cost, score = _number(costs.get(metric)), _number(run.arch.get("score"))
    if cost is None or score is None:
        for record in run.history:
            if record.get("arch") == run.arch.get("arch"):
                cost = cost if cost is not None else _number(record.get(metric))
                score = score if score is not None else _number(record.get("score"))
                break
    return (cost, score) if cost is not None and score is not None else None


def _search_section(builder: _Builder, run: _RunFiles) -> None:
    section = builder.section("Search")
    search = _section(run.summary, "search")
    strategy = str(search.get("strategy") or _dotted(run.config, "search.strategy") or "search")
    scored = [r for r in run.history if _number(r.get("score")) is not None]
    metric = _cost_metric(run)
    name = _metric_name(metric)
    if not scored:
        section.skipped.append(
            f"Search progress and accuracy against {name}: skipped (no history.jsonl)"
        )
        return
    baseline = [r for r in run.baseline_history if _number(r.get("score")) is not None]
    builder.add_plot(
        section,
        "search_progress.png",
        "Best and mean score per generation, with the random baseline",
        lambda: _plot_search_progress(scored, baseline, strategy=strategy),
    )
    if not baseline:
        section.skipped.append("Random-search baseline: skipped (no baseline/history.jsonl)")
    constraints = search.get("constraints", _dotted(run.config, "search.constraints"))
    if any(_number(r.get(metric)) is not None for r in scored):
        builder.add_plot(
            section,
            "accuracy_vs_flops.png",  # the file keeps its name whatever the cost metric
            f"Accuracy against {name}: candidates, Pareto front, chosen architecture",
            lambda: _plot_accuracy_vs_cost(
                scored,
                baseline,
                metric=metric,
                front=_pareto_records(run, metric),
                chosen=_chosen_point(run, metric),
                constraints=constraints,
            ),
        )
    else:
        section.skipped.append(
            f"Accuracy against {name}: skipped (history.jsonl has no {metric})"
        )


def _architecture_section(builder: _Builder, run: _RunFiles) -> None:
    section = builder.section("Chosen architecture")
    arch = run.arch.get("arch") if run.arch else None
    if not isinstance(arch, dict) or not arch:
        section.skipped.append("Architecture drawing: skipped (no arch.json)")
        return
    space = run.arch.get("space", "?")
    version = run.arch.get("space_version")
    section.code.append(",".join(str(v) for v in arch.values()))
    coverage = _section(run.summary, "supernet").get("coverage")
    option_order: list[str] = []
    if isinstance(coverage, dict):
        for counts in coverage.values():
            if isinstance(counts, dict):
                option_order.extend(str(o) for o in counts if str(o) not in option_order)
    costs = run.arch.get("costs") if isinstance(run.arch.get("costs"), dict) else {}
    facts = [f"{len(arch)} choices"]
    if _number(run.arch.get("score")) is not None:
        facts.append(f"val {run.arch['score']:.2f} %")
    if _number(costs.get("flops")) is not None:
        facts.append(f"{_format_count(costs['flops'], 'FLOPs')}")
    if _number(costs.get("params")) is not None:
        facts.append(f"{_format_count(costs['params'])} params")
    title = (
        f"Chosen architecture ({space}"
        + (f" v{version}" if version is not None else "")
        + "): "
        + ", ".join(facts)
    )
    builder.add_plot(
        section,
        "architecture.png",
        "The chosen architecture, one box per choice in network order",
        lambda: _plot_architecture(arch, option_order=option_order, title=title),
    )


def _retrain_section(builder: _Builder, run: _RunFiles) -> None:
    section = builder.section("Retraining")
    retrain = _section(run.summary, "retrain")
    train_lines = [r for r in run.retrain_metrics if "loss" in r]
    eval_lines = [r for r in run.retrain_metrics if "val_acc" in r or "test_acc" in r]
    if not train_lines and not eval_lines:
        section.skipped.append("Retraining curves: skipped (no retrain/metrics.jsonl)")
        return
    builder.add_plot(
        section,
        "retrain_curves.png",
        "Retraining loss and accuracy of the chosen architecture",
        lambda: _plot_retrain(
            train_lines,
            eval_lines,
            test_top1=retrain.get("test_top1"),
            epochs=retrain.get("epochs"),
        ),
    )


def _rank_section(builder: _Builder, run: _RunFiles) -> None:
    section = builder.section("Ranking quality")
    if run.rank is None or not isinstance(run.rank.get("points"), list) or not run.rank["points"]:
        section.skipped.append("Supernet score against true accuracy: skipped (no rank/rank.json)")
        return
    builder.add_plot(
        section,
        "rank_scatter.png",
        "Supernet score against true accuracy",
        lambda: _plot_rank_scatter(run.rank),
    )
    if run.rank.get("option_bias"):
        builder.add_plot(
            section,
            "rank_option_bias.png",
            "Options the supernet over- or under-rates",
            lambda: _plot_option_bias(run.rank),
        )
