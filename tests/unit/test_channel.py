"""Channel-number search: sliced conv/BN, spaces, child parity, costs, warm-up (issue 7)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

from spos.childnet import build_child
from spos.cost import CostModel, module_costs
from spos.errors import ArchError, ConfigError
from spos.sampling import ChoiceSchedule, create_sampler
from spos.slim import SlicedBatchNorm2d, SlicedConv2d, copy_prefix
from spos.space import create_space, make_rng
from spos.spaces.shufflenet_channel import CHANNEL_REFERENCE_ARCH, WIDTH_SCALES
from spos.supernet import build_supernet

TINY = dict(input_size=16, stage_repeats=[1, 1, 2, 1], stage_channels=[24, 32, 48, 64], head_channels=64)


def tiny_space():
    return create_space("shufflenet_channel_cifar", **TINY)


# --------------------------------------------------------------------------- sliced layers
@pytest.mark.parametrize("out_channels", [3, 7, 12])
def test_sliced_conv_equals_a_fresh_conv_holding_the_prefix(out_channels):
    torch.manual_seed(0)
    sliced = SlicedConv2d(10, 12, 3, 2, 1)
    x = torch.randn(2, 6, 9, 9)  # 6 of 10 input channels
    fresh = nn.Conv2d(6, out_channels, 3, 2, 1, bias=False)
    fresh.weight.data.copy_(sliced.weight.data[:out_channels, :6])
    torch.testing.assert_close(sliced(x, out_channels), fresh(x), rtol=0, atol=1e-6)
    assert copy_prefix(nn.Conv2d(6, out_channels, 3, 2, 1, bias=False), sliced).weight.equal(
        fresh.weight
    )


def test_sliced_depthwise_conv_slices_its_groups():
    torch.manual_seed(0)
    sliced = SlicedConv2d(16, 16, 5, 1, 2, groups=16)
    x = torch.randn(2, 5, 8, 8)
    fresh = nn.Conv2d(5, 5, 5, 1, 2, groups=5, bias=False)
    fresh.weight.data.copy_(sliced.weight.data[:5])
    torch.testing.assert_close(sliced(x), fresh(x), rtol=0, atol=1e-6)
    # Channel c of the output depends on input channel c only (groups really sliced).
    bumped = x.clone()
    bumped[:, 4] += 1.0
    assert torch.equal(sliced(bumped)[:, :4], sliced(x)[:, :4])


def test_sliced_conv_output_width_rules_and_errors():
    square = SlicedConv2d(8, 8, 1, out_width="input")
    assert square(torch.randn(1, 3, 4, 4)).shape[1] == 3
    assert SlicedConv2d(8, 6, 1)(torch.randn(1, 3, 4, 4)).shape[1] == 6
    with pytest.raises(ArchError, match="at most 8"):
        square(torch.randn(1, 9, 4, 4))
    with pytest.raises(ArchError, match="output channels"):
        square(torch.randn(1, 3, 4, 4), 9)
    with pytest.raises(ConfigError, match="groups"):
        SlicedConv2d(8, 8, 3, groups=2)


def test_sliced_batchnorm_uses_and_updates_only_its_prefix_statistics():
    torch.manual_seed(0)
    sliced = SlicedBatchNorm2d(10, affine=False)
    sliced.running_mean.copy_(torch.randn(10))
    sliced.running_var.copy_(torch.rand(10) + 0.5)
    x = torch.randn(4, 6, 5, 5)
    fresh = nn.BatchNorm2d(6, affine=False)
    fresh.running_mean.copy_(sliced.running_mean[:6])
    fresh.running_var.copy_(sliced.running_var[:6])
    sliced.eval(), fresh.eval()
    torch.testing.assert_close(sliced(x), fresh(x), rtol=0, atol=1e-6)

    before = sliced.running_mean.clone()
    sliced.train(), fresh.train()
    torch.testing.assert_close(sliced(x), fresh(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(sliced.running_mean[:6], fresh.running_mean)
    torch.testing.assert_close(sliced.running_var[:6], fresh.running_var)
    assert not torch.equal(sliced.running_mean[:6], before[:6])
    assert torch.equal(sliced.running_mean[6:], before[6:])  # the tail is untouched

    sliced.momentum = fresh.momentum = None  # cumulative average, as BN recalibration uses
    sliced.reset_running_stats(), fresh.reset_running_stats()
    for _ in range(3):
        batch = torch.randn(4, 6, 5, 5)
        sliced(batch), fresh(batch)
    torch.testing.assert_close(sliced.running_var[:6], fresh.running_var)


# --------------------------------------------------------------------------- spaces
def test_channel_spaces_have_32_options_per_block():
    space = create_space("shufflenet_channel_imagenet")
    assert space.size() == 32**20
    assert space.family == "shufflenet_channel"
    assert space.choice("width_07").options == WIDTH_SCALES
    arch = space.parse(",".join(map(str, CHANNEL_REFERENCE_ARCH)))
    assert arch["block_02"] == "xception" and arch["width_10"] == 1.6
    assert create_space("shufflenet_channel_cifar").size() == 32**20
    assert tiny_space().size() == 32**5
    assert create_space("shufflenet_channel_cifar", width_scales=[0.5, 1.0]).size() == 8**20


def test_channel_space_refuses_widths_without_channels():
    with pytest.raises(ConfigError, match="width_scales"):
        create_space("shufflenet_channel_cifar", width_scales=[])
    with pytest.raises(ConfigError, match="no mid channel"):
        create_space("shufflenet_channel_cifar", width_scales=[0.01, 1.0])


def test_sampling_mutation_and_crossover_keep_archs_valid():
    space = create_space("shufflenet_channel_imagenet")
    rng = make_rng(0, "test")
    archs = [space.sample(rng) for _ in range(20)]
    assert len({a.key for a in archs}) == 20
    for first, second in zip(archs, archs[1:], strict=False):
        child = space.crossover(space.mutate(first, rng, prob=0.5), second, rng)
        assert space.validate(child) is child
    widths = {a[f"width_{i:02d}"] for a in archs for i in range(20)}
    assert widths == set(WIDTH_SCALES)


# --------------------------------------------------------------------------- models
def _trained_tiny_supernet():
    torch.manual_seed(0)
    space = tiny_space()
    supernet = build_supernet(space)
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05)
    rng = random.Random(0)
    supernet.train()
    for _ in range(6):
        arch = space.sample(rng)
        loss = supernet(torch.randn(8, 3, 16, 16), arch).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return space, supernet.eval()


def test_the_width_of_one_block_changes_the_network():
    # child(x) == supernet(x, arch) for every family: tests/unit/test_space_contract.py
    space, supernet = _trained_tiny_supernet()
    rng = random.Random(1)
    x = torch.randn(3, 3, 16, 16)
    assert not torch.allclose(supernet(x, space.sample(rng)), supernet(x, space.sample(rng)))
    # Same blocks, another width of one block: another network.
    arch = space.sample(rng)
    narrower = space.arch({**dict(arch.items()), "width_02": 0.2 if arch["width_02"] != 0.2 else 1.6})
    assert not torch.allclose(supernet(x, arch), supernet(x, narrower))


def test_child_has_the_chosen_mid_widths():
    space = tiny_space()
    arch = space.arch({**dict(space.sample(random.Random(0)).items()), "block_01": "shuffle5x5", "width_01": 0.6})
    child = build_child(space, arch)
    # block 1: 24 -> 32 channels, mid = int(16 * 0.6) = 9
    assert child.blocks[1].branch_main[0].weight.shape[0] == 9
    supernet = build_supernet(space)
    assert supernet.blocks[1]["shuffle5x5"].branch_main[0].weight.shape[0] == int(16 * 1.6)


def test_gradients_reach_only_the_chosen_width_of_a_sliced_conv():
    # only path parameters get gradients, for every family: tests/unit/test_space_contract.py
    space, supernet = _trained_tiny_supernet()
    supernet.train()
    arch = space.sample(random.Random(3))
    supernet.zero_grad(set_to_none=True)
    supernet(torch.randn(2, 3, 16, 16), arch).sum().backward()
    conv = supernet.blocks[0][arch["block_00"]].branch_main
    sliced = next(m for m in conv if isinstance(m, SlicedConv2d))
    mid = int(12 * arch["width_00"])
    assert sliced.weight.grad[mid:].abs().sum() == 0


# --------------------------------------------------------------------------- costs
def test_released_block_and_channel_model_fidelity():
    space = create_space("shufflenet_channel_imagenet")
    costs = CostModel.from_space(space)
    arch = space.from_indices(CHANNEL_REFERENCE_ARCH)
    assert costs.flops(arch) == 327_857_920  # paper: 327.9M
    assert abs(costs.flops(arch) / 327.9e6 - 1) < 0.002
    assert costs.params(arch) == 3_407_035  # conv + linear weights; paper: 3.41M
    assert abs(costs.params(arch) / 3.41e6 - 1) < 0.01
    # Width 1.0 everywhere is the block-search network.
    blocks = space.from_indices([2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3] + [4] * 20)
    assert costs.flops(blocks) == 322_918_720


def test_cost_tables_match_the_child_and_round_trip():
    space = tiny_space()
    costs = CostModel.from_space(space)
    rng = random.Random(0)
    sample = torch.zeros(1, 3, 16, 16)
    for arch in [space.sample(rng) for _ in range(3)]:
        measured = module_costs(build_child(space, arch), sample)
        for metric in ("flops", "params", "params_total"):
            assert costs.cost(arch, metric) == measured[metric], metric
    data = json.loads(json.dumps(costs.to_dict()))
    assert data["format_version"] == 2 and data["layers"][0]["reads"] == ["block_00", "width_00"]
    again = CostModel.from_dict(data)
    again.check_space(space)
    assert again.costs(arch) == costs.costs(arch)
    low, high = costs.bounds("flops")
    cheapest = {}
    for (key, options), reads in zip(costs.layers, costs.reads, strict=True):
        assert reads == (key, key.replace("block_", "width_"))
        cheapest.update(zip(reads, min(options, key=lambda o: options[o]["flops"]), strict=True))
    assert low == costs.flops(space.arch(cheapest)) < high
    assert all(low <= costs.flops(space.sample(rng)) <= high for _ in range(50))
    with pytest.raises(ConfigError, match="does not cover"):
        again.check_space(create_space("shufflenet_channel_cifar", **TINY, width_scales=[0.2, 1.0]))


# --------------------------------------------------------------------------- warm-up schedule
def test_choice_schedule_warms_up_at_full_width_then_widens_nearest_first():
    space = tiny_space()
    schedule = ChoiceSchedule(space, prefix="width_", anchor=1.0, warmup_steps=10, widen_steps=14)
    assert schedule.allowed(0)["width_00"] == (1.0,)
    assert schedule.allowed(9)["width_04"] == (1.0,)
    assert "block_00" not in schedule.allowed(0)
    assert schedule.allowed(11)["width_00"] == (1.0,)
    assert schedule.allowed(12)["width_00"] == (1.0, 0.8)
    assert schedule.allowed(14)["width_00"] == (1.0, 0.8, 1.2)
    assert schedule.allowed(23)["width_00"] == (1.0, 0.8, 1.2, 0.6, 1.4, 0.4, 1.6)
    assert schedule.allowed(24)["width_00"] == WIDTH_SCALES[4:5] + (0.8, 1.2, 0.6, 1.4, 0.4, 1.6, 0.2)
    sampler = create_sampler("uniform", space, make_rng(0, "s"), schedule=schedule)
    early = [sampler.sample() for _ in range(10)]
    assert all(a[f"width_{i:02d}"] == 1.0 for a in early for i in range(5))
    assert len({a["block_00"] for a in early}) > 1  # block choices are not restricted
    late = [sampler.sample() for _ in range(60)]
    assert {a["width_03"] for a in late[-30:]} == set(WIDTH_SCALES)


def test_choice_schedule_resumes_and_refuses_bad_settings():
    space = tiny_space()

    def make():
        schedule = ChoiceSchedule(space, prefix="width_", anchor=1.0, warmup_steps=3, widen_steps=4)
        return create_sampler("uniform", space, make_rng(0, "s"), schedule=schedule)

    first = make()
    for _ in range(5):
        first.sample()
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [first.sample() for _ in range(6)] == [resumed.sample() for _ in range(6)]
    with pytest.raises(ConfigError, match="matches no choice"):
        ChoiceSchedule(space, prefix="bits_", anchor=1.0, warmup_steps=3)
    with pytest.raises(ConfigError, match="not an option"):
        ChoiceSchedule(space, prefix="width_", anchor=0.3, warmup_steps=3)
