"""Typed config: YAML + dotted overrides; unknown keys, wrong types, bad ranges are errors."""

from pathlib import Path

import pytest
import yaml

from spos.config import RunConfig, apply_overrides, config_to_dict, load_config, save_config
from spos.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)


def test_shipped_configs_exist():
    assert {"default.yaml", "smoke.yaml"} <= {p.name for p in CONFIGS}


def test_overrides_parse_types_and_nest(tmp_path):
    config = load_config(None, ["supernet.lr=0.05", "supernet.nesterov=true", "data.root=/x", "threads=2"])
    assert config.supernet.lr == 0.05 and config.supernet.nesterov is True
    assert config.data.root == "/x" and config.threads == 2
    constrained = load_config(None, ["search.constraints=[{metric: flops, max: 3e8}]"])
    assert constrained.search.constraints[0].max == 3e8


@pytest.mark.parametrize(
    "override, message",
    [
        ("supernet.lrr=0.1", r"unknown config key\(s\) \['supernet.lrr'\]"),
        ("supernet.steps=ten", "'supernet.steps' must be an integer"),
        ("supernet.steps=0", "'supernet.steps' must be at least 1"),
        ("supernet.sampler=greedy", "'supernet.sampler' must be one of"),
        ("supernet.momentum=1.5", r"'supernet.momentum' must be in \[0, 1\)"),
        ("data.dataset=mnist", "'data.dataset' must be one of"),
        ("search.top_k=100", "'search.top_k' must be <= population_size"),
        ("device=tpu", "'device' must be auto, cpu, cuda"),
        ("supernet", "must look like key=value"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("supernet: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["supernet.steps=7", "search.constraints=[{metric: params, min: 10}]"])
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert config_to_dict(again) == config_to_dict(config)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["supernet"]["steps"] == 7


def test_apply_overrides_does_not_mutate_input():
    data = {"supernet": {"lr": 1.0}}
    apply_overrides(data, ["supernet.lr=2"])
    assert data == {"supernet": {"lr": 1.0}}


def test_distinct_networks_needs_a_sampler_that_can_reject_labelings():
    with pytest.raises(ConfigError, match="'supernet.distinct_networks' works with sampler=uniform or constraint"):
        load_config(None, ["supernet.sampler=fair", "supernet.distinct_networks=true"])
    assert load_config(None, ["supernet.distinct_networks=true"]).supernet.distinct_networks
