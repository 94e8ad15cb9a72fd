"""NVIDIA Tegra241 CMDQV, the SMMUv3 extension of Linux 7.3 tegra241-cmdqv.c.

In-kernel: the CMDQV's VINTF0 is the host's (HYP_OWN=1); its logical VCMDQs take every
command the driver issues (``get_secondary_cmdq``), with busy-polled CMD_SYNCs, and its
command errors are skipped by the CMDQV interrupt handler.

For user space: a vIOMMU of type ``IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV`` is a VINTF of its
own (HYP_OWN=0) with the nest parent's VMID, whose page 0 the VMM maps through the
iommufd (``out_vintf_mmap_offset``) and hands to its guest; a vDEVICE is one
SID_MATCH/SID_REPLACE pair (vSID -> SID); ``IOMMU_HW_QUEUE_ALLOC`` of type
``IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV`` maps a VCMDQ to the VINTF at a logical index, its
BASE at the guest queue's host physical address. From then on the guest enables the
queue and bumps its PROD itself: the hardware executes its TLBI_NH_ASID / TLBI_NH_VA /
ATC_INV with the VINTF's VMID and SIDs, and no ``IOMMU_HWPT_INVALIDATE`` is involved. A
command error reaches the VMM as an ``IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV`` vEVENT carrying
the VINTF's LVCMDQ error map.

The driver reaches the CMDQV only through its register window (resource "cmdqv") and its
interrupt line; the model is :mod:`drivers.arm_smmu_v3.hw.cmdqv`.
"""

from __future__ import annotations

import contextlib
import errno
from typing import TYPE_CHECKING

from drivers.arm_smmu_v3.cmdq import ArmSmmuCmdq, Cmd, arm_smmu_make_cmd_sync
from drivers.arm_smmu_v3.device import IdAllocator
from drivers.arm_smmu_v3.impl import ArmSmmuImplOps
from drivers.arm_smmu_v3.iommufd import ArmVsmmu
from drivers.arm_smmu_v3.master import master_of
from drivers.arm_smmu_v3.regs import (
    ARM_SMMU_IDR1,
    ARM_SMMU_OPT_TEGRA241_CMDQV,
    CMDQ_0_OP,
    CMDQ_MAX_SZ_SHIFT,
    CMDQ_OP_ATC_INV,
    CMDQ_OP_TLBI_NH_ASID,
    CMDQ_OP_TLBI_NH_VA,
    CMDQ_SYNC_0_CS_NONE,
    FIELD_GET,
    FIELD_PREP,
    IDR1_CMDQS,
)
from drivers.arm_smmu_v3.tegra241_cmdqv_regs import (
    CMDQV_CMDQ_ALLOC_LVCMDQ,
    CMDQV_CMDQ_ALLOC_VINTF,
    CMDQV_CMDQ_ALLOCATED,
    CMDQV_EN,
    CMDQV_NUM_SID_PER_VM_LOG2,
    CMDQV_NUM_VCMDQ_LOG2,
    CMDQV_NUM_VINTF_LOG2,
    CMDQV_VER,
    LVCMDQ_ERR_MAP_NUM_64,
    SZ_64K,
    TEGRA241_CMDQV_CMDQ_ALLOC,
    TEGRA241_CMDQV_CMDQ_ERR_MAP,
    TEGRA241_CMDQV_CONFIG,
    TEGRA241_CMDQV_PARAM,
    TEGRA241_CMDQV_STATUS,
    TEGRA241_CMDQV_VINTF_ERR_MAP,
    TEGRA241_VCMDQ_BASE,
    TEGRA241_VCMDQ_CONFIG,
    TEGRA241_VCMDQ_CONS,
    TEGRA241_VCMDQ_CONS_INDX_BASE,
    TEGRA241_VCMDQ_GERROR,
    TEGRA241_VCMDQ_GERRORN,
    TEGRA241_VCMDQ_PROD,
    TEGRA241_VCMDQ_STATUS,
    TEGRA241_VINTF,
    TEGRA241_VINTF_CONFIG,
    TEGRA241_VINTF_LVCMDQ_ERR_MAP_64,
    TEGRA241_VINTF_SID_MATCH,
    TEGRA241_VINTF_SID_REPLACE,
    TEGRA241_VINTF_STATUS,
    VCMDQ_ADDR,
    VCMDQ_EN,
    VCMDQ_LOG2SIZE,
    VINTF_EN,
    VINTF_HYP_OWN,
    VINTF_SID_MATCH_ENABLE,
    VINTF_SID_MATCH_VIRT_SID,
    VINTF_VMID,
    TEGRA241_VINTFi_LVCMDQ_PAGE0,
    TEGRA241_VINTFi_LVCMDQ_PAGE1,
    TEGRA241_VINTFi_PAGE0,
)
from iommu_core.errors import IommuError
from iommufd.uapi import (
    IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV,
    IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV,
    IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV,
    IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV,
    iommu_hw_info_tegra241_cmdqv,
    iommu_vevent_tegra241_cmdqv,
    iommu_viommu_tegra241_cmdqv,
    struct_bytes,
)

