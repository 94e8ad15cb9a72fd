"""The iommufd user ABI (``include/uapi/linux/iommufd.h``) as ctypes, byte for byte.

Sources (layouts and numbers re-checked with gcc on x86_64):

* ``include/uapi/linux/iommufd.h`` at torvalds/linux@b4d90dbc4c1b (commands 0x80..0x94,
  ending at ``IOMMU_HW_QUEUE_ALLOC``), and Linux 7.3 for ``IOMMU_IOAS_NOIOMMU_GET_PA``
  (0x95) and ``struct iommu_ioas_noiommu_get_pa``;
* the AMD additions (``iommu_hwpt_amd_guest``, ``iommu_hw_info_amd``,
  ``IOMMU_HWPT_DATA_AMD_GUEST``, ``IOMMU_HW_INFO_TYPE_AMD``, ``IOMMU_VIOMMU_TYPE_AMD``,
  ``iommu_viommu_amd``) from AMDESE/linux-iommu@0062055858ca;
* ``IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED`` and
  ``IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI``: used by 2026 kernel code
  (``device.c``, ``arm-smmu-v3-iommufd.c``); values from a 2026 transcription of the header.

Conventions:

* Every struct is a :class:`ctypes.LittleEndianStructure` whose fields use the kernel's
  types (``__u32`` -> ``c_uint32``; ``__aligned_u64`` / ``__aligned_le64`` -> ``c_uint64``,
  8-byte aligned on every 64-bit ABI). Anonymous C unions are ``_anonymous_`` members, so
  ``hw_info.in_data_type`` works as in C.
* Fields named ``__reserved`` keep the kernel's name; read them with
  ``getattr(obj, "__reserved")`` or :func:`field_int` (Python mangles ``obj.__reserved``
  written inside a class body).
* Every iommufd command is ``_IO(';', nr)``: no size and no direction bits.

This module is data only. It imports nothing from the simulation, so drivers may import it.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeAlias, TypeVar

if ctypes.alignment(ctypes.c_uint64) != 8 or ctypes.sizeof(ctypes.c_void_p) != 8:
    raise ImportError("iommufd.uapi models the 64-bit Linux ABI (8-byte aligned __u64)")

# ---------------------------------------------------------------------------------------
# ioctl request encoding (include/uapi/asm-generic/ioctl.h; x86 and arm64 use it as is)
# ---------------------------------------------------------------------------------------

_IOC_NRBITS: Final = 8
_IOC_TYPEBITS: Final = 8
_IOC_SIZEBITS: Final = 14
_IOC_DIRBITS: Final = 2

_IOC_NRMASK: Final = (1 << _IOC_NRBITS) - 1
_IOC_TYPEMASK: Final = (1 << _IOC_TYPEBITS) - 1
_IOC_SIZEMASK: Final = (1 << _IOC_SIZEBITS) - 1
_IOC_DIRMASK: Final = (1 << _IOC_DIRBITS) - 1

_IOC_NRSHIFT: Final = 0
_IOC_TYPESHIFT: Final = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT: Final = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT: Final = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE: Final = 0
_IOC_WRITE: Final = 1
_IOC_READ: Final = 2

#: The size argument of the _IOR/_IOW/_IOWR helpers (a byte count or a ctypes type).
IocSize: TypeAlias = "int | type[Any]"


def _ioc_type(type_: int | str) -> int:
    if isinstance(type_, str):
        if len(type_) != 1:
            raise ValueError(f"ioctl type must be one character, not {type_!r}")
        return ord(type_)
    return type_


def _ioc_size(size: IocSize) -> int:
    return size if isinstance(size, int) else ctypes.sizeof(size)


def _IOC(dir: int, type: int | str, nr: int, size: int) -> int:
    """``_IOC(dir, type, nr, size)``: pack an ioctl request number."""
    t = _ioc_type(type)
    for what, val, mask in (("dir", dir, _IOC_DIRMASK), ("type", t, _IOC_TYPEMASK),
                            ("nr", nr, _IOC_NRMASK), ("size", size, _IOC_SIZEMASK)):
        if not 0 <= val <= mask:
            raise ValueError(f"ioctl {what} {val:#x} does not fit in its field (max {mask:#x})")
    return ((dir << _IOC_DIRSHIFT) | (t << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT)
            | (size << _IOC_SIZESHIFT))


def _IO(type: int | str, nr: int) -> int:
    """``_IO(type, nr)``: no argument size, no direction (every iommufd and VFIO ioctl)."""
    return _IOC(_IOC_NONE, type, nr, 0)


def _IOR(type: int | str, nr: int, size: IocSize) -> int:
    """``_IOR(type, nr, T)``: the kernel writes a ``T`` to user space."""
    return _IOC(_IOC_READ, type, nr, _ioc_size(size))


def _IOW(type: int | str, nr: int, size: IocSize) -> int:
    """``_IOW(type, nr, T)``: the kernel reads a ``T`` from user space."""
    return _IOC(_IOC_WRITE, type, nr, _ioc_size(size))


def _IOWR(type: int | str, nr: int, size: IocSize) -> int:
    """``_IOWR(type, nr, T)``: both directions."""
    return _IOC(_IOC_READ | _IOC_WRITE, type, nr, _ioc_size(size))


def _IOC_DIR(cmd: int) -> int:
    return (cmd >> _IOC_DIRSHIFT) & _IOC_DIRMASK


def _IOC_TYPE(cmd: int) -> int:
    return (cmd >> _IOC_TYPESHIFT) & _IOC_TYPEMASK


def _IOC_NR(cmd: int) -> int:
    return (cmd >> _IOC_NRSHIFT) & _IOC_NRMASK


def _IOC_SIZE(cmd: int) -> int:
    return (cmd >> _IOC_SIZESHIFT) & _IOC_SIZEMASK


# ---------------------------------------------------------------------------------------
# ctypes plumbing and helpers
# ---------------------------------------------------------------------------------------

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64  # __u64, __aligned_u64 and __aligned_le64 on a 64-bit LE ABI


def _fmt(val: object) -> str:
    if isinstance(val, ctypes.Array):
        return "[" + ", ".join(_fmt(v) for v in val) + "]"
    if isinstance(val, int):
        return hex(val) if val > 9 else str(val)
    return repr(val)


class UapiStruct(ctypes.LittleEndianStructure):
    """Base of every uAPI struct: a C struct with the kernel's layout, and a readable repr."""

    def __repr__(self) -> str:
        parts = [f"{name}={_fmt(getattr(self, name))}" for name, *_ in self._fields_]
        return f"{type(self).__name__}({', '.join(parts)})"


