"""Stage 1: train the supernet with one uniformly sampled path per step (SPEC section 3).

Recipe: prepare data and space, build the supernet, resume from ``supernet.ckpt`` if present,
then for every step sample a path, take an SGD step on it alone, log, evaluate the fixed
panel now and then, and checkpoint atomically. Writes ``config.yaml``, ``metrics.jsonl``,
``tensorboard/``, ``supernet.ckpt`` (plus ``supernet_step<N>.ckpt`` for the steps in
``supernet.keep_checkpoints``) and, at the end, its ``summary.json`` section.

Resuming is exact on CPU: the checkpoint holds the model, optimiser, sampler (RNG and
coverage), data stream position and torch RNG, and per-batch augmentation is seeded from the
batch's position, so a run killed at any moment ends bit-identical to an uninterrupted one. The stage's figures go to the ``supernet``
section of ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from spos import data as spos_data
from spos.checkpoint import check_space, load_checkpoint, save_checkpoint, state_dict_sha256
from spos.config import RunConfig, config_to_dict
from spos.cost import CostModel
from spos.data.prepare import PreparedData, eval_batches, place_dataset, prepare_data, train_stream
from spos.dist import Runtime
from spos.errors import CheckpointError
from spos.groundtruth import GroundTruth
from spos.sampling import ChoiceSchedule, create_sampler
from spos.scoring import ArchScorer
from spos.space import SearchSpace, make_rng
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
from spos.stats import rank_correlations
from spos.supernet import Supernet, build_supernet

__all__ = ["run", "CHECKPOINT_NAME", "ScoringSession", "build_panel", "build_scorer", "open_for_scoring"]

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "supernet.ckpt"


def _check_global_batch(payload: dict[str, Any], batch_size: int, *, path: Path) -> None:
    """Refuse to resume with another global batch (the data position would mean other images)."""
    stored = payload["state"].get("global_batch", payload["config"]["supernet"]["batch_size"])
    if int(stored) != batch_size:
        raise CheckpointError(
            f"{path} was trained with global batch supernet.batch_size={stored}, but the config "
            f"asks for {batch_size}; resume with batch_size={stored} (any number of ranks that "
            "divides it), or use a new run directory"
        )


def build_panel(space: SearchSpace, *, seed: int, size: int) -> list:
    """The fixed panel of architectures tracked during training (distinct, seeded)."""
    rng = make_rng(seed, "panel")
    panel, keys = [], set()
    for _ in range(size * 20):
        if len(panel) == size:
            break
        arch = space.sample(rng)
        if arch.key not in keys:
            keys.add(arch.key)
            panel.append(arch)
    return panel


class _NormalisedBatches(Sequence):
    """uint8 batches held on the host, normalised and moved to the device when read."""

    def __init__(
        self,
        batches: list[tuple[torch.Tensor, torch.Tensor]],
        data: PreparedData,
        runtime: Runtime,
        *,
        channels_last: bool,
    ) -> None:
        pin = runtime.device.type == "cuda"
        self.batches = [(i.pin_memory() if pin else i, labels) for i, labels in batches]
        self.data, self.runtime, self.channels_last = data, runtime, channels_last

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore
        images, labels = self.batches[index]
        inputs = self.data.to_float(images, self.runtime, channels_last=self.channels_last)
        return inputs, labels.to(self.runtime.device)


def build_scorer(
    supernet: Supernet,
    data: PreparedData,
    runtime: Runtime,
    *,
    seed: int,
    recalibrate_images: int,
    val_images: int | None,
    batch_size: int,
    channels_last: bool,
    metric: str = "accuracy",
) -> ArchScorer:
    """A scorer with fixed recalibration images (seeded from train) and validation images."""
    generator = torch.Generator().manual_seed(seed_from(seed, "recalibration-images"))
    count = min(recalibrate_images, len(data.train))
    recal = data.train.subset(torch.randperm(len(data.train), generator=generator)[:count])
    val = data.val if val_images is None else data.val.subset(torch.arange(min(val_images, len(data.val))))

    def prepared(dataset: Any) -> Sequence[tuple[torch.Tensor, torch.Tensor]]:
        if not isinstance(dataset, spos_data.ArrayDataset):
            # Read from disk: decode once, keep uint8 on the host (4x smaller than float; ImageNet's
            # 20k + 50k images take 10.5 GB), normalise on the device per use.
            return _NormalisedBatches(
                list(eval_batches(dataset, data, batch_size=batch_size)),
                data,
                runtime,
                channels_last=channels_last,
            )
        return [
            (data.to_float(images, runtime, channels_last=channels_last), labels.to(runtime.device))
            for images, labels in spos_data.iterate_batches(dataset, batch_size=batch_size)
        ]

    return ArchScorer(
        supernet, recalibrate_batches=prepared(recal), val_batches=prepared(val), metric=metric
    )


@dataclasses.dataclass
class ScoringSession:
    """A trained supernet made ready to score paths as search does (see :func:`open_for_scoring`).

    ``scorer`` uses the ``search`` section's recalibration/validation images and score metric;
    :meth:`scorer_with` builds another one on the same supernet and data with other budgets
    (the final re-scoring of search's top candidates).
    """

    space: SearchSpace
    supernet: Supernet
    fingerprint: str
    config: RunConfig
    data: PreparedData
    runtime: Runtime

    @functools.cached_property
    def scorer(self) -> ArchScorer:
        cfg = self.config.search
        return self.scorer_with(recalibrate_images=cfg.recalibrate_images, val_images=cfg.val_images)

    def scorer_with(self, *, recalibrate_images: int, val_images: int | None) -> ArchScorer:
        return build_scorer(
            self.supernet,
            self.data,
            self.runtime,
            seed=self.config.seed,
            recalibrate_images=recalibrate_images,
            val_images=val_images,
            batch_size=self.config.search.batch_size,
            channels_last=self.config.supernet.channels_last,
            metric=self.config.search.score,
        )


def open_for_scoring(
    config: RunConfig, payload: dict[str, Any], checkpoint_path: Path, runtime: Runtime
) -> ScoringSession:
    """A trained supernet checkpoint made ready to score paths as search does.

    The space is checked against the checkpoint, the supernet is in eval mode on the device,
    ``fingerprint`` is the hash of its weights, and ``scorer`` uses the ``search`` section's
    recalibration/validation images and score metric.
    """
    data = prepare_data(config.data, seed=config.seed)
    space = check_space(payload, build_space(config, data), path=checkpoint_path)
    supernet = build_supernet(space)
    supernet.load_state_dict(payload["state"]["model"])
    fingerprint = state_dict_sha256(supernet.state_dict())
    supernet = supernet.to(runtime.device)
    if config.supernet.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    supernet.eval()
    return ScoringSession(space, supernet, fingerprint, config, data, runtime)


def run(
    config: RunConfig,
    run_dir: Path,
    *,
    runtime: Runtime,
    progress: ProgressFactory = null_progress,
) -> dict[str, Any]:
    """Train (or resume training) the supernet in ``run_dir``; return the summary."""
    cfg = config.supernet
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    data = prepare_data(config.data, seed=config.seed)
    data = dataclasses.replace(
        data, train=place_dataset(data.train, runtime), val=place_dataset(data.val, runtime)
    )
    space = build_space(config, data)
    # Check an existing checkpoint before writing anything, so a bad one costs nothing.
    payload = None
    if checkpoint_path.exists():
        payload = load_checkpoint(checkpoint_path, kind="supernet", map_location=runtime.device)
        check_space(payload, space, path=checkpoint_path)
        _check_global_batch(payload, cfg.batch_size, path=checkpoint_path)
    start_run(config, run_dir, runtime)
    torch.manual_seed(seed_from(config.seed, "supernet-init"))
    supernet = build_supernet(space).to(runtime.device)
    if cfg.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    model = runtime.wrap(supernet)
    optimizer = make_sgd(
        supernet, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )
    costs = CostModel.from_space(space)
    low, high = costs.bounds("flops")
    flops_range = (
        cfg.flops_min if cfg.flops_min is not None else low,
        cfg.flops_max if cfg.flops_max is not None else high,
    )
    sampler = create_sampler(
        cfg.sampler,
        space,
        make_rng(config.seed, "path-sampler"),
        flops=costs.flops,
        flops_range=flops_range,
        bins=cfg.flops_bins,
        max_tries=cfg.sampler_max_tries,
        distinct_networks=cfg.distinct_networks,
        schedule=(
            ChoiceSchedule(
                space,
                prefix=cfg.choice_warmup_prefix,
                anchor=cfg.choice_warmup_option,
                warmup_steps=cfg.choice_warmup_steps,
                widen_steps=cfg.choice_widen_steps,
            )
            if cfg.choice_warmup_steps or cfg.choice_widen_steps
            else None
        ),
    )
    stream = train_stream(
        config.data,
        data,
        runtime,
        batch_size=cfg.batch_size,
        seed=seed_from(config.seed, "supernet-data"),
    )

    step, train_seconds = 0, 0.0
    if payload is not None:
        state = payload["state"]
        supernet.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        stream.load_state_dict(state["stream"])
        torch.set_rng_state(state["torch_rng"].cpu())  # CPU RNG state, also on CUDA runs
        step, train_seconds = int(payload["step"]), float(state["train_seconds"])
        log.info(
            "resuming supernet training from step %d (checkpoint of %s rank(s), now %d)",
            step,
            state.get("world_size", "?"),
            runtime.world_size,
        )
        finished = read_summary(run_dir).get("supernet")
        if step >= cfg.steps and finished is not None:
            return finished

    panel = build_panel(space, seed=config.seed, size=cfg.panel_size)
    rank_panel: list = []
    rank_truth: list[float] = []
    if cfg.rank_ground_truth:
        truth = GroundTruth.load(cfg.rank_ground_truth, space, str(cfg.rank_column))
        rows = truth.sample(cfg.rank_panel_size, make_rng(config.seed, "rank-panel"))
        rank_panel = [truth.archs[i] for i in rows]
        rank_truth = [truth.values[i] for i in rows]
    scorer = (
        build_scorer(
            supernet,
            data,
            runtime,
            seed=config.seed,
            recalibrate_images=cfg.panel_recalibrate_images,
            val_images=cfg.panel_val_images,
            batch_size=max(256, cfg.batch_size),
            channels_last=cfg.channels_last,
        )
        if (panel or rank_panel) and runtime.is_main
        else None
    )

    def save(at_step: int, path: Path = checkpoint_path) -> None:
        if not runtime.is_main:
            return
        save_checkpoint(
            path,
            kind="supernet",
            space=space,
            config=config_to_dict(config),
            step=at_step,
            state={
                "model": supernet.state_dict(),
                "optimizer": optimizer.state_dict(),
                "sampler": sampler.state_dict(),
                "stream": stream.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "train_seconds": window.train_seconds,
                # Global quantities only: any world size can resume this checkpoint.
                "global_batch": cfg.batch_size,
                "world_size": runtime.world_size,
            },
        )

    def evaluate_panel(at_step: int) -> dict[str, Any]:
        if scorer is None:
            return {}
        record: dict[str, Any] = {"step": at_step}
        if panel:
            scores = {arch.short(): scorer.score(arch) for arch in panel}
            record.update(
                panel_mean_acc=sum(scores.values()) / len(scores),
                panel_best_acc=max(scores.values()),
                panel=scores,
            )
        if rank_panel:
            # How well the supernet ranks a fixed ground-truth panel right now.
            rank_scores = [scorer.score(arch) for arch in rank_panel]
            record.update(rank_correlations(rank_truth, rank_scores))
        metrics.write(record)
        return record

    metrics = MetricsLog(run_dir, enabled=runtime.is_main, resume_step=step)
    bar = progress(total=cfg.steps, initial=step, description="supernet") if runtime.is_main else null_progress(total=cfg.steps)
    window = TrainingWindow(train_seconds)
    autocast = runtime.autocast(cfg.amp)
    last_panel: dict[str, Any] = {}
    keep = set(cfg.keep_checkpoints)
    model.train()
    while step < cfg.steps:
        lr = learning_rate(
            step, total=cfg.schedule_steps or cfg.steps, peak=cfg.lr, warmup=cfg.warmup_steps, schedule=cfg.schedule
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        arch = sampler.sample()
        images, labels = next(stream)
        inputs = data.to_float(images, runtime, channels_last=cfg.channels_last)
        labels = labels.to(runtime.device)

        with autocast:
            logits = model(inputs, arch)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Off-path candidates must get no update (no decay, no momentum): DDP may hand them
        # zero gradients, so make sure they have none, as the official release does.
        on_path = {id(p) for p in supernet.path_parameters(arch)}
        for parameter in supernet.parameters():
            if id(parameter) not in on_path:
                parameter.grad = None
        grad_norm = None
        if cfg.grad_clip > 0:  # after DDP's all-reduce, so every rank clips alike
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in supernet.parameters() if p.grad is not None], cfg.grad_clip
            )
        optimizer.step()
        step += 1

        window.add(loss, logits, labels, grad_norm=grad_norm)
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {**window.flush(step=step, lr=lr, runtime=runtime), **sampler.stats()}
            metrics.write(record)
            bar.update(0, loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.0f}")
        bar.update(1)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            last_panel = evaluate_panel(step) or last_panel
            window.restart_clock()  # panel time is not training time
        if step in keep:  # before the rolling one: a kill in between redoes this step
            save(step, run_dir / f"supernet_step{step}.ckpt")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or step in keep:
            save(step)
    bar.close()

    last_panel = evaluate_panel(step) or last_panel
    metrics.close()
    summary = {
        "space": space.name,
        "space_version": space.version,
        "steps": step,
        "images_seen": step * cfg.batch_size,
        "train_seconds": round(window.train_seconds, 2),
        "images_per_s": round(step * cfg.batch_size / max(window.train_seconds, 1e-9), 1),
        "panel_mean_acc": last_panel.get("panel_mean_acc"),
        "panel_best_acc": last_panel.get("panel_best_acc"),
        "panel": last_panel.get("panel"),
        **{
            key: last_panel[key]
            for key in ("kendall_tau", "spearman_rho", "precision_at_5pct", "precision_at_10pct")
            if key in last_panel
        },
        "coverage": sampler.coverage,
        "sampler": cfg.sampler,
        "weights_sha256": state_dict_sha256(supernet.state_dict()),
        "world_size": runtime.world_size,
        # DDP keeps parameters equal on every rank; a gathered hash per rank proves it.
        "parameters_sha256_per_rank": runtime.all_gather_objects(
            state_dict_sha256(dict(supernet.named_parameters()))
        ),
    }
    if runtime.is_main:
        update_summary(run_dir, "supernet", summary)
    runtime.barrier()
    return summary
