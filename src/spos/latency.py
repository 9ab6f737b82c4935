"""Latency lookup tables measured on the target device (SPEC section 4, "Constraints").

The paper enforces a latency constraint while generating search candidates, which needs the
latency of an architecture within microseconds, without running it. As in the paper (and
FBNet/ProxylessNAS), the latency of a path is modelled as the sum of its parts: one measured
number per ``(layer, option)`` plus a fixed part for the stem and head that every path shares.
This module owns that table:

* :func:`measure_latency_table` times every candidate module of a space at its real input
  shape on a device, in eval mode with affine BatchNorm as in the deployed child network, and
  returns a :class:`LatencyTable`. A whole network costs a few percent more than its parts
  timed alone (dispatch between layers, allocator, caches); that residual, measured on a few
  standalone networks in the same session, joins the fixed part.
* :class:`LatencyTable` answers ``latency(arch)`` (milliseconds) by lookup and saves itself as
  JSON in the cost-table format of :mod:`spos.cost` with one ``latency_ms`` metric, plus the
  conditions it was measured under (device, batch size, threads, torch version, repeats).
* :func:`validate_latency_table` measures the end-to-end latency of random standalone child
  networks and reports how well the table predicts it (mean absolute percentage error and
  Kendall tau of the two rankings): the SPEC asks for a table "validated against measured
  end-to-end latency".

Timing: every entry is the median of ``repeats`` single calls after ``warmup`` calls. The
calls are interleaved round-robin over all modules (or networks), so a change in machine load
during the measurement shifts every entry alike instead of biasing a few. On CUDA each call
is bracketed by ``torch.cuda.synchronize``; on other devices by nothing.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from spos.arch import Arch
from spos.cost import COST_FORMAT, CostModel, PathModule, table_keys, trace_path_modules
from spos.errors import ConfigError
from spos.io import atomic_write_text
from spos.space import SearchSpace, make_rng
from spos.stats import kendall_tau, spearman_rho

__all__ = [
    "CONSTRAINT_METRIC",
    "LATENCY_METRIC",
    "LatencyTable",
    "describe_device",
    "measure_latency_table",
    "time_interleaved",
    "validate_latency_table",
]

#: The metric name of a latency table in the cost-table format (milliseconds per batch).
LATENCY_METRIC = "latency_ms"
#: The name search constraints give it (``search.constraints=[{metric: latency, ...}]``).
CONSTRAINT_METRIC = "latency"

_FIX_HINT = "measure a new one with spos.latency.measure_latency_table (`spos latency-table`)"


# --------------------------------------------------------------------------- the table
class LatencyTable:
    """Measured latency of every ``(layer, option)`` of a space, plus the fixed stem and head.

    ``latency(arch)`` is the fixed part plus one lookup per choice (a few microseconds), so
    search can check a latency constraint on thousands of candidates before evaluating any.

    Args:
        space_name: Name of the space the table describes.
        space_version: Version of that space.
        fixed_ms: Latency every path pays (stem, head and the end-to-end residual), in
            milliseconds.
        layers: ``(label, {option: milliseconds})`` for every choice, in the space's order;
            for a layer reading several choices, ``(key, {(value, ...): milliseconds})``.
        reads: The choice labels each layer reads (as for :class:`spos.cost.CostModel`);
            ``None`` means every layer reads the choice it is labelled with.
        layout: The space layout the table was measured for (input size, channels); a table
            is refused for a space with another layout. ``None`` skips that check.
        metadata: How the table was measured (device, batch size, threads, ...).
    """

    def __init__(
        self,
        *,
        space_name: str,
        space_version: int,
        fixed_ms: float,
        layers: Sequence[tuple[str, Mapping[Any, float]]],
        reads: Sequence[Sequence[str]] | None = None,
        layout: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        # The lookups and the serialised format are those of a one-metric cost table.
        self._costs = CostModel(
            space_name=space_name,
            space_version=space_version,
            metrics=(LATENCY_METRIC,),
            fixed={LATENCY_METRIC: float(fixed_ms)},
            layers=[
                (label, {option: {LATENCY_METRIC: float(ms)} for option, ms in options.items()})
                for label, options in layers
            ],
            reads=reads,
        )
        self.layout = None if layout is None else copy.deepcopy(dict(layout))
        self.metadata = dict(metadata or {})

    # ----------------------------------------------------------------- lookups
    @property
    def space_name(self) -> str:
        return self._costs.space_name

    @property
    def space_version(self) -> int:
        return self._costs.space_version

    @property
    def fixed_ms(self) -> float:
        """Latency of the parts every path shares (stem and head), in milliseconds."""
        return float(self._costs.fixed[LATENCY_METRIC])

    @property
    def reads(self) -> tuple[tuple[str, ...], ...]:
        """The choice labels each layer of :attr:`layers` reads."""
        return self._costs.reads

    @property
    def layers(self) -> tuple[tuple[str, dict[Any, float]], ...]:
        """``(key, {option or tuple of options: milliseconds})`` per layer, in the space's order."""
        return tuple(
            (label, {option: float(costs[LATENCY_METRIC]) for option, costs in options.items()})
            for label, options in self._costs.layers
        )

    def entry(self, label: str, option: Any) -> float:
        """Latency of option ``option`` of layer ``label``, in milliseconds (a tuple of
        options for a layer reading several choices, in the order of its :attr:`reads`).

        Raises:
            KeyError: If the table has no such entry.
        """
        for key, options in self._costs.layers:
            if key == label:
                return float(options[option][LATENCY_METRIC])
        raise KeyError(label)

    def latency(self, arch: Arch) -> float:
        """Predicted latency of ``arch`` in milliseconds (fixed part plus one entry per choice).

        Raises:
            ArchError: If ``arch`` is not of the table's space or names an unknown option.
        """
        return float(self._costs.cost(arch, LATENCY_METRIC))

    __call__ = latency

    @property
    def metrics(self) -> tuple[str, ...]:
        """The constraint metric this table provides (see :mod:`spos.constraints`)."""
        return (CONSTRAINT_METRIC,)

    def cost(self, arch: Arch, metric: str = CONSTRAINT_METRIC) -> float:
        """``latency(arch)`` as a table of :mod:`spos.constraints` (``metric="latency"``)."""
        self._check_metric(metric)
        return self.latency(arch)

    def bounds(self, metric: str = CONSTRAINT_METRIC) -> tuple[float, float]:
        """Smallest and largest predicted latency of any architecture of the space (ms)."""
        self._check_metric(metric)
        low, high = self._costs.bounds(LATENCY_METRIC)
        return float(low), float(high)

    @staticmethod
    def _check_metric(metric: str) -> None:
        if metric not in (CONSTRAINT_METRIC, LATENCY_METRIC):
            raise ConfigError(f"a latency table provides {CONSTRAINT_METRIC!r}, not {metric!r}")

    # ----------------------------------------------------------------- checks
    def check_space(self, space: SearchSpace, *, source: str = "latency table") -> None:
        """Raise :class:`ConfigError` unless the table was measured for ``space``.

        The space's name, version, choices (labels and options) and, when the table records
        it, layout must match: a table measured at another input size predicts nothing.
        """
        if (space.name, space.version) != (self.space_name, self.space_version):
            raise ConfigError(
                f"{source} is for space {self.space_name!r} v{self.space_version}, not "
                f"{space.name!r} v{space.version}; {_FIX_HINT} for this space"
            )
        try:
            self._costs.check_space(space)
        except ConfigError:
            raise ConfigError(
                f"{source} for {self.space_name!r} does not cover the space's choices "
                f"(labels or options differ); {_FIX_HINT}"
            ) from None
        wanted = space.to_dict()["layout"]
        if self.layout is not None and self.layout != wanted:
            differing = sorted(
                key
                for key in set(self.layout) | set(wanted)
                if self.layout.get(key) != wanted.get(key)
            )
            raise ConfigError(
                f"{source} was measured for another layout of {self.space_name!r} "
                f"(differs in {differing}); {_FIX_HINT} with this layout"
            )

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: the :mod:`spos.cost` table format with one ``latency_ms`` metric.

        :meth:`from_dict` rebuilds an equal table; :meth:`spos.cost.CostModel.from_dict` also
        reads it (ignoring the measurement conditions).
        """
        return {
            **self._costs.to_dict(),
            "unit": "ms",
            "layout": self.layout,
            "measurement": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "latency table") -> LatencyTable:
        """Rebuild a table written by :meth:`to_dict`.

        Raises:
            ConfigError: If ``data`` is not a latency table or is malformed.
        """
        if not isinstance(data, Mapping) or data.get("format") != COST_FORMAT:
            raise ConfigError(
                f"{source} is not an spos latency table (expected 'format': {COST_FORMAT!r}); "
                f"{_FIX_HINT}"
            )
        if LATENCY_METRIC not in (data.get("metrics") or ()):
            raise ConfigError(
                f"{source} is a cost table without the {LATENCY_METRIC!r} metric, not a latency "
                f"table; {_FIX_HINT}"
            )
        try:  # checks the format version and the structure
            costs = CostModel.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}; {_FIX_HINT}") from None
        try:
            layers = [
                (label, {option: values[LATENCY_METRIC] for option, values in options.items()})
                for label, options in costs.layers
            ]
            table = cls(
                space_name=costs.space_name,
                space_version=costs.space_version,
                fixed_ms=costs.fixed[LATENCY_METRIC],
                layers=layers,
                reads=costs.reads,
                layout=data.get("layout"),
                metadata=data.get("measurement") or {},
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source} is malformed ({exc}); {_FIX_HINT}") from None
        values = [table.fixed_ms, *(ms for _, options in table.layers for ms in options.values())]
        if not all(math.isfinite(ms) and ms >= 0 for ms in values):
            raise ConfigError(f"{source} holds a negative or non-finite latency; {_FIX_HINT}")
        return table

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, space: SearchSpace | None = None
    ) -> LatencyTable:
        """Read a table written by :meth:`save`; with ``space``, check that it matches.

        Raises:
            ConfigError: If the file is missing, not valid JSON, not a latency table, or (with
                ``space``) measured for another space, version, set of choices or layout.
        """
        path = Path(path)
        source = f"latency table {path}"
        if not path.is_file():
            raise ConfigError(
                f"{source} does not exist; check search.latency_table or {_FIX_HINT}"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source} is not valid JSON ({exc}); {_FIX_HINT}") from None
        table = cls.from_dict(data, source=source)
        if space is not None:
            table.check_space(space, source=source)
        return table


# --------------------------------------------------------------------------- timing
def describe_device(device: torch.device | str) -> str:
    """A human-readable name of ``device``: the GPU model, or the CPU model on Linux."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        return platform.processor() or platform.machine() or "cpu"
    return str(device)


