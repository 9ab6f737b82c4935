"""The NAS-Bench-201 family, model half: cell supernet and standalone child (``space: nb201``).

The space, its text forms and canonical form are in :mod:`spos.spaces.nb201`.

Follows the benchmark's published skeleton layer for layer, so the child network's parameter
count and FLOPs equal the benchmark's ``params_cifar10`` / ``flops_cifar10_M`` columns:

* stem: conv3x3 ``in_channels -> C`` (no bias) + BN;
* three stages of ``cells_per_stage`` cells at C, 2C, 4C, separated by a ResNet basic block
  (ReLU-conv3x3 stride 2-BN, ReLU-conv3x3-BN, shortcut avgpool2x2 + conv1x1, summed);
* BN + ReLU, global average pool, linear (with bias).

A cell has nodes 0..3; node ``j`` sums ``op(node i)`` over its incoming edges ``j <- i`` and the
cell outputs node 3. Ops: ``none`` (zeros), ``skip_connect``, ``nor_conv_1x1`` and
``nor_conv_3x3`` (ReLU -> conv -> BN) and ``avg_pool_3x3`` (stride 1, padding excluded from the
average). One cell architecture is shared by every cell of the network, as in the benchmark.

Supernet BatchNorm is non-affine (SPEC section 3), one BN per candidate; the child's is affine.
Every edge runs, including those whose output is never used, which is also how the benchmark
counts FLOPs. A ``none`` edge is skipped rather than multiplied by zero: same result, no work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from spos.arch import Arch
from spos.errors import ArchError, ConfigError
from spos.ops import GlobalAvgPool
from spos.space import SearchSpace
from spos.spaces.nb201 import NB201_EDGES, NB201_OPS
from spos.supernet import Supernet, register_family

__all__ = ["NB201Child", "NB201Supernet", "create_nb201_op"]


class Zero(nn.Module):
    """The ``none`` op: zeros shaped like the input (a cell never calls it; export might)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv (no bias) -> BN: NAS-Bench-201's ``nor_conv`` op and basic-block halves."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int, *, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels_in, channels_out, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(channels_out, affine=affine),
        )


def create_nb201_op(name: str, channels: int, *, affine: bool) -> nn.Module:
    """One edge op at ``channels`` channels (stride 1, as every cell edge is)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1, affine=affine)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1, affine=affine)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ArchError(f"unknown NAS-Bench-201 op {name!r}; ops are {list(NB201_OPS)}")


class ResNetBasicBlock(nn.Module):
    """The benchmark's reduction block: C -> 2C at stride 2 with an avgpool+conv1x1 shortcut."""

    def __init__(self, channels_in: int, channels_out: int, *, affine: bool) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(channels_in, channels_out, 3, 2, affine=affine)
        self.conv_b = ReLUConvBN(channels_out, channels_out, 3, 1, affine=affine)
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2, stride=2), nn.Conv2d(channels_in, channels_out, 1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


def _layout_int(layout: Mapping[str, Any], key: str) -> int:
    value = layout.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"nb201 layout {key!r} must be a positive integer, got {value!r}")
    return value


def _edge_list(cell: nn.Module, ops: tuple[str, ...]) -> list[nn.Module]:
    """The six edge modules of a cell: a supernet cell holds a ModuleDict per edge."""
    return [edge[op] if isinstance(edge, nn.ModuleDict) else edge for edge, op in zip(cell, ops, strict=True)]


def _run_cell(x: Tensor, edges: list[nn.Module], ops: tuple[str, ...]) -> Tensor:
    """Node ``j`` = sum of its incoming edges; ``none`` edges add nothing."""
    nodes = [x]
    for to in range(1, 4):
        total: Tensor | None = None
        for index, (target, source) in enumerate(NB201_EDGES):
            if target != to or ops[index] == "none":
                continue
            out = edges[index](nodes[source])
            total = out if total is None else total + out
        nodes.append(torch.zeros_like(x) if total is None else total)
    return nodes[3]


