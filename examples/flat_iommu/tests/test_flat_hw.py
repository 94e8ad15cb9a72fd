"""The FlatIOMMU hardware model on its own: registers, queues, caches and faults, driven
the way a driver would (register writes and memory), with no driver at all."""

from __future__ import annotations

import errno

import pytest
from iommu_core.errors import IommuError
from iommu_core.pgtable import IoPageTable, PhysTableMemory, formats
from iommu_core.platform.bus import Device, make_pci_device
from iommu_core.platform.dma import ACCESS_READ, ACCESS_WRITE, DmaFault
from iommu_core.platform.platform import Platform

from flat_iommu import spec
from flat_iommu.hw import FlatFeatures, FlatIommuHw
from flat_iommu.spec import Dte, DteMode, FaultRecord

RW = 3
IOVA = 0x4000_0000


class Bare:
    """A unit with its device table, queues and one page table, programmed by hand."""

    def __init__(self, **options: object) -> None:
        self.platform = Platform()
        self.mem = self.platform.mem
        self.alloc = self.platform.alloc
        self.hw = FlatIommuHw("flat0", FlatFeatures.from_options(dict(options)), self.mem,
                              self.platform.tracer)
        self.regs = self.hw.regs
        self.dt = self.alloc.alloc_pages(8)
        self.cq = self.alloc.alloc_page()
        self.fq = self.alloc.alloc_page()
        self.regs.write64(spec.REG_DT_BASE, self.dt)
        self.regs.write32(spec.REG_DT_SIZE, 16)
        self.regs.write64(spec.REG_CQ_BASE, self.cq | 8)
        self.regs.write64(spec.REG_FQ_BASE, self.fq | 2)  # 4 records: easy to overflow
        self.irqs = 0

        def handler() -> None:
            self.irqs += 1

        self.hw.irqs["fault"].request_irq(handler)
        self.regs.write32(spec.REG_CTRL, spec.CTRL_ENABLES)
        self.tail = 0
        self.pt = IoPageTable(formats.x86_64(4), PhysTableMemory(self.mem, self.alloc))
        self.dev = make_pci_device("0000:00:01.0", "flat0")

    def dte(self, rid: int, dte: Dte) -> None:
        self.mem.write_qwords(self.dt + rid * 16, dte.encode())

    def translating(self, did: int = 7, had: bool = False) -> Dte:
        return Dte(True, DteMode.TRANSLATE, had, 4, did, self.pt.root)

    def cmd(self, *cmds: spec.Cmd) -> None:
        for c in cmds:
            self.mem.write_qwords(self.cq + self.tail * 16, (c.q0, c.q1))
            self.tail = (self.tail + 1) % 256
        self.regs.write32(spec.REG_CQ_TAIL, self.tail)

    def read(self, dev: Device, iova: int, n: int = 4) -> bytes:
        return self.mem.read(self.hw.dma_translate(dev, None, iova, ACCESS_READ), n)

    def fault(self, dev: Device, iova: int, access: int = ACCESS_READ) -> DmaFault:
        with pytest.raises(DmaFault) as ei:
            self.hw.dma_translate(dev, None, iova, access)
        return ei.value


@pytest.fixture
def b() -> Bare:
    return Bare()


def page(b: Bare, data: bytes) -> int:
    pa = b.alloc.alloc_page()
    b.mem.write(pa, data)
    return pa


def test_id_registers_and_options() -> None:
    b = Bare(dirty=False, rid_bits=8)
    assert b.regs.read32(spec.REG_ID) == spec.FLAT_ID
    assert b.regs.read32(spec.REG_CAP) == 8
    b.regs.write32(spec.REG_ID, 0)
    assert b.regs.read32(spec.REG_ID) == spec.FLAT_ID, "ID is read-only"
    with pytest.raises(IommuError) as ei:
        FlatFeatures.from_options({"pasid": True})
    assert ei.value.errno == errno.EINVAL


def test_enable_handshake_and_disabled_aborts(b: Bare) -> None:
    assert b.regs.read32(spec.REG_STATUS) & spec.CTRL_ENABLES == spec.CTRL_ENABLES
    b.regs.write32(spec.REG_CTRL, spec.CTRL_CQE)
    assert b.regs.read32(spec.REG_STATUS) & spec.CTRL_ENABLES == spec.CTRL_CQE
    assert b.fault(b.dev, IOVA).reason == "F_DISABLED"


def test_translate_and_fault_reasons(b: Bare) -> None:
    data = page(b, b"flat")
    b.pt.map(IOVA, data, 4096, RW)
    assert b.fault(b.dev, IOVA).reason == "F_DTE_INVALID"
    b.cmd(spec.build_inv_dte(b.dev.rid))
    b.dte(b.dev.rid, b.translating())
    assert b.read(b.dev, IOVA) == b"flat"
    f = b.fault(b.dev, IOVA + 0x1000)
    assert (f.reason, f.detail["did"], f.detail["level"]) == ("F_PT_NOT_PRESENT", 7, 0)
    b.pt.map(IOVA + 0x1000, page(b, b"ro"), 4096, 1)
    assert b.fault(b.dev, IOVA + 0x1000, ACCESS_WRITE).reason == "F_PT_PERMISSION"
    far = make_pci_device("0000:00:02.0", "flat0")
    b.regs.write32(spec.REG_DT_SIZE, 4)  # 16 DTEs: RID 0x10 is out of range
    assert b.fault(far, IOVA).reason == "F_RID_RANGE"


