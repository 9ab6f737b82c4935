"""Bit widths combined with channel choices end to end: `spos run` on a tiny ResNet space
(supernet with the width warm-up, search under BitOps, retrain from inherited weights, export)."""

from __future__ import annotations

import json

from safetensors.torch import load_file

from spos import create_space
from spos.cost import CostModel
from spos.spaces.resnet_quant import scaled_width
from tests.conftest import SMOKE, run_cli

LAYOUT = {"stage_repeats": [1, 1, 1], "stage_channels": [8, 16, 16]}


def test_quant_channel_run_searches_retrains_and_exports_at_the_chosen_widths(tmp_path):
    space = create_space(
        "resnet20_quant_channel_cifar", **LAYOUT, input_size=16, width_scales=[0.5, 1.0]
    )
    costs = CostModel.from_space(space)
    low, high = costs.bounds("bitops")
    limit = int(low + 0.4 * (high - low))
    run_dir = tmp_path / "run"
    result = run_cli(
        "run", "--config", str(SMOKE), "--out", str(run_dir), "threads=1",
        "space.name=resnet20_quant_channel_cifar", f"space.layout={json.dumps(LAYOUT)}",
        "space.layout.width_scales=[0.5, 1.0]",
        "supernet.steps=12", "supernet.panel.eval_every=0", "supernet.panel.size=0",
        "supernet.checkpoint_every=12", "supernet.sampler.warmup_steps=4",
        "search.generations=1", "search.population_size=6", "search.recalibrate_images=32",
        "search.val_images=32", f"search.constraints=[{{metric: bitops, max: {limit}}}]",
        "retrain.epochs=1", "retrain.init=inherit",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((run_dir / "arch.json").read_text())
    arch = space.arch([found["arch"][label] for label in space.labels])
    assert costs.cost(arch, "bitops") == found["costs"]["bitops"] <= limit
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["retrain"]["arch"] == arch.short() and summary["retrain"]["init"] == "inherit"
    assert summary["retrain"]["flops"] == costs.flops(arch)
    assert summary["export"]["torch_export_max_abs_diff"] <= summary["export"]["tolerance"]
    # the exported child holds each block's convs at the chosen middle width
    weights = load_file(str(run_dir / "export" / "model.safetensors"))
    for index, (out_channels, stage) in enumerate(zip(LAYOUT["stage_channels"], (1, 2, 3), strict=True)):
        mid = scaled_width(out_channels, arch[f"width_s{stage}b0"])
        assert weights[f"blocks.{index}.conv1.conv.weight"].shape[0] == mid
        assert weights[f"blocks.{index}.conv2.conv.weight"].shape[:2] == (out_channels, mid)
