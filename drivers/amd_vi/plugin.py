"""The AMD-Vi driver plugin: the ``iommu_ops`` / ``iommu_domain_ops`` / viommu-ops hook
implementations, each a thin call into the module that holds the kernel's function of
the same name (iommu.c, init.c, ppr.c, nested.c, iommufd.c), plus the hardware model.

The plugin object is shared by every Machine that loads it; per-Machine driver state
(``AmdIommuDriver``: domain IDs, static domains, EFR globals) hangs off the ops facade
the core hands to ``iommu_driver_init``.
"""

from __future__ import annotations

import errno
import weakref
from typing import TYPE_CHECKING, Any

from drivers.amd_vi import iommu as amd
from drivers.amd_vi import iommufd as amd_iommufd
from drivers.amd_vi import nested as amd_nested
from drivers.amd_vi import ppr as amd_ppr
from drivers.amd_vi.describe import AmdDescribe
from drivers.amd_vi.hw import AmdIommuHw, AmdViFeatures
from drivers.amd_vi.init import AmdIommu, amd_iommu_probe, amd_iommu_remove
from drivers.amd_vi.uapi import PROTOTYPE_DATA_TYPES
from iommu_core.hookspec import hookimpl
from iommu_core.platform.bus import Device

if TYPE_CHECKING:
    from iommu_core.device import IommuDevice, ResvRegion
    from iommu_core.domain import IommuDomain
    from iommu_core.gather import IotlbGather
    from iommu_core.group import IommuGroup
    from iommu_core.iommu import IommuCore
    from iommu_core.iommufd_driver import (
        IommufdVdevice,
        IommufdViommu,
        UserData,
        UserDataArray,
    )
    from iommu_core.iopf import PageRequest, PageResponse
    from iommu_core.platform.platform import IommuResources, Platform
    from iommu_core.plugin import IommuOps

DRIVER_NAME = "amd_vi"

