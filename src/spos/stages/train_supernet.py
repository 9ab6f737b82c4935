"""Stage 1: train the supernet with one uniformly sampled path per step (SPEC section 3).

Recipe: prepare data and space, build the supernet, resume from ``supernet.ckpt`` if present,
then for every step sample a path, take an SGD step on it alone, log, evaluate the fixed
panel now and then, and checkpoint atomically. Writes ``config.yaml``, the run's fixed facts
``space.json`` and ``cost_table.json`` (later stages read them), ``metrics.jsonl``,
``tensorboard/``, ``supernet.ckpt`` (plus ``supernet_step<N>.ckpt`` for the steps in
``supernet.keep_checkpoints``) and, at the end, the ``supernet`` section of ``summary.json``.

Resuming is exact on CPU: the checkpoint (:class:`spos.train.TrainState`) holds the model,
optimiser, sampler (RNG and coverage), data stream position, the CPU (and CUDA) RNG and fp16's
gradient scaler, and
per-batch augmentation is seeded from the batch's position, so a run killed at any moment
ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spos.checkpoint import check_space, load_checkpoint, state_dict_sha256
from spos.config import RunConfig, config_to_dict
from spos.cost import CostModel
from spos.data.prepare import PreparedData, place_dataset, prepare_data, train_stream
from spos.dist import Runtime
from spos.errors import SposError
from spos.groundtruth import GroundTruth
from spos.rundir import RunDir, read_summary, start_run, update_summary
from spos.sampling import ChoiceSchedule, PathSampler, create_sampler
from spos.scoring import ArchScorer, build_scorer
from spos.space import SearchSpace, make_rng, seed_from
from spos.stages.common import ProgressFactory, build_space, null_progress, write_run_facts
from spos.stats import rank_correlations
from spos.supernet import Supernet, build_supernet
from spos.train import (
    MetricsLog,
    TrainingWindow,
    TrainState,
    check_global_batch,
    complexity_scaled_lr,
    graceful_stop,
    learning_rate,
    make_sgd,
    sgd_step,
)

__all__ = ["run", "build_panel"]

log = logging.getLogger(__name__)

#: Ground-truth ranking figures of the panel that go into the summary when measured.
_RANK_FIGURES = ("kendall_tau", "spearman_rho", "precision_at_5pct", "precision_at_10pct")


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


def _create_sampler(config: RunConfig, space: SearchSpace, costs: CostModel) -> PathSampler:
    """The configured path sampler, its FLOPs range defaulting to the space's."""
    cfg = config.supernet.sampler
    low, high = costs.bounds("flops")
    schedule = None
    if cfg.warmup_steps or cfg.widen_steps:
        schedule = ChoiceSchedule(
            space,
            prefix=cfg.warmup_prefix,
            anchor=cfg.warmup_option,
            warmup_steps=cfg.warmup_steps,
            widen_steps=cfg.widen_steps,
        )
    return create_sampler(
        cfg.name,
        space,
        make_rng(config.seed, "path-sampler"),
        flops=costs.flops,
        flops_range=(
            cfg.flops_min if cfg.flops_min is not None else low,
            cfg.flops_max if cfg.flops_max is not None else high,
        ),
        bins=cfg.flops_bins,
        max_tries=cfg.max_tries,
        distinct_networks=cfg.distinct_networks,
        schedule=schedule,
        uniform_share=cfg.uniform_share,
        gradnorm_decay=cfg.gradnorm_decay,
    )


