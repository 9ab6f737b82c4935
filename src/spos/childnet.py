"""Standalone child networks and weight inheritance from the supernet (SPEC section 5).

:func:`build_child` builds the network of one architecture (affine BatchNorm) through its
family's builder, for retraining from scratch and export. :func:`inherit_weights` copies one
path's weights and BatchNorm statistics out of a supernet, for fine-tuning and for the
exactness check ``child(x) == supernet(x, arch)`` in eval mode. :func:`evaluation_network`
combines both with :func:`fold_batchnorms` into the fast eval-only network candidate scoring
runs (issue 18 item 3).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from spos.arch import Arch
from spos.errors import ArchError
from spos.space import SearchSpace
from spos.supernet import Supernet, get_family

__all__ = ["build_child", "evaluation_network", "fold_batchnorms", "inherit_weights"]


def build_child(space: SearchSpace, arch: Arch) -> nn.Module:
    """The standalone network of ``arch`` (affine BN, freshly initialised).

    Raises:
        ArchError: If ``arch`` does not belong to ``space``.
        ConfigError: If the space's family is unknown or its layout is invalid.
    """
    space.validate(arch)
    return get_family(space.family).child(space, arch)


def _stateful_leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Submodules owning parameters or buffers directly, in registration order."""
    return [
        (name, m)
        for name, m in module.named_modules()
        if next(m.parameters(recurse=False), None) is not None
        or next(m.buffers(recurse=False), None) is not None
    ]


@torch.no_grad()
def _copy_leaf(target: nn.Module, source: nn.Module, where: str) -> None:
    if type(target) is not type(source):
        raise ArchError(
            f"child layer {where} is a {type(target).__name__} but the supernet path has a "
            f"{type(source).__name__}; was the child built for another architecture?"
        )
    source_state = dict(source.named_parameters(recurse=False))
    source_state.update(source.named_buffers(recurse=False))
    target_state = dict(target.named_parameters(recurse=False))
    target_state.update(target.named_buffers(recurse=False))
    for name, tensor in target_state.items():
        value = source_state.get(name)
        if value is None:
            # A non-affine supernet BN is the identity transform: scale 1, shift 0.
            if isinstance(target, _BatchNorm) and name in ("weight", "bias"):
                tensor.fill_(1.0 if name == "weight" else 0.0)
                continue
            raise ArchError(f"the supernet path has no {name!r} for child layer {where}")
        if value.shape != tensor.shape:
            raise ArchError(
                f"child {where}.{name} has shape {tuple(tensor.shape)} but the supernet path "
                f"has {tuple(value.shape)}"
            )
        tensor.copy_(value)


def inherit_weights(child: nn.Module, supernet: Supernet, arch: Arch) -> nn.Module:
    """Copy the path ``arch`` of ``supernet`` into ``child`` (weights and BN statistics).

    Layers are matched in order: the stateful layers of ``child`` against those of
    ``supernet.standalone_path(arch)`` (the path's modules, or plain copies at the chosen
    widths for a width-sliced supernet). Where the supernet BN is non-affine the child's affine BN
    gets scale 1 and shift 0, so in eval mode ``child(x)`` equals ``supernet(x, arch)``.

    Args:
        child: A network from :func:`build_child` for the same space and ``arch``.
        supernet: The trained supernet.
        arch: The architecture both implement.

    Returns:
        ``child``, for chaining.

    Raises:
        ArchError: If ``arch`` is not of the supernet's space or the child's layers do not
            match the path.
    """
    supernet.space.validate(arch)
    child_arch = getattr(child, "arch", None)
    if isinstance(child_arch, Arch) and child_arch != arch:
        raise ArchError(
            f"the child implements {child_arch.short()} but weights of {arch.short()} "
            "were requested; build the child for the same architecture"
        )
    source_leaves = [
        (f"{key}.{name}" if name else key, leaf)
        for key, module in supernet.standalone_path(arch)
        for name, leaf in _stateful_leaves(module)
    ]
    target_leaves = _stateful_leaves(child)
    if len(source_leaves) != len(target_leaves):
        raise ArchError(
            f"the child has {len(target_leaves)} stateful layers but the supernet path has "
            f"{len(source_leaves)}; build the child with build_child(space, arch)"
        )
    for (target_name, target), (_, source) in zip(target_leaves, source_leaves, strict=True):
        _copy_leaf(target, source, target_name)
    return child


def fold_batchnorms(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into that convolution.

    In each ``nn.Sequential`` of ``module``, a plain ``nn.Conv2d`` immediately followed by a
    plain ``nn.BatchNorm2d`` with running statistics becomes one convolution with a bias
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and an ``nn.Identity``: the same function in
    eval mode up to float rounding, one memory-bound pass fewer per layer. Subclasses (e.g.
    quantised convolutions, whose arithmetic folding would change) are left alone. Eval only:
    the folded network cannot train or recalibrate its BN.

    Returns:
        ``module`` (changed in place), in eval mode.
    """
    module.eval()
    for sequential in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(sequential) - 1):
            conv, bn = sequential[i], sequential[i + 1]
            if (
                type(conv) is nn.Conv2d
                and type(bn) is nn.BatchNorm2d
                and bn.track_running_stats
                and bn.num_features == conv.out_channels
            ):
                sequential[i] = fuse_conv_bn_eval(conv, bn)
                sequential[i + 1] = nn.Identity()
    return module


def _layout_of(module: nn.Module) -> torch.memory_format:
    for parameter in module.parameters():
        if parameter.dim() == 4:
            channels_last = parameter.is_contiguous(memory_format=torch.channels_last)
            return torch.channels_last if channels_last and not parameter.is_contiguous() else torch.contiguous_format
    return torch.contiguous_format


@torch.no_grad()
def evaluation_network(supernet: Supernet, arch: Arch) -> nn.Module:
    """The path ``arch`` of ``supernet`` as a standalone eval-mode network with its BN folded.

    Computes ``supernet(x, arch)`` in eval mode (with the current BN buffers) up to float
    rounding, faster: no per-step path dispatch and no separate BN pass (measured at 224x224,
    batch 32, 2 CPU threads: 15-25% less time per eval forward, `benchmarks/search_throughput.py`).
    Built on the ``meta`` device and then filled by :func:`inherit_weights` (nothing is
    initialised, and the global RNG is left as it was); it lives on the supernet's device,
    in its memory format, and shares no storage with it.
    """
    reference = next(supernet.parameters())
    with torch.device("meta"):
        child = build_child(supernet.space, arch)
    child = child.to_empty(device=reference.device).to(dtype=reference.dtype)
    with torch.random.fork_rng(devices=[]):  # a width-sliced standalone_path builds modules
        inherit_weights(child, supernet, arch)
    return fold_batchnorms(child).to(memory_format=_layout_of(supernet))