class UapiUnion(ctypes.LittleEndianUnion):
    """Base of every uAPI union."""

    def __repr__(self) -> str:
        parts = [f"{name}={_fmt(getattr(self, name))}" for name, *_ in self._fields_]
        return f"{type(self).__name__}({', '.join(parts)})"


#: Any ctypes struct or union type (uAPI or not).
CStruct: TypeAlias = "ctypes.Structure | ctypes.Union"
S = TypeVar("S", bound="ctypes.Structure | ctypes.Union")


def _member(ctype: type[Any], name: str) -> tuple[int, int, type[Any]] | None:
    """(offset, size, type) of ``name`` in ``ctype``, looking through anonymous members."""
    fields = getattr(ctype, "_fields_", None)
    if fields is None:
        return None
    for fname, ftype, *_ in fields:
        if fname == name:
            desc = getattr(ctype, fname)
            return int(desc.offset), int(desc.size), ftype
    for anon in getattr(ctype, "_anonymous_", ()):
        atype = next(f[1] for f in fields if f[0] == anon)
        found = _member(atype, name)
        if found is not None:
            return int(getattr(ctype, anon).offset) + found[0], found[1], found[2]
    return None


def _resolve(struct: type[Any], field: str) -> tuple[int, int]:
    off = 0
    size = 0
    ctype: type[Any] = struct
    for part in field.split("."):
        found = _member(ctype, part)
        if found is None:
            raise AttributeError(f"struct {struct.__name__} has no field {field!r}")
        off += found[0]
        size = found[1]
        ctype = found[2]
    return off, size


def offsetof(struct: type[Any], field: str) -> int:
    """``offsetof(struct, field)``; ``field`` may be a dotted path (``"dirty.uptr"``) and
    may name a member of an anonymous union directly (``"in_data_type"``)."""
    return _resolve(struct, field)[0]


def fieldsize(struct: type[Any], field: str) -> int:
    """``sizeof(((struct *)0)->field)``."""
    return _resolve(struct, field)[1]


def offsetofend(struct: type[Any], field: str) -> int:
    """``offsetofend(struct, field)``: offset of the first byte after ``field``."""
    off, size = _resolve(struct, field)
    return off + size


def struct_bytes(obj: ctypes.Structure | ctypes.Union | ctypes.Array[Any]) -> bytes:
    """The raw bytes of a ctypes object (its full ``sizeof``)."""
    return ctypes.string_at(ctypes.addressof(obj), ctypes.sizeof(obj))


def from_bytes(struct_type: type[S], data: bytes | bytearray | memoryview) -> S:
    """A new ``struct_type`` built from ``data``: short data is zero-filled (as
    ``copy_struct_from_user`` does for an older, smaller user struct), longer data is
    truncated to ``sizeof``."""
    obj = struct_type()
    raw = bytes(data[: ctypes.sizeof(struct_type)])
    ctypes.memmove(ctypes.addressof(obj), raw, len(raw))
    return obj


def field_int(obj: ctypes.Structure | ctypes.Union, name: str) -> int:
    """An integer field by name, typed (handy for ``__reserved`` fields)."""
    return int(getattr(obj, name))


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------

IOMMUFD_TYPE: Final = ord(";")  # 0x3b, shared with VFIO_TYPE

IOMMUFD_CMD_BASE: Final = 0x80
IOMMUFD_CMD_DESTROY: Final = IOMMUFD_CMD_BASE
IOMMUFD_CMD_IOAS_ALLOC: Final = 0x81
IOMMUFD_CMD_IOAS_ALLOW_IOVAS: Final = 0x82
IOMMUFD_CMD_IOAS_COPY: Final = 0x83
IOMMUFD_CMD_IOAS_IOVA_RANGES: Final = 0x84
IOMMUFD_CMD_IOAS_MAP: Final = 0x85
IOMMUFD_CMD_IOAS_UNMAP: Final = 0x86
IOMMUFD_CMD_OPTION: Final = 0x87
IOMMUFD_CMD_VFIO_IOAS: Final = 0x88
IOMMUFD_CMD_HWPT_ALLOC: Final = 0x89
IOMMUFD_CMD_GET_HW_INFO: Final = 0x8A
IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING: Final = 0x8B
IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP: Final = 0x8C
IOMMUFD_CMD_HWPT_INVALIDATE: Final = 0x8D
IOMMUFD_CMD_FAULT_QUEUE_ALLOC: Final = 0x8E
IOMMUFD_CMD_IOAS_MAP_FILE: Final = 0x8F
IOMMUFD_CMD_VIOMMU_ALLOC: Final = 0x90
IOMMUFD_CMD_VDEVICE_ALLOC: Final = 0x91
IOMMUFD_CMD_IOAS_CHANGE_PROCESS: Final = 0x92
IOMMUFD_CMD_VEVENTQ_ALLOC: Final = 0x93
IOMMUFD_CMD_HW_QUEUE_ALLOC: Final = 0x94
IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA: Final = 0x95  # new in 7.3

# ---------------------------------------------------------------------------------------
# Core command structs
# ---------------------------------------------------------------------------------------


class iommu_destroy(UapiStruct):
    size: int
    id: int
    _fields_ = [("size", _u32), ("id", _u32)]


class iommu_ioas_alloc(UapiStruct):
    size: int
    flags: int
    out_ioas_id: int
    _fields_ = [("size", _u32), ("flags", _u32), ("out_ioas_id", _u32)]


class iommu_iova_range(UapiStruct):
    start: int
    last: int
    _fields_ = [("start", _u64), ("last", _u64)]


class iommu_ioas_iova_ranges(UapiStruct):
    size: int
    ioas_id: int
    num_iovas: int
    allowed_iovas: int
    out_iova_alignment: int
    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("num_iovas", _u32),
        ("__reserved", _u32),
        ("allowed_iovas", _u64),
        ("out_iova_alignment", _u64),
    ]


