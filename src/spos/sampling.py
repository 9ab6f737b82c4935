"""Path samplers for supernet training (SPEC section 3).

One architecture is drawn per optimiser step. Three strategies:

* ``uniform``: every choice independently and uniformly (the paper's core idea);
* ``constraint``: the paper's default *uniform constraint sampling*: pick one of the FLOPs bins
  uniformly, then rejection-sample uniform paths until one lands in it (capped; after the cap
  a uniform path is used and the fallback is counted);
* ``fair``: FairNAS-style strict fairness: within every window of k steps (k = options per
  choice) each option of every choice is used exactly once.

Samplers are torch-free, take an explicit ``random.Random`` and expose JSON-able
``state_dict``/``load_state_dict`` so a resumed run draws the same paths. Every sampler
records coverage: how often each option of each choice was trained.

A :class:`ChoiceSchedule` restricts some choices during early training and widens them step by
step: the convergence aid of width supernets (issue 7), whose narrow paths make training
diverge when sampled from the first step. Channel search holds every ``width_XX`` at scale 1.0
for a warm-up, then admits the scales nearest to 1.0 first until all eight are sampled. Any
space can use it: the schedule names choices by label prefix and an anchor option.
"""

from __future__ import annotations

import abc
import math
import random
from collections.abc import Callable
from typing import Any

from spos.arch import Arch, Value
from spos.errors import ConfigError
from spos.space import SearchSpace

__all__ = [
    "register_sampler",
    "list_samplers",
    "ChoiceSchedule",
    "PathSampler",
    "UniformSampler",
    "ConstraintSampler",
    "FairSampler",
    "GradNormSampler",
    "create_sampler",
]


