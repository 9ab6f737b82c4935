"""Evolutionary and random architecture search over an injected score function (SPEC section 4).

This module owns *which* architectures get evaluated, never *how*: a strategy receives a batch
score function ``score_fn(list[Arch]) -> list[float]`` (higher is better; in spos it is "BN
recalibration + held-out accuracy") and a feasibility predicate ``is_feasible(arch) -> bool``
(the FLOPs/params/latency/BitOps constraint), and proposes candidates with an explicit
``random.Random``.

:class:`Evolution` follows the paper and the official release: generation 0 is a random
feasible population; every later generation holds ``mutation_count`` mutations and
``crossover_count`` uniform crossovers of parents drawn from the global top-k of *everything
evaluated so far*, then random architectures up to ``population_size``. :class:`RandomSearch`
is the same-budget baseline. Both guarantee that

* candidates are checked with ``is_feasible`` before they are scored, never after;
* no architecture (by :attr:`spos.arch.Arch.key`) is scored twice: a duplicate proposal is
  discarded and redrawn. Proposals are first mapped to :meth:`SearchSpace.canonical
  <spos.space.SearchSpace.canonical>`, so relabelled copies of one network count as duplicates;
* every redraw loop is capped (``max_tries``), so an infeasible constraint raises
  :class:`~spos.errors.SposError` instead of spinning, and a nearly exhausted space yields a
  smaller generation with a logged warning. In a space small enough to enumerate
  (:data:`ENUMERATE_LIMIT`), random proposals that the capped draws cannot find are taken from
  the enumerated feasible networks, so a constraint that only a handful of architectures meet
  is still searched, and "infeasible" is only said when no architecture meets it;
* the population is at most the number of architectures in the space;
* each generation is scored in one ``score_fn`` call, so a caller can shard it across ranks
  (every rank runs the same strategy with the same seed and therefore proposes the same batch);
* the search is resumable: :meth:`state_dict` is plain JSON and a run stopped after any
  generation and resumed with :meth:`load_state_dict` ends exactly where an uninterrupted one
  does.

The module imports no torch (search and its tests run in milliseconds).
"""

from __future__ import annotations

import abc
import itertools
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from spos.arch import Arch
from spos.errors import ConfigError, SposError
from spos.space import SearchSpace

__all__ = [
    "ScoreFn",
    "FeasibilityFn",
    "GenerationResult",
    "SearchStrategy",
    "Evolution",
    "RandomSearch",
    "STRATEGY_NAMES",
    "ENUMERATE_LIMIT",
    "create_strategy",
    "pareto_front",
]

logger = logging.getLogger(__name__)

#: Scores a batch of architectures; returns one float per architecture, higher is better.
ScoreFn = Callable[[Sequence[Arch]], Sequence[float]]
#: Says whether an architecture satisfies the constraints (checked before scoring).
FeasibilityFn = Callable[[Arch], bool]

#: Names accepted by :func:`create_strategy`.
STRATEGY_NAMES = ("evolution", "random")

#: Version of the :meth:`state_dict` layout; bumped when its meaning changes.
_STATE_VERSION = 1
#: Draws allowed per wanted candidate when ``max_tries`` is not given.
_DEFAULT_TRIES_PER_CANDIDATE = 10
#: Spaces with at most this many architectures are enumerated when random draws fall short.
ENUMERATE_LIMIT = 200_000
#: Orders architectures with equal scores (lower first), e.g. their FLOPs.
TieBreakFn = Callable[[Arch], float]


@dataclass(frozen=True)
class GenerationResult:
    """What one :meth:`Evolution.step` / :meth:`RandomSearch.step` did.

    Attributes:
        generation: Index of the generation just evaluated (0-based).
        archs: The architectures evaluated in this generation, in evaluation order.
        scores: Their scores, aligned with ``archs``.
        wanted: How many candidates the generation asked for (``population_size``).
        proposals: How many candidates were drawn, including discarded duplicates and
            infeasible ones.
        best_arch: Best architecture over all generations so far.
        best_score: Its score.
        evaluations: Total number of architectures evaluated so far.
    """

    generation: int
    archs: tuple[Arch, ...]
    scores: tuple[float, ...]
    wanted: int
    proposals: int
    best_arch: Arch
    best_score: float
    evaluations: int


