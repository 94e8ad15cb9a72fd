"""The AMD-Vi driver proper (drivers/iommu/amd/iommu.c): per-device data, protection
domains and their IDs, DTE builders and ``update_dte256``, the command buffer and the
flush fan-out, attach/detach, GCR3 tables and PASID attach, dirty tracking.

The driver reaches the unit only through its registers (``iommu.mmio``), the memory it
allocated (Device Table, command buffer, logs, GCR3 tables, page tables) and its
interrupt lines.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from drivers.amd_vi.amd_iommu_types import (
    CMD_BUFFER_SIZE,
    CMD_COMPL_WAIT,
    CMD_COMPL_WAIT_STORE_MASK,
    CMD_COMPLETE_PPR,
    CMD_INV_ALL,
    CMD_INV_DEV_ENTRY,
    CMD_INV_IOMMU_ALL_PAGES_ADDRESS,
    CMD_INV_IOMMU_PAGES,
    CMD_INV_IOMMU_PAGES_GN_MASK,
    CMD_INV_IOMMU_PAGES_PDE_MASK,
    CMD_INV_IOMMU_PAGES_SIZE_MASK,
    CMD_INV_IOTLB_PAGES,
    CMD_INV_IRT,
    DEV_TABLE_ENTRY_SIZE,
    DTE_DATA2_INTR_MASK,
    DTE_DOMID_MASK,
    DTE_FLAG_GIOV,
    DTE_FLAG_GV,
    DTE_FLAG_HAD,
    DTE_FLAG_IOTLB,
    DTE_FLAG_IR,
    DTE_FLAG_IW,
    DTE_FLAG_PPR,
    DTE_FLAG_TV,
    DTE_FLAG_V,
    DTE_GLX,
    DTE_GPT_LEVEL_MASK,
    DTE_HOST_TRP,
    DTE_MODE_MASK,
    GCR3_ADDR_MASK,
    GCR3_VALID,
    GUEST_PGTABLE_4_LEVEL,
    GUEST_PGTABLE_5_LEVEL,
    MMIO_CMD_HEAD_OFFSET,
    MMIO_CMD_TAIL_OFFSET,
    PPR_STATUS_MASK,
    PPR_STATUS_SHIFT,
    U64,
    DevTableEntry,
    IommuCmd,
    dte_gcr3_fields,
    field_get,
    field_prep,
)
from drivers.amd_vi.io_pgtable import AMD_IOMMU_PGSIZES_V2, alloc_v1_pgtable, alloc_v2_pgtable
from iommu_core.device import (
    X86_MSI_RANGE_LENGTH,
    X86_MSI_RANGE_START,
    IommuCap,
    ResvRegion,
    ResvType,
)
from iommu_core.domain import (
    IOMMU_DOMAIN_BLOCKED,
    IOMMU_DOMAIN_DMA,
    IOMMU_DOMAIN_IDENTITY,
    IOMMU_DOMAIN_UNMANAGED,
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    IOMMU_HWPT_ALLOC_NEST_PARENT,
    IOMMU_HWPT_ALLOC_PASID,
    Geometry,
    IommuDomain,
)
from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.pgtable import IoPageTable
from iommu_core.plugin import IommuOps
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE

if TYPE_CHECKING:
    from drivers.amd_vi.init import AmdIommu
    from drivers.amd_vi.nested import AmdViommu, NestedDomain
    from iommu_core.iommufd_driver import UserData
    from iommu_core.platform.bus import Device

MAX_DOMAIN_ID = 65536
#: HyperTransport reserved range (HT_RANGE_START/END).
HT_RANGE_START = 0xFD_0000_0000
HT_RANGE_END = 0xFF_FFFF_FFFF
#: ATS invalidation queue depth the simulated devices report.
ATS_QUEUE_DEPTH = 32
#: Completion-wait polling budget (``LOOP_TIMEOUT`` in Linux: 100 000 x 1 us).
LOOP_TIMEOUT = 100_000

AMD_IOMMU_DEVICE_FLAG_ATS_SUP = 0x1
AMD_IOMMU_DEVICE_FLAG_PRI_SUP = 0x2
AMD_IOMMU_DEVICE_FLAG_PASID_SUP = 0x4

PAGING_DOMAIN_OPS = ("attach_dev", "map_pages", "unmap_pages", "iotlb_sync_map",
                     "iova_to_phys", "flush_iotlb_all", "iotlb_sync", "free",
                     "enforce_cache_coherency")
DIRTY_DOMAIN_OPS = ("set_dirty_tracking", "read_and_clear_dirty")


# =======================================================================================
# Driver-wide state (the C globals), one per loaded driver instance (one per Machine)
# =======================================================================================
class Ida:
    """``struct ida`` over [lo, hi]: lowest free id first."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.used: set[int] = set()
        self._hint = lo

    def alloc(self) -> int:
        if len(self.used) > self.hi - self.lo:
            raise IommuError(errno.ENOSPC, "no free domain ID")
        i = self._hint
        while i in self.used:
            i = self.lo if i >= self.hi else i + 1
        self.used.add(i)
        self._hint = self.lo if i >= self.hi else i + 1
        return i

    def free(self, i: int) -> None:
        self.used.discard(i)
        self._hint = min(self._hint, i)


