"""The VT-d driver core (``drivers/iommu/intel/iommu.c``).

Unit probe (CAP/ECAP decode, agaw, queued invalidation, root table, translation
enable), per-device state, domain IDs per unit, first-stage / second-stage paging domains
plus the static identity and blocked domains, ``paging_domain_compatible``, RID attach
(scalable-mode PASID entries at RID_PASID, legacy context entries), ``set_dev_pasid``,
map/unmap with the IOTLB flushes of :mod:`cache`, dirty tracking (SSADE) and hw_info.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING, Any

from drivers.intel_vtd import cache, dmar, pasid, prq
from drivers.intel_vtd import iommu_h as h
from iommu_core.device import (
    X86_MSI_RANGE_LENGTH,
    X86_MSI_RANGE_START,
    IommuCap,
    IommuDevice,
    ResvRegion,
    ResvType,
)
from iommu_core.domain import (
    IOMMU_DOMAIN_BLOCKED,
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
from iommu_core.group import IOMMU_NO_PASID
from iommu_core.pgtable import IoPageTable, PhysTableMemory, formats
from iommu_core.platform.ats import (
    pci_disable_ats,
    pci_disable_pri,
    pci_enable_ats,
    pci_enable_pri,
)
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommufd.uapi import (
    IOMMU_HW_INFO_TYPE_DEFAULT,
    IOMMU_HW_INFO_TYPE_INTEL_VTD,
    IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17,
    iommu_hw_info_vtd,
    iommu_hwpt_vtd_s1,
)

if TYPE_CHECKING:
    from iommu_core.iommu import IommuCore
    from iommu_core.platform.bus import Device
    from iommu_core.platform.platform import IommuResources
    from iommu_core.plugin import IommuOps

SZ_4K, SZ_2M, SZ_1G = 1 << 12, 1 << 21, 1 << 30

PAGING_OPS = ("attach_dev", "set_dev_pasid", "map_pages", "unmap_pages", "flush_iotlb_all",
              "iotlb_sync_map", "iotlb_sync", "iova_to_phys", "enforce_cache_coherency",
              "free")
DIRTY_OPS = ("set_dirty_tracking", "read_and_clear_dirty")
NESTED_OPS = ("attach_dev", "set_dev_pasid", "cache_invalidate_user", "free")
STATIC_OPS = ("attach_dev", "set_dev_pasid")


# =======================================================================================
# Per-unit and per-device state
# =======================================================================================
class IntelIommu:
    """``struct intel_iommu``: one DMAR unit as the driver knows it."""

    def __init__(self, core: IommuCore, ops: IommuOps, res: IommuResources) -> None:
        self.name = res.name
        self.core = core
        self.ops = ops
        self.reg = res.mmio["regs"]
        self.irqs = res.irqs
        self.mem = core.platform.mem
        self.alloc = core.platform.alloc
        self.tracer = core.platform.tracer
        self.version = self.reg.read32(h.DMAR_VER_REG)
        self.cap = self.reg.read64(h.DMAR_CAP_REG)
        self.ecap = self.reg.read64(h.DMAR_ECAP_REG)
        self.gcmd = 0
        self.root_entry = 0
        #: bus -> [lower context table, upper context table (scalable mode) or 0]
        self.context_tables: dict[int, list[int]] = {}
        self.qi: dmar.Qi | None = None
        self.prq = 0
        self.ndoms = h.cap_ndoms(self.cap)
        self.domain_ids: set[int] = set()
        self.faults: list[dmar.DmarFaultRecord] = []
        self.devices: dict[int, DeviceDomainInfo] = {}
        self.iommu_dev: IommuDevice | None = None
        sagaw = self.effective_sagaw()
        self.agaw = _highest_bit(sagaw & ((1 << (h.width_to_agaw(57) + 1)) - 1))
        self.msagaw = _highest_bit(sagaw)
        self.pasid_max_id = min(pasid.PASID_MAX, 2 << h.ecap_pss(self.ecap))

    # -- predicates of iommu.h ----------------------------------------------------------
    @property
    def sm_supported(self) -> bool:
        return h.ecap_smts(self.ecap)

    @property
    def pasid_supported(self) -> bool:
        return self.sm_supported and h.ecap_pasid(self.ecap)

    @property
    def nested_supported(self) -> bool:
        return self.sm_supported and h.ecap_nest(self.ecap)

    @property
    def ssads_supported(self) -> bool:
        return self.sm_supported and h.ecap_slads(self.ecap) and h.ecap_smpwc(self.ecap)

    @property
    def coherent(self) -> bool:
        return h.ecap_smpwc(self.ecap) if self.sm_supported else h.ecap_coherent(self.ecap)

    def effective_sagaw(self) -> int:
        """``__iommu_calculate_sagaw``: second stage from CAP.SAGAW; first stage 4-level
        (and 5-level with FL5LP); both: the intersection."""
        ss = h.cap_sagaw(self.cap)
        fs = 1 << 2 | (1 << 3 if h.cap_fl5lp_support(self.cap) else 0)
        if not self.sm_supported:
            return ss
        flts, slts = h.ecap_flts(self.ecap), h.ecap_slts(self.ecap)
        if flts and slts:
            return ss & fs
        return fs if flts else ss

    def __repr__(self) -> str:
        return f"<IntelIommu {self.name}>"


def _highest_bit(v: int) -> int:
    return v.bit_length() - 1 if v else 0


class DeviceDomainInfo:
    """``struct device_domain_info``: per-device state (``dev.iommu.priv``)."""

    def __init__(self, dev: Device, iommu: IntelIommu) -> None:
        self.dev = dev
        self.iommu = iommu
        self.bus = (dev.rid >> 8) & 0xFF
        self.devfn = dev.rid & 0xFF
        self.sid = dev.rid & 0xFFFF
        self.pfsid = self.sid  # no physical-function lookup for VFs in the simulation
        # device-TLB invalidation needs the invalidation queue
        self.ats_supported = bool(dev.is_pci and dev.ats and iommu.qi is not None
                                  and h.ecap_dev_iotlb_support(iommu.ecap))
        self.ats_enabled = False
        self.ats_qdep = 32
        self.pasid_supported = bool(iommu.pasid_supported and dev.pasid_bits)
        self.pri_supported = bool(h.ecap_prs(iommu.ecap) and dev.pri and self.ats_supported
                                  and iommu.sm_supported)
        self.pri_enabled = False
        self.iopf_refcount = 0
        self.domain: DmarDomain | None = None
        self.domain_attached = False
        self.pasid_table: pasid.PasidTable | None = None

    def __repr__(self) -> str:
        return f"<DeviceDomainInfo {self.dev.name}>"


def dev_info(dev: Device) -> DeviceDomainInfo:
    info = dev.iommu.priv if dev.iommu is not None else None
    if not isinstance(info, DeviceDomainInfo):
        raise IommuError(errno.ENODEV, f"{dev.name} is not behind a VT-d unit")
    return info


# =======================================================================================
# Domains
# =======================================================================================
class DmarDomain(IommuDomain):
    """``struct dmar_domain``: first-stage, second-stage or nested."""

    def __init__(self, ops: IommuOps, kind: str, provided: tuple[str, ...], dtype: int, *,
                 pgsize_bitmap: int = 0, geometry: Geometry | None = None,
                 dirty_ops: bool = False) -> None:
        super().__init__(dtype, ops.domain_ops(provided), pgsize_bitmap=pgsize_bitmap,
                         geometry=geometry, dirty_ops=dirty_ops)
        self.kind = kind  # "fs", "ss" or "nested"
        self.nested_parent = False
        self.dirty_tracking = False
        self.force_snooping = False
        self.pgtable: IoPageTable = None  # type: ignore[assignment]
        self.agaw = 0
        self.gaw = 0
        self.max_addr = 0
        self.iommu_coherency = True
        self.iotlb_sync_map_needed = False
        #: unit -> [DID, users]
        self.iommu_refs: dict[IntelIommu, list[int]] = {}
        self.devices: list[DeviceDomainInfo] = []  # RID attachments
        self.dev_pasids: list[tuple[DeviceDomainInfo, int]] = []
        self.cache_tags: list[cache.CacheTag] = []
        # nesting
        self.s2_domain: DmarDomain | None = None
        self.s1_cfg: iommu_hwpt_vtd_s1 | None = None
        self.s1_domains: list[DmarDomain] = []

    @property
    def use_piotlb(self) -> bool:
        """First-stage and nested translations are flushed with PASID-based IOTLB."""
        return self.kind in ("fs", "nested")

    def domain_id_iommu(self, iommu: IntelIommu) -> int:
        ref = self.iommu_refs.get(iommu)
        if ref is None:
            raise IommuError(errno.ENODEV, f"{self!r} has no domain id on {iommu.name}")
        return ref[0]


class StaticDomain(IommuDomain):
    """The identity and blocking domains (one each per driver, never freed)."""


def domain_attach_iommu(domain: DmarDomain, iommu: IntelIommu) -> None:
    """Take (or reference) the domain's DID on ``iommu``: ENOSPC when none is free."""
    ref = domain.iommu_refs.get(iommu)
    if ref is not None:
        ref[1] += 1
        return
    for did in range(h.IDA_START_DID, iommu.ndoms):
        if did not in iommu.domain_ids:
            iommu.domain_ids.add(did)
            domain.iommu_refs[iommu] = [did, 1]
            return
    raise IommuError(errno.ENOSPC, f"{iommu.name}: no free domain id")


