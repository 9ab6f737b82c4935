"""A tiny supernet without BatchNorm, loaded as a plugin by the distributed tests.

Why it exists: under DDP every rank normalises its BatchNorm layers with the statistics of its
own share of the batch (as the official multi-GPU release does; SyncBatchNorm has no CPU
kernel), so a BN network trained on 2 x B/2 legitimately differs from one trained on B. A
network without batch-dependent layers isolates what the distributed code must get right -
the data split, augmentation, gradient averaging, the shared path, the learning-rate schedule
- so a 2-process run can be compared with a 1-process run to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spos import Choice, SearchSpace, register_space
from spos.arch import Arch
from spos.supernet import Supernet, register_family

KERNELS = {"conv3x3": 3, "conv5x5": 5}


def _conv(in_channels: int, out_channels: int, option: str, stride: int) -> nn.Sequential:
    kernel = KERNELS[option]
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=True), nn.Tanh()
    )


def _head(channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


class NormFreeSupernet(Supernet):
    """Stem conv, ``layers`` choice convs (3x3 or 5x5, tanh), pool, linear."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space)
        layout = space.layout
        width = int(layout["width"])
        self.stem = nn.Sequential(nn.Conv2d(int(layout["in_channels"]), width, 3, 2, 1), nn.Tanh())
        self.choices = nn.ModuleList(
            nn.ModuleDict({option: _conv(width, width, option, 1) for option in KERNELS})
            for _ in space.choices
        )
        self.head = _head(width, int(layout["num_classes"]))

    def path_modules(self, arch: Arch) -> list[tuple[str, nn.Module]]:
        modules: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for (label, value), candidates in zip(arch.values, self.choices, strict=True):
            modules.append((label, candidates[str(value)]))
        return [*modules, ("head", self.head)]

    def forward(self, x: Tensor, arch: Arch) -> Tensor:
        for _, module in self.path_modules(arch):
            x = module(x)
        return x


class NormFreeChild(nn.Module):
    """The standalone network of one path (same layers, same order)."""

    def __init__(self, space: SearchSpace, arch: Arch) -> None:
        super().__init__()
        layout = space.layout
        width = int(layout["width"])
        self.body = nn.Sequential(
            nn.Sequential(nn.Conv2d(int(layout["in_channels"]), width, 3, 2, 1), nn.Tanh()),
            *(_conv(width, width, str(value), 1) for _, value in arch.values),
            _head(width, int(layout["num_classes"])),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


register_family("normfree_test", supernet=NormFreeSupernet, child=NormFreeChild)


@register_space("normfree_test")
def normfree_test(**layout: object) -> SearchSpace:
    layout = {"input_size": 16, "in_channels": 3, "num_classes": 10, "width": 8, "layers": 3, **layout}
    choices = [Choice(f"layer_{i}", tuple(KERNELS)) for i in range(int(layout["layers"]))]
    return SearchSpace("normfree_test", 1, "normfree_test", choices, layout)