def _synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for queued kernels on CUDA, so a wall-clock interval covers the work."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads (unchanged when None); restore afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"latency measurement threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _check_counts(*, repeats: int, warmup: int, batch_size: int) -> None:
    if repeats < 1:
        raise ConfigError(f"latency repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ConfigError(f"latency warmup must be non-negative, got {warmup}")
    if batch_size < 1:
        raise ConfigError(f"latency batch_size must be positive, got {batch_size}")


@torch.inference_mode()
def time_interleaved(
    calls: Sequence[Callable[[], object]],
    *,
    device: torch.device | str,
    repeats: int,
    warmup: int,
) -> list[float]:
    """Median wall-clock milliseconds of each call, measured round-robin.

    Every call runs ``warmup`` times untimed, then ``repeats`` rounds time each call once, in
    order, so slow drifts in machine load spread over all calls alike.

    Args:
        calls: Zero-argument callables (e.g. ``lambda: module(x)``).
        device: Where the calls run; CUDA calls are bracketed by synchronisation.
        repeats: Timed calls per callable (the median is returned).
        warmup: Untimed calls per callable before timing.

    Returns:
        One median in milliseconds per callable, in order.
    """
    synchronize = _synchronizer(torch.device(device))
    for _ in range(warmup):
        for call in calls:
            call()
    synchronize()
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for index, call in enumerate(calls):
            start = time.perf_counter()
            call()
            synchronize()
            samples[index].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(values) for values in samples]