def domain_detach_iommu(domain: DmarDomain, iommu: IntelIommu) -> None:
    ref = domain.iommu_refs.get(iommu)
    if ref is None:
        return
    ref[1] -= 1
    if not ref[1]:
        iommu.domain_ids.discard(ref[0])
        del domain.iommu_refs[iommu]


def _pt_memory(iommu: IntelIommu) -> PhysTableMemory:
    return PhysTableMemory(iommu.mem, iommu.alloc)


def compute_vasz_lg2_ss(iommu: IntelIommu) -> tuple[int, int]:
    """(VA bits, levels): the largest table both MGAW and SAGAW allow; a unit that walks
    only 4 or 5 levels may still have to limit IOVAs to fewer bits. (0, 0): none."""
    sagaw, mgaw = h.cap_sagaw(iommu.cap), h.cap_mgaw(iommu.cap)
    if mgaw > 48 and sagaw >= 1 << 3:
        return min(57, mgaw), 5
    if mgaw > 39 and sagaw >= 1 << 2:
        return min(48, mgaw), 4 + _ffs(sagaw >> 3)
    if mgaw > 30 and sagaw >= 1 << 1:
        return min(39, mgaw), 3 + _ffs(sagaw >> 2)
    return 0, 0


def _ffs(v: int) -> int:
    """Linux ``ffs``: 1-based index of the lowest set bit, 0 for none."""
    return (v & -v).bit_length()


