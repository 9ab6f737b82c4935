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
    config = load_config(None, ["supernet.optim.lr=0.05", "supernet.optim.nesterov=true", "data.root=/x", "threads=2"])
    assert config.supernet.optim.lr == 0.05 and config.supernet.optim.nesterov is True
    assert config.data.root == "/x" and config.threads == 2
    constrained = load_config(None, ["search.constraints=[{metric: flops, max: 3e8}]"])
    assert constrained.search.constraints[0].max == 3e8


@pytest.mark.parametrize(
    "override, message",
    [
        ("supernet.lrr=0.1", r"unknown config key\(s\) \['supernet.lrr'\]"),
        ("supernet.steps=ten", "'supernet.steps' must be an integer"),
        ("supernet.steps=0", "'supernet.steps' must be at least 1"),
        ("supernet.sampler.name=greedy", "'supernet.sampler.name' must be one of"),
        ("supernet.optim.momentum=1.5", r"'supernet.optim.momentum' must be in \[0, 1\)"),
        ("supernet.complexity_lr_power=0.5", r"'supernet.complexity_lr_power' must be between 1 \(off\) and 10"),
        ("supernet.sampler.uniform_share=1.5", "'supernet.sampler.uniform_share' must be between 0 and 1"),
        ("supernet.sampler.gradnorm_decay=1", r"'supernet.sampler.gradnorm_decay' must be in \[0, 1\)"),
        ("retrain.optim.momentum=-0.1", r"'retrain.optim.momentum' must be in \[0, 1\)"),
        ("retrain.optim.weight_decay=-1", "'retrain.optim.weight_decay' must be >= 0"),
        ("retrain.optim.warmup_steps=-5", "'retrain.optim.warmup_steps' must be >= 0"),
        ("supernet.optim.warmup_steps=5000", "'supernet.optim.warmup_steps' must be below the 3000 steps"),
        ("supernet.optim.lr=inf", "'supernet.optim.lr' must be a finite number"),
        ("supernet.optim.lr=1e400", "'supernet.optim.lr' must be a finite number"),
        ("supernet.optim.lr=.nan", "'supernet.optim.lr' must be a finite number"),
        ("ground_truth.path=/x.csv", "'ground_truth.column' must name the accuracy column"),
        ("runtime.log_every=0", "'runtime.log_every' must be at least 1"),
        ("runtime.dist_timeout_s=0", "'runtime.dist_timeout_s' must be positive"),
        ("runtime.dist_backend=mpi", "'runtime.dist_backend' must be one of"),
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
    apply_overrides(data, ["supernet.optim.lr=2"])
    assert data == {"supernet": {"lr": 1.0}}


def test_distinct_networks_needs_a_sampler_that_can_reject_labelings():
    with pytest.raises(ConfigError, match="'supernet.sampler.distinct_networks' works with name=uniform or constraint"):
        load_config(None, ["supernet.sampler.name=fair", "supernet.sampler.distinct_networks=true"])
    assert load_config(None, ["supernet.sampler.distinct_networks=true"]).supernet.sampler.distinct_networks


@pytest.mark.parametrize(
    "override, new_place",
    [
        ("supernet.lr=0.1", "supernet.optim.lr"),
        ("retrain.warmup_steps=10", "retrain.optim.warmup_steps"),
        ("supernet.sampler=fair", "supernet.sampler.name"),
        ("supernet.sampler_max_tries=5", "supernet.sampler.max_tries"),
        ("supernet.choice_warmup_steps=5", "supernet.sampler.warmup_steps"),
        ("supernet.panel_size=3", "supernet.panel.size"),
        ("supernet.rank_ground_truth=x.csv", "ground_truth.path"),
        ("supernet.channels_last=false", "runtime.channels_last"),
        ("retrain.amp=bf16", "runtime.amp"),
    ],
)
def test_an_old_flat_key_names_its_new_place(override, new_place):
    with pytest.raises(ConfigError, match=f"has moved to '{new_place}'"):
        load_config(None, [override])


def test_one_optimiser_section_serves_both_stages():
    config = load_config(None, ["supernet.optim.lr=0.3", "retrain.optim.lr=0.05", "retrain.optim.grad_clip=5"])
    assert type(config.supernet.optim) is type(config.retrain.optim)
    assert (config.supernet.optim.lr, config.retrain.optim.lr, config.retrain.optim.grad_clip) == (0.3, 0.05, 5.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("supernet:\n  steps: 5\nsupernet:\n  steps: 6\n", "'supernet' appears twice"),
        ("a: &x [1, 2]\nb: *x\n", "YAML aliases"),
        ("supernet: {steps: 5\n", "not valid YAML"),
        ("- 1\n- 2\n", "mapping at the top level"),
    ],
)
def test_bad_config_files_get_one_clear_error(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_unreadable_config_paths(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes(b"seed: 0  # caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_values_quoted_in_errors_are_truncated():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["supernet.steps=" + "x" * 5000])
    assert len(str(info.value)) < 300


def test_the_default_estimator_is_the_papers_supernet_score():
    estimator = load_config(None).search.estimator
    assert estimator.weights == {"supernet": 1.0} and estimator.is_paper
    assert load_config(None, ["search.estimator.weights={supernet: 2}"]).search.estimator.is_paper
    mixed = load_config(None, ["search.estimator.weights={supernet: 1, flops: -0.5, naswot: 0}"]).search.estimator
    assert not mixed.is_paper and mixed.weights == {"supernet": 1.0, "flops": -0.5, "naswot": 0.0}


@pytest.mark.parametrize(
    "weights, message",
    [
        ("{supernet: 1, zen: 1}", "unknown signal(s) ['zen']; valid signals: ['supernet', "),
        ("{}", "must name at least one signal"),
        ("{supernet: 0, flops: 0}", "at least one signal a non-zero weight"),
        ("{supernet: .nan}", "must be a finite number"),
        ("{latency: -1}", "needs search.latency_table"),
    ],
)
def test_bad_estimator_weights_get_one_clear_error(weights, message):
    with pytest.raises(ConfigError, match="search.estimator.weights") as error:
        load_config(None, [f"search.estimator.weights={weights}"])
    assert message in str(error.value)
    if "valid signals" in message:
        for name in ("naswot", "synflow", "jacob_cov", "grad_norm", "snip", "flops", "params"):
            assert f"'{name}'" in str(error.value)


def test_estimator_pool_and_batch_sizes_are_checked():
    with pytest.raises(ConfigError, match="search.estimator.pool_size"):
        load_config(None, ["search.estimator.pool_size=1"])
    with pytest.raises(ConfigError, match="search.estimator.proxy_batch"):
        load_config(None, ["search.estimator.proxy_batch=1"])


def test_final_rescoring_is_refused_with_a_combined_estimator():
    with pytest.raises(ConfigError, match="search.final_top_k"):
        load_config(None, ["search.final_top_k=5", "search.estimator.weights={supernet: 1, flops: -1}"])
    assert load_config(None, ["search.final_top_k=5"]).search.final_top_k == 5


def test_checkpoint_score_ensembling_is_off_by_default_and_takes_kept_steps():
    assert load_config(None).search.score_checkpoints == []
    config = load_config(None, ["supernet.keep_checkpoints=[1000, 2000]", "search.score_checkpoints=[2000, 1000]"])
    assert config.search.score_checkpoints == [2000, 1000]


@pytest.mark.parametrize(
    "overrides, needles",
    [
        # A step that supernet training does not keep: both keys and the fix are named.
        (["supernet.keep_checkpoints=[1000]", "search.score_checkpoints=[1500]"],
         ["'search.score_checkpoints'", "[1500]", "supernet.keep_checkpoints", "train the supernet"]),
        (["search.score_checkpoints=[1000]"], ["'search.score_checkpoints'", "supernet.keep_checkpoints ([])"]),
        # The final supernet is always scored: listing its step would count it twice.
        (["supernet.steps=3000", "supernet.keep_checkpoints=[3000]", "search.score_checkpoints=[3000]"],
         ["'search.score_checkpoints'", "final step (3000)", "always scored"]),
        (["supernet.keep_checkpoints=[1000]", "search.score_checkpoints=[1000, 1000]"],
         ["'search.score_checkpoints'", "twice"]),
        (["supernet.keep_checkpoints=[1000]", "search.score_checkpoints=[1000]", "search.final_top_k=3",
          "search.final_finetune_steps=5"], ["'search.score_checkpoints'", "search.final_finetune_steps"]),
        (["supernet.keep_checkpoints=[1000]", "search.score_checkpoints=[1000]",
          "search.estimator.weights={naswot: 1, flops: -1}"], ["'search.score_checkpoints'", "search.estimator.weights"]),
    ],
)  # fmt: skip
def test_bad_score_checkpoints_name_the_keys_and_the_fix(overrides, needles):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    for needle in needles:
        assert needle in str(error.value)