def _along(model: Callable[..., torch.Tensor], arch: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The (possibly DDP-wrapped) supernet as a function of the inputs, along the path ``arch``."""
    return lambda inputs: model(inputs, arch)


def _check_same_path(runtime: Runtime, arch: Any, step: int) -> None:
    """Under torchrun every rank must train the same path (identically seeded samplers); a
    cheap check once per metrics line turns a silent divergence of the ranks into an error."""
    if runtime.distributed:
        keys = runtime.all_gather_objects(arch.key)
        if len(set(keys)) > 1:
            raise SposError(
                f"ranks sampled different paths at step {step} ({len(set(keys))} distinct); every "
                "rank must run the same config and seed (check that no rank has other overrides)"
            )


def _path_only(supernet: Supernet, arch: Any, *, grad_clip: float, measure: bool = False) -> torch.Tensor | None:
    """``sgd_step``'s ``before_step``: drop off-path gradients, clip; the pre-clip norm (when
    clipping or ``measure``) or None.

    Under fp16 it runs after the gradient scaler's ``unscale_``: it clips true gradients.

    Off-path candidates must get no update (no decay, no momentum): DDP may hand them zero
    gradients, so make sure they have none, as the official release does.
    """
    on_path = {id(p) for p in supernet.path_parameters(arch)}
    for parameter in supernet.parameters():
        if id(parameter) not in on_path:
            parameter.grad = None
    if grad_clip > 0:  # after DDP's all-reduce, so every rank clips alike
        return torch.nn.utils.clip_grad_norm_(
            [p for p in supernet.parameters() if p.grad is not None], grad_clip
        )
    if measure:
        return torch.nn.utils.get_total_norm([p.grad for p in supernet.parameters() if p.grad is not None])
    return None


@dataclasses.dataclass
class _Panel:
    """The fixed architectures scored now and then during training (main rank only): a random
    panel (mean and best accuracy) and, with ``ground_truth.path``, a ground-truth
    panel (rank correlations of the supernet's scores with the truth)."""

    archs: list
    rank_archs: list
    rank_truth: list[float]
    scorer: ArchScorer | None

    @classmethod
    def build(
        cls, config: RunConfig, space: SearchSpace, supernet: Supernet, data: PreparedData, runtime: Runtime
    ) -> _Panel:
        cfg = config.supernet
        archs = build_panel(space, seed=config.seed, size=cfg.panel.size)
        rank_archs: list = []
        rank_truth: list[float] = []
        if config.ground_truth.path:
            truth = GroundTruth.load(config.ground_truth.path, space, str(config.ground_truth.column))
            rows = truth.sample(cfg.panel.ground_truth_size, make_rng(config.seed, "rank-panel"))
            rank_archs = [truth.archs[i] for i in rows]
            rank_truth = [truth.values[i] for i in rows]
        scorer = None
        if (archs or rank_archs) and runtime.is_main:
            scorer = build_scorer(
                supernet,
                data,
                runtime,
                seed=config.seed,
                recalibrate_images=cfg.panel.recalibrate_images,
                val_images=cfg.panel.val_images,
                batch_size=max(256, cfg.batch_size),
                channels_last=config.runtime.channels_last,
                fold_batchnorm=config.search.fold_batchnorm,
            )
        return cls(archs, rank_archs, rank_truth, scorer)

    def evaluate(self, step: int) -> dict[str, Any]:
        """The panel's metrics record at ``step`` (empty off the main rank)."""
        if self.scorer is None:
            return {}
        record: dict[str, Any] = {"step": step}
        if self.archs:
            # Keyed by the display form: these scores go into summary.json as they always have.
            scores = {arch.short(): self.scorer.score(arch) for arch in self.archs}
            record.update(
                panel_mean_acc=sum(scores.values()) / len(scores),
                panel_best_acc=max(scores.values()),
                panel=scores,
            )
        if self.rank_archs:
            # How well the supernet ranks a fixed ground-truth panel right now.
            rank_scores = [self.scorer.score(arch) for arch in self.rank_archs]
            record.update(rank_correlations(self.rank_truth, rank_scores))
        return record


def run(
    config: RunConfig,
    run_dir: Path,
    *,
    runtime: Runtime,
    progress: ProgressFactory = null_progress,
) -> dict[str, Any]:
    """Train (or resume training) the supernet in ``run_dir``; return the summary."""
    cfg = config.supernet
    optim = cfg.optim
    run = RunDir(run_dir)
    data = prepare_data(config.data, seed=config.seed)
    data = dataclasses.replace(
        data, train=place_dataset(data.train, runtime), val=place_dataset(data.val, runtime)
    )
    space = build_space(config, data)
    # Check an existing checkpoint before writing anything, so a bad one costs nothing.
    payload = None
    if run.supernet_ckpt.exists():
        payload = load_checkpoint(run.supernet_ckpt, kind="supernet", map_location=runtime.device)
        check_space(payload, space, path=run.supernet_ckpt)
        check_global_batch(payload, cfg.batch_size, section="supernet", path=run.supernet_ckpt)
    start_run(config, run, runtime)
    costs = CostModel.from_space(space)
    write_run_facts(run, space, costs, runtime)
    torch.manual_seed(seed_from(config.seed, "supernet-init"))
    supernet = build_supernet(space).to(runtime.device)
    if config.runtime.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    model = runtime.wrap(supernet)
    state = TrainState(
        supernet,
        make_sgd(supernet, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov, weight_decay=optim.weight_decay),
        train_stream(config.data, data, runtime, batch_size=cfg.batch_size, seed=seed_from(config.seed, "supernet-data")),
        sampler=_create_sampler(config, space, costs),
        device=runtime.device,
        scaler=runtime.grad_scaler(config.runtime.amp),
    )
    if payload is not None:
        state.load(payload)
        log.info(
            "resuming supernet training from step %d (checkpoint of %s rank(s), now %d)",
            state.step,
            payload["state"].get("world_size", "?"),
            runtime.world_size,
        )
        finished = read_summary(run).get("supernet")
        if state.step >= cfg.steps and finished is not None:
            return finished

    panel = _Panel.build(config, space, supernet, data, runtime)
    metrics = MetricsLog(run.metrics, tensorboard_dir=run.tensorboard, enabled=runtime.is_main, resume_step=state.step)
    window = TrainingWindow(state.train_seconds)

    saved_at: int | None = state.step if payload is not None else None
    hint = "lower supernet.optim.lr or set supernet.optim.grad_clip, then rerun to resume"

    def save(path: Path) -> None:
        nonlocal saved_at
        window.check_finite(stage="supernet", step=state.step, last_checkpoint=saved_at, hint=hint)
        state.train_seconds = window.train_seconds
        if path == run.supernet_ckpt:
            saved_at = state.step
        if runtime.is_main:  # global quantities only: any world size can resume this checkpoint
            extra = {"global_batch": cfg.batch_size, "world_size": runtime.world_size}
            state.save(path, kind="supernet", space=space, config=config_to_dict(config), extra=extra)

    def evaluate_panel(step: int) -> dict[str, Any]:
        record = panel.evaluate(step)
        if record:
            metrics.write(record)
        return record

    bar = progress(total=cfg.steps, initial=state.step, description="supernet") if runtime.is_main else null_progress(total=cfg.steps)
    autocast = runtime.autocast(config.runtime.amp)
    last_panel: dict[str, Any] = {}
    keep = set(cfg.keep_checkpoints)
    low, high = costs.bounds("flops")

    def complexity(arch: Any) -> float:
        """The path's FLOPs between the space's smallest (0) and largest (1)."""
        return (costs.flops(arch) - low) / (high - low) if high > low else 1.0

    model.train()
    with graceful_stop() as stop:
        while state.step < cfg.steps:
            lr = learning_rate(
                state.step, total=cfg.total_schedule_steps, peak=optim.lr, warmup=optim.warmup_steps, schedule=optim.schedule
            )
            arch = state.sampler.sample()
            if state.step >= optim.warmup_steps:  # CaLR (off at power 1)
                lr = complexity_scaled_lr(
                    lr, peak=optim.lr, power=cfg.complexity_lr_power, complexity=complexity(arch)
                )
            images, labels = next(state.stream)
            labels = labels.to(runtime.device)
            result = sgd_step(
                _along(model, arch),
                data.to_float(images, runtime, channels_last=config.runtime.channels_last),
                labels,
                state.optimizer,
                lr=lr,
                label_smoothing=optim.label_smoothing,
                autocast=autocast,
                before_step=functools.partial(
                    _path_only, supernet, arch, grad_clip=optim.grad_clip, measure=state.sampler.uses_feedback
                ),
                scaler=state.scaler,
            )
            if state.sampler.uses_feedback:  # one host sync per step, only for such samplers
                state.sampler.observe(arch, float(result.grad_norm))
            state.step += 1
            step = state.step

            window.add(result.loss, result.logits, labels, grad_norm=result.grad_norm, skipped=result.skipped)
            if step % config.runtime.log_every == 0 or step == cfg.steps:
                window.check_finite(stage="supernet", step=step, last_checkpoint=saved_at, hint=hint)
                _check_same_path(runtime, arch, step)
                record = {**window.flush(step=step, lr=lr, runtime=runtime), **state.sampler.stats()}
                metrics.write(record)
                bar.update(0, loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.0f}")
            bar.update(1)
            if cfg.panel.eval_every and step % cfg.panel.eval_every == 0 and step < cfg.steps:
                last_panel = evaluate_panel(step) or last_panel
                window.restart_clock()  # panel time is not training time
            if step in keep:  # before the rolling one: a kill in between redoes this step
                save(run.supernet_step_ckpt(step))
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or step in keep:
                save(run.supernet_ckpt)
            if stop.requested:  # SIGINT/SIGTERM: keep this step's state, then stop
                save(run.supernet_ckpt)
                raise KeyboardInterrupt
    bar.close()

    last_panel = evaluate_panel(state.step) or last_panel
    metrics.close()
    summary = _summary(config, space, state, supernet, last_panel, window.train_seconds, runtime)
    if runtime.is_main:
        update_summary(run, "supernet", summary)
    runtime.barrier()
    return summary


def _summary(
    config: RunConfig,
    space: SearchSpace,
    state: TrainState,
    supernet: Supernet,
    last_panel: dict[str, Any],
    train_seconds: float,
    runtime: Runtime,
) -> dict[str, Any]:
    """The ``supernet`` section of ``summary.json`` (a collective: every rank calls it)."""
    cfg = config.supernet
    return {
        "space": space.name,
        "space_version": space.version,
        "steps": state.step,
        "images_seen": state.step * cfg.batch_size,
        "train_seconds": round(train_seconds, 2),
        "images_per_s": round(state.step * cfg.batch_size / max(train_seconds, 1e-9), 1),
        "panel_mean_acc": last_panel.get("panel_mean_acc"),
        "panel_best_acc": last_panel.get("panel_best_acc"),
        "panel": last_panel.get("panel"),
        **{key: last_panel[key] for key in _RANK_FIGURES if key in last_panel},
        "coverage": state.sampler.coverage,
        "sampler": cfg.sampler.name,
        "weights_sha256": state_dict_sha256(supernet.state_dict()),
        "world_size": runtime.world_size,
        # DDP keeps parameters equal on every rank; a gathered hash per rank proves it.
        "parameters_sha256_per_rank": runtime.all_gather_objects(
            state_dict_sha256(dict(supernet.named_parameters()))
        ),
    }
