"""CUDA-only checks (issue 18 item 7): marked ``gpu`` and skipped where no CUDA device exists.

An AMP supernet step (bf16 and fp16), the same scores on CPU and CUDA for a tiny supernet, and
a training checkpoint written on CUDA that loads on CPU and back. ``pytest -m gpu`` runs just
these; ``benchmarks/gpu_check.py`` runs them as one of its sections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import pytest
import torch

from spos.checkpoint import load_checkpoint
from spos.config import load_config
from spos.data.prepare import prepare_data, train_stream
from spos.dist import Runtime
from spos.scoring import build_scorer
from spos.space import make_rng
from spos.stages.common import build_space
from spos.stages.train_supernet import _path_only
from spos.supernet import build_supernet
from spos.train import TrainState, make_sgd, sgd_step
from tests.conftest import SMOKE

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def tiny():
    config = load_config(SMOKE, ["data.synthetic_size=96", "data.val_size=32"])
    data = prepare_data(config.data, seed=config.seed)
    return config, data, build_space(config, data)


def _supernet(space, device: torch.device):
    torch.manual_seed(0)
    return build_supernet(space).to(device).to(memory_format=torch.channels_last)


@contextlib.contextmanager
def _no_tf32():
    """CPU and CUDA agree to float32 rounding only without TF32 convolutions and matmuls."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_an_amp_supernet_step_on_cuda(amp, tiny):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16 (runtime.amp=bf16 is refused on it)")
    config, data, space = tiny
    runtime = Runtime(CUDA)
    data = dataclasses.replace(data, train=data.train.to(CUDA))
    supernet = _supernet(space, CUDA)
    optimizer = make_sgd(supernet, lr=0.1, momentum=0.9, nesterov=True, weight_decay=4e-5)
    scaler = runtime.grad_scaler(amp)
    assert (scaler is not None) == (amp == "fp16")
    stream = train_stream(config.data, data, runtime, batch_size=16, seed=0)
    arch = space.sample(make_rng(0, "gpu-step"))
    before = {name: p.detach().clone() for name, p in supernet.named_parameters()}
    on_path = {id(p) for p in supernet.path_parameters(arch)}
    images, labels = next(stream)
    result = sgd_step(
        lambda inputs: supernet(inputs, arch),
        data.to_float(images, runtime, channels_last=True),
        labels,
        optimizer,
        lr=0.1,
        label_smoothing=0.1,
        autocast=runtime.autocast(amp),
        before_step=functools.partial(_path_only, supernet, arch, grad_clip=5.0),
        scaler=scaler,
    )
    assert result.logits.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert result.loss.dtype == torch.float32 and torch.isfinite(result.loss)
    assert torch.isfinite(result.grad_norm)
    if scaler is not None:
        assert not bool(result.skipped)  # the default scale (65536) does not overflow this net
    for name, parameter in supernet.named_parameters():
        assert parameter.dtype == torch.float32
        changed = not torch.equal(parameter, before[name])
        if id(parameter) not in on_path:
            assert not changed, f"off-path {name} was updated"
    assert any(not torch.equal(p, before[n]) for n, p in supernet.named_parameters() if id(p) in on_path)


def test_scores_on_cuda_match_cpu(tiny):
    config, data, space = tiny
    archs = [space.sample(make_rng(0, "gpu-parity")) for _ in range(3)]
    scores = {}
    for device in (torch.device("cpu"), CUDA):
        runtime = Runtime(device)
        placed = dataclasses.replace(data, train=data.train.to(device), val=data.val.to(device))
        supernet = _supernet(space, device).eval()
        kwargs = dict(seed=0, recalibrate_images=64, val_images=32, batch_size=16, channels_last=True)
        with _no_tf32():
            accuracy = build_scorer(supernet, placed, runtime, **kwargs)
            loss = build_scorer(supernet, placed, runtime, metric="loss", **kwargs)
            scores[device.type] = [(accuracy.score(arch), loss.score(arch)) for arch in archs]
    for (cpu_acc, cpu_loss), (gpu_acc, gpu_loss) in zip(scores["cpu"], scores["cuda"], strict=True):
        assert abs(cpu_acc - gpu_acc) <= 100 / 32 + 1e-9  # at most one image's argmax flips on a near-tie
        assert gpu_loss == pytest.approx(cpu_loss, rel=1e-4, abs=1e-5)


def test_a_cuda_checkpoint_loads_on_cpu_and_back(tiny, tmp_path):
    config, data, space = tiny
    path = tmp_path / "supernet.ckpt"

    def state_on(device: torch.device, amp: str) -> TrainState:
        runtime = Runtime(device)
        supernet = _supernet(space, device)
        placed = dataclasses.replace(data, train=data.train.to(device))
        return TrainState(
            supernet,
            make_sgd(supernet, lr=0.1, momentum=0.9, nesterov=True, weight_decay=4e-5),
            train_stream(config.data, placed, runtime, batch_size=16, seed=0),
            device=device,
            scaler=runtime.grad_scaler(amp),
        )

    trained = state_on(CUDA, "fp16")
    arch = space.sample(make_rng(0, "gpu-ckpt"))
    for _ in range(2):
        images, labels = next(trained.stream)
        sgd_step(
            lambda inputs: trained.model(inputs, arch),
            data.to_float(images, Runtime(CUDA), channels_last=True),
            labels,
            trained.optimizer,
            lr=0.1,
            label_smoothing=0.1,
            autocast=Runtime(CUDA).autocast("fp16"),
            scaler=trained.scaler,
        )
        trained.step += 1
    trained.save(path, kind="supernet", space=space, config={})
    weights = {k: v.cpu() for k, v in trained.model.state_dict().items()}

    on_cpu = state_on(torch.device("cpu"), "none")
    on_cpu.load(load_checkpoint(path, kind="supernet", map_location="cpu"))
    assert on_cpu.step == 2
    for key, value in on_cpu.model.state_dict().items():
        assert value.device.type == "cpu" and torch.equal(value, weights[key]), key
    momentum = next(iter(on_cpu.optimizer.state.values()))["momentum_buffer"]
    assert momentum.device.type == "cpu"

    on_cpu.save(path, kind="supernet", space=space, config={})  # and back to CUDA
    again = state_on(CUDA, "fp16")
    again.load(load_checkpoint(path, kind="supernet", map_location=CUDA))
    for key, value in again.model.state_dict().items():
        assert value.device.type == "cuda" and torch.equal(value.cpu(), weights[key]), key
    # The CPU leg had no scaler: the CUDA resume starts a fresh one rather than failing.
    assert again.scaler is not None and again.scaler.get_scale() == 65536.0

    direct = state_on(CUDA, "fp16")  # the scaler state survives a CUDA -> CUDA resume
    trained.save(path, kind="supernet", space=space, config={})
    direct.load(load_checkpoint(path, kind="supernet", map_location=CUDA))
    assert direct.scaler.state_dict() == trained.scaler.state_dict()
