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
from iommu_core.platform.memory import PhysicalMemory

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

    A model may also publish the translations it holds in :attr:`dma_hits`, so that a DMA
    that hits costs a dict lookup and a memory copy (see ``device_dma_read``).
    """

    name: str
    #: Smallest translation granule: a translation holds to the end of its granule
    #: (at most a page: a granule never spans two frames).
    granule: int = 4096
    #: The DMA hit cache, owned by the model: ``(device, pasid)`` -> {``iova >> 12``: (the
    #: physical address of that 4 KiB page, the ACCESS_* bits a hit may use)}. Every
    #: entry is what :meth:`dma_translate` would return now for every address of the
    #: page, without side effects (no event, no A/D update, no page request), and goes
    #: when the model's own cache entries it derives from go (an invalidation, an
    #: eviction, a configuration change): stale exactly as long as the model's TLB is. A
    #: model whose granule is smaller publishes a page only while it caches all of it.
    #: Models that publish nothing leave the empty default.
    dma_hits: Mapping[tuple[Device, int | None], Mapping[int, tuple[int, int]]] = (
        MappingProxyType({}))
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

    def device_changed(self, dev: Device) -> None:  # noqa: B027 - optional wiring hook
        """The endpoint's own state changed (a write to its ``props``: ATS Enable, PRI
        Enable...): a model whose translations depend on it drops what it published in
        :attr:`dma_hits` for ``dev``."""


# One DMA: a hit inside one 4 KiB page costs the hit cache's two lookups, the frame's
# lookup and one copy; the rest (a miss, a never-written frame, a window's first access,
# an access across pages) takes the general path through ``dma_translate`` and
# PhysicalMemory.
def device_dma_read(hw: IommuHardware, mem: PhysicalMemory, dev: Device, iova: int, n: int,
                    pasid: int | None = None) -> bytes:
    """A device reads ``n`` bytes at ``iova``: one translation per granule, then memory."""
    o = iova & 0xFFF
    if o + n <= 0x1000:
        hits = hw.dma_hits.get((dev, pasid))
        if hits is not None:
            e = hits.get(iova >> 12)
            if e is not None and e[1] & ACCESS_READ:
                f = mem.frames.get(e[0] >> 12)
                if f is not None:
                    piece = f[o : o + n] if n != 0x1000 else f
                    try:
                        return piece.tobytes()  # type: ignore[no-any-return]
                    except AttributeError:  # a frame that is not a memoryview
                        return bytes(piece)
                return mem.read(e[0] | o, n)
    # Several pages (or granules), or a miss: every piece translated, then read.
    g = hw.granule
    frames = mem.frames
    hits = hw.dma_hits.get((dev, pasid))
    out = bytearray()
    while n > 0:
        o = iova & 0xFFF
        chunk = 0x1000 - o if g == 0x1000 else g - (iova & (g - 1))
        if chunk > n:
            chunk = n
        e = hits.get(iova >> 12) if hits is not None else None
        if e is not None and e[1] & ACCESS_READ:
            pa = e[0] | o
        else:
            pa = hw.dma_translate(dev, pasid, iova, ACCESS_READ)
            hits = hw.dma_hits.get((dev, pasid))  # it may have published the page
        f = frames.get(pa >> 12)
        if f is not None:
            o = pa & 0xFFF
            out += f[o : o + chunk]
        else:
            out += mem.read(pa, chunk)
        iova += chunk
        n -= chunk
    return bytes(out)


def device_dma_write(hw: IommuHardware, mem: PhysicalMemory, dev: Device, iova: int,
                     data: bytes | bytearray | memoryview, pasid: int | None = None) -> None:
    """A device writes ``data`` at ``iova``. Every granule is translated first, so a
    fault anywhere writes nothing."""
    n = len(data)
    o = iova & 0xFFF
    if o + n <= 0x1000:
        hits = hw.dma_hits.get((dev, pasid))
        if hits is not None:
            e = hits.get(iova >> 12)
            if e is not None and e[1] & ACCESS_WRITE:
                f = mem.frames.get(e[0] >> 12)
                if f is not None:
                    f[o : o + n] = data
                else:
                    mem.write(e[0] | o, data)
                return
    g = hw.granule
    mv = memoryview(data)
    hits = hw.dma_hits.get((dev, pasid))
    pieces = []
    pos = 0
    while pos < n:
        o = iova & 0xFFF
        chunk = 0x1000 - o if g == 0x1000 else g - (iova & (g - 1))
        if chunk > n - pos:
            chunk = n - pos
        e = hits.get(iova >> 12) if hits is not None else None
        if e is not None and e[1] & ACCESS_WRITE:
            pa = e[0] | o
        else:
            pa = hw.dma_translate(dev, pasid, iova, ACCESS_WRITE)
            hits = hw.dma_hits.get((dev, pasid))
        pieces.append((pa, pos, chunk))
        iova += chunk
        pos += chunk
    write = mem.write
    for pa, p, c in pieces:
        write(pa, mv[p : p + c])


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
