"""FIXTURE(iommufd_viommu) and FIXTURE(iommufd_device_pasid) of
tools/testing/selftests/iommu/iommufd.c."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from iommu_sim import Machine
from tests.selftest.utils import (
    MOCK_APERTURE_START,
    PAGE_SIZE,
    Iommufd,
    expect_errno,
    st,
    sz,
    teardown_iommufd,
    uapi,
)

C = st.IOMMU_TEST_DEV_CACHE_DEFAULT
SEL = st.IOMMU_VIOMMU_TYPE_SELFTEST
VINV = st.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST
HWQ = st.IOMMU_HW_QUEUE_TYPE_SELFTEST
NEST_PARENT = uapi.IOMMU_HWPT_ALLOC_NEST_PARENT


@dataclass
class ViommuFixture:
    t: Iommufd
    m: Machine
    buffer: int
    ioas_id: int
    stdev_id: int = 0
    device_id: int = 0
    hwpt_id: int = 0
    viommu_id: int = 0
    nested_hwpt_id: int = 0


class Test_iommufd_viommu:
    @pytest.fixture(params=["no_viommu", "mock_viommu"])
    def f(self, machine: Machine, buffer: int, request: pytest.FixtureRequest
          ) -> Iterator[ViommuFixture]:
        t = Iommufd(machine)
        f = ViommuFixture(t, machine, buffer, t.ioas_alloc())
        t.set_temp_memory_limit(65536)
        if request.param == "mock_viommu":
            f.stdev_id, _h, f.device_id = t.mock_domain(f.ioas_id)
            # Allocate a nesting parent hwpt, a vIOMMU on it and a nested hwpt on that
            f.hwpt_id = t.hwpt_alloc(f.device_id, f.ioas_id, NEST_PARENT)
            f.viommu_id = t.viommu_alloc(f.device_id, f.hwpt_id, SEL)
            f.nested_hwpt_id = t.nested(f.device_id, f.viommu_id, 0)
        yield f
        teardown_iommufd(machine, t.fd, buffer)

    def test_viommu_auto_destroy(self, f: ViommuFixture) -> None:
        pass

    def test_viommu_negative_tests(self, f: ViommuFixture) -> None:
        t = f.t
        if f.device_id:
            # invalid hwpt (hwpt_id=0)
            with expect_errno(errno.ENOENT):
                t.viommu_alloc(f.device_id, 0, SEL)
            # not a nesting parent hwpt
            h = t.hwpt_alloc(f.device_id, f.ioas_id, 0)
            with expect_errno(errno.EINVAL):
                t.viommu_alloc(f.device_id, h, SEL)
            t.destroy(h)
            # unsupported viommu type
            with expect_errno(errno.EOPNOTSUPP):
                t.viommu_alloc(f.device_id, f.hwpt_id, 0xDEAD)
            with expect_errno(errno.EBUSY):
                t.destroy(f.hwpt_id)
            with expect_errno(errno.EBUSY):
                t.destroy(f.viommu_id)
        else:
            with expect_errno(errno.ENOENT):
                t.viommu_alloc(f.device_id, f.hwpt_id, SEL)

    def test_viommu_alloc_nested_iopf(self, f: ViommuFixture) -> None:
        t, m = f.t, f.m
        if not f.device_id:
            pytest.skip("Skipping test for variant no_viommu")
        dev, viommu = f.device_id, f.viommu_id
        fault_id, fault_fd = t.fault_alloc()
        with expect_errno(errno.ENOENT):
            t.nested(dev, viommu, uapi.IOMMU_HWPT_FAULT_ID_VALID, fault_id=0xFFFFFFFF)
        with expect_errno(errno.EOPNOTSUPP):
            t.nested(dev, viommu, uapi.IOMMU_HWPT_FAULT_ID_VALID | (1 << 31),
                     fault_id=fault_id)
        iopf = t.nested(dev, viommu, uapi.IOMMU_HWPT_FAULT_ID_VALID, fault_id=fault_id)
        # Must allocate vdevice before attaching to a nested hwpt
        with expect_errno(errno.ENOENT):
            t.replace(f.stdev_id, iopf)
        t.vdevice_alloc(viommu, dev, 0x99)
        t.replace(f.stdev_id, iopf)
        with expect_errno(errno.EBUSY):
            t.destroy(iopf)
        t.trigger_iopf(dev, fault_fd)
        t.replace(f.stdev_id, f.ioas_id)
        t.destroy(iopf)
        m.close(fault_fd)
        t.destroy(fault_id)

    def test_viommu_alloc_with_data(self, f: ViommuFixture) -> None:
        t, m = f.t, f.m
        if not f.device_id:
            pytest.skip("Skipping test for variant no_viommu")
        data = st.iommu_viommu_selftest(in_data=0xBEEF)
        va = t.user_struct(data)
        f.viommu_id = t.viommu_alloc(f.device_id, f.hwpt_id, SEL, va, sz(data))
        data = uapi.from_bytes(st.iommu_viommu_selftest, m.mem_read(va, sz(data)))
        assert data.out_data == data.in_data
        length, offset = data.out_mmap_length, data.out_mmap_offset
        # offset and length cannot be changed
        for ln, off in ((length, offset + PAGE_SIZE), (length, offset + 2 * PAGE_SIZE),
                        (length // 2, offset), (length * 2, offset)):
            with expect_errno(errno.ENXIO):
                m.mmap(ln, t.fd, off)
        # a correct mmap for a loopback test
        test = m.mmap(length, t.fd, offset)
        assert int.from_bytes(m.mem_read(test, 4), "little") == data.in_data
        # the owner of the mmap region is blocked
        with expect_errno(errno.EBUSY):
            t.destroy(f.viommu_id)
        m.munmap(test, length)

    def test_vdevice_alloc(self, f: ViommuFixture) -> None:
        t, m = f.t, f.m
        viommu, dev = f.viommu_id, f.device_id
        if not dev:
            with expect_errno(errno.ENOENT):
                t.vdevice_alloc(viommu, dev, 0x99)
            return
        prev_seq = [-1]
        # Must allocate vdevice before attaching to a nested hwpt
        with expect_errno(errno.ENOENT):
            t.replace(f.stdev_id, f.nested_hwpt_id)
        # vEVENTQ depth bounds
        with expect_errno(errno.EINVAL):
            t.veventq_alloc(viommu, st.IOMMU_VEVENTQ_TYPE_SELFTEST, 0)
        with expect_errno(errno.EINVAL):
            t.veventq_alloc(viommu, st.IOMMU_VEVENTQ_TYPE_SELFTEST, st.VEVENTQ_MAX_DEPTH + 1)
        qid, qfd = t.veventq_alloc(viommu, st.IOMMU_VEVENTQ_TYPE_SELFTEST, st.VEVENTQ_MAX_DEPTH)
        m.close(qfd)
        t.destroy(qid)
        # Allocate a vEVENTQ with veventq_depth=2
        qid, qfd = t.veventq_alloc(viommu, st.IOMMU_VEVENTQ_TYPE_SELFTEST, 2)
        with expect_errno(errno.EEXIST):
            t.veventq_alloc(viommu, st.IOMMU_VEVENTQ_TYPE_SELFTEST, 2)
        # Invalid read counts on an empty queue
        for n in (0, 7):
            with expect_errno(errno.EINVAL):
                m.read(qfd, n)
        # Set vdev_id to 0x99, unset it, and set to 0x88
        vd = t.vdevice_alloc(viommu, dev, 0x99)
        t.replace(f.stdev_id, f.nested_hwpt_id)
        t.trigger_vevent(dev, 1)
        # Invalid read counts with one event queued (the header fits, the payload not)
        for n in (0, 8):
            with expect_errno(errno.EINVAL):
                m.read(qfd, n)
        assert t.read_vevents(qfd, 1, 0x99, prev_seq) == 0
        with expect_errno(errno.EEXIST):
            t.vdevice_alloc(viommu, dev, 0x99)
        t.replace(f.stdev_id, f.ioas_id)
        t.destroy(vd)
        # Try again with 0x88
        vd = t.vdevice_alloc(viommu, dev, 0x88)
        t.replace(f.stdev_id, f.nested_hwpt_id)
        # Trigger an overflow with three events
        t.trigger_vevent(dev, 3)
        assert t.read_vevents(qfd, 3, 0x88, prev_seq) == errno.EOVERFLOW
        # Overflow must be gone after the previous reads
        t.trigger_vevent(dev, 1)
        assert t.read_vevents(qfd, 1, 0x88, prev_seq) == 0
        m.close(qfd)
        t.replace(f.stdev_id, f.ioas_id)
        t.destroy(vd)
        t.destroy(qid)

    def test_vdevice_cache(self, f: ViommuFixture) -> None:
        t = f.t
        viommu, dev = f.viommu_id, f.device_id
        if not dev:
            pytest.skip("Skipping test for variant no_viommu")
        vd = t.vdevice_alloc(viommu, dev, 0x99)
        t.check_cache_all(dev, C)
        req = st.iommu_viommu_invalidate_selftest
        esz = sz(req)

        def reqs(*entries: tuple[int, int, int]) -> bytes:
            out = b"".join(uapi.struct_bytes(req(flags=a, vdev_id=b, cache_id=c))
                           for a, b, c in entries)
            return out + bytes(2 * esz - len(out))

        # Check data_type by passing a zero-length array
        assert t.invalidate(viommu, reqs(), VINV, esz, 0) == (0, 0)
        # Invalid data_type
        assert t.invalidate(viommu, reqs(), st.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID,
                            esz, 1) == (errno.EINVAL, 0)
        # Structure size sanity
        assert t.invalidate(viommu, reqs(), VINV, esz + 1, 1) == (errno.EINVAL, 0)
        assert t.invalidate(viommu, reqs(), VINV, 1, 1) == (errno.EINVAL, 0)
        # Invalid flag
        assert t.invalidate(viommu, reqs((0xFFFFFFFF, 0x99, 0)), VINV, esz, 1) == (
            errno.EOPNOTSUPP, 0)
        # Invalid data_uptr when the array is not empty
        assert t.invalidate(viommu, 0, VINV, esz, 1) == (errno.EINVAL, 0)
        # Invalid entry_len when the array is not empty
        assert t.invalidate(viommu, reqs((0, 0x99, 0)), VINV, 0, 1) == (errno.EINVAL, 0)
        # Invalid cache_id
        assert t.invalidate(viommu, reqs((0, 0x99, st.MOCK_DEV_CACHE_ID_MAX + 1)), VINV, esz,
                            1) == (errno.EINVAL, 0)
        # Invalid vdev_id
        assert t.invalidate(viommu, reqs((0, 0x9, 0)), VINV, esz, 1) == (errno.EINVAL, 0)
        # Invalidate the 1st cache entry, fail the 2nd request on its flags
        assert t.invalidate(viommu, reqs((0, 0x99, 0), (0xFFFFFFFF, 0x99, 1)), VINV, esz,
                            2) == (errno.EOPNOTSUPP, 1)
        for i, v in enumerate((0, C, C, C)):
            t.check_cache(dev, i, v)
        # ... fail the 2nd request on its cache_id
        assert t.invalidate(viommu, reqs((0, 0x99, 0),
                                         (0, 0x99, st.MOCK_DEV_CACHE_ID_MAX + 1)),
                            VINV, esz, 2) == (errno.EINVAL, 1)
        for i, v in enumerate((0, C, C, C)):
            t.check_cache(dev, i, v)
        # Invalidate the 2nd cache entry and verify
        assert t.invalidate(viommu, reqs((0, 0x99, 1)), VINV, esz, 1) == (0, 1)
        for i, v in enumerate((0, 0, C, C)):
            t.check_cache(dev, i, v)
        # Invalidate the 3rd and 4th cache entries and verify
        assert t.invalidate(viommu, reqs((0, 0x99, 2), (0, 0x99, 3)), VINV, esz, 2) == (0, 2)
        t.check_cache_all(dev, 0)
        # Invalidate all cache entries and verify
        assert t.invalidate(viommu, reqs((st.IOMMU_TEST_INVALIDATE_FLAG_ALL, 0x99, 0)), VINV,
                            esz, 1) == (0, 1)
        t.check_cache_all(dev, 0)
        t.destroy(vd)

    def test_hw_queue(self, f: ViommuFixture) -> None:
        t = f.t
        viommu = f.viommu_id
        if not viommu:
            pytest.skip("Skipping test for variant no_viommu")
        iova = MOCK_APERTURE_START
        with expect_errno(errno.EOPNOTSUPP):
            t.hw_queue_alloc(viommu, uapi.IOMMU_HW_QUEUE_TYPE_DEFAULT, 0, iova, PAGE_SIZE)
        # queue addr and length
        with expect_errno(errno.EINVAL):
            t.hw_queue_alloc(viommu, HWQ, 0, iova, 0)
        with expect_errno(errno.EOVERFLOW):
            t.hw_queue_alloc(viommu, HWQ, 0, (1 << 64) - 1, PAGE_SIZE)
        # missing iova
        with expect_errno(errno.ENOENT):
            t.hw_queue_alloc(viommu, HWQ, 0, iova, PAGE_SIZE)
        iova = t.map(f.ioas_id, f.buffer, PAGE_SIZE)
        iova2 = t.map(f.ioas_id, f.buffer + PAGE_SIZE, PAGE_SIZE)
        # index=1 and =MAX fail: must start from index=0
        with expect_errno(errno.EIO):
            t.hw_queue_alloc(viommu, HWQ, 1, iova, PAGE_SIZE)
        with expect_errno(errno.EINVAL):
            t.hw_queue_alloc(viommu, HWQ, st.IOMMU_TEST_HW_QUEUE_MAX, iova, PAGE_SIZE)
        # index=0 declares ownership of the iova
        q0 = t.hw_queue_alloc(viommu, HWQ, 0, iova, PAGE_SIZE)
        with expect_errno(errno.EEXIST):
            t.hw_queue_alloc(viommu, HWQ, 0, iova, PAGE_SIZE)
        # unmap fails: the iova is owned
        with expect_errno(errno.EBUSY):
            t.unmap(f.ioas_id, iova, PAGE_SIZE)
        # the 2nd page is not pinned, so it can be unmapped
        t.unmap(f.ioas_id, iova2, PAGE_SIZE)
        # index=1, unaligned
        q1 = t.hw_queue_alloc(viommu, HWQ, 1, iova + PAGE_SIZE // 2, PAGE_SIZE // 2)
        # cannot destroy: dependency
        with expect_errno(errno.EBUSY):
            t.destroy(q0)
        # destroy in descending order
        t.destroy(q1)
        t.destroy(q0)
        # now the first page can be unmapped
        t.unmap(f.ioas_id, iova, PAGE_SIZE)

    def test_vdevice_tombstone(self, f: ViommuFixture) -> None:
        t = f.t
        if not f.device_id:
            pytest.skip("Skipping test for variant no_viommu")
        vd = t.vdevice_alloc(f.viommu_id, f.device_id, 0x99)
        t.destroy(f.stdev_id)
        with expect_errno(errno.ENOENT):
            t.destroy(vd)


@dataclass
class PasidFixture:
    t: Iommufd
    m: Machine
    ioas_id: int
    stdev_id: int = 0
    hwpt_id: int = 0
    device_id: int = 0
    no_pasid_stdev_id: int = 0
    no_pasid_device_id: int = 0


class Test_iommufd_device_pasid:
    @pytest.fixture(params=["no_pasid", "has_pasid"])
    def f(self, machine: Machine, buffer: int, request: pytest.FixtureRequest
          ) -> Iterator[PasidFixture]:
        t = Iommufd(machine)
        f = PasidFixture(t, machine, t.ioas_alloc())
        f.stdev_id, f.hwpt_id, f.device_id = t.mock_domain_flags(
            f.ioas_id, st.MOCK_FLAGS_DEVICE_PASID)
        if request.param == "no_pasid":
            f.no_pasid_stdev_id, _h, f.no_pasid_device_id = t.mock_domain_flags(f.ioas_id, 0)
        yield f
        teardown_iommufd(machine, t.fd, buffer)

    def test_pasid_attach(self, f: PasidFixture) -> None:
        t, m = f.t, f.m
        dev, ioas, stdev = f.device_id, f.ioas_id, f.stdev_id
        pasid = 100
        PASID = uapi.IOMMU_HWPT_ALLOC_PASID
        # Detach a PASID that was never attached: no-op
        t.pasid_detach(stdev, pasid)

        parent = t.hwpt_alloc(dev, ioas, NEST_PARENT)
        n0 = t.nested(dev, parent, PASID)
        n1 = t.nested(dev, parent, PASID)
        fault_id, fault_fd = t.fault_alloc()
        iopf = t.nested(dev, parent, uapi.IOMMU_HWPT_FAULT_ID_VALID | PASID,
                        fault_id=fault_id)
        viommu = t.viommu_alloc(dev, parent, SEL)
        t.nested(dev, viommu, PASID)  # allocated only
        s2 = t.hwpt_alloc(dev, ioas, PASID)

        # RID attached to a non-PASID HWPT: no PASID attach
        t.replace(stdev, parent)
        with expect_errno(errno.EINVAL):
            t.pasid_attach(stdev, pasid, s2)
        # RID on a PASID HWPT: PASID attach works; the RID cannot go back to non-PASID
        t.replace(stdev, s2)
        t.pasid_attach(stdev, pasid, n0)
        with expect_errno(errno.EINVAL):
            t.replace(stdev, parent)
        t.pasid_detach(stdev, pasid)
        t.pasid_check(stdev, pasid, 0)

        if f.no_pasid_stdev_id:
            t.replace(f.no_pasid_stdev_id, n0)
            t.replace(f.no_pasid_stdev_id, ioas)
            with expect_errno(errno.EINVAL):
                t.pasid_attach(f.no_pasid_stdev_id, pasid, parent)
            with expect_errno(errno.EINVAL):
                t.pasid_attach(f.no_pasid_stdev_id, pasid, s2)

        # Not PASID compatible: a plain parent, an IOAS (automatic HWPT)
        with expect_errno(errno.EINVAL):
            t.pasid_attach(stdev, pasid, parent)
        t.pasid_check(stdev, pasid, 0)
        with expect_errno(errno.EINVAL):
            t.pasid_attach(stdev, pasid, ioas)
        t.pasid_check(stdev, pasid, 0)

        # Attach a paging HWPT, then no second attach
        t.pasid_attach(stdev, pasid, s2)
        t.pasid_check(stdev, pasid, s2)
        with expect_errno(errno.EBUSY):
            t.pasid_attach(stdev, pasid, n0)
        t.pasid_detach(stdev, pasid)
        t.pasid_check(stdev, pasid, 0)

        # Attach a nested HWPT, then no second attach
        t.pasid_attach(stdev, pasid, n0)
        t.pasid_check(stdev, pasid, n0)
        with expect_errno(errno.EBUSY):
            t.pasid_attach(stdev, pasid, n0)
        t.pasid_detach(stdev, pasid)

        # Replace tests
        pasid = 200
        with expect_errno(errno.EINVAL):
            t.pasid_replace(stdev, pasid, s2)
        t.pasid_attach(stdev, pasid, s2)
        t.pasid_check(stdev, pasid, s2)
        with expect_errno(errno.EINVAL):
            t.pasid_replace(stdev, pasid, ioas)
        t.pasid_check(stdev, pasid, s2)
        t.pasid_replace(stdev, pasid, n0)
        t.pasid_check(stdev, pasid, n0)
        t.pasid_replace(stdev, pasid, n1)
        t.pasid_check(stdev, pasid, n1)
        t.pasid_detach(stdev, pasid)

        # The mock fails the second set_dev_pasid at 1024: the replace keeps the old HWPT
        pasid = st.IOMMU_TEST_PASID_RESERVED
        t.pasid_attach(stdev, pasid, s2)
        t.pasid_check(stdev, pasid, s2)
        with expect_errno(errno.ENOMEM):
            t.pasid_replace(stdev, pasid, n0)
        t.pasid_check(stdev, pasid, s2)
        t.pasid_detach(stdev, pasid)

        # I/O page fault on a PASID
        pasid = 2048
        t.pasid_attach(stdev, pasid, iopf)
        t.pasid_check(stdev, pasid, iopf)
        t.trigger_iopf(dev, fault_fd, pasid)
        t.pasid_replace(stdev, pasid, s2)
        t.pasid_check(stdev, pasid, s2)
        t.pasid_detach(stdev, pasid)

        t.destroy(iopf)
        m.close(fault_fd)
        t.destroy(fault_id)
        t.replace(stdev, ioas)
