"""FIXTURE(iommufd_mock_domain) of tools/testing/selftests/iommu/iommufd.c.

The ``_hugepage`` variants map their buffer with MAP_HUGETLB in the kernel; the
simulated process backs anonymous mappings of 2 MiB and more with transparent huge pages
(physically contiguous, naturally aligned), which is what those variants exercise, so
they run on such a mapping. The ``_file`` variants map the global memfd (or a memfd of
their own) with IOMMU_IOAS_MAP_FILE.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from iommu_sim import Machine
from tests.selftest.utils import (
    BUFFER_SIZE,
    FIXED,
    HUGEPAGE_SIZE,
    MOCK_APERTURE_START,
    MOCK_PAGE_SIZE,
    PAGE_SIZE,
    Iommufd,
    expect_errno,
    memfd_mmap,
    st,
    teardown_iommufd,
    uapi,
)

VARIANTS = {
    "one_domain": {"mock_domains": 1, "hugepages": False, "file": False},
    "two_domains": {"mock_domains": 2, "hugepages": False, "file": False},
    "one_domain_hugepage": {"mock_domains": 1, "hugepages": True, "file": False},
    "two_domains_hugepage": {"mock_domains": 2, "hugepages": True, "file": False},
    "one_domain_file": {"mock_domains": 1, "hugepages": False, "file": True},
    "one_domain_file_hugepage": {"mock_domains": 1, "hugepages": True, "file": True},
}


@dataclass
class MdFixture:
    t: Iommufd
    m: Machine
    buffer: int
    ioas_id: int
    hugepages: bool
    mmap_buf_size: int
    file: bool
    mfd: int
    mfd_buffer: int
    stdev_ids: list[int] = field(default_factory=lambda: [0, 0])
    hwpt_ids: list[int] = field(default_factory=lambda: [0, 0])
    idev_ids: list[int] = field(default_factory=lambda: [0, 0])
    mock_domains: int = 0

    @property
    def hwpt_id(self) -> int:
        return self.hwpt_ids[0]

    def check_mock_iova(self, va: int, iova: int, length: int) -> None:
        self.t.check_map(self.hwpt_ids[0], iova, length, va)
        if self.hwpt_ids[1]:
            self.t.check_map(self.hwpt_ids[1], iova, length, va)

    def mmap_buf(self) -> int:
        va = self.m.mmap(self.mmap_buf_size)
        if self.hugepages:  # MAP_POPULATE
            self.m.mem_write(va, bytes(self.mmap_buf_size))
        return va

    def map_buf(self, ioas: int, mfd: int, buf: int, start: int, length: int) -> int:
        """The variant's mapping of ``length`` bytes at ``start`` of the buffer."""
        if self.file:
            return self.t.map_file(ioas, mfd, start, length)
        return self.t.map(ioas, buf + start, length)


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Test_iommufd_mock_domain:
    @pytest.fixture
    def f(self, machine: Machine, buffer: int, mfd_buffer: tuple[int, int], variant: str
          ) -> Iterator[MdFixture]:
        v = VARIANTS[variant]
        t = Iommufd(machine)
        huge = bool(v["hugepages"])
        f = MdFixture(t, machine, buffer, t.ioas_alloc(), huge,
                      2 * HUGEPAGE_SIZE if huge else 8 * PAGE_SIZE, bool(v["file"]),
                      *mfd_buffer)
        f.mock_domains = int(v["mock_domains"])
        for i in range(f.mock_domains):
            f.stdev_ids[i], f.hwpt_ids[i], f.idev_ids[i] = t.mock_domain(f.ioas_id)
        t.check_cache_all(f.idev_ids[0], st.IOMMU_TEST_DEV_CACHE_DEFAULT)
        yield f
        teardown_iommufd(machine, t.fd, buffer)

    def test_basic(self, f: MdFixture) -> None:
        t, m = f.t, f.m
        size = f.mmap_buf_size
        if f.file:
            # Simple one page map
            iova = t.map_file(f.ioas_id, f.mfd, 0, PAGE_SIZE)
            f.check_mock_iova(f.mfd_buffer, iova, PAGE_SIZE)
            mfd_tmp, _buf = memfd_mmap(m, size)
            with expect_errno(errno.EINVAL):
                t.map_file(f.ioas_id, mfd_tmp, 0, size + 1)
            m.ftruncate(mfd_tmp, 0)
            with expect_errno(errno.EINVAL):
                t.map_file(f.ioas_id, mfd_tmp, 0, size)
            m.close(mfd_tmp)
            return
        iova = t.map(f.ioas_id, f.buffer, PAGE_SIZE)
        f.check_mock_iova(f.buffer, iova, PAGE_SIZE)
        buf = f.mmap_buf()
        # EFAULT half way through mmap
        m.munmap(buf + size // 2, size // 2)
        with expect_errno(errno.EFAULT):
            t.map(f.ioas_id, buf, size)
        # EFAULT on first page
        m.munmap(buf, size // 2)
        with expect_errno(errno.EFAULT):
            t.map(f.ioas_id, buf, size)

    def test_ro_unshare(self, f: MdFixture) -> None:
        t, m = f.t, f.m
        # A private mapping of a file (the kernel maps a page of /proc/self/exe).
        fd = m.memfd_create("exe")
        m.pwrite(fd, b"\x7fELF" + bytes(PAGE_SIZE - 4), 0)
        buf = m.mmap(PAGE_SIZE, fd, 0, shared=False)
        m.close(fd)
        # The write to the page after it is mapped for reading must not change the
        # assigned PFN: GUP unshared it at pin time.
        iova = t.map(f.ioas_id, buf, PAGE_SIZE, flags=uapi.IOMMU_IOAS_MAP_READABLE)
        f.check_mock_iova(buf, iova, PAGE_SIZE)
        m.mem_write(buf, b"\x01" * PAGE_SIZE)
        f.check_mock_iova(buf, iova, PAGE_SIZE)
        m.munmap(buf, PAGE_SIZE)

    def _aligns(self, f: MdFixture, copy: bool) -> None:
        t, m = f.t, f.m
        size = f.mmap_buf_size
        step = size // 16 if f.hugepages else MOCK_PAGE_SIZE
        mfd = -1
        if f.file:
            mfd, buf = memfd_mmap(m, size)
        else:
            buf = f.mmap_buf()
        t.check_refs(buf, size, 0)
        # Every combination of page size and alignment within a big region (fewer for
        # huge pages: the inner loop then never runs, as in the kernel).
        for start in range(0, size, step):
            end = size if f.hugepages else start + MOCK_PAGE_SIZE
            while end < size:
                length = end - start
                iova = f.map_buf(f.ioas_id, mfd, buf, start, length)
                old = f.hwpt_ids[1]
                if copy:
                    # Add and destroy a domain while the area exists
                    stdev, f.hwpt_ids[1], _ = t.mock_domain(f.ioas_id)
                f.check_mock_iova(buf + start, iova, length)
                lo = start // PAGE_SIZE * PAGE_SIZE
                hi = end // PAGE_SIZE * PAGE_SIZE
                if hi > lo:
                    t.check_refs(buf + lo, hi - lo, 1)
                if copy:
                    t.destroy(stdev)
                    f.hwpt_ids[1] = old
                t.unmap(f.ioas_id, iova, length)
                end += MOCK_PAGE_SIZE
        t.check_refs(buf, size, 0)
        m.munmap(buf, size)
        if f.file:
            m.close(mfd)

    def test_all_aligns(self, f: MdFixture) -> None:
        self._aligns(f, copy=False)

    def test_all_aligns_copy(self, f: MdFixture) -> None:
        self._aligns(f, copy=True)

    def test_user_copy(self, f: MdFixture) -> None:
        t, m = f.t, f.m
        buf = f.mfd_buffer if f.file else f.buffer
        flags = FIXED | uapi.IOMMU_IOAS_MAP_WRITEABLE
        # Pin the pages in an IOAS with no domains then copy to an IOAS with domains
        x = t.ioas_alloc()
        src = f.map_buf(x, f.mfd, buf, 0, BUFFER_SIZE)
        afd = t.access_create(x, st.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
        t.access_pin(afd, src, BUFFER_SIZE, buf)
        t.copy(flags, x, src, f.ioas_id, MOCK_APERTURE_START, BUFFER_SIZE)
        f.check_mock_iova(buf, MOCK_APERTURE_START, BUFFER_SIZE)
        # Now replace the ioas with a new one
        y = t.ioas_alloc()
        src = f.map_buf(y, f.mfd, buf, 0, BUFFER_SIZE)
        t.access_replace_ioas(afd, y)
        # Destroy the old ioas and clean up the copied mapping
        t.unmap(f.ioas_id, MOCK_APERTURE_START, BUFFER_SIZE)
        t.destroy(x)
        # Then run the same test again with the new ioas
        item = t.access_pin(afd, src, BUFFER_SIZE, buf)
        t.copy(flags, y, src, f.ioas_id, MOCK_APERTURE_START, BUFFER_SIZE)
        f.check_mock_iova(buf, MOCK_APERTURE_START, BUFFER_SIZE)
        t.access_unpin(afd, item)
        m.close(afd)
        t.destroy(y)

    def test_replace(self, f: MdFixture) -> None:
        t = f.t
        ioas = t.ioas_alloc()
        t.replace(f.stdev_ids[0], ioas)
        # Replacing the IOAS deallocated the prior (automatic) HWPT
        if f.mock_domains == 1:
            with expect_errno(errno.ENOENT):
                t.replace(f.stdev_ids[0], f.hwpt_ids[0])
        t.replace(f.stdev_ids[0], ioas)
        if f.mock_domains >= 2:
            t.replace(f.stdev_ids[0], f.hwpt_ids[1])
            t.replace(f.stdev_ids[0], f.hwpt_ids[1])
            t.replace(f.stdev_ids[0], f.hwpt_ids[0])
        t.replace(f.stdev_ids[0], f.ioas_id)
        t.destroy(ioas)

    def test_alloc_hwpt(self, f: MdFixture) -> None:
        t = f.t
        for i in range(f.mock_domains):
            with expect_errno(errno.EOPNOTSUPP):
                t.hwpt_alloc(f.idev_ids[i], f.ioas_id,
                             ~uapi.IOMMU_HWPT_ALLOC_NEST_PARENT & 0xFFFFFFFF)
            h0 = t.hwpt_alloc(f.idev_ids[i], f.ioas_id, 0)
            h1 = t.hwpt_alloc(f.idev_ids[i], f.ioas_id, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
            # Do a hw_pagetable rotation test
            t.replace(f.stdev_ids[i], h0)
            with expect_errno(errno.EBUSY):
                t.destroy(h0)
            t.replace(f.stdev_ids[i], h1)
            with expect_errno(errno.EBUSY):
                t.destroy(h1)
            t.replace(f.stdev_ids[i], f.ioas_id)
            t.destroy(h1)
            stdev, _h, _d = t.mock_domain(h0)
            t.destroy(stdev)
            t.destroy(h0)