def paging_domain_alloc(iommu: IntelIommu, first_stage: bool) -> DmarDomain:
    """Geometry and page table of a paging domain for ``iommu`` (generic_pt rules)."""
    mgaw = h.cap_mgaw(iommu.cap)
    if first_stage:
        five = mgaw > 48 and h.cap_fl5lp_support(iommu.cap)
        levels, va_bits = (5, min(57, mgaw)) if five else (4, min(48, mgaw))
        pgsizes = SZ_4K | SZ_2M | (SZ_1G if h.cap_fl1gp_support(iommu.cap) else 0)
        fmt: formats.PtFormat = formats.x86_64(levels, oas=52).with_pgsizes(pgsizes)
        last = (1 << (va_bits - 1)) - 1  # lower canonical half
        coherent = h.ecap_smpwc(iommu.ecap)  # first stage is scalable mode only
    else:
        va_bits, levels = compute_vasz_lg2_ss(iommu)
        if not va_bits:
            raise IommuError(errno.EINVAL, f"{iommu.name}: no usable second-stage width")
        sllps = h.cap_super_page_val(iommu.cap)
        pgsizes = SZ_4K | (SZ_2M if sllps & 1 else 0) | (SZ_1G if sllps & 2 else 0)
        fmt = formats.vtd_ss(levels, oas=52).with_pgsizes(pgsizes)
        last = (1 << va_bits) - 1
        coherent = iommu.coherent  # iommu_paging_structure_coherency()
    kind = "fs" if first_stage else "ss"
    iommu.core.platform.kzalloc("struct dmar_domain")
    domain = DmarDomain(iommu.ops, kind, PAGING_OPS, IOMMU_DOMAIN_UNMANAGED,
                        pgsize_bitmap=fmt.pgsize_bitmap,
                        geometry=Geometry(0, last, force_aperture=True))
    domain.pgtable = IoPageTable(fmt, _pt_memory(iommu))
    domain.agaw = levels - 2
    domain.gaw = va_bits
    # PT_FEAT_DMA_INCOHERENT: tables of an incoherent unit are flushed after writes
    domain.iommu_coherency = coherent
    domain.iotlb_sync_map_needed = h.cap_rwbf(iommu.cap) or (
        not first_stage and h.cap_caching_mode(iommu.cap))
    return domain


def intel_iommu_domain_alloc_paging_flags(dev: Device, flags: int, user_data: Any
                                          ) -> DmarDomain:
    """First stage when possible (flags within PASID, scalable mode with FLTS); else
    second stage, which NEST_PARENT and DIRTY_TRACKING require."""
    info = dev_info(dev)
    iommu = info.iommu
    if user_data is not None:
        raise IommuError(errno.EOPNOTSUPP, "intel_vtd paging domains take no user data")
    if not flags & ~IOMMU_HWPT_ALLOC_PASID and iommu.sm_supported and h.ecap_flts(iommu.ecap):
        return paging_domain_alloc(iommu, first_stage=True)
    if flags & ~(IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                 | IOMMU_HWPT_ALLOC_PASID):
        raise IommuError(errno.EOPNOTSUPP, f"unsupported allocation flags {flags:#x}")
    if flags & IOMMU_HWPT_ALLOC_NEST_PARENT and not iommu.nested_supported:
        raise IommuError(errno.EOPNOTSUPP, f"{iommu.name}: no nested translation")
    if flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not iommu.ssads_supported:
        raise IommuError(errno.EOPNOTSUPP, f"{iommu.name}: no second-stage dirty tracking")
    if iommu.sm_supported and not h.ecap_slts(iommu.ecap):
        raise IommuError(errno.EOPNOTSUPP, f"{iommu.name}: no second-stage translation")
    domain = paging_domain_alloc(iommu, first_stage=False)
    domain.nested_parent = bool(flags & IOMMU_HWPT_ALLOC_NEST_PARENT)
    if flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING:
        domain.ops = iommu.ops.domain_ops(PAGING_OPS + DIRTY_OPS)
        domain.dirty_ops = True
    return domain


def paging_domain_compatible(domain: IommuDomain, info: DeviceDomainInfo) -> None:
    """EINVAL unless ``domain`` can be used on the device's unit (7.3's
    ``paging_domain_compatible_first_stage`` / ``_second_stage``, in their order)."""
    iommu = info.iommu
    if not isinstance(domain, DmarDomain) or domain.kind == "nested":
        raise IommuError(errno.EINVAL, f"{domain!r} is not a VT-d paging domain")

    def bad(why: str) -> IommuError:
        return IommuError(errno.EINVAL, f"{domain!r} incompatible with {iommu.name}: {why}")

    if domain.kind == "fs":
        if domain.dirty_ops or domain.nested_parent:
            raise bad("first-stage domain with dirty tracking or nesting")
        if not iommu.sm_supported or not h.ecap_flts(iommu.ecap):
            raise bad("no first-stage translation")
        # A coherent domain's table writes are not flushed: an incoherent unit cannot use
        # it (the other way round only costs flushes).
        if not h.ecap_smpwc(iommu.ecap) and domain.iommu_coherency:
            raise bad("page-walk coherency")
        if not h.cap_fl5lp_support(iommu.cap) and domain.gaw > 48:
            raise bad("5-level first stage")
        if not h.cap_fl1gp_support(iommu.cap) and domain.pgsize_bitmap & SZ_1G:
            raise bad("1 GiB first-stage pages")
        if h.cap_rwbf(iommu.cap) and not domain.iotlb_sync_map_needed:
            raise bad("write-buffer flushing")
        # Not in 7.3, which then writes PGSNP where it is reserved (docs: departures).
        if domain.force_snooping and not h.ecap_sc_support(iommu.ecap):
            raise bad("snoop control")
        return
    if domain.dirty_ops and not iommu.ssads_supported:
        raise bad("dirty tracking")
    if domain.nested_parent and not iommu.nested_supported:
        raise bad("nesting")
    if iommu.sm_supported and not h.ecap_slts(iommu.ecap):
        raise bad("no second-stage translation")
    if not iommu.coherent and domain.iommu_coherency:
        raise bad("page-walk coherency")
    if h.cap_mgaw(iommu.cap) < domain.gaw:
        raise bad("address width")
    if not h.cap_sagaw(iommu.cap) >> domain.agaw & 1:
        raise bad("table levels")
    sllps = h.cap_super_page_val(iommu.cap)
    if not sllps & 1 and domain.pgsize_bitmap & SZ_2M:
        raise bad("2 MiB second-stage pages")
    if not sllps & 2 and domain.pgsize_bitmap & SZ_1G:
        raise bad("1 GiB second-stage pages")
    if (h.cap_rwbf(iommu.cap) or h.cap_caching_mode(iommu.cap)) and \
            not domain.iotlb_sync_map_needed:
        raise bad("caching mode")
    if domain.force_snooping and not h.ecap_sc_support(iommu.ecap):
        raise bad("snoop control")


