"""The one prepared device check (issue 18 item 8): every CUDA path of spos in one script.

On a machine with one GPU and about 16 cores it runs, in at most 8 minutes (``--budget-s``):

1. ``gpu_tests``: the ``gpu``-marked tests (an AMP supernet step in bf16 and fp16, CPU/CUDA
   scorer parity, a checkpoint carried from CUDA to CPU and back);
2. ``e2e_bf16``: ``spos run`` (supernet, search, retrain, export, report) on synthetic
   224-pixel images with ``runtime.amp=bf16``;
3. ``torchrun_2ranks``: a short supernet run under ``torchrun --nproc_per_node=2`` (NCCL with
   two or more GPUs; gloo with one, since NCCL refuses two ranks on one GPU), checking that
   both ranks end with the same weights;
4. ``supernet_vs_standalone``: supernet against standalone-child training throughput at batch
   128 (``benchmarks/supernet_overhead.py``, ShuffleNet at 224x224; target ratio <= 1.05);
5. ``scoring_vs_forward``: seconds per candidate (BN recalibration + evaluation through
   :func:`spos.scoring.build_scorer`) against the pure eval-mode forward of the same images
   (target ratio <= 1.10);
6. ``nb201_rank``: NB201 supernet training on CIFAR-10 and ``spos rank`` against NATS-Bench's
   accuracies (skipped with a note when ``../shared/data`` lacks the zip or the CSV);
7. ``lazy_decode``: lazy JPEG decoding throughput (``LazyImageFolder.load_batch``) with 1 and
   N threads, to set against the training images/s of sections 2 and 4.

Each section runs in its own process with a time limit; a failing section is recorded (exit
code, the tail of its log) and the others still run. ``--dry-run`` runs every section on the
CPU at tiny sizes (it validates every command line, config key and code path; its numbers
mean nothing). Results: ``summary.json`` and ``summary.md`` plus ``logs/<section>.log`` under
``benchmarks/results/gpu/`` (``benchmarks/results/gpu/dry_run/`` for a dry run); run
directories and temporary data go to a temporary folder that is deleted afterwards.

    .venv/bin/python benchmarks/gpu_check.py              # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --dry-run    # anywhere, a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
SHARED = ROOT.parent / "shared" / "data"
NB201_CSV = SHARED / "nb201" / "nb201_tss.csv"
CIFAR10_ZIP = SHARED / "cifar10-jpeg" / "cifar10_jpeg.zip"

#: Targets of issue 18 item 8.
TARGETS = {"supernet_vs_standalone": 1.05, "scoring_vs_forward": 1.10}

#: A ShuffleNet small enough for a CPU (the dry run); the GPU run trains the full network.
TINY_SHUFFLENET = "{stage_repeats: [1, 1, 1, 1], stage_channels: [32, 48, 64, 96], head_channels: 64}"

#: Sizes per mode: "gpu" is sized for one H100 and 16 cores within 8 minutes in all,
#: "dry" for a CPU run of a few minutes (its numbers are not measurements of anything).
SIZES: dict[str, dict[str, Any]] = {
    "gpu": {
        "device": "cuda",
        "threads": 8,
        "e2e": dict(images=2560, val=512, steps=300, batch=128, search_images=512,
                    population=10, generations=2, retrain_epochs=2),
        "torchrun": dict(steps=100, batch=128, images=2048, image_size=224),
        "overhead": ["--configs", "imagenet", "--batch-size", "128", "--paths", "4", "--warmup", "3",
                     "--repeats", "10", "--no-memory", "--threads", "8"],
        "scoring": dict(space="shufflenet_imagenet", size=224, recal=2048, val=2048, batch=256, archs=3, repeats=3),
        "nb201": dict(steps=1500, batch=256, archs=100, recal=1000, val=2000),
        "lazy": dict(images=512, threads=14, batch=128),
        # Limits that add up to the 480 s budget, so a slow section cannot starve the later ones.
        "timeouts": {"gpu_tests": 45, "e2e_bf16": 130, "torchrun_2ranks": 60, "supernet_vs_standalone": 60,
                     "scoring_vs_forward": 40, "nb201_rank": 110, "lazy_decode": 35},
    },
    "dry": {
        "device": "cpu",
        "threads": 2,
        "e2e": dict(images=96, val=32, steps=6, batch=16, search_images=32, population=4,
                    generations=1, retrain_epochs=1),
        "torchrun": dict(steps=8, batch=16, images=128, image_size=32),
        "overhead": ["--configs", "cifar", "--batch-size", "16", "--paths", "1", "--warmup", "1", "--repeats", "3",
                     "--no-memory", "--threads", "2"],
        "scoring": dict(space="shufflenet_cifar", size=32, recal=64, val=64, batch=32, archs=2, repeats=2),
        "nb201": dict(steps=10, batch=32, archs=8, recal=64, val=128),
        "lazy": dict(images=32, threads=2, batch=16),
        "timeouts": {"gpu_tests": 120, "e2e_bf16": 300, "torchrun_2ranks": 180, "supernet_vs_standalone": 180,
                     "scoring_vs_forward": 120, "nb201_rank": 300, "lazy_decode": 120},
    },
}


@dataclass
class Outcome:
    """One section's record in the summary."""

    name: str
    status: str = "pass"  # pass | fail | timeout | skip
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    log: str | None = None


