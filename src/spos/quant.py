"""Fake quantisation with learned step sizes (LSQ) for mixed-precision search (SPEC section 2).

What this module owns: the quantiser (:class:`LsqQuantizer`), the quantised convolution layer
shared by supernets and child networks (:class:`QuantConvBN`), the per-layer bit-width choice
format (``"w4a8"``, :func:`bits_option` / :func:`parse_bits`) and the supernet layer that holds
one shared weight with a quantiser per bit width (:class:`QuantConvChoices`), optionally
width-sliced (:class:`SlicedQuantConvBN`) when bit widths are combined with channel choices.

Method: LSQ, *Learned Step Size Quantization* (Esser et al., ICLR 2020). A tensor ``v`` is
quantised at ``b`` bits as ``round(clamp(v / s, -Q_N, Q_P)) * s`` with a learned step ``s``;
weights are signed (``Q_N = 2^(b-1)``, ``Q_P = 2^(b-1) - 1``), activations - every quantised
conv here reads a post-ReLU tensor - unsigned (``Q_N = 0``, ``Q_P = 2^b - 1``), so a ``b``-bit
tensor takes at most ``2^b`` distinct values. Rounding passes gradients straight through
(STE) inside the clamp range; the step's gradient is LSQ's (``round(v/s) - v/s`` inside the
range, ``-Q_N`` or ``Q_P`` outside) scaled by ``g = 1 / sqrt(N * Q_P)`` with ``N`` the number
of weights of the layer or of activations per sample (the paper's gradient scaling); the step
is initialised from the first training batch as ``2 * mean(|v|) / sqrt(Q_P)``.

Why LSQ rather than PACT: one method for weights and activations (PACT learns only an
activation clip and needs DoReFa or similar for weights); the step, not just the clip range,
is learned, which matters most at 2-3 bits where PACT loses accuracy; and it is one scalar
per quantiser, so giving every candidate bit width of a supernet layer its own step size
costs nothing. That is the single-path split used here: the convolution weight is shared by
all bit widths of a layer, each weight bit width owns its weight step, each activation bit
width its activation step, and each (weight, activation) option its own non-affine BN
(SPEC section 3: separate BN per candidate). A sampled path trains only its own steps.

Modes: in train mode (with autograd on) the quantiser uses the straight-through estimator
and gradient scaling; in eval mode, or under ``torch.no_grad()``, it is a plain
``div -> clamp -> round -> mul`` graph of float ops, which is what ONNX and ``torch.export``
record (ONNX ``Div``, ``Clip``, ``Round``, ``Mul``; ONNX ``Round`` and ``torch.round`` both
round half to even).

Precision: the quantiser computes in float32 whatever its input's dtype, so under bf16 or fp16
autocast the grid (``x / s``, clamp, round, ``* s``) stays exact; the convolution that follows
runs in the autocast dtype.

Width slicing (bit widths combined with channel choices, SPEC section 2): a sliced
:class:`QuantConvChoices` holds its weight at the largest width and a path uses the prefix
``W[:out, :in]`` (``in`` the width of its input, ``out`` asked by the caller), as
:mod:`spos.slim` does for float layers. The weight quantiser sees only that prefix, so its
step initialisation and gradient scale are those of a standalone layer of the chosen width
(:meth:`SlicedQuantConvBN.plain`); the steps stay shared by all widths of a bit width, and
each option's BN normalises the prefix of its statistics.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from spos.errors import ArchError, ConfigError
from spos.slim import SlicedBatchNorm2d, copy_prefix

__all__ = [
    "FULL_PRECISION_BITS",
    "LsqQuantizer",
    "QuantConvBN",
    "QuantConvChoices",
    "SlicedQuantConvBN",
    "bits_option",
    "lsq_quantize",
    "parse_bits",
    "quant_range",
]

#: Bit width that full-precision layers count as in BitOps and model size (float32).
FULL_PRECISION_BITS = 32

_HALF_DTYPES = (torch.float16, torch.bfloat16)
_STEP_FLOOR = 1e-8  # keeps the step positive; a learned step never gets near it in practice
_OPTION = re.compile(r"^w(\d+)a(\d+)$")


def bits_option(weight_bits: int, activation_bits: int) -> str:
    """The option value of a layer quantised at ``weight_bits`` / ``activation_bits``: ``"w4a8"``."""
    return f"w{int(weight_bits)}a{int(activation_bits)}"


def parse_bits(option: str) -> tuple[int, int]:
    """``(weight_bits, activation_bits)`` of an option such as ``"w4a8"``.

    Raises:
        ConfigError: If ``option`` is not of the form ``w<int>a<int>``.
    """
    match = _OPTION.match(str(option))
    if match is None:
        raise ConfigError(f"bit-width option {option!r} must look like 'w4a8' (weight, activation bits)")
    return int(match.group(1)), int(match.group(2))


def quant_range(bits: int, *, signed: bool) -> tuple[int, int]:
    """``(-Q_N, Q_P)``: the smallest and largest integer level at ``bits`` bits.

    Raises:
        ConfigError: For fewer than 2 signed or 1 unsigned bits (a 1-bit signed LSQ grid
            would be {-1, 0}; binary weights need a sign quantiser, which is not offered).
    """
    bits = int(bits)
    low = 2 if signed else 1
    if not low <= bits <= 16:
        kind = "weight (signed)" if signed else "activation (unsigned)"
        raise ConfigError(f"{kind} bit width must be in {low}..16, got {bits}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``scale`` in the backward pass."""
    scaled = x * scale
    return (x - scaled).detach() + scaled


