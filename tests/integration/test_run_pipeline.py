"""`spos run`: the whole pipeline in one command, killed in every stage and rerun (SPEC section 5).

A reference `spos run` on the smoke config runs uninterrupted. A second run directory is
SIGKILLed once inside each stage (supernet training, search, retraining), each time as soon as
that stage has written its first resumable state, and the same command is rerun until it
finishes. It must end with the same run: identical supernet and child weights, the same
architecture, the same test accuracy, and an export and report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, SMOKE, run_cli

OVERRIDES = [
    "supernet.steps=60",
    "supernet.panel.eval_every=30",
    "supernet.checkpoint_every=10",
    "search.generations=3",
    "retrain.epochs=2",
    "retrain.checkpoint_every=4",
]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    result = run_cli("run", "--config", str(SMOKE), "--out", str(run_dir), *OVERRIDES, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report:" in result.stdout
    return run_dir


def _kill_when(run_dir: Path, trigger: Path, *, timeout: float = 300) -> bool:
    """Start `spos run`; SIGKILL it as soon as ``trigger`` exists. True if it was killed."""
    command = [sys.executable, "-m", "spos", "run", "--config", str(SMOKE), "--out", str(run_dir), *OVERRIDES]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None and not trigger.exists():
        time.sleep(0.02)
    killed = process.poll() is None
    if killed:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return killed


@pytest.mark.slow
def test_run_killed_in_every_stage_finishes_the_same_run(reference, tmp_path):
    run_dir = tmp_path / "killed"
    triggers = {
        "supernet": run_dir / "supernet.ckpt",
        "search": run_dir / "search_state.json",
        "retrain": run_dir / "retrain" / "child.ckpt",
    }
    killed_in = []
    for stage, trigger in triggers.items():
        if _kill_when(run_dir, trigger):
            killed_in.append(stage)
            # The stage was interrupted: it has state on disk but no summary section yet.
            assert stage not in (_summary(run_dir) if (run_dir / "summary.json").exists() else {})
    assert killed_in == ["supernet", "search", "retrain"]

    finished = run_cli("run", "--config", str(SMOKE), "--out", str(run_dir), *OVERRIDES, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    got, want = _summary(run_dir), _summary(reference)
    assert got["supernet"]["weights_sha256"] == want["supernet"]["weights_sha256"]
    assert json.loads((run_dir / "arch.json").read_text())["arch"] == json.loads(
        (reference / "arch.json").read_text()
    )["arch"]
    assert got["search"]["best_score"] == want["search"]["best_score"]
    assert got["retrain"]["weights_sha256"] == want["retrain"]["weights_sha256"]
    assert got["retrain"]["test_top1"] == want["retrain"]["test_top1"]
    assert (run_dir / "export" / "model.onnx").exists()
    assert (run_dir / "report" / "index.html").exists()

    # A finished run reruns as a no-op: nothing is retrained.
    before = (run_dir / "retrain" / "child.ckpt").stat().st_mtime_ns
    again = run_cli("run", "--config", str(SMOKE), "--out", str(run_dir), *OVERRIDES, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run_dir / "retrain" / "child.ckpt").stat().st_mtime_ns == before
