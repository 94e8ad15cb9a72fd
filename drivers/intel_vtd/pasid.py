"""PASID tables and PASID entries (``pasid.c`` / ``pasid.h``).

A :class:`PasidEntry` is the 512-bit entry as a frozen value; the ``pasid_set_*`` helpers
return a new entry with one field changed, and ``pasid_pte_config_*`` build the entry of
each translation type (vtd_amd.md §A4.2). ``intel_pasid_setup_*`` install an entry
(non-present -> present, with ``pasid_flush_caches``); ``intel_pasid_tear_down_entry``
removes one with the invalidations of §A4.4. As in newer kernels, replacing an entry is a
teardown followed by a setup; the new entry is built (and validated) first, so a failure
leaves the old one in place.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import attrs

from drivers.intel_vtd import dmar
from drivers.intel_vtd import iommu_h as h
from drivers.intel_vtd.prq import intel_drain_pasid_prq
from iommu_core.errors import IommuError
from iommu_core.group import IOMMU_NO_PASID
from iommufd.uapi import IOMMU_VTD_S1_EAFE, IOMMU_VTD_S1_SRE, IOMMU_VTD_S1_WPE

if TYPE_CHECKING:
    from drivers.intel_vtd.iommu import DeviceDomainInfo, DmarDomain, IntelIommu

PASID_PDE_SHIFT = 6
PASID_PTE_MASK = 0x3F
PASID_MAX = 0x100000
PASID_ENTRY_SIZE = 64

PASID_ENTRY_PGTT_FL_ONLY = 1
PASID_ENTRY_PGTT_SL_ONLY = 2
PASID_ENTRY_PGTT_NESTED = 3
PASID_ENTRY_PGTT_PT = 4

PASID_FLAG_FL5LP = 1 << 1
PASID_FLAG_PAGE_SNOOP = 1 << 2
PASID_FLAG_PWSNP = 1 << 3

ADDR_WIDTH_4LEVEL = 48
ADDR_WIDTH_5LEVEL = 57


# ---------------------------------------------------------------------------------------
# The entry and its field setters
# ---------------------------------------------------------------------------------------
@attrs.frozen
class PasidEntry:
    """``struct pasid_entry``: eight little-endian 64-bit words."""

    val: tuple[int, int, int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0, 0, 0)

    def set_bits(self, word: int, mask: int, bits: int) -> PasidEntry:
        """``pasid_set_bits``: replace the ``mask`` bits of ``val[word]``."""
        v = list(self.val)
        v[word] = (v[word] & ~mask) | (bits & mask)
        return PasidEntry((v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]))

    @property
    def present(self) -> bool:
        return bool(self.val[0] & 1)

    @property
    def fault_disabled(self) -> bool:
        return bool(self.val[0] >> 1 & 1)

    @property
    def pgtt(self) -> int:
        return (self.val[0] >> 6) & 7

    @property
    def domain_id(self) -> int:
        return self.val[1] & 0xFFFF

    @property
    def ssade(self) -> bool:
        return bool(self.val[0] >> 9 & 1)


def pasid_set_present(pe: PasidEntry) -> PasidEntry:
    return pe.set_bits(0, 1, 1)


def pasid_clear_present(pe: PasidEntry) -> PasidEntry:
    return pe.set_bits(0, 1, 0)


def pasid_set_fault_enable(pe: PasidEntry) -> PasidEntry:
    """FPD = 0: faults are recorded."""
    return pe.set_bits(0, 1 << 1, 0)


def pasid_set_address_width(pe: PasidEntry, aw: int) -> PasidEntry:
    return pe.set_bits(0, h.genmask(4, 2), aw << 2)


def pasid_set_translation_type(pe: PasidEntry, pgtt: int) -> PasidEntry:
    return pe.set_bits(0, h.genmask(8, 6), pgtt << 6)


def pasid_set_ssade(pe: PasidEntry) -> PasidEntry:
    return pe.set_bits(0, 1 << 9, 1 << 9)


def pasid_clear_ssade(pe: PasidEntry) -> PasidEntry:
    return pe.set_bits(0, 1 << 9, 0)


def pasid_set_slptr(pe: PasidEntry, value: int) -> PasidEntry:
    return pe.set_bits(0, h.VTD_PAGE_MASK, value)


def pasid_set_domain_id(pe: PasidEntry, did: int) -> PasidEntry:
    return pe.set_bits(1, 0xFFFF, did)


def pasid_set_page_snoop(pe: PasidEntry, value: bool) -> PasidEntry:
    """PWSNP (page-walk snoop, bit 87)."""
    return pe.set_bits(1, 1 << 23, int(value) << 23)


def pasid_set_pgsnp(pe: PasidEntry) -> PasidEntry:
    """PGSNP (page snoop, bit 88)."""
    return pe.set_bits(1, 1 << 24, 1 << 24)


def pasid_set_sre(pe: PasidEntry) -> PasidEntry:
    return pe.set_bits(2, 1, 1)


def pasid_set_flpm(pe: PasidEntry, value: int) -> PasidEntry:
    return pe.set_bits(2, h.genmask(3, 2), value << 2)


def pasid_set_wpe(pe: PasidEntry) -> PasidEntry:
    return pe.set_bits(2, 1 << 4, 1 << 4)


def pasid_set_eafe(pe: PasidEntry) -> PasidEntry:
    return pe.set_bits(2, 1 << 7, 1 << 7)


def pasid_set_flptr(pe: PasidEntry, value: int) -> PasidEntry:
    return pe.set_bits(2, h.VTD_PAGE_MASK, value)


# ---------------------------------------------------------------------------------------
# Entry contents per translation type (pasid_pte_config_*)
# ---------------------------------------------------------------------------------------
def pasid_pte_config_first_level(iommu: IntelIommu, fsptptr: int, did: int, flags: int
                                 ) -> PasidEntry:
    if not h.ecap_flts(iommu.ecap):
        raise IommuError(errno.EINVAL, f"{iommu.name}: no first-stage translation support")
    if flags & PASID_FLAG_FL5LP and not h.cap_fl5lp_support(iommu.cap):
        raise IommuError(errno.EINVAL, f"{iommu.name}: no 5-level first-stage paging")
    pe = pasid_set_flptr(PasidEntry(), fsptptr)
    if flags & PASID_FLAG_FL5LP:
        pe = pasid_set_flpm(pe, 1)
    if flags & PASID_FLAG_PAGE_SNOOP:
        pe = pasid_set_pgsnp(pe)
    pe = pasid_set_domain_id(pe, did)
    pe = pasid_set_address_width(pe, iommu.agaw)
    pe = pasid_set_page_snoop(pe, bool(flags & PASID_FLAG_PWSNP))
    pe = pasid_set_translation_type(pe, PASID_ENTRY_PGTT_FL_ONLY)
    return pasid_set_present(pe)


def pasid_pte_config_second_level(iommu: IntelIommu, domain: DmarDomain, did: int
                                  ) -> PasidEntry:
    if not h.ecap_slts(iommu.ecap):
        raise IommuError(errno.EINVAL, f"{iommu.name}: no second-stage translation support")
    pe = pasid_set_domain_id(PasidEntry(), did)
    pe = pasid_set_slptr(pe, domain.pgtable.root)
    pe = pasid_set_address_width(pe, domain.agaw)
    pe = pasid_set_translation_type(pe, PASID_ENTRY_PGTT_SL_ONLY)
    pe = pasid_set_fault_enable(pe)
    pe = pasid_set_page_snoop(pe, domain.iommu_coherency)
    if domain.dirty_tracking:
        pe = pasid_set_ssade(pe)
    return pasid_set_present(pe)


def pasid_pte_config_pass_through(iommu: IntelIommu, did: int) -> PasidEntry:
    pe = pasid_set_domain_id(PasidEntry(), did)
    pe = pasid_set_address_width(pe, iommu.agaw)
    pe = pasid_set_translation_type(pe, PASID_ENTRY_PGTT_PT)
    pe = pasid_set_fault_enable(pe)
    pe = pasid_set_page_snoop(pe, h.ecap_smpwc(iommu.ecap))
    return pasid_set_present(pe)


def pasid_pte_config_nestd(iommu: IntelIommu, s1_flags: int, pgtbl_addr: int,
                           addr_width: int, s2_domain: DmarDomain, did: int) -> PasidEntry:
    """The nested entry from the user's ``iommu_hwpt_vtd_s1`` (checked here, at attach)."""
    if addr_width == ADDR_WIDTH_5LEVEL:
        if not h.cap_fl5lp_support(iommu.cap):
            raise IommuError(errno.EINVAL, f"{iommu.name}: no 5-level first-stage paging")
    elif addr_width != ADDR_WIDTH_4LEVEL:
        raise IommuError(errno.EINVAL, f"stage-1 addr_width {addr_width} is not 48 or 57")
    if s1_flags & IOMMU_VTD_S1_SRE and not h.ecap_srs(iommu.ecap):
        raise IommuError(errno.EINVAL, f"{iommu.name}: no supervisor request support")
    if s1_flags & IOMMU_VTD_S1_EAFE and not h.ecap_eafs(iommu.ecap):
        raise IommuError(errno.EINVAL, f"{iommu.name}: no extended access flag support")
    pe = PasidEntry()
    if addr_width == ADDR_WIDTH_5LEVEL:
        pe = pasid_set_flpm(pe, 1)
    pe = pasid_set_flptr(pe, pgtbl_addr)
    if s1_flags & IOMMU_VTD_S1_SRE:
        pe = pasid_set_sre(pe)
        if s1_flags & IOMMU_VTD_S1_WPE:  # WPE without SRE is ignored
            pe = pasid_set_wpe(pe)
    if s1_flags & IOMMU_VTD_S1_EAFE:
        pe = pasid_set_eafe(pe)
    if s2_domain.force_snooping:
        pe = pasid_set_pgsnp(pe)
    pe = pasid_set_slptr(pe, s2_domain.pgtable.root)
    pe = pasid_set_fault_enable(pe)
    pe = pasid_set_domain_id(pe, did)
    pe = pasid_set_address_width(pe, s2_domain.agaw)
    pe = pasid_set_page_snoop(pe, s2_domain.iommu_coherency)
    if s2_domain.dirty_tracking:
        pe = pasid_set_ssade(pe)
    pe = pasid_set_translation_type(pe, PASID_ENTRY_PGTT_NESTED)
    return pasid_set_present(pe)


