"""The ShuffleNetV2 block-search family, model half: supernet and standalone child (SPEC section 2).

The spaces are in :mod:`spos.spaces.shufflenet`.

Skeleton (read from ``SearchSpace.layout``): stem conv3x3 (``stem_stride``) + BN + ReLU; one
choice block per entry of ``stage_repeats``, the first block of stage ``s`` with stride
``stage_strides[s]``; head conv1x1 -> ``head_channels`` + BN + ReLU, global average pool,
dropout, linear without bias. Each choice block's options name ops of :mod:`spos.ops`.

Supernet BatchNorm (SPEC section 3): every BN of the supernet is non-affine, the stem's and
head's included, exactly as the official SPOS supernet; the candidates of a block each own
their BN. The child network of one path (SPEC section 5) has the same layers with affine BN.
Weights are initialised as in the official release (see :func:`initialize_official`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from spos.arch import Arch
from spos.errors import ArchError, ConfigError
from spos.ops import GlobalAvgPool, create_op
from spos.space import SearchSpace
from spos.supernet import Supernet, register_family

__all__ = [
    "ShuffleNetChild",
    "ShuffleNetSupernet",
    "block_plan",
    "build_head",
    "build_stem",
    "initialize_official",
]


def _layout_int(layout: Mapping[str, Any], key: str) -> int:
    try:
        value = layout[key]
    except KeyError:
        raise ConfigError(f"shufflenet layout is missing {key!r}") from None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"shufflenet layout {key!r} must be a positive integer, got {value!r}")
    return value


def block_plan(space: SearchSpace) -> list[tuple[int, int, int]]:
    """``(in_channels, out_channels, stride)`` of every choice block, in order.

    Raises:
        ConfigError: If the layout is inconsistent (list lengths, block count, channels).
    """
    layout = space.layout
    repeats = [int(r) for r in layout.get("stage_repeats", ())]
    channels = [int(c) for c in layout.get("stage_channels", ())]
    strides = [int(s) for s in layout.get("stage_strides", ())]
    if not repeats or not len(repeats) == len(channels) == len(strides):
        raise ConfigError(
            f"space {space.name!r}: stage_repeats, stage_channels and stage_strides must be "
            f"non-empty lists of one length (got {len(repeats)}, {len(channels)}, {len(strides)})"
        )
    if sum(repeats) != len(space.choices):
        raise ConfigError(
            f"space {space.name!r}: stage_repeats sum to {sum(repeats)} blocks but the space "
            f"has {len(space.choices)} choices"
        )
    plan = []
    in_channels = _layout_int(layout, "stem_channels")
    for repeat, out_channels, stride in zip(repeats, channels, strides, strict=True):
        for index in range(repeat):
            plan.append((in_channels, out_channels, stride if index == 0 else 1))
            in_channels = out_channels
    return plan


def build_stem(layout: Mapping[str, Any], *, affine: bool) -> nn.Sequential:
    """Stem: conv3x3 (``stem_stride``) + BN + ReLU."""
    channels = _layout_int(layout, "stem_channels")
    return nn.Sequential(
        nn.Conv2d(
            _layout_int(layout, "in_channels"),
            channels,
            3,
            _layout_int(layout, "stem_stride"),
            1,
            bias=False,
        ),
        nn.BatchNorm2d(channels, affine=affine),
        nn.ReLU(inplace=True),
    )


def build_head(layout: Mapping[str, Any], in_channels: int, *, affine: bool) -> nn.Sequential:
    """Head: conv1x1 + BN + ReLU, global average pool, dropout, linear (no bias)."""
    channels = _layout_int(layout, "head_channels")
    dropout = float(layout.get("dropout", 0.0))
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"shufflenet layout 'dropout' must be in [0, 1), got {dropout}")
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(channels, affine=affine),
        nn.ReLU(inplace=True),
        GlobalAvgPool(),
        nn.Dropout(dropout),
        nn.Linear(channels, _layout_int(layout, "num_classes"), bias=False),
    )


def initialize_official(model: nn.Module, *, stem: nn.Module) -> None:
    """Initialise weights as the official SPOS release does.

    Stem conv ~ N(0, 0.01); other convs ~ N(0, 1 / weight.shape[1]); BN scale 1, shift 1e-4
    (when affine), running mean 0; linear ~ N(0, 0.01), bias 0.
    """
    stem_convs = {id(m) for m in stem.modules() if isinstance(m, nn.Conv2d)}
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            std = 0.01 if id(module) in stem_convs else 1.0 / module.weight.shape[1]
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            if module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.constant_(module.bias, 1e-4)
            if module.running_mean is not None:
                nn.init.zeros_(module.running_mean)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class ShuffleNetSupernet(Supernet):
    """Supernet of a ShuffleNetV2 block-search space: every candidate of every block.

    ``blocks[i]`` is an ``nn.ModuleDict`` from option name to candidate module; the forward
    pass indexes it with the architecture's value, so a call costs one dict lookup per block
    on top of the path's own compute.

    Args:
        space: A ``family="shufflenet"`` space (see :mod:`spos.spaces.shufflenet`).
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space)
        layout = space.layout
        plan = block_plan(space)
        self.stem = build_stem(layout, affine=False)
        self.blocks = nn.ModuleList()
        for choice, (in_channels, out_channels, stride) in zip(space.choices, plan, strict=True):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        str(option): create_op(
                            str(option), in_channels, out_channels, stride=stride, affine=False
                        )
                        for option in choice.options
                    }
                )
            )
        self.head = build_head(layout, plan[-1][1], affine=False)
        initialize_official(self, stem=self.stem)

    def forward(self, x: Tensor, arch: Arch) -> Tensor:
        """Run the path ``arch`` on ``x`` (N, C, H, W; any memory format); return logits."""
        self.check_arch(arch)
        x = self.stem(x)
        for candidates, (label, value) in zip(self.blocks, arch.values, strict=True):
            try:
                block = candidates[value]
            except KeyError:
                raise ArchError(f"{value!r} is not an option of {label!r}") from None
            x = block(x)
        return self.head(x)

    def path_modules(self, arch: Arch) -> list[tuple[str, nn.Module]]:
        self.check_arch(arch)
        modules: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for candidates, (label, value) in zip(self.blocks, arch.values, strict=True):
            if value not in candidates:
                raise ArchError(f"{value!r} is not an option of {label!r}")
            modules.append((label, candidates[value]))
        modules.append(("head", self.head))
        return modules


