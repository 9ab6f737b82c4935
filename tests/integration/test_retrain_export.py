"""Retraining and export end to end on tiny synthetic data (SPEC section 5).

The smoke data are 10 classes of noisy smooth patterns (chance: 10%); four epochs of 12 steps
take a retrained child far above chance. Resume is tested with real interruptions: the
injected progress reporter raises mid-run (between checkpoints, and again after training but
before BN post-processing), and the rerun must end bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
import torch

from spos.arch import Arch
from spos.checkpoint import load_checkpoint, state_dict_sha256
from spos.childnet import build_child, inherit_weights
from spos.config import load_config
from spos.cost import CostModel
from spos.data.prepare import load_test_split, prepare_data
from spos.dist import Runtime
from spos.errors import ArchError, CheckpointError, SposError
from spos.rundir import read_summary
from spos.space import create_space, make_rng
from spos.stages import export, retrain, train_supernet
from spos.stages.common import build_space
from spos.supernet import build_supernet
from tests.conftest import SMOKE, run_cli

OVERRIDES = ["retrain.epochs=4", "retrain.checkpoint_every=5"]
STEPS = 4 * 12  # 384 training images (512 minus 128 held out) in batches of 32


def _runtime() -> Runtime:
    return Runtime.from_env("cpu", threads=2)


def _write_arch(run_dir, config) -> Arch:
    run_dir.mkdir(parents=True, exist_ok=True)
    arch = build_space(config, prepare_data(config.data, seed=config.seed)).sample(make_rng(0, "retrain-test"))
    arch.save(run_dir / "arch.json")
    return arch


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "retrain" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("scratch")
    config = load_config(SMOKE, OVERRIDES)
    arch = _write_arch(run_dir, config)
    summary = retrain.run(config, run_dir, runtime=_runtime())
    return run_dir, arch, summary


@pytest.fixture(scope="module")
def exported(scratch_run):
    run_dir, _, _ = scratch_run
    summary = export.run(load_config(SMOKE, OVERRIDES), run_dir, runtime=_runtime())
    return run_dir, summary


def test_retrain_learns_and_reports(scratch_run):
    run_dir, arch, summary = scratch_run
    assert summary["test_top1"] > 60.0, summary  # chance is 10%
    assert summary["val_top1"] > 60.0, summary
    assert summary["test_top5"] >= summary["test_top1"]
    assert summary["test_images"] == 128 and summary["steps"] == STEPS
    assert summary["init"] == "scratch" and summary["epochs"] == 4 and summary["arch"] == arch.short()
    for key in ("test_top1", "test_top5", "val_top1", "seconds", "images_per_s"):
        assert math.isfinite(summary[key]) and summary[key] >= 0, key
    space = build_space(load_config(SMOKE), prepare_data(load_config(SMOKE).data, seed=load_config(SMOKE).seed))
    costs = CostModel.from_space(space).costs(arch)
    assert (summary["flops"], summary["params"], summary["params_total"]) == (
        costs["flops"], costs["params"], costs["params_total"],
    )
    assert summary["params_total"] == sum(p.numel() for p in build_child(space, arch).parameters())
    assert json.loads((run_dir / "summary.json").read_text())["retrain"] == summary

    lines = _metrics(run_dir)
    train_lines = [m for m in lines if "loss" in m]
    val_lines = [m for m in lines if "val_acc" in m]
    assert set(train_lines[0]) == {"step", "epoch", "loss", "train_acc", "lr", "images_per_s"}
    assert train_lines[-1]["loss"] < train_lines[0]["loss"] - 0.5
    assert [(m["step"], m["epoch"]) for m in val_lines] == [(12, 1), (24, 2), (36, 3), (48, 4)]
    assert val_lines[-1]["val_acc"] > val_lines[0]["val_acc"]

    from safetensors.torch import load_file

    weights = load_file(run_dir / "retrain" / "child.safetensors")
    assert state_dict_sha256(weights) == summary["weights_sha256"]
    payload = load_checkpoint(run_dir / "retrain" / "child.ckpt", kind="child")
    assert payload["step"] == STEPS and payload["state"]["finished"]
    assert Arch.from_json(payload["state"]["arch"]) == arch


def test_rerun_of_a_finished_retrain_does_nothing(scratch_run):
    run_dir, _, summary = scratch_run
    checkpoint = run_dir / "retrain" / "child.ckpt"
    before = checkpoint.stat().st_mtime_ns
    again = retrain.run(load_config(SMOKE, OVERRIDES), run_dir, runtime=_runtime())
    assert again == summary
    assert checkpoint.stat().st_mtime_ns == before


class _Interrupted(Exception):
    pass


def _interrupting_progress(*, at_step: int | None = None, on_close: bool = False):
    """A progress factory whose reporter raises after step ``at_step``, or when closed."""

    class Reporter:
        def __init__(self, *, total: int, initial: int = 0, description: str = "") -> None:
            self.step = initial

        def update(self, count: int = 1, **postfix) -> None:
            self.step += count
            if at_step is not None and self.step >= at_step:
                raise _Interrupted(self.step)

        def close(self) -> None:
            if on_close:
                raise _Interrupted("close")

    return Reporter


def test_interrupted_retrain_resumes_bit_identically(scratch_run, tmp_path):
    _, arch, reference = scratch_run
    run_dir = tmp_path / "interrupted"
    config = load_config(SMOKE, OVERRIDES)
    assert _write_arch(run_dir, config) == arch
    checkpoint = run_dir / "retrain" / "child.ckpt"

    with pytest.raises(_Interrupted):  # after step 23: steps 21-23 are lost
        retrain.run(config, run_dir, runtime=_runtime(), progress=_interrupting_progress(at_step=23))
    assert load_checkpoint(checkpoint)["step"] == 20
    with pytest.raises(_Interrupted):  # training done, BN post-processing and test not yet
        retrain.run(config, run_dir, runtime=_runtime(), progress=_interrupting_progress(on_close=True))
    payload = load_checkpoint(checkpoint)
    assert payload["step"] == STEPS and not payload["state"]["finished"]
    assert "retrain" not in read_summary(run_dir)

    resumed = retrain.run(config, run_dir, runtime=_runtime())
    assert resumed["weights_sha256"] == reference["weights_sha256"]
    assert (resumed["test_top1"], resumed["val_top1"]) == (reference["test_top1"], reference["val_top1"])
    steps = [m["step"] for m in _metrics(run_dir) if "loss" in m]
    assert steps == sorted(set(steps))  # the lines of lost steps were dropped, none repeated
    assert len([m for m in _metrics(run_dir) if "val_acc" in m]) == 4


def test_retrain_seed_repeats_the_retraining_on_the_same_data(scratch_run, tmp_path):
    run_dir, arch, reference = scratch_run
    config = load_config(SMOKE, OVERRIDES)
    assert config.seed == 0 and config.retrain.seed is None
    # retrain.seed equal to the run seed is the default run, bit for bit.
    same_dir = tmp_path / "same"
    _write_arch(same_dir, config)
    same = retrain.run(load_config(SMOKE, [*OVERRIDES, "retrain.seed=0"]), same_dir, runtime=_runtime())
    assert same["weights_sha256"] == reference["weights_sha256"] and same["seed"] == reference["seed"] == 0
    # Another retrain seed: other initialisation and batches, but the run seed's data split.
    other_config = load_config(SMOKE, [*OVERRIDES, "retrain.seed=1"])
    other_dir = tmp_path / "other"
    assert _write_arch(other_dir, other_config) == arch
    other = retrain.run(other_config, other_dir, runtime=_runtime())
    assert other["seed"] == 1 and other["weights_sha256"] != reference["weights_sha256"]
    assert torch.equal(prepare_data(other_config.data, seed=other_config.seed).val.labels, prepare_data(config.data, seed=config.seed).val.labels)
    assert other["test_images"] == reference["test_images"] and other["test_top1"] > 60.0


def test_inherited_child_matches_supernet_and_starts_ahead(scratch_run, tmp_path):
    _, arch, scratch = scratch_run
    run_dir = tmp_path / "inherit"
    supernet_overrides = ["supernet.steps=60", "supernet.panel.eval_every=0", "supernet.panel.size=0"]
    config = load_config(SMOKE, [*OVERRIDES, *supernet_overrides, "retrain.init=inherit"])
    _write_arch(run_dir, config)
    train_supernet.run(config, run_dir, runtime=_runtime())

    # Exactness: the inherited child computes what the supernet path computes (eval mode).
    payload = load_checkpoint(run_dir / "supernet.ckpt", kind="supernet")
    space = build_space(config, prepare_data(config.data, seed=config.seed))
    supernet = build_supernet(space)
    supernet.load_state_dict(payload["state"]["model"])
    child = inherit_weights(build_child(space, arch), supernet, arch)
    inputs = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(child.eval()(inputs), supernet.eval()(inputs, arch), rtol=1e-5, atol=1e-5)

    summary = retrain.run(config, run_dir, runtime=_runtime())
    assert summary["init"] == "inherit"
    first_inherit = next(m for m in _metrics(run_dir) if "loss" in m)
    first_scratch = next(m for m in _metrics(scratch_run[0]) if "loss" in m)
    assert first_inherit["step"] == first_scratch["step"] == 12
    assert first_inherit["loss"] < first_scratch["loss"] - 0.2, (first_inherit, first_scratch)
    assert summary["test_top1"] > 60.0


def test_export_bundle_is_verified(exported, scratch_run):
    run_dir, summary = exported
    _, arch, retrained = scratch_run
    bundle = run_dir / "export"
    assert summary["onnx_max_abs_diff"] <= 1e-4 and summary["torch_export_max_abs_diff"] <= 1e-4
    assert summary["checked_images"] == 3 + 16 and summary["input_shape"] == ["batch", 3, 16, 16]
    assert summary["weights_sha256"] == retrained["weights_sha256"]
    assert json.loads((run_dir / "summary.json").read_text())["export"] == summary
    for name in ("arch.json", "model.onnx", "model.pt2", "model.safetensors", "preprocess.json", "README.md"):
        assert (bundle / name).stat().st_size > 0, name
        assert summary.get(f"{name.split('.')[1]}_bytes", 1) > 0
    assert Arch.load(bundle / "arch.json") == arch
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".export")]  # no staging left

    # preprocess.json is all a user needs: ONNX Runtime on the raw test images gives the
    # accuracy the retrain stage measured.
    import onnxruntime

    preprocess = json.loads((bundle / "preprocess.json").read_text())
    data = prepare_data(load_config(SMOKE).data, seed=load_config(SMOKE).seed)
    np.testing.assert_allclose(preprocess["mean"], data.mean.tolist())
    np.testing.assert_allclose(preprocess["std"], data.std.tolist())
    test = load_test_split(load_config(SMOKE).data, seed=load_config(SMOKE).seed)
    mean = np.array(preprocess["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.array(preprocess["std"], np.float32).reshape(1, -1, 1, 1)
    inputs = ((test.images.numpy().astype(np.float32) / preprocess["scale"] - mean) / std).astype(np.float32)
    session = onnxruntime.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": inputs})[0]
    accuracy = 100.0 * float((logits.argmax(1) == test.labels.numpy()).mean())
    assert accuracy == pytest.approx(retrained["test_top1"], abs=100.0 / len(test) + 1e-9)


def test_readme_snippets_run(exported, monkeypatch):
    run_dir, _ = exported
    readme = (run_dir / "export" / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(snippets) == 3
    monkeypatch.chdir(run_dir / "export")
    for snippet in snippets:
        namespace: dict = {}
        exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - our own docs
    assert namespace["model"].arch == Arch.load(run_dir / "export" / "arch.json")


def test_missing_arch_is_a_clear_error(tmp_path):
    with pytest.raises(SposError, match=r"arch\.json does not exist; run `spos search` first or pass --arch"):
        retrain.run(load_config(SMOKE), tmp_path / "empty", runtime=_runtime())
    result = run_cli("retrain", "--config", str(SMOKE), "--out", str(tmp_path / "cli"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "spos search" in result.stderr and "arch.json" in result.stderr


def test_arch_of_another_space_is_refused(tmp_path):
    create_space("shufflenet_imagenet").sample(make_rng(0, "x")).save(tmp_path / "arch.json")
    with pytest.raises(ArchError, match=re.escape(str(tmp_path / "arch.json"))):
        retrain.run(load_config(SMOKE), tmp_path, runtime=_runtime())


def test_checkpoint_of_another_arch_is_refused(scratch_run, tmp_path):
    run_dir, arch, _ = scratch_run
    config = load_config(SMOKE, OVERRIDES)
    space = build_space(config, prepare_data(config.data, seed=config.seed))
    other = space.mutate(arch, make_rng(1, "other"), prob=1.0)
    while other == arch:
        other = space.mutate(other, make_rng(2, "other"), prob=1.0)
    (tmp_path / "retrain").mkdir()
    (tmp_path / "retrain" / "child.ckpt").write_bytes((run_dir / "retrain" / "child.ckpt").read_bytes())
    other.save(tmp_path / "arch.json")
    with pytest.raises(CheckpointError, match="delete"):
        retrain.run(config, tmp_path, runtime=_runtime())
    with pytest.raises(CheckpointError, match="was started for 48 steps"):
        arch.save(tmp_path / "arch.json")
        retrain.run(load_config(SMOKE, ["retrain.epochs=2"]), tmp_path, runtime=_runtime())


def test_export_without_retrain_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="spos retrain"):
        export.run(load_config(SMOKE), tmp_path, runtime=_runtime())
    assert not os.path.exists(tmp_path / "export")


def test_ddp_skips_the_unused_parameter_search_only_for_children_that_use_every_weight():
    """Retraining wraps a child without find_unused_parameters unless a weight gets no
    gradient (an NB201 cell whose node 1 leads nowhere); the probe leaves the child as it was."""
    from spos.childnet import build_child
    from spos.space import create_space
    from spos.stages.retrain import _uses_every_parameter

    space = create_space("nb201", channels=4, cells_per_stage=1)
    runtime = Runtime.from_env("cpu", threads=2)
    full = build_child(space, space.arch(["nor_conv_3x3"] * 6))
    before = {k: v.clone() for k, v in full.state_dict().items()}
    assert _uses_every_parameter(full, space, runtime)
    assert all(torch.equal(v, before[k]) for k, v in full.state_dict().items())  # BN stats untouched
    assert full.training and all(p.grad is None for p in full.parameters())
    dead = space.arch(["nor_conv_3x3", "nor_conv_3x3", "none", "nor_conv_3x3", "none", "nor_conv_3x3"])
    assert not _uses_every_parameter(build_child(space, dead), space, runtime)
