"""`spos latency-table` on spaces beyond the block search: NAS-Bench-201 (ops that do no work)
and a space whose layers read several choices (a quantised conv's bits and its block's width)."""

import json

import pytest

from spos import make_rng
from spos.latency import LatencyTable
from spos.space import create_space
from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("nb201", ["channels=4", "cells_per_stage=1"]),
        ("resnet20_quant_channel_cifar", ["stage_repeats=[1, 1]", "stage_channels=[8, 16]", "stage_strides=[1, 2]", "weight_bits=[4]", "activation_bits=[4, 8]", "input_size=8"]),  # fmt: skip
    ],
)
def test_latency_table_command_measures_and_validates(tmp_path, name, layout):
    out = tmp_path / "lut.json"
    args = ["--device", "cpu", "--threads", "1", "--repeats", "2", "--validate", "3"]
    result = run_cli("latency-table", "--space", name, "--out", str(out), *args, *layout)
    assert result.returncode == 0, result.stderr
    assert "validation on 3 random architectures: mean abs error" in result.stdout
    data = json.loads(out.read_text())
    space = create_space(name, **{k: json.loads(v) for k, v in (item.split("=", 1) for item in layout)})
    table = LatencyTable.load(out, space=space)
    assert table.latency(space.sample(make_rng(0, "latency-cli"))) > 0
    assert data["measurement"]["threads"] == 1
