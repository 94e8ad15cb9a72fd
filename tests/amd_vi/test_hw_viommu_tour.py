"""The AMD tour's "accel" chapter (drivers/amd_vi/describe/tour_amd_vi.toml, the HW-vIOMMU
prototype): the guest invalidates through its own command buffer and the tour shows it,
with no IOMMU_HWPT_INVALIDATE anywhere in the chapter and no kernel on the path."""

from __future__ import annotations

from iommu_sim.tour import tour_records
from tests.arm_smmu_v3.test_tegra241_tour import names


def test_accel_chapter() -> None:
    sc, recs, _t = tour_records("amd_vi", ["accel"])
    assert "accel" in sc.chapters and {r.chapter for r in recs} == {"accel"}
    assert all(r.ok for r in recs)
    assert not any("IOMMU_HWPT_INVALIDATE" in r.call for r in recs)
    (tail,) = [r for r in recs if r.title == "the guest stores its tail = 0x20"]
    seen = names(tail.trace)
    assert "hw guest 1 INVALIDATE_IOMMU_PAGES" in seen
    assert "hw INVALIDATE_IOMMU_PAGES" in seen  # on the unit's engine, hDomID in
    assert not any(n.startswith(("iommufd", "driver", "core")) for n in seen), (
        "no kernel on this path")
    dmas = [r for r in recs if r.action == "dma_read"]
    assert [d.tlb_hit for d in dmas] == [False, True, False]  # walked, stale, walked again
    assert dmas[-1].result == "-> b'guest data at GPA 0x5000'"
    (refused,) = [r for r in recs if r.title == "the guest stores its tail = 0x30"]
    seen = names(refused.trace)
    assert "hw guest 1 ILLEGAL_COMMAND_ERROR" in seen
    assert "hw amdvi1 vIOMMU interrupt" in seen  # the host hears of it only to tell the VMM