def _round_ste(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return (x.round() - x).detach() + x


def lsq_quantize(
    x: Tensor, step: Tensor, *, bits: int, signed: bool, gradient_scale: float | None = None
) -> Tensor:
    """Fake-quantise ``x`` with step ``step`` at ``bits`` bits (LSQ).

    Args:
        x: The tensor to quantise.
        step: The step size (a scalar tensor; its absolute value is used).
        bits: Bit width.
        signed: Signed grid (weights) or unsigned (post-ReLU activations).
        gradient_scale: LSQ's step-gradient scale; ``None`` for the plain (exportable)
            float graph without the straight-through estimator.

    Returns:
        ``round(clamp(x / s, -Q_N, Q_P)) * s``, with at most ``2^bits`` distinct values.
    """
    low, high = quant_range(bits, signed=signed)
    if x.dtype in _HALF_DTYPES:
        # Under bf16/fp16 autocast the input is half precision: bf16 keeps 8 significant bits,
        # so x / s = 200.3 would already be 200.0 or 201.0 before round() sees it. The grid
        # arithmetic runs in float32; the next convolution casts back under autocast.
        x = x.float()
    if step.dtype in _HALF_DTYPES:
        step = step.float()
    s = step.abs().clamp_min(_STEP_FLOOR)
    if gradient_scale is None:
        return torch.clamp(x / s, low, high).round() * s
    s = _scale_gradient(s, gradient_scale)
    return _round_ste(torch.clamp(x / s, low, high)) * s


class LsqQuantizer(nn.Module):
    """One LSQ quantiser: a learned step size at a fixed bit width.

    Args:
        bits: Bit width.
        signed: ``True`` for weights, ``False`` for post-ReLU activations.
        per_sample: Count ``N`` of the gradient scale per sample (activations: the input's
            first axis is the batch) instead of over the whole tensor (weights).

    Attributes:
        step: The learned step size (scalar parameter; no weight decay, as it has ``ndim 0``).
        initialized: Buffer, 1 once the step was set from data (saved with checkpoints).
    """

    def __init__(self, bits: int, *, signed: bool, per_sample: bool) -> None:
        super().__init__()
        self.bits = int(bits)
        self.signed = bool(signed)
        self.per_sample = bool(per_sample)
        self.low, self.high = quant_range(self.bits, signed=self.signed)
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        # Python mirror of the buffer: the buffer is read at most once (after construction or
        # a load), not at every training step (a host sync on a GPU).
        self._ready = False

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # the loaded buffer decides again

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        x = x.detach().float() if x.dtype in _HALF_DTYPES else x.detach()
        value = 2.0 * x.abs().mean() / math.sqrt(self.high)
        self.step.copy_(value.clamp_min(1e-4).to(self.step.dtype))
        self.initialized.fill_(1)
        self._ready = True

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantised ``x``; straight-through in train mode with autograd on."""
        if not (self.training and torch.is_grad_enabled()):
            return lsq_quantize(x, self.step, bits=self.bits, signed=self.signed)
        if not self._ready:
            if bool(self.initialized):
                self._ready = True
            else:
                self._initialize(x)
        count = x[0].numel() if self.per_sample and x.dim() > 1 else x.numel()
        scale = 1.0 / math.sqrt(max(1, count) * self.high)
        return lsq_quantize(x, self.step, bits=self.bits, signed=self.signed, gradient_scale=scale)


class QuantConvBN(nn.Module):
    """Quantised convolution + BatchNorm: ``bn(conv(q_a(x), q_w(W)))``.

    The same class is a child-network layer (its own modules, affine BN) and a supernet path
    view (:meth:`QuantConvChoices.path`: the shared convolution with the chosen bit widths'
    quantisers and BN), so the stateful layers of a child and of a supernet path come in the
    same order (activation quantiser, convolution, weight quantiser, BN) and
    :func:`spos.childnet.inherit_weights` copies one into the other.

    :class:`spos.cost.CostModel` reads ``weight_bits`` and ``activation_bits``: the layer's
    multiply-accumulates count ``weight_bits * activation_bits`` BitOps each, its weights
    ``weight_bits`` bits each.

    Args:
        activation_quantizer: Quantiser of the input (unsigned).
        conv: Holds the weight, stride, padding; must have no bias (BN follows).
        weight_quantizer: Quantiser of ``conv.weight`` (signed).
        bn: The BatchNorm after the convolution.
    """

    def __init__(
        self,
        activation_quantizer: LsqQuantizer,
        conv: nn.Conv2d,
        weight_quantizer: LsqQuantizer,
        bn: nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if conv.bias is not None:
            raise ConfigError("QuantConvBN needs a convolution without bias (a BatchNorm follows)")
        if weight_quantizer.signed is False or activation_quantizer.signed is True:
            raise ConfigError("QuantConvBN takes a signed weight and an unsigned activation quantiser")
        self.activation_quantizer = activation_quantizer
        self.conv = conv
        self.weight_quantizer = weight_quantizer
        self.bn = bn

    @property
    def weight_bits(self) -> int:
        return self.weight_quantizer.bits

    @property
    def activation_bits(self) -> int:
        return self.activation_quantizer.bits

    @classmethod
    def build(
        cls,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int,
        weight_bits: int,
        activation_bits: int,
        affine: bool,
    ) -> QuantConvBN:
        """A standalone layer with fresh weights (``padding = kernel_size // 2``)."""
        return cls(
            LsqQuantizer(activation_bits, signed=False, per_sample=True),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
            LsqQuantizer(weight_bits, signed=True, per_sample=False),
            nn.BatchNorm2d(out_channels, affine=affine),
        )

    def forward(self, x: Tensor) -> Tensor:
        conv = self.conv
        weight = self.weight_quantizer(conv.weight)
        out = F.conv2d(
            self.activation_quantizer(x), weight, None, conv.stride, conv.padding, conv.dilation, conv.groups
        )
        return self.bn(out)


class SlicedQuantConvBN(QuantConvBN):
    """Supernet path view of a width-sliced :class:`QuantConvChoices` (one bit-width option).

    ``forward(x, out_channels)`` convolves with the prefix ``W[:out_channels, :x.shape[1]]`` of
    the max-width weight, quantised on its own, and normalises with the prefix of the BN
    statistics (a :class:`spos.slim.SlicedBatchNorm2d`). :meth:`plain` is the standalone
    :class:`QuantConvBN` of one width that computes the same function.
    """

    def forward(self, x: Tensor, out_channels: int | None = None) -> Tensor:  # type: ignore[override]
        """``bn(conv(q_a(x), q_w(W[:out, :in])))``; ``out_channels=None``: every output."""
        conv = self.conv
        width = x.shape[1]
        out = conv.out_channels if out_channels is None else int(out_channels)
        if not (1 <= width <= conv.in_channels and 1 <= out <= conv.out_channels):
            raise ArchError(
                f"sliced quantised conv holds {conv.in_channels} -> {conv.out_channels} channels; "
                f"asked for {width} -> {out}"
            )
        weight = self.weight_quantizer(conv.weight[:out, :width])
        out_tensor = F.conv2d(
            self.activation_quantizer(x), weight, None, conv.stride, conv.padding, conv.dilation, conv.groups
        )
        return self.bn(out_tensor)

    def plain(self, in_channels: int, out_channels: int) -> QuantConvBN:
        """A standalone layer of these widths holding copies of the prefix weight, the steps
        and the prefix of the BN statistics (non-affine BN, as the supernet's).

        Raises:
            ArchError: If a width exceeds the one this layer holds.
        """
        conv = self.conv
        with torch.device(conv.weight.device):
            layer = QuantConvBN.build(
                in_channels,
                out_channels,
                conv.kernel_size[0],
                stride=conv.stride[0],
                weight_bits=self.weight_bits,
                activation_bits=self.activation_bits,
                affine=False,
            )
        copy_prefix(layer, self)
        return layer


class QuantConvChoices(nn.Module):
    """Supernet layer: one shared convolution weight, a quantiser per bit width, a BN per option.

    Args:
        in_channels: Input channels (the largest width, when ``sliced``).
        out_channels: Output channels (the largest width, when ``sliced``).
        kernel_size: Square kernel size (``padding = kernel_size // 2``).
        stride: Convolution stride.
        options: The layer's options, e.g. ``("w2a2", "w2a4", ...)`` (see :func:`bits_option`).
        sliced: Width-sliceable: paths are :class:`SlicedQuantConvBN` views, taking any
            prefix of the input and output channels, and the BNs are
            :class:`spos.slim.SlicedBatchNorm2d` (same state-dict keys and shapes).

    Attributes:
        conv: The shared convolution (weight only).
        weight_quantizers: ``{str(bits): LsqQuantizer}``, one per weight bit width.
        activation_quantizers: ``{str(bits): LsqQuantizer}``, one per activation bit width.
        bns: ``{option: BatchNorm2d}`` (non-affine), one per option.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int,
        options: tuple[str, ...],
        sliced: bool = False,
    ) -> None:
        super().__init__()
        self.sliced = bool(sliced)
        norm = SlicedBatchNorm2d if self.sliced else nn.BatchNorm2d
        view = SlicedQuantConvBN if self.sliced else QuantConvBN
        pairs = {str(option): parse_bits(option) for option in options}
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.weight_quantizers = nn.ModuleDict(
            {str(w): LsqQuantizer(w, signed=True, per_sample=False) for w in sorted({w for w, _ in pairs.values()})}
        )
        self.activation_quantizers = nn.ModuleDict(
            {str(a): LsqQuantizer(a, signed=False, per_sample=True) for a in sorted({a for _, a in pairs.values()})}
        )
        self.bns = nn.ModuleDict({option: norm(out_channels, affine=False) for option in pairs})
        # Path views share this layer's modules; a plain dict, so they are not registered
        # twice (state_dict, .to() and parameters() see each module once, through this layer).
        self._paths: dict[str, QuantConvBN] = {
            option: view(
                self.activation_quantizers[str(a)], self.conv, self.weight_quantizers[str(w)], self.bns[option]
            )
            for option, (w, a) in pairs.items()
        }

    def path(self, option: str) -> QuantConvBN:
        """The layer as run by ``option`` (shares every module with this supernet layer).

        Raises:
            KeyError: If ``option`` is not one of the layer's options.
        """
        return self._paths[option]

    def forward(self, x: Tensor, option: str, out_channels: int | None = None) -> Tensor:
        if out_channels is None:
            return self._paths[option](x)
        if not self.sliced:
            raise ArchError("this quantised layer is not width-sliced; it has no out_channels choice")
        return self._paths[option](x, out_channels)
