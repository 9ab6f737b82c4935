"""Shared training pieces: one SGD step, evaluation, the resumable state, the batch guard."""

import contextlib

import pytest
import torch
from torch import nn

from spos.checkpoint import load_checkpoint
from spos.data import ArrayDataset, BatchStream
from spos.errors import CheckpointError
from spos.train import TrainState, check_global_batch, evaluate, make_sgd, sgd_step

from .test_space import TOY


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4))


def _stream() -> BatchStream:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (32, 3, 2, 2), dtype=torch.uint8, generator=generator)
    dataset = ArrayDataset(images, torch.arange(32) % 4, [str(i) for i in range(4)])
    return BatchStream(dataset, batch_size=8, seed=1)


def _step(state: TrainState, **kwargs) -> torch.Tensor:
    images, labels = next(state.stream)
    inputs = images.float() / 255
    result = sgd_step(
        state.model, inputs, labels, state.optimizer, lr=0.1, label_smoothing=0.1, autocast=contextlib.nullcontext(), **kwargs
    )
    state.step += 1
    return result


def test_before_step_runs_between_backward_and_update_and_its_value_is_returned():
    model = _model()
    optimizer = make_sgd(model, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0)
    frozen = model[1].bias.detach().clone()

    def drop_bias_grad() -> torch.Tensor:
        assert model[1].weight.grad is not None  # after backward
        model[1].bias.grad = None  # torch's SGD then leaves the bias alone
        return torch.tensor(1.5)

    state = TrainState(model, optimizer, _stream())
    result = _step(state, before_step=drop_bias_grad)
    assert float(result.grad_norm) == 1.5 and result.logits.shape == (8, 4)
    assert torch.equal(model[1].bias, frozen) and optimizer.param_groups[0]["lr"] == 0.1


def test_train_state_resumes_bit_identically(tmp_path):
    path = tmp_path / "state.ckpt"
    state = TrainState(_model(), None, _stream())  # type: ignore[arg-type]
    state.optimizer = make_sgd(state.model, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4)
    for _ in range(3):
        _step(state)
    state.train_seconds = 2.5
    state.save(path, kind="child", space=TOY, config={"retrain": {"batch_size": 8}}, extra={"global_batch": 8})
    noise = torch.rand(3)  # the CPU RNG as it was saved
    reference = [_step(state).loss for _ in range(3)]

    resumed = TrainState(_model(), None, _stream())  # type: ignore[arg-type]
    resumed.optimizer = make_sgd(resumed.model, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4)
    extra = resumed.load(load_checkpoint(path, kind="child"))
    assert (resumed.step, resumed.train_seconds, extra["global_batch"]) == (3, 2.5, 8)
    assert torch.equal(torch.rand(3), noise)
    assert [_step(resumed).loss for _ in range(3)] == reference


def test_evaluate_counts_top1_and_topk():
    model = nn.Identity()
    logits = torch.tensor([[0.9, 0.5, 0.1], [0.1, 0.5, 0.9], [0.5, 0.9, 0.1]])
    labels = torch.tensor([0, 1, 0])
    accuracy = evaluate(model, [(logits, labels)], k=2)
    assert (accuracy.correct, accuracy.correct_topk, accuracy.images) == (1, 3, 3)
    assert accuracy.top1 == pytest.approx(100 / 3) and accuracy.topk == 100.0
    assert evaluate(model, [(logits, labels)]).topk == accuracy.top1


def test_a_changed_global_batch_is_refused_with_the_section_named(tmp_path):
    payload = {"state": {}, "config": {"retrain": {"batch_size": 64}}}
    check_global_batch(payload, 64, section="retrain", path=tmp_path)  # old checkpoint: its config
    with pytest.raises(CheckpointError, match=r"retrain\.batch_size=64"):
        check_global_batch(payload, 32, section="retrain", path=tmp_path)
    with pytest.raises(CheckpointError, match=r"supernet\.batch_size=16"):
        check_global_batch({"state": {"global_batch": 16}}, 32, section="supernet", path=tmp_path)


def test_ranks_that_sampled_different_paths_are_an_error():
    from types import SimpleNamespace

    from spos.errors import SposError
    from spos.stages.train_supernet import _check_same_path

    arch = SimpleNamespace(key="a")
    same = SimpleNamespace(distributed=True, all_gather_objects=lambda key: [key, key])
    _check_same_path(same, arch, step=10)
    other = SimpleNamespace(distributed=True, all_gather_objects=lambda key: [key, "b"])
    with pytest.raises(SposError, match="ranks sampled different paths at step 10"):
        _check_same_path(other, arch, step=10)


def test_complexity_aware_rate_decays_small_paths_faster():
    from spos.train import complexity_scaled_lr

    # the schedule is at half its peak: the largest path keeps it, the smallest squares... cubes it
    assert complexity_scaled_lr(0.05, peak=0.1, power=3.0, complexity=1.0) == pytest.approx(0.05)
    assert complexity_scaled_lr(0.05, peak=0.1, power=3.0, complexity=0.0) == pytest.approx(0.1 * 0.5**3)
    assert complexity_scaled_lr(0.05, peak=0.1, power=3.0, complexity=0.5) == pytest.approx(0.1 * 0.5**2)
    assert complexity_scaled_lr(0.05, peak=0.1, power=1.0, complexity=0.0) == 0.05  # off
    assert complexity_scaled_lr(0.1, peak=0.1, power=3.0, complexity=0.0) == 0.1  # at the peak
    assert complexity_scaled_lr(0.05, peak=0.1, power=3.0, complexity=-2.0) == pytest.approx(0.0125)  # clamped


def test_finetuned_path_trains_the_path_inside_and_restores_everything_after():
    import itertools

    from spos.space import create_space
    from spos.supernet import build_supernet
    from spos.train import finetuned_path

    space = create_space("nb201", channels=4, cells_per_stage=1, input_size=8)
    torch.manual_seed(0)
    supernet = build_supernet(space).eval()
    arch = space.arch(["nor_conv_3x3"] * 6)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 8, 8, generator=generator)
    labels = torch.arange(16) % 10
    before = {k: v.clone() for k, v in supernet.state_dict().items()}

    def loss() -> float:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(supernet(images, arch), labels).item()

    start = loss()
    global_rng = torch.get_rng_state()
    settings = dict(steps=30, lr=0.1, momentum=0.9, weight_decay=0.0, label_smoothing=0.0, to_input=lambda x: x, seed=0)
    with finetuned_path(supernet, arch, itertools.repeat((images, labels)), **settings):
        assert not supernet.training  # the caller's mode inside the block, for scoring
        assert loss() < start - 0.1  # the path fitted the batch
        on_path = {id(p) for p in supernet.path_parameters(arch)}
        for name, parameter in supernet.named_parameters():  # only the path's weights moved
            assert torch.equal(parameter, before[name]) != (id(parameter) in on_path), name
    after = supernet.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # restored exactly
    assert not supernet.training and all(p.grad is None for p in supernet.parameters())
    assert torch.equal(torch.get_rng_state(), global_rng)  # dropout drew from a forked generator
