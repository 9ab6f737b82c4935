"""The one place that knows about torchrun and DDP (SPEC section 7).

:class:`Runtime` holds the device, the rank and the world size, and offers the few collective
operations the stages need. Stages receive it; models never see it. Under ``torchrun`` the
environment variables ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` select the process group (NCCL
on CUDA, gloo on CPU); without them everything is a no-op on a single process.

What the stages rely on under ``torchrun``: every rank builds the same model from the same
seed and samples the same path from an identically seeded sampler, so DDP only has to average
gradients; each rank reads its share of one global batch (:class:`spos.data.BatchStream`);
only rank 0 writes files. The CUDA-only switches live here too, kept small: ``cudnn.benchmark``,
mixed precision (:meth:`Runtime.autocast`, bf16 or fp16) and fp16's gradient scaler
(:meth:`Runtime.grad_scaler`).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from spos.errors import ConfigError

__all__ = ["Runtime", "resolve_device", "check_amp", "AMP_MODES"]

#: Values of the ``runtime.amp`` config field.
AMP_MODES = ("none", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger(__name__)


def check_amp(amp: str, device: torch.device) -> None:
    """Refuse a mixed-precision mode this device cannot run.

    Raises:
        ConfigError: ``amp`` is not one of :data:`AMP_MODES`, or it is ``bf16`` on a CUDA GPU
            without bf16 support (before Ampere), where it would be emulated slowly or fail
            deep inside cuDNN.
    """
    if amp not in AMP_MODES:
        raise ConfigError(f"config field 'runtime.amp' must be one of {list(AMP_MODES)}, got {amp!r}")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise ConfigError(
            f"config field 'runtime.amp' is bf16, but the GPU {name} ({device}) does not support "
            "bfloat16; use runtime.amp=fp16 (float16 with a gradient scaler) or runtime.amp=none"
        )


def resolve_device(name: str, *, local_rank: int = 0) -> torch.device:
    """Turn a config device string into a ``torch.device`` (``auto`` prefers CUDA)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("config field 'device' asks for CUDA but no GPU is visible; use device=cpu")
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


@dataclass
class Runtime:
    """Device, rank and world size of this process, plus collectives.

    Attributes:
        device: Where tensors and models live.
        rank: Global rank (0 on a single process).
        world_size: Number of processes.
        local_rank: Rank on this node (selects the GPU).
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(
        cls,
        device: str = "auto",
        *,
        threads: int | None = None,
        backend: str = "auto",
        timeout_s: float = 1800.0,
        deterministic: bool = False,
    ) -> Runtime:
        """Build the runtime, joining the torchrun process group when there is one.

        ``backend`` is ``auto`` (nccl on CUDA, gloo on CPU), ``nccl`` or ``gloo``;
        ``timeout_s`` bounds how long a collective waits for the other ranks;
        ``deterministic`` turns off cudnn autotuning and TF32 for reproducible CUDA runs.
        """
        if threads is not None:
            torch.set_num_threads(threads)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        resolved = resolve_device(device, local_rank=local_rank)
        if world_size > 1 and not torch_dist.is_initialized():
            if backend == "auto":
                backend = "nccl" if resolved.type == "cuda" else "gloo"
            options: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
            if resolved.type == "cuda":
                torch.cuda.set_device(resolved)
                options["device_id"] = resolved  # binds NCCL to this GPU from the start
            torch_dist.init_process_group(**options)
            log.info("joined process group: rank %d of %d (%s)", rank, world_size, backend)
        if resolved.type == "cuda":
            # Each path reuses a handful of conv shapes, so autotuning pays off quickly.
            torch.backends.cudnn.benchmark = not deterministic
            if deterministic:
                torch.backends.cudnn.deterministic = True
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
        return cls(resolved, rank, world_size, local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module, *, find_unused_parameters: bool = True) -> nn.Module:
        """DDP-wrap a model for training (no-op on one process).

        Args:
            model: The module; its parameters must already be equal on every rank (same
                seed), DDP broadcasts rank 0's anyway.
            find_unused_parameters: True for a supernet (the candidates off the sampled
                path are unused every step); False for a standalone child, which is faster.
        """
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )

    def autocast(self, amp: str) -> contextlib.AbstractContextManager:
        """A reusable context for the forward pass: bf16 or fp16 autocast on CUDA.

        bf16 needs no loss scaling (it has float32's exponent range); fp16 does (take
        :meth:`grad_scaler` with it). On CPU ``bf16``/``fp16`` are ignored with one warning and
        training runs in float32: CPU autocast is slower than float32 on most CPUs, and a
        config written for GPUs should still run on a laptop.

        Raises:
            ConfigError: ``amp`` is not one of :data:`AMP_MODES`, or the GPU cannot run it
                (:func:`check_amp`).
        """
        check_amp(amp, self.device)
        if amp == "none":
            return contextlib.nullcontext()
        if self.device.type != "cuda":
            if self.is_main:
                log.warning("amp=%s is a CUDA option; running in float32 on %s", amp, self.device)
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=_AMP_DTYPES[amp])

    def grad_scaler(self, amp: str) -> torch.amp.GradScaler | None:
        """fp16's gradient scaler on CUDA (None otherwise: bf16, float32 and CPU runs need none).

        float16 gradients underflow without loss scaling; the scaler multiplies the loss,
        unscales the gradients before clipping and skips a step whose gradients overflowed
        (lowering the scale). Its state belongs in the training checkpoint
        (:class:`spos.train.TrainState`).
        """
        check_amp(amp, self.device)
        if amp != "fp16" or self.device.type != "cuda":
            return None
        return torch.amp.GradScaler("cuda")

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average ``tensor`` over ranks in place (no-op on one process)."""
        if self.distributed:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
            tensor /= self.world_size
        return tensor

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (no-op on one process)."""
        if self.distributed:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def all_gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        holder = [value]
        torch_dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()

    def close(self) -> None:
        """Leave the process group cleanly (all ranks together).

        DDP modules kept alive by reference cycles are collected first and the ranks meet at
        a barrier, so no collective or reducer outlives the group: gloo otherwise sometimes
        aborts the process at exit ("terminate called without an active exception").
        """
        if self.distributed and torch_dist.is_initialized():
            gc.collect()
            torch_dist.barrier()
            torch_dist.destroy_process_group()
