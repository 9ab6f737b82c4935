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
post-processing) holds the model, optimiser, data-stream position and torch RNG, so a run
killed at any moment and rerun ends bit-identical to an uninterrupted one. A finished stage
returns its summary without training again. Writes ``retrain/child.ckpt``,
``retrain/child.safetensors``, ``retrain/metrics.jsonl`` and the ``retrain`` section of
``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spos import data as spos_data
from spos.arch import Arch
from spos.calibrate import recalibrate_bn
from spos.checkpoint import check_space, load_checkpoint, save_checkpoint, state_dict_sha256
from spos.childnet import build_child, inherit_weights
from spos.config import RunConfig, config_to_dict
from spos.cost import CostModel
from spos.data.prepare import (
    PreparedData,
    eval_batches,
    load_test_split,
    place_dataset,
    prepare_data,
    train_stream,
)
from spos.dist import Runtime
from spos.errors import ArchError, CheckpointError
from spos.io import atomic_write_bytes
from spos.space import SearchSpace
from spos.stages.common import (
    MetricsLog,
    ProgressFactory,
    TrainingWindow,
    build_space,
    learning_rate,
    make_sgd,
    null_progress,
    read_summary,
    seed_from,
    start_run,
    update_summary,
)
from spos.stages.train_supernet import CHECKPOINT_NAME as SUPERNET_CHECKPOINT_NAME
from spos.supernet import build_supernet

__all__ = [
    "run",
    "evaluate",
    "RETRAIN_DIR",
    "CHECKPOINT_NAME",
    "WEIGHTS_NAME",
]

log = logging.getLogger(__name__)

