"""Shared test fixtures: tiny configs and a helper to run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"

torch.set_num_threads(int(os.environ.get("SPOS_TEST_THREADS", "2")))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m spos ARGS`` and capture its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "spos", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def smoke_config() -> Path:
    return SMOKE


def pytest_collection_modifyitems(config, items) -> None:
    """Every test under tests/integration/ (end-to-end pipelines, subprocesses, SIGKILL) and
    tests/distributed/ carries the ``integration`` marker, so ``-m "not integration"`` is the
    fast tier for contributors."""
    del config
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts or "distributed" in parts:
            item.add_marker(pytest.mark.integration)