class iommu_ioas_allow_iovas(UapiStruct):
    size: int
    ioas_id: int
    num_iovas: int
    allowed_iovas: int
    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("num_iovas", _u32),
        ("__reserved", _u32),
        ("allowed_iovas", _u64),
    ]


# enum iommufd_ioas_map_flags (MAP, MAP_FILE, COPY)
IOMMU_IOAS_MAP_FIXED_IOVA: Final = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE: Final = 1 << 1
IOMMU_IOAS_MAP_READABLE: Final = 1 << 2


class iommu_ioas_map(UapiStruct):
    size: int
    flags: int
    ioas_id: int
    user_va: int
    length: int
    iova: int
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("ioas_id", _u32),
        ("__reserved", _u32),
        ("user_va", _u64),
        ("length", _u64),
        ("iova", _u64),
    ]


class iommu_ioas_noiommu_get_pa(UapiStruct):
    """Physical address behind an IOVA of an IOAS, for noiommu devices (unsafe DMA).
    ``length``: in, the most bytes to query (non-zero); out, the physically contiguous
    bytes from ``out_phys``, capped by the input."""

    size: int
    flags: int
    ioas_id: int
    iova: int
    length: int
    out_phys: int
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("ioas_id", _u32),
        ("__reserved", _u32),
        ("iova", _u64),
        ("length", _u64),
        ("out_phys", _u64),
    ]


class iommu_ioas_map_file(UapiStruct):
    size: int
    flags: int
    ioas_id: int
    fd: int
    start: int
    length: int
    iova: int
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("ioas_id", _u32),
        ("fd", _s32),
        ("start", _u64),
        ("length", _u64),
        ("iova", _u64),
    ]


class iommu_ioas_copy(UapiStruct):
    size: int
    flags: int
    dst_ioas_id: int
    src_ioas_id: int
    length: int
    dst_iova: int
    src_iova: int
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("dst_ioas_id", _u32),
        ("src_ioas_id", _u32),
        ("length", _u64),
        ("dst_iova", _u64),
        ("src_iova", _u64),
    ]


class iommu_ioas_unmap(UapiStruct):
    size: int
    ioas_id: int
    iova: int
    length: int
    _fields_ = [("size", _u32), ("ioas_id", _u32), ("iova", _u64), ("length", _u64)]


# enum iommufd_option
IOMMU_OPTION_RLIMIT_MODE: Final = 0
IOMMU_OPTION_HUGE_PAGES: Final = 1
# enum iommufd_option_ops
IOMMU_OPTION_OP_SET: Final = 0
IOMMU_OPTION_OP_GET: Final = 1


class iommu_option(UapiStruct):
    size: int
    option_id: int
    op: int
    object_id: int
    val64: int
    _fields_ = [
        ("size", _u32),
        ("option_id", _u32),
        ("op", _u16),
        ("__reserved", _u16),
        ("object_id", _u32),
        ("val64", _u64),
    ]


# enum iommufd_vfio_ioas_op
IOMMU_VFIO_IOAS_GET: Final = 0
IOMMU_VFIO_IOAS_SET: Final = 1
IOMMU_VFIO_IOAS_CLEAR: Final = 2


class iommu_vfio_ioas(UapiStruct):
    size: int
    ioas_id: int
    op: int
    _fields_ = [("size", _u32), ("ioas_id", _u32), ("op", _u16), ("__reserved", _u16)]


# enum iommufd_hwpt_alloc_flags
IOMMU_HWPT_ALLOC_NEST_PARENT: Final = 1 << 0
IOMMU_HWPT_ALLOC_DIRTY_TRACKING: Final = 1 << 1
IOMMU_HWPT_FAULT_ID_VALID: Final = 1 << 2
IOMMU_HWPT_ALLOC_PASID: Final = 1 << 3

# enum iommu_hwpt_vtd_s1_flags (u64 iommu_hwpt_vtd_s1.flags)
IOMMU_VTD_S1_SRE: Final = 1 << 0
IOMMU_VTD_S1_EAFE: Final = 1 << 1
IOMMU_VTD_S1_WPE: Final = 1 << 2


class iommu_hwpt_vtd_s1(UapiStruct):
    """Intel VT-d stage-1 page table (``IOMMU_HWPT_DATA_VTD_S1``)."""

    flags: int
    pgtbl_addr: int
    addr_width: int
    _fields_ = [("flags", _u64), ("pgtbl_addr", _u64), ("addr_width", _u32), ("__reserved", _u32)]


class iommu_hwpt_arm_smmuv3(UapiStruct):
    """ARM SMMUv3 nested STE, double words 0-1, little-endian (``IOMMU_HWPT_DATA_ARM_SMMUV3``)."""

    ste: ctypes.Array[ctypes.c_uint64]
    _fields_ = [("ste", _u64 * 2)]


class iommu_hwpt_amd_guest(UapiStruct):
    """AMD guest Device Table Entry (``IOMMU_HWPT_DATA_AMD_GUEST``; AMD tree)."""

    dte: ctypes.Array[ctypes.c_uint64]
    _fields_ = [("dte", _u64 * 4)]


# enum iommu_hwpt_data_type
IOMMU_HWPT_DATA_NONE: Final = 0
IOMMU_HWPT_DATA_VTD_S1: Final = 1
IOMMU_HWPT_DATA_ARM_SMMUV3: Final = 2
IOMMU_HWPT_DATA_AMD_GUEST: Final = 3  # AMD tree


class iommu_hwpt_alloc(UapiStruct):
    size: int
    flags: int
    dev_id: int
    pt_id: int
    out_hwpt_id: int
    data_type: int
    data_len: int
    data_uptr: int
    fault_id: int
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("dev_id", _u32),
        ("pt_id", _u32),
        ("out_hwpt_id", _u32),
        ("__reserved", _u32),
        ("data_type", _u32),
        ("data_len", _u32),
        ("data_uptr", _u64),
        ("fault_id", _u32),
        ("__reserved2", _u32),
    ]


# enum iommu_hw_info_vtd_flags
IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17: Final = 1 << 0


class iommu_hw_info_vtd(UapiStruct):
    flags: int
    cap_reg: int
    ecap_reg: int
    _fields_ = [("flags", _u32), ("__reserved", _u32), ("cap_reg", _u64), ("ecap_reg", _u64)]


