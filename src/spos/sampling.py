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
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable
from typing import Any

from spos.arch import Arch
from spos.errors import ConfigError
from spos.space import SearchSpace

__all__ = ["PathSampler", "UniformSampler", "ConstraintSampler", "FairSampler", "create_sampler"]


def _rng_state_to_json(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_state_from_json(rng: random.Random, state: list[Any]) -> None:
    version, internal, gauss = state
    rng.setstate((int(version), tuple(int(v) for v in internal), gauss))


class PathSampler(abc.ABC):
    """Base class: draws paths, counts coverage, saves and restores its state."""

    def __init__(self, space: SearchSpace, rng: random.Random) -> None:
        self.space = space
        self.rng = rng
        self.coverage: dict[str, dict[str, int]] = {
            c.label: {str(o): 0 for o in c.options} for c in space.choices
        }
        self.steps = 0

    @abc.abstractmethod
    def _draw(self) -> Arch:
        """One path, before coverage is counted."""

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
    """Every choice uniformly and independently."""

    def _draw(self) -> Arch:
        return self.space.sample(self.rng)


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
    ) -> None:
        super().__init__(space, rng)
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
            arch = self.space.sample(self.rng)
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
    window length is the largest option count.
    """

    def __init__(self, space: SearchSpace, rng: random.Random) -> None:
        super().__init__(space, rng)
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
        return self.space.from_indices([order[position] for order in self.orders])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "orders": [list(o) for o in self.orders]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.orders = [[int(i) for i in o] for o in state["orders"]]


def create_sampler(
    name: str,
    space: SearchSpace,
    rng: random.Random,
    *,
    flops: Callable[[Arch], float] | None = None,
    flops_range: tuple[float, float] | None = None,
    bins: int = 7,
    max_tries: int = 100,
) -> PathSampler:
    """Build the sampler called ``name`` (``uniform``, ``constraint`` or ``fair``)."""
    if name == "uniform":
        return UniformSampler(space, rng)
    if name == "fair":
        return FairSampler(space, rng)
    if name == "constraint":
        if flops is None or flops_range is None:
            raise ConfigError("constraint sampling needs a FLOPs function and range")
        low, high = flops_range
        return ConstraintSampler(
            space, rng, flops=flops, low=low, high=high, bins=bins, max_tries=max_tries
        )
    raise ConfigError(f"unknown sampler {name!r}; choose uniform, constraint or fair")
