"""What the AMD-Vi driver teaches: its structures, hw_info, what it wrote for a device and
how the unit walks, its constants and its tour.

:class:`AmdDescribe` holds the hook implementations of
:mod:`iommu_core.describe.hookspec`; the driver's plugin class inherits them.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from drivers.amd_vi import amd_iommu_types, uapi, viommu_regs
from drivers.amd_vi.describe.hw_info import AmdHwInfo
from drivers.amd_vi.describe.structures import STRUCTURES
from drivers.amd_vi.describe.view import amd_describe_device, amd_describe_domain
from iommu_core.describe import (
    BenchDesc,
    DeviceView,
    DomainView,
    HwInfoDesc,
    ScenarioRef,
    Structure,
    VendorDesc,
    module_constants,
)
from iommu_core.domain import IommuDomain
from iommu_core.hookspec import hookimpl
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import IommuHardware
from iommu_core.platform.memory import PhysicalMemory

VENDOR = VendorDesc(name="amd", title="AMD-Vi", aliases=("amdvi", "amd_vi"))


class AmdDescribe:
    """The AMD-Vi driver's teaching hooks."""

    @hookimpl
    def describe_vendor(self) -> VendorDesc:
        return VENDOR

    @hookimpl
    def describe_structures(self) -> list[Structure]:
        return list(STRUCTURES)

    @hookimpl
    def describe_hw_info(self) -> list[HwInfoDesc]:
        return [AmdHwInfo()]

    @hookimpl
    def describe_device(self, unit: IommuHardware, mem: PhysicalMemory, dev: Device,
                        pasid: int | None, iova: int | None) -> DeviceView:
        return amd_describe_device(unit, mem, dev, pasid, iova)

    @hookimpl
    def describe_domain(self, domain: IommuDomain) -> DomainView | None:
        return amd_describe_domain(domain)

    @hookimpl
    def describe_constants(self) -> Mapping[str, int]:
        return module_constants(amd_iommu_types, uapi, viommu_regs)

    @hookimpl
    def describe_bench(self) -> BenchDesc:
        from drivers.amd_vi.bench import BENCH  # imported for the bench only

        return BENCH.desc()

    @hookimpl
    def describe_scenarios(self) -> list[ScenarioRef]:
        tour = resources.files(__name__) / "tour_amd_vi.toml"
        return [ScenarioRef("tour_amd_vi", Path(str(tour)), tour=True)]
