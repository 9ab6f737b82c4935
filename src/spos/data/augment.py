"""Batched uint8 augmentation and normalisation of image tensors.

* the CIFAR augmentation (zero pad + random crop + horizontal flip) as one ``gather`` over a
  batch, no per-sample Python loop, so data loading stays a small fraction of a training step
  (SPEC section 8);
* the official ImageNet augmentation pieces that :class:`~spos.data.LazyImageFolder` applies
  while decoding: the RandomResizedCrop box, colour jitter and PCA lighting;
* padding to a size and normalisation to float32.

Random parameters are drawn for a whole global batch from the caller's generator and each
rank uses its rows, so a batch augmented in rank shards equals the same batch augmented whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from spos.errors import DataError

__all__ = [
    "add_lighting",
    "apply_crop_flip",
    "crop_flip_params",
    "jitter_colors",
    "pad_to",
    "random_crop_flip",
    "random_resized_crop_box",
    "to_float",
]


def random_resized_crop_box(
    width: int,
    height: int,
    uniforms: Sequence[Sequence[float]],
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """The ``(left, top, crop_width, crop_height)`` of an Inception-style random crop.

    The same algorithm as torchvision's ``RandomResizedCrop``: up to ``len(uniforms)`` attempts
    at an area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``, then a centre
    crop with the ratio clamped. The randomness comes in as pre-drawn uniforms in ``[0, 1)``,
    four per attempt, so a batch can draw them from one generator before decoding in threads.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for u_area, u_ratio, u_top, u_left in uniforms:
        target = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(log_low + u_ratio * (log_high - log_low))
        crop_w = int(round(math.sqrt(target * aspect)))
        crop_h = int(round(math.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = min(int(u_top * (height - crop_h + 1)), height - crop_h)
            left = min(int(u_left * (width - crop_w + 1)), width - crop_w)
            return left, top, crop_w, crop_h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_w, crop_h = int(round(height * ratio[1])), height
    else:
        crop_w, crop_h = width, height
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


#: ImageNet's RGB eigenvalues and eigenvectors (columns) on the [0, 1] scale, for AlexNet-style
#: PCA "lighting" noise (Krizhevsky et al. 2012; fb.resnet.torch).
_LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
_LIGHTING_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L")


def jitter_colors(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation jitter on a uint8 RGB batch, batched.

    Args:
        images: ``uint8`` ``(N, 3, H, W)``.
        factors: ``(N, 3)`` brightness, contrast and saturation factors (1 = unchanged),
            applied in that order, each clamped to [0, 255] as torchvision's ``ColorJitter``
            does (which picks a random order per image; this one is fixed).

    Returns:
        The jittered ``uint8`` batch.
    """
    if images.shape[1] != 3:
        raise DataError(f"colour jitter needs RGB images, got {images.shape[1]} channels")
    shape = (-1, 1, 1, 1)
    factors = factors.to(images.device, torch.float32)
    grey_weights = torch.tensor(_GREY_WEIGHTS, device=images.device).view(1, 3, 1, 1)
    out = images.to(torch.float32)
    out.mul_(factors[:, 0].view(shape)).clamp_(0, 255)
    mean = (out * grey_weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    contrast = factors[:, 1].view(shape)
    out.mul_(contrast).add_((1 - contrast) * mean).clamp_(0, 255)
    grey = (out * grey_weights).sum(1, keepdim=True)
    saturation = factors[:, 2].view(shape)
    out.mul_(saturation).add_((1 - saturation) * grey).clamp_(0, 255)
    return out.round_().to(torch.uint8)


def add_lighting(images: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """AlexNet PCA lighting noise on a uint8 RGB batch: add ``eigvec @ (alpha * eigval)``.

    Args:
        images: ``uint8`` ``(N, 3, H, W)``.
        alphas: ``(N, 3)`` normal draws times the lighting strength (commonly 0.1).
    """
    eigval = torch.tensor(_LIGHTING_EIGVAL, device=images.device)
    eigvec = torch.tensor(_LIGHTING_EIGVEC, device=images.device)
    shift = (alphas.to(images.device, torch.float32) * eigval) @ eigvec.T * 255  # (N, 3)
    out = images.to(torch.float32).add_(shift[:, :, None, None])
    return out.round_().clamp_(0, 255).to(torch.uint8)


def crop_flip_params(
    batch: int, *, padding: int, generator: torch.Generator, flip: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crop offsets and flips for a batch, drawn from ``generator``.

    Returns:
        ``(top, left, flips)``: offsets in ``[0, 2 * padding]`` into the padded image (int64,
        ``(batch,)``) and a bool ``(batch,)`` flip mask (all False when ``flip`` is False).
    """
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    if not flip:
        flips = torch.zeros_like(flips)
    return offsets[0], offsets[1], flips


def apply_crop_flip(
    images: torch.Tensor,
    *,
    padding: int,
    top: torch.Tensor,
    left: torch.Tensor,
    flips: torch.Tensor,
) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to the input size at ``(top, left)``, flip.

    One ``gather`` over the flattened padded images; no loop over samples.
    """
    n, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    padded_width = width + 2 * padding
    rows = top.to(device)[:, None] + torch.arange(height, device=device)
    columns = torch.arange(width, device=device).expand(n, width)
    columns = torch.where(flips.to(device)[:, None], width - 1 - columns, columns)
    columns = columns + left.to(device)[:, None]
    index = (rows[:, :, None] * padded_width + columns[:, None, :]).view(n, 1, height * width)
    flat = padded.reshape(n, channels, -1)
    return flat.gather(2, index.expand(n, channels, height * width)).view(
        n, channels, height, width
    )


def random_crop_flip(
    images: torch.Tensor,
    *,
    padding: int,
    generator: torch.Generator,
    flip: bool = True,
    start: int = 0,
    total: int | None = None,
) -> torch.Tensor:
    """The CIFAR augmentation on a uint8 batch: pad with zeros, random crop, random h-flip.

    Args:
        images: ``(N, C, H, W)`` batch (any dtype; uint8 stays uint8).
        padding: Zero padding on each side before cropping back to ``H x W``.
        generator: Source of every random draw (see :func:`crop_flip_params`).
        flip: Also flip each image horizontally with probability 1/2.
        start: Row of ``images[0]`` within the global batch this batch is a share of.
        total: Size of that global batch (default ``start + N``). Parameters are drawn for
            all ``total`` images and rows ``[start, start + N)`` are used, so a batch
            augmented in rank shards equals the same batch augmented whole.
    """
    total = start + len(images) if total is None else total
    if not 0 <= start <= total - len(images):
        raise DataError(f"share [{start}, {start + len(images)}) lies outside a batch of {total}")
    top, left, flips = crop_flip_params(total, padding=padding, generator=generator, flip=flip)
    share = slice(start, start + len(images))
    top, left, flips = top[share], left[share], flips[share]
    if images.device.type == "cuda":
        # One asynchronous copy from pinned memory: moving the three pageable CPU tensors one
        # by one would synchronise the host with the GPU three times per batch.
        params = torch.stack([top, left, flips.long()]).pin_memory()
        top, left, flips = params.to(images.device, non_blocking=True).unbind(0)
        flips = flips.bool()
    return apply_crop_flip(images, padding=padding, top=top, left=left, flips=flips)


def pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad ``(N, C, H, W)`` images centrally to ``size x size`` (e.g. 28 -> 32)."""
    height, width = images.shape[-2:]
    if size < height or size < width:
        raise DataError(
            f"cannot pad {height}x{width} images to {size}x{size}; pad_to must be >= the image size"
        )
    top, left = (size - height) // 2, (size - width) // 2
    return F.pad(images, (left, size - width - left, top, size - height - top)).contiguous()


def to_float(
    images: torch.Tensor,
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
    *,
    channels_last: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Move a uint8 batch to ``device`` (as uint8: 4x less to copy) and normalise to float32.

    Returns:
        ``(images / 255 - mean) / std`` per channel, in ``channels_last`` memory format if
        asked (the faster layout for convolutions on CPU and GPU).
    """
    if device is not None:
        images = images.to(device, non_blocking=True)
    shape = (1, -1, 1, 1)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(shape)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = images.to(dtype=torch.float32, memory_format=memory_format)
    return out.sub_(mean * 255).div_(std * 255)
