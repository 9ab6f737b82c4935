"""Stage 2: evolutionary (or random) search over the trained supernet (SPEC section 4).

Recipe: load the supernet checkpoint (refusing another space), build the cost model and the
hard constraints, prepare the fixed recalibration and validation batches once, then run the
strategy generation by generation, saving its state after each one so a killed search
resumes to the same result. Candidates are scored in shards across ranks under torchrun.
Writes ``arch.json`` (best), ``history.jsonl``, ``pareto.json``, ``search_state.json`` and
the ``search`` section of ``summary.json``; with ``search.random_baseline`` also the random-search baseline with
the same evaluation budget under ``baseline/``.

Fitness is the paper's supernet score unless ``search.estimator`` weights other signals: then
a fixed, seeded reference pool of feasible architectures is scored once
(``estimator_pool.json``), every signal value is cached in ``signals.jsonl``, and a
candidate's fitness is :class:`~spos.estimator.PercentileEstimator`'s weighted mean
percentile, recorded with its ``signals`` in ``history.jsonl``.

With ``search.score_checkpoints`` the supernet score (the fitness, or the ``supernet`` signal)
is the mean of the candidate's scores on the final supernet and on each listed kept checkpoint
(checkpoint score ensembling, Ning et al., NeurIPS 2021): each checkpoint's scores are cached
in ``signals.jsonl`` under that checkpoint's weight hash, every candidate's record in
``history.jsonl`` gets them as ``supernet_at`` (``{step: score}``), and the search state is
keyed by all the checkpoints' hashes, so it is not resumed with another checkpoint set. The
final re-scoring (``final_top_k``) averages the same checkpoints.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

from spos.arch import Arch
from spos.checkpoint import load_checkpoint
from spos.config import RunConfig
from spos.constraints import build_constraints
from spos.dist import Runtime
from spos.errors import CheckpointError
from spos.estimator import PercentileEstimator
from spos.evolution import create_strategy, pareto_front
from spos.io import atomic_write_text, finite_json, write_json
from spos.latency import LatencyTable
from spos.rundir import RunDir, start_run, update_summary
from spos.scoring import CachedScorer, CheckpointEnsemble, ScoringSession
from spos.signals import SUPERNET, SignalSource, proxy_batch, reference_pool
from spos.space import make_rng
from spos.stages.common import ProgressFactory, null_progress, open_for_scoring, run_costs
from spos.train import Stopwatch

__all__ = ["run"]

log = logging.getLogger(__name__)


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in history))


def _search_one(
    name: str,
    *,
    config: RunConfig,
    space,
    score_many,
    costs_of,
    is_feasible,
    final_score_many,
    fitness: _Fitness,
    out: RunDir,
    fingerprint: str,
    runtime: Runtime,
    progress: ProgressFactory,
) -> dict[str, Any]:
    """Run (or resume) one strategy and write its files into ``out``."""
    cfg = config.search
    tie_metric = cfg.constraints[0].metric if cfg.constraints else "flops"
    strategy = create_strategy(
        name,
        space,
        score_many,
        is_feasible=is_feasible,
        rng=make_rng(config.seed, f"search-{name}"),
        population_size=cfg.population_size,
        generations=cfg.generations,
        top_k=cfg.top_k,
        mutation_count=cfg.mutation_count,
        mutation_prob=cfg.mutation_prob,
        crossover_count=cfg.crossover_count,
        max_tries=cfg.max_tries,
        # Equal scores go to the cheaper architecture in the first constrained metric.
        tie_break=lambda arch: float(costs_of(arch).get(tie_metric, 0.0)),
    )
    state_path = out.search_state
    # Search time accumulates over resumes in the state file, as supernet training time does in
    # its checkpoint; a finished search rerun (every resumed `spos run` reruns it) adds nothing,
    # so its summary keeps the time the search took instead of the rerun's 0 s.
    elapsed, finished = 0.0, False
    if state_path.exists():
        try:
            saved = json.loads(state_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{state_path} is corrupted ({exc}); delete it to restart the search") from None
        if saved.get("supernet") != fingerprint or saved.get("strategy") != name:
            raise CheckpointError(
                f"{state_path} belongs to another supernet, strategy or search.score_checkpoints; "
                "delete it (or use a new run directory) to search this supernet"
            )
        _check_estimator(state_path, saved, fitness.describe)
        strategy.load_state_dict(saved["state"])
        elapsed = float(saved.get("seconds", 0.0))
        finished = saved.get("finished") is True and strategy.done  # not if generations grew
        log.info("resuming %s search at generation %d", name, strategy.generation)

    clock = Stopwatch()

    def save_state(*, seconds: float | None = None) -> None:
        """Write the strategy state; ``seconds``: the search is finished and took that long."""
        state = {"strategy": name, "supernet": fingerprint, "state": strategy.state_dict()}
        if fitness.describe is not None:
            state["estimator"] = fitness.describe
        total = elapsed + clock() if seconds is None else seconds
        atomic_write_text(state_path, json.dumps({**state, "seconds": round(total, 2), "finished": seconds is not None}))

    bar = (
        progress(total=cfg.generations, initial=strategy.generation, description=f"search ({name})")
        if runtime.is_main
        else null_progress(total=cfg.generations)
    )
    while not strategy.done:
        result = strategy.step()
        scores = list(result.scores)
        mean = sum(scores) / len(scores) if scores else float("nan")
        if runtime.is_main:
            save_state()
        bar.update(1, best=f"{result.best_score:.2f}", mean=f"{mean:.2f}", evals=result.evaluations)
    bar.close()

    best_arch, best_score = strategy.best
    finalists = None
    if final_score_many is not None:
        final_clock = Stopwatch()  # re-scoring (and fine-tuning) cost, reported next to its effect
        best_arch, best_score, finalists = _final_pick(strategy.history, space, cfg.final_top_k, final_score_many)
        final_seconds = final_clock()
    history = []
    for record in strategy.history:
        arch = space.arch(record["arch"])
        history.append({**record, **costs_of(arch), **fitness.signals_record(arch)})
    # The front runs along the first constrained cost (BitOps for a mixed-precision search,
    # whose FLOPs do not vary), else along FLOPs.
    x_metric = next((c.metric for c in config.search.constraints if history and c.metric in history[0]), "flops")
    front = pareto_front([(record[x_metric], record["score"]) for record in history])
    seconds = elapsed if finished else elapsed + clock()
    summary = {
        "strategy": name,
        "best_score": best_score,
        "best_arch": best_arch.short(),
        "best_costs": costs_of(best_arch),
        "evaluations": len(history),
        "generations": strategy.generation,
        "seconds": round(seconds, 2),
    }
    if finalists is not None:
        summary["finalists"] = finalists
        summary["final_seconds"] = round(final_seconds, 2)
    extra: dict[str, Any] = {}
    if fitness.estimator is not None:
        summary["estimator"] = fitness.explain(best_arch)
        extra["estimator"] = dict(fitness.estimator.weights)
    if runtime.is_main:
        out.path.mkdir(parents=True, exist_ok=True)
        best_arch.save(out.arch_json, score=best_score, costs=costs_of(best_arch), strategy=name, **extra)
        _write_history(out.history, history)
        write_json(out.pareto, {"x": x_metric, "y": "score", "front": [history[i] for i in front]})
        if not finished:
            save_state(seconds=seconds)
    return summary


def _final_pick(
    history: list[dict[str, Any]], space, k: int, final_score_many
) -> tuple[Arch, float, list[dict[str, Any]]]:
    """Re-score the ``k`` best distinct candidates of ``history``; return the winner by that score.

    Ties go to the better screening score. Returns ``(arch, final_score, finalists)`` where
    ``finalists`` lists every re-scored candidate with both scores, best final score first.
    """
    seen: dict[str, tuple[Arch, float]] = {}
    for record in sorted(history, key=lambda r: -r["score"]):
        arch = space.arch(record["arch"])
        if arch.key not in seen:
            seen[arch.key] = (arch, record["score"])
        if len(seen) == k:
            break
    candidates = list(seen.values())
    finals = final_score_many([arch for arch, _ in candidates])
    order = sorted(range(len(candidates)), key=lambda i: (-finals[i], i))
    finalists = [
        {"arch": candidates[i][0].short(), "screen_score": candidates[i][1], "final_score": finals[i]} for i in order
    ]
    winner = order[0]
    return candidates[winner][0], finals[winner], finalists


def _estimator_description(config: RunConfig) -> dict[str, Any] | None:
    """What a search state's fitness values depend on beyond the supernet (None: the paper's score)."""
    est = config.search.estimator
    if est.is_paper:
        return None
    return {"weights": dict(est.weights), "pool_size": est.pool_size, "proxy_batch": est.proxy_batch}


def _check_estimator(state_path: Path, saved: dict[str, Any] | None, describe: dict[str, Any] | None) -> None:
    """Refuse to resume a search state whose fitness came from another estimator."""
    if saved is None:
        try:
            saved = json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError):
            return  # absent, or corrupted: the strategy's own resume says so
    if isinstance(saved, dict) and saved.get("estimator") != describe:
        raise CheckpointError(
            f"{state_path} was searched with search.estimator {saved.get('estimator') or 'the paper'}, "
            f"not {describe or 'the paper'}; resume with the original estimator, or delete it to restart"
        )


def _scoring_settings(config: RunConfig) -> dict[str, Any]:
    """What a supernet score depends on besides the weights (keys its cached values)."""
    cfg = config.search
    return {
        "score": cfg.score,
        "recalibrate_images": cfg.recalibrate_images,
        "val_images": cfg.val_images,
        "batch_size": cfg.batch_size,
        "seed": config.seed,
    }


class _Fitness:
    """A candidate's fitness: the paper's supernet score, or a rank aggregation of signals.

    ``supernet``: the supernet scores, when they average several checkpoints (their parts go
    into the history)."""

    def __init__(
        self,
        score_many,
        *,
        estimator: PercentileEstimator | None = None,
        source: SignalSource | None = None,
        describe: dict[str, Any] | None = None,
        supernet: CheckpointEnsemble | None = None,
    ) -> None:
        self.score_many, self.estimator, self.source, self.describe = score_many, estimator, source, describe
        self.supernet = supernet if supernet is not None and len(supernet.labels) > 1 else None

    def signals_record(self, arch: Arch) -> dict[str, Any]:
        """``{"signals": {...}}`` for a history record, and ``{"supernet_at": {step: score}}``
        with a checkpoint ensemble; empty for the paper's score (the record's ``score`` is
        then the supernet score itself)."""
        record: dict[str, Any] = {}
        if self.source is not None:
            record["signals"] = finite_json(self.source.values([arch])[0])
        if self.supernet is not None:
            record["supernet_at"] = finite_json(self.supernet.parts(arch))
        return record

    def explain(self, arch: Arch) -> dict[str, Any]:
        """The estimator and what drove ``arch``'s fitness: its signals and their percentiles."""
        assert self.estimator is not None and self.source is not None and self.describe is not None
        values = self.source.values([arch])[0]
        return {
            **self.describe,
            "best_signals": finite_json(values),
            "best_percentiles": {k: round(100 * v, 2) for k, v in self.estimator.percentiles(values).items()},
        }