# ---------------------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------------------
@attrs.define(eq=False)
class PasidTable:
    """``struct pasid_table``: the PASID directory of one device."""

    table: int  # directory physical address
    order: int
    max_pasid: int
    leaves: list[int] = attrs.field(factory=list)


def intel_pasid_alloc_table(iommu: IntelIommu, info: DeviceDomainInfo) -> None:
    """A directory sized for the device's PASID width (1 page when it has none)."""
    dev = info.dev
    max_pasid = min(dev.max_pasids, iommu.pasid_max_id) if info.pasid_supported else 0
    size = max_pasid >> (PASID_PDE_SHIFT - 3)
    order = max(0, (size - 1).bit_length() - 12) if size else 0
    iommu.core.platform.kzalloc("struct pasid_table")
    table = iommu.alloc.alloc_pages(order)
    info.pasid_table = PasidTable(table=table, order=order, max_pasid=1 << (order + 12 + 3))


def intel_pasid_free_table(iommu: IntelIommu, info: DeviceDomainInfo) -> None:
    pt = info.pasid_table
    if pt is None:
        return
    for leaf in pt.leaves:
        iommu.alloc.free_pages(leaf, 0)
    iommu.alloc.free_pages(pt.table, pt.order)
    info.pasid_table = None


def intel_pasid_get_entry(iommu: IntelIommu, info: DeviceDomainInfo, pasid: int,
                          alloc: bool = True) -> int | None:
    """Physical address of the PASID entry; the leaf table is allocated on first use."""
    pt = info.pasid_table
    if pt is None or pasid < 0 or pasid >= pt.max_pasid:
        return None
    pde_addr = pt.table + (pasid >> PASID_PDE_SHIFT) * 8
    pde = iommu.mem.read_u64(pde_addr)
    if not pde & 1:
        if not alloc:
            return None
        leaf = iommu.alloc.alloc_pages(0)
        pt.leaves.append(leaf)
        iommu.mem.write_u64(pde_addr, leaf | 1)
        pde = leaf | 1
    return (pde & h.VTD_PAGE_MASK) + (pasid & PASID_PTE_MASK) * PASID_ENTRY_SIZE


