"""Checkpoints: atomic, self-describing, loaded without arbitrary unpickling."""

import os
import pickle

import pytest
import torch

from spos import create_space
from spos.checkpoint import check_space, load_checkpoint, save_checkpoint, state_dict_sha256
from spos.errors import CheckpointError

SPACE = create_space("shufflenet_cifar")


def _save(path, **overrides):
    kwargs = dict(kind="supernet", space=SPACE, config={"seed": 0}, step=3, state={"w": torch.arange(4.0)})
    kwargs.update(overrides)
    save_checkpoint(path, **kwargs)


def test_round_trip_is_self_describing(tmp_path):
    path = tmp_path / "a.ckpt"
    _save(path)
    payload = load_checkpoint(path, kind="supernet")
    assert payload["step"] == 3 and payload["config"] == {"seed": 0}
    assert payload["space"]["name"] == "shufflenet_cifar"
    assert torch.equal(payload["state"]["w"], torch.arange(4.0))
    assert check_space(payload, SPACE) == SPACE
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_wrong_kind_space_and_corruption_are_clear_errors(tmp_path):
    path = tmp_path / "a.ckpt"
    _save(path)
    with pytest.raises(CheckpointError, match="is a 'supernet' checkpoint, but a 'child'"):
        load_checkpoint(path, kind="child")
    with pytest.raises(CheckpointError, match="trained in space 'shufflenet_cifar'"):
        check_space(load_checkpoint(path), create_space("shufflenet_imagenet"), path=path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or not an spos checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


# The raw pickle below is written with Python's default protocol (4); torch's safe unpickler
# warns that it expected 2 before refusing the file, which is the behaviour under test.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_arbitrary_objects_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as handle:
        torch.save({"format": "spos.checkpoint", "payload": _Exploit()}, handle)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_checkpoint(path)
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "a.ckpt"
    _save(path, step=1)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        _save(path, step=2, state={"bad": lambda: None})  # not serialisable
    assert load_checkpoint(path)["step"] == 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_state_dict_sha256_sees_every_byte_and_ignores_key_order():
    a = {"x": torch.zeros(3), "n": torch.tensor(5)}
    b = {"n": torch.tensor(5), "x": torch.zeros(3)}
    assert state_dict_sha256(a) == state_dict_sha256(b)
    c = {"x": torch.tensor([0.0, 0.0, 1e-30]), "n": torch.tensor(5)}
    assert state_dict_sha256(a) != state_dict_sha256(c)
