"""``IOMMU_HW_INFO_TYPE_AMD``: EFR and EFR2 as a VMM sees them (struct
iommu_hw_info_amd), field by field, and the capabilities they imply."""

from __future__ import annotations

from collections.abc import Mapping

import iommufd.uapi as u
from drivers.amd_vi.describe.structures import EFR2_LAYOUT, EFR_LAYOUT
from drivers.amd_vi.io_pgtable import AMD_IOMMU_PGSIZES_V2
from iommu_core.describe import HwInfoDesc, Layout, sizes_text, unpack
from iommu_core.pgtable import formats


def granules(efr: Mapping[str, int]) -> str:
    """The page sizes of each table the unit walks: v1 host tables (any power of two the
    HATS levels reach, as ``AMD_IOMMU_PGSIZES``) and v2 guest tables (4K/2M/1G)."""
    parts = []
    hats = efr.get("HATS", 3)
    if hats != 3:
        parts.append(f"v1 {sizes_text(formats.amd_v1(hats + 4).pgsize_bitmap)}")
    if efr.get("GT"):
        parts.append(f"v2 {sizes_text(AMD_IOMMU_PGSIZES_V2)}")
    return ", ".join(parts) or "none"


class AmdHwInfo(HwInfoDesc):
    data_type = u.IOMMU_HW_INFO_TYPE_AMD
    name = "IOMMU_HW_INFO_TYPE_AMD"
    layouts = (EFR_LAYOUT, EFR2_LAYOUT)

    def register_values(self, data: bytes) -> list[tuple[Layout, int]]:
        info = unpack(u.iommu_hw_info_amd, data)
        return [(EFR_LAYOUT, info.efr), (EFR2_LAYOUT, info.efr2)]

    def summarize(self, regs: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
        e, e2 = regs["EFR"], regs["EFR2"]
        return {
            "stage 1 / first stage": "v2 (GT)" if e.get("GT") else "no",
            "stage 2 / second stage": f"v1 ({e.get('HATS', 0) + 4} levels)"
            if e.get("HATS", 3) != 3 else "no",
            "nesting": "yes (vIOMMU)" if e.get("GT") and e.get("GIOSUP")
            and e2.get("GCR3TRPMODE") else "no",
            "PASID bits": str(e.get("PASMAX", 0) + 1) if e.get("GT") else "0",
            # ATS is per device (DTE.I); the unit always accepts translation requests.
            "ATS": "yes",
            "page requests": "PPR" if e.get("PPR") else "no",
            "dirty tracking": "HD" if e.get("HDSUP") else "no",
            # EFR reports no output size: the architecture's 52 bits.
            "output address bits": "52",
            "granules": granules(e),
        }
