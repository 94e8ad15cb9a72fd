"""The VFIO user ABI that iommufd serves: the device cdev ioctls and the legacy
type1 container API (``include/uapi/linux/vfio.h``).

Source: ``include/uapi/linux/vfio.h`` at torvalds/linux@02256acf1e81 (has
``token_uuid_ptr`` / ``VFIO_DEVICE_BIND_FLAG_TOKEN`` and PASID attach/detach; there
``VFIO_TYPE1_NESTING_IOMMU`` is renamed ``__VFIO_RESERVED_TYPE1_NESTING_IOMMU``, value 6).
The device ioctls of a bound fd (GET_INFO, GET_REGION_INFO, GET_IRQ_INFO, RESET,
FEATURE), vfio-pci's region and IRQ indexes and the device features are from Linux 7.3's
``include/uapi/linux/vfio.h``.
Container layouts and numbers were also compiled against the distribution's v6.1
``<linux/vfio.h>`` with gcc on x86_64. The kernel's minimum sizes (``minsz``) come from
``drivers/iommu/iommufd/vfio_compat.c``, ``drivers/vfio/vfio_iommu_type1.c`` and
``drivers/vfio/device_cdev.c``.

Every VFIO request is ``_IO(VFIO_TYPE, VFIO_BASE + n)`` (the header comments say
``_IOR``/``_IOW``; the macros are ``_IO``). VFIO numbers are 100..~122, below
``IOMMUFD_CMD_BASE``, so they share the ``';'`` type byte with iommufd without colliding.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from iommufd.uapi import _IO, IoctlDesc, UapiStruct, ioctl_op

_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64

VFIO_API_VERSION: Final = 0

VFIO_TYPE: Final = ord(";")
VFIO_BASE: Final = 100

# Extensions (VFIO_CHECK_EXTENSION arguments, VFIO_SET_IOMMU types)
VFIO_TYPE1_IOMMU: Final = 1
VFIO_SPAPR_TCE_IOMMU: Final = 2
VFIO_TYPE1v2_IOMMU: Final = 3
VFIO_DMA_CC_IOMMU: Final = 4  # IOMMU enforces DMA cache coherence
VFIO_EEH: Final = 5
#: Removed from the header (renamed ``__VFIO_RESERVED_TYPE1_NESTING_IOMMU``); the number
#: stays reserved and old user space still probes it.
VFIO_TYPE1_NESTING_IOMMU: Final = 6
__VFIO_RESERVED_TYPE1_NESTING_IOMMU: Final = VFIO_TYPE1_NESTING_IOMMU
VFIO_SPAPR_TCE_v2_IOMMU: Final = 7
VFIO_NOIOMMU_IOMMU: Final = 8
VFIO_UNMAP_ALL: Final = 9  # supports VFIO_DMA_UNMAP_FLAG_ALL
VFIO_UPDATE_VADDR: Final = 10  # supports the VADDR flag of map and unmap


# --- capability chains ------------------------------------------------------------------


class vfio_info_cap_header(UapiStruct):
    """Header of each capability in an INFO buffer; ``next`` is an offset from the start
    of the buffer (0 ends the chain)."""

    id: int
    version: int
    next: int
    _fields_ = [("id", _u16), ("version", _u16), ("next", _u32)]


# --- container ioctls (/dev/vfio/vfio, also served on /dev/iommu by iommufd) ------------------

VFIO_GET_API_VERSION: Final = _IO(VFIO_TYPE, VFIO_BASE + 0)
VFIO_CHECK_EXTENSION: Final = _IO(VFIO_TYPE, VFIO_BASE + 1)  # by-value argument
VFIO_SET_IOMMU: Final = _IO(VFIO_TYPE, VFIO_BASE + 2)  # by-value argument


# --- group ioctls (/dev/vfio/$GROUP) ----------------------------------------------------

VFIO_GROUP_FLAGS_VIABLE: Final = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET: Final = 1 << 1


class vfio_group_status(UapiStruct):
    argsz: int
    flags: int
    _fields_ = [("argsz", _u32), ("flags", _u32)]


VFIO_GROUP_GET_STATUS: Final = _IO(VFIO_TYPE, VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER: Final = _IO(VFIO_TYPE, VFIO_BASE + 4)
VFIO_GROUP_UNSET_CONTAINER: Final = _IO(VFIO_TYPE, VFIO_BASE + 5)
VFIO_GROUP_GET_DEVICE_FD: Final = _IO(VFIO_TYPE, VFIO_BASE + 6)


# --- type1 IOMMU API ----------------------------------------------------------------------

VFIO_IOMMU_INFO_PGSIZES: Final = 1 << 0  # iova_pgsizes is valid
VFIO_IOMMU_INFO_CAPS: Final = 1 << 1  # cap_offset is valid


class vfio_iommu_type1_info(UapiStruct):
    argsz: int
    flags: int
    iova_pgsizes: int
    cap_offset: int
    pad: int
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("iova_pgsizes", _u64),
        ("cap_offset", _u32),
        ("pad", _u32),
    ]


# Capability ids of VFIO_IOMMU_GET_INFO
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: Final = 1
VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: Final = 2
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: Final = 3


class vfio_iova_range(UapiStruct):
    start: int
    end: int  # inclusive
    _fields_ = [("start", _u64), ("end", _u64)]


class vfio_iommu_type1_info_cap_iova_range(UapiStruct):
    """Fixed part (16 bytes); ``nr_iovas`` ``vfio_iova_range`` entries follow."""

    header: vfio_info_cap_header
    nr_iovas: int
    reserved: int
    _fields_ = [("header", vfio_info_cap_header), ("nr_iovas", _u32), ("reserved", _u32)]


class vfio_iommu_type1_info_cap_migration(UapiStruct):
    header: vfio_info_cap_header
    flags: int
    pgsize_bitmap: int
    max_dirty_bitmap_size: int
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("flags", _u32),
        ("pgsize_bitmap", _u64),
        ("max_dirty_bitmap_size", _u64),
    ]


class vfio_iommu_type1_info_dma_avail(UapiStruct):
    header: vfio_info_cap_header
    avail: int
    _fields_ = [("header", vfio_info_cap_header), ("avail", _u32)]


VFIO_IOMMU_GET_INFO: Final = _IO(VFIO_TYPE, VFIO_BASE + 12)

VFIO_DMA_MAP_FLAG_READ: Final = 1 << 0  # readable from device
VFIO_DMA_MAP_FLAG_WRITE: Final = 1 << 1  # writable from device
VFIO_DMA_MAP_FLAG_VADDR: Final = 1 << 2


class vfio_iommu_type1_dma_map(UapiStruct):
    argsz: int
    flags: int
    vaddr: int
    iova: int
    size: int
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("vaddr", _u64),
        ("iova", _u64),
        ("size", _u64),
    ]


VFIO_IOMMU_MAP_DMA: Final = _IO(VFIO_TYPE, VFIO_BASE + 13)


class vfio_bitmap(UapiStruct):
    pgsize: int
    size: int
    data: int  # __u64 __user *
    _fields_ = [("pgsize", _u64), ("size", _u64), ("data", _u64)]


VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: Final = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL: Final = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR: Final = 1 << 2


class vfio_iommu_type1_dma_unmap(UapiStruct):
    """Fixed part (24 bytes); with GET_DIRTY_BITMAP a ``vfio_bitmap`` follows in ``data[]``."""

    argsz: int
    flags: int
    iova: int
    size: int
    _fields_ = [("argsz", _u32), ("flags", _u32), ("iova", _u64), ("size", _u64)]


VFIO_IOMMU_UNMAP_DMA: Final = _IO(VFIO_TYPE, VFIO_BASE + 14)

VFIO_IOMMU_ENABLE: Final = _IO(VFIO_TYPE, VFIO_BASE + 15)
VFIO_IOMMU_DISABLE: Final = _IO(VFIO_TYPE, VFIO_BASE + 16)

VFIO_IOMMU_DIRTY_PAGES_FLAG_START: Final = 1 << 0
VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP: Final = 1 << 1
VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP: Final = 1 << 2


class vfio_iommu_type1_dirty_bitmap(UapiStruct):
    """Fixed part (8 bytes); GET_BITMAP puts a ``vfio_iommu_type1_dirty_bitmap_get`` in
    ``data[]``."""

    argsz: int
    flags: int
    _fields_ = [("argsz", _u32), ("flags", _u32)]


class vfio_iommu_type1_dirty_bitmap_get(UapiStruct):
    iova: int
    size: int
    bitmap: vfio_bitmap
    _fields_ = [("iova", _u64), ("size", _u64), ("bitmap", vfio_bitmap)]


# Same number as VFIO_DEVICE_FEATURE (a device-fd ioctl); which one is meant depends on
# the fd.
VFIO_IOMMU_DIRTY_PAGES: Final = _IO(VFIO_TYPE, VFIO_BASE + 17)


# --- device cdev ioctls (/dev/vfio/devices/vfioN) -----------------------------------------

VFIO_DEVICE_BIND_FLAG_TOKEN: Final = 1 << 0


class vfio_device_bind_iommufd(UapiStruct):
    argsz: int
    flags: int
    iommufd: int
    out_devid: int
    token_uuid_ptr: int
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("iommufd", _s32),
        ("out_devid", _u32),
        ("token_uuid_ptr", _u64),
    ]


VFIO_DEVICE_BIND_IOMMUFD: Final = _IO(VFIO_TYPE, VFIO_BASE + 18)

VFIO_DEVICE_ATTACH_PASID: Final = 1 << 0


class vfio_device_attach_iommufd_pt(UapiStruct):
    argsz: int
    flags: int
    pt_id: int
    pasid: int
    _fields_ = [("argsz", _u32), ("flags", _u32), ("pt_id", _u32), ("pasid", _u32)]


VFIO_DEVICE_ATTACH_IOMMUFD_PT: Final = _IO(VFIO_TYPE, VFIO_BASE + 19)

VFIO_DEVICE_DETACH_PASID: Final = 1 << 0


class vfio_device_detach_iommufd_pt(UapiStruct):
    argsz: int
    flags: int
    pasid: int
    _fields_ = [("argsz", _u32), ("flags", _u32), ("pasid", _u32)]


VFIO_DEVICE_DETACH_IOMMUFD_PT: Final = _IO(VFIO_TYPE, VFIO_BASE + 20)


# --- device ioctls (vfio_main.c + vfio_pci_core.c), on a bound cdev fd ----------------------

class vfio_device_info(UapiStruct):
    argsz: int
    flags: int
    num_regions: int
    num_irqs: int
    cap_offset: int
    pad: int
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("num_regions", _u32),
        ("num_irqs", _u32),
        ("cap_offset", _u32),
        ("pad", _u32),
    ]


VFIO_DEVICE_FLAGS_RESET: Final = 1 << 0
VFIO_DEVICE_FLAGS_PCI: Final = 1 << 1
VFIO_DEVICE_FLAGS_PLATFORM: Final = 1 << 2
VFIO_DEVICE_FLAGS_AMBA: Final = 1 << 3
VFIO_DEVICE_FLAGS_CCW: Final = 1 << 4
VFIO_DEVICE_FLAGS_AP: Final = 1 << 5
VFIO_DEVICE_FLAGS_FSL_MC: Final = 1 << 6
VFIO_DEVICE_FLAGS_CAPS: Final = 1 << 7
VFIO_DEVICE_FLAGS_CDX: Final = 1 << 8
VFIO_DEVICE_GET_INFO: Final = _IO(VFIO_TYPE, VFIO_BASE + 7)

VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP: Final = 5
VFIO_PCI_ATOMIC_COMP32: Final = 1 << 0
VFIO_PCI_ATOMIC_COMP64: Final = 1 << 1
VFIO_PCI_ATOMIC_COMP128: Final = 1 << 2


class vfio_device_info_cap_pci_atomic_comp(UapiStruct):
    header: vfio_info_cap_header
    flags: int
    reserved: int
    _fields_ = [("header", vfio_info_cap_header), ("flags", _u32), ("reserved", _u32)]


class vfio_region_info(UapiStruct):
    argsz: int
    flags: int
    index: int
    cap_offset: int
    size: int
    offset: int
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("index", _u32),
        ("cap_offset", _u32),
        ("size", _u64),
        ("offset", _u64),
    ]


VFIO_REGION_INFO_FLAG_READ: Final = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE: Final = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP: Final = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS: Final = 1 << 3
VFIO_DEVICE_GET_REGION_INFO: Final = _IO(VFIO_TYPE, VFIO_BASE + 8)

VFIO_REGION_INFO_CAP_SPARSE_MMAP: Final = 1
VFIO_REGION_INFO_CAP_TYPE: Final = 2
VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: Final = 3
VFIO_REGION_INFO_CAP_NVLINK2_SSATGT: Final = 4
VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD: Final = 5


class vfio_region_info_cap_type(UapiStruct):
    header: vfio_info_cap_header
    type: int
    subtype: int
    _fields_ = [("header", vfio_info_cap_header), ("type", _u32), ("subtype", _u32)]


class vfio_irq_info(UapiStruct):
    argsz: int
    flags: int
    index: int
    count: int
    _fields_ = [("argsz", _u32), ("flags", _u32), ("index", _u32), ("count", _u32)]


VFIO_IRQ_INFO_EVENTFD: Final = 1 << 0
VFIO_IRQ_INFO_MASKABLE: Final = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED: Final = 1 << 2
VFIO_IRQ_INFO_NORESIZE: Final = 1 << 3
VFIO_DEVICE_GET_IRQ_INFO: Final = _IO(VFIO_TYPE, VFIO_BASE + 9)
VFIO_DEVICE_SET_IRQS: Final = _IO(VFIO_TYPE, VFIO_BASE + 10)


class vfio_irq_set(UapiStruct):
    """Fixed part (20 bytes); ``count`` entries of ``data[]`` follow (none, u8 or s32)."""

    argsz: int
    flags: int
    index: int
    start: int
    count: int
    _fields_ = [("argsz", _u32), ("flags", _u32), ("index", _u32), ("start", _u32),
                ("count", _u32)]


VFIO_IRQ_SET_DATA_NONE: Final = 1 << 0
VFIO_IRQ_SET_DATA_BOOL: Final = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD: Final = 1 << 2
VFIO_IRQ_SET_ACTION_MASK: Final = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK: Final = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER: Final = 1 << 5
VFIO_IRQ_SET_DATA_TYPE_MASK: Final = (VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL
                                      | VFIO_IRQ_SET_DATA_EVENTFD)
VFIO_IRQ_SET_ACTION_TYPE_MASK: Final = (VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK
                                        | VFIO_IRQ_SET_ACTION_TRIGGER)
#: ``offsetofend(struct vfio_irq_set, count)``
VFIO_IRQ_SET_MINSZ: Final = 20
VFIO_DEVICE_RESET: Final = _IO(VFIO_TYPE, VFIO_BASE + 11)
VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: Final = _IO(VFIO_TYPE, VFIO_BASE + 12)
VFIO_DEVICE_PCI_HOT_RESET: Final = _IO(VFIO_TYPE, VFIO_BASE + 13)
VFIO_DEVICE_QUERY_GFX_PLANE: Final = _IO(VFIO_TYPE, VFIO_BASE + 14)
VFIO_DEVICE_GET_GFX_DMABUF: Final = _IO(VFIO_TYPE, VFIO_BASE + 15)
VFIO_DEVICE_IOEVENTFD: Final = _IO(VFIO_TYPE, VFIO_BASE + 16)

# vfio-pci's fixed region and IRQ indexes; a region's fd offset is ``index << 40``.
VFIO_PCI_BAR0_REGION_INDEX: Final = 0
VFIO_PCI_BAR1_REGION_INDEX: Final = 1
VFIO_PCI_BAR2_REGION_INDEX: Final = 2
VFIO_PCI_BAR3_REGION_INDEX: Final = 3
VFIO_PCI_BAR4_REGION_INDEX: Final = 4
VFIO_PCI_BAR5_REGION_INDEX: Final = 5
VFIO_PCI_ROM_REGION_INDEX: Final = 6
VFIO_PCI_CONFIG_REGION_INDEX: Final = 7
VFIO_PCI_VGA_REGION_INDEX: Final = 8
VFIO_PCI_NUM_REGIONS: Final = 9
VFIO_PCI_INTX_IRQ_INDEX: Final = 0
VFIO_PCI_MSI_IRQ_INDEX: Final = 1
VFIO_PCI_MSIX_IRQ_INDEX: Final = 2
VFIO_PCI_ERR_IRQ_INDEX: Final = 3
VFIO_PCI_REQ_IRQ_INDEX: Final = 4
VFIO_PCI_NUM_IRQS: Final = 5
#: ``include/linux/vfio_pci_core.h``: the region index sits above bit 40 of the offset.
VFIO_PCI_OFFSET_SHIFT: Final = 40
VFIO_PCI_OFFSET_MASK: Final = (1 << VFIO_PCI_OFFSET_SHIFT) - 1


def VFIO_PCI_INDEX_TO_OFFSET(index: int) -> int:
    return index << VFIO_PCI_OFFSET_SHIFT


def VFIO_PCI_OFFSET_TO_INDEX(offset: int) -> int:
    return offset >> VFIO_PCI_OFFSET_SHIFT


class vfio_device_feature(UapiStruct):
    """Fixed part (8 bytes); the feature's data follows in ``data[]``."""

    argsz: int
    flags: int
    _fields_ = [("argsz", _u32), ("flags", _u32)]


