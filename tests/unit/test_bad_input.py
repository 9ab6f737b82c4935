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
