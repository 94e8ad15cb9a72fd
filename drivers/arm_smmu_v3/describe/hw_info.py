"""``IOMMU_HW_INFO_TYPE_ARM_SMMUV3``: the ID registers a VMM sees (struct
iommu_hw_info_arm_smmuv3), field by field, and the capabilities they imply."""

from __future__ import annotations

from collections.abc import Mapping

import iommufd.uapi as u
from drivers.arm_smmu_v3 import regs as r
from drivers.arm_smmu_v3.describe.structures import AIDR_LAYOUT, IDR_LAYOUTS, IIDR_LAYOUT
from iommu_core.describe import HwInfoDesc, Layout, unpack


class SmmuHwInfo(HwInfoDesc):
    data_type = u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3
    name = "IOMMU_HW_INFO_TYPE_ARM_SMMUV3"
    layouts = (*IDR_LAYOUTS.values(), IIDR_LAYOUT, AIDR_LAYOUT)

    def register_values(self, data: bytes) -> list[tuple[Layout, int]]:
        info = unpack(u.iommu_hw_info_arm_smmuv3, data)
        idr = list(info.idr)
        return [*((IDR_LAYOUTS[i], idr[i]) for i in IDR_LAYOUTS), (IIDR_LAYOUT, info.iidr),
                (AIDR_LAYOUT, info.aidr)]

    def summarize(self, regs: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
        g, g1, g5 = regs["IDR0"], regs["IDR1"], regs["IDR5"]
        grans = [s for s, k in (("4K", "GRAN4K"), ("16K", "GRAN16K"), ("64K", "GRAN64K"))
                 if g5.get(k)]
        oas = g5.get("OAS", 0)
        return {
            "stage 1 / first stage": "yes" if g.get("S1P") else "no",
            "stage 2 / second stage": "yes" if g.get("S2P") else "no",
            "nesting": "yes (vIOMMU)" if g.get("S1P") and g.get("S2P") else "no",
            "PASID bits": str(g1.get("SSIDSIZE", 0)),
            "ATS": "yes" if g.get("ATS") else "no",
            "page requests": "PRI" if g.get("PRI") else "no",
            "dirty tracking": "HTTU" if g.get("HTTU", 0) >= 2 else "no",
            "output address bits": str(r.OAS_BITS[oas]) if oas < 7 else "?",
            "granules": "/".join(grans),
        }