class AmdIommuDriver:
    """The driver's globals: ``pdom_ids``, the static domains, ``amd_iommu_efr/efr2``,
    ``amd_iommu_max_glx_val``, ``amd_iommu_gpt_level`` and ``amd_iommu_hpt_level``."""

    #: The simulated CPU has no LA57, so ``amd_iommu_gpt_level`` stays 4 (init.c).
    CPU_HAS_LA57 = False

    def __init__(self, ops: IommuOps) -> None:
        self.ops = ops
        self.pdom_ids = Ida(1, MAX_DOMAIN_ID - 1)
        self.iommus: list[AmdIommu] = []
        self.efr = 0
        self.efr2 = 0
        self.max_glx_val = -1
        self.gpt_level = 4
        self.hpt_level = 6
        self.identity_domain = ProtectionDomain(
            self, IOMMU_DOMAIN_IDENTITY, "identity", ops.domain_ops(["attach_dev"]))
        self.blocked_domain = AmdStaticDomain(
            IOMMU_DOMAIN_BLOCKED, ops.domain_ops(["attach_dev", "set_dev_pasid"]), "blocked")
        # Same as blocked, but only attach_dev (the core parks released devices on it).
        self.release_domain = AmdStaticDomain(
            IOMMU_DOMAIN_BLOCKED, ops.domain_ops(["attach_dev"]), "release")

    def check_feature(self, mask: int) -> bool:
        return bool(self.efr & mask)

    def check_feature2(self, mask: int) -> bool:
        return bool(self.efr2 & mask)

    @property
    def hatdis(self) -> bool:
        from drivers.amd_vi.amd_iommu_types import FEATURE_HATS
        return field_get(FEATURE_HATS, self.efr) == 3

    def v2_pgtbl_supported(self) -> bool:
        from drivers.amd_vi.amd_iommu_types import FEATURE_GIOSUP, FEATURE_GT
        return self.check_feature(FEATURE_GT) and self.check_feature(FEATURE_GIOSUP)

    def gt_ppr_supported(self) -> bool:
        from drivers.amd_vi.amd_iommu_types import FEATURE_EPHSUP, FEATURE_PPR
        return (self.v2_pgtbl_supported() and self.check_feature(FEATURE_PPR)
                and self.check_feature(FEATURE_EPHSUP))

    def pasid_supported(self) -> bool:
        """``amd_iommu_pasid_supported``."""
        return self.gt_ppr_supported()

    def nesting_supported(self) -> bool:
        from drivers.amd_vi.amd_iommu_types import (
            FEATURE_GCR3TRPMODE,
            FEATURE_GIOSUP,
            FEATURE_GT,
        )
        return (self.check_feature(FEATURE_GT) and self.check_feature(FEATURE_GIOSUP)
                and self.check_feature2(FEATURE_GCR3TRPMODE))


class AmdStaticDomain(IommuDomain):
    """The blocked and release domains (no state)."""

    def __init__(self, type: int, ops: Any, name: str) -> None:
        super().__init__(type, ops, name=name)


# =======================================================================================
# Per-device data
# =======================================================================================
@attrs.define(eq=False)
class Gcr3TblInfo:
    """``struct gcr3_tbl_info``: the device's GCR3 (PASID) table and its DomainID."""

    gcr3_tbl: int = 0  # physical address of the root level, 0 = none
    glx: int = 0
    domid: int = 0
    pasid_cnt: int = 0
    #: Lower-level tables allocated under the root (freed with it).
    pages: list[int] = attrs.field(factory=list)


@attrs.define(eq=False)
class IommuDevData:
    """``struct iommu_dev_data``."""

    dev: Device
    devid: int
    iommu: AmdIommu
    domain: ProtectionDomain | None = None
    gcr3_info: Gcr3TblInfo = attrs.field(factory=Gcr3TblInfo)
    max_pasids: int = 0
    #: AMD_IOMMU_DEVICE_FLAG_*: the device's PCI capabilities, read at probe only when
    #: the unit has GT and PPR (``iommu_init_device``)
    flags: int = 0
    ats_enabled: bool = False
    ats_qdep: int = 0
    pri_enabled: bool = False
    pri_tlp: bool = False  # PRI responses carry the PASID
    pasid_enabled: bool = False
    ppr: bool = False  # on the IOPF queue
    #: PASIDs attached through set_dev_pasid: pasid -> domain.
    pasids: dict[int, ProtectionDomain] = attrs.field(factory=dict)
    #: The nested domain the RID is attached to (iommufd nesting), if any.
    nested: NestedDomain | None = None
    #: Order of the 128-bit half writes and flushes of recent update_dte256 calls
    #: ("lower", "upper", "flush", "disable"), for people and tests (bounded).
    dte_write_log: list[str] = attrs.field(factory=list)


# =======================================================================================
# Protection domains
# =======================================================================================
PD_MODE_V1 = "v1"
PD_MODE_V2 = "v2"


class ProtectionDomain(IommuDomain):
    """``struct protection_domain``: paging (v1 or v2) or the identity domain."""

    def __init__(self, drv: AmdIommuDriver, type: int, pd_mode: str, ops: Any, *,
                 iop: IoPageTable | None = None, dirty_ops: bool = False,
                 geometry: Geometry | None = None) -> None:
        super().__init__(type, ops, pgsize_bitmap=iop.pgsize_bitmap if iop else 0,
                         geometry=geometry, dirty_ops=dirty_ops)
        self.drv = drv
        self.id = drv.pdom_ids.alloc()
        self.pd_mode = pd_mode
        self.iop = iop
        self.dev_list: list[IommuDevData] = []
        #: (dev_data, pasid) pairs this domain is attached to through set_dev_pasid.
        self.dev_data_list: list[tuple[IommuDevData, int]] = []
        #: ``iommu_array``: unit -> attach refcount.
        self.iommu_array: dict[AmdIommu, int] = {}
        self.dirty_tracking = False
        self.nest_parent = False
        #: vIOMMUs whose nested domains sit on this (nest parent) domain.
        self.viommu_list: list[AmdViommu] = []

    @property
    def is_identity(self) -> bool:
        return self.pd_mode == "identity"

    @property
    def is_v2(self) -> bool:
        return self.pd_mode == PD_MODE_V2

    def is_sva_capable(self) -> bool:
        """``pdom_is_sva_capable``: v2 page table or identity (pt) mode."""
        return self.is_v2 or self.is_identity

    def __repr__(self) -> str:
        return f"<ProtectionDomain {self.pd_mode} id {self.id} {self.type_name}>"


# =======================================================================================
# Command buffer (iommu_queue_command, completion wait)
# =======================================================================================
def _cmd(d0: int = 0, d1: int = 0, d2: int = 0, d3: int = 0, *, op: int) -> IommuCmd:
    return IommuCmd.of_words((d0 & 0xFFFF_FFFF, (d1 & 0x0FFF_FFFF) | (op << 28),
                              d2 & 0xFFFF_FFFF, d3 & 0xFFFF_FFFF))


def build_completion_wait(sem_paddr: int, data: int) -> IommuCmd:
    return _cmd(sem_paddr & 0xFFFF_FFF8 | CMD_COMPL_WAIT_STORE_MASK,
                (sem_paddr >> 32) & 0xFFFFF, data & 0xFFFF_FFFF, data >> 32, op=CMD_COMPL_WAIT)


def build_inv_dte(devid: int) -> IommuCmd:
    return _cmd(devid & 0xFFFF, op=CMD_INV_DEV_ENTRY)


def build_inv_address(address: int, last: int) -> int:
    """``build_inv_address``: S=0 for one page; else the naturally aligned power-of-two
    range spanning [address, last] (fls64(address ^ last) bits), encoded by setting the
    bits below its top bit, with S=1; beyond 2^52 -> everything."""
    address &= ~0xFFF & U64
    sz_lg2 = (address ^ last).bit_length()
    if sz_lg2 <= 12:
        return address
    if sz_lg2 > 52:
        return CMD_INV_IOMMU_ALL_PAGES_ADDRESS | CMD_INV_IOMMU_PAGES_SIZE_MASK
    if sz_lg2 > 13:
        address |= ((1 << (sz_lg2 - 1)) - 1) & ~0xFFF
    return address | CMD_INV_IOMMU_PAGES_SIZE_MASK


def build_inv_iommu_pages(address: int, last: int, domid: int, pasid: int, flags: int
                          ) -> IommuCmd:
    """INVALIDATE_IOMMU_PAGES; ``flags``: CMD_INV_IOMMU_PAGES_GN_MASK (guest: the PASID
    goes in) and CMD_INV_IOMMU_PAGES_PDE_MASK (page directory entries too)."""
    inv = build_inv_address(address, last)
    d0 = pasid & 0xFFFFF if flags & CMD_INV_IOMMU_PAGES_GN_MASK else 0
    return _cmd(d0, domid & 0xFFFF, (inv & 0xFFFF_FFFF) | flags, inv >> 32,
                op=CMD_INV_IOMMU_PAGES)


def build_inv_iotlb_pages(devid: int, qdep: int, address: int, last: int, pasid: int,
                          gn: bool) -> IommuCmd:
    inv = build_inv_address(address, last)
    d0 = (devid & 0xFFFF) | ((qdep & 0xFF) << 24)
    d1 = devid & 0xFFFF
    d2 = inv & 0xFFFF_FFFF
    if gn:
        d0 |= ((pasid >> 8) & 0xFF) << 16
        d1 |= (pasid & 0xFF) << 16
        d2 |= CMD_INV_IOMMU_PAGES_GN_MASK
    return _cmd(d0, d1, d2, inv >> 32, op=CMD_INV_IOTLB_PAGES)


def build_complete_ppr(devid: int, pasid: int, status: int, tag: int, gn: bool) -> IommuCmd:
    d1 = d2 = 0
    if gn:
        d1 = pasid & 0xFFFFF
        d2 = CMD_INV_IOMMU_PAGES_GN_MASK
    d3 = (tag & 0x1FF) | ((status & PPR_STATUS_MASK) << PPR_STATUS_SHIFT)
    return _cmd(devid & 0xFFFF, d1, d2, d3, op=CMD_COMPLETE_PPR)


def build_inv_all() -> IommuCmd:
    return _cmd(op=CMD_INV_ALL)


def build_inv_irt(devid: int) -> IommuCmd:
    return _cmd(devid & 0xFFFF, op=CMD_INV_IRT)


def iommu_queue_command(iommu: AmdIommu, cmd: IommuCmd, sync: bool = True) -> None:
    """``__iommu_queue_command_sync``: copy the command at the tail, move the tail."""
    mem = iommu.mem
    nxt = (iommu.cmd_buf_tail + 16) % CMD_BUFFER_SIZE
    if nxt == iommu.mmio.read32(MMIO_CMD_HEAD_OFFSET) % CMD_BUFFER_SIZE:
        # The unit consumes synchronously, so a full ring means it stopped.
        raise IommuError(errno.EIO, f"{iommu.name}: command buffer full (unit halted)")
    mem.write(iommu.cmd_buf + iommu.cmd_buf_tail, cmd.to_bytes())
    iommu.cmd_buf_tail = nxt
    if iommu.tracer.enabled:
        iommu.tracer.event("driver", "queue_command", f"{iommu.name} {cmd!r}")
    iommu.mmio.write32(MMIO_CMD_TAIL_OFFSET, nxt)
    iommu.need_sync = sync


def iommu_completion_wait(iommu: AmdIommu) -> None:
    """Queue COMPLETION_WAIT storing ++cmd_sem_val to cmd_sem, then poll for it."""
    if not iommu.need_sync:
        return
    iommu.cmd_sem_val += 1
    data = iommu.cmd_sem_val
    iommu_queue_command(iommu, build_completion_wait(iommu.cmd_sem, data), sync=False)
    for _ in range(3):  # the unit is synchronous: it either stored already or halted
        if iommu.mem.read_u64(iommu.cmd_sem) >= data:
            return
    raise IommuError(errno.EIO, f"{iommu.name}: completion wait timed out")


def iommu_flush_dte(iommu: AmdIommu, devid: int) -> None:
    iommu_queue_command(iommu, build_inv_dte(devid))


def iommu_flush_dte_sync(iommu: AmdIommu, devid: int) -> None:
    iommu_flush_dte(iommu, devid)
    iommu_completion_wait(iommu)


def amd_iommu_flush_tlb_domid(iommu: AmdIommu, domid: int) -> None:
    iommu_queue_command(iommu, build_inv_iommu_pages(0, U64, domid, 0,
                                                     CMD_INV_IOMMU_PAGES_PDE_MASK))
    iommu_completion_wait(iommu)


def amd_iommu_flush_all_caches(iommu: AmdIommu) -> None:
    """INVALIDATE_IOMMU_ALL, or without EFR.IA: every DTE, every interrupt remapping
    table, then every DomainID's pages (PDEs too), each followed by a wait."""
    from drivers.amd_vi.amd_iommu_types import FEATURE_IA
    if iommu.efr & FEATURE_IA:
        iommu_queue_command(iommu, build_inv_all())
        iommu_completion_wait(iommu)
        return
    for devid in range(iommu.last_bdf + 1):
        iommu_queue_command(iommu, build_inv_dte(devid))
    iommu_completion_wait(iommu)
    for devid in range(iommu.last_bdf + 1):
        iommu_queue_command(iommu, build_inv_irt(devid))
    iommu_completion_wait(iommu)
    for domid in range(iommu.last_bdf + 1):
        iommu_queue_command(iommu, build_inv_iommu_pages(0, U64, domid, 0,
                                                         CMD_INV_IOMMU_PAGES_PDE_MASK))
    iommu_completion_wait(iommu)


# =======================================================================================
# Flush fan-out
# =======================================================================================
def device_flush_iotlb(dev_data: IommuDevData, address: int, last: int, pasid: int,
                       gn: bool) -> None:
    iommu_queue_command(dev_data.iommu, build_inv_iotlb_pages(
        dev_data.devid, dev_data.ats_qdep, address, last, pasid, gn))


def device_flush_dte(dev_data: IommuDevData) -> None:
    """INV_DEV_ENTRY for the device (no DMA aliases are modelled), then the whole
    device IOTLB if ATS is on."""
    iommu_flush_dte(dev_data.iommu, dev_data.devid)
    if dev_data.ats_enabled:
        device_flush_iotlb(dev_data, 0, U64, 0, False)


def domain_flush_pages_v1(pdom: ProtectionDomain, address: int, last: int, flags: int
                          ) -> None:
    cmd = build_inv_iommu_pages(address, last, pdom.id, 0, flags)
    for iommu in pdom.iommu_array:
        iommu_queue_command(iommu, cmd)
    # A nest parent's change reaches every hDomID of every vIOMMU built on it.
    for vi in pdom.viommu_list:
        for info in vi.gdomid_array.values():
            iommu_queue_command(vi.iommu, build_inv_iommu_pages(
                address, last, info.hdom_id, 0, flags))


def domain_flush_pages_v2(pdom: ProtectionDomain, address: int, last: int, flags: int
                          ) -> None:
    for dev_data in pdom.dev_list:
        iommu_queue_command(dev_data.iommu, build_inv_iommu_pages(
            address, last, dev_data.gcr3_info.domid, 0, flags | CMD_INV_IOMMU_PAGES_GN_MASK))
    # PASID attachments of v2 paging domains (not in 7.3: docs, departures)
    for dev_data, pasid in pdom.dev_data_list:
        iommu_queue_command(dev_data.iommu, build_inv_iommu_pages(
            address, last, dev_data.gcr3_info.domid, pasid,
            flags | CMD_INV_IOMMU_PAGES_GN_MASK))


def __domain_flush_pages(pdom: ProtectionDomain, address: int, last: int, flags: int
                         ) -> None:
    if pdom.is_v2:
        domain_flush_pages_v2(pdom, address, last, flags)
    else:
        domain_flush_pages_v1(pdom, address, last, flags)
    for dev_data in pdom.dev_list:
        if dev_data.ats_enabled:
            device_flush_iotlb(dev_data, address, last, 0, pdom.is_v2)
    for dev_data, pasid in pdom.dev_data_list:
        if dev_data.ats_enabled:
            device_flush_iotlb(dev_data, address, last, pasid, True)


def domain_flush_complete(pdom: ProtectionDomain) -> None:
    for iommu in pdom.iommu_array:
        iommu_completion_wait(iommu)


def amd_iommu_domain_flush_pages(pdom: ProtectionDomain, address: int, last: int,
                                 flags: int) -> None:
    """Without non-present caching (bare metal) the range goes out in one piece."""
    __domain_flush_pages(pdom, address, last, flags)
    domain_flush_complete(pdom)


def amd_iommu_domain_flush_all(pdom: ProtectionDomain) -> None:
    """The whole IOTLB of the domain, PDEs included."""
    amd_iommu_domain_flush_pages(pdom, 0, U64, CMD_INV_IOMMU_PAGES_PDE_MASK)


def amd_iommu_dev_flush_pasid_pages(dev_data: IommuDevData, pasid: int, address: int,
                                    last: int) -> None:
    iommu = dev_data.iommu
    iommu_queue_command(iommu, build_inv_iommu_pages(
        address, last, dev_data.gcr3_info.domid, pasid,
        CMD_INV_IOMMU_PAGES_GN_MASK | CMD_INV_IOMMU_PAGES_PDE_MASK))
    if dev_data.ats_enabled:
        device_flush_iotlb(dev_data, address, last, pasid, True)
    iommu_completion_wait(iommu)


# =======================================================================================
# DTE builders (HEAD iommu.c / amd_iommu.h) and update_dte256
# =======================================================================================
def dte_addr(iommu: AmdIommu, devid: int) -> int:
    return iommu.dev_table + devid * DEV_TABLE_ENTRY_SIZE


def read_dte(iommu: AmdIommu, devid: int) -> DevTableEntry:
    return DevTableEntry(iommu.mem.read_qwords(dte_addr(iommu, devid), 4))


def amd_iommu_make_clear_dte(dev_data: IommuDevData) -> list[int]:
    """V plus the persistent IVHD bits; also the blocked DTE."""
    new = [DTE_FLAG_V, 0, 0, 0]
    ivhd = dev_data.iommu.ivhd_dte_flags.get(dev_data.devid)
    if ivhd is not None:
        for i in range(4):
            new[i] |= ivhd[i]
    return new


def set_dte_passthrough(dev_data: IommuDevData, domain: ProtectionDomain, new: list[int]
                        ) -> None:
    new[0] |= DTE_FLAG_TV | DTE_FLAG_IR | DTE_FLAG_IW
    new[1] |= field_prep(DTE_DOMID_MASK, domain.id)
    if dev_data.ats_enabled:
        new[1] |= DTE_FLAG_IOTLB


def amd_iommu_set_dte_v1(dev_data: IommuDevData, domain: ProtectionDomain, domid: int,
                         top_paddr: int, top_level: int, new: list[int]) -> None:
    """v1 host translation: Mode = levels, HostTRP = root, IR/IW, HAD when tracking."""
    new[0] |= DTE_FLAG_TV | field_prep(DTE_MODE_MASK, top_level)
    if domain.dirty_tracking:
        new[0] |= DTE_FLAG_HAD
    new[0] |= (top_paddr & DTE_HOST_TRP) | DTE_FLAG_IR | DTE_FLAG_IW
    new[1] |= field_prep(DTE_DOMID_MASK, domid)
    if dev_data.ats_enabled:
        new[1] |= DTE_FLAG_IOTLB


