"""Evolutionary and random search on a toy space with a synthetic, noise-free score (SPEC 4)."""

from __future__ import annotations

import itertools
import json
import logging
import random
import statistics
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import wilcoxon

from spos.arch import Arch
from spos.errors import ConfigError, SposError
from spos.evolution import (
    STRATEGY_NAMES,
    Evolution,
    RandomSearch,
    create_strategy,
    pareto_front,
)
from spos.space import Choice, SearchSpace, make_rng

# Small settings with the paper's proportions (25 + 25 of 50, top 10) so the suite stays fast.
SMALL = {"population_size": 20, "generations": 8}
SMALL_EVOLUTION = {**SMALL, "top_k": 5, "mutation_count": 10, "crossover_count": 10}


def toy_space(genes: int = 12, options: int = 4) -> SearchSpace:
    choices = tuple(Choice(f"gene_{i:02d}", tuple(range(options))) for i in range(genes))
    return SearchSpace("toy", 1, "toy", choices)


class ToyObjective:
    """Per-gene values plus adjacent-gene interactions; counts every architecture scored."""

    def __init__(self, space: SearchSpace, *, seed: int = 123) -> None:
        rng = random.Random(seed)
        genes = len(space.choices)
        options = len(space.choices[0].options)
        self.space = space
        self.gene_values = [[rng.uniform(0, 1) for _ in range(options)] for _ in range(genes)]
        self.pair_values = [
            [[rng.uniform(0, 0.5) for _ in range(options)] for _ in range(options)]
            for _ in range(genes - 1)
        ]
        self.scored: list[Arch] = []
        self.calls = 0

    def value(self, arch: Arch) -> float:
        index = self.space.indices(arch)
        single = sum(self.gene_values[g][i] for g, i in enumerate(index))
        pairs = sum(self.pair_values[g][index[g]][index[g + 1]] for g in range(len(index) - 1))
        return single + pairs

    def __call__(self, archs: list[Arch]) -> list[float]:
        self.calls += 1
        self.scored.extend(archs)
        return [self.value(arch) for arch in archs]


def half_space_constraint(space: SearchSpace):
    """Feasible iff the option indices sum to at most the mean: about half of the space."""
    limit = sum(len(c.options) - 1 for c in space.choices) / 2

    def is_feasible(arch: Arch) -> bool:
        return sum(space.indices(arch)) <= limit

    return is_feasible


def make_strategy(name: str, space: SearchSpace, score_fn, *, seed: int, **options):
    merged = {**(SMALL_EVOLUTION if name == "evolution" else SMALL), **options}
    return create_strategy(name, space, score_fn, rng=make_rng(seed, f"search-{name}"), **merged)


# ---------------------------------------------------------------------------- boundaries
def test_module_imports_no_torch():
    code = "import sys, spos.evolution; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------------------- quality
def test_evolution_beats_random_search_at_equal_budget():
    space = toy_space()
    evolution_best, random_best = [], []
    for seed in range(12):
        evolution = make_strategy("evolution", space, ToyObjective(space), seed=seed)
        baseline = make_strategy("random", space, ToyObjective(space), seed=seed)
        evolution_best.append(evolution.run()[1])
        random_best.append(baseline.run()[1])
        assert len(evolution.history) == len(baseline.history) == 20 * 8
    # Paired one-sided Wilcoxon signed-rank test over 12 seeds (exact distribution).
    result = wilcoxon(evolution_best, random_best, alternative="greater")
    assert result.pvalue < 0.05, (evolution_best, random_best, result)
    assert statistics.mean(evolution_best) > statistics.mean(random_best)