# ARM SMMUv3 hw_info flags (newest kernels; see the module docstring)
IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI: Final = 1 << 0


class iommu_hw_info_arm_smmuv3(UapiStruct):
    flags: int
    idr: ctypes.Array[ctypes.c_uint32]
    iidr: int
    aidr: int
    _fields_ = [
        ("flags", _u32),
        ("__reserved", _u32),
        ("idr", _u32 * 6),
        ("iidr", _u32),
        ("aidr", _u32),
    ]


class iommu_hw_info_tegra241_cmdqv(UapiStruct):
    flags: int
    version: int
    log2vcmdqs: int
    log2vsids: int
    _fields_ = [
        ("flags", _u32),
        ("version", _u8),
        ("log2vcmdqs", _u8),
        ("log2vsids", _u8),
        ("__reserved", _u8),
    ]


class iommu_hw_info_amd(UapiStruct):
    """AMD EFR/EFR2 (AMD tree; a later patch proposes ``control_register`` -> 24 bytes)."""

    efr: int
    efr2: int
    _fields_ = [("efr", _u64), ("efr2", _u64)]


# enum iommu_hw_info_type
IOMMU_HW_INFO_TYPE_NONE: Final = 0
IOMMU_HW_INFO_TYPE_DEFAULT: Final = 0  # input alias of NONE
IOMMU_HW_INFO_TYPE_INTEL_VTD: Final = 1
IOMMU_HW_INFO_TYPE_ARM_SMMUV3: Final = 2
IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV: Final = 3
IOMMU_HW_INFO_TYPE_AMD: Final = 4  # AMD tree

# enum iommufd_hw_capabilities (u64 out_capabilities)
IOMMU_HW_CAP_DIRTY_TRACKING: Final = 1 << 0
IOMMU_HW_CAP_PCI_PASID_EXEC: Final = 1 << 1
IOMMU_HW_CAP_PCI_PASID_PRIV: Final = 1 << 2
IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED: Final = 1 << 3  # newest kernels

# enum iommufd_hw_info_flags
IOMMU_HW_INFO_FLAG_INPUT_TYPE: Final = 1 << 0


class iommu_hw_info_data_type(UapiUnion):
    """The anonymous ``union { __u32 in_data_type; __u32 out_data_type; }``."""

    in_data_type: int
    out_data_type: int
    _fields_ = [("in_data_type", _u32), ("out_data_type", _u32)]


class iommu_hw_info(UapiStruct):
    size: int
    flags: int
    dev_id: int
    data_len: int
    data_uptr: int
    in_data_type: int
    out_data_type: int
    out_max_pasid_log2: int
    out_capabilities: int
    _anonymous_ = ("_u",)
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("dev_id", _u32),
        ("data_len", _u32),
        ("data_uptr", _u64),
        ("_u", iommu_hw_info_data_type),
        ("out_max_pasid_log2", _u8),
        ("__reserved", _u8 * 3),
        ("out_capabilities", _u64),
    ]


# enum iommufd_hwpt_set_dirty_tracking_flags
IOMMU_HWPT_DIRTY_TRACKING_ENABLE: Final = 1


class iommu_hwpt_set_dirty_tracking(UapiStruct):
    size: int
    flags: int
    hwpt_id: int
    _fields_ = [("size", _u32), ("flags", _u32), ("hwpt_id", _u32), ("__reserved", _u32)]


# enum iommufd_hwpt_get_dirty_bitmap_flags
IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR: Final = 1


class iommu_hwpt_get_dirty_bitmap(UapiStruct):
    size: int
    hwpt_id: int
    flags: int
    iova: int
    length: int
    page_size: int
    data: int
    _fields_ = [
        ("size", _u32),
        ("hwpt_id", _u32),
        ("flags", _u32),
        ("__reserved", _u32),
        ("iova", _u64),
        ("length", _u64),
        ("page_size", _u64),
        ("data", _u64),
    ]


# enum iommu_hwpt_invalidate_data_type (one enum for nested-HWPT and vIOMMU targets)
IOMMU_HWPT_INVALIDATE_DATA_VTD_S1: Final = 0
IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3: Final = 1

# enum iommu_hwpt_vtd_s1_invalidate_flags
IOMMU_VTD_INV_FLAGS_LEAF: Final = 1 << 0


class iommu_hwpt_vtd_s1_invalidate(UapiStruct):
    addr: int
    npages: int
    flags: int
    _fields_ = [("addr", _u64), ("npages", _u64), ("flags", _u32), ("__reserved", _u32)]


class iommu_viommu_arm_smmuv3_invalidate(UapiStruct):
    """One 128-bit SMMUv3 CMDQ command, little-endian."""

    cmd: ctypes.Array[ctypes.c_uint64]
    _fields_ = [("cmd", _u64 * 2)]


class iommu_hwpt_invalidate(UapiStruct):
    size: int
    hwpt_id: int
    data_uptr: int
    data_type: int
    entry_len: int
    entry_num: int
    _fields_ = [
        ("size", _u32),
        ("hwpt_id", _u32),
        ("data_uptr", _u64),
        ("data_type", _u32),
        ("entry_len", _u32),
        ("entry_num", _u32),
        ("__reserved", _u32),
    ]


# enum iommu_hwpt_pgfault_flags
IOMMU_PGFAULT_FLAGS_PASID_VALID: Final = 1 << 0
IOMMU_PGFAULT_FLAGS_LAST_PAGE: Final = 1 << 1

# enum iommu_hwpt_pgfault_perm
IOMMU_PGFAULT_PERM_READ: Final = 1 << 0
IOMMU_PGFAULT_PERM_WRITE: Final = 1 << 1
IOMMU_PGFAULT_PERM_EXEC: Final = 1 << 2
IOMMU_PGFAULT_PERM_PRIV: Final = 1 << 3


class iommu_hwpt_pgfault(UapiStruct):
    """One page-request record, read from a fault fd (40 bytes)."""

    flags: int
    dev_id: int
    pasid: int
    grpid: int
    perm: int
    addr: int
    length: int
    cookie: int
    _fields_ = [
        ("flags", _u32),
        ("dev_id", _u32),
        ("pasid", _u32),
        ("grpid", _u32),
        ("perm", _u32),
        ("__reserved", _u32),
        ("addr", _u64),
        ("length", _u32),
        ("cookie", _u32),
    ]