def read_pasid_entry(iommu: IntelIommu, pte: int) -> PasidEntry:
    v = iommu.mem.read_qwords(pte, 8)
    return PasidEntry((v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]))


def write_pasid_entry(iommu: IntelIommu, pte: int, pe: PasidEntry) -> None:
    """Words 1..7 first, word 0 (with P) last: the hardware never sees half an entry."""
    iommu.mem.write_qwords(pte + 8, list(pe.val[1:]))
    iommu.mem.write_u64(pte, pe.val[0])
    if iommu.tracer.enabled:
        iommu.tracer.event("driver", "pasid entry", f"{iommu.name} @{pte:#x} "
                           + " ".join(f"{w:#x}" for w in pe.val[:3]))


# ---------------------------------------------------------------------------------------
# Flushes around PASID-entry changes (vtd_amd.md §A4.4)
# ---------------------------------------------------------------------------------------
def pasid_cache_invalidation_with_pasid(iommu: IntelIommu, did: int, pasid: int) -> None:
    dmar.qi_flush_pasid_cache(iommu, did, h.QI_PC_PASID_SEL, pasid)


def devtlb_invalidation_with_pasid(iommu: IntelIommu, info: DeviceDomainInfo, pasid: int
                                   ) -> None:
    """The whole device TLB of the PASID (RID_PASID: the device TLB without PASID)."""
    if not info.ats_enabled:
        return
    if pasid == IOMMU_NO_PASID:
        dmar.qi_submit_sync(iommu, [h.qi_desc_dev_iotlb(info.sid, info.pfsid, info.ats_qdep,
                                                        0, 64 - h.VTD_PAGE_SHIFT)])
    else:
        dmar.qi_submit_sync(iommu, [h.qi_desc_dev_iotlb_pasid(
            info.sid, info.pfsid, pasid, info.ats_qdep, 0, 64 - h.VTD_PAGE_SHIFT)])


