"""The AMD driver's prototype uAPI addition (NOT upstream).

``IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE`` (0x80000003): IOMMU_HWPT_INVALIDATE on an
AMD vIOMMU with entries that are raw 16-byte AMD command-buffer commands, the way the
review of the HW-vIOMMU series asked for ("the VMM parses the guest command buffer and
turns it into invalidation ioctls", like ARM's ``IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3``).
The value sits in the top half of the number space so it cannot collide with an upstream
type. Data only: the AMD plugin declares it through the ``iommufd_uapi_data_types`` hook
and iommufd registers it when it starts.
"""

from __future__ import annotations

import ctypes
from typing import Final

from iommufd.uapi import DataKind, DataType, UapiStruct

IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE: Final = 0x8000_0003


class iommu_viommu_amd_invalidate(UapiStruct):
    """One guest command-buffer command (``struct iommu_cmd``: four __u32, little endian).

    Accepted opcodes: INVALIDATE_IOMMU_PAGES (guest DomainID -> hDomID),
    INVALIDATE_IOTLB_PAGES and INVALIDATE_DEVTAB_ENTRY (vDeviceID -> DeviceID through the
    vDEVICE). Anything else fails with EIO.
    """

    cmd: ctypes.Array[ctypes.c_uint32]
    _fields_ = [("cmd", ctypes.c_uint32 * 4)]


#: What the plugin's ``iommufd_uapi_data_types`` hook declares. Like SMMUv3's, the whole
#: array is copied: short entries are zero-filled (no minimum).
PROTOTYPE_DATA_TYPES: Final = (
    DataType(kind=DataKind.VIOMMU_INVALIDATE,
             name="IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE",
             value=IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE,
             struct=iommu_viommu_amd_invalidate, min_len=0),
)
