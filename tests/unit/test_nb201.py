"""The NAS-Bench-201 space reproduces the benchmark's networks, costs and identifiers."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch

from spos.childnet import build_child
from spos.cost import CostModel, module_costs
from spos.errors import ArchError, ConfigError, DataError
from spos.groundtruth import GroundTruth
from spos.space import create_space
from spos.spaces.nb201 import NB201_OPS, nb201_from_arch_str, nb201_to_arch_str
from spos.supernet import build_supernet

CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "nb201" / "nb201_tss.csv"
needs_csv = pytest.mark.skipif(not CSV.exists(), reason=f"NAS-Bench-201 ground truth not at {CSV}")

# From the benchmark README (independent of the CSV): index 1 and index 0.
INDEX1 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
INDEX0 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"


@pytest.fixture(scope="module")
def space():
    return create_space("nb201")


@pytest.fixture(scope="module")
def costs(space):
    return CostModel.from_space(space)


def _rows() -> list[dict[str, str]]:
    with CSV.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_space_has_15625_cells_of_six_edges(space):
    assert space.size() == 5**6 == 15625
    assert space.labels == ("edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2")
    assert all(choice.options == NB201_OPS for choice in space.choices)


def test_readme_reference_cells(space, costs):
    one = space.parse(INDEX1)
    assert costs.params_total(one) == 802_426
    assert costs.flops(one) == 113_951_370
    assert costs.flops(space.parse(INDEX0)) == 15_647_370
    # The space's extremes, as the README states them (7.78-220.12 MFLOPs, 0.073-1.53M params).
    low, high = costs.bounds("flops")
    assert round(low / 1e6, 2) == 7.78 and round(high / 1e6, 2) == 220.12
    low, high = costs.bounds("params_total")
    assert round(low / 1e6, 3) == 0.073 and round(high / 1e6, 2) == 1.53


def test_arch_str_and_ops_code_round_trip(space):
    arch = space.parse(INDEX1)
    assert nb201_to_arch_str([value for _, value in arch.values]) == INDEX1
    assert space.parse("334131") == arch  # the benchmark's ops_code digits
    rng = random.Random(0)
    for _ in range(200):
        sample = space.sample(rng)
        assert space.parse(nb201_to_arch_str([v for _, v in sample.values])) == sample


@pytest.mark.parametrize(
    "text",
    [
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|",  # a node missing
        "|conv_5x5~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|none~2|",  # bad op
        "|nor_conv_3x3~1|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|none~2|",  # bad edge
    ],
)
def test_malformed_arch_str_is_refused(text):
    with pytest.raises(ArchError, match="NAS-Bench-201"):
        nb201_from_arch_str(text)


def test_child_network_counts_equal_the_readme(space):
    """The real child module (not the cost table) has the benchmark's params and FLOPs."""
    with torch.device("meta"):
        child = build_child(space, space.parse(INDEX1))
    assert sum(p.numel() for p in child.parameters()) == 802_426
    assert module_costs(child, torch.zeros(1, 3, 32, 32, device="meta"))["flops"] == 113_951_370


@needs_csv
def test_every_cell_matches_the_benchmark_params_and_flops(space, costs):
    """Fidelity over all 15,625 cells: params exact, FLOPs equal to the CSV's 5 decimals."""
    rows = _rows()
    assert len(rows) == 15625
    mismatches = []
    for row in rows:
        arch = space.parse(row["arch_str"])
        assert space.parse(row["ops_code"]) == arch
        got = costs.costs(arch)
        if got["params_total"] != int(row["params_cifar10"]) or round(got["flops"] / 1e6, 5) != float(
            row["flops_cifar10_M"]
        ):
            mismatches.append((row["index"], got))
    assert mismatches == []


@needs_csv
def test_sampled_child_networks_match_the_benchmark(space):
    """Built child modules (meta device) of 25 random cells against the CSV."""
    for row in random.Random(1).sample(_rows(), 25):
        with torch.device("meta"):
            child = build_child(space, space.parse(row["arch_str"]))
        assert sum(p.numel() for p in child.parameters()) == int(row["params_cifar10"])
        flops = module_costs(child, torch.zeros(1, 3, 32, 32, device="meta"))["flops"]
        assert round(flops / 1e6, 5) == float(row["flops_cifar10_M"])


def test_none_edges_cut_the_cell():
    """All-'none' cells output zeros, so the logits no longer depend on the input."""
    space = create_space("nb201", channels=4, cells_per_stage=1)
    supernet = build_supernet(space).eval()
    arch = space.parse("000000")
    a, b = supernet(torch.randn(2, 3, 32, 32), arch), supernet(torch.randn(2, 3, 32, 32), arch)
    torch.testing.assert_close(a, b)


def test_bad_layout_is_a_config_error():
    with pytest.raises(ConfigError, match="cells_per_stage"):
        create_space("nb201", cells_per_stage=0)