def pasid_flush_caches(iommu: IntelIommu, pasid: int, did: int) -> None:
    """After non-present -> present: only caching mode caches non-present entries."""
    if h.cap_caching_mode(iommu.cap):
        pasid_cache_invalidation_with_pasid(iommu, did, pasid)
        dmar.qi_flush_piotlb(iommu, did, pasid, 0, -1, 0)
    else:
        dmar.iommu_flush_write_buffer(iommu)


def intel_pasid_flush_present(iommu: IntelIommu, info: DeviceDomainInfo, pasid: int,
                              did: int) -> None:
    """After changing a present entry in place (VT-d table 28): PASID cache, PASID
    IOTLB, device TLB."""
    pasid_cache_invalidation_with_pasid(iommu, did, pasid)
    dmar.qi_flush_piotlb(iommu, did, pasid, 0, -1, 0)
    devtlb_invalidation_with_pasid(iommu, info, pasid)


# ---------------------------------------------------------------------------------------
# Setup and teardown
# ---------------------------------------------------------------------------------------
def _entry_or_enodev(iommu: IntelIommu, info: DeviceDomainInfo, pasid: int) -> int:
    pte = intel_pasid_get_entry(iommu, info, pasid)
    if pte is None:
        raise IommuError(errno.ENODEV, f"{info.dev.name}: no PASID entry for {pasid}")
    return pte


def intel_pasid_install(iommu: IntelIommu, info: DeviceDomainInfo, pasid: int,
                        pe: PasidEntry) -> None:
    """The common tail of ``intel_pasid_setup_*``: EBUSY if present, write, flush."""
    pte = _entry_or_enodev(iommu, info, pasid)
    if read_pasid_entry(iommu, pte).present:
        raise IommuError(errno.EBUSY, f"{info.dev.name}: PASID {pasid} entry is present")
    write_pasid_entry(iommu, pte, pe)
    pasid_flush_caches(iommu, pasid, pe.domain_id)


def intel_pasid_tear_down_entry(iommu: IntelIommu, info: DeviceDomainInfo, pasid: int,
                                fault_ignore: bool) -> None:
    """Clear P, flush (PASID cache; P-IOTLB for FS/PT, else DSI IOTLB; device TLB),
    clear the entry, drain page requests."""
    pte = intel_pasid_get_entry(iommu, info, pasid, alloc=False)
    if pte is None:
        return
    pe = read_pasid_entry(iommu, pte)
    if not pe.present:
        if pe.fault_disabled:
            write_pasid_entry(iommu, pte, PasidEntry())
            intel_drain_pasid_prq(iommu, info, pasid)
        return
    did, pgtt = pe.domain_id, pe.pgtt
    write_pasid_entry(iommu, pte, pasid_clear_present(pe))
    pasid_cache_invalidation_with_pasid(iommu, did, pasid)
    if pgtt in (PASID_ENTRY_PGTT_PT, PASID_ENTRY_PGTT_FL_ONLY):
        dmar.qi_flush_piotlb(iommu, did, pasid, 0, -1, 0)
    else:
        dmar.flush_iotlb(iommu, did, 0, 0, h.QI_IOTLB_GRAN_DSI)
    devtlb_invalidation_with_pasid(iommu, info, pasid)
    # fault_ignore leaves FPD=1 so stray DMA is not reported (pasid_clear_entry_with_fpd)
    write_pasid_entry(iommu, pte, PasidEntry((2, 0, 0, 0, 0, 0, 0, 0)) if fault_ignore
                      else PasidEntry())
    if not fault_ignore:
        intel_drain_pasid_prq(iommu, info, pasid)


