"""The ShuffleNetV2 block + channel family, model half: width-sliced supernet, plain child (SPEC section 2).

Spaces of ``family="shufflenet_channel"`` (see :mod:`spos.spaces.shufflenet_channel`) choose, per
block, a candidate (``block_XX``) and a mid-width scale (``width_XX``). The skeleton (stem,
stages, head) is the block search's (:mod:`spos.spaces.shufflenet_model`).

Supernet: every candidate of every block is built once at the largest mid width
``int((out // 2) * max(width_scales))`` from :class:`~spos.slim.SlicedConv2d` and
:class:`~spos.slim.SlicedBatchNorm2d` (non-affine, SPEC section 3); a path at scale ``s`` runs
the prefix ``int((out // 2) * s)`` of the mid channels. Only the mid width is searched: the
first pointwise conv of the main branch produces the chosen width, the convs after it follow
their input, and the block's output width (and the stride-2 projection) is fixed, as in the
official ShuffleNetV2 OneShot channel search.

Child: the plain :class:`~spos.ops.ShuffleBlock` / :class:`~spos.ops.XceptionBlock` at the chosen
mid width (affine BN). :meth:`ChannelShuffleNetSupernet.standalone_path` copies a path's prefix
weights into exactly those blocks, so cost tables count the child's shapes and
:func:`spos.childnet.inherit_weights` gives ``child(x) == supernet(x, arch)`` in eval mode.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from spos.arch import Arch
from spos.errors import ArchError, ConfigError
from spos.ops import (
    ShuffleBlock,
    XceptionBlock,
    _branch_channels,
    _channel_shuffle_for_training,
    _projection,
    channel_shuffle,
)
from spos.slim import SlicedBatchNorm2d, SlicedConv2d, copy_prefix
from spos.space import SearchSpace
from spos.spaces.shufflenet_channel import scaled_mid_channels
from spos.spaces.shufflenet_model import block_plan, build_head, build_stem, initialize_official
from spos.supernet import Supernet, register_family

__all__ = [
    "ChannelShuffleNetChild",
    "ChannelShuffleNetSupernet",
    "SlicedShuffleBlock",
    "SlicedXceptionBlock",
    "build_plain_block",
    "build_sliced_block",
]

_KERNELS = {"shuffle3x3": 3, "shuffle5x5": 5, "shuffle7x7": 7}


class _SlicedTwoBranchBlock(nn.Module, abc.ABC):
    """A ShuffleNetV2 unit at maximum mid width; ``forward(x, mid_channels)`` slices it.

    ``branch_main[self.widen]`` is the conv that produces the mid width; every later sliced
    layer follows the width of its input.
    """

    branch_main: nn.Sequential
    branch_proj: nn.Sequential | None
    widen: int
    max_mid: int

    def forward(self, x: Tensor, mid_channels: int) -> Tensor:
        if not 1 <= mid_channels <= self.max_mid:
            raise ArchError(f"mid width {mid_channels} is outside 1..{self.max_mid} of this block")
        if self.branch_proj is None:
            split = _channel_shuffle_for_training if self.training else channel_shuffle
            passthrough, main = split(x)
        else:
            passthrough, main = self.branch_proj(x), x
        for index, layer in enumerate(self.branch_main):
            main = layer(main, mid_channels) if index == self.widen else layer(main)
        return torch.cat((passthrough, main), 1)

    @abc.abstractmethod
    def plain(self, mid_channels: int) -> nn.Module:
        """The plain block of this candidate at ``mid_channels``, holding the prefix weights."""


class SlicedShuffleBlock(_SlicedTwoBranchBlock):
    """Width-sliceable :class:`~spos.ops.ShuffleBlock` (non-affine BN, supernet only).

    Args:
        in_channels: Block input channels.
        out_channels: Block output channels.
        kernel_size: Depthwise kernel size.
        stride: 1 or 2.
        max_mid: Largest mid width a path may ask for.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel_size: int, stride: int, max_mid: int
    ) -> None:
        super().__init__()
        branch_in, branch_out = _branch_channels(in_channels, out_channels, stride, "shuffle")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_size, self.max_mid, self.widen = kernel_size, max_mid, 0
        self.branch_main = nn.Sequential(
            SlicedConv2d(branch_in, max_mid, 1),
            SlicedBatchNorm2d(max_mid, affine=False),
            nn.ReLU(inplace=True),
            SlicedConv2d(max_mid, max_mid, kernel_size, stride, kernel_size // 2, groups=max_mid),
            SlicedBatchNorm2d(max_mid, affine=False),
            SlicedConv2d(max_mid, branch_out, 1),
            nn.BatchNorm2d(branch_out, affine=False),
            nn.ReLU(inplace=True),
        )
        self.branch_proj = (
            _projection(in_channels, kernel_size=kernel_size, affine=False) if stride == 2 else None
        )

    def plain(self, mid_channels: int) -> nn.Module:
        with torch.device(self.branch_main[0].weight.device):
            block = ShuffleBlock(
                self.in_channels,
                self.out_channels,
                kernel_size=self.kernel_size,
                stride=self.stride,
                affine=False,
                mid_channels=mid_channels,
            )
        return copy_prefix(block, self)


class SlicedXceptionBlock(_SlicedTwoBranchBlock):
    """Width-sliceable :class:`~spos.ops.XceptionBlock` (non-affine BN, supernet only).

    Args:
        in_channels: Block input channels.
        out_channels: Block output channels.
        stride: 1 or 2.
        max_mid: Largest mid width a path may ask for.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, max_mid: int) -> None:
        super().__init__()
        branch_in, branch_out = _branch_channels(in_channels, out_channels, stride, "xception")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_size, self.max_mid, self.widen = 3, max_mid, 2
        self.branch_main = nn.Sequential(
            nn.Conv2d(branch_in, branch_in, 3, stride, 1, groups=branch_in, bias=False),
            nn.BatchNorm2d(branch_in, affine=False),
            SlicedConv2d(branch_in, max_mid, 1),
            SlicedBatchNorm2d(max_mid, affine=False),
            nn.ReLU(inplace=True),
            SlicedConv2d(max_mid, max_mid, 3, 1, 1, groups=max_mid),
            SlicedBatchNorm2d(max_mid, affine=False),
            SlicedConv2d(max_mid, max_mid, 1, out_width="input"),
            SlicedBatchNorm2d(max_mid, affine=False),
            nn.ReLU(inplace=True),
            SlicedConv2d(max_mid, max_mid, 3, 1, 1, groups=max_mid),
            SlicedBatchNorm2d(max_mid, affine=False),
            SlicedConv2d(max_mid, branch_out, 1),
            nn.BatchNorm2d(branch_out, affine=False),
            nn.ReLU(inplace=True),
        )
        self.branch_proj = (
            _projection(in_channels, kernel_size=3, affine=False) if stride == 2 else None
        )

    def plain(self, mid_channels: int) -> nn.Module:
        with torch.device(self.branch_main[0].weight.device):
            block = XceptionBlock(
                self.in_channels,
                self.out_channels,
                stride=self.stride,
                affine=False,
                mid_channels=mid_channels,
            )
        return copy_prefix(block, self)


def build_sliced_block(
    name: str, in_channels: int, out_channels: int, *, stride: int, max_mid: int
) -> _SlicedTwoBranchBlock:
    """The width-sliceable supernet candidate ``name`` (one of the four ShuffleNetV2 blocks)."""
    if name in _KERNELS:
        return SlicedShuffleBlock(
            in_channels, out_channels, kernel_size=_KERNELS[name], stride=stride, max_mid=max_mid
        )
    if name == "xception":
        return SlicedXceptionBlock(in_channels, out_channels, stride=stride, max_mid=max_mid)
    raise ConfigError(
        f"channel search supports the candidates {[*_KERNELS, 'xception']}, not {name!r}"
    )


def build_plain_block(
    name: str, in_channels: int, out_channels: int, *, stride: int, mid_channels: int, affine: bool
) -> nn.Module:
    """The plain candidate ``name`` at ``mid_channels`` (what a child network holds)."""
    if name in _KERNELS:
        return ShuffleBlock(
            in_channels,
            out_channels,
            kernel_size=_KERNELS[name],
            stride=stride,
            affine=affine,
            mid_channels=mid_channels,
        )
    if name == "xception":
        return XceptionBlock(
            in_channels, out_channels, stride=stride, affine=affine, mid_channels=mid_channels
        )
    raise ConfigError(
        f"channel search supports the candidates {[*_KERNELS, 'xception']}, not {name!r}"
    )


def _block_and_width(space: SearchSpace, arch: Arch) -> list[tuple[str, str, str, float]]:
    """``(block label, candidate, width label, scale)`` of every block of ``arch``."""
    count = len(space.choices) // 2
    values = arch.values
    return [
        (values[i][0], str(values[i][1]), values[count + i][0], float(values[count + i][1]))
        for i in range(count)
    ]


def _check_channel_space(space: SearchSpace) -> tuple[list[tuple[int, int, int]], list[float]]:
    """The block plan and width scales of a channel space; clear errors if malformed."""
    labels = space.labels
    count = len(labels) // 2
    expected = [f"block_{i:02d}" for i in range(count)] + [f"width_{i:02d}" for i in range(count)]
    if len(labels) % 2 or list(labels) != expected:
        raise ConfigError(
            f"space {space.name!r}: a shufflenet_channel space needs choices block_00.. then "
            "width_00.. (build it with spos.spaces.shufflenet_channel.channel_space)"
        )
    scales = [float(s) for s in space.layout.get("width_scales", ())]
    if not scales:
        raise ConfigError(f"space {space.name!r}: layout 'width_scales' is missing or empty")
    blocks_only = SearchSpace(space.name, space.version, "shufflenet", space.choices[:count], space.layout)
    return block_plan(blocks_only), scales


class ChannelShuffleNetSupernet(Supernet):
    """Supernet of a block + channel space: every candidate at maximum width, sliced per path.

    Args:
        space: A ``family="shufflenet_channel"`` space.
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space)
        plan, scales = _check_channel_space(space)
        self._count = len(plan)
        self._widths_of = [
            {scale: scaled_mid_channels(out_channels, scale) for scale in scales}
            for _, out_channels, _ in plan
        ]
        self.stem = build_stem(space.layout, affine=False)
        self.blocks = nn.ModuleList()
        for choice, (in_channels, out_channels, stride), widths in zip(
            space.choices[: self._count], plan, self._widths_of, strict=True
        ):
            max_mid = max(widths.values())
            self.blocks.append(
                nn.ModuleDict(
                    {
                        str(option): build_sliced_block(
                            str(option), in_channels, out_channels, stride=stride, max_mid=max_mid
                        )
                        for option in choice.options
                    }
                )
            )
        self.head = build_head(space.layout, plan[-1][1], affine=False)
        initialize_official(self, stem=self.stem)

    def _path(self, arch: Arch) -> list[tuple[str, _SlicedTwoBranchBlock, int]]:
        self.check_arch(arch)
        path = []
        for candidates, widths, (label, name, width_label, scale) in zip(
            self.blocks, self._widths_of, _block_and_width(self.space, arch), strict=True
        ):
            if name not in candidates or scale not in widths:
                raise ArchError(
                    f"{label}={name!r}, {width_label}={scale!r} is not an option of "
                    f"space {self.space.name!r}"
                )
            path.append((label, candidates[name], widths[scale]))
        return path

    def forward(self, x: Tensor, arch: Arch) -> Tensor:
        """Run the path ``arch`` (block types and mid widths) on ``x``; return logits."""
        x = self.stem(x)
        for _, block, mid_channels in self._path(arch):
            x = block(x, mid_channels)
        return self.head(x)

    def path_modules(self, arch: Arch) -> list[tuple[str, nn.Module]]:
        """Stem, the chosen max-width candidates (keyed ``block_XX``), head."""
        return [
            ("stem", self.stem),
            *((label, block) for label, block, _ in self._path(arch)),
            ("head", self.head),
        ]

    def layer_choices(self, key: str) -> tuple[str, ...]:
        """Block ``block_XX`` computes what its type and its width (``width_XX``) decide."""
        if key.startswith("block_") and key in self.space.labels:
            return (key, "width_" + key[len("block_") :])
        return super().layer_choices(key)

    def standalone_path(self, arch: Arch) -> list[tuple[str, nn.Module]]:
        """Stem, plain blocks at the chosen widths holding the prefix weights, head."""
        return [
            ("stem", self.stem),
            *((label, block.plain(mid)) for label, block, mid in self._path(arch)),
            ("head", self.head),
        ]


