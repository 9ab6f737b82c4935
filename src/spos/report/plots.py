"""Figure helpers, and the plots of supernet training, retraining and ranking quality.

Every plot is a :class:`matplotlib.figure.Figure` built from plain run-file records, with no
pyplot global state and no backend switch.
"""

from __future__ import annotations

import contextlib
import io
import statistics
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from spos.report.files import _number, _params_baseline_tau, _series

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


_DPI = 110


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


def _count_scale(values: Sequence[float], name: str = "FLOPs") -> tuple[float, str]:
    """Divisor and unit so counts read as a few digits (``MFLOPs`` for ImageNet-size nets)."""
    largest = max((abs(v) for v in values), default=0.0)
    if largest >= 1e10:
        return 1e9, f"G{name}"
    if largest >= 1e5:
        return 1e6, f"M{name}"
    if largest >= 1e2:
        return 1e3, f"k{name}"
    return 1.0, name


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


def _ellipsis(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    ensemble = rank.get("checkpoint_ensemble")
    steps = ensemble.get("steps") if isinstance(ensemble, Mapping) else None
    if isinstance(steps, list) and steps:  # the score is a mean over checkpoints
        heading += f"\nscore: mean over checkpoints at steps {', '.join(map(str, steps))}"
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
