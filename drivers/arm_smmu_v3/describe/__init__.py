"""What the SMMUv3 driver teaches: its structures, hw_info, what it wrote for a device and
how the SMMU walks, the guest's CD for nested scenarios, its constants, its tour and its
part of the system bench.

:class:`SmmuDescribe` holds the hook implementations of
:mod:`iommu_core.describe.hookspec`; the driver's plugin class inherits them.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from drivers.arm_smmu_v3 import regs, tegra241_cmdqv_regs
from drivers.arm_smmu_v3.describe.guest import GUEST_BUILDERS
from drivers.arm_smmu_v3.describe.hw_info import SmmuHwInfo, Tegra241CmdqvHwInfo
from drivers.arm_smmu_v3.describe.structures import STRUCTURES
from drivers.arm_smmu_v3.describe.view import smmu_describe_device, smmu_describe_domain
from iommu_core.describe import (
    BenchDesc,
    DeviceView,
    DomainView,
    GuestBuilder,
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

VENDOR = VendorDesc(name="smmu", title="ARM SMMUv3", aliases=("arm", "smmuv3", "arm_smmu_v3"))


class SmmuDescribe:
    """The SMMUv3 driver's teaching hooks."""

    @hookimpl
    def describe_vendor(self) -> VendorDesc:
        return VENDOR

    @hookimpl
    def describe_structures(self) -> list[Structure]:
        return list(STRUCTURES)

    @hookimpl
    def describe_hw_info(self) -> list[HwInfoDesc]:
        return [SmmuHwInfo(), Tegra241CmdqvHwInfo()]

    @hookimpl
    def describe_device(self, unit: IommuHardware, mem: PhysicalMemory, dev: Device,
                        pasid: int | None, iova: int | None) -> DeviceView:
        return smmu_describe_device(unit, mem, dev, pasid, iova)

    @hookimpl
    def describe_domain(self, domain: IommuDomain) -> DomainView | None:
        return smmu_describe_domain(domain)

    @hookimpl
    def describe_guest_builders(self) -> list[GuestBuilder]:
        return list(GUEST_BUILDERS)

    @hookimpl
    def describe_constants(self) -> Mapping[str, int]:
        return module_constants(regs, tegra241_cmdqv_regs)

    @hookimpl
    def describe_bench(self) -> BenchDesc:
        from drivers.arm_smmu_v3.bench import BENCH, OPTIONS  # imported for the bench only

        return BENCH.desc(OPTIONS)

    @hookimpl
    def describe_scenarios(self) -> list[ScenarioRef]:
        tour = resources.files(__name__) / "tour_arm_smmu_v3.toml"
        return [ScenarioRef("tour_arm_smmu_v3", Path(str(tour)), tour=True)]
