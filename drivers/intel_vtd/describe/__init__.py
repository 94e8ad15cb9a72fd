"""What the VT-d driver teaches: its structures, hw_info, what it wrote for a device and
how the unit walks, its constants and its scenarios (the tour, and the one-DMA example
of the scenario docs).

:class:`VtdDescribe` holds the hook implementations of
:mod:`iommu_core.describe.hookspec`; the driver's plugin class inherits them.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from drivers.intel_vtd import iommu_h, pasid
from drivers.intel_vtd.describe.hw_info import VtdHwInfo
from drivers.intel_vtd.describe.structures import STRUCTURES
from drivers.intel_vtd.describe.view import vtd_describe_device, vtd_describe_domain
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

VENDOR = VendorDesc(name="vtd", title="Intel VT-d", aliases=("intel", "intel_vtd"))


def _scenario(name: str, tour: bool = False) -> ScenarioRef:
    return ScenarioRef(name, Path(str(resources.files(__name__) / f"{name}.toml")), tour=tour)


class VtdDescribe:
    """The VT-d driver's teaching hooks."""

    @hookimpl
    def describe_vendor(self) -> VendorDesc:
        return VENDOR

    @hookimpl
    def describe_structures(self) -> list[Structure]:
        return list(STRUCTURES)

    @hookimpl
    def describe_hw_info(self) -> list[HwInfoDesc]:
        return [VtdHwInfo()]

    @hookimpl
    def describe_device(self, unit: IommuHardware, mem: PhysicalMemory, dev: Device,
                        pasid: int | None, iova: int | None) -> DeviceView:
        return vtd_describe_device(unit, mem, dev, pasid, iova)

    @hookimpl
    def describe_domain(self, domain: IommuDomain) -> DomainView | None:
        return vtd_describe_domain(domain)

    @hookimpl
    def describe_constants(self) -> Mapping[str, int]:
        return module_constants(iommu_h, pasid)

    @hookimpl
    def describe_bench(self) -> BenchDesc:
        from drivers.intel_vtd.bench import BENCH  # imported for the bench only

        return BENCH.desc()

    @hookimpl
    def describe_scenarios(self) -> list[ScenarioRef]:
        return [_scenario("tour_intel_vtd", tour=True), _scenario("vtd_one_dma")]