def _standalone_copy(module: nn.Module) -> nn.Module:
    """A copy of a supernet module as the child network has it: every BatchNorm affine.

    Supernet BN is non-affine (SPEC section 3), the retrained child's is affine, and the
    affine one costs a little more; the table describes the child that will be deployed.
    """
    module = copy.deepcopy(module)

    def affine(layer: _BatchNorm) -> _BatchNorm:
        replacement = type(layer)(
            layer.num_features,
            eps=layer.eps,
            momentum=layer.momentum,
            affine=True,
            track_running_stats=layer.track_running_stats,
        )
        replacement.load_state_dict(layer.state_dict(), strict=False)  # the running statistics
        return replacement

    if isinstance(module, _BatchNorm) and not module.affine:
        return affine(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm) and not child.affine:
                setattr(parent, name, affine(child))
    return module


def _prepare_module(module: nn.Module, *, device: torch.device, channels_last: bool) -> nn.Module:
    module = module.to(device).eval()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def _prepare_input(
    shape: Sequence[int], *, batch_size: int, device: torch.device, channels_last: bool, generator: torch.Generator
) -> torch.Tensor:
    tensor = torch.randn((batch_size, *shape[1:]), generator=generator).to(device)
    if channels_last and tensor.dim() == 4:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def _measurement_metadata(
    *, device: torch.device, batch_size: int, threads: int, repeats: int, warmup: int, channels_last: bool
) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": describe_device(device),
        "batch_size": batch_size,
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "statistic": "median",
        "channels_last": channels_last,
        "mode": "eval, inference_mode",
        "torch_version": torch.__version__,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def measure_latency_table(
    space: SearchSpace,
    *,
    device: torch.device | str,
    batch_size: int = 1,
    repeats: int = 30,
    warmup: int = 10,
    threads: int | None = None,
    channels_last: bool = True,
    end_to_end_correction: bool = True,
) -> LatencyTable:
    """Measure the latency of every ``(layer, option)`` of ``space`` on ``device``.

    :func:`spos.cost.trace_path_modules` runs a few covering paths through a supernet on the
    ``meta`` device, capturing the inputs of every path module (every candidate of every
    choice, plus the shared parts such as ``stem`` and ``head``) without computing anything.
    The same standalone modules of a supernet built on the CPU are then copied to ``device``
    in eval mode, their BatchNorm made affine as in the child network, and timed alone on
    random inputs of those shapes with the batch dimension set to ``batch_size`` (the
    supernet itself never moves to ``device``). A layer reading several choices (a block's
    type and its width, a conv's bit widths and its block's width) gets one entry per
    combination of their values, as in :class:`spos.cost.CostModel`; a module the path lists
    but never calls (NAS-Bench-201's ``none`` edge) does no work and costs 0 ms.

    Args:
        space: The search space.
        device: Where to measure (``"cpu"``, ``"cuda:0"``, ...).
        batch_size: Images per call (1 for on-device inference latency).
        repeats: Timed calls per module; the median is recorded.
        warmup: Untimed calls per module first (allocator, kernel selection, caches).
        threads: CPU intra-op threads during the measurement (``None``: the current
            setting); restored afterwards.
        channels_last: Time modules and inputs in ``channels_last`` memory format, as
            spos runs them.
        end_to_end_correction: Also time the standalone networks of the covering paths
            and add the mean difference between them and the sum of their parts to the
            fixed part (recorded as ``end_to_end_residual_ms``). A network costs a few
            percent more than its parts timed alone; without the correction the table
            underestimates by that much.

    Returns:
        The table, its metadata recording the measurement conditions.

    Raises:
        ConfigError: For non-positive counts or an invalid space layout.
    """
    _check_counts(repeats=repeats, warmup=warmup, batch_size=batch_size)
    device = torch.device(device)
    traced = trace_path_modules(space)
    timed = [entry for entry in traced if entry.inputs is not None]
    generator = torch.Generator().manual_seed(0)
    calls = _part_calls(space, timed, device=device, batch_size=batch_size, channels_last=channels_last, generator=generator)
    covering = list(dict.fromkeys(entry.arch for entry in traced)) if end_to_end_correction else []
    input_shape = (1, *_input_shape(space))
    if covering:
        # The standalone networks of the covering paths, timed in the same rounds as the parts.
        from spos.childnet import build_child

        network_input = _prepare_input(
            input_shape, batch_size=batch_size, device=device, channels_last=channels_last, generator=generator
        )
        for arch in covering:
            child = _prepare_module(build_child(space, arch), device=device, channels_last=channels_last)
            calls.append(lambda child=child: child(network_input))

    with _num_threads(threads) as used_threads:
        medians = time_interleaved(calls, device=device, repeats=repeats, warmup=warmup)
    milliseconds = {id(entry): 0.0 for entry in traced}  # never called: no work
    milliseconds.update((id(entry), ms) for entry, ms in zip(timed, medians[: len(timed)], strict=True))
    parts_only = _table_from_parts(space, traced, milliseconds)
    fixed_ms = parts_only.fixed_ms
    residual_ms = 0.0
    if covering:
        # What a whole network costs beyond the sum of its parts (dispatch between layers,
        # allocator, caches), measured on the covering paths: a constant, so it joins the
        # fixed part and lookups stay "fixed + one entry per layer".
        networks = medians[len(timed) :]
        predicted = [parts_only.latency(arch) for arch in covering]
        residual_ms = statistics.fmean(m - p for m, p in zip(networks, predicted, strict=True))
        residual_ms = max(residual_ms, -fixed_ms)  # a latency is never negative
    metadata = {
        **_measurement_metadata(
            device=device,
            batch_size=batch_size,
            threads=used_threads,
            repeats=repeats,
            warmup=warmup,
            channels_last=channels_last,
        ),
        "fixed_parts": sorted({entry.key for entry in traced if entry.value is None})
        + (["end_to_end_residual"] if covering else []),
        "fixed_parts_ms": fixed_ms,
        "end_to_end_residual_ms": residual_ms if covering else None,
        "input_shape": list(input_shape[1:]),
    }
    return _table_from_parts(space, traced, milliseconds, residual_ms=residual_ms, metadata=metadata)


