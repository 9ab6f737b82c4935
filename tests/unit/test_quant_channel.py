"""Mixed-precision search combined with channel choices (SPEC section 2): width-sliced
quantised convs, child parity, exact BitOps/params over widths and bits, search under BitOps."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch
from torch import nn

from spos import create_space
from spos.childnet import build_child, inherit_weights
from spos.cost import CostModel, module_costs
from spos.errors import ArchError, ConfigError
from spos.quant import QuantConvBN, QuantConvChoices, SlicedQuantConvBN
from spos.sampling import ChoiceSchedule
from spos.slim import SlicedBatchNorm2d
from spos.spaces.resnet_quant import QUANT_WIDTH_SCALES, resnet_quant_space, scaled_width
from spos.supernet import build_supernet
from tests.conftest import SMOKE, run_cli

# The hand-computable network of test_quant.py (4x4 single-channel input, stem 1->2, block
# 2->2, block 2->4 stride 2 with a 1x1 projection, linear 4->3) with three middle widths:
# stage 1 (2 outputs) gets 1, 2 or 3 middle channels, stage 2 (4 outputs) 2, 4 or 6.
TINY = dict(
    in_channels=1, input_size=4, num_classes=3, stem_channels=2, stage_repeats=[1, 1],
    stage_channels=[2, 4], stage_strides=[1, 2], weight_bits=[2, 4], activation_bits=[3, 8],
    width_scales=[0.5, 1.0, 1.5],
)  # fmt: skip
SMALL = dict(stage_repeats=[1, 1, 1], in_channels=1, input_size=12, width_scales=[0.5, 0.75, 1.25])


def _small_space():
    return create_space("resnet20_quant_channel_cifar", **SMALL)


def _trained_small_supernet(steps: int = 6):
    """A few SGD steps so weights, LSQ steps and BN statistics are off their initial values."""
    torch.manual_seed(0)
    space = _small_space()
    supernet = build_supernet(space)
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05)
    rng = random.Random(0)
    images = torch.randn(16, 1, 12, 12)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        supernet(images, space.sample(rng)).logsumexp(1).mean().backward()
        optimizer.step()
    return space, supernet.eval(), images, rng


@pytest.mark.parametrize(("in_width", "out_width"), [(3, 5), (8, 2), (8, 12), (1, 1)])
def test_sliced_quant_conv_equals_a_fresh_quant_conv_holding_the_prefix(in_width, out_width):
    """Train mode from uninitialised steps: the sliced layer initialises its LSQ steps from
    the prefix only, so output, steps and gradients equal those of a fresh layer of the
    chosen widths; the weight outside the prefix gets a zero gradient."""
    torch.manual_seed(0)
    layer = QuantConvChoices(8, 12, 3, stride=2, options=("w3a4",), sliced=True)
    view = layer.path("w3a4")
    assert isinstance(view, SlicedQuantConvBN) and isinstance(view.bn, SlicedBatchNorm2d)
    fresh = QuantConvBN.build(in_width, out_width, 3, stride=2, weight_bits=3, activation_bits=4, affine=False)
    with torch.no_grad():
        fresh.conv.weight.copy_(layer.conv.weight[:out_width, :in_width])
    images = torch.randn(4, in_width, 7, 7, generator=torch.Generator().manual_seed(1)).relu()
    layer.train()
    fresh.train()
    sliced_out = layer(images, "w3a4", out_width)
    fresh_out = fresh(images)
    assert sliced_out.shape == fresh_out.shape == (4, out_width, 4, 4)
    assert torch.allclose(sliced_out, fresh_out, atol=1e-6)
    for ours, theirs in ((view.weight_quantizer, fresh.weight_quantizer), (view.activation_quantizer, fresh.activation_quantizer)):  # fmt: skip
        assert int(ours.initialized) == 1
        assert ours.step.item() == pytest.approx(theirs.step.item(), rel=1e-6)
    # the step init of the full weight differs: the check above has teeth
    full_init = 2.0 * layer.conv.weight.detach().abs().mean() / math.sqrt(3)
    if (in_width, out_width) != (8, 12):
        assert abs(full_init.item() - view.weight_quantizer.step.item()) > 1e-6
    (sliced_out * torch.arange(out_width).view(1, -1, 1, 1)).sum().backward()
    (fresh_out * torch.arange(out_width).view(1, -1, 1, 1)).sum().backward()
    grad = layer.conv.weight.grad
    assert torch.allclose(grad[:out_width, :in_width], fresh.conv.weight.grad, atol=1e-5)
    assert grad[out_width:].abs().sum() == 0 and grad[:, in_width:].abs().sum() == 0
    assert view.weight_quantizer.step.grad.item() == pytest.approx(fresh.weight_quantizer.step.grad.item(), rel=1e-4, abs=1e-7)  # fmt: skip
    # BN running statistics: the prefix is updated, the rest stays at its initial value
    bn = layer.bns["w3a4"]
    assert torch.allclose(bn.running_mean[:out_width], fresh.bn.running_mean)
    assert torch.all(bn.running_mean[out_width:] == 0) and torch.all(bn.running_var[out_width:] == 1)
    # eval mode, and the standalone copy of the prefix
    layer.eval()
    fresh.eval()
    plain = view.plain(in_width, out_width).eval()
    assert type(plain) is QuantConvBN and type(plain.bn) is nn.BatchNorm2d
    with torch.no_grad():
        expected = layer(images, "w3a4", out_width)
        assert torch.allclose(expected, fresh(images), atol=1e-6)
        assert torch.allclose(plain(images), expected, atol=1e-6)


def test_sliced_quant_conv_refuses_widths_it_does_not_hold():
    layer = QuantConvChoices(4, 6, 3, stride=1, options=("w2a2",), sliced=True)
    with pytest.raises(ArchError, match="4 -> 6"):
        layer(torch.zeros(1, 5, 4, 4), "w2a2", 3)
    with pytest.raises(ArchError, match="4 -> 6"):
        layer(torch.zeros(1, 4, 4, 4), "w2a2", 7)
    with pytest.raises(ArchError, match="not width-sliced"):
        QuantConvChoices(4, 6, 3, stride=1, options=("w2a2",))(torch.zeros(1, 4, 4, 4), "w2a2", 3)


def test_spaces_with_and_without_widths():
    plain = create_space("resnet20_quant_cifar")
    assert "width_scales" not in plain.layout and len(plain.choices) == 20
    with pytest.raises(ConfigError, match="width_scales"):  # the plain spaces stay as they were
        create_space("resnet20_quant_cifar", width_scales=[0.5, 1.0])
    space = create_space("resnet20_quant_channel_cifar")
    assert space.family == plain.family == "resnet_quant"
    assert space.labels == plain.labels + tuple(f"width_s{s}b{b}" for s in (1, 2, 3) for b in (0, 1, 2))
    assert space.choice("width_s2b1").options == QUANT_WIDTH_SCALES == (0.5, 0.75, 1.0)
    assert space.size() == plain.size() * 3**9
    assert len(create_space("resnet18_quant_channel").choices) == 19 + 8
    assert len(create_space("resnet34_quant_channel").choices) == 35 + 16
    assert create_space("resnet20_quant_channel_cifar", width_scales=[1, 2]).layout["width_scales"] == (1.0, 2.0)
    # the plain builder without widths gives the plain space, layout and all
    defaults = {k: v for k, v in create_space("resnet20_quant_channel_cifar").to_dict()["layout"].items()}
    defaults.pop("width_scales")
    again = resnet_quant_space("resnet20_quant_cifar", **defaults)
    assert again.to_dict() == plain.to_dict()
    assert resnet_quant_space("resnet20_quant_cifar", **defaults, width_scales=None).to_dict() == plain.to_dict()
    # the ShuffleNetV2 rule: truncation of the float product, at least one channel
    assert [scaled_width(16, s) for s in (0.5, 0.75, 1.0, 1.25, 0.01)] == [8, 12, 16, 20, 1]
    assert scaled_width(10, 0.29) == 2  # int(2.9), not round


@pytest.mark.parametrize("bad", [[], [0.5, -1.0], [0.5, 0.5], [True], "0.5", [0.5, "1"]])
def test_width_scale_errors(bad):
    with pytest.raises(ConfigError, match="width_scales"):
        create_space("resnet20_quant_channel_cifar", width_scales=bad)


def test_plain_space_modules_are_unchanged():
    """Without widths the supernet has the plain (unsliced) layers and the same state dict."""
    plain = build_supernet(create_space("resnet20_quant_cifar", stage_repeats=[1, 1, 1]))
    assert all(type(m) is not SlicedBatchNorm2d for m in plain.modules())
    assert type(plain.blocks[0].conv1.path("w4a4")) is QuantConvBN
    full = build_supernet(create_space("resnet20_quant_channel_cifar", stage_repeats=[1, 1, 1], width_scales=[1.0]))
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in full.state_dict().items()}
    # one width at scale 1.0 is the plain space: same weights, same function
    full.load_state_dict(plain.state_dict())
    plain.eval()
    full.eval()
    bits = [random.Random(1).choice(c.options) for c in plain.space.choices]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain(images, plain.space.arch(bits)), full(images, full.space.arch([*bits, 1.0, 1.0, 1.0])))


def test_child_layers_have_the_chosen_widths():
    # child(x) == supernet(x, arch) for every family: tests/unit/test_space_contract.py
    space, supernet, images, rng = _trained_small_supernet()
    narrow = space.arch(["w2a2"] * 8 + [0.5] * 3)
    wide = space.arch(["w2a2"] * 8 + [1.25] * 3)
    outputs = {}
    for arch in (narrow, wide, space.arch(["w8a8"] * 8 + [0.75] * 3), *(space.sample(rng) for _ in range(4))):
        child = inherit_weights(build_child(space, arch), supernet, arch).eval()
        for block, (out_channels, label) in zip(child.blocks, ((16, "width_s1b0"), (32, "width_s2b0"), (64, "width_s3b0")), strict=True):  # fmt: skip
            mid = scaled_width(out_channels, arch[label])
            assert block.conv1.conv.weight.shape[:2] == (mid, block.conv1.conv.in_channels)
            assert block.conv2.conv.weight.shape[:2] == (out_channels, mid)
            assert block.conv1.bn.num_features == mid
        with torch.no_grad():
            outputs[arch] = child(images)
    assert (outputs[narrow] - outputs[wide]).abs().max() > 1e-3  # the width changes the function


def test_gradients_reach_only_the_chosen_width_and_bits():
    # only path parameters get gradients, for every family: tests/unit/test_space_contract.py
    space = _small_space()
    supernet = build_supernet(space).train()
    arch = space.arch(["w2a3", "w4a8", "w8a2", "w3a4", "w2a2", "w4a4", "w8a8", "w3a3", 0.5, 1.25, 0.75])
    supernet(torch.randn(4, 1, 12, 12), arch).logsumexp(1).sum().backward()
    block = supernet.blocks[0]  # 16 outputs, middle width 8 of 20
    assert block.conv1.conv.weight.shape[0] == 20 and block.conv2.conv.weight.shape[1] == 20
    assert block.conv1.conv.weight.grad[8:].abs().sum() == 0 < block.conv1.conv.weight.grad[:8].abs().sum()
    assert block.conv2.conv.weight.grad[:, 8:].abs().sum() == 0 < block.conv2.conv.weight.grad[:, :8].abs().sum()
    assert block.conv1.weight_quantizers["2"].step.grad is not None
    assert block.conv1.weight_quantizers["4"].step.grad is None


def test_bitops_and_params_follow_widths_and_bits_exactly():
    space = create_space("resnet20_quant_channel_cifar", **TINY)
    assert space.labels == (
        "s1b0_conv1", "s1b0_conv2", "s2b0_conv1", "s2b0_conv2", "s2b0_down", "width_s1b0", "width_s2b0",
    )  # fmt: skip
    model = CostModel.from_space(space)
    arch = space.arch(["w2a3", "w4a8", "w2a8", "w4a3", "w2a3", 0.5, 1.5])  # middle widths 1 and 6
    costs = model.costs(arch)
    # MACs: stem 16*2*9 = 288; s1 conv1 2->1 16*1*2*9 = 288; s1 conv2 1->2 16*2*1*9 = 288;
    # s2 conv1 2->6 stride 2: 4*6*2*9 = 432; s2 conv2 6->4: 4*4*6*9 = 864; projection
    # 4*4*2 = 32; linear 4*3 + 3 bias adds = 15.
    assert costs["flops"] == 288 + 288 + 288 + 432 + 864 + 32 + 15 == 2207
    full_precision = (288 + 15) * 32 * 32
    assert costs["bitops"] == full_precision + 288 * 2 * 3 + 288 * 4 * 8 + 432 * 2 * 8 + 864 * 4 * 3 + 32 * 2 * 3 == 338_688  # fmt: skip
    # weights: stem 18, s1 conv1 1*2*9 = 18, conv2 2*1*9 = 18, s2 conv1 6*2*9 = 108,
    # conv2 4*6*9 = 216, projection 8, linear 15
    assert costs["params"] == 18 + 18 + 18 + 108 + 216 + 8 + 15 == 401
    assert costs["size_bits"] == (18 + 15) * 32 + 18 * 2 + 18 * 4 + 108 * 2 + 216 * 4 + 8 * 2 == 2260
    # + affine BN (2 per channel: 2 + 1 + 2 + 6 + 4 + 4 channels) + 2 LSQ steps x 5 layers
    assert costs["params_total"] == 401 + 2 * (2 + 1 + 2 + 6 + 4 + 4) + 10 == 449
    child = build_child(space, arch)
    assert module_costs(child, torch.zeros(1, 1, 4, 4)) == costs
    # the same bits at full width: the table entry follows the width
    full = model.costs(space.arch(["w2a3", "w4a8", "w2a8", "w4a3", "w2a3", 1.0, 1.0]))
    assert full["flops"] == 288 + 576 + 576 + 288 + 576 + 32 + 15
    assert full["params"] == 18 + 36 + 36 + 72 + 144 + 8 + 15
    # every architecture (4^5 bits x 3^2 widths): the table equals the sum over layers, and
    # the bounds are exact (attained) although conv1 and conv2 read the same width choice
    values = {}
    for bits in itertools.product(*(c.options for c in space.choices[:5])):
        for widths in itertools.product(*(c.options for c in space.choices[5:])):
            values[bits + widths] = model.cost(space.arch([*bits, *widths]), "bitops")
    low, high = model.bounds("bitops")
    assert (low, high) == (min(values.values()), max(values.values()))
    # narrowest at w2a3 everywhere: s1 convs 288 + 288, s2 conv1 2->2 144, conv2 2->4 288
    assert low == full_precision + (288 + 288 + 144 + 288 + 32) * 2 * 3
    # widest at w4a8: s1 convs 864 + 864, s2 conv1 432, conv2 864
    assert high == full_precision + (864 + 864 + 432 + 864 + 32) * 4 * 8
    # the table survives serialisation (format version 2: layers reading two choices)
    data = json.loads(json.dumps(model.to_dict()))
    assert data["format_version"] == 2
    assert [layer.get("reads") for layer in data["layers"]] == [
        ["s1b0_conv1", "width_s1b0"], ["s1b0_conv2", "width_s1b0"], ["s2b0_conv1", "width_s2b0"],
        ["s2b0_conv2", "width_s2b0"], None,
    ]  # fmt: skip
    again = CostModel.from_dict(data)
    again.check_space(space)
    assert again.costs(arch) == costs


def test_full_width_resnet18_matches_the_standard_resnet18():
    # one bit option keeps the cost tables small (3 entries per conv); bits do not change FLOPs
    space = create_space("resnet18_quant_channel", weight_bits=[8], activation_bits=[8])
    costs = CostModel.from_space(space)
    arch = space.arch(["w8a8"] * 19 + [1.0] * 8)
    assert costs.flops(arch) == 1_814_074_344  # torchvision ResNet-18
    assert costs.params_total(arch) == 11_689_512 + 2 * 19
    # at scale 0.5 conv1 (in -> out / 2) and conv2 (out / 2 -> out) of every block halve
    blocks = [(64, 64, 56), (64, 64, 56), (64, 128, 28), (128, 128, 28), (128, 256, 14),
              (256, 256, 14), (256, 512, 7), (512, 512, 7)]  # (in, out, output side)  # fmt: skip
    saved = sum((out * in_channels + out * out) * 9 * side * side for in_channels, out, side in blocks) // 2
    assert costs.flops(arch) - costs.flops(space.arch(["w8a8"] * 19 + [0.5] * 8)) == saved
    saved_params = sum((out * in_channels + out * out) * 9 for in_channels, out, _ in blocks) // 2
    assert costs.params(arch) - costs.params(space.arch(["w8a8"] * 19 + [0.5] * 8)) == saved_params


def test_width_warmup_schedule_restricts_only_the_widths():
    space = _small_space()
    schedule = ChoiceSchedule(space, prefix="width_", anchor=1.25, warmup_steps=2, widen_steps=2)
    assert set(schedule.allowed(0)) == {"width_s1b0", "width_s2b0", "width_s3b0"}
    assert schedule.allowed(0)["width_s1b0"] == (1.25,)
    assert schedule.allowed(4)["width_s1b0"] == (1.25, 0.75, 0.5)


def test_width_child_exports_to_onnx_and_torch_export(tmp_path):
    """As test_quant.py's export check, for a child with narrowed blocks."""
    pytest.importorskip("onnxruntime")
    from tests.unit.test_quant import check_quantised_child_exports

    torch.manual_seed(0)
    space = _small_space()
    arch = space.arch(["w4a4", "w3a8", "w4a4", "w8a4", "w4a8", "w3a3", "w8a8", "w4a4", 0.5, 1.25, 0.75])
    check_quantised_child_exports(build_child(space, arch), tmp_path)