def set_dte_gcr3_table(dev_data: IommuDevData, new: list[int]) -> None:
    gcr3_info = dev_data.gcr3_info
    if not gcr3_info.gcr3_tbl:
        return
    drv = dev_data.iommu.drv
    gcr3 = gcr3_info.gcr3_tbl
    d0, d1 = dte_gcr3_fields(gcr3)
    new[0] |= DTE_FLAG_TV | DTE_FLAG_GV | field_prep(DTE_GLX, gcr3_info.glx) | d0
    new[0] |= DTE_FLAG_IR | DTE_FLAG_IW
    if dev_data.ppr:
        new[0] |= DTE_FLAG_PPR
    if dev_data.domain is not None and dev_data.domain.is_v2:
        new[0] |= DTE_FLAG_GIOV
    new[1] |= field_prep(DTE_DOMID_MASK, gcr3_info.domid) | d1
    if dev_data.ats_enabled:
        new[1] |= DTE_FLAG_IOTLB
    level = GUEST_PGTABLE_5_LEVEL if drv.gpt_level == 5 else GUEST_PGTABLE_4_LEVEL
    new[2] |= field_prep(DTE_GPT_LEVEL_MASK, level)


def set_dte_entry(dev_data: IommuDevData) -> None:
    """Build the DTE of the device's current domain and write it; flush the DomainID
    the old DTE held (kdump-copied DTEs motivate it in Linux)."""
    iommu = dev_data.iommu
    domain = dev_data.domain
    assert domain is not None
    new = amd_iommu_make_clear_dte(dev_data)
    if dev_data.gcr3_info.gcr3_tbl:
        set_dte_gcr3_table(dev_data, new)
    elif domain.is_identity:
        set_dte_passthrough(dev_data, domain, new)
    elif domain.pd_mode == PD_MODE_V1 and domain.iop is not None:
        amd_iommu_set_dte_v1(dev_data, domain, domain.id, domain.iop.root,
                             domain.iop.levels, new)
    else:
        raise IommuError(errno.EINVAL, f"{domain!r} cannot be programmed in a DTE")
    old_domid = read_dte(iommu, dev_data.devid).domid
    amd_iommu_update_dte(iommu, dev_data, new)
    if old_domid:
        amd_iommu_flush_tlb_domid(iommu, old_domid)


def clear_dte_entry(dev_data: IommuDevData) -> None:
    """DMA-remapping fields cleared: the blocked DTE (V, TV=0)."""
    amd_iommu_update_dte(dev_data.iommu, dev_data, amd_iommu_make_clear_dte(dev_data))


def _write_lower128(iommu: AmdIommu, devid: int, new: list[int]) -> None:
    iommu.mem.write_qwords(dte_addr(iommu, devid), new[0:2])


def _write_upper128(iommu: AmdIommu, devid: int, new: list[int]) -> None:
    """Keep the old interrupt-remapping state of data[2]; take 55:52 and data[3] new."""
    addr = dte_addr(iommu, devid) + 16
    old2 = iommu.mem.read_u64(addr)
    d2 = (new[2] & ~DTE_DATA2_INTR_MASK) | (old2 & DTE_DATA2_INTR_MASK)
    new[2] = d2
    iommu.mem.write_qwords(addr, [d2, new[3]])


def update_dte256(iommu: AmdIommu, dev_data: IommuDevData, new: list[int]) -> None:
    """Write the 256-bit DTE as two 128-bit halves, in the order that never shows the
    unit a half-updated valid entry (V/GV last when setting, first when clearing)."""
    devid = dev_data.devid
    old = read_dte(iommu, devid)
    log = dev_data.dte_write_log
    if len(log) > 64:
        del log[:-32]

    def lower(v: list[int]) -> None:
        _write_lower128(iommu, devid, v)
        log.append("lower" if v is new else "disable")

    def upper() -> None:
        _write_upper128(iommu, devid, new)
        log.append("upper")

    def flush() -> None:
        iommu_flush_dte_sync(iommu, devid)
        log.append("flush")

    if not old.v:
        upper()
        lower(new)
        flush()
    elif not new[0] & DTE_FLAG_V:
        lower(new)
        upper()
        flush()
    elif not old.gv:
        upper()
        lower(new)
        flush()
    elif not new[0] & DTE_FLAG_GV:
        lower(new)
        upper()
        flush()
    elif old.gpt_level != field_get(DTE_GPT_LEVEL_MASK, new[2]):
        lower([0, 0, 0, 0])  # disable first: the levels live in the other half
        flush()
        upper()
        lower(new)
        flush()
    else:
        lower(new)
    if iommu.tracer.enabled:
        iommu.tracer.event("driver", "update_dte256", f"{iommu.name} devid {devid:#x} "
                           f"{' '.join(log)} -> {read_dte(iommu, devid)!r}")


def amd_iommu_update_dte(iommu: AmdIommu, dev_data: IommuDevData, new: list[int]) -> None:
    """Write the DTE, then INV_DEV_ENTRY (+ the device IOTLB) and a completion wait."""
    update_dte256(iommu, dev_data, new)
    device_flush_dte(dev_data)
    iommu_completion_wait(iommu)


def dev_update_dte(dev_data: IommuDevData, set: bool) -> None:
    if set:
        set_dte_entry(dev_data)
    else:
        clear_dte_entry(dev_data)


# =======================================================================================
# GCR3 tables
# =======================================================================================
def get_gcr3_levels(drv: AmdIommuDriver, pasids: int) -> int:
    if pasids == -1:
        return drv.max_glx_val
    levels = (pasids - 1).bit_length() if pasids > 1 else 0
    return (levels + 8) // 9 - 1 if levels else 0


def setup_gcr3_table(dev_data: IommuDevData, pasids: int) -> None:
    iommu = dev_data.iommu
    drv = iommu.drv
    info = dev_data.gcr3_info
    levels = get_gcr3_levels(drv, pasids)
    if levels > drv.max_glx_val:
        raise IommuError(errno.EINVAL, f"{levels} GCR3 levels needed, unit has "
                         f"{drv.max_glx_val}")
    if info.gcr3_tbl:
        raise IommuError(errno.EBUSY, "GCR3 table already set up")
    domid = drv.pdom_ids.alloc()  # per-device DomainID (ENOSPC)
    try:
        info.gcr3_tbl = iommu.alloc.alloc_pages(0)
    except IommuError:
        drv.pdom_ids.free(domid)
        raise
    info.domid = domid
    info.glx = levels


def free_gcr3_table(dev_data: IommuDevData) -> None:
    info = dev_data.gcr3_info
    iommu = dev_data.iommu
    for pa in info.pages:
        iommu.alloc.free_pages(pa)
    info.pages.clear()
    iommu.drv.pdom_ids.free(info.domid)
    iommu.alloc.free_pages(info.gcr3_tbl)
    info.gcr3_tbl = 0
    info.glx = 0
    info.domid = 0
    info.pasid_cnt = 0


