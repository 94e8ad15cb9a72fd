"""The hardware model on its own: registers from the feature config, command processing,
caches that stay stale until the right command, the v1/GCR3/v2/nested walks, events."""

from __future__ import annotations

import errno

import pytest

from drivers.amd_vi.amd_iommu_types import (
    CONTROL_CMDBUF_EN,
    CONTROL_EVT_LOG_EN,
    CONTROL_GCR3TRPMODE,
    CONTROL_GT_EN,
    CONTROL_IOMMU_EN,
    DTE_FLAG_GV,
    DTE_FLAG_HAD,
    DTE_FLAG_IR,
    DTE_FLAG_IW,
    DTE_FLAG_TV,
    DTE_FLAG_V,
    FEATURE_GCR3TRPMODE,
    FEATURE_GT,
    FEATURE_HDSUP,
    FEATURE_PASMAX,
    GCR3_VALID,
    MMIO_CMD_BUF_OFFSET,
    MMIO_CMD_HEAD_OFFSET,
    MMIO_CMD_TAIL_OFFSET,
    MMIO_CONTROL_OFFSET,
    MMIO_DEV_TABLE_OFFSET,
    MMIO_EVT_BUF_OFFSET,
    MMIO_EVT_TAIL_OFFSET,
    MMIO_EXT_FEATURES,
    MMIO_EXT_FEATURES2,
    EventLogEntry,
    IommuCmd,
    dte_gcr3_fields,
    field_get,
)
from drivers.amd_vi.hw import AmdIommuHw, AmdViFeatures
from drivers.amd_vi.iommu import (
    build_completion_wait,
    build_inv_all,
    build_inv_dte,
    build_inv_iommu_pages,
)
from iommu_core.errors import IommuError
from iommu_core.pgtable import IoPageTable, PhysTableMemory, formats
from iommu_core.pgtable.formats.amd import IW
from iommu_core.platform.bus import make_pci_device
from iommu_core.platform.dma import ACCESS_READ, ACCESS_WRITE, DmaFault
from iommu_core.platform.platform import Platform
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE

RW = IOMMU_READ | IOMMU_WRITE
DEV = "0000:00:01.0"  # DeviceID 8


class Rig:
    """A bare unit programmed by hand: device table, command buffer, event log."""

    def __init__(self, **options: object) -> None:
        self.p = Platform()
        self.hw = AmdIommuHw("amdvi0", AmdViFeatures.from_options(dict(options)), self.p)
        self.mem = self.p.mem
        self.alloc = self.p.alloc
        self.mmio = self.hw.mmio["regs"]
        self.dt = self.alloc.alloc_pages(0)  # 128 DTEs
        self.cmd = self.alloc.alloc_pages(1)
        self.evt = self.alloc.alloc_pages(1)
        self.sem = self.alloc.alloc_pages(0)
        self.tail = 0
        self.mmio.write64(MMIO_DEV_TABLE_OFFSET, self.dt | 0)
        self.mmio.write64(MMIO_CMD_BUF_OFFSET, self.cmd | (9 << 56))
        self.mmio.write64(MMIO_EVT_BUF_OFFSET, self.evt | (9 << 56))
        ctl = (1 << CONTROL_CMDBUF_EN) | (1 << CONTROL_EVT_LOG_EN) | (1 << CONTROL_GT_EN) | (
            1 << CONTROL_GCR3TRPMODE) | (1 << CONTROL_IOMMU_EN)
        self.mmio.write64(MMIO_CONTROL_OFFSET, ctl)
        self.dev = make_pci_device(DEV, "amdvi0")
        self.p.add_iommu(self.hw)
        self.p.add_device(self.dev)

    def dte(self, words: list[int], devid: int = 8) -> None:
        self.mem.write_qwords(self.dt + 32 * devid, words)

    def send(self, *cmds: IommuCmd) -> None:
        for c in cmds:
            self.mem.write(self.cmd + self.tail, c.to_bytes())
            self.tail = (self.tail + 16) % 8192
        self.mmio.write32(MMIO_CMD_TAIL_OFFSET, self.tail)

    def events(self) -> list[EventLogEntry]:
        tail = self.mmio.read32(MMIO_EVT_TAIL_OFFSET)
        return [EventLogEntry.from_bytes(self.mem.read(self.evt + o, 16))
                for o in range(0, tail, 16)]

    def v1(self, levels: int = 3) -> IoPageTable:
        return IoPageTable(formats.amd_v1(levels), PhysTableMemory(self.mem, self.alloc))

    def data_page(self, fill: bytes) -> int:
        pa = self.alloc.alloc_pages(0)
        self.mem.write(pa, fill)
        return pa