if TYPE_CHECKING:
    from drivers.arm_smmu_v3.device import ArmSmmuDevice
    from drivers.arm_smmu_v3.domain import ArmSmmuDomain
    from iommu_core.domain import IommuDomain
    from iommu_core.iommufd_driver import (
        IommufdHwQueue,
        IommufdVdevice,
        IommufdViommu,
        UserData,
    )
    from iommu_core.platform.dma import IrqLine, Mmio
    from iommu_core.platform.platform import IommuResources
    from iommu_core.plugin import IommuOps

#: The viommu ops of a Tegra241 CMDQV vIOMMU (tegra241_cmdqv_viommu_ops): the vSMMU's
#: nested domains and trapped invalidation, plus vDEVICEs and HW queues of its own.
TEGRA_VIOMMU_OPS = ("viommu_destroy", "viommu_alloc_domain_nested", "viommu_cache_invalidate",
                    "viommu_vdevice_init", "viommu_vdevice_destroy",
                    "viommu_get_hw_queue_size", "viommu_hw_queue_init_phys",
                    "viommu_hw_queue_destroy")
CMDQ_ENT_SZ_SHIFT = 4


def _ilog2(n: int) -> int:
    return n.bit_length() - 1


def tegra241_guest_vcmdq_supports_cmd(cmd: Cmd) -> bool:
    """What a guest-owned (HYP_OWN=0) VCMDQ takes; the rest goes to the SMMU's queue."""
    return FIELD_GET(CMDQ_0_OP, cmd[0]) in (CMDQ_OP_TLBI_NH_ASID, CMDQ_OP_TLBI_NH_VA,
                                            CMDQ_OP_ATC_INV)


class Tegra241Vcmdq:
    """``struct tegra241_vcmdq``: a VCMDQ as a logical queue of one VINTF."""

    def __init__(self, cmdqv: Tegra241Cmdqv, vintf: Tegra241Vintf, lidx: int) -> None:
        self.cmdqv = cmdqv
        self.vintf = vintf
        self.lidx = lidx
        #: Global index in the CMDQV (the one CMDQ_ALLOC pre-assigned to this slot).
        self.idx = vintf.idx * cmdqv.num_lvcmdqs_per_vintf + lidx
        self.page0 = TEGRA241_VINTFi_LVCMDQ_PAGE0(vintf.idx, lidx)
        self.page1 = TEGRA241_VINTFi_LVCMDQ_PAGE1(vintf.idx, lidx)
        self.enabled = False
        #: The previous LVCMDQ this one depends on (user queues).
        self.prev: Tegra241Vcmdq | None = None
        #: The host's queue (VINTF0); None for a guest queue, which lives in guest RAM.
        self.cmdq: ArmSmmuCmdq | None = None
        #: What BASE gets: the queue's address and LOG2SIZE.
        self.q_base = 0
        #: The iommufd HW queue object (user queues).
        self.core: IommufdHwQueue | None = None

    def header(self) -> str:
        return f"VINTF{self.vintf.idx}: VCMDQ{self.idx}/LVCMDQ{self.lidx}: "

    def __repr__(self) -> str:
        return f"<Tegra241Vcmdq {self.header().rstrip(': ')}>"


class Tegra241Vintf(ArmVsmmu):
    """``struct tegra241_vintf``: a virtual interface. A user VINTF is the vIOMMU itself
    (it embeds the vSMMU, so every vSMMU op works on it); VINTF0 is the kernel's and its
    vSMMU part stays unset, as its ``vsmmu`` stays zeroed in Linux."""

    def __init__(self, cmdqv: Tegra241Cmdqv, core: IommufdViommu | None = None,
                 s2_parent: ArmSmmuDomain | None = None) -> None:
        if core is not None and s2_parent is not None:
            super().__init__(core, cmdqv.smmu, s2_parent)
        else:
            self.vmid = 0
        self.cmdqv = cmdqv
        self.idx = 0
        self.enabled = False
        self.hyp_own = False
        self.base = 0
        self.lvcmdqs: list[Tegra241Vcmdq | None] = []
        self.mmap_offset = 0
        self.sids = IdAllocator(0, cmdqv.num_sids_per_vintf - 1)

    def __repr__(self) -> str:
        return f"<Tegra241Vintf {self.idx} vmid {self.vmid}{' hyp' if self.hyp_own else ''}>"