class _Cell(nn.ModuleList):
    """Six edges (modules, or ``ModuleDict``s of candidates in the supernet)."""


def _build_network(
    module: nn.Module, space: SearchSpace, *, affine: bool, cell: Callable[[int], _Cell]
) -> None:
    """Give ``module`` ``stem``, ``layers`` (cells and reduction blocks in forward order) and
    ``head``, registered in forward order so weight inheritance can pair them up."""
    layout = space.layout
    channels = _layout_int(layout, "channels")
    cells = _layout_int(layout, "cells_per_stage")
    module.stem = nn.Sequential(
        nn.Conv2d(_layout_int(layout, "in_channels"), channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels, affine=affine),
    )
    layers: list[nn.Module] = []
    for stage in range(3):
        width = channels * 2**stage
        if stage:
            layers.append(ResNetBasicBlock(width // 2, width, affine=affine))
        layers.extend(cell(width) for _ in range(cells))
    module.layers = nn.ModuleList(layers)
    last = channels * 4
    module.head = nn.Sequential(
        nn.BatchNorm2d(last, affine=affine),
        nn.ReLU(inplace=False),
        GlobalAvgPool(),
        nn.Linear(last, _layout_int(layout, "num_classes")),
    )


def _run(module: nn.Module, x: Tensor, ops: tuple[str, ...]) -> Tensor:
    x = module.stem(x)
    for layer in module.layers:
        x = _run_cell(x, _edge_list(layer, ops), ops) if isinstance(layer, _Cell) else layer(x)
    return module.head(x)


class NB201Supernet(Supernet):
    """Every op of every edge of every cell; ``forward(x, arch)`` runs one cell architecture.

    A cell of ``layers`` holds one ``nn.ModuleDict`` (op name -> module) per edge.
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space)
        _build_network(
            self,
            space,
            affine=False,
            cell=lambda width: _Cell(
                nn.ModuleDict({op: create_nb201_op(op, width, affine=False) for op in NB201_OPS})
                for _ in NB201_EDGES
            ),
        )

    def _ops(self, arch: Arch) -> tuple[str, ...]:
        self.check_arch(arch)
        ops = tuple(str(value) for _, value in arch.values)
        for (label, _), op in zip(arch.values, ops, strict=True):
            if op not in NB201_OPS:
                raise ArchError(f"{op!r} is not an option of {label!r}")
        return ops

    def forward(self, x: Tensor, arch: Arch) -> Tensor:
        """Logits of the cell architecture ``arch`` on ``x`` (N, C, H, W)."""
        return _run(self, x, self._ops(arch))

    def path_modules(self, arch: Arch) -> list[tuple[str, nn.Module]]:
        """Stem, then per layer the six chosen edges (keyed by edge label) or the reduction
        block, then the head."""
        ops = self._ops(arch)
        modules: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for index, layer in enumerate(self.layers):
            if isinstance(layer, _Cell):
                modules.extend(zip(self.space.labels, _edge_list(layer, ops), strict=True))
            else:
                modules.append((f"reduction_{index}", layer))
        modules.append(("head", self.head))
        return modules


class NB201Child(nn.Module):
    """The standalone benchmark network of one cell (affine BN), for retraining and export.

    Its layers are registered in forward order, the order of
    ``NB201Supernet.path_modules(arch)``, so :func:`spos.childnet.inherit_weights` works.
    """

    def __init__(self, space: SearchSpace, arch: Arch) -> None:
        super().__init__()
        space.validate(arch)
        self.space = space
        self.arch = arch
        self.ops = tuple(str(value) for _, value in arch.values)
        _build_network(
            self,
            space,
            affine=True,
            cell=lambda width: _Cell(create_nb201_op(op, width, affine=True) for op in self.ops),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits for ``x`` (N, C, H, W)."""
        return _run(self, x, self.ops)


register_family("nb201", supernet=NB201Supernet, child=NB201Child)
