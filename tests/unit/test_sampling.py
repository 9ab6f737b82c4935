"""Path samplers: uniform, uniform-constraint over FLOPs bins, strict-fair (SPEC section 3)."""

from collections import Counter

import pytest

from spos import Choice, SearchSpace, make_rng
from spos.sampling import ConstraintSampler, create_sampler

SPACE = SearchSpace("toy", 1, "toy", [Choice(f"c{i}", (0, 1, 2, 3)) for i in range(10)])


def flops(arch):
    return sum(v for _, v in arch.values)


def test_uniform_sampler_counts_coverage_and_resumes():
    sampler = create_sampler("uniform", SPACE, make_rng(0, "p"))
    for _ in range(400):
        sampler.sample()
    counts = sampler.coverage["c0"]
    assert sum(counts.values()) == 400 and all(70 < n < 130 for n in counts.values())
    state = sampler.state_dict()
    straight = [sampler.sample() for _ in range(5)]
    restored = create_sampler("uniform", SPACE, make_rng(99, "other"))
    restored.load_state_dict(state)
    assert [restored.sample() for _ in range(5)] == straight


def test_fair_sampler_uses_every_option_once_per_window():
    sampler = create_sampler("fair", SPACE, make_rng(0, "fair"))
    for _ in range(3):
        window = [sampler.sample() for _ in range(4)]
        for label in SPACE.labels:
            assert sorted(a[label] for a in window) == [0, 1, 2, 3]
    state = sampler.state_dict()
    sampler.sample()
    straight = [sampler.sample() for _ in range(6)]
    restored = create_sampler("fair", SPACE, make_rng(5, "x"))
    restored.load_state_dict(state)
    restored.sample()
    assert [restored.sample() for _ in range(6)] == straight


def test_fair_sampler_under_a_warm_up_keeps_the_free_choices_fair():
    from spos.sampling import ChoiceSchedule

    space = SPACE  # choices c0..: the schedule holds the first one at option 3, then frees it
    label = space.labels[0]
    schedule = ChoiceSchedule(space, prefix=label, anchor=3, warmup_steps=8, widen_steps=0)
    sampler = create_sampler("fair", space, make_rng(0, "fair"), schedule=schedule)
    paths = [sampler.sample() for _ in range(16)]
    assert all(a[label] == 3 for a in paths[:8])  # held during the warm-up
    for start in (0, 4, 8, 12):  # every other choice strictly fair in every window
        window = paths[start : start + 4]
        for other in space.labels[1:]:
            assert sorted(a[other] for a in window) == [0, 1, 2, 3]
    assert len({a[label] for a in paths[8:]}) > 1  # free after the warm-up