class Tegra241VintfSid:
    """``struct tegra241_vintf_sid``: one vDEVICE's SID_MATCH/SID_REPLACE pair."""

    def __init__(self, vintf: Tegra241Vintf, sid: int, idx: int) -> None:
        self.vintf = vintf
        self.sid = sid
        self.idx = idx


class Tegra241Cmdqv(ArmSmmuImplOps):
    """``struct tegra241_cmdqv``: the CMDQV of one SMMU, its VINTFs and their queues."""

    name = "tegra241_cmdqv"

    def __init__(self, smmu: ArmSmmuDevice, mmio: Mmio, irq: IrqLine | None) -> None:
        self.smmu = smmu
        self.mmio = mmio
        self.irq = irq
        regval = mmio.read32(TEGRA241_CMDQV_PARAM)
        self.num_vintfs = 1 << FIELD_GET(CMDQV_NUM_VINTF_LOG2, regval)
        self.num_vcmdqs = 1 << FIELD_GET(CMDQV_NUM_VCMDQ_LOG2, regval)
        self.num_lvcmdqs_per_vintf = self.num_vcmdqs // self.num_vintfs
        self.num_sids_per_vintf = 1 << FIELD_GET(CMDQV_NUM_SID_PER_VM_LOG2, regval)
        self.vintf_ids = IdAllocator(0, self.num_vintfs - 1)
        self.vintfs: list[Tegra241Vintf | None] = [None] * self.num_vintfs

    # -- registers --------------------------------------------------------------------------
    def readl(self, off: int) -> int:
        return self.mmio.read32(off)

    def writel(self, off: int, value: int) -> None:
        self.mmio.write32(off, value)

    def log(self, msg: str) -> None:
        self.smmu.log.append(f"tegra241_cmdqv: {msg}")

    def _write_config(self, config: int, status: int, regval: int, header: str) -> bool:
        """``tegra241_cmdqv_write_config``: write CONFIG, poll STATUS.ENABLED to follow
        EN; returns the enabled state read back. ETIMEDOUT if it does not follow."""
        en = bool(regval & 1)
        self.writel(config, regval)
        got = self.readl(status)
        if bool(got & 1) != en:
            self.log(f"{header}failed to {'en' if en else 'dis'}able, STATUS={got:#010x}")
            raise IommuError(errno.ETIMEDOUT, f"{header}STATUS did not follow CONFIG")
        return bool(got & 1)

    def cmdqv_write_config(self, regval: int) -> None:
        self._write_config(TEGRA241_CMDQV_CONFIG, TEGRA241_CMDQV_STATUS, regval, "CMDQV: ")

    def vintf_write_config(self, vintf: Tegra241Vintf, regval: int) -> None:
        vintf.enabled = self._write_config(vintf.base + TEGRA241_VINTF_CONFIG,
                                           vintf.base + TEGRA241_VINTF_STATUS, regval,
                                           f"VINTF{vintf.idx}: ")

    def vcmdq_write_config(self, vcmdq: Tegra241Vcmdq, regval: int) -> None:
        vcmdq.enabled = self._write_config(vcmdq.page0 + TEGRA241_VCMDQ_CONFIG,
                                           vcmdq.page0 + TEGRA241_VCMDQ_STATUS, regval,
                                           vcmdq.header())

    # -- the CMDQV interrupt ----------------------------------------------------------------
    def isr(self) -> None:
        """``tegra241_cmdqv_isr``: VINTF0's errors are skipped here; a user VINTF's error
        map goes to its vIOMMU as a vEVENT (the guest skips its own)."""
        vintf_map = (self.readl(TEGRA241_CMDQV_VINTF_ERR_MAP + 4) << 32
                     | self.readl(TEGRA241_CMDQV_VINTF_ERR_MAP))
        vcmdq_map = ":".join(f"{self.readl(TEGRA241_CMDQV_CMDQ_ERR_MAP(m)):08x}"
                             for m in (3, 2, 1, 0))
        msg = f"unexpected error reported. vintf_map: {vintf_map:016x}, vcmdq_map {vcmdq_map}"
        self.log(msg)
        tracer = self.smmu.tracer
        if tracer.enabled:
            tracer.event("driver", "tegra241_cmdqv_isr", msg)
        if vintf_map & 1:
            vintf_map &= ~1
            vintf0 = self.vintfs[0]
            if vintf0 is not None:
                self.vintf0_handle_error(vintf0)
        while vintf_map:
            idx = _ilog2(vintf_map & -vintf_map)
            vintf_map &= vintf_map - 1
            if idx >= self.num_vintfs:
                continue  # a bit beyond the count is a hardware error
            vintf = self.vintfs[idx]
            if vintf is not None:
                self.vintf_user_handle_error(vintf)

    def _lvcmdq_err_map(self, vintf: Tegra241Vintf) -> list[int]:
        return [self.mmio.read64(vintf.base + TEGRA241_VINTF_LVCMDQ_ERR_MAP_64(i))
                for i in range(LVCMDQ_ERR_MAP_NUM_64)]

    def vintf_user_handle_error(self, vintf: Tegra241Vintf) -> None:
        data = iommu_vevent_tegra241_cmdqv()
        for i, err in enumerate(self._lvcmdq_err_map(vintf)):
            data.lvcmdq_err_map[i] = err
        tracer = self.smmu.tracer
        if tracer.enabled:
            tracer.event("driver", f"VINTF{vintf.idx} vEVENT", " ".join(
                f"{x:#018x}" for x in data.lvcmdq_err_map))
        # No vEVENTQ of this type: the event is dropped (iommufd says EOPNOTSUPP).
        with contextlib.suppress(IommuError):
            vintf.core.report_event(IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, struct_bytes(data))

    def vintf0_handle_error(self, vintf: Tegra241Vintf) -> None:
        for i, m in enumerate(self._lvcmdq_err_map(vintf)):
            while m:
                bit = _ilog2(m & -m)
                m &= m - 1
                lidx = 64 * i + bit
                if lidx >= self.num_lvcmdqs_per_vintf:
                    continue
                vcmdq = vintf.lvcmdqs[lidx]
                if vcmdq is None or vcmdq.cmdq is None:
                    continue
                gerror = self.readl(vcmdq.page0 + TEGRA241_VCMDQ_GERROR)
                vcmdq.cmdq.skip_err()
                self.writel(vcmdq.page0 + TEGRA241_VCMDQ_GERRORN, gerror)

    # -- in-kernel queues -------------------------------------------------------------------
    def get_secondary_cmdq(self, cmd: Cmd) -> ArmSmmuCmdq | None:
        """``tegra241_cmdqv_get_cmdq``: VINTF0's LVCMDQ of this CPU (the simulated
        kernel runs on CPU 0), when it is up and takes ``cmd``."""
        vintf = self.vintfs[0]
        if vintf is None or not vintf.enabled:
            return None
        vcmdq = vintf.lvcmdqs[0 % self.num_lvcmdqs_per_vintf]
        if vcmdq is None or not vcmdq.enabled or vcmdq.cmdq is None:
            return None
        if not vcmdq.cmdq.supports(cmd):
            return None
        return vcmdq.cmdq

    def vcmdq_hw_flush_timeout(self) -> None:
        """A CMD_SYNC on the SMMU's queue flushes an ATC_INV timeout a disabled guest
        VCMDQ would otherwise leave to its next owner."""
        self.smmu.cmdq.issue_cmdlist([arm_smmu_make_cmd_sync(CMDQ_SYNC_0_CS_NONE, 0)], True)

    def vcmdq_hw_deinit(self, vcmdq: Tegra241Vcmdq) -> None:
        h = vcmdq.header()
        try:
            self.vcmdq_write_config(vcmdq, 0)
        except IommuError:
            self.log(f"{h}GERRORN={self.readl(vcmdq.page0 + TEGRA241_VCMDQ_GERRORN):#x}, "
                     f"GERROR={self.readl(vcmdq.page0 + TEGRA241_VCMDQ_GERROR):#x}, "
                     f"CONS={self.readl(vcmdq.page0 + TEGRA241_VCMDQ_CONS):#x}")
        self.vcmdq_hw_flush_timeout()
        self.writel(vcmdq.page0 + TEGRA241_VCMDQ_PROD, 0)
        self.writel(vcmdq.page0 + TEGRA241_VCMDQ_CONS, 0)
        self.mmio.write64(vcmdq.page1 + TEGRA241_VCMDQ_BASE, 0)
        self.mmio.write64(vcmdq.page1 + TEGRA241_VCMDQ_CONS_INDX_BASE, 0)
        gerrorn = self.readl(vcmdq.page0 + TEGRA241_VCMDQ_GERRORN)
        gerror = self.readl(vcmdq.page0 + TEGRA241_VCMDQ_GERROR)
        if gerror != gerrorn:
            self.log(f"{h}uncleared error detected, resetting")
            self.writel(vcmdq.page0 + TEGRA241_VCMDQ_GERRORN, gerror)

    def vcmdq_hw_init(self, vcmdq: Tegra241Vcmdq) -> None:
        self.vcmdq_hw_deinit(vcmdq)
        # hyp_own is what the hardware kept of it (tegra241_vintf_hw_init).
        if not vcmdq.vintf.hyp_own and vcmdq.cmdq is not None:
            vcmdq.cmdq.supports_cmd = tegra241_guest_vcmdq_supports_cmd
        self.mmio.write64(vcmdq.page1 + TEGRA241_VCMDQ_BASE, vcmdq.q_base)
        self.vcmdq_write_config(vcmdq, VCMDQ_EN)

    def vcmdq_map_lvcmdq(self, vcmdq: Tegra241Vcmdq) -> None:
        off = TEGRA241_CMDQV_CMDQ_ALLOC(vcmdq.idx)
        self.writel(off, self.readl(off) | CMDQV_CMDQ_ALLOCATED)

    def vcmdq_unmap_lvcmdq(self, vcmdq: Tegra241Vcmdq) -> None:
        off = TEGRA241_CMDQV_CMDQ_ALLOC(vcmdq.idx)
        self.writel(off, self.readl(off) & ~CMDQV_CMDQ_ALLOCATED)

    def vintf_hw_deinit(self, vintf: Tegra241Vintf) -> None:
        # The hardware requires unmapping LVCMDQs in descending order.
        for vcmdq in reversed(vintf.lvcmdqs):
            if vcmdq is not None:
                self.vcmdq_hw_deinit(vcmdq)
                self.vcmdq_unmap_lvcmdq(vcmdq)
        with contextlib.suppress(IommuError):  # logged; the kernel goes on too
            self.vintf_write_config(vintf, 0)
        for sidx in range(self.num_sids_per_vintf):
            self.writel(vintf.base + TEGRA241_VINTF_SID_MATCH(sidx), 0)
            self.writel(vintf.base + TEGRA241_VINTF_SID_REPLACE(sidx), 0)

    def vintf_hw_init(self, vintf: Tegra241Vintf, hyp_own: bool) -> None:
        self.vintf_hw_deinit(vintf)
        regval = FIELD_PREP(VINTF_HYP_OWN, int(hyp_own)) | FIELD_PREP(VINTF_VMID, vintf.vmid)
        self.writel(vintf.base + TEGRA241_VINTF_CONFIG, regval)
        self.vintf_write_config(vintf, regval | VINTF_EN)
        # HYP_OWN is wired to 0 for a guest kernel: believe what the hardware kept.
        vintf.hyp_own = bool(self.readl(vintf.base + TEGRA241_VINTF_CONFIG) & VINTF_HYP_OWN)
        # The hardware requires mapping LVCMDQs in ascending order.
        for vcmdq in vintf.lvcmdqs:
            if vcmdq is not None:
                self.vcmdq_map_lvcmdq(vcmdq)
                try:
                    self.vcmdq_hw_init(vcmdq)
                except IommuError:
                    self.vintf_hw_deinit(vintf)
                    raise

    # -- arm_smmu_impl_ops ------------------------------------------------------------------
    def init_structures(self) -> None:
        """``tegra241_cmdqv_init_structures``: VINTF0 with all its LVCMDQs, for the
        kernel."""
        vintf = Tegra241Vintf(self)
        self.init_vintf(0, vintf)
        for lidx in range(self.num_lvcmdqs_per_vintf):
            self.vintf_alloc_lvcmdq(vintf, lidx)

    def device_reset(self) -> None:
        """``tegra241_cmdqv_hw_reset``: reset the CMDQV, pre-assign every VCMDQ to its
        (VINTF, logical index) slot, bring VINTF0 up as the hypervisor's."""
        regval = self.readl(TEGRA241_CMDQV_CONFIG)
        self.cmdqv_write_config(regval & ~CMDQV_EN)
        self.cmdqv_write_config(regval | CMDQV_EN)
        qidx = 0
        for idx in range(self.num_vintfs):
            for lidx in range(self.num_lvcmdqs_per_vintf):
                self.writel(TEGRA241_CMDQV_CMDQ_ALLOC(qidx),
                            FIELD_PREP(CMDQV_CMDQ_ALLOC_VINTF, idx)
                            | FIELD_PREP(CMDQV_CMDQ_ALLOC_LVCMDQ, lidx))
                qidx += 1
        vintf0 = self.vintfs[0]
        assert vintf0 is not None
        self.vintf_hw_init(vintf0, True)

    def device_disable(self) -> None:
        for vintf in self.vintfs:
            if vintf is not None:
                self.vintf_hw_deinit(vintf)

    def device_remove(self) -> None:
        if self.irq is not None:
            self.irq.free_irq()
        vintf0 = self.vintfs[0]
        if vintf0 is not None:
            queues = [q for q in vintf0.lvcmdqs if q is not None]
            self.remove_vintf(0)
            for vcmdq in queues:  # devres: the kernel's queue memory goes with the device
                if vcmdq.cmdq is not None:
                    vcmdq.cmdq.free()

    def hw_info(self, data_type: int) -> tuple[bytes, int]:
        """``tegra241_cmdqv_hw_info``: what a VMM puts in its emulated PARAM (it exposes
        one VINTF to a VM, so no VINTF count)."""
        if data_type != IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV:
            raise IommuError(errno.EOPNOTSUPP, f"hw_info type {data_type} not supported")
        regval = self.readl(TEGRA241_CMDQV_PARAM)
        info = iommu_hw_info_tegra241_cmdqv(
            flags=0, version=FIELD_GET(CMDQV_VER, regval),
            log2vcmdqs=_ilog2(self.num_lvcmdqs_per_vintf),
            log2vsids=_ilog2(self.num_sids_per_vintf))
        return struct_bytes(info), IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV

    def get_viommu_size(self, viommu_type: int) -> int:
        return 1 if viommu_type == IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV else 0

    def vsmmu_init(self, ops: IommuOps, viommu: IommufdViommu, parent: IommuDomain,
                   user_data: UserData | None) -> None:
        """``tegra241_cmdqv_init_vintf_user``: a VINTF for the vIOMMU (no LVCMDQ until
        user space asks for one), its page 0 registered for mmap."""
        from drivers.arm_smmu_v3.domain import ArmSmmuDomain

        if viommu.type != IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV:
            raise IommuError(errno.EOPNOTSUPP, f"vIOMMU type {viommu.type} is not CMDQV")
        if user_data is None:
            raise IommuError(errno.EINVAL, "a CMDQV vIOMMU needs its data (mmap offset)")
        data = user_data.copy_struct(iommu_viommu_tegra241_cmdqv,
                                     IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV, "out_vintf_mmap_length")
        assert isinstance(parent, ArmSmmuDomain)
        vintf = Tegra241Vintf(self, viommu, parent)
        try:
            self.init_vintf(self.num_vintfs - 1, vintf)
        except IommuError:
            self.log("no more available vintf")
            raise
        try:
            self.vintf_hw_init(vintf, False)
            try:
                vintf.mmap_offset = viommu.alloc_mmap(TEGRA241_VINTFi_PAGE0(vintf.idx), SZ_64K,
                                                      mmio=self.mmio)
                try:
                    data.out_vintf_mmap_length = SZ_64K
                    data.out_vintf_mmap_offset = vintf.mmap_offset
                    user_data.respond_struct(data, "out_vintf_mmap_length")
                except IommuError:
                    viommu.destroy_mmap(vintf.mmap_offset)
                    raise
            except IommuError:
                self.vintf_hw_deinit(vintf)
                raise
        except IommuError:
            self.deinit_vintf(vintf.idx)
            raise
        viommu.priv = vintf
        viommu.ops = ops.viommu_ops(TEGRA_VIOMMU_OPS)

    # -- VINTF and LVCMDQ resources ---------------------------------------------------------
    def init_vintf(self, max_idx: int, vintf: Tegra241Vintf) -> None:
        idx = self.vintf_ids.alloc(max_idx)
        vintf.idx = idx
        vintf.base = TEGRA241_VINTF(idx)
        vintf.lvcmdqs = [None] * self.num_lvcmdqs_per_vintf
        self.vintfs[idx] = vintf

    def deinit_vintf(self, idx: int) -> None:
        vintf = self.vintfs[idx]
        if vintf is not None:
            vintf.lvcmdqs = []
        self.vintfs[idx] = None
        self.vintf_ids.free(idx)

    def remove_vintf(self, idx: int) -> None:
        vintf = self.vintfs[idx]
        assert vintf is not None
        for lidx, vcmdq in enumerate(vintf.lvcmdqs):
            if vcmdq is not None:
                self.vintf_free_lvcmdq(vintf, lidx)
        self.deinit_vintf(idx)

    def vintf_free_lvcmdq(self, vintf: Tegra241Vintf, lidx: int) -> None:
        vintf.lvcmdqs[lidx] = None

    def vintf_alloc_lvcmdq(self, vintf: Tegra241Vintf, lidx: int) -> Tegra241Vcmdq:
        """A kernel LVCMDQ: queue memory of its own, as big as IDR1.CMDQS allows."""
        vcmdq = Tegra241Vcmdq(self, vintf, lidx)
        smmu = self.smmu
        max_n_shift = min(CMDQ_MAX_SZ_SHIFT, FIELD_GET(IDR1_CMDQS, smmu.readl(ARM_SMMU_IDR1)))
        cmdq = ArmSmmuCmdq(smmu, max_n_shift, name=f"vcmdq{vcmdq.idx}", mmio=self.mmio,
                           prod_off=vcmdq.page0 + TEGRA241_VCMDQ_PROD,
                           cons_off=vcmdq.page0 + TEGRA241_VCMDQ_CONS,
                           base_off=vcmdq.page1 + TEGRA241_VCMDQ_BASE,
                           busy_polling=bool(smmu.options & ARM_SMMU_OPT_TEGRA241_CMDQV))
        vcmdq.cmdq = cmdq
        vcmdq.q_base = (cmdq.base_dma & VCMDQ_ADDR) | FIELD_PREP(VCMDQ_LOG2SIZE, max_n_shift)
        vintf.lvcmdqs[lidx] = vcmdq
        return vcmdq

    # -- user VINTFs: vDEVICEs --------------------------------------------------------------
    def vintf_init_vsid(self, vdev: IommufdVdevice) -> None:
        """``tegra241_vintf_init_vsid``: a free SID pair maps the vSID to the device's
        StreamID."""
        master = master_of(vdev.dev)
        vintf = vintf_of(vdev.viommu)
        virt_sid = vdev.virt_id
        if virt_sid > FIELD_GET(VINTF_SID_MATCH_VIRT_SID, VINTF_SID_MATCH_VIRT_SID):
            raise IommuError(errno.EINVAL, f"vSID {virt_sid:#x} is wider than 20 bits")
        if len(master.streams) != 1:
            raise IommuError(errno.EOPNOTSUPP, f"{vdev.dev.name} has {len(master.streams)} "
                             "StreamIDs")
        sidx = vintf.sids.alloc()
        sid = master.streams[0]
        self.writel(vintf.base + TEGRA241_VINTF_SID_REPLACE(sidx), sid)
        self.writel(vintf.base + TEGRA241_VINTF_SID_MATCH(sidx),
                    FIELD_PREP(VINTF_SID_MATCH_VIRT_SID, virt_sid) | VINTF_SID_MATCH_ENABLE)
        vdev.priv = Tegra241VintfSid(vintf, sid, sidx)

    def vintf_destroy_vsid(self, vdev: IommufdVdevice) -> None:
        vsid = vdev.priv
        if not isinstance(vsid, Tegra241VintfSid):
            return
        vintf = vsid.vintf
        self.writel(vintf.base + TEGRA241_VINTF_SID_MATCH(vsid.idx), 0)
        self.writel(vintf.base + TEGRA241_VINTF_SID_REPLACE(vsid.idx), 0)
        vintf.sids.free(vsid.idx)
        vdev.priv = None

    # -- user VINTFs: HW queues -------------------------------------------------------------
    def vintf_get_vcmdq_size(self, queue_type: int) -> int:
        return 1 if queue_type == IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV else 0

    def vintf_alloc_lvcmdq_user(self, hw_queue: IommufdHwQueue, lidx: int,
                                base_addr_pa: int) -> None:
        """``tegra241_vintf_alloc_lvcmdq_user``: checks in the kernel's order, then map
        the VCMDQ and point its BASE at the guest queue; the guest enables it."""
        vintf = vintf_of(hw_queue.viommu)
        if hw_queue.type != IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV:
            raise IommuError(errno.EOPNOTSUPP, f"HW queue type {hw_queue.type} is not VCMDQ")
        if lidx >= self.num_lvcmdqs_per_vintf:
            raise IommuError(errno.EINVAL, f"LVCMDQ index {lidx} >= "
                             f"{self.num_lvcmdqs_per_vintf}")
        if vintf.lvcmdqs[lidx] is not None:
            raise IommuError(errno.EEXIST, f"LVCMDQ {lidx} is already allocated")
        prev = None
        if lidx:
            # The hardware maps LVCMDQs in ascending order.
            prev = vintf.lvcmdqs[lidx - 1]
            if prev is None:
                raise IommuError(errno.EIO, f"LVCMDQ {lidx - 1} must be allocated first")
        max_n_shift = FIELD_GET(IDR1_CMDQS, self.smmu.readl(ARM_SMMU_IDR1))
        length = hw_queue.length
        if (length & (length - 1) or length < 32
                or length > 1 << (max_n_shift + CMDQ_ENT_SZ_SHIFT)):
            raise IommuError(errno.EINVAL, f"queue length {length:#x} is not a power of 2 in "
                             f"[32, {1 << (max_n_shift + CMDQ_ENT_SZ_SHIFT):#x}]")
        log2size = _ilog2(length) - CMDQ_ENT_SZ_SHIFT
        if base_addr_pa & ~VCMDQ_ADDR or base_addr_pa & (length - 1):
            raise IommuError(errno.EINVAL, f"queue base {base_addr_pa:#x} is not aligned to "
                             f"its length {length:#x}")
        vcmdq = Tegra241Vcmdq(self, vintf, lidx)
        vcmdq.core = hw_queue
        if prev is not None:
            # Destroy must go in descending order: iommufd enforces it for us.
            assert prev.core is not None
            hw_queue.depend(prev.core)
        vcmdq.prev = prev
        self.vcmdq_map_lvcmdq(vcmdq)
        vcmdq.q_base = (base_addr_pa & VCMDQ_ADDR) | log2size
        try:
            self.vcmdq_hw_init_user(vcmdq)
        except IommuError:
            self.vcmdq_unmap_lvcmdq(vcmdq)
            if prev is not None and prev.core is not None:
                hw_queue.undepend(prev.core)
            raise
        vintf.lvcmdqs[lidx] = vcmdq
        hw_queue.priv = vcmdq

    def vcmdq_hw_init_user(self, vcmdq: Tegra241Vcmdq) -> None:
        self.vcmdq_hw_deinit(vcmdq)
        # Configure only: user space does the enabling.
        self.mmio.write64(vcmdq.page1 + TEGRA241_VCMDQ_BASE, vcmdq.q_base)

    def vintf_destroy_lvcmdq_user(self, hw_queue: IommufdHwQueue) -> None:
        vcmdq = hw_queue.priv
        if not isinstance(vcmdq, Tegra241Vcmdq):
            return
        self.vcmdq_hw_deinit(vcmdq)
        self.vcmdq_unmap_lvcmdq(vcmdq)
        self.vintf_free_lvcmdq(vcmdq.vintf, vcmdq.lidx)
        if vcmdq.prev is not None and vcmdq.prev.core is not None:
            hw_queue.undepend(vcmdq.prev.core)
        hw_queue.priv = None

    def destroy_vintf_user(self, viommu: IommufdViommu) -> None:
        """``tegra241_cmdqv_destroy_vintf_user``."""
        vintf = vintf_of(viommu)
        if vintf.mmap_offset:
            viommu.destroy_mmap(vintf.mmap_offset)
        self.vintf_hw_deinit(vintf)
        self.remove_vintf(vintf.idx)
        viommu.priv = None


