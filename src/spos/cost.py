"""Cost model: FLOPs and parameter tables built once per search space (SPEC sections 2, 4).

Search checks hard constraints on thousands of candidates before evaluating any of them, so
the cost of an architecture must be a table lookup, not a model build. :class:`CostModel`
holds one number per ``(layer, option)`` and metric plus a fixed part (stem and head, which
every path shares); the cost of an architecture is the fixed part plus one lookup per choice
(microseconds).

Conventions (say which one a number uses):

* ``flops``: multiply-accumulates of convolution and linear layers, forward pass, batch 1
  (BN, ReLU, pooling and concatenation are free), plus one per output element of a layer with
  a bias (NAS-Bench-201's ``in*out+out`` for its classifier). This is the paper's "FLOPs":
  322,918,720 for the released ImageNet architecture (whose layers have no bias).
* ``params``: parameters of convolution and linear layers (the paper's 3.53M convention).
* ``params_total``: every parameter of the standalone child network, whose BN is affine
  (3,558,464 for the released architecture).
* ``bitops``: for mixed-precision spaces, ``flops x weight_bits x activation_bits`` summed
  over layers; a layer that exposes integer ``weight_bits`` and ``activation_bits``
  (:class:`spos.quant.QuantConvBN`) uses its own, every other conv/linear layer (the
  full-precision stem and classifier, every layer of a float space) counts 32 x 32.
* ``size_bits``: model size in bits: conv/linear parameters (``params``) times the layer's
  weight bits (32 for full precision). BN parameters and LSQ step sizes are left out (BN
  folds into the preceding conv at deployment; steps are one scalar per layer).

A layer may depend on several choices (a channel-search block on its type *and* its width,
see :meth:`spos.supernet.Supernet.layer_choices`): its table is then keyed by the tuple of
those choices' values, and :meth:`CostModel.from_space` runs covering paths until every
combination was seen. Modules are costed through
:meth:`spos.supernet.Supernet.standalone_path`, so a width-sliced supernet is costed at the
chosen widths, not at the width it allocates.

Tables are measured, not derived by hand: each candidate module runs once at its real input
shape under :class:`torch.utils.flop_counter.FlopCounterMode` (which counts ``2 x MACs`` for
convolutions, grouped and depthwise included, and matrix products). The table serialises to
a JSON-able dict (:meth:`CostModel.to_dict`); a latency lookup table measured on a device
uses the same format with a ``latency_ms`` metric.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.flop_counter import FlopCounterMode

from spos.arch import Arch, Value
from spos.errors import ArchError, ConfigError
from spos.quant import FULL_PRECISION_BITS
from spos.space import SearchSpace

__all__ = [
    "COST_FORMAT",
    "METRICS",
    "CostModel",
    "PathModule",
    "covering_archs",
    "module_costs",
    "table_keys",
    "trace_path_modules",
]

COST_FORMAT = "spos.cost_table"
#: Newest table format understood: 2 added layers that read several choices (``reads``);
#: a table without such layers is still written as version 1.
COST_FORMAT_VERSION = 2

#: The metrics :meth:`CostModel.from_space` measures.
METRICS = ("flops", "params", "params_total", "bitops", "size_bits")

Number = int | float


def _conv_linear_parameters(module: nn.Module) -> int:
    return sum(
        parameter.numel()
        for submodule in module.modules()
        if isinstance(submodule, (nn.modules.conv._ConvNd, nn.Linear))
        for parameter in submodule.parameters(recurse=False)
    )


def _total_parameters(module: nn.Module) -> int:
    """All parameters, counting every non-affine norm layer as affine (as in the child)."""
    total = sum(parameter.numel() for parameter in module.parameters())
    for submodule in module.modules():
        if isinstance(submodule, _NormBase) and not submodule.affine:
            total += 2 * submodule.num_features
    return total


def _bit_widths(module: nn.Module) -> tuple[int, int] | None:
    """``(weight_bits, activation_bits)`` of a quantised layer, ``None`` for a float one."""
    weight_bits = getattr(module, "weight_bits", None)
    activation_bits = getattr(module, "activation_bits", None)
    if isinstance(weight_bits, int) and isinstance(activation_bits, int):
        return weight_bits, activation_bits
    return None


@torch.no_grad()
def module_costs(module: nn.Module, *inputs: torch.Tensor) -> dict[str, int]:
    """Every metric of :data:`METRICS` for ``module`` run on ``inputs``.

    FLOPs are ``FlopCounterMode``'s forward count divided by two (multiply-accumulates) and
    scale with the batch size of ``inputs``; give batch-1 inputs for per-image numbers.
    BitOps and size count each quantised layer (one with integer ``weight_bits`` and
    ``activation_bits``; not nested in another) at its bit widths, the rest at 32 bits.
    """
    bias_adds = 0
    counter = FlopCounterMode(display=False)
    quantized: dict[int, list[int]] = {}  # id -> [MACs, weight bits, activation bits, params]
    started: dict[int, int] = {}

    def enter(layer: nn.Module, _args: tuple) -> None:
        started[id(layer)] = counter.get_total_flops()

    def leave(layer: nn.Module, _args: tuple, _output: torch.Tensor) -> None:
        bits = _bit_widths(layer)
        assert bits is not None
        entry = quantized.setdefault(id(layer), [0, *bits, _conv_linear_parameters(layer)])
        entry[0] += (counter.get_total_flops() - started.pop(id(layer))) // 2

    def count_bias(layer: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        nonlocal bias_adds
        bias_adds += output.numel()

    handles = [
        layer.register_forward_hook(count_bias)
        for layer in module.modules()
        if isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)) and layer.bias is not None
    ]
    for layer in module.modules():
        if _bit_widths(layer) is not None:
            handles += [layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave)]
    was_training = module.training
    module.eval()
    try:
        with counter:
            module(*(tensor.clone() for tensor in inputs))
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    flops = int(counter.get_total_flops()) // 2 + bias_adds
    params = _conv_linear_parameters(module)
    full = FULL_PRECISION_BITS
    quantized_macs = sum(macs for macs, _, _, _ in quantized.values())
    quantized_params = sum(count for _, _, _, count in quantized.values())
    return {
        "flops": flops,
        "params": params,
        "params_total": _total_parameters(module),
        "bitops": (flops - quantized_macs) * full * full
        + sum(macs * w * a for macs, w, a, _ in quantized.values()),
        "size_bits": (params - quantized_params) * full
        + sum(count * w for _, w, _, count in quantized.values()),
    }


def table_keys(space: SearchSpace, reads: tuple[str, ...]) -> list[Any]:
    """Table keys of a layer reading ``reads``: options of one choice, or tuples of several."""
    options = [space.choice(label).options for label in reads]
    if len(reads) == 1:
        return list(options[0])
    return list(itertools.product(*options))


def _layer_value(arch: Arch, reads: tuple[str, ...]) -> Any:
    """The table key of a layer reading ``reads`` in ``arch`` (None for a shared layer)."""
    if not reads:
        return None
    if len(reads) == 1:
        return arch[reads[0]]
    return tuple(arch[label] for label in reads)


def covering_archs(
    space: SearchSpace, reads: Iterable[tuple[str, ...]] | None = None
) -> list[Arch]:
    """A few architectures that together run every table entry of every layer.

    ``reads`` lists the choices each layer reads (default: one layer per choice, reading it).
    Greedy cover: each architecture takes, layer by layer, a combination not yet seen that
    agrees with the choices already fixed; choices read by no layer cycle through their
    options. With disjoint layers this needs as many paths as the largest layer has entries
    (4 for the block search, 32 for block x width).
    """
    groups = list(dict.fromkeys(r for r in (reads or ((c.label,) for c in space.choices)) if r))
    missing = {group: table_keys(space, group) for group in groups}
    archs: list[Arch] = []
    while any(missing.values()):
        fixed: dict[str, Value] = {}
        for group in sorted(groups, key=lambda g: -len(missing[g])):
            for combo in missing[group]:
                values = (combo,) if len(group) == 1 else combo
                if all(fixed.get(label, value) == value for label, value in zip(group, values, strict=True)):
                    fixed.update(zip(group, values, strict=True))
                    break
        index = len(archs)
        arch = space.arch(
            [fixed.get(c.label, c.options[index % len(c.options)]) for c in space.choices]
        )
        for group in groups:
            value = _layer_value(arch, group)
            if value in missing[group]:
                missing[group].remove(value)
        archs.append(arch)
    return archs


@dataclass(frozen=True)
class PathModule:
    """One module of a traced path (see :func:`trace_path_modules`).

    Attributes:
        position: Its index on the path (a choice may drive several modules, e.g. one
            NAS-Bench-201 cell repeated in every stage: their costs add up).
        key: Its layer key (a choice label, or ``"stem"``, ``"head"``, ... for shared ones).
        reads: The choice labels whose values decide what it computes (empty when shared).
        value: Its table key: ``None`` for a shared module, the option of the one choice it
            reads, or the tuple of the options of several.
        arch: A path that runs it: ``supernet.standalone_path(arch)[position]`` is it.
        module: The standalone module (the child's shapes) on the ``meta`` device.
        inputs: Its tensor inputs as captured on the path (``meta`` tensors, batch 1), or
            ``None`` when the path lists it but never calls it (it does no work).
    """

    position: int
    key: str
    reads: tuple[str, ...]
    value: Any
    arch: Arch
    module: nn.Module
    inputs: tuple[torch.Tensor, ...] | None


def trace_path_modules(space: SearchSpace) -> list[PathModule]:
    """Every module any path of ``space`` runs, once per table entry, with its inputs.

    The supernet is built on the ``meta`` device and a few covering paths
    (:func:`covering_archs`, which handles layers reading several choices) run once with
    forward pre-hooks on their :meth:`~spos.supernet.Supernet.path_modules`, capturing each
    module's inputs without computing anything. The module returned is the matching one of
    :meth:`~spos.supernet.Supernet.standalone_path`, so a width-sliced supernet is described
    at the chosen widths. Cost tables (:meth:`CostModel.from_space`) count these modules and
    latency tables (:func:`spos.latency.measure_latency_table`) time them.

    Returns:
        One :class:`PathModule` per ``(position, key, value)``, in the order first seen.
    """
    from spos.supernet import build_supernet

    with torch.device("meta"):
        supernet = build_supernet(space)
    supernet.eval()
    sample = torch.zeros((1, *supernet.input_shape), device="meta")
    first = space.arch([c.options[0] for c in space.choices])
    reads = {key: supernet.layer_choices(key) for key, _ in supernet.path_modules(first)}

    listed: dict[tuple[int, str, Any], tuple[Arch, nn.Module]] = {}
    inputs: dict[tuple[int, str, Any], tuple[torch.Tensor, ...]] = {}
    for arch in covering_archs(space, reads.values()):
        handles = []
        # Hooks on the modules the path runs capture inputs; the standalone modules are
        # what a table describes (the chosen widths of a width-sliced supernet).
        path = zip(supernet.path_modules(arch), supernet.standalone_path(arch), strict=True)
        for position, ((key, module), (_, alone)) in enumerate(path):
            slot = (position, key, _layer_value(arch, reads.get(key, ())))
            listed.setdefault(slot, (arch, alone))

            def capture(_module: nn.Module, args: tuple, slot=slot) -> None:
                inputs.setdefault(slot, tuple(a.detach() for a in args if torch.is_tensor(a)))

            handles.append(module.register_forward_pre_hook(capture))
        try:
            with torch.no_grad():
                supernet(sample, arch)
        finally:
            for handle in handles:
                handle.remove()
    traced = []
    for slot, (arch, module) in listed.items():
        position, key, value = slot
        traced.append(PathModule(position, key, reads.get(key, ()), value, arch, module, inputs.get(slot)))
    return traced


class CostModel:
    """Per-``(layer, option)`` cost tables of one search space.

    Build it once with :meth:`from_space` (or :meth:`from_dict`); then :meth:`flops`,
    :meth:`params`, :meth:`params_total`, :meth:`cost` and :meth:`costs` are table lookups.

    Args:
        space_name: Name of the space the tables describe.
        space_version: Version of that space.
        metrics: Names of the metrics, e.g. ``("flops", "params", "params_total")``.
        fixed: Cost every path pays (stem, head), per metric.
        layers: ``(label, {option: {metric: cost}})`` for every choice, in the space's order;
            for a layer reading several choices, ``(key, {(value, ...): {metric: cost}})``.
        reads: The choice labels each layer reads, in the order of its tuple keys; ``None``
            means every layer reads the choice it is labelled with.
    """

    def __init__(
        self,
        *,
        space_name: str,
        space_version: int,
        metrics: Sequence[str],
        fixed: Mapping[str, Number],
        layers: Sequence[tuple[str, Mapping[Any, Mapping[str, Number]]]],
        reads: Sequence[Sequence[str]] | None = None,
    ) -> None:
        self.space_name = space_name
        self.space_version = int(space_version)
        self.metrics = tuple(metrics)
        missing = [metric for metric in self.metrics if metric not in fixed]
        if missing:
            raise ConfigError(f"cost table has no fixed cost for metric(s) {missing}")
        self.fixed = {metric: fixed[metric] for metric in self.metrics}
        self.labels = tuple(label for label, _ in layers)
        self.reads: tuple[tuple[str, ...], ...] = (
            tuple((label,) for label in self.labels)
            if reads is None
            else tuple(tuple(str(r) for r in group) for group in reads)
        )
        if len(self.reads) != len(self.labels) or not all(self.reads):
            raise ConfigError("cost table: give one non-empty tuple of read choices per layer")
        # Every layer reads just its own choice: lookups zip the tables with the arch values.
        self._one_choice_layers = self.reads == tuple((label,) for label in self.labels)
        self.layers = tuple(
            (label, {option: dict(costs) for option, costs in options.items()})
            for label, options in layers
        )
        # One {option: cost} dict per choice and metric: a lookup is 20 dict hits.
        self._tables: dict[str, tuple[dict[Value, Number], ...]] = {}
        for metric in self.metrics:
            try:
                self._tables[metric] = tuple(
                    {option: costs[metric] for option, costs in options.items()}
                    for _, options in self.layers
                )
            except KeyError:
                raise ConfigError(f"cost table lacks metric {metric!r} for some option") from None

    # ----------------------------------------------------------------- building
    @classmethod
    def from_space(cls, space: SearchSpace) -> CostModel:
        """Measure the tables of ``space``.

        The path modules are traced on the ``meta`` device (:func:`trace_path_modules`), so
        no weight is allocated and no convolution runs: shapes flow through the real modules
        and ``FlopCounterMode`` counts from them (about a second for the ImageNet space).
        """
        traced = trace_path_modules(space)
        reads = {entry.key: entry.reads for entry in traced}
        order = {label: index for index, label in enumerate(space.labels)}
        keys = sorted(
            (key for key, r in reads.items() if r), key=lambda k: min(order[r] for r in reads[k])
        )
        fixed = dict.fromkeys(METRICS, 0)
        layers: dict[str, dict[Any, dict[str, int]]] = {key: {} for key in keys}
        for entry in traced:
            if entry.inputs is not None:
                costs = module_costs(entry.module, *entry.inputs)
            else:  # listed but never called by the path (NAS-Bench-201 'none'): no compute
                costs = {
                    "flops": 0,
                    "params": _conv_linear_parameters(entry.module),
                    "params_total": _total_parameters(entry.module),
                    "bitops": 0,
                    "size_bits": _conv_linear_parameters(entry.module) * FULL_PRECISION_BITS,
                }
            target = (
                fixed
                if entry.value is None
                else layers[entry.key].setdefault(entry.value, dict.fromkeys(METRICS, 0))
            )
            for metric in METRICS:
                target[metric] += costs[metric]
        return cls(
            space_name=space.name,
            space_version=space.version,
            metrics=METRICS,
            fixed=fixed,
            layers=[(key, {o: layers[key][o] for o in table_keys(space, reads[key])}) for key in keys],
            reads=[reads[key] for key in keys],
        )

    # ----------------------------------------------------------------- lookups
    def cost(self, arch: Arch, metric: str) -> Number:
        """Cost of ``arch`` in ``metric`` (fixed part plus one table entry per choice)."""
        if arch.space != self.space_name or arch.version != self.space_version:
            raise ArchError(
                f"architecture is for space {arch.space!r} v{arch.version}; this cost model "
                f"describes {self.space_name!r} v{self.space_version}"
            )
        try:
            tables = self._tables[metric]
        except KeyError:
            raise ConfigError(
                f"unknown cost metric {metric!r}; this cost model has {list(self.metrics)}"
            ) from None
        total = self.fixed[metric]
        try:
            if self._one_choice_layers:
                for table, (_, value) in zip(tables, arch.values, strict=True):
                    total += table[value]
            else:
                values = dict(arch.values)
                for table, reads in zip(tables, self.reads, strict=True):
                    total += table[
                        values[reads[0]] if len(reads) == 1 else tuple(values[r] for r in reads)
                    ]
        except (KeyError, ValueError):
            raise ArchError(
                f"architecture {arch.short()} does not match the cost table of {self.space_name!r}"
            ) from None
        return total

    def flops(self, arch: Arch) -> int:
        """Conv + linear multiply-accumulates of ``arch`` (batch 1)."""
        return int(self.cost(arch, "flops"))

    def params(self, arch: Arch) -> int:
        """Conv + linear parameters of ``arch`` (the paper's convention)."""
        return int(self.cost(arch, "params"))

    def params_total(self, arch: Arch) -> int:
        """Every parameter of the standalone child network of ``arch`` (affine BN)."""
        return int(self.cost(arch, "params_total"))

    def costs(self, arch: Arch) -> dict[str, Number]:
        """Every metric of ``arch``: ``{"flops": ..., "params": ..., "params_total": ...}``."""
        return {metric: self.cost(arch, metric) for metric in self.metrics}

    def bounds(self, metric: str) -> tuple[Number, Number]:
        """Smallest and largest cost of any architecture of the space in ``metric``.

        Exact when no two layers read the same choice, or when the layers sharing one are all
        cheapest (dearest) at the same value of it, as in the built-in width spaces where every
        cost grows with the width; otherwise an outer bound.
        """
        if metric not in self._tables:
            raise ConfigError(
                f"unknown cost metric {metric!r}; this cost model has {list(self.metrics)}"
            )
        tables = self._tables[metric]
        low = self.fixed[metric] + sum(min(table.values()) for table in tables)
        high = self.fixed[metric] + sum(max(table.values()) for table in tables)
        return low, high

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; :meth:`from_dict` rebuilds an equal model."""
        def layer(label: str, reads: tuple[str, ...], options: Mapping[Any, Any]) -> dict:
            entry: dict[str, Any] = {"label": label}
            if reads != (label,):
                entry["reads"] = list(reads)
            entry["options"] = [
                {"value": list(option) if isinstance(option, tuple) else option, **costs}
                for option, costs in options.items()
            ]
            return entry

        return {
            "format": COST_FORMAT,
            "format_version": 1 if self._one_choice_layers else COST_FORMAT_VERSION,
            "space": self.space_name,
            "space_version": self.space_version,
            "metrics": list(self.metrics),
            "fixed": dict(self.fixed),
            "layers": [
                layer(label, reads, options)
                for (label, options), reads in zip(self.layers, self.reads, strict=True)
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostModel:
        """Rebuild a model written by :meth:`to_dict`.

        Raises:
            ConfigError: If ``data`` is not a cost table or is malformed.
        """
        if not isinstance(data, Mapping) or data.get("format") != COST_FORMAT:
            raise ConfigError(f"not an spos cost table (expected 'format': {COST_FORMAT!r})")
        if int(data.get("format_version", 0)) > COST_FORMAT_VERSION:
            raise ConfigError(
                f"cost table format_version {data['format_version']} is newer than this spos "
                f"understands ({COST_FORMAT_VERSION}); upgrade spos"
            )
        try:
            metrics = [str(m) for m in data["metrics"]]
            layers = [
                (
                    str(layer["label"]),
                    {
                        (tuple(option["value"]) if "reads" in layer else option["value"]): {
                            m: option[m] for m in metrics
                        }
                        for option in layer["options"]
                    },
                )
                for layer in data["layers"]
            ]
            return cls(
                space_name=str(data["space"]),
                space_version=int(data["space_version"]),
                metrics=metrics,
                fixed={m: data["fixed"][m] for m in metrics},
                layers=layers,
                reads=[layer.get("reads", [layer["label"]]) for layer in data["layers"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed cost table (missing or bad {exc})") from None

    def check_space(self, space: SearchSpace) -> None:
        """Raise :class:`ConfigError` unless the tables cover exactly the choices of ``space``."""
        if (space.name, space.version) != (self.space_name, self.space_version):
            raise ConfigError(
                f"cost table is for space {self.space_name!r} v{self.space_version}, not "
                f"{space.name!r} v{space.version}; rebuild it with CostModel.from_space"
            )
        if self._one_choice_layers:
            expected: list[tuple[str, set]] = [(c.label, set(c.options)) for c in space.choices]
            actual = [(label, set(options)) for label, options in self.layers]
        else:
            known = set(space.labels)
            expected = [
                (label, set(table_keys(space, reads)) if set(reads) <= known else set())
                for label, reads in zip(self.labels, self.reads, strict=True)
            ]
            actual = [(label, set(options)) for label, options in self.layers]
        if expected != actual:
            raise ConfigError(
                f"cost table of {self.space_name!r} does not cover the space's choices; "
                "rebuild it with CostModel.from_space"
            )
