"""Candidate blocks of the ShuffleNetV2 block-search space and the op registry (SPEC section 2).

The four candidates of the paper's block search (``shuffle3x3``, ``shuffle5x5``, ``shuffle7x7``
and ``xception``) follow the official SPOS release layer for layer, so FLOPs and parameter
counts match the published numbers exactly:

* stride 1: the input is split into its even and odd channels (:func:`channel_shuffle`); the
  even half passes through untouched, the odd half goes through the main branch, and the two
  are concatenated.
* stride 2: the whole input feeds both a projection branch (depthwise KxK stride 2 + BN,
  pointwise + BN + ReLU) and the main branch, and the two outputs are concatenated.

Every BatchNorm takes ``affine``: the supernet uses non-affine BN, separate per candidate
(SPEC section 3); the standalone child network uses affine BN (SPEC section 5).

Candidates are created by name through one registry (:data:`CANDIDATES`, :func:`register_op`,
:func:`create_op`). A builder has the signature
``builder(in_channels, out_channels, *, stride, affine) -> nn.Module``; user-defined spaces add
their own candidates with :func:`register_op` and never touch the library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from spos.errors import ConfigError

__all__ = [
    "CANDIDATES",
    "GlobalAvgPool",
    "OpBuilder",
    "ShuffleBlock",
    "XceptionBlock",
    "channel_shuffle",
    "create_op",
    "register_op",
]

#: ``builder(in_channels, out_channels, *, stride, affine) -> nn.Module``.
OpBuilder = Callable[..., nn.Module]

#: Registered candidate builders by name (the option values of a space).
CANDIDATES: dict[str, OpBuilder] = {}


def register_op(name: str) -> Callable[[OpBuilder], OpBuilder]:
    """Decorator registering a candidate builder under ``name``.

    Args:
        name: The option value that selects this candidate in a search space.

    Returns:
        A decorator that registers and returns the builder unchanged.

    Raises:
        ConfigError: If another builder is already registered under ``name``.
    """

    def decorator(builder: OpBuilder) -> OpBuilder:
        if name in CANDIDATES and CANDIDATES[name] is not builder:
            raise ConfigError(f"a candidate op named {name!r} is already registered")
        CANDIDATES[name] = builder
        return builder

    return decorator


def create_op(
    name: str, in_channels: int, out_channels: int, *, stride: int, affine: bool
) -> nn.Module:
    """Build the registered candidate ``name``.

    Args:
        name: Registered candidate name, e.g. ``"shuffle5x5"``.
        in_channels: Channels of the block input.
        out_channels: Channels of the block output.
        stride: Spatial stride of the block (1 or 2).
        affine: Whether its BatchNorms learn a scale and shift.

    Raises:
        ConfigError: If no candidate is registered under ``name``.
    """
    if name not in CANDIDATES:
        raise ConfigError(
            f"unknown candidate op {name!r}; known ops: {sorted(CANDIDATES)} "
            "(add one with spos.ops.register_op)"
        )
    return CANDIDATES[name](in_channels, out_channels, stride=stride, affine=affine)


def channel_shuffle(x: Tensor) -> tuple[Tensor, Tensor]:
    """Split ``x`` into its even and its odd channels (the official SPOS shuffle).

    Returns the same two halves as the official reshape/permute trick (channels ``0, 2, 4,
    ...`` and ``1, 3, 5, ...``) as two strided views: no copy, and every exporter knows
    strided slicing.
    """
    return x[:, 0::2], x[:, 1::2]


def _layout(x: Tensor) -> torch.memory_format:
    """The memory format a 4-d tensor is laid out in (NCHW when both fit, e.g. 1x1 maps)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _EvenOddSplit(torch.autograd.Function):
    """Even/odd channel halves whose output and gradient keep the input's memory format on
    any device (``F.channel_shuffle``'s CUDA kernel returns NCHW; the CPU one keeps it, so
    the ``contiguous`` calls are free there)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.layout = _layout(x)
        shuffled = F.channel_shuffle(x, x.shape[1] // 2).contiguous(memory_format=ctx.layout)
        return shuffled.chunk(2, 1)  # type: ignore[return-value]

    @staticmethod
    def backward(ctx: Any, even: Tensor | None, odd: Tensor | None) -> Tensor:  # type: ignore[override]
        reference = even if even is not None else odd
        assert reference is not None
        halves = [g if g is not None else torch.zeros_like(reference) for g in (even, odd)]
        joined = torch.cat(halves, 1).contiguous(memory_format=ctx.layout)
        return F.channel_shuffle(joined, 2).contiguous(memory_format=ctx.layout)  # the inverse shuffle


def _channel_shuffle_for_training(x: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`channel_shuffle` whose backward keeps the memory format, on every device.

    The backward of a strided slice writes into a fresh NCHW tensor; in a ``channels_last``
    network that sends every later backward op (ReLU, BN, conv) down a slow mixed-layout path
    (measured: 2x slower blocks on CPU). ``F.channel_shuffle`` + ``chunk`` avoided that on the
    CPU kernel only: its CUDA implementation returns NCHW (a permute + contiguous), undoing
    ``channels_last`` in 16 of 20 blocks. Here both directions are put back in the input's
    layout explicitly (free on CPU). Strided even/odd views with a custom backward kept the
    layout too but trained 30% slower on CPU (stride-2 channel reads in every block). Used in
    training mode only (exporters see :func:`channel_shuffle`).
    """
    return _EvenOddSplit.apply(x)  # type: ignore[no-any-return]


