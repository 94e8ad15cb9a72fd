"""Conformance glue for the in-tree drivers: the test data of the kit hook
``conformance_nested_setup``, built without touching the drivers.

Each glue plugin builds, in the guest RAM the kit hands it, what a guest kernel would:
a stage-1 table in the vendor's guest format (through the shared page-table core) and
the vendor's description of it (VT-d stage-1 data, an SMMUv3 vSTE over a CD table, an
AMD guest DTE over a GCR3 table), plus the guest's invalidation of one page.
"""

from __future__ import annotations

import ctypes

from drivers.amd_vi.amd_iommu_types import (
    CMD_INV_IOMMU_PAGES_GN_MASK,
    CMD_INV_IOMMU_PAGES_PDE_MASK,
    DTE_FLAG_GIOV,
    DTE_FLAG_GV,
    DTE_FLAG_V,
    GCR3_VALID,
    dte_gcr3_fields,
)
from drivers.amd_vi.iommu import build_inv_iommu_pages
from drivers.amd_vi.uapi import IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE
from drivers.arm_smmu_v3.cd import arm_smmu_make_s1_cd
from drivers.arm_smmu_v3.domain import arm_lpae_s1_cfg
from drivers.arm_smmu_v3.regs import CMDQ_OP_TLBI_NH_VA
from iommu_core.hookspec import hookimpl
from iommu_core.iopf import (
    IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE,
    IOMMU_FAULT_PERM_READ,
    PageRequest,
)
from iommu_core.pgtable import IoPageTable, formats
from iommu_core.platform.bus import Device
from iommu_core.testing import DriverEnv, GuestRam, NestedSetup, UserInvalidation
from iommufd import uapi as u
from iommufd import uapi_selftest as st
from tests.arm_smmu_v3.hwutil import FakeMaster, cdtable_ste

PAGE = 4096


class MockGlue:
    """The selftest mock: its nested domain has no stage-1 walker (DMA goes through the
    parent), so stage 1 is identity; nesting data is the selftest's iotlb word."""

    @hookimpl
    def conformance_nested_setup(self, env: DriverEnv, dev: Device, guest: GuestRam
                                 ) -> NestedSetup:
        data = st.iommu_hwpt_selftest(iotlb=st.IOMMU_TEST_IOTLB_DEFAULT)
        return NestedSetup(st.IOMMU_HWPT_DATA_SELFTEST, bytes(data), stage1=None,
                           viommu_type=st.IOMMU_VIOMMU_TYPE_SELFTEST)


    @hookimpl
    def conformance_page_request(self, env: DriverEnv, dev: Device, iova: int) -> bool:
        # IOMMU_TEST_OP_TRIGGER_IOPF: the selftest reports the request to the core.
        env.core.iommu_report_device_fault(dev, PageRequest(
            flags=IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE, pasid=0, grpid=0x1,
            perm=IOMMU_FAULT_PERM_READ, addr=iova))
        return True


class VtdGlue:
    """VT-d: an x86-64 first-stage table and ``iommu_hwpt_vtd_s1`` pointing at it; page
    invalidations with ``iommu_hwpt_vtd_s1_invalidate`` on the nested HWPT."""

    @hookimpl
    def conformance_nested_setup(self, env: DriverEnv, dev: Device, guest: GuestRam
                                 ) -> NestedSetup:
        s1 = IoPageTable(formats.x86_64(4, oas=52), guest)
        data = u.iommu_hwpt_vtd_s1(flags=0, addr_width=48, pgtbl_addr=s1.root)

        def invalidate(iova: int, size: int) -> UserInvalidation:
            inv = u.iommu_hwpt_vtd_s1_invalidate(addr=iova, npages=size // PAGE, flags=0)
            return UserInvalidation(u.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
                                    ctypes.sizeof(inv), bytes(inv), 1)

        return NestedSetup(u.IOMMU_HWPT_DATA_VTD_S1, bytes(data), stage1=s1,
                           invalidate=invalidate)


class SmmuGlue:
    """SMMUv3: an LPAE stage-1 table, a one-entry CD table, the guest's vSTE pointing at
    it; TLBI_NH_VA through the vIOMMU's command path."""

    ASID = 3
    VSID = 0x42

    @hookimpl
    def conformance_nested_setup(self, env: DriverEnv, dev: Device, guest: GuestRam
                                 ) -> NestedSetup:
        s1 = IoPageTable(formats.arm_lpae_s1(4096, 48, 48), guest)
        cd_gpa = guest.alloc_page()
        guest.write(cd_gpa, bytes(arm_smmu_make_s1_cd(FakeMaster(),
                                                      arm_lpae_s1_cfg(s1, self.ASID))))
        ste = cdtable_ste(cd_gpa)
        data = u.iommu_hwpt_arm_smmuv3(ste=(ctypes.c_uint64 * 2)(ste[0], ste[1]))

        def invalidate(iova: int, size: int) -> UserInvalidation:
            cmd = (CMDQ_OP_TLBI_NH_VA | (self.ASID << 48)).to_bytes(8, "little") + (
                iova | 1).to_bytes(8, "little")  # bit 0: leaf only
            return UserInvalidation(u.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, 16, cmd, 1,
                                    via_viommu=True)

        return NestedSetup(u.IOMMU_HWPT_DATA_ARM_SMMUV3, bytes(data), stage1=s1,
                           invalidate=invalidate, viommu_type=u.IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
                           virt_id=self.VSID)


class AmdGlue:
    """AMD-Vi: an x86-64 (v2) guest table, a GCR3 table with PASID 0 pointing at it, the
    guest DTE; the prototype INVALIDATE_IOMMU_PAGES through the vIOMMU."""

    GDOMID = 0x33

    @hookimpl
    def conformance_nested_setup(self, env: DriverEnv, dev: Device, guest: GuestRam
                                 ) -> NestedSetup:
        s1 = IoPageTable(formats.x86_64(4), guest)
        gcr3 = guest.alloc_page()
        guest.write_u64(gcr3, s1.root | GCR3_VALID)
        d0, d1 = dte_gcr3_fields(gcr3)
        gdte = (DTE_FLAG_V | DTE_FLAG_GV | DTE_FLAG_GIOV | d0, d1 | self.GDOMID, 0, 0)

        def invalidate(iova: int, size: int) -> UserInvalidation:
            # PDE too: the kit's guest remaps by unmap + map, which frees its tables
            cmd = build_inv_iommu_pages(iova, iova + size - 1, self.GDOMID, 0,
                                        CMD_INV_IOMMU_PAGES_GN_MASK
                                        | CMD_INV_IOMMU_PAGES_PDE_MASK)
            raw = b"".join(w.to_bytes(4, "little") for w in cmd.data)
            return UserInvalidation(IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE, 16, raw, 1,
                                    via_viommu=True)

        return NestedSetup(u.IOMMU_HWPT_DATA_AMD_GUEST,
                           b"".join(w.to_bytes(8, "little") for w in gdte), stage1=s1,
                           invalidate=invalidate, viommu_type=u.IOMMU_VIOMMU_TYPE_AMD,
                           virt_id=dev.rid)


GLUE: dict[str, object] = {
    "mock": MockGlue(),
    "intel_vtd": VtdGlue(),
    "arm_smmu_v3": SmmuGlue(),
    "amd_vi": AmdGlue(),
}
