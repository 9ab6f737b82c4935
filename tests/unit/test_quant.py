"""Mixed-precision quantisation: LSQ fake quantisation, BitOps, child parity, search (issue 7)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from torch.nn import functional as F

from spos import create_space
from spos.childnet import build_child, inherit_weights
from spos.cost import CostModel, module_costs
from spos.errors import ConfigError
from spos.quant import LsqQuantizer, QuantConvBN, lsq_quantize, parse_bits, quant_range
from spos.supernet import build_supernet
from tests.conftest import SMOKE, run_cli


def _initialised(bits: int, *, signed: bool, x: torch.Tensor) -> LsqQuantizer:
    quantizer = LsqQuantizer(bits, signed=signed, per_sample=not signed)
    quantizer.train()
    quantizer(x)  # the first training forward sets the step from the data
    quantizer.eval()
    return quantizer


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_b_bits_give_at_most_2_to_the_b_levels(bits, signed):
    x = torch.randn(64, 1000, generator=torch.Generator().manual_seed(bits)) * 3
    x = x if signed else x.relu()
    quantizer = _initialised(bits, signed=signed, x=x)
    low, high = quant_range(bits, signed=signed)
    step = float(quantizer.step.detach())
    # a dense sweep well past both ends of the clamp range: every level is hit
    sweep = torch.linspace((low - 3) * step, (high + 3) * step, 40 * 2**bits)
    for mode in ("eval", "train"):  # the straight-through graph has the same values
        quantizer.train(mode == "train")
        levels = torch.unique(quantizer(sweep.clone().requires_grad_(mode == "train")).detach())
        assert len(levels) <= 2**bits
        assert len(levels) == 2**bits
        assert len(torch.unique(quantizer(x).detach())) <= 2**bits
        integers = levels / quantizer.step.detach().abs()
        assert torch.allclose(integers, integers.round(), atol=1e-4)
        assert integers.min().round() == low and integers.max().round() == high


def test_8_bits_is_within_tolerance_of_full_precision():
    """Stated tolerance: at 8 bits (LSQ initial step), rounding error <= step / 2 wherever
    nothing is clipped, relative RMS error < 5 % for Gaussian weights, and a quantised conv
    layer's output within 6 % (relative RMS) of the float layer's.

    The layer's error is that of LSQ's *initial* steps (2 mean|v| / sqrt(Q_P): coarse at 8
    bits, and learned afterwards): about 4.8 % on average over initialisations (4.4 to 5.3 %
    over 200 of them), so the conv weights come from a seeded stream, not the global one
    (the test used to fail for ~7 % of global RNG states against a 5 % bound)."""
    torch.manual_seed(0)  # the conv's default initialisation draws from the global stream
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(64, 32, 3, 3, generator=generator)
    quantizer = _initialised(8, signed=True, x=weights)
    step = float(quantizer.step.detach())
    error = quantizer(weights) - weights
    inside = weights.abs() < 127 * step
    assert inside.float().mean() > 0.999
    assert error[inside].abs().max() <= step / 2 + 1e-6
    assert error.norm() / weights.norm() < 0.05

    layer = QuantConvBN.build(32, 64, 3, stride=1, weight_bits=8, activation_bits=8, affine=True)
    images = torch.randn(8, 32, 12, 12, generator=generator).relu()
    layer.train()
    layer(images)  # initialise both steps
    layer.eval()
    float_out = layer.bn(F.conv2d(images, layer.conv.weight, None, 1, 1))
    quant_out = layer(images)
    assert (quant_out - float_out).norm() / float_out.norm() < 0.06
    # ... while 2 bits is far off, so the check has teeth
    coarse = QuantConvBN.build(32, 64, 3, stride=1, weight_bits=2, activation_bits=2, affine=True)
    coarse.load_state_dict({k: v for k, v in layer.state_dict().items() if "step" not in k}, strict=False)
    coarse.train()
    coarse(images)
    coarse.eval()
    assert (coarse(images) - float_out).norm() / float_out.norm() > 0.2


def test_straight_through_gradients_and_lsq_step_gradient():
    x = torch.tensor([-5.0, -0.7, -0.2, 0.26, 0.9, 1.6, 7.0], requires_grad=True)
    step = torch.tensor(0.5, requires_grad=True)
    scale = 0.25
    out = lsq_quantize(x, step, bits=3, signed=True, gradient_scale=scale)  # levels -4..3
    assert out.detach().tolist() == pytest.approx([-2.0, -0.5, -0.0, 0.5, 1.0, 1.5, 1.5])
    out.sum().backward()
    v = x.detach() / 0.5
    inside = (v >= -4) & (v <= 3)
    assert x.grad.tolist() == inside.float().tolist()  # STE: 1 inside the range, 0 outside
    expected = torch.where(v < -4, -4.0, torch.where(v > 3, 3.0, v.round() - v)).sum() * scale
    assert step.grad.item() == pytest.approx(expected.item(), abs=1e-6)


def test_gradients_reach_every_weight_and_only_the_chosen_steps():
    # only path parameters get gradients, for every family: tests/unit/test_space_contract.py
    space = create_space("resnet20_quant_cifar", stage_repeats=[1, 1, 1], in_channels=1, input_size=12)
    supernet = build_supernet(space).train()
    arch = space.arch(["w2a3", "w4a8", "w8a2", "w3a4", "w2a2", "w4a4", "w8a8", "w3a3"])
    supernet(torch.randn(4, 1, 12, 12), arch).logsumexp(1).sum().backward()
    for parameter in supernet.path_parameters(arch):
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
    layer = supernet.blocks[0].conv1
    assert layer.weight_quantizers["2"].step.grad is not None
    assert layer.activation_quantizers["3"].step.grad is not None
    assert layer.weight_quantizers["4"].step.grad is None


# Hand-computable network: 4x4 single-channel input, stem conv3x3 1->2, stage 1 one block
# 2->2, stage 2 one block 2->4 stride 2 with a 1x1 projection, linear 4->3 with bias.
TINY = dict(
    in_channels=1, input_size=4, num_classes=3, stem_channels=2, stage_repeats=[1, 1],
    stage_channels=[2, 4], stage_strides=[1, 2], weight_bits=[2, 4], activation_bits=[3, 8],
)  # fmt: skip


def test_bitops_and_size_are_counted_exactly_for_a_small_network():
    space = create_space("resnet20_quant_cifar", **TINY)
    assert space.labels == ("s1b0_conv1", "s1b0_conv2", "s2b0_conv1", "s2b0_conv2", "s2b0_down")
    arch = space.arch(["w2a3", "w4a8", "w2a8", "w4a3", "w2a3"])
    costs = CostModel.from_space(space).costs(arch)
    # MACs: stem 4*4*2*9 = 288; s1 convs 4*4*2*2*9 = 576 each; s2 conv1 2*2*4*2*9 = 288;
    # s2 conv2 2*2*4*4*9 = 576; projection 2*2*4*2 = 32; linear 4*3 + 3 bias adds = 15.
    assert costs["flops"] == 288 + 576 + 576 + 288 + 576 + 32 + 15
    full_precision = (288 + 15) * 32 * 32
    assert costs["bitops"] == full_precision + 576 * 2 * 3 + 576 * 4 * 8 + 288 * 2 * 8 + 576 * 4 * 3 + 32 * 2 * 3
    # weights: stem 18, s1 convs 36 each, s2 conv1 72, conv2 144, projection 8, linear 15
    assert costs["params"] == 18 + 36 + 36 + 72 + 144 + 8 + 15
    assert costs["size_bits"] == (18 + 15) * 32 + 36 * 2 + 36 * 4 + 72 * 2 + 144 * 4 + 8 * 2
    # the standalone child measured as a whole agrees with the table
    child = build_child(space, arch)
    assert module_costs(child, torch.zeros(1, 1, 4, 4)) == {**costs, "params_total": costs["params_total"]}
    low, high = CostModel.from_space(space).bounds("bitops")
    assert low == full_precision + (576 + 576 + 288 + 576 + 32) * 2 * 3
    assert high == full_precision + (576 + 576 + 288 + 576 + 32) * 4 * 8


def test_full_precision_spaces_count_32_by_32_bitops():
    space = create_space("shufflenet_cifar", stage_repeats=[1, 1, 1, 1])
    costs = CostModel.from_space(space)
    arch = space.sample(random.Random(0))
    assert costs.cost(arch, "bitops") == costs.flops(arch) * 1024
    assert costs.cost(arch, "size_bits") == costs.params(arch) * 32


def test_resnet18_quant_matches_the_standard_resnet18():
    space = create_space("resnet18_quant")
    assert len(space.choices) == 19 and len(space.choices[0].options) == 16
    costs = CostModel.from_space(space)
    arch = space.arch(["w8a8"] * 19)
    assert costs.flops(arch) == 1_814_074_344  # torchvision ResNet-18: 1.81G MACs
    # torchvision's 11,689,512 parameters plus one weight and one activation step per layer
    assert costs.params_total(arch) == 11_689_512 + 2 * 19
    assert costs.cost(arch, "size_bits") == (9408 + 513_000) * 32 + (costs.params(arch) - 9408 - 513_000) * 8


def test_bit_widths_change_the_child_network():
    # child(x) == supernet(x, arch) for every family: tests/unit/test_space_contract.py
    torch.manual_seed(0)
    space = create_space("resnet20_quant_cifar", stage_repeats=[1, 1, 1], in_channels=1, input_size=12)
    supernet = build_supernet(space)
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05)
    rng = random.Random(0)
    images = torch.randn(16, 1, 12, 12)
    for _ in range(6):  # a few steps so steps, weights and BN statistics are not at their init
        arch = space.sample(rng)
        optimizer.zero_grad(set_to_none=True)
        supernet(images, arch).logsumexp(1).mean().backward()
        optimizer.step()
    supernet.eval()
    outputs = []
    for arch in (space.arch(["w2a2"] * 8), space.arch(["w8a8"] * 8)):
        child = inherit_weights(build_child(space, arch), supernet, arch).eval()
        with torch.no_grad():
            outputs.append(child(images))
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3  # bit widths change the function


def test_bit_width_options_and_layout_errors():
    assert parse_bits("w4a8") == (4, 8)
    with pytest.raises(ConfigError, match="w4a8"):
        parse_bits("int4")
    with pytest.raises(ConfigError, match="weight_bits"):
        create_space("resnet18_quant", weight_bits=[1, 4])
    space = create_space("resnet18_quant", weight_bits=[4, 8], activation_bits=[8])
    assert space.choices[0].options == ("w4a8", "w8a8")


def test_search_under_a_bitops_constraint_never_evaluates_a_violator(tmp_path):
    layout = json.dumps({"stage_repeats": [1, 1, 1], "stage_channels": [8, 16, 16]})
    space = create_space(
        "resnet20_quant_cifar", stage_repeats=[1, 1, 1], stage_channels=[8, 16, 16], input_size=16
    )
    low, high = CostModel.from_space(space).bounds("bitops")
    limit = int(low + 0.3 * (high - low))
    common = ["--config", str(SMOKE), "--out", str(tmp_path), "space.name=resnet20_quant_cifar", f"space.layout={layout}"]
    trained = run_cli(
        "train-supernet", *common, "supernet.steps=12", "supernet.panel.eval_every=0", "supernet.panel.size=0",
        "supernet.checkpoint_every=12",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    searched = run_cli(
        "search", *common, "search.generations=2", "search.population_size=6", "search.top_k=3",
        "search.recalibrate_images=32", "search.val_images=32",
        f"search.constraints=[{{metric: bitops, max: {limit}}}]",
    )  # fmt: skip
    assert searched.returncode == 0, searched.stderr[-2000:]
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(history) == 12
    assert all(record["bitops"] <= limit for record in history)
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    assert pareto["x"] == "bitops"  # the front runs along the constrained cost
    best = json.loads((tmp_path / "arch.json").read_text())
    assert best["costs"]["bitops"] <= limit
    assert all(re_value.startswith("w") for re_value in best["arch"].values())
    assert not math.isnan(best["score"])



def check_quantised_child_exports(child, tmp_path):
    """Train a 1x12x12 quantised child 3 steps, export ONNX and torch.export, check both
    against PyTorch (ONNX: median within TOLERANCE, rounding flips allowed); return the
    reference logits and batches."""
    from spos.stages.export import TOLERANCE, _export_onnx, _export_program, _onnx_rounding_flips

    optimizer = torch.optim.SGD(child.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        child(torch.randn(16, 1, 12, 12)).logsumexp(1).mean().backward()
        optimizer.step()
    child.eval()
    batches = {"random": torch.randn(24, 1, 12, 12)}
    with torch.no_grad():
        reference = {"random": child(batches["random"])}
    example = torch.randn(2, 1, 12, 12)
    _export_onnx(child, example, tmp_path / "model.onnx")
    flips = _onnx_rounding_flips(tmp_path / "model.onnx", reference, batches)
    assert flips is not None and flips["median_max_abs_diff"] <= TOLERANCE
    assert _export_program(child, example, tmp_path / "model.pt2", reference, batches) <= TOLERANCE
    return reference, batches


def test_fake_quant_child_exports_to_onnx_and_torch_export(tmp_path):
    """ONNX holds the fake-quant graph as float ops (Div, Clip, Round, Mul): most images
    agree within 1e-4; a rare image may flip one activation level (see spos.stages.export).
    torch.export runs PyTorch's own kernels, so it must agree everywhere."""
    pytest.importorskip("onnxruntime")
    from spos.stages.export import _onnx_rounding_flips

    torch.manual_seed(0)
    space = create_space("resnet20_quant_cifar", stage_repeats=[1, 1, 1], in_channels=1, input_size=12)
    reference, batches = check_quantised_child_exports(build_child(space, space.sample(random.Random(3))), tmp_path)
    # a wrong program is caught: the same check against another network's logits fails
    with torch.no_grad():
        wrong = {"random": reference["random"] + 0.1}
    assert _onnx_rounding_flips(tmp_path / "model.onnx", wrong, batches) is None


def test_quantiser_initialisation_follows_a_loaded_state_and_happens_once():
    from spos.quant import LsqQuantizer

    first = LsqQuantizer(4, signed=True, per_sample=False).train()
    first(torch.full((8,), 2.0))  # initialises the step from this batch
    step = float(first.step)
    first(torch.full((8,), 100.0))  # a later batch does not re-initialise
    assert float(first.step) == step and int(first.initialized) == 1

    second = LsqQuantizer(4, signed=True, per_sample=False).train()
    second.load_state_dict(first.state_dict())
    second(torch.full((8,), 100.0))  # the loaded state says initialised: keep its step
    assert float(second.step) == step

    fresh = LsqQuantizer(4, signed=True, per_sample=False).train()
    fresh(torch.full((8,), 2.0))
    fresh.load_state_dict(LsqQuantizer(4, signed=True, per_sample=False).state_dict())
    fresh(torch.full((8,), 8.0))  # an uninitialised state loaded: initialise again, from this batch
    assert float(fresh.step) != step and int(fresh.initialized) == 1
