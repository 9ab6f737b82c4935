"""benchmarks/gpu_check.py's harness: a failing, crashing or overrunning section is recorded and
the others still run; the summary is written in both forms (issue 18 item 8)."""

import argparse
import importlib.util
import json
import shutil
import sys

from tests.conftest import ROOT


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_each_section_is_timed_and_recorded_and_a_failure_stops_nothing(tmp_path):
    gpu_check = _gpu_check()
    args = argparse.Namespace(dry_run=True, budget_s=60.0, only=None, out=str(tmp_path), keep_work=False)
    check = gpu_check.Check(args)

    def fails(outcome):
        check.run(outcome, [sys.executable, "-c", "print('half way'); raise SystemExit(3)"], timeout=30, tag="step")

    def crashes(outcome):
        raise RuntimeError("no such file")

    def overruns(outcome):
        check.run(outcome, [sys.executable, "-c", "import time; time.sleep(30)"], timeout=1, tag="sleeper")

    def passes(outcome):
        check.run(outcome, [sys.executable, "-c", "print('fine')"], timeout=30)
        outcome.metrics["ratio"] = 1.2
        gpu_check._judge(outcome, "ratio", 1.1, "dry")

    for name, body in [("fails", fails), ("crashes", crashes), ("overruns", overruns), ("passes", passes)]:
        check.section(name, body)
    summary = check.write()
    shutil.rmtree(check.work)

    sections = {section["name"]: section for section in summary["sections"]}
    assert [s["status"] for s in sections.values()] == ["fail", "fail", "timeout", "pass"]
    assert sections["fails"]["notes"] == ["step exited with 3: half way"]
    assert sections["crashes"]["notes"] == ["RuntimeError: no such file"]
    assert sections["overruns"]["notes"] == ["sleeper ran past its 1 s limit"] and sections["overruns"]["seconds"] < 20
    assert sections["passes"]["metrics"] == {"ratio": 1.2, "target": 1.1, "meets_target": False}
    assert "half way" in (tmp_path / "logs" / "fails.log").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["sections"][3]["name"] == "passes"
    table = (tmp_path / "summary.md").read_text()
    assert "| overruns | timeout ([log](logs/overruns.log)) |" in table
