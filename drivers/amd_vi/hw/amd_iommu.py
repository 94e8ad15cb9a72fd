"""An AMD-Vi IOMMU, modelled the way QEMU's hw/i386/amd_iommu.c is: a register file,
the Device Table fetched from memory and validated, a command buffer consumed from memory
when software moves the tail, an event log and a PPR log written into memory with an
interrupt, a DTE cache and an IOTLB that keep stale entries until the right invalidation
command, and one walker (the shared :mod:`iommu_core.pgtable.walk`).

Walk order (vtd_amd.md C2): Device Table Base -> DTE[DeviceID]; V=0 untranslated; TV=0
blocked; GV=0: Mode 0 identity, Mode 1..6 v1 walk from HostTRP; GV=1: GCR3 table (GLX+1
levels) indexed by PASID (0 without one, when GIoV) -> v2 (x86-64, 4/5 levels) walk. With
Mode != 0 and GV=1 (nested), every v2 table pointer and the v2 output are guest-physical
and go through the v1 walk; the GCR3 table itself does too when CONTROL.GCR3TRPMode is set.
Permissions are AND-ed over the DTE (IR/IW) and every level of every walk.

The model never calls the driver: it writes records to memory and asserts interrupts.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, overload

import attrs

from drivers.amd_vi.amd_iommu_types import (
    CMD_COMPL_WAIT,
    CMD_COMPL_WAIT_INT_MASK,
    CMD_COMPL_WAIT_STORE_MASK,
    CMD_COMPLETE_PPR,
    CMD_INV_ALL,
    CMD_INV_DEV_ENTRY,
    CMD_INV_IOMMU_PAGES,
    CMD_INV_IOMMU_PAGES_GN_MASK,
    CMD_INV_IOMMU_PAGES_PDE_MASK,
    CMD_INV_IOMMU_PAGES_SIZE_MASK,
    CMD_INV_IOTLB_PAGES,
    CMD_INV_IRT,
    CMD_NAMES,
    CONTROL_CMDBUF_EN,
    CONTROL_COMWAIT_EN,
    CONTROL_EVT_INT_EN,
    CONTROL_EVT_LOG_EN,
    CONTROL_GCR3TRPMODE,
    CONTROL_GT_EN,
    CONTROL_IOMMU_EN,
    CONTROL_NAMES,
    CONTROL_PPR_EN,
    CONTROL_PPRINT_EN,
    CONTROL_PPRLOG_EN,
    DEV_TABLE_ENTRY_SIZE,
    DEV_TABLE_SIZE_MASK,
    EVENT_FLAG_GN,
    EVENT_FLAG_PR,
    EVENT_FLAG_RW,
    EVENT_FLAG_US,
    EVENT_NAMES,
    EVENT_TYPE_ILL_CMD,
    EVENT_TYPE_ILL_DEV,
    EVENT_TYPE_INV_DEV_REQ,
    EVENT_TYPE_IO_FAULT,
    GCR3_ADDR_MASK,
    GCR3_VALID,
    MMIO_CMD_BUF_OFFSET,
    MMIO_CMD_HEAD_OFFSET,
    MMIO_CMD_TAIL_OFFSET,
    MMIO_CONTROL_OFFSET,
    MMIO_DEV_TABLE_OFFSET,
    MMIO_EVT_BUF_OFFSET,
    MMIO_EVT_HEAD_OFFSET,
    MMIO_EVT_TAIL_OFFSET,
    MMIO_EXT_FEATURES,
    MMIO_EXT_FEATURES2,
    MMIO_PPR_HEAD_OFFSET,
    MMIO_PPR_LOG_OFFSET,
    MMIO_PPR_TAIL_OFFSET,
    MMIO_REG_END_OFFSET,
    MMIO_REG_NAMES,
    MMIO_STATUS_COM_WAIT_INT_MASK,
    MMIO_STATUS_EVT_INT_MASK,
    MMIO_STATUS_EVT_OVERFLOW_MASK,
    MMIO_STATUS_EVT_RUN_MASK,
    MMIO_STATUS_OFFSET,
    MMIO_STATUS_PPR_INT_MASK,
    MMIO_STATUS_PPR_OVERFLOW_MASK,
    MMIO_STATUS_PPR_RUN_MASK,
    MMIO_STATUS_W1C,
    PPR_FLAG_EXEC,
    PPR_FLAG_GN,
    PPR_FLAG_READ,
    PPR_FLAG_US,
    PPR_FLAG_WRITE,
    PPR_STATUS_MASK,
    PPR_STATUS_SHIFT,
    RING_BASE_ADDR_MASK,
    RING_LEN_MASK,
    RING_PTR_MASK,
    DevTableEntry,
    EventLogEntry,
    IommuCmd,
    PprLogEntry,
    field_get,
)
from drivers.amd_vi.hw.config import AmdViFeatures
from drivers.amd_vi.hw.viommu import AmdViommuHw
from drivers.amd_vi.viommu_regs import CONTROL_VIOMMU_EN
from iommu_core.pgtable import formats
from iommu_core.pgtable.formats.base import PtFormat
from iommu_core.pgtable.walk import Access, WalkFault, WalkResult, walk
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import (
    ACCESS_EXEC,
    ACCESS_PRIV,
    ACCESS_READ,
    ACCESS_WRITE,
    DmaFault,
    IommuHardware,
    IrqLine,
    Mmio,
)
from iommu_core.platform.platform import Platform

_PAGE = 4096
_PAGE_MASK = _PAGE - 1
# IOTLB entry = output page | these flags.
_TLB_R = 1
_TLB_W = 2
_TLB_DIRTY_OK = 4  # a write may hit: the dirty bits it needs are already set
_ALL = (1 << 64) - 1

_CMD_WORDS = struct.Struct("<4I")
_GUEST_4LEVEL = formats.x86_64(4, sign_extend=True)
_ACC_R, _ACC_W = Access.READ, Access.WRITE

#: Per-access requirement on a TLB entry's flag bits.
_NEED = {ACCESS_READ: _TLB_R, ACCESS_WRITE: _TLB_W | _TLB_DIRTY_OK}


@attrs.frozen
class CompletedPpr:
    """A COMPLETE_PPR_REQUEST the device received (the PRI response)."""

    devid: int
    pasid: int
    gn: bool
    tag: int
    status: int


@attrs.frozen
class IotlbInvalidation:
    """An INVALIDATE_IOTLB_PAGES forwarded to a device (its ATC is not modelled)."""

    devid: int
    pasid: int
    gn: bool
    first: int
    last: int


@attrs.frozen(slots=True)
class _CachedDte:
    """A decoded, validated DTE as the DTE cache holds it (fast fields for the hot path)."""

    dte: DevTableEntry
    #: IOTLB tag for requests without PASID (None: untranslated or no TLB use).
    nopasid_tag: int | None
    #: Requests without PASID take the guest path (GV && GIoV).
    nopasid_guest: bool
    domid: int
    perm: int  # DTE IR/IW as _TLB_R/_TLB_W
    # decoded once: the fields every walk needs
    mode: int = 0
    had: int = 0
    host_root: int = 0
    glx: int = 0
    gcr3_root: int = 0
    guest_levels: int = 4
    host_fmt: PtFormat | None = None
    guest_fmt: PtFormat = _GUEST_4LEVEL
    pasid_bits: int = 9  # PASIDs the GCR3 table's GLX+1 levels index


class CommandLog(Sequence[IommuCmd]):
    """A live, read-only view of the commands the unit consumed (kept as raw words)."""

    def __init__(self, words: collections.deque[tuple[int, ...]]) -> None:
        self._words = words

    def __len__(self) -> int:
        return len(self._words)

    @overload
    def __getitem__(self, i: int) -> IommuCmd: ...
    @overload
    def __getitem__(self, i: slice) -> list[IommuCmd]: ...

    def __getitem__(self, i: int | slice) -> IommuCmd | list[IommuCmd]:
        if isinstance(i, slice):
            return [IommuCmd.of_words(w) for w in list(self._words)[i]]
        return IommuCmd.of_words(self._words[i])


class _XlateFault(Exception):
    """Internal: a translation failed; turned into an event, a PPR or both."""

    def __init__(self, ev_type: int, why: str, *, flags: int = 0, stage: str = "",
                 level: int | None = None, address: int | None = None, ppr_ok: bool = False,
                 illegal_dte: bool = False) -> None:
        super().__init__(why)
        self.ev_type = ev_type
        self.why = why
        self.flags = flags
        self.stage = stage
        self.level = level
        self.address = address
        self.ppr_ok = ppr_ok
        self.illegal_dte = illegal_dte


class Reg64Mmio(Mmio):
    """A window of 64-bit registers (``read``/``write`` by 8-aligned offset); a 32-bit
    store merges into its half of what ``read`` returns."""

    def __init__(self, read: Callable[[int], int], write: Callable[[int, int], None]
                 ) -> None:
        self._read = read
        self._write = write

    def read32(self, offset: int) -> int:
        v = self._read(offset & ~7)
        return (v >> 32) & 0xFFFF_FFFF if offset & 4 else v & 0xFFFF_FFFF

    def write32(self, offset: int, value: int) -> None:
        base = offset & ~7
        old = self._read(base)
        if offset & 4:
            new = (old & 0xFFFF_FFFF) | ((value & 0xFFFF_FFFF) << 32)
        else:
            new = (old & ~0xFFFF_FFFF & _ALL) | (value & 0xFFFF_FFFF)
        self._write(base, new)

    def read64(self, offset: int) -> int:
        return self._read(offset & ~7)

    def write64(self, offset: int, value: int) -> None:
        self._write(offset & ~7, value & _ALL)


class AmdIommuMmio(Reg64Mmio):
    """The unit's 512 KiB register window. 64-bit registers; 32-bit halves merge."""

    def __init__(self, hw: AmdIommuHw) -> None:
        super().__init__(lambda off: hw.regs.get(off, 0), hw.reg_write)
        self.hw = hw


