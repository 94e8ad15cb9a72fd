"""The AMD driver's prototype uAPI addition (NOT upstream).

``IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE`` (0x80000003): IOMMU_HWPT_INVALIDATE on an
AMD vIOMMU with entries that are raw 16-byte AMD command-buffer commands, the way the
review of the HW-vIOMMU series asked for ("the VMM parses the guest command buffer and
turns it into invalidation ioctls", like ARM's ``IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3``).
The value sits in the top half of the number space so it cannot collide with an upstream
type. Data only: it is registered in the iommufd data-type registry when the plugin loads.
"""

from __future__ import annotations

import ctypes
from typing import Final

from iommufd.uapi import DataKind, DataTypeError, UapiStruct, find_data_type, register_data_type

IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE: Final = 0x8000_0003


class iommu_viommu_amd_invalidate(UapiStruct):
    """One guest command-buffer command (``struct iommu_cmd``: four __u32, little endian).

    Accepted opcodes: INVALIDATE_IOMMU_PAGES (guest DomainID -> hDomID),
    INVALIDATE_IOTLB_PAGES and INVALIDATE_DEVTAB_ENTRY (vDeviceID -> DeviceID through the
    vDEVICE). Anything else fails with EIO.
    """

    cmd: ctypes.Array[ctypes.c_uint32]
    _fields_ = [("cmd", ctypes.c_uint32 * 4)]


def register_prototype_types() -> None:
    """Register the prototype type (idempotent; the registry is process-wide)."""
    held = find_data_type(DataKind.VIOMMU_INVALIDATE, IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE)
    if held is not None:
        if held.struct is not iommu_viommu_amd_invalidate:
            raise DataTypeError(f"{held.name} holds the AMD prototype invalidation value")
        return
    # Like SMMUv3, the whole array is copied: short entries are zero-filled (no minimum).
    register_data_type(DataKind.VIOMMU_INVALIDATE, "IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE",
                       IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE, iommu_viommu_amd_invalidate,
                       0)
