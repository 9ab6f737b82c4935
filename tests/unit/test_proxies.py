"""Zero-cost proxies: hand-computed values on tiny networks, determinism, and the contract of
:func:`spos.proxies.compute_proxies` over every registered search space."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spos.childnet import build_child
from spos.cost import CostModel
from spos.proxies import (
    JACOB_COV_EPSILON,
    ProxyError,
    compute_proxies,
    get_proxy,
    grad_norm,
    jacob_cov,
    list_proxies,
    naswot,
    proxy_seed,
    register_proxy,
    snip,
    synflow,
)
from spos.space import create_space, list_spaces, make_rng

NETWORK_PROXIES = ["grad_norm", "jacob_cov", "naswot", "snip", "synflow"]


def test_network_proxies_are_the_registered_network_kind():
    assert sorted(n for n in list_proxies() if get_proxy(n).kind == "network") == NETWORK_PROXIES


def _linear(weight: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def test_registry_lists_the_required_proxies_and_rejects_duplicates():
    assert set(list_proxies()) >= {"synflow", "naswot", "jacob_cov", "grad_norm", "snip", "params", "flops"}
    assert get_proxy("params").kind == "cost" and get_proxy("synflow").kind == "network"
    with pytest.raises(ProxyError, match="unknown proxy 'nope'.*synflow"):
        get_proxy("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_proxy("synflow")(lambda network, images, labels: 0.0)


# ------------------------------------------------------------------ hand-computed values
def test_synflow_of_a_two_layer_net_is_the_hand_computed_flow_and_ignores_bn_and_signs():
    # Linear(2->2) W1, BN (bypassed), ReLU, Linear(2->1) W2. With |W| and an input of ones:
    # h = |W1| 1 = [3, 7], R = |W2| h = 1*3 + 2*7 = 17; each layer's sum |w dR/dw| is R
    # (layer 2: sum |W2_j| h_j; layer 1: sum |W2_j| |W1_jk|), so synflow = 2R = 34.
    bn = nn.BatchNorm1d(2)
    with torch.no_grad():
        bn.weight.fill_(5.0)
        bn.running_mean.fill_(3.0)
    network = nn.Sequential(_linear([[1, -2], [3, 4]]), bn, nn.ReLU(), _linear([[-1, 2]]))
    before = {k: v.clone() for k, v in network.state_dict().items()}
    images = torch.randn(4, 2)  # only the shape of one image matters
    assert synflow(network, images) == pytest.approx(34.0, abs=1e-12)
    # the caller's network is untouched: same values, dtype and mode, no gradients
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key]) and value.dtype == before[key].dtype, key
    assert network.training and all(p.grad is None for p in network.parameters())


def test_synflow_counts_paths_of_a_residual_net_in_float64():
    # y = W2 relu(W1 x) + x summed: R = 17 + 2 (skip) = 19; weights' flow is still 2*17.
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = _linear([[1, -2], [3, 4]])
            self.second = _linear([[-1, 2], [0, 0]])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.second(torch.relu(self.first(x))) + x

    assert synflow(Residual(), torch.zeros(1, 2)) == pytest.approx(34.0, abs=1e-12)


def test_grad_norm_of_a_one_layer_net_is_the_norm_of_the_known_gradient():
    # W = 0: softmax is uniform, dL/dlogits = [0.5 - 1, 0.5] for label 0, dL/dW = g x^T with
    # x = [3, 4]: [[-1.5, -2], [1.5, 2]], Frobenius norm sqrt(12.5).
    network = nn.Sequential(_linear([[0, 0], [0, 0]]))
    images, labels = torch.tensor([[3.0, 4.0]]), torch.tensor([0])
    assert grad_norm(network, images, labels) == pytest.approx(math.sqrt(12.5), rel=1e-6)
    # two copies of the sample: the mean loss has the same gradient
    assert grad_norm(network, images.repeat(2, 1), labels.repeat(2)) == pytest.approx(math.sqrt(12.5), rel=1e-6)


def test_snip_of_a_one_layer_net_is_the_known_saliency():
    # W = I, x = [1, 2]: logits [1, 2], p1 = e / (1 + e); label 0: g = [p0 - 1, p1] = [-p1, p1];
    # dL/dW = g x^T, |W * dL/dW| keeps the diagonal: p1 * 1 + p1 * 2 = 3 p1.
    network = nn.Sequential(_linear([[1, 0], [0, 1]]))
    p1 = math.e / (1 + math.e)
    assert snip(network, torch.tensor([[1.0, 2.0]]), torch.tensor([0])) == pytest.approx(3 * p1, rel=1e-6)


def test_naswot_is_the_log_determinant_of_the_hand_built_code_kernel():
    # Identity layer then ReLU: codes [1,0], [0,1], [1,1]; K[i,j] = positions where codes agree
    # = [[2,0,1],[0,2,1],[1,1,2]], det 4. A second identity + in-place ReLU sees the same
    # codes (read before it runs), doubling K: det 2^3 * 4 = 32.
    images = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
    one = nn.Sequential(_linear([[1, 0], [0, 1]]), nn.ReLU())
    assert naswot(one, images) == pytest.approx(math.log(4.0), abs=1e-12)
    two = nn.Sequential(_linear([[1, 0], [0, 1]]), nn.ReLU(), _linear([[1, 0], [0, 1]]), nn.ReLU(inplace=True))
    assert naswot(two, images) == pytest.approx(math.log(32.0), abs=1e-12)
    # identical codes for two images: singular kernel, the lowest possible score
    assert naswot(one, torch.tensor([[1.0, -1.0], [2.0, -3.0]])) == -math.inf


def test_naswot_without_relus_raises_one_clear_error():
    with pytest.raises(ProxyError, match="'naswot' needs nn.ReLU"):
        naswot(nn.Sequential(nn.Linear(2, 2)), torch.randn(3, 2))
    with pytest.raises(ProxyError, match="'naswot' needs a batch of at least 2"):
        naswot(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), torch.randn(1, 2))


class HalfSquare(nn.Module):
    """``0.5 * sum(x^2)`` per sample: its input gradient is the input itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x**2).sum(dim=1, keepdim=True)


