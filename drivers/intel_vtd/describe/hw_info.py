"""``IOMMU_HW_INFO_TYPE_INTEL_VTD``: CAP and ECAP as a VMM sees them (struct
iommu_hw_info_vtd), field by field, and the capabilities they imply."""

from __future__ import annotations

from collections.abc import Mapping

import iommufd.uapi as u
from drivers.intel_vtd.describe.structures import CAP_LAYOUT, ECAP_LAYOUT
from iommu_core.describe import BitField, HwInfoDesc, Layout, unpack

FLAGS_LAYOUT = Layout(
    name="vtd-hw-info-flags", title="flags", category="register", words=1, word_bits=32,
    fields=(BitField("ERRATA_772415_SPR17", 0, 0, "read-only second-stage entries are "
                     "cached: a nest parent must not have them",
                     kernel="IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17"),),
    doc="struct iommu_hw_info_vtd flags")


class VtdHwInfo(HwInfoDesc):
    data_type = u.IOMMU_HW_INFO_TYPE_INTEL_VTD
    name = "IOMMU_HW_INFO_TYPE_INTEL_VTD"
    layouts = (CAP_LAYOUT, ECAP_LAYOUT, FLAGS_LAYOUT)

    def register_values(self, data: bytes) -> list[tuple[Layout, int]]:
        info = unpack(u.iommu_hw_info_vtd, data)
        return [(CAP_LAYOUT, info.cap_reg), (ECAP_LAYOUT, info.ecap_reg),
                (FLAGS_LAYOUT, info.flags)]

    def summarize(self, regs: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
        c, e = regs["CAP"], regs["ECAP"]
        sllps = c["SLLPS"]
        return {
            "stage 1 / first stage": "yes" if e["FLTS"] else "no",
            "stage 2 / second stage": "yes" if e["SLTS"] else "no",
            "nesting": "yes (nest parent)" if e["NEST"] else "no",
            "PASID bits": str(e["PSS"] + 1) if e["PASID"] else "0",
            "ATS": "yes" if e["DT"] else "no",
            "page requests": "PRS" if e["PRS"] else "no",
            "dirty tracking": "SSADS" if e["SLADS"] else "no",
            "output address bits": str(c["MGAW"] + 1),
            "granules": "4K" + ("/2M" if sllps & 1 else "") + ("/1G" if sllps & 2 else ""),
        }