def _table_from_parts(
    space: SearchSpace,
    traced: Sequence[PathModule],
    milliseconds: Mapping[int, float],
    *,
    residual_ms: float = 0.0,
    metadata: Mapping[str, Any] | None = None,
) -> LatencyTable:
    """The table of the timed parts (``milliseconds`` by ``id`` of the traced module).

    Shared modules add up to the fixed part (plus ``residual_ms``); the modules of one layer
    key and table key add up to its entry (a choice may drive several modules, e.g. one
    NAS-Bench-201 cell in every stage).
    """
    fixed_ms = 0.0
    layers: dict[str, dict[Any, float]] = {}
    reads: dict[str, tuple[str, ...]] = {}
    for entry in traced:
        if entry.value is None:
            fixed_ms += milliseconds[id(entry)]
        else:
            reads[entry.key] = entry.reads
            options = layers.setdefault(entry.key, {})
            options[entry.value] = options.get(entry.value, 0.0) + milliseconds[id(entry)]
    keys = sorted(layers, key=lambda key: min(space.labels.index(label) for label in reads[key]))
    return LatencyTable(
        space_name=space.name,
        space_version=space.version,
        fixed_ms=fixed_ms + residual_ms,
        layers=[(key, {o: layers[key][o] for o in table_keys(space, reads[key])}) for key in keys],
        reads=[reads[key] for key in keys],
        layout=space.to_dict()["layout"],
        metadata=metadata,
    )