VFIO_DEVICE_FEATURE_MASK: Final = 0xFFFF
VFIO_DEVICE_FEATURE_GET: Final = 1 << 16
VFIO_DEVICE_FEATURE_SET: Final = 1 << 17
VFIO_DEVICE_FEATURE_PROBE: Final = 1 << 18
#: Same number as VFIO_IOMMU_DIRTY_PAGES (a container ioctl).
VFIO_DEVICE_FEATURE: Final = _IO(VFIO_TYPE, VFIO_BASE + 17)

VFIO_DEVICE_FEATURE_PCI_VF_TOKEN: Final = 0
VFIO_DEVICE_FEATURE_MIGRATION: Final = 1
VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: Final = 2
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY: Final = 3
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP: Final = 4
VFIO_DEVICE_FEATURE_LOW_POWER_EXIT: Final = 5
VFIO_DEVICE_FEATURE_DMA_LOGGING_START: Final = 6
VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP: Final = 7
VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: Final = 8
VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: Final = 9
VFIO_DEVICE_FEATURE_BUS_MASTER: Final = 10
VFIO_DEVICE_FEATURE_DMA_BUF: Final = 11
VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2: Final = 12
VFIO_DEVICE_FEATURE_ZPCI_ERROR: Final = 13

#: ``vfio_device_feature_migration.flags``
VFIO_MIGRATION_STOP_COPY: Final = 1 << 0
VFIO_MIGRATION_P2P: Final = 1 << 1
VFIO_MIGRATION_PRE_COPY: Final = 1 << 2


