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

from spos.checkpoint import check_space, load_checkpoint, state_dict_sha256
from spos.config import RunConfig
from spos.cost import CostModel
from spos.data.prepare import PreparedData, prepare_data
from spos.dist import Runtime
from spos.errors import CheckpointError, ConfigError
from spos.io import write_json
from spos.rundir import RunDir
from spos.scoring import EnsembleMember, ScoringSession
from spos.space import SearchSpace, create_space
from spos.supernet import Supernet, build_supernet

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
    recalibration/validation images and score metric. The kept checkpoints of
    ``search.score_checkpoints`` (``supernet_step<N>.ckpt`` beside ``checkpoint_path``) are
    opened the same way into the session's ``ensemble``, each checked to be of the same space
    and step.

    Raises:
        ConfigError: A listed step's checkpoint file is missing, or is the scored one's step.
        CheckpointError: A checkpoint is unreadable, of another space, or of another step.
    """
    step = int(payload.get("step", 0))
    # Missing files are found before the data is prepared: a user error should come at once.
    kept_paths = {kept: _kept_path(checkpoint_path, kept, final_step=step) for kept in sorted(config.search.score_checkpoints)}
    data = prepare_data(config.data, seed=config.seed)
    space = check_space(payload, build_space(config, data), path=checkpoint_path)
    supernet, fingerprint = _supernet_for_scoring(payload, space, config, runtime)
    ensemble = [_open_kept(path, kept, space=space, config=config, runtime=runtime) for kept, path in kept_paths.items()]
    return ScoringSession(space, supernet, fingerprint, config, data, runtime, step=step, ensemble=ensemble)


def _supernet_for_scoring(
    payload: dict[str, Any], space: SearchSpace, config: RunConfig, runtime: Runtime
) -> tuple[Supernet, str]:
    """The checkpoint's supernet in eval mode on the device, and the hash of its weights."""
    supernet = build_supernet(space)
    supernet.load_state_dict(payload["state"]["model"])
    fingerprint = state_dict_sha256(supernet.state_dict())
    supernet = supernet.to(runtime.device)
    if config.runtime.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    supernet.eval()
    return supernet, fingerprint


def _kept_path(checkpoint_path: Path, step: int, *, final_step: int) -> Path:
    """The kept checkpoint of ``step`` beside ``checkpoint_path`` (``search.score_checkpoints``)."""
    if step == final_step:
        raise ConfigError(
            f"config field 'search.score_checkpoints' lists step {step}, the step of the scored "
            f"supernet {checkpoint_path} itself, which is always scored; remove {step} from it"
        )
    path = RunDir(Path(checkpoint_path).parent).supernet_step_ckpt(step)
    if not path.is_file():
        raise ConfigError(
            f"config field 'search.score_checkpoints' lists step {step}, but its checkpoint {path} "
            f"does not exist; supernet training keeps it when supernet.keep_checkpoints lists {step} "
            "(train the supernet with it: a finished training does not go back to write it), or "
            f"remove {step} from search.score_checkpoints"
        )
    return path


def _open_kept(path: Path, step: int, *, space: SearchSpace, config: RunConfig, runtime: Runtime) -> EnsembleMember:
    """The kept checkpoint ``path`` of ``step``, checked to be of ``space`` and that step."""
    kept = load_checkpoint(path, kind="supernet", map_location="cpu")
    check_space(kept, space, path=path)
    if kept.get("step") != step:
        raise CheckpointError(
            f"checkpoint {path} holds the supernet of step {kept.get('step')}, not {step}; it was "
            "renamed or overwritten: train the supernet again to keep that step"
        )
    supernet, fingerprint = _supernet_for_scoring(kept, space, config, runtime)
    return EnsembleMember(step, supernet, fingerprint)


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
