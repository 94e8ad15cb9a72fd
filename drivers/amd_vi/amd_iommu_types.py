"""AMD-Vi architecture constants and the value types both sides agree on.

The driver (``iommu.py``, ``init.py`` ...) and the hardware model (``hw/``) are separate
programs that share only the specification: register offsets and bits, the 256-bit Device
Table Entry layout, the 128-bit command and log-entry layouts. This module holds exactly
that (``amd_iommu_types.h`` on the Linux side, ``amd_iommu.h`` on the QEMU side) and
never behaviour. Bit positions: vtd_amd.md PART B.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import attrs

U64 = (1 << 64) - 1


def genmask(hi: int, lo: int) -> int:
    """GENMASK_ULL(hi, lo)."""
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


def field_get(mask: int, value: int) -> int:
    """FIELD_GET: the field ``mask`` selects, shifted down."""
    return (value & mask) >> ((mask & -mask).bit_length() - 1)


def field_prep(mask: int, value: int) -> int:
    """FIELD_PREP: ``value`` shifted into ``mask`` (excess bits dropped)."""
    return (value << ((mask & -mask).bit_length() - 1)) & mask


# ---------------------------------------------------------------------------------------
# MMIO (B1.1)
# ---------------------------------------------------------------------------------------
MMIO_DEV_TABLE_OFFSET = 0x0000
MMIO_CMD_BUF_OFFSET = 0x0008
MMIO_EVT_BUF_OFFSET = 0x0010
MMIO_CONTROL_OFFSET = 0x0018
MMIO_EXCL_BASE_OFFSET = 0x0020
MMIO_EXCL_LIMIT_OFFSET = 0x0028
MMIO_EXT_FEATURES = 0x0030
MMIO_PPR_LOG_OFFSET = 0x0038
MMIO_GA_LOG_BASE_OFFSET = 0x00E0
MMIO_GA_LOG_TAIL_OFFSET = 0x00E8
MMIO_MSI_ADDR_LO_OFFSET = 0x015C
MMIO_MSI_ADDR_HI_OFFSET = 0x0160
MMIO_MSI_DATA_OFFSET = 0x0164
MMIO_INTCAPXT_EVT_OFFSET = 0x0170
MMIO_INTCAPXT_PPR_OFFSET = 0x0178
MMIO_INTCAPXT_GALOG_OFFSET = 0x0180
MMIO_EXT_FEATURES2 = 0x01A0
MMIO_CMD_HEAD_OFFSET = 0x2000
MMIO_CMD_TAIL_OFFSET = 0x2008
MMIO_EVT_HEAD_OFFSET = 0x2010
MMIO_EVT_TAIL_OFFSET = 0x2018
MMIO_STATUS_OFFSET = 0x2020
MMIO_PPR_HEAD_OFFSET = 0x2030
MMIO_PPR_TAIL_OFFSET = 0x2038
MMIO_GA_HEAD_OFFSET = 0x2040
MMIO_GA_TAIL_OFFSET = 0x2048
MMIO_CNTR_CONF_OFFSET = 0x4000
MMIO_REG_END_OFFSET = 0x80000

MMIO_REG_NAMES = {
    MMIO_DEV_TABLE_OFFSET: "DEV_TABLE", MMIO_CMD_BUF_OFFSET: "CMD_BUF",
    MMIO_EVT_BUF_OFFSET: "EVT_BUF", MMIO_CONTROL_OFFSET: "CONTROL",
    MMIO_EXCL_BASE_OFFSET: "EXCL_BASE", MMIO_EXCL_LIMIT_OFFSET: "EXCL_LIMIT",
    MMIO_EXT_FEATURES: "EFR", MMIO_PPR_LOG_OFFSET: "PPR_LOG",
    MMIO_GA_LOG_BASE_OFFSET: "GA_LOG_BASE", MMIO_GA_LOG_TAIL_OFFSET: "GA_LOG_TAIL_ADDR",
    MMIO_EXT_FEATURES2: "EFR2", MMIO_CMD_HEAD_OFFSET: "CMD_HEAD",
    MMIO_CMD_TAIL_OFFSET: "CMD_TAIL", MMIO_EVT_HEAD_OFFSET: "EVT_HEAD",
    MMIO_EVT_TAIL_OFFSET: "EVT_TAIL", MMIO_STATUS_OFFSET: "STATUS",
    MMIO_PPR_HEAD_OFFSET: "PPR_HEAD", MMIO_PPR_TAIL_OFFSET: "PPR_TAIL",
    MMIO_GA_HEAD_OFFSET: "GA_HEAD", MMIO_GA_TAIL_OFFSET: "GA_TAIL",
}

#: Ring buffer base registers: address bits 51:12, log2(entries) in bits 59:56.
RING_BASE_ADDR_MASK = genmask(51, 12)
RING_LEN_MASK = genmask(59, 56)
DEV_TABLE_SIZE_MASK = genmask(8, 0)
#: Head/tail registers hold byte offsets; the pointer field is bits 18:4.
RING_PTR_MASK = genmask(18, 4)

CMD_BUFFER_ENTRIES = 512
CMD_BUFFER_SIZE = CMD_BUFFER_ENTRIES * 16
CMD_BUFFER_LEN = 9 << 56
EVT_BUFFER_ENTRIES = 512
EVT_BUFFER_SIZE = EVT_BUFFER_ENTRIES * 16
EVT_LEN_MASK = 9 << 56
PPR_LOG_ENTRIES = 512
PPR_ENTRY_SIZE = 16
PPR_LOG_SIZE = PPR_LOG_ENTRIES * PPR_ENTRY_SIZE
PPR_LOG_SIZE_512 = 9 << 56

# ---------------------------------------------------------------------------------------
# Control (0x18) bit numbers (B1.2) and Status (0x2020) bits
# ---------------------------------------------------------------------------------------
CONTROL_IOMMU_EN = 0
CONTROL_HT_TUN_EN = 1
CONTROL_EVT_LOG_EN = 2
CONTROL_EVT_INT_EN = 3
CONTROL_COMWAIT_EN = 4
CONTROL_INV_TIMEOUT = 5
CONTROL_PASSPW_EN = 8
CONTROL_RESPASSPW_EN = 9
CONTROL_COHERENT_EN = 10
CONTROL_ISOC_EN = 11
CONTROL_CMDBUF_EN = 12
CONTROL_PPRLOG_EN = 13
CONTROL_PPRINT_EN = 14
CONTROL_PPR_EN = 15
CONTROL_GT_EN = 16
CONTROL_GA_EN = 17
CONTROL_GAM_EN = 25
CONTROL_GALOG_EN = 28
CONTROL_GAINT_EN = 29
CONTROL_EPH_EN = 45
CONTROL_XT_EN = 50
CONTROL_INTCAPXT_EN = 51
CONTROL_GCR3TRPMODE = 58
CONTROL_IRTCACHEDIS = 59
CONTROL_SNPAVIC_EN = 61

CONTROL_NAMES = {
    CONTROL_IOMMU_EN: "IOMMU_EN", CONTROL_HT_TUN_EN: "HT_TUN_EN",
    CONTROL_EVT_LOG_EN: "EVT_LOG_EN", CONTROL_EVT_INT_EN: "EVT_INT_EN",
    CONTROL_COMWAIT_EN: "COMWAIT_EN", CONTROL_PASSPW_EN: "PASSPW_EN",
    CONTROL_RESPASSPW_EN: "RESPASSPW_EN", CONTROL_COHERENT_EN: "COHERENT_EN",
    CONTROL_ISOC_EN: "ISOC_EN", CONTROL_CMDBUF_EN: "CMDBUF_EN",
    CONTROL_PPRLOG_EN: "PPRLOG_EN", CONTROL_PPRINT_EN: "PPRINT_EN", CONTROL_PPR_EN: "PPR_EN",
    CONTROL_GT_EN: "GT_EN", CONTROL_GA_EN: "GA_EN", CONTROL_GAM_EN: "GAM_EN",
    CONTROL_GALOG_EN: "GALOG_EN", CONTROL_GAINT_EN: "GAINT_EN", CONTROL_EPH_EN: "EPH_EN",
    CONTROL_XT_EN: "XT_EN", CONTROL_INTCAPXT_EN: "INTCAPXT_EN",
    CONTROL_GCR3TRPMODE: "GCR3TRPMODE", CONTROL_IRTCACHEDIS: "IRTCACHEDIS",
    CONTROL_SNPAVIC_EN: "SNPAVIC_EN",
}

MMIO_STATUS_EVT_OVERFLOW_MASK = 1 << 0
MMIO_STATUS_EVT_INT_MASK = 1 << 1
MMIO_STATUS_COM_WAIT_INT_MASK = 1 << 2
MMIO_STATUS_EVT_RUN_MASK = 1 << 3
MMIO_STATUS_PPR_OVERFLOW_MASK = 1 << 5
MMIO_STATUS_PPR_INT_MASK = 1 << 6
MMIO_STATUS_PPR_RUN_MASK = 1 << 7
MMIO_STATUS_GALOG_RUN_MASK = 1 << 8
MMIO_STATUS_GALOG_OVERFLOW_MASK = 1 << 9
MMIO_STATUS_GALOG_INT_MASK = 1 << 10
#: Status bits software clears by writing 1.
MMIO_STATUS_W1C = (MMIO_STATUS_EVT_OVERFLOW_MASK | MMIO_STATUS_EVT_INT_MASK
                   | MMIO_STATUS_COM_WAIT_INT_MASK | MMIO_STATUS_PPR_OVERFLOW_MASK
                   | MMIO_STATUS_PPR_INT_MASK | MMIO_STATUS_GALOG_OVERFLOW_MASK
                   | MMIO_STATUS_GALOG_INT_MASK)

# ---------------------------------------------------------------------------------------
# EFR / EFR2 (B2)
# ---------------------------------------------------------------------------------------
FEATURE_PREFETCH = 1 << 0
FEATURE_PPR = 1 << 1
FEATURE_X2APIC = 1 << 2
FEATURE_NX = 1 << 3
FEATURE_GT = 1 << 4
FEATURE_IA = 1 << 6
FEATURE_GA = 1 << 7
FEATURE_HE = 1 << 8
FEATURE_PC = 1 << 9
FEATURE_HATS = genmask(11, 10)
FEATURE_GATS = genmask(13, 12)
FEATURE_GLX = genmask(15, 14)
FEATURE_GAM_VAPIC = 1 << 21
FEATURE_PASMAX = genmask(36, 32)
FEATURE_GIOSUP = 1 << 48
FEATURE_HASUP = 1 << 49
FEATURE_EPHSUP = 1 << 50
FEATURE_HDSUP = 1 << 52
FEATURE_SNP = 1 << 63

FEATURE_SEVSNPIO_SUP = 1 << 1
FEATURE_GCR3TRPMODE = 1 << 3
FEATURE_SNPAVICSUP = genmask(7, 5)
FEATURE_NUM_INT_REMAP_SUP = genmask(9, 8)
FEATURE_HT_RANGE_IGNORE = 1 << 11

# ---------------------------------------------------------------------------------------
# Device Table Entry (B3)
# ---------------------------------------------------------------------------------------
DEV_TABLE_ENTRY_SIZE = 32
MAX_DEV_TABLE_ENTRIES = 0x10000

DTE_FLAG_V = 1 << 0
DTE_FLAG_TV = 1 << 1
DTE_FLAG_HAD = 3 << 7
DTE_MODE_MASK = genmask(11, 9)
DTE_HOST_TRP = genmask(51, 12)
DTE_FLAG_PPR = 1 << 52
DTE_FLAG_GPRP = 1 << 53  # spec only; never written by Linux
DTE_FLAG_GIOV = 1 << 54
DTE_FLAG_GV = 1 << 55
DTE_GLX = genmask(57, 56)
DTE_GCR3_14_12 = genmask(60, 58)
DTE_FLAG_IR = 1 << 61
DTE_FLAG_IW = 1 << 62

DTE_DOMID_MASK = genmask(15, 0)
DTE_GCR3_30_15 = genmask(31, 16)
DTE_FLAG_IOTLB = 1 << 32
DTE_FLAG_MASK = genmask(41, 32)  # IVHD flag block (data[1])
DEV_ENTRY_NO_PAGE_FAULT_BIT = 34  # 0x62 - 64
DEV_ENTRY_EX_BIT = 39  # 0x67 - 64
DTE_DATA1_SYSMGT_MASK = genmask(41, 40)
DTE_GCR3_51_31 = genmask(63, 43)

DTE_IRQ_REMAP_ENABLE = 1 << 0
DTE_INTTABLEN_MASK = genmask(4, 1)
DTE_IRQ_PHYS_ADDR_MASK = genmask(51, 6)
DTE_GPT_LEVEL_SHIFT = 54
DTE_GPT_LEVEL_MASK = genmask(55, 54)
DTE_IRQ_REMAP_INTCTL_MASK = genmask(61, 60)
#: data[2] bits that are interrupt state: everything but 55:52.
DTE_DATA2_INTR_MASK = ~genmask(55, 52) & U64

GUEST_PGTABLE_4_LEVEL = 0
GUEST_PGTABLE_5_LEVEL = 1

PAGE_MODE_NONE = 0
PAGE_MODE_1_LEVEL = 1
PAGE_MODE_6_LEVEL = 6
PAGE_MODE_7_LEVEL = 7  # reserved encoding

# ---------------------------------------------------------------------------------------
# GCR3 table (B5)
# ---------------------------------------------------------------------------------------
GCR3_VALID = 1 << 0
GCR3_ADDR_MASK = genmask(51, 12)

# ---------------------------------------------------------------------------------------
# Commands (B8)
# ---------------------------------------------------------------------------------------
CMD_COMPL_WAIT = 0x01
CMD_INV_DEV_ENTRY = 0x02
CMD_INV_IOMMU_PAGES = 0x03
CMD_INV_IOTLB_PAGES = 0x04
CMD_INV_IRT = 0x05
CMD_COMPLETE_PPR = 0x07
CMD_INV_ALL = 0x08

CMD_NAMES = {
    CMD_COMPL_WAIT: "COMPLETION_WAIT", CMD_INV_DEV_ENTRY: "INVALIDATE_DEVTAB_ENTRY",
    CMD_INV_IOMMU_PAGES: "INVALIDATE_IOMMU_PAGES", CMD_INV_IOTLB_PAGES: "INVALIDATE_IOTLB_PAGES",
    CMD_INV_IRT: "INVALIDATE_INTERRUPT_TABLE", CMD_COMPLETE_PPR: "COMPLETE_PPR_REQUEST",
    CMD_INV_ALL: "INVALIDATE_IOMMU_ALL",
}

CMD_COMPL_WAIT_STORE_MASK = 1 << 0
CMD_COMPL_WAIT_INT_MASK = 1 << 1
CMD_INV_IOMMU_PAGES_SIZE_MASK = 1 << 0
CMD_INV_IOMMU_PAGES_PDE_MASK = 1 << 1
CMD_INV_IOMMU_PAGES_GN_MASK = 1 << 2
CMD_INV_IOMMU_ALL_PAGES_ADDRESS = 0x7FFF_FFFF_FFFF_F000
PPR_STATUS_MASK = 0xF
PPR_STATUS_SHIFT = 12

# ---------------------------------------------------------------------------------------
# Event log (B8 tail) and PPR log entries
# ---------------------------------------------------------------------------------------
EVENT_TYPE_ILL_DEV = 0x1
EVENT_TYPE_IO_FAULT = 0x2
EVENT_TYPE_DEV_TAB_ERR = 0x3
EVENT_TYPE_PAGE_TAB_ERR = 0x4
EVENT_TYPE_ILL_CMD = 0x5
EVENT_TYPE_CMD_HARD_ERR = 0x6
EVENT_TYPE_IOTLB_INV_TO = 0x7
EVENT_TYPE_INV_DEV_REQ = 0x8
EVENT_TYPE_INV_PPR_REQ = 0x9
EVENT_TYPE_RMP_FAULT = 0xD
EVENT_TYPE_RMP_HW_ERR = 0xE

EVENT_NAMES = {
    EVENT_TYPE_ILL_DEV: "ILLEGAL_DEV_TABLE_ENTRY", EVENT_TYPE_IO_FAULT: "IO_PAGE_FAULT",
    EVENT_TYPE_DEV_TAB_ERR: "DEV_TAB_HARDWARE_ERROR",
    EVENT_TYPE_PAGE_TAB_ERR: "PAGE_TAB_HARDWARE_ERROR",
    EVENT_TYPE_ILL_CMD: "ILLEGAL_COMMAND_ERROR", EVENT_TYPE_CMD_HARD_ERR: "COMMAND_HARDWARE_ERROR",
    EVENT_TYPE_IOTLB_INV_TO: "IOTLB_INV_TIMEOUT", EVENT_TYPE_INV_DEV_REQ: "INVALID_DEVICE_REQUEST",
    EVENT_TYPE_INV_PPR_REQ: "INVALID_PPR_REQUEST", EVENT_TYPE_RMP_FAULT: "RMP_PAGE_FAULT",
    EVENT_TYPE_RMP_HW_ERR: "RMP_HW_ERROR",
}

EVENT_TYPE_SHIFT = 28
EVENT_TYPE_MASK = 0xF
EVENT_DEVID_MASK = 0xFFFF
EVENT_DOMID_MASK_LO = 0xFFFF
EVENT_DOMID_MASK_HI = 0xF0000
EVENT_FLAGS_MASK = 0xFFF
EVENT_FLAGS_SHIFT = 16
# IO_PAGE_FAULT / ILLEGAL_DEV_TABLE_ENTRY flag bits (AMD IOMMU spec §2.5).
EVENT_FLAG_GN = 0x001
EVENT_FLAG_NX = 0x002
EVENT_FLAG_US = 0x004
EVENT_FLAG_I = 0x008
EVENT_FLAG_PR = 0x010
EVENT_FLAG_RW = 0x020
EVENT_FLAG_PE = 0x040
EVENT_FLAG_RZ = 0x080
EVENT_FLAG_TR = 0x100

PPR_FLAG_EXEC = 0x002
PPR_FLAG_READ = 0x004
PPR_FLAG_WRITE = 0x020
PPR_FLAG_US = 0x040
PPR_FLAG_RVSD = 0x080
PPR_FLAG_GN = 0x100
PPR_REQ_FAULT = 0x01


def ppr_req_type(x: int) -> int:
    return (x >> 60) & 0xF


def ppr_flags(x: int) -> int:
    return (x >> 48) & 0xFFF


def ppr_devid(x: int) -> int:
    return x & 0xFFFF


def ppr_tag(x: int) -> int:
    return (x >> 32) & 0x3FF


def ppr_pasid(x: int) -> int:
    return (((x >> 42) & 0xF) << 16) | ((x >> 16) & 0xFFFF)


# ---------------------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------------------
def _tuple4(value: Iterable[int]) -> tuple[int, int, int, int]:
    t = tuple(int(v) for v in value)
    if len(t) != 4:
        raise ValueError(f"four words expected, got {t!r}")
    return t[0], t[1], t[2], t[3]


def _tuple2(value: Iterable[int]) -> tuple[int, int]:
    t = tuple(int(v) for v in value)
    if len(t) != 2:
        raise ValueError(f"two words expected, got {t!r}")
    return t[0], t[1]


def _check_u64(inst: object, attr: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if any(not 0 <= v <= U64 for v in value):
        raise ValueError(f"{attr.name}: unsigned 64-bit words expected, got {value!r}")


def _check_u32(inst: object, attr: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if any(not 0 <= v <= 0xFFFF_FFFF for v in value):
        raise ValueError(f"{attr.name}: unsigned 32-bit words expected, got {value!r}")


@attrs.frozen
class DevTableEntry:
    """``struct dev_table_entry``: the 256-bit DTE as four 64-bit words."""

    data: tuple[int, int, int, int] = attrs.field(
        default=(0, 0, 0, 0), converter=_tuple4, validator=_check_u64)

    def to_bytes(self) -> bytes:
        return b"".join(w.to_bytes(8, "little") for w in self.data)

    @classmethod
    def from_bytes(cls, raw: bytes) -> DevTableEntry:
        return cls([int.from_bytes(raw[i:i + 8], "little") for i in range(0, 32, 8)])

    # Field accessors (the decoded view the hardware and tests use).
    @property
    def v(self) -> bool:
        return bool(self.data[0] & DTE_FLAG_V)

    @property
    def tv(self) -> bool:
        return bool(self.data[0] & DTE_FLAG_TV)

    @property
    def had(self) -> int:
        return field_get(DTE_FLAG_HAD, self.data[0])

    @property
    def mode(self) -> int:
        return field_get(DTE_MODE_MASK, self.data[0])

    @property
    def host_pt_root(self) -> int:
        return self.data[0] & DTE_HOST_TRP

    @property
    def ppr(self) -> bool:
        return bool(self.data[0] & DTE_FLAG_PPR)

    @property
    def giov(self) -> bool:
        return bool(self.data[0] & DTE_FLAG_GIOV)

    @property
    def gv(self) -> bool:
        return bool(self.data[0] & DTE_FLAG_GV)

    @property
    def glx(self) -> int:
        return field_get(DTE_GLX, self.data[0])

    @property
    def ir(self) -> bool:
        return bool(self.data[0] & DTE_FLAG_IR)

    @property
    def iw(self) -> bool:
        return bool(self.data[0] & DTE_FLAG_IW)

    @property
    def domid(self) -> int:
        return self.data[1] & DTE_DOMID_MASK

    @property
    def iotlb(self) -> bool:
        return bool(self.data[1] & DTE_FLAG_IOTLB)

    @property
    def gcr3_root(self) -> int:
        """The GCR3 table root pointer assembled from its three pieces."""
        return dte_gcr3_root(self.data)

    @property
    def gpt_level(self) -> int:
        return field_get(DTE_GPT_LEVEL_MASK, self.data[2])

    def __repr__(self) -> str:
        return "DevTableEntry(" + ", ".join(f"{w:#018x}" for w in self.data) + ")"


def dte_gcr3_root(data: tuple[int, ...] | list[int]) -> int:
    return ((field_get(DTE_GCR3_14_12, data[0]) << 12)
            | (field_get(DTE_GCR3_30_15, data[1]) << 15)
            | (field_get(DTE_GCR3_51_31, data[1]) << 31))


def dte_gcr3_fields(gcr3: int) -> tuple[int, int]:
    """(data[0] bits, data[1] bits) that encode GCR3 table root ``gcr3``."""
    d0 = field_prep(DTE_GCR3_14_12, gcr3 >> 12)
    d1 = field_prep(DTE_GCR3_30_15, gcr3 >> 15) | field_prep(DTE_GCR3_51_31, gcr3 >> 31)
    return d0, d1


_CMD = struct.Struct("<4I")


@attrs.frozen
class IommuCmd:
    """``struct iommu_cmd``: one 128-bit command as four 32-bit words."""

    data: tuple[int, int, int, int] = attrs.field(converter=_tuple4, validator=_check_u32)

    @property
    def opcode(self) -> int:
        return (self.data[1] >> 28) & 0xF

    @property
    def name(self) -> str:
        return CMD_NAMES.get(self.opcode, f"opcode {self.opcode:#x}")

    def to_bytes(self) -> bytes:
        return _CMD.pack(*self.data)

    @classmethod
    def from_bytes(cls, raw: bytes) -> IommuCmd:
        return cls.of_words(_CMD.unpack(raw))

    @classmethod
    def of_words(cls, words: tuple[int, ...]) -> IommuCmd:
        """From four words already known to be u32 (no conversion, no check): the
        per-command path of the driver and the unit."""
        cmd = object.__new__(cls)
        object.__setattr__(cmd, "data", words)
        return cmd

    def __repr__(self) -> str:
        return f"IommuCmd({self.name}: " + ", ".join(f"{w:#010x}" for w in self.data) + ")"


@attrs.frozen
class EventLogEntry:
    """One 128-bit event log record (four 32-bit words)."""

    data: tuple[int, int, int, int] = attrs.field(converter=_tuple4, validator=_check_u32)

    @property
    def type(self) -> int:
        return (self.data[1] >> EVENT_TYPE_SHIFT) & EVENT_TYPE_MASK

    @property
    def name(self) -> str:
        return EVENT_NAMES.get(self.type, f"event {self.type:#x}")

    @property
    def devid(self) -> int:
        return self.data[0] & EVENT_DEVID_MASK

    @property
    def domid_pasid(self) -> int:
        return (self.data[0] & EVENT_DOMID_MASK_HI) | (self.data[1] & EVENT_DOMID_MASK_LO)

    @property
    def flags(self) -> int:
        return (self.data[1] >> EVENT_FLAGS_SHIFT) & EVENT_FLAGS_MASK

    @property
    def address(self) -> int:
        return (self.data[3] << 32) | self.data[2]

    def to_bytes(self) -> bytes:
        return b"".join(w.to_bytes(4, "little") for w in self.data)

    @classmethod
    def from_bytes(cls, raw: bytes) -> EventLogEntry:
        return cls([int.from_bytes(raw[i:i + 4], "little") for i in range(0, 16, 4)])

    @classmethod
    def make(cls, type: int, devid: int, domid_pasid: int, flags: int, address: int
             ) -> EventLogEntry:
        return cls((
            (devid & EVENT_DEVID_MASK) | (domid_pasid & EVENT_DOMID_MASK_HI),
            (domid_pasid & EVENT_DOMID_MASK_LO) | ((flags & EVENT_FLAGS_MASK) << EVENT_FLAGS_SHIFT)
            | ((type & EVENT_TYPE_MASK) << EVENT_TYPE_SHIFT),
            address & 0xFFFF_FFFF, (address >> 32) & 0xFFFF_FFFF))


@attrs.frozen
class PprLogEntry:
    """One 128-bit PPR log record: raw[0] (DeviceID, PASID, tag, flags, type), raw[1]
    (address)."""

    raw: tuple[int, int] = attrs.field(converter=_tuple2, validator=_check_u64)

    @classmethod
    def make(cls, devid: int, pasid: int, tag: int, flags: int, address: int
             ) -> PprLogEntry:
        w0 = ((devid & 0xFFFF) | ((pasid & 0xFFFF) << 16) | ((tag & 0x3FF) << 32)
              | (((pasid >> 16) & 0xF) << 42) | ((flags & 0xFFF) << 48)
              | (PPR_REQ_FAULT << 60))
        return cls((w0, address & U64))

    def to_bytes(self) -> bytes:
        return self.raw[0].to_bytes(8, "little") + self.raw[1].to_bytes(8, "little")