# =======================================================================================
# Root and context tables
# =======================================================================================
def iommu_context_addr(iommu: IntelIommu, bus: int, devfn: int, alloc: bool) -> int | None:
    """Physical address of the context entry of (bus, devfn); tables are allocated on
    demand (the root entry then points at them)."""
    sm = iommu.sm_supported
    tables = iommu.context_tables.get(bus)
    half = 1 if sm and devfn >= 0x80 else 0
    if tables is None or not tables[half]:
        if not alloc:
            return None
        tables = iommu.context_tables.setdefault(bus, [0, 0])
        tables[half] = iommu.alloc.alloc_pages(0)
        root = iommu.root_entry + bus * h.ROOT_ENTRY_SIZE
        iommu.mem.write_u64(root + 8 * half, tables[half] | 1)
    if sm:
        return tables[half] + (devfn & 0x7F) * h.SM_CONTEXT_ENTRY_SIZE
    return tables[0] + devfn * h.CONTEXT_ENTRY_SIZE


def intel_context_flush_no_pasid(iommu: IntelIommu, info: DeviceDomainInfo, did: int) -> None:
    """After clearing a context entry: device-selective context cache (the DID is ignored
    in scalable mode); legacy also DSI IOTLB; then the whole device TLB."""
    dmar.flush_context(iommu, did, info.sid, h.DMA_CCMD_MASK_NOBIT, h.QI_CC_GRAN_DEVICE)
    if not iommu.sm_supported:
        dmar.flush_iotlb(iommu, did, 0, 0, h.QI_IOTLB_GRAN_DSI)
    if info.ats_enabled and iommu.qi is not None:
        dmar.qi_submit_sync(iommu, [h.qi_desc_dev_iotlb(info.sid, info.pfsid, info.ats_qdep, 0,
                                                        h.MAX_AGAW_PFN_WIDTH)])


def domain_context_mapping(domain: DmarDomain | None, info: DeviceDomainInfo) -> None:
    """Legacy mode: the context entry (TT multi-level / device-TLB / pass-through)."""
    iommu = info.iommu
    ctx = iommu_context_addr(iommu, info.bus, info.devfn, alloc=True)
    assert ctx is not None
    if iommu.mem.read_u64(ctx) & 1:
        return
    if domain is None:  # identity
        if not h.ecap_pass_through(iommu.ecap):
            raise IommuError(errno.EINVAL, f"{iommu.name}: no pass-through support")
        did = h.FLPT_DEFAULT_DID
        ce = h.context_legacy(0, h.CONTEXT_TT_PASS_THROUGH, iommu.msagaw, did)
    else:
        did = domain.domain_id_iommu(iommu)
        tt = h.CONTEXT_TT_DEV_IOTLB if info.ats_supported else h.CONTEXT_TT_MULTI_LEVEL
        ce = h.context_legacy(domain.pgtable.root, tt, domain.agaw, did)
    iommu.mem.write_u64(ctx + 8, ce.hi)
    iommu.mem.write_u64(ctx, ce.lo)
    if h.cap_caching_mode(iommu.cap):
        dmar.flush_context(iommu, 0, info.sid, h.DMA_CCMD_MASK_NOBIT, h.QI_CC_GRAN_DEVICE)
        dmar.flush_iotlb(iommu, did, 0, 0, h.QI_IOTLB_GRAN_DSI)
    else:
        dmar.iommu_flush_write_buffer(iommu)


def domain_context_clear_one(info: DeviceDomainInfo) -> None:
    iommu = info.iommu
    ctx = iommu_context_addr(iommu, info.bus, info.devfn, alloc=False)
    if ctx is None:
        return
    lo, hi = iommu.mem.read_qwords(ctx, 2)
    if not lo & 1:
        return
    iommu.mem.write_qwords(ctx, [0, 0])
    intel_context_flush_no_pasid(iommu, info, h.ContextEntry(lo, hi).domain_id)


# =======================================================================================
# Unit probe and removal
# =======================================================================================
def _wait_gsts(iommu: IntelIommu, bit: int, want: bool) -> None:
    for _ in range(1000):
        if bool(iommu.reg.read32(h.DMAR_GSTS_REG) & bit) == want:
            return
    raise IommuError(errno.ETIMEDOUT, f"{iommu.name}: GSTS {bit:#x} did not follow GCMD")


def iommu_set_root_entry(iommu: IntelIommu) -> None:
    addr = iommu.root_entry | (h.DMA_RTADDR_SMT if iommu.sm_supported else 0)
    iommu.reg.write64(h.DMAR_RTADDR_REG, addr)
    iommu.reg.write32(h.DMAR_GCMD_REG, iommu.gcmd | h.DMA_GCMD_SRTP)
    _wait_gsts(iommu, h.DMA_GSTS_RTPS, True)
    if h.cap_esrtps(iommu.cap):
        return
    dmar.flush_context(iommu, 0, 0, 0, h.QI_CC_GRAN_GLOBAL)
    if iommu.sm_supported:
        dmar.qi_flush_pasid_cache(iommu, 0, h.QI_PC_GLOBAL, 0)
    dmar.flush_iotlb(iommu, 0, 0, 0, h.QI_IOTLB_GRAN_GLOBAL)


