"""The run directory ``runs/<name>/``: every file a stage reads or writes, named once.

DESIGN: each stage reads only files of the run directory and writes its own, so the file
names are the contract between stages. :class:`RunDir` spells them out, and stages use its
properties instead of string literals or each other's constants (nothing imports a stage but
the CLI). ``summary.json`` holds one section per finished stage (:func:`read_summary`,
:func:`update_summary`); :func:`start_run` creates the directory and saves the resolved config.

Torch-free: the report and the CLI can use it without loading models.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spos.config import RunConfig, config_text, save_config
from spos.errors import RunDirLocked
from spos.io import write_json

if TYPE_CHECKING:
    from spos.dist import Runtime

__all__ = ["RunDir", "locked", "read_summary", "update_summary", "start_run"]


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
    def lock(self) -> Path:
        """``.lock``: held by the process working in the run (:func:`locked`)."""
        return self.path / ".lock"

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
    def estimator_pool(self) -> Path:
        """``estimator_pool.json``: the reference pool of ``search.estimator`` (its
        architectures and each weighted signal's values), computed once and reused on resume."""
        return self.path / "estimator_pool.json"

    @property
    def signals(self) -> Path:
        """``signals.jsonl``: the resumable cache of every signal value search computed
        (supernet scores, proxies) when ``search.estimator`` is not the paper's score."""
        return self.path / "signals.jsonl"

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
    def rank_proxies(self) -> Path:
        """``rank/proxies.jsonl``: the resumable proxy cache of ``spos rank --proxies``."""
        return self.rank_dir / "proxies.jsonl"

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
    """Create the run directory and save the resolved config (main rank only).

    An identical ``config.yaml`` is left as it is, so re-running a finished stage writes
    nothing (and works on a read-only copy of the run).
    """
    run = RunDir(run_dir)
    if runtime.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        if not (run.config.is_file() and run.config.read_text(encoding="utf-8") == config_text(config)):
            save_config(config, run.config)
    runtime.barrier()


@contextlib.contextmanager
def locked(run_dir: RunDir | str | os.PathLike[str], *, command: str) -> Iterator[None]:
    """Hold an exclusive lock on the run directory (``.lock``) for the ``with`` block.

    A second process on the same directory gets :class:`~spos.errors.RunDirLocked` naming the
    holder instead of redoing the work beside it. The operating system releases the lock when
    the holder exits, however it exits (also SIGKILL), so a stale lock never blocks a resume.
    Only the main process of a torchrun job takes it (``RANK`` unset or 0).
    """
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    import fcntl

    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    handle = open(run.lock, "a+", encoding="utf-8")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunDirLocked(
                f"run directory {run.path} is in use by {holder}; wait for it to finish (or stop "
                "it) and rerun, or use another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} (spos {command})\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock
