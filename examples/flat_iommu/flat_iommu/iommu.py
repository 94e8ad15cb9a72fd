"""The FlatIOMMU driver: what would be drivers/iommu/flat/flat-iommu.c.

It talks to the hardware only through its registers, the memory it allocated (device
table, command queue, fault queue, page tables) and its fault interrupt. Per-unit state
is :class:`FlatIommu` (``IommuDevice.priv``), per-device state :class:`FlatMaster`
(``dev.iommu.priv``), per-driver state :class:`FlatDriver` (one per plugin host).
"""

from __future__ import annotations

import collections
import errno

from iommu_core.device import IommuDevice
from iommu_core.domain import (
    IOMMU_DOMAIN_BLOCKED,
    IOMMU_DOMAIN_IDENTITY,
    IOMMU_DOMAIN_UNMANAGED,
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    Geometry,
    IommuDomain,
)
from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.iommu import IommuCore
from iommu_core.pgtable import IoPageTable, PhysTableMemory, formats
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import Mmio
from iommu_core.platform.platform import IommuResources
from iommu_core.plugin import IommuOps
from iommu_core.prot import IOMMU_DIRTY_NO_CLEAR
from iommufd.uapi import IOMMU_HW_INFO_TYPE_DEFAULT

from flat_iommu import spec
from flat_iommu.spec import Cmd, Dte, DteMode, FaultRecord
from flat_iommu.uapi import IOMMU_HW_INFO_TYPE_FLAT, iommu_hw_info_flat

#: Queue sizes (log2 of 16-byte entries): one page each.
CQ_LOG2 = 8
FQ_LOG2 = 8
FAULT_LOG_LEN = 64

STATIC_OPS = ("attach_dev",)
PAGING_OPS = ("attach_dev", "map_pages", "unmap_pages", "iova_to_phys", "iotlb_sync",
              "flush_iotlb_all", "free")
DIRTY_OPS = ("set_dirty_tracking", "read_and_clear_dirty")


class FlatStaticDomain(IommuDomain):
    """The blocked and identity domains: one of each per driver, never freed."""


class FlatDriver:
    """Driver-wide state: the static domains (``ops.blocked_domain`` ...)."""

    def __init__(self, ops: IommuOps) -> None:
        self.ops = ops
        self.blocked_domain = FlatStaticDomain(IOMMU_DOMAIN_BLOCKED,
                                               ops.domain_ops(STATIC_OPS), name="flat-blocked")
        self.identity_domain = FlatStaticDomain(IOMMU_DOMAIN_IDENTITY,
                                                ops.domain_ops(STATIC_OPS),
                                                name="flat-identity")


class FlatIommu:
    """``struct flat_iommu``: one probed unit."""

    def __init__(self, core: IommuCore, res: IommuResources, ops: IommuOps) -> None:
        self.core = core
        self.name = res.name
        self.regs: Mmio = res.mmio["regs"]
        self.irq = res.irqs["fault"]
        self.mem = core.platform.mem
        self.alloc = core.platform.alloc
        self.table_mem = PhysTableMemory(self.mem, self.alloc)
        self.ops = ops
        self.rid_bits = 0
        self.dirty = False
        self.dt = self.dt_order = 0
        self.cq = self.cq_tail = 0
        self.fq = self.fq_head = 0
        self.sync_page = self.sync_seq = 0
        self._dids: set[int] = set()
        #: Decoded fault records, newest last (what dev_err would print).
        self.faults: collections.deque[FaultRecord] = collections.deque(maxlen=FAULT_LOG_LEN)
        self.fault_overflows = 0
        self.iommu = IommuDevice(res.name, ops, self)

    # -- command queue -------------------------------------------------------------------
    def submit(self, *cmds: Cmd, sync: bool = True) -> None:
        """Write ``cmds`` (and a SYNC) at the tail, ring the doorbell, wait for the SYNC
        store: when this returns the hardware has executed them."""
        n = 1 << CQ_LOG2
        batch = list(cmds)
        if sync:
            self.sync_seq = (self.sync_seq + 1) & 0xFFFF_FFFF
            batch.append(spec.build_sync(self.sync_page, self.sync_seq))
        if len(batch) >= n:
            raise IommuError(errno.EINVAL, f"{self.name}: command batch too large")
        for cmd in batch:
            self.mem.write_qwords(self.cq + self.cq_tail * spec.ENTRY_SIZE, (cmd.q0, cmd.q1))
            self.cq_tail = (self.cq_tail + 1) % n
        self.regs.write32(spec.REG_CQ_TAIL, self.cq_tail)
        if self.regs.read32(spec.REG_STATUS) & spec.STATUS_CQERR:
            raise IommuError(errno.EIO, f"{self.name}: command queue error at "
                             f"{self.regs.read32(spec.REG_CQ_HEAD)}")
        if sync and self.mem.read_u64(self.sync_page) != self.sync_seq:
            raise IommuError(errno.ETIMEDOUT, f"{self.name}: SYNC {self.sync_seq} not done")

    # -- device table --------------------------------------------------------------------
    def write_dte(self, rid: int, dte: Dte) -> None:
        """Program the DTE of ``rid`` and drop the hardware's cached copy."""
        self.mem.write_qwords(self.dt + rid * spec.ENTRY_SIZE, dte.encode())
        self.submit(spec.build_inv_dte(rid))

    # -- domain IDs ----------------------------------------------------------------------
    def alloc_did(self) -> int:
        did = 1
        while did in self._dids:
            did += 1
        if did > 0xFFFF:
            raise IommuError(errno.ENOSPC, f"{self.name}: no free domain ID")
        self._dids.add(did)
        return did

    def free_did(self, did: int) -> None:
        self._dids.discard(did)


class FlatMaster:
    """``struct flat_master``: a device behind a unit and the domain it is attached to."""

    def __init__(self, unit: FlatIommu, dev: Device) -> None:
        self.unit = unit
        self.dev = dev
        self.domain: IommuDomain | None = None


class FlatPagingDomain(IommuDomain):
    """``struct flat_domain``: an x86-64 4-level table and a domain ID on one unit."""

    def __init__(self, unit: FlatIommu, ops: IommuOps, dirty: bool) -> None:
        pt = IoPageTable(formats.x86_64(spec.PT_LEVELS), unit.table_mem)
        provided = PAGING_OPS + (DIRTY_OPS if dirty else ())
        super().__init__(IOMMU_DOMAIN_UNMANAGED, ops.domain_ops(provided),
                         pgsize_bitmap=pt.pgsize_bitmap,
                         geometry=Geometry(0, (1 << pt.ias) - 1, True), dirty_ops=dirty)
        self.unit = unit
        self.pt = pt
        try:
            self.did = unit.alloc_did()
        except IommuError:
            pt.free()
            raise
        self.dirty_tracking = False
        self.masters: list[FlatMaster] = []

    def dte(self) -> Dte:
        return Dte(valid=True, mode=DteMode.TRANSLATE, had=self.dirty_tracking,
                   levels=spec.PT_LEVELS, did=self.did, root=self.pt.root)


def to_master(dev: Device) -> FlatMaster:
    priv = dev.iommu.priv if dev.iommu is not None else None
    if not isinstance(priv, FlatMaster):
        raise IommuError(errno.ENODEV, f"{dev.name} is not behind a FlatIOMMU")
    return priv


# ======================================================================================
# probe / remove
# ======================================================================================
def flat_iommu_probe(drv: FlatDriver, core: IommuCore, res: IommuResources) -> IommuDevice:
    unit = FlatIommu(core, res, drv.ops)
    regs = unit.regs
    if regs.read32(spec.REG_ID) != spec.FLAT_ID:
        raise IommuError(errno.ENODEV, f"{res.name}: not a FlatIOMMU")
    cap = regs.read32(spec.REG_CAP)
    unit.rid_bits = cap & spec.CAP_RID_BITS_MASK
    unit.dirty = bool(cap & spec.CAP_DIRTY)
    flat_iommu_disable(unit)
    # Tables and queues; firmware could have left anything there, so all start zeroed.
    dt_bytes = (1 << unit.rid_bits) * spec.ENTRY_SIZE
    unit.dt_order = max(0, (dt_bytes - 1).bit_length() - 12)
    unit.dt = unit.alloc.alloc_pages(unit.dt_order)
    unit.cq = unit.alloc.alloc_page()
    unit.fq = unit.alloc.alloc_page()
    unit.sync_page = unit.alloc.alloc_page()
    regs.write64(spec.REG_DT_BASE, unit.dt)
    regs.write32(spec.REG_DT_SIZE, unit.rid_bits)
    regs.write64(spec.REG_CQ_BASE, unit.cq | CQ_LOG2)
    regs.write32(spec.REG_CQ_TAIL, 0)
    regs.write64(spec.REG_FQ_BASE, unit.fq | FQ_LOG2)
    regs.write32(spec.REG_FQ_HEAD, 0)
    unit.irq.request_irq(lambda: flat_iommu_fault_irq(unit))
    flat_iommu_enable(unit, spec.CTRL_CQE | spec.CTRL_FQE | spec.CTRL_FIE)
    unit.submit(spec.build_inv_all())
    flat_iommu_enable(unit, spec.CTRL_ENABLES)
    core.iommu_device_register(unit.iommu)
    return unit.iommu


