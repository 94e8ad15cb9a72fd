"""Nested translation (drivers/iommu/amd/nested.c): a guest DTE (gDTE) allocated through
an AMD vIOMMU becomes a nested domain; attaching it writes a DTE whose host half comes from
the nest parent (Mode, HostTRP) and whose guest half (GV, GLX, GCR3 root, GIoV, PPR, GPT
level) comes from the gDTE, tagged with the hDomID the vIOMMU maps the gDomID to.

The guest picks gDomIDs to tag its (DomainID, PASID) cache entries; all nested DTEs of one
vIOMMU share the S2 table, so one gDomID maps to one hDomID (refcounted) or two guest
tables with equal PASIDs would alias in the IOTLB.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

import attrs

from drivers.amd_vi.amd_iommu_types import (
    DTE_FLAG_GIOV,
    DTE_FLAG_GV,
    DTE_FLAG_PPR,
    DTE_FLAG_V,
    DTE_GCR3_14_12,
    DTE_GCR3_30_15,
    DTE_GCR3_51_31,
    DTE_GLX,
    DTE_GPT_LEVEL_MASK,
    DTE_HOST_TRP,
    DTE_MODE_MASK,
    dte_gcr3_root,
    field_get,
)
from drivers.amd_vi.iommu import (
    AmdIommuDriver,
    IommuDevData,
    ProtectionDomain,
    amd_iommu_flush_tlb_domid,
    amd_iommu_make_clear_dte,
    amd_iommu_set_dte_v1,
    amd_iommu_update_dte,
    detach_bookkeeping,
    dev_iommu_priv_get,
    pdev_enable_cap_ats,
    read_dte,
)
from iommu_core.domain import IOMMU_DOMAIN_NESTED, IommuDomain
from iommu_core.errors import IommuError
from iommufd.uapi import IOMMU_HWPT_DATA_AMD_GUEST, iommu_hwpt_amd_guest

if TYPE_CHECKING:
    from drivers.amd_vi.init import AmdIommu
    from iommu_core.iommufd_driver import IommufdViommu, UserData
    from iommu_core.platform.bus import Device


@attrs.define(eq=False)
class GuestDomainMappingInfo:
    """``struct guest_domain_mapping_info``: one gDomID's hDomID and its users."""

    users: int
    hdom_id: int


class AmdViommu:
    """``struct amd_iommu_viommu``: the vIOMMU's parent and its gDomID -> hDomID map."""

    def __init__(self, core: IommufdViommu, iommu: AmdIommu, parent: ProtectionDomain
                 ) -> None:
        self.core = core
        self.iommu = iommu
        self.parent = parent
        self.gdomid_array: dict[int, GuestDomainMappingInfo] = {}

    def __repr__(self) -> str:
        return f"<AmdViommu on {self.parent!r} gdomids {sorted(self.gdomid_array)}>"


class NestedDomain(IommuDomain):
    """``struct nested_domain``."""

    def __init__(self, ops: Any, viommu: AmdViommu, gdom_id: int,
                 gdom_info: GuestDomainMappingInfo, gdte: tuple[int, int, int, int]) -> None:
        super().__init__(IOMMU_DOMAIN_NESTED, ops)
        self.viommu = viommu
        self.gdom_id = gdom_id
        self.gdom_info = gdom_info
        self.gdte = gdte
        self.attached: list[IommuDevData] = []

    @property
    def hdom_id(self) -> int:
        return self.gdom_info.hdom_id

    def __repr__(self) -> str:
        return f"<NestedDomain gDomID {self.gdom_id} hDomID {self.hdom_id}>"


def validate_gdte_nested(drv: AmdIommuDriver, gdte: tuple[int, int, int, int]) -> None:
    """The final mainline check (vtd_amd.md B9.4): no host fields, a GCR3 root when V
    and GV, a 4/5-level GPT the host supports, GLX not 3."""
    d0, _d1, d2, _ = gdte
    if field_get(DTE_MODE_MASK, d0) or d0 & DTE_HOST_TRP:
        raise IommuError(errno.EINVAL, "gDTE sets host Mode or Host Page Table Root")
    if d0 & DTE_FLAG_V and d0 & DTE_FLAG_GV and not dte_gcr3_root(gdte):
        raise IommuError(errno.EINVAL, "gDTE has V and GV but no GCR3 table root")
    gpt = field_get(DTE_GPT_LEVEL_MASK, d2)
    if gpt not in (0, 1):
        raise IommuError(errno.EINVAL, f"gDTE guest paging level {gpt} is reserved")
    if field_get(DTE_GLX, d0) == 3:
        raise IommuError(errno.EINVAL, "gDTE GLX=3 is reserved")
    if gpt == 1 and drv.gpt_level < 5:
        raise IommuError(errno.EOPNOTSUPP, "5-level guest tables not supported by the host")


