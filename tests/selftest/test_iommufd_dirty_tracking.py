"""FIXTURE(iommufd_dirty_tracking) of tools/testing/selftests/iommu/iommufd.c.

The ``_huge`` variants use MAP_HUGETLB in the kernel; here the buffer is an anonymous
mapping the simulated THP backs with 2 MiB pages, mapped by the IOAS in large runs, and
the HWPT uses the mock's HUGE page-table type (1 MiB leaves), as in the kernel.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from iommu_sim import Machine
from tests.selftest.utils import (
    HUGEPAGE_SIZE,
    MOCK_APERTURE_START,
    MOCK_HUGE_PAGE_SIZE,
    MOCK_PAGE_SIZE,
    PAGE_SIZE,
    Iommufd,
    expect_errno,
    st,
    teardown_iommufd,
    uapi,
)

K = 1024
M = 1024 * 1024
VARIANTS = {
    "domain_dirty8k": (8 * K, False),
    "domain_dirty16k": (16 * K, False),
    "domain_dirty64k": (64 * K, False),
    "domain_dirty128k": (128 * K, False),
    "domain_dirty320k": (320 * K, False),
    "domain_dirty64M": (64 * M, False),
    "domain_dirty64M_huge": (64 * M, True),
    "domain_dirty128M": (128 * M, False),
    "domain_dirty128M_huge": (128 * M, True),
}
DIRTY = uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING


@dataclass
class DtFixture:
    t: Iommufd
    m: Machine
    global_buffer: int
    buffer_size: int
    hugepages: bool
    buffer: int
    mmap_size: int
    bitmap: int
    bitmap_alloc: int
    bitmap_size: int  # in bits
    page_size: int
    ioas_id: int
    stdev_id: int = 0
    hwpt_id: int = 0
    idev_id: int = 0


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _test_bit(raw: bytes, i: int) -> bool:
    return bool(raw[i >> 3] >> (i & 7) & 1)


def check_mock_dirty_bitmaps(f: DtFixture, hwpt: int, length: int, iova: int, page_size: int,
                            pte_page_size: int, bitmap: int, nbits: int, flags: int) -> None:
    """Mark every other PTE dirty through the mock, read the bitmap (all of each dirty
    PTE's pages set, the next PTE's clear), read again (cleared unless NO_CLEAR)."""
    t, m = f.t, f.m
    npte = pte_page_size // page_size
    pteset = 2 * npte
    nr = nbits // pteset or 1
    nbytes = (nbits + 7) // 8
    bits = bytearray(nbytes)
    for i in range(0, nbits, pteset):
        bits[i >> 3] |= 1 << (i & 7)
    m.mem_write(bitmap, bytes(bits))
    assert t.mock_dirty(hwpt, iova, length, page_size, bitmap) == nr

    # Expect all even PTEs dirty in the user bitmap
    m.mem_write(bitmap, bytes(nbytes))
    t.get_dirty_bitmap(hwpt, iova, length, page_size, bitmap, flags)
    raw = m.mem_read(bitmap, nbytes)
    for i in range(0, nbits, pteset):
        for j in range(pteset):
            assert _test_bit(raw, i + j) == (j < npte), (i, j)

    m.mem_write(bitmap, bytes(nbytes))
    t.get_dirty_bitmap(hwpt, iova, length, page_size, bitmap, flags)
    # It was read already: all zeroes unless NO_CLEAR
    raw = m.mem_read(bitmap, nbytes)
    no_clear = bool(flags & uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
    for i in range(0, nbits, pteset):
        for j in range(pteset):
            assert _test_bit(raw, i + j) == (j < npte and no_clear), (i, j)


class Test_iommufd_dirty_tracking:
    @pytest.fixture
    def f(self, machine: Machine, buffer: int, variant: str) -> Iterator[DtFixture]:
        size, huge = VARIANTS[variant]
        if size < MOCK_PAGE_SIZE:
            pytest.skip(f"buffer_size={size} is below MOCK_PAGE_SIZE")
        t = Iommufd(machine)
        mmap_size = max(size, HUGEPAGE_SIZE) if huge else size
        va = machine.mmap(max(mmap_size, HUGEPAGE_SIZE))  # HUGEPAGE_SIZE aligned
        if mmap_size < HUGEPAGE_SIZE:
            machine.munmap(va + mmap_size, HUGEPAGE_SIZE - mmap_size)
        if huge:  # MAP_POPULATE
            machine.mem_write(va, bytes(mmap_size))
        nbits = size // MOCK_PAGE_SIZE
        bm_bytes = (nbits + 7) // 8 + PAGE_SIZE
        bm_alloc = (bm_bytes + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        bitmap = machine.mmap(bm_alloc)
        f = DtFixture(t, machine, buffer, size, huge, va, mmap_size, bitmap, bm_alloc, nbits,
                      MOCK_PAGE_SIZE, t.ioas_alloc())
        if not huge:
            t.huge_pages(f.ioas_id, 0)
        f.stdev_id, f.hwpt_id, f.idev_id = t.mock_domain(f.ioas_id)
        yield f
        machine.munmap(bitmap, bm_alloc)
        machine.munmap(va, mmap_size)
        teardown_iommufd(machine, t.fd, buffer)

    def test_enforce_dirty(self, f: DtFixture) -> None:
        t = f.t
        # Regular case
        h = t.hwpt_alloc(f.idev_id, f.ioas_id, DIRTY)
        stdev, _h, _d = t.mock_domain(h)
        with expect_errno(errno.EINVAL):
            t.mock_domain_flags(h, st.MOCK_FLAGS_DEVICE_NO_DIRTY)
        t.destroy(stdev)
        t.destroy(h)
        # IOMMU device does not support dirty tracking
        ioas = t.ioas_alloc()
        stdev, _h, idev = t.mock_domain_flags(ioas, st.MOCK_FLAGS_DEVICE_NO_DIRTY)
        with expect_errno(errno.EOPNOTSUPP):
            t.hwpt_alloc(idev, ioas, DIRTY)
        t.destroy(stdev)

    def test_set_dirty_tracking(self, f: DtFixture) -> None:
        t = f.t
        h = t.hwpt_alloc(f.idev_id, f.ioas_id, DIRTY)
        stdev, _h, _d = t.mock_domain(h)
        t.set_dirty_tracking(h, True)
        t.set_dirty_tracking(h, False)
        t.destroy(stdev)
        t.destroy(h)

    def test_pasid_set_dirty_tracking(self, f: DtFixture) -> None:
        t = f.t
        pasid = 100
        h = t.hwpt_alloc(f.idev_id, f.ioas_id, uapi.IOMMU_HWPT_ALLOC_PASID | DIRTY)
        stdev, _h, _d = t.mock_domain_flags(h, st.MOCK_FLAGS_DEVICE_PASID)
        t.pasid_attach(stdev, pasid, h)
        t.set_dirty_tracking(h, True)
        t.set_dirty_tracking(h, False)
        t.pasid_detach(stdev, pasid)
        t.destroy(stdev)
        # A device that cannot dirty-track may not join a dirty-tracking PASID HWPT
        ioas = t.ioas_alloc()
        stdev, _h, _d = t.mock_domain_flags(
            ioas, st.MOCK_FLAGS_DEVICE_PASID | st.MOCK_FLAGS_DEVICE_NO_DIRTY)
        with expect_errno(errno.EINVAL):
            t.pasid_attach(stdev, pasid, h)
        t.destroy(stdev)
        t.destroy(h)

    def test_device_dirty_capability(self, f: DtFixture) -> None:
        t = f.t
        h = t.hwpt_alloc(f.idev_id, f.ioas_id, 0)
        stdev, _h, _d = t.mock_domain(h)
        info = t.get_hw_info(f.idev_id, 0, 0, 0)
        assert info.out_capabilities & uapi.IOMMU_HW_CAP_DIRTY_TRACKING
        t.destroy(stdev)
        t.destroy(h)

    def _get_dirty_bitmap(self, f: DtFixture, flags: int) -> None:
        t = f.t
        pte = MOCK_HUGE_PAGE_SIZE if f.hugepages else MOCK_PAGE_SIZE
        t.map_fixed(f.ioas_id, f.buffer, f.buffer_size, MOCK_APERTURE_START)
        h = t.iommupt(f.idev_id, f.ioas_id, DIRTY,
                      st.MOCK_IOMMUPT_HUGE if f.hugepages else st.MOCK_IOMMUPT_DEFAULT)
        t.set_dirty_tracking(h, True)
        for off in (0, MOCK_PAGE_SIZE, 0xFF1):  # aligned, not PAGE_SIZE aligned, not u64
            check_mock_dirty_bitmaps(f, h, f.buffer_size, MOCK_APERTURE_START, f.page_size,
                                    pte, f.bitmap + off, f.bitmap_size, flags)
        t.destroy(h)

    def test_get_dirty_bitmap(self, f: DtFixture) -> None:
        self._get_dirty_bitmap(f, 0)

    def test_get_dirty_bitmap_no_clear(self, f: DtFixture) -> None:
        self._get_dirty_bitmap(f, uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