# enum iommufd_page_response_code
IOMMUFD_PAGE_RESP_SUCCESS: Final = 0
IOMMUFD_PAGE_RESP_INVALID: Final = 1


class iommu_hwpt_page_response(UapiStruct):
    """One response, written to a fault fd (8 bytes)."""

    cookie: int
    code: int
    _fields_ = [("cookie", _u32), ("code", _u32)]


class iommu_fault_alloc(UapiStruct):
    size: int
    flags: int
    out_fault_id: int
    out_fault_fd: int
    _fields_ = [("size", _u32), ("flags", _u32), ("out_fault_id", _u32), ("out_fault_fd", _u32)]


# enum iommu_viommu_type
IOMMU_VIOMMU_TYPE_DEFAULT: Final = 0  # reserved
IOMMU_VIOMMU_TYPE_ARM_SMMUV3: Final = 1
IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV: Final = 2
IOMMU_VIOMMU_TYPE_AMD: Final = 3  # AMD tree


class iommu_viommu_tegra241_cmdqv(UapiStruct):
    out_vintf_mmap_offset: int
    out_vintf_mmap_length: int
    _fields_ = [("out_vintf_mmap_offset", _u64), ("out_vintf_mmap_length", _u64)]


class iommu_viommu_amd(UapiStruct):
    """AMD vIOMMU data (AMD tree): ``reserved`` must be 0."""

    reserved: int
    _fields_ = [("reserved", _u32)]


class iommu_viommu_alloc(UapiStruct):
    size: int
    flags: int
    type: int
    dev_id: int
    hwpt_id: int
    out_viommu_id: int
    data_len: int
    data_uptr: int
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("type", _u32),
        ("dev_id", _u32),
        ("hwpt_id", _u32),
        ("out_viommu_id", _u32),
        ("data_len", _u32),
        ("__reserved", _u32),
        ("data_uptr", _u64),
    ]


class iommu_vdevice_alloc(UapiStruct):
    size: int
    viommu_id: int
    dev_id: int
    out_vdevice_id: int
    virt_id: int
    _fields_ = [
        ("size", _u32),
        ("viommu_id", _u32),
        ("dev_id", _u32),
        ("out_vdevice_id", _u32),
        ("virt_id", _u64),
    ]


class iommu_ioas_change_process(UapiStruct):
    size: int
    _fields_ = [("size", _u32), ("__reserved", _u32)]


# enum iommu_veventq_flag
IOMMU_VEVENTQ_FLAG_LOST_EVENTS: Final = 1 << 0


class iommufd_vevent_header(UapiStruct):
    """Header of every record read from a vEVENTQ fd (8 bytes)."""

    flags: int
    sequence: int
    _fields_ = [("flags", _u32), ("sequence", _u32)]


# enum iommu_veventq_type
IOMMU_VEVENTQ_TYPE_DEFAULT: Final = 0  # reserved
IOMMU_VEVENTQ_TYPE_ARM_SMMUV3: Final = 1
IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV: Final = 2


class iommu_vevent_arm_smmuv3(UapiStruct):
    """A 256-bit SMMUv3 event record, little-endian; StreamID carries the vSID."""

    evt: ctypes.Array[ctypes.c_uint64]
    _fields_ = [("evt", _u64 * 4)]


class iommu_vevent_tegra241_cmdqv(UapiStruct):
    lvcmdq_err_map: ctypes.Array[ctypes.c_uint64]
    _fields_ = [("lvcmdq_err_map", _u64 * 2)]


class iommu_veventq_alloc(UapiStruct):
    size: int
    flags: int
    viommu_id: int
    type: int
    veventq_depth: int
    out_veventq_id: int
    out_veventq_fd: int
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("viommu_id", _u32),
        ("type", _u32),
        ("veventq_depth", _u32),
        ("out_veventq_id", _u32),
        ("out_veventq_fd", _u32),
        ("__reserved", _u32),
    ]


# enum iommu_hw_queue_type
IOMMU_HW_QUEUE_TYPE_DEFAULT: Final = 0  # reserved
IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV: Final = 1


class iommu_hw_queue_alloc(UapiStruct):
    size: int
    flags: int
    viommu_id: int
    type: int
    index: int
    out_hw_queue_id: int
    nesting_parent_iova: int
    length: int
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("viommu_id", _u32),
        ("type", _u32),
        ("index", _u32),
        ("out_hw_queue_id", _u32),
        ("nesting_parent_iova", _u64),
        ("length", _u64),
    ]


# ---------------------------------------------------------------------------------------
# Request numbers and the command table (drivers/iommu/iommufd/main.c IOCTL_OP())
# ---------------------------------------------------------------------------------------

IOMMU_DESTROY: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)
IOMMU_IOAS_ALLOC: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)
IOMMU_IOAS_ALLOW_IOVAS: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS)
IOMMU_IOAS_COPY: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY)
IOMMU_IOAS_IOVA_RANGES: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)
IOMMU_IOAS_MAP: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)
IOMMU_IOAS_UNMAP: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)
IOMMU_OPTION: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION)
IOMMU_VFIO_IOAS: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS)
IOMMU_HWPT_ALLOC: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)
IOMMU_GET_HW_INFO: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)
IOMMU_HWPT_SET_DIRTY_TRACKING: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING)
IOMMU_HWPT_GET_DIRTY_BITMAP: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP)
IOMMU_HWPT_INVALIDATE: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE)
IOMMU_FAULT_QUEUE_ALLOC: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC)
IOMMU_IOAS_MAP_FILE: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE)
IOMMU_VIOMMU_ALLOC: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC)
IOMMU_VDEVICE_ALLOC: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_ALLOC)
IOMMU_IOAS_CHANGE_PROCESS: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS)
IOMMU_VEVENTQ_ALLOC: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VEVENTQ_ALLOC)
IOMMU_HW_QUEUE_ALLOC: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HW_QUEUE_ALLOC)
IOMMU_IOAS_NOIOMMU_GET_PA: Final = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA)