class SearchStrategy(Protocol):
    """The interface shared by :class:`Evolution` and :class:`RandomSearch`."""

    name: str

    @property
    def generation(self) -> int: ...

    @property
    def done(self) -> bool: ...

    @property
    def best(self) -> tuple[Arch, float]: ...

    @property
    def history(self) -> list[dict[str, Any]]: ...

    def step(self) -> GenerationResult: ...

    def run(self) -> tuple[Arch, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class _Candidate:
    """A proposal waiting to be scored, with where it came from (for the history)."""

    arch: Arch
    origin: str
    parents: tuple[str, ...]


def _always_feasible(arch: Arch) -> bool:
    return True


def _rng_state_to_json(rng: random.Random) -> list[Any]:
    version, internal, gauss_next = rng.getstate()
    return [version, list(internal), gauss_next]


def _rng_state_from_json(state: Sequence[Any]) -> tuple[Any, ...]:
    version, internal, gauss_next = state
    return (int(version), tuple(int(v) for v in internal), gauss_next)


class _Search(abc.ABC):
    """Shared machinery: capped proposal, dedup cache, batch scoring, history, resume.

    Subclasses set :attr:`name` and implement :meth:`_propose` and :meth:`_settings`.
    """

    name = ""

    def __init__(
        self,
        space: SearchSpace,
        score_fn: ScoreFn,
        *,
        is_feasible: FeasibilityFn | None,
        rng: random.Random,
        population_size: int,
        generations: int,
        max_tries: int | None,
        keep: int,
        tie_break: TieBreakFn | None = None,
    ) -> None:
        if not isinstance(rng, random.Random):
            raise TypeError("rng must be a random.Random (make one with spos.make_rng)")
        _check_positive("population_size", population_size)
        _check_positive("generations", generations)
        if max_tries is not None:
            _check_positive("max_tries", max_tries)
        if population_size > space.size():
            logger.warning(
                "population_size %d exceeds the %d architectures of space %r; using %d",
                population_size,
                space.size(),
                space.name,
                space.size(),
            )
            population_size = space.size()
        self.space = space
        self.score_fn = score_fn
        self.is_feasible = is_feasible if is_feasible is not None else _always_feasible
        self.rng = rng
        self.population_size = int(population_size)
        self.generations = int(generations)
        self.max_tries = None if max_tries is None else int(max_tries)
        self._keep = int(keep)
        self.tie_break = tie_break
        self._feasible_pool: list[Arch] | None = None  # enumerated on first need
        self._generation = 0
        self._scores: dict[str, float] = {}
        self._archs: dict[str, Arch] = {}
        self._history: list[dict[str, Any]] = []
        self._top_keys: list[str] = []

    # ------------------------------------------------------------------ public state
    @property
    def generation(self) -> int:
        """Number of generations evaluated so far (the index of the next one)."""
        return self._generation

    @property
    def done(self) -> bool:
        """True once ``generations`` generations have been evaluated."""
        return self._generation >= self.generations

    @property
    def evaluations(self) -> int:
        """Number of architectures scored so far (each exactly once)."""
        return len(self._history)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One JSON-able record per evaluated architecture, in evaluation order.

        Each record has ``index``, ``generation``, ``key``, ``arch`` (``{label: value}``),
        ``score``, ``origin`` (``"random"``, ``"mutation"`` or ``"crossover"``) and
        ``parents`` (keys of the parent architectures).
        """
        return [dict(record) for record in self._history]

    @property
    def best(self) -> tuple[Arch, float]:
        """The best architecture evaluated so far and its score.

        Ties go to the lowest ``tie_break`` value when one is given (e.g. the cheaper
        architecture), then to the earliest evaluated.
        """
        if not self._top_keys:
            raise RuntimeError("no architecture has been evaluated yet; call step() first")
        key = self._top_keys[0]
        return self._archs[key], self._scores[key]

    @property
    def top(self) -> list[tuple[Arch, float]]:
        """The best architectures so far, best first (the evolution's parent pool)."""
        return [(self._archs[key], self._scores[key]) for key in self._top_keys]

    # ------------------------------------------------------------------ the loop
    def step(self) -> GenerationResult:
        """Propose, filter, score and record one generation.

        Raises:
            SposError: In generation 0, when no feasible architecture is found within the
                draw cap (the constraint is probably infeasible).
            RuntimeError: When the search is already done.
        """
        if self.done:
            raise RuntimeError(f"{self.name} search already ran its {self.generations} generations")
        seen = set(self._scores)
        batch: list[_Candidate] = []
        proposals = self._propose(batch, seen)
        if not batch and self._generation == 0:
            if self._enumerable:
                raise SposError(
                    f"no architecture of space {self.space.name!r} satisfies the constraints "
                    f"(all {self.space.size()} checked); loosen them"
                )
            raise SposError(
                f"{self.name} search found no feasible architecture in {proposals} random "
                f"draws from space {self.space.name!r} ({self.space.size()} architectures): "
                "the constraints admit few or no architectures; loosen them, or raise "
                f"max_tries (search.max_tries, now {self._cap(self.population_size)}) to "
                "draw longer"
            )
        if len(batch) < self.population_size:
            logger.warning(
                "%s generation %d: found only %d of %d new feasible candidates in %d draws "
                "(space nearly exhausted or constraint tight); continuing with fewer",
                self.name,
                self._generation,
                len(batch),
                self.population_size,
                proposals,
            )
        scores = self._score(batch)
        self._record(batch, scores)
        best_arch, best_score = self.best
        result = GenerationResult(
            generation=self._generation,
            archs=tuple(c.arch for c in batch),
            scores=tuple(scores),
            wanted=self.population_size,
            proposals=proposals,
            best_arch=best_arch,
            best_score=best_score,
            evaluations=self.evaluations,
        )
        logger.info(
            "%s generation %d: %d evaluated (%d total), best %.6g",
            self.name,
            self._generation,
            len(batch),
            self.evaluations,
            best_score,
        )
        self._generation += 1
        return result

    def run(self) -> tuple[Arch, float]:
        """Run the remaining generations; return :attr:`best`."""
        while not self.done:
            self.step()
        return self.best

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as plain JSON-able data."""
        return {
            "strategy": self.name,
            "state_version": _STATE_VERSION,
            "space": self.space.name,
            "space_version": self.space.version,
            "space_fingerprint": self.space.fingerprint(),
            "settings": self._settings(),
            "generation": self._generation,
            "cache": [
                [[value for _, value in self._archs[key].values], score]
                for key, score in self._scores.items()
            ],
            "history": self.history,
            "top_k": list(self._top_keys),
            "rng_state": _rng_state_to_json(self.rng),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (also restores the state of ``rng``).

        ``generations`` may differ from the saved run (to extend a finished search); every
        other setting and the search space must match.

        Raises:
            SposError: The state belongs to another strategy, space or setting, or is
                malformed.
        """
        try:
            self._load(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise SposError(
                f"malformed {self.name} search state (missing or bad {exc}); delete it to "
                "restart the search"
            ) from None

    def _load(self, state: dict[str, Any]) -> None:
        if state["strategy"] != self.name:
            raise SposError(
                f"search state is for strategy {state['strategy']!r}, not {self.name!r}; "
                "use the same search.strategy as the run being resumed"
            )
        if int(state["state_version"]) > _STATE_VERSION:
            raise SposError(
                f"search state version {state['state_version']} is newer than this spos "
                f"understands ({_STATE_VERSION}); upgrade spos"
            )
        if state["space_fingerprint"] != self.space.fingerprint():
            raise SposError(
                f"search state is for space {state['space']!r} v{state['space_version']}, "
                f"which differs from {self.space.name!r} v{self.space.version}; resume with "
                "the space of the original run"
            )
        saved = dict(state["settings"])
        current = self._settings()
        for field_name in sorted(set(saved) | set(current)):
            if field_name != "generations" and saved.get(field_name) != current.get(field_name):
                raise SposError(
                    f"search state has {field_name}={saved.get(field_name)!r} but this run "
                    f"has {field_name}={current.get(field_name)!r}; resume with the "
                    "original search settings"
                )
        scores: dict[str, float] = {}
        archs: dict[str, Arch] = {}
        for values, score in state["cache"]:
            arch = self.space.arch(list(values))
            archs[arch.key] = arch
            scores[arch.key] = float(score)
        top_keys = [str(key) for key in state["top_k"]]
        history = [dict(record) for record in state["history"]]
        generation = int(state["generation"])
        if (
            any(key not in scores for key in top_keys)
            or len(history) != len(scores)
            or (generation > 0 and not top_keys)
        ):
            raise SposError(
                f"{self.name} search state is inconsistent (top-k or history do not match "
                "the cache); delete it to restart the search"
            )
        rng_state = _rng_state_from_json(state["rng_state"])
        # Commit only after everything parsed, so a bad state leaves this object untouched.
        self.rng.setstate(rng_state)
        self._generation = generation
        self._scores, self._archs = scores, archs
        self._top_keys, self._history = top_keys, history

    # ------------------------------------------------------------------ helpers
    @abc.abstractmethod
    def _propose(self, batch: list[_Candidate], seen: set[str]) -> int:
        """Append this generation's candidates to ``batch``; return the number of draws."""

    def _settings(self) -> dict[str, Any]:
        return {
            "population_size": self.population_size,
            "generations": self.generations,
            "max_tries": self.max_tries,
        }

    def _draw(
        self,
        make: Callable[[], _Candidate],
        *,
        wanted: int,
        batch: list[_Candidate],
        seen: set[str],
        enumerate_rest: bool = False,
    ) -> int:
        """Add up to ``wanted`` new feasible candidates from ``make``; return draws used.

        A candidate whose key is in ``seen`` (already evaluated, already in this batch, or
        already found infeasible) is discarded and redrawn; the number of draws is capped at
        ``max_tries`` (default: 10 per wanted candidate). With ``enumerate_rest`` (random
        proposals) a shortfall in an enumerable space is filled from the feasible networks
        not yet seen, drawn uniformly.
        """
        if wanted <= 0:
            return 0
        cap = self._cap(wanted)
        found = 0
        draws = 0
        while found < wanted and draws < cap:
            draws += 1
            candidate = make()
            canonical = self.space.canonical(candidate.arch)
            if canonical.key != candidate.arch.key:
                candidate = _Candidate(canonical, candidate.origin, candidate.parents)
            key = candidate.arch.key
            if key in seen:
                continue
            seen.add(key)
            if not self.is_feasible(candidate.arch):
                continue
            batch.append(candidate)
            found += 1
        if found < wanted and enumerate_rest and self._enumerable:
            rest = [arch for arch in self._feasible() if arch.key not in seen]
            for arch in self.rng.sample(rest, min(wanted - found, len(rest))):
                seen.add(arch.key)
                batch.append(_Candidate(arch, "random", ()))
        return draws

    def _cap(self, wanted: int) -> int:
        return self.max_tries if self.max_tries is not None else _DEFAULT_TRIES_PER_CANDIDATE * wanted

    @property
    def _enumerable(self) -> bool:
        return self.space.size() <= ENUMERATE_LIMIT

    def _feasible(self) -> list[Arch]:
        """Every feasible network of the (small) space, one per canonical form, in a fixed order."""
        if self._feasible_pool is None:
            pool: dict[str, Arch] = {}
            for values in itertools.product(*(choice.options for choice in self.space.choices)):
                arch = self.space.canonical(self.space.arch(list(values)))
                if arch.key not in pool and self.is_feasible(arch):
                    pool[arch.key] = arch
            self._feasible_pool = list(pool.values())
        return self._feasible_pool

    def _random_candidate(self) -> _Candidate:
        return _Candidate(self.space.sample(self.rng), "random", ())

    def _score(self, batch: list[_Candidate]) -> list[float]:
        if not batch:
            return []
        archs = [c.arch for c in batch]
        raw = list(self.score_fn(archs))
        if len(raw) != len(archs):
            raise SposError(
                f"score_fn returned {len(raw)} scores for {len(archs)} architectures; it "
                "must return one score per architecture, in order"
            )
        scores = [float(s) for s in raw]
        for arch, score in zip(archs, scores, strict=True):
            if math.isnan(score):
                raise SposError(
                    f"score_fn returned NaN for architecture {arch.short()}; check the "
                    "supernet checkpoint and the validation data"
                )
        return scores

    def _record(self, batch: list[_Candidate], scores: list[float]) -> None:
        for candidate, score in zip(batch, scores, strict=True):
            key = candidate.arch.key
            self._scores[key] = score
            self._archs[key] = candidate.arch
            self._history.append(
                {
                    "index": len(self._history),
                    "generation": self._generation,
                    "key": key,
                    "arch": dict(candidate.arch.items()),
                    "score": score,
                    "origin": candidate.origin,
                    "parents": list(candidate.parents),
                }
            )
        # Stable sort: equal scores (and tie-break values) keep evaluation order.
        merged = self._top_keys + [c.arch.key for c in batch]
        self._top_keys = sorted(merged, key=self._rank_key)[: self._keep]

    def _rank_key(self, key: str) -> tuple[float, float]:
        tie = self.tie_break(self._archs[key]) if self.tie_break is not None else 0.0
        return (-self._scores[key], tie)


def _check_positive(field_name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"search.{field_name} must be a positive integer, got {value!r}")


class Evolution(_Search):
    """Evolutionary search of the paper (SPEC section 4).

    Generation 0 draws ``population_size`` random feasible architectures. Every later
    generation draws ``mutation_count`` mutants (each gene resampled with probability
    ``mutation_prob``) of random parents and ``crossover_count`` uniform crossovers of two
    distinct random parents, the parents coming from the top ``top_k`` of everything evaluated
    so far, then fills up to ``population_size`` with random architectures.

    Args:
        space: The search space.
        score_fn: Scores a batch of architectures (higher is better); called once per
            generation with only new, feasible architectures.
        is_feasible: Constraint predicate applied before scoring; ``None`` accepts all.
        rng: The only source of randomness (e.g. ``make_rng(seed, "search")``); its state is
            part of :meth:`state_dict`.
        population_size: Architectures evaluated per generation.
        generations: Number of generations, the first one random.
        top_k: Size of the global parent pool.
        mutation_count: Mutants per generation.
        mutation_prob: Per-gene resampling probability of a mutation.
        crossover_count: Crossovers per generation.
        max_tries: Cap on draws in each proposal phase of a generation (random, mutation,
            crossover, random fill); ``None`` means 10 per wanted candidate.
        tie_break: Orders architectures of equal score, lower first (e.g. their FLOPs);
            ``None`` keeps the earliest evaluated first.

    Raises:
        ConfigError: A setting is out of range.
    """

    name = "evolution"

    def __init__(
        self,
        space: SearchSpace,
        score_fn: ScoreFn,
        *,
        is_feasible: FeasibilityFn | None = None,
        rng: random.Random,
        population_size: int = 50,
        generations: int = 20,
        top_k: int = 10,
        mutation_count: int = 25,
        mutation_prob: float = 0.1,
        crossover_count: int = 25,
        max_tries: int | None = None,
        tie_break: TieBreakFn | None = None,
    ) -> None:
        _check_positive("top_k", top_k)
        for field_name, value in (
            ("mutation_count", mutation_count),
            ("crossover_count", crossover_count),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"search.{field_name} must be an integer >= 0, got {value!r}")
        if mutation_count + crossover_count > population_size:
            raise ConfigError(
                f"search.mutation_count ({mutation_count}) + search.crossover_count "
                f"({crossover_count}) exceed search.population_size ({population_size}); "
                "lower them or raise the population size"
            )
        if not 0.0 <= float(mutation_prob) <= 1.0:
            raise ConfigError(f"search.mutation_prob must be in [0, 1], got {mutation_prob!r}")
        super().__init__(
            space,
            score_fn,
            is_feasible=is_feasible,
            rng=rng,
            population_size=population_size,
            generations=generations,
            max_tries=max_tries,
            keep=top_k,
            tie_break=tie_break,
        )
        self.top_k = int(top_k)
        self.mutation_count = int(mutation_count)
        self.mutation_prob = float(mutation_prob)
        self.crossover_count = int(crossover_count)

    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "top_k": self.top_k,
            "mutation_count": self.mutation_count,
            "mutation_prob": self.mutation_prob,
            "crossover_count": self.crossover_count,
        }

    def _propose(self, batch: list[_Candidate], seen: set[str]) -> int:
        if self._generation == 0:
            return self._draw(
                self._random_candidate, wanted=self.population_size, batch=batch, seen=seen, enumerate_rest=True
            )
        parents = [self._archs[key] for key in self._top_keys]

        def mutant() -> _Candidate:
            parent = self.rng.choice(parents)
            child = self.space.mutate(parent, self.rng, prob=self.mutation_prob)
            return _Candidate(child, "mutation", (parent.key,))

        def crossover() -> _Candidate:
            if len(parents) >= 2:
                first, second = self.rng.sample(parents, 2)
            else:
                first = second = parents[0]
            child = self.space.crossover(first, second, self.rng)
            return _Candidate(child, "crossover", (first.key, second.key))

        draws = self._draw(mutant, wanted=self.mutation_count, batch=batch, seen=seen)
        draws += self._draw(crossover, wanted=self.crossover_count, batch=batch, seen=seen)
        draws += self._draw(
            self._random_candidate,
            wanted=self.population_size - len(batch),
            batch=batch,
            seen=seen,
            enumerate_rest=True,
        )
        return draws


class RandomSearch(_Search):
    """Random-search baseline with the evolution's budget (SPEC section 4).

    Each generation draws ``population_size`` new random feasible architectures, so
    ``generations`` generations evaluate ``population_size * generations`` architectures,
    the same number as :class:`Evolution` with the same settings.

    Args:
        space: The search space.
        score_fn: Scores a batch of architectures (higher is better).
        is_feasible: Constraint predicate applied before scoring; ``None`` accepts all.
        rng: The only source of randomness; its state is part of :meth:`state_dict`.
        population_size: Architectures evaluated per generation (batch).
        generations: Number of batches.
        top_k: How many of the best architectures :attr:`top` keeps (reporting only).
        max_tries: Cap on draws per generation; ``None`` means 10 per wanted candidate.

    Raises:
        ConfigError: A setting is out of range.
    """

    name = "random"

    def __init__(
        self,
        space: SearchSpace,
        score_fn: ScoreFn,
        *,
        is_feasible: FeasibilityFn | None = None,
        rng: random.Random,
        population_size: int = 50,
        generations: int = 20,
        top_k: int = 10,
        max_tries: int | None = None,
        tie_break: TieBreakFn | None = None,
    ) -> None:
        _check_positive("top_k", top_k)
        super().__init__(
            space,
            score_fn,
            is_feasible=is_feasible,
            rng=rng,
            population_size=population_size,
            generations=generations,
            max_tries=max_tries,
            keep=top_k,
            tie_break=tie_break,
        )
        self.top_k = int(top_k)

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "top_k": self.top_k}

    def _propose(self, batch: list[_Candidate], seen: set[str]) -> int:
        return self._draw(
            self._random_candidate, wanted=self.population_size, batch=batch, seen=seen, enumerate_rest=True
        )


def create_strategy(
    name: str,
    space: SearchSpace,
    score_fn: ScoreFn,
    *,
    is_feasible: FeasibilityFn | None = None,
    rng: random.Random,
    population_size: int = 50,
    generations: int = 20,
    top_k: int = 10,
    mutation_count: int = 25,
    mutation_prob: float = 0.1,
    crossover_count: int = 25,
    max_tries: int | None = None,
    tie_break: TieBreakFn | None = None,
) -> SearchStrategy:
    """Create the search strategy ``name`` (``"evolution"`` or ``"random"``).

    One set of settings drives both, so a config switches strategy by name alone; the random
    baseline ignores the evolution-only settings (``mutation_*``, ``crossover_count``) and
    evaluates the same ``population_size * generations`` budget.

    Raises:
        ConfigError: Unknown name or a setting out of range.
    """
    if name == "evolution":
        return Evolution(
            space,
            score_fn,
            is_feasible=is_feasible,
            rng=rng,
            population_size=population_size,
            generations=generations,
            top_k=top_k,
            mutation_count=mutation_count,
            mutation_prob=mutation_prob,
            crossover_count=crossover_count,
            max_tries=max_tries,
            tie_break=tie_break,
        )
    if name == "random":
        return RandomSearch(
            space,
            score_fn,
            is_feasible=is_feasible,
            rng=rng,
            population_size=population_size,
            generations=generations,
            top_k=top_k,
            max_tries=max_tries,
            tie_break=tie_break,
        )
    raise ConfigError(f"unknown search.strategy {name!r}; choose one of {list(STRATEGY_NAMES)}")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when minimising cost and maximising score.

    A point is dominated when another one has cost <= and score >= with at least one strict.
    Exact duplicates of a front point are all kept.

    Args:
        points: ``(cost, score)`` pairs, e.g. ``(flops, accuracy)``.

    Returns:
        Indices into ``points`` of the front, by increasing cost (ties by index).

    Raises:
        ValueError: A cost or score is NaN.
    """
    for index, (cost, score) in enumerate(points):
        if math.isnan(cost) or math.isnan(score):
            raise ValueError(f"point {index} ({cost}, {score}) has a NaN; drop it first")
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best_score: float | None = None  # best score among strictly cheaper points
    position = 0
    while position < len(order):
        cost = points[order[position]][0]
        group_end = position
        while group_end < len(order) and points[order[group_end]][0] == cost:
            group_end += 1
        group_best = points[order[position]][1]  # group sorted by score, best first
        if best_score is None or group_best > best_score:
            front.extend(i for i in order[position:group_end] if points[i][1] == group_best)
            best_score = group_best
        position = group_end
    return front
