"""FIXTURE(iommufd_ioas) of tools/testing/selftests/iommu/iommufd.c, every variant."""

from __future__ import annotations

import errno
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from iommu_sim import Machine
from tests.selftest.utils import (
    BUFFER_SIZE,
    FIXED,
    HUGEPAGE_SIZE,
    MOCK_APERTURE_LAST,
    MOCK_APERTURE_START,
    MOCK_PAGE_SIZE,
    PAGE_SIZE,
    RW,
    U64_MAX,
    Iommufd,
    expect_errno,
    st,
    sz,
    teardown_iommufd,
    uapi,
)

VARIANTS = {
    "no_domain": {"mock_domains": 0, "pasid_capable": False, "memory_limit": 0},
    "mock_domain": {"mock_domains": 1, "pasid_capable": True, "memory_limit": 0},
    "two_mock_domain": {"mock_domains": 2, "pasid_capable": False, "memory_limit": 0},
    "mock_domain_limit": {"mock_domains": 1, "pasid_capable": False, "memory_limit": 16},
}

D = st.IOMMU_TEST_IOTLB_DEFAULT
C = st.IOMMU_TEST_DEV_CACHE_DEFAULT
INV_SEL = st.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST


@dataclass
class IoasFixture:
    t: Iommufd
    m: Machine
    buffer: int
    ioas_id: int
    stdev_id: int = 0
    hwpt_id: int = 0
    device_id: int = 0
    device_pasid_id: int = 0
    base_iova: int = 0


def check_access_rw(f: IoasFixture, access_fd: int, iova: int, def_flags: int) -> None:
    """Byte-exact CPU reads and writes through the IOAS at every small (offset, length)
    around a page boundary, then one read of the whole buffer."""
    t, m = f.t, f.m
    rnd = random.Random(1)
    m.mem_write(f.buffer, rnd.randbytes(BUFFER_SIZE))
    tmp = m.mmap(PAGE_SIZE)
    for io in range(iova + PAGE_SIZE - 50, iova + PAGE_SIZE + 50):
        for length in range(1, 64):
            t.access_rw(access_fd, io, length, tmp, def_flags)
            assert m.mem_read(tmp, length) == m.mem_read(f.buffer + (io - iova), length)
            m.mem_write(tmp, rnd.randbytes(64))
            t.access_rw(access_fd, io, length, tmp, def_flags | st.MOCK_ACCESS_RW_WRITE)
            assert m.mem_read(f.buffer + (io - iova), length) == m.mem_read(tmp, length)
    m.munmap(tmp, PAGE_SIZE)
    tmp2 = m.mmap(BUFFER_SIZE)
    t.access_rw(access_fd, iova, BUFFER_SIZE, tmp2, def_flags)
    assert m.mem_read(f.buffer, BUFFER_SIZE) == m.mem_read(tmp2, BUFFER_SIZE)
    m.munmap(tmp2, BUFFER_SIZE)


