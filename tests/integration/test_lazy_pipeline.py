"""Streaming image folders (data.lazy) through the stages on a tiny tree of mixed-size images.

The eager reader refuses such a tree (it decodes everything into one array); the lazy path
trains the supernet, searches and retrains on it, resumes an interrupted run to the same
weights, and reports a missing or empty folder as one clear error line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from spos.config import load_config
from spos.dist import Runtime
from spos.stages import train_supernet
from tests.conftest import SMOKE, run_cli


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """train/ and val/ (ImageNet's layout) with JPEGs and PNGs of different sizes, 3 classes."""
    root = tmp_path_factory.mktemp("images") / "tree"
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 20), ("val", 4)):
        for label, name in enumerate(["ant", "bee", "cat"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                height, width = (int(v) for v in rng.integers(18, 41, 2))
                pixels = np.zeros((height, width, 3))
                pixels[..., label] = 180
                pixels = np.clip(pixels + rng.normal(40, 30, pixels.shape), 0, 255).astype(np.uint8)
                if i % 3 == 0:
                    Image.fromarray(pixels).save(folder / f"{i}.png")
                else:
                    Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)
    return root


def overrides(root) -> list[str]:
    return [
        "threads=1",
        "data.dataset=image_folder",
        f"data.root={root}",
        "data.lazy=true",
        "data.input_size=16",
        "data.val_size=12",
        "data.color_jitter=0.4",
        "data.lighting=0.1",
        "data.num_workers=2",
        "supernet.steps=8",  # 48 training images, batch 16: crosses two epoch boundaries
        "supernet.batch_size=16",
        "supernet.checkpoint_every=2",
        "supernet.panel.eval_every=4",
        "runtime.log_every=2",
        "supernet.panel.val_images=12",
        "supernet.panel.recalibrate_images=16",
        "search.recalibrate_images=16",
        "search.val_images=12",
        "search.batch_size=8",
        "retrain.batch_size=16",
        "retrain.checkpoint_every=1",
    ]


@pytest.fixture(scope="module")
def lazy_run(tree, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lazy_run")
    result = run_cli(
        "train-supernet", "--config", str(SMOKE), "--out", str(run_dir), *overrides(tree)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_eager_reader_refuses_mixed_sizes(tree, tmp_path):
    result = run_cli(
        "train-supernet", "--config", str(SMOKE), "--out", str(tmp_path / "r"),
        *overrides(tree), "data.lazy=false",
    )  # fmt: skip
    assert (
        result.returncode == 2 and "one size" in result.stderr and "data.lazy=true" in result.stderr
    )


def test_lazy_supernet_search_and_retrain(lazy_run, tree):
    supernet = json.loads((lazy_run / "summary.json").read_text())["supernet"]
    assert supernet["steps"] == 8 and supernet["panel_mean_acc"] is not None
    for stage in ("search", "retrain"):
        result = run_cli(stage, "--config", str(SMOKE), "--out", str(lazy_run), *overrides(tree))
        assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((lazy_run / "summary.json").read_text())
    assert summary["search"]["evaluations"] > 0 and (lazy_run / "arch.json").exists()
    assert summary["retrain"]["test_images"] == 12  # val/ is the test split
    assert summary["retrain"]["val_top1"] is not None


def test_interrupted_lazy_run_resumes_to_the_same_weights(lazy_run, tree, tmp_path):
    reference = json.loads((lazy_run / "summary.json").read_text())["supernet"]["weights_sha256"]
    config = load_config(SMOKE, overrides(tree))
    run_dir = tmp_path / "interrupted"

    class Interrupt(Exception):
        pass

    class StopAfter:
        """A progress bar that interrupts the run after step 5 (last checkpoint: step 4)."""

        def __init__(self, **kwargs):
            self.step = kwargs.get("initial", 0)

        def update(self, count=1, **postfix):
            self.step += count
            if count and self.step == 5:
                raise Interrupt

        def close(self):
            pass

    runtime = Runtime.from_env("cpu", threads=1)
    with pytest.raises(Interrupt):
        train_supernet.run(config, run_dir, runtime=runtime, progress=StopAfter)
    resumed = train_supernet.run(config, run_dir, runtime=runtime)
    assert resumed["weights_sha256"] == reference


@pytest.mark.parametrize("case", ["missing", "empty", "no_root"])
def test_missing_or_empty_folder_is_one_clear_error(case, tree, tmp_path):
    root = tmp_path / "nowhere"
    if case == "empty":
        (root / "train" / "ant").mkdir(parents=True)
    extra = ["data.root=null"] if case == "no_root" else [f"data.root={root}"]
    result = run_cli(
        "train-supernet",
        "--config",
        str(SMOKE),
        "--out",
        str(tmp_path / "r"),
        *overrides(tree),
        *extra,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("spos: error:")]
    assert len(lines) == 1, result.stderr
    expected = {
        "missing": "does not exist",
        "empty": "no .jpg/.png images",
        "no_root": "needs data.root",
    }[case]
    assert expected in lines[0] and (case == "no_root" or str(root) in lines[0]), lines[0]


def test_lazy_needs_an_image_folder(tmp_path):
    result = run_cli(
        "train-supernet", "--config", str(SMOKE), "--out", str(tmp_path / "r"), "data.lazy=true"
    )
    assert (
        result.returncode == 2
        and "'data.lazy'" in result.stderr
        and "image_folder" in result.stderr
    )
