"""The FlatIOMMU architecture: what the hardware manual would say.

FlatIOMMU is a small but complete single-stage IOMMU: a **flat device table** indexed by
requester ID, x86-64 4-level **page tables**, a **command queue** for invalidations, a
**fault queue** with an interrupt, an IOTLB tagged by domain ID, and optional hardware
dirty tracking. Driver and hardware model both import this module, as the kernel driver
and the silicon both follow the manual; nothing else is shared between them.

Registers (little-endian; 64-bit registers are two 32-bit halves):

=====  =========  ==  ==================================================================
off    name       rw  meaning
=====  =========  ==  ==================================================================
0x000  ID         RO  ``0x54414C46`` ("FLAT")
0x004  VERSION    RO  major << 16 | minor
0x008  CAP        RO  bits 4:0 RID bits; bit 8 DIRTY (DTE.HAD supported)
0x010  CTRL       RW  bit 0 TE, bit 1 CQE, bit 2 FQE, bit 3 FIE (fault interrupt)
0x014  STATUS     RW  bits 3:0 mirror CTRL once applied; bit 8 CQERR, bit 9 FQOVF (W1C)
0x020  DT_BASE    RW  u64, bits 51:12 device table address
0x028  DT_SIZE    RW  log2 of the number of DTEs
0x030  CQ_BASE    RW  u64, bits 51:12 address, bits 4:0 log2 entries
0x038  CQ_HEAD    RO  next command the hardware reads
0x03C  CQ_TAIL    RW  next free slot; writing it makes the hardware consume [HEAD, TAIL)
0x040  FQ_BASE    RW  u64, bits 51:12 address, bits 4:0 log2 entries
0x048  FQ_HEAD    RW  next record the driver reads
0x04C  FQ_TAIL    RO  next slot the hardware writes
=====  =========  ==  ==================================================================

Device-table entry (16 bytes, at ``DT_BASE + rid * 16``): q0 bit 0 V, bits 2:1 MODE
(0 abort, 1 bypass, 2 translate), bit 3 HAD (set the dirty bit on DMA writes), bits 10:8
LEVELS (must be 4), bits 31:16 DID; q1 bits 51:12 page-table root.

Commands (16 bytes): q0 bits 3:0 opcode. INV_DTE (1): q0 bits 31:16 RID.
INV_IOTLB (2): q0 bit 4 ALL, bits 31:16 DID, bits 63:32 page count; q1 bits 63:12
address. INV_ALL (3). SYNC (4): store q0 bits 63:32 at physical address q1 (8 bytes)
once every earlier command is done. An unknown opcode sets STATUS.CQERR and stops the
queue at that command.

Fault record (16 bytes): q0 bits 15:0 RID, bits 23:16 reason, bit 24 write; q1 address.
"""

from __future__ import annotations

import enum

import attrs

FLAT_ID = 0x54414C46
FLAT_VERSION = 0x0001_0000

REG_ID = 0x000
REG_VERSION = 0x004
REG_CAP = 0x008
REG_CTRL = 0x010
REG_STATUS = 0x014
REG_DT_BASE = 0x020
REG_DT_SIZE = 0x028
REG_CQ_BASE = 0x030
REG_CQ_HEAD = 0x038
REG_CQ_TAIL = 0x03C
REG_FQ_BASE = 0x040
REG_FQ_HEAD = 0x048
REG_FQ_TAIL = 0x04C

CAP_RID_BITS_MASK = 0x1F
CAP_DIRTY = 1 << 8

CTRL_TE = 1 << 0
CTRL_CQE = 1 << 1
CTRL_FQE = 1 << 2
CTRL_FIE = 1 << 3
CTRL_ENABLES = CTRL_TE | CTRL_CQE | CTRL_FQE | CTRL_FIE
STATUS_CQERR = 1 << 8
STATUS_FQOVF = 1 << 9

ADDR_MASK = ((1 << 52) - 1) & ~0xFFF
QUEUE_LOG2_MASK = 0x1F

ENTRY_SIZE = 16  # DTE, command and fault record alike
PT_LEVELS = 4


class DteMode(enum.IntEnum):
    ABORT = 0
    BYPASS = 1
    TRANSLATE = 2


