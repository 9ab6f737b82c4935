"""The NAS-Bench-201 family, torch-free half: the cell space, its text forms and canonical form.

``nb201`` (``family="nb201"``): 6 edges x 5 ops, one cell shared by all cells of the network.
Architectures also read as the benchmark's ``arch_str`` or ``ops_code`` (:func:`register_arch_parser`),
and cells that compute the same function share a canonical form. The model builders are in
:mod:`spos.spaces.nb201_model`, imported the first time a supernet is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spos.arch import Arch
from spos.errors import ArchError, ConfigError
from spos.space import (
    Choice,
    SearchSpace,
    register_arch_parser,
    register_canonical_form,
    register_model_module,
    register_space,
)

__all__ = [
    "NB201_EDGES",
    "NB201_OPS",
    "nb201",
    "nb201_canonical",
    "nb201_from_arch_str",
    "nb201_to_arch_str",
]

register_model_module("nb201", "spos.spaces.nb201_model")

#: NAS-Bench-201 edge operations, in the benchmark's ``ops_code`` digit order (0..4).
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

#: The six cell edges ``(to_node, from_node)`` in the benchmark's order: 1<-0, 2<-0, 2<-1,
#: 3<-0, 3<-1, 3<-2. The space's choice labels are ``edge_{to}_{from}``.
NB201_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


@register_space("nb201")
def nb201(**layout: Any) -> SearchSpace:
    """The NAS-Bench-201 cell space: 6 edges x 5 ops (15,625 cells), one cell shared by all.

    Skeleton (``channels`` C, ``cells_per_stage`` N): stem conv3x3 3->C + BN; N cells at C;
    ResNet basic block C->2C stride 2; N cells at 2C; block 2C->4C; N cells at 4C; BN + ReLU;
    global average pool; linear. The benchmark's networks are C=16, N=5 at 32x32; a smaller
    skeleton (e.g. C=8, N=1) is a cheaper proxy supernet over the same cells.
    """
    defaults = dict(
        input_size=32, in_channels=3, num_classes=10, channels=16, cells_per_stage=5
    )
    merged = {**defaults, **layout}
    for key in ("channels", "cells_per_stage"):
        value = merged[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"nb201 layout {key!r} must be a positive integer, got {value!r}")
    choices = tuple(Choice(f"edge_{to}_{src}", NB201_OPS) for to, src in NB201_EDGES)
    return SearchSpace("nb201", 1, "nb201", choices, merged)


def nb201_to_arch_str(values: Sequence[str]) -> str:
    """The benchmark's ``arch_str`` of six edge ops given in :data:`NB201_EDGES` order."""
    ops = list(values)
    if len(ops) != len(NB201_EDGES):
        raise ArchError(f"a NAS-Bench-201 cell has {len(NB201_EDGES)} edges, got {len(ops)}")
    nodes: dict[int, list[str]] = {}
    for op, (to, src) in zip(ops, NB201_EDGES, strict=True):
        nodes.setdefault(to, []).append(f"{op}~{src}")
    return "+".join("|" + "|".join(nodes[to]) + "|" for to in sorted(nodes))


def nb201_from_arch_str(text: str) -> list[str]:
    """The six edge ops (in :data:`NB201_EDGES` order) of a benchmark ``arch_str``."""
    found: dict[tuple[int, int], str] = {}
    for to, node in enumerate(text.strip().split("+"), start=1):
        for token in filter(None, node.split("|")):
            op, _, src = token.partition("~")
            if op not in NB201_OPS or not src.isdigit():
                raise ArchError(
                    f"cannot read NAS-Bench-201 edge {token!r} in {text!r}: expected op~node "
                    f"with op one of {list(NB201_OPS)}"
                )
            found[(to, int(src))] = op
    if sorted(found) != sorted(NB201_EDGES):
        raise ArchError(
            f"{text!r} is not a NAS-Bench-201 cell: it needs exactly the edges "
            "|a~0|+|b~0|c~1|+|d~0|e~1|f~2|"
        )
    return [found[edge] for edge in NB201_EDGES]


def _parse_nb201(space: SearchSpace, text: str) -> Arch | None:
    """``arch_str`` (``|op~0|+...``) or the 6-digit ``ops_code`` (``334131``) of a cell."""
    text = text.strip()
    if text.startswith("|"):
        return space.arch(nb201_from_arch_str(text))
    if len(text) == len(NB201_EDGES) and text.isdigit() and all(c in "01234" for c in text):
        return space.arch([NB201_OPS[int(c)] for c in text])
    return None


register_arch_parser("nb201", _parse_nb201)


def nb201_canonical(space: SearchSpace, arch: Arch) -> Arch:
    """The cell with every edge into a dead node set to ``none``: the same network.

    A node is dead when no chain of non-``none`` edges leads from it to the output node 3:
    what it computes is never read, so the ops on its incoming edges do not matter (the
    benchmark counts such cells as one isomorphism class; tested against its ``iso_group``).
    Edges out of a node that receives nothing are kept: in the supernet they add zeros, but
    in the trained child an op's affine BN turns zeros into a learned bias, and the benchmark
    counts those cells as other networks.
    """
    ops = dict(zip(NB201_EDGES, (value for _, value in arch.values), strict=True))
    live = {3}
    for node in (2, 1):
        if any(ops[(to, node)] != "none" and to in live for to in range(node + 1, 4)):
            live.add(node)
    return space.arch(["none" if to not in live else op for (to, _), op in ops.items()])


register_canonical_form("nb201", nb201_canonical)