# --------------------------------------------------------------------------- ground truth


def _write_truth(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("arch_str,iso_group,acc\n" + "".join(f"{a},{g},{v}\n" for a, g, v in rows))
    return path


def test_ground_truth_dedups_isomorphism_classes(tmp_path, space):
    rng = random.Random(0)
    archs = {space.sample(rng).key: None for _ in range(60)}
    texts = []
    for _ in range(40):
        arch = space.sample(rng)
        texts.append(nb201_to_arch_str([v for _, v in arch.values]))
    texts = list(dict.fromkeys(texts))
    rows = [(t, str(i // 2), str(80 + i * 0.1)) for i, t in enumerate(texts)]  # pairs share a class
    truth = GroundTruth.load(_write_truth(tmp_path / "gt.csv", rows), space, "acc")
    assert len(truth) == len(texts) and archs
    picked = truth.sample(1000, random.Random(3))
    groups = [truth.groups[i] for i in picked]
    assert len(groups) == len(set(groups)) == len({g for _, g, _ in rows})
    assert truth.lookup([truth.archs[0]]) == [80.0]


def test_ground_truth_errors_name_the_problem(tmp_path, space):
    with pytest.raises(DataError, match="does not exist"):
        GroundTruth.load(tmp_path / "missing.csv", space, "acc")
    path = _write_truth(tmp_path / "gt.csv", [(INDEX1, "1", "90.1")])
    with pytest.raises(ConfigError, match="no column 'top1'.*arch_str"):
        GroundTruth.load(path, space, "top1")
    bad = _write_truth(tmp_path / "bad.csv", [(INDEX1, "1", "90.1"), ("|conv~0|", "2", "80")])
    with pytest.raises(DataError, match="line 3"):
        GroundTruth.load(bad, space, "acc")
    (tmp_path / "noarch.csv").write_text("name,acc\nx,1\n")
    with pytest.raises(ConfigError, match="no architecture column"):
        GroundTruth.load(tmp_path / "noarch.csv", space, "acc")


def test_canonical_form_prunes_edges_into_dead_nodes(space):
    # Node 2 feeds only edge 3<-2 = none: its two incoming edges do not matter.
    arch = space.parse("|skip_connect~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_3x3~0|nor_conv_3x3~1|none~2|")
    assert nb201_to_arch_str([v for _, v in space.canonical(arch).values]) == (
        "|skip_connect~0|+|none~0|none~1|+|nor_conv_3x3~0|nor_conv_3x3~1|none~2|"
    )
    # Node 2 receives nothing: 3<-2 stays (the benchmark counts this as another network).
    arch = space.parse("|skip_connect~0|+|none~0|none~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_1x1~2|")
    assert space.canonical(arch) == arch
    # Node 1 reaches the output only through dead node 2: 1<-0 and 2<-1 go too.
    arch = space.parse("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|+|avg_pool_3x3~0|none~1|none~2|")
    assert nb201_to_arch_str([v for _, v in space.canonical(arch).values]) == (
        "|none~0|+|none~0|none~1|+|avg_pool_3x3~0|none~1|none~2|"
    )
    live = space.parse(INDEX1)
    assert space.canonical(live) == live  # every node reaches the output
    assert space.canonical(space.canonical(arch)) == space.canonical(arch)


@needs_csv
def test_canonical_form_stays_in_the_benchmarks_isomorphism_class(space):
    """Ground truth: every cell and its canonical form share the CSV's iso_group."""
    rows = _rows()
    group = {row["arch_str"]: row["iso_group"] for row in rows}
    forms = set()
    for row in rows:
        canonical = space.canonical(space.parse(row["arch_str"]))
        forms.add(canonical.key)
        assert group[nb201_to_arch_str([v for _, v in canonical.values])] == row["iso_group"], row["arch_str"]
    assert len({row["iso_group"] for row in rows}) <= len(forms) < len(rows)


def test_a_cell_and_its_canonical_form_score_the_same():
    """Scored as search scores (BN recalibrated per path), a cell and its canonical form agree."""
    from spos.scoring import ArchScorer

    space = create_space("nb201", channels=4, cells_per_stage=1)
    torch.manual_seed(0)
    supernet = build_supernet(space)
    x = torch.randn(3, 3, 32, 32)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(60)]
    changed = [arch for arch in archs if space.canonical(arch) != arch]
    assert len(changed) >= 10
    supernet.train()
    for arch in archs:  # every op trained a little
        supernet(x, arch)
    supernet.eval()
    scorer = ArchScorer(supernet, recalibrate_batches=[(x, None)], val_batches=[])
    for arch in changed:
        outputs = []
        for form in (arch, space.canonical(arch)):
            scorer.recalibrate(form)
            with torch.no_grad():
                outputs.append(supernet(x, form))
        torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=0)
