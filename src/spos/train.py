"""What the two training stages share: optimiser, schedule, one SGD step, the resumable state,
evaluation and the metrics log (SPEC sections 3 and 5, official training recipe).

Each training loop stays in its stage (the supernet samples a path per step, retrain scores
an epoch's end); only the state and the step are factored out here, as torchtune does.
:class:`TrainState` is everything a checkpoint must hold to resume bit-identically: model,
optimiser, fp16's gradient scaler, data-stream position, path sampler, CPU and CUDA RNG, step
and training seconds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from spos.arch import Arch
from spos.checkpoint import save_checkpoint
from spos.errors import CheckpointError, DivergenceError
from spos.io import atomic_write_text, finite_json, read_jsonl

if TYPE_CHECKING:
    from spos.data import BatchStream
    from spos.dist import Runtime
    from spos.sampling import PathSampler
    from spos.space import SearchSpace

__all__ = [
    "Accuracy",
    "MetricsLog",
    "StepResult",
    "Stopwatch",
    "TrainState",
    "TrainingWindow",
    "check_global_batch",
    "complexity_scaled_lr",
    "evaluate",
    "finetuned_path",
    "graceful_stop",
    "learning_rate",
    "make_sgd",
    "sgd_step",
]


def make_sgd(
    model: nn.Module | Iterable[nn.Parameter], *, lr: float, momentum: float, nesterov: bool, weight_decay: float
) -> torch.optim.SGD:
    """SGD with weight decay on conv and linear weights only (official recipe).

    ``model`` is a module or the parameters to optimise. Parameters whose gradient is None in
    a step (candidates off the sampled path) get no update at all: torch's SGD skips them, so
    no decay and no stale momentum step.
    """
    decay, no_decay = [], []
    for parameter in model.parameters() if isinstance(model, nn.Module) else model:
        (decay if parameter.ndim > 1 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def learning_rate(step: int, *, total: int, peak: float, warmup: int, schedule: str) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then linear or cosine decay to 0."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * peak * (1 + math.cos(math.pi * progress))
    return peak * (1 - progress)


def complexity_scaled_lr(lr: float, *, peak: float, power: float, complexity: float) -> float:
    """The rate of a path of ``complexity`` in [0, 1] at the schedule's rate ``lr`` (CaLR).

    The schedule's decay ``lr / peak`` is raised to ``1 + (power - 1) * (1 - complexity)``: the
    largest path (complexity 1) keeps the schedule, the smallest decays with exponent ``power``.
    Rates at or above ``peak`` are returned unchanged; a warm-up is not scaled (callers apply
    this after it).
    """
    if power == 1.0 or lr >= peak or peak <= 0:
        return lr
    complexity = min(1.0, max(0.0, complexity))
    return peak * (lr / peak) ** (1.0 + (power - 1.0) * (1.0 - complexity))


class StepResult(NamedTuple):
    """What one :func:`sgd_step` produced: the loss and logits of the batch, what the
    ``before_step`` hook returned (the supernet's pre-clip gradient norm, or None) and, with a
    gradient scaler, whether the scaler skipped the update (a 0-dim bool tensor on the device:
    fp16 gradients overflowed; None without a scaler)."""

    loss: torch.Tensor
    logits: torch.Tensor
    grad_norm: torch.Tensor | None
    skipped: torch.Tensor | None = None


def sgd_step(
    model: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    lr: float,
    label_smoothing: float,
    autocast: contextlib.AbstractContextManager,
    before_step: Callable[[], torch.Tensor | None] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> StepResult:
    """One optimiser step on one batch: cross-entropy with label smoothing, at rate ``lr``.

    Args:
        model: The (possibly DDP-wrapped) network as a function of the inputs; the supernet
            passes ``lambda x: model(x, arch)``.
        autocast: The forward pass's context (:meth:`spos.dist.Runtime.autocast`).
        before_step: Called after the backward pass, before the update: where the supernet
            drops off-path gradients and clips. Its return value is the result's ``grad_norm``.
            With a scaler it runs after ``scaler.unscale_``, so it sees (and clips) the true
            gradients.
        scaler: fp16's gradient scaler (:meth:`spos.dist.Runtime.grad_scaler`): scale the
            loss, backward, unscale, ``before_step``, step (skipped when the gradients hold an
            inf or NaN), update the scale.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast:
        logits = model(inputs)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        grad_norm = before_step() if before_step is not None else None
        optimizer.step()
        return StepResult(loss, logits, grad_norm)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = before_step() if before_step is not None else None
    skipped = _found_inf(scaler, optimizer, loss.device)
    scaler.step(optimizer)
    scaler.update()
    return StepResult(loss, logits, grad_norm, skipped)


def _found_inf(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, device: torch.device) -> torch.Tensor:
    """Whether ``scaler.unscale_`` found an inf or NaN gradient (a 0-dim bool on ``device``).

    Read from the flags the scaler itself just computed, without a host sync; ``scaler.step``
    decides from the same flags. (GradScaler keeps them per optimiser, per device; an
    unscaled optimiser or a disabled scaler has none: nothing was skipped.)
    """
    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer), {})
    flags = [flag.to(device) for flag in state.get("found_inf_per_device", {}).values()]
    if not flags:
        return torch.zeros((), dtype=torch.bool, device=device)
    return torch.stack(flags).sum() > 0


