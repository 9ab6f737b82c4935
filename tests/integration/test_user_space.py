"""A user-defined space (examples/my_space.py) gets supernet training and search unchanged."""

import json

from spos.config import load_config
from spos.dist import Runtime
from spos.stages import search, train_supernet
from tests.conftest import ROOT, SMOKE


def test_user_defined_space_trains_and_searches(tmp_path):
    config = load_config(
        SMOKE,
        [
            f"space.plugins=[{ROOT / 'examples' / 'my_space.py'}]",
            "space.name=my_space",
            "space.layout={}",
            "supernet.steps=20",
            "supernet.panel.eval_every=0",
        ],
    )
    runtime = Runtime.from_env("cpu", threads=2)
    summary = train_supernet.run(config, tmp_path, runtime=runtime)
    assert summary["space"] == "my_space" and len(summary["coverage"]) == 6
    assert sum(summary["coverage"]["layer_0"].values()) == 20
    result = search.run(config, tmp_path, runtime=runtime)
    arch = json.loads((tmp_path / "arch.json").read_text())
    assert arch["space"] == "my_space" and set(arch["arch"]) == {f"layer_{i}" for i in range(6)}
    assert result["evaluations"] == 12