def flat_iommu_enable(unit: FlatIommu, ctrl: int) -> None:
    """Write CTRL and wait for STATUS to acknowledge it (the enable handshake)."""
    unit.regs.write32(spec.REG_CTRL, ctrl)
    if unit.regs.read32(spec.REG_STATUS) & spec.CTRL_ENABLES != ctrl:
        raise IommuError(errno.ETIMEDOUT, f"{unit.name}: CTRL {ctrl:#x} not acknowledged")


def flat_iommu_disable(unit: FlatIommu) -> None:
    flat_iommu_enable(unit, 0)
    unit.cq_tail = unit.fq_head = 0


def flat_iommu_remove(unit: FlatIommu) -> None:
    flat_iommu_disable(unit)
    unit.irq.free_irq()
    unit.alloc.free_pages(unit.dt, unit.dt_order)
    for page in (unit.cq, unit.fq, unit.sync_page):
        unit.alloc.free_page(page)


def flat_iommu_fault_irq(unit: FlatIommu) -> None:
    """The fault interrupt: drain the fault queue into the log, then acknowledge."""
    regs = unit.regs
    n = 1 << FQ_LOG2
    tail = regs.read32(spec.REG_FQ_TAIL)
    while unit.fq_head != tail:
        q0, q1 = unit.mem.read_qwords(unit.fq + unit.fq_head * spec.ENTRY_SIZE, 2)
        unit.faults.append(FaultRecord.decode(q0, q1))
        unit.fq_head = (unit.fq_head + 1) % n
    regs.write32(spec.REG_FQ_HEAD, unit.fq_head)
    if regs.read32(spec.REG_STATUS) & spec.STATUS_FQOVF:
        unit.fault_overflows += 1
        regs.write32(spec.REG_STATUS, spec.STATUS_FQOVF)


# ======================================================================================
# iommu_ops
# ======================================================================================
def flat_iommu_probe_device(dev: Device) -> IommuDevice:
    iommu: IommuDevice = dev.iommu.iommu_dev
    unit = iommu.priv
    if not isinstance(unit, FlatIommu):
        raise IommuError(errno.ENODEV, f"{dev.name}: not behind a FlatIOMMU")
    if dev.rid >> unit.rid_bits:
        raise IommuError(errno.ENODEV, f"{dev.name}: requester ID {dev.rid:#x} beyond the "
                         f"{1 << unit.rid_bits}-entry device table")
    dev.iommu.priv = FlatMaster(unit, dev)
    return iommu


def flat_iommu_hw_info(dev: Device, data_type: int) -> tuple[bytes, int]:
    """IOMMU_GET_HW_INFO: the unit's ID registers, for a VMM that models a FlatIOMMU."""
    if data_type not in (IOMMU_HW_INFO_TYPE_DEFAULT, IOMMU_HW_INFO_TYPE_FLAT):
        raise IommuError(errno.EOPNOTSUPP, f"flat_iommu: hw_info type {data_type:#x}")
    regs = to_master(dev).unit.regs
    info = iommu_hw_info_flat(id=regs.read32(spec.REG_ID), version=regs.read32(spec.REG_VERSION),
                              cap=regs.read32(spec.REG_CAP))
    return bytes(info), IOMMU_HW_INFO_TYPE_FLAT


def flat_iommu_release_device(dev: Device) -> None:
    master = to_master(dev)
    _detach(master)
    master.unit.write_dte(dev.rid, Dte())  # V=0: the device is no longer ours
    dev.iommu.priv = None


