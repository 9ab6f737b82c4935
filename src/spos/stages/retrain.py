"""Stage 3: retrain the found architecture as a standalone network and test it (SPEC section 5).

Recipe: read ``arch.json`` (the search result, or ``--arch``) and check it against the
configured space; build the child network (affine BN) with a seeded initialisation, or copy
the supernet's path into it (``retrain.init=inherit``, for fine-tuning); train it on the
training split (training set minus the held-out validation split) with the supernet stage's
optimiser, schedule, label smoothing and pad-crop-flip augmentation, logging to
``retrain/metrics.jsonl`` and scoring the held-out split once per epoch; then post-process
BN and evaluate top-1/top-5 on the test split, which no earlier stage has read.

BN post-processing (``retrain.bn_postprocess``) follows the official release, which trains
one more epoch at learning rate 0 with BN momentum ``1 / iteration``: the BN running
statistics become the cumulative average over one epoch of *augmented* training batches (the
same pad-crop-flip pipeline as training, from its own seeded stream) and no weight changes.
Under DDP each rank forwards its share and the statistics are averaged across ranks.

Resuming is exact on CPU, as in the supernet stage: ``retrain/child.ckpt`` (written
atomically every ``retrain.checkpoint_every`` steps, at the end of training and after BN
post-processing) holds the model, optimiser, data-stream position and the CPU (and CUDA) RNG
(:class:`spos.train.TrainState`), and refuses another global batch or length, so a run
killed at any moment and rerun ends bit-identical to an uninterrupted one. A finished stage
returns its summary without training again. Writes ``retrain/child.ckpt``,
``retrain/child.safetensors``, ``retrain/metrics.jsonl`` and the ``retrain`` section of
``summary.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spos.arch import Arch
from spos.calibrate import recalibrate_bn
from spos.checkpoint import check_space, load_checkpoint, state_dict_sha256
from spos.childnet import build_child, inherit_weights
from spos.config import RetrainConfig, RunConfig, config_to_dict
from spos.data.prepare import (
    PreparedData,
    eval_batches,
    load_test_split,
    place_dataset,
    prepare_data,
    train_stream,
)
from spos.dist import Runtime
from spos.errors import ArchError, CheckpointError, ConfigError
from spos.io import atomic_write_bytes
from spos.rundir import RunDir, read_summary, start_run, update_summary
from spos.space import SearchSpace, seed_from
from spos.stages.common import ProgressFactory, build_space, null_progress, run_costs
from spos.supernet import build_supernet
from spos.train import (
    Accuracy,
    MetricsLog,
    TrainingWindow,
    TrainState,
    check_global_batch,
    evaluate,
    graceful_stop,
    learning_rate,
    make_sgd,
    sgd_step,
)

__all__ = ["run"]

log = logging.getLogger(__name__)


def _load_arch(path: Path, space: SearchSpace) -> Arch:
    """The architecture in ``path``, checked against ``space`` (errors name the file)."""
    if not path.is_file():
        raise ArchError(
            f"architecture file {path} does not exist; run `spos search` first or pass --arch"
        )
    try:
        return space.validate(Arch.load(path))
    except ArchError as exc:
        raise ArchError(f"{path}: {exc}") from None


def _inherit_from_supernet(child: nn.Module, path: Path, space: SearchSpace, arch: Arch) -> None:
    """Copy the path ``arch`` of the supernet checkpoint at ``path`` into ``child``."""
    if not path.is_file():
        raise CheckpointError(
            f"retrain.init=inherit needs the supernet checkpoint {path}, which does not exist; "
            "run `spos train-supernet` in this run directory first or use retrain.init=scratch"
        )
    payload = load_checkpoint(path, kind="supernet", map_location="cpu")
    stored = check_space(payload, space, path=path)
    supernet = build_supernet(stored)
    supernet.load_state_dict(payload["state"]["model"])
    inherit_weights(child, supernet, arch)
    log.info("initialised the child with the weights of %s", path)


def _check_resumable(
    payload: dict[str, Any], *, run: RunDir, space: SearchSpace, arch: Arch, arch_file: Path,
    cfg: RetrainConfig, total_steps: int, steps_per_epoch: int,
) -> None:
    """Refuse a ``retrain/child.ckpt`` of another space, architecture, global batch or length."""
    path = run.child_ckpt
    check_space(payload, space, path=path)
    state = payload["state"]
    stored_arch = Arch.from_json(state["arch"])
    if payload["space_fingerprint"] != space.fingerprint() or stored_arch != arch:
        raise CheckpointError(
            f"{path} retrains {stored_arch.short()} in another layout or "
            f"architecture than {arch_file} ({arch.short()}); delete {run.retrain_dir} to retrain "
            "from scratch, or use a new run directory"
        )
    check_global_batch(payload, cfg.batch_size, section="retrain", path=path)
    if int(state["total_steps"]) != total_steps:
        raise CheckpointError(
            f"{path} was started for {state['total_steps']} steps but the config "
            f"asks for {total_steps} ({cfg.epochs} epochs of {steps_per_epoch}); restore "
            f"retrain.epochs and retrain.batch_size, or delete {run.retrain_dir} to start over"
        )


def _evaluate_split(
    model: nn.Module, dataset: Any, data: PreparedData, runtime: Runtime, *, batch_size: int, channels_last: bool
) -> Accuracy:
    """Top-1 and top-5 accuracy of ``model`` on ``dataset`` (top-``num_classes`` below 5 classes)."""
    batches = (
        (data.to_float(images, runtime, channels_last=channels_last), labels.to(runtime.device))
        for images, labels in eval_batches(dataset, data, batch_size=batch_size)
    )
    return evaluate(model, batches, k=min(5, data.num_classes))


def _bn_postprocess(
    child: nn.Module, config: RunConfig, data: PreparedData, runtime: Runtime, *, seed: int, steps: int, channels_last: bool
) -> None:
    """BN statistics as the cumulative average over one epoch of augmented training batches
    (the official release's epoch at learning rate 0), averaged across ranks."""
    stream = train_stream(
        config.data, data, runtime, batch_size=config.retrain.batch_size, seed=seed_from(seed, "retrain-bn-postprocess")
    )

    def batches() -> Iterator[torch.Tensor]:
        for _ in range(steps):
            images, _ = next(stream)
            yield data.to_float(images, runtime, channels_last=channels_last)

    count = recalibrate_bn(child, batches(), all_reduce=runtime.all_reduce_sum if runtime.distributed else None)
    log.info("BN post-processing: statistics recomputed over %d training images", count)


def _save_weights(path: Path, child: nn.Module, *, space: SearchSpace, arch: Arch) -> None:
    """Write the child's state dict as safetensors (atomically), space and arch as metadata."""
    from safetensors.torch import save

    tensors = {key: value.detach().cpu().contiguous() for key, value in child.state_dict().items()}
    metadata = {
        "format": "pt",
        "space": json.dumps(space.to_dict()),
        "arch": json.dumps(arch.to_json()),
    }
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def _preprocess(config: RunConfig, data: PreparedData) -> dict[str, Any]:
    """What a deployed model needs to know about its inputs (export writes it out)."""
    return {
        "mean": data.mean.tolist(),
        "std": data.std.tolist(),
        "channels": data.channels,
        "image_size": data.image_size,
        "pad_to": config.data.pad_to,
        "classes": list(data.train.classes),
    }


def _summary(
    config: RunConfig, arch: Arch, space: SearchSpace, *, test: Accuracy, val: Accuracy, costs: dict[str, Any],
    steps: int, seconds: float, last_val_acc: float | None, weights: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """The ``retrain`` section of ``summary.json``."""
    cfg = config.retrain
    return {
        "arch": arch.short(),
        "space": space.name,
        "init": cfg.init,
        "seed": config.seed if cfg.seed is None else cfg.seed,
        "epochs": cfg.epochs,
        "steps": steps,
        "batch_size": cfg.batch_size,
        "test_top1": test.top1,
        "test_top5": test.topk,
        "test_images": test.images,
        "val_top1": val.top1,
        "val_top1_before_bn_postprocess": last_val_acc if cfg.bn_postprocess else None,
        "bn_postprocess": cfg.bn_postprocess,
        "flops": int(costs["flops"]),
        "params": int(costs["params"]),
        "params_total": int(costs["params_total"]),
        "seconds": round(seconds, 2),
        "images_per_s": round(steps * cfg.batch_size / max(seconds, 1e-9), 1),
        "weights_sha256": state_dict_sha256(weights),
    }


def _run_settings(config: RunConfig) -> tuple[bool, int]:
    """The run-wide memory format and metrics interval, shared by every training stage."""
    return config.runtime.channels_last, config.runtime.log_every


def _total_steps(cfg: RetrainConfig, steps_per_epoch: int) -> int:
    """Steps of the retraining schedule; the warm-up must end before it does."""
    total = cfg.epochs * steps_per_epoch
    if cfg.optim.warmup_steps >= total:
        raise ConfigError(
            f"config field 'retrain.optim.warmup_steps' ({cfg.optim.warmup_steps}) must be below the "
            f"{total} retraining steps ({cfg.epochs} epochs of {steps_per_epoch})"
        )
    return total


def _initial_child(
    space: SearchSpace, arch: Arch, run: RunDir, runtime: Runtime, *, seed: int, inherit: bool, channels_last: bool
) -> nn.Module:
    """The standalone network, seeded (or inheriting the supernet's path), on the device."""
    torch.manual_seed(seed_from(seed, "retrain-init"))
    child = build_child(space, arch)
    if inherit:
        _inherit_from_supernet(child, run.supernet_ckpt, space, arch)
    # Dropout draws from here on: the same stream whichever way the weights were initialised.
    torch.manual_seed(seed_from(seed, "retrain-train"))
    child = child.to(runtime.device)
    return child.to(memory_format=torch.channels_last) if channels_last else child


def _uses_every_parameter(child: torch.nn.Module, space: SearchSpace, runtime: Runtime) -> bool:
    """Whether one backward pass of ``child`` reaches every parameter (probed in eval mode on a
    zero batch, so BN statistics, quantiser initialisation and the RNG are left untouched)."""
    layout = space.layout
    example = torch.zeros(2, int(layout["in_channels"]), int(layout["input_size"]), int(layout["input_size"]), device=runtime.device)
    was_training = child.training
    child.eval()
    try:
        child(example).sum().backward()
        return all(p.grad is not None for p in child.parameters() if p.requires_grad)
    finally:
        for parameter in child.parameters():
            parameter.grad = None
        child.train(was_training)


def run(
    config: RunConfig,
    run_dir: Path,
    *,
    runtime: Runtime,
    progress: ProgressFactory = null_progress,
    arch_path: Path | None = None,
) -> dict[str, Any]:
    """Retrain (or resume retraining) the architecture of ``run_dir``; return the summary.

    Args:
        config: The run config (``retrain`` section, data, space, seed).
        run_dir: The run directory; writes go to ``run_dir/retrain/`` and ``summary.json``.
        runtime: Device, rank and world size.
        progress: Progress-bar factory (the CLI passes tqdm on rank 0).
        arch_path: The architecture to retrain; defaults to ``run_dir/arch.json``.

    Returns:
        The ``retrain`` section of ``summary.json``.

    Raises:
        ArchError: The architecture file is missing or not of the configured space.
        CheckpointError: ``retrain/child.ckpt`` is corrupted or belongs to another
            architecture, space or schedule; or ``init=inherit`` lacks the supernet checkpoint.
    """
    cfg, optim = config.retrain, config.retrain.optim
    retrain_seed = config.seed if cfg.seed is None else cfg.seed
    channels_last, log_every = _run_settings(config)
    run = RunDir(run_dir)
    arch_file = Path(arch_path) if arch_path is not None else run.arch_json
    data = prepare_data(config.data, seed=config.seed)
    data = dataclasses.replace(
        data, train=place_dataset(data.train, runtime), val=place_dataset(data.val, runtime)
    )
    space = build_space(config, data)
    arch = _load_arch(arch_file, space)
    stream = train_stream(config.data, data, runtime, batch_size=cfg.batch_size, seed=seed_from(retrain_seed, "retrain-data"))
    steps_per_epoch = stream.steps_per_epoch
    total_steps = _total_steps(cfg, steps_per_epoch)
    # Check an existing checkpoint before writing anything, so a bad one costs nothing.
    payload = None
    if run.child_ckpt.exists():
        payload = load_checkpoint(run.child_ckpt, kind="child", map_location="cpu")
        _check_resumable(
            payload, run=run, space=space, arch=arch, arch_file=arch_file, cfg=cfg,
            total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        )
        finished = read_summary(run).get("retrain")
        if payload["state"].get("finished") and finished is not None:
            return finished
    start_run(config, run, runtime)
    if runtime.is_main:
        run.retrain_dir.mkdir(parents=True, exist_ok=True)

    child = _initial_child(space, arch, run, runtime, seed=retrain_seed, inherit=payload is None and cfg.init == "inherit", channels_last=channels_last)
    # A child normally uses every weight each step, so DDP can skip its search for unused ones
    # (a faster backward); a cell with a dead node does not, and keeps the search.
    model = runtime.wrap(child, find_unused_parameters=runtime.distributed and not _uses_every_parameter(child, space, runtime))
    optimizer = make_sgd(child, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov, weight_decay=optim.weight_decay)
    state = TrainState(child, optimizer, stream, device=runtime.device, scaler=runtime.grad_scaler(config.runtime.amp))
    bn_postprocessed, last_val_acc = False, None
    if payload is not None:
        saved = state.load(payload)
        bn_postprocessed, last_val_acc = bool(saved["bn_postprocessed"]), saved["last_val_acc"]
        log.info("resuming retraining from step %d of %d", state.step, total_steps)
    preprocess = _preprocess(config, data)

    saved_at: int | None = state.step if payload is not None else None
    hint = "lower retrain.optim.lr or set retrain.optim.grad_clip, then rerun to resume"

    def save(*, finished: bool) -> None:
        nonlocal saved_at
        window.check_finite(stage="retrain", step=state.step, last_checkpoint=saved_at, hint=hint)
        state.train_seconds = window.train_seconds
        saved_at = state.step
        if runtime.is_main:
            extra = {
                "arch": arch.to_json(),
                "init": cfg.init,
                "total_steps": total_steps,
                "global_batch": cfg.batch_size,
                "bn_postprocessed": bn_postprocessed,
                "finished": finished,
                "last_val_acc": last_val_acc,
                "preprocess": preprocess,
            }
            state.save(run.child_ckpt, kind="child", space=space, config=config_to_dict(config), extra=extra)

    def evaluate_on(dataset: Any) -> Accuracy:
        return _evaluate_split(child, dataset, data, runtime, batch_size=max(256, cfg.batch_size), channels_last=channels_last)

    metrics = MetricsLog(run.retrain_metrics, tensorboard_dir=run.retrain_tensorboard, enabled=runtime.is_main, resume_step=state.step)
    bar = progress(total=total_steps, initial=state.step, description="retrain") if runtime.is_main else null_progress(total=total_steps)
    window = TrainingWindow(state.train_seconds)
    autocast = runtime.autocast(config.runtime.amp)
    clip = functools.partial(torch.nn.utils.clip_grad_norm_, list(child.parameters()), optim.grad_clip) if optim.grad_clip > 0 else None
    model.train()
    with graceful_stop() as stop:
        while state.step < total_steps:
            lr = learning_rate(state.step, total=total_steps, peak=optim.lr, warmup=optim.warmup_steps, schedule=optim.schedule)
            images, labels = next(stream)
            labels = labels.to(runtime.device)
            inputs = data.to_float(images, runtime, channels_last=channels_last)
            result = sgd_step(model, inputs, labels, optimizer, lr=lr, label_smoothing=optim.label_smoothing, autocast=autocast, before_step=clip, scaler=state.scaler)
            state.step += 1
            step = state.step

            window.add(result.loss, result.logits, labels, grad_norm=result.grad_norm, skipped=result.skipped)
            epoch_end = step % steps_per_epoch == 0
            if step % log_every == 0 or epoch_end or step == total_steps:
                window.check_finite(stage="retrain", step=step, last_checkpoint=saved_at, hint=hint)
                record = {**window.flush(step=step, lr=lr, runtime=runtime), "epoch": round(step / steps_per_epoch, 4)}
                metrics.write(record)
                bar.update(0, loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.0f}")
            if epoch_end and runtime.is_main:
                last_val_acc = evaluate_on(data.val).top1
                metrics.write({"step": step, "epoch": step // steps_per_epoch, "val_acc": last_val_acc})
                bar.update(0, val=f"{last_val_acc:.2f}")
                window.restart_clock()  # validation time is not training time
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                save(finished=False)
            if stop.requested:  # SIGINT/SIGTERM: keep this step's state, then stop
                save(finished=False)
                raise KeyboardInterrupt
    bar.close()
    metrics.close()

    if cfg.bn_postprocess and not bn_postprocessed:
        _bn_postprocess(child, config, data, runtime, seed=retrain_seed, steps=steps_per_epoch, channels_last=channels_last)
        bn_postprocessed = True
    save(finished=True)

    summary: dict[str, Any] | None = None
    if runtime.is_main:  # the test split is read here only (SPEC section 4)
        test = evaluate_on(load_test_split(config.data, seed=config.seed, classes=data.train.classes))
        costs = run_costs(run, space, runtime).costs(arch)
        summary = _summary(config, arch, space, test=test, val=evaluate_on(data.val), costs=costs, steps=state.step,
                           seconds=window.train_seconds, last_val_acc=last_val_acc, weights=child.state_dict())
        _save_weights(run.child_weights, child, space=space, arch=arch)
        update_summary(run, "retrain", summary)
    summary = runtime.broadcast_object(summary)
    runtime.barrier()
    return summary
