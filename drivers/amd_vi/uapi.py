"""The AMD driver's prototype uAPI additions (NOT upstream).

``IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE`` (0x80000003): IOMMU_HWPT_INVALIDATE on an
AMD vIOMMU with entries that are raw 16-byte AMD command-buffer commands, the way the
review of the HW-vIOMMU series asked for ("the VMM parses the guest command buffer and
turns it into invalidation ioctls", like ARM's ``IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3``).
The value sits in the top half of the number space so it cannot collide with an upstream
type. Data only: the AMD plugin declares it through the ``iommufd_uapi_data_types`` hook
and iommufd registers it when it starts.

The HW-vIOMMU, in the shape Linux merged for Tegra241 CMDQV (a vIOMMU type of its own
whose page the VMM mmaps from the iommufd, the guest's queues as HW queues):

* ``IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE`` (0x80000003): ``iommu_viommu_amd_hw`` is all
  out: the GuestID the kernel allocated and the mmap offset/length of the guest's VF
  MMIO page;
* ``IOMMU_VEVENTQ_TYPE_AMD_HW_PROTOTYPE`` (0x80000003): the guest's interrupt, for the
  VMM to inject (``iommu_vevent_amd_hw``: the guest's status bits that raised it);
* ``IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE`` (0x80000003) and
  ``IOMMU_HW_QUEUE_TYPE_AMD_EVTLOG_PROTOTYPE`` (0x80000004): the guest's command buffer
  and event log, index 0 only, a power-of-2 length of 4 KiB .. 512 KiB at a 4 KiB aligned
  guest-physical address (the host ring sizes and alignment).

0x80000003 is AMD's prototype number in every kind (each kind is its own number space).
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


IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE: Final = 0x8000_0003
IOMMU_VEVENTQ_TYPE_AMD_HW_PROTOTYPE: Final = 0x8000_0003
IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE: Final = 0x8000_0003
IOMMU_HW_QUEUE_TYPE_AMD_EVTLOG_PROTOTYPE: Final = 0x8000_0004


class iommu_viommu_amd_hw(UapiStruct):
    """``IOMMU_VIOMMU_ALLOC(AMD_HW_PROTOTYPE)`` data, all out: the GuestID, and where the
    guest's VF MMIO page is in the iommufd's mmap space."""

    out_guest_id: int
    out_vfmmio_mmap_offset: int
    out_vfmmio_mmap_length: int
    _fields_ = [("out_guest_id", ctypes.c_uint32), ("__reserved", ctypes.c_uint32),
                ("out_vfmmio_mmap_offset", ctypes.c_uint64),
                ("out_vfmmio_mmap_length", ctypes.c_uint64)]


class iommu_vevent_amd_hw(UapiStruct):
    """A guest's interrupt: its VF STATUS (EVT_INT, EVT_OVERFLOW, COM_WAIT_INT) when the
    unit raised it; the records are in the guest's event log, which the guest reads."""

    status: int
    _fields_ = [("status", ctypes.c_uint32), ("__reserved", ctypes.c_uint32)]


#: What the plugin's ``iommufd_uapi_data_types`` hook declares. Like SMMUv3's, the whole
#: array is copied: short entries are zero-filled (no minimum).
PROTOTYPE_DATA_TYPES: Final = (
    DataType(kind=DataKind.VIOMMU_INVALIDATE,
             name="IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE",
             value=IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE,
             struct=iommu_viommu_amd_invalidate, min_len=0),
    DataType(kind=DataKind.VIOMMU, name="IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE",
             value=IOMMU_VIOMMU_TYPE_AMD_HW_PROTOTYPE, struct=iommu_viommu_amd_hw,
             min_len=ctypes.sizeof(iommu_viommu_amd_hw)),
    DataType(kind=DataKind.VEVENTQ, name="IOMMU_VEVENTQ_TYPE_AMD_HW_PROTOTYPE",
             value=IOMMU_VEVENTQ_TYPE_AMD_HW_PROTOTYPE, struct=iommu_vevent_amd_hw,
             min_len=ctypes.sizeof(iommu_vevent_amd_hw)),
    DataType(kind=DataKind.HW_QUEUE, name="IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE",
             value=IOMMU_HW_QUEUE_TYPE_AMD_CMDBUF_PROTOTYPE, struct=None, min_len=0),
    DataType(kind=DataKind.HW_QUEUE, name="IOMMU_HW_QUEUE_TYPE_AMD_EVTLOG_PROTOTYPE",
             value=IOMMU_HW_QUEUE_TYPE_AMD_EVTLOG_PROTOTYPE, struct=None, min_len=0),
)