@dataclass(frozen=True, slots=True)
class IoctlDesc:
    """One row of the kernel's ioctl table (``struct iommufd_ioctl_op``)."""

    #: The request macro's name, e.g. ``"IOMMU_IOAS_MAP"``.
    name: str
    #: ``_IOC_NR(request)``.
    nr: int
    #: The full request number (``ioctl_num``); dispatch compares it exactly.
    request: int
    #: The argument struct; ``sizeof`` is what the kernel copies.
    struct: type[ctypes.Structure]
    #: The ``last`` member named in ``IOCTL_OP()``.
    last: str
    #: ``offsetofend(struct, last)``: a smaller ``size`` is EINVAL.
    min_size: int

    @property
    def size(self) -> int:
        """``sizeof(struct)``."""
        return ctypes.sizeof(self.struct)


def ioctl_op(name: str, nr: int, struct: type[ctypes.Structure], last: str,
             type_: int = IOMMUFD_TYPE) -> IoctlDesc:
    """Build an :class:`IoctlDesc` the way ``IOCTL_OP(_ioctl, _fn, _struct, _last)`` does:
    request ``_IO(type, nr)`` and ``min_size = offsetofend(struct, last)``."""
    return IoctlDesc(name=name, nr=nr, request=_IO(type_, nr), struct=struct, last=last,
                     min_size=offsetofend(struct, last))


#: The iommufd command table, in ``nr`` order (0x80..0x95, no holes).
IOMMUFD_IOCTLS: Final[tuple[IoctlDesc, ...]] = (
    ioctl_op("IOMMU_DESTROY", IOMMUFD_CMD_DESTROY, iommu_destroy, "id"),
    ioctl_op("IOMMU_IOAS_ALLOC", IOMMUFD_CMD_IOAS_ALLOC, iommu_ioas_alloc, "out_ioas_id"),
    ioctl_op("IOMMU_IOAS_ALLOW_IOVAS", IOMMUFD_CMD_IOAS_ALLOW_IOVAS, iommu_ioas_allow_iovas,
             "allowed_iovas"),
    ioctl_op("IOMMU_IOAS_COPY", IOMMUFD_CMD_IOAS_COPY, iommu_ioas_copy, "src_iova"),
    ioctl_op("IOMMU_IOAS_IOVA_RANGES", IOMMUFD_CMD_IOAS_IOVA_RANGES, iommu_ioas_iova_ranges,
             "out_iova_alignment"),
    ioctl_op("IOMMU_IOAS_MAP", IOMMUFD_CMD_IOAS_MAP, iommu_ioas_map, "iova"),
    ioctl_op("IOMMU_IOAS_UNMAP", IOMMUFD_CMD_IOAS_UNMAP, iommu_ioas_unmap, "length"),
    ioctl_op("IOMMU_OPTION", IOMMUFD_CMD_OPTION, iommu_option, "val64"),
    ioctl_op("IOMMU_VFIO_IOAS", IOMMUFD_CMD_VFIO_IOAS, iommu_vfio_ioas, "__reserved"),
    ioctl_op("IOMMU_HWPT_ALLOC", IOMMUFD_CMD_HWPT_ALLOC, iommu_hwpt_alloc, "__reserved"),
    ioctl_op("IOMMU_GET_HW_INFO", IOMMUFD_CMD_GET_HW_INFO, iommu_hw_info, "__reserved"),
    ioctl_op("IOMMU_HWPT_SET_DIRTY_TRACKING", IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING,
             iommu_hwpt_set_dirty_tracking, "__reserved"),
    ioctl_op("IOMMU_HWPT_GET_DIRTY_BITMAP", IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP,
             iommu_hwpt_get_dirty_bitmap, "data"),
    ioctl_op("IOMMU_HWPT_INVALIDATE", IOMMUFD_CMD_HWPT_INVALIDATE, iommu_hwpt_invalidate,
             "__reserved"),
    ioctl_op("IOMMU_FAULT_QUEUE_ALLOC", IOMMUFD_CMD_FAULT_QUEUE_ALLOC, iommu_fault_alloc,
             "out_fault_fd"),
    ioctl_op("IOMMU_IOAS_MAP_FILE", IOMMUFD_CMD_IOAS_MAP_FILE, iommu_ioas_map_file, "iova"),
    ioctl_op("IOMMU_VIOMMU_ALLOC", IOMMUFD_CMD_VIOMMU_ALLOC, iommu_viommu_alloc,
             "out_viommu_id"),
    ioctl_op("IOMMU_VDEVICE_ALLOC", IOMMUFD_CMD_VDEVICE_ALLOC, iommu_vdevice_alloc, "virt_id"),
    ioctl_op("IOMMU_IOAS_CHANGE_PROCESS", IOMMUFD_CMD_IOAS_CHANGE_PROCESS,
             iommu_ioas_change_process, "__reserved"),
    ioctl_op("IOMMU_VEVENTQ_ALLOC", IOMMUFD_CMD_VEVENTQ_ALLOC, iommu_veventq_alloc,
             "out_veventq_fd"),
    ioctl_op("IOMMU_HW_QUEUE_ALLOC", IOMMUFD_CMD_HW_QUEUE_ALLOC, iommu_hw_queue_alloc,
             "length"),
    ioctl_op("IOMMU_IOAS_NOIOMMU_GET_PA", IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA,
             iommu_ioas_noiommu_get_pa, "out_phys"),
)

#: :data:`IOMMUFD_IOCTLS` keyed by ``nr``.
IOMMUFD_IOCTLS_BY_NR: Final[Mapping[int, IoctlDesc]] = MappingProxyType(
    {op.nr: op for op in IOMMUFD_IOCTLS})

#: :data:`IOMMUFD_IOCTLS` keyed by name.
IOMMUFD_IOCTLS_BY_NAME: Final[Mapping[str, IoctlDesc]] = MappingProxyType(
    {op.name: op for op in IOMMUFD_IOCTLS})

# ---------------------------------------------------------------------------------------
# Data type registry: driver-specific payload types, by kind and number
# ---------------------------------------------------------------------------------------


