"""The ``spos`` command: parses arguments, builds the runtime, dispatches to a stage.

No logic lives here beyond argument handling, progress bars (rank 0 only) and turning
:class:`~spos.errors.SposError` into one clear line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from spos.errors import SposError
from spos.rundir import RunDir

__all__ = ["main"]

EXIT_USER_ERROR = 2
EXIT_OS_ERROR = 1
EXIT_INTERRUPTED = 130


class _TqdmProgress:
    #: Bars not closed yet: an error closes them first, so its line starts a line of its own.
    open_bars: set[Any] = set()

    def __init__(self, *, total: int, initial: int = 0, description: str = "") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=description, dynamic_ncols=True, file=sys.stderr)
        _TqdmProgress.open_bars.add(self.bar)

    @classmethod
    def close_all(cls) -> None:
        for bar in list(cls.open_bars):
            bar.close()
        cls.open_bars.clear()

    def update(self, count: int = 1, **postfix: Any) -> None:
        if postfix:
            self.bar.set_postfix(postfix, refresh=count == 0)
        if count:
            self.bar.update(count)

    def close(self) -> None:
        self.bar.close()
        _TqdmProgress.open_bars.discard(self.bar)


def _resolve_config(args: argparse.Namespace):
    from spos.config import load_config
    from spos.errors import ConfigError

    path = args.config
    from_run_dir = path is None and args.out is not None and RunDir(args.out).config.is_file()
    if from_run_dir:
        path = RunDir(args.out).config  # resume from the run directory alone
    config = load_config(path, args.overrides)
    if from_run_dir and config.space.plugins and not getattr(args, "trust_plugins", False):
        # A run directory may come from someone else: importing its plugins runs their code.
        raise ConfigError(
            f"{path} imports plugins {config.space.plugins}, which run code; pass "
            "--trust-plugins if you trust this run directory (or give --config)"
        )
    return config


def _run_dir(text: str) -> Path:
    """argparse type of --out/--run: a non-empty path that is not a file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (give a run directory, e.g. runs/exp1)")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a run directory")
    return path


