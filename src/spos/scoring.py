"""Scoring an architecture with inherited supernet weights (SPEC section 4).

``score = top-1 on the fixed validation split after BN recalibration`` (or, with
``metric="loss"``, minus the mean validation cross-entropy: a finer-grained score when the
validation set is small, since accuracy moves in steps of one image). The recalibration and
validation batches are prepared once (decoded, normalised, on the device, channels_last) and
reused for every candidate, so each candidate costs exactly its forwards. The supernet's own
BN buffers are restored afterwards, so scoring never changes the supernet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from spos.arch import Arch
from spos.calibrate import recalibrate_bn

__all__ = ["ArchScorer", "top1_accuracy"]


@torch.no_grad()
def top1_accuracy(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, arch: Arch | None = None
) -> tuple[int, int]:
    """(correct, total) of ``model`` (or ``model(x, arch)``) in eval mode over ``batches``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in batches:
        logits = model(images) if arch is None else model(images, arch)
        correct += int((logits.argmax(dim=1) == labels).sum())
        total += int(labels.numel())
    model.train(was_training)
    return correct, total


def _as_sequence(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> Sequence[tuple[torch.Tensor, torch.Tensor]]:
    return batches if isinstance(batches, Sequence) else list(batches)


class ArchScorer:
    """Scores architectures of a supernet: recalibrate the path's BN, then validation top-1.

    Args:
        supernet: A :class:`spos.supernet.Supernet` (not DDP-wrapped).
        recalibrate_batches: Prepared training batches (float images, labels) for BN
            recalibration; the same ones for every candidate.
        val_batches: Prepared held-out validation batches; the same ones for every candidate.
    """

    def __init__(
        self,
        supernet: torch.nn.Module,
        *,
        recalibrate_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        val_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        metric: str = "accuracy",
    ) -> None:
        if metric not in ("accuracy", "loss"):
            raise ValueError(f"score metric must be 'accuracy' or 'loss', got {metric!r}")
        self.supernet = supernet
        # A Sequence is kept as is: it may produce its device batches on access (lazily read data).
        self.recalibrate_batches = _as_sequence(recalibrate_batches)
        self.val_batches = _as_sequence(val_batches)
        self.metric = metric

    def recalibrate(self, arch: Arch) -> None:
        recalibrate_bn(
            self.supernet,
            (images for images, _ in self.recalibrate_batches),
            forward=lambda model, images: model(images, arch),
            batchnorms=self.supernet.path_batchnorms(arch),
        )

    def evaluate(self, arch: Arch) -> tuple[int, int]:
        return top1_accuracy(self.supernet, self.val_batches, arch=arch)

    @torch.no_grad()
    def mean_loss(self, arch: Arch) -> float:
        """Mean validation cross-entropy of ``arch`` (eval mode, current BN buffers)."""
        was_training = self.supernet.training
        self.supernet.eval()
        total, count = 0.0, 0
        for images, labels in self.val_batches:
            logits = self.supernet(images, arch)
            total += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            count += int(labels.numel())
        self.supernet.train(was_training)
        return total / max(1, count)

    def score(self, arch: Arch) -> float:
        """Validation top-1 (%) of ``arch`` after BN recalibration (or minus its mean loss);
        the supernet is left unchanged."""
        batchnorms = self.supernet.path_batchnorms(arch)
        saved = [
            (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
            for bn in batchnorms
        ]
        try:
            self.recalibrate(arch)
            if self.metric == "loss":
                return -self.mean_loss(arch)
            correct, total = self.evaluate(arch)
        finally:
            for bn, (mean, var, count) in zip(batchnorms, saved, strict=True):
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)
        return 100.0 * correct / max(1, total)

    def score_many(self, archs: Sequence[Arch]) -> list[float]:
        return [self.score(arch) for arch in archs]
