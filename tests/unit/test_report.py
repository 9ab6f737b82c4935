"""The run report from synthetic run files: every plot, the key figures, partial runs (SPEC 5)."""

from __future__ import annotations

import json
import math
import random
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from spos.report import write_report

OPTIONS = ("shuffle3x3", "shuffle5x5", "shuffle7x7", "xception")
LABELS = tuple(f"block_{i:02d}" for i in range(20))
SUPERNET_STEPS = 600
TEST_TOP1 = 71.234
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = (
    "supernet_training.png",
    "panel_accuracy.png",
    "rank_during_training.png",
    "coverage.png",
    "search_progress.png",
    "accuracy_vs_flops.png",
    "architecture.png",
    "retrain_curves.png",
    "rank_scatter.png",
    "rank_option_bias.png",
)


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def fake_flops(arch: dict[str, str]) -> int:
    extra = {"shuffle3x3": 0, "shuffle5x5": 900_000, "shuffle7x7": 2_200_000, "xception": 3_100_000}
    return 295_842_496 + sum(extra[value] for value in arch.values())


def fake_score(arch: dict[str, str], rng: random.Random) -> float:
    bonus = {"shuffle3x3": 0.0, "shuffle5x5": 0.12, "shuffle7x7": 0.2, "xception": 0.25}
    return 60.0 + sum(bonus[value] for value in arch.values()) + rng.gauss(0.0, 0.8)


def fake_history(
    rng: random.Random, *, generations: int, per_generation: int, origin: str
) -> list[dict[str, Any]]:
    records = []
    for generation in range(generations):
        for _ in range(per_generation):
            arch = {label: rng.choice(OPTIONS) for label in LABELS}
            records.append(
                {
                    "index": len(records),
                    "generation": generation,
                    "key": ",".join(str(OPTIONS.index(v)) for v in arch.values()),
                    "arch": arch,
                    "score": fake_score(arch, rng)
                    + (0.4 * generation if origin != "random" else 0.0),
                    "origin": origin if generation else "random",
                    "parents": [],
                    "flops": fake_flops(arch),
                    "params": 3_400_000 + rng.randrange(300_000),
                    "params_total": 3_450_000 + rng.randrange(300_000),
                }
            )
    return records