@contextlib.contextmanager
def finetuned_path(
    supernet: Any,
    arch: Any,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    label_smoothing: float,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    seed: int,
) -> Iterator[None]:
    """Inside the block, the path ``arch`` of ``supernet`` is fine-tuned from its inherited weights.

    ``steps`` SGD steps on the path alone (fresh momentum, the rate decaying from ``lr`` to 0 on
    a cosine), batches from ``batches`` (``to_input`` turns their images into the network's
    input; labels go to the images' device). Random layers (dropout) draw from a generator
    seeded with ``seed``, forked from the global one, which is left as it was. On leaving, the
    path's parameters and BN buffers are restored exactly and the supernet's train/eval mode
    with them, so the next candidate starts from the supernet's own weights (finalist
    re-ranking, issue 17).
    """
    modules = [module for _, module in supernet.path_modules(arch)]
    saved = [{k: v.detach().clone() for k, v in module.state_dict().items()} for module in modules]
    was_training = supernet.training
    optimizer = make_sgd(
        supernet.path_parameters(arch), lr=lr, momentum=momentum, nesterov=False, weight_decay=weight_decay
    )
    device = next(supernet.parameters()).device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            supernet.train()
            for step in range(steps):
                images, labels = next(batches)
                inputs = to_input(images)
                sgd_step(
                    lambda x: supernet(x, arch),
                    inputs,
                    labels.to(inputs.device),
                    optimizer,
                    lr=learning_rate(step, total=steps, peak=lr, warmup=0, schedule="cosine"),
                    label_smoothing=label_smoothing,
                    autocast=contextlib.nullcontext(),
                )
        supernet.train(was_training)
        yield
    finally:
        with torch.no_grad():
            for module, state in zip(modules, saved, strict=True):
                module.load_state_dict(state)
        for parameter in supernet.parameters():
            parameter.grad = None
        supernet.train(was_training)


@dataclass(frozen=True)
class Accuracy:
    """Hits of one evaluation pass: top-1 and top-``k`` counts over ``images`` images."""

    images: int
    correct: int
    correct_topk: int
    k: int
    nonfinite: int = 0
    """Images whose logits hold a NaN or an infinity (their argmax means nothing)."""

    @property
    def top1(self) -> float:
        """Top-1 accuracy in percent."""
        return 100.0 * self.correct / max(1, self.images)

    @property
    def topk(self) -> float:
        """Top-``k`` accuracy in percent (100% when ``k`` is the number of classes)."""
        return 100.0 * self.correct_topk / max(1, self.images)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    arch: Arch | None = None,
    k: int = 1,
) -> Accuracy:
    """Accuracy of ``model`` (or of the path ``arch`` of a supernet) in eval mode.

    ``batches`` are ``(inputs, labels)`` already on the model's device; top-1 counts
    ``argmax == label``, top-``k`` counts the label among the ``k`` largest logits. The
    model's train/eval mode is restored afterwards. The counts stay on the device until the
    last batch (one host read per call, not per batch: a GPU is never left waiting).
    """
    was_training = model.training
    model.eval()
    counts: torch.Tensor | None = None  # [top-1 hits, non-finite rows, top-k hits]
    images = 0
    for inputs, labels in batches:
        logits = model(inputs) if arch is None else model(inputs, arch)
        correct = (logits.argmax(dim=1) == labels).sum()
        nonfinite = (~torch.isfinite(logits)).any(dim=1).sum()
        topk = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum() if k > 1 else correct
        batch = torch.stack([correct, nonfinite, topk])
        counts = batch if counts is None else counts + batch
        images += labels.numel()
    model.train(was_training)
    correct, nonfinite, correct_topk = counts.tolist() if counts is not None else (0, 0, 0)
    return Accuracy(images, correct, correct_topk, k, nonfinite)


def check_global_batch(payload: Mapping[str, Any], batch_size: int, *, section: str, path: Path) -> None:
    """Refuse to resume a checkpoint with another global batch: the stream's position would
    mean other images. ``section`` is the config section whose ``batch_size`` is meant
    (checkpoints older than the ``global_batch`` state key fall back to their config)."""
    stored = payload["state"].get("global_batch")
    if stored is None:
        stored = payload["config"][section]["batch_size"]
    if int(stored) != batch_size:
        raise CheckpointError(
            f"{path} was trained with global batch {section}.batch_size={stored}, but the config "
            f"asks for {batch_size}; resume with batch_size={stored} (any number of ranks that "
            "divides it), or use a new run directory"
        )