# ---------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_no_evaluated_arch_violates_the_constraint(name):
    space = toy_space()
    is_feasible = half_space_constraint(space)
    draws = [is_feasible(space.sample(make_rng(i, "probe"))) for i in range(400)]
    assert 0.35 < sum(draws) / len(draws) < 0.65  # the constraint really rejects ~half
    objective = ToyObjective(space)
    strategy = make_strategy(name, space, objective, seed=3, is_feasible=is_feasible)
    strategy.run()
    assert len(objective.scored) == 20 * 8
    assert all(is_feasible(arch) for arch in objective.scored)
    assert all(is_feasible(space.arch(record["arch"])) for record in strategy.history)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_no_architecture_is_scored_twice(name):
    space = toy_space(genes=4, options=3)  # 81 architectures, 60 evaluations: many repeats
    objective = ToyObjective(space)
    strategy = make_strategy(
        name,
        space,
        objective,
        seed=5,
        population_size=10,
        generations=6,
        top_k=3,
        **({"mutation_count": 4, "crossover_count": 4} if name == "evolution" else {}),
    )
    strategy.run()
    keys = [arch.key for arch in objective.scored]
    assert len(keys) == len(set(keys)) == len(strategy.history) == 60
    assert objective.calls == 6  # one batch per generation


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_relabelled_copies_of_one_network_are_scored_once(name):
    """NB201 cells differing only on edges into dead nodes are one network: one evaluation."""
    from spos.space import create_space

    space = create_space("nb201")
    objective = ToyObjective(space)
    strategy = make_strategy(name, space, objective, seed=3, population_size=20, generations=5, top_k=5)
    strategy.run()
    assert all(space.canonical(arch) == arch for arch in objective.scored)
    keys = [arch.key for arch in objective.scored]
    assert len(keys) == len(set(keys)) == 100
    # Without the canonical form, uniform draws repeat networks: about 22% of cells are copies.
    rng = make_rng(3, "copies")
    draws = [space.sample(rng) for _ in range(100)]
    assert len({space.canonical(a).key for a in draws}) < len({a.key for a in draws})


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_exhausted_space_continues_with_fewer_and_warns(name, caplog):
    space = toy_space(genes=3, options=2)  # 8 architectures, budget 5 x 4 = 20
    objective = ToyObjective(space)
    strategy = make_strategy(
        name,
        space,
        objective,
        seed=1,
        population_size=5,
        generations=4,
        top_k=2,
        **({"mutation_count": 2, "crossover_count": 2} if name == "evolution" else {}),
    )
    with caplog.at_level(logging.WARNING, logger="spos.evolution"):
        strategy.run()
    keys = {arch.key for arch in objective.scored}
    assert len(objective.scored) == len(keys) == 8
    assert strategy.done and strategy.generation == 4
    assert any("continuing with fewer" in message for message in caplog.messages)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
@pytest.mark.parametrize("max_tries", [None, 7])
def test_infeasible_constraint_raises_within_the_cap(name, max_tries):
    calls = Counter()

    def never(arch: Arch) -> bool:
        calls["is_feasible"] += 1
        return False

    objective = ToyObjective(toy_space())
    strategy = make_strategy(
        name, toy_space(), objective, seed=0, is_feasible=never, max_tries=max_tries
    )
    cap = 10 * 20 if max_tries is None else max_tries
    with pytest.raises(SposError, match="admit few or no architectures") as error:
        strategy.step()
    assert f"{cap} random draws" in str(error.value)
    assert f"search.max_tries, now {cap}" in str(error.value)
    assert calls["is_feasible"] == cap
    assert objective.calls == 0


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_a_rare_feasible_set_in_a_small_space_is_found(name):
    space = toy_space(genes=6, options=4)  # 4,096 architectures, 3 of them feasible
    wanted = {(3, 3, 3, 3, 3, 3), (0, 1, 2, 3, 0, 1), (2, 2, 2, 2, 2, 1)}
    objective = ToyObjective(space)
    strategy = make_strategy(
        name,
        space,
        objective,
        seed=0,
        is_feasible=lambda arch: space.indices(arch) in wanted,
        max_tries=5,  # rejection sampling alone would almost surely find none
        population_size=4,
        generations=2,
        top_k=2,
        **({"mutation_count": 1, "crossover_count": 1} if name == "evolution" else {}),
    )
    strategy.run()
    assert {space.indices(arch) for arch in objective.scored} == wanted


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_infeasibility_is_proven_in_a_small_space(name):
    space = toy_space(genes=5, options=3)
    strategy = make_strategy(name, space, ToyObjective(space), seed=0, is_feasible=lambda arch: False)
    with pytest.raises(SposError, match=r"no architecture of space 'toy' satisfies the constraints \(all 243 checked\)"):
        strategy.step()


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_a_population_larger_than_the_space_is_capped(name, caplog):
    space = toy_space(genes=2, options=2)  # 4 architectures
    objective = ToyObjective(space)
    with caplog.at_level(logging.WARNING, logger="spos.evolution"):
        strategy = make_strategy(
            name,
            space,
            objective,
            seed=0,
            population_size=1_000_000,
            generations=3,
            top_k=2,
            **({"mutation_count": 1, "crossover_count": 1} if name == "evolution" else {}),
        )
        strategy.run()
    assert strategy.population_size == 4 and len(objective.scored) == 4
    assert any("exceeds the 4 architectures" in message for message in caplog.messages)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_score_ties_go_to_the_lower_tie_break_value(name):
    space = toy_space(genes=3, options=3)
    cost = {values: sum(values) for values in itertools.product(range(3), repeat=3)}

    def flat(archs):
        return [1.0] * len(archs)

    kwargs = {"mutation_count": 2, "crossover_count": 2} if name == "evolution" else {}
    plain = create_strategy(name, space, flat, rng=make_rng(0, "t"), population_size=6, generations=2, top_k=3, **kwargs)
    plain.run()
    cheap = create_strategy(
        name, space, flat, rng=make_rng(0, "t"), population_size=6, generations=2, top_k=3,
        tie_break=lambda arch: cost[space.indices(arch)], **kwargs,
    )
    cheap.run()
    first = plain.history[0]["key"]
    assert plain.best[0].key == first  # without a tie-break the earliest wins
    evaluated = [space.indices(space.arch(list(record["arch"].values()))) for record in cheap.history]
    assert space.indices(cheap.best[0]) == min(evaluated, key=lambda values: cost[values])