def test_jacob_cov_of_a_net_whose_jacobian_is_its_input():
    k = JACOB_COV_EPSILON

    def term(v: float) -> float:
        return math.log(v + k) + 1.0 / (v + k)

    # rows [1,-1,1,-1] and [1,1,-1,-1]: uncorrelated, C = I, eigenvalues 1, 1
    images = torch.tensor([[1.0, -1, 1, -1], [1, 1, -1, -1]])
    assert jacob_cov(HalfSquare(), images) == pytest.approx(-2 * term(1.0), rel=1e-9)
    # a third row proportional to the first: C = [[1,0,1],[0,1,0],[1,0,1]], eigenvalues 2, 1, 0
    images = torch.cat([images, 2 * images[:1]])
    assert jacob_cov(HalfSquare(), images) == pytest.approx(-(term(2.0) + term(1.0) + term(0.0)), rel=1e-6)
    # an image whose gradient is constant (all zero): degenerate, -inf
    assert jacob_cov(HalfSquare(), torch.tensor([[1.0, -1, 1, -1], [0, 0, 0, 0]])) == -math.inf


def test_network_proxies_name_themselves_in_batch_errors():
    network = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ProxyError, match="'grad_norm': labels must have shape \\(3,\\)"):
        grad_norm(network, torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ProxyError, match="'snip': images must be a float tensor"):
        snip(network, torch.ones(3, 2, dtype=torch.long), torch.tensor([0, 1, 0]))


# ------------------------------------------------------------------ compute_proxies on spaces
def _nb201_batch(count: int = 6, size: int = 8):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(count, 3, size, size, generator=generator), torch.randint(0, 10, (count,), generator=generator)


@pytest.fixture(scope="module")
def nb201():
    space = create_space("nb201", channels=4, cells_per_stage=1, input_size=8)
    rng = make_rng(0, "test-proxies")
    archs = [space.sample(rng) for _ in range(3)]
    return space, archs, CostModel.from_space(space)


def test_compute_proxies_is_seeded_and_independent_of_order(nb201):
    space, archs, costs = nb201
    images, labels = _nb201_batch()
    state = torch.get_rng_state()
    first = compute_proxies(space, archs, images=images, labels=labels, seed=3, costs=costs)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must be left untouched"
    again = compute_proxies(space, archs, images=images, labels=labels, seed=3, costs=costs)
    assert first == again
    reversed_ = compute_proxies(space, archs[::-1], images=images, labels=labels, seed=3, costs=costs)
    assert reversed_[::-1] == first
    single = compute_proxies(space, archs[1:2], ["snip"], images=images, labels=labels, seed=3)
    assert single == [{"snip": first[1]["snip"]}]
    other = compute_proxies(space, archs, NETWORK_PROXIES, images=images, labels=labels, seed=4)
    assert any(other[i]["snip"] != first[i]["snip"] for i in range(len(archs)))
    assert proxy_seed(3, archs[0]) != proxy_seed(4, archs[0])
    for values, arch in zip(first, archs, strict=True):
        assert set(values) == set(list_proxies())
        assert values["params"] == costs.cost(arch, "params") and values["flops"] == costs.cost(arch, "flops")


