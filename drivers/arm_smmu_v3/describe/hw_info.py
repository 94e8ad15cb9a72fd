"""``IOMMU_HW_INFO_TYPE_ARM_SMMUV3``: the ID registers a VMM sees (struct
iommu_hw_info_arm_smmuv3), field by field, and the capabilities they imply; and
``IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV`` (struct iommu_hw_info_tegra241_cmdqv), what a
Tegra241 CMDQV offers one VM."""

from __future__ import annotations

from collections.abc import Mapping

import iommufd.uapi as u
from drivers.arm_smmu_v3 import regs as r
from drivers.arm_smmu_v3.describe.structures import AIDR_LAYOUT, IDR_LAYOUTS, IIDR_LAYOUT
from iommu_core.describe import BitField, HwInfoDesc, Layout, unpack


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


#: struct iommu_hw_info_tegra241_cmdqv as one little-endian 64-bit word.
TEGRA241_CMDQV_INFO_LAYOUT = Layout(
    name="hw_info_tegra241_cmdqv", title="iommu_hw_info_tegra241_cmdqv", category="register",
    words=1, word_bits=64,
    fields=(BitField("flags", 31, 0, "must be 0"),
            BitField("version", 39, 32, "CMDQV PARAM.VER"),
            BitField("log2vcmdqs", 47, 40, "log2 of the VCMDQs of one VINTF (PARAM "
                     "NUM_VCMDQ_LOG2 for the VM)"),
            BitField("log2vsids", 55, 48, "log2 of the SID pairs of one VINTF (PARAM "
                     "NUM_SID_PER_VM_LOG2)")),
    doc="what a Tegra241 CMDQV offers one VM (one VINTF): the VMM's emulated PARAM",
    kernel="iommu_hw_info_tegra241_cmdqv")


class Tegra241CmdqvHwInfo(HwInfoDesc):
    data_type = u.IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV
    name = "IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV"
    layouts = (TEGRA241_CMDQV_INFO_LAYOUT,)

    def register_values(self, data: bytes) -> list[tuple[Layout, int]]:
        return [(TEGRA241_CMDQV_INFO_LAYOUT, int.from_bytes(data[:8].ljust(8, b"\0"),
                                                           "little"))]

    def summarize(self, regs: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
        f = regs["iommu_hw_info_tegra241_cmdqv"]
        return {"VCMDQs per VM": str(1 << f.get("log2vcmdqs", 0)),
                "SID pairs per VM": str(1 << f.get("log2vsids", 0)),
                "CMDQV version": str(f.get("version", 0))}