def intel_iommu_probe_unit(core: IommuCore, ops: IommuOps, res: IommuResources) -> IommuDevice:
    """``alloc_iommu`` + ``init_dmars`` for one unit, then ``iommu_device_register``."""
    iommu = IntelIommu(core, ops, res)
    if iommu.sm_supported and not h.ecap_qis(iommu.ecap):
        raise IommuError(errno.ENODEV, f"{iommu.name}: scalable mode without QI")
    try:
        if h.ecap_qis(iommu.ecap):
            dmar.dmar_enable_qi(iommu)
        iommu.root_entry = iommu.alloc.alloc_pages(0)
        iommu_set_root_entry(iommu)
        if iommu.pasid_supported and h.ecap_prs(iommu.ecap):
            prq.intel_iommu_enable_prq(iommu)
        fault_irq = iommu.irqs.get("dmar-fault")
        if fault_irq is not None:
            fault_irq.request_irq(lambda: dmar.dmar_fault(iommu))
            iommu.reg.write32(h.DMAR_FECTL_REG, 0)  # unmask
        iommu.gcmd |= h.DMA_GCMD_TE
        iommu.reg.write32(h.DMAR_GCMD_REG, iommu.gcmd)
        _wait_gsts(iommu, h.DMA_GSTS_TES, True)
    except IommuError:
        intel_iommu_free_unit(iommu)
        raise
    idev = IommuDevice(iommu.name, ops, iommu)
    idev.max_pasid_bits = iommu.pasid_max_id.bit_length() - 1 if iommu.pasid_supported else 0
    iommu.iommu_dev = idev
    core.iommu_device_register(idev)
    return idev


def intel_iommu_free_unit(iommu: IntelIommu) -> None:
    """Disable translation, stop the queues, free every table."""
    if iommu.gcmd & h.DMA_GCMD_TE:
        iommu.gcmd &= ~h.DMA_GCMD_TE
        iommu.reg.write32(h.DMAR_GCMD_REG, iommu.gcmd)
        _wait_gsts(iommu, h.DMA_GSTS_TES, False)
    fault_irq = iommu.irqs.get("dmar-fault")
    if fault_irq is not None:
        iommu.reg.write32(h.DMAR_FECTL_REG, h.DMA_FECTL_IM)
        fault_irq.free_irq()
    prq.intel_iommu_finish_prq(iommu)
    dmar.dmar_disable_qi(iommu)
    for tables in iommu.context_tables.values():
        for t in tables:
            if t:
                iommu.alloc.free_pages(t, 0)
    iommu.context_tables.clear()
    if iommu.root_entry:
        iommu.alloc.free_pages(iommu.root_entry, 0)
        iommu.root_entry = 0


# =======================================================================================
# Device probe / release
# =======================================================================================
def intel_iommu_probe_device(dev: Device) -> IommuDevice:
    idev: IommuDevice = dev.iommu.iommu_dev
    iommu = idev.priv
    if not isinstance(iommu, IntelIommu) or not dev.is_pci:
        raise IommuError(errno.ENODEV, f"{dev.name}: not a PCI device behind a VT-d unit")
    iommu.core.platform.kzalloc("struct device_domain_info")
    info = DeviceDomainInfo(dev, iommu)
    if iommu.sm_supported:
        pasid.intel_pasid_alloc_table(iommu, info)
        try:
            pasid.intel_pasid_setup_sm_context(iommu, info)
        except IommuError:
            pasid.intel_pasid_free_table(iommu, info)
            raise
    dev.iommu.priv = info
    iommu.devices[info.sid] = info
    return idev


def intel_iommu_probe_finalize(dev: Device) -> None:
    """Enable ATS (and PRI when the unit has page requests)."""
    info = dev_info(dev)
    info.ats_enabled = info.ats_supported
    if info.ats_enabled:
        pci_enable_ats(dev, h.VTD_PAGE_SHIFT)


def _pci_set_pri(info: DeviceDomainInfo, on: bool) -> None:
    info.pri_enabled = on
    if on:
        pci_enable_pri(info.dev)
    else:
        pci_disable_pri(info.dev)


def intel_iommu_release_device(dev: Device) -> None:
    info = dev_info(dev)
    iommu = info.iommu
    if iommu.sm_supported:
        pasid.intel_pasid_teardown_sm_context(iommu, info)
    else:
        domain_context_clear_one(info)
    info.ats_enabled = False
    pci_disable_ats(dev)
    _pci_set_pri(info, False)
    pasid.intel_pasid_free_table(iommu, info)
    iommu.devices.pop(info.sid, None)
    dev.iommu.priv = None


def intel_iommu_capable(dev: Device, cap: int) -> bool:
    info = dev_info(dev)
    if cap in (IommuCap.CACHE_COHERENCY, IommuCap.DEFERRED_FLUSH):
        return True
    if cap == IommuCap.ENFORCE_CACHE_COHERENCY:
        return h.ecap_sc_support(info.iommu.ecap)
    if cap == IommuCap.DIRTY_TRACKING:
        return info.iommu.ssads_supported
    if cap == IommuCap.PCI_ATS_SUPPORTED:
        return info.ats_supported
    return False


def intel_iommu_get_resv_regions(dev: Device) -> list[ResvRegion]:
    """The IOAPIC/MSI window (no RMRRs in the simulated DMAR table)."""
    return [ResvRegion(X86_MSI_RANGE_START, X86_MSI_RANGE_LENGTH, 0, ResvType.MSI)]