def test_compute_proxies_scores_the_seeded_standalone_network(nb201):
    space, archs, _ = nb201
    images, labels = _nb201_batch()
    torch.manual_seed(proxy_seed(7, archs[0]))
    network = build_child(space, archs[0])
    expected = grad_norm(network, images, labels)
    assert compute_proxies(space, archs[:1], ["grad_norm"], images=images, labels=labels, seed=7) == [{"grad_norm": expected}]


def test_compute_proxies_rejects_bad_arguments_by_parameter_name(nb201):
    space, archs, _ = nb201
    images, labels = _nb201_batch()
    with pytest.raises(ProxyError, match="unknown proxy 'zen'"):
        compute_proxies(space, archs, ["zen"], images=images, labels=labels)
    with pytest.raises(ProxyError, match="names is empty"):
        compute_proxies(space, archs, [], images=images, labels=labels)
    with pytest.raises(ProxyError, match="images have 1 channels but space 'nb201' takes 3"):
        compute_proxies(space, archs, ["snip"], images=images[:, :1], labels=labels)
    other = CostModel.from_space(create_space("resnet20_quant_cifar", **TINY_LAYOUTS["resnet_quant"]))
    with pytest.raises(ProxyError, match="costs: cost table is for space 'resnet20_quant_cifar'"):
        compute_proxies(space, archs, ["flops"], images=images, labels=labels, costs=other)


def test_a_cell_with_only_none_edges_is_degenerate_not_nan(nb201):
    space, _, _ = nb201
    images, labels = _nb201_batch()
    empty = space.arch(["none"] * 6)
    values = compute_proxies(space, [empty], NETWORK_PROXIES, images=images, labels=labels)[0]
    assert values["naswot"] == -math.inf and values["jacob_cov"] == -math.inf
    assert all(not math.isnan(v) for v in values.values())


#: A tiny layout per family, so the contract runs over every registered space in seconds.
TINY_LAYOUTS = {
    "nb201": dict(channels=4, cells_per_stage=1, input_size=8),
    "shufflenet": dict(
        input_size=16, stem_channels=8, stage_repeats=[1, 1, 1, 1],
        stage_channels=[16, 32, 48, 64], head_channels=32,
    ),
    "shufflenet_channel": dict(
        input_size=16, stem_channels=8, stage_repeats=[1, 1, 1, 1],
        stage_channels=[16, 32, 48, 64], head_channels=32,
    ),
    "resnet_quant": dict(
        input_size=16, stem_channels=4, stage_repeats=[1, 1], stage_channels=[4, 8],
        stage_strides=[1, 2], weight_bits=[2, 4], activation_bits=[3, 8],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list_spaces())
def test_every_proxy_applies_to_every_registered_space(name):
    family = create_space(name).family
    if family not in TINY_LAYOUTS:
        pytest.fail(f"space {name!r} (family {family!r}) has no tiny layout in TINY_LAYOUTS; add one")
    space = create_space(name, **TINY_LAYOUTS[family])
    size, channels = int(space.layout["input_size"]), int(space.layout["in_channels"])
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, channels, size, size, generator=generator)
    labels = torch.randint(0, int(space.layout["num_classes"]), (4,), generator=generator)
    archs = [space.sample(make_rng(0, f"contract-{name}")) for _ in range(2)]
    # Network proxies only: the cost proxies are table lookups (checked on nb201 above), and
    # building the tables of the channel spaces would take most of this test's time.
    first = compute_proxies(space, archs, NETWORK_PROXIES, images=images, labels=labels, seed=0)
    assert first == compute_proxies(space, archs, NETWORK_PROXIES, images=images, labels=labels, seed=0)
    for values in first:
        assert set(values) == set(NETWORK_PROXIES)
        for proxy, value in values.items():
            assert isinstance(value, float) and not math.isnan(value) and value != math.inf, (proxy, value)
        assert values["synflow"] > 0 and values["grad_norm"] > 0
