"""Bad input to the library's readers: one clear SposError naming the problem, never a crash.

Part of the fault-injection suite (issue 19); the CLI-level cases live in
tests/integration/test_faults.py.
"""

from __future__ import annotations

import json

import pytest

from spos.arch import Arch
from spos.errors import ArchError, SposError
from spos.space import create_space

NESTED = '{"a":' * 100_000 + "1" + "}" * 100_000


@pytest.fixture(scope="module")
def nb201():
    return create_space("nb201")


@pytest.mark.parametrize(
    "text, message",
    [
        (NESTED, "nested too deeply"),
        ('{"a": 1', "does not parse"),
        ("[1, 2]", "has 6 choices"),
        ("", "6 choices"),
        ("1,2,3,4,5,99", "index"),
        ("a,b,c,d,e,f", "cannot read architecture"),
        ("x" * 10_000, "cannot read architecture"),
        ('{"format": "spos.arch", "format_version": "2", "arch": {}}', "must be an integer"),
        ('{"format": "spos.arch", "format_version": 99, "space": "nb201", "space_version": 1, "arch": {}}', "newer"),
        ('{"format": "spos.arch", "format_version": 1, "space": "nb201", "space_version": 1, "arch": 5}', "malformed"),
        ('{"edge_0": "nope"}', "edge"),
    ],
    ids=lambda value: value[:24] if isinstance(value, str) else value,
)
def test_bad_architecture_text_is_one_clear_error(nb201, text, message):
    with pytest.raises(SposError, match=message) as info:
        nb201.parse(text)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (NESTED.encode(), "nested too deeply"),
        (b"[]", "not an spos architecture"),
        (json.dumps({"format": "spos.arch", "format_version": [1]}).encode(), "must be an integer"),
        (json.dumps({"format": "spos.arch", "format_version": 1}).encode(), "malformed"),
    ],
)
def test_bad_arch_files_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "arch.json"
    path.write_bytes(content)
    with pytest.raises(ArchError, match=message):
        Arch.load(path)


def test_a_missing_arch_file_names_the_path(tmp_path):
    with pytest.raises(ArchError, match="does not exist"):
        Arch.load(tmp_path / "nope.json")


def test_conflicting_duplicate_ground_truth_rows_are_refused(tmp_path, nb201):
    from spos.groundtruth import GroundTruth

    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    path = tmp_path / "truth.csv"
    path.write_text(f"arch_str,acc\n{arch},90.0\n{arch},90.0\n")
    assert len(GroundTruth.load(path, nb201, "acc")) == 1  # an exact repeat is harmless
    path.write_text(f"arch_str,acc\n{arch},90.0\n{arch},85.0\n")
    with pytest.raises(SposError, match="lines 2 and 3 give the same architecture two different values"):
        GroundTruth.load(path, nb201, "acc")


def test_the_export_check_fails_a_nan_model():
    import torch

    from spos.stages.export import _max_abs_diff

    reference = {"val": torch.zeros(2, 3)}
    batches = {"val": torch.zeros(2, 4)}
    assert _max_abs_diff(lambda x: torch.full((2, 3), float("nan")), reference, batches) == float("inf")
    assert _max_abs_diff(lambda x: torch.full((2, 3), 0.5), reference, batches) == 0.5


def test_a_killed_export_leaves_nothing_behind_and_keeps_the_previous_bundle(tmp_path):
    from spos.stages.export import _clean_stale_staging

    target = tmp_path / "export"
    (tmp_path / ".export.abc123").mkdir()  # staging of a killed export
    retired = tmp_path / ".export.old.xyz" / "export"
    retired.mkdir(parents=True)
    (retired / "model.onnx").write_text("previous bundle")  # moved aside, not yet replaced
    _clean_stale_staging(tmp_path, target)
    assert (target / "model.onnx").read_text() == "previous bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    from spos.train import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')
    log = MetricsLog(path, tensorboard_dir=tmp_path / "tb", enabled=True, resume_step=2)
    log.write({"step": 3, "loss": float("nan")})
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert json.loads(lines[-1])["loss"] is None  # never a bare NaN in a JSON file


def test_divergence_is_reported_once_a_loss_is_not_finite():
    import torch

    from spos.errors import DivergenceError
    from spos.train import TrainingWindow

    window = TrainingWindow()
    labels = torch.tensor([0, 1])
    window.add(torch.tensor(1.0), torch.zeros(2, 2), labels)
    window.check_finite(stage="supernet", step=1, last_checkpoint=None, hint="h")
    window.add(torch.tensor(float("inf")), torch.zeros(2, 2), labels)
    with pytest.raises(DivergenceError, match=r"diverged by step 2 \(loss inf\); no checkpoint had been written yet; h"):
        window.check_finite(stage="supernet", step=2, last_checkpoint=None, hint="h")


# ----------------------------------------------------------------------------- image folders
def _png(path, value: int, *, size: int = 8) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(size * size * 3).reshape(size, size, 3) * 7 + value) % 256
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _image_tree(root, splits: dict[str, list[str]]) -> None:
    for split, classes in splits.items():
        for index, name in enumerate(classes):
            for copy in range(2):
                _png(root / split / name / f"{copy}.png", 10 * index + copy)