class AmdIommuHw(IommuHardware):
    """One AMD-Vi unit (PCI segment 0)."""

    granule = _PAGE

    def __init__(self, name: str, features: AmdViFeatures, platform: Platform) -> None:
        self.name = name
        self.features = features
        self.platform = platform
        self.mem = platform.mem
        self._read_u64 = self.mem.read_u64
        self.tracer = platform.tracer
        self.regs: dict[int, int] = {
            MMIO_EXT_FEATURES: features.efr(),
            MMIO_EXT_FEATURES2: features.efr2(),
        }
        self.mmio: dict[str, Mmio] = {"regs": AmdIommuMmio(self)}
        # One line per log, as with IntCapXT (amd_iommu_int_thread_evtlog / _pprlog).
        self.irqs: dict[str, IrqLine] = {"evt": IrqLine(f"{name}-evt"),
                                         "ppr": IrqLine(f"{name}-ppr")}
        self._control = 0
        self._enabled = False
        self._dte_cache: dict[int, _CachedDte] = {}
        #: IOTLB: tag -> {iova page number -> output page | flags}. Host translations are
        #: tagged by DomainID; guest (GV=1) ones by DomainID | (PASID + 1) << 16.
        self._iotlb: dict[int, dict[int, int]] = {}
        #: Page-directory caches, keyed by (input prefix, level): host (v1) entries by
        #: DomainID, guest (v2) entries by the guest tag; a nested guest entry holds the
        #: host's translation of the next guest table. An entry is (level, table,
        #: attributes above it), where a walk resumes. A guest tag's GCR3 entry too.
        self._host_pde: dict[int, dict[int, tuple[int, int, int]]] = {}
        self._guest_pde: dict[int, dict[int, tuple[int, int, int]]] = {}
        self._gcr3: dict[int, int] = {}
        #: DomainID -> the guest tags cached under it (any of the three caches)
        self._guest_tags: dict[int, set[int]] = {}
        #: The IOTLB as the platform's DMA path reads it: (device, PASID) -> {iova page
        #: number: (output page, ACCESS_* a hit may use)}, copies of the entries a
        #: device's DMA found through its cached DTE (a write only where the dirty bits
        #: it needs are set), each dropped with its entry or the DTE.
        self.dma_hits: dict[tuple[Device, int | None], dict[int, tuple[int, int]]] = {}
        #: tag -> the published maps copying its entries; devid -> the same by device
        self._hits_of_tag: dict[int, dict[tuple[Device, int | None], None]] = {}
        self._hits_of_devid: dict[int, dict[tuple[Device, int | None], None]] = {}
        self._hit_tag: dict[tuple[Device, int | None], int] = {}
        self._ppr_tag: dict[int, int] = collections.defaultdict(int)
        #: What devices received (PRI responses; ATC invalidations), oldest first.
        self.ppr_responses: collections.deque[CompletedPpr] = collections.deque(maxlen=4096)
        self.iotlb_invalidations: collections.deque[IotlbInvalidation] = collections.deque(
            maxlen=4096)
        #: The words of every command consumed, oldest first (bounded).
        self._cmd_words: collections.deque[tuple[int, ...]] = collections.deque(maxlen=4096)
        self.stats: collections.Counter[str] = collections.Counter()
        self._in_cmd = False
        #: The HW-vIOMMU (prototype): guest command buffers, with two register windows.
        self.viommu: AmdViommuHw | None = None
        if features.hw_viommu:
            self.irqs["vf"] = IrqLine(f"{name}-vf")
            self.viommu = AmdViommuHw(self, features.viommu_guests, self.irqs["vf"])
            self.mmio["vf"] = self.viommu.vf_mmio
            self.mmio["vfctl"] = self.viommu.ctl_mmio

    # ===================================================================================
    # Registers
    # ===================================================================================
    def reg_read(self, off: int) -> int:
        return self.regs.get(off, 0)

    def _trace_reg(self, off: int, value: int) -> None:
        name = MMIO_REG_NAMES.get(off, f"{off:#x}")
        if off == MMIO_CONTROL_OFFSET:
            bits = [n for b, n in CONTROL_NAMES.items() if value >> b & 1]
            self.tracer.event("hw", "mmio_write", f"{self.name} CONTROL <- {value:#x} "
                              f"[{'|'.join(bits)}]")
        else:
            self.tracer.event("hw", "mmio_write", f"{self.name} {name} <- {value:#x}")

    def reg_write(self, off: int, value: int) -> None:
        if not 0 <= off < MMIO_REG_END_OFFSET:
            return
        if self.tracer.enabled:
            self._trace_reg(off, value)
        if off in (MMIO_EXT_FEATURES, MMIO_EXT_FEATURES2, MMIO_EVT_TAIL_OFFSET,
                   MMIO_PPR_TAIL_OFFSET):
            return  # read-only to software
        if off == MMIO_STATUS_OFFSET:
            self.regs[off] = self.regs.get(off, 0) & ~(value & MMIO_STATUS_W1C)
            return
        if off in (MMIO_CMD_HEAD_OFFSET, MMIO_EVT_HEAD_OFFSET, MMIO_PPR_HEAD_OFFSET):
            self.regs[off] = value & RING_PTR_MASK
            return
        if off == MMIO_CMD_TAIL_OFFSET:
            self.regs[off] = value & RING_PTR_MASK
            self._cmdbuf_run()
            return
        if off == MMIO_CONTROL_OFFSET:
            self._control_write(value)
            return
        self.regs[off] = value

    def _ctl(self, bit: int) -> bool:
        return bool(self._control >> bit & 1)

    @property
    def viommu_enabled(self) -> bool:
        """Guest command buffers run: the unit and CONTROL.VIOMMU_EN are on."""
        return self._enabled and self._ctl(CONTROL_VIOMMU_EN)

    def _set_status(self, mask: int, on: bool = True) -> None:
        st = self.regs.get(MMIO_STATUS_OFFSET, 0)
        self.regs[MMIO_STATUS_OFFSET] = (st | mask) if on else (st & ~mask)

    def _control_write(self, value: int) -> None:
        old = self._control
        self._control = value
        self.regs[MMIO_CONTROL_OFFSET] = value
        self._enabled = self._ctl(CONTROL_IOMMU_EN)
        # Enable handshakes: the log "running" status follows the enable bits.
        self._set_status(MMIO_STATUS_EVT_RUN_MASK, self._ctl(CONTROL_EVT_LOG_EN))
        self._set_status(MMIO_STATUS_PPR_RUN_MASK, self._ctl(CONTROL_PPRLOG_EN))
        if not old >> CONTROL_CMDBUF_EN & 1 and self._ctl(CONTROL_CMDBUF_EN):
            self._cmdbuf_run()
        if old >> CONTROL_IOMMU_EN & 1 and not self._enabled:
            self._flush_all()  # a disabled unit keeps nothing cached
        if self.viommu is not None and self.viommu_enabled:
            self.viommu.consume_all()

    # ===================================================================================
    # Rings in memory
    # ===================================================================================
    @staticmethod
    def _ring(base_reg: int) -> tuple[int, int]:
        """(base address, size in bytes) of a ring from its base register."""
        n = field_get(RING_LEN_MASK, base_reg)
        return base_reg & RING_BASE_ADDR_MASK, (1 << n) * 16 if n >= 8 else 0

    def ring_push(self, base_reg: int, head: int, tail: int, entry: bytes) -> int | None:
        """Write a 16-byte record at ``tail`` of the log ``base_reg`` describes: the new
        tail, or None when the log is full (or has no size) and nothing was written."""
        base, size = self._ring(base_reg)
        if size == 0:
            return None
        nxt = (tail + 16) % size
        if nxt == head % size:
            return None
        self.mem.write(base + tail % size, entry)
        return nxt

    def _log_write(self, base_off: int, head_off: int, tail_off: int, entry: bytes,
                   overflow_mask: int) -> bool:
        base_reg = self.regs.get(base_off, 0)
        if not self._ring(base_reg)[1]:
            return False
        nxt = self.ring_push(base_reg, self.regs.get(head_off, 0), self.regs.get(tail_off, 0),
                             entry)
        if nxt is None:
            self._set_status(overflow_mask)
            return False
        self.regs[tail_off] = nxt
        return True

    def _log_event(self, ev: EventLogEntry) -> None:
        self.stats["events"] += 1
        if self.tracer.enabled:
            self.tracer.event("hw", "event_log", f"{self.name} {ev.name} devid {ev.devid:#x} "
                              f"dom/pasid {ev.domid_pasid:#x} flags {ev.flags:#x} "
                              f"addr {ev.address:#x}")
        if not self._ctl(CONTROL_EVT_LOG_EN):
            return
        if self._log_write(MMIO_EVT_BUF_OFFSET, MMIO_EVT_HEAD_OFFSET, MMIO_EVT_TAIL_OFFSET,
                           ev.to_bytes(), MMIO_STATUS_EVT_OVERFLOW_MASK):
            self._set_status(MMIO_STATUS_EVT_INT_MASK)
            if self._ctl(CONTROL_EVT_INT_EN):
                self.irqs["evt"].assert_irq()

    def _log_ppr(self, entry: PprLogEntry) -> bool:
        if not (self._ctl(CONTROL_PPR_EN) and self._ctl(CONTROL_PPRLOG_EN)):
            return False
        if self.tracer.enabled:
            self.tracer.event("hw", "ppr_log", f"{self.name} {entry.raw[0]:#x} "
                              f"addr {entry.raw[1]:#x}")
        if not self._log_write(MMIO_PPR_LOG_OFFSET, MMIO_PPR_HEAD_OFFSET, MMIO_PPR_TAIL_OFFSET,
                               entry.to_bytes(), MMIO_STATUS_PPR_OVERFLOW_MASK):
            return False
        self.stats["ppr_requests"] += 1
        self._set_status(MMIO_STATUS_PPR_INT_MASK)
        if self._ctl(CONTROL_PPRINT_EN):
            self.irqs["ppr"].assert_irq()
        return True

    # ===================================================================================
    # Command buffer
    # ===================================================================================
    def run_ring(self, base_reg: int, get_head: Callable[[], int],
                 set_head: Callable[[int], None], get_tail: Callable[[], int],
                 execute: Callable[[tuple[int, ...], int], bool]) -> None:
        """The command engine's fetch loop, for the host's buffer and every guest's:
        ``execute(words, address)`` each command from head to tail in order; a command it
        refuses stops the loop with head on it."""
        base, size = self._ring(base_reg)
        if size == 0:
            return
        while True:
            head = get_head() % size
            if head == get_tail() % size:
                return
            words = _CMD_WORDS.unpack(self.mem.read(base + head, 16))
            if not execute(words, base + head):
                return
            set_head((head + 16) % size)

    def _cmdbuf_run(self) -> None:
        """Consume the host's commands from head to tail, in order, synchronously."""
        if not self._ctl(CONTROL_CMDBUF_EN) or self._in_cmd:
            return
        self._in_cmd = True
        regs = self.regs
        try:
            self.run_ring(regs.get(MMIO_CMD_BUF_OFFSET, 0),
                          lambda: regs.get(MMIO_CMD_HEAD_OFFSET, 0),
                          lambda h: regs.__setitem__(MMIO_CMD_HEAD_OFFSET, h),
                          lambda: regs.get(MMIO_CMD_TAIL_OFFSET, 0), self._host_cmd)
        finally:
            self._in_cmd = False

    def _host_cmd(self, words: tuple[int, ...], addr: int) -> bool:
        if self.exec_cmd(words):
            return True
        # Illegal command: logged; processing stops with head on it.
        self._log_event(EventLogEntry.make(EVENT_TYPE_ILL_CMD, 0, 0, 0, addr))
        return False

    @property
    def cmd_log(self) -> CommandLog:
        """Every command consumed, oldest first (the last 4096): the tour and tests."""
        return CommandLog(self._cmd_words)

    def exec_cmd(self, d: tuple[int, ...]) -> bool:
        """Execute one command (host's, or a guest's once its IDs are the host's);
        False: an illegal command, nothing done."""
        op = d[1] >> 28
        self._cmd_words.append(d)
        self.stats[CMD_NAMES.get(op) or f"opcode {op:#x}"] += 1
        if self.tracer.enabled:
            cmd = IommuCmd.of_words(d)
            self.tracer.event("hw", cmd.name, f"{self.name} {self._cmd_detail(cmd)}")
        if op == CMD_COMPL_WAIT:
            # In-order model: every earlier command has completed by now.
            if d[0] & CMD_COMPL_WAIT_STORE_MASK:
                addr = (d[0] & 0xFFFF_FFF8) | ((d[1] & 0xFFFFF) << 32)
                self.mem.write_u64(addr, d[2] | (d[3] << 32))
            if d[0] & CMD_COMPL_WAIT_INT_MASK:
                self._set_status(MMIO_STATUS_COM_WAIT_INT_MASK)
                if self._ctl(CONTROL_COMWAIT_EN):
                    self.irqs["evt"].assert_irq()
            return True
        if op == CMD_INV_DEV_ENTRY:
            self._dte_cache.pop(d[0] & 0xFFFF, None)
            self._unpublish_devid(d[0] & 0xFFFF)
            return True
        if op == CMD_INV_IOMMU_PAGES:
            first, last = self.inv_range(d[2], d[3])
            domid = d[1] & 0xFFFF
            pde = bool(d[2] & CMD_INV_IOMMU_PAGES_PDE_MASK)
            if d[2] & CMD_INV_IOMMU_PAGES_GN_MASK:
                tag = domid | (((d[0] & 0xFFFFF) + 1) << 16)
                self._inv_tag(tag, first, last)
                if pde:  # the guest's page directories and its GCR3 entry
                    self._gcr3.pop(tag, None)
                    _drop_pde_range(self._guest_pde.get(tag), first >> 12, last >> 12)
            else:
                self._inv_tag(domid, first, last)
                if pde:
                    _drop_pde_range(self._host_pde.get(domid), first >> 12, last >> 12)
                # Guest entries of this DomainID (combined translations, nested
                # directories holding host output) depend on the host table at
                # addresses the hardware cannot map back from a GPA range: all go.
                for tag in self._guest_tags.pop(domid, ()):
                    self._iotlb.pop(tag, None)
                    self._unpublish_tag(tag)
                    self._guest_pde.pop(tag, None)
                    self._gcr3.pop(tag, None)
            return True
        if op == CMD_INV_IOTLB_PAGES:
            first, last = self.inv_range(d[2], d[3])
            gn = bool(d[2] & CMD_INV_IOMMU_PAGES_GN_MASK)
            pasid = ((d[0] >> 16) & 0xFF) << 8 | ((d[1] >> 16) & 0xFF) if gn else 0
            self.iotlb_invalidations.append(
                IotlbInvalidation(d[0] & 0xFFFF, pasid, gn, first, last))
            return True
        if op == CMD_INV_IRT:
            return True  # interrupt remapping is not modelled
        if op == CMD_COMPLETE_PPR:
            gn = bool(d[2] & CMD_INV_IOMMU_PAGES_GN_MASK)
            self.ppr_responses.append(CompletedPpr(
                devid=d[0] & 0xFFFF, pasid=d[1] & 0xFFFFF if gn else 0, gn=gn,
                tag=d[3] & 0x1FF, status=(d[3] >> PPR_STATUS_SHIFT) & PPR_STATUS_MASK))
            return True
        if op == CMD_INV_ALL and self.features.ia:
            self._flush_all()
            return True
        return False

    @staticmethod
    def inv_range(d2: int, d3: int) -> tuple[int, int]:
        """Decode the address/S of INVALIDATE_IOMMU_PAGES / _IOTLB_PAGES: S=0 one page;
        S=1 the naturally aligned range whose size is 2^(1 + lowest clear bit >= 12)."""
        addr = ((d3 << 32) | (d2 & 0xFFFF_F000)) & _ALL
        if not d2 & CMD_INV_IOMMU_PAGES_SIZE_MASK:
            return addr, addr + _PAGE_MASK
        x = addr | _PAGE_MASK
        zero = ((x + 1) & ~x).bit_length() - 1
        if zero < 0 or zero >= 63:
            return 0, _ALL
        size = 1 << (zero + 1)
        first = addr & ~(size - 1) & _ALL
        return first, first + size - 1

    @staticmethod
    def _cmd_detail(cmd: IommuCmd) -> str:
        d = cmd.data
        op = cmd.opcode
        if op == CMD_INV_IOMMU_PAGES:
            first, last = AmdIommuHw.inv_range(d[2], d[3])
            gn = bool(d[2] & CMD_INV_IOMMU_PAGES_GN_MASK)
            pde = bool(d[2] & CMD_INV_IOMMU_PAGES_PDE_MASK)
            p = f" pasid {d[0] & 0xFFFFF}" if gn else ""
            return (f"domid {d[1] & 0xFFFF}{p} [{first:#x}, {last:#x}]"
                    f"{' GN' if gn else ''}{' PDE' if pde else ''}")
        if op in (CMD_INV_DEV_ENTRY, CMD_INV_IRT):
            return f"devid {d[0] & 0xFFFF:#x}"
        if op == CMD_INV_IOTLB_PAGES:
            first, last = AmdIommuHw.inv_range(d[2], d[3])
            return f"devid {d[0] & 0xFFFF:#x} [{first:#x}, {last:#x}]"
        if op == CMD_COMPL_WAIT:
            return f"store {d[2] | d[3] << 32:#x}"
        if op == CMD_COMPLETE_PPR:
            return f"devid {d[0] & 0xFFFF:#x} tag {d[3] & 0x1FF:#x} status {d[3] >> 12 & 0xF}"
        return ""

    # ===================================================================================
    # Caches
    # ===================================================================================
    def _flush_all(self) -> None:
        self._dte_cache.clear()
        self._iotlb.clear()
        self.dma_hits.clear()
        self._hits_of_tag.clear()
        self._hits_of_devid.clear()
        self._hit_tag.clear()
        self._host_pde.clear()
        self._guest_pde.clear()
        self._gcr3.clear()
        self._guest_tags.clear()

    def _inv_tag(self, tag: int, first: int, last: int) -> None:
        tlb = self._iotlb.get(tag)
        if not tlb:
            return
        if first == 0 and last == _ALL:
            del self._iotlb[tag]
            self._unpublish_tag(tag)
            return
        lo, hi = first >> 12, last >> 12
        if hi - lo < len(tlb):
            gone = [p for p in range(lo, hi + 1) if tlb.pop(p, None) is not None]
        else:
            gone = [p for p in tlb if lo <= p <= hi]
            for p in gone:
                del tlb[p]
        hks = self._hits_of_tag.get(tag)
        if hks and gone:
            for hk in hks:
                pub = self.dma_hits[hk]
                for p in gone:
                    pub.pop(p, None)

    # -- what the DMA path reads: copies of IOTLB entries --------------------------------
    def _publish(self, dev: Device, d: _CachedDte, pasid: int | None, iova: int) -> None:
        """Copy the IOTLB entry ``dev``'s access to ``iova`` found (if it is cached)."""
        tag = d.nopasid_tag if pasid is None else d.domid | ((pasid + 1) << 16)
        tlb = self._iotlb.get(tag) if tag is not None else None
        e = tlb.get(iova >> 12) if tlb else None
        if e is None or tag is None:
            return
        hk = (dev, pasid)
        pub = self.dma_hits.get(hk)
        if pub is None or self._hit_tag[hk] != tag:
            if pub is not None:
                self._unpublish(hk)
            pub = self.dma_hits[hk] = {}
            self._hit_tag[hk] = tag
            self._hits_of_tag.setdefault(tag, {})[hk] = None
            self._hits_of_devid.setdefault(dev.rid, {})[hk] = None
        w = _TLB_W | _TLB_DIRTY_OK
        pub[iova >> 12] = (e & ~_PAGE_MASK, (ACCESS_READ if e & _TLB_R else 0)
                           | (ACCESS_WRITE if e & w == w else 0))

    def _unpublish(self, hk: tuple[Device, int | None]) -> None:
        del self.dma_hits[hk]
        tag = self._hit_tag.pop(hk)
        for index, key in ((self._hits_of_tag, tag), (self._hits_of_devid, hk[0].rid)):
            hks = index.get(key)
            if hks is not None:
                hks.pop(hk, None)
                if not hks:
                    del index[key]

    def _unpublish_tag(self, tag: int) -> None:
        for hk in list(self._hits_of_tag.get(tag, ())):
            self._unpublish(hk)

    def _unpublish_devid(self, devid: int) -> None:
        for hk in list(self._hits_of_devid.get(devid, ())):
            self._unpublish(hk)

    def detach_device(self, dev: Device) -> None:
        for hk in [hk for hk in self.dma_hits if hk[0] is dev]:
            self._unpublish(hk)

    def iotlb_entries(self) -> int:
        """How many translations are cached (tests, the tour)."""
        return sum(len(t) for t in self._iotlb.values())

    # ===================================================================================
    # Device Table
    # ===================================================================================
    def _fetch_dte(self, devid: int) -> _CachedDte:
        """Read DTE[devid] as one 256-bit access, validate it, cache it."""
        dtb = self.regs.get(MMIO_DEV_TABLE_OFFSET, 0)
        entries = ((dtb & DEV_TABLE_SIZE_MASK) + 1) * _PAGE // DEV_TABLE_ENTRY_SIZE
        if devid >= entries:
            raise _XlateFault(EVENT_TYPE_ILL_DEV, f"DeviceID {devid:#x} beyond the "
                              f"{entries}-entry Device Table", illegal_dte=True)
        raw = self.mem.read((dtb & RING_BASE_ADDR_MASK) + devid * DEV_TABLE_ENTRY_SIZE, 32)
        dte = DevTableEntry.from_bytes(raw)
        self._validate_dte(dte)
        perm = (_TLB_R if dte.ir else 0) | (_TLB_W if dte.iw else 0)
        tag: int | None = None
        guest = False
        if dte.v and dte.tv:
            if dte.gv and dte.giov:
                guest = True
                tag = dte.domid | (1 << 16)
            elif dte.mode:
                tag = dte.domid
        cached = _CachedDte(dte=dte, nopasid_tag=tag, nopasid_guest=guest,
                            domid=dte.domid, perm=perm, mode=dte.mode, had=dte.had,
                            host_root=dte.host_pt_root, glx=dte.glx,
                            pasid_bits=9 * (dte.glx + 1),
                            gcr3_root=dte.gcr3_root, guest_levels=5 if dte.gpt_level else 4,
                            host_fmt=formats.amd_v1(dte.mode) if 0 < dte.mode < 7 else None,
                            guest_fmt=formats.x86_64(5 if dte.gpt_level else 4,
                                                     sign_extend=True))
        self._dte_cache[devid] = cached
        if self.tracer.enabled:
            self.tracer.event("hw", "dte_fetch", f"{self.name} devid {devid:#x} {dte!r}")
        return cached

    def _validate_dte(self, dte: DevTableEntry) -> None:
        if not (dte.v and dte.tv):
            return
        f = self.features
        bad = ""
        mode = dte.mode
        if mode == 7:
            bad = "Mode 7 is reserved"
        elif mode > f.max_host_levels:
            bad = f"Mode {mode} exceeds the {f.max_host_levels} host levels implemented"
        elif (dte.had and not (f.hasup or f.hdsup)) or (dte.had == 3 and not f.hdsup):
            bad = "HAD set without host access/dirty support"
        elif dte.ppr and not f.ppr:
            bad = "PPR set without PPR support"
        elif dte.gv:
            if not (f.gt and self._ctl(CONTROL_GT_EN)):
                bad = "GV set while guest translation is not enabled"
            elif dte.glx == 3 or dte.glx > f.glx:
                bad = f"GLX {dte.glx} not supported"
            elif dte.gpt_level > 1 or (dte.gpt_level == 1 and f.gats != 1):
                bad = f"GPT level {dte.gpt_level} not supported"
            elif dte.giov and not f.giosup:
                bad = "GIoV set without GIOSUP"
        if bad:
            raise _XlateFault(EVENT_TYPE_ILL_DEV, bad, illegal_dte=True)

    # ===================================================================================
    # Translation
    # ===================================================================================
    def dma_translate(self, dev: Device, pasid: int | None, iova: int, access: int) -> int:
        if not self._enabled:
            return iova
        d = self._dte_cache.get(dev.rid)
        if d is not None:
            tag = d.nopasid_tag if pasid is None else d.domid | ((pasid + 1) << 16)
            if tag is not None:
                tlb = self._iotlb.get(tag)
                if tlb is not None:
                    e = tlb.get(iova >> 12)
                    if e is not None:
                        need = _NEED.get(access & (ACCESS_READ | ACCESS_WRITE), _TLB_R)
                        if e & need == need:
                            return (e & ~_PAGE_MASK) | (iova & _PAGE_MASK)
        return self._translate_slow(dev, pasid, iova, access)

    def _translate_slow(self, dev: Device, pasid: int | None, iova: int, access: int) -> int:
        devid = dev.rid
        d: _CachedDte | None = None
        try:
            d = self._dte_cache.get(devid) or self._fetch_dte(devid)
            pa = self._translate(d, pasid, iova, access)
        except _XlateFault as f:
            self._fault(dev, devid, d, pasid, iova, access, f)
        if not access & ACCESS_PRIV:
            self._publish(dev, d, pasid, iova)
        return pa

    def _translate(self, d: _CachedDte, pasid: int | None, iova: int, access: int) -> int:
        dte = d.dte
        if not dte.v:
            return iova  # V=0: the unit does not translate this device
        if not dte.tv:
            raise _XlateFault(EVENT_TYPE_IO_FAULT, "DTE.TV=0: no translation information")
        wr = bool(access & ACCESS_WRITE)
        if pasid is not None:
            if not dte.gv:
                raise _XlateFault(EVENT_TYPE_INV_DEV_REQ,
                                  "request with PASID to a DTE with GV=0")
            if pasid > self.features.max_pasid:
                raise _XlateFault(EVENT_TYPE_INV_DEV_REQ, f"PASID {pasid} above PASMAX")
            return self._translate_guest(d, pasid, iova, access, wr, True)
        if d.nopasid_guest:
            return self._translate_guest(d, 0, iova, access, wr, False)
        need = _TLB_W if wr else _TLB_R
        if dte.mode == 0:
            if d.perm & need != need:
                raise _XlateFault(EVENT_TYPE_IO_FAULT, "DTE IR/IW deny the access",
                                  flags=EVENT_FLAG_PR, stage="dte")
            return iova
        pa, perm, dirty_ok = self._walk_v1(d, iova, access)
        self._fill(d.domid, iova, pa, perm, dirty_ok)
        return pa | (iova & _PAGE_MASK)

    def _walk_v1(self, d: _CachedDte, addr: int, access: int, stage: str = "host"
                 ) -> tuple[int, int, bool]:
        """Host (v1) walk, from the lowest table the DomainID's page-directory cache
        holds: (output 4K page, effective _TLB_R/_TLB_W, dirty bits set)."""
        fmt = d.host_fmt
        assert fmt is not None
        wr = access & ACCESS_WRITE
        had = d.had
        vpn = addr >> 12
        pdes = self._host_pde.get(d.domid)
        # the leaf table (4 KiB pages), else its parent (2 MiB pages), else the scan
        start = pdes.get(vpn >> 9 << 3) or pdes.get(vpn >> 18 << 3 | 1) if pdes else None
        if start is None:
            start = _pde_start(pdes, vpn, fmt.levels - 1)
        tables: list[tuple[int, int, int]] | None = [] if start is None or start[0] else None
        res = walk(fmt, self._read_u64, d.host_root, addr,
                   access=_ACC_W if wr else _ACC_R, privileged=True,
                   set_accessed=bool(had & 1), set_dirty=had == 3,
                   write_u64=self.mem.write_u64 if had else None, start=start,
                   on_table=None if tables is None else
                   lambda lv, nxt, acc: tables.append((lv - 1, nxt, acc)))
        if self.tracer.enabled:
            self.tracer.event("hw", "walk_v1", f"{self.name} {stage} {addr:#x} "
                              f"mode {d.mode}: {self._walk_str(res)}")
        if isinstance(res, WalkFault):
            present = res.reason == "permission"
            raise _XlateFault(EVENT_TYPE_IO_FAULT, f"{stage} v1 walk: {res.reason} at level "
                              f"{res.level}", flags=EVENT_FLAG_PR if present else 0,
                              stage=stage, level=res.level, address=addr, ppr_ok=True)
        if tables:
            if pdes is None:
                pdes = self._host_pde[d.domid] = {}
            for entry in tables:
                pdes[_pde_key(vpn, entry[0])] = entry
        eff = d.perm & ((_TLB_R if res.readable else 0) | (_TLB_W if res.writable else 0))
        need = _TLB_W if wr else _TLB_R
        if eff & need != need:
            raise _XlateFault(EVENT_TYPE_IO_FAULT, f"{stage}: DTE IR/IW deny the access",
                              flags=EVENT_FLAG_PR, stage=stage, address=addr, ppr_ok=True)
        return res.oa & ~_PAGE_MASK, eff, bool(wr) or had != 3

    def _host_addr(self, d: _CachedDte, gpa: int, what: str) -> int:
        """A guest structure's GPA through the host table (a nested read)."""
        pa, _perm, _ = self._walk_v1(d, gpa, ACCESS_READ, what)
        return pa | (gpa & _PAGE_MASK)

    def _fetch_gcr3(self, d: _CachedDte, pasid: int, tag: int, gn: int) -> int:
        """The guest CR3 of ``pasid`` from the GCR3 table (GLX+1 levels of 512 entries,
        indexed by PASID bits 9*level), into the GCR3 cache."""
        table = d.gcr3_root
        trp_gpa = d.mode != 0 and self._ctl(CONTROL_GCR3TRPMODE)
        for level in range(d.glx, -1, -1):
            addr = table + ((pasid >> (9 * level)) & 0x1FF) * 8
            if trp_gpa:
                addr = self._host_addr(d, addr, "gcr3-table")
            entry = self.mem.read_u64(addr)
            if not entry & GCR3_VALID:
                raise _XlateFault(EVENT_TYPE_IO_FAULT, f"GCR3 entry for PASID {pasid} "
                                  f"not valid (level {level})", flags=gn, stage="gcr3",
                                  level=level, ppr_ok=True)
            table = entry & GCR3_ADDR_MASK
        self._gcr3[tag] = table
        self._guest_tags.setdefault(d.domid, set()).add(tag)
        return table

    def _translate_guest(self, d: _CachedDte, pasid: int, iova: int, access: int, wr: bool,
                         pasid_valid: bool) -> int:
        gn = EVENT_FLAG_GN if pasid_valid else 0
        if pasid >> d.pasid_bits:
            raise _XlateFault(EVENT_TYPE_IO_FAULT, f"PASID {pasid} beyond GLX {d.glx}",
                              flags=gn, stage="gcr3")
        tag = d.domid | ((pasid + 1) << 16)
        cr3 = self._gcr3.get(tag)
        if cr3 is None:
            cr3 = self._fetch_gcr3(d, pasid, tag, gn)
        nested = d.mode != 0
        pdes = self._guest_pde.get(tag)
        start = pdes.get(iova >> 21 << 3) if pdes else None  # the leaf table
        if start is not None:  # nothing above it to walk or to note
            res = walk(d.guest_fmt, self._read_u64, cr3, iova,
                       access=_ACC_W if wr else _ACC_R, privileged=bool(access & ACCESS_PRIV),
                       set_accessed=not nested, set_dirty=not nested,
                       write_u64=None if nested else self.mem.write_u64, start=start)
        else:
            res = self._walk_guest_tables(d, tag, pdes, cr3, iova, access, wr)
        if self.tracer.enabled:
            self.tracer.event("hw", "walk_v2", f"{self.name} pasid {pasid} {iova:#x} "
                              f"{d.guest_levels}-level{' nested' if nested else ''}: "
                              f"{self._walk_str(res)}")
        if isinstance(res, WalkFault):
            flags = gn | (EVENT_FLAG_PR if res.reason == "permission" else 0)
            if not access & ACCESS_PRIV:
                flags |= EVENT_FLAG_US
            raise _XlateFault(EVENT_TYPE_IO_FAULT, f"guest v2 walk: {res.reason} at level "
                              f"{res.level}", flags=flags, stage="guest", level=res.level,
                              ppr_ok=True)
        if access & ACCESS_EXEC and not res.executable:
            raise _XlateFault(EVENT_TYPE_IO_FAULT, "guest page not executable",
                              flags=gn | EVENT_FLAG_PR, stage="guest", ppr_ok=True)
        gperm = (_TLB_R if res.readable else 0) | (_TLB_W if res.writable else 0)
        if nested:
            pa, hperm, dirty_ok = self._walk_v1(d, res.oa, access, "host")
            perm = gperm & hperm
        else:
            need = _TLB_W if wr else _TLB_R
            if d.perm & need != need:
                raise _XlateFault(EVENT_TYPE_IO_FAULT, "DTE IR/IW deny the access",
                                  flags=gn | EVENT_FLAG_PR, stage="dte", ppr_ok=True)
            pa, perm, dirty_ok = res.oa & ~_PAGE_MASK, gperm & d.perm, wr
        self._fill(tag, iova, pa, perm, dirty_ok)
        return pa | (iova & _PAGE_MASK)

    def _walk_guest_tables(self, d: _CachedDte, tag: int,
                           pdes: dict[int, tuple[int, int, int]] | None, cr3: int,
                           iova: int, access: int, wr: bool) -> WalkResult | WalkFault:
        """A guest walk from the lowest cached table above the leaf one (or the root),
        noting each table it descends into in the guest page-directory cache. Nested,
        table addresses are GPAs: the cache keeps the host's translation of each."""
        nested = d.mode != 0
        vpn = iova >> 12
        tables: list[tuple[int, int, int]] = []
        spa_of: dict[int, int] = {}

        def table_host(gpa: int) -> int:
            pa = self._host_addr(d, gpa, "guest-table")
            spa_of[gpa >> 12] = pa >> 12
            return pa

        res = walk(d.guest_fmt, self._read_u64, cr3, iova,
                   access=_ACC_W if wr else _ACC_R,
                   privileged=bool(access & ACCESS_PRIV),
                   # The unit updates guest A/D like the CPU; not through a nested S2,
                   # whose mapping of the table page may be read-only.
                   set_accessed=not nested, set_dirty=not nested,
                   write_u64=None if nested else self.mem.write_u64,
                   table_xlate=table_host if nested else None,
                   start=_pde_start(pdes, vpn, d.guest_levels - 1),
                   on_table=lambda lv, nxt, acc: tables.append((lv - 1, nxt, acc)))
        if tables and not isinstance(res, WalkFault):
            if pdes is None:
                pdes = self._guest_pde[tag] = {}
                self._guest_tags.setdefault(d.domid, set()).add(tag)
            for level, nxt, acc in tables:
                if nested:
                    page = spa_of.get(nxt >> 12)
                    if page is None:
                        continue
                    nxt = page << 12 | (nxt & _PAGE_MASK)
                pdes[_pde_key(vpn, level)] = (level, nxt, acc)
        return res

    @staticmethod
    def _walk_str(res: WalkResult | WalkFault) -> str:
        if isinstance(res, WalkFault):
            return f"fault {res.reason} at level {res.level}"
        return f"-> {res.oa:#x} ({res.page_size:#x} page, level {res.level})"

    def _fill(self, tag: int, iova: int, pa: int, perm: int, dirty_ok: bool) -> None:
        tlb = self._iotlb.get(tag)
        if tlb is None:
            tlb = self._iotlb[tag] = {}
            if tag >> 16:
                self._guest_tags.setdefault(tag & 0xFFFF, set()).add(tag)
        vpn = iova >> 12
        new = pa | perm | (_TLB_DIRTY_OK if dirty_ok else 0)
        if tlb.get(vpn, new) != new:  # replaced: the copies of the old entry go
            for hk in self._hits_of_tag.get(tag, ()):
                self.dma_hits[hk].pop(vpn, None)
        tlb[vpn] = new

    # ===================================================================================
    # Faults: event log record or PPR, interrupt, then the device sees the abort
    # ===================================================================================
    def _fault(self, dev: Device, devid: int, d: _CachedDte | None, pasid: int | None,
               iova: int, access: int, f: _XlateFault) -> NoReturn:
        wr = bool(access & ACCESS_WRITE)
        dte = d.dte if d is not None else None
        detail: dict[str, Any] = {"devid": devid, "why": f.why, "stage": f.stage}
        if f.level is not None:
            detail["level"] = f.level
        if f.address is not None and f.address != iova:
            detail["gpa"] = f.address
        if dte is not None:
            detail["domid"] = dte.domid
        # A page request instead of an abort: PRI-capable device, DTE.PPR, PPR enabled.
        if (f.ppr_ok and dte is not None and dte.ppr and dev.pri and dev.ats
                and pasid is not None):
            tag = self._ppr_tag[devid]
            self._ppr_tag[devid] = (tag + 1) & 0x1FF
            flags = PPR_FLAG_GN | PPR_FLAG_US
            flags |= PPR_FLAG_WRITE if wr else PPR_FLAG_READ
            if access & ACCESS_EXEC:
                flags |= PPR_FLAG_EXEC
            if access & ACCESS_PRIV:
                flags &= ~PPR_FLAG_US
            entry = PprLogEntry.make(devid, pasid, tag | 0x200, flags, iova & ~_PAGE_MASK)
            if self._log_ppr(entry):
                detail["tag"] = tag
                raise DmaFault(dev.name, iova, pasid, access, "PPR_REQUEST", detail,
                               page_request=True, code=f.ev_type)
        flags = f.flags | (EVENT_FLAG_RW if wr else 0)
        if pasid is not None:
            flags |= EVENT_FLAG_GN
        domid_pasid = pasid if flags & EVENT_FLAG_GN and pasid is not None else (
            dte.domid if dte is not None else 0)
        ev = EventLogEntry.make(f.ev_type, devid, domid_pasid, flags, iova)
        self._log_event(ev)
        detail["flags"] = flags
        raise DmaFault(dev.name, iova, pasid, access, EVENT_NAMES[f.ev_type], detail,
                       code=f.ev_type)


# =======================================================================================
# Page-directory caches
# =======================================================================================
def _pde_key(vpn: int, level: int) -> int:
    """The key of the level-``level`` table holding ``vpn`` (9 index bits a level)."""
    return (vpn >> (9 * (level + 1))) << 3 | level


def _pde_start(pdes: dict[int, tuple[int, int, int]] | None, vpn: int, top: int
               ) -> tuple[int, int, int] | None:
    """Where a walk may resume: the lowest cached table on the way to ``vpn``
    (an entry is the walk's ``start``: level, table, attributes above it)."""
    if pdes:
        for level in range(top):
            hit = pdes.get(_pde_key(vpn, level))
            if hit is not None:
                return hit
    return None


def _drop_pde_range(pdes: dict[int, tuple[int, int, int]] | None, first: int, last: int) -> None:
    """Cached directory entries whose table maps part of vpns [first, last]."""
    if not pdes:
        return
    for level in range(6):
        s = 9 * (level + 1)
        lo, hi = first >> s, last >> s
        if hi - lo < len(pdes):
            for prefix in range(lo, hi + 1):
                pdes.pop(prefix << 3 | level, None)
        else:
            for k in [k for k in pdes if k & 7 == level and lo <= k >> 3 <= hi]:
                del pdes[k]