class AmdViPlugin(AmdDescribe):
    """``amd_iommu_ops`` as pluggy hooks."""

    def __init__(self) -> None:
        self._drivers: weakref.WeakKeyDictionary[IommuOps, amd.AmdIommuDriver] = (
            weakref.WeakKeyDictionary())

    # -- driver state ---------------------------------------------------------------------
    def driver_for(self, ops: IommuOps) -> amd.AmdIommuDriver:
        return self._drivers[ops]

    def _ops_for(self, core: IommuCore) -> IommuOps:
        for ops in core.plugins.drivers.values():
            if ops.pm.is_registered(self) and ops in self._drivers:
                return ops
        return core.plugins.driver(DRIVER_NAME)

    # -- platform -------------------------------------------------------------------------
    @hookimpl
    def iommufd_uapi_data_types(self) -> list[Any]:
        """The prototype invalidation type (NOT upstream), registered by iommufd."""
        return list(PROTOTYPE_DATA_TYPES)

    @hookimpl
    def iommu_driver_init(self, ops: IommuOps) -> None:
        drv = amd.AmdIommuDriver(ops)
        self._drivers[ops] = drv
        ops.identity_domain = drv.identity_domain
        ops.blocked_domain = drv.blocked_domain
        ops.release_domain = drv.release_domain
        # The guest owns the PASID table (GCR3) of a nested domain: PPRs for any PASID
        # go to the nested domain attached to the RID.
        ops.user_pasid_table = True

    @hookimpl
    def iommu_hw_create(self, name: str, options: dict[str, Any], platform: Platform
                        ) -> AmdIommuHw:
        return AmdIommuHw(name, AmdViFeatures.from_options(dict(options)), platform)

    @hookimpl
    def iommu_driver_probe(self, core: IommuCore, res: IommuResources) -> IommuDevice:
        return amd_iommu_probe(self.driver_for(self._ops_for(core)), core, res)

    @hookimpl
    def iommu_driver_remove(self, iommu: IommuDevice) -> bool:
        if isinstance(iommu.priv, AmdIommu):
            amd_iommu_remove(iommu.priv)
        return True

    # -- iommu_ops ------------------------------------------------------------------------
    @hookimpl
    def capable(self, dev: Device, cap: int) -> bool:
        return amd.amd_iommu_capable(dev, cap)

    @hookimpl
    def hw_info(self, dev: Device, data_type: int) -> tuple[bytes, int]:
        return amd_iommufd.amd_iommufd_hw_info(dev, data_type)

    @hookimpl
    def domain_alloc_paging_flags(self, dev: Device, flags: int, user_data: UserData | None
                                  ) -> IommuDomain:
        return amd.amd_iommu_domain_alloc_paging_flags(dev, flags, user_data)

    @hookimpl
    def probe_device(self, dev: Device) -> IommuDevice:
        from iommu_core.errors import IommuError
        di = dev.iommu
        iommu = di.iommu_dev.priv if di is not None else None
        if not dev.is_pci or not isinstance(iommu, AmdIommu) or iommu.iommu_dev is None:
            raise IommuError(errno.ENODEV, f"{dev.name}: not a PCI device behind an AMD-Vi unit")
        devid = dev.rid
        iommu.platform.kzalloc("struct iommu_dev_data")
        dev_data = amd.IommuDevData(dev=dev, devid=devid, iommu=iommu)
        if iommu.drv.gt_ppr_supported():  # iommu_init_device
            dev_data.flags = amd.pdev_get_caps(dev)
        if iommu.drv.pasid_supported() and amd.pdev_pasid_supported(dev_data):
            # iommu->iommu.max_pasids = 2^(PASMAX + 1) - 1 (init.c, vtd_amd.md B2), not a
            # power of two: dev->iommu->max_pasids = min(PCI max PASIDs, that), so
            # hw_info reports ilog2() = PASMAX for a 20-bit device.
            di.max_pasids = min(di.max_pasids, iommu.max_pasids)
            dev_data.max_pasids = di.max_pasids
        iommu.dev_data[devid] = dev_data
        di.priv = dev_data
        amd.iommu_completion_wait(iommu)
        return iommu.iommu_dev

    @hookimpl
    def release_device(self, dev: Device) -> bool:
        dev_data = amd.dev_iommu_priv_get(dev)
        if dev_data.nested is not None:
            amd_nested.nested_detach(dev_data)
        if dev_data.domain is not None:
            amd.detach_device(dev_data)
        dev_data.iommu.dev_data.pop(dev_data.devid, None)
        return True

    @hookimpl
    def device_group(self, dev: Device) -> IommuGroup:
        return amd.dev_iommu_priv_get(dev).iommu.core.pci_device_group(dev)

    @hookimpl
    def get_resv_regions(self, dev: Device) -> list[ResvRegion]:
        return amd.amd_iommu_get_resv_regions(dev)

    @hookimpl
    def def_domain_type(self, dev: Device) -> int:
        return amd.amd_iommu_def_domain_type(dev)

    @hookimpl
    def page_response(self, dev: Device, evt: PageRequest, msg: PageResponse) -> bool:
        amd_ppr.amd_iommu_page_response(dev, evt, msg)
        return True

    @hookimpl
    def get_viommu_size(self, dev: Device, viommu_type: int) -> int:
        return amd_iommufd.amd_iommufd_get_viommu_size(dev, viommu_type)

    @hookimpl
    def viommu_init(self, viommu: IommufdViommu, parent_domain: IommuDomain,
                    user_data: UserData | None) -> bool:
        amd_iommufd.amd_iommufd_viommu_init(viommu, parent_domain, user_data)
        return True

    # -- iommu_domain_ops -----------------------------------------------------------------
    @hookimpl
    def attach_dev(self, domain: IommuDomain, dev: Device, old: IommuDomain | None) -> bool:
        if isinstance(domain, amd_nested.NestedDomain):
            amd_nested.nested_attach_device(domain, dev)
        elif isinstance(domain, amd.ProtectionDomain):
            amd.amd_iommu_attach_device(domain, dev)
        else:
            amd.blocked_domain_attach_device(dev)
        return True

    @hookimpl
    def set_dev_pasid(self, domain: IommuDomain, dev: Device, pasid: int,
                      old: IommuDomain | None) -> bool:
        if isinstance(domain, amd.ProtectionDomain):
            amd.amd_iommu_set_dev_pasid(domain, dev, pasid, old)
        else:  # the blocked domain: remove the PASID's GCR3 entry
            amd.amd_iommu_remove_dev_pasid(dev, pasid)
        return True

    @hookimpl
    def map_pages(self, domain: IommuDomain, iova: int, paddr: int, pgsize: int,
                  pgcount: int, prot: int) -> int:
        assert isinstance(domain, amd.ProtectionDomain)
        return amd.amd_iommu_map_pages(domain, iova, paddr, pgsize, pgcount, prot)

    @hookimpl
    def unmap_pages(self, domain: IommuDomain, iova: int, pgsize: int, pgcount: int,
                    gather: IotlbGather) -> int:
        assert isinstance(domain, amd.ProtectionDomain)
        return amd.amd_iommu_unmap_pages(domain, iova, pgsize, pgcount, gather)

    @hookimpl
    def iotlb_sync_map(self, domain: IommuDomain, iova: int, size: int) -> bool:
        return True  # no non-present caching (amd_iommu_np_cache is off on bare metal)

    @hookimpl
    def flush_iotlb_all(self, domain: IommuDomain) -> bool:
        assert isinstance(domain, amd.ProtectionDomain)
        amd.amd_iommu_domain_flush_all(domain)
        return True

    @hookimpl
    def iotlb_sync(self, domain: IommuDomain, gather: IotlbGather) -> bool:
        assert isinstance(domain, amd.ProtectionDomain)
        amd.amd_iommu_iotlb_sync(domain, gather)
        return True

    @hookimpl
    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        if isinstance(domain, amd.ProtectionDomain) and domain.iop is not None:
            return domain.iop.iova_to_phys(iova)
        return 0

    @hookimpl
    def enforce_cache_coherency(self, domain: IommuDomain) -> bool:
        return True  # IOMMU_PTE_FC is always set

    @hookimpl
    def free(self, domain: IommuDomain) -> bool:
        if isinstance(domain, amd_nested.NestedDomain):
            amd_nested.nested_domain_free(domain)
        elif isinstance(domain, amd.ProtectionDomain):
            amd.amd_iommu_domain_free(domain)
        return True

    @hookimpl
    def set_dirty_tracking(self, domain: IommuDomain, enabled: bool) -> bool:
        assert isinstance(domain, amd.ProtectionDomain)
        amd.amd_iommu_set_dirty_tracking(domain, enabled)
        return True

    @hookimpl
    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int, flags: int,
                             dirty: Any) -> bool:
        assert isinstance(domain, amd.ProtectionDomain)
        amd.amd_iommu_read_and_clear_dirty(domain, iova, size, flags, dirty)
        return True

    # -- iommufd_viommu_ops ---------------------------------------------------------------
    @hookimpl
    def viommu_destroy(self, viommu: IommufdViommu) -> bool:
        amd_iommufd.amd_iommufd_viommu_destroy(viommu)
        return True

    @hookimpl
    def viommu_alloc_domain_nested(self, viommu: IommufdViommu, flags: int,
                                   user_data: UserData) -> IommuDomain:
        return amd_nested.amd_iommu_alloc_domain_nested(viommu, flags, user_data)

    @hookimpl
    def viommu_cache_invalidate(self, viommu: IommufdViommu, array: UserDataArray) -> bool:
        amd_iommufd.amd_viommu_cache_invalidate(viommu, array)
        return True

    @hookimpl
    def viommu_vdevice_init(self, vdev: IommufdVdevice) -> bool:
        amd_iommufd.amd_iommufd_vdevice_init(vdev)
        return True

    @hookimpl
    def viommu_vdevice_destroy(self, vdev: IommufdVdevice) -> bool:
        amd_iommufd.amd_iommufd_vdevice_destroy(vdev)
        return True


plugin = AmdViPlugin()
