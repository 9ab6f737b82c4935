"""``spos rank``: how well does the trained supernet rank architectures? (issue 5)

Recipe: load the supernet checkpoint and a ground-truth CSV (e.g. NAS-Bench-201), draw K
architectures uniformly with one per isomorphism class, score each exactly as search does
(BN recalibration on the fixed training images, then the search fitness on the fixed
validation images), and compare with the truth: Kendall tau, Spearman rho, precision at the
top 5% and 10%, next to the same figures for ranking by parameter count or FLOPs alone (the
zero-cost baselines a supernet has to beat). Writes ``rank/rank.json``, ``rank/scores.csv``,
``rank/scatter.png`` and the ``rank`` section of ``summary.json``.

Scores are appended to ``rank/scores.jsonl`` as they come (keyed by the supernet's weight
hash), so an interrupted ranking resumes without rescoring; candidates are sharded across
ranks under torchrun like search candidates.

With ``search.score_checkpoints`` the supernet score is the checkpoint ensemble search uses
(the mean of each architecture's scores on the final supernet and on the listed kept
checkpoints; each checkpoint's scores cached under its own weight hash): ``rank.json`` says so
in ``checkpoint_ensemble`` and ``rank/scores.csv`` has a ``supernet_score_at_<step>`` column
per checkpoint.

With ``proxies`` (``spos rank --proxies naswot,synflow``), the named zero-cost proxies are
computed at initialisation for the same architectures on a seeded batch of
``search.estimator.proxy_batch`` training images (cached in ``rank/proxies.jsonl``, resumable
the same way), and ``rank.json`` gets a ``signals`` section: Kendall tau, Spearman rho and
precision@5%/10% of the supernet, of each proxy and of params/FLOPs, side by side; each
signal is a column of ``rank/scores.csv``.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from spos.arch import Arch
from spos.checkpoint import load_checkpoint
from spos.config import RunConfig
from spos.dist import Runtime
from spos.errors import ConfigError, DataError
from spos.groundtruth import GroundTruth
from spos.io import atomic_write_text, write_json
from spos.proxies import list_proxies
from spos.rundir import RunDir, update_summary
from spos.signals import SignalSource, proxy_batch
from spos.space import make_rng
from spos.stages.common import ProgressFactory, null_progress, open_for_scoring, run_costs
from spos.stats import option_bias, rank_correlations
from spos.train import Stopwatch

__all__ = ["run"]

log = logging.getLogger(__name__)


def _option_counts(archs: list[Arch]) -> dict[str, list[int]]:
    """How many choices of each architecture take each option value (``str(value)``)."""
    options = sorted({str(value) for arch in archs for _, value in arch.values})
    return {option: [sum(str(value) == option for _, value in arch.values) for arch in archs] for option in options}


def _check_rankable(truth: GroundTruth, column: str, true_values: list[float]) -> None:
    """Refuse a ranking whose correlations would be undefined (NaN) whatever the supernet does."""
    if len(true_values) < 2:
        raise DataError(
            f"ground-truth file {truth.path} has {len(true_values)} architecture(s) (isomorphism "
            "classes); ranking needs at least 2"
        )
    if len(set(true_values)) < 2:
        raise DataError(
            f"all {len(true_values)} architectures drawn from {truth.path} have the same {column} "
            f"({true_values[0]:g}): a rank correlation with a constant truth is undefined; choose a "
            "column whose values differ between architectures"
        )


def _proxy_signals(
    names: list[str], archs: list[Arch], *, config: RunConfig, session, run: RunDir, costs, runtime: Runtime, progress
) -> dict[str, list[float]]:
    """``{signal: values}`` of ``archs`` for the proxies ``names`` plus params and FLOPs
    (empty without names); proxy values are cached in ``rank/proxies.jsonl``."""
    if not names:
        return {}
    free = ("params", "flops")
    network = [name for name in dict.fromkeys(names) if name not in free]
    images, labels = proxy_batch(
        session.data, runtime, seed=config.seed, size=config.search.estimator.proxy_batch
    ) if network else (None, None)  # fmt: skip
    source = SignalSource(
        [*network, *free],
        space=session.space,
        costs_of=lambda arch: {metric: float(costs.cost(arch, metric)) for metric in free},
        images=images,
        labels=labels,
        seed=config.seed,
        store=run.rank_proxies,
        runtime=runtime,
    )
    bar = (
        progress(total=source.missing(archs), description="rank (proxies)")
        if runtime.is_main
        else null_progress(total=0)
    )
    try:
        rows = source.values(archs, on_value=lambda arch, value: bar.update(1))
    finally:
        bar.close()
    return {name: [row[name] for row in rows] for name in source.names}


def run(
    config: RunConfig,
    run_dir: Path,
    *,
    runtime: Runtime,
    num_archs: int,
    progress: ProgressFactory = null_progress,
    supernet_path: Path | None = None,
    proxies: list[str] | None = None,
) -> dict[str, Any]:
    """Rank ``num_archs`` architectures of ``config.ground_truth`` with the supernet of ``run_dir``
    (and with each of ``proxies``, zero-cost proxy names, beside it)."""
    if not config.ground_truth.path:
        raise ConfigError(
            "spos rank needs true accuracies: give --ground-truth CSV --column NAME, or set "
            "ground_truth.path and ground_truth.column in the config"
        )
    if num_archs < 2:
        raise ConfigError(
            f"spos rank needs at least 2 architectures to compare rankings, got --num-archs {num_archs}"
        )
    cfg = config.search
    run = RunDir(run_dir)
    checkpoint_path = Path(supernet_path) if supernet_path else run.supernet_ckpt
    payload = load_checkpoint(checkpoint_path, kind="supernet", map_location="cpu")
    session = open_for_scoring(config, payload, checkpoint_path, runtime)
    space, fingerprint = session.space, session.fingerprint
    unknown = [name for name in proxies or [] if name not in list_proxies()]
    if unknown:  # before any scoring: plugins (which may register proxies) are loaded by now
        raise ConfigError(f"--proxies names unknown proxies {unknown}; registered proxies: {list_proxies()}")
    column = str(config.ground_truth.column)
    truth = GroundTruth.load(Path(config.ground_truth.path), space, column)
    indices = truth.sample(num_archs, make_rng(config.seed, "rank-archs"))
    archs = [truth.archs[i] for i in indices]
    true_values = [truth.values[i] for i in indices]
    _check_rankable(truth, column, true_values)

    if runtime.is_main:
        run.rank_dir.mkdir(parents=True, exist_ok=True)
    # A score depends on the weights and on how it is measured: both key the cache.
    settings = {
        "score": cfg.score,
        "recalibrate_images": cfg.recalibrate_images,
        "val_images": cfg.val_images,
        "batch_size": cfg.batch_size,
        "seed": config.seed,
    }
    cache = session.scores(store=run.rank_scores, tag={"settings": settings})
    total = len(archs) * len(cache.labels)  # one score per checkpoint of the ensemble
    bar = (
        progress(total=total, initial=total - cache.pending(archs), description="rank")
        if runtime.is_main
        else null_progress(total=total)
    )
    watch = Stopwatch()
    try:
        scores = cache.score_many(archs, on_score=lambda arch, value: bar.update(1))
    finally:
        bar.close()
    figures = rank_correlations(true_values, scores)
    if len(set(scores)) < 2:
        log.warning(
            "the supernet gave all %d architectures the same score (%g): its rank correlations are "
            "undefined (null in rank.json); train it longer or score on more images (search.val_images)",
            len(scores),
            scores[0],
        )
    best = max(range(len(archs)), key=lambda i: scores[i])
    bias = option_bias(_option_counts(archs), true_values, scores)
    # What a supernet must beat: ranking by a cost alone (on NAS-Bench-201 the parameter count
    # is a strong zero-cost proxy; Ning et al. 2021 report Kendall tau 0.61 for it).
    costs = run_costs(run, space, runtime)
    baselines = {
        metric: {
            name: round(value, 4)
            for name, value in rank_correlations(true_values, [float(costs.cost(a, metric)) for a in archs]).items()
        }
        for metric in ("params", "flops")
    }
    signals = _proxy_signals(
        proxies or [], archs, config=config, session=session, run=run, costs=costs, runtime=runtime, progress=progress
    )
    if signals:
        signals = {"supernet": scores, **signals}
    summary: dict[str, Any] = {
        "ground_truth": str(truth.path),
        "column": column,
        "num_archs": len(archs),
        **{name: round(value, 4) for name, value in figures.items()},
        "score_metric": cfg.score,
        "recalibrate_images": cfg.recalibrate_images,
        "val_images": cfg.val_images,
        "supernet_weights_sha256": fingerprint,
        "supernet_top_arch": archs[best].short(),
        "supernet_top_arch_true_value": true_values[best],
        "true_best_in_file": truth.best(),
        "cost_baselines": baselines,
        "option_bias": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in bias
        ],
        "seconds": round(watch(), 1),
        "points": [[t, s] for t, s in zip(true_values, scores, strict=True)],
    }
    parts: dict[str, list[float]] = {}
    if session.ensemble:  # each checkpoint's own scores and ranking, beside their mean's
        rows = [cache.parts(arch) for arch in archs]
        parts = {label: [row[label] for row in rows] for label in cache.labels}
        hashes = {session.step: fingerprint, **{member.step: member.fingerprint for member in session.ensemble}}
        summary["checkpoint_ensemble"] = {
            "steps": session.score_steps,
            "weights_sha256": {str(step): hashes[step] for step in session.score_steps},
            "kendall_tau_at": {
                label: round(rank_correlations(true_values, values)["kendall_tau"], 4) for label, values in parts.items()
            },
        }
    if signals:
        summary["proxy_batch"] = config.search.estimator.proxy_batch
        summary["signals"] = {
            name: {k: round(v, 4) for k, v in rank_correlations(true_values, values).items()}
            for name, values in signals.items()
        }
    if runtime.is_main:
        write_json(run.rank_json, summary)
        table = io.StringIO()
        writer = csv.writer(table)
        extra = [name for name in signals if name != "supernet"]
        at = [f"supernet_score_at_{label}" for label in parts]
        writer.writerow(["arch", "group", column, "supernet_score", *at, *extra])
        for row, (i, arch, value, score) in enumerate(zip(indices, archs, true_values, scores, strict=True)):
            writer.writerow(
                [arch.short(), truth.groups[i], value, score, *(parts[label][row] for label in parts),
                 *(signals[n][row] for n in extra)]  # fmt: skip
            )
        atomic_write_text(run.rank_csv, table.getvalue())
        from spos.report import write_rank_plot

        write_rank_plot(summary, run.rank_plot)
        update_summary(run, "rank", {k: v for k, v in summary.items() if k != "points"})
    runtime.barrier()
    return summary