def flat_iommu_domain_alloc_paging_flags(dev: Device, flags: int, user_data: object
                                         ) -> IommuDomain:
    master = to_master(dev)
    if flags & ~IOMMU_HWPT_ALLOC_DIRTY_TRACKING or user_data is not None:
        raise IommuError(errno.EOPNOTSUPP, f"flat_iommu: flags {flags:#x} or driver data")
    dirty = bool(flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    if dirty and not master.unit.dirty:
        raise IommuError(errno.EOPNOTSUPP, f"{master.unit.name} has no dirty tracking")
    ops: IommuOps = dev.iommu.ops
    return FlatPagingDomain(master.unit, ops, dirty)


# ======================================================================================
# domain ops
# ======================================================================================
def _detach(master: FlatMaster) -> None:
    old = master.domain
    if isinstance(old, FlatPagingDomain) and master in old.masters:
        old.masters.remove(master)
    master.domain = None


def flat_iommu_attach_dev(domain: IommuDomain, dev: Device) -> None:
    master = to_master(dev)
    unit = master.unit
    if isinstance(domain, FlatPagingDomain):
        if domain.unit is not unit:
            raise IommuError(errno.EINVAL, f"{domain!r} belongs to {domain.unit.name}")
        dte = domain.dte()
    elif domain.type == IOMMU_DOMAIN_IDENTITY:
        dte = Dte(valid=True, mode=DteMode.BYPASS)
    else:
        dte = Dte(valid=True, mode=DteMode.ABORT)
    unit.write_dte(dev.rid, dte)
    _detach(master)
    master.domain = domain
    if isinstance(domain, FlatPagingDomain):
        domain.masters.append(master)


def flat_iommu_map_pages(domain: FlatPagingDomain, iova: int, paddr: int, pgsize: int,
                         pgcount: int, prot: int) -> int:
    # Non-present entries are never cached, so a new mapping needs no invalidation.
    return domain.pt.map_pages(iova, paddr, pgsize, pgcount, prot)


def flat_iommu_unmap_pages(domain: FlatPagingDomain, iova: int, pgsize: int, pgcount: int,
                           gather: IotlbGather) -> int:
    return domain.pt.unmap_pages(iova, pgsize, pgcount, gather)


def flat_iommu_iotlb_sync(domain: FlatPagingDomain, gather: IotlbGather) -> None:
    """Invalidate the gathered range, then free the tables the unmap emptied (a walk in
    flight may still read them until the invalidation completes)."""
    if gather.end > gather.start:
        first = gather.start >> 12
        npages = (gather.end >> 12) - first + 1
        domain.unit.submit(spec.build_inv_iotlb(domain.did, gather.start, npages))
    domain.pt.release_freelist(gather)


def flat_iommu_flush_iotlb_all(domain: FlatPagingDomain) -> None:
    domain.unit.submit(spec.build_inv_iotlb_did(domain.did))


def flat_iommu_domain_free(domain: FlatPagingDomain) -> None:
    # Flush before the DID can be reused: stale entries would leak into the next domain.
    domain.unit.submit(spec.build_inv_iotlb_did(domain.did))
    domain.pt.free()
    domain.unit.free_did(domain.did)


def flat_iommu_set_dirty_tracking(domain: FlatPagingDomain, enabled: bool) -> None:
    if domain.dirty_tracking == enabled:
        return
    domain.dirty_tracking = enabled
    for master in domain.masters:  # rewrite DTE.HAD of every attached device
        domain.unit.write_dte(master.dev.rid, domain.dte())


def flat_iommu_read_and_clear_dirty(domain: FlatPagingDomain, iova: int, size: int,
                                    flags: int, dirty: object) -> None:
    record = getattr(dirty, "record")  # noqa: B009 - iommu_dirty_bitmap_record
    cleared = False

    def rec(leaf_iova: int, length: int) -> None:
        nonlocal cleared
        cleared = True
        record(leaf_iova, length)

    domain.pt.read_and_clear_dirty(iova, size, flags, rec)
    if cleared and not flags & IOMMU_DIRTY_NO_CLEAR:
        # The IOTLB remembers it already set D; make the next write set it again.
        domain.unit.submit(spec.build_inv_iotlb_did(domain.did))
