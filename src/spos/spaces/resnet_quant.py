"""The mixed-precision ResNet family: supernet and quantised child (SPEC section 2).

Skeleton (read from ``SearchSpace.layout``, see :func:`spos.spaces.catalog.resnet_quant_space`):
stem conv ``stem_kernel`` (``stem_stride``) + BN + ReLU (+ 3x3 stride-2 max-pool when
``stem_pool``), full precision; basic blocks ``relu(bn(conv2(relu(bn(conv1(x))))) + shortcut)``
with a 1x1 projection conv + BN shortcut where the shape changes; global average pool and a
full-precision linear classifier (with bias). Every block conv is a
:class:`spos.quant.QuantConvBN` whose weight and activation bit widths are the architecture's
value for that layer (``"w4a8"``).

Supernet (SPEC section 3): each quantised layer is a :class:`spos.quant.QuantConvChoices`:
one convolution weight shared by all bit widths, an LSQ step size per weight and per
activation bit width, a non-affine BN per option; stem and head BN are non-affine too. The
child of one architecture (SPEC section 5) is the same network with fixed bit widths and
affine BN; retraining it is quantisation-aware training of the found configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from spos.arch import Arch
from spos.errors import ArchError, ConfigError
from spos.ops import GlobalAvgPool
from spos.quant import QuantConvBN, QuantConvChoices, parse_bits
from spos.space import SearchSpace
from spos.supernet import Supernet, register_family

__all__ = ["ResNetQuantChild", "ResNetQuantSupernet", "block_plan"]


def block_plan(space: SearchSpace) -> list[dict[str, Any]]:
    """Every basic block: ``in_channels``, ``out_channels``, ``stride`` and its choice labels.

    Raises:
        ConfigError: If the layout does not produce the space's choices.
    """
    layout = space.layout
    plan = []
    in_channels = int(layout["stem_channels"])
    repeats, channels, strides = layout["stage_repeats"], layout["stage_channels"], layout["stage_strides"]
    for stage, (repeat, out_channels, stage_stride) in enumerate(zip(repeats, channels, strides, strict=True)):
        for block in range(int(repeat)):
            prefix = f"s{stage + 1}b{block}"
            stride = int(stage_stride) if block == 0 else 1
            down = stride != 1 or in_channels != int(out_channels)
            plan.append(
                {
                    "in_channels": in_channels,
                    "out_channels": int(out_channels),
                    "stride": stride,
                    "conv1": f"{prefix}_conv1",
                    "conv2": f"{prefix}_conv2",
                    "down": f"{prefix}_down" if down else None,
                }
            )
            in_channels = int(out_channels)
    labels = [block[key] for block in plan for key in ("conv1", "conv2", "down") if block[key]]
    if tuple(labels) != space.labels:
        raise ConfigError(
            f"space {space.name!r}: its layout gives layers {labels[:4]}... but the space has "
            f"choices {list(space.labels[:4])}...; rebuild it with create_space"
        )
    return plan


def _build_stem(layout: Mapping[str, Any], *, affine: bool) -> nn.Sequential:
    kernel = int(layout["stem_kernel"])
    layers: list[nn.Module] = [
        nn.Conv2d(
            int(layout["in_channels"]),
            int(layout["stem_channels"]),
            kernel,
            int(layout["stem_stride"]),
            kernel // 2,
            bias=False,
        ),
        nn.BatchNorm2d(int(layout["stem_channels"]), affine=affine),
        nn.ReLU(inplace=True),
    ]
    if layout["stem_pool"]:
        layers.append(nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(*layers)


def _build_head(layout: Mapping[str, Any], in_channels: int) -> nn.Sequential:
    return nn.Sequential(GlobalAvgPool(), nn.Linear(in_channels, int(layout["num_classes"])))


def _initialize(model: nn.Module) -> None:
    """He (fan-out) init for convs, as torchvision's ResNet; BN scale 1, shift 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d) and module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class _SupernetBlock(nn.Module):
    def __init__(self, block: Mapping[str, Any], options: Mapping[str, tuple[str, ...]]) -> None:
        super().__init__()
        i, o, s = block["in_channels"], block["out_channels"], block["stride"]
        self.conv1 = QuantConvChoices(i, o, 3, stride=s, options=options[block["conv1"]])
        self.conv2 = QuantConvChoices(o, o, 3, stride=1, options=options[block["conv2"]])
        self.down = (
            QuantConvChoices(i, o, 1, stride=s, options=options[block["down"]]) if block["down"] else None
        )
        self.labels = (block["conv1"], block["conv2"], block["down"])


