"""The run-directory layout (DESIGN: each stage reads only files of the run directory)."""

import subprocess
import sys

from spos.rundir import RunDir, read_summary, update_summary
from spos.space import make_rng, seed_from


def test_run_dir_names_the_files_existing_runs_use(tmp_path):
    run = RunDir(tmp_path)
    names = {
        run.config: "config.yaml",
        run.summary: "summary.json",
        run.metrics: "metrics.jsonl",
        run.supernet_ckpt: "supernet.ckpt",
        run.supernet_step_ckpt(40): "supernet_step40.ckpt",
        run.arch_json: "arch.json",
        run.history: "history.jsonl",
        run.pareto: "pareto.json",
        run.search_state: "search_state.json",
        run.baseline.arch_json: "baseline/arch.json",
        run.child_ckpt: "retrain/child.ckpt",
        run.child_weights: "retrain/child.safetensors",
        run.retrain_metrics: "retrain/metrics.jsonl",
        run.export_dir: "export",
        run.rank_scores: "rank/scores.jsonl",
        run.rank_json: "rank/rank.json",
        run.space_json: "space.json",
        run.cost_table: "cost_table.json",
    }
    for path, name in names.items():
        assert path == tmp_path / name
    assert RunDir(str(tmp_path)) == RunDir(run) == run


def test_summary_sections_are_kept_across_stages(tmp_path):
    assert read_summary(tmp_path) == {}
    update_summary(tmp_path, "supernet", {"steps": 3})
    update_summary(RunDir(tmp_path), "search", {"best_score": 1.5})
    assert read_summary(tmp_path) == {"supernet": {"steps": 3}, "search": {"best_score": 1.5}}
    (tmp_path / "summary.json").write_text("{cut")
    assert read_summary(tmp_path) == {}


def test_seed_from_follows_make_rng_and_rundir_imports_no_torch():
    assert seed_from(3, "supernet-init") == make_rng(3, "supernet-init").getrandbits(63)
    assert seed_from(3, "supernet-init") != seed_from(3, "supernet-data")
    code = "import sys, spos.rundir, spos.space; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
