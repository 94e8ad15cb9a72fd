"""FlatIOMMU's uAPI addition: its ``IOMMU_GET_HW_INFO`` payload.

Data only. The plugin declares it through the ``iommufd_uapi_data_types`` hook and iommufd
registers it when it starts, so a VMM (or ``iommu-sim info``) gets it back by type.
"""

from __future__ import annotations

import ctypes
from typing import Final

from iommufd.uapi import DataKind, DataType, UapiStruct

#: In the top half of the number space, where no upstream type will land.
IOMMU_HW_INFO_TYPE_FLAT: Final = 0x8000_0100


class iommu_hw_info_flat(UapiStruct):
    """The unit's ID, VERSION and CAP registers, as the driver read them at probe."""

    id: int
    version: int
    cap: int
    _fields_ = (("id", ctypes.c_uint32), ("version", ctypes.c_uint32),
                ("cap", ctypes.c_uint32), ("__reserved", ctypes.c_uint32))


DATA_TYPES: Final = (
    DataType(kind=DataKind.HW_INFO, name="IOMMU_HW_INFO_TYPE_FLAT",
             value=IOMMU_HW_INFO_TYPE_FLAT, struct=iommu_hw_info_flat,
             min_len=ctypes.sizeof(iommu_hw_info_flat)),
)