def _build_fitness(
    config: RunConfig,
    session: ScoringSession,
    run: RunDir,
    constraints,
    *,
    runtime: Runtime,
    progress: ProgressFactory,
) -> _Fitness:
    """The fitness of ``search.estimator``; for a rank aggregation, its reference pool is
    read from ``estimator_pool.json`` when that holds this run's pool, else computed (values
    cached in ``signals.jsonl``) and saved there."""
    est = config.search.estimator
    # Each checkpoint's scores are stored only for an ensemble: the paper's search state
    # already holds every score it needs to resume.
    supernet = session.scores(
        store=run.signals if session.ensemble else None,
        tag={"signal": SUPERNET, "settings": _scoring_settings(config)},
    )
    if est.is_paper:
        return _Fitness(supernet.score_many, supernet=supernet)
    space = session.space
    names = list(est.weights)
    needs_batch = any(name != SUPERNET and name not in constraints.metrics for name in names)
    images, labels = (
        proxy_batch(session.data, runtime, seed=config.seed, size=est.proxy_batch) if needs_batch else (None, None)
    )
    source = SignalSource(
        names,
        space=space,
        costs_of=constraints.costs,
        supernet=supernet if SUPERNET in names else None,
        images=images,
        labels=labels,
        seed=config.seed,
        store=run.signals,
        runtime=runtime,
    )
    weighted = [name for name in names if est.weights[name] != 0]
    describe = _estimator_description(config)
    assert describe is not None
    tag = {
        **describe,
        "seed": config.seed,
        "space": space.fingerprint(),
        "constraints": constraints.describe(),
        "supernet": session.score_fingerprint,
        "settings": _scoring_settings(config),
    }
    pool = _read_pool(run.estimator_pool, tag, weighted)
    if pool is None:
        archs = reference_pool(space, size=est.pool_size, seed=config.seed, is_feasible=constraints.is_feasible)
        bar = (
            progress(total=source.missing(archs, names=weighted), description="estimator pool")
            if runtime.is_main
            else null_progress(total=0)
        )
        try:
            rows = source.values(archs, names=weighted, on_value=lambda arch, value: bar.update(1))
        finally:
            bar.close()
        pool = {name: [row[name] for row in rows] for name in weighted}
        if runtime.is_main:
            # JSON has no -inf (a proxy's value for a degenerate network): null stands for it.
            write_json(run.estimator_pool, {"tag": tag, "archs": [a.short() for a in archs], "signals": pool})
        runtime.barrier()
    estimator = PercentileEstimator(est.weights, pool)

    def score_many(archs):
        return [estimator.score(row) for row in source.values(archs)]

    return _Fitness(score_many, estimator=estimator, source=source, describe=describe, supernet=supernet)


