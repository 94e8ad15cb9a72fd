"""Conformance glue for the in-tree drivers: the test data of the kit hook
``conformance_nested_setup``, built without touching the drivers.

Each glue plugin builds, in the guest RAM the kit hands it, what a guest kernel would:
a stage-1 table in the vendor's guest format (through the shared page-table core) and
the vendor's description of it (VT-d stage-1 data, an SMMUv3 vSTE over a CD table, an
AMD guest DTE over a GCR3 table), plus the guest's invalidation of one page.
"""

from __future__ import annotations

import ctypes
from typing import Any

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
from drivers.arm_smmu_v3.regs import CMDQ_OP_CMD_SYNC, CMDQ_OP_TLBI_NH_ALL, CMDQ_OP_TLBI_NH_VA
from drivers.arm_smmu_v3.tegra241_cmdqv_regs import (
    TEGRA241_VCMDQ_CONFIG,
    TEGRA241_VCMDQ_CONS,
    TEGRA241_VCMDQ_GERROR,
    TEGRA241_VCMDQ_GERRORN,
    TEGRA241_VCMDQ_PROD,
    TEGRA241_VCMDQ_STRIDE,
    VCMDQ_CONS_ERR,
    VCMDQ_EN,
)
from iommu_core.errors import IommuError
from iommu_core.hookspec import hookimpl
from iommu_core.iopf import (
    IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE,
    IOMMU_FAULT_PERM_READ,
    PageRequest,
)
from iommu_core.pgtable import IoPageTable, formats
from iommu_core.platform.bus import Device
from iommu_core.testing import (
    DriverEnv,
    GuestHwQueue,
    GuestRam,
    HwQueueSetup,
    NestedSetup,
    UserInvalidation,
)
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
    def conformance_hw_queue_setup(self, env: DriverEnv, dev: Device, guest: GuestRam
                                   ) -> HwQueueSetup:
        # The selftest's queues are bookkeeping only: nothing reads them.
        return HwQueueSetup(viommu_type=st.IOMMU_VIOMMU_TYPE_SELFTEST,
                            queue_type=st.IOMMU_HW_QUEUE_TYPE_SELFTEST, length=PAGE,
                            max_queues=st.IOMMU_TEST_HW_QUEUE_MAX)

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

    @hookimpl
    def conformance_unit_options(self, suite: str) -> dict[str, Any] | None:
        # HW queues are the Tegra241 CMDQV's: an SMMU with one, and command queues of
        # 128 entries so that the longest VCMDQ (2 KiB) and one too long fit in a page.
        return {"tegra241_cmdqv": True, "cmdqs": 7} if suite == "hw_queue" else None

    @hookimpl
    def conformance_hw_queue_setup(self, env: DriverEnv, dev: Device, guest: GuestRam
                                   ) -> HwQueueSetup | None:
        try:
            raw, _t = env.ops.hw_info(dev, u.IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV)
        except IommuError:
            return None  # no CMDQV on this SMMU
        info = u.iommu_hw_info_tegra241_cmdqv.from_buffer_copy(raw)
        idr1 = int.from_bytes(env.ops.hw_info(dev, u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3)[0][12:16],
                              "little")
        max_len = 1 << (((idr1 >> 21) & 0x1F) + 4)  # 2^IDR1.CMDQS entries of 16 bytes
        return HwQueueSetup(
            viommu_type=u.IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV,
            viommu_data=bytes(u.iommu_viommu_tegra241_cmdqv()),
            queue_type=u.IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV, length=min(max_len, PAGE),
            max_queues=1 << info.log2vcmdqs, bad_lengths=(16, 48, 3 * 32, 2 * max_len),
            aligned=True, virt_id=self.VSID, guest=TegraGuestQueue(self.ASID))


class TegraGuestQueue:
    """A guest kernel's VCMDQ (the guest runs tegra241-cmdqv.c too): commands into its
    queue in guest RAM, PROD/CONFIG/GERRORN through the VINTF page the VMM mapped."""

    def __init__(self, asid: int) -> None:
        self.asid = asid

    @staticmethod
    def _reg(q: GuestHwQueue, reg: int) -> int:
        return TEGRA241_VCMDQ_STRIDE * q.index + reg

    def _submit(self, q: GuestHwQueue, cmds: list[tuple[int, int]]) -> None:
        n = q.length // 16
        prod = q.state.get("prod", 0)
        for q0, q1 in cmds:
            q.guest.write(q.gpa + (prod & (n - 1)) * 16,
                          q0.to_bytes(8, "little") + q1.to_bytes(8, "little"))
            prod = (prod + 1) & (2 * n - 1)
        q.state["prod"] = prod
        q.write32(self._reg(q, TEGRA241_VCMDQ_PROD), prod)

    def enable(self, q: GuestHwQueue) -> None:
        q.write32(self._reg(q, TEGRA241_VCMDQ_CONFIG), VCMDQ_EN)
        q.state["prod"] = q.read32(self._reg(q, TEGRA241_VCMDQ_PROD))

    def invalidate(self, q: GuestHwQueue, iova: int, size: int) -> None:
        cmds = [(CMDQ_OP_TLBI_NH_VA | (self.asid << 48), (iova + off) | 1)  # leaf
                for off in range(0, size, PAGE)]
        self._submit(q, [*cmds, (CMDQ_OP_CMD_SYNC, 0)])

    def submit_illegal(self, q: GuestHwQueue, iova: int, size: int) -> None:
        # TLBI_NH_ALL would drop every entry of the VM: not a guest VCMDQ command.
        self._submit(q, [(CMDQ_OP_TLBI_NH_ALL, 0), (CMDQ_OP_CMD_SYNC, 0)])

    def error(self, q: GuestHwQueue) -> bool:
        return bool((q.read32(self._reg(q, TEGRA241_VCMDQ_GERROR))
                     ^ q.read32(self._reg(q, TEGRA241_VCMDQ_GERRORN))) & 1)

    def recover(self, q: GuestHwQueue) -> None:
        # __arm_smmu_cmdq_skip_err: the command at CONS becomes a CMD_SYNC, then ack.
        cons = q.read32(self._reg(q, TEGRA241_VCMDQ_CONS)) & ~VCMDQ_CONS_ERR
        slot = cons & (q.length // 16 - 1)
        q.guest.write(q.gpa + slot * 16, CMDQ_OP_CMD_SYNC.to_bytes(8, "little") + bytes(8))
        q.write32(self._reg(q, TEGRA241_VCMDQ_GERRORN),
                  q.read32(self._reg(q, TEGRA241_VCMDQ_GERROR)))


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
