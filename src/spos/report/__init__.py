"""Run report: plots and key figures from a run directory's files only (SPEC section 5).

:func:`write_report` reads what the stages left in ``runs/<name>/`` (``config.yaml``,
``metrics.jsonl``, ``summary.json``, ``history.jsonl``, ``baseline/history.jsonl``,
``pareto.json``, ``arch.json``, ``retrain/metrics.jsonl``, ``rank/rank.json``) and writes
``report/``: one PNG per plot, a self-contained ``index.html`` (plots embedded as ``data:`` URIs,
inline CSS, no external assets) and a ``README.md`` that shows the same plots from the PNG files
next to it. The accuracy-against-cost plot runs along the cost ``pareto.json`` was computed on
(BitOps for a mixed-precision search) and draws its front; without the file, along FLOPs.

Every section is optional. A section whose input files are missing (a run that only trained its
supernet, say) or unreadable is skipped with a one-line note, so the report of a partial or
still-running run works. A truncated last line of a JSON-lines file (a stage still writing) is
ignored.

The report is the last consumer of the data flow: it imports no model code and no torch, only
matplotlib (through :class:`matplotlib.figure.Figure` objects, so no pyplot global state and no
backend switch), PyYAML and the torch-free :func:`spos.evolution.pareto_front`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spos.errors import SposError
from spos.io import atomic_write_bytes
from spos.report.files import _read_run, _RunFiles
from spos.report.plots import _plot_rank_scatter, _png_bytes, _style
from spos.report.render import _render_html, _render_markdown
from spos.report.sections import (
    _architecture_section,
    _Builder,
    _rank_section,
    _retrain_section,
    _search_section,
    _supernet_section,
)
from spos.report.tables import _key_figures, _settings

__all__ = ["write_report", "write_rank_plot"]

log = logging.getLogger(__name__)

_REPORT_DIRNAME = "report"
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


def write_rank_plot(rank: Mapping[str, Any], path: Path) -> Path:
    """Write the supernet-score-against-truth scatter of ``rank`` (``rank/rank.json``'s form:
    ``points`` as ``[true, score]`` pairs plus the correlations) to the PNG ``path``."""
    with _style():
        atomic_write_bytes(Path(path), _png_bytes(_plot_rank_scatter(rank)))
    return Path(path)


def _check_has_output(run: _RunFiles) -> None:
    """Refuse a directory no stage has written results into: a report of it would be an empty
    page that looks like success (a wrong ``--run``, or a run killed before its first line)."""
    if (
        run.summary or run.metrics or run.history or run.arch or run.retrain_metrics
        or run.rank or run.pareto or run.unreadable
    ):  # fmt: skip
        return
    started = " (its config.yaml says a stage started, but it wrote no results yet)" if run.config else ""
    raise SposError(
        f"{run.run_dir} holds no run results to report on{started}: no summary.json, "
        "metrics.jsonl, history.jsonl, arch.json, retrain/metrics.jsonl or rank/rank.json; "
        "pass the run directory a stage wrote (runs/<name>)"
    )


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
        SposError: ``run_dir`` holds none of the files a stage writes (nothing to report).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} does not exist; pass the folder a stage wrote (runs/<name>)"
        )
    run = _read_run(run_dir)
    _check_has_output(run)
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
