"""Nested translation (``nested.c``): a user stage-1 (``iommu_hwpt_vtd_s1``) on a
second-stage nest parent, installed as a PGTT=3 PASID entry with the nested domain's own
DID; guest invalidations (``iommu_hwpt_vtd_s1_invalidate``) become PASID-based IOTLB and
device-TLB descriptors through the cache tags.

The stage-1 fields are only checked when a PASID entry is built (attach), not at
allocation (vtd_amd.md §A10).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from drivers.intel_vtd import cache
from drivers.intel_vtd.iommu import (
    NESTED_OPS,
    DmarDomain,
    IntelIommu,
    dev_info,
    device_block_translation,
    domain_add_dev_pasid,
    domain_attach_iommu,
    domain_detach_iommu,
    domain_remove_dev_pasid,
    domain_setup_nested,
    iopf_for_domain_remove,
    iopf_for_domain_replace,
    iopf_for_domain_set,
    paging_domain_compatible,
    pasid_supported_check,
)
from iommu_core.domain import IOMMU_DOMAIN_NESTED, IOMMU_HWPT_ALLOC_PASID, IommuDomain
from iommu_core.errors import IommuError
from iommu_core.group import IOMMU_NO_PASID
from iommufd.uapi import (
    IOMMU_HWPT_DATA_VTD_S1,
    IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
    IOMMU_VTD_INV_FLAGS_LEAF,
    iommu_hwpt_vtd_s1,
    iommu_hwpt_vtd_s1_invalidate,
)

if TYPE_CHECKING:
    from iommu_core.iommufd_driver import UserData, UserDataArray
    from iommu_core.platform.bus import Device

U64_MAX = (1 << 64) - 1


def intel_iommu_domain_alloc_nested(dev: Device, parent: IommuDomain, flags: int,
                                    user_data: UserData) -> DmarDomain:
    info = dev_info(dev)
    iommu: IntelIommu = info.iommu
    if not iommu.nested_supported or flags & ~IOMMU_HWPT_ALLOC_PASID:
        raise IommuError(errno.EOPNOTSUPP, f"{iommu.name}: nested domain not supported "
                         f"(flags {flags:#x})")
    if user_data.type != IOMMU_HWPT_DATA_VTD_S1:
        raise IommuError(errno.EOPNOTSUPP, f"hwpt data type {user_data.type} is not VTD_S1")
    if not isinstance(parent, DmarDomain) or parent.kind != "ss" or not parent.nested_parent:
        raise IommuError(errno.EINVAL, "parent is not a second-stage nest-parent domain")
    vtd = user_data.copy_struct(iommu_hwpt_vtd_s1, IOMMU_HWPT_DATA_VTD_S1, "__reserved")
    iommu.core.platform.kzalloc("struct dmar_domain")
    domain = DmarDomain(iommu.ops, "nested", NESTED_OPS, IOMMU_DOMAIN_NESTED)
    domain.s2_domain = parent
    domain.s1_cfg = vtd
    domain.iommu_coherency = parent.iommu_coherency
    parent.s1_domains.append(domain)
    return domain


def intel_nested_domain_free(domain: DmarDomain) -> None:
    parent = domain.s2_domain
    if parent is not None and domain in parent.s1_domains:
        parent.s1_domains.remove(domain)


def intel_nested_attach_dev(domain: DmarDomain, dev: Device, old: IommuDomain | None) -> None:
    """RID attach: PGTT=3 entry at RID_PASID (PASID 0), errors unwound in reverse. As for
    paging domains, what can refuse comes before blocking; unlike 7.3 the old domain's
    IOPF reference is dropped (docs: departures)."""
    info = dev_info(dev)
    iommu = info.iommu
    assert domain.s2_domain is not None
    paging_domain_compatible(domain.s2_domain, info)
    iopf_for_domain_set(domain, info)
    device_block_translation(info)
    try:
        domain_attach_iommu(domain, iommu)
        cache.cache_tag_assign_domain(domain, info, IOMMU_NO_PASID)
        try:
            domain_setup_nested(iommu, domain, info, IOMMU_NO_PASID, None)
        except IommuError:
            cache.cache_tag_unassign_domain(domain, info, IOMMU_NO_PASID)
            domain_detach_iommu(domain, iommu)
            raise
    except IommuError:
        iopf_for_domain_remove(domain, info)
        raise
    info.domain = domain
    info.domain_attached = True
    domain.devices.append(info)
    iopf_for_domain_remove(old, info)


def intel_nested_set_dev_pasid(domain: DmarDomain, dev: Device, pasid: int,
                               old: IommuDomain | None) -> None:
    info = dev_info(dev)
    iommu = info.iommu
    assert domain.s2_domain is not None
    pasid_supported_check(info)
    paging_domain_compatible(domain.s2_domain, info)
    domain_add_dev_pasid(domain, info, pasid)
    try:
        iopf_for_domain_replace(domain, old, info)
    except IommuError:
        domain_remove_dev_pasid(domain, info, pasid)
        raise
    try:
        domain_setup_nested(iommu, domain, info, pasid, old)
    except IommuError:
        iopf_for_domain_replace(old, domain, info)
        domain_remove_dev_pasid(domain, info, pasid)
        raise
    domain_remove_dev_pasid(old, info, pasid)


def intel_nested_cache_invalidate_user(domain: DmarDomain, array: UserDataArray) -> None:
    """Each entry flushes [addr, addr + npages * 4K) of the guest stage 1; ``entry_num``
    is set to the number handled, also on failure."""
    index = 0
    try:
        if array.type != IOMMU_HWPT_INVALIDATE_DATA_VTD_S1:
            raise IommuError(errno.EINVAL, f"invalidation data type {array.type} is not "
                             "VTD_S1")
        while index < array.entry_num:
            inv = array.copy_entry(iommu_hwpt_vtd_s1_invalidate,
                                   IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, index, "__reserved")
            if inv.flags & ~IOMMU_VTD_INV_FLAGS_LEAF or getattr(inv, "__reserved"):
                raise IommuError(errno.EOPNOTSUPP, f"entry {index}: unknown flags "
                                 f"{inv.flags:#x} or reserved bits")
            if inv.addr & 0xFFF or (inv.npages == U64_MAX and inv.addr):
                raise IommuError(errno.EINVAL, f"entry {index}: addr {inv.addr:#x} not "
                                 "4 KiB aligned, or npages U64_MAX with a non-zero addr")
            # addr + nrpages_to_size(npages) - 1, in u64 (npages 0 wraps like Linux)
            last = (inv.addr + (inv.npages << 12) - 1) & U64_MAX
            cache.cache_tag_flush_range(domain, inv.addr, last,
                                        int(bool(inv.flags & IOMMU_VTD_INV_FLAGS_LEAF)))
            index += 1
    finally:
        array.entry_num = index
