"""The benchmark runs and reports every figure (tiny N: correctness, not speed)."""

from __future__ import annotations

import json

import pytest

from iommu_core.pgtable import bench


def test_bench_smoke() -> None:
    out = bench.run([200, 400], slow_max=400, mem_n=300, nmaps_2m=4)
    for key in (
        "ops_per_s",
        "materialised_ops_per_s",
        "vs_intervaltree",
        "vs_sorteddict_floor",
        "bytes_per_mapping",
        "dict_per_page_memory_ratio",
        "scaling",
    ):
        assert key in out
    assert set(out["ops_per_s"]) == {"200", "400"}
    assert all(v > 0 for v in out["materialised_ops_per_s"].values())
    assert out["dict_per_page_memory_ratio"] > 20  # one interval vs 512 dict entries per map
    json.dumps(out)


@pytest.mark.slow
def test_bench_quick_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vs_intervaltree_min"] > 1
