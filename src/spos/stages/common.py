"""Pieces every stage recipe shares: run-directory files, optimiser and
learning-rate schedule, metrics logging, and the progress-reporting protocol.

Stages stay short recipes (setup, run, save) because the plumbing lives here once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from spos.arch import Arch
from spos.config import RunConfig, save_config
from spos.data.prepare import PreparedData
from spos.dist import Runtime
from spos.errors import ConfigError
from spos.io import atomic_write_text, write_json
from spos.space import SearchSpace, create_space, make_rng

__all__ = [
    "Progress",
    "ProgressFactory",
    "null_progress",
    "score_sharded",
    "seed_from",
    "build_space",
    "make_sgd",
    "learning_rate",
    "MetricsLog",
    "read_summary",
    "update_summary",
    "start_run",
    "Stopwatch",
    "TrainingWindow",
]


def seed_from(seed: int, purpose: str) -> int:
    """An integer seed for torch derived from the run seed and a purpose."""
    return make_rng(seed, purpose).getrandbits(63)


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


def make_sgd(
    model: nn.Module, *, lr: float, momentum: float, nesterov: bool, weight_decay: float
) -> torch.optim.SGD:
    """SGD with weight decay on conv and linear weights only (official recipe).

    Parameters whose gradient is None in a step (candidates off the sampled path) get no
    update at all: torch's SGD skips them, so no decay and no stale momentum step.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        (decay if parameter.ndim > 1 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def learning_rate(step: int, *, total: int, peak: float, warmup: int, schedule: str) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then linear or cosine decay to 0."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * peak * (1 + math.cos(math.pi * progress))
    return peak * (1 - progress)


class MetricsLog:
    """Append-only ``metrics.jsonl`` (and TensorBoard) on the main rank.

    On resume, records past the checkpoint's step are dropped so the file reads as one run.
    """

    def __init__(self, run_dir: Path, *, enabled: bool, resume_step: int) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:  # TensorBoard is optional; metrics.jsonl is the record
            self.writer = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_summary(run_dir: Path) -> dict[str, Any]:
    """``summary.json`` of a run: one section per finished stage (empty if none)."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def update_summary(run_dir: Path, section: str, data: dict[str, Any]) -> None:
    """Set one stage's section of ``summary.json``, keeping the other stages' sections."""
    summary = read_summary(run_dir)
    summary[section] = data
    write_json(Path(run_dir) / "summary.json", summary)


def start_run(config: RunConfig, run_dir: Path, runtime: Runtime) -> None:
    """Create the run directory and save the resolved config (main rank only)."""
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    runtime.barrier()


class TrainingWindow:
    """Loss, accuracy and throughput accumulated between two metrics lines.

    ``train_seconds`` sums the time of every flushed window, so evaluation time that the
    caller excludes with :meth:`restart_clock` never counts as training time.
    """

    def __init__(self, train_seconds: float = 0.0) -> None:
        self.train_seconds = train_seconds
        self._reset()

    def _reset(self) -> None:
        self.loss_sum, self.correct, self.images = 0.0, 0, 0
        self.grad_norms: list[float] = []
        self.clock = Stopwatch()

    def add(
        self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, *, grad_norm: torch.Tensor | None = None
    ) -> None:
        """Count one step; ``grad_norm`` (the step's pre-clip gradient norm, the same on every
        rank) is logged as the window's mean and max when given."""
        self.loss_sum += float(loss.detach()) * labels.numel()
        self.correct += int((logits.argmax(1) == labels).sum())
        self.images += labels.numel()
        if grad_norm is not None:
            self.grad_norms.append(float(grad_norm))

    def restart_clock(self) -> None:
        self.clock = Stopwatch()

    def flush(self, *, step: int, lr: float, runtime: Runtime) -> dict[str, Any]:
        """The metrics line of the window over all ranks; starts a new window.

        A collective under torchrun (every rank must call it at the same step): loss,
        accuracy and image counts are summed over ranks, so the line describes the global
        batch, as a single process would log it. Seconds are this rank's.
        """
        seconds = self.clock()
        self.train_seconds += seconds
        totals = torch.tensor([self.loss_sum, float(self.correct), float(self.images)], dtype=torch.float64)
        loss_sum, correct, images = runtime.all_reduce_sum(totals.to(runtime.device)).tolist()
        record = {
            "step": step,
            "loss": loss_sum / max(1.0, images),
            "train_acc": 100.0 * correct / max(1.0, images),
            "lr": lr,
            "images_per_s": images / max(seconds, 1e-9),
        }
        if self.grad_norms:
            record["grad_norm"] = sum(self.grad_norms) / len(self.grad_norms)
            record["grad_norm_max"] = max(self.grad_norms)
        self._reset()
        return record


class Stopwatch:
    """Wall-clock seconds since construction (``time.perf_counter``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def score_sharded(
    archs: Sequence[Arch],
    score: Callable[[Arch], float],
    runtime: Runtime,
    *,
    on_score: Callable[[Arch, float], None] | None = None,
) -> dict[str, float]:
    """Score ``archs`` split across ranks (rank r takes every world_size-th); gather on all."""
    mine: dict[str, float] = {}
    for arch in list(archs)[runtime.rank :: runtime.world_size]:
        mine[arch.key] = value = score(arch)
        if on_score is not None:
            on_score(arch, value)
    gathered: dict[str, float] = {}
    for shard in runtime.all_gather_objects(mine):
        gathered.update(shard)
    return gathered
