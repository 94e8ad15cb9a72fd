"""The DMA engine behind BAR0 of every simulated PCI function: a device a program can make
DMA through the IOMMU, with nothing but VFIO (modelled on QEMU's ``edu`` device).

BAR0 is 8 KiB: a page of registers, then the engine's 4 KiB internal buffer. Software
writes a source, a destination, a length and optionally a PASID, then a command; the engine
moves the bytes between its buffer and memory through the IOMMU the function sits behind
(the path of ``Machine.dma_read``/``dma_write``), reports the outcome in STATUS and ERROR
and, if asked, interrupts (MSI, else INTx). Registers (little endian; 64-bit ones may be
written as two 32-bit halves; reserved offsets read 0 and ignore writes):

======  ==============  ====  ================================================================
offset  name            type  meaning
======  ==============  ====  ================================================================
0x000   ID              RO    ``0x01008e5a``: engine version 1.0, the project's vendor id
0x004   SCRATCH         RW    reads back the bitwise inverse of what was written (liveness)
0x008   BUF_SIZE        RO    ``0x1000``: the internal buffer's size
0x00c   CTRL            RW    bit 0 PAUSE: a started transfer waits (BUSY) until PAUSE clears
0x020   STATUS          RO    bit 0 BUSY, bit 1 DONE, bit 2 ERROR
0x024   IRQ_STATUS      RO    bit 0 a transfer completed, bit 1 a transfer failed
0x028   IRQ_ACK         WO    write 1s to clear IRQ_STATUS bits (INTx drops when it is 0)
0x02c   COUNT           RO    transfers finished (either way), modulo 2^32
0x030   ERROR           RO    bits 7:0 the error (ERR_*), bits 31:16 the IOMMU's fault code
0x038   ERR_ADDR        RO64  the address the IOMMU refused
0x080   SRC             RW64  source: an IOVA (to the device) or a buffer offset (from it)
0x088   DST             RW64  destination: a buffer offset (to the device) or an IOVA
0x090   LEN             RW64  bytes to move: 1 to BUF_SIZE - the buffer offset
0x098   CMD             WO    bit 0 START, bit 1 FROM_DEVICE (buffer -> memory; clear: memory
                              -> buffer), bit 2 IRQ (interrupt when the transfer ends); reads 0
0x0a0   PASID           RW    bits 19:0 the PASID, bit 31 PASID_VALID: tag the DMA with it
0x1000  BUF             RW    the 4 KiB buffer
======  ==============  ====  ================================================================

A START latches SRC/DST/LEN/PASID and the direction, clears DONE, ERROR and the error, and
sets BUSY; the transfer runs at once (unless PAUSE), and ends with DONE or with ERROR and
``ERR_FAULT`` (the IOMMU aborted it: ERROR holds the hardware's fault code, ERR_ADDR the
address; the fault is also reported wherever the IOMMU reports it) or ``ERR_PAGE_REQUEST``
(the IOMMU turned it into a page request: answer it, then start again), or
``ERR_BUS_MASTER`` (Bus Master Enable is off). A faulting transfer moves nothing.

Bad programming — an unknown command bit (``ERR_COMMAND``), a START while BUSY
(``ERR_BUSY``), a length of 0 or past the buffer or the address space (``ERR_LENGTH``), a
PASID the function cannot send (``ERR_PASID``) — sets ERROR and the error and nothing else:
no transfer, no interrupt, BUSY and DONE as they were. No write ever fails.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import attrs

from iommu_core.platform.dma import DmaFault
from iommu_core.platform.pci import PciBarOps

if TYPE_CHECKING:
    from iommu_core.platform.bus import Device

DMA_BAR_SIZE = 0x2000
DMA_BUF_OFFSET = 0x1000
DMA_BUF_SIZE = 0x1000

DMA_ID = 0x000
DMA_SCRATCH = 0x004
DMA_BUF_SIZE_REG = 0x008
DMA_CTRL = 0x00C
DMA_STATUS = 0x020
DMA_IRQ_STATUS = 0x024
DMA_IRQ_ACK = 0x028
DMA_COUNT = 0x02C
DMA_ERROR = 0x030
DMA_ERR_ADDR = 0x038
DMA_SRC = 0x080
DMA_DST = 0x088
DMA_LEN = 0x090
DMA_CMD = 0x098
DMA_PASID = 0x0A0

DMA_ID_VALUE = 0x0100_8E5A
DMA_CTRL_PAUSE = 1 << 0
DMA_STATUS_BUSY = 1 << 0
DMA_STATUS_DONE = 1 << 1
DMA_STATUS_ERROR = 1 << 2
DMA_IRQ_DONE = 1 << 0
DMA_IRQ_ERROR = 1 << 1
DMA_CMD_START = 1 << 0
DMA_CMD_FROM_DEVICE = 1 << 1
DMA_CMD_IRQ = 1 << 2
DMA_CMD_VALID = DMA_CMD_START | DMA_CMD_FROM_DEVICE | DMA_CMD_IRQ
DMA_PASID_MASK = (1 << 20) - 1
DMA_PASID_VALID = 1 << 31

#: ERROR bits 7:0.
ERR_NONE = 0
ERR_FAULT = 1
ERR_PAGE_REQUEST = 2
ERR_BUS_MASTER = 3
ERR_COMMAND = 4
ERR_BUSY = 5
ERR_LENGTH = 6
ERR_PASID = 7
ERR_NAMES = {ERR_NONE: "none", ERR_FAULT: "fault", ERR_PAGE_REQUEST: "page request",
             ERR_BUS_MASTER: "bus master disabled", ERR_COMMAND: "unknown command bits",
             ERR_BUSY: "busy", ERR_LENGTH: "bad length", ERR_PASID: "bad PASID"}
DMA_ERROR_CODE_SHIFT = 16

_U32 = 0xFFFF_FFFF
_U64 = (1 << 64) - 1
#: The 64-bit registers: offset of the low half -> attribute.
_REG64 = {DMA_SRC: "src", DMA_DST: "dst", DMA_LEN: "len", DMA_ERR_ADDR: "err_addr"}
_WRITABLE64 = ("src", "dst", "len")


@attrs.frozen
class Transfer:
    """What a START latched."""

    from_device: bool
    iova: int
    offset: int
    length: int
    pasid: int | None
    irq: bool


class DmaEngine(PciBarOps):
    """The engine's registers and buffer (the BAR0 model of ``dev``'s function)."""

    doorbells = frozenset({DMA_CTRL, DMA_CMD})

    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.buf = bytearray(DMA_BUF_SIZE)
        self.reset()

    def reset(self) -> None:
        self.scratch = 0
        self.ctrl = 0
        self.status = 0
        self.irq_status = 0
        self.count = 0
        self.error = 0
        self.err_addr = 0
        self.src = self.dst = self.len = 0
        self.pasid = 0
        self.pending: Transfer | None = None
        self.buf[:] = bytes(DMA_BUF_SIZE)

    # -- register reads (no side effects) -------------------------------------------------
    def _read32(self, off: int) -> int:
        if off == DMA_ID:
            return DMA_ID_VALUE
        if off == DMA_SCRATCH:
            return ~self.scratch & _U32
        if off == DMA_BUF_SIZE_REG:
            return DMA_BUF_SIZE
        if off == DMA_CTRL:
            return self.ctrl
        if off == DMA_STATUS:
            return self.status
        if off == DMA_IRQ_STATUS:
            return self.irq_status
        if off == DMA_COUNT:
            return self.count
        if off == DMA_ERROR:
            return self.error
        if off == DMA_PASID:
            return self.pasid
        lo = off & ~7
        name = _REG64.get(lo)
        if name is not None:
            value: int = getattr(self, name)
            return (value >> (32 if off & 4 else 0)) & _U32
        return 0  # reserved, IRQ_ACK and CMD

    def read(self, offset: int, size: int) -> int:
        if offset >= DMA_BUF_OFFSET:
            o = offset - DMA_BUF_OFFSET
            return int.from_bytes(self.buf[o : o + size], "little")
        if size == 8:
            return self._read32(offset) | (self._read32(offset + 4) << 32)
        word = self._read32(offset & ~3)
        return (word >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)

    def snapshot(self, offset: int, n: int) -> bytes:
        page = bytearray(DMA_BUF_OFFSET)
        for off in (DMA_ID, DMA_SCRATCH, DMA_BUF_SIZE_REG, DMA_CTRL, DMA_STATUS,
                    DMA_IRQ_STATUS, DMA_COUNT, DMA_ERROR, DMA_PASID):
            struct.pack_into("<I", page, off, self._read32(off))
        for off, name in _REG64.items():
            struct.pack_into("<Q", page, off, getattr(self, name))
        return (bytes(page) + self.buf)[offset : offset + n]

    # -- register writes ------------------------------------------------------------------
    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= DMA_BUF_OFFSET:
            o = offset - DMA_BUF_OFFSET
            self.buf[o : o + size] = value.to_bytes(size, "little")
            return
        if size == 8:
            self._write32(offset, value & _U32)
            self._write32(offset + 4, value >> 32)
            return
        if size < 4:  # the bytes the store enables, over what the register holds
            word = offset & ~3
            shift = 8 * (offset & 3)
            mask = ((1 << (8 * size)) - 1) << shift
            cur = self.scratch if word == DMA_SCRATCH else self._read32(word)
            value = (cur & ~mask) | ((value << shift) & mask)
            offset = word
        self._write32(offset, value & _U32)

    def _write32(self, off: int, value: int) -> None:
        if off == DMA_SCRATCH:
            self.scratch = value
        elif off == DMA_CTRL:
            was_paused = self.ctrl & DMA_CTRL_PAUSE
            self.ctrl = value & DMA_CTRL_PAUSE
            if was_paused and not self.ctrl and self.pending is not None:
                self._run()
        elif off == DMA_IRQ_ACK:
            self.irq_status &= ~value
            if not self.irq_status and self.dev.pci is not None:
                self.dev.pci.lower_irq()
        elif off == DMA_CMD:
            self._command(value)
        elif off == DMA_PASID:
            self.pasid = value & (DMA_PASID_MASK | DMA_PASID_VALID)
        elif (off & ~7) in _REG64 and _REG64[off & ~7] in _WRITABLE64:
            name = _REG64[off & ~7]
            cur = getattr(self, name)
            shift = 32 if off & 4 else 0
            setattr(self, name, (cur & ~(_U32 << shift)) | (value << shift))

    # -- the engine -----------------------------------------------------------------------
    def _reject(self, kind: int) -> None:
        """Bad programming: ERROR and the error, nothing else."""
        self.status |= DMA_STATUS_ERROR
        self.error = kind

    def _command(self, cmd: int) -> None:
        if cmd & ~DMA_CMD_VALID:
            self._reject(ERR_COMMAND)
            return
        if not cmd & DMA_CMD_START:
            return
        if self.status & DMA_STATUS_BUSY:
            self._reject(ERR_BUSY)
            return
        from_device = bool(cmd & DMA_CMD_FROM_DEVICE)
        iova, offset = (self.dst, self.src) if from_device else (self.src, self.dst)
        if not self.len or offset + self.len > DMA_BUF_SIZE or iova + self.len - 1 > _U64:
            self._reject(ERR_LENGTH)
            return
        pasid = None
        if self.pasid & DMA_PASID_VALID:
            pasid = self.pasid & DMA_PASID_MASK
            if pasid >= self.dev.max_pasids:
                self._reject(ERR_PASID)
                return
        self.pending = Transfer(from_device, iova, offset, self.len, pasid,
                                bool(cmd & DMA_CMD_IRQ))
        self.status = DMA_STATUS_BUSY
        self.error = ERR_NONE
        self.err_addr = 0
        if not self.ctrl & DMA_CTRL_PAUSE:
            self._run()

    def _run(self) -> None:
        t = self.pending
        assert t is not None
        pdev = self.dev.pci
        port = self.dev.dma_port
        if pdev is None or port is None or not pdev.bus_master():
            self._finish(t, ERR_BUS_MASTER)
            return
        tracer = port.tracer
        if tracer.enabled:
            what = "write" if t.from_device else "read"
            p = "" if t.pasid is None else f" pasid {t.pasid}"
            with tracer.span("hw", "dma_engine", f"{self.dev.name} DMA {what} iova "
                             f"{t.iova:#x} len {t.length}{p}"):
                self._transfer(t)
        else:
            self._transfer(t)

    def _transfer(self, t: Transfer) -> None:
        port = self.dev.dma_port
        assert port is not None
        try:
            if t.from_device:
                port.write(self.dev, t.iova, bytes(self.buf[t.offset : t.offset + t.length]),
                           t.pasid)
            else:
                self.buf[t.offset : t.offset + t.length] = port.read(self.dev, t.iova,
                                                                      t.length, t.pasid)
        except DmaFault as f:
            self._finish(t, ERR_PAGE_REQUEST if f.page_request else ERR_FAULT, f.code,
                         f.address)
            return
        self._finish(t, ERR_NONE)

    def _finish(self, t: Transfer, kind: int, code: int = 0, addr: int = 0) -> None:
        self.pending = None
        self.count = (self.count + 1) & _U32
        self.status = DMA_STATUS_ERROR if kind else DMA_STATUS_DONE
        self.error = kind | ((code & 0xFFFF) << DMA_ERROR_CODE_SHIFT)
        self.err_addr = addr & _U64
        if t.irq:
            self.irq_status |= DMA_IRQ_ERROR if kind else DMA_IRQ_DONE
            if self.dev.pci is not None:
                self.dev.pci.raise_irq()
