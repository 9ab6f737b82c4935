"""Run report: plots and key figures from a run directory's files only (SPEC section 5).

:func:`write_report` reads what the stages left in ``runs/<name>/`` (``config.yaml``,
``metrics.jsonl``, ``summary.json``, ``history.jsonl``, ``baseline/history.jsonl``,
``arch.json``, ``retrain/metrics.jsonl``, ``rank/rank.json``) and writes ``report/``: one PNG per
plot, a self-contained ``index.html`` (plots embedded as ``data:`` URIs, inline CSS, no external
assets) and a ``README.md`` that shows the same plots from the PNG files next to it.

Every section is optional. A section whose input files are missing (a run that only trained its
supernet, say) or unreadable is skipped with a one-line note, so the report of a partial or
still-running run works. A truncated last line of a JSON-lines file (a stage still writing) is
ignored.

The report is the last consumer of the data flow: it imports no model code and no torch, only
matplotlib (through :class:`matplotlib.figure.Figure` objects, so no pyplot global state and no
backend switch), PyYAML and the torch-free :func:`spos.evolution.pareto_front`.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import itertools
import json
import logging
import math
import os
import re
import statistics
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from spos.evolution import pareto_front
from spos.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["write_report", "write_rank_plot"]

log = logging.getLogger(__name__)

_REPORT_DIRNAME = "report"
_DPI = 110
# One name per plot, in report order; stale copies of these are removed when a plot is skipped.
_PLOT_FILES = (
    "supernet_training.png",
    "panel_accuracy.png",
    "rank_during_training.png",
    "coverage.png",
    "search_progress.png",
    "accuracy_vs_flops.png",
    "architecture.png",
    "retrain_curves.png",
    "rank_scatter.png",
    "rank_option_bias.png",
)
_STYLE = {
    "font.size": 10.5,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "legend.fontsize": 9.5,
    "legend.framealpha": 0.9,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": _DPI,
    "savefig.dpi": _DPI,
}
_MAIN_COLOR = "#1f77b4"
_MEAN_COLOR = "#ff7f0e"
_BASELINE_COLOR = "#7f7f7f"
_FRONT_COLOR = "#d62728"
_SMOOTH_ABOVE = 60  # points; denser curves get a smoothed line over the raw one


# --------------------------------------------------------------------------- reading run files


@dataclass
class _RunFiles:
    """Everything the report reads, parsed once; missing files are empty/None."""

    run_dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    baseline_history: list[dict[str, Any]]
    arch: dict[str, Any] | None
    retrain_metrics: list[dict[str, Any]]
    rank: dict[str, Any] | None
    unreadable: dict[str, str] = field(default_factory=dict)  # relative path -> reason


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON objects of a JSON-lines file, in order; ``[]`` when the file does not exist.

    Blank lines and lines that do not parse as a JSON object (the half-written last line of a
    stage that is still running) are skipped with a logged warning.
    """
    if not path.is_file():
        return []
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s line %d is not JSON; skipped", path, number)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def _read_json(path: Path, unreadable: dict[str, str], *, name: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        unreadable[name] = str(exc)
        return None
    if not isinstance(data, dict):
        unreadable[name] = "not a JSON object"
        return None
    return data


def _read_yaml(path: Path, unreadable: dict[str, str], *, name: str) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        unreadable[name] = str(exc).splitlines()[0]
        return {}
    return data if isinstance(data, dict) else {}


def _read_run(run_dir: Path) -> _RunFiles:
    unreadable: dict[str, str] = {}
    return _RunFiles(
        run_dir=run_dir,
        config=_read_yaml(run_dir / "config.yaml", unreadable, name="config.yaml"),
        metrics=_read_jsonl(run_dir / "metrics.jsonl"),
        summary=_read_json(run_dir / "summary.json", unreadable, name="summary.json") or {},
        history=_read_jsonl(run_dir / "history.jsonl"),
        baseline_history=_read_jsonl(run_dir / "baseline" / "history.jsonl"),
        arch=_read_json(run_dir / "arch.json", unreadable, name="arch.json"),
        retrain_metrics=_read_jsonl(run_dir / "retrain" / "metrics.jsonl"),
        rank=_read_json(run_dir / "rank" / "rank.json", unreadable, name="rank/rank.json"),
        unreadable=unreadable,
    )


