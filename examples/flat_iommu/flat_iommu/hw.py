"""The FlatIOMMU hardware model (QEMU style): registers from a feature config, queues
consumed from memory on a doorbell, caches that stay stale until invalidated, and the
shared page-table walker.

The model never calls the driver. It reads what the driver wrote (registers, the device
table, commands), writes fault records into the fault queue in memory and raises the
``fault`` interrupt line; the platform runs whatever handler the driver requested.
"""

from __future__ import annotations

import errno
from typing import Any

import attrs
from iommu_core.errors import IommuError
from iommu_core.pgtable import Access, PtFormat, WalkFault, formats, walk
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import ACCESS_WRITE, DmaFault, IommuHardware, IrqLine, Mmio
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.trace import Tracer

from flat_iommu import spec
from flat_iommu.spec import Dte, DteMode, FaultReason, FaultRecord, Opcode

PAGE_SHIFT = 12
PAGE_MASK = (1 << PAGE_SHIFT) - 1

_WALK_REASONS = {
    "translation": FaultReason.F_PT_NOT_PRESENT,
    "permission": FaultReason.F_PT_PERMISSION,
    "address_size": FaultReason.F_PT_ADDR_SIZE,
    "access_flag": FaultReason.F_PT_NOT_PRESENT,
}


@attrs.frozen
class FlatFeatures:
    """The unit's configuration (Machine options); ``from_options`` refuses unknowns."""

    rid_bits: int = 16
    dirty: bool = True
    iotlb_size: int = 512

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> FlatFeatures:
        known = {a.name for a in attrs.fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise IommuError(errno.EINVAL, f"flat_iommu: unknown options {sorted(unknown)}")
        feat = cls(**options)
        if not 1 <= feat.rid_bits <= 16 or feat.iotlb_size < 1:
            raise IommuError(errno.EINVAL, f"flat_iommu: bad options {options}")
        return feat


class FlatRegs(Mmio):
    """The register window. Writes with side effects call into the model."""

    def __init__(self, hw: FlatIommuHw) -> None:
        self.hw = hw
        self.r: dict[int, int] = {}

    def read32(self, offset: int) -> int:
        hw = self.hw
        if offset == spec.REG_ID:
            return spec.FLAT_ID
        if offset == spec.REG_VERSION:
            return spec.FLAT_VERSION
        if offset == spec.REG_CAP:
            return hw.features.rid_bits | (spec.CAP_DIRTY if hw.features.dirty else 0)
        if offset == spec.REG_STATUS:
            return hw.status
        if offset == spec.REG_CQ_HEAD:
            return hw.cq_head
        if offset == spec.REG_FQ_TAIL:
            return hw.fq_tail
        return self.r.get(offset, 0)

    def write32(self, offset: int, value: int) -> None:
        hw = self.hw
        value &= 0xFFFF_FFFF
        if hw.tracer.enabled:
            hw.tracer.event("hw", "reg_write", f"{hw.name} [{offset:#05x}] = {value:#x}")
        if offset in (spec.REG_ID, spec.REG_VERSION, spec.REG_CAP, spec.REG_CQ_HEAD,
                      spec.REG_FQ_TAIL):
            return  # read-only
        if offset == spec.REG_STATUS:
            hw.status &= ~(value & (spec.STATUS_CQERR | spec.STATUS_FQOVF))  # W1C
            return
        self.r[offset] = value
        if offset == spec.REG_CTRL:
            hw.set_ctrl(value)
        elif offset == spec.REG_CQ_TAIL:
            hw.consume_commands(value)


class FlatIommuHw(IommuHardware):
    """One FlatIOMMU unit."""

    granule = 4096

    def __init__(self, name: str, features: FlatFeatures, mem: PhysicalMemory,
                 tracer: Tracer) -> None:
        self.name = name
        self.features = features
        self.mem = mem
        self.tracer = tracer
        self.regs = FlatRegs(self)
        self.mmio: dict[str, Mmio] = {"regs": self.regs}
        self.irqs = {"fault": IrqLine(f"{name}-fault")}
        self.fmt: PtFormat = formats.x86_64(spec.PT_LEVELS)
        self.ctrl = 0
        self.status = 0
        self.cq_head = 0
        self.fq_tail = 0
        #: rid -> decoded DTE (a configuration cache: stale until INV_DTE).
        self.dte_cache: dict[int, Dte] = {}
        #: (did, iova page) -> (physical page, writable, leaf address, known dirty).
        self.iotlb: dict[tuple[int, int], tuple[int, bool, int, bool]] = {}
        #: Every command consumed, for tests and the tour.
        self.cmd_log: list[spec.Cmd] = []

    # -- control ------------------------------------------------------------------------
    def set_ctrl(self, value: int) -> None:
        """Enables take effect at once (the STATUS handshake the driver polls)."""
        self.ctrl = value & spec.CTRL_ENABLES
        self.status = (self.status & ~spec.CTRL_ENABLES) | self.ctrl
        if not self.ctrl & spec.CTRL_CQE:
            self.cq_head = 0
        if not self.ctrl & spec.CTRL_FQE:
            self.fq_tail = 0
        self._flush_all()  # enabling or disabling translation starts from empty caches

    def _flush_all(self) -> None:
        self.dte_cache.clear()
        self.iotlb.clear()

    # -- command queue ------------------------------------------------------------------
    def _queue(self, base_reg: int) -> tuple[int, int]:
        raw = self.regs.read64(base_reg)
        return raw & spec.ADDR_MASK, 1 << (raw & spec.QUEUE_LOG2_MASK)

    def consume_commands(self, tail: int) -> None:
        """The doorbell: execute commands [CQ_HEAD, tail) synchronously."""
        if not self.ctrl & spec.CTRL_CQE or self.status & spec.STATUS_CQERR:
            return
        base, n = self._queue(spec.REG_CQ_BASE)
        tail %= n
        while self.cq_head != tail:
            q0, q1 = self.mem.read_qwords(base + self.cq_head * spec.ENTRY_SIZE, 2)
            cmd = spec.Cmd(q0, q1)
            if not self._execute(cmd):
                self.status |= spec.STATUS_CQERR  # HEAD stays on the bad command
                if self.tracer.enabled:
                    self.tracer.event("hw", "cmd_error", f"{self.name} {q0:#x} {q1:#x}")
                return
            self.cmd_log.append(cmd)
            self.cq_head = (self.cq_head + 1) % n

    def _execute(self, cmd: spec.Cmd) -> bool:
        op = cmd.opcode
        q0 = cmd.q0
        if op == Opcode.INV_DTE:
            self.dte_cache.pop((q0 >> 16) & 0xFFFF, None)
        elif op == Opcode.INV_IOTLB:
            did = (q0 >> 16) & 0xFFFF
            if q0 & spec.INV_IOTLB_ALL:
                stale = [k for k in self.iotlb if k[0] == did]
            else:
                first = cmd.q1 >> PAGE_SHIFT
                last = first + (q0 >> 32) - 1
                stale = [k for k in self.iotlb if k[0] == did and first <= k[1] <= last]
            for k in stale:
                del self.iotlb[k]
        elif op == Opcode.INV_ALL:
            self._flush_all()
        elif op == Opcode.SYNC:
            self.mem.write_u64(cmd.q1, q0 >> 32)
        else:
            return False
        if self.tracer.enabled:
            self.tracer.event("hw", "cmd", f"{self.name} {Opcode(op).name} "
                              f"{q0:#x} {cmd.q1:#x}")
        return True

    # -- faults -------------------------------------------------------------------------
    def _fault(self, dev: Device, iova: int, pasid: int | None, access: int,
               reason: FaultReason, **detail: Any) -> DmaFault:
        """Log the record in the fault queue, raise the interrupt, abort the DMA."""
        write = bool(access & ACCESS_WRITE)
        if self.ctrl & spec.CTRL_FQE:
            base, n = self._queue(spec.REG_FQ_BASE)
            head = self.regs.read32(spec.REG_FQ_HEAD) % n
            if (self.fq_tail + 1) % n == head:
                self.status |= spec.STATUS_FQOVF  # full: the record is lost
            else:
                rec = FaultRecord(dev.rid, reason, write, iova)
                self.mem.write_qwords(base + self.fq_tail * spec.ENTRY_SIZE, rec.encode())
                self.fq_tail = (self.fq_tail + 1) % n
            if self.ctrl & spec.CTRL_FIE:
                self.irqs["fault"].assert_irq()
        f = DmaFault(dev.name, iova, pasid, access, reason.name,
                     {"rid": dev.rid, "reason_code": int(reason), **detail})
        if self.tracer.enabled:
            self.tracer.event("hw", "fault", str(f))
        return f

    # -- translation --------------------------------------------------------------------
    def _dte(self, rid: int) -> Dte:
        dte = self.dte_cache.get(rid)
        if dte is None:
            base = self.regs.read64(spec.REG_DT_BASE) & spec.ADDR_MASK
            q0, q1 = self.mem.read_qwords(base + rid * spec.ENTRY_SIZE, 2)
            dte = self.dte_cache[rid] = Dte.decode(q0, q1)
        return dte

    def dma_translate(self, dev: Device, pasid: int | None, iova: int, access: int) -> int:
        # The hit path: the cached DTE and one IOTLB lookup, no walk, nothing built.
        dte = self.dte_cache.get(dev.rid)
        if dte is not None and dte.mode == DteMode.TRANSLATE and pasid is None:
            hit = self.iotlb.get((dte.did, iova >> PAGE_SHIFT))
            if hit is not None:
                page, writable, _leaf, dirty = hit
                if not access & ACCESS_WRITE:
                    return page | (iova & PAGE_MASK)
                if writable:
                    if dte.had and not dirty:
                        self._mark_dirty(dte.did, iova, hit)
                    return page | (iova & PAGE_MASK)
        return self._translate_slow(dev, pasid, iova, access)

    def _mark_dirty(self, did: int, iova: int, hit: tuple[int, bool, int, bool]) -> None:
        # The IOTLB remembers that it set D: it does not write it again until the entry
        # is invalidated (so a driver that clears dirty bits must flush).
        page, writable, leaf, _ = hit
        self.mem.write_u64(leaf, self.fmt.make_dirty(self.mem.read_u64(leaf)))
        self.iotlb[(did, iova >> PAGE_SHIFT)] = (page, writable, leaf, True)

    def _translate_slow(self, dev: Device, pasid: int | None, iova: int, access: int) -> int:
        if not self.ctrl & spec.CTRL_TE:
            raise self._fault(dev, iova, pasid, access, FaultReason.F_DISABLED)
        rid = dev.rid
        if rid >> (self.regs.read32(spec.REG_DT_SIZE) & 0x1F):
            raise self._fault(dev, iova, pasid, access, FaultReason.F_RID_RANGE)
        dte = self._dte(rid)
        if not dte.valid:
            raise self._fault(dev, iova, pasid, access, FaultReason.F_DTE_INVALID)
        if pasid is not None:  # no PASID support: tagged requests are aborted
            raise self._fault(dev, iova, pasid, access, FaultReason.F_DTE_ABORT)
        if dte.mode == DteMode.ABORT:
            raise self._fault(dev, iova, pasid, access, FaultReason.F_DTE_ABORT, did=dte.did)
        if dte.mode == DteMode.BYPASS:
            return iova
        if dte.mode != DteMode.TRANSLATE or dte.levels != spec.PT_LEVELS or (
                dte.had and not self.features.dirty):
            raise self._fault(dev, iova, pasid, access, FaultReason.F_DTE_BAD, did=dte.did)
        write = bool(access & ACCESS_WRITE)
        res = walk(self.fmt, self.mem.read_u64, dte.root, iova,
                   access=Access.WRITE if write else Access.READ, privileged=True,
                   set_dirty=dte.had and write, write_u64=self.mem.write_u64)
        if isinstance(res, WalkFault):
            raise self._fault(dev, iova, pasid, access, _WALK_REASONS[res.reason],
                              did=dte.did, level=res.level)
        if len(self.iotlb) >= self.features.iotlb_size:
            del self.iotlb[next(iter(self.iotlb))]  # FIFO replacement
        page = res.oa & ~PAGE_MASK
        self.iotlb[(dte.did, iova >> PAGE_SHIFT)] = (page, res.writable, res.desc_addr,
                                                      res.dirty)
        if self.tracer.enabled:
            self.tracer.event("hw", "walk", f"{dev.name} iova {iova:#x} -> {res.oa:#x} "
                              f"did {dte.did} level {res.level}")
        return res.oa