def get_gcr3_pte(dev_data: IommuDevData, pasid: int, alloc: bool) -> int | None:
    """Address of the level-0 GCR3 entry of ``pasid`` (``__get_gcr3_pte``)."""
    info = dev_data.gcr3_info
    mem = dev_data.iommu.mem
    table = info.gcr3_tbl
    level = info.glx
    while True:
        pte = table + ((pasid >> (9 * level)) & 0x1FF) * 8
        if level == 0:
            return pte
        val = mem.read_u64(pte)
        if not val & GCR3_VALID:
            if not alloc:
                return None
            nxt = dev_data.iommu.alloc.alloc_pages(0)
            info.pages.append(nxt)
            mem.write_u64(pte, nxt | GCR3_VALID)
            val = nxt | GCR3_VALID
        table = val & GCR3_ADDR_MASK
        level -= 1


def update_gcr3(dev_data: IommuDevData, pasid: int, gcr3: int, set: bool) -> None:
    pte = get_gcr3_pte(dev_data, pasid, True)
    assert pte is not None
    dev_data.iommu.mem.write_u64(pte, (gcr3 & GCR3_ADDR_MASK) | GCR3_VALID if set else 0)
    amd_iommu_dev_flush_pasid_pages(dev_data, pasid, 0, U64)


def init_gcr3_table(dev_data: IommuDevData, pdom: ProtectionDomain) -> None:
    """A GCR3 table for SVA-capable domains; GCR3[0] = the v2 root for v2 domains."""
    if pdom.is_identity and not pdev_pasid_supported(dev_data):
        return
    setup_gcr3_table(dev_data, dev_data.max_pasids or 1)
    if not pdom.is_v2:
        return
    assert pdom.iop is not None
    try:
        update_gcr3(dev_data, 0, pdom.iop.root, True)
    except IommuError:
        free_gcr3_table(dev_data)
        raise


def destroy_gcr3_table(dev_data: IommuDevData, pdom: ProtectionDomain) -> None:
    if pdom.is_v2 and dev_data.gcr3_info.gcr3_tbl:
        update_gcr3(dev_data, 0, 0, False)
    if dev_data.gcr3_info.gcr3_tbl:
        free_gcr3_table(dev_data)


# =======================================================================================
# Domain allocation
# =======================================================================================
def hd_support(iommu: AmdIommu) -> bool:
    """``amd_iommu_hd_support``."""
    from drivers.amd_vi.amd_iommu_types import FEATURE_HDSUP
    return not iommu.drv.hatdis and bool(iommu.efr & FEATURE_HDSUP)


def _paging_ops(drv: AmdIommuDriver, extra: Iterable[str] = ()) -> Any:
    return drv.ops.domain_ops([*PAGING_DOMAIN_OPS, *extra])