def hwpt_alloc_errno(t: Iommufd, *args: object, **kwargs: object) -> int:
    try:
        t.hwpt_alloc(*args, **kwargs)  # type: ignore[arg-type]
    except OSError as e:
        return int(e.errno or 0)
    return 0


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Test_iommufd_ioas:
    @pytest.fixture
    def f(self, machine: Machine, buffer: int, variant: str) -> Iterator[IoasFixture]:
        v = VARIANTS[variant]
        t = Iommufd(machine)
        f = IoasFixture(t, machine, buffer, t.ioas_alloc())
        t.set_temp_memory_limit(int(v["memory_limit"]) or 65536)
        for _ in range(int(v["mock_domains"])):
            f.stdev_id, f.hwpt_id, f.device_id = t.mock_domain(f.ioas_id)
            t.check_cache_all(f.device_id, C)
            f.base_iova = MOCK_APERTURE_START
        if v["pasid_capable"]:
            _s, _h, f.device_pasid_id = t.mock_domain_flags(f.ioas_id,
                                                            st.MOCK_FLAGS_DEVICE_PASID)
        yield f
        t.set_temp_memory_limit(65536)
        teardown_iommufd(machine, t.fd, buffer)

    def test_ioas_auto_destroy(self, f: IoasFixture) -> None:
        pass

    def test_ioas_destroy(self, f: IoasFixture) -> None:
        if f.stdev_id:
            with expect_errno(errno.EBUSY):
                f.t.destroy(f.ioas_id)
        else:
            f.t.destroy(f.ioas_id)

    def test_alloc_hwpt_nested(self, f: IoasFixture) -> None:
        t = f.t
        if not f.device_id:
            with expect_errno(errno.ENOENT):
                t.hwpt_alloc(0, f.ioas_id, 0)
            with expect_errno(errno.ENOENT):
                t.nested(0, f.ioas_id, 0)
            with expect_errno(errno.ENOENT):
                t.nested(0, f.ioas_id, 0)
            with expect_errno(errno.ENOENT):
                t.replace(0, 0)
            with expect_errno(errno.ENOENT):
                t.replace(0, 0)
            return
        dev, ioas = f.device_id, f.ioas_id
        with expect_errno(errno.ENOENT):
            t.hwpt_alloc(ioas, dev, 0)
        with expect_errno(errno.EINVAL):
            t.hwpt_alloc(dev, dev, 0)
        with expect_errno(errno.EOPNOTSUPP):
            t.hwpt_alloc(dev, ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT
                         | uapi.IOMMU_HWPT_FAULT_ID_VALID)
        parent = t.hwpt_alloc(dev, ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
        plain = t.hwpt_alloc(dev, ioas, 0)

        # Negative tests of the nested allocation
        with expect_errno(errno.EINVAL):
            t.nested(dev, parent, 0, data_type=uapi.IOMMU_HWPT_DATA_NONE)
        with expect_errno(errno.EOPNOTSUPP):
            t.nested(dev, parent, 0, data_type=st.IOMMU_HWPT_DATA_SELFTEST + 1)
        with expect_errno(errno.EINVAL):
            t.nested(dev, parent, 0, data_len=3)
        with expect_errno(errno.EFAULT):
            t.hwpt_alloc(dev, parent, 0, st.IOMMU_HWPT_DATA_SELFTEST, 0, 8)
        with expect_errno(errno.EOPNOTSUPP):
            t.nested(dev, parent, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
        with expect_errno(errno.EINVAL):
            t.nested(dev, plain, 0)

        fault_id, fault_fd = t.fault_alloc()
        n0 = t.nested(dev, parent, 0)
        n1 = t.nested(dev, parent, 0)
        with expect_errno(errno.ENOENT):
            t.nested(dev, parent, uapi.IOMMU_HWPT_FAULT_ID_VALID, fault_id=0xFFFFFFFF)
        iopf = t.nested(dev, parent, uapi.IOMMU_HWPT_FAULT_ID_VALID, fault_id=fault_id)
        t.check_iotlb_all(n0, D)
        t.check_iotlb_all(n1, D)

        # Negative test: a nested hwpt on top of a nested hwpt
        with expect_errno(errno.EINVAL):
            t.nested(dev, n0, 0)
        # Negative test: parent hwpt now cannot be freed
        with expect_errno(errno.EBUSY):
            t.destroy(parent)

        inv = st.iommu_hwpt_invalidate_selftest
        e8 = sz(inv)

        def reqs(*entries: tuple[int, int]) -> bytes:
            return b"".join(uapi.struct_bytes(inv(flags=fl, iotlb_id=i)) for fl, i in entries)

        # hwpt_invalidate only supports a user-managed hwpt (nested)
        assert t.invalidate(parent, reqs((0, 0)), INV_SEL, e8, 1) == (errno.EINVAL, 0)
        # Check data_type by passing zero-length array
        assert t.invalidate(n0, reqs((0, 0)), INV_SEL, e8, 0) == (0, 0)
        # Negative test: Invalid data_type
        assert t.invalidate(n0, reqs((0, 0)), st.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID,
                            e8, 1) == (errno.EINVAL, 0)
        # Negative test: structure size sanity
        assert t.invalidate(n0, reqs((0, 0)), INV_SEL, e8 + 1, 1) == (errno.EINVAL, 0)
        assert t.invalidate(n0, reqs((0, 0)), INV_SEL, 1, 1) == (errno.EINVAL, 0)
        assert t.invalidate(n0, reqs((0, 0)), INV_SEL, PAGE_SIZE + 1, 1) == (errno.EINVAL, 0)
        assert t.invalidate(n0, reqs((0, 0)), INV_SEL, e8,
                            st.IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX + 1) == (errno.EINVAL, 0)
        # Negative test: invalid flag is passed
        assert t.invalidate(n0, reqs((0xFFFFFFFF, 0)), INV_SEL, e8, 1) == (errno.EOPNOTSUPP, 0)
        # Negative test: invalid data_uptr when array is not empty
        assert t.invalidate(n0, 0, INV_SEL, e8, 1) == (errno.EINVAL, 0)
        # Negative test: invalid entry_len when array is not empty
        assert t.invalidate(n0, reqs((0, 0)), INV_SEL, 0, 1) == (errno.EINVAL, 0)
        # Negative test: invalid iotlb_id
        assert t.invalidate(n0, reqs((0, st.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1)), INV_SEL,
                            e8, 1) == (errno.EINVAL, 0)
        t.check_iotlb_all(n0, D)

        # Invalidate the 1st iotlb entry but fail the 2nd request with an invalid flag
        assert t.invalidate(n0, reqs((0, 0), (0xFFFFFFFF, 1)), INV_SEL, e8, 2) == (
            errno.EOPNOTSUPP, 1)
        for i, v in enumerate((0, D, D, D)):
            t.check_iotlb(n0, i, v)
        # ... and fail the 2nd request with an invalid iotlb_id
        assert t.invalidate(n0, reqs((0, 0), (0, st.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1)),
                            INV_SEL, e8, 2) == (errno.EINVAL, 1)
        for i, v in enumerate((0, D, D, D)):
            t.check_iotlb(n0, i, v)
        # Invalidate the 2nd iotlb entry and verify
        assert t.invalidate(n0, reqs((0, 1)), INV_SEL, e8, 1) == (0, 1)
        for i, v in enumerate((0, 0, D, D)):
            t.check_iotlb(n0, i, v)
        # Invalidate the 3rd and 4th iotlb entries and verify
        assert t.invalidate(n0, reqs((0, 2), (0, 3)), INV_SEL, e8, 2) == (0, 2)
        t.check_iotlb_all(n0, 0)
        # Invalidate all iotlb entries for n1 and verify
        assert t.invalidate(n1, reqs((st.IOMMU_TEST_INVALIDATE_FLAG_ALL, 0)), INV_SEL, e8,
                            1) == (0, 1)
        t.check_iotlb_all(n1, 0)

        # Attach device to n0, then replace with n1
        t.replace(f.stdev_id, n0)
        with expect_errno(errno.EBUSY):
            t.destroy(n0)
        t.replace(f.stdev_id, n1)
        with expect_errno(errno.EBUSY):
            t.destroy(n1)
        t.destroy(n0)

        # Detach from n1 and replace with iopf
        t.replace(f.stdev_id, iopf)
        with expect_errno(errno.EBUSY):
            t.destroy(iopf)
        t.trigger_iopf(dev, fault_fd)

        t.replace(f.stdev_id, parent)
        t.destroy(n1)
        t.destroy(iopf)
        t.replace(f.stdev_id, ioas)
        t.destroy(parent)
        t.destroy(plain)
        f.m.close(fault_fd)
        t.destroy(fault_id)

    def test_hwpt_attach(self, f: IoasFixture) -> None:
        t = f.t
        if f.device_id:
            stdev, _h, _d = t.mock_domain(f.hwpt_id)
            t.destroy(stdev)
        else:
            with expect_errno(errno.ENOENT):
                t.mock_domain(f.hwpt_id)

    def test_ioas_area_destroy(self, f: IoasFixture) -> None:
        t = f.t
        t.map_fixed(f.ioas_id, f.buffer, PAGE_SIZE, f.base_iova)
        if f.stdev_id:
            with expect_errno(errno.EBUSY):
                t.destroy(f.ioas_id)
        else:
            t.destroy(f.ioas_id)

    def test_ioas_area_auto_destroy(self, f: IoasFixture) -> None:
        for i in range(10):
            f.t.map_fixed(f.ioas_id, f.buffer, PAGE_SIZE, f.base_iova + i * PAGE_SIZE)

    def test_get_hw_info(self, f: IoasFixture) -> None:
        t, m = f.t, f.m
        buf = m.mmap(PAGE_SIZE)
        if f.device_id:
            t.get_hw_info(f.device_id, uapi.IOMMU_HW_INFO_TYPE_DEFAULT, 0, 0)
            t.get_hw_info(f.device_id, uapi.IOMMU_HW_INFO_TYPE_DEFAULT, buf, 8)
            with expect_errno(errno.EOPNOTSUPP):
                t.get_hw_info(f.device_id, st.IOMMU_HW_INFO_TYPE_SELFTEST + 1, buf, 8)
            t.get_hw_info(f.device_id, st.IOMMU_HW_INFO_TYPE_SELFTEST, buf, 8)
            # The kernel zeroes the part of a bigger buffer it has no data for.
            m.mem_write(buf, b"\xff" * 16)
            t.get_hw_info(f.device_id, uapi.IOMMU_HW_INFO_TYPE_DEFAULT, buf, 16)
            # A smaller buffer only gets its part.
            m.mem_write(buf, b"\xff" * 16)
            t.get_hw_info(f.device_id, uapi.IOMMU_HW_INFO_TYPE_DEFAULT, buf, 4)
            assert m.mem_read(buf + 4, 12) == b"\xff" * 12
            info = t.get_hw_info(f.device_id, 0, 0, 0)
            assert info.out_max_pasid_log2 == 0
            if f.device_pasid_id:
                info = t.get_hw_info(f.device_pasid_id, 0, 0, 0)
                assert info.out_max_pasid_log2 == st.MOCK_PASID_WIDTH
        else:
            with expect_errno(errno.ENOENT):
                t.get_hw_info(f.device_id, 0, buf, 8)
            with expect_errno(errno.ENOENT):
                t.get_hw_info(f.device_id, 0, buf, 16)
        m.munmap(buf, PAGE_SIZE)

    def test_area(self, f: IoasFixture) -> None:
        t, ioas, b = f.t, f.ioas_id, f.base_iova
        for i in range(10):
            with expect_errno(errno.ENOENT):
                t.unmap(ioas, i * PAGE_SIZE, PAGE_SIZE)
        for i in range(10):
            t.map_fixed(ioas, f.buffer, PAGE_SIZE, b + i * PAGE_SIZE)
        for i in range(10):
            t.unmap(ioas, b + i * PAGE_SIZE, PAGE_SIZE)
        # Unmap fails if nothing is mapped, and cannot split an area
        t.map_fixed(ioas, f.buffer, 2 * PAGE_SIZE, b + 16 * PAGE_SIZE)
        with expect_errno(errno.ENOENT):
            t.unmap(ioas, b + 16 * PAGE_SIZE, PAGE_SIZE)
        with expect_errno(errno.ENOENT):
            t.unmap(ioas, b + 17 * PAGE_SIZE, PAGE_SIZE)
        for npages, at in ((2, 16), (1, 16), (1, 17), (2, 15), (3, 15)):
            with expect_errno(errno.EEXIST):
                t.map_fixed(ioas, f.buffer, npages * PAGE_SIZE, b + at * PAGE_SIZE)
        # Unmap all works
        t.unmap(ioas, 0, U64_MAX)
        # Unmap all succeeds on an empty IOAS
        t.unmap(ioas, 0, U64_MAX)

    def test_unmap_fully_contained_areas(self, f: IoasFixture) -> None:
        t, ioas = f.t, f.ioas_id
        base = f.base_iova + 4 * PAGE_SIZE
        for i in range(4):
            t.map_fixed(ioas, f.buffer, 8 * PAGE_SIZE, base + i * 16 * PAGE_SIZE)
        # Unmapping an area that is not fully contained does not work
        with expect_errno(errno.ENOENT):
            t.unmap(ioas, base - 4 * PAGE_SIZE, 8 * PAGE_SIZE)
        with expect_errno(errno.ENOENT):
            t.unmap(ioas, base + 3 * 16 * PAGE_SIZE + 8 * PAGE_SIZE - 4 * PAGE_SIZE,
                    8 * PAGE_SIZE)
        # Unmapping fully contained areas works
        assert t.unmap(ioas, base - 4 * PAGE_SIZE,
                       3 * 16 * PAGE_SIZE + 8 * PAGE_SIZE + 4 * PAGE_SIZE) == 32 * PAGE_SIZE

    def test_area_auto_iova(self, f: IoasFixture) -> None:
        t, ioas = f.t, f.ioas_id
        start, end = 4 * PAGE_SIZE, 104 * PAGE_SIZE
        iovas = [t.map(ioas, f.buffer, PAGE_SIZE) for _ in range(10)]
        for iova in iovas:
            t.unmap(ioas, iova, PAGE_SIZE)
        # Check that the IOVA allocator honours the length's alignment
        iovas = []
        for i in range(10):
            length = PAGE_SIZE * (i + 1)
            if f.stdev_id:
                iovas.append(t.map(ioas, f.buffer, length))
            else:
                iovas.append(t.map(ioas, 1 << 31, length))
            assert iovas[i] % (length & -length) == 0
        for i, iova in enumerate(iovas):
            t.unmap(ioas, iova, PAGE_SIZE * (i + 1))
        # Avoids a reserved region
        t.add_reserved(ioas, start, end - start)
        for i in range(10):
            length = PAGE_SIZE * (i + 1)
            iova = t.map(ioas, f.buffer, length)
            assert iova % (length & -length) == 0
            assert not start < iova < end
            t.unmap(ioas, iova, length)
        # Allowed region intersects with a reserved region
        with expect_errno(errno.EADDRINUSE):
            t.allow_iovas(ioas, [(PAGE_SIZE, 600 * PAGE_SIZE)])
        # Allocate from an allowed region
        if f.stdev_id:
            lo, hi = MOCK_APERTURE_START + PAGE_SIZE, MOCK_APERTURE_START + 600 * PAGE_SIZE - 1
        else:
            lo, hi = 200 * PAGE_SIZE, 600 * PAGE_SIZE - 1
        t.allow_iovas(ioas, [(lo, hi)])
        for i in range(10):
            length = PAGE_SIZE * (i + 1)
            iova = t.map(ioas, f.buffer, length)
            assert iova % (length & -length) == 0
            assert iova >= lo and iova <= hi and iova + length <= hi + 1
            t.unmap(ioas, iova, length)

    def test_reserved_overflow(self, f: IoasFixture) -> None:
        t = f.t
        t.add_reserved(f.ioas_id, 6, 0xFFFF_FFFF_FFFF_8001)
        with expect_errno(errno.ENOSPC):
            t.map(f.ioas_id, f.buffer, 0x5000)

    def test_area_allowed(self, f: IoasFixture) -> None:
        t, ioas, b = f.t, f.ioas_id, f.base_iova
        t.allow_iovas(ioas, [(b, b + 600 * PAGE_SIZE)])
        with expect_errno(errno.EADDRINUSE):
            t.add_reserved(ioas, b + PAGE_SIZE, PAGE_SIZE)
        t.allow_iovas(ioas, [])
        t.add_reserved(ioas, b + PAGE_SIZE, PAGE_SIZE)
        with expect_errno(errno.EADDRINUSE):
            t.allow_iovas(ioas, [(b, b + 600 * PAGE_SIZE)])

    def test_copy_area(self, f: IoasFixture) -> None:
        t, ioas, b = f.t, f.ioas_id, f.base_iova
        flags = FIXED | uapi.IOMMU_IOAS_MAP_WRITEABLE
        t.map_fixed(ioas, f.buffer, PAGE_SIZE, b)
        t.copy(flags, ioas, b, ioas, b + PAGE_SIZE, PAGE_SIZE)
        new = t.ioas_alloc()
        t.copy(flags, ioas, b, new, 0, PAGE_SIZE)

    def test_iova_ranges(self, f: IoasFixture) -> None:
        t, m, ioas = f.t, f.m, f.ioas_id
        rng = uapi.iommu_iova_range
        cap = BUFFER_SIZE // sz(rng)

        def ranges(num: int) -> tuple[uapi.iommu_ioas_iova_ranges, int]:
            cmd = uapi.iommu_ioas_iova_ranges(size=sz(uapi.iommu_ioas_iova_ranges),
                                              ioas_id=ioas, num_iovas=num,
                                              allowed_iovas=f.buffer)
            try:
                t.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
            except OSError as e:
                return cmd, int(e.errno or 0)
            return cmd, 0

        def entry(i: int) -> tuple[int, int]:
            r = uapi.from_bytes(rng, m.mem_read(f.buffer + i * sz(rng), sz(rng)))
            return int(r.start), int(r.last)

        cmd, rc = ranges(cap)
        assert rc == 0 and cmd.num_iovas == 1
        if f.stdev_id:
            assert entry(0) == (MOCK_APERTURE_START, MOCK_APERTURE_LAST)
            assert cmd.out_iova_alignment == MOCK_PAGE_SIZE
        else:
            assert entry(0) == (0, U64_MAX)
            assert cmd.out_iova_alignment == 1
        # Buffer too small
        m.mem_write(f.buffer, bytes(BUFFER_SIZE))
        cmd, rc = ranges(0)
        assert rc == errno.EMSGSIZE and cmd.num_iovas == 1
        assert entry(0) == (0, 0)

        t.add_reserved(ioas, PAGE_SIZE, PAGE_SIZE)
        cmd, rc = ranges(cap)
        assert rc == 0
        if f.stdev_id:
            assert cmd.num_iovas == 1
            assert entry(0) == (MOCK_APERTURE_START, MOCK_APERTURE_LAST)
        else:
            assert cmd.num_iovas == 2
            assert entry(0) == (0, PAGE_SIZE - 1)
            assert entry(1) == (2 * PAGE_SIZE, U64_MAX)
        # Buffer too small
        m.mem_write(f.buffer, bytes(BUFFER_SIZE))
        cmd, rc = ranges(1)
        if f.stdev_id:
            assert rc == 0 and cmd.num_iovas == 1
            assert entry(0) == (MOCK_APERTURE_START, MOCK_APERTURE_LAST)
        else:
            assert rc == errno.EMSGSIZE and cmd.num_iovas == 2
            assert entry(0) == (0, PAGE_SIZE - 1)
        assert entry(1) == (0, 0)

    def test_access_domain_destory(self, f: IoasFixture) -> None:
        """The kernel uses a hugetlbfs buffer; here a 2-huge-page anonymous mapping,
        which the simulated THP backs with huge pages."""
        t, m = f.t, f.m
        size = 2 * HUGEPAGE_SIZE
        buf = m.mmap(size)
        m.mem_write(buf, bytes(size))
        t.map_fixed(f.ioas_id, buf, size, f.base_iova)
        afd = t.access_create(f.ioas_id, st.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
        item = t.access_pin(afd, f.base_iova + PAGE_SIZE, PAGE_SIZE, buf + PAGE_SIZE)
        if f.stdev_id:
            t.destroy(f.stdev_id)  # the domain goes away while the access holds a pin
        t.access_unpin(afd, item)
        m.close(afd)
        m.munmap(buf, size)

    def test_access_pin(self, f: IoasFixture) -> None:
        t, m = f.t, f.m
        afd = t.access_create(f.ioas_id, st.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
        for npages in range(1, BUFFER_SIZE // PAGE_SIZE):
            t.map_fixed(f.ioas_id, f.buffer, BUFFER_SIZE, MOCK_APERTURE_START)
            item = t.access_pin(afd, MOCK_APERTURE_START, npages * PAGE_SIZE, f.buffer)
            t.access_unpin(afd, item)
            # Double user
            item = t.access_pin(afd, MOCK_APERTURE_START, npages * PAGE_SIZE, f.buffer)
            item2 = t.access_pin(afd, MOCK_APERTURE_START, npages * PAGE_SIZE, f.buffer)
            t.access_unpin(afd, item)
            t.access_unpin(afd, item2)
            # Add/remove a domain with a user
            item = t.access_pin(afd, MOCK_APERTURE_START, npages * PAGE_SIZE, f.buffer)
            stdev, hwpt, _idev = t.mock_domain(f.ioas_id)
            t.check_map(hwpt, MOCK_APERTURE_START, BUFFER_SIZE, f.buffer)
            t.destroy(stdev)
            t.access_unpin(afd, item)
            t.unmap(f.ioas_id, MOCK_APERTURE_START, BUFFER_SIZE)
        m.close(afd)

    def test_access_pin_unmap(self, f: IoasFixture) -> None:
        t, m = f.t, f.m
        afd = t.access_create(f.ioas_id, st.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
        t.map_fixed(f.ioas_id, f.buffer, BUFFER_SIZE, MOCK_APERTURE_START)
        item = t.access_pin(afd, MOCK_APERTURE_START, BUFFER_SIZE, f.buffer)
        # Trigger the unmap op
        t.unmap(f.ioas_id, MOCK_APERTURE_START, BUFFER_SIZE)
        # kernel removed the item for us
        with expect_errno(errno.ENOENT):
            t.access_unpin(afd, item)
        m.close(afd)

    def test_access_rw(self, f: IoasFixture) -> None:
        t, m = f.t, f.m
        afd = t.access_create(f.ioas_id, 0)
        iova = t.map(f.ioas_id, f.buffer, BUFFER_SIZE)
        check_access_rw(f, afd, iova, 0)
        check_access_rw(f, afd, iova, st.MOCK_ACCESS_RW_SLOW_PATH)
        t.unmap(f.ioas_id, iova, BUFFER_SIZE)
        m.close(afd)

    def test_access_rw_unaligned(self, f: IoasFixture) -> None:
        t, m = f.t, f.m
        afd = t.access_create(f.ioas_id, 0)
        # Unaligned pages
        iova = f.base_iova + MOCK_PAGE_SIZE
        t.map_fixed(f.ioas_id, f.buffer, BUFFER_SIZE, iova)
        check_access_rw(f, afd, iova, 0)
        t.unmap(f.ioas_id, iova, BUFFER_SIZE)
        m.close(afd)

    def test_fork_gone(self, f: IoasFixture) -> None:
        t, m = f.t, f.m
        afd = t.access_create(f.ioas_id, 0)
        # Create a mapping with a different mm
        child = m.fork()
        Iommufd(child, t.fd).map_fixed(f.ioas_id, f.buffer, BUFFER_SIZE,
                                       MOCK_APERTURE_START)
        child.exit()
        if f.stdev_id:
            # A domain already existed, so everything was pinned within the fork: this
            # copies from one domain to another.
            t.mock_domain(f.ioas_id)
            check_access_rw(f, afd, MOCK_APERTURE_START, 0)
        else:
            # Otherwise the pages must be pinned now, which cannot happen: the fork is gone.
            with expect_errno(errno.EFAULT):
                t.mock_domain(f.ioas_id)
        m.close(afd)

    def test_fork_present(self, f: IoasFixture) -> None:
        t, m = f.t, f.m
        afd = t.access_create(f.ioas_id, 0)
        # Create a mapping with a different mm, and keep that process alive
        child = m.fork()
        Iommufd(child, t.fd).map_fixed(f.ioas_id, f.buffer, BUFFER_SIZE,
                                       MOCK_APERTURE_START)
        # Read pages from the remote process
        t.mock_domain(f.ioas_id)
        check_access_rw(f, afd, MOCK_APERTURE_START, 0)
        child.exit()
        m.close(afd)

    def test_ioas_option_huge_pages(self, f: IoasFixture) -> None:
        t, ioas = f.t, f.ioas_id
        assert t.huge_pages(ioas) == 1
        t.huge_pages(ioas, 0)
        assert t.huge_pages(ioas) == 0
        with expect_errno(errno.EINVAL):
            t.huge_pages(ioas, 2)
        t.huge_pages(ioas, 1)

    def test_ioas_iova_alloc(self, f: IoasFixture) -> None:
        t, ioas = f.t, f.ioas_id
        for length in range(1, 2 * PAGE_SIZE):
            if f.stdev_id and length % MOCK_PAGE_SIZE:
                with expect_errno(errno.EINVAL):
                    t.map(ioas, f.buffer, length)
            else:
                iova = t.map(ioas, f.buffer, length)
                t.unmap(ioas, iova, length)

    def test_ioas_align_change(self, f: IoasFixture) -> None:
        t, ioas = f.t, f.ioas_id
        if f.stdev_id:
            return
        t.map_fixed(ioas, f.buffer, PAGE_SIZE, MOCK_APERTURE_START)
        # Misalignment is rejected at map time
        t.huge_pages(ioas, 0)
        with expect_errno(errno.EINVAL):
            t.map_fixed(ioas, f.buffer + MOCK_PAGE_SIZE, PAGE_SIZE,
                        MOCK_APERTURE_START + PAGE_SIZE)
        t.huge_pages(ioas, 0)
        # Reduce alignment
        t.huge_pages(ioas, 1)
        # Confirm misalignment is rejected during alignment upgrade
        t.map_fixed(ioas, f.buffer + MOCK_PAGE_SIZE, PAGE_SIZE,
                    MOCK_APERTURE_START + PAGE_SIZE)
        with expect_errno(errno.EADDRINUSE):
            t.huge_pages(ioas, 0)
        t.unmap(ioas, MOCK_APERTURE_START + PAGE_SIZE, PAGE_SIZE)
        t.unmap(ioas, MOCK_APERTURE_START, PAGE_SIZE)

    def test_copy_sweep(self, f: IoasFixture) -> None:
        t, ioas = f.t, f.ioas_id
        dst = t.ioas_alloc()
        last = MOCK_APERTURE_START + BUFFER_SIZE - (1 if f.stdev_id else 2)
        t.map_fixed(ioas, f.buffer, last - MOCK_APERTURE_START + 1, MOCK_APERTURE_START)
        flags = FIXED | uapi.IOMMU_IOAS_MAP_WRITEABLE
        length = MOCK_PAGE_SIZE
        for src in range(MOCK_APERTURE_START - PAGE_SIZE, last + 1, 511):
            if src < MOCK_APERTURE_START or src + length - 1 > last:
                with expect_errno(errno.ENOENT):
                    t.copy(flags, ioas, src, dst, MOCK_APERTURE_START, length)
            else:
                t.copy(flags, ioas, src, dst, MOCK_APERTURE_START, length)
                t.unmap(dst, MOCK_APERTURE_START, length)
        t.destroy(dst)

    def test_dmabuf_simple(self, f: IoasFixture) -> None:
        t, m = f.t, f.m
        buf_size = PAGE_SIZE * 4
        dfd = t.get_dmabuf(buf_size)
        for start, length in ((0, 0), (buf_size, buf_size), (0, buf_size + 1)):
            with expect_errno(errno.EINVAL):
                t.map_file(f.ioas_id, dfd, start, length)
        t.map_file(f.ioas_id, dfd, 0, buf_size)
        m.close(dfd)

    def test_dmabuf_revoke(self, f: IoasFixture) -> None:
        t, m = f.t, f.m
        buf_size = PAGE_SIZE * 4
        dfd = t.get_dmabuf(buf_size)
        iova = t.map_file(f.ioas_id, dfd, 0, buf_size)
        t.revoke_dmabuf(dfd, True)
        if f.stdev_id:
            t.hwpt_alloc(f.device_id, f.ioas_id, 0)
        with expect_errno(errno.ENODEV):
            t.map_file(f.ioas_id, dfd, 0, buf_size)
        t.revoke_dmabuf(dfd, False)
        t.map_file(f.ioas_id, dfd, 0, buf_size)
        # Restore the iova back
        t.unmap(f.ioas_id, iova, buf_size)
        t.map_file(f.ioas_id, dfd, 0, buf_size, iova, RW | FIXED)
        m.close(dfd)