class vfio_device_low_power_entry_with_wakeup(UapiStruct):
    wakeup_eventfd: int
    reserved: int
    _fields_ = [("wakeup_eventfd", _s32), ("reserved", _u32)]


class vfio_region_dma_range(UapiStruct):
    offset: int
    length: int
    _fields_ = [("offset", _u64), ("length", _u64)]


class vfio_device_feature_dma_buf(UapiStruct):
    """Fixed part (16 bytes); ``nr_ranges`` ``vfio_region_dma_range`` follow."""

    region_index: int
    open_flags: int
    flags: int
    nr_ranges: int
    _fields_ = [("region_index", _u32), ("open_flags", _u32), ("flags", _u32),
                ("nr_ranges", _u32)]


# --- tables -------------------------------------------------------------------------------

#: Container ioctls with a struct argument, as iommufd's VFIO compat layer (and type1)
#: reads them: ``min_size`` is the handler's ``minsz`` (``argsz`` below it is EINVAL).
#: VFIO_GET_API_VERSION, VFIO_CHECK_EXTENSION and VFIO_SET_IOMMU take no struct.
VFIO_CONTAINER_IOCTLS: Final[tuple[IoctlDesc, ...]] = (
    ioctl_op("VFIO_IOMMU_GET_INFO", VFIO_BASE + 12, vfio_iommu_type1_info, "iova_pgsizes"),
    ioctl_op("VFIO_IOMMU_MAP_DMA", VFIO_BASE + 13, vfio_iommu_type1_dma_map, "size"),
    ioctl_op("VFIO_IOMMU_UNMAP_DMA", VFIO_BASE + 14, vfio_iommu_type1_dma_unmap, "size"),
    ioctl_op("VFIO_IOMMU_DIRTY_PAGES", VFIO_BASE + 17, vfio_iommu_type1_dirty_bitmap, "flags"),
)

