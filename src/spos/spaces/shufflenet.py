"""The ShuffleNetV2 block-search family, torch-free half: spaces and skeletons (SPEC section 2).

``shufflenet_imagenet`` (the paper's space) and ``shufflenet_cifar`` choose one of the four
ShuffleNetV2 candidates per block (``family="shufflenet"``). The ``"shufflenet_ops"`` family
is the same stem / stages / head skeleton whose choices name any op registered with
:func:`spos.ops.register_op`: user-defined spaces use it (formerly ``"sequential"``, still
accepted). The model builders (supernet, child) are in :mod:`spos.spaces.shufflenet_model`,
imported the first time a supernet is built. Keep this module free of torch: search and its
tests import it.
"""

from __future__ import annotations

import copy
from typing import Any

from spos.errors import ConfigError
from spos.space import Choice, SearchSpace, register_model_module, register_space

__all__ = [
    "OFFICIAL_REFERENCE_ARCH",
    "SHUFFLE_CANDIDATES",
    "shufflenet_cifar",
    "shufflenet_imagenet",
    "shufflenet_space",
    "skeleton",
]

MODEL_MODULE = "spos.spaces.shufflenet_model"
register_model_module("shufflenet", MODEL_MODULE)
register_model_module("shufflenet_ops", MODEL_MODULE, aliases=("sequential",))

#: The four ShuffleNetV2 block candidates, in the official release's index order.
SHUFFLE_CANDIDATES = ("shuffle3x3", "shuffle5x5", "shuffle7x7", "xception")

#: The released ImageNet architecture (official index tuple): 322.9M FLOPs, 3.53M params.
OFFICIAL_REFERENCE_ARCH = (2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)


def shufflenet_space(
    name: str,
    *,
    input_size: int,
    in_channels: int,
    num_classes: int,
    stem_channels: int,
    stem_stride: int,
    stage_repeats: list[int],
    stage_channels: list[int],
    stage_strides: list[int],
    head_channels: int,
    dropout: float,
    version: int = 1,
) -> SearchSpace:
    """A ShuffleNetV2 block-choice space: one 4-way choice per block."""
    if not len(stage_repeats) == len(stage_channels) == len(stage_strides):
        raise ConfigError(
            f"space {name!r}: stage_repeats, stage_channels and stage_strides must have the same "
            f"length (got {len(stage_repeats)}, {len(stage_channels)}, {len(stage_strides)})"
        )
    blocks = sum(stage_repeats)
    choices = tuple(Choice(f"block_{i:02d}", SHUFFLE_CANDIDATES) for i in range(blocks))
    layout = {
        "input_size": input_size,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "stem_channels": stem_channels,
        "stem_stride": stem_stride,
        "stage_repeats": stage_repeats,
        "stage_channels": stage_channels,
        "stage_strides": stage_strides,
        "head_channels": head_channels,
        "dropout": dropout,
    }
    return SearchSpace(name, version, "shufflenet", choices, layout)


#: The ShuffleNetV2 skeletons shared by the block and block + channel spaces.
_SKELETONS: dict[str, dict[str, Any]] = {
    "imagenet": dict(
        input_size=224,
        in_channels=3,
        num_classes=1000,
        stem_channels=16,
        stem_stride=2,
        stage_repeats=[4, 4, 8, 4],
        stage_channels=[64, 160, 320, 640],
        stage_strides=[2, 2, 2, 2],
        head_channels=1024,
        dropout=0.1,
    ),
    "cifar": dict(
        input_size=32,
        in_channels=3,
        num_classes=10,
        stem_channels=16,
        stem_stride=1,
        stage_repeats=[4, 4, 8, 4],
        stage_channels=[32, 64, 128, 256],
        stage_strides=[2, 2, 2, 1],
        head_channels=512,
        dropout=0.1,
    ),
}


def skeleton(name: str) -> dict[str, Any]:
    """A fresh copy of the ``"imagenet"`` or ``"cifar"`` ShuffleNetV2 skeleton layout."""
    return copy.deepcopy(_SKELETONS[name])


@register_space("shufflenet_imagenet")
def shufflenet_imagenet(**layout: Any) -> SearchSpace:
    """The paper's block search space: 224x224 input, 20 blocks x 4 candidates (4^20)."""
    return shufflenet_space("shufflenet_imagenet", **{**skeleton("imagenet"), **layout})


@register_space("shufflenet_cifar")
def shufflenet_cifar(**layout: Any) -> SearchSpace:
    """Small-image variant for 32x32 (CIFAR) and 28x28 (Fashion-MNIST) input.

    Stem stride 1 and three stride-2 stages, the last stage keeping its resolution
    (32 -> 32 -> 16 -> 8 -> 4 -> 4; 28 -> 28 -> 14 -> 7 -> 4 -> 4), the same 20 choice blocks,
    and channels narrowed so the default pipeline fits 2 CPU cores (about 1,800 training img/s
    for the supernet at 28x28, batch 128, channels_last).
    """
    return shufflenet_space("shufflenet_cifar", **{**skeleton("cifar"), **layout})