def v1_dte(pt: IoPageTable, domid: int, *, had: bool = False, perm: int = 3) -> list[int]:
    d0 = DTE_FLAG_V | DTE_FLAG_TV | (pt.levels << 9) | pt.root
    d0 |= (DTE_FLAG_IR if perm & 1 else 0) | (DTE_FLAG_IW if perm & 2 else 0)
    return [d0 | (DTE_FLAG_HAD if had else 0), domid, 0, 0]


def test_feature_registers() -> None:
    r = Rig()
    efr = r.mmio.read64(MMIO_EXT_FEATURES)
    assert efr & FEATURE_GT and efr & FEATURE_HDSUP and field_get(FEATURE_PASMAX, efr) == 15
    assert r.mmio.read64(MMIO_EXT_FEATURES2) & FEATURE_GCR3TRPMODE
    r2 = Rig(gt=False, hdsup=False, gcr3trpmode=False, pasmax=8)
    efr2 = r2.mmio.read64(MMIO_EXT_FEATURES)
    assert not efr2 & (FEATURE_GT | FEATURE_HDSUP) and field_get(FEATURE_PASMAX, efr2) == 8
    assert not r2.mmio.read64(MMIO_EXT_FEATURES2) & FEATURE_GCR3TRPMODE
    for bad in ({"bogus": 1}, {"gt": 1}, {"glx": 3}):
        with pytest.raises(IommuError) as e:
            AmdViFeatures.from_options(bad)  # type: ignore[arg-type]
        assert e.value.errno == errno.EINVAL


def test_completion_wait_and_illegal_command() -> None:
    r = Rig()
    r.send(build_inv_all(), build_completion_wait(r.sem, 7))
    assert r.mem.read_u64(r.sem) == 7
    r.send(IommuCmd((0, 0xF000_0000, 0, 0)), build_completion_wait(r.sem, 8))
    assert r.mem.read_u64(r.sem) == 7, "processing halts at the illegal command"
    ev = r.events()[-1]
    assert ev.name == "ILLEGAL_COMMAND_ERROR" and ev.address == r.cmd + 32
    assert r.mmio.read32(MMIO_CMD_HEAD_OFFSET) == 32


def test_v1_walk_tlb_stale_until_inv_pages() -> None:
    r = Rig()
    pt = r.v1()
    a, b = r.data_page(b"AAAA"), r.data_page(b"BBBB")
    pt.map(0x10_0000, a, 4096, RW)
    r.dte(v1_dte(pt, 5))
    assert r.mem.read(r.hw.dma_translate(r.dev, None, 0x10_0004, ACCESS_READ), 0) == b""
    assert r.hw.dma_translate(r.dev, None, 0x10_0004, ACCESS_READ) == a + 4
    pt.unmap(0x10_0000, 4096)
    pt.map(0x10_0000, b, 4096, RW)
    assert r.hw.dma_translate(r.dev, None, 0x10_0000, ACCESS_READ) == a, "stale IOTLB"
    r.send(build_inv_iommu_pages(0x20_0000, 0x20_0FFF, 5, 0, 0))  # other page: still stale
    assert r.hw.dma_translate(r.dev, None, 0x10_0000, ACCESS_READ) == a
    r.send(build_inv_iommu_pages(0x10_0000, 0x10_0FFF, 6, 0, 0))  # other DomainID
    assert r.hw.dma_translate(r.dev, None, 0x10_0000, ACCESS_READ) == a
    r.send(build_inv_iommu_pages(0, 0x3F_FFFF, 5, 0, 0))  # S=1 range covering it
    assert r.hw.dma_translate(r.dev, None, 0x10_0000, ACCESS_READ) == b


