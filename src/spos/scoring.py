"""The evaluator: scoring an architecture with inherited supernet weights (SPEC section 4).

``score = top-1 on the fixed validation split after BN recalibration`` (or, with
``metric="loss"``, minus the mean validation cross-entropy: a finer-grained score when the
validation set is small, since accuracy moves in steps of one image). The recalibration and
validation batches are prepared once (decoded, uint8, on the device or in pinned host memory)
and normalised per batch as each candidate reads them (4x less memory than holding float32
images: issue 18 item 6), so each candidate costs its forwards and one cheap normalisation. The supernet's own
BN buffers are restored afterwards, so scoring never changes the supernet.

This module owns the whole evaluator: :class:`ArchScorer` (one architecture),
:func:`build_scorer` (its fixed batches), :class:`ScoringSession` (a trained supernet with the
``search`` section's budgets), :func:`score_sharded` (many architectures split across ranks),
:class:`CachedScorer` (each architecture scored once, in memory or in a resumable
JSON-lines file) and :class:`CheckpointEnsemble` (a score averaged over several checkpoints of
one supernet, ``search.score_checkpoints``: Ning et al., "Evaluating Efficient Performance
Estimators of Neural Architectures", NeurIPS 2021). Search, rank and the supernet stage's
panel all score through it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from spos import data as spos_data
from spos.arch import Arch
from spos.calibrate import recalibrate_bn
from spos.childnet import evaluation_network
from spos.data.prepare import train_stream
from spos.errors import SposError
from spos.io import read_jsonl
from spos.space import SearchSpace, seed_from
from spos.train import evaluate as evaluate_model
from spos.train import finetuned_path

if TYPE_CHECKING:
    from spos.config import RunConfig
    from spos.data.prepare import PreparedData
    from spos.dist import Runtime
    from spos.supernet import Supernet

__all__ = [
    "ArchScorer",
    "CachedScorer",
    "CheckpointEnsemble",
    "EnsembleMember",
    "ScoringSession",
    "build_scorer",
    "score_sharded",
]


def _as_sequence(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> Sequence[tuple[torch.Tensor, torch.Tensor]]:
    return batches if isinstance(batches, Sequence) else list(batches)


class ArchScorer:
    """Scores architectures of a supernet: recalibrate the path's BN, then validation top-1.

    Args:
        supernet: A :class:`spos.supernet.Supernet` (not DDP-wrapped).
        recalibrate_batches: Training batches (float images, labels on the device) for BN
            recalibration, the same ones for every candidate: a list, or a Sequence that
            normalises held uint8 images as each batch is read.
        val_batches: Prepared held-out validation batches; the same ones for every candidate.
        fold_batchnorm: Evaluate each recalibrated path as a standalone network with its BN
            folded into the convolutions (:func:`spos.childnet.evaluation_network`): the same
            function up to float rounding, 15-25% faster per eval forward. False runs
            ``supernet(x, arch)`` in eval mode, bit for bit the paper's computation.
    """

    def __init__(
        self,
        supernet: torch.nn.Module,
        *,
        recalibrate_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        val_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        metric: str = "accuracy",
        fold_batchnorm: bool = True,
    ) -> None:
        if metric not in ("accuracy", "loss"):
            raise ValueError(f"score metric must be 'accuracy' or 'loss', got {metric!r}")
        self.supernet = supernet
        # A Sequence is kept as is: it may produce its device batches on access (lazily read data).
        self.recalibrate_batches = _as_sequence(recalibrate_batches)
        self.val_batches = _as_sequence(val_batches)
        self.metric = metric
        self.fold_batchnorm = fold_batchnorm

    def _eval_network(self, arch: Arch) -> tuple[torch.nn.Module, Arch | None]:
        """The network that evaluates ``arch`` with the current BN buffers, and the ``arch``
        argument it takes (None for a standalone folded network)."""
        if self.fold_batchnorm:
            return evaluation_network(self.supernet, arch), None
        return self.supernet, arch

    def recalibrate(self, arch: Arch) -> None:
        recalibrate_bn(
            self.supernet,
            (images for images, _ in self.recalibrate_batches),
            forward=lambda model, images: model(images, arch),
            batchnorms=self.supernet.path_batchnorms(arch),
        )

    def evaluate(self, arch: Arch) -> tuple[int, int]:
        """(correct, total) of ``arch`` on the validation batches (current BN buffers)."""
        network, path = self._eval_network(arch)
        accuracy = evaluate_model(network, self.val_batches, arch=path)
        if accuracy.nonfinite:
            raise SposError(
                f"the supernet outputs NaN or infinite logits for architecture {arch.short()} on "
                f"{accuracy.nonfinite} of {accuracy.images} validation images, so its score means "
                "nothing; the checkpoint is broken: train the supernet again"
            )
        return accuracy.correct, accuracy.images

    @torch.no_grad()
    def mean_loss(self, arch: Arch) -> float:
        """Mean validation cross-entropy of ``arch`` (eval mode, current BN buffers)."""
        network, path = self._eval_network(arch)
        was_training = network.training
        network.eval()
        total: torch.Tensor | float = 0.0  # float64 on the device: one host read at the end
        count = 0
        for images, labels in self.val_batches:
            logits = network(images) if path is None else network(images, path)
            total = total + torch.nn.functional.cross_entropy(logits, labels, reduction="sum").double()
            count += labels.numel()
        network.train(was_training)
        return float(total) / max(1, count)

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


class _NormalisedBatches(Sequence):
    """uint8 batches, normalised (and moved to the device) when read.

    ``on_device``: hold the images on the runtime's device (in-memory data: one uint8 copy,
    a quarter of float32's size); otherwise in pinned host memory on CUDA (decoded lazy data,
    which may not fit a GPU) and moved per read. Labels are held on the device.
    """

    def __init__(
        self,
        batches: list[tuple[torch.Tensor, torch.Tensor]],
        data: PreparedData,
        runtime: Runtime,
        *,
        channels_last: bool,
        on_device: bool = False,
    ) -> None:
        device = runtime.device
        pin = not on_device and device.type == "cuda"

        def hold(images: torch.Tensor) -> torch.Tensor:
            if on_device:
                return images.to(device)
            return images.pin_memory() if pin else images

        self.batches = [(hold(images), labels.to(device)) for images, labels in batches]
        self.data, self.runtime, self.channels_last = data, runtime, channels_last

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore
        images, labels = self.batches[index]
        return self.data.to_float(images, self.runtime, channels_last=self.channels_last), labels


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
    fold_batchnorm: bool = True,
) -> ArchScorer:
    """A scorer with fixed recalibration images (seeded from train) and validation images."""
    generator = torch.Generator().manual_seed(seed_from(seed, "recalibration-images"))
    count = min(recalibrate_images, len(data.train))
    recal = data.train.subset(torch.randperm(len(data.train), generator=generator)[:count])
    val = data.val if val_images is None else data.val.subset(torch.arange(min(val_images, len(data.val))))

    def prepared(dataset: Any) -> Sequence[tuple[torch.Tensor, torch.Tensor]]:
        if not isinstance(dataset, spos_data.ArrayDataset):
            # Read from disk: decode once, keep uint8 on the host (ImageNet's 20k + 50k images
            # take 10.5 GB), normalise on the device per use.
            batches = spos_data.iterate_batches(dataset, batch_size=batch_size, size=data.image_size)
            return _NormalisedBatches(list(batches), data, runtime, channels_last=channels_last)
        # In memory: uint8 on the device (a view when the data already lives there),
        # normalised per batch, never a float32 copy of the whole set.
        batches = spos_data.iterate_batches(dataset, batch_size=batch_size)
        return _NormalisedBatches(list(batches), data, runtime, channels_last=channels_last, on_device=True)

    return ArchScorer(
        supernet,
        recalibrate_batches=prepared(recal),
        val_batches=prepared(val),
        metric=metric,
        fold_batchnorm=fold_batchnorm,
    )


@dataclasses.dataclass(frozen=True)
class EnsembleMember:
    """A kept checkpoint of the scored supernet (``search.score_checkpoints``), ready to score:
    its training step, its supernet (eval mode, on the device) and the hash of its weights."""

    step: int
    supernet: Supernet
    fingerprint: str


@dataclasses.dataclass
class ScoringSession:
    """A trained supernet made ready to score paths as search does.

    The supernet is in eval mode on the device, ``fingerprint`` is the hash of its weights and
    ``step`` its training step (``spos.stages.common.open_for_scoring`` opens one from a
    checkpoint). ``scorer`` uses the ``search`` section's recalibration/validation images and
    score metric; :meth:`scorer_with` builds another one on the same supernet and data with
    other budgets (the final re-scoring of search's top candidates). ``ensemble`` holds the
    kept checkpoints of ``search.score_checkpoints`` (empty: the paper's single-checkpoint
    score); :meth:`scores` is the cached supernet score search and rank use, averaged over the
    supernet and them.
    """

    space: SearchSpace
    supernet: Supernet
    fingerprint: str
    config: RunConfig
    data: PreparedData
    runtime: Runtime
    step: int = 0
    ensemble: list[EnsembleMember] = dataclasses.field(default_factory=list)

    @property
    def score_steps(self) -> list[int]:
        """The training steps of every checkpoint a score averages (the supernet's alone
        without an ensemble), ascending."""
        return sorted([self.step, *(member.step for member in self.ensemble)])

    @property
    def score_fingerprint(self) -> str:
        """What a supernet score depends on among weights: ``fingerprint`` without an ensemble,
        else a hash of every checkpoint's step and weight hash. Search states and estimator
        pools are keyed by it, so a state searched with another checkpoint set is not resumed."""
        if not self.ensemble:
            return self.fingerprint
        pairs = sorted([(self.step, self.fingerprint), *((m.step, m.fingerprint) for m in self.ensemble)])
        return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()

    def scores(
        self,
        scorer: ArchScorer | None = None,
        *,
        store: str | os.PathLike[str] | None = None,
        tag: Mapping[str, Any] | None = None,
    ) -> CheckpointEnsemble:
        """The cached supernet score of architectures: ``scorer``'s on the supernet (default
        :attr:`scorer`), averaged with the same images' scores on every ``ensemble`` checkpoint.

        Each checkpoint's scores are one :class:`CachedScorer`, split across the session's ranks,
        with ``store`` (None: memory only) and the record fields ``{"supernet": <that
        checkpoint's weight hash>, **tag}``: a stored score is reused only for the weights it
        was computed on, whichever ensemble it was part of.
        """
        scorer = self.scorer if scorer is None else scorer
        if scorer.supernet is not self.supernet:
            raise ValueError("scores() takes a scorer of this session's supernet (scorer_with)")
        tag = dict(tag or {})
        if "supernet" in tag:
            raise ValueError("the supernet field of a score record is each checkpoint's weight hash")
        scorers = {self.step: (scorer, self.fingerprint)}
        for member in self.ensemble:
            on_member = ArchScorer(
                member.supernet,
                recalibrate_batches=scorer.recalibrate_batches,
                val_batches=scorer.val_batches,
                metric=scorer.metric,
                fold_batchnorm=scorer.fold_batchnorm,
            )
            scorers[member.step] = (on_member, member.fingerprint)
        return CheckpointEnsemble(
            {
                str(step): CachedScorer(
                    on_step.score, store=store, tag={"supernet": fingerprint, **tag}, runtime=self.runtime
                )
                for step, (on_step, fingerprint) in sorted(scorers.items())
            }
        )

    @functools.cached_property
    def scorer(self) -> ArchScorer:
        cfg = self.config.search
        return self.scorer_with(recalibrate_images=cfg.recalibrate_images, val_images=cfg.val_images)

    def finetuned_score(self, scorer: ArchScorer, arch: Arch, *, steps: int, lr: float) -> float:
        """``scorer``'s score of ``arch`` after its path is fine-tuned for ``steps`` SGD steps
        from the supernet's weights, which are restored afterwards (finalist re-ranking).

        Momentum, weight decay, label smoothing and batch size are the supernet stage's. The
        batches and random layers are seeded by the candidate alone and drawn whole on every
        rank, so the score does not depend on the order, rank or world size it is computed at.
        """
        config, runtime = self.config, self.runtime
        optim = config.supernet.optim
        seed = seed_from(config.seed, f"finalist-finetune/{arch.key}")
        alone = dataclasses.replace(runtime, rank=0, world_size=1)  # each rank tunes its own finalists
        batches = train_stream(config.data, self.data, alone, batch_size=config.supernet.batch_size, seed=seed)
        with finetuned_path(
            self.supernet,
            arch,
            batches,
            steps=steps,
            lr=lr,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
            label_smoothing=optim.label_smoothing,
            to_input=lambda images: self.data.to_float(images, runtime, channels_last=config.runtime.channels_last),
            seed=seed,
        ):
            return scorer.score(arch)

    def scorer_with(self, *, recalibrate_images: int, val_images: int | None) -> ArchScorer:
        return build_scorer(
            self.supernet,
            self.data,
            self.runtime,
            seed=self.config.seed,
            recalibrate_images=recalibrate_images,
            val_images=val_images,
            batch_size=self.config.search.batch_size,
            channels_last=self.config.runtime.channels_last,
            metric=self.config.search.score,
            fold_batchnorm=self.config.search.fold_batchnorm,
        )


def _arch_key(arch: Arch) -> str:
    return arch.key


def score_sharded(
    archs: Sequence[Arch],
    score: Callable[[Arch], float],
    runtime: Runtime,
    *,
    on_score: Callable[[Arch, float], None] | None = None,
    key: Callable[[Arch], str] = _arch_key,
) -> dict[str, float]:
    """Score ``archs`` split across ranks (rank r takes every world_size-th); gather on all.

    Returns ``{key(arch): score}``; ``on_score`` is called on each rank for its own share.
    """
    mine: dict[str, float] = {}
    for arch in list(archs)[runtime.rank :: runtime.world_size]:
        mine[key(arch)] = value = score(arch)
        if on_score is not None:
            on_score(arch, value)
    gathered: dict[str, float] = {}
    for shard in runtime.all_gather_objects(mine):
        gathered.update(shard)
    return gathered


class CachedScorer:
    """Scores each architecture once: ``score_fn`` for the new ones, the cache for the rest.

    In memory by default (search: the strategy and its random baseline share one cache, as do
    the final re-scorings). With ``store``, every score is also appended to a JSON-lines file
    as it comes, one ``{"key": ..., "score": ..., **tag}`` record per line, and the file's
    records whose fields match ``tag`` are loaded at construction: an interrupted ``spos rank``
    resumes without rescoring. ``tag`` says what else a score depends on (the supernet's weight
    hash, the scoring settings); records of other weights or settings are ignored, and a line
    cut by a kill is skipped (that architecture is scored again).

    Args:
        score_fn: Scores one architecture (e.g. :meth:`ArchScorer.score`).
        key: The cache key of an architecture (default ``arch.key``).
        store: The JSON-lines file; None keeps the cache in memory only.
        tag: Fields every stored record carries and every loaded record must match.
        runtime: With one, :meth:`score_many` splits the new architectures across ranks and
            every rank gets every score; the file is read and written by the main rank only.
            Constructing a stored cache is then a collective (the main rank's records are
            broadcast).
    """

    def __init__(
        self,
        score_fn: Callable[[Arch], float],
        *,
        key: Callable[[Arch], str] = _arch_key,
        store: str | os.PathLike[str] | None = None,
        tag: Mapping[str, Any] | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.score_fn, self.key, self.runtime = score_fn, key, runtime
        self.store = None if store is None else Path(store)
        self.tag = dict(tag or {})
        self.scores: dict[str, float] = {}
        if self.store is not None:
            self.scores = self._read() if self._writes else {}
            if runtime is not None:
                self.scores = runtime.broadcast_object(self.scores)

    @property
    def _writes(self) -> bool:
        return self.runtime is None or self.runtime.is_main

    def _read(self) -> dict[str, float]:
        scores: dict[str, float] = {}
        if self.store is None or not self.store.exists():
            return scores
        for record in read_jsonl(self.store):  # a line cut by a kill is skipped: rescored
            if all(record.get(field) == value for field, value in self.tag.items()):
                scores[str(record["key"])] = float(record["score"])
        return scores

    def _append(self, key: str, value: float) -> None:
        if self.store is None or not self._writes:
            return
        self.store.parent.mkdir(parents=True, exist_ok=True)
        with self.store.open("a") as handle:
            handle.write(json.dumps({"key": key, "score": value, **self.tag}) + "\n")
            handle.flush()

    def missing(self, archs: Iterable[Arch]) -> list[Arch]:
        """The architectures of ``archs`` without a cached score (in order)."""
        return [arch for arch in archs if self.key(arch) not in self.scores]

    def pending(self, archs: Iterable[Arch]) -> int:
        """How many scores :meth:`score_many` of ``archs`` would compute (for progress bars)."""
        return len(self.missing(archs))

    def score_many(
        self, archs: Sequence[Arch], *, on_score: Callable[[Arch, float], None] | None = None
    ) -> list[float]:
        """The scores of ``archs`` (in order), computing only the missing ones.

        ``on_score(arch, score)`` is called for each newly computed score, on the rank that
        computed it.
        """

        def scored(arch: Arch, value: float) -> None:
            self._append(self.key(arch), value)
            if on_score is not None:
                on_score(arch, value)

        todo = self.missing(archs)
        if self.runtime is None:
            for arch in todo:
                self.scores[self.key(arch)] = value = self.score_fn(arch)
                scored(arch, value)
        else:
            self.scores.update(score_sharded(todo, self.score_fn, self.runtime, on_score=scored, key=self.key))
        return [self.scores[self.key(arch)] for arch in archs]

    def score(self, arch: Arch) -> float:
        """The score of one architecture (computed at most once)."""
        return self.score_many([arch])[0]


class CheckpointEnsemble:
    """Checkpoint score ensembling: the mean of an architecture's scores on several checkpoints
    of one supernet (Ning et al., NeurIPS 2021, found it ranks better than the last checkpoint).

    Each checkpoint's scores are a :class:`CachedScorer` (scored once, optionally resumable).
    A score is the mean of the checkpoints' scores summed in a fixed order, so it does not
    depend on the order architectures are scored in; with one checkpoint it is that
    checkpoint's score unchanged (the paper's).

    Args:
        members: ``{label: cache}`` per checkpoint (labels: training steps, ascending).
    """

    def __init__(self, members: Mapping[str, CachedScorer]) -> None:
        if not members:
            raise ValueError("a checkpoint ensemble needs at least one checkpoint")
        self.members = dict(members)

    @property
    def labels(self) -> list[str]:
        return list(self.members)

    def missing(self, archs: Iterable[Arch]) -> list[Arch]:
        """The architectures of ``archs`` that some checkpoint has not scored yet (in order)."""
        archs = list(archs)
        lacking = {id(arch) for cache in self.members.values() for arch in cache.missing(archs)}
        return [arch for arch in archs if id(arch) in lacking]

    def pending(self, archs: Iterable[Arch]) -> int:
        """How many checkpoint scores :meth:`score_many` of ``archs`` would compute."""
        archs = list(archs)
        return sum(cache.pending(archs) for cache in self.members.values())

    def score_many(
        self, archs: Sequence[Arch], *, on_score: Callable[[Arch, float], None] | None = None
    ) -> list[float]:
        """The ensemble scores of ``archs`` (in order), computing only missing checkpoint scores.

        ``on_score(arch, score)`` is called for each newly computed checkpoint score (one
        checkpoint's, not the mean), on the rank that computed it.
        """
        columns = [cache.score_many(archs, on_score=on_score) for cache in self.members.values()]
        return [sum(values) / len(values) for values in zip(*columns, strict=True)]

    def score(self, arch: Arch) -> float:
        """The ensemble score of one architecture (each checkpoint's computed at most once)."""
        return self.score_many([arch])[0]

    def parts(self, arch: Arch) -> dict[str, float]:
        """``{label: score}`` of ``arch`` on each checkpoint (computed if missing)."""
        return {label: cache.score(arch) for label, cache in self.members.items()}