def test_generation_composition_and_global_top_k():
    space = toy_space()
    evolution = make_strategy("evolution", space, ToyObjective(space), seed=11)
    evolution.run()
    history = evolution.history
    for generation in range(8):
        records = [r for r in history if r["generation"] == generation]
        origins = Counter(r["origin"] for r in records)
        if generation == 0:
            assert origins == {"random": 20}
            continue
        # Mutants and crossovers as configured; random fill covers any shortfall (a converged
        # top-k can run out of new crossovers within the draw cap).
        assert origins["mutation"] <= 10 and origins["crossover"] <= 10
        assert sum(origins.values()) == 20
        if generation == 1:
            assert origins == {"mutation": 10, "crossover": 10}
        # Parents come from the top 5 of *all* earlier generations, not just the last one.
        earlier = [r for r in history if r["generation"] < generation]
        pool = {r["key"] for r in sorted(earlier, key=lambda r: -r["score"])[:5]}
        for record in records:
            assert set(record["parents"]) <= pool
            expected_parents = {"mutation": 1, "crossover": 2, "random": 0}[record["origin"]]
            assert len(record["parents"]) == expected_parents
    best_arch, best_score = evolution.best
    assert best_score == max(r["score"] for r in history)
    assert best_arch.key == max(history, key=lambda r: r["score"])["key"]


# ---------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_same_seed_same_result(name):
    space = toy_space()
    first = make_strategy(name, space, ToyObjective(space), seed=7)
    second = make_strategy(name, space, ToyObjective(space), seed=7)
    other = make_strategy(name, space, ToyObjective(space), seed=8)
    assert first.run() == second.run()
    assert first.history == second.history
    other.run()
    assert other.history != first.history


@pytest.mark.parametrize("name", STRATEGY_NAMES)
@pytest.mark.parametrize("stop_after", [1, 3, 7])
def test_resume_gives_the_same_result(name, stop_after):
    space = toy_space()
    is_feasible = half_space_constraint(space)
    uninterrupted = make_strategy(name, space, ToyObjective(space), seed=2, is_feasible=is_feasible)
    uninterrupted.run()

    stopped = make_strategy(name, space, ToyObjective(space), seed=2, is_feasible=is_feasible)
    for _ in range(stop_after):
        stopped.step()
    saved = json.loads(json.dumps(stopped.state_dict(), allow_nan=False))

    objective = ToyObjective(space)
    resumed = make_strategy(name, space, objective, seed=999, is_feasible=is_feasible)
    resumed.load_state_dict(saved)
    assert resumed.generation == stop_after
    resumed.run()
    assert resumed.best == uninterrupted.best
    assert resumed.history == uninterrupted.history
    assert resumed.state_dict() == uninterrupted.state_dict()
    assert len(objective.scored) == 20 * (8 - stop_after)  # nothing re-scored after resume