class DataKind(enum.StrEnum):
    """Which uAPI number space a driver data type lives in."""

    #: ``iommu_hwpt_alloc.data_type`` (enum iommu_hwpt_data_type).
    HWPT_DATA = "hwpt_data"
    #: ``iommu_hw_info.in_data_type/out_data_type`` (enum iommu_hw_info_type).
    HW_INFO = "hw_info"
    #: ``iommu_hwpt_invalidate.data_type`` when ``hwpt_id`` is a nested HWPT.
    HWPT_INVALIDATE = "hwpt_invalidate"
    #: ``iommu_hwpt_invalidate.data_type`` when ``hwpt_id`` is a vIOMMU. The kernel has one
    #: enum for both targets, but the selftest reuses 0xdeadbeef for two different entry
    #: structs, so the two targets are separate number spaces here.
    VIOMMU_INVALIDATE = "viommu_invalidate"
    #: ``iommu_viommu_alloc.type`` (enum iommu_viommu_type); struct = the ``data_uptr`` data.
    VIOMMU = "viommu"
    #: ``iommu_veventq_alloc.type`` (enum iommu_veventq_type); struct = the event record.
    VEVENTQ = "veventq"
    #: ``iommu_hw_queue_alloc.type`` (enum iommu_hw_queue_type); no payload struct.
    HW_QUEUE = "hw_queue"


#: The ctypes type of a payload (a struct or a union).
PayloadStruct: TypeAlias = "type[ctypes.Structure] | type[ctypes.Union]"


@dataclass(frozen=True, slots=True)
class DataType:
    """One registered driver data type."""

    kind: DataKind
    #: The uAPI constant's name, e.g. ``"IOMMU_HWPT_DATA_VTD_S1"``.
    name: str
    #: Its number (a ``__u32``).
    value: int
    #: The payload struct, or None for a type that carries no data (NONE/DEFAULT).
    struct: PayloadStruct | None
    #: Smallest length the kernel accepts for the payload (``offsetofend`` of the minimum
    #: member the driver names; 0 = no minimum).
    min_len: int

    @property
    def size(self) -> int:
        """``sizeof`` the payload struct (0 without one)."""
        return 0 if self.struct is None else ctypes.sizeof(self.struct)


class DataTypeError(ValueError):
    """A data type registration was refused (duplicate value or name, bad arguments)."""


class UnknownDataType(LookupError):
    """No data type with that kind and value (or name) is registered."""


def _kind(kind: DataKind | str) -> DataKind:
    try:
        return DataKind(kind)
    except ValueError:
        valid = ", ".join(k.value for k in DataKind)
        raise DataTypeError(f"unknown data kind {kind!r} (one of: {valid})") from None


class DataTypeRegistry:
    """Driver data types by ``(kind, value)``: the upstream ones plus what plugins add.

    A value may be registered once per kind; a second registration of the same value (or
    of the same name) in that kind raises :class:`DataTypeError` naming the holder.
    """

    __slots__ = ("_by_name", "_by_value")

    def __init__(self) -> None:
        self._by_value: dict[tuple[DataKind, int], DataType] = {}
        self._by_name: dict[tuple[DataKind, str], DataType] = {}

    def register(self, kind: DataKind | str, name: str, value: int,
                 struct: PayloadStruct | None, min_len: int | None = None) -> DataType:
        """Register ``name = value`` in ``kind`` with payload ``struct``.

        ``min_len`` defaults to ``sizeof(struct)`` (0 without a struct) and must lie in
        ``[0, sizeof(struct)]``.
        """
        k = _kind(kind)
        if not isinstance(name, str) or not name:
            raise DataTypeError(f"{k.value}: data type name must be a non-empty string")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
            raise DataTypeError(f"{k.value}: {name} value {value!r} is not a __u32")
        if struct is not None and not (isinstance(struct, type)
                                       and issubclass(struct, ctypes.Structure | ctypes.Union)):
            raise DataTypeError(f"{k.value}: {name} payload must be a ctypes Structure or "
                                f"Union type, not {struct!r}")
        size = 0 if struct is None else ctypes.sizeof(struct)
        if min_len is None:
            min_len = size
        if isinstance(min_len, bool) or not isinstance(min_len, int) or not 0 <= min_len <= size:
            raise DataTypeError(f"{k.value}: {name} min_len {min_len!r} outside [0, {size}]")
        held = self._by_value.get((k, value))
        if held is not None:
            raise DataTypeError(
                f"{k.value} data type value {value:#x} is already registered as {held.name}"
                f"{'' if held.struct is None else f' (struct {held.struct.__name__})'}; "
                f"refusing {name}")
        held = self._by_name.get((k, name))
        if held is not None:
            raise DataTypeError(f"{k.value} data type name {name} is already registered "
                                f"with value {held.value:#x}; refusing value {value:#x}")
        entry = DataType(kind=k, name=name, value=value, struct=struct, min_len=min_len)
        self._by_value[(k, value)] = entry
        self._by_name[(k, name)] = entry
        return entry

    def unregister(self, kind: DataKind | str, value: int) -> DataType:
        """Remove and return the entry (a plugin being unloaded)."""
        entry = self.lookup(kind, value)
        del self._by_value[(entry.kind, entry.value)]
        del self._by_name[(entry.kind, entry.name)]
        return entry

    def find(self, kind: DataKind | str, value: int) -> DataType | None:
        """The entry for ``(kind, value)``, or None."""
        return self._by_value.get((_kind(kind), value))

    def lookup(self, kind: DataKind | str, value: int) -> DataType:
        """The entry for ``(kind, value)``; :class:`UnknownDataType` if none."""
        k = _kind(kind)
        entry = self._by_value.get((k, value))
        if entry is None:
            raise UnknownDataType(f"no {k.value} data type with value {value:#x}")
        return entry

    def lookup_name(self, kind: DataKind | str, name: str) -> DataType:
        """The entry named ``name`` in ``kind``; :class:`UnknownDataType` if none."""
        k = _kind(kind)
        entry = self._by_name.get((k, name))
        if entry is None:
            raise UnknownDataType(f"no {k.value} data type named {name}")
        return entry

    def types(self, kind: DataKind | str) -> tuple[DataType, ...]:
        """Every entry of ``kind``, by value."""
        k = _kind(kind)
        return tuple(sorted((e for (ek, _), e in self._by_value.items() if ek is k),
                            key=lambda e: e.value))

    def copy(self) -> DataTypeRegistry:
        """An independent registry with the same entries."""
        new = DataTypeRegistry()
        new._by_value = dict(self._by_value)
        new._by_name = dict(self._by_name)
        return new

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        kind, value = key
        try:
            return (_kind(kind), value) in self._by_value
        except DataTypeError:
            return False

    def __iter__(self) -> Iterator[DataType]:
        return iter(sorted(self._by_value.values(), key=lambda e: (e.kind.value, e.value)))

    def __len__(self) -> int:
        return len(self._by_value)