def _rng_state_to_json(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_state_from_json(rng: random.Random, state: list[Any]) -> None:
    version, internal, gauss = state
    rng.setstate((int(version), tuple(int(v) for v in internal), gauss))


class ChoiceSchedule:
    """Which options some choices may take at each training step (warm-up, then widening).

    Choices whose label starts with ``prefix`` take only ``anchor`` for the first
    ``warmup_steps`` steps. Over the next ``widen_steps`` steps the number of allowed options
    grows linearly to all of them, adding options in order of their distance from the anchor
    in the choice's option list (ties: the earlier option first); with ``widen_steps=0`` every
    option is allowed right after the warm-up. Other choices are never restricted.

    Args:
        space: The search space.
        prefix: Label prefix of the restricted choices, e.g. ``"width_"``.
        anchor: The option they start from, e.g. ``1.0`` (full width).
        warmup_steps: Steps with only the anchor allowed.
        widen_steps: Steps over which the allowed set grows to every option.

    Raises:
        ConfigError: If no choice has the prefix, one lacks the anchor, or a step count is
            negative.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        prefix: str,
        anchor: Value,
        warmup_steps: int,
        widen_steps: int = 0,
    ) -> None:
        if warmup_steps < 0 or widen_steps < 0:
            raise ConfigError(
                f"choice schedule steps must be >= 0 (warm-up {warmup_steps}, widening {widen_steps})"
            )
        restricted = [c for c in space.choices if c.label.startswith(prefix)]
        if not restricted:
            raise ConfigError(
                f"supernet.sampler.warmup_prefix {prefix!r} matches no choice of space "
                f"{space.name!r} (labels: {list(space.labels)[:4]}...); set it to the label "
                "prefix of the choices to warm up, or disable the warm-up"
            )
        self.ranked: dict[str, tuple[Value, ...]] = {}
        for choice in restricted:
            if anchor not in choice.options:
                raise ConfigError(
                    f"supernet.sampler.warmup_option {anchor!r} is not an option of "
                    f"{choice.label!r} (options {list(choice.options)})"
                )
            start = choice.options.index(anchor)
            order = sorted(range(len(choice.options)), key=lambda i, s=start: (abs(i - s), i))
            self.ranked[choice.label] = tuple(choice.options[i] for i in order)
        self.prefix, self.anchor = prefix, anchor
        self.warmup_steps, self.widen_steps = int(warmup_steps), int(widen_steps)

    def allowed(self, step: int) -> dict[str, tuple[Value, ...]]:
        """``{label: allowed options}`` of the restricted choices at ``step`` (0-based)."""
        result = {}
        for label, ranked in self.ranked.items():
            count = len(ranked)
            if step < self.warmup_steps:
                count = 1
            elif step < self.warmup_steps + self.widen_steps:
                count = 1 + (len(ranked) - 1) * (step - self.warmup_steps) // self.widen_steps
            result[label] = ranked[:count]
        return result

    def is_restricted(self, step: int) -> bool:
        """Whether some choice is still restricted at ``step``."""
        return step < self.warmup_steps + self.widen_steps


class PathSampler(abc.ABC):
    """Base class: draws paths, counts coverage, saves and restores its state.

    Args:
        space: The search space.
        rng: Random generator.
        schedule: Optional restriction of some choices early in training; ``None`` samples
            the whole space from the first step.
        distinct_networks: Draw uniformly over distinct networks (canonical forms) instead
            of over labelings, by rejecting every path that is not its own canonical form:
            each network's representative is then equally likely (de-isomorphic sampling).
    """

    #: Rejections before a distinct-network draw gives up and trains the canonical form of
    #: its last path (NB201 accepts 78% of uniform paths; only a pathological form gets here).
    DISTINCT_MAX_TRIES = 1000

    def __init__(
        self,
        space: SearchSpace,
        rng: random.Random,
        *,
        schedule: ChoiceSchedule | None = None,
        distinct_networks: bool = False,
    ) -> None:
        self.space = space
        self.rng = rng
        self.schedule = schedule
        self.distinct_networks = distinct_networks
        self.coverage: dict[str, dict[str, int]] = {
            c.label: {str(o): 0 for o in c.options} for c in space.choices
        }
        self.steps = 0

    @abc.abstractmethod
    def _draw(self) -> Arch:
        """One path, before coverage is counted."""

    def _labeling(self) -> Arch:
        """A uniform labeling among the options the schedule allows at the current step."""
        if self.schedule is None or not self.schedule.is_restricted(self.steps):
            return self.space.sample(self.rng)
        allowed = self.schedule.allowed(self.steps)
        return self.space.arch(
            [self.rng.choice(allowed.get(c.label, c.options)) for c in self.space.choices]
        )

    def _uniform(self) -> Arch:
        """A uniform path: over labelings, or over distinct networks when asked."""
        for _ in range(self.DISTINCT_MAX_TRIES):
            arch = self._labeling()
            if not self.distinct_networks:
                return arch
            canonical = self.space.canonical(arch)
            if canonical == arch:
                return arch
        return canonical

    #: Whether the training loop should report each step's gradient norm (:meth:`observe`).
    uses_feedback = False

    def observe(self, arch: Arch, grad_norm: float) -> None:  # noqa: B027 - a no-op by default, not abstract
        """Feedback after the step on ``arch``: the path's (pre-clip) gradient norm. Samplers
        that set :attr:`uses_feedback` use it; the default ignores it."""

    def sample(self) -> Arch:
        """The path for the next optimiser step (recorded in the coverage counts)."""
        arch = self._draw()
        for label, value in arch.items():
            self.coverage[label][str(value)] += 1
        self.steps += 1
        return arch

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": _rng_state_to_json(self.rng),
            "coverage": {k: dict(v) for k, v in self.coverage.items()},
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _rng_state_from_json(self.rng, state["rng"])
        self.coverage = {k: {o: int(n) for o, n in v.items()} for k, v in state["coverage"].items()}
        self.steps = int(state["steps"])

    def stats(self) -> dict[str, Any]:
        """Summary figures for logs (subclasses add their own)."""
        counts = [n for options in self.coverage.values() for n in options.values()]
        return {"coverage_min": min(counts), "coverage_max": max(counts)}


class UniformSampler(PathSampler):
    """Every choice uniformly and independently (or every distinct network uniformly)."""

    def _draw(self) -> Arch:
        return self._uniform()


class ConstraintSampler(PathSampler):
    """Uniform constraint sampling over FLOPs bins (the paper's default).

    Args:
        space: The search space.
        rng: Random generator.
        flops: ``arch -> FLOPs`` (a table lookup from :class:`spos.cost.CostModel`).
        low: Lower edge of the allowed FLOPs range.
        high: Upper edge of the allowed FLOPs range.
        bins: Number of equal-width bins.
        max_tries: Rejection-sampling tries before falling back to a uniform path.
        schedule: Optional choice restriction; candidates are drawn among the allowed
            options, so bins out of reach during a warm-up count as fallbacks.
    """

    def __init__(
        self,
        space: SearchSpace,
        rng: random.Random,
        *,
        flops: Callable[[Arch], float],
        low: float,
        high: float,
        bins: int,
        max_tries: int,
        schedule: ChoiceSchedule | None = None,
        distinct_networks: bool = False,
    ) -> None:
        super().__init__(space, rng, schedule=schedule, distinct_networks=distinct_networks)
        if not low < high:
            raise ConfigError(f"constraint sampling needs flops_min < flops_max (got {low}, {high})")
        self.flops = flops
        width = (high - low) / bins
        self.edges = [(low + i * width, low + (i + 1) * width) for i in range(bins)]
        self.max_tries = max_tries
        self.fallbacks = 0

    def _draw(self) -> Arch:
        index = self.rng.randrange(len(self.edges))
        low, high = self.edges[index]
        last = index == len(self.edges) - 1
        for _ in range(self.max_tries):
            arch = self._uniform()
            value = self.flops(arch)
            if low <= value < high or (last and value == high):  # half-open bins
                return arch
        self.fallbacks += 1
        return arch

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "fallbacks": self.fallbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.fallbacks = int(state["fallbacks"])

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "sampler_fallbacks": self.fallbacks}


class FairSampler(PathSampler):
    """Strict fairness: each option of every choice exactly once per window of k steps.

    Choices with fewer options than the largest one cycle through theirs more often; the
    window length is the largest option count. While a :class:`ChoiceSchedule` restricts some
    choices, those draw uniformly among their allowed options and every other choice stays
    strictly fair (fairness over a changing option set is not defined).
    """

    def __init__(
        self, space: SearchSpace, rng: random.Random, *, schedule: ChoiceSchedule | None = None
    ) -> None:
        super().__init__(space, rng, schedule=schedule)
        self.window = max(len(c.options) for c in space.choices)
        self.orders: list[list[int]] = []

    def _new_window(self) -> None:
        self.orders = []
        for c in self.space.choices:
            order: list[int] = []
            while len(order) < self.window:
                block = list(range(len(c.options)))
                self.rng.shuffle(block)
                order.extend(block)
            self.orders.append(order[: self.window])

    def _draw(self) -> Arch:
        position = self.steps % self.window
        if position == 0 or not self.orders:
            self._new_window()
        arch = self.space.from_indices([order[position] for order in self.orders])
        if self.schedule is None or not self.schedule.is_restricted(self.steps):
            return arch
        allowed = self.schedule.allowed(self.steps)
        return self.space.arch(
            [self.rng.choice(allowed[label]) if label in allowed else value for label, value in arch.items()]
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "orders": [list(o) for o in self.orders]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.orders = [[int(i) for i in o] for o in state["orders"]]


class GradNormSampler(PathSampler):
    """Gradient-norm-guided sampling (PA&DA, Lu et al., CVPR 2023), mixed with uniform.

    Sampling a path in proportion to the norm of its gradient lowers the variance of the
    supernet's gradient estimate. Per choice, each option keeps a running mean of the
    (pre-clip) gradient norm of the paths it was on; the option is drawn with probability
    ``uniform_share / K + (1 - uniform_share) * g_o / sum(g)`` over the choice's ``K`` options.
    An option not yet observed counts as its choice's largest running mean, so everything is
    tried early. Under torchrun every rank sees the same all-reduced gradient norm, so the
    ranks keep drawing the same paths. Reading the norm costs one host sync per step.

    Args:
        uniform_share: Share of the probability spread uniformly (1.0: plain uniform).
        decay: Decay of the running means.
    """

    uses_feedback = True

    def __init__(
        self,
        space: SearchSpace,
        rng: random.Random,
        *,
        uniform_share: float = 0.5,
        decay: float = 0.99,
        schedule: ChoiceSchedule | None = None,
        distinct_networks: bool = False,
    ) -> None:
        super().__init__(space, rng, schedule=schedule, distinct_networks=distinct_networks)
        self.uniform_share = uniform_share
        self.decay = decay
        self.norms: dict[str, dict[str, float]] = {c.label: {} for c in space.choices}

    def probabilities(self, label: str, options: tuple[Value, ...]) -> list[float]:
        """Sampling probabilities of ``options`` of the choice ``label`` (they sum to 1)."""
        seen = self.norms[label]
        fallback = max(seen.values(), default=1.0)
        norms = [seen.get(str(o), fallback) for o in options]
        total = sum(norms)
        share = self.uniform_share
        if total <= 0:
            return [1.0 / len(options)] * len(options)
        return [share / len(options) + (1 - share) * n / total for n in norms]

    def _labeling(self) -> Arch:
        allowed = self.schedule.allowed(self.steps) if self.schedule is not None else {}
        values = []
        for c in self.space.choices:
            options = tuple(allowed.get(c.label, c.options))
            values.append(self.rng.choices(options, weights=self.probabilities(c.label, options))[0])
        return self.space.arch(values)

    def _draw(self) -> Arch:
        return self._uniform()

    def observe(self, arch: Arch, grad_norm: float) -> None:  # noqa: B027 - a no-op by default, not abstract
        if not math.isfinite(grad_norm):  # the divergence check stops training; keep the means
            return
        for label, value in arch.items():
            seen = self.norms[label]
            key = str(value)
            old = seen.get(key)
            seen[key] = grad_norm if old is None else self.decay * old + (1 - self.decay) * grad_norm

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "norms": {k: dict(v) for k, v in self.norms.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.norms = {k: {o: float(n) for o, n in v.items()} for k, v in state["norms"].items()}

    def stats(self) -> dict[str, Any]:
        """Adds the smallest and largest option probability over all choices."""
        probs = [p for c in self.space.choices for p in self.probabilities(c.label, c.options)]
        return {**super().stats(), "sampler_p_min": round(min(probs), 4), "sampler_p_max": round(max(probs), 4)}


#: Builds a sampler: ``factory(space, rng, *, flops, flops_range, bins, max_tries, schedule,
#: distinct_networks)``; a factory uses the options it needs and ignores the others.
SamplerFactory = Callable[..., PathSampler]
_SAMPLERS: dict[str, SamplerFactory] = {}


def register_sampler(name: str) -> Callable[[SamplerFactory], SamplerFactory]:
    """Register a path sampler under ``name`` (``supernet.sampler.name`` selects it).

    Adding a sampler is one class (a :class:`PathSampler`) and one registered factory here;
    its settings come from the ``supernet.sampler`` section.
    """

    def decorate(factory: SamplerFactory) -> SamplerFactory:
        if name in _SAMPLERS:
            raise ValueError(f"a sampler named {name!r} is already registered")
        _SAMPLERS[name] = factory
        return factory

    return decorate


def list_samplers() -> list[str]:
    """Names of the registered path samplers."""
    return sorted(_SAMPLERS)


@register_sampler("uniform")
def _uniform(space: SearchSpace, rng: random.Random, *, schedule=None, distinct_networks=False, **_: Any) -> PathSampler:
    return UniformSampler(space, rng, schedule=schedule, distinct_networks=distinct_networks)


@register_sampler("fair")
def _fair(space: SearchSpace, rng: random.Random, *, schedule=None, distinct_networks=False, **_: Any) -> PathSampler:
    if distinct_networks:
        raise ConfigError("distinct-network sampling works with the uniform and constraint samplers, not fair")
    return FairSampler(space, rng, schedule=schedule)


@register_sampler("constraint")
def _constraint(
    space: SearchSpace,
    rng: random.Random,
    *,
    flops=None,
    flops_range=None,
    bins: int = 7,
    max_tries: int = 100,
    schedule=None,
    distinct_networks: bool = False,
    **_: Any,
) -> PathSampler:
    if flops is None or flops_range is None:
        raise ConfigError("constraint sampling needs a FLOPs function and range")
    low, high = flops_range
    return ConstraintSampler(
        space,
        rng,
        flops=flops,
        low=low,
        high=high,
        bins=bins,
        max_tries=max_tries,
        schedule=schedule,
        distinct_networks=distinct_networks,
    )


@register_sampler("gradnorm")
def _gradnorm(
    space: SearchSpace,
    rng: random.Random,
    *,
    schedule=None,
    distinct_networks: bool = False,
    uniform_share: float = 0.5,
    gradnorm_decay: float = 0.99,
    **_: Any,
) -> PathSampler:
    return GradNormSampler(
        space,
        rng,
        uniform_share=uniform_share,
        decay=gradnorm_decay,
        schedule=schedule,
        distinct_networks=distinct_networks,
    )


def create_sampler(
    name: str,
    space: SearchSpace,
    rng: random.Random,
    *,
    flops: Callable[[Arch], float] | None = None,
    flops_range: tuple[float, float] | None = None,
    bins: int = 7,
    max_tries: int = 100,
    schedule: ChoiceSchedule | None = None,
    distinct_networks: bool = False,
    **options: Any,
) -> PathSampler:
    """Build the registered sampler ``name`` (built in: ``uniform``, ``constraint``, ``fair``,
    ``gradnorm``); ``options`` go to the factory as keywords (gradnorm: ``uniform_share``,
    ``gradnorm_decay``).

    ``schedule`` restricts some choices early in training (under ``fair`` the restricted
    choices draw uniformly among their allowed options, the others stay strictly fair).
    ``distinct_networks`` draws uniformly over canonical forms (``uniform``, ``constraint``).
    """
    factory = _SAMPLERS.get(name)
    if factory is None:
        raise ConfigError(f"unknown sampler {name!r}; registered: {list_samplers()}")
    return factory(
        space,
        rng,
        flops=flops,
        flops_range=flops_range,
        bins=bins,
        max_tries=max_tries,
        schedule=schedule,
        distinct_networks=distinct_networks,
        **options,
    )
