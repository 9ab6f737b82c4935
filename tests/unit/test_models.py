"""Candidate ops, ShuffleNet supernet and child networks (SPEC sections 2, 3, 5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spos import create_space, make_rng
from spos.childnet import build_child, inherit_weights
from spos.errors import ArchError, ConfigError
from spos.ops import (
    CANDIDATES,
    ShuffleBlock,
    XceptionBlock,
    _channel_shuffle_for_training,
    channel_shuffle,
    create_op,
    register_op,
)
from spos.space import SearchSpace
from spos.spaces.shufflenet import OFFICIAL_REFERENCE_ARCH, SHUFFLE_CANDIDATES
from spos.supernet import Supernet, build_supernet, get_family, list_families, register_family

CHANNELS_LAST = torch.channels_last


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def fmnist_space():
    return create_space("shufflenet_cifar", in_channels=1, input_size=28)


def _randomize_bn_statistics(supernet: Supernet, archs, *, shape) -> None:
    """Train-mode forwards so every BN on these paths has non-trivial running stats."""
    supernet.train()
    with torch.no_grad():
        for arch in archs:
            for _ in range(2):
                supernet(torch.randn(8, *shape) * 2 + 0.5, arch)


# ------------------------------------------------------------------------------- ops
def test_registry_has_the_four_official_candidates():
    assert set(SHUFFLE_CANDIDATES) <= set(CANDIDATES)
    block = create_op("shuffle7x7", 32, 64, stride=2, affine=True)
    assert isinstance(block, ShuffleBlock) and block.kernel_size == 7
    assert isinstance(create_op("xception", 64, 64, stride=1, affine=False), XceptionBlock)


def test_unknown_and_duplicate_ops_are_config_errors():
    with pytest.raises(ConfigError, match="known ops"):
        create_op("shuffle9x9", 16, 32, stride=2, affine=True)
    with pytest.raises(ConfigError, match="already registered"):
        register_op("xception")(lambda *a, **k: nn.Identity())


def test_register_op_adds_a_user_candidate():
    @register_op("test_identity_op")
    def identity(in_channels, out_channels, *, stride, affine):
        return nn.Identity()

    try:
        assert isinstance(create_op("test_identity_op", 8, 8, stride=1, affine=True), nn.Identity)
    finally:
        CANDIDATES.pop("test_identity_op")


def test_channel_shuffle_matches_the_official_reshape():
    x = torch.randn(3, 16, 5, 5)
    n, c, h, w = x.shape
    # The official formulation: pairs of channels, transposed, split in two.
    official = x.reshape(n * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
    even, odd = channel_shuffle(x)
    assert torch.equal(even, official[0]) and torch.equal(odd, official[1])
    for split in (channel_shuffle, _channel_shuffle_for_training):
        for memory_format in (torch.contiguous_format, CHANNELS_LAST):
            even, odd = split(x.contiguous(memory_format=memory_format))
            assert torch.equal(even, official[0]) and torch.equal(odd, official[1])


@pytest.mark.parametrize("name", SHUFFLE_CANDIDATES)
@pytest.mark.parametrize("stride", [1, 2])
def test_block_shapes_and_structure(name, stride):
    in_channels, out_channels = (64, 64) if stride == 1 else (32, 64)
    block = create_op(name, in_channels, out_channels, stride=stride, affine=False)
    out = block(torch.randn(2, in_channels, 8, 8))
    assert out.shape == (2, out_channels, 8 // stride, 8 // stride)
    assert (block.branch_proj is None) == (stride == 1)
    assert not any(m.affine for m in block.modules() if isinstance(m, nn.BatchNorm2d))
    if stride == 1:
        # The even channels pass through untouched.
        x = torch.randn(2, in_channels, 8, 8)
        assert torch.equal(block(x)[:, : in_channels // 2], x[:, 0::2])
    convs = [m for m in block.branch_main if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convs if m.groups > 1]
    kernel = 3 if name == "xception" else int(name[-1])
    assert all(m.kernel_size == (kernel, kernel) for m in depthwise)
    assert len(depthwise) == (3 if name == "xception" else 1)
    assert depthwise[0].stride == (stride, stride)
    assert convs[-1].out_channels == out_channels - (
        in_channels // 2 if stride == 1 else in_channels
    )


def test_bad_block_geometry_is_a_config_error():
    with pytest.raises(ConfigError, match="even"):
        create_op("shuffle3x3", 15, 32, stride=1, affine=True)
    with pytest.raises(ConfigError, match="no channels"):
        create_op("shuffle3x3", 64, 64, stride=2, affine=True)
    with pytest.raises(ConfigError, match="stride"):
        create_op("xception", 64, 128, stride=3, affine=True)


# ------------------------------------------------------------------------------- supernet
def test_imagenet_supernet_and_child_output_shapes():
    space = create_space("shufflenet_imagenet")
    supernet = build_supernet(space).eval()
    arch = space.from_indices(list(OFFICIAL_REFERENCE_ARCH))
    with torch.no_grad():
        assert supernet(torch.randn(1, 3, 224, 224), arch).shape == (1, 1000)
    assert len(supernet.blocks) == 20
    assert all(list(candidates) == list(SHUFFLE_CANDIDATES) for candidates in supernet.blocks)
    assert not any(m.affine for m in supernet.modules() if isinstance(m, nn.BatchNorm2d))
    child = build_child(space, arch)
    assert all(m.affine for m in child.modules() if isinstance(m, nn.BatchNorm2d))
    assert sum(p.numel() for p in child.parameters()) == 3_558_464


@pytest.mark.parametrize(
    ("updates", "shape"), [({"in_channels": 1, "input_size": 28}, (1, 28, 28)), ({}, (3, 32, 32))]
)
def test_cifar_supernet_output_shape(updates, shape):
    space = create_space("shufflenet_cifar", **updates)
    supernet = build_supernet(space)
    assert supernet.input_shape == shape
    arch = space.sample(make_rng(0, "test"))
    assert supernet(torch.randn(4, *shape), arch).shape == (4, 10)
    assert build_child(space, arch)(torch.randn(4, *shape)).shape == (4, 10)


def test_unknown_family_lists_known_ones():
    space = create_space("shufflenet_cifar")
    bogus = type(space)(space.name, space.version, "no_such_family", space.choices, space.layout)
    with pytest.raises(ConfigError, match="shufflenet"):
        build_supernet(bogus)
    assert "shufflenet" in list_families()
    with pytest.raises(ConfigError, match="already registered"):
        register_family("shufflenet", supernet=Supernet, child=nn.Identity)


def test_sequential_is_an_alias_of_shufflenet_ops():
    """Spaces saved before the rename (space.json, checkpoints) name family 'sequential'."""
    space = create_space("shufflenet_cifar", stage_repeats=[1, 1, 1, 1], in_channels=1, input_size=16)
    saved = {**space.to_dict(), "name": "old_user_space", "family": "sequential"}
    old = SearchSpace.from_dict(saved)
    assert old.family == "sequential" and old.to_dict() == saved  # fingerprint unchanged
    assert get_family("sequential") is get_family("shufflenet_ops")
    supernet = build_supernet(old)
    arch = old.sample(make_rng(0, "alias"))
    child = inherit_weights(build_child(old, arch), supernet, arch)
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(child.eval()(x), supernet.eval()(x, arch))

def test_inconsistent_layout_is_a_config_error():
    space = create_space("shufflenet_cifar")
    mismatched = SearchSpace(  # 20 choices but a 16-block layout, built by hand
        space.name, space.version, space.family, space.choices,
        {**space.to_dict()["layout"], "stage_repeats": [4, 4, 4, 4]},
    )
    with pytest.raises(ConfigError, match="stage_repeats"):
        build_supernet(mismatched)
    assert len(create_space("shufflenet_cifar", stage_repeats=[4, 4, 4, 4]).choices) == 16
    with pytest.raises(ConfigError, match="stem_channels"):
        build_supernet(create_space("shufflenet_cifar", stem_channels=0))


def test_forward_rejects_foreign_or_invalid_architectures(fmnist_space):
    supernet = build_supernet(fmnist_space)
    other = create_space("shufflenet_imagenet")
    with pytest.raises(ArchError, match="shufflenet_imagenet"):
        supernet(torch.randn(2, 1, 28, 28), other.sample(make_rng(0, "x")))
    with pytest.raises(ArchError):
        build_child(fmnist_space, other.sample(make_rng(0, "x")))


def test_path_parameters_and_batchnorms(fmnist_space):
    supernet = build_supernet(fmnist_space)
    arch = fmnist_space.sample(make_rng(1, "test"))
    parameters = supernet.path_parameters(arch)
    child = build_child(fmnist_space, arch)
    assert sum(p.numel() for p in parameters) == sum(
        p.numel()
        for m in child.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
        for p in m.parameters()
    )
    batchnorms = supernet.path_batchnorms(arch)
    assert len(batchnorms) == sum(isinstance(m, nn.BatchNorm2d) for m in child.modules())
    assert supernet.stem[1] is batchnorms[0] and supernet.head[1] is batchnorms[-1]


def test_no_update_for_candidates_off_the_path(fmnist_space):
    """SPEC section 3: off-path weights get no weight decay and no stale momentum step."""
    supernet = build_supernet(fmnist_space)
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.1, momentum=0.9, weight_decay=4e-5)
    arch_a = fmnist_space.from_indices([i % 4 for i in range(20)])
    arch_b = fmnist_space.from_indices([(i + 1) % 4 for i in range(20)])
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))

    def step(arch):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(supernet(x, arch), y).backward()
        with_grad = {id(p) for p in supernet.parameters() if p.grad is not None}
        assert with_grad == {id(p) for p in supernet.path_parameters(arch)}
        optimizer.step()

    step(arch_a)
    on_b = {id(p) for p in supernet.path_parameters(arch_b)}
    off_b = [p for p in supernet.parameters() if id(p) not in on_b]
    on_a_only = [p for p in off_b if "momentum_buffer" in optimizer.state.get(p, {})]
    assert on_a_only, "some parameters of A are off B's path and carry momentum"
    before = [
        (p.detach().clone(), optimizer.state.get(p, {}).get("momentum_buffer")) for p in off_b
    ]
    before = [(w, None if m is None else m.clone()) for w, m in before]
    buffers_before = {
        name: b.clone()
        for name, b in supernet.named_buffers()
        if not any(b is c for bn in supernet.path_batchnorms(arch_b) for c in bn.buffers())
    }
    on_b_before = [p.detach().clone() for p in supernet.path_parameters(arch_b)]
    step(arch_b)
    for parameter, (weight, momentum) in zip(off_b, before, strict=True):
        assert parameter.grad is None
        assert torch.equal(parameter, weight)
        state = optimizer.state.get(parameter, {}).get("momentum_buffer")
        assert (state is None) == (momentum is None)
        if momentum is not None:
            assert torch.equal(state, momentum)
    for name, buffer in supernet.named_buffers():
        if name in buffers_before:
            assert torch.equal(buffer, buffers_before[name]), name
    assert all(
        not torch.equal(p, w)
        for p, w in zip(supernet.path_parameters(arch_b), on_b_before, strict=True)
    )


def test_inherited_child_bn_is_affine_identity_with_the_paths_statistics(fmnist_space):
    # child(x) == supernet(x, arch) for every family: tests/unit/test_space_contract.py
    supernet = build_supernet(fmnist_space)
    arch = fmnist_space.sample(make_rng(0, "parity"))
    _randomize_bn_statistics(supernet, [arch], shape=(1, 28, 28))
    child = inherit_weights(build_child(fmnist_space, arch), supernet, arch)
    stem_bn = child.stem[1]
    assert torch.equal(stem_bn.weight, torch.ones_like(stem_bn.weight))
    assert torch.equal(stem_bn.running_var, supernet.stem[1].running_var)
    assert int(stem_bn.num_batches_tracked) == 2


def test_inherit_weights_refuses_a_child_of_another_arch(fmnist_space):
    supernet = build_supernet(fmnist_space)
    arch_a = fmnist_space.from_indices([0] * 20)
    arch_b = fmnist_space.from_indices([3] * 20)
    with pytest.raises(ArchError, match="same architecture"):
        inherit_weights(build_child(fmnist_space, arch_a), supernet, arch_b)
    child = build_child(fmnist_space, arch_a)
    del child.arch  # a foreign module without an arch attribute: layers are still checked
    with pytest.raises(ArchError, match="supernet path"):
        inherit_weights(child, supernet, arch_b)


def test_channels_last_matches_contiguous(fmnist_space):
    supernet = build_supernet(fmnist_space)
    archs = [fmnist_space.sample(make_rng(seed, "memory-format")) for seed in range(3)]
    _randomize_bn_statistics(supernet, archs, shape=(1, 28, 28))
    supernet.eval()
    x = torch.randn(4, 1, 28, 28)
    channels_last = build_supernet(fmnist_space)
    channels_last.load_state_dict(supernet.state_dict())
    channels_last = channels_last.to(memory_format=CHANNELS_LAST).eval()
    with torch.no_grad():
        for arch in archs:
            expected = supernet(x, arch)
            actual = channels_last(x.contiguous(memory_format=CHANNELS_LAST), arch)
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_channels_last_training_step_keeps_the_layout(fmnist_space):
    """Gradients between blocks stay channels_last (a mixed layout costs 2x on CPU)."""
    supernet = build_supernet(fmnist_space).to(memory_format=CHANNELS_LAST)
    arch = fmnist_space.from_indices([0, 1, 2, 3] * 5)
    layouts = []

    def record(_module, _inputs, output):
        output.register_hook(
            lambda grad: layouts.append(grad.is_contiguous(memory_format=CHANNELS_LAST))
        )

    handles = [
        block.register_forward_hook(record) for _, block in supernet.path_modules(arch)[1:-1]
    ]
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=CHANNELS_LAST)
    F.cross_entropy(supernet(x, arch), torch.zeros(4, dtype=torch.long)).backward()
    for handle in handles:
        handle.remove()
    assert len(layouts) == 20 and all(layouts)


def test_training_split_keeps_channels_last_even_where_channel_shuffle_returns_nchw(monkeypatch):
    """CUDA's channel_shuffle is a permute + contiguous that returns NCHW; emulated here, the
    training split still hands out channels_last halves and a channels_last input gradient,
    with the same values and gradient as the plain strided split."""
    from spos import ops

    def math_channel_shuffle(x, groups):  # what aten's non-CPU path computes
        n, c, h, w = x.shape
        return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).contiguous().reshape(n, c, h, w)

    monkeypatch.setattr(ops.F, "channel_shuffle", math_channel_shuffle)
    x = torch.randn(2, 8, 5, 5, dtype=torch.double).to(memory_format=CHANNELS_LAST).requires_grad_()
    even, odd = _channel_shuffle_for_training(x)
    assert math_channel_shuffle(x, 4).is_contiguous()  # the emulation does lose the layout
    assert even.is_contiguous(memory_format=CHANNELS_LAST) or even.stride(1) == 1  # NHWC-strided halves
    (even.sum() * 3 + (odd * odd).sum()).backward()
    assert x.grad.is_contiguous(memory_format=CHANNELS_LAST)
    reference = x.detach().clone().requires_grad_()
    (reference[:, 0::2].sum() * 3 + (reference[:, 1::2] ** 2).sum()).backward()
    assert torch.equal(x.grad, reference.grad)
    assert torch.equal(even, x[:, 0::2]) and torch.equal(odd, x[:, 1::2])
    assert torch.autograd.gradcheck(lambda t: _channel_shuffle_for_training(t), (x.detach().requires_grad_(),))
