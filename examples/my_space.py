"""A user-defined search space in a few lines: load it with `space.plugins: [examples/my_space.py]`."""

from torch import nn

from spos import Choice, SearchSpace, register_space
from spos.ops import register_op


@register_op("conv3x3")
def conv3x3(in_channels, out_channels, *, stride, affine):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels, affine=affine),
        nn.ReLU(inplace=True),
    )


@register_space("my_space")
def my_space(**layout):
    layout = {
        "input_size": 28, "in_channels": 1, "num_classes": 10,
        "stem_channels": 16, "stem_stride": 1, "head_channels": 128, "dropout": 0.1,
        "stage_repeats": [2, 2, 2], "stage_channels": [32, 64, 128], "stage_strides": [1, 2, 2],
        **layout,
    }
    blocks = sum(layout["stage_repeats"])
    options = ("conv3x3", "shuffle3x3", "shuffle5x5", "xception")
    choices = [Choice(f"layer_{i}", options) for i in range(blocks)]
    return SearchSpace("my_space", 1, "shufflenet_ops", choices, layout)
