"""A tiny in-memory driver for testing the IOMMU core's own rules (no hardware walk)."""

from __future__ import annotations

import errno
from typing import Any

from iommu_core.device import IommuDevice
from iommu_core.domain import IOMMU_DOMAIN_BLOCKED, IOMMU_DOMAIN_IDENTITY, IommuDomain
from iommu_core.errors import IommuError
from iommu_core.hookspec import hookimpl
from iommu_core.iommu import IommuCore
from iommu_core.iopf import PageRequest, PageResponse
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import DmaFault, IommuHardware, Mmio
from iommu_core.platform.platform import IommuResources, Platform
from iommu_core.plugin import IommuOps, PluginHost

PAGING_OPS = ["attach_dev", "set_dev_pasid", "map_pages", "unmap_pages", "iova_to_phys",
              "free", "iotlb_sync"]


class Regs(Mmio):
    def __init__(self) -> None:
        self.r: dict[int, int] = {}

    def read32(self, offset: int) -> int:
        return self.r.get(offset, 0)

    def write32(self, offset: int, value: int) -> None:
        self.r[offset] = value


class FakeHw(IommuHardware):
    def __init__(self, name: str) -> None:
        self.name = name
        self.mmio = {"regs": Regs()}
        self.irqs = {}

    def dma_translate(self, dev: Device, pasid: int | None, iova: int, access: int) -> int:
        raise DmaFault(dev.name, iova, pasid, access, "no walker in the fake")


class FakeDomain(IommuDomain):
    def __init__(self, ops: IommuOps) -> None:
        super().__init__(0, ops.domain_ops(PAGING_OPS), pgsize_bitmap=0x1000 | 0x200000)
        self.maps: dict[int, tuple[int, int]] = {}


class FakeDriver:
    """Records every call; can be told to fail attach or set_dev_pasid."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.ops: IommuOps | None = None
        self.core: IommuCore | None = None
        self.calls: list[tuple[str, Any]] = []
        self.fail_attach: set[str] = set()
        self.fail_pasid: set[int] = set()
        self.responses: list[PageResponse] = []
        self.pasid_state: dict[tuple[str, int], IommuDomain] = {}

    @hookimpl
    def iommu_driver_init(self, ops: IommuOps) -> None:
        self.ops = ops
        ops.blocked_domain = IommuDomain(IOMMU_DOMAIN_BLOCKED,
                                         ops.domain_ops(["attach_dev", "set_dev_pasid"]))
        ops.identity_domain = IommuDomain(IOMMU_DOMAIN_IDENTITY, ops.domain_ops(["attach_dev"]))

    @hookimpl
    def iommu_hw_create(self, name: str, options: dict[str, Any], platform: Platform
                        ) -> IommuHardware:
        return FakeHw(name)

    @hookimpl
    def iommu_driver_probe(self, core: IommuCore, res: IommuResources) -> IommuDevice:
        assert self.ops is not None
        self.core = core
        iommu = IommuDevice(res.name, self.ops)
        iommu.max_pasid_bits = 8
        core.iommu_device_register(iommu)
        return iommu

    @hookimpl
    def probe_device(self, dev: Device) -> IommuDevice:
        iommu: IommuDevice = dev.iommu.iommu_dev
        return iommu

    @hookimpl
    def device_group(self, dev: Device) -> Any:
        assert self.core is not None
        return self.core.pci_device_group(dev)

    @hookimpl
    def domain_alloc_paging_flags(self, dev: Device, flags: int, user_data: Any
                                  ) -> IommuDomain:
        assert self.ops is not None
        if flags & ~0xF:
            raise IommuError(errno.EOPNOTSUPP, "flags")
        return FakeDomain(self.ops)

    @hookimpl
    def attach_dev(self, domain: IommuDomain, dev: Device, old: IommuDomain | None) -> bool:
        if dev.name in self.fail_attach and domain.type != IOMMU_DOMAIN_BLOCKED:
            raise IommuError(errno.EINVAL, "told to fail")
        self.calls.append(("attach_dev", (domain, dev.name)))
        return True

    @hookimpl
    def set_dev_pasid(self, domain: IommuDomain, dev: Device, pasid: int,
                      old: IommuDomain | None) -> bool:
        if pasid in self.fail_pasid and domain.type != IOMMU_DOMAIN_BLOCKED:
            raise IommuError(errno.ENOMEM, "told to fail")
        self.calls.append(("set_dev_pasid", (domain, dev.name, pasid)))
        if domain.type == IOMMU_DOMAIN_BLOCKED:
            self.pasid_state.pop((dev.name, pasid), None)
        else:
            self.pasid_state[(dev.name, pasid)] = domain
        return True

    @hookimpl
    def map_pages(self, domain: FakeDomain, iova: int, paddr: int, pgsize: int,
                  pgcount: int, prot: int) -> int:
        self.calls.append(("map_pages", (iova, pgsize, pgcount)))
        for i in range(pgcount):
            domain.maps[iova + i * pgsize] = (paddr + i * pgsize, pgsize)
        return pgsize * pgcount

    @hookimpl
    def unmap_pages(self, domain: FakeDomain, iova: int, pgsize: int, pgcount: int,
                    gather: Any) -> int:
        done = 0
        for i in range(pgcount):
            m = domain.maps.pop(iova + i * pgsize, None)
            if m is None:
                break
            done += m[1]
        gather.add_range(iova, max(done, 1))
        return done

    @hookimpl
    def iova_to_phys(self, domain: FakeDomain, iova: int) -> int:
        for base, (pa, size) in domain.maps.items():
            if base <= iova < base + size:
                return pa + iova - base
        return 0

    @hookimpl
    def iotlb_sync(self, domain: IommuDomain, gather: Any) -> bool:
        self.calls.append(("iotlb_sync", (gather.start, gather.end)))
        return True

    @hookimpl
    def page_response(self, dev: Device, evt: PageRequest, msg: PageResponse) -> bool:
        self.responses.append(msg)
        return True


def make_core(*drivers: FakeDriver) -> tuple[IommuCore, dict[str, IommuOps]]:
    platform = Platform()
    host = PluginHost()
    ops = {}
    for drv in drivers or (FakeDriver(),):
        ops[drv.name] = host.register_driver(drv.name, drv)
    core = IommuCore(platform, host)
    for name, o in ops.items():
        hw = o.iommu_hw_create(f"{name}0", {}, platform)
        o.iommu_driver_probe(core, platform.add_iommu(hw))
    return core, ops
