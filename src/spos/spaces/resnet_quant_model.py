"""The mixed-precision ResNet family, model half: supernet and quantised child (SPEC section 2).

Skeleton (read from ``SearchSpace.layout``, see :func:`spos.spaces.resnet_quant.resnet_quant_space`):
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

Bit widths combined with channel choices (a layout with ``width_scales``): each block's
``width_s{stage}b{block}`` choice sets its middle width ``scaled_width(out_channels, scale)``,
the output width of conv1 and the input width of conv2. The supernet allocates both at the
largest scale and slices a prefix of the weight and of the BN statistics per path
(:class:`spos.quant.SlicedQuantConvBN`, the once-for-all scheme of :mod:`spos.slim`); the child
is built at the chosen widths and :meth:`ResNetQuantSupernet.standalone_path` copies the prefix
into plain layers of those widths, so cost tables count the child's shapes and
:func:`spos.childnet.inherit_weights` gives ``child(x) == supernet(x, arch)`` in eval mode.
Costs of conv1 and conv2 read both their bit widths and the block's width
(:meth:`ResNetQuantSupernet.layer_choices`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from spos.arch import Arch
from spos.errors import ArchError, ConfigError
from spos.ops import GlobalAvgPool
from spos.quant import QuantConvBN, QuantConvChoices, SlicedQuantConvBN, parse_bits
from spos.space import SearchSpace
from spos.spaces.resnet_quant import scaled_width
from spos.supernet import Supernet, register_family

__all__ = ["ResNetQuantChild", "ResNetQuantSupernet", "block_plan"]


def block_plan(space: SearchSpace) -> list[dict[str, Any]]:
    """Every basic block: ``in_channels``, ``out_channels``, ``stride`` and its choice labels.

    With ``width_scales`` in the layout a block also has ``width`` (its width choice's label)
    and ``widths`` (``{scale: middle width}``); both are ``None`` otherwise.

    Raises:
        ConfigError: If the layout does not produce the space's choices.
    """
    layout = space.layout
    scales = layout.get("width_scales")
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
                    "width": f"width_{prefix}" if scales is not None else None,
                    "widths": (
                        {float(s): scaled_width(int(out_channels), float(s)) for s in scales}
                        if scales is not None
                        else None
                    ),
                }
            )
            in_channels = int(out_channels)
    labels = [block[key] for block in plan for key in ("conv1", "conv2", "down") if block[key]]
    labels += [block["width"] for block in plan if block["width"]]
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
        widths = block["widths"]
        sliced = widths is not None
        mid = max(widths.values()) if sliced else o  # may exceed o: scales above 1.0
        self.conv1 = QuantConvChoices(i, mid, 3, stride=s, options=options[block["conv1"]], sliced=sliced)
        self.conv2 = QuantConvChoices(mid, o, 3, stride=1, options=options[block["conv2"]], sliced=sliced)
        self.down = (
            QuantConvChoices(i, o, 1, stride=s, options=options[block["down"]]) if block["down"] else None
        )
        self.labels = (block["conv1"], block["conv2"], block["down"])
        self.in_channels, self.out_channels = i, o
        self.width_label: str | None = block["width"]
        self.widths: dict[float, int] | None = widths


class ResNetQuantSupernet(Supernet):
    """Supernet of a mixed-precision ResNet space (``family="resnet_quant"``).

    Args:
        space: A space from :func:`spos.spaces.resnet_quant.resnet_quant_space`.
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space)
        plan = block_plan(space)
        widths = {block["width"] for block in plan if block["width"]}
        bit_choices = [c for c in space.choices if c.label not in widths]
        options = {c.label: tuple(str(o) for o in c.options) for c in bit_choices}
        for choice in bit_choices:
            for option in choice.options:
                parse_bits(str(option))
        self.stem = _build_stem(space.layout, affine=False)
        self.blocks = nn.ModuleList(_SupernetBlock(block, options) for block in plan)
        self.head = _build_head(space.layout, plan[-1]["out_channels"])
        self.relu = nn.ReLU(inplace=True)
        self._positions = {label: i for i, label in enumerate(space.labels)}
        # conv1 and conv2 of a block with a width choice compute what their bits and it decide
        self._width_of = {
            label: block.width_label
            for block in self.blocks
            if block.width_label is not None
            for label in block.labels[:2]
        }
        _initialize(self)

    def _layer(self, layer: QuantConvChoices, label: str, arch: Arch) -> QuantConvBN:
        value = arch.values[self._positions[label]][1]
        try:
            return layer.path(str(value))
        except KeyError:
            raise ArchError(f"{value!r} is not an option of {label!r}") from None

    def _mid_width(self, block: _SupernetBlock, arch: Arch) -> int | None:
        """The block's middle width on the path ``arch`` (None: the block has no width choice)."""
        if block.widths is None:
            return None
        value = arch.values[self._positions[block.width_label]][1]
        try:
            return block.widths[float(value)]
        except (KeyError, TypeError, ValueError):
            raise ArchError(f"{value!r} is not an option of {block.width_label!r}") from None

    def forward(self, x: Tensor, arch: Arch) -> Tensor:
        """Run the path ``arch`` on ``x`` (N, C, H, W); return the logits."""
        self.check_arch(arch)
        x = self.stem(x)
        for block in self.blocks:
            conv1, conv2, down = block.labels
            mid = self._mid_width(block, arch)
            layer1 = self._layer(block.conv1, conv1, arch)
            out = self.relu(layer1(x) if mid is None else layer1(x, mid))
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

    def layer_choices(self, key: str) -> tuple[str, ...]:
        """conv1 and conv2 of a block with a width choice read their bits and that width."""
        width = self._width_of.get(key)
        return (key, width) if width is not None else super().layer_choices(key)

    def standalone_path(self, arch: Arch) -> list[tuple[str, nn.Module]]:
        """:meth:`path_modules`, with the width-sliced convs as plain layers of the chosen
        widths holding the prefix weights (what the child network holds)."""
        if not self._width_of:
            return self.path_modules(arch)
        self.check_arch(arch)
        modules: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for block in self.blocks:
            conv1, conv2, down = block.labels
            mid = self._mid_width(block, arch)
            first, second = self._layer(block.conv1, conv1, arch), self._layer(block.conv2, conv2, arch)
            if mid is not None:
                assert isinstance(first, SlicedQuantConvBN) and isinstance(second, SlicedQuantConvBN)
                first = first.plain(block.in_channels, mid)
                second = second.plain(mid, block.out_channels)
            modules += [(conv1, first), (conv2, second)]
            if block.down is not None:
                modules.append((down, self._layer(block.down, down, arch)))
        modules.append(("head", self.head))
        return modules


class _ChildBlock(nn.Module):
    def __init__(self, block: Mapping[str, Any], arch: Arch) -> None:
        super().__init__()
        i, o, s = block["in_channels"], block["out_channels"], block["stride"]
        mid = o if block["widths"] is None else block["widths"][float(arch[block["width"]])]

        def layer(label: str, in_channels: int, out_channels: int, kernel: int, stride: int) -> QuantConvBN:
            w, a = parse_bits(str(arch[label]))
            return QuantConvBN.build(
                in_channels, out_channels, kernel, stride=stride, weight_bits=w, activation_bits=a, affine=True
            )

        self.conv1 = layer(block["conv1"], i, mid, 3, s)
        self.conv2 = layer(block["conv2"], mid, o, 3, 1)
        self.down = layer(block["down"], i, o, 1, s) if block["down"] else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + (self.down(x) if self.down is not None else x))


class ResNetQuantChild(nn.Module):
    """The quantised network of one architecture (fixed bit widths and widths, affine BN).

    Its stateful layers come in the order of ``ResNetQuantSupernet.standalone_path(arch)``, so
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
