"""Sliceable convolution and BatchNorm for width choices (SPEC section 2, channel search).

A width supernet allocates every layer once, at its largest width, and a path of width ``w``
uses the *prefix* of that weight: output channels ``[:w]``, input channels ``[:x.shape[1]]``
(the width of whatever arrives), and for BatchNorm the prefix of its running statistics. This
is the once-for-all / slimmable scheme, with the width passed as an argument to ``forward``
instead of stored as hidden "active width" state, so one module serves any path at any time.

* :class:`SlicedConv2d`: a regular ``nn.Conv2d`` at the maximum width whose ``forward`` takes
  the number of output channels (or derives it, see ``out_width``). A depthwise conv slices
  its groups with its channels.
* :class:`SlicedBatchNorm2d`: normalises ``C = x.shape[1]`` channels with the first ``C``
  running statistics (and affine parameters, if any); in training mode it updates only that
  prefix (the buffers are sliced as views, so the in-place update reaches them).
* :func:`copy_prefix`: copies the prefix of a sliced module's weights and statistics into a
  plain module of the chosen widths (child extraction and cost counting).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from spos.errors import ArchError, ConfigError

__all__ = ["SlicedBatchNorm2d", "SlicedConv2d", "copy_prefix", "is_sliced"]


class SlicedConv2d(nn.Conv2d):
    """A convolution at maximum width whose forward uses a prefix of its weight.

    The input width is read from ``x.shape[1]`` and uses weight ``[:, :in]``; the output
    width is the ``out_channels`` argument of :meth:`forward` or, when not given, decided by
    ``out_width``. A depthwise convolution (``groups == in_channels == out_channels``) always
    has as many outputs as inputs and uses weight ``[:in]`` with ``groups = in``.

    Args:
        in_channels: Maximum input channels.
        out_channels: Maximum output channels.
        kernel_size: Square kernel size.
        stride: Stride.
        padding: Zero padding.
        groups: 1 (dense) or ``in_channels`` (depthwise); other groupings cannot be sliced
            by prefix without breaking group boundaries.
        out_width: What ``forward(x)`` without ``out_channels`` produces: ``"full"`` every
            output channel, ``"input"`` as many as the input has (a mid -> mid conv).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        groups: int = 1,
        out_width: Literal["full", "input"] = "full",
    ) -> None:
        depthwise = groups == in_channels == out_channels and groups > 1
        if groups != 1 and not depthwise:
            raise ConfigError(
                f"SlicedConv2d supports dense (groups=1) or depthwise convs, got groups={groups} "
                f"for {in_channels}->{out_channels}"
            )
        if out_width not in ("full", "input"):
            raise ConfigError(f"SlicedConv2d out_width must be 'full' or 'input', got {out_width!r}")
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.depthwise = depthwise
        self.out_width = out_width

    def forward(self, x: Tensor, out_channels: int | None = None) -> Tensor:  # type: ignore[override]
        """Convolve ``x`` (its channels a prefix of ``in_channels``) to ``out_channels``."""
        width = x.shape[1]
        if width > self.in_channels:
            raise ArchError(
                f"SlicedConv2d got {width} input channels but holds weights for at most "
                f"{self.in_channels}"
            )
        if self.depthwise:
            if out_channels is not None and out_channels != width:
                raise ArchError("a depthwise SlicedConv2d has as many outputs as inputs")
            weight, groups = self.weight[:width], width
        else:
            if out_channels is None:
                out_channels = self.out_channels if self.out_width == "full" else width
            if not 1 <= out_channels <= self.out_channels:
                raise ArchError(
                    f"SlicedConv2d asked for {out_channels} output channels; it holds "
                    f"1..{self.out_channels}"
                )
            weight, groups = self.weight[:out_channels, :width], 1
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, groups)


class SlicedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm at maximum width that normalises a prefix of its channels.

    ``forward(x)`` uses the first ``x.shape[1]`` entries of the running statistics (and of the
    scale and shift when affine). Training mode updates exactly that prefix; the momentum and
    cumulative-average rules (``momentum=None``, used by BN recalibration) are those of
    ``nn.BatchNorm2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        width = x.shape[1]
        if width > self.num_features:
            raise ArchError(
                f"SlicedBatchNorm2d got {width} channels but holds statistics for at most "
                f"{self.num_features}"
            )
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        running_mean = self.running_mean[:width] if track and self.running_mean is not None else None
        running_var = self.running_var[:width] if track and self.running_var is not None else None
        weight = self.weight[:width] if self.weight is not None else None
        bias = self.bias[:width] if self.bias is not None else None
        return F.batch_norm(
            x, running_mean, running_var, weight, bias, use_batch_stats, factor, self.eps
        )


def is_sliced(module: nn.Module) -> bool:
    """Whether ``module`` is a sliceable layer of this module."""
    return isinstance(module, (SlicedConv2d, SlicedBatchNorm2d))


def _stateful_leaves(module: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in module.modules()
        if next(m.parameters(recurse=False), None) is not None
        or next(m.buffers(recurse=False), None) is not None
    ]


@torch.no_grad()
def copy_prefix(target: nn.Module, source: nn.Module) -> nn.Module:
    """Copy into ``target`` the prefix of every weight and statistic of ``source``.

    The two modules must have the same stateful layers in the same order (a sliced block and
    the plain block of the chosen width): each tensor of ``target`` receives
    ``source_tensor[:n0, :n1, ...]`` of its own shape. A sliced layer may face the plain layer
    it stands for (``SlicedConv2d`` -> ``nn.Conv2d``, ``SlicedBatchNorm2d`` -> ``BatchNorm2d``).

    Returns:
        ``target``, for chaining.

    Raises:
        ArchError: If the layers do not pair up or a target tensor is wider than its source.
    """
    targets, sources = _stateful_leaves(target), _stateful_leaves(source)
    if len(targets) != len(sources):
        raise ArchError(
            f"cannot copy a prefix: {len(sources)} stateful layers in the source, "
            f"{len(targets)} in the target"
        )
    for index, (into, out_of) in enumerate(zip(targets, sources, strict=True)):
        plain_of = {SlicedConv2d: nn.Conv2d, SlicedBatchNorm2d: nn.BatchNorm2d}.get(
            type(out_of), type(out_of)
        )
        if type(into) is not plain_of and type(into) is not type(out_of):
            raise ArchError(
                f"cannot copy a prefix of layer {index}: a {type(out_of).__name__} into a "
                f"{type(into).__name__}"
            )
        source_state = dict(out_of.named_parameters(recurse=False))
        source_state.update(out_of.named_buffers(recurse=False))
        target_state = dict(into.named_parameters(recurse=False))
        target_state.update(into.named_buffers(recurse=False))
        for name, tensor in target_state.items():
            value = source_state.get(name)
            if value is None:
                if isinstance(into, _BatchNorm) and name in ("weight", "bias"):
                    continue  # a non-affine source: the target keeps its own scale/shift
                raise ArchError(f"source layer {index} has no {name!r}")
            if value.dim() != tensor.dim() or any(
                t > s for t, s in zip(tensor.shape, value.shape, strict=True)
            ):
                raise ArchError(
                    f"layer {index} {name}: target shape {tuple(tensor.shape)} is not a prefix "
                    f"of source shape {tuple(value.shape)}"
                )
            tensor.copy_(value[tuple(slice(0, n) for n in tensor.shape)])
    return target
