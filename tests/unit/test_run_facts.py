"""The run directory carries the fixed facts of a run: ``space.json`` and ``cost_table.json``."""

import json

from spos.config import load_config
from spos.cost import CostModel
from spos.dist import Runtime
from spos.rundir import RunDir
from spos.space import make_rng
from spos.stages.common import build_space, run_costs, write_run_facts
from tests.conftest import SMOKE


def test_cost_table_is_read_from_the_run_and_written_for_old_runs(tmp_path, monkeypatch):
    space = build_space(load_config(SMOKE))
    runtime = Runtime.from_env("cpu")
    old, new = RunDir(tmp_path / "old"), RunDir(tmp_path / "new")
    old.path.mkdir()
    measured = run_costs(old, space, runtime)  # a run directory from before: measured, then written
    assert json.loads(old.cost_table.read_text()) == measured.to_dict()
    assert json.loads(old.space_json.read_text()) == space.to_dict()

    write_run_facts(new, space, measured, runtime)
    before = new.cost_table.stat().st_mtime_ns
    write_run_facts(new, space, measured, runtime)  # unchanged facts are not rewritten
    assert new.cost_table.stat().st_mtime_ns == before

    def no_measuring(space):
        raise AssertionError("the run's cost table should have been read")

    monkeypatch.setattr(CostModel, "from_space", staticmethod(no_measuring))
    stored = run_costs(new, space, runtime)
    arch = space.sample(make_rng(0, "x"))
    assert stored.costs(arch) == measured.costs(arch)


def test_a_cost_table_of_another_space_is_not_used(tmp_path):
    space = build_space(load_config(SMOKE))
    other = build_space(load_config(SMOKE, ["space.layout.head_channels=32"]))  # same choices
    runtime = Runtime.from_env("cpu")
    run = RunDir(tmp_path)
    write_run_facts(run, space, CostModel.from_space(space), runtime)
    arch = other.sample(make_rng(0, "x"))
    costs = run_costs(run, other, runtime).costs(arch)
    assert costs == CostModel.from_space(other).costs(arch) != CostModel.from_space(space).costs(arch)
