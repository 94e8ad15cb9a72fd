"""The AMD-Vi hardware model (QEMU ``hw/i386/amd_iommu.c`` style)."""

from drivers.amd_vi.hw.amd_iommu import AmdIommuHw, CompletedPpr, IotlbInvalidation
from drivers.amd_vi.hw.config import AmdViFeatures

__all__ = ["AmdIommuHw", "AmdViFeatures", "CompletedPpr", "IotlbInvalidation"]