class ResNetQuantSupernet(Supernet):
    """Supernet of a mixed-precision ResNet space (``family="resnet_quant"``).

    Args:
        space: A space from :func:`spos.spaces.catalog.resnet_quant_space`.
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space)
        plan = block_plan(space)
        options = {c.label: tuple(str(o) for o in c.options) for c in space.choices}
        for choice in space.choices:
            for option in choice.options:
                parse_bits(str(option))
        self.stem = _build_stem(space.layout, affine=False)
        self.blocks = nn.ModuleList(_SupernetBlock(block, options) for block in plan)
        self.head = _build_head(space.layout, plan[-1]["out_channels"])
        self.relu = nn.ReLU(inplace=True)
        self._positions = {label: i for i, label in enumerate(space.labels)}
        _initialize(self)

    def _layer(self, layer: QuantConvChoices, label: str, arch: Arch) -> QuantConvBN:
        value = arch.values[self._positions[label]][1]
        try:
            return layer.path(str(value))
        except KeyError:
            raise ArchError(f"{value!r} is not an option of {label!r}") from None

    def forward(self, x: Tensor, arch: Arch) -> Tensor:
        """Run the path ``arch`` on ``x`` (N, C, H, W); return the logits."""
        self.check_arch(arch)
        x = self.stem(x)
        for block in self.blocks:
            conv1, conv2, down = block.labels
            out = self.relu(self._layer(block.conv1, conv1, arch)(x))
            out = self._layer(block.conv2, conv2, arch)(out)
            shortcut = self._layer(block.down, down, arch)(x) if block.down is not None else x
            x = self.relu(out + shortcut)
        return self.head(x)

    def path_modules(self, arch: Arch) -> list[tuple[str, nn.Module]]:
        self.check_arch(arch)
        modules: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for block in self.blocks:
            for layer, label in zip((block.conv1, block.conv2, block.down), block.labels, strict=True):
                if layer is not None:
                    modules.append((label, self._layer(layer, label, arch)))
        modules.append(("head", self.head))
        return modules


class _ChildBlock(nn.Module):
    def __init__(self, block: Mapping[str, Any], arch: Arch) -> None:
        super().__init__()
        i, o, s = block["in_channels"], block["out_channels"], block["stride"]

        def layer(label: str, in_channels: int, kernel: int, stride: int) -> QuantConvBN:
            w, a = parse_bits(str(arch[label]))
            return QuantConvBN.build(
                in_channels, o, kernel, stride=stride, weight_bits=w, activation_bits=a, affine=True
            )

        self.conv1 = layer(block["conv1"], i, 3, s)
        self.conv2 = layer(block["conv2"], o, 3, 1)
        self.down = layer(block["down"], i, 1, s) if block["down"] else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + (self.down(x) if self.down is not None else x))


class ResNetQuantChild(nn.Module):
    """The quantised network of one architecture (fixed bit widths, affine BN).

    Its stateful layers come in the order of ``ResNetQuantSupernet.path_modules(arch)``, so
    :func:`spos.childnet.inherit_weights` copies a path (weights, LSQ steps, BN statistics).

    Args:
        space: A ``family="resnet_quant"`` space.
        arch: An architecture of that space.
    """

    def __init__(self, space: SearchSpace, arch: Arch) -> None:
        super().__init__()
        space.validate(arch)
        self.space = space
        self.arch = arch
        plan = block_plan(space)
        self.stem = _build_stem(space.layout, affine=True)
        self.blocks = nn.Sequential(*(_ChildBlock(block, arch) for block in plan))
        self.head = _build_head(space.layout, plan[-1]["out_channels"])
        _initialize(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for ``x`` (N, C, H, W)."""
        return self.head(self.blocks(self.stem(x)))


register_family("resnet_quant", supernet=ResNetQuantSupernet, child=ResNetQuantChild)
