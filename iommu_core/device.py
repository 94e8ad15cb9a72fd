"""``struct iommu_device`` (one IOMMU instance) and ``struct dev_iommu`` (per device)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from iommu_core.iopf import FaultParam
    from iommu_core.plugin import IommuOps


class IommuCap(enum.IntEnum):
    """``enum iommu_cap``: per-device capabilities asked through ``ops->capable``."""

    CACHE_COHERENCY = 0
    NOEXEC = 1
    PRE_BOOT_PROTECTION = 2
    ENFORCE_CACHE_COHERENCY = 3
    DEFERRED_FLUSH = 4
    DIRTY_TRACKING = 5
    PCI_ATS_SUPPORTED = 6


class IommuDevice:
    """One registered IOMMU instance: its driver ops and the driver's private state."""

    def __init__(self, name: str, ops: IommuOps, priv: Any = None) -> None:
        self.name = name
        self.ops = ops
        #: The driver's per-instance object (``struct arm_smmu_device`` ...).
        self.priv = priv
        self.registered = False
        #: Max PASID width this unit supports (0: none); devices are clamped to it.
        self.max_pasid_bits = 0

    def __repr__(self) -> str:
        return f"<IommuDevice {self.name} ({self.ops.name})>"


@attrs.define(eq=False)
class DevIommu:
    """``struct dev_iommu``: what the core keeps per probed device."""

    iommu_dev: IommuDevice
    #: Driver per-device state (``struct arm_smmu_master`` ...), set by probe_device.
    priv: Any = None
    max_pasids: int = 0
    require_direct: bool = False
    attach_deferred: bool = False
    fault_param: FaultParam | None = None
    #: Owner cookie for device-centric DMA ownership (None: no user owner).
    owner: object = None

    @property
    def ops(self) -> IommuOps:
        return self.iommu_dev.ops


class ResvType(enum.IntEnum):
    """``enum iommu_resv_type``."""

    DIRECT = 0
    DIRECT_RELAXABLE = 1
    RESERVED = 2
    MSI = 3
    SW_MSI = 4


RESV_SYSFS_NAMES = {
    ResvType.DIRECT: "direct",
    ResvType.DIRECT_RELAXABLE: "direct-relaxable",
    ResvType.RESERVED: "reserved",
    ResvType.MSI: "msi",
    ResvType.SW_MSI: "msi",
}


@attrs.frozen
class ResvRegion:
    """``struct iommu_resv_region``: [start, start+length) with a type and prot."""

    start: int
    length: int
    prot: int
    type: ResvType

    @property
    def last(self) -> int:
        return self.start + self.length - 1


#: The software-managed MSI window SMMU-style drivers report (MSI_IOVA_BASE/LENGTH).
MSI_IOVA_BASE = 0x800_0000
MSI_IOVA_LENGTH = 0x10_0000
#: x86 interrupt-remapping window (IOAPIC_RANGE_START..END) VT-d and AMD report as MSI.
X86_MSI_RANGE_START = 0xFEE0_0000
X86_MSI_RANGE_LENGTH = 0x10_0000
