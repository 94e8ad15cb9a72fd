"""Cache tags and the flushes built from them (``cache.c``).

A domain keeps one tag per (unit, DID, PASID[, device]) it may be cached under; a nested
domain also puts NESTING tags on its parent, carrying the nested DID, so a change of the
second stage reaches the combined translations. ``cache_tag_flush_range`` turns the
tags into descriptors (vtd_amd.md §A7): PASID-based IOTLB for first-stage and nested
domains, IOTLB (PSI, or DSI fallback) for second-stage ones, device-TLB for ATS devices,
and a whole-device flush for NESTING_DEVTLB.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import attrs

from drivers.intel_vtd import dmar
from drivers.intel_vtd import iommu_h as h
from iommu_core.gather import ULONG_MAX
from iommu_core.group import IOMMU_NO_PASID

if TYPE_CHECKING:
    from drivers.intel_vtd.iommu import DeviceDomainInfo, DmarDomain, IntelIommu


class CacheTagType(enum.IntEnum):
    IOTLB = 0
    DEVTLB = 1
    NESTING_IOTLB = 2
    NESTING_DEVTLB = 3


@attrs.define(eq=False)
class CacheTag:
    type: CacheTagType
    iommu: IntelIommu
    domain_id: int
    pasid: int
    info: DeviceDomainInfo | None  # device (DEVTLB tags only)
    users: int = 1

    def same(self, type: CacheTagType, iommu: IntelIommu, did: int, pasid: int,
             info: DeviceDomainInfo | None) -> bool:
        return (self.type == type and self.iommu is iommu and self.domain_id == did
                and self.pasid == pasid and self.info is info)


def _tag_assign(domain: DmarDomain, did: int, info: DeviceDomainInfo, pasid: int,
                type: CacheTagType) -> None:
    """Reuse a matching tag, else add one after the last tag of the same unit (at the
    head if none), so the flush of one unit's tags is one batch."""
    dev_info = info if type in (CacheTagType.DEVTLB, CacheTagType.NESTING_DEVTLB) else None
    at = 0
    for i, tag in enumerate(domain.cache_tags):
        if tag.same(type, info.iommu, did, pasid, dev_info):
            tag.users += 1
            return
        if tag.iommu is info.iommu:
            at = i + 1
    domain.cache_tags.insert(at, CacheTag(type, info.iommu, did, pasid, dev_info))


def _tag_unassign(domain: DmarDomain, did: int, info: DeviceDomainInfo, pasid: int,
                  type: CacheTagType) -> None:
    dev_info = info if type in (CacheTagType.DEVTLB, CacheTagType.NESTING_DEVTLB) else None
    for tag in domain.cache_tags:
        if tag.same(type, info.iommu, did, pasid, dev_info):
            tag.users -= 1
            if not tag.users:
                domain.cache_tags.remove(tag)
            return


def cache_tag_assign_domain(domain: DmarDomain, info: DeviceDomainInfo, pasid: int) -> None:
    did = domain.domain_id_iommu(info.iommu)
    _tag_assign(domain, did, info, pasid, CacheTagType.IOTLB)
    if info.ats_enabled:
        _tag_assign(domain, did, info, pasid, CacheTagType.DEVTLB)
    parent = domain.s2_domain
    if parent is not None:
        _tag_assign(parent, did, info, pasid, CacheTagType.NESTING_IOTLB)
        if info.ats_enabled:
            _tag_assign(parent, did, info, pasid, CacheTagType.NESTING_DEVTLB)


def cache_tag_unassign_domain(domain: DmarDomain, info: DeviceDomainInfo, pasid: int) -> None:
    did = domain.domain_id_iommu(info.iommu)
    _tag_unassign(domain, did, info, pasid, CacheTagType.IOTLB)
    _tag_unassign(domain, did, info, pasid, CacheTagType.DEVTLB)
    parent = domain.s2_domain
    if parent is not None:
        _tag_unassign(parent, did, info, pasid, CacheTagType.NESTING_IOTLB)
        _tag_unassign(parent, did, info, pasid, CacheTagType.NESTING_DEVTLB)


def calculate_psi_aligned_address(start: int, last: int) -> tuple[int, int]:
    """(address, size order): the naturally aligned block spanning [start, last], as the
    PSI address mask requires; order ``MAX_AGAW_PFN_WIDTH`` (address 0) means all."""
    start &= h.VTD_PAGE_MASK
    sz_lg2 = (start ^ last).bit_length()
    if sz_lg2 <= 12:
        return start, 0
    if sz_lg2 >= 64:
        return 0, h.MAX_AGAW_PFN_WIDTH
    return start & ~((1 << sz_lg2) - 1), sz_lg2 - 12


