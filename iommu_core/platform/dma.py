"""The hardware side of the platform: MMIO, interrupts, IOMMU hardware models, DMA faults.

A driver reaches its hardware only through an :class:`Mmio` region, the interrupt lines
it requested, and memory it allocated; the hardware model never calls the driver: it
raises an interrupt, which the platform delivers to whatever handler was requested.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from iommu_core.platform.bus import Device

ACCESS_READ = 1
ACCESS_WRITE = 2
ACCESS_EXEC = 4
ACCESS_PRIV = 8

_ACCESS_NAMES = {ACCESS_READ: "read", ACCESS_WRITE: "write", ACCESS_EXEC: "exec"}


def access_str(access: int) -> str:
    s = "/".join(n for b, n in _ACCESS_NAMES.items() if access & b) or "none"
    return s + ("+priv" if access & ACCESS_PRIV else "")


class DmaFault(Exception):
    """A device's DMA was not translated: the IOMMU aborted it (or parked it for PRI).

    ``reason`` is the hardware's own name for the fault (an SMMU event id such as
    ``F_TRANSLATION``, a VT-d fault reason, an AMD event type) and ``code`` its number in
    the hardware's records (the event id 0x10, fault reason 0x91, event type 2; 0 when the
    hardware has none); ``detail`` carries the rest of the record (level, StreamID...).
    """

    def __init__(
        self,
        device: str,
        address: int,
        pasid: int | None,
        access: int,
        reason: str,
        detail: dict[str, Any] | None = None,
        page_request: bool = False,
        code: int = 0,
    ) -> None:
        self.device = device
        self.address = address
        self.pasid = pasid
        self.access = access
        self.reason = reason
        self.detail = dict(detail or {})
        #: The fault was turned into a PRI page request (or a stall): the device may
        #: retry once the response arrives.
        self.page_request = page_request
        self.code = code
        p = "" if pasid is None else f" pasid {pasid}"
        super().__init__(
            f"DMA {access_str(access)} by {device} at {address:#x}{p}: {reason}"
        )


class Mmio(abc.ABC):
    """A register window (ioremap'ed MMIO). Little-endian; 32- and 64-bit accesses."""

    @abc.abstractmethod
    def read32(self, offset: int) -> int: ...

    @abc.abstractmethod
    def write32(self, offset: int, value: int) -> None: ...

    def read64(self, offset: int) -> int:
        return self.read32(offset) | (self.read32(offset + 4) << 32)

    def write64(self, offset: int, value: int) -> None:
        self.write32(offset, value & 0xFFFF_FFFF)
        self.write32(offset + 4, (value >> 32) & 0xFFFF_FFFF)


class IrqLine:
    """An interrupt line (wired or MSI). Hardware asserts; the requested handler runs."""

    __slots__ = ("handler", "name", "pending")

    def __init__(self, name: str) -> None:
        self.name = name
        self.handler: Callable[[], None] | None = None
        self.pending = False

    def request_irq(self, handler: Callable[[], None]) -> None:
        self.handler = handler
        if self.pending:
            self.assert_irq()

    def free_irq(self) -> None:
        self.handler = None

    def assert_irq(self) -> None:
        """Raise the interrupt: the handler runs now (a threaded IRQ, run to completion)."""
        if self.handler is None:
            self.pending = True
            return
        self.pending = False
        self.handler()


class IommuHardware(abc.ABC):
    """An IOMMU hardware model: registers, tables in memory, queues, caches, a walker.

    The Machine hands a device's transactions to :meth:`dma_translate`; everything else
    the model knows it read from registers and memory the driver programmed.
    """

    name: str
    #: Smallest translation granule: a translation holds to the end of its granule.
    granule: int = 4096
    #: Register windows the driver may map, by resource name.
    mmio: dict[str, Mmio]
    #: Interrupt lines, by name (e.g. "evtq", "priq", "gerror", "cmdq-sync").
    irqs: dict[str, IrqLine]
    #: What firmware (DT/ACPI properties) tells the driver about this unit beyond its
    #: registers; the driver's probe receives a copy in ``IommuResources.firmware``.
    firmware: Mapping[str, Any] = MappingProxyType({})

    @abc.abstractmethod
    def dma_translate(self, dev: Device, pasid: int | None, iova: int, access: int) -> int:
        """Translate one access; the result stays valid to the end of ``iova``'s
        ``granule``-sized page. Raises :class:`DmaFault` (after recording the event in
        hardware queues)."""

    def attach_device(self, dev: Device) -> None:  # noqa: B027 - optional wiring hook
        """Wire a device to this unit (hot-plug); models with per-device state use it."""

    def detach_device(self, dev: Device) -> None:  # noqa: B027 - optional wiring hook
        """Unwire a device (hot-unplug)."""


def device_dma_read(hw: IommuHardware, mem: Any, dev: Device, iova: int, n: int,
                    pasid: int | None = None) -> bytes:
    """A device reads ``n`` bytes at ``iova``: one translation per granule, then memory."""
    g = hw.granule
    out = bytearray()
    translate = hw.dma_translate
    read = mem.read
    while n > 0:
        chunk = min(n, g - (iova & (g - 1)))
        out += read(translate(dev, pasid, iova, ACCESS_READ), chunk)
        iova += chunk
        n -= chunk
    return bytes(out)


def device_dma_write(hw: IommuHardware, mem: Any, dev: Device, iova: int,
                     data: bytes | bytearray | memoryview, pasid: int | None = None) -> None:
    """A device writes ``data`` at ``iova``. Every granule is translated first, so a
    fault anywhere writes nothing."""
    g = hw.granule
    mv = memoryview(data)
    pieces = []
    pos = 0
    while pos < len(mv):
        chunk = min(len(mv) - pos, g - (iova & (g - 1)))
        pieces.append((hw.dma_translate(dev, pasid, iova, ACCESS_WRITE), pos, chunk))
        iova += chunk
        pos += chunk
    for pa, p, c in pieces:
        mem.write(pa, mv[p : p + c])


class DmaPort:
    """Where a device's memory requests go: through the IOMMU it sits behind, to memory.
    The platform wires one into every device it adds (``Device.dma_port``); a device model
    that masters DMA (the DMA engine) issues its reads and writes here, the same path as
    ``Machine.dma_read``/``dma_write``."""

    __slots__ = ("hw", "mem", "tracer")

    def __init__(self, hw: IommuHardware, mem: Any, tracer: Any) -> None:
        self.hw = hw
        self.mem = mem
        self.tracer = tracer

    def read(self, dev: Device, iova: int, n: int, pasid: int | None = None) -> bytes:
        return device_dma_read(self.hw, self.mem, dev, iova, n, pasid)

    def write(self, dev: Device, iova: int, data: bytes | bytearray | memoryview,
              pasid: int | None = None) -> None:
        device_dma_write(self.hw, self.mem, dev, iova, data, pasid)
