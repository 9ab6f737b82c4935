"""The run directory ``runs/<name>/``: every file a stage reads or writes, named once.

DESIGN: each stage reads only files of the run directory and writes its own, so the file
names are the contract between stages. :class:`RunDir` spells them out, and stages use its
properties instead of string literals or each other's constants (nothing imports a stage but
the CLI). ``summary.json`` holds one section per finished stage (:func:`read_summary`,
:func:`update_summary`); :func:`start_run` creates the directory and saves the resolved config.

Torch-free: the report and the CLI can use it without loading models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spos.config import RunConfig, save_config
from spos.io import write_json

if TYPE_CHECKING:
    from spos.dist import Runtime

__all__ = ["RunDir", "read_summary", "update_summary", "start_run"]


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory (paths only; nothing is read or created here).

    ``RunDir(path)`` accepts a string or a path. Search writes its random-search baseline into
    :attr:`baseline`, a run directory of its own with the same file names.
    """

    path: Path

    def __init__(self, path: str | os.PathLike[str] | RunDir) -> None:
        object.__setattr__(self, "path", path.path if isinstance(path, RunDir) else Path(path))

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    # Every stage.
    @property
    def config(self) -> Path:
        """``config.yaml``: the resolved config of the last stage started."""
        return self.path / "config.yaml"

    @property
    def summary(self) -> Path:
        """``summary.json``: one section per finished stage."""
        return self.path / "summary.json"

    # Fixed facts of the run, written once by the first stage.
    @property
    def space_json(self) -> Path:
        """``space.json``: the search space description (``SearchSpace.to_dict``)."""
        return self.path / "space.json"

    @property
    def cost_table(self) -> Path:
        """``cost_table.json``: the measured per-option cost table (``CostModel.to_dict``)."""
        return self.path / "cost_table.json"

    # train-supernet.
    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``: the supernet stage's training log."""
        return self.path / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def supernet_ckpt(self) -> Path:
        """``supernet.ckpt``: the rolling, resumable supernet checkpoint."""
        return self.path / "supernet.ckpt"

    def supernet_step_ckpt(self, step: int) -> Path:
        """``supernet_step<N>.ckpt``: a checkpoint kept for ``supernet.keep_checkpoints``."""
        return self.path / f"supernet_step{step}.ckpt"

    # search.
    @property
    def arch_json(self) -> Path:
        """``arch.json``: the architecture search found (read by retrain)."""
        return self.path / "arch.json"

    @property
    def history(self) -> Path:
        """``history.jsonl``: every evaluated candidate with its score and costs."""
        return self.path / "history.jsonl"

    @property
    def pareto(self) -> Path:
        """``pareto.json``: the score/cost front of the history."""
        return self.path / "pareto.json"

    @property
    def search_state(self) -> Path:
        """``search_state.json``: the strategy's state after the last generation."""
        return self.path / "search_state.json"

    @property
    def baseline(self) -> RunDir:
        """``baseline/``: the random-search baseline, with the search file names."""
        return RunDir(self.path / "baseline")

    # retrain.
    @property
    def retrain_dir(self) -> Path:
        return self.path / "retrain"

    @property
    def child_ckpt(self) -> Path:
        """``retrain/child.ckpt``: the resumable child checkpoint (kind ``"child"``)."""
        return self.retrain_dir / "child.ckpt"

    @property
    def child_weights(self) -> Path:
        """``retrain/child.safetensors``: the final child weights, after BN post-processing."""
        return self.retrain_dir / "child.safetensors"

    @property
    def retrain_metrics(self) -> Path:
        return self.retrain_dir / "metrics.jsonl"

    @property
    def retrain_tensorboard(self) -> Path:
        return self.retrain_dir / "tensorboard"

    # export.
    @property
    def export_dir(self) -> Path:
        """``export/``: the verified deployment bundle."""
        return self.path / "export"

    # rank.
    @property
    def rank_dir(self) -> Path:
        return self.path / "rank"

    @property
    def rank_json(self) -> Path:
        """``rank/rank.json``: the rank correlations and their points."""
        return self.rank_dir / "rank.json"

    @property
    def rank_scores(self) -> Path:
        """``rank/scores.jsonl``: the resumable score cache of ``spos rank``."""
        return self.rank_dir / "scores.jsonl"

    @property
    def rank_csv(self) -> Path:
        """``rank/scores.csv``: one row per ranked architecture."""
        return self.rank_dir / "scores.csv"

    @property
    def rank_plot(self) -> Path:
        return self.rank_dir / "scatter.png"

    # report.
    @property
    def report_dir(self) -> Path:
        return self.path / "report"


def read_summary(run_dir: RunDir | str | os.PathLike[str]) -> dict[str, Any]:
    """``summary.json`` of a run: one section per finished stage (empty if none)."""
    path = RunDir(run_dir).summary
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def update_summary(run_dir: RunDir | str | os.PathLike[str], section: str, data: dict[str, Any]) -> None:
    """Set one stage's section of ``summary.json``, keeping the other stages' sections."""
    summary = read_summary(run_dir)
    summary[section] = data
    write_json(RunDir(run_dir).summary, summary)


def start_run(config: RunConfig, run_dir: RunDir | str | os.PathLike[str], runtime: Runtime) -> None:
    """Create the run directory and save the resolved config (main rank only)."""
    run = RunDir(run_dir)
    if runtime.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(config, run.config)
    runtime.barrier()