class Check:
    """Runs the sections in order, each in a subprocess with a time limit, within a budget."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode = "dry" if args.dry_run else "gpu"
        self.sizes = SIZES[self.mode]
        self.out = Path(args.out) if args.out else (RESULTS / "dry_run" if args.dry_run else RESULTS)
        self.logs = self.out / "logs"
        for stale in self.logs.glob("*.log"):  # each section appends its commands: start clean
            stale.unlink()
        self.work = Path(tempfile.mkdtemp(prefix="spos-gpu-check-"))
        self.started = time.perf_counter()
        self.outcomes: list[Outcome] = []

    # ------------------------------------------------------------------ running commands
    def remaining(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def run(self, outcome: Outcome, command: list[str], *, timeout: float, tag: str = "") -> int:
        """Run ``command`` (in its own process group, so torchrun's workers die with it on a
        timeout), appending its output to the section's log; returns its exit code (124 on a
        timeout)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{outcome.name}.log"
        outcome.log = str(log.relative_to(self.out))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT),
               "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(self.sizes["threads"])}
        limit = max(1.0, min(timeout, self.remaining()))
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(command)}{'  # ' + tag if tag else ''}\n")
            handle.flush()
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                handle.write(f"\n[gpu_check] killed after {limit:.0f} s\n")
                outcome.status = "timeout"
                outcome.notes.append(f"{tag or 'command'} ran past its {limit:.0f} s limit")
                return 124
        _trim_log(log)
        if code != 0 and outcome.status == "pass":
            outcome.status = "fail"
            outcome.notes.append(f"{tag or 'command'} exited with {code}: {_last_line(log)}")
        return code

    def spos(self, *arguments: str) -> list[str]:
        return [sys.executable, "-m", "spos", *arguments]

    def common(self) -> list[str]:
        return [f"device={self.sizes['device']}", f"threads={self.sizes['threads']}",
                f"data.cache_dir={self.work / 'cache'}"]

    def section(self, name: str, body: Callable[[Outcome], None]) -> None:
        outcome = Outcome(name)
        if self.args.only and name not in self.args.only:
            return
        if self.remaining() < 5:
            outcome.status = "skip"
            outcome.notes.append("no time left in the budget")
        else:
            start = time.perf_counter()
            try:
                body(outcome)
            except Exception as exc:  # a broken section must not stop the others
                outcome.status = "fail"
                outcome.notes.append(f"{type(exc).__name__}: {exc}")
            outcome.seconds = round(time.perf_counter() - start, 1)
        self.outcomes.append(outcome)
        print(f"[gpu_check] {name}: {outcome.status} in {outcome.seconds:.1f} s "
              f"{json.dumps(outcome.metrics)} {'; '.join(outcome.notes)}", flush=True)

    # ------------------------------------------------------------------ sections
    def gpu_tests(self, outcome: Outcome) -> None:
        report = self.work / "gpu_tests.xml"
        code = self.run(outcome, [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu",
                                  "tests/unit/test_gpu.py", f"--junitxml={report}"],
                        timeout=self.sizes["timeouts"]["gpu_tests"], tag="pytest -m gpu")
        if report.exists():
            import xml.etree.ElementTree as ET

            suite = ET.parse(report).getroot()
            suite = suite if suite.tag == "testsuite" else suite[0]
            outcome.metrics = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
            if code == 0 and outcome.metrics["skipped"] == outcome.metrics["tests"]:
                outcome.notes.append("all skipped: no CUDA device here")

    def e2e_bf16(self, outcome: Outcome) -> None:
        size = self.sizes["e2e"]
        run_dir = self.work / "runs" / "e2e"
        overrides = [
            *self.common(), "runtime.amp=bf16", "space.name=shufflenet_imagenet",
            "data.dataset=synthetic", f"data.synthetic_size={size['images']}", "data.synthetic_image_size=224",
            f"data.val_size={size['val']}", f"data.test_limit={size['val']}", "data.crop_padding=16",
            f"supernet.steps={size['steps']}", f"supernet.batch_size={size['batch']}", "supernet.checkpoint_every=100",
            "supernet.panel.eval_every=0", "supernet.panel.size=2", f"supernet.panel.val_images={size['search_images']}",
            f"supernet.panel.recalibrate_images={size['search_images']}",
            f"search.population_size={size['population']}", f"search.generations={size['generations']}",
            "search.top_k=2", "search.mutation_count=2", "search.crossover_count=2",
            f"search.recalibrate_images={size['search_images']}", f"search.val_images={size['search_images']}",
            f"search.batch_size={min(256, size['search_images'])}",
            f"retrain.epochs={size['retrain_epochs']}", f"retrain.batch_size={size['batch']}",
            "retrain.checkpoint_every=100", "runtime.log_every=10",
        ]
        if self.mode == "dry":
            overrides.append(f"space.layout={TINY_SHUFFLENET}")
        self.run(outcome, self.spos("run", "--out", str(run_dir), *overrides),
                 timeout=self.sizes["timeouts"]["e2e_bf16"], tag="spos run")
        summary = _read_json(run_dir / "summary.json")
        supernet, search, retrain, export = (summary.get(key, {}) for key in ("supernet", "search", "retrain", "export"))
        outcome.metrics = {
            "supernet_steps": supernet.get("steps"),
            "supernet_images_per_s": supernet.get("images_per_s"),
            "search_evaluations": search.get("evaluations"),
            "search_seconds": _round(search.get("seconds"), 1),
            "retrain_images_per_s": retrain.get("images_per_s"),
            "retrain_test_top1": _round(retrain.get("test_top1"), 2),
            "export": bool(export),
            "onnx_max_abs_diff": export.get("onnx_max_abs_diff"),
            "report": (run_dir / "report" / "index.html").exists(),
        }
        if outcome.status == "pass" and not (outcome.metrics["export"] and outcome.metrics["report"]):
            outcome.status = "fail"
            outcome.notes.append("the run finished without an export section or a report")

    def torchrun_2ranks(self, outcome: Outcome) -> None:
        size = self.sizes["torchrun"]
        backend = "gloo"
        if self.mode == "gpu":
            import torch

            backend = "nccl" if torch.cuda.device_count() >= 2 else "gloo"
            if backend == "gloo":
                outcome.notes.append("one GPU: both ranks share it over gloo (NCCL refuses two ranks on one GPU)")
        outcome.metrics["backend"] = backend
        run_dir = self.work / "runs" / "torchrun"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "spos", "train-supernet", "--out", str(run_dir), *self.common(),
                   f"threads={max(1, self.sizes['threads'] // 2)}", f"runtime.dist_backend={backend}",
                   "runtime.dist_timeout_s=120", "space.name=shufflenet_cifar" if self.mode == "dry" else "space.name=shufflenet_imagenet",
                   "data.dataset=synthetic", f"data.synthetic_size={size['images']}",
                   f"data.synthetic_image_size={size['image_size']}", "data.val_size=64",
                   f"supernet.steps={size['steps']}", f"supernet.batch_size={size['batch']}",
                   "supernet.panel.eval_every=0", "supernet.panel.size=0", "supernet.checkpoint_every=1000",
                   "runtime.log_every=5"]
        if self.mode == "dry":
            command.append(f"space.layout={TINY_SHUFFLENET}")
        else:
            command.append("runtime.amp=bf16")
        self.run(outcome, command, timeout=self.sizes["timeouts"]["torchrun_2ranks"], tag="torchrun")
        supernet = _read_json(run_dir / "summary.json").get("supernet", {})
        hashes = supernet.get("parameters_sha256_per_rank") or []
        outcome.metrics.update(world_size=supernet.get("world_size"), images_per_s=supernet.get("images_per_s"),
                               ranks_agree=len(hashes) == 2 and len(set(hashes)) == 1)
        if outcome.status == "pass" and not outcome.metrics["ranks_agree"]:
            outcome.status = "fail"
            outcome.notes.append(f"the ranks' weights differ or are missing: {hashes}")

    def supernet_vs_standalone(self, outcome: Outcome) -> None:
        result = self.work / "supernet_overhead.json"
        self.run(outcome, [sys.executable, "benchmarks/supernet_overhead.py", "--device", self.sizes["device"],
                           *self.sizes["overhead"], "--out", str(result)],
                 timeout=self.sizes["timeouts"]["supernet_vs_standalone"], tag="supernet_overhead.py")
        record = _read_json(result)
        if record:
            shutil.copy(result.with_suffix(".md"), self.out / "supernet_overhead.md")
            summary = record["configs"][0]["summary"]
            outcome.metrics = {
                "config": record["configs"][0]["name"],
                "batch": record["configs"][0]["batch"],
                "time_ratio": _round(summary["time_ratio"]),
                "supernet_img_per_s": _round(summary["supernet_img_per_s"], 1),
                "child_img_per_s": _round(summary["child_img_per_s"], 1),
            }
            _judge(outcome, "time_ratio", TARGETS["supernet_vs_standalone"], self.mode)

    def scoring_vs_forward(self, outcome: Outcome) -> None:
        self._in_process(outcome, "scoring")
        _judge(outcome, "ratio", TARGETS["scoring_vs_forward"], self.mode)

    def nb201_rank(self, outcome: Outcome) -> None:
        missing = [str(path) for path in (NB201_CSV, CIFAR10_ZIP) if not path.exists()]
        if missing:
            outcome.status = "skip"
            outcome.notes.append(f"missing {', '.join(missing)}")
            return
        size = self.sizes["nb201"]
        run_dir = self.work / "runs" / "nb201"
        # The decoded CIFAR-10 cache is shared with other runs of this machine (~/.cache/spos).
        overrides = [f"device={self.sizes['device']}", f"threads={self.sizes['threads']}",
                     f"data.root={CIFAR10_ZIP}", "space.layout.cells_per_stage=1",
                     f"supernet.steps={size['steps']}", f"supernet.batch_size={size['batch']}",
                     "supernet.optim.warmup_steps=0", "supernet.panel.eval_every=0", "supernet.checkpoint_every=1000",
                     f"search.recalibrate_images={size['recal']}", f"search.val_images={size['val']}",
                     "search.batch_size=500", "runtime.log_every=50"]
        code = self.run(outcome, self.spos("train-supernet", "--config", "configs/nb201_cifar10.yaml",
                                           "--out", str(run_dir), *overrides),
                        timeout=self.sizes["timeouts"]["nb201_rank"], tag="train-supernet")
        if code == 0:
            self.run(outcome, self.spos("rank", "--run", str(run_dir), "--ground-truth", str(NB201_CSV),
                                        "--column", "cifar10valid_valid_acc", "--num-archs", str(size["archs"]),
                                        f"device={self.sizes['device']}", f"threads={self.sizes['threads']}"),
                     timeout=self.sizes["timeouts"]["nb201_rank"], tag="spos rank")
        summary = _read_json(run_dir / "summary.json")
        rank, supernet = summary.get("rank", {}), summary.get("supernet", {})
        outcome.metrics = {
            "supernet_steps": supernet.get("steps"),
            "supernet_images_per_s": supernet.get("images_per_s"),
            "archs_ranked": rank.get("num_archs", rank.get("archs")),
            "kendall_tau": _round(rank.get("kendall_tau")),
            "spearman_rho": _round(rank.get("spearman_rho")),
        }

    def lazy_decode(self, outcome: Outcome) -> None:
        self._in_process(outcome, "lazy")

    def _in_process(self, outcome: Outcome, kind: str) -> None:
        """Run one of this script's own measurements in a fresh process (``--measure``)."""
        result = self.work / f"{kind}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--measure", kind, "--result", str(result)]
        if self.args.dry_run:
            command.append("--dry-run")
        self.run(outcome, command, timeout=self.sizes["timeouts"][outcome.name], tag=f"--measure {kind}")
        outcome.metrics = _read_json(result)

    # ------------------------------------------------------------------ summary
    def write(self) -> dict[str, Any]:
        summary = {
            "environment": _environment(self.mode),
            "budget_s": self.args.budget_s,
            "total_seconds": round(time.perf_counter() - self.started, 1),
            "targets": TARGETS,
            "sections": [outcome.__dict__ for outcome in self.outcomes],
        }
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (self.out / "summary.md").write_text(_markdown(summary, self.mode))
        return summary


