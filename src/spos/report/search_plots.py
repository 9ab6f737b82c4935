"""The plots of the search: progress per generation, accuracy against cost, and the chosen
architecture drawn as one box per choice.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import statistics
import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from spos.evolution import pareto_front
from spos.report.files import _number
from spos.report.plots import (
    _BASELINE_COLOR,
    _FRONT_COLOR,
    _MAIN_COLOR,
    _MEAN_COLOR,
    _count_scale,
    _ellipsis,
    _new_figure,
)
from spos.report.tables import _format_value

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _per_generation(history: Sequence[Mapping[str, Any]]) -> dict[int, list[float]]:
    scores: dict[int, list[float]] = defaultdict(list)
    for record in history:
        score, generation = _number(record.get("score")), _number(record.get("generation"))
        if score is not None:
            scores[int(generation) if generation is not None else 0].append(score)
    return dict(sorted(scores.items()))


def _plot_search_progress(
    history: list[dict[str, Any]], baseline: list[dict[str, Any]], *, strategy: str
) -> Figure:
    from matplotlib.ticker import MaxNLocator

    figure = _new_figure(8.5, 5.0)
    axes = figure.subplots()
    main = _per_generation(history)
    generations = list(main)
    for generation, scores in main.items():
        axes.scatter(
            [generation] * len(scores),
            scores,
            s=10,
            color=_MAIN_COLOR,
            alpha=0.25,
            linewidths=0,
            label=f"each {strategy} candidate" if generation == generations[0] else None,
        )
    best = list(itertools.accumulate((max(s) for s in main.values()), max))
    axes.plot(
        generations,
        best,
        color=_MAIN_COLOR,
        linewidth=2.6,
        marker="o",
        markersize=5,
        label=f"{strategy}: best so far",
    )
    axes.plot(
        generations,
        [statistics.fmean(s) for s in main.values()],
        color=_MEAN_COLOR,
        linewidth=1.8,
        linestyle="--",
        marker="s",
        markersize=4,
        label=f"{strategy}: generation mean",
    )
    base = _per_generation(baseline)
    if base:
        axes.plot(
            list(base),
            list(itertools.accumulate((max(s) for s in base.values()), max)),
            color=_BASELINE_COLOR,
            linewidth=2.2,
            marker="x",
            markersize=6,
            label="random baseline: best so far",
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("generation (0 = random initial population)")
    axes.set_ylabel("validation top-1 (%)\n(supernet weights)")
    evaluations = len(history)
    axes.set_title(
        f"Search progress: {strategy}, {evaluations} evaluations"
        + (f" vs. random ({len(baseline)})" if baseline else "")
    )
    axes.legend(loc="lower right")
    return figure


#: How the accuracy-against-cost plot names the cost metrics of ``history.jsonl`` that are
#: counts: ``(axis name, what is counted)``. Counts get SI prefixes (``MFLOPs``); any other
#: metric (latency) is plotted as recorded, under its own name.
_COST_AXES = {
    "flops": ("FLOPs", "multiply-accumulates"),
    "bitops": ("BitOps", "FLOPs × weight bits × activation bits"),
    "params": ("params", "conv and linear weights"),
    "params_total": ("params", "every parameter"),
    "size_bits": ("bits", "model size"),
}


def _metric_name(metric: str) -> str:
    """``"bitops"`` -> ``"BitOps"``: how captions name a cost metric."""
    return _COST_AXES[metric][0] if metric in _COST_AXES else metric


def _cost_axis(metric: str, values: Sequence[float]) -> tuple[float, str, str]:
    """``(divisor, unit, axis label)`` of the cost axis, e.g. ``(1e6, "MFLOPs", ...)``."""
    if metric not in _COST_AXES:
        return 1.0, "", metric
    name, meaning = _COST_AXES[metric]
    scale, unit = _count_scale(values, name)
    return scale, unit, f"{name} ({unit}, {meaning})"


def _cost_points(
    records: Sequence[Mapping[str, Any]], metric: str
) -> list[tuple[float, float, float | None]]:
    """``(cost, score, generation)`` of the records that have a cost and a score."""
    return [
        (x, s, g)
        for x, s, g in (
            (_number(r.get(metric)), _number(r.get("score")), _number(r.get("generation")))
            for r in records
        )
        if x is not None and s is not None
    ]


def _plot_accuracy_vs_cost(
    history: list[dict[str, Any]],
    baseline: list[dict[str, Any]],
    *,
    metric: str,
    front: Sequence[Mapping[str, Any]] | None,
    chosen: tuple[float, float] | None,
    constraints: Any,
) -> Figure:
    """Every evaluated architecture's score against its ``metric`` cost, with the Pareto front.

    Args:
        history: Scored search records (``history.jsonl``).
        baseline: Scored random-baseline records.
        metric: The cost along the x axis: the one ``pareto.json`` was computed along (BitOps
            for a mixed-precision search, whose FLOPs do not vary), else ``"flops"``.
        front: ``pareto.json``'s front records, by increasing cost; ``None`` computes the front
            of ``history`` along ``metric``.
        chosen: ``(cost, score)`` of ``arch.json``.
        constraints: The search constraints; bounds on ``metric`` are drawn.
    """
    points = _cost_points(history, metric)
    base_points = [(x, s) for x, s, _ in _cost_points(baseline, metric)]
    all_costs = (
        [p[0] for p in points] + [p[0] for p in base_points] + ([chosen[0]] if chosen else [])
    )
    scale, unit, label = _cost_axis(metric, all_costs)
    figure = _new_figure(9.0, 5.8)
    axes = figure.subplots()
    if base_points:
        _scatter_baseline(axes, base_points, scale=scale)
    if points:
        _scatter_candidates(figure, axes, points, scale=scale)
        if front is None:
            front_points = [points[i] for i in pareto_front([(x, s) for x, s, _ in points])]
        else:
            front_points = _cost_points(front, metric)
        _draw_front(axes, front_points, scale=scale)
    low = min(all_costs, default=0.0) / scale
    high = max(all_costs, default=1.0) / scale
    margin = max((high - low) * 0.15, abs(high) * 0.02, 1e-9)
    _draw_bounds(
        axes, constraints, metric=metric, scale=scale, unit=unit, view=(low - margin, high + margin)
    )
    if chosen is not None:
        _mark_chosen(axes, chosen, scale=scale, unit=unit, right_half=chosen[0] / scale > (low + high) / 2)
    axes.set_xlabel(label)
    axes.set_ylabel("validation top-1 (%)\n(supernet weights)")
    axes.set_title("Accuracy against cost of every evaluated architecture")
    figure.legend(
        loc="outside lower center", ncol=3, fontsize=9.5, frameon=False
    )  # keeps the points visible
    return figure


def _scatter_baseline(axes: Axes, points: Sequence[tuple[float, float]], *, scale: float) -> None:
    axes.scatter(
        [f / scale for f, _ in points],
        [s for _, s in points],
        marker="x",
        s=28,
        color=_BASELINE_COLOR,
        alpha=0.7,
        linewidths=1.2,
        label=f"random baseline ({len(points)})",
        zorder=2,
    )


def _scatter_candidates(
    figure: Figure,
    axes: Axes,
    points: Sequence[tuple[float, float, float | None]],
    *,
    scale: float,
) -> None:
    """The search candidates coloured by generation, with a colour bar if there are several."""
    import matplotlib
    from matplotlib.colors import BoundaryNorm
    from matplotlib.ticker import MaxNLocator

    generations = [int(g or 0) for _, _, g in points]
    first, last = min(generations), max(generations)
    # One discrete colour per generation, so the colour bar reads as whole generations.
    colormap = matplotlib.colormaps["viridis"].resampled(last - first + 1)
    norm = BoundaryNorm([g - 0.5 for g in range(first, last + 2)], colormap.N)
    scatter = axes.scatter(
        [f / scale for f, _, _ in points],
        [s for _, s, _ in points],
        c=generations,
        cmap=colormap,
        norm=norm,
        s=26,
        alpha=0.9,
        edgecolors="none",
        label=f"search candidates ({len(points)})",
        zorder=3,
    )
    if last > first:
        colorbar = figure.colorbar(scatter, ax=axes, pad=0.01)
        colorbar.set_label("generation")
        colorbar.locator = MaxNLocator(integer=True)
        colorbar.update_ticks()


def _draw_front(axes: Axes, front: Sequence[Sequence[Any]], *, scale: float) -> None:
    axes.step(
        [p[0] / scale for p in front],
        [p[1] for p in front],
        where="post",
        color=_FRONT_COLOR,
        linewidth=1.8,
        marker="o",
        markersize=4,
        markerfacecolor="none",
        label=f"Pareto front ({len(front)})",
        zorder=4,
    )


def _draw_bounds(
    axes: Axes,
    constraints: Any,
    *,
    metric: str,
    scale: float,
    unit: str,
    view: tuple[float, float],
) -> None:
    """A dashed line per bound on ``metric``; a bound outside ``view`` only gets a legend entry."""
    for constraint in _constraint_list(constraints):
        if str(constraint.get("metric")) != metric:
            continue
        for key, word in (("min", "min"), ("max", "max")):
            bound = _number(constraint.get(key))
            if bound is None:
                continue
            label = f"{_metric_name(metric)} {word} {bound / scale:.4g} {unit}".rstrip()
            style = {"color": "black", "linestyle": "--", "linewidth": 1.2}
            if view[0] <= bound / scale <= view[1]:
                axes.axvline(bound / scale, label=label, zorder=1, **style)
            else:
                axes.plot([], [], label=f"{label} (off-scale)", **style)


def _mark_chosen(
    axes: Axes, chosen: tuple[float, float], *, scale: float, unit: str, right_half: bool
) -> None:
    """A gold star with an annotation at ``arch.json``'s point, pointing inwards."""
    x, y = chosen[0] / scale, chosen[1]
    axes.scatter(
        [x], [y], marker="*", s=420, color="gold", edgecolors="black", linewidths=1.2, zorder=6
    )
    axes.plot(
        [],
        [],
        linestyle="none",
        marker="*",
        markersize=13,
        color="gold",
        markeredgecolor="black",
        label="chosen (arch.json)",
    )
    axes.annotate(
        f"chosen\n{y:.2f} %, {x:.4g} {unit}".rstrip(),
        (x, y),
        xytext=(-95 if right_half else 25, -48),
        textcoords="offset points",
        fontsize=10,
        fontweight="bold",
        arrowprops={"arrowstyle": "->", "color": "black"},
        bbox={
            "boxstyle": "round,pad=0.3",
            "facecolor": "white",
            "edgecolor": "0.6",
            "alpha": 0.9,
        },
        zorder=7,
    )