def _part_calls(
    space: SearchSpace,
    traced: Sequence[PathModule],
    *,
    device: torch.device,
    batch_size: int,
    channels_last: bool,
    generator: torch.Generator,
) -> list[Callable[[], object]]:
    """One call per traced module: its standalone copy from a CPU supernet, on ``device``.

    The modules come from a real supernet initialised as the family initialises (the traced
    ones live on the ``meta`` device); their inputs are random, of the traced shapes.
    """
    from spos.supernet import build_supernet

    supernet = build_supernet(space).eval()
    paths: dict[Arch, list[tuple[str, nn.Module]]] = {}
    calls: list[Callable[[], object]] = []
    for entry in traced:
        if entry.arch not in paths:
            paths[entry.arch] = supernet.standalone_path(entry.arch)
        key, module = paths[entry.arch][entry.position]
        assert key == entry.key
        module = _prepare_module(_standalone_copy(module), device=device, channels_last=channels_last)
        inputs = tuple(
            _prepare_input(
                tensor.shape, batch_size=batch_size, device=device, channels_last=channels_last, generator=generator
            )
            for tensor in entry.inputs or ()
        )
        calls.append(lambda module=module, inputs=inputs: module(*inputs))
    return calls


# --------------------------------------------------------------------------- validation
def validate_latency_table(
    table: LatencyTable,
    space: SearchSpace,
    *,
    device: torch.device | str,
    seed: int,
    num_archs: int = 10,
    repeats: int = 20,
    warmup: int = 5,
    batch_size: int | None = None,
    threads: int | None = None,
    channels_last: bool | None = None,
) -> dict[str, Any]:
    """Compare the table's predictions with measured end-to-end latency of child networks.

    ``num_archs`` distinct architectures are drawn uniformly (seeded), their standalone
    networks (:func:`spos.childnet.build_child`, eval mode) are timed round-robin like the
    table's entries, and each measured median is compared with ``table.latency(arch)``.

    Args:
        table: The table to check.
        space: The space it was measured for (checked).
        device: Where to measure: the device the table was measured on.
        seed: Seed of the architecture draw.
        num_archs: How many architectures to time (at least 2 for a rank correlation).
        repeats: Timed forwards per network; the median is used.
        warmup: Untimed forwards per network first.
        batch_size: Images per forward; defaults to the table's batch size.
        threads: CPU intra-op threads (``None``: the table's setting when it has one).
        channels_last: Memory format; defaults to the table's.

    Returns:
        ``{"num_archs", "mape_percent", "mean_error_percent", "max_abs_error_percent",
        "kendall_tau", "spearman_rho", "pairs", "measurement"}``: ``pairs`` has one
        ``{"arch", "predicted_ms", "measured_ms", "error_percent"}`` per architecture
        (error = predicted - measured, relative to measured; ``mean_error_percent`` is its
        signed mean, a bias).

    Raises:
        ConfigError: If the table does not match ``space`` or a count is invalid.
    """
    from spos.childnet import build_child

    table.check_space(space)
    meta = table.metadata
    batch_size = int(batch_size if batch_size is not None else meta.get("batch_size", 1))
    channels_last = bool(channels_last if channels_last is not None else meta.get("channels_last", True))
    if threads is None and isinstance(meta.get("threads"), int) and torch.device(device).type == "cpu":
        threads = int(meta["threads"])
    _check_counts(repeats=repeats, warmup=warmup, batch_size=batch_size)
    if num_archs < 1:
        raise ConfigError(f"latency validation needs num_archs >= 1, got {num_archs}")
    device = torch.device(device)

    rng = make_rng(seed, "latency-validation")
    archs: list[Arch] = []
    keys: set[str] = set()
    for _ in range(num_archs * 20):  # capped: tiny spaces may have fewer distinct archs
        if len(archs) == num_archs:
            break
        arch = space.sample(rng)
        if arch.key not in keys:
            keys.add(arch.key)
            archs.append(arch)

    generator = torch.Generator().manual_seed(seed)
    sample_shape = meta.get("input_shape") or _input_shape(space)
    inputs = _prepare_input(
        (1, *sample_shape), batch_size=batch_size, device=device, channels_last=channels_last, generator=generator
    )
    calls = []
    for arch in archs:
        child = _prepare_module(build_child(space, arch), device=device, channels_last=channels_last)
        calls.append(lambda child=child: child(inputs))
    with _num_threads(threads) as used_threads:
        measured = time_interleaved(calls, device=device, repeats=repeats, warmup=warmup)

    predicted = [table.latency(arch) for arch in archs]
    errors = [100.0 * (p - m) / m for p, m in zip(predicted, measured, strict=True)]
    return {
        "num_archs": len(archs),
        "mape_percent": statistics.fmean(abs(e) for e in errors),
        "mean_error_percent": statistics.fmean(errors),
        "max_abs_error_percent": max(abs(e) for e in errors),
        "kendall_tau": kendall_tau(predicted, measured),
        "spearman_rho": spearman_rho(predicted, measured),
        "pairs": [
            {"arch": arch.short(), "predicted_ms": p, "measured_ms": m, "error_percent": e}
            for arch, p, m, e in zip(archs, predicted, measured, errors, strict=True)
        ],
        "measurement": _measurement_metadata(
            device=device,
            batch_size=batch_size,
            threads=used_threads,
            repeats=repeats,
            warmup=warmup,
            channels_last=channels_last,
        ),
    }


def _input_shape(space: SearchSpace) -> tuple[int, ...]:
    """Shape of one input sample of ``space``, as its supernet declares it."""
    layout = space.layout
    try:
        return (int(layout["in_channels"]), int(layout["input_size"]), int(layout["input_size"]))
    except KeyError as exc:
        raise ConfigError(f"space {space.name!r} layout has no {exc}; cannot build an input") from None