def test_abort_bypass_and_bad_dte(b: Bare) -> None:
    b.dte(b.dev.rid, Dte(True, DteMode.ABORT))
    assert b.fault(b.dev, IOVA).reason == "F_DTE_ABORT"
    b.dte(b.dev.rid, Dte(True, DteMode.BYPASS))
    assert b.fault(b.dev, IOVA).reason == "F_DTE_ABORT", "DTE cache is stale until INV_DTE"
    b.cmd(spec.build_inv_dte(b.dev.rid))
    pa = page(b, b"phys")
    assert b.read(b.dev, pa) == b"phys"
    b.dte(b.dev.rid, Dte(True, DteMode.TRANSLATE, False, 5, 1, b.pt.root))
    b.cmd(spec.build_inv_dte(b.dev.rid))
    assert b.fault(b.dev, IOVA).reason == "F_DTE_BAD"


def test_iotlb_stale_until_invalidated(b: Bare) -> None:
    old, new = page(b, b"OLD!"), page(b, b"NEW!")
    b.pt.map(IOVA, old, 4096, RW)
    b.dte(b.dev.rid, b.translating(did=3))
    assert b.read(b.dev, IOVA) == b"OLD!"
    b.pt.unmap(IOVA, 4096)
    b.pt.map(IOVA, new, 4096, RW)
    assert b.read(b.dev, IOVA) == b"OLD!", "the IOTLB keeps the old translation"
    b.cmd(spec.build_inv_iotlb(4, IOVA, 1))
    assert b.read(b.dev, IOVA) == b"OLD!", "another DID's invalidation leaves it"
    b.cmd(spec.build_inv_iotlb(3, IOVA + 0x1000, 1))
    assert b.read(b.dev, IOVA) == b"OLD!", "another page's invalidation leaves it"
    b.cmd(spec.build_inv_iotlb(3, IOVA, 1))
    assert b.read(b.dev, IOVA) == b"NEW!"


def test_commands_sync_and_error(b: Bare) -> None:
    sem = b.alloc.alloc_page()
    b.cmd(spec.build_inv_all(), spec.build_sync(sem, 0x1234))
    assert b.mem.read_u64(sem) == 0x1234
    assert b.regs.read32(spec.REG_CQ_HEAD) == 2
    b.cmd(spec.Cmd(0xF), spec.build_sync(sem, 0x5678))
    assert b.regs.read32(spec.REG_STATUS) & spec.STATUS_CQERR
    assert b.regs.read32(spec.REG_CQ_HEAD) == 2, "HEAD stops on the bad command"
    assert b.mem.read_u64(sem) == 0x1234, "commands after it are not executed"
    b.regs.write32(spec.REG_STATUS, spec.STATUS_CQERR)  # W1C
    assert not b.regs.read32(spec.REG_STATUS) & spec.STATUS_CQERR


def test_fault_queue_records_irq_and_overflow(b: Bare) -> None:
    for i in range(4):  # 4 slots hold 3 records; the 4th overflows
        b.fault(b.dev, IOVA + i * 0x1000, ACCESS_WRITE)
    assert b.irqs == 4
    assert b.regs.read32(spec.REG_FQ_TAIL) == 3
    assert b.regs.read32(spec.REG_STATUS) & spec.STATUS_FQOVF
    rec = FaultRecord.decode(*b.mem.read_qwords(b.fq + 16, 2))
    assert (rec.rid, rec.reason_name, rec.write, rec.address) == (
        b.dev.rid, "F_DTE_INVALID", True, IOVA + 0x1000)


def test_hardware_dirty_bit_and_iotlb_memory(b: Bare) -> None:
    fmt = b.pt.fmt
    b.pt.map(IOVA, page(b, b""), 4096, RW)
    leaf = next(b.pt.iter_leaves(IOVA, IOVA))
    b.mem.write_u64(leaf.desc_addr, fmt.make_clean(leaf.desc))
    b.dte(b.dev.rid, b.translating(had=True))
    b.hw.dma_translate(b.dev, None, IOVA, ACCESS_WRITE)
    assert fmt.is_dirty(b.mem.read_u64(leaf.desc_addr)), "HAD: a write sets D"
    b.mem.write_u64(leaf.desc_addr, fmt.make_clean(leaf.desc))
    b.hw.dma_translate(b.dev, None, IOVA, ACCESS_WRITE)
    assert not fmt.is_dirty(b.mem.read_u64(leaf.desc_addr)), (
        "the IOTLB remembers it set D already")
    b.cmd(spec.build_inv_iotlb_did(7))
    b.hw.dma_translate(b.dev, None, IOVA, ACCESS_WRITE)
    assert fmt.is_dirty(b.mem.read_u64(leaf.desc_addr))