def _constraint_list(constraints: Any) -> list[Mapping[str, Any]]:
    if isinstance(constraints, Mapping):
        return [
            {"metric": key, **value}
            for key, value in constraints.items()
            if isinstance(value, Mapping)
        ]
    if isinstance(constraints, list):
        return [c for c in constraints if isinstance(c, Mapping)]
    return []


def _abbreviations(values: Sequence[str]) -> dict[str, str]:
    """Short box texts (``shuffle7x7`` -> ``7x7``, ``xception`` -> ``xcp``); full text on a clash."""

    def abbreviate(text: str) -> str:
        kernel = re.search(r"\d+x\d+", text)
        if kernel:
            return kernel.group(0)
        if len(text) <= 6:
            return text
        consonants = [c for c in text[1:] if c.isalnum() and c.lower() not in "aeiou"]
        return text[0] + "".join(consonants[:2])

    short = {value: abbreviate(value) for value in values}
    if len(set(short.values())) == len(short):
        return short
    return {value: value for value in values}


def _compact_labels(labels: Sequence[str], *, limit: int = 16) -> list[str]:
    """Choice labels short enough to sit under a box: a shared ``_suffix`` dropped, then the tail.

    The distinguishing part of generated labels (``stage2_block3_width``) is at the end, so a
    label still too long keeps its last characters.
    """
    labels = [str(label) for label in labels]
    if len(labels) > 1:
        suffix = os.path.commonprefix([label[::-1] for label in labels])[::-1]
        cut = suffix.find("_")  # drop only whole ``_word`` suffixes, never part of a word
        if cut >= 0 and all(len(label) > len(suffix) for label in labels):
            labels = [label[: len(label) - len(suffix) + cut] for label in labels]
    return [label if len(label) <= limit else "…" + label[-(limit - 1) :] for label in labels]


