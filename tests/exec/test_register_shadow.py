"""The page through which a program under ``iommu-sim exec`` sees mapped device registers
(``RegisterShadow``), with the DMA engine behind it: stores replayed in address order with
the doorbells last, only changed words written back, a store made during a sync kept for
the next one. No C compiler needed: the test stores into the page as the program would."""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator

import pytest

from iommu_core.platform import dma_engine as E
from iommu_core.platform.pci import PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY
from iommu_sim import Machine
from iommu_sim.exec.files import RegisterShadow

DEV = "0000:00:01.0"


class Rig:
    def __init__(self) -> None:
        # the default domain is identity: the device's addresses are physical ones
        self.m = m = Machine.from_config({"iommus": [{"name": "u0", "driver": "intel_vtd"}],
                                          "devices": [{"name": DEV, "iommu": "u0"}],
                                          "passthrough": True})
        dev = m.device(DEV)
        assert dev.pci is not None
        self.pdev = dev.pci
        self.pdev.config_write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        self.window = self.pdev.bar_window(0)
        self.host = mmap.mmap(-1, E.DMA_BAR_SIZE)
        self.shadow = RegisterShadow(self.window, 0, self.host)
        self.mem = m.mmap(0x2000)
        self.pa = m.mm.va_to_pa(self.mem)
        self.writes: list[int] = []
        write32 = self.window.write32

        def spy(off: int, value: int) -> None:
            self.writes.append(off)
            write32(off, value)

        self.window.write32 = spy  # type: ignore[method-assign]

    def store(self, off: int, value: int, size: int = 4) -> None:
        self.host[off : off + size] = value.to_bytes(size, "little")

    def load(self, off: int, size: int = 4) -> int:
        return int.from_bytes(self.host[off : off + size], "little")

    def close(self) -> None:
        self.shadow.view.release()
        self.host.close()
        self.m.shutdown()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def test_the_page_shows_the_registers(rig: Rig) -> None:
    assert rig.load(E.DMA_ID) == E.DMA_ID_VALUE
    assert rig.load(E.DMA_SCRATCH) == 0xFFFF_FFFF
    rig.store(E.DMA_SCRATCH, 5)
    assert rig.load(E.DMA_SCRATCH) == 5  # a load sees the page until the next sync
    rig.shadow.sync()
    assert rig.load(E.DMA_SCRATCH) == ~5 & 0xFFFF_FFFF
    assert rig.writes == [E.DMA_SCRATCH]


def test_buffer_and_registers_then_the_doorbell(rig: Rig) -> None:
    # One sync sees the whole transfer: the buffer (above the doorbell's address), the
    # registers, the doorbell. Replayed with the doorbell last, the DMA moves the new data.
    rig.host[E.DMA_BUF_OFFSET : E.DMA_BUF_OFFSET + 8] = b"freshly!"
    rig.store(E.DMA_CMD, E.DMA_CMD_START | E.DMA_CMD_FROM_DEVICE)
    rig.store(E.DMA_SRC, 0, 8)
    rig.store(E.DMA_DST, rig.pa, 8)
    rig.store(E.DMA_LEN, 8, 8)
    rig.shadow.sync()
    assert rig.writes[-1] == E.DMA_CMD and E.DMA_BUF_OFFSET in rig.writes
    assert rig.m.mem_read(rig.mem, 8) == b"freshly!"
    assert rig.load(E.DMA_STATUS) == E.DMA_STATUS_DONE
    assert rig.load(E.DMA_CMD) == 0  # written back: the next START is a change again
    assert rig.load(E.DMA_COUNT) == 1


def test_device_changes_are_written_back_word_by_word(rig: Rig) -> None:
    # A store the program makes while the supervisor syncs (here: from inside the
    # snapshot) to a word the device did not change survives, and is replayed next time.
    rig.m.mem_write(rig.mem, b"from memory")
    rig.store(E.DMA_SRC, rig.pa, 8)
    rig.store(E.DMA_LEN, 11, 8)
    rig.store(E.DMA_CMD, E.DMA_CMD_START)
    snapshot = rig.window.snapshot

    def racing(offset: int, n: int) -> bytes:
        rig.store(E.DMA_SCRATCH, 0x1234)
        return snapshot(offset, n)

    rig.window.snapshot = racing  # type: ignore[method-assign]
    rig.shadow.sync()
    rig.window.snapshot = snapshot  # type: ignore[method-assign]
    assert bytes(rig.host[E.DMA_BUF_OFFSET : E.DMA_BUF_OFFSET + 11]) == b"from memory"
    assert rig.load(E.DMA_SCRATCH) == 0x1234  # kept: not written over
    rig.writes.clear()
    rig.shadow.sync()
    assert rig.writes == [E.DMA_SCRATCH]
    assert rig.load(E.DMA_SCRATCH) == ~0x1234 & 0xFFFF_FFFF


def test_a_word_stored_twice_is_written_once(rig: Rig) -> None:
    rig.store(E.DMA_SCRATCH, 1)
    rig.store(E.DMA_SCRATCH, 2)
    rig.shadow.sync()
    assert rig.writes == [E.DMA_SCRATCH]
    assert rig.load(E.DMA_SCRATCH) == ~2 & 0xFFFF_FFFF


def test_a_64bit_store_is_two_halves_low_first(rig: Rig) -> None:
    rig.store(E.DMA_DST, 0x1111_2222_3333_4444, 8)
    rig.shadow.sync()
    assert rig.writes == [E.DMA_DST, E.DMA_DST + 4]
    assert struct.unpack_from("<Q", rig.host, E.DMA_DST)[0] == 0x1111_2222_3333_4444


def test_no_decode_shows_all_ones(rig: Rig) -> None:
    rig.pdev.config_write(PCI_COMMAND, 2, 0)
    rig.shadow.sync()
    assert rig.load(E.DMA_ID) == 0xFFFF_FFFF
