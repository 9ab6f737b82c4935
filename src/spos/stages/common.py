"""Pieces every stage recipe shares: plugins and the configured space, the progress-reporting
protocol, opening a supernet checkpoint for scoring, and the run's fixed
facts (``space.json``, ``cost_table.json``). Run-directory files: :mod:`spos.rundir`; the
evaluator: :mod:`spos.scoring`; optimiser, training state and metrics: :mod:`spos.train`; data
preparation: :mod:`spos.data.prepare`.

Stages stay short recipes (setup, run, save) because the plumbing lives here once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from spos.checkpoint import check_space, state_dict_sha256
from spos.config import RunConfig
from spos.cost import CostModel
from spos.data.prepare import PreparedData, prepare_data
from spos.dist import Runtime
from spos.errors import ConfigError
from spos.io import write_json
from spos.rundir import RunDir
from spos.scoring import ScoringSession
from spos.space import SearchSpace, create_space
from spos.supernet import build_supernet

__all__ = [
    "Progress",
    "ProgressFactory",
    "null_progress",
    "open_for_scoring",
    "run_costs",
    "write_run_facts",
    "build_space",
]

log = logging.getLogger(__name__)


class Progress(Protocol):
    """What a stage needs from a progress bar (the CLI passes a tqdm-backed one)."""

    def update(self, count: int = 1, **postfix: Any) -> None: ...

    def close(self) -> None: ...


ProgressFactory = Callable[..., Progress]


class _NullProgress:
    def update(self, count: int = 1, **postfix: Any) -> None:
        del count, postfix

    def close(self) -> None:
        return None


def null_progress(*, total: int, initial: int = 0, description: str = "") -> Progress:
    """A progress reporter that shows nothing (library use, non-main ranks)."""
    del total, initial, description
    return _NullProgress()


def load_plugins(paths: list[str]) -> None:
    """Import user plugin files or modules (they register spaces and ops)."""
    import importlib
    import importlib.util
    import sys

    for entry in paths:
        path = Path(entry).expanduser()
        if path.suffix == ".py":
            if not path.is_file():
                raise ConfigError(f"config field 'space.plugins' names {entry}, which does not exist")
            name = f"spos_plugin_{path.stem}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(entry)
            except ImportError as exc:
                raise ConfigError(f"config field 'space.plugins': cannot import {entry!r} ({exc})") from None


def build_space(config: RunConfig, data: PreparedData | None = None) -> SearchSpace:
    """The configured space, with input channels, classes and size taken from the data."""
    load_plugins(config.space.plugins)
    space = create_space(config.space.name)
    updates: dict[str, Any] = {}
    if data is not None:
        derived = {
            "in_channels": data.channels,
            "num_classes": data.num_classes,
            "input_size": data.image_size,
        }
        updates.update({k: v for k, v in derived.items() if k in space.layout})
    updates.update(config.space.layout)
    return create_space(config.space.name, **updates) if updates else space


def open_for_scoring(
    config: RunConfig, payload: dict[str, Any], checkpoint_path: Path, runtime: Runtime
) -> ScoringSession:
    """A trained supernet checkpoint made ready to score paths as search does.

    The space is checked against the checkpoint, the supernet is in eval mode on the device,
    ``fingerprint`` is the hash of its weights, and ``scorer`` uses the ``search`` section's
    recalibration/validation images and score metric.
    """
    data = prepare_data(config.data, seed=config.seed)
    space = check_space(payload, build_space(config, data), path=checkpoint_path)
    supernet = build_supernet(space)
    supernet.load_state_dict(payload["state"]["model"])
    fingerprint = state_dict_sha256(supernet.state_dict())
    supernet = supernet.to(runtime.device)
    if config.runtime.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    supernet.eval()
    return ScoringSession(space, supernet, fingerprint, config, data, runtime)


def write_run_facts(run: RunDir, space: SearchSpace, costs: CostModel, runtime: Runtime) -> None:
    """Write the run's fixed facts, ``space.json`` and ``cost_table.json`` (main rank only),
    unless the run directory already holds them unchanged. The first stage calls it; later
    stages read them with :func:`run_costs` instead of measuring the space again."""
    if not runtime.is_main:
        return
    for path, data in ((run.space_json, space.to_dict()), (run.cost_table, costs.to_dict())):
        if _read_json(path) != data:
            write_json(path, data)


def run_costs(run: RunDir, space: SearchSpace, runtime: Runtime) -> CostModel:
    """The cost table of ``space`` from the run's ``cost_table.json``.

    The table is used when the run's ``space.json`` describes ``space`` exactly (layout
    included). A run directory written before these files existed gets them now (measured and
    written); facts of another space (another config, ``--supernet`` from elsewhere) are left
    alone and ``space`` is measured instead.
    """
    stored_space, table = _read_json(run.space_json), _read_json(run.cost_table)
    if stored_space is None and table is None:
        costs = CostModel.from_space(space)
        write_run_facts(run, space, costs, runtime)
        return costs
    if stored_space != space.to_dict() or table is None:
        log.info("%s does not hold the cost table of this space; measuring it", run.path)
        return CostModel.from_space(space)
    costs = CostModel.from_dict(table)
    costs.check_space(space)
    return costs


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