def _data_config(root, tmp_path, *, lazy: bool):
    from spos.config import DataConfig

    return DataConfig(dataset="image_folder", root=str(root), cache_dir=str(tmp_path / "cache"), val_size=1, lazy=lazy, input_size=8)


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_the_test_split_takes_the_training_classes(tmp_path, lazy):
    from spos.data.prepare import load_test_split

    root = tmp_path / "tree"
    _image_tree(root, {"train": ["ant", "bee", "cat"], "test": ["bee", "cat"]})
    (root / "test" / "ant").mkdir()  # an empty class folder shifted every later label
    data_cfg = _data_config(root, tmp_path, lazy=lazy)
    test = load_test_split(data_cfg, seed=0, classes=("ant", "bee", "cat"))
    assert tuple(test.classes) == ("ant", "bee", "cat")
    assert sorted(test.labels.tolist()) == [1, 1, 2, 2]


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_a_test_class_training_lacks_is_refused(tmp_path, lazy):
    from spos.data.prepare import load_test_split
    from spos.errors import DataError

    root = tmp_path / "tree"
    _image_tree(root, {"train": ["ant", "cat"], "test": ["ant", "cat", "dog"]})
    with pytest.raises(DataError, match=r"class folder\(s\) \['dog'\] that the training set does not have") as info:
        load_test_split(_data_config(root, tmp_path, lazy=lazy), seed=0, classes=("ant", "cat"))
    assert str(root) in str(info.value) and "'ant', 'cat'" in str(info.value)


def test_a_directory_symlink_loop_is_refused(tmp_path):
    from spos.data.readers import read_image_folder
    from spos.errors import DataError

    root = tmp_path / "tree"
    _image_tree(root, {"train": ["ant", "cat"]})
    (root / "train" / "cat" / "again").symlink_to(root / "train")
    with pytest.raises(DataError, match="symbolic link to .* one of its own parent folders") as info:
        read_image_folder(root, "train")
    assert str(root / "train" / "cat" / "again") in str(info.value)


def test_a_directory_symlink_that_is_no_loop_is_followed(tmp_path):
    from spos.data.readers import read_image_folder

    root = tmp_path / "tree"
    _image_tree(tmp_path / "elsewhere", {"train": ["ant"]})
    _image_tree(root, {"train": ["cat"]})
    (root / "train" / "ant").symlink_to(tmp_path / "elsewhere" / "train" / "ant")
    (root / "test").symlink_to(root / "train")  # the same images as a test split: not a loop
    assert read_image_folder(root, "train").labels.tolist() == [0, 0, 1, 1]
    assert read_image_folder(root, "test").labels.tolist() == [0, 0, 1, 1]


# ----------------------------------------------------------------------------- constant images
def _flat_tree(root, colours) -> None:
    import numpy as np
    from PIL import Image

    for index, colour in enumerate(colours):
        path = root / "train" / f"c{index % 2}" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.broadcast_to(np.asarray(colour, dtype=np.uint8), (8, 8, 3)).copy()).save(path)


def test_constant_training_images_are_refused(tmp_path):
    from spos.data.prepare import prepare_data
    from spos.errors import DataError

    _flat_tree(tmp_path / "tree", [(40, 50, 60)] * 4)
    with pytest.raises(DataError, match="one flat colour .*40, 50, 60.*standard deviation 0") as info:
        prepare_data(_data_config(tmp_path / "tree", tmp_path, lazy=False), seed=0)
    assert str(tmp_path / "tree") in str(info.value)


def test_a_constant_channel_is_centred_not_divided_by_zero(tmp_path):
    import torch

    from spos.data.prepare import prepare_data

    _flat_tree(tmp_path / "tree", [(0, 10 * i, 7) for i in range(6)])  # red and blue constant
    data = prepare_data(_data_config(tmp_path / "tree", tmp_path, lazy=False), seed=0)
    assert data.std[0] == 1.0 and data.std[2] == 1.0 and 0 < data.std[1] < 1
    normalised = (data.train.images.float() / 255 - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1)
    assert torch.isfinite(normalised).all() and (normalised[:, 0] == 0).all()


def test_an_undefined_correlation_prints_as_undefined_not_nan():
    from spos.cli import _figure

    assert _figure(float("nan"), ".3f") == "undefined" == _figure(None, ".3f")
    assert _figure(0.51234, ".3f") == "0.512"


def test_a_corrupted_gzip_idx_file_is_one_data_error(tmp_path):
    import gzip

    from spos.data import read_idx
    from spos.errors import DataError

    raw = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3, 4]) * 50)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(raw[:10] + b"\x00" * 20 + raw[30:])
    with pytest.raises(DataError, match="not a readable gzip file"):
        read_idx(path)


def test_checkpoint_errors_quote_one_whole_sentence(tmp_path):
    from spos.checkpoint import _first_sentence, load_checkpoint
    from spos.errors import CheckpointError

    advice = "Weights only load failed. This file can still be loaded, to do so you have two options, do those steps only if you trust the source."
    assert _first_sentence(advice) == "Weights only load failed."
    path = tmp_path / "supernet.ckpt"
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "do those steps" not in str(info.value) and "delete it to start over" in str(info.value)


def test_a_supernet_with_nan_weights_cannot_be_scored():
    import torch

    from spos.scoring import ArchScorer
    from spos.space import make_rng
    from spos.supernet import build_supernet

    space = create_space("nb201", channels=4, cells_per_stage=1, num_classes=3, input_size=8)
    supernet = build_supernet(space)
    with torch.no_grad():
        for parameter in supernet.parameters():
            parameter.fill_(float("nan"))
    batches = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))]
    scorer = ArchScorer(supernet, recalibrate_batches=batches, val_batches=batches)
    with pytest.raises(SposError, match="outputs NaN or infinite logits"):
        scorer.score(space.sample(make_rng(0, "nan")))