def _register_upstream(reg: DataTypeRegistry) -> None:
    K = DataKind
    # min_len: what the upstream driver passes as the minimum member when it copies the
    # payload (iommu_copy_struct_from_user*/to_user), 0 where the helper has no minimum.
    rows: tuple[tuple[DataKind, str, int, PayloadStruct | None, int], ...] = (
        (K.HWPT_DATA, "IOMMU_HWPT_DATA_NONE", IOMMU_HWPT_DATA_NONE, None, 0),
        (K.HWPT_DATA, "IOMMU_HWPT_DATA_VTD_S1", IOMMU_HWPT_DATA_VTD_S1, iommu_hwpt_vtd_s1,
         offsetofend(iommu_hwpt_vtd_s1, "__reserved")),
        (K.HWPT_DATA, "IOMMU_HWPT_DATA_ARM_SMMUV3", IOMMU_HWPT_DATA_ARM_SMMUV3,
         iommu_hwpt_arm_smmuv3, offsetofend(iommu_hwpt_arm_smmuv3, "ste")),
        (K.HWPT_DATA, "IOMMU_HWPT_DATA_AMD_GUEST", IOMMU_HWPT_DATA_AMD_GUEST,
         iommu_hwpt_amd_guest, offsetofend(iommu_hwpt_amd_guest, "dte")),
        (K.HW_INFO, "IOMMU_HW_INFO_TYPE_NONE", IOMMU_HW_INFO_TYPE_NONE, None, 0),
        (K.HW_INFO, "IOMMU_HW_INFO_TYPE_INTEL_VTD", IOMMU_HW_INFO_TYPE_INTEL_VTD,
         iommu_hw_info_vtd, ctypes.sizeof(iommu_hw_info_vtd)),
        (K.HW_INFO, "IOMMU_HW_INFO_TYPE_ARM_SMMUV3", IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
         iommu_hw_info_arm_smmuv3, ctypes.sizeof(iommu_hw_info_arm_smmuv3)),
        (K.HW_INFO, "IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV", IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV,
         iommu_hw_info_tegra241_cmdqv, ctypes.sizeof(iommu_hw_info_tegra241_cmdqv)),
        (K.HW_INFO, "IOMMU_HW_INFO_TYPE_AMD", IOMMU_HW_INFO_TYPE_AMD, iommu_hw_info_amd,
         ctypes.sizeof(iommu_hw_info_amd)),
        (K.HWPT_INVALIDATE, "IOMMU_HWPT_INVALIDATE_DATA_VTD_S1",
         IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, iommu_hwpt_vtd_s1_invalidate,
         offsetofend(iommu_hwpt_vtd_s1_invalidate, "__reserved")),
        # SMMUv3 copies the whole array (iommu_copy_struct_from_full_user_array): no minimum.
        (K.VIOMMU_INVALIDATE, "IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3",
         IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, iommu_viommu_arm_smmuv3_invalidate, 0),
        (K.VIOMMU, "IOMMU_VIOMMU_TYPE_DEFAULT", IOMMU_VIOMMU_TYPE_DEFAULT, None, 0),
        (K.VIOMMU, "IOMMU_VIOMMU_TYPE_ARM_SMMUV3", IOMMU_VIOMMU_TYPE_ARM_SMMUV3, None, 0),
        (K.VIOMMU, "IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV", IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV,
         iommu_viommu_tegra241_cmdqv,
         offsetofend(iommu_viommu_tegra241_cmdqv, "out_vintf_mmap_length")),
        (K.VIOMMU, "IOMMU_VIOMMU_TYPE_AMD", IOMMU_VIOMMU_TYPE_AMD, iommu_viommu_amd,
         offsetofend(iommu_viommu_amd, "reserved")),
        (K.VEVENTQ, "IOMMU_VEVENTQ_TYPE_DEFAULT", IOMMU_VEVENTQ_TYPE_DEFAULT, None, 0),
        (K.VEVENTQ, "IOMMU_VEVENTQ_TYPE_ARM_SMMUV3", IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
         iommu_vevent_arm_smmuv3, ctypes.sizeof(iommu_vevent_arm_smmuv3)),
        (K.VEVENTQ, "IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV", IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV,
         iommu_vevent_tegra241_cmdqv, ctypes.sizeof(iommu_vevent_tegra241_cmdqv)),
        (K.HW_QUEUE, "IOMMU_HW_QUEUE_TYPE_DEFAULT", IOMMU_HW_QUEUE_TYPE_DEFAULT, None, 0),
        (K.HW_QUEUE, "IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV", IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV,
         None, 0),
    )
    for kind, name, value, struct, min_len in rows:
        reg.register(kind, name, value, struct, min_len)


#: The process-wide registry, pre-populated with the upstream types.
#: :mod:`iommufd.uapi_selftest` adds the selftest types when imported.
DATA_TYPES: Final = DataTypeRegistry()
_register_upstream(DATA_TYPES)


def register_data_type(kind: DataKind | str, name: str, value: int,
                       struct: PayloadStruct | None, min_len: int | None = None) -> DataType:
    """Register a driver data type in :data:`DATA_TYPES` (see
    :meth:`DataTypeRegistry.register`); a duplicate value raises :class:`DataTypeError`."""
    return DATA_TYPES.register(kind, name, value, struct, min_len)


def unregister_data_type(kind: DataKind | str, value: int) -> DataType:
    """Remove a data type from :data:`DATA_TYPES`."""
    return DATA_TYPES.unregister(kind, value)


def lookup_data_type(kind: DataKind | str, value: int) -> DataType:
    """The :data:`DATA_TYPES` entry for ``(kind, value)``; :class:`UnknownDataType` if none."""
    return DATA_TYPES.lookup(kind, value)


def find_data_type(kind: DataKind | str, value: int) -> DataType | None:
    """The :data:`DATA_TYPES` entry for ``(kind, value)``, or None."""
    return DATA_TYPES.find(kind, value)


def data_types(kind: DataKind | str) -> tuple[DataType, ...]:
    """Every :data:`DATA_TYPES` entry of ``kind``, by value."""
    return DATA_TYPES.types(kind)