def _proxy_names(text: str) -> list[str]:
    """argparse type of ``rank --proxies``: comma-separated names, or ``all``."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give proxy names, e.g. naswot,synflow,jacob_cov (or all)")
    if names == ["all"]:
        from spos.proxies import list_proxies

        return list_proxies()
    return list(dict.fromkeys(names))


def _add_trust_plugins(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-plugins",
        action="store_true",
        help="import the space.plugins named by RUN/config.yaml (they run code; off by default)",
    )


def _runtime(config):
    from spos.dist import Runtime, check_amp

    runtime = Runtime.from_env(
        config.device,
        threads=config.threads,
        backend=config.runtime.dist_backend,
        timeout_s=config.runtime.dist_timeout_s,
        deterministic=config.runtime.deterministic,
    )
    check_amp(config.runtime.amp, runtime.device)  # before any data is read: bf16 on an old GPU
    if not runtime.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one copy of the INFO log, from rank 0
    return runtime


def _cmd_train_supernet(args: argparse.Namespace) -> int:
    from spos.stages import train_supernet

    config = _resolve_config(args)
    runtime = _runtime(config)
    summary = train_supernet.run(config, Path(args.out), runtime=runtime, progress=_TqdmProgress)
    if runtime.is_main:
        print(
            f"supernet trained: {summary['steps']} steps, panel mean acc "
            f"{summary['panel_mean_acc']}, summary in {RunDir(args.out).summary}"
        )
    runtime.close()
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from spos.stages import search

    config = _resolve_config(args)
    runtime = _runtime(config)
    summary = search.run(
        config, Path(args.out), runtime=runtime, progress=_TqdmProgress, supernet_path=args.supernet
    )
    if runtime.is_main:
        # The paper's fitness is an accuracy in %; an estimator's a weighted mean percentile.
        unit = "%" if "estimator" not in summary else f"/100 (estimator {summary['estimator']['weights']})"
        line = f"search ({summary['strategy']}): best {summary['best_score']:.2f}{unit} {summary['best_costs']}"
        if "baseline" in summary:
            line += f"; random baseline best {summary['baseline']['best_score']:.2f}{unit.split(' ')[0]}"
        print(line)
        print(f"architecture written to {RunDir(args.out).arch_json}")
    runtime.close()
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from spos.stages import retrain

    config = _resolve_config(args)
    runtime = _runtime(config)
    summary = retrain.run(config, Path(args.out), runtime=runtime, progress=_TqdmProgress, arch_path=args.arch)
    if runtime.is_main:
        print(f"retrained: test top-1 {summary['test_top1']:.2f}%, top-5 {summary['test_top5']:.2f}%")
    runtime.close()
    return 0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _figure(value: Any, spec: str) -> str:
    """``value`` formatted, or "undefined" for a correlation that has none (constant input)."""
    return format(value, spec) if _finite(value) else "undefined"


def _cmd_rank(args: argparse.Namespace) -> int:
    from spos.stages import rank

    run_dir = Path(args.run)
    config = _resolve_config(
        argparse.Namespace(config=args.config, out=run_dir, overrides=args.overrides, trust_plugins=args.trust_plugins)
    )
    truth = config.ground_truth
    config.ground_truth = dataclasses.replace(
        truth,
        path=str(args.ground_truth) if args.ground_truth is not None else truth.path,
        column=args.column if args.column is not None else truth.column,
    )
    config.ground_truth.validate("ground_truth")
    runtime = _runtime(config)
    summary = rank.run(
        config,
        run_dir,
        runtime=runtime,
        num_archs=args.num_archs,
        progress=_TqdmProgress,
        supernet_path=args.supernet,
        proxies=args.proxies,
    )
    if runtime.is_main:
        print(
            f"ranked {summary['num_archs']} architectures: Kendall tau {_figure(summary['kendall_tau'], '.3f')}, "
            f"Spearman rho {_figure(summary['spearman_rho'], '.3f')}, precision@5% "
            f"{summary['precision_at_5pct']:.2f}, precision@10% {summary['precision_at_10pct']:.2f}; "
            f"plot in {RunDir(run_dir).rank_plot}"
        )
        ensemble = summary.get("checkpoint_ensemble")
        if ensemble:
            each = ", ".join(f"{step} {_figure(tau, '.3f')}" for step, tau in ensemble["kendall_tau_at"].items())
            print(
                f"  the supernet score is a checkpoint ensemble: the mean over steps {ensemble['steps']} "
                f"(search.score_checkpoints); Kendall tau of each checkpoint alone: {each}"
            )
        baselines = summary["cost_baselines"]
        print(
            "  baselines on the same architectures: Kendall tau of params "
            f"{_figure(baselines['params']['kendall_tau'], '.3f')}, of FLOPs {_figure(baselines['flops']['kendall_tau'], '.3f')}"
        )
        if "signals" in summary:
            print(f"  {'signal':<12} {'tau':>7} {'rho':>7} {'P@5%':>6} {'P@10%':>6}")
            for name, row in summary["signals"].items():
                print(
                    f"  {name:<12} {_figure(row['kendall_tau'], '.3f'):>7} {_figure(row['spearman_rho'], '.3f'):>7} "
                    f"{row['precision_at_5pct']:>6.2f} {row['precision_at_10pct']:>6.2f}"
                )
        for row in summary["option_bias"][:3]:
            if not (_finite(row["bias"]) and _finite(row["tau_truth"]) and _finite(row["tau_proxy"])):
                continue
            verdict = "overrates" if row["bias"] > 0 else "underrates"
            print(
                f"  the supernet {verdict} {row['option']}: Kendall tau of its count with the truth "
                f"{row['tau_truth']:+.2f}, with the supernet {row['tau_proxy']:+.2f}"
            )
    runtime.close()
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from spos.stages import export

    run_dir = Path(args.run)
    config = _resolve_config(
        argparse.Namespace(config=args.config, out=run_dir, overrides=args.overrides, trust_plugins=args.trust_plugins)
    )
    runtime = _runtime(config)
    summary = export.run(config, run_dir, runtime=runtime)  # every rank: it meets at a barrier
    if runtime.is_main:
        print(f"exported to {RunDir(run_dir).export_dir}: {json.dumps(summary)}")
    runtime.close()
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from spos.report import write_report

    if not Path(args.run).is_dir():
        raise SposError(f"run directory {args.run} does not exist")
    print(f"report written to {write_report(Path(args.run))}")
    return 0


def _cmd_latency_table(args: argparse.Namespace) -> int:
    from spos.config import apply_overrides
    from spos.dist import resolve_device
    from spos.latency import measure_latency_table, validate_latency_table
    from spos.space import create_space

    space = create_space(args.space, **apply_overrides({}, args.overrides))
    device = resolve_device(args.device)
    table = measure_latency_table(
        space, device=device, batch_size=args.batch_size, repeats=args.repeats, threads=args.threads
    )
    table.save(args.out)
    print(f"latency table for {space.name} on {device} written to {args.out}")
    if args.validate:
        report = validate_latency_table(
            table, space, device=device, num_archs=args.validate, seed=0, repeats=args.repeats
        )
        print(
            f"validation on {args.validate} random architectures: mean abs error "
            f"{report['mape_percent']:.1f}%, Kendall tau {report['kendall_tau']:.3f}"
        )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from spos.report import write_report
    from spos.stages import export, retrain, search, train_supernet

    config = _resolve_config(args)
    runtime = _runtime(config)
    run_dir = Path(args.out)
    # Each stage skips what is finished and resumes what was interrupted.
    train_supernet.run(config, run_dir, runtime=runtime, progress=_TqdmProgress)
    search.run(config, run_dir, runtime=runtime, progress=_TqdmProgress)
    summary = retrain.run(config, run_dir, runtime=runtime, progress=_TqdmProgress)
    export.run(config, run_dir, runtime=runtime)  # every rank: rank 0 writes, all meet after
    if runtime.is_main:
        report = write_report(run_dir)
        print(
            f"done: test top-1 {summary['test_top1']:.2f}% ({summary['flops']:,} MACs, "
            f"{summary['params']:,} params)\nreport: {report}"
        )
    runtime.close()
    return 0


def _cmd_cost(args: argparse.Namespace) -> int:
    from spos.config import apply_overrides
    from spos.cost import CostModel
    from spos.space import create_space

    layout = apply_overrides({}, args.overrides)
    space = create_space(args.space, **layout)
    arch = space.parse(args.arch)
    costs = CostModel.from_space(space).costs(arch)
    if args.json:
        print(json.dumps(costs))
    else:
        for key, value in costs.items():
            print(f"{key:>14}: {value:,}")
    return 0


def _cmd_spaces(args: argparse.Namespace) -> int:
    from spos.space import create_space, list_spaces

    del args
    for name in list_spaces():
        space = create_space(name)
        print(f"{name:<24} v{space.version}  family={space.family:<12} choices={len(space.choices):<3} size={space.size():.3g}")
    return 0


#: Commands that write into a run directory: one process at a time per directory.
_LOCKING_COMMANDS = {"train-supernet", "search", "retrain", "run", "export", "rank"}


def _run_dir_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    if args.command not in _LOCKING_COMMANDS:
        return contextlib.nullcontext()
    from spos.rundir import locked

    return locked(args.out if hasattr(args, "out") else args.run, command=args.command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spos", description="Single Path One-Shot NAS: supernet training, search, retraining, export."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", type=Path, default=None, help="YAML config (default: RUN_DIR/config.yaml, else built-in defaults)")
        p.add_argument("--out", type=_run_dir, required=True, help="run directory (rerun the same command to resume)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. supernet.optim.lr=0.1")
        _add_trust_plugins(p)
        p.set_defaults(handler=handler)
        return p

    stage("train-supernet", "train a supernet with uniform single-path sampling", _cmd_train_supernet)
    p = stage("run", "the whole pipeline: supernet, search, retrain, export, report", _cmd_run)
    p = stage("search", "evolutionary search under constraints over a trained supernet", _cmd_search)
    p.add_argument("--supernet", type=Path, default=None, help="supernet checkpoint (default: RUN_DIR/supernet.ckpt)")

    p = stage("retrain", "train the found architecture from scratch and test it", _cmd_retrain)
    p.add_argument("--arch", type=Path, default=None, help="architecture file (default: RUN_DIR/arch.json)")

    p = sub.add_parser("export", help="export the retrained model to ONNX and torch.export, checked numerically")
    # --out as for the other stages; also the spelling torchrun accepts (it reads "--run" as
    # an ambiguous abbreviation of its own --run-path and refuses the command line).
    p.add_argument("--run", "--out", dest="run", type=_run_dir, required=True, help="run directory with retrain/child.ckpt")
    p.add_argument("--config", type=Path, default=None, help="config (default: RUN/config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    _add_trust_plugins(p)
    p.set_defaults(handler=_cmd_export)

    p = sub.add_parser("rank", help="rank correlation of supernet scores with ground-truth accuracies")
    p.add_argument("--run", type=_run_dir, required=True, help="run directory with supernet.ckpt")
    _add_trust_plugins(p)
    p.add_argument(
        "--ground-truth", type=Path, default=None, help="CSV with an arch or arch_str column (default: ground_truth.path)"
    )
    p.add_argument(
        "--column", default=None, help="accuracy column, e.g. cifar10valid_valid_acc (default: ground_truth.column)"
    )
    p.add_argument("--num-archs", type=int, default=200, help="architectures to score (one per isomorphism class)")
    p.add_argument("--supernet", type=Path, default=None, help="supernet checkpoint (default: RUN/supernet.ckpt)")
    p.add_argument(
        "--proxies",
        type=_proxy_names,
        default=None,
        metavar="NAMES",
        help="also rank by these zero-cost proxies (comma-separated, e.g. naswot,synflow,jacob_cov; 'all': every "
        "registered one) and by params/FLOPs, computed at initialisation on search.estimator.proxy_batch images",
    )
    p.add_argument("--config", type=Path, default=None, help="config (default: RUN/config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. search.recalibrate_images=2000")
    p.set_defaults(handler=_cmd_rank)

    p = sub.add_parser("report", help="plots and a summary page from a run directory")
    p.add_argument("--run", type=_run_dir, required=True, help="run directory")
    p.set_defaults(handler=_cmd_report)

    p = sub.add_parser("latency-table", help="measure a per-(layer, choice) latency lookup table")
    p.add_argument("--space", required=True, help="search space name")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, required=True, help="output JSON file")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--validate", type=int, default=10, metavar="K", help="check against K measured random archs (0: skip)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="space layout overrides")
    p.set_defaults(handler=_cmd_latency_table)

    p = sub.add_parser("cost", help="FLOPs and params of an architecture")
    p.add_argument("--space", required=True, help="search space name (see `spos spaces`)")
    p.add_argument("--arch", required=True, help="arch.json path, JSON, or comma-separated indices")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="space layout overrides, e.g. num_classes=10")
    p.set_defaults(handler=_cmd_cost)

    p = sub.add_parser("spaces", help="list the registered search spaces")
    p.set_defaults(handler=_cmd_spaces)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        with _run_dir_lock(args):
            return int(args.handler(args) or 0)
    except SposError as exc:
        _TqdmProgress.close_all()
        print(f"spos: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # full disk, read-only file system, permissions, a file for a folder
        _TqdmProgress.close_all()
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"spos: error: {where}{exc.strerror or exc}; nothing finished was lost, fix it and rerun", file=sys.stderr)
        return EXIT_OS_ERROR
    except KeyboardInterrupt:
        _TqdmProgress.close_all()
        print("spos: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