def _read_pool(path: Path, tag: dict[str, Any], names: list[str]) -> dict[str, list[float]] | None:
    """The saved pool's values if ``path`` holds the pool of ``tag``, else None."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    # Compare through JSON so tuples and lists, ints and floats compare as they were saved.
    if not isinstance(saved, dict) or saved.get("tag") != json.loads(json.dumps(finite_json(tag))):
        if path.exists():
            log.info("%s holds the pool of another estimator or supernet; computing this one", path)
        return None
    signals = saved.get("signals") or {}
    if set(signals) != set(names):
        return None
    return {name: [-math.inf if v is None else float(v) for v in signals[name]] for name in names}


def run(
    config: RunConfig,
    run_dir: Path,
    *,
    runtime: Runtime,
    progress: ProgressFactory = null_progress,
    supernet_path: Path | None = None,
) -> dict[str, Any]:
    """Search the supernet of ``run_dir`` (or ``supernet_path``); return the summary."""
    cfg = config.search
    run = RunDir(run_dir)
    checkpoint_path = Path(supernet_path) if supernet_path else run.supernet_ckpt
    payload = load_checkpoint(checkpoint_path, kind="supernet", map_location="cpu")
    session = open_for_scoring(config, payload, checkpoint_path, runtime)  # checks before writing
    start_run(config, run, runtime)
    space, fingerprint = session.space, session.score_fingerprint

    costs = run_costs(run, space, runtime)
    tables: list[Any] = [costs]
    if cfg.latency_table is not None:
        tables.append(LatencyTable.load(cfg.latency_table, space=space))
    constraints = build_constraints(cfg.constraints, tables)
    for state in (run.search_state, run.baseline.search_state):  # before any pool is scored
        _check_estimator(state, None, _estimator_description(config))
    fitness = _build_fitness(config, session, run, constraints, runtime=runtime, progress=progress)
    # Shared by the strategy and its baseline: one score per arch.
    score_many = fitness.score_many

    def costs_of(arch: Arch) -> dict[str, float]:
        return constraints.costs(arch)

    final_score_many = None
    if cfg.final_top_k > 0:
        final_scorer = session.scorer_with(
            recalibrate_images=cfg.final_recalibrate_images or cfg.recalibrate_images,
            val_images=cfg.final_val_images,
        )
        # The strategy and its baseline often share finalists: scored once (in memory).
        if cfg.final_finetune_steps:  # never with an ensemble (the config refuses it)
            score_final = functools.partial(
                session.finetuned_score, final_scorer, steps=cfg.final_finetune_steps, lr=cfg.final_finetune_lr
            )
            final_score_many = CachedScorer(score_final, runtime=runtime).score_many
        else:  # averaged over search.score_checkpoints like the screening scores
            final_score_many = session.scores(final_scorer).score_many

    common = dict(
        config=config,
        space=space,
        score_many=score_many,
        costs_of=costs_of,
        is_feasible=constraints.is_feasible,
        final_score_many=final_score_many,
        fitness=fitness,
        fingerprint=fingerprint,
        runtime=runtime,
        progress=progress,
    )
    result = _search_one(cfg.strategy, out=run, **common)
    summary: dict[str, Any] = {"stage": "search", **result, "constraints": constraints.describe()}
    if session.ensemble:
        summary["score_steps"] = session.score_steps  # the checkpoints each supernet score averages
    if cfg.random_baseline and cfg.strategy != "random":
        baseline = _search_one("random", out=run.baseline, **common)
        summary["baseline"] = baseline
        summary["beats_baseline"] = result["best_score"] >= baseline["best_score"]
    if runtime.is_main:
        update_summary(run, "search", summary)
    runtime.barrier()
    return summary
