"""Import boundaries of DESIGN: nothing imports a stage but the CLI."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "spos"
STAGES = SRC / "stages"
SHARED = {"common", "__init__"}


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            # ``from spos.stages import search`` imports the stage module itself.
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def _stage_imports(path: Path) -> set[str]:
    return {
        module.split(".")[2]
        for module in _imported_modules(path)
        if module.startswith("spos.stages.") and module.split(".")[2] not in SHARED
    }


def test_no_stage_imports_another_stage():
    stages = sorted(STAGES.glob("*.py"))
    assert {path.stem for path in stages} >= {"train_supernet", "search", "retrain", "export", "rank"}
    offenders = {
        path.name: sorted(imported - {path.stem})
        for path in stages
        if (imported := _stage_imports(path)) - {path.stem}
    }
    assert offenders == {}, f"stages import other stages: {offenders}"


def test_library_and_benchmarks_import_no_stage_internals():
    """Library modules import no stage (only the CLI dispatches to them; ``stages.common``
    holds shared plumbing); benchmarks may run a stage's ``run`` like the CLI does, but take
    everything else from the library."""
    library = [p for p in SRC.rglob("*.py") if STAGES not in p.parents and p.name != "cli.py"]
    offenders = sorted(str(p.relative_to(SRC)) for p in library if _stage_imports(p))
    assert offenders == []
    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    for path in sorted(benchmarks.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spos.stages."):
                stage = node.module.split(".")[2]
                assert stage in SHARED, f"{path.name} imports {[a.name for a in node.names]} from {node.module}"
