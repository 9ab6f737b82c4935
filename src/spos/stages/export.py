"""Stage 4: export the retrained network as a self-contained, verified bundle (SPEC section 5).

Recipe: load ``retrain/child.ckpt`` (it names its space, architecture and preprocessing),
rebuild the child network in eval mode on the CPU, and write ``export/``:

* ``arch.json`` - the architecture, versioned and naming its space, with its costs;
* ``model.safetensors`` - the weights (no pickle), the space and arch in its metadata;
* ``model.onnx`` - ONNX (opset 17, dynamic batch axis), input ``images``, output ``logits``;
* ``model.pt2`` - a ``torch.export`` program (the successor of TorchScript, whose
  ``torch.jit.trace`` is deprecated in current PyTorch), dynamic batch axis;
* ``preprocess.json`` and ``README.md`` - the input size, channels and normalisation, and how
  to load the model and predict with ONNX Runtime or ``torch.export.load``.

Every exported program is loaded back and compared with the PyTorch model on a fixed random
batch and on a batch of real test images, at batch sizes other than the one traced with; the
largest absolute difference of the logits is recorded in the ``export`` section of
``summary.json`` and must not exceed :data:`TOLERANCE`. The bundle is assembled in a
temporary directory and only moved into place once every check has passed, so ``export/``
never holds an unverified or half-written model.

Export always runs on the CPU: the artefacts are device-neutral and ONNX Runtime's CPU
provider is the reference they are checked against.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spos.arch import Arch
from spos.checkpoint import load_checkpoint, state_dict_sha256
from spos.childnet import build_child
from spos.config import RunConfig
from spos.cost import CostModel
from spos.data import LazyImageFolder
from spos.data.prepare import load_test_split
from spos.dist import Runtime
from spos.errors import CheckpointError, ConfigError, DataError, SposError
from spos.io import atomic_write_text, write_json
from spos.rundir import RunDir, update_summary
from spos.space import SearchSpace
from spos.stages.common import run_costs

__all__ = ["run", "TOLERANCE", "ONNX_OPSET"]

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
"""Largest allowed absolute difference between exported and PyTorch logits."""
ONNX_OPSET = 17
"""ONNX opset of ``model.onnx``."""

_TRACE_BATCH = 2  # torch.export specialises sizes 0 and 1, so trace with 2 and check others
_RANDOM_BATCH = 3
_REAL_BATCH = 16


def _load_child(checkpoint_path: Path) -> tuple[nn.Module, SearchSpace, Arch, dict[str, Any]]:
    """The finished child network of a retrain checkpoint (eval mode, CPU) and its metadata."""
    if not checkpoint_path.is_file():
        raise CheckpointError(
            f"{checkpoint_path} does not exist; run `spos retrain` in this run directory first"
        )
    payload = load_checkpoint(checkpoint_path, kind="child", map_location="cpu")
    state = payload["state"]
    if not state.get("finished"):
        raise CheckpointError(
            f"{checkpoint_path} is from an unfinished retraining (step {payload['step']} of "
            f"{state.get('total_steps')}); rerun `spos retrain` to finish it, then export"
        )
    space = SearchSpace.from_dict(payload["space"])
    arch = space.validate(Arch.from_json(state["arch"]))
    child = build_child(space, arch)
    child.load_state_dict(state["model"])
    child.eval()
    return child, space, arch, dict(state["preprocess"])


def _normalise(images: torch.Tensor, preprocess: dict[str, Any]) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` -> float32 normalised exactly as ``preprocess.json`` says."""
    mean = torch.tensor(preprocess["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(preprocess["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean) / std


def _check_batches(
    config: RunConfig, preprocess: dict[str, Any], input_shape: tuple[int, int, int]
) -> dict[str, torch.Tensor]:
    """A fixed random batch and, when the data are at hand, a batch of real test images."""
    generator = torch.Generator().manual_seed(0)
    batches = {"random": torch.randn(_RANDOM_BATCH, *input_shape, generator=generator)}
    try:
        test = load_test_split(config.data, seed=config.seed)
    except DataError as exc:  # exporting away from the data: the random batch still checks
        log.warning("no test images to check the export on (%s); using random inputs only", exc)
        return batches
    if isinstance(test, LazyImageFolder):  # data.lazy: decode just the images needed
        count = min(_REAL_BATCH, len(test))
        images = test.load_batch(range(count), size=input_shape[1], train=False)
    else:
        images = test.images[:_REAL_BATCH]
    if tuple(images.shape[1:]) != input_shape:
        raise ConfigError(
            f"the config's test images have shape {tuple(images.shape[1:])} but the "
            f"retrained model takes {input_shape}; export with the run's own config.yaml"
        )
    batches["test"] = _normalise(images, preprocess)
    return batches


def _max_abs_diff(predict, reference: dict[str, torch.Tensor], batches: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for name, inputs in batches.items():
        outputs = torch.as_tensor(predict(inputs))
        if outputs.shape != reference[name].shape:
            raise SposError(
                f"exported model returned shape {tuple(outputs.shape)} for the {name} batch, "
                f"expected {tuple(reference[name].shape)}"
            )
        worst = max(worst, float((outputs - reference[name]).abs().max()))
    return worst


def _export_onnx(child: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ``model.onnx``; returns which exporter was used.

    The TorchScript-based exporter comes first: it needs nothing beyond torch and handles
    every op the child uses in eval mode. The ``torch.export``-based one (``dynamo=True``)
    needs ``onnxscript`` and is the fallback for a torch without the legacy exporter.
    """
    common = dict(
        input_names=["images"],
        output_names=["logits"],
        opset_version=ONNX_OPSET,
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    has_dynamo_flag = "dynamo" in inspect.signature(torch.onnx.export).parameters
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*will be removed.*")
            extra = {"dynamo": False} if has_dynamo_flag else {}
            torch.onnx.export(child, (example,), str(path), **common, **extra)
        return "torchscript"
    except Exception as legacy_error:  # noqa: BLE001 - try the other exporter, then report both
        if not has_dynamo_flag or importlib.util.find_spec("onnxscript") is None:
            raise SposError(
                f"ONNX export to {path} failed ({legacy_error}); installing onnxscript enables "
                "torch's newer exporter"
            ) from None
        log.warning("legacy ONNX exporter failed (%s); trying the dynamo exporter", legacy_error)
        torch.onnx.export(child, (example,), str(path), dynamo=True, **common)
        return "dynamo"


def _verify_onnx(path: Path, reference: dict[str, torch.Tensor], batches: dict[str, torch.Tensor]) -> float:
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _max_abs_diff(
        lambda inputs: session.run(["logits"], {"images": inputs.numpy()})[0], reference, batches
    )


def _has_fake_quant(child: nn.Module) -> bool:
    from spos.quant import LsqQuantizer

    return any(isinstance(module, LsqQuantizer) for module in child.modules())


def _onnx_rounding_flips(
    path: Path, reference: dict[str, torch.Tensor], batches: dict[str, torch.Tensor]
) -> dict[str, Any] | None:
    """Per-image check of a fake-quantised model's ONNX program; ``None`` if it fails.

    Fake quantisation rounds activations; ONNX Runtime's convolutions sum in another order
    than PyTorch's (differences of ~1e-7), so an activation lying that close to a rounding
    boundary lands on the neighbouring level and that image's logits move by far more than
    :data:`TOLERANCE`. Such flips are rare and touch few images; a wrong export touches all.
    The check passes when at most a quarter of the images exceed the tolerance and the
    median image's largest difference is within it (recorded in ``summary.json``).
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs: list[float] = []
    for name, inputs in batches.items():
        outputs = torch.as_tensor(session.run(["logits"], {"images": inputs.numpy()})[0])
        diffs += (outputs - reference[name]).abs().flatten(1).max(1).values.tolist()
    over = sum(not diff <= TOLERANCE for diff in diffs)
    median = sorted(diffs)[len(diffs) // 2]
    if over > len(diffs) // 4 or not median <= TOLERANCE:
        return None
    return {"images": len(diffs), "images_over_tolerance": over, "median_max_abs_diff": median, "max_abs_diff": max(diffs)}


def _export_program(
    child: nn.Module,
    example: torch.Tensor,
    path: Path,
    reference: dict[str, torch.Tensor],
    batches: dict[str, torch.Tensor],
) -> float:
    """Write a ``torch.export`` program with a dynamic batch axis; load it back and check it."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(child, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        return _max_abs_diff(loaded, reference, batches)


def _readme(
    preprocess: dict[str, Any],
    arch: Arch,
    input_shape: tuple[int, int, int],
    *,
    checked: str,
    onnx_diff: float,
    program_diff: float,
) -> str:
    channels, height, width = input_shape
    mean = ", ".join(f"{value:.6f}" for value in preprocess["mean"])
    std = ", ".join(f"{value:.6f}" for value in preprocess["std"])
    colour = "RGB" if channels == 3 else ("greyscale" if channels == 1 else f"{channels}-channel")
    padding = (
        f"The training images were zero-padded centrally to {preprocess['pad_to']}x"
        f"{preprocess['pad_to']}; pad smaller images the same way.\n\n"
        if preprocess.get("pad_to")
        else ""
    )
    return f"""# Exported SPOS network

Architecture `{arch.short()}` of space `{arch.space}` v{arch.version} (`arch.json`),
retrained by `spos retrain` and exported by `spos export`.

| file | what |
| --- | --- |
| `model.onnx` | ONNX, opset {ONNX_OPSET}; input `images`, output `logits`, dynamic batch axis |
| `model.pt2` | `torch.export` program (load with `torch.export.load`), dynamic batch axis |
| `model.safetensors` | weights; the space and architecture are in its metadata |
| `arch.json` | the architecture, its space and its costs |
| `preprocess.json` | input shape and normalisation (below) |

## Input

A float32 batch of shape `(N, {channels}, {height}, {width})` (NCHW, {colour}), each pixel
`(value / 255 - mean) / std` per channel, with

- mean = [{mean}]
- std = [{std}]

{padding}The output is `(N, {len(preprocess["classes"])})` logits; `preprocess.json` lists the
class names in order. Both programs were checked against the PyTorch model on {checked}:
the logits differ by at most {onnx_diff:.2g} (ONNX Runtime) and {program_diff:.2g} (`torch.export`).

## Predict with ONNX Runtime

```python
import json
import numpy as np
import onnxruntime

pre = json.load(open("preprocess.json"))
mean = np.array(pre["mean"], np.float32).reshape(1, -1, 1, 1)
std = np.array(pre["std"], np.float32).reshape(1, -1, 1, 1)
images = np.zeros((8, {channels}, {height}, {width}), np.uint8)  # your uint8 NCHW batch
inputs = ((images.astype(np.float32) / 255 - mean) / std).astype(np.float32)
session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
logits = session.run(["logits"], {{"images": inputs}})[0]
print([pre["classes"][i] for i in logits.argmax(1)])
```

## Predict with torch.export

```python
import json
import torch

pre = json.load(open("preprocess.json"))
mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
std = torch.tensor(pre["std"]).view(1, -1, 1, 1)
images = torch.zeros(8, {channels}, {height}, {width}, dtype=torch.uint8)  # your uint8 NCHW batch
model = torch.export.load("model.pt2").module()
with torch.no_grad():
    logits = model((images.float() / 255 - mean) / std)
print([pre["classes"][i] for i in logits.argmax(1)])
```

## Rebuild the PyTorch module (for fine-tuning)

```python
import json
from safetensors import safe_open
from safetensors.torch import load_file
from spos.arch import Arch
from spos.childnet import build_child
from spos.space import SearchSpace

with safe_open("model.safetensors", "pt") as handle:
    meta = handle.metadata()
space = SearchSpace.from_dict(json.loads(meta["space"]))
model = build_child(space, Arch.from_json(json.loads(meta["arch"])))
model.load_state_dict(load_file("model.safetensors"))
```
"""


def _write_bundle(
    folder: Path,
    config: RunConfig,
    child: nn.Module,
    space: SearchSpace,
    arch: Arch,
    preprocess: dict[str, Any],
    costs: CostModel,
) -> dict[str, Any]:
    """Write and verify every file of the bundle into ``folder``; return the figures."""
    from safetensors.torch import save_file

    input_shape = (int(preprocess["channels"]), int(preprocess["image_size"]), int(preprocess["image_size"]))
    batches = _check_batches(config, preprocess, input_shape)
    with torch.no_grad():
        reference = {name: child(inputs) for name, inputs in batches.items()}
    example = torch.randn(_TRACE_BATCH, *input_shape, generator=torch.Generator().manual_seed(1))

    arch.save(folder / "arch.json", costs=costs.costs(arch))
    tensors = {key: value.detach().contiguous() for key, value in child.state_dict().items()}
    save_file(
        tensors,
        str(folder / "model.safetensors"),
        metadata={"format": "pt", "space": json.dumps(space.to_dict()), "arch": json.dumps(arch.to_json())},
    )
    exporter = _export_onnx(child, example, folder / "model.onnx")
    onnx_diff = _verify_onnx(folder / "model.onnx", reference, batches)
    program_diff = _export_program(child, example, folder / "model.pt2", reference, batches)
    onnx_flips = None
    if not onnx_diff <= TOLERANCE and _has_fake_quant(child):
        onnx_flips = _onnx_rounding_flips(folder / "model.onnx", reference, batches)
        if onnx_flips is not None:
            log.warning(
                "model.onnx: %d of %d checked images differ by more than %g, as expected of "
                "fake quantisation where ONNX Runtime's convolutions round an activation to the "
                "neighbouring level; the other images agree within tolerance",
                onnx_flips["images_over_tolerance"], onnx_flips["images"], TOLERANCE,
            )
    for name, diff in (("model.onnx", onnx_diff), ("model.pt2", program_diff)):
        if name == "model.onnx" and onnx_flips is not None:
            continue  # checked image by image above
        if not diff <= TOLERANCE:  # also catches NaN
            raise SposError(
                f"exported {name} differs from the PyTorch model by up to {diff:.3g} (tolerance "
                f"{TOLERANCE}); the export is wrong, please report it with the run's arch.json"
            )
    write_json(
        folder / "preprocess.json",
        {
            "input_name": "images",
            "output_name": "logits",
            "input_shape": ["batch", *input_shape],
            "layout": "NCHW",
            "dtype": "float32",
            "channels": input_shape[0],
            "image_size": input_shape[1],
            "scale": 255.0,
            "mean": preprocess["mean"],
            "std": preprocess["std"],
            "formula": "inputs = (pixels / scale - mean) / std, per channel",
            "pad_to": preprocess.get("pad_to"),
            "classes": preprocess["classes"],
        },
    )
    checked = " and ".join(f"{len(inputs)} {name} images" for name, inputs in batches.items())
    atomic_write_text(
        folder / "README.md",
        _readme(
            preprocess, arch, input_shape, checked=checked, onnx_diff=onnx_diff, program_diff=program_diff
        ),
    )
    sizes = {
        f"{name.replace('model.', '').replace('.', '_')}_bytes": (folder / name).stat().st_size
        for name in ("model.onnx", "model.pt2", "model.safetensors")
    }
    return {
        "onnx_max_abs_diff": onnx_diff,
        "onnx_fake_quant_rounding_flips": onnx_flips,
        "torch_export_max_abs_diff": program_diff,
        "tolerance": TOLERANCE,
        "checked_images": sum(len(inputs) for inputs in batches.values()),
        "checked_on": sorted(batches),
        "onnx_opset": ONNX_OPSET,
        "onnx_exporter": exporter,
        "input_shape": ["batch", *input_shape],
        **sizes,
        "weights_sha256": state_dict_sha256(child.state_dict()),
    }


def run(config: RunConfig, run_dir: Path, *, runtime: Runtime) -> dict[str, Any]:
    """Export the retrained network of ``run_dir`` to ``run_dir/export/``; return the summary.

    Args:
        config: The run config (used to read real test images for the numerical check).
        run_dir: The run directory holding ``retrain/child.ckpt``.
        runtime: Only the main rank writes; export itself runs on the CPU.

    Returns:
        The ``export`` section of ``summary.json``.

    Raises:
        CheckpointError: The retrain checkpoint is missing, corrupted or unfinished.
        SposError: ONNX support is not installed, or an exported model disagrees with the
            PyTorch model by more than :data:`TOLERANCE`.
    """
    run = RunDir(run_dir)
    child, space, arch, preprocess = _load_child(run.child_ckpt)
    for module in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            raise SposError(
                f"export needs the {module!r} package to write and check model.onnx; install "
                "it with `pip install 'spos[export]'`"
            )
    summary: dict[str, Any] = {}
    if runtime.is_main:
        target = run.export_dir
        staging = Path(tempfile.mkdtemp(dir=run.path, prefix=f".{target.name}."))
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the bundle is meant to be shared
        try:
            costs = run_costs(run, space, runtime)
            summary = _write_bundle(staging, config, child, space, arch, preprocess, costs)
            for path in staging.iterdir():
                path.chmod(0o644)  # atomic writes create private files
            if target.exists():
                retired = Path(tempfile.mkdtemp(dir=run.path, prefix=f".{target.name}.old."))
                target.rename(retired / target.name)
                staging.rename(target)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        summary["files"] = sorted(path.name for path in target.iterdir())
        update_summary(run, "export", summary)
        log.info("exported %s to %s", arch.short(), target)
    summary = runtime.broadcast_object(summary)
    runtime.barrier()
    return summary
