"""A VMM with an AMD HW-vIOMMU (prototype), ioctl ABI only, and its guest: guest RAM at
IOVA = GPA in an IOAS, a nest parent, an ``AMD_HW_PROTOTYPE`` vIOMMU whose VF page the VMM
mmaps from the iommufd, the guest's command buffer and event log as HW queues, and what
the guest's amd_iommu driver then does by itself through that page."""

from __future__ import annotations

from typing import Any

from drivers.amd_vi.amd_iommu_types import (
    CMD_COMPL_WAIT,
    CMD_COMPL_WAIT_STORE_MASK,
    CMD_INV_IOMMU_PAGES_GN_MASK,
    CMD_INV_IOMMU_PAGES_PDE_MASK,
    CONTROL_CMDBUF_EN,
    CONTROL_COMWAIT_EN,
    CONTROL_EVT_LOG_EN,
    EventLogEntry,
)
from drivers.amd_vi.iommu import build_inv_iommu_pages, build_inv_iotlb_pages
from drivers.amd_vi.uapi import (
    IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE,
    IOMMU_HW_QUEUE_TYPE_AMD_EVTLOG_PROTOTYPE,
    IOMMU_VEVENTQ_TYPE_AMD_HW_PROTOTYPE,
    IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE,
    iommu_vevent_amd_hw,
    iommu_viommu_amd_hw,
)
from drivers.amd_vi.viommu_regs import (
    VF_CMD_HEAD,
    VF_CMD_TAIL,
    VF_CONTROL,
    VF_EVT_HEAD,
    VF_EVT_TAIL,
    VF_STATUS,
)
from iommu_core.pgtable import IoPageTable
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_sim import Machine
from iommufd import uapi as u

from .conftest import gdte_for
from .vmm import GVA, PAGE, AmdVmm, sz

NPAGES = 64
GDOMID = 0x33
GDEVID = 0x0100
CMDQ_GPA = 0x3E000  # the guest's command buffer and event log: top of its RAM
EVTQ_GPA = 0x3F000
SEM_GPA = 0x3D000  # the guest driver's completion-wait semaphore


def machine(*devices: str, hw_viommu: bool = True, **options: Any) -> Machine:
    return Machine.from_config({
        "iommus": [{"name": "amdvi0", "driver": "amd_vi", "hw_viommu": hw_viommu,
                    **options}],
        "devices": [{"name": d, "iommu": "amdvi0"} for d in devices]})


