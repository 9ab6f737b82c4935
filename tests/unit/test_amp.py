"""Mixed precision (issue 18 item 4): amp modes, fp16's gradient scaler in the SGD step and
the checkpoint, bf16 refused on GPUs without it, and the quantiser's float32 arithmetic.

Everything here runs on CPU: torch's GradScaler also works on CPU tensors, so the scaled step
(scale, unscale, hook, skip, update) is exercised for real; CUDA is only pretended (through
monkeypatched capability queries) for the bf16 refusal.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from torch import nn

from spos.checkpoint import load_checkpoint
from spos.data import ArrayDataset, BatchStream
from spos.dist import AMP_MODES, Runtime, check_amp
from spos.errors import ConfigError, DivergenceError
from spos.quant import LsqQuantizer, lsq_quantize
from spos.train import TrainingWindow, TrainState, make_sgd, sgd_step

from .test_space import TOY


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 2, 2, generator=generator), torch.arange(8) % 4


def _stream() -> BatchStream:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (32, 3, 2, 2), dtype=torch.uint8, generator=generator)
    return BatchStream(ArrayDataset(images, torch.arange(32) % 4, [str(i) for i in range(4)]), batch_size=8, seed=1)


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return make_sgd(model, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4)


def _step(model, optimizer, *, scaler=None, before_step=None):
    inputs, labels = _batch()
    return sgd_step(
        model, inputs, labels, optimizer, lr=0.1, label_smoothing=0.1,
        autocast=contextlib.nullcontext(), before_step=before_step, scaler=scaler,
    )


def test_amp_modes_and_the_cpu_fallback(caplog):
    assert AMP_MODES == ("none", "bf16", "fp16")
    runtime = Runtime(torch.device("cpu"))
    with pytest.raises(ConfigError, match="'runtime.amp' must be one of"):
        runtime.autocast("fp32")
    with caplog.at_level(logging.WARNING, logger="spos.dist"):
        assert isinstance(runtime.autocast("fp16"), contextlib.nullcontext)
    assert "amp=fp16 is a CUDA option; running in float32" in caplog.text
    # CPU runs train in float32, so they need no loss scaling.
    assert runtime.grad_scaler("fp16") is None and runtime.grad_scaler("bf16") is None


def test_bf16_on_a_gpu_without_it_is_one_clear_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: "Tesla T4")
    gpu = torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"GPU Tesla T4 \(cuda:0\) does not support bfloat16; use runtime.amp=fp16 .* or runtime.amp=none"):
        check_amp("bf16", gpu)
    with pytest.raises(ConfigError, match="does not support bfloat16"):
        Runtime(gpu).autocast("bf16")
    check_amp("fp16", gpu)  # fp16 and float32 run on any CUDA GPU
    check_amp("none", gpu)
    check_amp("bf16", torch.device("cpu"))  # CPU: the float32 fallback, not an error
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    check_amp("bf16", gpu)


def test_scaled_step_clips_and_updates_with_true_gradients():
    """With a scaler (loss x 1024) the hook sees the unscaled gradient and the update equals
    the unscaled step's: clipping a scaled gradient would clip 1024x too hard."""
    seen: dict[str, torch.Tensor] = {}

    def clip(model: nn.Module, name: str):
        def hook() -> torch.Tensor:
            seen[name] = model[1].weight.grad.clone()
            return torch.nn.utils.clip_grad_norm_(list(model.parameters()), 0.1)
        return hook

    plain_model = _model()
    plain = _step(plain_model, _sgd(plain_model), before_step=clip(plain_model, "plain"))
    scaled_model = _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaled = _step(scaled_model, _sgd(scaled_model), scaler=scaler, before_step=clip(scaled_model, "scaled"))

    assert plain.skipped is None and scaled.skipped is not None and not bool(scaled.skipped)
    torch.testing.assert_close(seen["scaled"], seen["plain"])
    torch.testing.assert_close(scaled.grad_norm, plain.grad_norm)
    assert float(plain.grad_norm) > 0.1  # the clip did act
    for a, b in zip(scaled_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert scaler.get_scale() == 1024.0  # no overflow: the scale grows only after 2000 good steps


def test_an_overflowed_fp16_step_is_skipped_and_not_divergence():
    model = _model()
    optimizer = _sgd(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = [p.detach().clone() for p in model.parameters()]
    # An inf gradient, as float16 backward passes produce when the loss scale is too high.
    handle = model[1].weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    clip = lambda: torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)  # noqa: E731
    result = _step(model, optimizer, scaler=scaler, before_step=clip)
    handle.remove()

    assert bool(result.skipped) and torch.isfinite(result.loss) and not torch.isfinite(result.grad_norm)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))  # no update
    assert scaler.get_scale() == 512.0  # backed off

    labels = _batch()[1]
    window = TrainingWindow()
    window.add(result.loss, result.logits, labels, grad_norm=result.grad_norm, skipped=result.skipped)
    good = _step(model, optimizer, scaler=scaler, before_step=clip)
    assert not bool(good.skipped)
    window.add(good.loss, good.logits, labels, grad_norm=good.grad_norm, skipped=good.skipped)
    window.check_finite(stage="supernet", step=2, last_checkpoint=None, hint="")  # no error
    record = window.flush(step=2, lr=0.1, runtime=Runtime(torch.device("cpu")))
    assert record["skipped_steps"] == 1
    assert record["grad_norm"] == pytest.approx(float(good.grad_norm))  # the skipped step's inf left out

    # The same infinite norm from a step that did update the model is divergence.
    unscaled = TrainingWindow()
    unscaled.add(result.loss, result.logits, labels, grad_norm=result.grad_norm)
    with pytest.raises(DivergenceError, match="gradient norm inf"):
        unscaled.check_finite(stage="supernet", step=1, last_checkpoint=None, hint="")