# ---------------------------------------------------------------------- measurements
def measure_scoring(sizes: dict[str, Any]) -> dict[str, Any]:
    """Seconds per candidate (recalibration + evaluation) against the pure forward."""
    import torch

    from spos import create_space
    from spos.data import ArrayDataset
    from spos.data.prepare import PreparedData
    from spos.dist import Runtime
    from spos.scoring import build_scorer
    from spos.space import make_rng
    from spos.supernet import build_supernet

    size = sizes["scoring"]
    device = torch.device(sizes["device"])
    torch.set_num_threads(sizes["threads"])
    runtime = Runtime.from_env(sizes["device"])
    space = create_space(size["space"], input_size=size["size"], num_classes=10)
    torch.manual_seed(0)
    supernet = build_supernet(space).to(device).to(memory_format=torch.channels_last).eval()
    generator = torch.Generator().manual_seed(0)

    def dataset(count: int) -> ArrayDataset:
        images = torch.randint(0, 256, (count, 3, size["size"], size["size"]), dtype=torch.uint8, generator=generator)
        return ArrayDataset(images, torch.arange(count) % 10, [str(i) for i in range(10)]).to(device)

    data = PreparedData(dataset(size["recal"]), dataset(size["val"]), torch.tensor([0.5] * 3), torch.tensor([0.25] * 3),
                        10, 3, size["size"])
    scorer = build_scorer(supernet, data, runtime, seed=0, recalibrate_images=size["recal"], val_images=size["val"],
                          batch_size=size["batch"], channels_last=True)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    @torch.no_grad()
    def forward(arch) -> None:
        for batches in (scorer.recalibrate_batches, scorer.val_batches):
            for images, _ in batches:  # normalised per batch, as the scorer reads them
                supernet(images, arch)

    def timed(function, arch) -> float:
        sync()
        start = time.perf_counter()
        function(arch)
        sync()
        return time.perf_counter() - start

    archs = [space.sample(make_rng(0, "gpu-check")) for _ in range(size["archs"])]
    for arch in archs:  # warm-up: cudnn autotuning of each path's shapes
        scorer.score(arch)
        forward(arch)
    score_s, forward_s = [], []
    for repeat in range(size["repeats"]):
        for arch in archs:  # alternate the order: drift falls on both sides alike
            pair = [(score_s, scorer.score), (forward_s, forward)]
            for times, function in pair if repeat % 2 == 0 else reversed(pair):
                times.append(timed(function, arch))
    images = size["recal"] + size["val"]
    return {
        "space": size["space"], "image_size": size["size"], "images_per_candidate": images, "batch": size["batch"],
        "score_s": _round(statistics.median(score_s)), "forward_s": _round(statistics.median(forward_s)),
        "ratio": _round(statistics.median(score_s) / statistics.median(forward_s)),
        "candidates_per_s": _round(1 / statistics.median(score_s), 2),
    }


