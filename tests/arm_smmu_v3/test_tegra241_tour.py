"""The tour's "accel" chapter (drivers/arm_smmu_v3/describe/tour_arm_smmu_v3.toml): the
guest invalidates through its VCMDQ and the tour shows it, with no IOMMU_HWPT_INVALIDATE
anywhere in the chapter."""

from __future__ import annotations

from iommu_core.trace import TraceNode
from iommu_sim.tour import tour_records


def names(nodes: list[TraceNode]) -> list[str]:
    out = []
    for n in nodes:
        out.append(f"{n.layer} {n.name}")
        out += names(n.children)
    return out


def test_accel_chapter() -> None:
    sc, recs, _t = tour_records("arm_smmu_v3", ["accel"])
    assert "accel" in sc.chapters and {r.chapter for r in recs} == {"accel"}
    assert all(r.ok for r in recs)
    assert not any("IOMMU_HWPT_INVALIDATE" in r.call for r in recs)
    (prod2,) = [r for r in recs if r.title == "the guest stores PROD = 2"]
    seen = names(prod2.trace)
    assert any("VCMDQ" in n and "TLBI_NH_VA" in n for n in seen)
    assert any(n.startswith("hw ") and "CMD_TLBI_NH_VA" in n for n in seen)
    assert not any(n.startswith(("iommufd", "driver")) for n in seen), "no kernel on this path"
    dmas = [r for r in recs if r.action == "dma_read"]
    assert [d.tlb_hit for d in dmas] == [False, True, False]  # walked, stale, walked again
    assert dmas[-1].result == "-> b'guest data at GPA 0x10000'"
    (refused,) = [r for r in recs if r.title == "the guest stores PROD = 4"]
    assert any("vEVENT" in n for n in names(refused.trace))
    (cons,) = [r for r in recs if r.title.startswith("what the guest sees")]
    assert cons.result == "-> 02 00 00 01"
