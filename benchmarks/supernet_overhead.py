"""Supernet overhead: one supernet training step against the standalone path's step (SPEC 8).

SPEC section 8 claims that uniform single-path sampling has no inherent overhead: a supernet
step on a path costs the same as a step of the standalone network of that path (targets:
step-time ratio <= 1.03, memory ratio <= 1.10). For several random paths of a space this script
trains (a) ``supernet(x, arch)`` and (b) ``build_child(space, arch)`` the way the supernet stage
does (synthetic data, ``channels_last``, cross-entropy with label smoothing 0.1, SGD with
momentum 0.9 and the official weight-decay split of :func:`spos.train.make_sgd`) and
reports:

Time: (a) and (b) alternate in one process, each (path, repeat) a pair of adjacent steps whose
    order flips every repeat (a b, then b a: drift cancels), repeats outermost and paths
    inside, after warm-up steps. A slow phase of a shared machine then falls on both halves of
    a pair alike, so the headline is the median over all pairs of the pair's ratio (with
    quartiles); the ratio of the per-path median times and of the minima are printed as
    cross-checks, and every step records how long other tasks waited for a CPU meanwhile
    (Linux PSI), so contended pairs are counted and the median over quiet pairs is shown.
    The supernet step includes what the stage does beyond the child's step: ``check_arch``,
    one ``ModuleDict`` lookup per block, and the loop that leaves ``grad = None`` on every
    off-path parameter (checked: the optimiser never touches them).
Memory: a fresh subprocess per (path, model), so nothing one measurement allocates is seen by
    another. On CPU the process's peak resident set (``VmHWM``, reset by writing 5 to
    ``/proc/self/clear_refs``) minus its resident set just before the step, with glibc's mmap
    threshold pinned at 128 KiB so every freed tensor goes back to the OS at once and RSS tracks
    live tensors. Before the measured model is built the worker trains one step of a throwaway
    child of the same path, so one-off library allocations (oneDNN primitives and scratchpads,
    thread pools, autograd workers) are paid before the baseline by both (a) and (b). On CUDA
    the same protocol with ``torch.cuda.memory_allocated`` / ``max_memory_allocated``.
    Reported per model:
    - step memory (what the target refers to: a single path's training memory): peak during the
      first training step minus the memory after building model + optimiser + batch, i.e. the
      activations, the path's gradients and the optimiser state (momentum) the step creates;
    - steady-state step memory: the same for the second step (momentum already exists);
    - fixed memory: after construction (weights, BN buffers, the batch, the runtime), and the
      peak of the whole process. The supernet holds every candidate's weights by design; that
      fixed cost is reported separately (exact parameter bytes), as is the momentum the supernet
      accumulates for every candidate over a full training run (one buffer per parameter, once
      each candidate has been sampled), which a one-path measurement cannot show.

Default: ``shufflenet_imagenet`` at 224x224, batch 32 (the SPEC's setting; 1 warm-up + 8 timed
steps per path and model) and ``shufflenet_cifar`` at 28x28x1, batch 128 (the default
pipeline's setting; 2 + 20 steps); about 3-5 minutes on 2 idle cores, far longer when other jobs
compete for them (see the contention count in the output).

Run:  .venv/bin/python benchmarks/supernet_overhead.py [--configs imagenet,cifar] [--device cpu]
Writes benchmarks/results/supernet_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spos import create_space, make_rng
from spos.arch import Arch
from spos.childnet import build_child
from spos.io import atomic_write_text
from spos.space import SearchSpace
from spos.supernet import Supernet, build_supernet
from spos.train import make_sgd

RESULTS = Path(__file__).resolve().parent / "results"
TIME_TARGET = 1.03
MEMORY_TARGET = 1.10
#: glibc mmap threshold for memory workers: tensors above it are mmapped and unmapped on free.
MMAP_THRESHOLD = 128 * 1024
#: A step counts as contended when some task waited for a CPU during >= this fraction of it.
CONTENDED_STALL = 0.10
#: The headline uses quiet pairs only when at least this many (and a quarter of all) exist.
MIN_QUIET_PAIRS = 8

#: name -> (space, layout overrides, batch size, warm-up steps, repeats)
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {"space": "shufflenet_imagenet", "layout": {}, "batch": 32, "warmup": 1, "repeats": 8},
    "cifar": {
        "space": "shufflenet_cifar",
        "layout": {"input_size": 28, "in_channels": 1},
        "batch": 128,
        "warmup": 2,
        "repeats": 20,
    },
}


# --------------------------------------------------------------------------- setup
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="imagenet,cifar",
                        help=f"comma-separated presets from {sorted(PRESETS)} (ignored with --space)")
    parser.add_argument("--space", default=None,
                        help="run one custom configuration on this registered space instead")
    parser.add_argument("--input-size", type=int, default=None, help="with --space: layout input_size")
    parser.add_argument("--in-channels", type=int, default=None, help="with --space: layout in_channels")
    parser.add_argument("--batch-size", type=int, default=None, help="override the batch size")
    parser.add_argument("--paths", type=int, default=4, help="random paths per configuration")
    parser.add_argument("--warmup", type=int, default=None, help="override warm-up steps per path/model")
    parser.add_argument("--repeats", type=int, default=None, help="override timed steps per path/model")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--out", type=Path, default=RESULTS / "supernet_overhead.json",
                        help="results JSON (the .md is written next to it)")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.space is not None:
        layout = {}
        if args.input_size is not None:
            layout["input_size"] = args.input_size
        if args.in_channels is not None:
            layout["in_channels"] = args.in_channels
        chosen = [{"name": args.space, "space": args.space, "layout": layout, "batch": 32,
                   "warmup": 2, "repeats": 5}]
    else:
        names = [name.strip() for name in args.configs.split(",") if name.strip()]
        unknown = [name for name in names if name not in PRESETS]
        if unknown or not names:
            raise SystemExit(f"--configs: unknown preset(s) {unknown}; known: {sorted(PRESETS)}")
        chosen = [{"name": name, **PRESETS[name]} for name in names]
    for config in chosen:
        if args.batch_size is not None:
            config["batch"] = args.batch_size
        if args.warmup is not None:
            config["warmup"] = args.warmup
        if args.repeats is not None:
            config["repeats"] = args.repeats
    return chosen


def make_space(config: dict[str, Any]) -> SearchSpace:
    return create_space(config["space"], **config["layout"])


def make_batch(space: SearchSpace, batch: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    layout = space.layout
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, int(layout["in_channels"]), int(layout["input_size"]), int(layout["input_size"]))
    images = torch.randn(shape, generator=generator).to(device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, int(layout["num_classes"]), (batch,), generator=generator).to(device)
    return images, labels


def make_model(kind: str, space: SearchSpace, arch: Arch, device: torch.device) -> nn.Module:
    model = build_supernet(space) if kind == "supernet" else build_child(space, arch)
    return model.to(device=device, memory_format=torch.channels_last).train()


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    # The supernet stage's defaults (config.py): the lr does not change the cost of a step.
    return make_sgd(model, lr=0.1, momentum=0.9, nesterov=False, weight_decay=4e-5)


def make_step(model: nn.Module, arch: Arch, images: torch.Tensor, labels: torch.Tensor,
              optimizer: torch.optim.Optimizer) -> Callable[[], float]:
    """One training step as the supernet stage runs it (and its plain-network equivalent)."""
    if isinstance(model, Supernet):
        supernet = model
        all_parameters = list(supernet.parameters())

        def step() -> float:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(supernet(images, arch), labels, label_smoothing=0.1)
            loss.backward()
            on_path = {id(p) for p in supernet.path_parameters(arch)}
            for parameter in all_parameters:
                if id(parameter) not in on_path:
                    parameter.grad = None
            optimizer.step()
            return float(loss.detach())
    else:
        child = model

        def step() -> float:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(child(images), labels, label_smoothing=0.1)
            loss.backward()
            optimizer.step()
            return float(loss.detach())

    return step


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def parameter_bytes(parameters: Any) -> int:
    return sum(p.numel() * p.element_size() for p in parameters)


def format_indices(space: SearchSpace, arch: Arch) -> str:
    """The path as option indices, one digit per block when every index fits in one."""
    indices = space.indices(arch)
    return "".join(map(str, indices)) if max(indices) < 10 else ",".join(map(str, indices))


def sample_paths(space: SearchSpace, count: int, seed: int) -> list[Arch]:
    rng = make_rng(seed, "benchmark-supernet-overhead")
    return [space.sample(rng) for _ in range(count)]


# --------------------------------------------------------------------------- time
def cpu_stall_us() -> int | None:
    """Microseconds any task on this machine has waited for a CPU (Linux PSI), or None."""
    try:
        for line in Path("/proc/pressure/cpu").read_text(encoding="ascii").splitlines():
            if line.startswith("some"):
                return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def minor_faults() -> int | None:
    """Minor page faults of this process so far (memory the kernel had to map in), or None."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def median_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def measure_time(config: dict[str, Any], paths: list[Arch], device: torch.device, seed: int) -> dict[str, Any]:
    """Interleaved step times of supernet (a) and standalone child (b) for every path."""
    space = make_space(config)
    images, labels = make_batch(space, config["batch"], device, seed)
    sync = synchronizer(device)

    supernet = make_model("supernet", space, paths[0], device)
    supernet_optimizer = make_optimizer(supernet)
    steps: dict[tuple[int, str], Callable[[], float]] = {}
    off_path: dict[int, list[nn.Parameter]] = {}
    for index, arch in enumerate(paths):
        steps[index, "supernet"] = make_step(supernet, arch, images, labels, supernet_optimizer)
        child = make_model("child", space, arch, device)
        steps[index, "child"] = make_step(child, arch, images, labels, make_optimizer(child))
        on_path = {id(p) for p in supernet.path_parameters(arch)}
        off_path[index] = [p for p in supernet.parameters() if id(p) not in on_path]

    def timed(key: tuple[int, str]) -> dict[str, float | None]:
        sync()
        stall, faults = cpu_stall_us(), minor_faults()
        start, start_cpu = time.perf_counter(), time.process_time()
        steps[key]()
        sync()
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        stall_end, faults_end = cpu_stall_us(), minor_faults()
        fraction = None if stall is None or stall_end is None else (stall_end - stall) / 1e6 / wall
        return {"wall": wall, "cpu": cpu, "stall": fraction,
                "faults": None if faults is None else faults_end - faults}

    for index in range(len(paths)):
        for _ in range(config["warmup"]):
            timed((index, "supernet"))
            timed((index, "child"))
        # The stage's contract (SPEC 3): off-path candidates end the step without a gradient.
        assert all(p.grad is None for p in off_path[index]), "an off-path parameter has a gradient"

    pairs: list[dict[str, Any]] = []
    for repeat in range(config["repeats"]):
        order = ("supernet", "child") if repeat % 2 == 0 else ("child", "supernet")
        for index in range(len(paths)):
            measured = {kind: timed((index, kind)) for kind in order}
            stalls = [m["stall"] for m in measured.values()]
            pairs.append({
                "path": index,
                "repeat": repeat,
                "first": order[0],
                **{f"{kind}_{field}": measured[kind][field] for kind in order
                   for field in ("wall", "cpu", "stall", "faults")},
                "ratio": measured["supernet"]["wall"] / measured["child"]["wall"],
                "contended": None if None in stalls else max(stalls) >= CONTENDED_STALL,
            })

    rows = []
    for index, arch in enumerate(paths):
        mine = [pair for pair in pairs if pair["path"] == index]
        supernet_median = statistics.median(pair["supernet_wall"] for pair in mine)
        child_median = statistics.median(pair["child_wall"] for pair in mine)
        rows.append({
            "path": index,
            "arch": arch.short(),
            "indices": format_indices(space, arch),
            "supernet_s": supernet_median,
            "child_s": child_median,
            "ratio_of_medians": supernet_median / child_median,
            "paired_ratio_median": statistics.median(pair["ratio"] for pair in mine),
            "quiet_ratio_median": statistics.median(quiet)
            if (quiet := [pair["ratio"] for pair in mine if pair["contended"] is False]) else None,
            "supernet_min_s": min(pair["supernet_wall"] for pair in mine),
            "child_min_s": min(pair["child_wall"] for pair in mine),
            "supernet_faults": median_or_none([pair["supernet_faults"] for pair in mine]),
            "child_faults": median_or_none([pair["child_faults"] for pair in mine]),
            "contended_pairs": sum(bool(pair["contended"]) for pair in mine),
            "pairs": len(mine),
        })
    return {"paths": rows, "pairs": pairs}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    low, middle, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, middle, high