@dataclass
class TrainState:
    """Everything a training checkpoint holds to resume bit-identically.

    Attributes:
        model: The unwrapped network (its ``state_dict`` is saved; DDP adds no state).
        optimizer: Its optimiser.
        stream: The training :class:`~spos.data.BatchStream` (epoch and position).
        sampler: The supernet's path sampler (RNG, coverage); None for a standalone network.
        step: Optimiser steps taken.
        train_seconds: Training time so far (evaluation excluded).
        device: Where the model runs: on CUDA the device's RNG is saved and restored too.
        scaler: fp16's gradient scaler (None otherwise); its scale and growth tracker are
            saved as plain numbers, so a resumed fp16 run continues at the same loss scale.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    stream: BatchStream
    sampler: PathSampler | None = None
    step: int = 0
    train_seconds: float = 0.0
    device: torch.device = torch.device("cpu")
    scaler: torch.amp.GradScaler | None = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "stream": self.stream.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "train_seconds": self.train_seconds,
        }
        if self.sampler is not None:
            state["sampler"] = self.sampler.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.scaler is not None:
            # Python floats and ints only ({"scale", "growth_factor", "backoff_factor",
            # "growth_interval", "_growth_tracker"}): loads with weights_only=True.
            state["grad_scaler"] = {key: _plain_number(value) for key, value in self.scaler.state_dict().items()}
        return state

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        kind: str,
        space: SearchSpace,
        config: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Write a checkpoint of kind ``kind`` at :attr:`step` (atomically; call on the main
        rank only). ``extra`` adds the stage's own state keys."""
        state = {**self.state_dict(), **(extra or {})}
        save_checkpoint(path, kind=kind, space=space, config=config, step=self.step, state=state)

    def load(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Restore from a checkpoint payload (:func:`spos.checkpoint.load_checkpoint`);
        returns its ``state`` for the stage's own keys."""
        state = dict(payload["state"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        self.stream.load_state_dict(state["stream"])
        torch.set_rng_state(state["torch_rng"].cpu())  # the CPU RNG state, also on CUDA runs
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        if self.scaler is not None and state.get("grad_scaler"):
            # A checkpoint of a float32 or bf16 run has none: the scaler starts afresh.
            self.scaler.load_state_dict(dict(state["grad_scaler"]))
        self.step, self.train_seconds = int(payload["step"]), float(state["train_seconds"])
        return state


def _plain_number(value: Any) -> Any:
    """A number of a scaler's state dict as a Python float or int (a tensor would pin a device)."""
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


class MetricsLog:
    """Append-only ``metrics.jsonl`` (and TensorBoard) on the main rank.

    On resume, records past the checkpoint's step are dropped so the file reads as one run.
    """

    def __init__(self, path: Path, *, tensorboard_dir: Path, enabled: bool, resume_step: int) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if self.path.exists():
            # A torn last line (a kill or a full disk mid-append) is dropped with the lines past
            # the checkpoint, so the file reads as one run.
            kept = [record for record in read_jsonl(self.path) if record.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(_jsonl_line(record) for record in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1)
        except ImportError:  # TensorBoard is optional; metrics.jsonl is the record
            self.writer = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(_jsonl_line(record))
        if self.writer is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _jsonl_line(record: Mapping[str, Any]) -> str:
    return json.dumps(finite_json(dict(record)), allow_nan=False) + "\n"


class TrainingWindow:
    """Loss, accuracy and throughput accumulated between two metrics lines.

    ``train_seconds`` sums the time of every flushed window, so evaluation time that the
    caller excludes with :meth:`restart_clock` never counts as training time.
    """

    def __init__(self, train_seconds: float = 0.0) -> None:
        self.train_seconds = train_seconds
        self.diverged: str | None = None  # what went non-finite first, once it has
        self._reset()

    def _reset(self) -> None:
        # Sums stay where the step ran (the device) and are read once per metrics line, so a
        # GPU step never waits for the host (issue 18): no per-step float() or int().
        self.loss_sum: torch.Tensor | None = None  # float64: sum of loss x batch size
        self.correct: torch.Tensor | None = None
        self.images = 0
        self.grad_norms: list[torch.Tensor] = []
        # Per entry of grad_norms: the step's "scaler skipped it" flag (None: no scaler).
        self.norm_skipped: list[torch.Tensor | None] = []
        self.skipped: list[torch.Tensor] = []  # every step's flag, with a scaler
        self.clock = Stopwatch()

    def add(
        self,
        loss: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        grad_norm: torch.Tensor | None = None,
        skipped: torch.Tensor | None = None,
    ) -> None:
        """Count one step; ``grad_norm`` (the step's pre-clip gradient norm, the same on every
        rank) is logged as the window's mean and max when given. ``skipped`` (fp16's gradient
        scaler skipped the update: :attr:`StepResult.skipped`) keeps that step's overflowed
        gradient norm out of the divergence check and the logged norms: an overflow is the
        scaler's normal way of finding its scale, not a diverged run; the line counts them as
        ``skipped_steps``."""
        weighted = loss.detach().double() * labels.numel()
        hits = (logits.argmax(1) == labels).sum()
        self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
        self.correct = hits if self.correct is None else self.correct + hits
        self.images += labels.numel()
        if grad_norm is not None:
            self.grad_norms.append(grad_norm.detach().double())
            self.norm_skipped.append(skipped)
        if skipped is not None:
            self.skipped.append(skipped)

    def _kept_norms(self) -> list[float]:
        """The window's gradient norms of the steps that updated the model (one host read)."""
        if not self.grad_norms:
            return []
        norms = torch.stack(self.grad_norms).tolist()
        if all(flag is None for flag in self.norm_skipped):
            return norms
        device = self.grad_norms[0].device
        flags = torch.stack([
            flag.to(device) if flag is not None else torch.zeros((), dtype=torch.bool, device=device)
            for flag in self.norm_skipped
        ]).tolist()
        return [norm for norm, skip in zip(norms, flags, strict=True) if not skip]

    def check_finite(self, *, stage: str, step: int, last_checkpoint: int | None, hint: str) -> None:
        """Raise :class:`DivergenceError` once a step had a non-finite loss or gradient norm
        (call it before writing a checkpoint or a metrics line; it reads the window's sums, one
        host sync). ``last_checkpoint`` is the step of the last checkpoint written (None: none)."""
        if self.diverged is None and self.loss_sum is not None:
            loss = float(self.loss_sum) / max(1, self.images)
            norms = self._kept_norms()
            if not (math.isfinite(loss) and all(map(math.isfinite, norms))):
                bad_norm = next((norm for norm in norms if not math.isfinite(norm)), None)
                self.diverged = f"loss {loss:g}" + (f", gradient norm {bad_norm:g}" if bad_norm is not None else "")
        if self.diverged is not None:
            kept = (
                f"the last good checkpoint (step {last_checkpoint}) is kept"
                if last_checkpoint is not None
                else "no checkpoint had been written yet"
            )
            raise DivergenceError(f"{stage} training diverged by step {step} ({self.diverged}); {kept}; {hint}")

    def restart_clock(self) -> None:
        self.clock = Stopwatch()

    def flush(self, *, step: int, lr: float, runtime: Runtime) -> dict[str, Any]:
        """The metrics line of the window over all ranks; starts a new window.

        A collective under torchrun (every rank must call it at the same step): loss,
        accuracy and image counts are summed over ranks, so the line describes the global
        batch, as a single process would log it. Seconds are this rank's.
        """
        device = self.loss_sum.device if self.loss_sum is not None else runtime.device
        zero = torch.zeros((), dtype=torch.float64, device=device)
        totals = torch.stack([
            self.loss_sum if self.loss_sum is not None else zero,
            self.correct.double() if self.correct is not None else zero,
            torch.tensor(float(self.images), dtype=torch.float64, device=device),
        ])
        loss_sum, correct, images = runtime.all_reduce_sum(totals.to(runtime.device)).tolist()
        seconds = self.clock()  # after the read: on a GPU the window's steps have finished
        self.train_seconds += seconds
        record = {
            "step": step,
            "loss": loss_sum / max(1.0, images),
            "train_acc": 100.0 * correct / max(1.0, images),
            "lr": lr,
            "images_per_s": images / max(seconds, 1e-9),
        }
        norms = self._kept_norms()
        if norms:
            record["grad_norm"] = sum(norms) / len(norms)
            record["grad_norm_max"] = max(norms)
        if self.skipped:
            record["skipped_steps"] = int(torch.stack(self.skipped).sum())
        self._reset()
        return record


class Stopwatch:
    """Wall-clock seconds since construction (``time.perf_counter``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


class graceful_stop(contextlib.AbstractContextManager):  # noqa: N801 - used like a function
    """Turn SIGINT and SIGTERM into a request that a training loop honours between steps.

    ``with graceful_stop() as stop:`` ... ``if stop.requested: save(); raise KeyboardInterrupt``:
    the loop saves a checkpoint of a consistent state (never mid-update) and then stops as an
    interrupt does. A second signal stops at once. Outside the main thread it does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> graceful_stop:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return None
