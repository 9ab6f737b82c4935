"""Cost tables: the paper's FLOPs/params numbers, exactly (SPEC section 2)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spos import create_space, make_rng
from spos.childnet import build_child
from spos.cost import CostModel, module_costs
from spos.errors import ArchError, ConfigError
from spos.spaces.shufflenet import OFFICIAL_REFERENCE_ARCH

# Conv + linear multiply-accumulates of the paper's ImageNet space (SPEC section 2).
IMAGENET_FLOPS = {
    "reference": 322_918_720,
    "shuffle3x3": 295_842_496,
    "shuffle5x5": 313_654_976,
    "shuffle7x7": 340_373_696,
    "xception": 358_825_920,
}


@pytest.fixture(scope="module")
def imagenet():
    space = create_space("shufflenet_imagenet")
    return space, CostModel.from_space(space)


@pytest.fixture(scope="module")
def fmnist():
    space = create_space("shufflenet_cifar", in_channels=1, input_size=28)
    return space, CostModel.from_space(space)


def test_reference_architecture_matches_the_paper(imagenet):
    space, cost = imagenet
    arch = space.from_indices(list(OFFICIAL_REFERENCE_ARCH))
    assert cost.flops(arch) == IMAGENET_FLOPS["reference"]
    assert cost.params(arch) == pytest.approx(3.53e6, rel=5e-3)
    assert cost.params_total(arch) == 3_558_464
    assert cost.costs(arch) == {
        "flops": cost.flops(arch),
        "params": cost.params(arch),
        "params_total": 3_558_464,
        "bitops": cost.flops(arch) * 32 * 32,  # a float space: every layer counts 32 x 32
        "size_bits": cost.params(arch) * 32,
    }


@pytest.mark.parametrize("option", ["shuffle3x3", "shuffle5x5", "shuffle7x7", "xception"])
def test_uniform_architectures_match_the_paper(imagenet, option):
    space, cost = imagenet
    assert cost.flops(space.arch([option] * 20)) == IMAGENET_FLOPS[option]


def _child_counts(space, arch):
    """FLOPs (FlopCounterMode / 2) and parameters of the standalone child, on meta tensors."""
    with torch.device("meta"):
        child = build_child(space, arch).eval()
        sample = torch.zeros(1, space.layout["in_channels"], *(2 * [space.layout["input_size"]]))
    with FlopCounterMode(display=False) as counter:
        child(sample)
    conv_linear = sum(
        p.numel()
        for m in child.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
        for p in m.parameters()
    )
    return counter.get_total_flops() // 2, conv_linear, sum(p.numel() for p in child.parameters())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tables_add_up_to_the_whole_child_network(imagenet, fmnist, seed):
    for space, cost in (imagenet, fmnist):
        arch = space.sample(make_rng(seed, "cost"))
        flops, params, params_total = _child_counts(space, arch)
        assert cost.costs(arch) == {
            "flops": flops,
            "params": params,
            "params_total": params_total,
            "bitops": flops * 32 * 32,
            "size_bits": params * 32,
        }


def test_module_costs_of_a_depthwise_conv_is_the_closed_form():
    conv = nn.Conv2d(32, 32, 5, 2, 2, groups=32, bias=False)
    costs = module_costs(conv, torch.zeros(1, 32, 14, 14))
    assert costs == {
        "flops": 7 * 7 * 32 * 25,
        "params": 32 * 25,
        "params_total": 32 * 25,
        "bitops": 7 * 7 * 32 * 25 * 32 * 32,
        "size_bits": 32 * 25 * 32,
    }
    bn = nn.BatchNorm2d(8, affine=False)
    assert module_costs(bn, torch.zeros(1, 8, 4, 4)) == {
        "flops": 0,
        "params": 0,
        "params_total": 16,
        "bitops": 0,
        "size_bits": 0,
    }


def test_bounds_are_the_cheapest_and_dearest_paths(imagenet):
    space, cost = imagenet
    base = ["shuffle3x3"] * 20
    extremes = []
    for pick in (min, max):
        values = [
            pick(
                c.options,
                key=lambda option, i=i: cost.flops(space.arch([*base[:i], option, *base[i + 1 :]])),
            )
            for i, c in enumerate(space.choices)
        ]
        extremes.append(cost.flops(space.arch(values)))
    assert cost.bounds("flops") == tuple(extremes)
    # xception is the cheapest candidate of some stride-2 blocks, so the minimum is below
    # the all-shuffle3x3 path.
    assert extremes[0] < IMAGENET_FLOPS["shuffle3x3"] < IMAGENET_FLOPS["xception"] <= extremes[1]


def test_serialisation_round_trip(fmnist):
    space, cost = fmnist
    restored = CostModel.from_dict(json.loads(json.dumps(cost.to_dict())))
    restored.check_space(space)
    for seed in range(5):
        arch = space.sample(make_rng(seed, "round-trip"))
        assert restored.costs(arch) == cost.costs(arch)
    with pytest.raises(ConfigError, match="format"):
        CostModel.from_dict({"format": "something else"})
    broken = cost.to_dict()
    del broken["layers"][0]["options"][0]["flops"]
    with pytest.raises(ConfigError):
        CostModel.from_dict(broken)
    with pytest.raises(ConfigError, match="rebuild"):
        cost.check_space(create_space("shufflenet_imagenet"))


def test_lookups_are_microseconds(imagenet):
    space, cost = imagenet
    archs = [space.sample(make_rng(seed, "speed")) for seed in range(200)]
    start = time.perf_counter()
    for _ in range(5):
        for arch in archs:
            cost.flops(arch)
    per_call = (time.perf_counter() - start) / (5 * len(archs))
    assert per_call < 50e-6  # about 1 us measured; generous for busy CI machines


def test_foreign_arch_and_unknown_metric_are_refused(imagenet, fmnist):
    space, cost = imagenet
    other_space, _ = fmnist
    with pytest.raises(ArchError, match="shufflenet_imagenet"):
        cost.flops(other_space.sample(make_rng(0, "x")))
    with pytest.raises(ConfigError, match="latency_ms"):
        cost.cost(space.sample(make_rng(0, "x")), "latency_ms")