def test_dte_cache_stale_until_inv_dte() -> None:
    r = Rig()
    pt = r.v1()
    a = r.data_page(b"A")
    pt.map(0, a, 4096, RW)
    r.dte(v1_dte(pt, 5))
    r.hw.dma_translate(r.dev, None, 0, ACCESS_READ)
    r.dte([DTE_FLAG_V | DTE_FLAG_TV, 0, 0, 0])  # blocked, not yet invalidated
    r.send(build_inv_iommu_pages(0, (1 << 64) - 1, 5, 0, 0))
    assert r.hw.dma_translate(r.dev, None, 0, ACCESS_READ) == a, "cached DTE still used"
    r.send(build_inv_dte(8))
    with pytest.raises(DmaFault) as f:
        r.hw.dma_translate(r.dev, None, 0, ACCESS_READ)
    assert f.value.reason == "IO_PAGE_FAULT"


def test_nondefault_page_size_and_permission_and() -> None:
    r = Rig()
    pt = r.v1()
    base = r.alloc.alloc_pages(3)  # 32 KiB
    pt.map_pages(0x8000, base, 0x8000, 1, RW)  # NextLevel=7 leaf replicated 8 times
    r.dte(v1_dte(pt, 5))
    assert r.hw.dma_translate(r.dev, None, 0xF123, ACCESS_WRITE) == base + 0x7123
    # Clear IW in the level-1 table entry: writes fault although the leaf allows them.
    top = pt.root
    l2 = r.mem.read_u64(top) & 0x000F_FFFF_FFFF_F000
    r.mem.write_u64(l2, r.mem.read_u64(l2) & ~IW)
    r.send(build_inv_all())
    assert r.hw.dma_translate(r.dev, None, 0x8000, ACCESS_READ) == base
    with pytest.raises(DmaFault):
        r.hw.dma_translate(r.dev, None, 0x8000, ACCESS_WRITE)
    # DTE IW=0 also denies writes.
    r.dte(v1_dte(pt, 6, perm=1))
    r.send(build_inv_all())
    with pytest.raises(DmaFault):
        r.hw.dma_translate(r.dev, None, 0x9000, ACCESS_WRITE)


def test_had_sets_dirty_on_write_only() -> None:
    r = Rig()
    pt = r.v1()
    pt.map(0, r.data_page(b""), 4096, RW)
    pt.map(0x1000, r.data_page(b""), 4096, RW)
    r.dte(v1_dte(pt, 5, had=True))
    r.hw.dma_translate(r.dev, None, 0x0, ACCESS_READ)
    r.hw.dma_translate(r.dev, None, 0x0, ACCESS_WRITE)  # TLB hit from the read: must walk
    r.hw.dma_translate(r.dev, None, 0x1000, ACCESS_READ)
    dirty: list[int] = []
    pt.read_and_clear_dirty(0, 0x2000, 0, lambda i, s: dirty.append(i))
    assert dirty == [0]


