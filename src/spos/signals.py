"""Signals of an architecture: supernet score, zero-cost proxies, cost metrics (SPEC section 4).

Search's composable estimator (``search.estimator``) and ``spos rank --proxies`` both need
several numbers per architecture, each on its own scale: the supernet score (the paper's
fitness, :mod:`spos.scoring`), zero-cost proxies computed at initialisation on the
architecture's own network (:mod:`spos.proxies`) and cost metrics from the run's tables
(:mod:`spos.cost`, :mod:`spos.latency`). :class:`SignalSource` computes any mix of them, each
value at most once, and with a ``store`` keeps them in a resumable JSON-lines file (one
:class:`~spos.scoring.CachedScorer` per signal, tagged with what the value depends on; the
supernet score comes as the caller's cache, one per checkpoint of ``search.score_checkpoints``),
so a killed search or ranking resumes with bit-identical values. :func:`reference_pool` draws the
fixed pool of architectures that :class:`spos.estimator.PercentileEstimator` ranks against,
and :func:`proxy_batch` the seeded batch of training images proxies are computed on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from spos.arch import Arch
from spos.errors import ConfigError
from spos.evolution import RandomSearch
from spos.proxies import compute_proxies, get_proxy, list_proxies
from spos.scoring import CachedScorer, CheckpointEnsemble
from spos.space import SearchSpace, make_rng

if TYPE_CHECKING:
    from spos.data.prepare import PreparedData
    from spos.dist import Runtime

__all__ = ["SUPERNET", "SignalSource", "proxy_batch", "reference_pool"]

log = logging.getLogger(__name__)

#: The name of the supernet score among the signals.
SUPERNET = "supernet"


def proxy_batch(
    data: PreparedData, runtime: Runtime, *, seed: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` training images (a seeded draw, normalised as for training) and their labels."""
    from spos.data import iterate_batches, make_generator

    count = min(size, len(data.train))
    pick = torch.randperm(len(data.train), generator=make_generator(seed, "proxy-batch"))[:count]
    subset = data.train.subset(pick)
    images, labels = next(iter(iterate_batches(subset, batch_size=count, size=data.image_size)))
    return data.to_float(images, runtime, channels_last=False), labels.to(runtime.device)


def reference_pool(
    space: SearchSpace, *, size: int, seed: int, is_feasible: Callable[[Arch], bool] | None
) -> list[Arch]:
    """``size`` distinct random feasible architectures (one per network), seeded.

    Drawn like random search's first generation (capped draws, canonical forms, enumeration of
    small spaces), so a constraint that few architectures meet still yields a pool, and one
    that none meets is the same clear error.
    """
    draw = RandomSearch(
        space,
        lambda archs: [0.0] * len(archs),
        is_feasible=is_feasible,
        rng=make_rng(seed, "estimator-pool"),
        population_size=size,
        generations=1,
    )
    return list(draw.step().archs)


class SignalSource:
    """Named signals of architectures, each computed at most once.

    Args:
        names: Signals to compute: ``"supernet"``, a cost metric of ``costs_of``, or a
            registered network proxy (:func:`spos.proxies.list_proxies`).
        space: The search space.
        costs_of: ``arch -> {metric: value}`` from the run's cost tables.
        supernet: The supernet scores (needed for ``"supernet"``): a cache built by the caller,
            with its own store and tag (:meth:`spos.scoring.ScoringSession.scores`).
        images, labels: The proxy batch (:func:`proxy_batch`; needed for network proxies).
        seed: Initialisation seed of the proxies' networks.
        store: JSON-lines file keeping every computed value (None: memory only).
        runtime: Splits new architectures across ranks (see :class:`CachedScorer`).

    Raises:
        ConfigError: A name is none of the above (the valid ones are listed).
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        space: SearchSpace,
        costs_of: Callable[[Arch], Mapping[str, float]],
        supernet: CheckpointEnsemble | CachedScorer | None = None,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        seed: int = 0,
        store: Path | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.names = list(names)
        self.costs_of = costs_of
        self._cached: dict[str, CachedScorer | CheckpointEnsemble] = {}
        self._cost_names: list[str] = []
        probe = space.sample(make_rng(seed, "signal-probe"))
        cost_metrics = set(costs_of(probe))
        network_proxies = [n for n in list_proxies() if get_proxy(n).kind == "network"]
        for name in self.names:
            if name == SUPERNET:
                if supernet is None:
                    raise ValueError("the supernet signal needs the supernet scores")
                self._cached[name] = supernet
            elif name in cost_metrics:
                self._cost_names.append(name)
            elif name in network_proxies:
                if images is None or labels is None:
                    raise ValueError(f"proxy {name!r} needs a batch of images and labels")
                tag = {
                    "signal": name,
                    "space": space.fingerprint(),
                    "seed": int(seed),
                    "proxy_batch": int(len(images)),
                }

                def compute(arch: Arch, name: str = name) -> float:
                    return compute_proxies(space, [arch], [name], images=images, labels=labels, seed=seed,
                                           device=images.device)[0][name]  # fmt: skip

                self._cached[name] = CachedScorer(compute, store=store, tag=tag, runtime=runtime)
            else:
                valid = [SUPERNET, *network_proxies, *sorted(cost_metrics)]
                raise ConfigError(
                    f"signal {name!r} is not available in this run; valid signals: {valid}"
                    + (" (latency needs search.latency_table)" if name == "latency" else "")
                )

    def values(
        self,
        archs: Sequence[Arch],
        *,
        names: Sequence[str] | None = None,
        on_value: Callable[[Arch, float], None] | None = None,
    ) -> list[dict[str, float]]:
        """``{signal: value}`` of every architecture, in order (new values computed, the rest
        read from the cache), for ``names`` (default: all of this source's signals).
        ``on_value`` is called per newly computed value."""
        names = self.names if names is None else list(names)
        columns: dict[str, list[float]] = {}
        for name in names:
            if name in self._cached:
                columns[name] = self._cached[name].score_many(archs, on_score=on_value)
        rows = []
        for i, arch in enumerate(archs):
            costs = self.costs_of(arch) if self._cost_names else {}
            row = {}
            for name in names:
                row[name] = float(costs[name]) if name in self._cost_names else float(columns[name][i])
                if math.isnan(row[name]):
                    raise ValueError(f"signal {name!r} is NaN for {arch.short()}")
            rows.append(row)
        return rows

    def missing(self, archs: Sequence[Arch], *, names: Sequence[str] | None = None) -> int:
        """How many values ``values(archs, names=names)`` would compute (for progress bars)."""
        wanted = self.names if names is None else names
        return sum(cache.pending(archs) for name, cache in self._cached.items() if name in wanted)