def test_resume_refuses_other_settings_and_allows_more_generations():
    space = toy_space()
    evolution = make_strategy("evolution", space, ToyObjective(space), seed=4)
    evolution.step()
    state = evolution.state_dict()
    with pytest.raises(SposError, match="top_k"):
        make_strategy("evolution", space, ToyObjective(space), seed=4, top_k=6).load_state_dict(
            state
        )
    with pytest.raises(SposError, match="strategy"):
        make_strategy("random", space, ToyObjective(space), seed=4).load_state_dict(state)
    with pytest.raises(SposError, match="space"):
        make_strategy("evolution", toy_space(genes=5), ToyObjective(space), seed=4).load_state_dict(
            state
        )
    with pytest.raises(SposError, match="malformed"):
        make_strategy("evolution", space, ToyObjective(space), seed=4).load_state_dict(
            {**state, "cache": None}
        )
    longer = make_strategy("evolution", space, ToyObjective(space), seed=4, generations=10)
    longer.load_state_dict(state)
    longer.run()
    assert len(longer.history) == 20 * 10


# ---------------------------------------------------------------------------- misuse
def test_bad_settings_and_score_functions_fail_clearly():
    space = toy_space()
    objective = ToyObjective(space)
    with pytest.raises(ConfigError, match="exceed search.population_size"):
        Evolution(space, objective, rng=random.Random(0), population_size=40)
    with pytest.raises(ConfigError, match="population_size"):
        RandomSearch(space, objective, rng=random.Random(0), population_size=0)
    with pytest.raises(ConfigError, match="unknown search.strategy"):
        create_strategy("annealing", space, objective, rng=random.Random(0))
    with pytest.raises(SposError, match="one score per architecture"):
        make_strategy("random", space, lambda archs: [1.0], seed=0).step()
    with pytest.raises(SposError, match="NaN"):
        make_strategy("random", space, lambda archs: [float("nan")] * len(archs), seed=0).step()
    finished = make_strategy("random", space, objective, seed=0, generations=1)
    finished.run()
    with pytest.raises(RuntimeError, match="already ran"):
        finished.step()


def test_paper_defaults():
    evolution = Evolution(toy_space(), ToyObjective(toy_space()), rng=random.Random(0))
    assert (evolution.population_size, evolution.generations, evolution.top_k) == (50, 20, 10)
    assert (evolution.mutation_count, evolution.crossover_count) == (25, 25)
    assert evolution.mutation_prob == 0.1


# ---------------------------------------------------------------------------- pareto front
def brute_force_front(points: list[tuple[float, float]]) -> set[int]:
    front = set()
    for i, (cost_i, score_i) in enumerate(points):
        dominated = any(
            cost_j <= cost_i and score_j >= score_i and (cost_j < cost_i or score_j > score_i)
            for cost_j, score_j in points
        )
        if not dominated:
            front.add(i)
    return front


coordinates = st.one_of(
    st.integers(0, 5).map(float),  # many ties
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([float("inf"), float("-inf")]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(coordinates, coordinates), max_size=25))
def test_pareto_front_matches_brute_force(points):
    front = pareto_front(points)
    assert set(front) == brute_force_front(points)
    assert len(front) == len(set(front))
    assert front == sorted(front, key=lambda i: (points[i][0], i))


def test_pareto_front_example():
    points = [(3.0, 0.70), (1.0, 0.50), (2.0, 0.50), (2.0, 0.65), (4.0, 0.70), (1.0, 0.50)]
    assert pareto_front(points) == [1, 5, 3, 0]
    assert pareto_front([]) == []
    with pytest.raises(ValueError, match="NaN"):
        pareto_front([(1.0, float("nan"))])
