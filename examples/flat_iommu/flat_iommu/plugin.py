"""The FlatIOMMU driver plugin: ``flat_iommu_ops`` as pluggy hook implementations.

iommu-sim finds it through the entry point ``flat_iommu`` of the group
``iommu_sim.drivers`` (see pyproject.toml). The plugin object holds no state of its own:
one instance serves every Machine; per-host state (:class:`FlatDriver`) is keyed by the
``IommuOps`` facade the core hands to ``iommu_driver_init``.
"""

from __future__ import annotations

import errno
import weakref
from typing import Any

from iommu_core.device import (
    X86_MSI_RANGE_LENGTH,
    X86_MSI_RANGE_START,
    IommuCap,
    IommuDevice,
    ResvRegion,
    ResvType,
)
from iommu_core.domain import IommuDomain
from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.group import IommuGroup
from iommu_core.hookspec import hookimpl
from iommu_core.iommu import IommuCore
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import IommuHardware
from iommu_core.platform.platform import IommuResources, Platform
from iommu_core.plugin import IommuOps
from iommu_core.prot import IOMMU_MMIO, IOMMU_WRITE

from flat_iommu import iommu as flat
from flat_iommu.describe import FlatDescribe
from flat_iommu.hw import FlatFeatures, FlatIommuHw
from flat_iommu.uapi import DATA_TYPES

DRIVER_NAME = "flat_iommu"


def _paging(domain: IommuDomain) -> flat.FlatPagingDomain:
    if not isinstance(domain, flat.FlatPagingDomain):
        raise IommuError(errno.EINVAL, f"{domain!r} is not a FlatIOMMU paging domain")
    return domain


class FlatIommuPlugin(FlatDescribe):
    """Hook implementations; each is a thin call into :mod:`flat_iommu.iommu`. The
    teaching hooks (structures, hw_info description, tour) come from
    :class:`~flat_iommu.describe.FlatDescribe`."""

    def __init__(self) -> None:
        self._drivers: weakref.WeakKeyDictionary[IommuOps, flat.FlatDriver] = (
            weakref.WeakKeyDictionary())

    def _driver_for(self, core: IommuCore) -> flat.FlatDriver:
        for ops in core.plugins.drivers.values():
            drv = self._drivers.get(ops)
            if drv is not None and ops.pm.is_registered(self):
                return drv
        raise IommuError(errno.ENODEV, "flat_iommu plugin is not registered")

    # -- platform -----------------------------------------------------------------------
    @hookimpl
    def iommu_driver_init(self, ops: IommuOps) -> None:
        drv = flat.FlatDriver(ops)
        self._drivers[ops] = drv
        ops.blocked_domain = drv.blocked_domain
        ops.identity_domain = drv.identity_domain
        ops.release_domain = drv.blocked_domain

    @hookimpl
    def iommufd_uapi_data_types(self) -> list[Any]:
        return list(DATA_TYPES)

    @hookimpl
    def iommu_hw_create(self, name: str, options: dict[str, Any], platform: Platform
                        ) -> IommuHardware:
        return FlatIommuHw(name, FlatFeatures.from_options(dict(options)), platform.mem,
                           platform.tracer)

    @hookimpl
    def iommu_driver_probe(self, core: IommuCore, res: IommuResources) -> IommuDevice:
        return flat.flat_iommu_probe(self._driver_for(core), core, res)

    @hookimpl
    def iommu_driver_remove(self, iommu: IommuDevice) -> bool:
        if isinstance(iommu.priv, flat.FlatIommu):
            flat.flat_iommu_remove(iommu.priv)
        return True

    # -- iommu_ops ----------------------------------------------------------------------
    @hookimpl
    def probe_device(self, dev: Device) -> IommuDevice:
        return flat.flat_iommu_probe_device(dev)

    @hookimpl
    def release_device(self, dev: Device) -> bool:
        flat.flat_iommu_release_device(dev)
        return True

    @hookimpl
    def device_group(self, dev: Device) -> IommuGroup:
        core = flat.to_master(dev).unit.core
        return core.pci_device_group(dev) if dev.is_pci else core.generic_device_group(dev)

    @hookimpl
    def hw_info(self, dev: Device, data_type: int) -> tuple[bytes, int]:
        return flat.flat_iommu_hw_info(dev, data_type)

    @hookimpl
    def capable(self, dev: Device, cap: int) -> bool:
        if cap == IommuCap.CACHE_COHERENCY:
            return True
        if cap == IommuCap.DIRTY_TRACKING:
            return flat.to_master(dev).unit.dirty
        return False

    @hookimpl
    def get_resv_regions(self, dev: Device) -> list[ResvRegion]:
        # The x86 interrupt window: DMA there is an MSI, never translated.
        return [ResvRegion(X86_MSI_RANGE_START, X86_MSI_RANGE_LENGTH,
                           IOMMU_WRITE | IOMMU_MMIO, ResvType.MSI)]

    @hookimpl
    def domain_alloc_paging_flags(self, dev: Device, flags: int, user_data: object
                                  ) -> IommuDomain:
        return flat.flat_iommu_domain_alloc_paging_flags(dev, flags, user_data)

    # -- domain ops ---------------------------------------------------------------------
    @hookimpl
    def attach_dev(self, domain: IommuDomain, dev: Device, old: IommuDomain | None) -> bool:
        flat.flat_iommu_attach_dev(domain, dev)
        return True

    @hookimpl
    def map_pages(self, domain: IommuDomain, iova: int, paddr: int, pgsize: int,
                  pgcount: int, prot: int) -> int:
        return flat.flat_iommu_map_pages(_paging(domain), iova, paddr, pgsize, pgcount, prot)

    @hookimpl
    def unmap_pages(self, domain: IommuDomain, iova: int, pgsize: int, pgcount: int,
                    gather: IotlbGather) -> int:
        return flat.flat_iommu_unmap_pages(_paging(domain), iova, pgsize, pgcount, gather)

    @hookimpl
    def iotlb_sync(self, domain: IommuDomain, gather: IotlbGather) -> bool:
        flat.flat_iommu_iotlb_sync(_paging(domain), gather)
        return True

    @hookimpl
    def flush_iotlb_all(self, domain: IommuDomain) -> bool:
        flat.flat_iommu_flush_iotlb_all(_paging(domain))
        return True

    @hookimpl
    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        return _paging(domain).pt.iova_to_phys(iova)

    @hookimpl
    def free(self, domain: IommuDomain) -> bool:
        flat.flat_iommu_domain_free(_paging(domain))
        return True

    @hookimpl
    def set_dirty_tracking(self, domain: IommuDomain, enabled: bool) -> bool:
        flat.flat_iommu_set_dirty_tracking(_paging(domain), enabled)
        return True

    @hookimpl
    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int, flags: int,
                             dirty: Any) -> bool:
        flat.flat_iommu_read_and_clear_dirty(_paging(domain), iova, size, flags, dirty)
        return True


plugin = FlatIommuPlugin()