RETRAIN_DIR = "retrain"
"""Sub-directory of the run directory the stage writes to."""
CHECKPOINT_NAME = "child.ckpt"
"""Resumable checkpoint of the child network (kind ``"child"``), under :data:`RETRAIN_DIR`."""
WEIGHTS_NAME = "child.safetensors"
"""Final weights (after BN post-processing), under :data:`RETRAIN_DIR`."""


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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: spos_data.ArrayDataset | spos_data.LazyImageFolder,
    data: PreparedData,
    runtime: Runtime,
    *,
    batch_size: int,
    channels_last: bool,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) of ``model`` in eval mode over ``dataset``.

    Returns:
        ``{"top1": ..., "top5": ..., "images": ...}``; with fewer than 5 classes "top-5" is
        top-``num_classes`` (100%).
    """
    was_training = model.training
    model.eval()
    k = min(5, data.num_classes)
    hits_top1 = hits_topk = total = 0
    for images, labels in eval_batches(dataset, data, batch_size=batch_size):
        logits = model(data.to_float(images, runtime, channels_last=channels_last))
        hits = logits.topk(k, dim=1).indices == labels.to(runtime.device)[:, None]
        hits_top1 += int(hits[:, 0].sum())
        hits_topk += int(hits.any(dim=1).sum())
        total += int(labels.numel())
    model.train(was_training)
    return {
        "top1": 100.0 * hits_top1 / max(1, total),
        "top5": 100.0 * hits_topk / max(1, total),
        "images": total,
    }


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
    cfg = config.retrain
    retrain_seed = config.seed if cfg.seed is None else cfg.seed
    channels_last = config.supernet.channels_last
    run_dir = Path(run_dir)
    out_dir = run_dir / RETRAIN_DIR
    checkpoint_path = out_dir / CHECKPOINT_NAME
    arch_file = Path(arch_path) if arch_path is not None else run_dir / "arch.json"
    data = prepare_data(config.data, seed=config.seed)
    data = dataclasses.replace(
        data, train=place_dataset(data.train, runtime), val=place_dataset(data.val, runtime)
    )
    space = build_space(config, data)
    arch = _load_arch(arch_file, space)
    stream = train_stream(
        config.data,
        data,
        runtime,
        batch_size=cfg.batch_size,
        seed=seed_from(retrain_seed, "retrain-data"),
    )
    steps_per_epoch = stream.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch

    # Check an existing checkpoint before writing anything, so a bad one costs nothing.
    payload = None
    if checkpoint_path.exists():
        payload = load_checkpoint(checkpoint_path, kind="child", map_location="cpu")
        check_space(payload, space, path=checkpoint_path)
        state = payload["state"]
        stored_arch = Arch.from_json(state["arch"])
        if payload["space_fingerprint"] != space.fingerprint() or stored_arch != arch:
            raise CheckpointError(
                f"{checkpoint_path} retrains {stored_arch.short()} in another layout or "
                f"architecture than {arch_file} ({arch.short()}); delete {out_dir} to retrain "
                "from scratch, or use a new run directory"
            )
        if int(state["total_steps"]) != total_steps:
            raise CheckpointError(
                f"{checkpoint_path} was started for {state['total_steps']} steps but the config "
                f"asks for {total_steps} ({cfg.epochs} epochs of {steps_per_epoch}); restore "
                f"retrain.epochs and retrain.batch_size, or delete {out_dir} to start over"
            )
        finished = read_summary(run_dir).get("retrain")
        if state.get("finished") and finished is not None:
            return finished
    start_run(config, run_dir, runtime)
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed_from(retrain_seed, "retrain-init"))
    child = build_child(space, arch)
    if payload is None and cfg.init == "inherit":
        _inherit_from_supernet(child, run_dir / SUPERNET_CHECKPOINT_NAME, space, arch)
    # Dropout draws from here on: the same stream whichever way the weights were initialised.
    torch.manual_seed(seed_from(retrain_seed, "retrain-train"))
    child = child.to(runtime.device)
    if channels_last:
        child = child.to(memory_format=torch.channels_last)
    model = runtime.wrap(child)
    optimizer = make_sgd(
        child, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )
    preprocess = {
        "mean": data.mean.tolist(),
        "std": data.std.tolist(),
        "channels": data.channels,
        "image_size": data.image_size,
        "pad_to": config.data.pad_to,
        "classes": list(data.train.classes),
    }

    step, train_seconds = 0, 0.0
    bn_postprocessed, last_val_acc = False, None
    if payload is not None:
        state = payload["state"]
        child.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        stream.load_state_dict(state["stream"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if runtime.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), runtime.device)
        step, train_seconds = int(payload["step"]), float(state["train_seconds"])
        bn_postprocessed, last_val_acc = bool(state["bn_postprocessed"]), state["last_val_acc"]
        log.info("resuming retraining from step %d of %d", step, total_steps)

    def save(at_step: int, *, finished: bool) -> None:
        if not runtime.is_main:
            return
        state = {
            "model": child.state_dict(),
            "optimizer": optimizer.state_dict(),
            "stream": stream.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "train_seconds": window.train_seconds,
            "arch": arch.to_json(),
            "init": cfg.init,
            "total_steps": total_steps,
            "bn_postprocessed": bn_postprocessed,
            "finished": finished,
            "last_val_acc": last_val_acc,
            "preprocess": preprocess,
        }
        if runtime.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(runtime.device)
        save_checkpoint(
            checkpoint_path,
            kind="child",
            space=space,
            config=config_to_dict(config),
            step=at_step,
            state=state,
        )

    eval_batch_size = max(256, cfg.batch_size)
    metrics = MetricsLog(out_dir, enabled=runtime.is_main, resume_step=step)
    bar = (
        progress(total=total_steps, initial=step, description="retrain")
        if runtime.is_main
        else null_progress(total=total_steps)
    )
    log_every = config.supernet.log_every
    window = TrainingWindow(train_seconds)
    autocast = runtime.autocast(cfg.amp)
    model.train()
    while step < total_steps:
        lr = learning_rate(step, total=total_steps, peak=cfg.lr, warmup=cfg.warmup_steps, schedule=cfg.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = next(stream)
        inputs = data.to_float(images, runtime, channels_last=channels_last)
        labels = labels.to(runtime.device)

        with autocast:
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1

        window.add(loss, logits, labels)
        epoch_end = step % steps_per_epoch == 0
        if step % log_every == 0 or epoch_end or step == total_steps:
            record = {
                **window.flush(step=step, lr=lr, runtime=runtime),
                "epoch": round(step / steps_per_epoch, 4),
            }
            metrics.write(record)
            bar.update(0, loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.0f}")
        if epoch_end and runtime.is_main:
            last_val_acc = evaluate(
                child, data.val, data, runtime, batch_size=eval_batch_size, channels_last=channels_last
            )["top1"]
            metrics.write({"step": step, "epoch": step // steps_per_epoch, "val_acc": last_val_acc})
            bar.update(0, val=f"{last_val_acc:.2f}")
            window.restart_clock()  # validation time is not training time
        bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            save(step, finished=False)
    bar.close()
    metrics.close()

    if cfg.bn_postprocess and not bn_postprocessed:
        postprocess_stream = train_stream(
            config.data,
            data,
            runtime,
            batch_size=cfg.batch_size,
            seed=seed_from(retrain_seed, "retrain-bn-postprocess"),
        )

        def batches() -> Iterator[torch.Tensor]:
            for _ in range(steps_per_epoch):
                images, _ = next(postprocess_stream)
                yield data.to_float(images, runtime, channels_last=channels_last)

        count = recalibrate_bn(
            child, batches(), all_reduce=runtime.all_reduce_sum if runtime.distributed else None
        )
        bn_postprocessed = True
        log.info("BN post-processing: statistics recomputed over %d training images", count)
    save(step, finished=True)

    summary: dict[str, Any] | None = None
    if runtime.is_main:
        test = evaluate(
            child,
            load_test_split(config.data, seed=config.seed, classes=data.train.classes),
            data,
            runtime,
            batch_size=eval_batch_size,
            channels_last=channels_last,
        )
        val = evaluate(
            child, data.val, data, runtime, batch_size=eval_batch_size, channels_last=channels_last
        )
        costs = CostModel.from_space(space).costs(arch)
        summary = {
            "arch": arch.short(),
            "space": space.name,
            "init": cfg.init,
            "seed": retrain_seed,
            "epochs": cfg.epochs,
            "steps": step,
            "batch_size": cfg.batch_size,
            "test_top1": test["top1"],
            "test_top5": test["top5"],
            "test_images": test["images"],
            "val_top1": val["top1"],
            "val_top1_before_bn_postprocess": last_val_acc if cfg.bn_postprocess else None,
            "bn_postprocess": cfg.bn_postprocess,
            "flops": int(costs["flops"]),
            "params": int(costs["params"]),
            "params_total": int(costs["params_total"]),
            "seconds": round(window.train_seconds, 2),
            "images_per_s": round(step * cfg.batch_size / max(window.train_seconds, 1e-9), 1),
            "weights_sha256": state_dict_sha256(child.state_dict()),
        }
        _save_weights(out_dir / WEIGHTS_NAME, child, space=space, arch=arch)
        update_summary(run_dir, "retrain", summary)
    summary = runtime.broadcast_object(summary)
    runtime.barrier()
    return summary