def vintf_of(viommu: IommufdViommu) -> Tegra241Vintf:
    v = viommu.priv
    if not isinstance(v, Tegra241Vintf):
        raise IommuError(errno.EINVAL, "not a Tegra241 CMDQV vIOMMU")
    return v


def tegra241_cmdqv_probe(smmu: ArmSmmuDevice, res: IommuResources) -> Tegra241Cmdqv | None:
    """``tegra241_cmdqv_probe``: the CMDQV's register window and interrupt; without a
    window the driver falls back to the SMMU's own queue (and says so)."""
    mmio = res.mmio.get("cmdqv")
    if mmio is None:
        smmu.log.append("tegra241_cmdqv: no memory resource found for CMDQV")
        smmu.log.append("tegra241_cmdqv: Falling back to standard SMMU CMDQ")
        smmu.options &= ~ARM_SMMU_OPT_TEGRA241_CMDQV
        return None
    irq = res.irqs.get("cmdqv")
    if irq is None:
        smmu.log.append("tegra241_cmdqv: no interrupt. errors will not be reported")
    cmdqv = Tegra241Cmdqv(smmu, mmio, irq)
    if irq is not None:
        irq.request_irq(cmdqv.isr)
    return cmdqv


__all__ = [
    "TEGRA_VIOMMU_OPS",
    "Tegra241Cmdqv",
    "Tegra241Vcmdq",
    "Tegra241Vintf",
    "Tegra241VintfSid",
    "tegra241_cmdqv_probe",
    "tegra241_guest_vcmdq_supports_cmd",
    "vintf_of",
]