#: Device cdev ioctls (``drivers/vfio/device_cdev.c``): ``min_size`` is the ``minsz``
#: without the PASID flag (with it, ATTACH needs 16 and DETACH 12: ``offsetofend(pasid)``).
VFIO_CDEV_IOCTLS: Final[tuple[IoctlDesc, ...]] = (
    ioctl_op("VFIO_DEVICE_BIND_IOMMUFD", VFIO_BASE + 18, vfio_device_bind_iommufd, "out_devid"),
    ioctl_op("VFIO_DEVICE_ATTACH_IOMMUFD_PT", VFIO_BASE + 19, vfio_device_attach_iommufd_pt,
             "pt_id"),
    ioctl_op("VFIO_DEVICE_DETACH_IOMMUFD_PT", VFIO_BASE + 20, vfio_device_detach_iommufd_pt,
             "flags"),
)

#: Ioctls of a bound device fd (``vfio_main.c`` and ``vfio_pci_core.c``) with a struct
#: argument: ``min_size`` is the handler's ``minsz``. VFIO_DEVICE_FEATURE shares its number
#: with the container's VFIO_IOMMU_DIRTY_PAGES, so this table is keyed apart.
VFIO_DEVICE_IOCTLS: Final[tuple[IoctlDesc, ...]] = (
    ioctl_op("VFIO_DEVICE_GET_INFO", VFIO_BASE + 7, vfio_device_info, "num_irqs"),
    ioctl_op("VFIO_DEVICE_GET_REGION_INFO", VFIO_BASE + 8, vfio_region_info, "offset"),
    ioctl_op("VFIO_DEVICE_GET_IRQ_INFO", VFIO_BASE + 9, vfio_irq_info, "count"),
    ioctl_op("VFIO_DEVICE_SET_IRQS", VFIO_BASE + 10, vfio_irq_set, "count"),
    ioctl_op("VFIO_DEVICE_FEATURE", VFIO_BASE + 17, vfio_device_feature, "flags"),
)

#: Both tables keyed by request number.
VFIO_IOCTLS_BY_REQUEST: Final[Mapping[int, IoctlDesc]] = MappingProxyType(
    {op.request: op for op in VFIO_CONTAINER_IOCTLS + VFIO_CDEV_IOCTLS})