def _section(mapping: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def _dotted(mapping: Mapping[str, Any], dotted_key: str) -> Any:
    value: Any = mapping
    for part in dotted_key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, NaN, bool, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _params_baseline_tau(rank: Mapping[str, Any]) -> float | None:
    """Kendall tau of ranking by parameter count alone (``rank.json``'s ``cost_baselines``)."""
    baselines = rank.get("cost_baselines")
    params = baselines.get("params") if isinstance(baselines, Mapping) else None
    return _number(params.get("kendall_tau")) if isinstance(params, Mapping) else None


def _series(
    records: Sequence[Mapping[str, Any]], x_key: str, y_key: str
) -> tuple[list[float], list[float]]:
    """Paired finite ``(x, y)`` values of the records that have both keys."""
    xs: list[float] = []
    ys: list[float] = []
    for record in records:
        x, y = _number(record.get(x_key)), _number(record.get(y_key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


# --------------------------------------------------------------------------- formatting


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


def _flops_scale(values: Sequence[float]) -> tuple[float, str]:
    """Divisor and unit name so FLOPs read as a few digits (MFLOPs for ImageNet-size nets)."""
    largest = max((abs(v) for v in values), default=0.0)
    if largest >= 1e10:
        return 1e9, "GFLOPs"
    if largest >= 1e5:
        return 1e6, "MFLOPs"
    if largest >= 1e2:
        return 1e3, "kFLOPs"
    return 1.0, "FLOPs"


# --------------------------------------------------------------------------- figures


@contextlib.contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        yield


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    return buffer.getvalue()


def _smoothed(values: Sequence[float], *, window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def _plot_curve(
    axes: Axes, xs: Sequence[float], ys: Sequence[float], *, color: str, label: str
) -> None:
    """A training curve: raw points, plus a bold moving average when the curve is dense."""
    if len(xs) > _SMOOTH_ABOVE:
        window = max(3, len(xs) // 30)
        axes.plot(xs, ys, color=color, linewidth=0.8, alpha=0.35, label=f"{label} (logged)")
        axes.plot(
            xs,
            _smoothed(ys, window=window),
            color=color,
            linewidth=2.0,
            label=f"{label} (moving avg., {window} logs)",
        )
    else:
        axes.plot(
            xs,
            ys,
            color=color,
            linewidth=1.8,
            marker="o" if len(xs) <= 30 else None,
            markersize=3.5,
            label=label,
        )


def _plot_supernet_training(train_lines: list[dict[str, Any]], *, sampler: Any) -> Figure:
    steps, losses = _series(train_lines, "step", "loss")
    acc_steps, accuracies = _series(train_lines, "step", "train_acc")
    lr_steps, rates = _series(train_lines, "step", "lr")
    _, speeds = _series(train_lines, "step", "images_per_s")
    rows = 2 + bool(rates)
    figure = _new_figure(8.5, 7.2 if rates else 5.8)
    grid = figure.subplots(rows, 1, sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.6][:rows]})
    loss_axes, acc_axes = grid[0], grid[1]
    _plot_curve(loss_axes, steps, losses, color=_MAIN_COLOR, label="training loss")
    loss_axes.set_ylabel("loss (cross-entropy)")
    loss_axes.legend(loc="upper right")
    if accuracies:
        _plot_curve(acc_axes, acc_steps, accuracies, color="#2ca02c", label="training accuracy")
        acc_axes.legend(loc="lower right")
    else:
        acc_axes.text(
            0.5, 0.5, "no train_acc logged", ha="center", va="center", transform=acc_axes.transAxes
        )
    acc_axes.set_ylabel("train top-1 (%)\n(sampled paths)")
    if rates:
        grid[2].plot(lr_steps, rates, color="#9467bd", linewidth=1.6)
        grid[2].set_ylabel("learning rate")
        grid[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    grid[-1].set_xlabel("supernet training step")
    details = [f"{int(max(steps))} steps" if steps else None]
    if sampler:
        details.append(f"{sampler} sampling")
    if speeds:
        details.append(f"median {statistics.median(speeds):.0f} img/s")
    loss_axes.set_title(
        "Supernet training: one uniformly sampled path per step\n("
        + ", ".join(d for d in details if d)
        + ")"
    )
    return figure


def _plot_panel(panel_lines: list[dict[str, Any]]) -> Figure:
    per_arch: dict[str, list[tuple[float, float]]] = defaultdict(list)
    mean_steps, means = _series(panel_lines, "step", "panel_mean_acc")
    for record in panel_lines:
        step = _number(record.get("step"))
        for name, accuracy in record["panel"].items():
            accuracy = _number(accuracy)
            if step is not None and accuracy is not None:
                per_arch[str(name)].append((step, accuracy))
    if not means:  # derive the mean when only the per-arch values were logged
        for record in panel_lines:
            values = [v for v in (_number(a) for a in record["panel"].values()) if v is not None]
            step = _number(record.get("step"))
            if values and step is not None:
                mean_steps.append(step)
                means.append(sum(values) / len(values))
    marker = "o" if len(panel_lines) <= 30 else None
    figure = _new_figure(8.5, 5.0)
    axes = figure.subplots()
    for index, points in enumerate(per_arch.values()):
        xs, ys = zip(*sorted(points), strict=True)
        axes.plot(
            xs,
            ys,
            color="#8c8c8c",
            linewidth=0.9,
            alpha=0.7,
            marker=marker,
            markersize=2.5,
            label=f"each panel architecture ({len(per_arch)})" if index == 0 else None,
        )
    axes.plot(
        mean_steps,
        means,
        color=_MEAN_COLOR,
        linewidth=2.8,
        marker=marker,
        markersize=5,
        label="panel mean",
    )
    if means:
        axes.annotate(
            f"{means[-1]:.1f} %",
            (mean_steps[-1], means[-1]),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            color=_MEAN_COLOR,
            fontweight="bold",
            annotation_clip=False,
        )
    axes.set_xlabel("supernet training step")
    axes.set_ylabel("validation top-1 (%)\n(inherited weights, BN recalibrated)")
    axes.set_title(
        f"Fixed panel of {len(per_arch)} architectures evaluated during supernet training"
    )
    axes.legend(loc="lower right")
    return figure


def _plot_rank_during_training(rank_lines: list[dict[str, Any]]) -> Figure:
    figure = _new_figure(8.5, 4.6)
    axes = figure.subplots()
    marker = "o" if len(rank_lines) <= 30 else None
    for key, label, color in (
        ("kendall_tau", "Kendall τ", _MAIN_COLOR),
        ("spearman_rho", "Spearman ρ", _MEAN_COLOR),
    ):
        xs, ys = _series(rank_lines, "step", key)
        if xs:
            axes.plot(xs, ys, color=color, linewidth=2.0, marker=marker, markersize=4, label=label)
    axes.axhline(0.0, color="black", linewidth=0.8)
    low = min(
        (_number(r.get(k)) or 0.0 for r in rank_lines for k in ("kendall_tau", "spearman_rho")),
        default=0.0,
    )
    axes.set_ylim(min(-0.1, low - 0.05), 1.0)
    axes.set_xlabel("supernet training step")
    axes.set_ylabel("rank correlation\n(supernet score vs. true accuracy)")
    axes.set_title("How well the supernet ranks architectures during training (1 = perfect)")
    axes.legend(loc="lower right")
    return figure


def _plot_coverage(coverage: Mapping[str, Mapping[str, Any]], *, steps: Any) -> Figure:
    import numpy as np

    labels = list(coverage)
    options: list[str] = []
    for counts in coverage.values():
        options.extend(str(o) for o in counts if str(o) not in options)
    table = np.full((len(labels), len(options)), np.nan)
    for row, label in enumerate(labels):
        for option, count in coverage[label].items():
            number = _number(count)
            if number is not None:
                table[row, options.index(str(option))] = number
    width = min(14.0, max(6.5, 1.15 * len(options) + 3.0))
    height = min(24.0, max(3.2, 0.3 * len(labels) + 1.8))
    figure = _new_figure(width, height)
    axes = figure.subplots()
    axes.grid(False)
    # Colour = count relative to a fair share of its choice, so "uniform" reads as one pale
    # colour at any run length and over- or under-trained options stand out in red or blue.
    with np.errstate(invalid="ignore", divide="ignore"):
        fair_share = np.nansum(table, axis=1, keepdims=True) / np.sum(
            np.isfinite(table), axis=1, keepdims=True
        )
        relative = np.where(fair_share > 0, table / fair_share, np.nan)
    deviation = float(np.nanmax(np.abs(relative - 1.0))) if np.isfinite(relative).any() else 0.0
    spread = max(0.1, deviation)
    image = axes.imshow(
        np.ma.masked_invalid(relative),
        aspect="auto",
        cmap="RdBu_r",
        vmin=1 - spread,
        vmax=1 + spread,
    )
    crowded = len(options) * max(len(o) for o in options) > 60  # tick texts would touch
    axes.set_xticks(
        range(len(options)),
        [_ellipsis(o, 14) for o in options],
        rotation=30 if crowded else 0,
        ha="right" if crowded else "center",
    )
    axes.set_yticks(
        range(len(labels)),
        [_ellipsis(label, 22) for label in labels],
        fontsize=8.5 if len(labels) > 30 else 9.5,
    )
    axes.set_xlabel("option")
    axes.set_ylabel("choice (network order)")
    colorbar = figure.colorbar(image, ax=axes, shrink=0.9)
    colorbar.set_label("count ÷ fair share of its choice (1 = uniform)")
    finite = table[np.isfinite(table)]
    if table.size <= 400:
        for (row, column), count in np.ndenumerate(table):
            if np.isfinite(count):
                strong = (
                    np.isfinite(relative[row, column])
                    and abs(relative[row, column] - 1.0) > 0.6 * spread
                )
                axes.text(
                    column,
                    row,
                    f"{int(count)}",
                    ha="center",
                    va="center",
                    fontsize=8.5 if len(labels) <= 30 else 7,
                    color="white" if strong else "black",
                )
    title = "Per-choice training coverage (cell text = times trained)"
    if finite.size:
        low, high = float(finite.min()), float(finite.max())
        ratio = f", max/min {high / low:.2f}" if low > 0 else ""
        title += f"\nmin {low:.0f}, max {high:.0f}{ratio}"
        if _number(steps):
            title += f" over {int(steps)} steps"
    axes.set_title(title)
    return figure


def _ellipsis(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


def _plot_accuracy_vs_flops(
    history: list[dict[str, Any]],
    baseline: list[dict[str, Any]],
    *,
    chosen: tuple[float, float] | None,
    constraints: Any,
) -> Figure:
    points = [
        (f, s, g)
        for f, s, g in (
            (_number(r.get("flops")), _number(r.get("score")), _number(r.get("generation")))
            for r in history
        )
        if f is not None and s is not None
    ]
    base_points = [
        (f, s)
        for f, s in ((_number(r.get("flops")), _number(r.get("score"))) for r in baseline)
        if f is not None and s is not None
    ]
    all_flops = (
        [p[0] for p in points] + [p[0] for p in base_points] + ([chosen[0]] if chosen else [])
    )
    scale, unit = _flops_scale(all_flops)
    figure = _new_figure(9.0, 5.8)
    axes = figure.subplots()
    if base_points:
        axes.scatter(
            [f / scale for f, _ in base_points],
            [s for _, s in base_points],
            marker="x",
            s=28,
            color=_BASELINE_COLOR,
            alpha=0.7,
            linewidths=1.2,
            label=f"random baseline ({len(base_points)})",
            zorder=2,
        )
    if points:
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
        front = [points[i] for i in pareto_front([(f, s) for f, s, _ in points])]
        axes.step(
            [f / scale for f, _, _ in front],
            [s for _, s, _ in front],
            where="post",
            color=_FRONT_COLOR,
            linewidth=1.8,
            marker="o",
            markersize=4,
            markerfacecolor="none",
            label=f"Pareto front ({len(front)})",
            zorder=4,
        )
    low = min(all_flops, default=0.0) / scale
    high = max(all_flops, default=1.0) / scale
    margin = max((high - low) * 0.15, abs(high) * 0.02, 1e-9)
    for constraint in _constraint_list(constraints):
        if str(constraint.get("metric")) != "flops":
            continue
        for key, word in (("min", "min"), ("max", "max")):
            bound = _number(constraint.get(key))
            if bound is None:
                continue
            label = f"FLOPs {word} {bound / scale:.4g} {unit}"
            if low - margin <= bound / scale <= high + margin:
                axes.axvline(
                    bound / scale,
                    color="black",
                    linestyle="--",
                    linewidth=1.2,
                    label=label,
                    zorder=1,
                )
            else:
                axes.plot(
                    [],
                    [],
                    color="black",
                    linestyle="--",
                    linewidth=1.2,
                    label=f"{label} (off-scale)",
                )
    if chosen is not None:
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
        right_half = x > (low + high) / 2
        axes.annotate(
            f"chosen\n{y:.2f} %, {x:.4g} {unit}",
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
    axes.set_xlabel(f"FLOPs ({unit}, multiply-accumulates)")
    axes.set_ylabel("validation top-1 (%)\n(supernet weights)")
    axes.set_title("Accuracy against cost of every evaluated architecture")
    figure.legend(
        loc="outside lower center", ncol=3, fontsize=9.5, frameon=False
    )  # keeps the points visible
    return figure


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


def _plot_retrain(
    train_lines: list[dict[str, Any]],
    eval_lines: list[dict[str, Any]],
    *,
    test_top1: Any,
    epochs: Any,
) -> Figure:
    figure = _new_figure(11.0, 4.6)
    loss_axes, acc_axes = figure.subplots(1, 2)
    steps, losses = _series(train_lines, "step", "loss")
    _plot_curve(loss_axes, steps, losses, color=_MAIN_COLOR, label="training loss")
    loss_axes.set_xlabel("retraining step")
    loss_axes.set_ylabel("loss (cross-entropy)")
    loss_axes.set_title("Retraining loss")
    loss_axes.legend(loc="upper right")
    xs, ys = _series(train_lines, "step", "train_acc")
    if xs:
        _plot_curve(acc_axes, xs, ys, color="#2ca02c", label="train")
    for key, label, color, marker in (
        ("val_acc", "validation", _MEAN_COLOR, "o"),
        ("test_acc", "test", _FRONT_COLOR, "s"),
    ):
        xs, ys = _series(eval_lines, "step", key)
        if xs:
            acc_axes.plot(
                xs, ys, color=color, linewidth=2.0, marker=marker, markersize=4.5, label=label
            )
    final = _number(test_top1)
    if final is not None:
        last_step = max(steps + _series(eval_lines, "step", "val_acc")[0], default=0.0)
        acc_axes.scatter(
            [last_step],
            [final],
            marker="*",
            s=260,
            color="gold",
            edgecolors="black",
            zorder=5,
            label=f"final test top-1 {final:.2f} %",
        )
    acc_axes.set_xlabel("retraining step")
    acc_axes.set_ylabel("top-1 accuracy (%)")
    acc_axes.set_title(
        "Retraining accuracy" + (f" ({int(epochs)} epochs)" if _number(epochs) else "")
    )
    acc_axes.legend(loc="lower right")
    return figure


def _plot_rank_scatter(rank: Mapping[str, Any]) -> Figure:
    pairs = [
        (a, b)
        for a, b in (
            (_number(p[0]), _number(p[1]))
            for p in rank["points"]
            if isinstance(p, (list, tuple)) and len(p) == 2
        )
        if a is not None and b is not None
    ]
    figure = _new_figure(6.8, 5.8)
    axes = figure.subplots()
    axes.scatter(
        [a for a, _ in pairs],
        [b for _, b in pairs],
        s=26,
        color=_MAIN_COLOR,
        alpha=0.75,
        edgecolors="none",
    )
    tau, rho = _number(rank.get("kendall_tau")), _number(rank.get("spearman_rho"))
    heading = ", ".join(
        part
        for part in (
            f"Kendall τ = {tau:.3f}" if tau is not None else "",
            f"Spearman ρ = {rho:.3f}" if rho is not None else "",
        )
        if part
    )
    axes.set_title(f"Supernet ranking quality ({len(pairs)} architectures)\n{heading}")
    precision = [
        f"precision@{name} = {_number(rank.get(key)):.2f}"
        for key, name in (("precision_at_5pct", "5%"), ("precision_at_10pct", "10%"))
        if _number(rank.get(key)) is not None
    ]
    params_tau = _params_baseline_tau(rank)
    if params_tau is not None:  # the zero-cost baseline the supernet has to beat
        precision.append(f"params alone: τ = {params_tau:.3f}")
    if precision:
        axes.text(
            0.03,
            0.97,
            "\n".join(precision),
            transform=axes.transAxes,
            va="top",
            fontsize=10,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7"},
        )
    # Zoom on the bulk: a few degenerate architectures (e.g. NAS-Bench-201 cells cut by
    # 'none' edges, at chance) would otherwise squeeze every other point into a corner.
    if len(pairs) >= 20:
        limits = []
        for values in ([a for a, _ in pairs], [b for _, b in pairs]):
            ordered = sorted(values)
            low, high = ordered[int(0.03 * len(ordered))], ordered[-1]
            pad = 0.05 * max(high - low, 1e-9)
            limits.append((low - pad, high + pad))
        outside = sum(
            not (limits[0][0] <= a <= limits[0][1] and limits[1][0] <= b <= limits[1][1])
            for a, b in pairs
        )
        if outside:
            axes.set_xlim(*limits[0])
            axes.set_ylim(*limits[1])
            axes.text(
                0.97,
                0.03,
                f"{outside} of {len(pairs)} outside this view (lowest 3%)",
                transform=axes.transAxes,
                ha="right",
                fontsize=9,
                color="0.35",
            )
    axes.set_xlabel("true accuracy (%)\n(stand-alone training / ground truth)")
    axes.set_ylabel("supernet score\n(inherited weights)")
    return figure


def _plot_option_bias(rank: Mapping[str, Any]) -> Figure:
    """Per option: how using it more correlates with the truth and with the supernet score."""
    rows = [row for row in rank["option_bias"] if isinstance(row, Mapping)][:12]
    if not rows:
        raise ValueError("rank.json has no option_bias rows")
    rows = rows[::-1]  # largest |bias| at the top of a horizontal bar chart
    labels = [str(row["option"]) for row in rows]
    truth = [float(row["tau_truth"]) for row in rows]
    proxy = [float(row["tau_proxy"]) for row in rows]
    figure = _new_figure(6.8, max(3.2, 1.4 + 0.45 * len(rows)))
    axes = figure.subplots()
    positions = list(range(len(rows)))
    axes.barh([y + 0.2 for y in positions], truth, height=0.4, color="0.55", label="ground truth")
    axes.barh([y - 0.2 for y in positions], proxy, height=0.4, color=_MAIN_COLOR, label="supernet")
    axes.set_yticks(positions, labels)
    axes.axvline(0.0, color="0.3", linewidth=0.8)
    axes.set_xlabel("Kendall τ between how often a network uses the option and its accuracy")
    axes.set_title("Which options does the supernet over- or under-rate?\n(bars that differ = bias)")
    axes.legend(loc="lower right", fontsize=9)
    return figure


# --------------------------------------------------------------------------- report sections


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


def _chosen_point(run: _RunFiles) -> tuple[float, float] | None:
    """``(flops, score)`` of ``arch.json``, looked up in the history when it lacks them."""
    if run.arch is None:
        return None
    costs = run.arch.get("costs") if isinstance(run.arch.get("costs"), dict) else {}
    flops, score = _number(costs.get("flops")), _number(run.arch.get("score"))
    if flops is None or score is None:
        for record in run.history:
            if record.get("arch") == run.arch.get("arch"):
                flops = flops if flops is not None else _number(record.get("flops"))
                score = score if score is not None else _number(record.get("score"))
                break
    return (flops, score) if flops is not None and score is not None else None


def _search_section(builder: _Builder, run: _RunFiles) -> None:
    section = builder.section("Search")
    search = _section(run.summary, "search")
    strategy = str(search.get("strategy") or _dotted(run.config, "search.strategy") or "search")
    scored = [r for r in run.history if _number(r.get("score")) is not None]
    if not scored:
        section.skipped.append(
            "Search progress and accuracy against FLOPs: skipped (no history.jsonl)"
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
    if any(_number(r.get("flops")) is not None for r in scored):
        builder.add_plot(
            section,
            "accuracy_vs_flops.png",
            "Accuracy against FLOPs: candidates, Pareto front, chosen architecture",
            lambda: _plot_accuracy_vs_flops(
                scored, baseline, chosen=_chosen_point(run), constraints=constraints
            ),
        )
    else:
        section.skipped.append("Accuracy against FLOPs: skipped (history.jsonl has no flops)")


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


# --------------------------------------------------------------------------- tables


def _key_figures(run: _RunFiles) -> list[tuple[str, str, str]]:
    """``(stage, quantity, value)`` rows of the headline numbers that exist."""
    rows: list[tuple[str, str, str]] = []
    supernet = _section(run.summary, "supernet")
    if supernet:
        coverage = supernet.get("coverage")
        counts = (
            [
                n
                for c in coverage.values()
                if isinstance(c, dict)
                for n in c.values()
                if _number(n) is not None
            ]
            if isinstance(coverage, dict)
            else []
        )
        rows += [
            ("supernet", "steps", _format_value(supernet.get("steps"))),
            ("supernet", "sampler", _format_value(supernet.get("sampler"))),
            ("supernet", "throughput", f"{_format_value(supernet.get('images_per_s'))} img/s"),
            ("supernet", "training time", _format_seconds(supernet.get("train_seconds"))),
            ("supernet", "panel mean val. acc.", _format_percent(supernet.get("panel_mean_acc"))),
            ("supernet", "panel best val. acc.", _format_percent(supernet.get("panel_best_acc"))),
        ]
        if counts:
            rows.append(
                ("supernet", "coverage min / max", f"{min(counts):.0f} / {max(counts):.0f}")
            )
        if supernet.get("weights_sha256"):
            rows.append(("supernet", "weights sha256", _short_hash(supernet["weights_sha256"])))
    elif run.metrics:
        steps = [s for s in (_number(r.get("step")) for r in run.metrics) if s is not None]
        rows.append(
            (
                "supernet",
                "steps logged (unfinished)",
                _format_value(int(max(steps))) if steps else "—",
            )
        )
    search = _section(run.summary, "search")
    if search:
        costs = search.get("best_costs") if isinstance(search.get("best_costs"), dict) else {}
        rows += [
            ("search", "strategy", _format_value(search.get("strategy"))),
            ("search", "evaluations", _format_value(search.get("evaluations"))),
            ("search", "generations", _format_value(search.get("generations"))),
            ("search", "search time", _format_seconds(search.get("seconds"))),
            ("search", "best val. score", _format_percent(search.get("best_score"))),
            (
                "search",
                "best FLOPs (multiply-accumulates)",
                _format_count(costs.get("flops"), "FLOPs"),
            ),
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
        baseline = _section(search, "baseline")
        if baseline:
            rows += [
                ("search", "random baseline best", _format_percent(baseline.get("best_score"))),
                (
                    "search",
                    "random baseline evaluations",
                    _format_value(baseline.get("evaluations")),
                ),
                ("search", "evolution beats baseline", _format_value(search.get("beats_baseline"))),
            ]
    retrain = _section(run.summary, "retrain")
    if retrain:
        rows += [
            ("retrain", "test top-1", _format_percent(retrain.get("test_top1"))),
            ("retrain", "test top-5", _format_percent(retrain.get("test_top5"))),
            ("retrain", "params", _format_count(retrain.get("params"))),
            (
                "retrain",
                "FLOPs (multiply-accumulates)",
                _format_count(retrain.get("flops"), "FLOPs"),
            ),
            ("retrain", "epochs", _format_value(retrain.get("epochs"))),
            ("retrain", "training time", _format_seconds(retrain.get("seconds"))),
        ]
    for key, value in _section(run.summary, "export").items():
        if key in {"stage"}:
            continue
        text = _short_hash(value) if "sha" in key else _format_value(value)
        rows.append(("export", key.replace("_", " "), text))
    if run.rank is not None:
        for key, name in (
            ("kendall_tau", "Kendall tau"),
            ("spearman_rho", "Spearman rho"),
            ("precision_at_5pct", "precision@5%"),
            ("precision_at_10pct", "precision@10%"),
        ):
            if _number(run.rank.get(key)) is not None:
                rows.append(("rank", name, f"{run.rank[key]:.3f}"))
        params_tau = _params_baseline_tau(run.rank)
        if params_tau is not None:
            rows.append(("rank", "Kendall tau of params alone (baseline)", f"{params_tau:.3f}"))
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


# --------------------------------------------------------------------------- HTML and markdown

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
max-width:1020px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.1em}h2{font-size:1.25em;border-bottom:1px solid #ddd;
padding-bottom:.2em;margin-top:1.8em}table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .7em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.value{font-variant-numeric:tabular-nums}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.92em}p.skipped{color:#777;font-style:italic;margin:.25em 0}
p.subtitle{color:#666;margin-top:0}code{background:#f4f4f4;padding:0 .25em;border-radius:3px;
word-break:break-all}
""".strip()


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="value">{html.escape(c)}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _render_html(
    title: str,
    subtitle: str,
    tables: Sequence[tuple[str, Sequence[str], list]],
    sections: Sequence[_Section],
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="subtitle">{html.escape(subtitle)}</p>',
    ]
    for heading, header, rows in tables:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(
            _html_table(header, rows) if rows else '<p class="skipped">Nothing recorded yet.</p>'
        )
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        parts += [f"<p><code>{html.escape(line)}</code></p>" for line in section.code]
        for plot in section.plots:
            data = base64.b64encode(plot.png).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(plot.caption)}">'
                f"<figcaption>{html.escape(plot.caption)} (<code>{html.escape(plot.filename)}</code>)</figcaption></figure>"
            )
        parts += [f'<p class="skipped">{html.escape(line)}</p>' for line in section.skipped]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _render_markdown(
    title: str,
    subtitle: str,
    tables: Sequence[tuple[str, Sequence[str], list]],
    sections: Sequence[_Section],
) -> str:
    parts = [f"# {title}", "", subtitle, ""]
    for heading, header, rows in tables:
        parts += [
            f"## {heading}",
            "",
            _markdown_table(header, rows) if rows else "_Nothing recorded yet._",
            "",
        ]
    for section in sections:
        parts += [f"## {section.heading}", ""]
        for line in section.code:
            parts += [f"`{line}`", ""]
        for plot in section.plots:
            parts += [f"![{plot.caption}]({plot.filename})", "", f"*{plot.caption}*", ""]
        for line in section.skipped:
            parts += [f"- _{line}_"]
        if section.skipped:
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"



# --------------------------------------------------------------------------- entry point


def write_rank_plot(rank: Mapping[str, Any], path: Path) -> Path:
    """Write the supernet-score-against-truth scatter of ``rank`` (``rank/rank.json``'s form:
    ``points`` as ``[true, score]`` pairs plus the correlations) to the PNG ``path``."""
    with _style():
        atomic_write_bytes(Path(path), _png_bytes(_plot_rank_scatter(rank)))
    return Path(path)


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report/`` (PNG plots, ``index.html``, ``README.md``) from run files only.

    Sections whose input files are missing are skipped with a one-line note, so this works for
    a run at any stage, including one that only trained its supernet. Running it again
    overwrites the report (each file atomically) and removes plots that no longer apply.

    Args:
        run_dir: The run directory (``runs/<name>/``) the stages wrote.

    Returns:
        The path of ``index.html``: self-contained (plots embedded as ``data:`` URIs, inline
        CSS), so it can be mailed or attached on its own.

    Raises:
        FileNotFoundError: ``run_dir`` is not a directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} does not exist; pass the folder a stage wrote (runs/<name>)"
        )
    run = _read_run(run_dir)
    builder = _Builder()
    for add_section in (
        _supernet_section,
        _search_section,
        _architecture_section,
        _retrain_section,
        _rank_section,
    ):
        add_section(builder, run)

    out_dir = run_dir / _REPORT_DIRNAME
    out_dir.mkdir(parents=True, exist_ok=True)
    written = set()
    for section in builder.sections:
        for plot in section.plots:
            atomic_write_bytes(out_dir / plot.filename, plot.png)
            written.add(plot.filename)
    for name in _PLOT_FILES:  # a plot of an earlier report whose input is gone would mislead
        if name not in written:
            (out_dir / name).unlink(missing_ok=True)

    from spos import __version__

    title = f"spos run report: {run_dir.resolve().name}"
    subtitle = f"Single Path One-Shot NAS (Guo et al.); generated by spos {__version__} from the files in {run_dir.resolve()}."
    if run.unreadable:
        subtitle += (
            " Unreadable: "
            + "; ".join(f"{name} ({reason})" for name, reason in run.unreadable.items())
            + "."
        )
    tables = [
        ("Key figures", ("stage", "quantity", "value"), [list(row) for row in _key_figures(run)]),
        ("Settings", ("setting", "value"), [list(row) for row in _settings(run.config)]),
    ]
    if not run.config:
        tables[1] = ("Settings", ("setting", "value"), [])
    atomic_write_bytes(
        out_dir / "index.html",
        _render_html(title, subtitle, tables, builder.sections).encode("utf-8"),
    )
    atomic_write_bytes(
        out_dir / "README.md",
        _render_markdown(title, subtitle, tables, builder.sections).encode("utf-8"),
    )
    log.info("report written to %s (%d plots)", out_dir, len(written))
    return out_dir / "index.html"