def _plot_architecture(
    arch: Mapping[str, Any], *, option_order: Sequence[str], title: str
) -> Figure:
    import matplotlib
    from matplotlib.patches import FancyBboxPatch, Patch

    labels = _compact_labels(list(arch))
    texts = [_format_value(v) if not isinstance(v, str) else v for v in arch.values()]
    # Every option the space has (from the coverage table) fixes colours and abbreviations, so
    # they do not change with which options this architecture happens to use.
    known = list(option_order) + sorted(
        {t for t in texts if t not in option_order}, key=texts.index
    )
    distinct = [t for t in known if t in texts]
    numeric = all(_number(v) is not None for v in arch.values()) and len(distinct) > 2
    if numeric:
        distinct = sorted(distinct, key=float)
        colormap = matplotlib.colormaps["viridis"]
        colors = {
            t: colormap(0.1 + 0.8 * i / max(1, len(distinct) - 1)) for i, t in enumerate(distinct)
        }
        short = {t: t for t in distinct}
    else:
        colormap = matplotlib.colormaps["tab10" if len(known) <= 10 else "tab20"]
        colors = {t: colormap(known.index(t) % colormap.N) for t in distinct}
        short = _abbreviations(known)

    per_row = len(labels) if len(labels) <= 12 else 10
    rows = math.ceil(len(labels) / per_row)
    box_width, box_height, gap, row_height = 1.0, 0.62, 0.28, 1.25
    longest = max((len(short[t]) for t in texts), default=1)
    font_size = 10 if longest <= 5 else 8.5 if longest <= 9 else 7
    figure = _new_figure(max(6.0, min(14.0, per_row * 1.12 + 0.6)), 1.1 * rows + 1.6)
    axes = figure.subplots()
    axes.set_axis_off()
    for index, (label, text) in enumerate(zip(labels, texts, strict=True)):
        row, column = divmod(index, per_row)
        x, y = column * (box_width + gap), -row * row_height
        color = colors[text]
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        axes.add_patch(
            FancyBboxPatch(
                (x, y),
                box_width,
                box_height,
                boxstyle="round,pad=0.02,rounding_size=0.08",
                facecolor=color,
                edgecolor="black",
                linewidth=0.8,
            )
        )
        axes.text(
            x + box_width / 2,
            y + box_height / 2,
            _ellipsis(short[text], 12),
            ha="center",
            va="center",
            fontsize=font_size,
            fontweight="bold",
            color="white" if luminance < 0.55 else "black",
        )
        axes.text(
            x + box_width / 2, y - 0.1, label, ha="center", va="top", fontsize=7, color="0.35"
        )
        if column < per_row - 1 and index < len(labels) - 1:
            axes.annotate(
                "",
                (x + box_width + gap - 0.02, y + box_height / 2),
                (x + box_width + 0.02, y + box_height / 2),
                arrowprops={"arrowstyle": "->", "color": "0.3", "linewidth": 1.0},
            )
    axes.set_xlim(-0.15, per_row * (box_width + gap) - gap + 0.15)
    axes.set_ylim(-(rows - 1) * row_height - 0.45, box_height + 0.15)
    handles = [
        Patch(
            facecolor=colors[t],
            edgecolor="black",
            label=t if short[t] == t else f"{short[t]} = {t}",
        )
        for t in distinct
    ]
    legend_rows = math.ceil(len(handles) / 8)
    axes.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncol=math.ceil(len(handles) / legend_rows),
        frameon=False,
        title="option (box colour)",
        fontsize=9.5,
    )
    # Wrap the title to the figure width (about 9 characters per inch at this size).
    width_chars = max(30, int(figure.get_figwidth() * 9))
    axes.set_title(textwrap.fill(title, width_chars), fontsize=11.5)
    return figure
