"""The DMA engine of a VFIO device, driven from Python the way a user-space driver drives
it: ``pread``/``pwrite`` of BAR0's region on the device fd, Bus Master Enable through the
config region, its MSI routed to a :meth:`Machine.eventfd` with VFIO_DEVICE_SET_IRQS.
Nothing here reaches around the uAPI; ``Machine.dma_read``/``dma_write`` stay what they
are (the device's DMA without its registers).

.. code-block:: python

   eng = VfioDmaEngine(m, vfd)          # vfd: a bound, attached VFIO device fd
   eng.enable()
   assert eng.dma_read(0x10000, 5) == b"hello"
   eng.dma_write(0x11000, b"from the device")
   r = eng.run(src=0xdead000, dst=0, length=8)   # a DmaResult: r.ok, r.kind, r.code
"""

from __future__ import annotations

import ctypes

import attrs

from iommu_core.platform import dma_engine as E
from iommu_core.platform import pci as P
from iommu_sim.machine import Machine
from iommufd import uapi_vfio as vf

__all__ = ["DmaEngineError", "DmaResult", "VfioDmaEngine"]


@attrs.frozen
class DmaResult:
    """The engine's STATUS, ERROR and ERR_ADDR after a command."""

    status: int
    error: int
    err_addr: int

    @property
    def ok(self) -> bool:
        return self.status == E.DMA_STATUS_DONE

    @property
    def busy(self) -> bool:
        return bool(self.status & E.DMA_STATUS_BUSY)

    @property
    def kind(self) -> int:
        """ERR_* (0 when none)."""
        return self.error & 0xFF

    @property
    def code(self) -> int:
        """The IOMMU's fault code (an SMMU event id, a VT-d fault reason, an AMD event)."""
        return self.error >> E.DMA_ERROR_CODE_SHIFT

    def __str__(self) -> str:
        if self.ok:
            return "done"
        what = E.ERR_NAMES.get(self.kind, f"error {self.kind}")
        return f"status {self.status:#x}: {what}, code {self.code:#x} at {self.err_addr:#x}"


class DmaEngineError(Exception):
    """A transfer ended with an error (``result`` says which)."""

    def __init__(self, result: DmaResult) -> None:
        self.result = result
        super().__init__(str(result))


class VfioDmaEngine:
    """The engine behind BAR0 of the VFIO device ``vfd`` (bound to an iommufd)."""

    def __init__(self, m: Machine, vfd: int) -> None:
        self.m = m
        self.vfd = vfd
        self.bar = self._region(vf.VFIO_PCI_BAR0_REGION_INDEX)
        self.cfg = self._region(vf.VFIO_PCI_CONFIG_REGION_INDEX)
        self.eventfd = -1

    def _region(self, index: int) -> int:
        info = vf.vfio_region_info(argsz=ctypes.sizeof(vf.vfio_region_info), index=index)
        self.m.ioctl(self.vfd, vf.VFIO_DEVICE_GET_REGION_INFO, info)
        return int(info.offset)

    # -- registers -------------------------------------------------------------------------
    def read_reg(self, off: int, size: int = 4) -> int:
        return int.from_bytes(self.m.pread(self.vfd, size, self.bar + off), "little")

    def write_reg(self, off: int, value: int, size: int = 4) -> None:
        self.m.pwrite(self.vfd, value.to_bytes(size, "little"), self.bar + off)

    def buffer(self, offset: int = 0, n: int = E.DMA_BUF_SIZE) -> bytes:
        return self.m.pread(self.vfd, n, self.bar + E.DMA_BUF_OFFSET + offset)

    def fill(self, offset: int, data: bytes) -> None:
        self.m.pwrite(self.vfd, data, self.bar + E.DMA_BUF_OFFSET + offset)

    def result(self) -> DmaResult:
        return DmaResult(self.read_reg(E.DMA_STATUS), self.read_reg(E.DMA_ERROR),
                         self.read_reg(E.DMA_ERR_ADDR, 8))

    # -- setup -----------------------------------------------------------------------------
    def enable(self, msi: bool = True) -> None:
        """Bus Master Enable, and (``msi``) the completion interrupt on a new eventfd."""
        cmd = int.from_bytes(self.m.pread(self.vfd, 2, self.cfg + P.PCI_COMMAND), "little")
        self.m.pwrite(self.vfd, (cmd | P.PCI_COMMAND_MASTER).to_bytes(2, "little"),
                      self.cfg + P.PCI_COMMAND)
        if msi and self.eventfd < 0:
            self.eventfd = self.m.eventfd()
            hdr = vf.vfio_irq_set(argsz=vf.VFIO_IRQ_SET_MINSZ + 4, index=vf.VFIO_PCI_MSI_IRQ_INDEX,
                                  start=0, count=1, flags=vf.VFIO_IRQ_SET_DATA_EVENTFD
                                  | vf.VFIO_IRQ_SET_ACTION_TRIGGER)
            arg = bytearray(hdr) + self.eventfd.to_bytes(4, "little", signed=True)
            self.m.ioctl(self.vfd, vf.VFIO_DEVICE_SET_IRQS, arg)

    def interrupts(self) -> int:
        """Completion interrupts signalled since the last call (the eventfd's counter)."""
        if self.eventfd < 0 or not self.m.poll(self.eventfd) & 1:
            return 0
        return int.from_bytes(self.m.read(self.eventfd, 8), "little")

    # -- transfers -------------------------------------------------------------------------
    def run(self, src: int, dst: int, length: int, *, from_device: bool = False,
            pasid: int | None = None, irq: bool = False) -> DmaResult:
        """Program one transfer and ring the doorbell; the result."""
        self.write_reg(E.DMA_SRC, src, 8)
        self.write_reg(E.DMA_DST, dst, 8)
        self.write_reg(E.DMA_LEN, length, 8)
        self.write_reg(E.DMA_PASID, 0 if pasid is None else E.DMA_PASID_VALID | pasid)
        self.write_reg(E.DMA_CMD, E.DMA_CMD_START | (E.DMA_CMD_FROM_DEVICE if from_device
                                                     else 0) | (E.DMA_CMD_IRQ if irq else 0))
        return self.result()

    def dma_read(self, iova: int, n: int, pasid: int | None = None) -> bytes:
        """The device reads ``n`` bytes at ``iova`` into its buffer; the bytes."""
        r = self.run(iova, 0, n, pasid=pasid)
        if not r.ok:
            raise DmaEngineError(r)
        return self.buffer(0, n)

    def dma_write(self, iova: int, data: bytes, pasid: int | None = None) -> None:
        """The device writes ``data`` (put in its buffer first) at ``iova``."""
        self.fill(0, data)
        r = self.run(0, iova, len(data), from_device=True, pasid=pasid)
        if not r.ok:
            raise DmaEngineError(r)

    def close(self) -> None:
        if self.eventfd >= 0:
            self.m.close(self.eventfd)
            self.eventfd = -1