def test_search_under_a_bitops_constraint_writes_widths_and_bits(tmp_path):
    layout = json.dumps({"stage_repeats": [1, 1, 1], "stage_channels": [8, 16, 16]})
    space = create_space(
        "resnet20_quant_channel_cifar", stage_repeats=[1, 1, 1], stage_channels=[8, 16, 16],
        input_size=16, width_scales=[0.5, 1.0],
    )  # fmt: skip
    model = CostModel.from_space(space)
    low, high = model.bounds("bitops")
    limit = int(low + 0.3 * (high - low))
    common = [
        "--config", str(SMOKE), "--out", str(tmp_path), "space.name=resnet20_quant_channel_cifar",
        f"space.layout={layout}", "space.layout.width_scales=[0.5, 1.0]", "threads=1",
    ]  # fmt: skip
    trained = run_cli(
        "train-supernet", *common, "supernet.steps=12", "supernet.panel.eval_every=0", "supernet.panel.size=0",
        "supernet.checkpoint_every=12", "supernet.sampler.warmup_steps=4",
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
    best = json.loads((tmp_path / "arch.json").read_text())
    assert best["space"] == "resnet20_quant_channel_cifar"
    assert best["costs"]["bitops"] <= limit and not math.isnan(best["score"])
    values = best["arch"]
    assert {label for label in values if label.startswith("width_")} == {"width_s1b0", "width_s2b0", "width_s3b0"}
    assert all(values[f"width_s{s}b0"] in (0.5, 1.0) for s in (1, 2, 3))
    assert all(str(v).startswith("w") for label, v in values.items() if not label.startswith("width_"))
    # the recorded cost is the table's cost of the written architecture
    found = space.arch([values[label] for label in space.labels])
    assert model.cost(found, "bitops") == best["costs"]["bitops"]