class Opcode(enum.IntEnum):
    INV_DTE = 1
    INV_IOTLB = 2
    INV_ALL = 3
    SYNC = 4


class FaultReason(enum.IntEnum):
    """Fault record reasons; :class:`DmaFault` carries their names."""

    F_DISABLED = 1  # CTRL.TE clear: every DMA is aborted
    F_RID_RANGE = 2  # requester ID beyond DT_SIZE
    F_DTE_INVALID = 3  # DTE.V clear
    F_DTE_ABORT = 4  # DTE.MODE abort (the blocking domain)
    F_DTE_BAD = 5  # reserved MODE or LEVELS
    F_PT_NOT_PRESENT = 6  # the walk found no leaf
    F_PT_PERMISSION = 7  # the leaf forbids this access
    F_PT_ADDR_SIZE = 8  # the input or output address is out of range


# -- device-table entries ---------------------------------------------------------------------
DTE_V = 1 << 0
DTE_MODE_SHIFT = 1
DTE_HAD = 1 << 3
DTE_LEVELS_SHIFT = 8
DTE_DID_SHIFT = 16


@attrs.frozen
class Dte:
    """A device-table entry, as the driver builds it and the hardware decodes it."""

    valid: bool = False
    mode: int = DteMode.ABORT
    had: bool = False
    levels: int = 0
    did: int = 0
    root: int = 0

    def encode(self) -> tuple[int, int]:
        q0 = (DTE_V if self.valid else 0) | (self.mode << DTE_MODE_SHIFT) | (
            DTE_HAD if self.had else 0) | (self.levels << DTE_LEVELS_SHIFT) | (
            self.did << DTE_DID_SHIFT)
        return q0, self.root & ADDR_MASK

    @classmethod
    def decode(cls, q0: int, q1: int) -> Dte:
        return cls(valid=bool(q0 & DTE_V), mode=(q0 >> DTE_MODE_SHIFT) & 3,
                   had=bool(q0 & DTE_HAD), levels=(q0 >> DTE_LEVELS_SHIFT) & 7,
                   did=(q0 >> DTE_DID_SHIFT) & 0xFFFF, root=q1 & ADDR_MASK)


# -- commands ---------------------------------------------------------------------------------
INV_IOTLB_ALL = 1 << 4


@attrs.frozen
class Cmd:
    """One 16-byte command-queue entry."""

    q0: int
    q1: int = 0

    @property
    def opcode(self) -> int:
        return self.q0 & 0xF


def build_inv_dte(rid: int) -> Cmd:
    return Cmd(Opcode.INV_DTE | ((rid & 0xFFFF) << 16))


def build_inv_iotlb(did: int, iova: int, npages: int) -> Cmd:
    """Invalidate ``npages`` 4 KiB pages of domain ``did`` from ``iova``."""
    return Cmd(Opcode.INV_IOTLB | ((did & 0xFFFF) << 16) | ((npages & 0xFFFF_FFFF) << 32),
               iova & ~0xFFF)


def build_inv_iotlb_did(did: int) -> Cmd:
    """Invalidate every IOTLB entry of domain ``did``."""
    return Cmd(Opcode.INV_IOTLB | INV_IOTLB_ALL | ((did & 0xFFFF) << 16))


def build_inv_all() -> Cmd:
    return Cmd(Opcode.INV_ALL)


def build_sync(store_pa: int, value: int) -> Cmd:
    return Cmd(Opcode.SYNC | ((value & 0xFFFF_FFFF) << 32), store_pa & ~0x7)


# -- fault records ----------------------------------------------------------------------------
FAULT_WRITE = 1 << 24


@attrs.frozen
class FaultRecord:
    rid: int
    reason: int
    write: bool
    address: int

    def encode(self) -> tuple[int, int]:
        return (self.rid & 0xFFFF) | ((self.reason & 0xFF) << 16) | (
            FAULT_WRITE if self.write else 0), self.address

    @classmethod
    def decode(cls, q0: int, q1: int) -> FaultRecord:
        return cls(rid=q0 & 0xFFFF, reason=(q0 >> 16) & 0xFF, write=bool(q0 & FAULT_WRITE),
                   address=q1)

    @property
    def reason_name(self) -> str:
        try:
            return FaultReason(self.reason).name
        except ValueError:
            return f"reason {self.reason}"