def make_minimal_run(run_dir: Path) -> None:
    """What a run that only started supernet training leaves: config and some metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "seed": 0,
        "space": {"name": "shufflenet_cifar"},
        "data": {"dataset": "synthetic"},
        "supernet": {"steps": SUPERNET_STEPS, "sampler": "uniform", "batch_size": 64, "lr": 0.5},
        "search": {
            "strategy": "evolution",
            "population_size": 6,
            "generations": 3,
            "constraints": [{"metric": "flops", "min": None, "max": 330_000_000}],
        },
        "retrain": {"epochs": 5},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    records = []
    for step in range(20, SUPERNET_STEPS + 1, 20):
        progress = step / SUPERNET_STEPS
        records.append(
            {
                "step": step,
                "loss": 2.3 * math.exp(-1.5 * progress) + 0.05 * math.sin(step),
                "train_acc": 10 + 55 * (1 - math.exp(-2 * progress)),
                "lr": 0.5 * (1 - progress),
                "images_per_s": 400.0 + step % 7,
                "coverage_min": step // 5,
                "coverage_max": step // 3,
            }
        )
    write_jsonl(run_dir / "metrics.jsonl", records)


def make_full_run(run_dir: Path) -> dict[str, Any]:
    """Every file the report reads, with plausible numbers; returns the summary written."""
    rng = random.Random(0)
    make_minimal_run(run_dir)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    panel_archs = [",".join(str(rng.randrange(4)) for _ in LABELS) for _ in range(5)]
    for step in range(100, SUPERNET_STEPS + 1, 100):
        panel = {key: 30 + 35 * step / SUPERNET_STEPS + rng.gauss(0, 2) for key in panel_archs}
        metrics.append(
            {
                "step": step,
                "panel_mean_acc": sum(panel.values()) / len(panel),
                "panel_best_acc": max(panel.values()),
                "panel": panel,
            }
        )
        metrics.append(
            {
                "step": step,
                "kendall_tau": 0.2 + 0.5 * step / SUPERNET_STEPS,
                "spearman_rho": 0.3 + 0.55 * step / SUPERNET_STEPS,
            }
        )
    write_jsonl(run_dir / "metrics.jsonl", metrics)

    history = fake_history(rng, generations=3, per_generation=6, origin="mutation")
    baseline = fake_history(rng, generations=3, per_generation=6, origin="random")
    write_jsonl(run_dir / "history.jsonl", history)
    write_jsonl(run_dir / "baseline" / "history.jsonl", baseline)
    best = max(history, key=lambda record: record["score"])
    best_base = max(baseline, key=lambda record: record["score"])
    costs = {"flops": best["flops"], "params": best["params"]}
    arch_json = {
        "format": "spos.arch",
        "format_version": 1,
        "space": "shufflenet_cifar",
        "space_version": 1,
        "arch": best["arch"],
        "score": best["score"],
        "costs": costs,
        "strategy": "evolution",
    }
    (run_dir / "arch.json").write_text(json.dumps(arch_json, indent=2), encoding="utf-8")

    retrain = []
    for epoch in range(5):
        for step in range(epoch * 40 + 10, (epoch + 1) * 40 + 1, 10):
            retrain.append(
                {
                    "step": step,
                    "epoch": epoch,
                    "loss": 2.0 * math.exp(-step / 120),
                    "train_acc": 30 + step / 5,
                    "lr": 0.2,
                }
            )
        retrain.append(
            {
                "step": (epoch + 1) * 40,
                "epoch": epoch,
                "val_acc": 40 + 6 * epoch,
                "test_acc": 39 + 6 * epoch,
            }
        )
    write_jsonl(run_dir / "retrain" / "metrics.jsonl", retrain)

    points = [
        [true, true * 0.8 + rng.gauss(0, 3)] for true in (rng.uniform(60, 75) for _ in range(40))
    ]
    rank = {
        "kendall_tau": 0.612,
        "spearman_rho": 0.798,
        "precision_at_5pct": 0.5,
        "precision_at_10pct": 0.5,
        "points": points,
        "option_bias": [
            {"option": "avg_pool_3x3", "tau_truth": -0.43, "tau_proxy": -0.15, "bias": 0.28},
            {"option": "nor_conv_1x1", "tau_truth": 0.15, "tau_proxy": -0.05, "bias": -0.2},
        ],
    }
    (run_dir / "rank").mkdir()
    (run_dir / "rank" / "rank.json").write_text(json.dumps(rank), encoding="utf-8")

    coverage = {label: dict.fromkeys(OPTIONS, 0) for label in LABELS}
    for _ in range(SUPERNET_STEPS):  # one uniformly sampled path per step
        for label in LABELS:
            coverage[label][rng.choice(OPTIONS)] += 1
    summary = {
        "supernet": {
            "steps": SUPERNET_STEPS,
            "images_per_s": 401.5,
            "train_seconds": 95.3,
            "panel_mean_acc": 64.2,
            "panel_best_acc": 66.9,
            "coverage": coverage,
            "sampler": "uniform",
            "weights_sha256": "ab" * 32,
        },
        "search": {
            "strategy": "evolution",
            "best_score": best["score"],
            "best_arch": best["key"],
            "best_costs": costs,
            "evaluations": len(history),
            "generations": 3,
            "seconds": 42.0,
            "constraints": [{"metric": "flops", "min": None, "max": 330_000_000}],
            "baseline": {
                "strategy": "random",
                "best_score": best_base["score"],
                "evaluations": len(baseline),
            },
            "beats_baseline": best["score"] >= best_base["score"],
        },
        "retrain": {
            "test_top1": TEST_TOP1,
            "test_top5": 92.5,
            "flops": best["flops"],
            "params": 3_512_345,
            "epochs": 5,
            "seconds": 300.0,
        },
        "export": {"onnx_max_abs_diff": 3.1e-6, "torchscript_max_abs_diff": 0.0},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return summary


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    summary = make_full_run(run_dir)
    return write_report(run_dir), summary


def test_full_run_embeds_every_plot(full_report: tuple[Path, dict[str, Any]]) -> None:
    index, _ = full_report
    assert index.name == "index.html" and index.parent.name == "report"
    page = index.read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == len(ALL_PLOTS)
    for name in ALL_PLOTS:
        assert name in page
    # Self-contained: no external scripts, stylesheets or images.
    assert not re.search(r"""(src|href)=["'](https?:|//|[^"'#]*\.(png|css|js))""", page)
    assert "skipped (" not in page


def test_full_run_writes_valid_pngs(full_report: tuple[Path, dict[str, Any]]) -> None:
    report_dir = full_report[0].parent
    assert sorted(p.name for p in report_dir.glob("*.png")) == sorted(ALL_PLOTS)
    assert not list(report_dir.glob(".*.tmp"))  # atomic writes leave nothing behind
    for name in ALL_PLOTS:
        path = report_dir / name
        width, height = png_size(path)
        assert 500 <= width <= 2000 and 250 <= height <= 2800, (name, width, height)
        assert 10_000 < path.stat().st_size < 2_000_000, name


def test_readme_references_each_png(full_report: tuple[Path, dict[str, Any]]) -> None:
    readme = (full_report[0].parent / "README.md").read_text(encoding="utf-8")
    for name in ALL_PLOTS:
        assert f"]({name})" in readme
    assert "| retrain | test top-1 | 71.23 % |" in readme


def test_key_figures_appear(full_report: tuple[Path, dict[str, Any]]) -> None:
    index, summary = full_report
    page = index.read_text(encoding="utf-8")
    search = summary["search"]
    expected = [
        "71.23 %",  # retrain test top-1
        "92.50 %",  # test top-5
        "3.512 M",  # retrained params
        f"{summary['retrain']['flops'] / 1e6:.4g} M",  # retrained FLOPs
        "401.5 img/s",
        "64.20 %",  # panel mean
        f"{search['best_score']:.2f} %",
        f"{search['baseline']['best_score']:.2f} %",
        "evolution beats baseline",
        "flops ≤ 330 M",
        "3.1e-06",  # onnx max abs diff
        "0.612",  # Kendall tau from rank.json
        "shufflenet_cifar",
        "synthetic",
    ]
    for text in expected:
        assert text in page, text
    chosen = json.loads((index.parents[1] / "arch.json").read_text(encoding="utf-8"))["arch"]
    assert ",".join(chosen.values()) in page  # the chosen architecture, verbatim


def test_supernet_only_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "partial"
    make_minimal_run(run_dir)
    index = write_report(run_dir)
    page = index.read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == 1
    assert sorted(p.name for p in index.parent.glob("*.png")) == ["supernet_training.png"]
    png_size(index.parent / "supernet_training.png")
    for missing in (
        "history.jsonl",
        "arch.json",
        "retrain/metrics.jsonl",
        "rank/rank.json",
        "summary.json",
    ):
        assert missing in page, missing
    assert "](supernet_training.png)" in (index.parent / "README.md").read_text(encoding="utf-8")


def test_rerun_removes_stale_plots_and_tolerates_a_truncated_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    make_full_run(run_dir)
    write_report(run_dir)
    (run_dir / "rank" / "rank.json").unlink()
    with (run_dir / "history.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"index": 99, "generat')  # a search still writing its history
    index = write_report(run_dir)
    assert not (index.parent / "rank_scatter.png").exists()
    assert not (index.parent / "rank_option_bias.png").exists()
    assert index.read_text(encoding="utf-8").count("data:image/png;base64,") == len(ALL_PLOTS) - 2


def test_empty_run_dir_and_missing_dir(tmp_path: Path) -> None:
    from spos.errors import SposError

    with pytest.raises(SposError, match="holds no run results to report on: no summary.json") as info:
        write_report(tmp_path)  # an empty page would look like success (issue 19)
    assert str(tmp_path) in str(info.value)
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(SposError, match="a stage started, but it wrote no results yet"):
        write_report(tmp_path)
    assert not (tmp_path / "report").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_architecture_plot_handles_numbers_and_many_choices(tmp_path: Path) -> None:
    arch = {f"layer_{i:02d}_width": [0.2, 0.4, 0.8, 1.2, 1.6][i % 5] for i in range(34)}
    arch_json = {
        "format": "spos.arch",
        "format_version": 1,
        "space": "toy_width",
        "space_version": 2,
        "arch": arch,
    }
    (tmp_path / "arch.json").write_text(json.dumps(arch_json), encoding="utf-8")
    index = write_report(tmp_path)
    width, height = png_size(index.parent / "architecture.png")
    assert height > 300  # wrapped into rows, not one unreadable strip
    assert index.read_text(encoding="utf-8").count("data:image/png;base64,") == 1


def test_import_needs_no_torch() -> None:
    code = (
        "import sys, spos.report; assert 'torch' not in sys.modules, 'spos.report imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_failing_plot_becomes_a_skipped_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spos.report.sections

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("odd record")

    monkeypatch.setattr(spos.report.sections, "_plot_rank_scatter", broken)
    make_full_run(tmp_path / "run")
    page = write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(ALL_PLOTS) - 1
    assert "skipped (could not plot: ValueError: odd record)" in page


def make_quantisation_run(run_dir: Path) -> dict[str, Any]:
    """A mixed-precision search: every candidate has the same FLOPs, BitOps vary with the bits,
    and search's pareto.json runs along BitOps."""
    from spos.evolution import pareto_front

    rng = random.Random(1)
    make_minimal_run(run_dir)
    history = []
    for index in range(24):
        bits = {label: rng.choice((2, 4, 8)) for label in LABELS[:6]}
        mean_bits = sum(bits.values()) / len(bits)
        history.append(
            {
                "index": index,
                "generation": index // 8,
                "arch": bits,
                "score": 50.0 + 3.0 * mean_bits + rng.gauss(0.0, 0.5),
                "flops": 12_000_000,
                "params": 270_000,
                "bitops": int(12_000_000 * mean_bits * mean_bits),
            }
        )
    write_jsonl(run_dir / "history.jsonl", history)
    front = [history[i] for i in pareto_front([(r["bitops"], r["score"]) for r in history])]
    (run_dir / "pareto.json").write_text(
        json.dumps({"x": "bitops", "y": "score", "front": front}), encoding="utf-8"
    )
    best = max(history, key=lambda r: r["score"])
    arch = {"arch": best["arch"], "score": best["score"], "costs": {"flops": 12_000_000, "bitops": best["bitops"]}}
    (run_dir / "arch.json").write_text(json.dumps(arch), encoding="utf-8")
    summary = {"search": {"strategy": "evolution", "constraints": [{"metric": "bitops", "max": 5e8}]}}
    (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return {"history": history, "front": front}


def test_accuracy_plot_runs_along_pareto_json_x_metric(tmp_path: Path) -> None:
    from spos.report import files, search_plots, sections

    made = make_quantisation_run(tmp_path / "run")
    page = write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "Accuracy against BitOps: candidates, Pareto front, chosen architecture" in page
    assert (tmp_path / "run" / "report" / "accuracy_vs_flops.png").is_file()

    run = files._read_run(tmp_path / "run")
    metric = sections._cost_metric(run)
    assert metric == "bitops"
    figure = search_plots._plot_accuracy_vs_cost(
        [r for r in run.history if "score" in r],
        [],
        metric=metric,
        front=sections._pareto_records(run, metric),
        chosen=sections._chosen_point(run, metric),
        constraints=[{"metric": "bitops", "max": 5e8}],
    )
    axes = figure.axes[0]
    assert axes.get_xlabel().startswith("BitOps (MBitOps")
    candidates = axes.collections[0].get_offsets()[:, 0]
    assert len(set(candidates.tolist())) > 3  # spread along BitOps, not a flat FLOPs column
    front_line = next(line for line in axes.lines if line.get_label().startswith("Pareto front"))
    assert list(front_line.get_xdata()) == pytest.approx([r["bitops"] / 1e6 for r in made["front"]])
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "BitOps max 500 MBitOps" in labels


def test_accuracy_plot_falls_back_to_flops_without_pareto_json(tmp_path: Path) -> None:
    from spos.report import files, sections

    make_quantisation_run(tmp_path / "run")
    (tmp_path / "run" / "pareto.json").unlink()
    run = files._read_run(tmp_path / "run")
    assert sections._cost_metric(run) == "flops" and sections._pareto_records(run, "flops") is None
    page = write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "Accuracy against FLOPs: candidates, Pareto front, chosen architecture" in page


def test_key_figures_show_which_signals_drove_the_pick():
    from spos.report.tables import _rank_figures, _search_figures

    search = {
        "strategy": "evolution",
        "best_score": 66.67,
        "estimator": {
            "weights": {"supernet": 1.0, "flops": -0.5, "naswot": 0.0},
            "pool_size": 16,
            "best_signals": {"supernet": 31.25, "flops": 312864.0, "naswot": 70.7},
            "best_percentiles": {"supernet": 81.25, "flops": 37.5},
        },
    }
    rows = {quantity: value for _, quantity, value in _search_figures(search)}
    assert rows["best fitness (weighted mean percentile)"].endswith("/ 100")
    assert rows["estimator weights"].startswith("supernet 1") and "flops -0.5" in rows["estimator weights"]
    assert rows["chosen arch: supernet"].endswith("(percentile 81.2)")
    assert rows["chosen arch: flops"].endswith("(percentile 37.5)")
    assert "percentile" not in rows["chosen arch: naswot"]  # recorded, not weighted
    assert "best val. score" in {q for _, q, _ in _search_figures({"best_score": 80.0})}
    rank = {"kendall_tau": 0.5, "signals": {"supernet": {"kendall_tau": 0.5}, "naswot": {"kendall_tau": 0.61, "precision_at_5pct": 0.2}}}
    assert ("rank", "naswot: Kendall tau, P@5%", "0.610, 0.20") in _rank_figures(rank)
