"""Typed configuration: dataclasses, YAML files and dotted ``key=value`` overrides.

One :class:`RunConfig` describes a whole run (space, data, supernet training, search, retrain).
YAML supplies values, the command line overrides them (``supernet.lr=0.1``), and the resolved
config is saved as ``config.yaml`` in the run directory so every stage can rebuild the run
from files alone (DESIGN: data flows one way). Unknown keys, wrong types and out-of-range
values raise :class:`~spos.errors.ConfigError` naming the dotted field and the fix.

Each field is documented by the string right below it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from spos.errors import ConfigError

__all__ = [
    "SpaceConfig",
    "DataConfig",
    "OptimConfig",
    "SamplerConfig",
    "PanelConfig",
    "SupernetConfig",
    "GroundTruthConfig",
    "RuntimeConfig",
    "ConstraintConfig",
    "EstimatorConfig",
    "SearchConfig",
    "RetrainConfig",
    "RunConfig",
    "load_config",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "config_text",
    "save_config",
]


@dataclass
class SpaceConfig:
    name: str = "shufflenet_cifar"
    """Registered search space (``spos spaces`` lists them)."""
    layout: dict[str, Any] = field(default_factory=dict)
    """Overrides of the space's layout keys; in_channels, num_classes and input_size are filled
    from the dataset unless given here."""
    plugins: list[str] = field(default_factory=list)
    """Python files or modules imported first, e.g. one that registers a user-defined space
    and its ops (relative paths are relative to the working directory)."""


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    """Which reader to use: a name registered in :mod:`spos.data.readers`."""
    root: str | None = None
    """Dataset location; None means the reader's default (Fashion-MNIST: Debian's path)."""
    cache_dir: str = "~/.cache/spos"
    """Where decoded small datasets are cached as .npy."""
    val_size: int = 10000
    """Images held out from the training set as the fixed validation split (search fitness)."""
    train_limit: int | None = None
    """Use only the first N shuffled training images (tiny runs); None uses all."""
    test_limit: int | None = None
    """Use only the first N test images (tiny runs); None uses all."""
    pad_to: int | None = None
    """Zero-pad images to this size (e.g. 28 -> 32); None keeps the native size."""
    crop_padding: int = 4
    """Padding of the random-crop augmentation; 0 disables cropping."""
    flip: bool = True
    """Random horizontal flips during training."""
    synthetic_size: int = 2048
    """Training images of the synthetic dataset (dataset=synthetic only)."""
    synthetic_image_size: int = 16
    """Side of the synthetic images (dataset=synthetic only)."""
    lazy: bool = False
    """Stream an image_folder tree from disk instead of decoding it into memory: each batch is
    decoded on the fly (thread pool) and cropped to input_size, images may differ in size. Needed
    for ImageNet (~190 GB decoded). Training: RandomResizedCrop + flip (+ color_jitter, lighting;
    crop_padding and pad_to do not apply); evaluation: shorter side resized to input_size / 0.875
    (256 for 224), then centre crop. Normalisation statistics come from 1024 training images."""
    input_size: int = 224
    """Side of the crops a lazy dataset yields (data.lazy only)."""
    crop_min_scale: float = 0.08
    """Smallest area fraction of the random-resized crop (data.lazy only; official: 0.08)."""
    color_jitter: float = 0.0
    """Brightness/contrast/saturation jitter strength (data.lazy only; official ImageNet: 0.4)."""
    lighting: float = 0.0
    """Std of AlexNet PCA lighting noise (data.lazy only; 0.1 in many ImageNet recipes)."""
    num_workers: int | None = None
    """Image decoding threads per process (data.lazy only); null: CPU count, at most 8, or 1 in
    each of data.worker_processes."""
    worker_processes: int = 0
    """DataLoader worker processes that decode a lazy dataset's training batches (data.lazy
    only), off the training process's GIL and, on CUDA, into pinned memory. 0 (the default):
    decode in the training process (num_workers threads), the next batches prepared by one
    background thread; right for CPU-only training, where decoding and training share the
    same cores anyway. On a GPU use several per GPU (enough
    that their combined images/s exceeds the GPU's; benchmarks/lazy_decode.py measures the
    rate per worker). A batch is a function of (seed, epoch, position) either way, so results,
    resuming and world-size invariance are the same."""
    prefetch_batches: int = 2
    """Training batches prepared ahead of the one being trained on (data.lazy only): queued on
    the background thread, or kept ready by each worker process (DataLoader prefetch_factor)."""
    decode_backend: Literal["cpu", "nvjpeg"] = "cpu"
    """Where lazy training JPEGs are decoded: cpu (Pillow) or nvjpeg (batched on the GPU by
    torchvision.io.decode_jpeg; needs a CUDA build of torchvision, which spos does not depend on,
    and data.worker_processes=0). The same seeded crop boxes, flips and colour draws; the resize
    is torch's antialiased bilinear, so pixels differ slightly from cpu. Evaluation batches are
    decoded on the CPU either way."""

    def validate(self, prefix: str) -> None:
        # The registry of dataset names; torch-free, but imported here as it pulls in numpy.
        from spos.data.readers import DATASET_NAMES

        _check(
            self.dataset in DATASET_NAMES,
            f"{prefix}.dataset",
            f"must be one of {list(DATASET_NAMES)}, got {self.dataset!r}",
        )
        _check(self.val_size >= 1, f"{prefix}.val_size", "must be at least 1")
        if self.lazy:
            _check(
                self.dataset == "image_folder",
                f"{prefix}.lazy",
                f"needs {prefix}.dataset=image_folder (got {self.dataset!r}); the other "
                "datasets are small and always decoded into memory",
            )
            _check(self.pad_to is None, f"{prefix}.pad_to", "must be null with data.lazy")
        _check(self.worker_processes >= 0, f"{prefix}.worker_processes", "must be >= 0")
        _check(
            self.lazy or self.worker_processes == 0,
            f"{prefix}.worker_processes",
            "decodes lazily read images (data.lazy=true); in-memory datasets are indexed in "
            "place and need none: set it to 0",
        )
        _check(self.prefetch_batches >= 1, f"{prefix}.prefetch_batches", "must be >= 1")
        _check(
            self.decode_backend == "cpu" or self.lazy,
            f"{prefix}.decode_backend",
            "nvjpeg decodes lazily read JPEGs (data.lazy=true); in-memory datasets are decoded "
            "once: set it to cpu",
        )
        _check(
            self.decode_backend == "cpu" or self.worker_processes == 0,
            f"{prefix}.decode_backend",
            "nvjpeg decodes on the GPU in the training process; CUDA cannot be used in forked "
            "DataLoader workers: set data.worker_processes=0 (or decode_backend=cpu)",
        )
        _check(self.input_size >= 8, f"{prefix}.input_size", "must be at least 8")
        _check(0 < self.crop_min_scale <= 1, f"{prefix}.crop_min_scale", "must be in (0, 1]")
        _check(self.color_jitter >= 0, f"{prefix}.color_jitter", "must be >= 0")
        _check(self.lighting >= 0, f"{prefix}.lighting", "must be >= 0")
        _check(
            self.num_workers is None or self.num_workers >= 1,
            f"{prefix}.num_workers",
            "must be >= 1 or null",
        )
        _check(self.crop_padding >= 0, f"{prefix}.crop_padding", "must be >= 0")
        for name in ("train_limit", "test_limit", "pad_to"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"{prefix}.{name}", "must be >= 1 or null")


_FLOAT32_MAX = 3.4e38  # parameters are float32: a larger rate overflows in the update


@dataclass
class OptimConfig:
    """SGD with a warmed-up, decaying learning rate (shared by supernet training and retraining)."""

    lr: float = 0.2
    """Peak learning rate."""
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = False
    """Nesterov momentum."""
    weight_decay: float = 4e-5
    """Weight decay, applied to conv and linear weights only."""
    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy loss."""
    schedule: Literal["linear", "cosine"] = "linear"
    """Per-step decay to zero after warm-up (official: linear)."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to the peak learning rate."""
    grad_clip: float = 0.0
    """Clip each step's gradient norm to this value; 0 turns it off. In the supernet the norm is
    taken over the sampled path, whose activation scale can differ a lot between paths (a cell
    of skips and sums against one of convs); NAS-Bench-201's own weight-sharing baselines clip
    at 5. The pre-clip norm is logged as ``grad_norm``."""

    def validate(self, prefix: str, *, steps: int | None) -> None:
        """Check ranges; ``steps`` is the schedule's length when known (None: checked at run time)."""
        _check(0 < self.lr < _FLOAT32_MAX, f"{prefix}.lr", "must be positive and within float32 range")
        _check(0 <= self.momentum < 1, f"{prefix}.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, f"{prefix}.weight_decay", "must be >= 0")
        _check(0 <= self.label_smoothing < 1, f"{prefix}.label_smoothing", "must be in [0, 1)")
        _check(self.warmup_steps >= 0, f"{prefix}.warmup_steps", "must be >= 0")
        if steps is not None:
            _check(
                self.warmup_steps < steps,
                f"{prefix}.warmup_steps",
                f"must be below the {steps} steps of the schedule",
            )
        _check(self.grad_clip >= 0, f"{prefix}.grad_clip", "must be >= 0 (0 turns clipping off)")


@dataclass
class SamplerConfig:
    """Which single path each supernet step trains (SPEC section 3)."""

    name: str = "uniform"
    """Path sampler (registered in :mod:`spos.sampling`): uniform (the paper's core method),
    constraint (uniform within FLOPs bins, the paper's ImageNet default), fair (strict
    fairness: each option of every choice once per window) or gradnorm (each choice's options
    drawn in proportion to the running gradient norm of the paths they were on, mixed with
    uniform by ``uniform_share``: PA&DA's path sampling)."""
    flops_min: float | None = None
    """Lower FLOPs bound of constraint sampling (multiply-adds); None: the space minimum."""
    flops_max: float | None = None
    """Upper FLOPs bound of constraint sampling; None: the space maximum."""
    flops_bins: int = 7
    """Number of equal FLOPs bins of constraint sampling (official: 7)."""
    max_tries: int = 100
    """Rejection-sampling tries per step before falling back to a uniform path."""
    distinct_networks: bool = False
    """De-isomorphic sampling (Ning et al., NeurIPS 2021): draw paths uniformly over distinct
    networks, the space's canonical forms (:meth:`spos.space.SearchSpace.canonical`), instead
    of over labelings, so the few networks that many labelings collapse to are not over-trained.
    Spaces without a canonical form sample as before. Works with uniform and constraint."""
    warmup_steps: int = 0
    """Steps during which choices labelled ``warmup_prefix*`` only take ``warmup_option``
    (channel search: every block at full width, so narrow paths do not derail early training);
    0 disables the warm-up. Under name=fair the restricted choices draw uniformly among their
    allowed options and the others stay strictly fair."""
    widen_steps: int = 0
    """Steps after the warm-up over which those choices' allowed options grow linearly to all
    of them, nearest to warmup_option first; 0 allows all right after the warm-up."""
    warmup_prefix: str = "width_"
    """Label prefix of the choices the warm-up restricts (``width_`` in channel spaces)."""
    warmup_option: float = 1.0
    """The option those choices take during the warm-up (1.0: full width)."""
    uniform_share: float = 0.5
    """name=gradnorm only: share of each choice's sampling probability spread uniformly over
    its options; the rest follows each option's running gradient norm (PA&DA, CVPR 2023)."""
    gradnorm_decay: float = 0.99
    """name=gradnorm only: decay of the running mean of the gradient norm of the paths each
    option was on (0.99 averages over about the last 100 times it was sampled)."""

    def validate(self, prefix: str) -> None:
        from spos.sampling import list_samplers  # torch-free; imported late to keep config light

        _check(self.name in list_samplers(), f"{prefix}.name", f"must be one of {list_samplers()}, got {_quote(self.name)}")
        _check(self.flops_bins >= 1, f"{prefix}.flops_bins", "must be at least 1")
        _check(self.max_tries >= 1, f"{prefix}.max_tries", "must be at least 1")
        _check(
            not (self.distinct_networks and self.name == "fair"),
            f"{prefix}.distinct_networks",
            "works with name=uniform or constraint (strict fairness over labelings has no "
            f"distinct-network form); set {prefix}.name=uniform or distinct_networks=false",
        )
        for name in ("warmup_steps", "widen_steps"):
            _check(getattr(self, name) >= 0, f"{prefix}.{name}", "must be >= 0")
        if self.flops_min is not None and self.flops_max is not None:
            _check(self.flops_min < self.flops_max, f"{prefix}.flops_min", "must be below flops_max")
        _check(0.0 <= self.uniform_share <= 1.0, f"{prefix}.uniform_share", "must be between 0 and 1")
        _check(0.0 <= self.gradnorm_decay < 1.0, f"{prefix}.gradnorm_decay", "must be in [0, 1)")


@dataclass
class PanelConfig:
    """Fixed architectures scored during supernet training, to watch it learn."""

    eval_every: int = 500
    """Evaluate the panel every N steps (0: only at the end)."""
    size: int = 5
    """Fixed architectures whose validation accuracy is tracked."""
    val_images: int = 2000
    """Validation images per panel evaluation."""
    recalibrate_images: int = 2000
    """Training images for BN recalibration before each panel evaluation."""
    ground_truth_size: int = 50
    """Architectures (one per isomorphism class) in the ground-truth panel, whose Kendall tau /
    Spearman rho against ``ground_truth`` is logged at every panel evaluation (only when
    ``ground_truth.path`` is set)."""

    def validate(self, prefix: str) -> None:
        for name in ("eval_every", "size"):
            _check(getattr(self, name) >= 0, f"{prefix}.{name}", "must be >= 0")
        for name in ("val_images", "recalibrate_images"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", "must be at least 1")
        _check(self.ground_truth_size >= 2, f"{prefix}.ground_truth_size", "must be at least 2")


@dataclass
class SupernetConfig:
    steps: int = 3000
    """Optimiser steps (one sampled path per step)."""
    batch_size: int = 128
    """Global batch size (split across ranks under torchrun)."""
    schedule_steps: int | None = None
    """Length of the learning-rate schedule; None: ``steps``. Set it above ``steps`` to stop
    training before the rate has decayed to 0 (``steps=15000 schedule_steps=20000`` trains
    exactly the 15k checkpoint of a 20k-step run, in 3/4 of the time)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and learning-rate schedule."""
    complexity_lr_power: float = 1.0
    """Complexity-aware learning rate (CaLR of DYNAS, CVPR 2025): a sampled path's rate is the
    schedule's, with its decay raised to the power ``1 + (p - 1) * (1 - c)``, where ``c`` in
    [0, 1] is the path's FLOPs between the space's smallest and largest and ``p`` this value.
    Above 1, small paths' rates decay faster than large ones' (the largest path keeps the
    schedule), countering the early advantage of small, parameter-free paths. 1.0: off."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Path sampling."""
    panel: PanelConfig = field(default_factory=PanelConfig)
    """Architectures evaluated during training."""
    checkpoint_every: int = 200
    """Write a resumable checkpoint every N steps (and at the end)."""
    keep_checkpoints: list[int] = field(default_factory=list)
    """Steps whose weights are also kept as ``supernet_step<N>.ckpt`` beside the rolling
    checkpoint, to score earlier checkpoints with ``spos rank --supernet`` / ``spos search
    --supernet``, or to average their scores with the final one's (``search.score_checkpoints``)."""

    @property
    def total_schedule_steps(self) -> int:
        """Steps of the learning-rate schedule (``schedule_steps`` or ``steps``)."""
        return self.schedule_steps if self.schedule_steps is not None else self.steps

    def validate(self, prefix: str) -> None:
        _check(self.steps >= 1, f"{prefix}.steps", "must be at least 1")
        _check(self.batch_size >= 1, f"{prefix}.batch_size", "must be at least 1")
        _check(
            self.schedule_steps is None or self.schedule_steps >= self.steps,
            f"{prefix}.schedule_steps",
            "must be >= steps (a schedule shorter than training would end at a rate of 0 and "
            "leave the remaining steps untrained); leave it empty to use steps",
        )
        self.optim.validate(f"{prefix}.optim", steps=self.total_schedule_steps)
        _check(1.0 <= self.complexity_lr_power <= 10.0, f"{prefix}.complexity_lr_power", "must be between 1 (off) and 10")
        self.sampler.validate(f"{prefix}.sampler")
        self.panel.validate(f"{prefix}.panel")
        _check(self.checkpoint_every >= 1, f"{prefix}.checkpoint_every", "must be at least 1")
        _check(
            all(1 <= step <= self.steps for step in self.keep_checkpoints),
            f"{prefix}.keep_checkpoints",
            f"must list steps between 1 and supernet.steps ({self.steps})",
        )


@dataclass
class GroundTruthConfig:
    """True accuracies of architectures (e.g. NAS-Bench-201), to measure how well scores rank."""

    path: str | None = None
    """CSV with one architecture per row (``spos rank`` documents the format); None: no ground
    truth. Used by the supernet's ground-truth panel and by ``spos rank``."""
    column: str | None = None
    """Column of the CSV holding the true accuracy (needed with ``path``)."""

    def validate(self, prefix: str) -> None:
        _check(
            self.path is None or bool(self.column),
            f"{prefix}.column",
            f"must name the accuracy column of {prefix}.path",
        )


@dataclass
class RuntimeConfig:
    """How training runs on the machine (shared by every training stage)."""

    channels_last: bool = True
    """Use the channels_last memory format (faster on CPU and tensor cores)."""
    amp: Literal["none", "bf16", "fp16"] = "none"
    """Mixed precision of training forwards on CUDA: bf16 autocast (Ampere or newer; refused on
    GPUs without bf16), or fp16 autocast with a gradient scaler whose state is checkpointed
    (any CUDA GPU). Ignored with one warning on CPU, which trains in float32."""
    log_every: int = 20
    """Write a metrics line every N steps."""
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend under torchrun; auto: nccl on CUDA, gloo on CPU."""
    dist_timeout_s: float = 1800.0
    """Seconds a collective may wait for the other ranks before the job fails."""
    deterministic: bool = False
    """Deterministic CUDA kernels: cudnn.benchmark off, cudnn.deterministic on, TF32 off
    (slower; on CPU it changes nothing). Recorded with the run's config."""

    def validate(self, prefix: str) -> None:
        _check(self.log_every >= 1, f"{prefix}.log_every", "must be at least 1")
        _check(self.dist_timeout_s > 0, f"{prefix}.dist_timeout_s", "must be positive")


@dataclass
class ConstraintConfig:
    metric: str = "flops"
    """Cost metric: flops, params, params_total, latency (needs search.latency_table), bitops."""
    min: float | None = None
    """Smallest allowed value (inclusive); None: no lower bound."""
    max: float | None = None
    """Largest allowed value (inclusive); None: no upper bound."""


#: Cost metrics a run's tables can provide (``latency`` needs ``search.latency_table``).
COST_SIGNALS = ("flops", "params", "params_total", "bitops", "size_bits", "latency")


@dataclass
class EstimatorConfig:
    """How search scores a candidate (SPEC section 4, "Estimators").

    The default, ``weights: {supernet: 1.0}``, is the paper's method: a candidate's fitness is
    its supernet score (validation accuracy with inherited weights after BN recalibration).
    Any other weights combine signals by rank aggregation (:class:`spos.estimator.
    PercentileEstimator`): each weighted signal becomes a percentile in a fixed, seeded
    reference pool of ``pool_size`` random feasible architectures, and the fitness is the
    weighted mean percentile (0-100)."""

    weights: dict[str, float] = field(default_factory=lambda: {"supernet": 1.0})
    """``{signal: weight}``. Signals: ``supernet``, a zero-cost proxy (synflow, naswot,
    jacob_cov, grad_norm, snip), or a cost metric (flops, params, ...). A negative weight means
    lower is better (e.g. ``flops: -0.5``); a weight of 0 records the signal per candidate in
    history.jsonl without using it."""
    pool_size: int = 256
    """Random feasible architectures in the reference pool (scored once, saved in the run
    directory as estimator_pool.json); not used by the paper's pure supernet score."""
    proxy_batch: int = 64
    """Training images (a seeded draw) that zero-cost proxies are computed on, here and in
    ``spos rank --proxies``."""

    @property
    def is_paper(self) -> bool:
        """True for the paper's method: the supernet score alone is the fitness."""
        return set(self.weights) == {"supernet"} and self.weights["supernet"] > 0

    def validate(self, prefix: str) -> None:
        _check(bool(self.weights), f"{prefix}.weights", "must name at least one signal, e.g. {supernet: 1.0}")
        _check(
            any(weight != 0 for weight in self.weights.values()),
            f"{prefix}.weights",
            "must give at least one signal a non-zero weight",
        )
        known = {"supernet", *COST_SIGNALS}
        unknown = [name for name in self.weights if name not in known]
        if unknown:
            # Imported only when needed: the proxy registry pulls in torch.
            from spos.proxies import list_proxies

            valid = ["supernet", *(p for p in list_proxies() if p not in known), *COST_SIGNALS]
            bad = [name for name in unknown if name not in valid]
            _check(not bad, f"{prefix}.weights", f"names unknown signal(s) {bad}; valid signals: {valid}")
        _check(self.pool_size >= 2, f"{prefix}.pool_size", "must be at least 2")
        _check(self.proxy_batch >= 2, f"{prefix}.proxy_batch", "must be at least 2 (naswot and jacob_cov compare images)")


@dataclass
class SearchConfig:
    strategy: Literal["evolution", "random"] = "evolution"
    """Evolutionary search (the paper) or random search with the same budget (baseline)."""
    population_size: int = 50
    """Candidates per generation."""
    generations: int = 20
    """Number of generations."""
    top_k: int = 10
    """Parents kept from everything evaluated so far."""
    mutation_count: int = 25
    """Mutated children per generation."""
    mutation_prob: float = 0.1
    """Per-gene resampling probability of a mutation."""
    crossover_count: int = 25
    """Uniform-crossover children per generation."""
    max_tries: int | None = None
    """Draws per proposal phase of a generation before it goes on with fewer candidates (or,
    in generation 0, stops: no feasible architecture found); None: 10 per wanted candidate.
    Raise it for constraints that few architectures meet (spaces of up to 200,000
    architectures are enumerated instead when draws fall short)."""
    recalibrate_images: int = 20000
    """Training images forwarded to recalibrate BN before scoring a candidate (paper: ~20k)."""
    val_images: int | None = None
    """Validation images used for fitness (None: the whole held-out split)."""
    batch_size: int = 500
    """Batch size for recalibration and evaluation."""
    fold_batchnorm: bool = True
    """Evaluate each recalibrated candidate as a standalone network with its BN folded into the
    convolutions: the same function up to float rounding (a near-tie logit may flip), 15-25%
    faster per eval forward on CPU. False: ``supernet(x, arch)`` in eval mode, exactly."""
    score: Literal["accuracy", "loss"] = "accuracy"
    """Fitness: validation top-1 (the paper) or minus the mean validation loss (finer-grained
    on small validation sets)."""
    constraints: list[ConstraintConfig] = field(default_factory=list)
    """Hard constraints; candidates violating one are rejected before evaluation."""
    latency_table: str | None = None
    """Latency lookup table from `spos latency-table` (needed for a latency constraint)."""
    random_baseline: bool = False
    """Also run random search with the same evaluation budget (written under baseline/)."""
    final_top_k: int = 0
    """Re-score the best ``final_top_k`` distinct candidates once the search ends, on the
    ``final_*`` images, and pick the winner by that score (0: off). Useful when candidates are
    screened on a small validation sample: the top of a noisy ranking is where the noise
    decides, and k more evaluations on a large sample settle it."""
    final_recalibrate_images: int | None = None
    """Recalibration images of the final re-scoring (None: ``recalibrate_images``)."""
    final_val_images: int | None = None
    """Validation images of the final re-scoring (None: the whole held-out split)."""
    final_finetune_steps: int = 0
    """Before re-scoring, fine-tune each finalist's path alone for this many SGD steps from its
    inherited supernet weights (restored afterwards): brief per-candidate training corrects
    some of weight sharing's misranking (Zhang et al. 2020). Costs ``final_top_k`` times this
    many training steps. 0: off; needs ``final_top_k``."""
    final_finetune_lr: float = 0.01
    """Peak learning rate of the finalists' fine-tuning (cosine to 0 over its steps); momentum,
    weight decay, label smoothing and batch size are the supernet's."""
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    """Fitness of a candidate: the paper's supernet score (default) or a rank aggregation of
    the supernet score, zero-cost proxies and cost metrics."""
    score_checkpoints: list[int] = field(default_factory=list)
    """Checkpoint score ensembling (Ning et al., NeurIPS 2021): steps of kept supernet
    checkpoints (``supernet_step<N>.ckpt`` beside the scored supernet, written for
    ``supernet.keep_checkpoints``) whose scores are averaged with the final supernet's. A
    candidate's supernet score becomes the mean of its scores on each checkpoint, every one
    after its own BN recalibration on the same images and evaluated on the same validation
    images; ``history.jsonl`` records each checkpoint's score (``supernet_at``). Costs K+1 times
    the scoring time (and K+1 supernets in device memory) for K steps. The final re-scoring
    (``final_top_k``) ensembles the same checkpoints; fine-tuning finalists
    (``final_finetune_steps``) does not combine with it. Empty (default): the paper's score
    of the final supernet alone. Also read by ``spos rank``."""

    def validate(self, prefix: str) -> None:
        for name in ("population_size", "generations", "top_k", "recalibrate_images", "batch_size"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", "must be at least 1")
        _check(self.final_top_k >= 0, f"{prefix}.final_top_k", "must be >= 0 (0 turns the final re-scoring off)")
        for name in ("final_recalibrate_images", "final_val_images", "val_images", "max_tries"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"{prefix}.{name}", "must be at least 1 (or null)")
        _check(self.top_k <= self.population_size, f"{prefix}.top_k", "must be <= population_size")
        _check(self.final_finetune_steps >= 0, f"{prefix}.final_finetune_steps", "must be >= 0 (0 turns fine-tuning off)")
        _check(
            self.final_finetune_steps == 0 or self.final_top_k > 0,
            f"{prefix}.final_finetune_steps",
            f"fine-tunes the finalists, so it needs {prefix}.final_top_k > 0",
        )
        _check(0 < self.final_finetune_lr <= 10, f"{prefix}.final_finetune_lr", "must be in (0, 10]")
        self.estimator.validate(f"{prefix}.estimator")
        _check(
            self.final_top_k == 0 or self.estimator.is_paper,
            f"{prefix}.final_top_k",
            "re-scores finalists by supernet accuracy alone, which would override "
            f"{prefix}.estimator's fitness; set it to 0 or use the default estimator",
        )
        _check(
            "latency" not in self.estimator.weights or self.latency_table is not None,
            f"{prefix}.estimator.weights",
            f"uses latency, which needs {prefix}.latency_table (from `spos latency-table`)",
        )
        _check(
            len(set(self.score_checkpoints)) == len(self.score_checkpoints),
            f"{prefix}.score_checkpoints",
            f"lists a step twice ({self.score_checkpoints}); list each kept checkpoint once",
        )
        _check(
            not self.score_checkpoints or self.final_finetune_steps == 0,
            f"{prefix}.score_checkpoints",
            f"does not combine with {prefix}.final_finetune_steps (fine-tuning one checkpoint's path "
            "would not re-score the ensemble); set one of them to its default",
        )
        _check(
            not self.score_checkpoints or "supernet" in self.estimator.weights,
            f"{prefix}.score_checkpoints",
            f"averages the supernet score, which {prefix}.estimator.weights does not use; add "
            "supernet to the weights or leave score_checkpoints empty",
        )
        _check(0 <= self.mutation_prob <= 1, f"{prefix}.mutation_prob", "must be in [0, 1]")
        for i, c in enumerate(self.constraints):
            _check(
                c.min is not None or c.max is not None,
                f"{prefix}.constraints[{i}]",
                "needs min or max",
            )


@dataclass
class RetrainConfig:
    epochs: int = 10
    """Training epochs of the standalone network from scratch."""
    batch_size: int = 128
    """Global batch size."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and learning-rate schedule."""
    init: Literal["scratch", "inherit"] = "scratch"
    """Train from scratch (paper) or fine-tune from the supernet's weights."""
    seed: int | None = None
    """Seed of the retraining's own draws (initialisation, batch order, augmentation, BN
    post-processing); None: the run seed. Repeats with other seeds keep the run seed's data
    subset and held-out split."""
    bn_postprocess: bool = True
    """After training, recompute BN statistics over one epoch (official release)."""
    checkpoint_every: int = 200
    """Resumable checkpoint every N steps."""

    def validate(self, prefix: str) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", "must be at least 1")
        # The step count depends on the dataset size: the stage checks the warm-up against it.
        self.optim.validate(f"{prefix}.optim", steps=None)


@dataclass
class RunConfig:
    seed: int = 0
    """Seed of every random draw (each purpose derives its own stream from it)."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'."""
    threads: int | None = None
    """Intra-op CPU threads; None: torch's default (number of cores)."""
    space: SpaceConfig = field(default_factory=SpaceConfig)
    """Search space."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset and augmentation."""
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    """Supernet training (SPEC section 3)."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """Architecture search (SPEC section 4)."""
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    """Retraining of the found architecture (SPEC section 5)."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Memory format, mixed precision and logging of every training stage."""
    ground_truth: GroundTruthConfig = field(default_factory=GroundTruthConfig)
    """True accuracies for ranking diagnostics (supernet panel and ``spos rank``)."""

    def validate(self) -> RunConfig:
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            "must be auto, cpu, cuda or cuda:N",
        )
        _check(self.threads is None or self.threads >= 1, "threads", "must be >= 1 or null")
        for name in ("data", "supernet", "search", "retrain", "runtime", "ground_truth"):
            getattr(self, name).validate(name)
        unkept = [step for step in self.search.score_checkpoints if step not in self.supernet.keep_checkpoints]
        _check(
            not unkept,
            "search.score_checkpoints",
            f"lists step(s) {unkept} that are not in supernet.keep_checkpoints "
            f"({self.supernet.keep_checkpoints}): only checkpoints kept by supernet training can be "
            "scored; list them in supernet.keep_checkpoints (and train the supernet with it), or "
            "remove them here",
        )
        _check(
            self.supernet.steps not in self.search.score_checkpoints,
            "search.score_checkpoints",
            f"lists the final step ({self.supernet.steps}), whose supernet is always scored; remove it",
        )
        return self


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config field {name!r} {message}")


def _moved(old_section: str, new_section: str, keys: str) -> dict[str, str]:
    return {f"{old_section}.{k.split(':')[0]}": f"{new_section}.{k.split(':')[-1]}" for k in keys.split()}


_OPTIM = "lr momentum nesterov weight_decay label_smoothing schedule warmup_steps grad_clip"
MOVED_KEYS: dict[str, str] = {
    # Before the config was nested (issue 16), these keys sat flat in their stage's section.
    **_moved("supernet", "supernet.optim", _OPTIM),
    **_moved("retrain", "retrain.optim", _OPTIM),
    "supernet.sampler": "supernet.sampler.name",  # a scalar there is the old form
    **_moved(
        "supernet",
        "supernet.sampler",
        "flops_min flops_max flops_bins sampler_max_tries:max_tries distinct_networks "
        "choice_warmup_steps:warmup_steps choice_widen_steps:widen_steps "
        "choice_warmup_prefix:warmup_prefix choice_warmup_option:warmup_option",
    ),
    **_moved(
        "supernet",
        "supernet.panel",
        "eval_every panel_size:size panel_val_images:val_images "
        "panel_recalibrate_images:recalibrate_images rank_panel_size:ground_truth_size",
    ),
    **_moved("supernet", "ground_truth", "rank_ground_truth:path rank_column:column"),
    **_moved("supernet", "runtime", "log_every channels_last amp"),
    "retrain.amp": "runtime.amp",
}
"""Old dotted key -> its place in the nested config, for one clear error on old files."""


def _moved_error(dotted: str) -> ConfigError:
    return ConfigError(
        f"config key {dotted!r} has moved to {MOVED_KEYS[dotted]!r}; update the config file or "
        "override (README, Configuration)"
    )


# --------------------------------------------------------------------------- conversion
def _quote(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about user input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that also refuses aliases (an alias bomb expands exponentially) and duplicate
    keys (a second ``supernet:`` would silently replace the first)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"YAML aliases (*name) are not allowed in configs (line {event.start_mark.line + 1}); "
                "write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise ConfigError(
                    f"config key {_quote(key)} (line {key_node.start_mark.line + 1}) must be text"
                ) from None
            if duplicate:
                raise ConfigError(
                    f"config key {_quote(key)} appears twice in one section (line "
                    f"{key_node.start_mark.line + 1}); keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _convert(value: Any, annotation: Any, name: str) -> Any:
    """Check ``value`` against ``annotation`` and convert it (ints to floats, dicts to dataclasses)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(value, option, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"config field {name!r} has the wrong type: got {_quote(value)}; " + errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config field {name!r} must be one of {list(args)}, got {_quote(value)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field {name!r} must be a list, got {_quote(value)}")
        return [_convert(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config field {name!r} must be a mapping, got {_quote(value)}")
        return {str(k): _convert(v, args[1], f"{name}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        return _from_dict(annotation, value, name)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config field {name!r} must be true or false, got {_quote(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config field {name!r} must be an integer, got {_quote(value)}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e8 (no dot, no sign) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field {name!r} must be a number, got {_quote(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"config field {name!r} must be a finite number, got {_quote(value)}")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config field {name!r} must be a string, got {_quote(value)}")
        return value
    raise ConfigError(f"config field {name!r}: unsupported type {_type_name(annotation)}")


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        if prefix in MOVED_KEYS:
            raise _moved_error(prefix)
        where = f"section {prefix!r}" if prefix else "the config file"
        raise ConfigError(f"{where} must be a mapping of keys to values, got {_quote(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        dotted = [f"{prefix}.{k}" if prefix else str(k) for k in unknown]
        for key in dotted:
            if key in MOVED_KEYS:
                raise _moved_error(key)
        raise ConfigError(
            f"unknown config key(s) {dotted}; valid keys here: {sorted(fields)}"
        )
    kwargs = {
        key: _convert(value, hints[key], f"{prefix}.{key}" if prefix else key)
        for key, value in data.items()
    }
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a plain dict."""
    return _from_dict(RunConfig, data, "").validate()


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML) to a config dict."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. supernet.lr=0.1)")
        key, text = item.split("=", 1)
        try:
            value = _yaml_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory; give a YAML file (see configs/)")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; see configs/ for examples")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
        try:
            data = _yaml_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {_quote(str(exc), 300)}") from None
        if data is None:
            raise ConfigError(
                f"config file {path} is empty; give at least one key, or leave out --config to "
                "use the defaults"
            )
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return config_from_dict(apply_overrides(data, overrides or []))


def config_text(config: RunConfig) -> str:
    """The resolved config as the YAML text :func:`save_config` writes."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from spos.io import atomic_write_text

    atomic_write_text(path, config_text(config))