class HwvVm(AmdVmm):
    """One VM: its own iommufd, device, NPAGES of guest RAM (in areas of ``area`` bytes),
    nest parent, HW vIOMMU, vDEVICE."""

    def __init__(self, m: Machine, dev: str, gdevid: int = GDEVID,
                 viommu_type: int = IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE,
                 area: int = PAGE) -> None:
        super().__init__(m, dev, NPAGES, area)
        self.parent = self.hwpt_alloc(self.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        self.viommu, self.guest_id, off, length = self.viommu_alloc(viommu_type)
        self.vf = m.mmap(length, self.fd, off) if length else 0
        vd = u.iommu_vdevice_alloc(size=sz(u.iommu_vdevice_alloc), viommu_id=self.viommu,
                                   dev_id=self.dev_id, virt_id=gdevid)
        m.ioctl(self.fd, u.IOMMU_VDEVICE_ALLOC, vd)

    # -- the VMM -------------------------------------------------------------------------
    def viommu_alloc(self, vtype: int, data_len: int | None = None
                     ) -> tuple[int, int, int, int]:
        """(vIOMMU id, GuestID, mmap offset, mmap length)."""
        hw = vtype == IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE
        n = sz(iommu_viommu_amd_hw) if data_len is None and hw else (data_len or 0)
        self.m.mem_write(self.scratch, bytes(PAGE))
        a = u.iommu_viommu_alloc(size=sz(u.iommu_viommu_alloc), type=vtype,
                                 dev_id=self.dev_id, hwpt_id=self.parent, data_len=n,
                                 data_uptr=self.scratch if n else 0)
        self.m.ioctl(self.fd, u.IOMMU_VIOMMU_ALLOC, a)
        out = iommu_viommu_amd_hw.from_buffer_copy(
            self.m.mem_read(self.scratch, sz(iommu_viommu_amd_hw)))
        return (int(a.out_viommu_id), int(out.out_guest_id), int(out.out_vfmmio_mmap_offset),
                int(out.out_vfmmio_mmap_length))

    def nested(self, gcr3: int, gdomid: int = GDOMID) -> int:
        raw = b"".join(w.to_bytes(8, "little") for w in gdte_for(gcr3, gdomid))
        return self.hwpt_alloc(self.viommu, 0, raw, u.IOMMU_HWPT_DATA_AMD_GUEST)

    def hw_queue(self, qtype: int, gpa: int, length: int = PAGE, index: int = 0) -> int:
        a = u.iommu_hw_queue_alloc(size=sz(u.iommu_hw_queue_alloc), viommu_id=self.viommu,
                                   type=qtype, index=index, nesting_parent_iova=gpa,
                                   length=length)
        self.m.ioctl(self.fd, u.IOMMU_HW_QUEUE_ALLOC, a)
        return int(a.out_hw_queue_id)

    def veventq(self, depth: int = 8) -> int:
        """A vEVENTQ for the guest's interrupts: its fd."""
        a = u.iommu_veventq_alloc(size=sz(u.iommu_veventq_alloc), viommu_id=self.viommu,
                                  type=IOMMU_VEVENTQ_TYPE_AMD_HW_PROTOTYPE,
                                  veventq_depth=depth)
        self.m.ioctl(self.fd, u.IOMMU_VEVENTQ_ALLOC, a)
        return int(a.out_veventq_fd)

    def vevents(self, efd: int) -> list[int]:
        """The guest statuses the queued vEVENTs carry, oldest first."""
        raw = self.m.read(efd, 16 * 16)
        return [iommu_vevent_amd_hw.from_buffer_copy(raw[i + 8:i + 16]).status
                for i in range(0, len(raw), 16)]

    def unmap(self, iova: int, length: int) -> None:
        um = u.iommu_ioas_unmap(size=sz(u.iommu_ioas_unmap), ioas_id=self.ioas, iova=iova,
                                length=length)
        self.m.ioctl(self.fd, u.IOMMU_IOAS_UNMAP, um)

    def hdomid(self) -> int:
        return int(self.dte().domid)

    def stale_guest(self) -> tuple[IoPageTable, int, int]:
        """Attached to a nested domain; GVA cached at the OLD page while the guest's table
        already says NEW: (table, old gpa, new gpa)."""
        pt, data, gcr3 = self.guest_tables()
        self.attach(self.nested(gcr3))
        other = self.alloc_table(PAGE)
        self.write(data, b"OLD!")
        self.write(other, b"NEW!")
        assert self.m.dma_read(self.dev, GVA, 4) == b"OLD!"
        pt.unmap(GVA, PAGE)
        pt.map(GVA, other, PAGE, IOMMU_READ | IOMMU_WRITE)
        assert self.m.dma_read(self.dev, GVA, 4) == b"OLD!"
        return pt, data, other


class GuestCmdBuf:
    """The guest's amd_iommu driver on its HW vIOMMU: its command buffer and event log
    in its RAM, pointers and status through the VF page the VMM mapped."""

    def __init__(self, vm: HwvVm, cmd_gpa: int = CMDQ_GPA, evt_gpa: int | None = EVTQ_GPA,
                 length: int = PAGE) -> None:
        self.vm = vm
        self.cmd_gpa = cmd_gpa
        self.evt_gpa = evt_gpa
        self.length = length
        self.cmdq = vm.hw_queue(IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE, cmd_gpa, length)
        self.evtq = (vm.hw_queue(IOMMU_HW_QUEUE_TYPE_AMD_EVTLOG_PROTOTYPE, evt_gpa, length)
                     if evt_gpa is not None else None)
        self.tail = 0
        self.sem = 0
        ctl = (1 << CONTROL_CMDBUF_EN) | (1 << CONTROL_COMWAIT_EN)
        if evt_gpa is not None:
            ctl |= 1 << CONTROL_EVT_LOG_EN
        self.set_reg(VF_CONTROL, ctl)

    def reg(self, off: int) -> int:
        return int.from_bytes(self.vm.m.mem_read(self.vm.vf + off, 4), "little")

    def set_reg(self, off: int, value: int) -> None:
        self.vm.m.mem_write(self.vm.vf + off, value.to_bytes(4, "little"))

    def submit(self, cmds: list[tuple[int, ...]]) -> None:
        """Write the commands at tail in guest RAM, then store the new tail."""
        for c in cmds:
            raw = b"".join((w & 0xFFFF_FFFF).to_bytes(4, "little") for w in c)
            self.vm.write(self.cmd_gpa + self.tail, raw)
            self.tail = (self.tail + 16) % self.length
        self.set_reg(VF_CMD_TAIL, self.tail)

    def completion_wait(self, sem_gpa: int = SEM_GPA) -> tuple[int, ...]:
        self.sem += 1
        return ((sem_gpa & 0xFFFF_FFF8) | CMD_COMPL_WAIT_STORE_MASK,
                (CMD_COMPL_WAIT << 28) | ((sem_gpa >> 32) & 0xFFFFF), self.sem, 0)

    def invalidate(self, gva: int = GVA, gdomid: int = GDOMID) -> None:
        """What the guest's amd_iommu_domain_flush_pages does for one page: INVALIDATE_
        IOMMU_PAGES (GN, PDE: it freed and remade tables), then COMPLETION_WAIT."""
        cmd = build_inv_iommu_pages(gva, gva + PAGE - 1, gdomid, 0,
                                    CMD_INV_IOMMU_PAGES_GN_MASK | CMD_INV_IOMMU_PAGES_PDE_MASK)
        self.submit([cmd.data, self.completion_wait()])

    def invalidate_iotlb(self, gdevid: int = GDEVID, gva: int = GVA) -> None:
        cmd = build_inv_iotlb_pages(gdevid, 0, gva, gva + PAGE - 1, 0, False)
        self.submit([cmd.data, self.completion_wait()])

    @property
    def head(self) -> int:
        return self.reg(VF_CMD_HEAD)

    def events(self) -> list[EventLogEntry]:
        """The guest's event-log interrupt: records head..tail, head moved, status
        cleared."""
        head, tail = self.reg(VF_EVT_HEAD), self.reg(VF_EVT_TAIL)
        out = []
        assert self.evt_gpa is not None
        while head != tail:
            out.append(EventLogEntry.from_bytes(self.vm.read(self.evt_gpa + head, 16)))
            head = (head + 16) % self.length
        self.set_reg(VF_EVT_HEAD, head)
        self.set_reg(VF_STATUS, self.reg(VF_STATUS))
        return out

    def skip(self) -> None:
        """Past the command head stopped on; the buffer runs again at the next tail."""
        self.set_reg(VF_CMD_HEAD, (self.head + 16) % self.length)
        self.set_reg(VF_CMD_TAIL, self.tail)