def test_constraint_sampler_fills_bins_uniformly():
    # FLOPs = sum of indices (0..30); a uniform path concentrates near 15, the bins do not.
    sampler = ConstraintSampler(
        SPACE, make_rng(0, "c"), flops=flops, low=5, high=26, bins=7, max_tries=200
    )
    values = [flops(sampler.sample()) for _ in range(1400)]
    bins = Counter(min(6, (v - 5) // 3) for v in values if 5 <= v <= 26)
    assert sum(bins.values()) >= 1390  # almost never falls back
    assert all(150 < bins[b] < 250 for b in range(7)), bins
    uniform = [flops(SPACE.sample(make_rng(i, "u"))) for i in range(1400)]
    # 2 of 7 bins (~400 paths) against ~10% of uniform paths (~140)
    assert sum(v <= 10 for v in values) > 2 * sum(v <= 10 for v in uniform)


def test_constraint_sampler_falls_back_after_the_cap():
    sampler = ConstraintSampler(SPACE, make_rng(0, "c"), flops=flops, low=0, high=0.5, bins=1, max_tries=5)
    arch = sampler.sample()
    assert arch is not None and sampler.fallbacks == 1
    assert sampler.stats()["sampler_fallbacks"] == 1


def test_distinct_network_sampling_draws_every_network_equally_often():
    """De-isomorphic sampling: on NAS-Bench-201 uniform labelings train the network that 125
    cells collapse to (nothing reaches the output) 125 times as often as a network with one
    labeling; drawn over distinct networks, every network is about equally likely."""
    import spos.spaces.nb201  # noqa: F401  (registers nb201 and its canonical form)
    from spos.space import create_space

    space = create_space("nb201")
    dead = space.canonical(space.arch(["nor_conv_3x3", "skip_connect", "avg_pool_3x3", "none", "none", "none"]))
    counts = {}
    for distinct in (False, True):
        sampler = create_sampler("uniform", space, make_rng(0, "deiso"), distinct_networks=distinct)
        draws = [sampler.sample() for _ in range(20000)]
        counts[distinct] = Counter(space.canonical(a) for a in draws)
        if distinct:
            assert all(space.canonical(a) == a for a in draws)  # only representatives are drawn
    assert counts[False][dead] > 100  # 125 / 15,625 of 20,000 draws = 160 expected
    assert counts[True][dead] < 10  # 1 / 12,205 of them: about 2
    # Resuming gives the same draws (the rejection loop uses only the sampler's RNG).
    sampler = create_sampler("uniform", space, make_rng(1, "deiso"), distinct_networks=True)
    sampler.sample()
    state = sampler.state_dict()
    straight = [sampler.sample() for _ in range(20)]
    restored = create_sampler("uniform", space, make_rng(7, "x"), distinct_networks=True)
    restored.load_state_dict(state)
    assert [restored.sample() for _ in range(20)] == straight


def test_distinct_network_sampling_is_plain_uniform_without_a_canonical_form():
    plain = create_sampler("uniform", SPACE, make_rng(3, "p"))
    distinct = create_sampler("uniform", SPACE, make_rng(3, "p"), distinct_networks=True)
    assert [plain.sample() for _ in range(50)] == [distinct.sample() for _ in range(50)]


def test_distinct_network_sampling_refuses_the_fair_sampler():
    import pytest

    from spos.errors import ConfigError

    with pytest.raises(ConfigError, match="uniform and constraint"):
        create_sampler("fair", SPACE, make_rng(0, "f"), distinct_networks=True)


def test_a_registered_sampler_is_selectable_by_name_in_the_config():
    from spos.config import load_config
    from spos.errors import ConfigError
    from spos.sampling import (
        _SAMPLERS,
        UniformSampler,
        create_sampler,
        list_samplers,
        register_sampler,
    )
    from spos.space import create_space, make_rng

    assert {"uniform", "constraint", "fair"} <= set(list_samplers())
    with pytest.raises(ConfigError, match="'supernet.sampler.name' must be one of"):
        load_config(None, ["supernet.sampler.name=first_option"])

    class FirstOption(UniformSampler):
        def sample(self):
            self.steps += 1
            return self.space.arch([choice.options[0] for choice in self.space.choices])

    register_sampler("first_option")(lambda space, rng, **_: FirstOption(space, rng))
    try:
        assert load_config(None, ["supernet.sampler.name=first_option"]).supernet.sampler.name == "first_option"
        space = create_space("nb201")
        sampler = create_sampler("first_option", space, make_rng(0, "t"))
        assert sampler.sample() == space.arch([choice.options[0] for choice in space.choices])
    finally:
        _SAMPLERS.pop("first_option")


def test_gradnorm_sampler_draws_options_in_proportion_to_their_gradient_norms():
    space = SearchSpace("toy", 1, "toy", [Choice("c0", (0, 1, 2, 3))])
    sampler = create_sampler("gradnorm", space, make_rng(0, "g"), uniform_share=0.2, gradnorm_decay=0.5)
    assert sampler.uses_feedback
    assert sampler.probabilities("c0", (0, 1, 2, 3)) == pytest.approx([0.25] * 4)  # nothing seen
    sampler.observe(space.arch([0]), 1.0)
    sampler.observe(space.arch([1]), 3.0)
    sampler.observe(space.arch([1]), 1.0)  # running mean: 0.5 * 3 + 0.5 * 1 = 2
    # unseen options 2 and 3 count as the largest mean (2): norms 1, 2, 2, 2 -> share 0.2 uniform
    expected = [0.05 + 0.8 * n / 7 for n in (1, 2, 2, 2)]
    assert sampler.probabilities("c0", (0, 1, 2, 3)) == pytest.approx(expected)
    draws = Counter(sampler.sample()["c0"] for _ in range(4000))
    assert abs(draws[0] / 4000 - expected[0]) < 0.03 and abs(draws[1] / 4000 - expected[1]) < 0.03
    sampler.observe(space.arch([0]), float("nan"))  # a diverged step leaves the means alone
    assert sampler.norms["c0"]["0"] == 1.0


def test_gradnorm_sampler_with_all_uniform_share_is_uniform_and_resumes():
    sampler = create_sampler("gradnorm", SPACE, make_rng(0, "g"), uniform_share=1.0)
    for i in range(50):
        sampler.observe(sampler.sample(), float(i))
    assert set(sampler.probabilities("c0", (0, 1, 2, 3))) == {0.25}
    other = create_sampler("gradnorm", SPACE, make_rng(0, "g"), uniform_share=0.3)
    for i in range(50):
        other.observe(other.sample(), 1.0 + i % 7)
    state = other.state_dict()
    straight = []
    for i in range(5):
        arch = other.sample()
        other.observe(arch, 2.0 + i)
        straight.append(arch)
    restored = create_sampler("gradnorm", SPACE, make_rng(9, "x"), uniform_share=0.3)
    restored.load_state_dict(state)
    again = []
    for i in range(5):
        arch = restored.sample()
        restored.observe(arch, 2.0 + i)
        again.append(arch)
    assert again == straight and restored.norms == other.norms