def intel_iommu_hw_info(dev: Device, data_type: int) -> tuple[bytes, int]:
    """``iommu_hw_info_vtd``: raw CAP/ECAP; the SPR17 erratum flag on every unit, as
    Linux reports it (nothing in the registers says whether a unit has it)."""
    info = dev_info(dev)
    if data_type not in (IOMMU_HW_INFO_TYPE_DEFAULT, IOMMU_HW_INFO_TYPE_INTEL_VTD):
        raise IommuError(errno.EOPNOTSUPP, f"hw_info type {data_type} is not INTEL_VTD")
    vtd = iommu_hw_info_vtd()
    vtd.flags = IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17
    vtd.cap_reg = info.iommu.cap
    vtd.ecap_reg = info.iommu.ecap
    return ctypes.string_at(ctypes.addressof(vtd), ctypes.sizeof(vtd)), \
        IOMMU_HW_INFO_TYPE_INTEL_VTD


# =======================================================================================
# IOPF enabling
# =======================================================================================
def intel_iommu_enable_iopf(info: DeviceDomainInfo) -> None:
    """PRI is enabled on the device while a domain with a fault handler is attached."""
    if not info.pri_supported:
        raise IommuError(errno.ENODEV, f"{info.dev.name}: no PRI support")
    if not info.iopf_refcount:
        _pci_set_pri(info, True)
    info.iopf_refcount += 1


def intel_iommu_disable_iopf(info: DeviceDomainInfo) -> None:
    if not info.iopf_refcount:
        return
    info.iopf_refcount -= 1
    if not info.iopf_refcount:
        _pci_set_pri(info, False)


def iopf_for_domain_set(domain: IommuDomain | None, info: DeviceDomainInfo) -> None:
    if domain is not None and domain.iopf_handler is not None:
        intel_iommu_enable_iopf(info)


def iopf_for_domain_remove(domain: IommuDomain | None, info: DeviceDomainInfo) -> None:
    if domain is not None and domain.iopf_handler is not None:
        intel_iommu_disable_iopf(info)


def iopf_for_domain_replace(new: IommuDomain | None, old: IommuDomain | None,
                            info: DeviceDomainInfo) -> None:
    iopf_for_domain_set(new, info)
    iopf_for_domain_remove(old, info)


# =======================================================================================
# Attach
# =======================================================================================
def device_block_translation(info: DeviceDomainInfo) -> None:
    """Tear down the RID translation (PASID 0 entry or legacy context entry)."""
    iommu = info.iommu
    if not info.domain_attached:
        return
    if info.domain is not None:
        cache.cache_tag_unassign_domain(info.domain, info, IOMMU_NO_PASID)
    if iommu.sm_supported:
        pasid.intel_pasid_tear_down_entry(iommu, info, IOMMU_NO_PASID, False)
    else:
        domain_context_clear_one(info)
    info.domain_attached = False
    domain = info.domain
    if domain is None:
        return
    if info in domain.devices:
        domain.devices.remove(info)
    domain_detach_iommu(domain, iommu)
    info.domain = None


def _first_level_flags(domain: DmarDomain) -> int:
    # PWSNP unless the domain's tables are flushed for an incoherent walker
    flags = pasid.PASID_FLAG_PWSNP if domain.iommu_coherency else 0
    if domain.pgtable.levels == 5:
        flags |= pasid.PASID_FLAG_FL5LP
    if domain.force_snooping:
        flags |= pasid.PASID_FLAG_PAGE_SNOOP
    return flags


def _install(iommu: IntelIommu, info: DeviceDomainInfo, pasid_: int, pe: pasid.PasidEntry,
             old: IommuDomain | None) -> None:
    """Replace = teardown + setup; the entry was built (validated) before."""
    if pasid.intel_pasid_get_entry(iommu, info, pasid_) is None:
        raise IommuError(errno.ENODEV, f"{info.dev.name}: PASID {pasid_} out of range")
    if old is not None:
        pasid.intel_pasid_tear_down_entry(iommu, info, pasid_, False)
    pasid.intel_pasid_install(iommu, info, pasid_, pe)


def domain_setup_first_level(iommu: IntelIommu, domain: DmarDomain, info: DeviceDomainInfo,
                             pasid_: int, old: IommuDomain | None) -> None:
    pe = pasid.pasid_pte_config_first_level(iommu, domain.pgtable.root,
                                            domain.domain_id_iommu(iommu),
                                            _first_level_flags(domain))
    _install(iommu, info, pasid_, pe, old)


def domain_setup_second_level(iommu: IntelIommu, domain: DmarDomain, info: DeviceDomainInfo,
                              pasid_: int, old: IommuDomain | None) -> None:
    pe = pasid.pasid_pte_config_second_level(iommu, domain, domain.domain_id_iommu(iommu))
    _install(iommu, info, pasid_, pe, old)


def domain_setup_passthrough(iommu: IntelIommu, info: DeviceDomainInfo, pasid_: int,
                             old: IommuDomain | None) -> None:
    pe = pasid.pasid_pte_config_pass_through(iommu, h.FLPT_DEFAULT_DID)
    _install(iommu, info, pasid_, pe, old)


def domain_setup_nested(iommu: IntelIommu, domain: DmarDomain, info: DeviceDomainInfo,
                        pasid_: int, old: IommuDomain | None) -> None:
    s1, s2 = domain.s1_cfg, domain.s2_domain
    assert s1 is not None and s2 is not None
    pe = pasid.pasid_pte_config_nestd(iommu, s1.flags, s1.pgtbl_addr, s1.addr_width, s2,
                                      domain.domain_id_iommu(iommu))
    _install(iommu, info, pasid_, pe, old)


