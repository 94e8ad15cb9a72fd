"""The Intel VT-d driver as an iommu-sim plugin: ``intel_iommu_ops`` and the domain ops
of each kind of domain, dispatched to :mod:`iommu` / :mod:`nested` / :mod:`prq`.

One plugin object serves every Machine; all state lives in the objects the hooks receive
(the unit in ``IommuDevice.priv``, the device in ``dev.iommu.priv``, the domain itself).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from drivers.intel_vtd import cache, nested, prq
from drivers.intel_vtd import iommu as vtd
from drivers.intel_vtd.describe import VtdDescribe
from drivers.intel_vtd.hw.intel_iommu import VtdHardware, vtd_hw_create
from iommu_core.errors import IommuError
from iommu_core.hookspec import hookimpl

if TYPE_CHECKING:
    from iommu_core.device import IommuDevice, ResvRegion
    from iommu_core.domain import IommuDomain
    from iommu_core.gather import IotlbGather
    from iommu_core.group import IommuGroup
    from iommu_core.iommu import IommuCore
    from iommu_core.iommufd_driver import UserData, UserDataArray
    from iommu_core.iopf import PageRequest, PageResponse
    from iommu_core.platform.bus import Device
    from iommu_core.platform.platform import IommuResources, Platform
    from iommu_core.plugin import IommuOps

DRIVER_NAME = "intel_vtd"


def _dmar(domain: IommuDomain) -> vtd.DmarDomain:
    if not isinstance(domain, vtd.DmarDomain):
        raise IommuError(errno.EINVAL, f"{domain!r} is not an intel_vtd domain")
    return domain


class IntelVtdPlugin(VtdDescribe):
    """``intel_iommu_ops``."""

    # -- platform -----------------------------------------------------------------------
    @hookimpl
    def iommu_driver_init(self, ops: IommuOps) -> None:
        identity, blocked = vtd.make_static_domains(ops)
        ops.identity_domain = identity
        ops.blocked_domain = blocked
        ops.release_domain = blocked

    @hookimpl
    def iommu_hw_create(self, name: str, options: dict[str, Any], platform: Platform
                        ) -> VtdHardware:
        return vtd_hw_create(name, options, platform)

    @hookimpl
    def iommu_driver_probe(self, core: IommuCore, res: IommuResources) -> IommuDevice:
        return vtd.intel_iommu_probe_unit(core, self._ops_of(core), res)

    def _ops_of(self, core: IommuCore) -> IommuOps:
        mine = [o for o in core.plugins.drivers.values() if o.pm.is_registered(self)]
        if not mine:
            raise IommuError(errno.ENODEV, "intel_vtd is not registered with this core")
        named = [o for o in mine if o.name == DRIVER_NAME]
        return (named or mine)[0]

    @hookimpl
    def iommu_driver_remove(self, iommu: IommuDevice) -> bool:
        unit = iommu.priv
        if isinstance(unit, vtd.IntelIommu):
            for info in list(unit.devices.values()):
                if info.dev.iommu is not None:
                    unit.core.release_device(info.dev)
            vtd.intel_iommu_free_unit(unit)
        return True

    # -- iommu_ops ----------------------------------------------------------------------
    @hookimpl
    def capable(self, dev: Device, cap: int) -> bool:
        return vtd.intel_iommu_capable(dev, cap)

    @hookimpl
    def hw_info(self, dev: Device, data_type: int) -> tuple[bytes, int]:
        return vtd.intel_iommu_hw_info(dev, data_type)

    @hookimpl
    def domain_alloc_paging_flags(self, dev: Device, flags: int, user_data: UserData | None
                                  ) -> IommuDomain:
        return vtd.intel_iommu_domain_alloc_paging_flags(dev, flags, user_data)

    @hookimpl
    def domain_alloc_nested(self, dev: Device, parent: IommuDomain, flags: int,
                            user_data: UserData) -> IommuDomain:
        return nested.intel_iommu_domain_alloc_nested(dev, parent, flags, user_data)

    @hookimpl
    def probe_device(self, dev: Device) -> IommuDevice:
        return vtd.intel_iommu_probe_device(dev)

    @hookimpl
    def probe_finalize(self, dev: Device) -> bool:
        vtd.intel_iommu_probe_finalize(dev)
        return True

    @hookimpl
    def release_device(self, dev: Device) -> bool:
        vtd.intel_iommu_release_device(dev)
        return True

    @hookimpl
    def device_group(self, dev: Device) -> IommuGroup:
        return vtd.dev_info(dev).iommu.core.pci_device_group(dev)

    @hookimpl
    def get_resv_regions(self, dev: Device) -> list[ResvRegion]:
        return vtd.intel_iommu_get_resv_regions(dev)

    @hookimpl
    def page_response(self, dev: Device, evt: PageRequest, msg: PageResponse) -> bool:
        prq.intel_iommu_page_response(dev, evt, msg)
        return True

    # -- domain ops (each domain's ``ops`` lists which of these it has) -----------------
    @hookimpl
    def attach_dev(self, domain: IommuDomain, dev: Device, old: IommuDomain | None) -> bool:
        ops = dev.iommu.ops
        if domain is ops.identity_domain:
            vtd.identity_domain_attach_dev(dev, old)
        elif domain is ops.blocked_domain:
            vtd.blocking_domain_attach_dev(dev, old)
        elif _dmar(domain).kind == "nested":
            nested.intel_nested_attach_dev(_dmar(domain), dev, old)
        else:
            vtd.intel_iommu_attach_device(_dmar(domain), dev, old)
        return True

    @hookimpl
    def set_dev_pasid(self, domain: IommuDomain, dev: Device, pasid: int,
                      old: IommuDomain | None) -> bool:
        ops = dev.iommu.ops
        if domain is ops.identity_domain:
            vtd.identity_domain_set_dev_pasid(dev, pasid, old)
        elif domain is ops.blocked_domain:
            vtd.blocking_domain_set_dev_pasid(dev, pasid, old)
        elif _dmar(domain).kind == "nested":
            nested.intel_nested_set_dev_pasid(_dmar(domain), dev, pasid, old)
        else:
            vtd.intel_iommu_set_dev_pasid(_dmar(domain), dev, pasid, old)
        return True

    @hookimpl
    def map_pages(self, domain: IommuDomain, iova: int, paddr: int, pgsize: int,
                  pgcount: int, prot: int) -> int:
        return vtd.intel_iommu_map_pages(_dmar(domain), iova, paddr, pgsize, pgcount, prot)

    @hookimpl
    def unmap_pages(self, domain: IommuDomain, iova: int, pgsize: int, pgcount: int,
                    gather: IotlbGather) -> int:
        return vtd.intel_iommu_unmap_pages(_dmar(domain), iova, pgsize, pgcount, gather)

    @hookimpl
    def flush_iotlb_all(self, domain: IommuDomain) -> bool:
        cache.cache_tag_flush_all(_dmar(domain))
        return True

    @hookimpl
    def iotlb_sync_map(self, domain: IommuDomain, iova: int, size: int) -> bool:
        vtd.intel_iommu_iotlb_sync_map(_dmar(domain), iova, size)
        return True

    @hookimpl
    def iotlb_sync(self, domain: IommuDomain, gather: IotlbGather) -> bool:
        vtd.intel_iommu_tlb_sync(_dmar(domain), gather)
        return True

    @hookimpl
    def cache_invalidate_user(self, domain: IommuDomain, array: UserDataArray) -> bool:
        nested.intel_nested_cache_invalidate_user(_dmar(domain), array)
        return True

    @hookimpl
    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        return _dmar(domain).pgtable.iova_to_phys(iova)

    @hookimpl
    def enforce_cache_coherency(self, domain: IommuDomain) -> bool:
        return vtd.intel_iommu_enforce_cache_coherency(_dmar(domain))

    @hookimpl
    def free(self, domain: IommuDomain) -> bool:
        vtd.intel_iommu_domain_free(_dmar(domain))
        return True

    @hookimpl
    def set_dirty_tracking(self, domain: IommuDomain, enabled: bool) -> bool:
        vtd.intel_iommu_set_dirty_tracking(_dmar(domain), enabled)
        return True

    @hookimpl
    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int, flags: int,
                             dirty: Any) -> bool:
        vtd.intel_iommu_read_and_clear_dirty(_dmar(domain), iova, size, flags, dirty)
        return True


plugin = IntelVtdPlugin()
