"""Fault injection through the CLI (issue 19): bad input, faults and misuse each end in one
clear line on stderr, a known exit code, no traceback, and nothing already written is lost.

Library-level bad input lives in tests/unit/test_bad_input.py and tests/unit/test_config.py;
SIGKILL at random moments of every stage in tests/integration/test_run_pipeline.py.
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
import torch

from spos.rundir import locked
from tests.conftest import ROOT, SMOKE, run_cli

TINY = ["supernet.steps=4", "supernet.checkpoint_every=2", "supernet.panel.eval_every=0", "supernet.panel.size=0"]


def one_error_line(result: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("spos: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    result = run_cli("train-supernet", "--config", str(SMOKE), "--out", str(run_dir), *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


# ----------------------------------------------------------------------------- config via CLI
@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "is empty"),
        ("supernet:\n  steps: 3\nsupernet:\n  steps: 4\n", "appears twice"),
        ("a: &x [1]\nb: *x\n", "YAML aliases"),
        ("supernet:\n  lr: 0.1\n", "has moved to 'supernet.optim.lr'"),
        ("supernet:\n  optim:\n    lr: .inf\n", "finite number"),
        ("supernet: [1, 2\n", "not valid YAML"),
    ],
    ids=["empty", "duplicate", "alias", "moved", "inf", "broken"],
)
def test_bad_config_files_through_the_cli(tmp_path, text, needle):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    one_error_line(run_cli("train-supernet", "--config", str(config), "--out", str(tmp_path / "r")), needle)


def test_a_config_directory_and_a_latin1_config(tmp_path):
    one_error_line(run_cli("train-supernet", "--config", str(tmp_path), "--out", str(tmp_path / "r")), "is a directory")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"seed: 1 # caf\xe9\n")
    one_error_line(run_cli("train-supernet", "--config", str(latin), "--out", str(tmp_path / "r")), "not UTF-8")


@pytest.mark.parametrize(
    "override",
    ["supernet.optim.lr=1e400", "supernet.optim.lr=1e300", "retrain.optim.momentum=1.5", "retrain.optim.weight_decay=-1"],
)
def test_out_of_range_values_through_the_cli(tmp_path, override):
    one_error_line(run_cli("train-supernet", "--config", str(SMOKE), "--out", str(tmp_path / "r"), override), override.split("=")[0])


# ----------------------------------------------------------------------------- run directory
def test_an_empty_or_file_out_is_refused(tmp_path):
    result = run_cli("train-supernet", "--config", str(SMOKE), "--out", "")
    assert result.returncode == 2 and "must not be empty" in result.stderr and "Traceback" not in result.stderr
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    result = run_cli("train-supernet", "--config", str(SMOKE), "--out", str(a_file))
    assert result.returncode == 2 and "is a file" in result.stderr
    assert a_file.read_text() == "keep me"


def test_an_unwritable_out_is_one_line_with_the_path(tmp_path):
    result = run_cli("train-supernet", "--config", str(SMOKE), "--out", "/proc/spos-run", *TINY)
    one_error_line(result, "/proc/spos-run", code=1)


def test_a_second_process_on_a_locked_run_directory_is_refused(tmp_path):
    run_dir = tmp_path / "r"
    with locked(run_dir, command="test"):
        result = run_cli("train-supernet", "--config", str(SMOKE), "--out", str(run_dir), *TINY)
        line = one_error_line(result, "is in use by process", str(os.getpid()))
        assert "another --out" in line
    assert not (run_dir / "supernet.ckpt").exists()
    assert run_cli("train-supernet", "--config", str(SMOKE), "--out", str(run_dir), *TINY).returncode == 0


def test_plugins_of_a_run_directory_need_an_explicit_opt_in(tmp_path):
    marker = tmp_path / "ran"
    plugin = tmp_path / "evil.py"
    plugin.write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"space:\n  plugins: [{plugin}]\n")
    one_error_line(run_cli("search", "--out", str(run_dir)), "--trust-plugins", str(plugin))
    assert not marker.exists()


# ----------------------------------------------------------------------------- training faults
def test_divergence_stops_with_one_line_and_writes_no_nan(tmp_path):
    run_dir = tmp_path / "r"
    result = run_cli(
        "train-supernet", "--config", str(SMOKE), "--out", str(run_dir),
        "supernet.optim.lr=1e30", "supernet.steps=20", "supernet.checkpoint_every=40", "runtime.log_every=5",
    )
    one_error_line(result, "diverged", "loss nan", "no checkpoint had been written yet", "supernet.optim.lr")
    assert not (run_dir / "supernet.ckpt").exists()  # never a checkpoint of non-finite weights
    for name in ("metrics.jsonl", "summary.json"):
        path = run_dir / name
        assert not path.exists() or "NaN" not in path.read_text()


def test_sigterm_saves_a_checkpoint_of_the_current_step_and_resumes(tmp_path):
    run_dir = tmp_path / "r"
    args = ["train-supernet", "--config", str(SMOKE), "--out", str(run_dir),
            "supernet.steps=100000", "supernet.checkpoint_every=100000", "supernet.panel.eval_every=0", "runtime.log_every=1"]
    process = subprocess.Popen([sys.executable, "-m", "spos", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    payload = torch.load(run_dir / "supernet.ckpt", map_location="cpu", weights_only=True)
    assert payload["step"] >= 3  # the step it was at, not the last periodic checkpoint (none)


def test_a_torn_metrics_line_does_not_stop_resume(trained, tmp_path):
    run_dir = tmp_path / "r"
    result = run_cli("train-supernet", "--config", str(SMOKE), "--out", str(run_dir), "supernet.steps=4",
                     "supernet.checkpoint_every=2", "supernet.panel.eval_every=0", "supernet.panel.size=0",
                     "runtime.log_every=1", "supernet.keep_checkpoints=[2]")
    assert result.returncode == 0, result.stderr[-2000:]
    # Roll back to step 2 as a kill mid-append would leave it: a partial last line.
    (run_dir / "supernet_step2.ckpt").replace(run_dir / "supernet.ckpt")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("supernet")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "loss": 2.')
    result = run_cli("train-supernet", "--config", str(SMOKE), "--out", str(run_dir), "supernet.steps=4",
                     "supernet.checkpoint_every=2", "supernet.panel.eval_every=0", "supernet.panel.size=0",
                     "runtime.log_every=1", "supernet.keep_checkpoints=[2]")
    assert result.returncode == 0, result.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_another_layout_of_the_same_space_is_refused_naming_the_keys(trained):
    result = run_cli("search", "--config", str(SMOKE), "--out", str(trained), *TINY, "space.layout.head_channels=32")
    one_error_line(result, "another layout", "head_channels")
    result = run_cli("train-supernet", "--config", str(SMOKE), "--out", str(trained), *TINY, "space.layout.head_channels=32")
    one_error_line(result, "another layout", "head_channels")
    assert (trained / "supernet.ckpt").exists()


def test_rerunning_a_finished_stage_does_not_rewrite_its_config(trained):
    config = trained / "config.yaml"
    before = config.stat().st_mtime_ns
    assert run_cli("train-supernet", "--config", str(SMOKE), "--out", str(trained), *TINY).returncode == 0
    assert config.stat().st_mtime_ns == before


def test_rank_without_ground_truth_says_how_to_give_it(trained):
    one_error_line(run_cli("rank", "--run", str(trained)), "--ground-truth", "ground_truth.path")


@pytest.mark.parametrize(
    "arch, needle",
    [
        ('{"a":' * 5000 + "1" + "}" * 5000, "nested too deeply"),
        ("{not json", "does not parse"),
        ("1,2,3", "choices"),
    ],
    ids=["nested", "broken-json", "short"],
)
def test_bad_architecture_strings_through_the_cli(arch, needle):
    one_error_line(run_cli("cost", "--space", "shufflenet_cifar", "--arch", arch), needle)


# ----------------------------------------------------------------------------- data
def test_constant_images_are_one_line_not_a_nan_run(tmp_path):
    from PIL import Image

    for index in range(6):
        path = tmp_path / "flat" / "train" / f"c{index % 2}" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (90, 90, 90)).save(path)
    run_dir = tmp_path / "r"
    result = run_cli("train-supernet", "--config", str(SMOKE), "--out", str(run_dir), *TINY, "data.dataset=image_folder",
                     f"data.root={tmp_path / 'flat'}", f"data.cache_dir={tmp_path / 'cache'}", "data.val_size=2")
    one_error_line(result, "one flat colour", str(tmp_path / "flat"))
    assert not (run_dir / "supernet.ckpt").exists()


# ----------------------------------------------------------------------------- report and rank
def test_report_on_a_directory_without_run_results_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    one_error_line(run_cli("report", "--run", str(tmp_path)), str(tmp_path), "no summary.json", "metrics.jsonl")
    assert not (tmp_path / "report").exists()


def _shufflenet_truth(path: Path, values: list[float]) -> Path:
    import random

    from spos.space import create_space

    space = create_space("shufflenet_cifar", stage_repeats=[1, 1, 2, 1], stage_channels=[24, 32, 48, 64], head_channels=64)
    rng, archs = random.Random(0), []
    while len(archs) < len(values):
        text = space.sample(rng).short()
        if text not in archs:
            archs.append(text)
    path.write_text("arch,acc\n" + "".join(f'"{a}",{v}\n' for a, v in zip(archs, values, strict=True)))
    return path


@pytest.mark.parametrize(
    "values, num_archs, needles",
    [
        ([90.0, 80.0, 70.0], 1, ["at least 2 architectures", "--num-archs 1"]),
        ([90.0], 5, ["has 1 architecture(s)", "at least 2"]),
        ([75.0, 75.0, 75.0, 75.0], 4, ["have the same acc (75)", "constant truth"]),
    ],
    ids=["one-arch", "one-row", "constant-truth"],
)
def test_rank_refuses_what_has_no_rank_correlation(trained, tmp_path, values, num_archs, needles):
    truth = _shufflenet_truth(tmp_path / "truth.csv", values)
    result = run_cli("rank", "--run", str(trained), "--ground-truth", str(truth), "--column", "acc", "--num-archs", str(num_archs))
    one_error_line(result, *needles)
    assert "tau nan" not in result.stdout
    assert not (trained / "rank" / "rank.json").exists()


# ----------------------------------------------------------------------------- resume
def test_rerunning_a_finished_search_keeps_its_recorded_time(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "r"
    shutil.copytree(trained, run_dir)
    search = ["search", "--config", str(SMOKE), "--out", str(run_dir), *TINY, "search.generations=1", "search.random_baseline=true",
              "search.population_size=4", "search.top_k=2", "search.mutation_count=2", "search.crossover_count=2",
              "search.recalibrate_images=16", "search.val_images=16"]
    assert run_cli(*search).returncode == 0
    first = json.loads((run_dir / "summary.json").read_text())["search"]
    assert first["seconds"] > 0
    # What a resumed `spos run` does after a kill in retraining: search reruns as a no-op.
    assert run_cli(*search).returncode == 0
    again = json.loads((run_dir / "summary.json").read_text())["search"]
    assert again["seconds"] == first["seconds"]  # not the no-op rerun's 0.0 s
    assert again["baseline"]["seconds"] == first["baseline"]["seconds"]