def dmar_domain_attach_device(domain: DmarDomain, info: DeviceDomainInfo) -> None:
    iommu = info.iommu
    domain_attach_iommu(domain, iommu)
    info.domain = domain
    info.domain_attached = True
    domain.devices.append(info)
    try:
        if not iommu.sm_supported:
            domain_context_mapping(domain, info)
        elif domain.kind == "fs":
            domain_setup_first_level(iommu, domain, info, IOMMU_NO_PASID, None)
        else:
            domain_setup_second_level(iommu, domain, info, IOMMU_NO_PASID, None)
    except IommuError:
        info.domain_attached = False
        domain.devices.remove(info)
        info.domain = None
        domain_detach_iommu(domain, iommu)
        raise
    cache.cache_tag_assign_domain(domain, info, IOMMU_NO_PASID)


def intel_iommu_attach_device(domain: DmarDomain, dev: Device, old: IommuDomain | None) -> None:
    """7.3 blocks translation first; here what can refuse the attach (compatibility,
    PRI for a domain with a fault handler) comes first, so a refused attach leaves the
    old translation in place (docs: departures)."""
    info = dev_info(dev)
    paging_domain_compatible(domain, info)
    iopf_for_domain_set(domain, info)
    device_block_translation(info)
    iopf_for_domain_remove(old, info)
    try:
        dmar_domain_attach_device(domain, info)
    except IommuError:
        iopf_for_domain_replace(old, domain, info)
        raise


def identity_domain_attach_dev(dev: Device, old: IommuDomain | None) -> None:
    info = dev_info(dev)
    iommu = info.iommu
    device_block_translation(info)
    # The identity domain has no fault handler; the old domain's IOPF reference goes.
    iopf_for_domain_remove(old, info)
    if iommu.sm_supported:
        pasid.intel_pasid_install(iommu, info, IOMMU_NO_PASID,
                                  pasid.pasid_pte_config_pass_through(iommu, h.FLPT_DEFAULT_DID))
    else:
        domain_context_mapping(None, info)
    info.domain_attached = True


def blocking_domain_attach_dev(dev: Device, old: IommuDomain | None) -> None:
    info = dev_info(dev)
    iopf_for_domain_remove(info.domain, info)
    device_block_translation(info)


# -- PASID attach -----------------------------------------------------------------------
def domain_add_dev_pasid(domain: DmarDomain, info: DeviceDomainInfo, pasid_: int) -> None:
    domain_attach_iommu(domain, info.iommu)
    cache.cache_tag_assign_domain(domain, info, pasid_)
    domain.dev_pasids.append((info, pasid_))


def domain_remove_dev_pasid(domain: IommuDomain | None, info: DeviceDomainInfo, pasid_: int
                            ) -> None:
    if not isinstance(domain, DmarDomain):
        return
    if (info, pasid_) not in domain.dev_pasids:
        return
    domain.dev_pasids.remove((info, pasid_))
    cache.cache_tag_unassign_domain(domain, info, pasid_)
    domain_detach_iommu(domain, info.iommu)


def pasid_supported_check(info: DeviceDomainInfo) -> None:
    """The unit must do PASIDs (the core has checked the device's PASID width)."""
    if not info.iommu.pasid_supported:
        raise IommuError(errno.EOPNOTSUPP, f"{info.iommu.name}: no PASID support")


def intel_iommu_set_dev_pasid(domain: DmarDomain, dev: Device, pasid_: int,
                              old: IommuDomain | None) -> None:
    """A paging domain at ``pasid_``; dirty-tracking domains too (a unit without SSADS
    refuses them in ``paging_domain_compatible``)."""
    info = dev_info(dev)
    iommu = info.iommu
    if not domain.is_paging:
        raise IommuError(errno.EINVAL, f"{domain!r} is not a paging domain")
    pasid_supported_check(info)
    paging_domain_compatible(domain, info)
    domain_add_dev_pasid(domain, info, pasid_)
    try:
        iopf_for_domain_replace(domain, old, info)
    except IommuError:
        domain_remove_dev_pasid(domain, info, pasid_)
        raise
    try:
        if domain.kind == "fs":
            domain_setup_first_level(iommu, domain, info, pasid_, old)
        else:
            domain_setup_second_level(iommu, domain, info, pasid_, old)
    except IommuError:
        iopf_for_domain_replace(old, domain, info)
        domain_remove_dev_pasid(domain, info, pasid_)
        raise
    domain_remove_dev_pasid(old, info, pasid_)


def identity_domain_set_dev_pasid(dev: Device, pasid_: int, old: IommuDomain | None) -> None:
    info = dev_info(dev)
    pasid_supported_check(info)
    identity = dev.iommu.ops.identity_domain
    iopf_for_domain_replace(identity, old, info)
    try:
        domain_setup_passthrough(info.iommu, info, pasid_, old)
    except IommuError:
        iopf_for_domain_replace(old, identity, info)
        raise
    domain_remove_dev_pasid(old, info, pasid_)


def blocking_domain_set_dev_pasid(dev: Device, pasid_: int, old: IommuDomain | None) -> None:
    info = dev_info(dev)
    pasid.intel_pasid_tear_down_entry(info.iommu, info, pasid_, False)
    iopf_for_domain_remove(old, info)
    domain_remove_dev_pasid(old, info, pasid_)


