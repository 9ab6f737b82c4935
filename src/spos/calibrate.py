"""Batch-norm recalibration before a candidate is scored (SPEC section 4).

Weights shared by every path of a supernet come with BatchNorm running statistics averaged
over *all* sampled paths, which are wrong for any single architecture. Before scoring a
candidate, the paper resets the statistics and re-estimates them by forwarding training
images through that architecture in train mode with no gradient. This module owns that step:
:func:`recalibrate_bn` resets the chosen BatchNorm layers, sets ``momentum=None`` so PyTorch
keeps a *cumulative* average (batch ``n`` is weighted ``1/n``) instead of an exponential one,
forwards every batch, optionally combines the statistics of all ranks through an injected
``all_reduce`` (sum) callable, and restores momentum and train/eval modes. Parameters are
never touched.

What the statistics become: with ``momentum=None`` each running buffer is the plain average of
the per-batch statistics, i.e. ``running_mean`` is the mean of the per-batch means (the exact
data mean when batches have equal size) and ``running_var`` is the mean of the per-batch
*unbiased* variances (not the variance of the whole data set). Across ranks the same holds
over every rank's batches: each rank's averages are weighted by its number of batches, so
shards of unequal length combine into the single-process average over the same batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["recalibrate_bn", "find_batchnorms"]

logger = logging.getLogger(__name__)

#: ``forward(model, inputs)``; e.g. ``lambda model, x: model(x, arch)`` for a supernet.
ForwardFn = Callable[[nn.Module, torch.Tensor], object]
#: Sums a tensor across ranks; returns the sum or sums in place and returns None.
AllReduceFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def find_batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer of ``model`` (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, subclasses)."""
    return [module for module in model.modules() if isinstance(module, _BatchNorm)]


def _default_forward(model: nn.Module, inputs: torch.Tensor) -> object:
    return model(inputs)


def _inputs_of(batch: object) -> torch.Tensor:
    """The input tensor of a batch given as a tensor or an ``(inputs, targets, ...)`` pair."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        f"recalibrate_bn batches must be tensors or (inputs, targets) pairs, got {type(batch)!r}"
    )


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[object],
    *,
    forward: ForwardFn | None = None,
    batchnorms: Sequence[_BatchNorm] | None = None,
    all_reduce: AllReduceFn | None = None,
) -> int:
    """Re-estimate BatchNorm running statistics as a cumulative average over ``batches``.

    Args:
        model: The network (a supernet or a child network).
        batches: Training batches, each a tensor or an ``(inputs, targets, ...)`` pair,
            already on the model's device; the paper uses about 20k images.
        forward: ``forward(model, inputs)``; defaults to ``model(inputs)``. A supernet is
            called as ``forward=lambda model, x: model(x, arch)``.
        batchnorms: The layers to recalibrate; defaults to every BatchNorm layer in
            ``model``. The model runs in train mode except the other BatchNorm layers, which
            run in eval mode: they normalise with, and keep, their stored statistics.
        all_reduce: Optional cross-rank *sum*, called once after the pass with one flat
            float64 tensor: every selected layer's ``running_mean`` and ``running_var``
            multiplied by this rank's batch count, then the batch count; it must return the
            sum over ranks or sum in place and return ``None`` (e.g.
            ``spos.dist.Runtime.all_reduce_sum`` or ``torch.distributed.all_reduce``). The
            statistics become the batch-weighted average over all ranks' batches, the
            single-process meaning; a rank with no batches contributes nothing.

    Returns:
        The number of images forwarded on this rank.

    Raises:
        ValueError: A selected layer does not track running statistics.
    """
    layers = list(batchnorms) if batchnorms is not None else find_batchnorms(model)
    for layer in layers:
        if layer.running_mean is None or layer.running_var is None:
            raise ValueError(
                f"{layer!r} has track_running_stats=False; it has no statistics to recalibrate"
            )
    forward = forward if forward is not None else _default_forward
    modes = [(module, module.training) for module in model.modules()]
    momenta = [(layer, layer.momentum) for layer in layers]
    images = batch_count = 0
    try:
        for layer in layers:
            layer.reset_running_stats()
        model.train()
        # Unselected BN layers normalise with their stored statistics and keep them, so the
        # selected layers see the activations they will see at inference time.
        selected = {id(layer) for layer in layers}
        for layer in find_batchnorms(model):
            if id(layer) not in selected:
                layer.training = False
        for batch in batches:
            inputs = _inputs_of(batch)
            batch_count += 1
            # Cumulative moving average: batch n gets weight 1/n. Set from Python rather than
            # momentum=None, which makes BatchNorm read its device-side batch counter (a host
            # sync per layer and batch on a GPU); the factor, and so the result, is the same.
            for layer in layers:
                layer.momentum = 1.0 / batch_count
            forward(model, inputs)
            images += int(inputs.shape[0])
        if all_reduce is not None and layers:
            _average_across_ranks(layers, all_reduce, batches=batch_count)
    finally:
        for layer, momentum in momenta:
            layer.momentum = momentum
        for module, training in modes:
            module.training = training
    logger.debug("recalibrated %d BatchNorm layers on %d images", len(layers), images)
    return images


def _average_across_ranks(
    layers: Sequence[_BatchNorm], all_reduce: AllReduceFn, *, batches: int
) -> None:
    """Batch-weighted average of every rank's statistics in one collective (sum).

    One collective for all statistics instead of two per layer (a supernet has dozens). The
    cumulative average on a rank is the mean of its per-batch statistics, so weighting by
    batch count gives the mean over every rank's batches. float64 keeps the sum exact enough
    that the order ranks are added in does not show in float32 statistics.
    """
    buffers: list[torch.Tensor] = []
    for layer in layers:
        assert layer.running_mean is not None and layer.running_var is not None
        buffers.extend((layer.running_mean, layer.running_var))
    flat = torch.cat(
        [buffer.detach().reshape(-1).double() * batches for buffer in buffers]
        + [torch.tensor([float(batches)], dtype=torch.float64, device=buffers[0].device)]
    )
    reduced = all_reduce(flat)
    flat = reduced if reduced is not None else flat
    if flat.numel() != sum(buffer.numel() for buffer in buffers) + 1:
        raise ValueError("all_reduce must return a tensor of the shape it was given")
    total = float(flat[-1])
    if total <= 0:
        return  # no rank forwarded anything: keep the reset statistics
    offset = 0
    for buffer in buffers:
        count = buffer.numel()
        buffer.copy_((flat[offset : offset + count] / total).view_as(buffer))
        offset += count
    for layer in layers:
        if layer.num_batches_tracked is not None:
            layer.num_batches_tracked.fill_(int(round(total)))