def intel_pasid_setup_dirty_tracking(iommu: IntelIommu, info: DeviceDomainInfo, pasid: int,
                                     enabled: bool) -> None:
    """Toggle SSADE in a live entry: PASID cache, DSI IOTLB, device TLB."""
    pte = intel_pasid_get_entry(iommu, info, pasid, alloc=False)
    if pte is None:
        raise IommuError(errno.ENODEV, f"{info.dev.name}: no PASID entry for {pasid}")
    pe = read_pasid_entry(iommu, pte)
    if pe.pgtt not in (PASID_ENTRY_PGTT_SL_ONLY, PASID_ENTRY_PGTT_NESTED):
        raise IommuError(errno.EOPNOTSUPP, "dirty tracking needs a second-stage entry")
    if pe.ssade == enabled:
        return
    write_pasid_entry(iommu, pte, pasid_set_ssade(pe) if enabled else pasid_clear_ssade(pe))
    did = pe.domain_id
    pasid_cache_invalidation_with_pasid(iommu, did, pasid)
    dmar.flush_iotlb(iommu, did, 0, 0, h.QI_IOTLB_GRAN_DSI)
    devtlb_invalidation_with_pasid(iommu, info, pasid)


def intel_pasid_setup_page_snoop_control(iommu: IntelIommu, info: DeviceDomainInfo,
                                         pasid: int) -> None:
    pte = intel_pasid_get_entry(iommu, info, pasid, alloc=False)
    if pte is None:
        return
    pe = read_pasid_entry(iommu, pte)
    if not pe.present:
        return
    write_pasid_entry(iommu, pte, pasid_set_pgsnp(pe))
    intel_pasid_flush_present(iommu, info, pasid, pe.domain_id)


# ---------------------------------------------------------------------------------------
# Scalable-mode context entries (written at probe, cleared at release)
# ---------------------------------------------------------------------------------------
def context_get_sm_pds(table: PasidTable) -> int:
    max_pde = table.max_pasid >> PASID_PDE_SHIFT
    pds = (max_pde & -max_pde).bit_length() - 1 if max_pde else 0
    return max(0, pds - 7)


def intel_pasid_setup_sm_context(iommu: IntelIommu, info: DeviceDomainInfo) -> None:
    from drivers.intel_vtd.iommu import iommu_context_addr

    ctx = iommu_context_addr(iommu, info.bus, info.devfn, alloc=True)
    assert ctx is not None and info.pasid_table is not None
    if iommu.mem.read_u64(ctx) & 1:
        return
    ce = h.context_sm(info.pasid_table.table, context_get_sm_pds(info.pasid_table),
                      dte=info.ats_supported, paside=info.pasid_supported,
                      pre=info.pri_supported, rid_pasid=IOMMU_NO_PASID)
    iommu.mem.write_qwords(ctx + 8, [ce.hi, 0, 0])
    iommu.mem.write_u64(ctx, ce.lo)
    if h.cap_caching_mode(iommu.cap):
        dmar.flush_context(iommu, 0, info.sid, 0, h.QI_CC_GRAN_DEVICE)
        dmar.flush_iotlb(iommu, 0, 0, 0, h.QI_IOTLB_GRAN_DSI)


def intel_pasid_teardown_sm_context(iommu: IntelIommu, info: DeviceDomainInfo) -> None:
    from drivers.intel_vtd.iommu import intel_context_flush_no_pasid, iommu_context_addr

    ctx = iommu_context_addr(iommu, info.bus, info.devfn, alloc=False)
    if ctx is None or not iommu.mem.read_u64(ctx) & 1:
        return
    iommu.mem.write_qwords(ctx, [0, 0, 0, 0])
    intel_context_flush_no_pasid(iommu, info, 0)