class GlobalAvgPool(nn.Module):
    """Global average pooling to ``(N, C)``.

    Written as a sum times ``1 / (H * W)`` rather than ``mean`` or ``AdaptiveAvgPool2d``:
    their backward materialises an NCHW-contiguous gradient, which in a ``channels_last``
    network makes the next ReLU/BN/conv backward run on mismatched layouts (measured 2x slower
    for the head, and the slowdown propagates through every block). The backward of a sum is
    a broadcast view that keeps the network's memory format.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.sum((2, 3)) * (1.0 / (x.shape[2] * x.shape[3]))


def _pointwise(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False)


def _depthwise(channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(
        channels, channels, kernel_size, stride, kernel_size // 2, groups=channels, bias=False
    )


def _projection(channels: int, *, kernel_size: int, affine: bool) -> nn.Sequential:
    """The stride-2 shortcut: depthwise KxK s2 + BN, pointwise + BN + ReLU."""
    return nn.Sequential(
        _depthwise(channels, kernel_size, 2),
        nn.BatchNorm2d(channels, affine=affine),
        _pointwise(channels, channels),
        nn.BatchNorm2d(channels, affine=affine),
        nn.ReLU(inplace=True),
    )


def _branch_channels(
    in_channels: int, out_channels: int, stride: int, kind: str
) -> tuple[int, int]:
    """Input and output channels of the main branch; checks the block is well formed."""
    if stride not in (1, 2):
        raise ConfigError(f"{kind} block stride must be 1 or 2, got {stride}")
    if stride == 1 and in_channels % 2:
        raise ConfigError(
            f"a stride-1 {kind} block splits its input in two halves, so in_channels must be "
            f"even (got {in_channels}); change the stage channels"
        )
    branch_in = in_channels // 2 if stride == 1 else in_channels
    branch_out = out_channels - branch_in
    if branch_out <= 0:
        raise ConfigError(
            f"{kind} block {in_channels}->{out_channels} (stride {stride}) leaves no channels "
            f"for the main branch; the output must be wider than {branch_in}"
        )
    return branch_in, branch_out


class _TwoBranchBlock(nn.Module):
    """Shared forward of the ShuffleNetV2 blocks: split-or-project, then concatenate."""

    branch_main: nn.Sequential
    branch_proj: nn.Sequential | None

    def forward(self, x: Tensor) -> Tensor:
        if self.branch_proj is None:
            split = _channel_shuffle_for_training if self.training else channel_shuffle
            passthrough, x = split(x)
            return torch.cat((passthrough, self.branch_main(x)), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


class ShuffleBlock(_TwoBranchBlock):
    """ShuffleNetV2 unit with a KxK depthwise conv (``shuffle3x3/5x5/7x7``).

    Main branch: pw1x1 (branch_in -> mid) BN ReLU, dwKxK (stride) BN, pw1x1 (mid ->
    out - branch_in) BN ReLU, where ``branch_in`` is half the input at stride 1 and the whole
    input at stride 2, and ``mid = out_channels // 2``.

    Args:
        in_channels: Channels of the block input (even at stride 1).
        out_channels: Channels of the block output.
        kernel_size: Depthwise kernel size (odd), also used by the stride-2 projection.
        stride: 1 (channel split) or 2 (projection branch, halves the resolution).
        affine: Whether the BatchNorms learn a scale and shift.
        mid_channels: Width of the main branch; ``out_channels // 2`` (the official choice)
            when ``None``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int,
        affine: bool,
        mid_channels: int | None = None,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ConfigError(f"shuffle block kernel_size must be odd, got {kernel_size}")
        branch_in, branch_out = _branch_channels(in_channels, out_channels, stride, "shuffle")
        mid = out_channels // 2 if mid_channels is None else mid_channels
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_size = kernel_size
        self.branch_main = nn.Sequential(
            _pointwise(branch_in, mid),
            nn.BatchNorm2d(mid, affine=affine),
            nn.ReLU(inplace=True),
            _depthwise(mid, kernel_size, stride),
            nn.BatchNorm2d(mid, affine=affine),
            _pointwise(mid, branch_out),
            nn.BatchNorm2d(branch_out, affine=affine),
            nn.ReLU(inplace=True),
        )
        self.branch_proj = (
            _projection(in_channels, kernel_size=kernel_size, affine=affine)
            if stride == 2
            else None
        )