def summarise_time(timing: dict[str, Any], batch: int) -> dict[str, Any]:
    """Headline: median pair ratio over the quiet pairs when there are enough of them.

    Contention from other jobs adds a large common time to both halves of a pair and pulls
    its ratio towards 1, so contended pairs would flatter the supernet; they are used only when
    too few quiet pairs exist (or contention cannot be observed), and then the verdict says the
    figure is unreliable.
    """
    rows, pairs = timing["paths"], timing["pairs"]
    known = all(pair["contended"] is not None for pair in pairs)
    quiet_pairs = [pair for pair in pairs if pair["contended"] is False]
    enough_quiet = known and len(quiet_pairs) >= max(MIN_QUIET_PAIRS, len(pairs) // 4)
    chosen = quiet_pairs if enough_quiet else pairs
    low, middle, high = quartiles([pair["ratio"] for pair in chosen])
    per_path = [
        statistics.median(pair["ratio"] for pair in chosen if pair["path"] == row["path"])
        for row in rows
        if any(pair["path"] == row["path"] for pair in chosen)
    ]
    supernet_total = sum(row["supernet_s"] for row in rows)
    child_total = sum(row["child_s"] for row in rows)
    quiet_supernet = [pair["supernet_wall"] for pair in quiet_pairs]
    quiet_child = [pair["child_wall"] for pair in quiet_pairs]
    return {
        "time_ratio": middle,
        "time_ratio_q1": low,
        "time_ratio_q3": high,
        "time_ratio_basis": "quiet pairs" if enough_quiet else "all pairs",
        "time_ratio_reliable": enough_quiet or not known,
        "time_ratio_worst_path": max(per_path),
        "time_ratio_all_pairs": statistics.median(pair["ratio"] for pair in pairs),
        "time_ratio_of_medians": supernet_total / child_total,
        "time_ratio_of_minima": sum(row["supernet_min_s"] for row in rows)
        / sum(row["child_min_s"] for row in rows),
        "pairs": len(pairs),
        "quiet_pairs": len(quiet_pairs),
        "contention_known": known,
        # Throughput from quiet steps where possible: contended times say nothing about spos.
        "supernet_img_per_s": batch / statistics.median(quiet_supernet) if quiet_supernet
        else batch * len(rows) / supernet_total,
        "child_img_per_s": batch / statistics.median(quiet_child) if quiet_child
        else batch * len(rows) / child_total,
    }


# --------------------------------------------------------------------------- memory
class MemoryProbe:
    """Current and peak memory of this process (CPU: resident set; CUDA: allocated bytes)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "cuda.max_memory_allocated" if device.type == "cuda" else "VmHWM/clear_refs"
        if device.type == "cpu" and not self._can_reset_peak():
            self.method = "ru_maxrss (peak since process start: peak not resettable here)"

    @staticmethod
    def _status_kib(field: str) -> int:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise OSError(f"{field} not in /proc/self/status")

    def _can_reset_peak(self) -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
            self._status_kib("VmHWM")
            return True
        except OSError:
            return False

    def current(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        if self.method.startswith("VmHWM"):
            return self._status_kib("VmRSS") * 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.method.startswith("VmHWM"):
            Path("/proc/self/clear_refs").write_text("5", encoding="ascii")

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        if self.method.startswith("VmHWM"):
            return self._status_kib("VmHWM") * 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: memory of the first two training steps of one model."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    space = SearchSpace.from_dict(spec["space"])
    arch = space.arch(spec["arch"])
    probe = MemoryProbe(device)
    images, labels = make_batch(space, spec["batch"], device, spec["seed"])

    # Pay one-off library allocations before the baseline, identically for (a) and (b).
    scratch = make_model("child", space, arch, device)
    make_step(scratch, arch, images, labels, make_optimizer(scratch))()
    del scratch
    gc.collect()

    model = make_model(spec["kind"], space, arch, device)
    optimizer = make_optimizer(model)
    step = make_step(model, arch, images, labels, optimizer)
    gc.collect()
    constructed = probe.current()
    result: dict[str, Any] = {"method": probe.method, "constructed_bytes": constructed}
    for name in ("first", "second"):
        before = probe.current()
        probe.reset_peak()
        step()
        peak = probe.peak()
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        result[f"{name}_before_bytes"] = before
        result[f"{name}_peak_bytes"] = peak
        result[f"{name}_step_bytes"] = peak - before
        result[f"{name}_after_bytes"] = probe.current()
    result["optimizer_state_bytes"] = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor)
    )
    result["parameter_bytes"] = parameter_bytes(model.parameters())
    result["buffer_bytes"] = sum(b.numel() * b.element_size() for b in model.buffers())
    return result


def run_memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    # The worker controls glibc itself: drop any MALLOC_* tuning of the parent's environment.
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    # A fixed threshold also turns off glibc's dynamic threshold, which would otherwise grow
    # after the first frees and keep later tensors on the heap (RSS would stop tracking them).
    env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", json.dumps(spec)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"memory worker failed ({spec['kind']}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure_memory(config: dict[str, Any], paths: list[Arch], args: argparse.Namespace) -> list[dict[str, Any]]:
    space = make_space(config)
    rows = []
    for index, arch in enumerate(paths):
        row: dict[str, Any] = {"path": index, "arch": arch.short(), "indices": format_indices(space, arch)}
        for kind in ("supernet", "child"):
            spec = {
                "kind": kind,
                "space": space.to_dict(),
                "arch": dict(arch.values),
                "batch": config["batch"],
                "threads": args.threads,
                "device": args.device,
                "seed": args.seed,
            }
            row[kind] = run_memory_worker(spec)
        row["step_ratio"] = row["supernet"]["first_step_bytes"] / row["child"]["first_step_bytes"]
        row["steady_ratio"] = row["supernet"]["second_step_bytes"] / row["child"]["second_step_bytes"]
        row["process_peak_ratio"] = (
            max(row["supernet"]["first_peak_bytes"], row["supernet"]["second_peak_bytes"])
            / max(row["child"]["first_peak_bytes"], row["child"]["second_peak_bytes"])
        )
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- report
def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def run_config(config: dict[str, Any], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    space = make_space(config)
    paths = sample_paths(space, args.paths, args.seed)
    supernet = build_supernet(space)
    supernet_parameters = parameter_bytes(supernet.parameters())
    path_parameters = [parameter_bytes(supernet.path_parameters(arch)) for arch in paths]
    del supernet

    print(f"\n== {config['name']}: {config['space']} at {space.layout['input_size']}x"
          f"{space.layout['input_size']}x{space.layout['in_channels']}, batch {config['batch']}, "
          f"{len(paths)} paths, {config['warmup']} warm-up + {config['repeats']} timed steps each",
          flush=True)
    started = time.perf_counter()
    timing = measure_time(config, paths, device, args.seed)
    time_seconds = time.perf_counter() - started
    print("\n".join(time_markdown(timing, summarise_time(timing, config["batch"]))), flush=True)
    memory = [] if args.no_memory else measure_memory(config, paths, args)
    memory_seconds = time.perf_counter() - started - time_seconds

    summary: dict[str, Any] = {
        **summarise_time(timing, config["batch"]),
        "supernet_parameter_bytes": supernet_parameters,
        "path_parameter_bytes_mean": statistics.mean(path_parameters),
        "extra_parameter_bytes_mean": supernet_parameters - statistics.mean(path_parameters),
        "seconds_time": time_seconds,
        "seconds_memory": memory_seconds,
    }
    if memory:
        summary.update({
            "memory_method": memory[0]["supernet"]["method"],
            "memory_step_ratio_geomean": geometric_mean([r["step_ratio"] for r in memory]),
            "memory_step_ratio_max": max(r["step_ratio"] for r in memory),
            "memory_steady_ratio_geomean": geometric_mean([r["steady_ratio"] for r in memory]),
            "memory_process_peak_ratio_geomean": geometric_mean([r["process_peak_ratio"] for r in memory]),
        })
    for row in memory:
        row["path_parameter_bytes"] = path_parameters[row["path"]]
    result = {
        "name": config["name"],
        "space": config["space"],
        "layout": dict(config["layout"]),
        "input_shape": [int(space.layout["in_channels"]), int(space.layout["input_size"]),
                        int(space.layout["input_size"])],
        "batch": config["batch"],
        "warmup": config["warmup"],
        "repeats": config["repeats"],
        "time": timing,
        "memory": memory,
        "summary": summary,
    }
    if memory:
        print("\n".join(memory_markdown(memory, summary)), flush=True)
    return result


def verdict(value: float, target: float) -> str:
    return "meets" if value <= target else "MISSES"


def config_markdown(result: dict[str, Any]) -> list[str]:
    c, h, w = result["input_shape"]
    lines = [
        f"## {result['name']}: `{result['space']}` at {h}x{w}x{c}, batch {result['batch']}",
        "",
        f"{len(result['time']['paths'])} random paths; {result['warmup']} warm-up + "
        f"{result['repeats']} timed training steps per path and model, interleaved.",
        "",
        *time_markdown(result["time"], result["summary"]),
    ]
    if result["memory"]:
        lines += memory_markdown(result["memory"], result["summary"])
    return lines


def time_markdown(timing: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    lines = [
        "| path | option indices | supernet s/step (median) | standalone s/step (median) "
        "| ratio of medians | pair-ratio median | pair-ratio median, quiet pairs | contended pairs "
        "| page faults/step sup. | page faults/step std. |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in timing["paths"]:
        lines.append(
            f"| {row['path']} | `{row['indices']}` | {row['supernet_s']:.4f} | {row['child_s']:.4f} | "
            f"{row['ratio_of_medians']:.3f} | {row['paired_ratio_median']:.3f} | "
            + ("-" if row["quiet_ratio_median"] is None else f"{row['quiet_ratio_median']:.3f}")
            + f" | {row['contended_pairs'] if summary['contention_known'] else '?'}/{row['pairs']} | "
            + " | ".join("-" if row[key] is None else f"{row[key]:.0f}"
                         for key in ("supernet_faults", "child_faults"))
            + " |"
        )
    if not summary["contention_known"]:
        contention = "CPU contention could not be observed (no /proc/pressure/cpu)."
    else:
        contention = (
            f"{summary['pairs'] - summary['quiet_pairs']} of {summary['pairs']} pairs were "
            f"contended (other tasks waited for a CPU during >= {CONTENDED_STALL:.0%} of a step, "
            f"Linux PSI); median over all pairs {summary['time_ratio_all_pairs']:.3f}."
        )
    if summary["time_ratio_reliable"]:
        outcome = verdict(summary["time_ratio"], TIME_TARGET)
    else:
        outcome = ("INCONCLUSIVE: too few uncontended pairs (contention pulls ratios towards 1); "
                   "rerun on an idle machine")
    lines += [
        "",
        f"**Time ratio supernet/standalone: {summary['time_ratio']:.3f}** (median pair ratio over "
        f"the {summary['quiet_pairs'] if summary['time_ratio_basis'] == 'quiet pairs' else summary['pairs']} "
        f"{summary['time_ratio_basis']}; quartiles {summary['time_ratio_q1']:.3f}-"
        f"{summary['time_ratio_q3']:.3f}; worst path {summary['time_ratio_worst_path']:.3f}); "
        f"target <= {TIME_TARGET}: {outcome}. {contention} Cross-checks over all steps: ratio of "
        f"summed per-path medians {summary['time_ratio_of_medians']:.3f}, of summed per-path "
        f"minima {summary['time_ratio_of_minima']:.3f}. Throughput (median quiet step): "
        f"supernet {summary['supernet_img_per_s']:.1f} img/s, standalone "
        f"{summary['child_img_per_s']:.1f} img/s.",
        "",
    ]
    return lines


def memory_markdown(memory: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    lines = [
        f"Memory ({summary['memory_method']}), MiB. *Step* = peak of the first training step "
        "minus memory after construction (activations + gradients + momentum created); "
        "*steady* = the same for the second step; *fixed* = memory after construction "
        "(weights, buffers, batch, runtime); *peak* = the process's peak.",
        "",
        "| path | step sup. | step std. | **step ratio** | steady sup. | steady std. | steady ratio "
        "| fixed sup. | fixed std. | peak sup. | peak std. | peak ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in memory:
        s, c = row["supernet"], row["child"]
        lines.append(
            f"| {row['path']} | {mib(s['first_step_bytes'])} | {mib(c['first_step_bytes'])} | "
            f"**{row['step_ratio']:.3f}** | {mib(s['second_step_bytes'])} | "
            f"{mib(c['second_step_bytes'])} | {row['steady_ratio']:.3f} | "
            f"{mib(s['constructed_bytes'])} | {mib(c['constructed_bytes'])} | "
            f"{mib(max(s['first_peak_bytes'], s['second_peak_bytes']))} | "
            f"{mib(max(c['first_peak_bytes'], c['second_peak_bytes']))} | "
            f"{row['process_peak_ratio']:.3f} |"
        )
    extra = summary["extra_parameter_bytes_mean"]
    lines += [
        "",
        f"**Step-memory ratio supernet/standalone: {summary['memory_step_ratio_geomean']:.3f}** "
        f"(geometric mean over paths; worst path {summary['memory_step_ratio_max']:.3f}); target "
        f"<= {MEMORY_TARGET}: {verdict(summary['memory_step_ratio_max'], MEMORY_TARGET)} (worst "
        f"path). Steady-state step ratio {summary['memory_steady_ratio_geomean']:.3f}; "
        f"whole-process peak ratio {summary['memory_process_peak_ratio_geomean']:.3f} (includes "
        "the fixed cost below).",
        "",
        f"Fixed cost of the supernet, by design: it holds every candidate's weights, "
        f"{mib(summary['supernet_parameter_bytes'])} MiB of parameters against "
        f"{mib(summary['path_parameter_bytes_mean'])} MiB on a path (mean), so "
        f"{mib(extra)} MiB for the unused candidates. Over a full run, momentum buffers appear "
        f"for every candidate once sampled, up to another {mib(extra)} MiB, which a one-path "
        "measurement cannot show. Neither grows with the batch size.",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return 0
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    malloc_env = {key: value for key, value in os.environ.items() if key.startswith("MALLOC_")}
    command = " ".join(
        [f"{key}={shlex.quote(value)}" for key, value in malloc_env.items()]
        + ["python"]
        + [shlex.quote(a) for a in [os.path.relpath(__file__), *(sys.argv[1:] if argv is None else argv)]]
    )
    environment = {
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": describe_device(device),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_average(),
        "malloc_env": malloc_env,
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
    }
    print(f"{environment['device_name']}, torch {environment['torch']}, {environment['threads']} "
          f"threads, device {device}; load average {environment['load_average_start']}", flush=True)
    started = time.perf_counter()
    results = [run_config(config, args, device) for config in configurations(args)]
    environment["load_average_end"] = load_average()
    environment["seconds"] = round(time.perf_counter() - started, 1)

    record = {"environment": environment, "targets": {"time_ratio": TIME_TARGET,
              "memory_ratio": MEMORY_TARGET}, "configs": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(record))
    print(f"\nwrote {args.out.with_suffix('.json')} and .md ({environment['seconds']} s)")
    return 0


def markdown(record: dict[str, Any]) -> str:
    env = record["environment"]
    lines = [
        "# Supernet overhead (SPEC section 8)",
        "",
        f"`{env['command']}`",
        "",
        f"{env['date']}; {env['device_name']} ({env['cpu_count']} CPUs visible), device "
        f"`{env['device']}`, torch {env['torch']}, {env['threads']} threads, Python {env['python']}. "
        f"Load average (1 min) {env['load_average_start']} at start, {env['load_average_end']} at "
        f"end; {env['seconds']} s in all. Allocator: "
        + (", ".join(f"`{k}={v}`" for k, v in env["malloc_env"].items()) or "glibc defaults")
        + (f", `LD_PRELOAD={env['ld_preload']}`" if env["ld_preload"] else "") + ".",
        "",
        "A training step = zero_grad, forward, cross-entropy (label smoothing 0.1), backward, SGD "
        "(momentum 0.9, weight decay 4e-5 on conv/linear weights via `make_sgd`), synthetic data, "
        "`channels_last`. (a) `supernet(x, arch)` with the stage's loop leaving `grad = None` on "
        "every off-path parameter; (b) `build_child(space, arch)` trained alone. Both models live "
        "in one process and their steps alternate in adjacent pairs (a b, b a, a b, ...), so "
        "load from other jobs on a shared machine falls on both halves of a pair alike: the "
        "headline is the median of the pairs' ratios, which stays fair while absolute times "
        "move. A pair is *contended* when other tasks waited for a CPU during >= "
        f"{CONTENDED_STALL:.0%} of either step (Linux PSI, `/proc/pressure/cpu`); the headline "
        "uses quiet pairs only, because contention adds a common time to both halves of a pair "
        "and pulls its ratio towards 1. *Page faults/step* (median minor faults) counts memory "
        "the kernel had to map in afresh during the step: glibc hands freed activation memory "
        "back to the OS (heap trimming, unmapping of large blocks) and the next step faults it "
        "in again, which costs kernel time that depends on the process's heap layout, not on "
        "the model's arithmetic. To measure without it, keep freed memory in the process: "
        "`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 python "
        "benchmarks/supernet_overhead.py --no-memory --out "
        "benchmarks/results/supernet_overhead.malloc_keep.json`.",
        "",
        "Memory: a fresh subprocess per (path, model). On CPU, peak RSS (VmHWM, reset through "
        "`/proc/self/clear_refs`) minus RSS before the step, with glibc's mmap threshold pinned "
        f"at {MMAP_THRESHOLD // 1024} KiB so freed tensors leave the resident set at once; one "
        "step of a throwaway child of the same path runs first so one-off library allocations "
        "(oneDNN, thread pools) are outside both measurements. On CUDA, "
        "`max_memory_allocated` minus `memory_allocated` the same way. The memory target "
        "refers to the step memory (one path's training memory: activations, gradients, "
        "optimiser state); the supernet's weights of unused candidates are a fixed cost, "
        "reported separately.",
        "",
    ]
    for result in record["configs"]:
        lines += config_markdown(result)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())
