"""The device path, guarded on CPU (issue 18 item 7) with the ``meta`` device standing in for CUDA.

``meta`` tensors follow CUDA's device rules (a non-scalar CPU operand is an error: "Tensor on
device cpu is not on the expected device meta!") and hold no data, so a whole supernet step
costs almost nothing. Every host read (``item``, ``float``, ``int``, ``bool``, ``tolist``) is
recorded with its call site and answered with a dummy zero, so the tests also count the
device-to-host syncs of each phase: a sync added to the per-step or per-batch path fails them.

Covered, for three spaces (ShuffleNet, NB201, LSQ-quantised ResNet): the training stream's
augmentation on device-resident uint8 data, normalisation, one supernet SGD step through the
stage's own ``before_step`` (off-path gradient reset and clipping), fp16's gradient scaler,
the training window's accumulation, BN recalibration, and scoring by accuracy and by loss
through :func:`spos.scoring.build_scorer`. Not covered here: data decoded from files (lazy
JPEG batches are built on the host by design and moved per batch), checkpoint writing (a meta
tensor holds no bytes), autocast (it has no meta backend) and the once-per-log-line reads of
:meth:`TrainingWindow.flush`; the ``gpu``-marked tests in ``test_gpu.py`` run those on CUDA.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import inspect
from pathlib import Path

import pytest
import torch

from spos.config import load_config
from spos.data.prepare import prepare_data, train_stream
from spos.dist import Runtime
from spos.scoring import build_scorer
from spos.space import make_rng
from spos.stages.common import build_space
from spos.stages.train_supernet import _path_only
from spos.supernet import build_supernet
from spos.train import TrainingWindow, make_sgd, sgd_step
from tests.conftest import SMOKE

META = torch.device("meta")

#: Tiny layouts of three spaces (a few hundred kFLOPs each).
SPACES = {
    "shufflenet_cifar": [],  # the smoke config's layout
    "nb201": ["space.layout={channels: 8, cells_per_stage: 1}"],
    "resnet20_quant_cifar": ["space.layout={stage_repeats: [1, 1, 1], stage_channels: [8, 16, 16], stem_channels: 8}"],
}


class HostReads:
    """Records every tensor-to-host read by call site and answers it with a dummy value."""

    METHODS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._recorder(name))

    def _recorder(self, name: str):
        def read(tensor: torch.Tensor, *args, **kwargs):
            caller = inspect.stack(context=0)[1]
            self.calls[f"{Path(caller.filename).name}:{caller.lineno} {name}"] += 1
            if name == "tolist":
                return _zeros_like_list(tensor.shape)
            return {"__float__": 1.0, "__bool__": False}.get(name, 1)  # 1: safe to divide by
        return read

    def take(self) -> dict[str, int]:
        calls, self.calls = dict(self.calls), collections.Counter()
        return calls


def _zeros_like_list(shape: torch.Size):
    return 0 if not shape else [_zeros_like_list(shape[1:]) for _ in range(shape[0])]


@pytest.fixture(scope="module")
def prepared():
    """Per space: config, host data (decoded once) and space; data preparation is host work."""
    out = {}
    for name, overrides in SPACES.items():
        config = load_config(SMOKE, [f"space.name={name}", "data.synthetic_size=96", "data.val_size=32", *overrides])
        data = prepare_data(config.data, seed=config.seed)
        out[name] = (config, data, build_space(config, data))
    return out


def _on_meta(config, data, space):
    data = dataclasses.replace(data, train=data.train.to(META), val=data.val.to(META))
    torch.manual_seed(0)
    supernet = build_supernet(space).to(META).to(memory_format=torch.channels_last)
    return data, supernet


@pytest.mark.parametrize("space_name", list(SPACES))
def test_training_step_recalibration_and_scoring_stay_on_the_device_without_per_step_syncs(
    space_name, prepared, monkeypatch
):
    config, host_data, space = prepared[space_name]
    runtime = Runtime(META)
    data, supernet = _on_meta(config, host_data, space)
    optimizer = make_sgd(supernet, lr=0.1, momentum=0.9, nesterov=True, weight_decay=4e-5)
    stream = train_stream(config.data, data, runtime, batch_size=8, seed=0)
    rng = make_rng(0, "device-path")
    reads = HostReads(monkeypatch)

    window = TrainingWindow()
    archs = [space.sample(rng) for _ in range(3)]
    # First pass: an LSQ quantiser reads its "initialised" buffer once in its life (quant.py
    # keeps a Python mirror afterwards); nothing else may read. Second pass over the same
    # paths: three paths, three batches, no read at all (a per-step one would count three).
    quantizers = sum(1 for module in supernet.modules() if type(module).__name__ == "LsqQuantizer")
    for arch in archs + archs:
        if arch is archs[0] and window.images:
            first = reads.take()
            assert all(site.startswith("quant.py:") for site in first), first
            assert sum(first.values()) <= quantizers
        images, labels = next(stream)
        assert images.device == META and images.dtype == torch.uint8
        result = sgd_step(
            lambda inputs, arch=arch: supernet(inputs, arch),
            data.to_float(images, runtime, channels_last=True),
            labels.to(runtime.device),
            optimizer,
            lr=0.1,
            label_smoothing=0.1,
            autocast=runtime.autocast("none"),
            before_step=functools.partial(_path_only, supernet, arch, grad_clip=5.0),
        )
        window.add(result.loss, result.logits, labels, grad_norm=result.grad_norm)
        assert result.logits.device == META and result.grad_norm.device == META
    assert reads.take() == {}, "a training step read a tensor on the host"

    scorer = build_scorer(
        supernet, data, runtime, seed=0, recalibrate_images=24, val_images=24, batch_size=8, channels_last=True
    )
    assert len(scorer.recalibrate_batches) == len(scorer.val_batches) == 3
    held = [images for batches in (scorer.recalibrate_batches, scorer.val_batches) for images, _ in batches.batches]
    assert all(images.device == META and images.dtype == torch.uint8 for images in held)  # issue 18 item 6
    assert reads.take() == {}
    scorer.recalibrate(arch)
    assert reads.take() == {}, "BN recalibration read a tensor on the host"
    # One read per candidate for its accuracy (top-1 and non-finite counts), none per batch.
    scorer.score(arch)
    assert list(reads.take().values()) == [1]
    scorer.metric = "loss"
    scorer.score(arch)
    assert list(reads.take().values()) == [1]


def test_the_fp16_scaler_step_syncs_only_inside_torch(prepared, monkeypatch):
    """GradScaler.step reads its overflow flag on the host (torch's own, once per step); spos's
    step adds none (the skipped flag stays on the device)."""
    config, host_data, space = prepared["shufflenet_cifar"]
    runtime = Runtime(META)
    data, supernet = _on_meta(config, host_data, space)
    optimizer = make_sgd(supernet, lr=0.1, momentum=0.9, nesterov=True, weight_decay=4e-5)
    scaler = torch.amp.GradScaler("meta")
    stream = train_stream(config.data, data, runtime, batch_size=8, seed=0)
    arch = space.sample(make_rng(0, "device-path"))
    reads = HostReads(monkeypatch)
    window = TrainingWindow()
    for _ in range(2):
        images, labels = next(stream)
        result = sgd_step(
            lambda inputs: supernet(inputs, arch),
            data.to_float(images, runtime, channels_last=True),
            labels.to(runtime.device),
            optimizer,
            lr=0.1,
            label_smoothing=0.1,
            autocast=contextlib.nullcontext(),
            before_step=functools.partial(_path_only, supernet, arch, grad_clip=5.0),
            scaler=scaler,
        )
        window.add(result.loss, result.logits, labels, grad_norm=result.grad_norm, skipped=result.skipped)
        assert result.skipped.device == META
    calls = reads.take()
    assert calls and all(site.startswith("grad_scaler.py:") for site in calls)
    assert sum(calls.values()) == 2  # one per step, torch's


def test_the_harness_catches_a_device_mix_and_a_per_batch_sync(prepared, monkeypatch):
    """The guard can fail: a CPU batch given to a device model is refused, and BatchNorm's
    momentum=None cumulative average (which reads its batch counter each forward) is counted."""
    config, host_data, space = prepared["shufflenet_cifar"]
    data, supernet = _on_meta(config, host_data, space)
    arch = space.sample(make_rng(0, "device-path"))
    host_batch = torch.zeros(2, 3, 16, 16)
    with pytest.raises(RuntimeError, match="device"):
        supernet(host_batch, arch)
    reads = HostReads(monkeypatch)
    for bn in supernet.path_batchnorms(arch):
        bn.momentum = None
    with torch.no_grad():
        supernet(host_batch.to(META), arch)
    calls = reads.take()
    assert sum(calls.values()) == len(supernet.path_batchnorms(arch)) > 0
    assert all(site.startswith("batchnorm.py:") for site in calls)
