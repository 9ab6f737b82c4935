"""The contract every registered search space keeps, checked for each one at a tiny layout.

A family (``spos/spaces/<family>.py`` + ``<family>_model.py``) is picked up here as soon as it
registers a space: its supernet runs a path, only that path learns (SPEC section 3), the child
network with inherited weights computes what the path computes (SPEC section 5), its cost
table builds and agrees with the child counted whole, and sampling reaches every option.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from spos import create_space, list_spaces, make_rng
from spos.childnet import build_child, evaluation_network, inherit_weights
from spos.cost import CostModel, module_costs
from spos.space import SearchSpace, iter_options
from spos.supernet import build_supernet

BATCH = 4


def _tiny_layout(space: SearchSpace) -> dict[str, Any]:
    """Layout updates that make a space of a built-in family cheap (unknown families: none)."""
    layout = space.layout
    stages = len(layout.get("stage_repeats", ()))
    if space.family in ("shufflenet", "shufflenet_channel"):
        tiny: dict[str, Any] = dict(
            input_size=16,
            stage_repeats=[1] * stages,
            stage_channels=[24, 32, 48, 64][:stages],
            head_channels=64,
        )
        if "width_scales" in layout:
            tiny["width_scales"] = [0.6, 1.2]
        return tiny
    if space.family == "nb201":
        return dict(input_size=16, channels=4, cells_per_stage=1)
    if space.family == "resnet_quant":
        tiny = dict(
            input_size=16,
            stem_channels=8,
            stage_repeats=[1] * stages,
            stage_channels=[8, 16, 16, 24][:stages],
            weight_bits=[4],
            activation_bits=[2, 8],
        )
        if "width_scales" in layout:
            tiny["width_scales"] = [0.5, 1.0]
        return tiny
    return {}


def _tiny_space(name: str) -> SearchSpace:
    return create_space(name, **_tiny_layout(create_space(name)))


def _input(space: SearchSpace, seed: int = 0) -> torch.Tensor:
    layout = space.layout
    shape = (BATCH, int(layout["in_channels"]), int(layout["input_size"]), int(layout["input_size"]))
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _edge_archs(space: SearchSpace) -> list:
    """Every choice at its first option, every choice at its last, and two random paths."""
    rng = make_rng(0, "contract")
    return [
        space.arch([c.options[0] for c in space.choices]),
        space.arch([c.options[-1] for c in space.choices]),
        space.sample(rng),
        space.sample(rng),
    ]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny layers: OpenMP threads waiting on a shared, busy core cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=list_spaces())
def space(request) -> SearchSpace:
    torch.manual_seed(0)
    return _tiny_space(request.param)


def test_supernet_runs_a_path_and_only_the_path_gets_gradients(space):
    supernet = build_supernet(space).train()
    num_classes = int(space.layout["num_classes"])
    for arch in _edge_archs(space)[1:]:
        supernet.zero_grad(set_to_none=True)
        logits = supernet(_input(space), arch)
        assert logits.shape == (BATCH, num_classes) and bool(torch.isfinite(logits).all())
        F.cross_entropy(logits, torch.arange(BATCH) % num_classes).backward()
        with_grad = {name for name, p in supernet.named_parameters() if p.grad is not None}
        on_path = {id(p) for p in supernet.path_parameters(arch)}
        assert with_grad == {name for name, p in supernet.named_parameters() if id(p) in on_path}


def test_child_with_inherited_weights_equals_the_path(space):
    supernet = build_supernet(space).train()
    with torch.no_grad():  # non-trivial BN statistics (and LSQ steps set from data)
        for seed, arch in enumerate(_edge_archs(space)):
            supernet(_input(space, seed) * 2 + 0.5, arch)
    supernet.eval()
    x = _input(space, seed=99)
    for arch in _edge_archs(space):
        child = inherit_weights(build_child(space, arch), supernet, arch).eval()
        with torch.no_grad():
            torch.testing.assert_close(child(x), supernet(x, arch), rtol=1e-5, atol=1e-5)


def test_folded_evaluation_network_equals_the_path_and_leaves_the_supernet_alone(space):
    supernet = build_supernet(space).train()
    with torch.no_grad():
        for seed, arch in enumerate(_edge_archs(space)):
            supernet(_input(space, seed) * 2 + 0.5, arch)
    supernet.eval()
    before = {name: t.clone() for name, t in supernet.state_dict().items()}
    x = _input(space, seed=99)
    rng_state = torch.random.get_rng_state()
    for arch in _edge_archs(space):
        network = evaluation_network(supernet, arch)
        assert not network.training
        with torch.no_grad():
            torch.testing.assert_close(network(x), supernet(x, arch), rtol=1e-4, atol=1e-5)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # built without initialising
    for name, tensor in supernet.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_cost_table_builds_and_agrees_with_the_child(space):
    costs = CostModel.from_space(space)
    costs.check_space(space)
    for arch in _edge_archs(space):
        child = build_child(space, arch)
        measured = module_costs(child, torch.zeros(1, *_input(space).shape[1:]))
        assert costs.costs(arch) == measured, arch.short()


def test_sampling_reaches_every_option_of_every_choice(space):
    rng = make_rng(0, "contract-coverage")
    seen = {(label, value) for _ in range(400) for label, value in space.sample(rng).items()}
    assert seen == set(iter_options(space))
