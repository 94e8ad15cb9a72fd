"""A minimal simulated kernel around ONE driver, for the conformance kit.

Built from iommu_core alone (no iommufd, no Machine), so a third-party driver can be
checked against the core contract before anything else exists.
"""

from __future__ import annotations

import errno
from importlib.metadata import entry_points
from typing import Any

from iommu_core.device import IommuDevice
from iommu_core.domain import IommuDomain
from iommu_core.errors import IommuError
from iommu_core.iommu import IommuCore
from iommu_core.platform.bus import Device, make_pci_device
from iommu_core.platform.dma import IommuHardware, device_dma_read, device_dma_write
from iommu_core.platform.memory import PAGE_SHIFT
from iommu_core.platform.mm import MmStruct
from iommu_core.platform.platform import Platform
from iommu_core.plugin import ENTRY_POINT_GROUP, IommuOps, PluginHost


def installed_drivers() -> dict[str, Any]:
    """Driver name -> entry point, for every driver installed in this environment."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_driver_plugin(name: str) -> object:
    ep = installed_drivers().get(name)
    if ep is None:
        raise LookupError(f"no installed IOMMU driver {name!r} (entry point group "
                          f"{ENTRY_POINT_GROUP}); installed: {sorted(installed_drivers())}")
    return ep.load()


class DriverEnv:
    """Platform + plugin host + core + one IOMMU unit of ``driver`` + a user process."""

    UNIT = "unit0"

    def __init__(self, driver: str, plugin: object | None = None,
                 options: dict[str, Any] | None = None,
                 extra_plugins: list[object] | tuple[object, ...] = ()) -> None:
        self.driver = driver
        self.platform = Platform()
        self.host = PluginHost()
        self.ops: IommuOps = self.host.register_driver(
            driver, plugin if plugin is not None else load_driver_plugin(driver))
        for p in extra_plugins:
            self.host.register(p, driver=driver)
        self.core = IommuCore(self.platform, self.host)
        self.hw: IommuHardware = self.ops.iommu_hw_create(self.UNIT, dict(options or {}),
                                                          self.platform)
        res = self.platform.add_iommu(self.hw)
        self.iommu: IommuDevice = self.ops.iommu_driver_probe(self.core, res)
        self.mm = MmStruct(self.platform.mem, self.platform.alloc)
        self.owner = object()
        self._domains: list[IommuDomain] = []
        self._pins: list[list[int]] = []
        self._next_dev = 1

    @property
    def kernel_pages(self) -> int:
        return self.platform.alloc.in_use("kernel")

    def add_device(self, name: str | None = None, **options: Any) -> Device:
        if name is None:
            name = f"0000:00:{self._next_dev:02x}.0"
            self._next_dev += 1
        dev = make_pci_device(name, self.UNIT, **options)
        self.core.add_device(dev)
        return dev

    def claim(self, dev: Device) -> None:
        """User ownership, as VFIO bind does: the group goes to its blocking domain."""
        self.core.iommu_device_claim_dma_owner(dev, self.owner)

    def paging_domain(self, dev: Device, flags: int = 0) -> IommuDomain:
        dom = self.core.iommu_paging_domain_alloc_flags(dev, flags)
        self._domains.append(dom)
        return dom

    def user_pages(self, npages: int) -> tuple[int, list[int]]:
        """Pinned user memory: (user VA, physical frame numbers)."""
        va = self.mm.mmap(npages << PAGE_SHIFT)
        pfns = self.mm.pin_pages(va, npages)
        self._pins.append(pfns)
        return va, pfns

    def dma_read(self, dev: Device, iova: int, n: int, pasid: int | None = None) -> bytes:
        return device_dma_read(self.hw, self.platform.mem, dev, iova, n, pasid)

    def dma_write(self, dev: Device, iova: int, data: bytes, pasid: int | None = None
                  ) -> None:
        device_dma_write(self.hw, self.platform.mem, dev, iova, data, pasid)

    def teardown(self) -> None:
        """Release every device, free every domain, remove the driver, unpin."""
        for dev in list(self.platform.devices.values()):
            if dev.iommu is not None:
                group = dev.iommu_group
                if group is not None and group.owner is not None:
                    for pasid, h in list(group.pasid_array.items()):
                        if pasid:
                            self.core.iommu_detach_device_pasid(h.domain, dev, pasid)
                    if group.domain is not None and group.domain not in (
                            group.blocking_domain, group.default_domain):
                        self.core.iommu_detach_group(group.domain, group)
                    while group.owner_cnt:
                        self.core.iommu_device_release_dma_owner(dev)
            self.core.remove_device(dev)
        for dom in self._domains:
            self.core.iommu_domain_free(dom)
        self._domains.clear()
        self.core.shutdown()
        for pfns in self._pins:
            self.mm.unpin_pages(pfns)
        self._pins.clear()
        self.mm.teardown()


def expect_errno(err: int, fn: Any, *args: Any, **kwargs: Any) -> IommuError:
    try:
        fn(*args, **kwargs)
    except IommuError as e:
        if e.errno != err:
            raise AssertionError(f"expected {errno.errorcode[err]}, got {e}") from e
        return e
    raise AssertionError(f"expected {errno.errorcode[err]}, the call succeeded")