def amd_iommu_alloc_domain_nested(viommu: IommufdViommu, flags: int, user_data: UserData
                                  ) -> NestedDomain:
    avi = viommu.priv
    if not isinstance(avi, AmdViommu):
        raise IommuError(errno.EINVAL, "not an AMD vIOMMU")
    if user_data.type != IOMMU_HWPT_DATA_AMD_GUEST:
        raise IommuError(errno.EOPNOTSUPP, f"data type {user_data.type} is not AMD_GUEST")
    data = user_data.copy_struct(iommu_hwpt_amd_guest, IOMMU_HWPT_DATA_AMD_GUEST, "dte")
    gdte = (int(data.dte[0]), int(data.dte[1]), int(data.dte[2]), int(data.dte[3]))
    drv = avi.iommu.drv
    validate_gdte_nested(drv, gdte)
    gdom_id = gdte[1] & 0xFFFF
    avi.iommu.platform.kzalloc("struct nested_domain")
    info = avi.gdomid_array.get(gdom_id)
    if info is not None and info.users > 0:
        info.users += 1
    else:
        avi.iommu.platform.kzalloc("struct guest_domain_mapping_info")
        hdom = drv.pdom_ids.alloc()  # ENOSPC, nothing inserted
        info = GuestDomainMappingInfo(users=1, hdom_id=hdom)
        avi.gdomid_array[gdom_id] = info
    ops = drv.ops.domain_ops(["attach_dev", "free"])
    ndom = NestedDomain(ops, avi, gdom_id, info, gdte)
    if avi.iommu.tracer.enabled:
        avi.iommu.tracer.event("driver", "alloc_domain_nested",
                               f"gDomID {gdom_id} -> hDomID {info.hdom_id} "
                               f"(users {info.users})")
    return ndom


def set_dte_nested(iommu: AmdIommu, ndom: NestedDomain, dev_data: IommuDevData) -> list[int]:
    """The parent's v1 fields with DomainID = hDomID, GV forced, guest fields copied."""
    parent = ndom.viommu.parent
    assert parent.iop is not None
    new = amd_iommu_make_clear_dte(dev_data)
    amd_iommu_set_dte_v1(dev_data, parent, ndom.hdom_id, parent.iop.root, parent.iop.levels,
                         new)
    g0, g1, g2, _ = ndom.gdte
    new[0] |= DTE_FLAG_GV
    new[0] |= g0 & (DTE_FLAG_PPR | DTE_GLX | DTE_FLAG_GIOV | DTE_GCR3_14_12)
    new[1] |= g1 & (DTE_GCR3_30_15 | DTE_GCR3_51_31)
    new[2] |= g2 & DTE_GPT_LEVEL_MASK
    return new


def nested_attach_device(ndom: NestedDomain, dev: Device) -> None:
    dev_data = dev_iommu_priv_get(dev)
    iommu = dev_data.iommu
    if ndom.viommu.iommu is not iommu:
        raise IommuError(errno.EINVAL, "nested domain belongs to another IOMMU")
    if dev_data.pasid_enabled or dev_data.pasids:
        raise IommuError(errno.EINVAL, "nested attach with PASID enabled")
    if dev_data.nested is ndom:
        return
    pdev_enable_cap_ats(dev_data)  # as for the v1 host table (7.3 keeps the old state)
    new = set_dte_nested(iommu, ndom, dev_data)
    amd_iommu_update_dte(iommu, dev_data, new)
    # Off the old attachment only now: the DTE switched without a blocking window.
    if dev_data.nested is not None:
        nested_detach(dev_data)
    detach_bookkeeping(dev_data)
    dev_data.nested = ndom
    ndom.attached.append(dev_data)


def nested_detach(dev_data: IommuDevData) -> None:
    """Forget the nested attachment (the caller rewrites the DTE)."""
    ndom = dev_data.nested
    if ndom is None:
        return
    if dev_data in ndom.attached:
        ndom.attached.remove(dev_data)
    dev_data.nested = None


def nested_domain_free(ndom: NestedDomain) -> None:
    """The last user of a gDomID frees its hDomID, after flushing what the unit may hold
    under it (7.3 frees it unflushed: the next domain given the ID could walk through
    this parent's tables from cached directory entries; docs: departures)."""
    avi = ndom.viommu
    info = ndom.gdom_info
    info.users -= 1
    if info.users == 0:
        if avi.gdomid_array.get(ndom.gdom_id) is info:
            del avi.gdomid_array[ndom.gdom_id]
        amd_iommu_flush_tlb_domid(avi.iommu, info.hdom_id)
        avi.iommu.drv.pdom_ids.free(info.hdom_id)


def nested_dte_of(dev: Device) -> tuple[int, ...]:
    """The DTE the unit holds for ``dev`` (tests and tools)."""
    dev_data = dev_iommu_priv_get(dev)
    return read_dte(dev_data.iommu, dev_data.devid).data