def _gcr3_setup(r: Rig, *, nested: bool) -> tuple[int, int, IoPageTable | None]:
    """GV=1 device: PASID 600 -> a 4-level guest table mapping 0x40_0000 -> data.
    Nested: tables and data at GPAs that a v1 host table maps to other SPAs."""
    host = r.v1(4) if nested else None
    spa_of: dict[int, int] = {}

    def page(gpa: int) -> int:
        spa = r.alloc.alloc_pages(0)
        if host is not None:
            host.map(gpa, spa, 4096, RW)
        spa_of[gpa] = spa
        return gpa if host is not None else spa

    class Mem:  # the guest's view of its RAM
        def alloc_table(self, size: int) -> int:
            return page(0x100_0000 + 0x1000 * len(spa_of))

        def free_table(self, a: int, s: int) -> None: ...

        def _spa(self, a: int) -> int:
            return spa_of[a & ~0xFFF] + (a & 0xFFF) if host is not None else a

        def read_u64(self, a: int) -> int:
            return r.mem.read_u64(self._spa(a))

        def write_u64(self, a: int, v: int) -> None:
            r.mem.write_u64(self._spa(a), v)

    m = Mem()
    gpt = IoPageTable(formats.x86_64(4), m)  # type: ignore[arg-type]
    data = page(0x200_0000)
    gpt.map(0x40_0000, data, 4096, RW)
    l1 = page(0x300_0000)
    l0 = page(0x301_0000)
    m.write_u64(l1 + 8 * (600 >> 9), l0 | GCR3_VALID)
    m.write_u64(l0 + 8 * (600 & 0x1FF), gpt.root | GCR3_VALID)
    d0, d1 = dte_gcr3_fields(l1)
    w0 = DTE_FLAG_V | DTE_FLAG_TV | DTE_FLAG_GV | (1 << 56) | d0 | DTE_FLAG_IR | DTE_FLAG_IW
    if host is not None:
        w0 |= (host.levels << 9) | host.root
    r.dte([w0, d1 | 9, 0, 0])
    return m._spa(data), m._spa(l0), host


@pytest.mark.parametrize("nested", [False, True])
def test_gcr3_v2_walk(nested: bool) -> None:
    r = Rig()
    data_spa, l0_spa, host = _gcr3_setup(r, nested=nested)
    assert r.hw.dma_translate(r.dev, 600, 0x40_0123, ACCESS_READ) == data_spa + 0x123
    with pytest.raises(DmaFault) as f:  # no GCR3 entry for PASID 601
        r.hw.dma_translate(r.dev, 601, 0x40_0000, ACCESS_READ)
    assert f.value.detail["stage"] == "gcr3"
    # No PASID and no GIoV: the host path (Mode 0 = identity; nested = the v1 table).
    if not nested:
        assert r.hw.dma_translate(r.dev, None, 0x40_0000, ACCESS_READ) == 0x40_0000
    else:
        with pytest.raises(DmaFault):
            r.hw.dma_translate(r.dev, None, 0x40_0000, ACCESS_READ)
    if nested:
        assert host is not None
        host.unmap(0x200_0000, 4096)  # S2 change: GN=0 on the DomainID drops nested entries
        r.send(build_inv_iommu_pages(0x200_0000, 0x200_0FFF, 9, 0, 0))
        with pytest.raises(DmaFault) as f:
            r.hw.dma_translate(r.dev, 600, 0x40_0000, ACCESS_READ)
        assert f.value.detail["stage"] == "host"


@pytest.mark.parametrize("word,bits,why", [
    (0, 7 << 9, "Mode 7"),
    (0, DTE_FLAG_GV | (3 << 56), "GLX"),
    (2, 2 << 54, "GPT level"),
])
def test_illegal_dte(word: int, bits: int, why: str) -> None:
    r = Rig()
    w = [DTE_FLAG_V | DTE_FLAG_TV | DTE_FLAG_IR, 5, 0, 0]
    if word == 2:
        w[0] |= DTE_FLAG_GV
    w[word] |= bits
    r.dte(w)
    with pytest.raises(DmaFault) as f:
        r.hw.dma_translate(r.dev, None, 0, ACCESS_READ)
    assert f.value.reason == "ILLEGAL_DEV_TABLE_ENTRY" and why in f.value.detail["why"]
    assert r.events()[-1].name == "ILLEGAL_DEV_TABLE_ENTRY"


def test_io_page_fault_record() -> None:
    r = Rig()
    pt = r.v1()
    r.dte(v1_dte(pt, 0x1234))
    with pytest.raises(DmaFault):
        r.hw.dma_translate(r.dev, None, 0xABC_D000, ACCESS_WRITE)
    ev = r.events()[-1]
    assert (ev.name, ev.devid, ev.domid_pasid, ev.address) == (
        "IO_PAGE_FAULT", 8, 0x1234, 0xABC_D000)
    assert ev.flags & 0x020, "RW set for a write"