class XceptionBlock(_TwoBranchBlock):
    """ShuffleNetV2 unit with an Xception-like main branch (``xception``).

    Main branch: dw3x3 (stride) BN, pw (branch_in -> mid) BN ReLU, dw3x3 BN, pw (mid -> mid)
    BN ReLU, dw3x3 BN, pw (mid -> out - branch_in) BN ReLU; the stride-2 projection uses a
    3x3 depthwise conv.

    Args:
        in_channels: Channels of the block input (even at stride 1).
        out_channels: Channels of the block output.
        stride: 1 (channel split) or 2 (projection branch, halves the resolution).
        affine: Whether the BatchNorms learn a scale and shift.
        mid_channels: Width of the main branch; ``out_channels // 2`` when ``None``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int,
        affine: bool,
        mid_channels: int | None = None,
    ) -> None:
        super().__init__()
        branch_in, branch_out = _branch_channels(in_channels, out_channels, stride, "xception")
        mid = out_channels // 2 if mid_channels is None else mid_channels
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_size = 3
        self.branch_main = nn.Sequential(
            _depthwise(branch_in, 3, stride),
            nn.BatchNorm2d(branch_in, affine=affine),
            _pointwise(branch_in, mid),
            nn.BatchNorm2d(mid, affine=affine),
            nn.ReLU(inplace=True),
            _depthwise(mid, 3, 1),
            nn.BatchNorm2d(mid, affine=affine),
            _pointwise(mid, mid),
            nn.BatchNorm2d(mid, affine=affine),
            nn.ReLU(inplace=True),
            _depthwise(mid, 3, 1),
            nn.BatchNorm2d(mid, affine=affine),
            _pointwise(mid, branch_out),
            nn.BatchNorm2d(branch_out, affine=affine),
            nn.ReLU(inplace=True),
        )
        self.branch_proj = (
            _projection(in_channels, kernel_size=3, affine=affine) if stride == 2 else None
        )


def _shuffle_builder(kernel_size: int) -> OpBuilder:
    def build(in_channels: int, out_channels: int, *, stride: int, affine: bool) -> nn.Module:
        return ShuffleBlock(
            in_channels, out_channels, kernel_size=kernel_size, stride=stride, affine=affine
        )

    build.__name__ = build.__qualname__ = f"shuffle{kernel_size}x{kernel_size}"
    build.__doc__ = f"ShuffleNetV2 block with a {kernel_size}x{kernel_size} depthwise conv."
    return build


for _kernel_size in (3, 5, 7):
    register_op(f"shuffle{_kernel_size}x{_kernel_size}")(_shuffle_builder(_kernel_size))
del _kernel_size


@register_op("xception")
def _xception(in_channels: int, out_channels: int, *, stride: int, affine: bool) -> nn.Module:
    """ShuffleNetV2 block with the Xception-like main branch."""
    return XceptionBlock(in_channels, out_channels, stride=stride, affine=affine)
