"""The DMA path from the Machine to memory: argument checks at the boundary, the hit cache
a model publishes (``IommuHardware.dma_hits``) and the general path, which must agree
byte for byte; the mock publishes a 4 KiB page only while its IOTLB holds both 2 KiB
granules, keeps it stale until the matching invalidation, and never lets a write hit
skip a dirty-bit update; a device's props change tells its unit."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.mock.hw import MockIommuHw
from iommu_core.platform.bus import DeviceProps, make_pci_device
from iommu_core.platform.dma import device_dma_read
from iommu_sim import DmaFault, Machine
from iommu_sim.perf import Rig

PAGE = 4096


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig("mock")
    yield r
    r.m.shutdown()


def _mapped(rig: Rig, pages: int = 4) -> tuple[int, int, bytes]:
    """``pages`` pages of known bytes mapped; (va, iova, contents)."""
    m = rig.m
    va = m.mmap(pages * PAGE)
    data = bytes((i * 7 + i // PAGE) & 0xFF for i in range(pages * PAGE))
    m.mem_write(va, data)
    iova = rig.usable_iova(1 << 30, pages * PAGE)
    rig.map(va, pages * PAGE, iova)
    return va, iova, data


def _hw(rig: Rig) -> MockIommuHw:
    hw = rig.m.platform.iommus["iommu0"]
    assert isinstance(hw, MockIommuHw)
    return hw


def test_mock_publishes_a_page_once_both_granules_are_cached(rig: Rig) -> None:
    _va, iova, data = _mapped(rig)
    dev = rig.m.device("0000:00:01.0")
    hw = _hw(rig)
    assert rig.m.dma_read("0000:00:01.0", iova + 100, 8) == data[100:108]
    assert not hw.dma_hits.get((dev, None))  # one granule cached: nothing published
    assert rig.m.dma_read("0000:00:01.0", iova + 3000, 8) == data[3000:3008]
    base, perm = hw.dma_hits[(dev, None)][iova >> 12]
    assert perm == 3 and not base & 0xFFF
    # A hit reads the same bytes the walk did.
    for off, n in ((0, PAGE), (5, 64), (2040, 16), (PAGE - 1, 1)):
        assert rig.m.dma_read("0000:00:01.0", iova + off, n) == data[off : off + n]


def test_mock_hit_stays_stale_until_the_invalidation(rig: Rig) -> None:
    """The IOPTE changes without an invalidation: the published hit keeps the old
    translation, as the IOTLB does; unmap invalidates and the DMA faults."""
    _va, iova, data = _mapped(rig, 2)
    dev = rig.m.device("0000:00:01.0")
    rig.m.dma_read("0000:00:01.0", iova, PAGE)  # both granules of page 0
    dom = dev.iommu_group.domain
    other = rig.m.platform.alloc.alloc_pages(0)
    rig.m.platform.mem.write(other, b"\xee" * PAGE)
    dom.pt.unmap(iova, PAGE)  # behind the IOMMU's back: no invalidation
    dom.pt.map(iova, other, PAGE, 3)
    assert rig.m.dma_read("0000:00:01.0", iova, 8) == data[:8]  # stale
    rig.unmap(iova, 2 * PAGE)  # IOAS_UNMAP: the driver invalidates the domain
    assert not _hw(rig).dma_hits.get((dev, None))
    with pytest.raises(DmaFault):
        rig.m.dma_read("0000:00:01.0", iova, 8)
    dom.pt.unmap(iova, PAGE)
    rig.m.platform.alloc.free_pages(other, 0)


def test_mock_write_hit_with_dirty_tracking_marks_the_leaf() -> None:
    """With HAD set every write marks the leaf dirty: such pages are published without
    write permission, so a write after the dirty bits were read and cleared is seen."""
    from iommufd import uapi
    from tests.selftest.utils import Iommufd, new_machine

    m = new_machine()
    try:
        t = Iommufd(m)
        ioas = t.ioas_alloc()
        stdev, _h, idev = t.mock_domain(ioas)
        dev = next(d for d in m.platform.devices.values() if d.bus == "mock")
        buf = m.mmap(2 * PAGE)
        iova = t.map(ioas, buf, 2 * PAGE)
        h = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        t.replace(stdev, h)
        t.set_dirty_tracking(h, True)
        bitmap = m.mmap(PAGE)
        m.dma_read(dev, iova, PAGE)  # both granules cached: the page is published
        hw = m.platform.iommus[dev.iommu_name]
        assert hw.dma_hits[(dev, None)][iova >> 12][1] == 1  # read only: HAD
        for _ in range(2):
            m.dma_write(dev, iova + 8, b"w")
            t.get_dirty_bitmap(h, iova, 2 * PAGE, PAGE, bitmap)  # reads and clears
            assert m.mem_read(bitmap, 1)[0] == 0b01
        t.replace(stdev, ioas)
        t.destroy(h)
    finally:
        m.shutdown()


def test_general_path_agrees_with_the_hit_path(rig: Rig) -> None:
    """Across pages and granules, reads and writes give what memory holds."""
    m = rig.m
    va, iova, data = _mapped(rig, 4)
    buf = bytearray(data)
    for off, n in ((0, 4 * PAGE), (PAGE - 10, 20), (2048 - 3, 6), (3 * PAGE + 1, PAGE - 1)):
        assert m.dma_read("0000:00:01.0", iova + off, n) == bytes(buf[off : off + n])
    for off, chunk in ((PAGE - 5, b"0123456789"), (100, b"x" * 3000), (2 * PAGE, bytes(PAGE))):
        m.dma_write("0000:00:01.0", iova + off, chunk)
        buf[off : off + len(chunk)] = chunk
        assert m.mem_read(va, 4 * PAGE) == bytes(buf)
        assert m.dma_read("0000:00:01.0", iova, 4 * PAGE) == bytes(buf)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4 * PAGE - 1), st.integers(1, 600)),
                min_size=1, max_size=12))
def test_dma_equals_memory(ops: list[tuple[bool, int, int]]) -> None:
    r = Rig("mock")
    try:
        m = r.m
        va, iova, data = _mapped(r, 4)
        buf = bytearray(data)
        for write, off, n in ops:
            n = min(n, 4 * PAGE - off)
            if write:
                chunk = bytes((off + i) & 0xFF for i in range(n))
                m.dma_write("0000:00:01.0", iova + off, chunk)
                buf[off : off + n] = chunk
            else:
                assert m.dma_read("0000:00:01.0", iova + off, n) == bytes(buf[off : off + n])
        assert m.mem_read(va, 4 * PAGE) == bytes(buf)
    finally:
        r.m.shutdown()


def test_boundary_checks_are_exact() -> None:
    m = Machine.from_config({"iommus": [{"name": "mock0", "driver": "mock"}],
                             "devices": [{"name": "0000:00:01.0", "iommu": "mock0"}]})
    try:
        dev = m.device("0000:00:01.0")
        for bad in (("nosuch", 0, 1), (5, 0, 1), ([1], 0, 1)):
            with pytest.raises(OSError) as ei:
                m.dma_read(*bad)  # type: ignore[arg-type]
            assert ei.value.errno == errno.ENODEV
        for iova, n, pasid in ((-1, 1, None), (1 << 64, 1, None), (0, -1, None),
                               (0, 0x7FFF_F001, None), (0, 1, -1), ("0", 1, None)):
            with pytest.raises(OSError) as ei:
                m.dma_read("0000:00:01.0", iova, n, pasid)  # type: ignore[arg-type]
            assert ei.value.errno == errno.EINVAL, (iova, n, pasid)
        with pytest.raises(OSError) as ei:
            m.dma_write("0000:00:01.0", 0, "text")  # type: ignore[arg-type]
        assert ei.value.errno == errno.EFAULT
        # A Device object, bools and memoryviews take the checked path, and work.
        with pytest.raises(DmaFault):  # blocked: nothing attached
            m.dma_read(dev, True, 1)  # type: ignore[arg-type]
        with pytest.raises(DmaFault):
            m.dma_write(dev, 0, memoryview(b"ab"))
    finally:
        m.shutdown()


def test_device_props_report_changes() -> None:
    calls: list[int] = []
    p = DeviceProps({"a": 1})
    p.on_change = lambda: calls.append(1)
    p["a"] = 1  # the same value: nothing changed
    p["a"] = 2
    p["b"] = 0
    p.setdefault("b", 5)
    p.setdefault("c", 5)
    p.pop("zz", None)
    p.pop("c")
    del p["b"]
    p.update(a=3)
    p |= {"d": 1}
    p.clear()
    assert len(calls) == 8
    dev = make_pci_device("0000:00:01.0", "x", props={"k": 1})
    assert isinstance(dev.props, DeviceProps) and dev.props["k"] == 1


def test_a_wired_device_tells_its_unit() -> None:
    m = Machine.from_config({"iommus": [{"name": "mock0", "driver": "mock"}],
                             "devices": [{"name": "0000:00:01.0", "iommu": "mock0"}]})
    try:
        dev = m.device("0000:00:01.0")
        hw = m.platform.iommus["mock0"]
        seen = []
        hw.device_changed = seen.append  # type: ignore[method-assign]
        m.platform.remove_device(dev)
        m.platform.add_device(dev)
        dev.props["x"] = 1
        assert seen == [dev]
        assert m.platform.dma_targets["0000:00:01.0"] == (dev, hw)
    finally:
        m.shutdown()


def test_device_dma_read_without_published_hits() -> None:
    """A model that publishes nothing is read through ``dma_translate`` alone."""
    from iommu_core.platform.dma import IommuHardware
    from iommu_core.platform.memory import PhysicalMemory

    class Flat(IommuHardware):
        name = "flat"
        mmio = {}
        irqs = {}

        def dma_translate(self, dev: object, pasid: int | None, iova: int,
                          access: int) -> int:
            return iova + 0x10_0000

    mem = PhysicalMemory()
    mem.write(0x10_0000 + 4090, b"0123456789")
    dev = make_pci_device("0000:00:01.0", "flat")
    assert device_dma_read(Flat(), mem, dev, 4090, 10) == b"0123456789"
    assert device_dma_read(Flat(), mem, dev, 8192, 3) == bytes(3)


@pytest.mark.parametrize("driver", ["arm_smmu_v3", "intel_vtd", "amd_vi", "mock"])
def test_every_page_of_a_huge_leaf_reads_its_own_bytes(driver: str) -> None:
    """2 MiB of THP-backed memory maps as one leaf where the format has 2 MiB pages: a
    miss or a hit on any of its pages translates that page, not the one walked first."""
    r = Rig(driver)
    try:
        m = r.m
        va = m.mmap(4 << 20)
        va = (va + (2 << 20) - 1) & -(2 << 20)
        for i in range(512):
            m.mem_write(va + i * PAGE, i.to_bytes(2, "little") * 4)
        iova = r.usable_iova(1 << 32, 2 << 20)
        r.map(va, 2 << 20, iova)
        for _ in range(2):  # misses, then hits
            for i in (0, 5, 511, 256, 1, 300):
                got = m.dma_read("0000:00:01.0", iova + i * PAGE + 2, 4)
                assert got == i.to_bytes(2, "little") * 2, (driver, i)
        m.dma_write("0000:00:01.0", iova + 77 * PAGE, b"seventy-seven")
        assert m.mem_read(va + 77 * PAGE, 13) == b"seventy-seven"
    finally:
        r.m.shutdown()