# =======================================================================================
# Map / unmap / flush
# =======================================================================================
def intel_iommu_map_pages(domain: DmarDomain, iova: int, paddr: int, pgsize: int,
                          pgcount: int, prot: int) -> int:
    if pgsize not in (SZ_4K, SZ_2M, SZ_1G) or not domain.pgsize_bitmap & pgsize:
        raise IommuError(errno.EINVAL, f"page size {pgsize:#x} not supported")
    if (iova | paddr) & (pgsize - 1):
        raise IommuError(errno.EINVAL, "iova/paddr not aligned to the page size")
    if not prot & (IOMMU_READ | IOMMU_WRITE):
        raise IommuError(errno.EINVAL, "mapping needs IOMMU_READ or IOMMU_WRITE")
    if domain.nested_parent and not prot & IOMMU_WRITE:
        # Erratum 772415 (SPR17): the unit may set A/D bits in first-stage tables
        # through a read-only second-stage mapping, so a nest parent maps nothing
        # read-only.
        raise IommuError(errno.EINVAL, "read-only mapping is disallowed on the domain which "
                         "serves as the parent in a nested configuration, due to HW errata "
                         "(ERRATA_772415_SPR17)")
    size = pgsize * pgcount
    if iova + size - 1 > domain.geometry.aperture_end:
        raise IommuError(errno.EFAULT, f"iova {iova + size - 1:#x} beyond the domain's "
                         f"{domain.gaw}-bit address width")
    mapped = domain.pgtable.map_pages(iova, paddr, pgsize, pgcount, prot)
    return mapped


def intel_iommu_unmap_pages(domain: DmarDomain, iova: int, pgsize: int, pgcount: int,
                            gather: IotlbGather) -> int:
    return domain.pgtable.unmap_pages(iova, pgsize, pgcount, gather)


def intel_iommu_tlb_sync(domain: DmarDomain, gather: IotlbGather) -> None:
    cache.cache_tag_flush_range(domain, gather.start, gather.end, int(not gather.freelist))
    domain.pgtable.release_freelist(gather)


def intel_iommu_iotlb_sync_map(domain: DmarDomain, iova: int, size: int) -> None:
    if domain.iotlb_sync_map_needed:
        cache.cache_tag_flush_range_np(domain, iova, iova + size - 1)


def domain_support_force_snooping(domain: DmarDomain) -> bool:
    """Every unit a device is attached (at its RID) through has snoop control."""
    return all(h.ecap_sc_support(info.iommu.ecap) for info in domain.devices)


def intel_iommu_enforce_cache_coherency(domain: DmarDomain) -> bool:
    """First stage: PGSNP in the RID PASID entries of the domain's devices (7.3 leaves
    PASID attachments alone). Second stage: SNP in every leaf written from now on
    (leaves already written keep theirs, as with 7.3's FORCE_COHERENCE feature)."""
    if domain.kind == "fs":
        if domain.force_snooping:
            return True
        if not domain_support_force_snooping(domain):
            return False
        domain.force_snooping = True
        for info in domain.devices:
            pasid.intel_pasid_setup_page_snoop_control(info.iommu, info, IOMMU_NO_PASID)
        return True
    if not domain_support_force_snooping(domain):
        return False
    fmt = domain.pgtable.fmt
    assert isinstance(fmt, formats.VtdSsFormat)
    if not fmt.snp:
        domain.pgtable.fmt = formats.vtd_ss(fmt.levels, oas=fmt.oas, snp=True).with_pgsizes(
            fmt.pgsize_bitmap)
    domain.force_snooping = True
    return True


def intel_iommu_domain_free(domain: DmarDomain) -> None:
    if domain.kind == "nested":
        from drivers.intel_vtd.nested import intel_nested_domain_free

        intel_nested_domain_free(domain)
        return
    # iommufd frees nested children before their parent (they hold a reference)
    domain.pgtable.free()


# =======================================================================================
# Dirty tracking (SSADE)
# =======================================================================================
def _attachments(domain: DmarDomain) -> list[tuple[DeviceDomainInfo, int]]:
    return [(i, IOMMU_NO_PASID) for i in domain.devices] + list(domain.dev_pasids)


def intel_iommu_set_dirty_tracking(domain: DmarDomain, enable: bool) -> None:
    """Toggle SSADE for every device of the domain and, for a nest parent, of its nested
    children; a failure puts the previous state back."""
    if domain.dirty_tracking == enable:
        return
    targets = _attachments(domain)
    if domain.nested_parent:
        for child in domain.s1_domains:
            targets += _attachments(child)
    done: list[tuple[DeviceDomainInfo, int]] = []
    try:
        for info, p in targets:
            pasid.intel_pasid_setup_dirty_tracking(info.iommu, info, p, enable)
            done.append((info, p))
    except IommuError:
        for info, p in done:
            pasid.intel_pasid_setup_dirty_tracking(info.iommu, info, p, not enable)
        raise
    domain.dirty_tracking = enable


def intel_iommu_read_and_clear_dirty(domain: DmarDomain, iova: int, size: int, flags: int,
                                     dirty: Any) -> None:
    # 7.3's generic read_and_clear_dirty reads D bits whether or not tracking is on
    # (with SSADE off the unit sets none).
    cleared: list[tuple[int, int]] = []

    def record(leaf_iova: int, length: int) -> None:
        cleared.append((leaf_iova, length))
        dirty.record(leaf_iova, length)

    domain.pgtable.read_and_clear_dirty(iova, size, flags, record)
    if not cleared or flags & 1:  # IOMMU_DIRTY_NO_CLEAR
        return
    # Cached translations still say "dirty": they must go, or later writes go unseen.
    gather = getattr(dirty, "gather", None)
    if isinstance(gather, IotlbGather):
        for a, n in cleared:
            gather.add_range(a, n)
        return
    cache.cache_tag_flush_range(domain, min(a for a, _ in cleared),
                                max(a + n for a, n in cleared) - 1, 1)


# =======================================================================================
# The static domains
# =======================================================================================
def make_static_domains(ops: IommuOps) -> tuple[StaticDomain, StaticDomain]:
    identity = StaticDomain(IOMMU_DOMAIN_IDENTITY, ops.domain_ops(STATIC_OPS), name="identity")
    blocked = StaticDomain(IOMMU_DOMAIN_BLOCKED, ops.domain_ops(STATIC_OPS), name="blocked")
    return identity, blocked

