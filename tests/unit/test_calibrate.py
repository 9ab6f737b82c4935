"""BN recalibration: cumulative-average statistics, nothing else touched (SPEC section 4)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spos.calibrate import find_batchnorms, recalibrate_bn


def random_batches(*, count: int = 5, size: int = 8, channels: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    # Offset and scale per channel so the statistics are far from the reset values (0, 1).
    shift = torch.tensor([2.0, -1.0, 0.5]).view(1, channels, 1, 1)
    scale = torch.tensor([3.0, 0.5, 1.5]).view(1, channels, 1, 1)
    return [
        torch.randn(size, channels, 4, 4, generator=generator) * scale + shift for _ in range(count)
    ]


def stale_batchnorm() -> nn.BatchNorm2d:
    """A BN layer in eval mode with garbage statistics and a non-default momentum."""
    layer = nn.BatchNorm2d(3, affine=False, momentum=0.3)
    layer.running_mean.fill_(7.0)
    layer.running_var.fill_(42.0)
    layer.num_batches_tracked.fill_(123)
    return layer.eval()


def test_statistics_are_the_cumulative_average_of_the_batches():
    layer = stale_batchnorm()
    batches = random_batches()
    images = recalibrate_bn(layer, batches)
    assert images == 5 * 8
    data = torch.cat(batches).double()
    # Equal-sized batches: the average of the per-batch means is exactly the data mean.
    expected_mean = data.mean(dim=(0, 2, 3))
    # momentum=None averages the per-batch *unbiased* variances (n = 8 * 4 * 4 per channel).
    expected_var = torch.stack([b.double().var(dim=(0, 2, 3), unbiased=True) for b in batches])
    expected_var = expected_var.mean(dim=0)
    torch.testing.assert_close(layer.running_mean.double(), expected_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer.running_var.double(), expected_var, rtol=1e-6, atol=1e-6)
    # ... which is not the variance of the whole data set (the batches have different means
    # only by noise, so the gap is small but real); document the difference, do not hide it.
    assert not torch.allclose(layer.running_var.double(), data.var(dim=(0, 2, 3)), atol=1e-6)
    assert int(layer.num_batches_tracked) == 5
    assert layer.momentum == 0.3 and not layer.training


def test_unequal_batches_average_the_batch_means_unweighted():
    layer = stale_batchnorm()
    batches = random_batches(count=2)
    batches[1] = batches[1][:2]
    recalibrate_bn(layer, batches)
    expected = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(dim=0)
    torch.testing.assert_close(layer.running_mean, expected, rtol=0, atol=1e-6)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4)
        )
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.head(self.features(x * scale).mean(dim=(2, 3)))


def make_tiny() -> Tiny:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        for layer in find_batchnorms(model):
            layer.weight.uniform_(0.5, 2.0)
            layer.bias.uniform_(-1.0, 1.0)
    return model.eval()


def test_parameters_untouched_and_modes_and_momenta_restored():
    model = make_tiny()
    model.features[3].train()  # a deliberately mixed mode must survive
    parameters = {name: p.detach().clone() for name, p in model.named_parameters()}
    labelled = [(x, torch.zeros(len(x), dtype=torch.long)) for x in random_batches()]
    images = recalibrate_bn(model, labelled)
    assert images == 40
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, parameters[name]), name
        assert parameter.grad is None
    assert [m.training for m in model.modules()] == [
        False, False, False, False, False, True, False,
    ]  # fmt: skip
    assert all(layer.momentum == 0.1 for layer in find_batchnorms(model))


def test_deterministic_and_independent_of_previous_statistics():
    first, second = make_tiny(), make_tiny()
    recalibrate_bn(first, random_batches(seed=1))  # pollute the first model's statistics
    recalibrate_bn(first, random_batches(seed=2))
    recalibrate_bn(second, random_batches(seed=2))
    for a, b in zip(first.buffers(), second.buffers(), strict=True):
        assert torch.equal(a, b)


def test_custom_forward_and_subset_of_layers():
    model = make_tiny()
    untouched = model.features[3]
    before = untouched.running_mean.clone(), untouched.running_var.clone()
    calls = []

    def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return module(x, scale=2.0)  # like supernet(x, arch)

    recalibrate_bn(model, random_batches(), forward=forward, batchnorms=[model.features[1]])
    assert calls == [8] * 5
    assert torch.equal(untouched.running_mean, before[0])
    assert torch.equal(untouched.running_var, before[1])
    assert not untouched.training and untouched.momentum == 0.1
    conv_out = torch.cat([model.features[0](2.0 * x) for x in random_batches()]).detach()
    torch.testing.assert_close(
        model.features[1].running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=0, atol=1e-5
    )


def test_unselected_layers_run_in_eval_mode_during_the_pass():
    model = make_tiny()
    model.features[3].running_mean.fill_(5.0)
    modes = []
    model.features[3].register_forward_pre_hook(lambda module, args: modes.append(module.training))
    model.features[1].register_forward_pre_hook(lambda module, args: modes.append(module.training))
    recalibrate_bn(model, random_batches(count=1), batchnorms=[model.features[1]])
    assert modes == [True, False]  # selected layer trains, the other one normalises
    assert torch.equal(model.features[3].running_mean, torch.full((4,), 5.0))


def _other_rank_sum(model: nn.Module, batches: list) -> torch.Tensor:
    """What another rank contributes to the sum: its statistics times its batch count."""
    recalibrate_bn(model, batches)
    stats = torch.cat([model.running_mean, model.running_var]).double() * len(batches)
    return torch.cat([stats, torch.tensor([float(len(batches))], dtype=torch.float64)])


def test_all_reduce_of_two_equal_shards_equals_one_pass_over_both():
    batches = random_batches(count=6)
    single = stale_batchnorm()
    recalibrate_bn(single, batches)
    other_rank = _other_rank_sum(stale_batchnorm(), batches[3:])
    seen = []

    def fake_all_reduce(flat: torch.Tensor) -> torch.Tensor:
        seen.append(flat.numel())
        return flat + other_rank

    rank_zero = stale_batchnorm()
    recalibrate_bn(rank_zero, batches[:3], all_reduce=fake_all_reduce)
    assert seen == [7]  # one collective for all statistics and the batch count
    torch.testing.assert_close(rank_zero.running_mean, single.running_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(rank_zero.running_var, single.running_var, rtol=1e-6, atol=1e-6)
    assert int(rank_zero.num_batches_tracked) == 6

    def in_place_sum_with_itself(flat: torch.Tensor) -> None:
        flat.mul_(2)  # two identical ranks: the average is unchanged

    doubled = stale_batchnorm()
    recalibrate_bn(doubled, batches, all_reduce=in_place_sum_with_itself)
    torch.testing.assert_close(doubled.running_mean, single.running_mean)


def test_all_reduce_weights_unequal_shards_by_batch_count():
    batches = random_batches(count=5)
    single = stale_batchnorm()
    recalibrate_bn(single, batches)
    other_rank = _other_rank_sum(stale_batchnorm(), batches[1:])  # 4 batches there, 1 here
    rank_zero = stale_batchnorm()
    recalibrate_bn(rank_zero, batches[:1], all_reduce=lambda flat: flat + other_rank)
    torch.testing.assert_close(rank_zero.running_mean, single.running_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(rank_zero.running_var, single.running_var, rtol=1e-6, atol=1e-6)
    # A plain average of the two ranks' statistics would be visibly wrong here.
    plain = stale_batchnorm()
    recalibrate_bn(plain, batches[:1])
    assert not torch.allclose((plain.running_mean + other_rank[:3].float() / 4) / 2, single.running_mean, atol=1e-3)
    # A rank with no batches contributes nothing.
    idle = stale_batchnorm()
    recalibrate_bn(idle, [], all_reduce=lambda flat: flat + _other_rank_sum(stale_batchnorm(), batches))
    torch.testing.assert_close(idle.running_mean, single.running_mean, rtol=0, atol=1e-6)


def test_failure_mid_pass_still_restores_modes_and_momenta():
    model = make_tiny()

    def broken(module: nn.Module, x: torch.Tensor) -> None:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        recalibrate_bn(model, random_batches(), forward=broken)
    assert not any(m.training for m in model.modules())
    assert all(layer.momentum == 0.1 for layer in find_batchnorms(model))


def test_layers_without_running_statistics_are_refused():
    layer = nn.BatchNorm2d(3, track_running_stats=False)
    with pytest.raises(ValueError, match="track_running_stats"):
        recalibrate_bn(layer, random_batches())


def test_the_python_side_averaging_factor_matches_momentum_none_bit_for_bit():
    import torch
    from torch import nn

    from spos.calibrate import recalibrate_bn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4))
    batches = [torch.randn(5, 3, 9, 9) * (i + 1) for i in range(7)]
    reference = [(bn, bn.momentum) for bn in (model[1], model[4])]
    expected = []
    with torch.no_grad():
        clone = copy.deepcopy(model)
        for bn in (clone[1], clone[4]):
            bn.reset_running_stats()
            bn.momentum = None  # PyTorch's own cumulative average
        clone.train()
        for batch in batches:
            clone(batch)
        expected = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in (clone[1], clone[4])]
    recalibrate_bn(model, batches)
    for (bn, momentum), (mean, var) in zip(reference, expected, strict=True):
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
        assert bn.momentum == momentum  # restored
