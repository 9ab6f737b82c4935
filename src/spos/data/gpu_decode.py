"""Training crops decoded on the GPU (``data.decode_backend=nvjpeg``), optional.

``torchvision.io.decode_jpeg(..., device="cuda")`` decodes a batch of JPEGs with nvJPEG; each
image is then cropped to the *same* seeded RandomResizedCrop box as the CPU path
(:func:`~spos.data.random_resized_crop_box` from the same pre-drawn uniforms) and resized with
torch's antialiased bilinear interpolation; flips, colour jitter and lighting use the same
draws as well. torchvision is imported only here, only when this backend is chosen; it is not a
dependency of spos. Files that are not JPEGs (PNG, ...) are decoded on the CPU by torchvision
and moved to the GPU.

The work runs on a side CUDA stream and is waited for in the calling thread (the prefetch
thread), so the training stream only sees a finished tensor.

Untested on a GPU in this repository's CI (no CUDA machine); only the error path of
:func:`~spos.data.lazy.check_decode_backend` is covered by unit tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from spos.data.augment import add_lighting, jitter_colors, random_resized_crop_box
from spos.errors import DataError

__all__ = ["decode_train_crops"]

_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def decode_train_crops(
    sources: Sequence[bytes],
    names: Sequence[str],
    uniforms: Sequence[Sequence[Sequence[float]]],
    *,
    size: int,
    scale: tuple[float, float],
    flips: torch.Tensor,
    factors: torch.Tensor | None,
    alphas: torch.Tensor | None,
) -> torch.Tensor:
    """``uint8`` ``(N, 3, size, size)`` training crops on the current CUDA device."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    device = torch.device("cuda", torch.cuda.current_device())
    side = _SIDE_STREAMS.setdefault(device.index, torch.cuda.Stream(device))
    encoded = [torch.frombuffer(bytearray(source), dtype=torch.uint8) for source in sources]
    jpeg = [i for i, source in enumerate(sources) if source[:2] == b"\xff\xd8"]
    with torch.cuda.stream(side):
        decoded: list[torch.Tensor | None] = [None] * len(sources)
        try:
            if jpeg:
                images = decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
                for slot, image in zip(jpeg, images, strict=True):
                    decoded[slot] = image
            for slot, image in enumerate(decoded):
                if image is None:
                    decoded[slot] = decode_image(encoded[slot], mode=ImageReadMode.RGB).to(device)
        except RuntimeError as exc:
            raise DataError(
                f"cannot decode one of {len(names)} images starting with {names[0]} on the GPU "
                f"({exc}); replace or delete the file, or set data.decode_backend=cpu to find it"
            ) from None
        out = torch.empty((len(sources), 3, size, size), dtype=torch.uint8, device=device)
        for slot, image in enumerate(decoded):
            height, width = image.shape[-2:]
            left, top, crop_w, crop_h = random_resized_crop_box(width, height, uniforms[slot], scale=scale)
            crop = image[None, :, top : top + crop_h, left : left + crop_w].float()
            resized = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out[slot] = resized[0].round_().clamp_(0, 255).to(torch.uint8)
        if factors is not None:
            out = jitter_colors(out, factors)
        if alphas is not None:
            out = add_lighting(out, alphas)
        out = torch.where(flips.to(device, non_blocking=True)[:, None, None, None], out.flip(-1), out)
    side.synchronize()
    # The consumer uses the batch on the default stream; keep its memory from being reused by
    # the side stream's allocator until that work is done.
    out.record_stream(torch.cuda.default_stream(device))
    return out