def _flush_iotlb(domain: DmarDomain, tag: CacheTag, addr: int, mask: int, ih: int,
                 batch: dmar.QiBatch) -> None:
    iommu = tag.iommu
    if domain.use_piotlb:
        if mask >= h.MAX_AGAW_PFN_WIDTH:
            desc = h.qi_desc_piotlb_all(tag.domain_id, tag.pasid)
        else:
            desc = h.qi_desc_piotlb(tag.domain_id, tag.pasid, addr, mask, ih)
        dmar.qi_batch_add(iommu, desc, batch)
        return
    gran = h.QI_IOTLB_GRAN_PSI
    # DSI when PSI is missing or the range is too big (everything is mask 52)
    if not h.cap_pgsel_inv(iommu.cap) or mask > h.cap_max_amask_val(iommu.cap):
        addr, mask, ih, gran = 0, 0, 0, h.QI_IOTLB_GRAN_DSI
    if iommu.qi is not None:
        dmar.qi_batch_add(iommu, h.qi_desc_iotlb(iommu.cap, tag.domain_id, addr | ih, mask,
                                                 gran), batch)
    else:
        dmar.flush_iotlb(iommu, tag.domain_id, addr | ih, mask, gran)


def _flush_devtlb_psi(tag: CacheTag, addr: int, mask: int, batch: dmar.QiBatch) -> None:
    info = tag.info
    assert info is not None
    # Software is recommended not to invalidate device TLBs while translation is off.
    if not tag.iommu.gcmd & h.DMA_GCMD_TE:
        return
    if tag.pasid == IOMMU_NO_PASID:
        desc = h.qi_desc_dev_iotlb(info.sid, info.pfsid, info.ats_qdep, addr, mask)
    else:
        desc = h.qi_desc_dev_iotlb_pasid(info.sid, info.pfsid, tag.pasid, info.ats_qdep, addr,
                                         mask)
    dmar.qi_batch_add(tag.iommu, desc, batch)


def cache_tag_flush_range(domain: DmarDomain, start: int, end: int, ih: int) -> None:
    """Invalidate [start, end] of ``domain`` everywhere it may be cached."""
    addr, mask = calculate_psi_aligned_address(start, end)
    batch = dmar.QiBatch()
    iommu: IntelIommu | None = None
    for tag in list(domain.cache_tags):
        if iommu is not None and iommu is not tag.iommu:
            dmar.qi_batch_flush_descs(iommu, batch)
        iommu = tag.iommu
        if tag.type in (CacheTagType.IOTLB, CacheTagType.NESTING_IOTLB):
            _flush_iotlb(domain, tag, addr, mask, ih, batch)
        elif tag.type == CacheTagType.NESTING_DEVTLB:
            # The device caches results of the nested translation: which of them
            # depend on this second-stage range is unknown, so flush it all.
            _flush_devtlb_psi(tag, 0, h.MAX_AGAW_PFN_WIDTH, batch)
        else:
            _flush_devtlb_psi(tag, addr, mask, batch)
    dmar.qi_batch_flush_descs(iommu, batch)


def cache_tag_flush_all(domain: DmarDomain) -> None:
    cache_tag_flush_range(domain, 0, ULONG_MAX, 0)


def cache_tag_flush_range_np(domain: DmarDomain, start: int, end: int) -> None:
    """After mapping (``iotlb_sync_map``): caching mode caches non-present second-stage
    entries (PSI them); otherwise only a write-buffer flush."""
    addr, mask = calculate_psi_aligned_address(start, end)
    batch = dmar.QiBatch()
    iommu: IntelIommu | None = None
    for tag in list(domain.cache_tags):
        if iommu is not None and iommu is not tag.iommu:
            dmar.qi_batch_flush_descs(iommu, batch)
        iommu = tag.iommu
        if not h.cap_caching_mode(iommu.cap) or domain.kind == "fs":
            dmar.iommu_flush_write_buffer(iommu)
            continue
        if tag.type in (CacheTagType.IOTLB, CacheTagType.NESTING_IOTLB):
            _flush_iotlb(domain, tag, addr, mask, 0, batch)
    dmar.qi_batch_flush_descs(iommu, batch)
