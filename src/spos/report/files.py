"""Reading a run directory's files for the report, and the accessors for the values in them.

Missing files read as empty; a file that does not parse is recorded in ``unreadable`` and
reads as empty too, so a partial or still-running run still gets a report.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spos.io import read_jsonl
from spos.rundir import RunDir

log = logging.getLogger(__name__)


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
    pareto: dict[str, Any] | None = None  # pareto.json: {"x": metric, "y": "score", "front": [...]}
    unreadable: dict[str, str] = field(default_factory=dict)  # relative path -> reason


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
    run = RunDir(run_dir)
    unreadable: dict[str, str] = {}

    def name(path: Path) -> str:
        return path.relative_to(run.path).as_posix()

    return _RunFiles(
        run_dir=run_dir,
        config=_read_yaml(run.config, unreadable, name=name(run.config)),
        metrics=read_jsonl(run.metrics),
        summary=_read_json(run.summary, unreadable, name=name(run.summary)) or {},
        history=read_jsonl(run.history),
        baseline_history=read_jsonl(run.baseline.history),
        arch=_read_json(run.arch_json, unreadable, name=name(run.arch_json)),
        retrain_metrics=read_jsonl(run.retrain_metrics),
        rank=_read_json(run.rank_json, unreadable, name=name(run.rank_json)),
        pareto=_read_json(run.pareto, unreadable, name=name(run.pareto)),
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
