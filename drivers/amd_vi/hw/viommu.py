"""The AMD HW-vIOMMU model (PROTOTYPE, not upstream): the unit consumes each guest's own
command buffer, in guest memory, when the guest moves its tail through its VF MMIO page.

Per GuestID the unit holds the hypervisor's VF Control page (GUEST_EN, the guest's
command buffer and event log, its Domain ID and Device ID maps, its stage 2) and the
guest's VF page (head/tail pointers, status, guest control); the layout is
:mod:`drivers.amd_vi.viommu_regs`. A guest command goes through the unit's one command
engine (:meth:`AmdIommuHw.run_ring` fetches it, :meth:`AmdIommuHw.exec_cmd` executes it)
after the checks the spec puts on a guest's buffer:

* only INVALIDATE_IOMMU_PAGES, INVALIDATE_IOTLB_PAGES and COMPLETION_WAIT are a guest's;
  any other opcode is ILLEGAL_COMMAND_ERROR;
* INVALIDATE_IOMMU_PAGES' DomainID is a gDomID, replaced through the Domain ID map;
  INVALIDATE_IOTLB_PAGES' DeviceID is a gDeviceID, replaced through the Device ID map.
  An ID the map does not hold is ILLEGAL_COMMAND_ERROR naming it, and nothing executes;
* COMPLETION_WAIT's store address is guest-physical: it is translated through the guest's
  stage 2 and a write it may not do is an IO_PAGE_FAULT event instead of the store; its
  interrupt is the guest's (COM_WAIT_INT in its status), never the host's.

Errors are records in the guest's event log (EVT_INT in its status), never in the host's;
with the guest's EVT_INT_EN (or COMWAIT_EN, for a COMPLETION_WAIT with I) the guest's
interrupt sets its bit in INT_PENDING and raises the unit's ``vf`` line, for the
hypervisor to pass on;
a refused command stops the guest's buffer with head on it, as the host's does. The model
caches no map entry and no stage-2 translation, so what the driver writes to the maps is
in force at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drivers.amd_vi.amd_iommu_types import (
    CMD_COMPL_WAIT,
    CMD_COMPL_WAIT_INT_MASK,
    CMD_COMPL_WAIT_STORE_MASK,
    CMD_INV_IOMMU_PAGES,
    CMD_INV_IOTLB_PAGES,
    CMD_NAMES,
    CONTROL_CMDBUF_EN,
    CONTROL_COMWAIT_EN,
    CONTROL_EVT_INT_EN,
    CONTROL_EVT_LOG_EN,
    DTE_HOST_TRP,
    DTE_MODE_MASK,
    EVENT_FLAG_RW,
    EVENT_TYPE_ILL_CMD,
    EVENT_TYPE_IO_FAULT,
    MMIO_STATUS_COM_WAIT_INT_MASK,
    MMIO_STATUS_EVT_INT_MASK,
    MMIO_STATUS_EVT_OVERFLOW_MASK,
    RING_BASE_ADDR_MASK,
    RING_LEN_MASK,
    RING_PTR_MASK,
    EventLogEntry,
    field_get,
)
from drivers.amd_vi.viommu_regs import (
    MAP_ENTRY_ID,
    MAP_ENTRY_SIZE,
    MAP_ENTRY_V,
    VF_CMD_HEAD,
    VF_CMD_TAIL,
    VF_CONTROL,
    VF_EVT_HEAD,
    VF_EVT_TAIL,
    VF_PAGE,
    VF_REG_NAMES,
    VF_STATUS,
    VFCTL_CMD_BUF,
    VFCTL_CMD_GPA,
    VFCTL_CONTROL,
    VFCTL_DEVID_MAP,
    VFCTL_DOMID_MAP,
    VFCTL_EVT_LOG,
    VFCTL_GPA_XLATE,
    VFCTL_GUEST_EN,
    VFCTL_INFO,
    VFCTL_INT_PENDING,
    VFCTL_REG_NAMES,
)
from iommu_core.pgtable import formats
from iommu_core.pgtable.walk import Access, WalkFault, walk

if TYPE_CHECKING:
    from drivers.amd_vi.hw.amd_iommu import AmdIommuHw
    from iommu_core.platform.dma import IrqLine

#: What a guest's buffer may hold.
GUEST_OPS = frozenset({CMD_INV_IOMMU_PAGES, CMD_INV_IOTLB_PAGES, CMD_COMPL_WAIT})
_GUEST_CONTROL = ((1 << CONTROL_CMDBUF_EN) | (1 << CONTROL_EVT_LOG_EN)
                  | (1 << CONTROL_EVT_INT_EN) | (1 << CONTROL_COMWAIT_EN))
_GUEST_W1C = (MMIO_STATUS_EVT_OVERFLOW_MASK | MMIO_STATUS_EVT_INT_MASK
              | MMIO_STATUS_COM_WAIT_INT_MASK)
_U64 = (1 << 64) - 1
_PENDING_WORDS = 64  # 4096 GuestIDs
_CTL_REGS = {VFCTL_CONTROL: VFCTL_GUEST_EN, VFCTL_CMD_BUF: RING_BASE_ADDR_MASK | RING_LEN_MASK,
             VFCTL_EVT_LOG: RING_BASE_ADDR_MASK | RING_LEN_MASK,
             VFCTL_DOMID_MAP: RING_BASE_ADDR_MASK, VFCTL_DEVID_MAP: RING_BASE_ADDR_MASK,
             VFCTL_GPA_XLATE: DTE_HOST_TRP | DTE_MODE_MASK, VFCTL_CMD_GPA: (1 << 64) - 16}


class GuestState:
    """One GuestID: the hypervisor's control registers and the guest's page."""

    __slots__ = ("busy", "ctl", "executed", "gcontrol", "guest_id", "refused", "vf")

    def __init__(self, guest_id: int) -> None:
        self.guest_id = guest_id
        self.ctl: dict[int, int] = {}
        #: VF page registers but CONTROL (head/tail pointers, status).
        self.vf: dict[int, int] = {}
        self.gcontrol = 0
        self.busy = False
        self.executed = 0
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return bool(self.ctl.get(VFCTL_CONTROL, 0) & VFCTL_GUEST_EN)

    def gctl(self, bit: int) -> bool:
        return bool(self.gcontrol >> bit & 1)


class AmdViommuHw:
    """The HW-vIOMMU part of one AMD-Vi unit (``guests`` GuestIDs, 0 the hypervisor's)."""

    def __init__(self, hw: AmdIommuHw, guests: int, irq: IrqLine) -> None:
        from drivers.amd_vi.hw.amd_iommu import Reg64Mmio

        self.hw = hw
        self.irq = irq
        #: GuestIDs with an interrupt pending (VFCTL_INT_PENDING).
        self.pending = 0
        self.mem = hw.mem
        self.tracer = hw.tracer
        self.guests = [GuestState(g) for g in range(guests)]
        self.vf_mmio = Reg64Mmio(self.vf_read, self.vf_write)
        self.ctl_mmio = Reg64Mmio(self.ctl_read, self.ctl_write)

    def _guest(self, off: int) -> tuple[GuestState | None, int]:
        g = off // VF_PAGE
        return (self.guests[g] if 0 < g < len(self.guests) else None), off % VF_PAGE

    # -- the guest's page ------------------------------------------------------------------
    def vf_read(self, off: int) -> int:
        gs, reg = self._guest(off)
        if gs is None:
            return 0
        if reg == VF_CONTROL:
            return gs.gcontrol
        return gs.vf.get(reg, 0)

    def vf_write(self, off: int, value: int) -> None:
        gs, reg = self._guest(off)
        if gs is None:
            return
        if self.tracer.enabled:
            self.tracer.event("hw", "mmio_write", f"{self.hw.name} guest {gs.guest_id} VF "
                              f"{VF_REG_NAMES.get(reg, hex(reg))} <- {value:#x}")
        if reg in (VF_CMD_HEAD, VF_EVT_HEAD):
            gs.vf[reg] = value & RING_PTR_MASK
        elif reg == VF_CMD_TAIL:
            gs.vf[reg] = value & RING_PTR_MASK
            self.consume(gs)
        elif reg == VF_STATUS:
            gs.vf[reg] = gs.vf.get(reg, 0) & ~(value & _GUEST_W1C)
        elif reg == VF_CONTROL:
            was = gs.gctl(CONTROL_CMDBUF_EN)
            gs.gcontrol = value & _GUEST_CONTROL
            if gs.gctl(CONTROL_CMDBUF_EN) and not was:
                self.consume(gs)
        # VF_EVT_TAIL and the rest: read-only or reserved

    # -- the hypervisor's page ---------------------------------------------------------------
    def ctl_read(self, off: int) -> int:
        if off == VFCTL_INFO:
            return len(self.guests)
        if VFCTL_INT_PENDING <= off < VFCTL_INT_PENDING + 8 * _PENDING_WORDS:
            return (self.pending >> (off - VFCTL_INT_PENDING) * 8) & _U64
        gs, reg = self._guest(off)
        return 0 if gs is None else gs.ctl.get(reg, 0)

    def ctl_write(self, off: int, value: int) -> None:
        if VFCTL_INT_PENDING <= off < VFCTL_INT_PENDING + 8 * _PENDING_WORDS:
            self.pending &= ~((value & _U64) << (off - VFCTL_INT_PENDING) * 8)
            return
        gs, reg = self._guest(off)
        if gs is None or reg not in _CTL_REGS:
            return
        if self.tracer.enabled:
            self.tracer.event("hw", "mmio_write", f"{self.hw.name} guest {gs.guest_id} "
                              f"VFCTL {VFCTL_REG_NAMES[reg]} <- {value:#x}")
        was = gs.enabled
        gs.ctl[reg] = value & _CTL_REGS[reg]
        if gs.enabled and not was:
            self.consume(gs)

    # -- the guest's command buffer ----------------------------------------------------------
    def consume_all(self) -> None:
        for gs in self.guests[1:]:
            self.consume(gs)

    def consume(self, gs: GuestState) -> None:
        if (gs.busy or not gs.enabled or not gs.gctl(CONTROL_CMDBUF_EN)
                or not self.hw.viommu_enabled):
            return
        gs.busy = True
        vf = gs.vf
        try:
            self.hw.run_ring(gs.ctl.get(VFCTL_CMD_BUF, 0), lambda: vf.get(VF_CMD_HEAD, 0),
                             lambda h: vf.__setitem__(VF_CMD_HEAD, h),
                             lambda: vf.get(VF_CMD_TAIL, 0),
                             lambda words, _addr: self.execute(gs, words))
        finally:
            gs.busy = False

    def _map(self, gs: GuestState, reg: int, gid: int) -> int | None:
        table = gs.ctl.get(reg, 0)
        if not table:
            return None
        entry = int.from_bytes(self.mem.read(table + gid * MAP_ENTRY_SIZE, 4), "little")
        return entry & MAP_ENTRY_ID if entry & MAP_ENTRY_V else None

    def execute(self, gs: GuestState, d: tuple[int, ...]) -> bool:
        """One guest command: checked, its IDs replaced, then the unit's command engine.
        False: refused (an event is in the guest's log)."""
        op = d[1] >> 28
        if self.tracer.enabled:
            self.tracer.event("hw", f"guest {gs.guest_id} {CMD_NAMES.get(op, f'op {op:#x}')}",
                              " ".join(f"{w:#010x}" for w in d))
        if op not in GUEST_OPS:
            return self._refuse(gs, 0, 0, f"opcode {op:#x} is not a guest command")
        if op == CMD_COMPL_WAIT:
            self._completion_wait(gs, d)
        elif op == CMD_INV_IOMMU_PAGES:
            gdom = d[1] & 0xFFFF
            hdom = self._map(gs, VFCTL_DOMID_MAP, gdom)
            if hdom is None:
                return self._refuse(gs, 0, gdom, f"gDomID {gdom:#x} is not mapped")
            self.hw.exec_cmd((d[0], (d[1] & ~0xFFFF) | hdom, d[2], d[3]))
        else:  # INVALIDATE_IOTLB_PAGES
            gdev = d[0] & 0xFFFF
            hdev = self._map(gs, VFCTL_DEVID_MAP, gdev)
            if hdev is None:
                return self._refuse(gs, gdev, 0, f"gDeviceID {gdev:#x} is not mapped")
            self.hw.exec_cmd(((d[0] & ~0xFFFF) | hdev, (d[1] & ~0xFFFF) | hdev, d[2], d[3]))
        gs.executed += 1
        self.hw.stats["guest_commands"] += 1
        return True

    def _completion_wait(self, gs: GuestState, d: tuple[int, ...]) -> None:
        # In order: every earlier command of the unit has completed by now.
        if d[0] & CMD_COMPL_WAIT_STORE_MASK:
            gpa = (d[0] & 0xFFFF_FFF8) | ((d[1] & 0xFFFFF) << 32)
            spa = self.gpa_to_spa(gs, gpa)
            if spa is None:
                self.log_event(gs, EventLogEntry.make(EVENT_TYPE_IO_FAULT, 0, 0, EVENT_FLAG_RW,
                                                      gpa))
            else:
                self.mem.write_u64(spa, d[2] | (d[3] << 32))
        if d[0] & CMD_COMPL_WAIT_INT_MASK:
            gs.vf[VF_STATUS] = gs.vf.get(VF_STATUS, 0) | MMIO_STATUS_COM_WAIT_INT_MASK
            if gs.gctl(CONTROL_COMWAIT_EN):
                self._interrupt(gs)

    def gpa_to_spa(self, gs: GuestState, gpa: int) -> int | None:
        """A guest-physical address the unit writes, through the guest's stage 2 (the
        nest parent's v1 table); None when it may not write there."""
        x = gs.ctl.get(VFCTL_GPA_XLATE, 0)
        mode = field_get(DTE_MODE_MASK, x)
        if not 0 < mode < 7:
            return None
        res = walk(formats.amd_v1(mode), self.mem.read_u64, x & DTE_HOST_TRP, gpa,
                   access=Access.WRITE, privileged=True)
        if isinstance(res, WalkFault) or not res.writable:
            return None
        mask = res.page_size - 1
        return (res.oa & ~mask) | (gpa & mask)

    def _refuse(self, gs: GuestState, devid: int, domid: int, why: str) -> bool:
        gs.refused += 1
        self.hw.stats["guest_commands_refused"] += 1
        if self.tracer.enabled:
            self.tracer.event("hw", f"guest {gs.guest_id} ILLEGAL_COMMAND_ERROR", why)
        gpa = gs.ctl.get(VFCTL_CMD_GPA, 0) + gs.vf.get(VF_CMD_HEAD, 0)
        self.log_event(gs, EventLogEntry.make(EVENT_TYPE_ILL_CMD, devid, domid, 0, gpa))
        return False

    def log_event(self, gs: GuestState, ev: EventLogEntry) -> None:
        """A record in the guest's event log, EVT_INT in its status (EVT_OVERFLOW when
        full); a guest without a log enabled loses it."""
        if not gs.gctl(CONTROL_EVT_LOG_EN):
            return
        nxt = self.hw.ring_push(gs.ctl.get(VFCTL_EVT_LOG, 0), gs.vf.get(VF_EVT_HEAD, 0),
                                gs.vf.get(VF_EVT_TAIL, 0), ev.to_bytes())
        st = gs.vf.get(VF_STATUS, 0)
        if nxt is None:
            gs.vf[VF_STATUS] = st | MMIO_STATUS_EVT_OVERFLOW_MASK
            return
        gs.vf[VF_EVT_TAIL] = nxt
        gs.vf[VF_STATUS] = st | MMIO_STATUS_EVT_INT_MASK
        if gs.gctl(CONTROL_EVT_INT_EN):
            self._interrupt(gs)

    def _interrupt(self, gs: GuestState) -> None:
        """The guest's interrupt: its pending bit, and the unit's line to the host."""
        self.pending |= 1 << gs.guest_id
        if self.tracer.enabled:
            with self.tracer.span("hw", f"{self.hw.name} vIOMMU interrupt",
                                  f"guest {gs.guest_id}"):
                self.irq.assert_irq()
        else:
            self.irq.assert_irq()

    def stats(self) -> dict[str, Any]:
        return {"executed": sum(g.executed for g in self.guests),
                "refused": sum(g.refused for g in self.guests),
                "enabled": [g.guest_id for g in self.guests if g.enabled]}


__all__ = ["GUEST_OPS", "AmdViommuHw", "GuestState"]
