"""The mixed-precision ResNet family, torch-free half: its spaces (SPEC section 2).

``resnet18_quant`` and ``resnet34_quant`` (ImageNet, 224x224) and ``resnet20_quant_cifar``
(32x32 or 28x28): every conv but the stem picks weight and activation bit widths. Bit widths
combined with channel choices (SPEC: "combined with channel choices"): a layout with
``width_scales`` adds one width choice per basic block, ``width_s{stage}b{block}``, the scale
of the block's middle width (conv1's outputs, conv2's inputs). ``resnet18_quant_channel``,
``resnet34_quant_channel`` and ``resnet20_quant_channel_cifar`` are those spaces, with
:data:`QUANT_WIDTH_SCALES` by default (``space.layout.width_scales=[...]`` replaces them), as
``shufflenet_channel_*`` extend ``shufflenet_*``; the three plain spaces keep their layout,
so their architectures, checkpoints and cost tables are unchanged. The model builders are in
:mod:`spos.spaces.resnet_quant_model` (imported the first time a supernet is built), the
quantiser in :mod:`spos.quant`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spos.errors import ConfigError
from spos.space import Choice, SearchSpace, register_model_module, register_space

__all__ = [
    "QUANT_BITS",
    "QUANT_WIDTH_SCALES",
    "resnet18_quant",
    "resnet18_quant_channel",
    "resnet20_quant_cifar",
    "resnet20_quant_channel_cifar",
    "resnet34_quant",
    "resnet34_quant_channel",
    "resnet_quant_space",
    "scaled_width",
]


register_model_module("resnet_quant", "spos.spaces.resnet_quant_model")

#: Default candidate bit widths of every quantised conv (weights and activations).
QUANT_BITS = (2, 3, 4, 8)

#: Default middle-width scales of the ``*_quant_channel*`` spaces (1.0: the plain ResNet).
QUANT_WIDTH_SCALES = (0.5, 0.75, 1.0)


def scaled_width(channels: int, scale: float) -> int:
    """Middle width of a basic block with ``channels`` outputs at ``scale``.

    The ShuffleNetV2 channel search's rule (:func:`spos.spaces.shufflenet_channel.scaled_mid_channels`:
    truncation of the float product, as the official code writes it) applied to the block's
    full width instead of half of it, and at least one channel.
    """
    return max(1, int(int(channels) * float(scale)))


def _width_scales(name: str, value: Any) -> list[float]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or not value
        or any(isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0 for s in value)
    ):
        raise ConfigError(
            f"space {name!r}: layout 'width_scales' must be a non-empty list of positive numbers "
            f"(e.g. [0.5, 0.75, 1.0]), got {value!r}"
        )
    scales = [float(s) for s in value]
    if len(set(scales)) != len(scales):
        raise ConfigError(f"space {name!r}: layout 'width_scales' repeats a scale: {scales}")
    return scales


def _bit_list(name: str, key: str, value: Any, *, least: int) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"space {name!r}: layout {key!r} must be a non-empty list of bit widths")
    bits = []
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool) or not least <= item <= 16:
            raise ConfigError(
                f"space {name!r}: layout {key!r} holds {item!r}; bit widths are integers in "
                f"{least}..16 (full precision is the un-searched first and last layer)"
            )
        bits.append(item)
    if len(set(bits)) != len(bits):
        raise ConfigError(f"space {name!r}: layout {key!r} repeats a bit width: {bits}")
    return sorted(bits)


def resnet_quant_space(name: str, *, version: int = 1, **layout: Any) -> SearchSpace:
    """A ResNet (basic blocks) whose every conv but the stem chooses its bit widths.

    One choice per quantised conv, ``{stage}{block}_conv1``, ``..._conv2`` and ``..._down``
    (the 1x1 projection shortcut where the shape changes), e.g. ``s2b0_conv1``; its options
    are ``"w{weight_bits}a{activation_bits}"`` for every pair of the layout's
    ``weight_bits`` x ``activation_bits``. The pair is one choice, not two, so every cost
    (BitOps = MACs x weight bits x activation bits) stays one table entry per (layer, option)
    and the architecture reads as one value per layer. The stem conv and the classifier stay
    full precision.

    With ``width_scales`` in the layout (e.g. ``[0.5, 0.75, 1.0]``) every basic block also
    chooses its middle width, ``width_{stage}{block}`` (e.g. ``width_s2b0``): conv1 produces
    :func:`scaled_width` ``(out_channels, scale)`` channels and conv2 reads them; the block's
    output and its projection shortcut keep their width. These choices come after every
    bit-width choice, so an architecture's bit widths read as in the space without widths; the
    ``width_`` prefix is the one :class:`spos.sampling.ChoiceSchedule` warms up by default
    (full width first, ``supernet.sampler.warmup_steps``). Without ``width_scales`` (or with
    ``None``) the space is the plain mixed-precision one, layout included.

    Layout keys: ``input_size``, ``in_channels``, ``num_classes``, ``stem_channels``,
    ``stem_kernel``, ``stem_stride``, ``stem_pool`` (3x3 stride-2 max-pool after the stem),
    ``stage_repeats``, ``stage_channels``, ``stage_strides``, ``weight_bits``,
    ``activation_bits``; optional ``width_scales``.
    """
    required = (
        "input_size", "in_channels", "num_classes", "stem_channels", "stem_kernel", "stem_stride",
        "stem_pool", "stage_repeats", "stage_channels", "stage_strides", "weight_bits",
        "activation_bits",
    )  # fmt: skip
    missing = [key for key in required if key not in layout]
    if missing:
        raise ConfigError(f"space {name!r}: layout lacks {missing}")
    repeats, channels, strides = (
        list(layout["stage_repeats"]),
        list(layout["stage_channels"]),
        list(layout["stage_strides"]),
    )
    if not repeats or not len(repeats) == len(channels) == len(strides):
        raise ConfigError(
            f"space {name!r}: stage_repeats, stage_channels and stage_strides must be non-empty "
            f"lists of one length (got {len(repeats)}, {len(channels)}, {len(strides)})"
        )
    if any(not isinstance(r, int) or r < 1 for r in repeats):
        raise ConfigError(f"space {name!r}: stage_repeats must be positive integers, got {repeats}")
    weight_bits = _bit_list(name, "weight_bits", layout["weight_bits"], least=2)
    activation_bits = _bit_list(name, "activation_bits", layout["activation_bits"], least=1)
    options = tuple(f"w{w}a{a}" for w in weight_bits for a in activation_bits)
    labels = []
    width_labels = []
    in_channels = int(layout["stem_channels"])
    for stage, (repeat, out_channels, stride) in enumerate(zip(repeats, channels, strides, strict=True)):
        for block in range(repeat):
            prefix = f"s{stage + 1}b{block}"
            labels += [f"{prefix}_conv1", f"{prefix}_conv2"]
            width_labels.append(f"width_{prefix}")
            if (stride if block == 0 else 1) != 1 or in_channels != out_channels:
                labels.append(f"{prefix}_down")
            in_channels = out_channels
    layout = {**layout, "weight_bits": weight_bits, "activation_bits": activation_bits}
    choices = [Choice(label, options) for label in labels]
    if layout.get("width_scales") is None:
        layout.pop("width_scales", None)  # absent: the plain space, its layout unchanged
    else:
        scales = _width_scales(name, layout["width_scales"])
        layout["width_scales"] = scales
        choices += [Choice(label, tuple(scales)) for label in width_labels]
    return SearchSpace(name, version, "resnet_quant", tuple(choices), layout)


_RESNET_IMAGENET = dict(
    input_size=224,
    in_channels=3,
    num_classes=1000,
    stem_channels=64,
    stem_kernel=7,
    stem_stride=2,
    stem_pool=True,
    stage_channels=[64, 128, 256, 512],
    stage_strides=[1, 2, 2, 2],
    weight_bits=list(QUANT_BITS),
    activation_bits=list(QUANT_BITS),
)


@register_space("resnet18_quant")
def resnet18_quant(**layout: Any) -> SearchSpace:
    """ResNet-18 (ImageNet, 224x224) mixed-precision space: 19 quantised convs x 16 options."""
    defaults = {**_RESNET_IMAGENET, "stage_repeats": [2, 2, 2, 2]}
    return resnet_quant_space("resnet18_quant", **{**defaults, **layout})


@register_space("resnet34_quant")
def resnet34_quant(**layout: Any) -> SearchSpace:
    """ResNet-34 (ImageNet, 224x224) mixed-precision space: 35 quantised convs x 16 options."""
    defaults = {**_RESNET_IMAGENET, "stage_repeats": [3, 4, 6, 3]}
    return resnet_quant_space("resnet34_quant", **{**defaults, **layout})


@register_space("resnet18_quant_channel")
def resnet18_quant_channel(**layout: Any) -> SearchSpace:
    """``resnet18_quant`` with a middle-width choice per block (8 blocks x 3 scales)."""
    defaults = {**_RESNET_IMAGENET, "stage_repeats": [2, 2, 2, 2], "width_scales": list(QUANT_WIDTH_SCALES)}
    return resnet_quant_space("resnet18_quant_channel", **{**defaults, **layout})


@register_space("resnet34_quant_channel")
def resnet34_quant_channel(**layout: Any) -> SearchSpace:
    """``resnet34_quant`` with a middle-width choice per block (16 blocks x 3 scales)."""
    defaults = {**_RESNET_IMAGENET, "stage_repeats": [3, 4, 6, 3], "width_scales": list(QUANT_WIDTH_SCALES)}
    return resnet_quant_space("resnet34_quant_channel", **{**defaults, **layout})


_RESNET_CIFAR = dict(
    input_size=32,
    in_channels=3,
    num_classes=10,
    stem_channels=16,
    stem_kernel=3,
    stem_stride=1,
    stem_pool=False,
    stage_repeats=[3, 3, 3],
    stage_channels=[16, 32, 64],
    stage_strides=[1, 2, 2],
    weight_bits=list(QUANT_BITS),
    activation_bits=list(QUANT_BITS),
)


@register_space("resnet20_quant_cifar")
def resnet20_quant_cifar(**layout: Any) -> SearchSpace:
    """CIFAR ResNet-20 (32x32; 28x28 works) mixed-precision space: 20 quantised convs.

    He et al.'s CIFAR ResNet (3x3 stem, 3 stages of 3 basic blocks at 16/32/64 channels)
    with 1x1 projection shortcuts (option B) where the shape changes, so those two
    projections are searchable layers too. ``stage_repeats=[1, 1, 1]`` gives a ResNet-8.
    """
    return resnet_quant_space("resnet20_quant_cifar", **{**_RESNET_CIFAR, **layout})


@register_space("resnet20_quant_channel_cifar")
def resnet20_quant_channel_cifar(**layout: Any) -> SearchSpace:
    """``resnet20_quant_cifar`` with a middle-width choice per block (9 blocks x 3 scales)."""
    defaults = {**_RESNET_CIFAR, "width_scales": list(QUANT_WIDTH_SCALES)}
    return resnet_quant_space("resnet20_quant_channel_cifar", **{**defaults, **layout})
