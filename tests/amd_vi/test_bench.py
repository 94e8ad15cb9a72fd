"""drivers.amd_vi.bench runs and measures what it says (no timing is asserted)."""

from __future__ import annotations

from drivers.amd_vi import bench
from drivers.amd_vi.hw.amd_iommu import AmdIommuHw
from iommu_sim import Machine


def test_ratios_are_measured() -> None:
    r = bench.inval_cached_ratio(Machine.from_config, cached=64, number=2)
    assert set(r) == {"inval_cached_ratio", "map_unmap_4k_empty_us", "map_unmap_4k_cached_us"}
    r.update(bench.nested_miss_vs_paging_miss(Machine.from_config, per_rep=4))
    r.update(bench.map_unmap_4k_vs_pgtable(Machine.from_config, number=2))
    assert {"nested_miss_vs_paging_miss", "map_unmap_4k_vs_pgtable"} <= set(r)
    assert all(v > 0 for v in r.values())


def test_every_cold_read_misses() -> None:
    """Each repetition's reads are IOTLB misses (one new entry a read), nested or not."""
    for setup in (bench.paging_misses, bench.nested_misses):
        m = Machine.from_config(bench.machine_config())
        try:
            run = setup(m, 8)
            hw = m.platform.iommus["amdvi0"]
            assert isinstance(hw, AmdIommuHw)
            for rep in range(3):
                before = hw.iotlb_entries()
                assert run(rep) == 8
                assert hw.iotlb_entries() == before + 8
        finally:
            m.shutdown()