def measure_lazy(sizes: dict[str, Any]) -> dict[str, Any]:
    """Lazy JPEG decoding throughput (images/s) with 1 and N decoding threads."""
    import torch

    from spos import data

    spec = importlib.util.spec_from_file_location("lazy_decode", ROOT / "benchmarks" / "lazy_decode.py")
    lazy_decode = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lazy_decode)
    size = sizes["lazy"]
    torch.set_num_threads(1)
    result: dict[str, Any] = {"images": size["images"], "batch": size["batch"]}
    with tempfile.TemporaryDirectory() as folder:
        lazy_decode.write_tree(Path(folder), size["images"])
        for threads in sorted({1, size["threads"]}):
            images = data.LazyImageFolder(folder, "train", num_workers=threads)
            result[f"train_img_per_s_{threads}t"] = round(lazy_decode.rate(images, train=True, batch=size["batch"]), 1)
            result[f"eval_img_per_s_{threads}t"] = round(lazy_decode.rate(images, train=False, batch=size["batch"]), 1)
    return result


# ---------------------------------------------------------------------- helpers
def _round(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def _judge(outcome: Outcome, key: str, target: float, mode: str) -> None:
    """Compare a measured ratio with its target (a note, not a failure: the section ran)."""
    value = outcome.metrics.get(key)
    if value is None:
        return
    outcome.metrics["target"] = target
    outcome.metrics["meets_target"] = value <= target
    if mode == "dry":
        outcome.notes.append("dry run: CPU at tiny sizes, the ratio is not a measurement of the target")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _trim_log(path: Path, keep: int = 400) -> None:
    """Keep the last ``keep`` lines (progress bars' carriage returns become line breaks)."""
    lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    lines = [line for line in lines if line.strip()]
    if len(lines) > keep:
        lines = [lines[0], f"[gpu_check] ... {len(lines) - keep} lines cut ...", *lines[-keep:]]
    path.write_text("\n".join(lines) + "\n")


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _environment(mode: str) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "mode": "dry run (CPU, tiny sizes)" if mode == "dry" else "GPU",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _markdown(summary: dict[str, Any], mode: str) -> str:
    env = summary["environment"]
    lines = [
        f"# GPU check: {env['mode']}",
        "",
        f"`{env['command']}` on {env['date']}: torch {env['torch']} (CUDA {env['cuda']}), "
        f"GPUs {env['gpus'] or 'none'}, {env['cpu_count']} CPUs, load {env['load_average']}. "
        f"Total {summary['total_seconds']} s of a {summary['budget_s']} s budget.",
        "",
    ]
    if mode == "dry":
        lines += ["A dry run validates every section's command lines and code paths on the CPU at tiny sizes; "
                  "its timings and ratios are not measurements of the GPU targets.", ""]
    lines += ["| section | status | seconds | results | notes |", "|---|---|---|---|---|"]
    for section in summary["sections"]:
        results = ", ".join(f"{key}={value}" for key, value in section["metrics"].items())
        notes = "; ".join(section["notes"]).replace("|", "/")
        log = f" ([log]({section['log']}))" if section["log"] else ""
        lines.append(f"| {section['name']} | {section['status']}{log} | {section['seconds']} | {results} | {notes} |")
    lines += ["", f"Targets (issue 18): supernet/standalone throughput ratio <= {TARGETS['supernet_vs_standalone']}, "
              f"scoring/forward <= {TARGETS['scoring_vs_forward']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny sizes")
    parser.add_argument("--budget-s", type=float, default=480.0, help="time for all sections together")
    parser.add_argument("--only", nargs="*", default=None, help="run only these sections")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/gpu[/dry_run])")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary run directories")
    parser.add_argument("--measure", choices=["scoring", "lazy"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = SIZES["dry" if args.dry_run else "gpu"]
    if args.measure:
        measure = {"scoring": measure_scoring, "lazy": measure_lazy}[args.measure]
        args.result.write_text(json.dumps(measure(sizes), indent=2) + "\n")
        return 0
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device is visible; run with --dry-run to check the script on a CPU")
    check = Check(args)
    try:
        for name in ("gpu_tests", "e2e_bf16", "torchrun_2ranks", "supernet_vs_standalone", "scoring_vs_forward",
                     "nb201_rank", "lazy_decode"):
            check.section(name, getattr(check, name))
    finally:
        summary = check.write()
        if args.keep_work:
            print(f"[gpu_check] run directories kept in {check.work}")
        else:
            shutil.rmtree(check.work, ignore_errors=True)
    print(f"[gpu_check] {summary['total_seconds']} s; summary in {check.out / 'summary.md'}")
    return 0 if all(section["status"] in ("pass", "skip") for section in summary["sections"]) else 1


if __name__ == "__main__":
    sys.exit(main())
