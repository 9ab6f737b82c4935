"""The ShuffleNetV2 block + channel family, torch-free half (SPEC section 2, channel search).

Each of the ``N`` ShuffleNetV2 choice blocks takes two decisions: ``block_XX`` (one of the four
candidates of the block search) and ``width_XX``, a scale of the block's base mid width
(``out_channels // 2``) from ``width_scales`` (default ``[0.2, 0.4, ..., 1.6]``): 32 options per
block, ``32^20`` architectures for the paper's 20 blocks. Two plain choices per block, instead
of one 32-way choice, keep sampling, mutation and crossover generic and let the width be
searched apart from the block type.

The choice order is every ``block_XX`` first, then every ``width_XX``, so the official index
tuple of a block + channel model is its block indices followed by its scale indices (40
integers), e.g. :data:`CHANNEL_REFERENCE_ARCH`.

The mid width of a block at scale ``s`` is ``int((out_channels // 2) * s)``, the official
ShuffleNetV2 OneShot rule (truncation, the float product as written); the supernet allocates
the largest scale and slices (see :mod:`spos.spaces.shufflenet_channel_model`, imported the
first time a supernet is built).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spos.errors import ConfigError
from spos.space import Choice, SearchSpace, register_model_module, register_space
from spos.spaces.shufflenet import SHUFFLE_CANDIDATES, shufflenet_space, skeleton

__all__ = [
    "CHANNEL_REFERENCE_ARCH",
    "CHANNEL_REFERENCE_BLOCKS",
    "CHANNEL_REFERENCE_SCALES",
    "WIDTH_SCALES",
    "channel_space",
    "scaled_mid_channels",
    "shufflenet_channel_cifar",
    "shufflenet_channel_imagenet",
]

register_model_module("shufflenet_channel", "spos.spaces.shufflenet_channel_model")

#: The paper's eight mid-width scales, written as the official code writes them.
WIDTH_SCALES = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6)

#: The released block + channel ImageNet model: block indices (into the four candidates).
CHANNEL_REFERENCE_BLOCKS = (0, 0, 3, 1, 1, 1, 0, 0, 2, 0, 2, 1, 1, 0, 2, 0, 2, 1, 3, 2)
#: ... and its scale indices into :data:`WIDTH_SCALES` (paper: 328M FLOPs, 3.4M params).
CHANNEL_REFERENCE_SCALES = (6, 5, 3, 5, 2, 6, 3, 4, 2, 5, 7, 5, 4, 6, 7, 4, 4, 5, 4, 3)
#: Both as one index tuple of ``shufflenet_channel_imagenet`` (blocks, then scales).
CHANNEL_REFERENCE_ARCH = CHANNEL_REFERENCE_BLOCKS + CHANNEL_REFERENCE_SCALES


def scaled_mid_channels(out_channels: int, scale: float) -> int:
    """Mid width of a block with ``out_channels`` outputs at ``scale`` (official rule)."""
    return int((out_channels // 2) * scale)


def channel_space(name: str, *, width_scales: Sequence[float], **layout: Any) -> SearchSpace:
    """A block + channel space: ``block_XX`` and ``width_XX`` for every ShuffleNetV2 block.

    Args:
        name: Registry name of the space.
        width_scales: Candidate scales of each block's base mid width (distinct, positive).
        **layout: The ShuffleNetV2 skeleton, as for :func:`spos.spaces.shufflenet.shufflenet_space`.

    Raises:
        ConfigError: If a scale is not positive, repeats, or gives some block no mid channel.
    """
    scales = tuple(width_scales)
    if not scales or any(
        isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0 for s in scales
    ):
        raise ConfigError(
            f"space {name!r}: layout 'width_scales' must be a non-empty list of positive "
            f"numbers, got {list(scales)}"
        )
    blocks = shufflenet_space(name, **layout)
    narrowest = min(int(c) for c in layout["stage_channels"])
    if scaled_mid_channels(narrowest, min(scales)) < 1:
        raise ConfigError(
            f"space {name!r}: width scale {min(scales)} leaves no mid channel in a block with "
            f"{narrowest} outputs (int({narrowest // 2} * {min(scales)}) = 0); raise the "
            "smallest 'width_scales' entry or the stage channels"
        )
    count = len(blocks.choices)
    choices = (
        *(Choice(f"block_{i:02d}", SHUFFLE_CANDIDATES) for i in range(count)),
        *(Choice(f"width_{i:02d}", scales) for i in range(count)),
    )
    return SearchSpace(
        name,
        1,
        "shufflenet_channel",
        choices,
        {**blocks.to_dict()["layout"], "width_scales": list(scales)},
    )


@register_space("shufflenet_channel_imagenet")
def shufflenet_channel_imagenet(**layout: Any) -> SearchSpace:
    """The paper's block + channel space: ``shufflenet_imagenet`` x 8 mid widths (32^20)."""
    defaults: dict[str, Any] = {**skeleton("imagenet"), "width_scales": list(WIDTH_SCALES)}
    return channel_space("shufflenet_channel_imagenet", **{**defaults, **layout})


@register_space("shufflenet_channel_cifar")
def shufflenet_channel_cifar(**layout: Any) -> SearchSpace:
    """Small-image block + channel space: the ``shufflenet_cifar`` skeleton x 8 mid widths."""
    defaults: dict[str, Any] = {**skeleton("cifar"), "width_scales": list(WIDTH_SCALES)}
    return channel_space("shufflenet_channel_cifar", **{**defaults, **layout})
