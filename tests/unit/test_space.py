"""Search-space API and the architecture format (SPEC section 2, DESIGN: space/arch)."""

import json
import subprocess
import sys

import pytest

from spos import Arch, Choice, SearchSpace, create_space, list_spaces, make_rng
from spos.errors import ArchError, ConfigError
from spos.spaces.shufflenet import OFFICIAL_REFERENCE_ARCH

TOY = SearchSpace(
    "toy", 1, "toy", [Choice(f"c{i}", ("a", "b", "c")) for i in range(4)] + [Choice("bits", (2, 4, 8))]
)


def test_space_and_arch_modules_import_no_torch():
    code = (
        "import sys, spos.space, spos.arch, spos.sampling, spos.spaces.catalog; "
        "[spos.space.create_space(name) for name in spos.space.list_spaces()]; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_lists_and_creates_builtin_spaces():
    assert {"shufflenet_imagenet", "shufflenet_cifar"} <= set(list_spaces())
    space = create_space("shufflenet_imagenet")
    assert space.size() == 4**20
    assert len(space.choices) == 20
    with pytest.raises(ConfigError, match="unknown search space 'nope'"):
        create_space("nope")


def test_official_tuple_form_round_trips():
    space = create_space("shufflenet_imagenet")
    arch = space.parse("2,1,0,1,2,0,2,0,2,0,2,3,0,0,0,0,3,2,3,3")
    assert space.indices(arch) == OFFICIAL_REFERENCE_ARCH
    assert arch["block_00"] == "shuffle7x7" and arch["block_19"] == "xception"
    assert space.parse("(2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)") == arch


def test_short_form_of_option_values_round_trips():
    # rank/scores.csv lists architectures as Arch.short() prints them; parse reads that back
    arch = TOY.arch(["c", "a", "b", "a", 4])
    assert arch.short() == "c,a,b,a,4"
    assert TOY.parse(arch.short()) == arch
    # text of integers only stays the official index form
    assert TOY.parse("2,0,1,0,1") == arch
    with pytest.raises(ArchError, match="option values that Arch.short"):
        TOY.parse("c,a,b,a,3")


def test_arch_json_round_trip_and_validation(tmp_path):
    arch = TOY.arch(["a", "b", "c", "a", 8])
    path = tmp_path / "arch.json"
    arch.save(path, score=91.5)
    data = json.loads(path.read_text())
    assert data["format"] == "spos.arch" and data["space"] == "toy" and data["score"] == 91.5
    loaded = TOY.parse(str(path))
    assert loaded == arch and loaded.key == arch.key and hash(loaded) == hash(arch)


@pytest.mark.parametrize(
    "text, message",
    [
        ("0,1,2", "has 5 choices but the index tuple has 3"),
        ("0,1,2,0,7", "index 7 for 'bits' is out of range 0..2"),
        ("zero,one", "cannot read architecture"),
        ('{"c0": "a"}', "missing labels"),
        ('{"c0": "z", "c1": "a", "c2": "a", "c3": "a", "bits": 2}', "'z' is not an option of 'c0'"),
    ],
)
def test_bad_architecture_strings_name_the_problem(text, message):
    with pytest.raises(ArchError, match=message):
        TOY.parse(text)


def test_arch_from_another_space_is_refused(tmp_path):
    other = create_space("shufflenet_cifar").sample(make_rng(0, "t"))
    with pytest.raises(ArchError, match="is for space 'shufflenet_cifar'"):
        create_space("shufflenet_imagenet").validate(other)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArchError, match="not valid JSON"):
        Arch.load(tmp_path / "bad.json")


def test_sampling_is_seeded_and_uniform():
    first = [TOY.sample(make_rng(3, "s")) for _ in range(3)]
    again = [TOY.sample(make_rng(3, "s")) for _ in range(3)]
    assert first == again
    rng = make_rng(0, "uniform")
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(3000):
        counts[TOY.sample(rng)["c0"]] += 1
    assert all(900 < n < 1100 for n in counts.values()), counts  # 1000 +- ~5 sigma
    assert make_rng(3, "a").random() != make_rng(3, "b").random()


def test_mutation_rate_and_crossover_inherit_from_parents():
    rng = make_rng(1, "ops")
    space = SearchSpace("wide", 1, "toy", [Choice(f"c{i}", tuple(range(10))) for i in range(200)])
    parent = space.sample(rng)
    child = space.mutate(parent, rng, prob=0.1)
    changed = sum(parent[k] != child[k] for k in space.labels)
    # each gene is resampled w.p. 0.1 and then differs w.p. 0.9: expect 18 of 200
    assert 6 <= changed <= 32
    other = space.sample(rng)
    cross = space.crossover(parent, other, rng)
    assert all(cross[k] in (parent[k], other[k]) for k in space.labels)
    from_first = sum(cross[k] == parent[k] and parent[k] != other[k] for k in space.labels)
    differing = sum(parent[k] != other[k] for k in space.labels)
    assert 0.3 < from_first / differing < 0.7


def test_space_description_round_trips_and_fingerprints():
    space = create_space("shufflenet_cifar")
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    changed = space.with_layout(num_classes=100)
    assert changed.fingerprint() != space.fingerprint()
    with pytest.raises(ConfigError, match="no layout key"):
        space.with_layout(colour="blue")


def test_choice_validation():
    with pytest.raises(ConfigError, match="repeats an option"):
        Choice("x", ("a", "a"))
    with pytest.raises(ConfigError, match="no options"):
        Choice("x", ())


def test_structural_layout_overrides_rebuild_the_choices():
    space = create_space("shufflenet_cifar", stage_repeats=[1, 1, 2, 1])
    assert len(space.choices) == 5 and space.size() == 4**5
    assert len(create_space("shufflenet_cifar").with_layout(stage_repeats=[2, 2, 2, 2]).choices) == 8
    with pytest.raises(ConfigError, match="same length"):
        create_space("shufflenet_cifar", stage_repeats=[1, 1])
    with pytest.raises(ConfigError, match="no layout key"):
        create_space("shufflenet_cifar", colour=1)


def test_long_inline_json_is_not_mistaken_for_a_path():
    space = create_space("shufflenet_imagenet")
    arch = space.sample(make_rng(0, "long"))
    assert space.parse(json.dumps(dict(arch.items()))) == arch