def _scaled_state() -> TrainState:
    model = _model()
    return TrainState(model, _sgd(model), _stream(), scaler=torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=3))


def _train(state: TrainState, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        images, labels = next(state.stream)
        result = sgd_step(
            state.model, images.float() / 255, labels, state.optimizer, lr=0.1, label_smoothing=0.0,
            autocast=contextlib.nullcontext(), scaler=state.scaler,
        )
        state.step += 1
        losses.append(float(result.loss.detach()))
    return losses


def test_the_scaler_state_is_checkpointed_as_plain_numbers_and_resumes(tmp_path):
    path = tmp_path / "state.ckpt"
    state = _scaled_state()
    _train(state, 4)  # 3 good steps double the scale once; the tracker stands at 1
    assert state.scaler.get_scale() == 512.0
    state.save(path, kind="child", space=TOY, config={}, extra={"global_batch": 8})
    reference = _train(state, 3)

    payload = load_checkpoint(path, kind="child")  # weights_only=True: plain data only
    stored = payload["state"]["grad_scaler"]
    assert stored == {"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3, "_growth_tracker": 1}
    assert all(type(value) in (int, float) for value in stored.values())
    resumed = _scaled_state()
    resumed.load(payload)
    assert resumed.scaler.state_dict() == stored
    assert _train(resumed, 3) == reference
    assert resumed.scaler.get_scale() == state.scaler.get_scale() == 1024.0

    # A float32 run's checkpoint has no scaler state: an fp16 resume starts a fresh scaler.
    plain = TrainState(_model(), _sgd(_model()), _stream())
    plain.save(path, kind="child", space=TOY, config={})
    fresh = _scaled_state()
    fresh.load(load_checkpoint(path, kind="child"))
    assert fresh.scaler.get_scale() == 256.0


def test_quantiser_arithmetic_is_float32_under_bf16_autocast():
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    images = torch.rand(2, 4, 8, 8, generator=generator)
    quantizer = LsqQuantizer(8, signed=False, per_sample=True)
    reference = LsqQuantizer(8, signed=False, per_sample=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        activations = conv(images).relu()  # bf16, as a quantised conv's input is under autocast
        assert activations.dtype == torch.bfloat16
        quantized = quantizer(activations)
        step = torch.tensor(0.013)
        grid = lsq_quantize(activations, step, bits=8, signed=False)
    assert quantized.dtype == grid.dtype == torch.float32
    expected = reference(activations.float())  # the same values, computed in float32 throughout
    torch.testing.assert_close(quantizer.step, reference.step, rtol=0, atol=0)
    assert torch.equal(quantized, expected)
    assert torch.equal(grid, lsq_quantize(activations.float(), step, bits=8, signed=False))
    # In bf16, x / s would already be rounded to bf16's 8 significant bits before round().
    levels = grid / step
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