class ChannelShuffleNetChild(nn.Module):
    """Standalone network of one block + channel path (plain convs, affine BN).

    Its stateful layers come in the order of
    :meth:`ChannelShuffleNetSupernet.standalone_path`, so weights can be inherited.

    Args:
        space: A ``family="shufflenet_channel"`` space.
        arch: An architecture of that space.
    """

    def __init__(self, space: SearchSpace, arch: Arch) -> None:
        super().__init__()
        space.validate(arch)
        self.space, self.arch = space, arch
        plan, _ = _check_channel_space(space)
        self.stem = build_stem(space.layout, affine=True)
        self.blocks = nn.Sequential(
            *(
                build_plain_block(
                    name,
                    in_channels,
                    out_channels,
                    stride=stride,
                    mid_channels=scaled_mid_channels(out_channels, scale),
                    affine=True,
                )
                for (_, name, _, scale), (in_channels, out_channels, stride) in zip(
                    _block_and_width(space, arch), plan, strict=True
                )
            )
        )
        self.head = build_head(space.layout, plan[-1][1], affine=True)
        initialize_official(self, stem=self.stem)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for ``x`` (N, C, H, W; any memory format)."""
        return self.head(self.blocks(self.stem(x)))


register_family(
    "shufflenet_channel", supernet=ChannelShuffleNetSupernet, child=ChannelShuffleNetChild
)
