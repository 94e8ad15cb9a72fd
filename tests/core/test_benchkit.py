"""iommu_core.benchkit through the VT-d and AMD-Vi bench modules: every figure is
measured, and the miss measurements really miss (no timing is asserted)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from drivers.amd_vi import bench as amd_bench
from drivers.intel_vtd import bench as vtd_bench
from iommu_core import benchkit as kit
from iommu_sim import Machine


def _vtd_entries(hw: Any) -> int:
    return int(hw.caches.iotlb_count)


def _amd_entries(hw: Any) -> int:
    return int(hw.iotlb_entries())


VENDORS = [pytest.param(vtd_bench, _vtd_entries, id="intel_vtd"),
           pytest.param(amd_bench, _amd_entries, id="amd_vi")]


@pytest.mark.parametrize(("bench", "entries"), VENDORS)
def test_ratios_are_measured(bench: ModuleType, entries: Callable[[Any], int]) -> None:
    r = bench.inval_cached_ratio(Machine.from_config, cached=64, number=2)
    assert set(r) == {"inval_cached_ratio", "map_unmap_4k_empty_us", "map_unmap_4k_cached_us"}
    r.update(bench.nested_miss_vs_paging_miss(Machine.from_config, per_rep=4))
    r.update(bench.map_unmap_4k_vs_pgtable(Machine.from_config, number=2))
    assert {"nested_miss_vs_paging_miss", "map_unmap_4k_vs_pgtable"} <= set(r)
    assert all(v > 0 for v in r.values())


@pytest.mark.parametrize(("bench", "entries"), VENDORS)
def test_every_cold_read_misses(bench: ModuleType, entries: Callable[[Any], int]) -> None:
    """Each repetition's reads are IOTLB misses (one new entry a read), nested or not;
    warming caches one translation per page."""
    rig: kit.Rig = bench.RIG
    for nested in (False, True):
        m = Machine.from_config(rig.config)
        try:
            if nested:
                bench.nested_setup(m, kit.REPS * 8)
                run = kit.cold_reads(m, rig.dev, kit.GVA, 8)
            else:
                run = kit.paging_misses(m, rig, 8)
            hw = next(iter(m.platform.iommus.values()))
            assert entries(hw) == 8  # repetition -1
            for rep in range(3):
                assert run(rep) == 8
                assert entries(hw) == 8 * (rep + 2)
        finally:
            m.shutdown()