def do_iommu_domain_alloc(dev_data: IommuDevData, flags: int, pd_mode: str
                          ) -> ProtectionDomain:
    iommu = dev_data.iommu
    drv = iommu.drv
    platform = iommu.platform
    platform.kzalloc("struct protection_domain")
    dirty = bool(flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    if pd_mode == PD_MODE_V1:
        iop = alloc_v1_pgtable(platform, drv.hpt_level)
        extra: list[str] = list(DIRTY_DOMAIN_OPS) if dirty else []
    else:
        iop = alloc_v2_pgtable(platform, drv.gpt_level)
        assert iop.pgsize_bitmap == AMD_IOMMU_PGSIZES_V2
        extra = ["set_dev_pasid"]
    try:
        dom = ProtectionDomain(drv, IOMMU_DOMAIN_UNMANAGED, pd_mode, _paging_ops(drv, extra),
                               iop=iop, dirty_ops=dirty,
                               geometry=Geometry(0, iop.fmt.va_ranges[0][1], True))
    except IommuError:
        iop.free()
        raise IommuError(errno.ENOMEM, "no protection domain ID left") from None
    dom.nest_parent = bool(flags & IOMMU_HWPT_ALLOC_NEST_PARENT)
    return dom


def amd_iommu_domain_alloc_paging_flags(dev: Device, flags: int,
                                        user_data: UserData | None) -> ProtectionDomain:
    dev_data = dev_iommu_priv_get(dev)
    iommu = dev_data.iommu
    drv = iommu.drv
    supported = (IOMMU_HWPT_ALLOC_DIRTY_TRACKING | IOMMU_HWPT_ALLOC_PASID
                 | IOMMU_HWPT_ALLOC_NEST_PARENT)
    if flags & ~supported or user_data is not None:
        raise IommuError(errno.EOPNOTSUPP, f"unsupported allocation flags {flags:#x} or data")
    v1_flags = IOMMU_HWPT_ALLOC_DIRTY_TRACKING | IOMMU_HWPT_ALLOC_NEST_PARENT
    if flags & IOMMU_HWPT_ALLOC_PASID:
        if flags & v1_flags:
            raise IommuError(errno.EOPNOTSUPP, "PASID domains (v2) cannot be nest parents "
                             "or dirty tracking")
        if not drv.pasid_supported():
            raise IommuError(errno.EOPNOTSUPP, "PASID not supported by this IOMMU")
        return do_iommu_domain_alloc(dev_data, flags, PD_MODE_V2)
    if flags & v1_flags:
        if flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not hd_support(iommu):
            raise IommuError(errno.EOPNOTSUPP, "no host dirty (HDSUP) support")
        if flags & IOMMU_HWPT_ALLOC_NEST_PARENT and not drv.nesting_supported():
            raise IommuError(errno.EOPNOTSUPP, "nesting needs GT, GIOSUP and GCR3TRPMODE")
        if drv.hatdis:
            raise IommuError(errno.EOPNOTSUPP, "host translation disabled (HATS=3)")
        return do_iommu_domain_alloc(dev_data, flags, PD_MODE_V1)
    if drv.hatdis:
        if not drv.v2_pgtbl_supported():
            raise IommuError(errno.EOPNOTSUPP, "no page table format available")
        return do_iommu_domain_alloc(dev_data, 0, PD_MODE_V2)
    return do_iommu_domain_alloc(dev_data, 0, PD_MODE_V1)


def amd_iommu_domain_free(dom: ProtectionDomain) -> None:
    if dom.iop is not None:
        dom.iop.free()
        dom.iop = None
    dom.drv.pdom_ids.free(dom.id)


# =======================================================================================
# Device probe / attach / detach
# =======================================================================================
def dev_iommu_priv_get(dev: Device) -> IommuDevData:
    di = dev.iommu
    if di is None or not isinstance(di.priv, IommuDevData):
        raise IommuError(errno.ENODEV, f"{dev.name} is not probed by amd_vi")
    dd: IommuDevData = di.priv
    return dd


def pdev_get_caps(dev: Device) -> int:
    flags = AMD_IOMMU_DEVICE_FLAG_ATS_SUP if dev.ats else 0
    if dev.pri:
        flags |= AMD_IOMMU_DEVICE_FLAG_PRI_SUP
    if dev.pasid_bits:
        flags |= AMD_IOMMU_DEVICE_FLAG_PASID_SUP
    return flags


def pdev_pasid_supported(dev_data: IommuDevData) -> bool:
    return bool(dev_data.flags & AMD_IOMMU_DEVICE_FLAG_PASID_SUP)


def pdev_enable_cap_ats(dev_data: IommuDevData) -> None:
    # dev.rc_ats stands for amd_iommu_iotlb_sup (the IVHD's IOTLB support)
    if not dev_data.ats_enabled and dev_data.dev.rc_ats and \
            dev_data.flags & AMD_IOMMU_DEVICE_FLAG_ATS_SUP:
        dev_data.ats_enabled = True
        dev_data.ats_qdep = ATS_QUEUE_DEPTH


def pdev_enable_cap_pri(dev_data: IommuDevData) -> None:
    if dev_data.pri_enabled or not dev_data.ats_enabled:
        return
    if dev_data.flags & AMD_IOMMU_DEVICE_FLAG_PRI_SUP:
        dev_data.pri_enabled = True
        dev_data.pri_tlp = True  # the simulated devices want the PASID in responses


def pdev_enable_caps(dev_data: IommuDevData) -> None:
    """PASID, ATS, then PRI (which needs ATS enabled)."""
    if pdev_pasid_supported(dev_data):
        dev_data.pasid_enabled = True
    pdev_enable_cap_ats(dev_data)
    pdev_enable_cap_pri(dev_data)


def pdev_disable_caps(dev_data: IommuDevData) -> None:
    dev_data.ats_enabled = False
    dev_data.ats_qdep = 0
    dev_data.pasid_enabled = False
    dev_data.pri_enabled = False


def pdom_attach_iommu(iommu: AmdIommu, pdom: ProtectionDomain) -> None:
    pdom.iommu_array[iommu] = pdom.iommu_array.get(iommu, 0) + 1


def pdom_detach_iommu(iommu: AmdIommu, pdom: ProtectionDomain) -> None:
    n = pdom.iommu_array.get(iommu, 0) - 1
    if n <= 0:
        pdom.iommu_array.pop(iommu, None)
    else:
        pdom.iommu_array[iommu] = n


def attach_device(dev_data: IommuDevData, domain: ProtectionDomain) -> None:
    iommu = dev_data.iommu
    if dev_data.domain is not None:
        raise IommuError(errno.EBUSY, "device already attached")
    pdom_attach_iommu(iommu, domain)
    sva = domain.is_sva_capable()
    if sva:
        try:
            init_gcr3_table(dev_data, domain)
        except IommuError:
            pdom_detach_iommu(iommu, domain)
            raise
    if sva:
        from drivers.amd_vi.ppr import amd_iommu_iopf_add_device
        pdev_enable_caps(dev_data)
        try:
            amd_iommu_iopf_add_device(iommu, dev_data)
        except IommuError:
            dev_data.pri_enabled = False  # the device works on without IOPF
    else:
        pdev_enable_cap_ats(dev_data)
    dev_data.domain = domain
    domain.dev_list.append(dev_data)
    dev_update_dte(dev_data, True)


def _iopf_remove(dev_data: IommuDevData) -> None:
    if dev_data.ppr:
        from drivers.amd_vi.ppr import amd_iommu_iopf_remove_device
        dev_data.iommu.core.iopf_flush_dev(dev_data.dev)
        amd_iommu_iopf_remove_device(dev_data.iommu, dev_data)


def detach_bookkeeping(dev_data: IommuDevData) -> None:
    """The part of ``detach_device`` after the DTE no longer points at the domain:
    flush it (PDEs too), drop the device from it, free the GCR3 table."""
    domain = dev_data.domain
    if domain is None:
        return
    _iopf_remove(dev_data)
    amd_iommu_domain_flush_all(domain)
    if dev_data in domain.dev_list:
        domain.dev_list.remove(dev_data)
    if domain.is_sva_capable():
        destroy_gcr3_table(dev_data, domain)
    dev_data.domain = None
    pdom_detach_iommu(dev_data.iommu, domain)


def detach_device(dev_data: IommuDevData) -> None:
    """IOPF off first, then the capabilities, the blocked DTE, the flushes."""
    if dev_data.domain is None:
        return
    _iopf_remove(dev_data)
    pdev_disable_caps(dev_data)
    dev_update_dte(dev_data, False)
    detach_bookkeeping(dev_data)


def amd_iommu_attach_device(domain: ProtectionDomain, dev: Device) -> None:
    dev_data = dev_iommu_priv_get(dev)
    iommu = dev_data.iommu
    if dev_data.domain is domain and dev_data.nested is None:
        return
    if domain.dirty_ops and not hd_support(iommu):
        raise IommuError(errno.EINVAL, "dirty tracking domain on a unit without HDSUP")
    if domain.iop is not None and domain.drv is not iommu.drv:
        raise IommuError(errno.EINVAL, "domain of another driver instance")
    if dev_data.pasids and not domain.is_sva_capable():
        # PASIDs live in the GCR3 table, which only SVA-capable RID domains keep (not in
        # 7.3, where paging domains have no set_dev_pasid: docs, departures).
        raise IommuError(errno.EINVAL, "PASIDs attached: RID domain must be v2 or identity")
    if dev_data.nested is not None:
        from drivers.amd_vi.nested import nested_detach
        nested_detach(dev_data)
    if dev_data.domain is not None:
        detach_device(dev_data)
    attach_device(dev_data, domain)


def blocked_domain_attach_device(dev: Device) -> None:
    dev_data = dev_iommu_priv_get(dev)
    if dev_data.nested is not None:
        from drivers.amd_vi.nested import nested_detach
        nested_detach(dev_data)
    if dev_data.domain is not None:
        detach_device(dev_data)
    dev_update_dte(dev_data, False)


# =======================================================================================
# PASID attach (GCR3 entries)
# =======================================================================================
def amd_iommu_set_dev_pasid(domain: ProtectionDomain, dev: Device, pasid: int,
                            old: IommuDomain | None) -> None:
    """A v2 paging domain at ``pasid``: GCR3[pasid] = its root. The RID domain must keep
    a GCR3 table (v2 or identity), as SVA requires in Linux."""
    dev_data = dev_iommu_priv_get(dev)
    if not domain.is_v2 or domain.iop is None:
        raise IommuError(errno.EINVAL, "only v2 domains can be attached to a PASID")
    if pasid == 0 or pasid >= dev_data.max_pasids:
        raise IommuError(errno.EINVAL, f"PASID {pasid} outside 1..{dev_data.max_pasids - 1}")
    if not dev_data.gcr3_info.gcr3_tbl or dev_data.nested is not None:
        raise IommuError(errno.EINVAL, "the RID domain keeps no GCR3 table")
    prev = dev_data.pasids.get(pasid)
    update_gcr3(dev_data, pasid, domain.iop.root, True)
    if prev is not None:
        prev.dev_data_list.remove((dev_data, pasid))
        pdom_detach_iommu(dev_data.iommu, prev)
    else:
        dev_data.gcr3_info.pasid_cnt += 1
    dev_data.pasids[pasid] = domain
    domain.dev_data_list.append((dev_data, pasid))
    pdom_attach_iommu(dev_data.iommu, domain)


def amd_iommu_remove_dev_pasid(dev: Device, pasid: int) -> None:
    dev_data = dev_iommu_priv_get(dev)
    dom = dev_data.pasids.pop(pasid, None)
    if dom is None:
        return
    if dev_data.gcr3_info.gcr3_tbl:
        update_gcr3(dev_data, pasid, 0, False)
        dev_data.gcr3_info.pasid_cnt -= 1
    dom.dev_data_list.remove((dev_data, pasid))
    pdom_detach_iommu(dev_data.iommu, dom)


# =======================================================================================
# Paging domain ops
# =======================================================================================
def amd_iommu_map_pages(dom: ProtectionDomain, iova: int, paddr: int, pgsize: int,
                        pgcount: int, prot: int) -> int:
    if dom.iop is None:
        raise IommuError(errno.EINVAL, "domain has no page table")
    if not prot & (IOMMU_READ | IOMMU_WRITE):
        raise IommuError(errno.EINVAL, "mapping needs IR or IW")
    return dom.iop.map_pages(iova, paddr, pgsize, pgcount, prot)


def amd_iommu_unmap_pages(dom: ProtectionDomain, iova: int, pgsize: int, pgcount: int,
                          gather: IotlbGather) -> int:
    if dom.iop is None:
        return 0
    r = dom.iop.unmap_pages(iova, pgsize, pgcount, gather)
    if r:
        gather.add_range(iova, r)
    return r


def amd_iommu_iotlb_sync(dom: ProtectionDomain, gather: IotlbGather) -> None:
    """PDEs are flushed only when tables were freed."""
    amd_iommu_domain_flush_pages(dom, gather.start, gather.end,
                                 CMD_INV_IOMMU_PAGES_PDE_MASK if gather.freelist else 0)
    if dom.iop is not None and gather.freelist:
        dom.iop.release_freelist(gather)


def amd_iommu_set_dirty_tracking(dom: ProtectionDomain, enable: bool) -> None:
    if dom.dirty_tracking == enable:
        return
    flush = False
    for dev_data in dom.dev_list:
        iommu = dev_data.iommu
        addr = dte_addr(iommu, dev_data.devid)
        d0 = iommu.mem.read_u64(addr)
        iommu.mem.write_u64(addr, (d0 | DTE_FLAG_HAD) if enable else (d0 & ~DTE_FLAG_HAD))
        device_flush_dte(dev_data)
        flush = True
    dom.dirty_tracking = enable
    if flush:
        # Flush the IOTLB so the next translations mark IOPTEs dirty.
        amd_iommu_domain_flush_all(dom)


def amd_iommu_read_and_clear_dirty(dom: ProtectionDomain, iova: int, size: int, flags: int,
                                   dirty: Any) -> None:
    if dom.iop is None:
        raise IommuError(errno.EOPNOTSUPP, "no page table")
    # 7.3's generic read_and_clear_dirty reads D bits whether or not tracking is on
    # (with DTE.HAD clear the unit sets none).
    record: Callable[[int, int], None] = dirty.record
    dom.iop.read_and_clear_dirty(iova, size, flags, record)


# =======================================================================================
# iommu_ops
# =======================================================================================
def amd_iommu_capable(dev: Device, cap: int) -> bool:
    if cap in (IommuCap.CACHE_COHERENCY, IommuCap.ENFORCE_CACHE_COHERENCY,
               IommuCap.DEFERRED_FLUSH):
        return True
    if cap == IommuCap.DIRTY_TRACKING:
        return hd_support(dev_iommu_priv_get(dev).iommu)
    if cap == IommuCap.PCI_ATS_SUPPORTED:
        dev_data = dev_iommu_priv_get(dev)
        return dev.rc_ats and bool(dev_data.flags & AMD_IOMMU_DEVICE_FLAG_ATS_SUP)
    return False


def amd_iommu_get_resv_regions(dev: Device) -> list[ResvRegion]:
    from drivers.amd_vi.amd_iommu_types import FEATURE_HT_RANGE_IGNORE
    regions = [ResvRegion(X86_MSI_RANGE_START, X86_MSI_RANGE_LENGTH, 0, ResvType.MSI)]
    if not dev_iommu_priv_get(dev).iommu.efr2 & FEATURE_HT_RANGE_IGNORE:
        regions.append(ResvRegion(HT_RANGE_START, HT_RANGE_END - HT_RANGE_START + 1, 0,
                                  ResvType.RESERVED))
    return regions


def amd_iommu_def_domain_type(dev: Device) -> int:
    di = dev.iommu
    if di is None or not isinstance(di.priv, IommuDevData):
        return 0
    if dev.is_pci and dev.untrusted:
        return IOMMU_DOMAIN_DMA
    # PASID-capable devices default to identity (no memory encryption, no SNP here).
    if pdev_pasid_supported(di.priv):
        return IOMMU_DOMAIN_IDENTITY
    return 0