class ShuffleNetChild(nn.Module):
    """Standalone network of one path (affine BN), for retraining and export.

    Its layers come in the same order as ``ShuffleNetSupernet.path_modules(arch)``, so
    :func:`spos.childnet.inherit_weights` can copy a path's weights into it.

    Args:
        space: A ``family="shufflenet"`` space.
        arch: An architecture of that space.

    Attributes:
        space: The search space.
        arch: The architecture this network implements.
    """

    def __init__(self, space: SearchSpace, arch: Arch) -> None:
        super().__init__()
        space.validate(arch)
        self.space = space
        self.arch = arch
        layout = space.layout
        plan = block_plan(space)
        self.stem = build_stem(layout, affine=True)
        self.blocks = nn.Sequential(
            *(
                create_op(str(value), in_channels, out_channels, stride=stride, affine=True)
                for (_, value), (in_channels, out_channels, stride) in zip(
                    arch.values, plan, strict=True
                )
            )
        )
        self.head = build_head(layout, plan[-1][1], affine=True)
        initialize_official(self, stem=self.stem)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for ``x`` (N, C, H, W; any memory format)."""
        return self.head(self.blocks(self.stem(x)))


register_family("shufflenet", supernet=ShuffleNetSupernet, child=ShuffleNetChild)
# User-defined spaces: the same stem / stages / head skeleton, every choice a registered op
# (spos.ops.register_op), so a few lines of op + space definition give a full pipeline.
register_family("shufflenet_ops", supernet=ShuffleNetSupernet, child=ShuffleNetChild)
