"""Channel search end to end: supernet training with the width warm-up, then search (issue 7)."""

from __future__ import annotations

import json

from spos.spaces.shufflenet_channel import WIDTH_SCALES
from tests.conftest import SMOKE, run_cli


def test_channel_space_pipeline_through_the_cli(tmp_path):
    overrides = [
        "space.name=shufflenet_channel_cifar",
        "threads=1",
        "supernet.steps=16",
        "supernet.panel.eval_every=0",
        "supernet.panel.size=1",
        "supernet.checkpoint_every=8",
        "supernet.sampler.warmup_steps=4",
        "supernet.sampler.widen_steps=8",
        "search.generations=1",
        "search.population_size=4",
        "search.top_k=2",
        "search.mutation_count=2",
        "search.crossover_count=2",
        "search.constraints=[{metric: flops, max: 250000}]",
    ]
    run_dir = tmp_path / "run"
    for stage in ("train-supernet", "search"):
        result = run_cli(stage, "--config", str(SMOKE), "--out", str(run_dir), *overrides, timeout=240)
        assert result.returncode == 0, result.stderr[-2000:]
    arch = json.loads((run_dir / "arch.json").read_text())
    assert arch["space"] == "shufflenet_channel_cifar"
    assert set(arch["arch"]) == {f"{kind}_{i:02d}" for kind in ("block", "width") for i in range(5)}
    assert arch["arch"]["width_00"] in WIDTH_SCALES
    summary = json.loads((run_dir / "summary.json").read_text())
    coverage = summary["supernet"]["coverage"]["width_00"]
    assert coverage["1.0"] >= 4 and sum(coverage.values()) == 16
