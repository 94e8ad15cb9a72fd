"""The helpers of tools/testing/selftests/iommu/iommufd_utils.h, against the ioctl ABI
only: a :class:`~iommu_sim.Machine`, user buffers, request numbers and the
``iommufd.uapi*`` structs. Every helper that the C code wraps in ASSERT_EQ(0, ...) raises
on failure; ``expect_errno`` is EXPECT_ERRNO.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from iommu_sim import Machine
from iommufd import uapi
from iommufd import uapi_selftest as st
from iommufd import uapi_vfio as vf

PAGE_SIZE = 4096
HUGEPAGE_SIZE = 2 * 1024 * 1024
BUFFER_SIZE = 16 * PAGE_SIZE
MOCK_PAGE_SIZE = st.MOCK_PAGE_SIZE
MOCK_HUGE_PAGE_SIZE = st.MOCK_HUGE_PAGE_SIZE
MOCK_APERTURE_START = st.MOCK_APERTURE_START
MOCK_APERTURE_LAST = st.MOCK_APERTURE_LAST
U64_MAX = (1 << 64) - 1
RW = uapi.IOMMU_IOAS_MAP_WRITEABLE | uapi.IOMMU_IOAS_MAP_READABLE
FIXED = uapi.IOMMU_IOAS_MAP_FIXED_IOVA
POLLIN = 0x001


def _io(nr: int) -> int:
    return uapi._IO(uapi.IOMMUFD_TYPE, nr)


def sz(obj: Any) -> int:
    return ctypes.sizeof(obj)


@contextmanager
def expect_errno(err: int) -> Iterator[None]:
    """EXPECT_ERRNO: the body must fail with ``err``."""
    with pytest.raises(OSError) as ei:
        yield
    assert ei.value.errno == err, (f"expected {errno.errorcode[err]}, got "
                                   f"{errno.errorcode.get(ei.value.errno, ei.value.errno)}: "
                                   f"{ei.value}")


def errno_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """0 on success, else the errno (for helpers that return rc in C)."""
    try:
        fn(*args, **kwargs)
    except OSError as e:
        return int(e.errno or 0)
    return 0


def test_cmd(op: int, oid: int = 0) -> st.iommu_test_cmd:
    return st.iommu_test_cmd(size=sz(st.iommu_test_cmd), op=op, id=oid)


class Iommufd:
    """One open ``/dev/iommu`` on a Machine, with the C helpers as methods."""

    def __init__(self, m: Machine, fd: int | None = None) -> None:
        self.m = m
        self.fd = m.open("/dev/iommu") if fd is None else fd
        self.buffer = 0

    def ioctl(self, req: int, arg: Any) -> int:
        return self.m.ioctl(self.fd, req, arg)

    def test(self, cmd: st.iommu_test_cmd) -> int:
        return self.ioctl(st.IOMMU_TEST_CMD, cmd)

    # -- objects -------------------------------------------------------------------------
    def ioas_alloc(self) -> int:
        cmd = uapi.iommu_ioas_alloc(size=sz(uapi.iommu_ioas_alloc))
        self.ioctl(uapi.IOMMU_IOAS_ALLOC, cmd)
        assert cmd.out_ioas_id != 0
        return int(cmd.out_ioas_id)

    def destroy(self, oid: int) -> None:
        self.ioctl(uapi.IOMMU_DESTROY, uapi.iommu_destroy(size=8, id=oid))

    # -- map / unmap -------------------------------------------------------------------------
    def map(self, ioas: int, va: int, length: int, iova: int = 0, flags: int = RW) -> int:
        cmd = uapi.iommu_ioas_map(size=sz(uapi.iommu_ioas_map), flags=flags, ioas_id=ioas,
                                  user_va=va, length=length, iova=iova)
        self.ioctl(uapi.IOMMU_IOAS_MAP, cmd)
        return int(cmd.iova)

    def map_fixed(self, ioas: int, va: int, length: int, iova: int) -> int:
        return self.map(ioas, va, length, iova, RW | FIXED)

    def map_file(self, ioas: int, mfd: int, start: int, length: int, iova: int = 0,
                 flags: int = RW) -> int:
        cmd = uapi.iommu_ioas_map_file(size=sz(uapi.iommu_ioas_map_file), flags=flags,
                                       ioas_id=ioas, fd=mfd, start=start, length=length,
                                       iova=iova)
        self.ioctl(uapi.IOMMU_IOAS_MAP_FILE, cmd)
        return int(cmd.iova)

    def change_process(self) -> None:
        cmd = uapi.iommu_ioas_change_process(size=sz(uapi.iommu_ioas_change_process))
        self.ioctl(uapi.IOMMU_IOAS_CHANGE_PROCESS, cmd)

    def get_dmabuf(self, length: int) -> int:
        cmd = test_cmd(st.IOMMU_TEST_OP_DMABUF_GET)
        cmd.dmabuf_get.length = length
        cmd.dmabuf_get.open_flags = os.O_CLOEXEC
        return self.test(cmd)

    def revoke_dmabuf(self, dfd: int, revoked: bool) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_DMABUF_REVOKE)
        cmd.dmabuf_revoke.dmabuf_fd = dfd
        cmd.dmabuf_revoke.revoked = int(revoked)
        self.test(cmd)

    def unmap(self, ioas: int, iova: int, length: int) -> int:
        cmd = uapi.iommu_ioas_unmap(size=sz(uapi.iommu_ioas_unmap), ioas_id=ioas, iova=iova,
                                    length=length)
        self.ioctl(uapi.IOMMU_IOAS_UNMAP, cmd)
        return int(cmd.length)

    def copy(self, flags: int, src: int, src_iova: int, dst: int, dst_iova: int,
             length: int) -> int:
        cmd = uapi.iommu_ioas_copy(size=sz(uapi.iommu_ioas_copy), flags=flags,
                                   dst_ioas_id=dst, src_ioas_id=src, length=length,
                                   dst_iova=dst_iova, src_iova=src_iova)
        self.ioctl(uapi.IOMMU_IOAS_COPY, cmd)
        return int(cmd.dst_iova)

    def allow_iovas(self, ioas: int, ranges: list[tuple[int, int]]) -> None:
        arr = (uapi.iommu_iova_range * max(1, len(ranges)))()
        for i, (s, e) in enumerate(ranges):
            arr[i].start, arr[i].last = s, e
        va = self.m.mmap(PAGE_SIZE)
        try:
            self.m.mem_write(va, bytes(arr))
            cmd = uapi.iommu_ioas_allow_iovas(size=sz(uapi.iommu_ioas_allow_iovas),
                                              ioas_id=ioas, num_iovas=len(ranges),
                                              allowed_iovas=va)
            self.ioctl(uapi.IOMMU_IOAS_ALLOW_IOVAS, cmd)
        finally:
            self.m.munmap(va, PAGE_SIZE)

    def option(self, option_id: int, op: int, object_id: int = 0, val64: int = 0) -> int:
        cmd = uapi.iommu_option(size=sz(uapi.iommu_option), option_id=option_id, op=op,
                                object_id=object_id, val64=val64)
        self.ioctl(uapi.IOMMU_OPTION, cmd)
        return int(cmd.val64)

    def huge_pages(self, ioas: int, val: int | None = None) -> int:
        if val is None:
            return self.option(uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_GET, ioas)
        return self.option(uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_SET, ioas, val)

    # -- mock devices ------------------------------------------------------------------------
    def mock_domain(self, pt_id: int) -> tuple[int, int, int]:
        cmd = test_cmd(st.IOMMU_TEST_OP_MOCK_DOMAIN, pt_id)
        self.test(cmd)
        md = cmd.mock_domain
        assert md.out_stdev_id and md.out_hwpt_id and md.out_idev_id
        return int(md.out_stdev_id), int(md.out_hwpt_id), int(md.out_idev_id)

    def mock_domain_flags(self, pt_id: int, dev_flags: int) -> tuple[int, int, int]:
        cmd = test_cmd(st.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt_id)
        cmd.mock_domain_flags.dev_flags = dev_flags
        self.test(cmd)
        md = cmd.mock_domain_flags
        return int(md.out_stdev_id), int(md.out_hwpt_id), int(md.out_idev_id)

    def replace(self, stdev: int, pt_id: int) -> int:
        cmd = test_cmd(st.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev)
        cmd.mock_domain_replace.pt_id = pt_id
        self.test(cmd)
        return int(cmd.mock_domain_replace.pt_id)

    def add_reserved(self, ioas: int, start: int, length: int) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_ADD_RESERVED, ioas)
        cmd.add_reserved.start, cmd.add_reserved.length = start, length
        self.test(cmd)

    def check_map(self, hwpt: int, iova: int, length: int, va: int) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_MD_CHECK_MAP, hwpt)
        cmd.check_map.iova, cmd.check_map.length, cmd.check_map.uptr = iova, length, va
        self.test(cmd)

    def check_refs(self, va: int, length: int, refs: int) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_MD_CHECK_REFS)
        cmd.check_refs.length, cmd.check_refs.uptr, cmd.check_refs.refs = length, va, refs
        self.test(cmd)

    def check_iotlb(self, hwpt: int, idx: int, val: int) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_MD_CHECK_IOTLB, hwpt)
        cmd.check_iotlb.id, cmd.check_iotlb.iotlb = idx, val
        self.test(cmd)

    def check_iotlb_all(self, hwpt: int, val: int) -> None:
        for i in range(st.MOCK_NESTED_DOMAIN_IOTLB_NUM):
            self.check_iotlb(hwpt, i, val)

    def check_cache(self, idev: int, idx: int, val: int) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_DEV_CHECK_CACHE, idev)
        cmd.check_dev_cache.id, cmd.check_dev_cache.cache = idx, val
        self.test(cmd)

    def check_cache_all(self, idev: int, val: int) -> None:
        for i in range(st.MOCK_DEV_CACHE_NUM):
            self.check_cache(idev, i, val)

    def set_temp_memory_limit(self, limit: int) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT)
        cmd.memory_limit.limit = limit
        self.test(cmd)

    # -- HWPTs -------------------------------------------------------------------------------
    def hwpt_alloc(self, dev: int, pt: int, flags: int = 0, data_type: int = 0,
                   data: int = 0, data_len: int = 0, fault_id: int = 0) -> int:
        cmd = uapi.iommu_hwpt_alloc(size=sz(uapi.iommu_hwpt_alloc), flags=flags, dev_id=dev,
                                    pt_id=pt, data_type=data_type, data_len=data_len,
                                    data_uptr=data, fault_id=fault_id)
        self.ioctl(uapi.IOMMU_HWPT_ALLOC, cmd)
        return int(cmd.out_hwpt_id)

    def user_struct(self, obj: ctypes.Structure | bytes) -> int:
        """Put ``obj`` in fresh user memory; its address."""
        raw = obj if isinstance(obj, bytes) else uapi.struct_bytes(obj)
        va = self.m.mmap(max(PAGE_SIZE, len(raw)))
        self.m.mem_write(va, raw)
        return va

    def nested(self, dev: int, parent: int, flags: int = 0,
               iotlb: int = st.IOMMU_TEST_IOTLB_DEFAULT, data_type: int | None = None,
               data_len: int | None = None, fault_id: int = 0) -> int:
        data = st.iommu_hwpt_selftest(iotlb=iotlb)
        va = self.user_struct(data)
        return self.hwpt_alloc(dev, parent, flags,
                               st.IOMMU_HWPT_DATA_SELFTEST if data_type is None else data_type,
                               va, sz(data) if data_len is None else data_len, fault_id)

    def iommupt(self, dev: int, pt: int, flags: int, pagetable_type: int) -> int:
        data = st.iommu_hwpt_selftest(iotlb=0, pagetable_type=pagetable_type)
        return self.hwpt_alloc(dev, pt, flags, st.IOMMU_HWPT_DATA_SELFTEST,
                               self.user_struct(data), 8)

    def invalidate(self, hwpt: int, reqs: bytes | int, data_type: int, entry_len: int,
                   entry_num: int) -> tuple[int, int]:
        """hwpt/viommu invalidate: (rc errno or 0, entry_num written back)."""
        uptr = reqs if isinstance(reqs, int) else self.user_struct(reqs)
        cmd = uapi.iommu_hwpt_invalidate(size=sz(uapi.iommu_hwpt_invalidate), hwpt_id=hwpt,
                                         data_uptr=uptr, data_type=data_type,
                                         entry_len=entry_len, entry_num=entry_num)
        rc = errno_of(self.ioctl, uapi.IOMMU_HWPT_INVALIDATE, cmd)
        return rc, int(cmd.entry_num)

    def set_dirty_tracking(self, hwpt: int, enabled: bool) -> None:
        cmd = uapi.iommu_hwpt_set_dirty_tracking(
            size=sz(uapi.iommu_hwpt_set_dirty_tracking), hwpt_id=hwpt,
            flags=uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if enabled else 0)
        self.ioctl(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, cmd)

    def get_dirty_bitmap(self, hwpt: int, iova: int, length: int, page_size: int,
                         bitmap: int, flags: int = 0) -> None:
        cmd = uapi.iommu_hwpt_get_dirty_bitmap(
            size=sz(uapi.iommu_hwpt_get_dirty_bitmap), hwpt_id=hwpt, flags=flags, iova=iova,
            length=length, page_size=page_size, data=bitmap)
        self.ioctl(uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, cmd)

    def mock_dirty(self, hwpt: int, iova: int, length: int, page_size: int, bitmap: int
                   ) -> int:
        cmd = test_cmd(st.IOMMU_TEST_OP_DIRTY, hwpt)
        d = cmd.dirty
        d.iova, d.length, d.page_size, d.uptr = iova, length, page_size, bitmap
        self.test(cmd)
        return int(d.out_nr_dirty)

    def get_hw_info(self, dev: int, data_type: int, data: int, data_len: int
                    ) -> uapi.iommu_hw_info:
        cmd = uapi.iommu_hw_info(size=sz(uapi.iommu_hw_info), dev_id=dev, data_len=data_len,
                                 data_uptr=data)
        if data_type:
            cmd.flags = uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE
            cmd.in_data_type = data_type
        self.ioctl(uapi.IOMMU_GET_HW_INFO, cmd)
        assert cmd.out_data_type == st.IOMMU_HW_INFO_TYPE_SELFTEST
        assert cmd.data_len == sz(st.iommu_test_hw_info)
        if data and data_len:
            raw = self.m.mem_read(data, data_len)
            assert not any(raw[sz(st.iommu_test_hw_info):])
            info = uapi.from_bytes(st.iommu_test_hw_info, raw)
            if data_len >= 8:
                assert info.test_reg == st.IOMMU_HW_INFO_SELFTEST_REGVAL
            if data_len >= 4:
                assert info.flags == 0
        return cmd

    # -- faults and events -------------------------------------------------------------------
    def fault_alloc(self) -> tuple[int, int]:
        cmd = uapi.iommu_fault_alloc(size=sz(uapi.iommu_fault_alloc))
        self.ioctl(uapi.IOMMU_FAULT_QUEUE_ALLOC, cmd)
        assert cmd.out_fault_id and cmd.out_fault_fd
        return int(cmd.out_fault_id), int(cmd.out_fault_fd)

    def trigger_iopf(self, idev: int, fault_fd: int, pasid: int = 1) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_TRIGGER_IOPF)
        t = cmd.trigger_iopf
        t.dev_id, t.pasid, t.grpid = idev, pasid, 2
        t.perm = uapi.IOMMU_PGFAULT_PERM_READ | uapi.IOMMU_PGFAULT_PERM_WRITE
        t.addr = 0xDEADBEAF
        self.test(cmd)
        raw = self.m.read(fault_fd, sz(uapi.iommu_hwpt_pgfault))
        assert len(raw) > 0
        fault = uapi.from_bytes(uapi.iommu_hwpt_pgfault, raw)
        resp = uapi.iommu_hwpt_page_response(cookie=fault.cookie,
                                             code=uapi.IOMMUFD_PAGE_RESP_SUCCESS)
        assert self.m.write(fault_fd, uapi.struct_bytes(resp)) > 0

    def viommu_alloc(self, dev: int, hwpt: int, vtype: int, data: int = 0, data_len: int = 0
                     ) -> int:
        cmd = uapi.iommu_viommu_alloc(size=sz(uapi.iommu_viommu_alloc), type=vtype,
                                      dev_id=dev, hwpt_id=hwpt, data_len=data_len,
                                      data_uptr=data)
        self.ioctl(uapi.IOMMU_VIOMMU_ALLOC, cmd)
        return int(cmd.out_viommu_id)

    def vdevice_alloc(self, viommu: int, dev: int, virt_id: int) -> int:
        cmd = uapi.iommu_vdevice_alloc(size=sz(uapi.iommu_vdevice_alloc), viommu_id=viommu,
                                       dev_id=dev, virt_id=virt_id)
        self.ioctl(uapi.IOMMU_VDEVICE_ALLOC, cmd)
        return int(cmd.out_vdevice_id)

    def veventq_alloc(self, viommu: int, qtype: int, depth: int) -> tuple[int, int]:
        cmd = uapi.iommu_veventq_alloc(size=sz(uapi.iommu_veventq_alloc), viommu_id=viommu,
                                       type=qtype, veventq_depth=depth)
        self.ioctl(uapi.IOMMU_VEVENTQ_ALLOC, cmd)
        return int(cmd.out_veventq_id), int(cmd.out_veventq_fd)

    def trigger_vevent(self, idev: int, n: int) -> None:
        for _ in range(n):
            cmd = test_cmd(st.IOMMU_TEST_OP_TRIGGER_VEVENT)
            cmd.trigger_vevent.dev_id = idev
            self.test(cmd)

    def read_vevents(self, fd: int, n: int, virt_id: int, prev_seq: list[int]) -> int:
        """0, or the errno the C helper returns (EOVERFLOW on lost events)."""
        hdr_sz = sz(uapi.iommufd_vevent_header)
        ev_sz = sz(st.iommu_viommu_event_selftest)
        if not self.m.poll(fd) & POLLIN:
            return errno.ETIMEDOUT
        raw = self.m.read(fd, n * (hdr_sz + ev_sz))
        if not raw:
            return errno.EFAULT
        pos = 0
        for _ in range(n):
            hdr = uapi.from_bytes(uapi.iommufd_vevent_header, raw[pos : pos + hdr_sz])
            pos += hdr_sz
            if hdr.flags & uapi.IOMMU_VEVENTQ_FLAG_LOST_EVENTS or (
                    hdr.sequence - prev_seq[0] > 1):
                prev_seq[0] = hdr.sequence
                return errno.EOVERFLOW
            prev_seq[0] = hdr.sequence
            ev = uapi.from_bytes(st.iommu_viommu_event_selftest, raw[pos : pos + ev_sz])
            pos += ev_sz
            if ev.virt_id != virt_id:
                return errno.EINVAL
        return 0

    def hw_queue_alloc(self, viommu: int, qtype: int, idx: int, iova: int, length: int
                       ) -> int:
        cmd = uapi.iommu_hw_queue_alloc(size=sz(uapi.iommu_hw_queue_alloc),
                                        viommu_id=viommu, type=qtype, index=idx,
                                        nesting_parent_iova=iova, length=length)
        self.ioctl(uapi.IOMMU_HW_QUEUE_ALLOC, cmd)
        return int(cmd.out_hw_queue_id)

    # -- PASID -------------------------------------------------------------------------------
    def pasid_attach(self, stdev: int, pasid: int, pt: int) -> int:
        cmd = test_cmd(st.IOMMU_TEST_OP_PASID_ATTACH, stdev)
        cmd.pasid_attach.pasid, cmd.pasid_attach.pt_id = pasid, pt
        self.test(cmd)
        return int(cmd.pasid_attach.pt_id)

    def pasid_replace(self, stdev: int, pasid: int, pt: int) -> int:
        cmd = test_cmd(st.IOMMU_TEST_OP_PASID_REPLACE, stdev)
        cmd.pasid_replace.pasid, cmd.pasid_replace.pt_id = pasid, pt
        self.test(cmd)
        return int(cmd.pasid_replace.pt_id)

    def pasid_detach(self, stdev: int, pasid: int) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_PASID_DETACH, stdev)
        cmd.pasid_detach.pasid = pasid
        self.test(cmd)

    def pasid_check(self, stdev: int, pasid: int, hwpt: int) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_PASID_CHECK_HWPT, stdev)
        cmd.pasid_check.pasid, cmd.pasid_check.hwpt_id = pasid, hwpt
        self.test(cmd)

    # -- accesses ----------------------------------------------------------------------------
    def access_create(self, ioas: int, flags: int = 0) -> int:
        cmd = test_cmd(st.IOMMU_TEST_OP_CREATE_ACCESS, ioas)
        cmd.create_access.flags = flags
        self.test(cmd)
        return int(cmd.create_access.out_access_fd)

    def access_pin(self, afd: int, iova: int, length: int, va: int, flags: int = 0) -> int:
        cmd = test_cmd(st.IOMMU_TEST_OP_ACCESS_PAGES, afd)
        a = cmd.access_pages
        a.flags, a.iova, a.length, a.uptr = flags, iova, length, va
        self.test(cmd)
        return int(a.out_access_pages_id)

    def access_unpin(self, afd: int, item: int) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, afd)
        cmd.destroy_access_pages.access_pages_id = item
        self.test(cmd)

    def access_rw(self, afd: int, iova: int, length: int, va: int, flags: int) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_ACCESS_RW, afd)
        a = cmd.access_rw
        a.iova, a.length, a.uptr, a.flags = iova, length, va, flags
        self.test(cmd)

    def access_replace_ioas(self, afd: int, ioas: int) -> None:
        cmd = test_cmd(st.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, afd)
        cmd.access_replace_ioas.ioas_id = ioas
        self.test(cmd)


def new_machine() -> Machine:
    """A Machine with only the selftest mock IOMMU (as the selftest needs)."""
    return Machine.from_config({"iommus": [], "devices": []})


def alloc_buffer(m: Machine, size: int = BUFFER_SIZE) -> int:
    """The selftest's global ``buffer``: MAP_SHARED | MAP_ANONYMOUS, 2 MiB aligned."""
    hole = m.mmap(2 * HUGEPAGE_SIZE)  # posix_memalign(HUGEPAGE_SIZE), then MAP_FIXED
    va = (hole + HUGEPAGE_SIZE - 1) & ~(HUGEPAGE_SIZE - 1)
    m.munmap(hole, 2 * HUGEPAGE_SIZE)
    return m.mmap(size, shared=True, addr=va)


def memfd_mmap(m: Machine, length: int) -> tuple[int, int]:
    """iommufd_utils.h ``memfd_mmap``: a memfd of ``length`` bytes, mapped shared:
    (fd, address)."""
    mfd = m.memfd_create("buffer")
    m.ftruncate(mfd, length)
    return mfd, m.mmap(length, mfd, 0, shared=True)


def teardown_iommufd(m: Machine, fd: int, buffer: int) -> None:
    """Close the iommufd (destroying every object), then check that no page of ``buffer``
    is still pinned; also that every kernel page is back (the simulation's leak check)."""
    m.close(fd)
    t = Iommufd(m)
    t.check_refs(buffer, BUFFER_SIZE, 0)
    m.close(t.fd)
    assert m.kernel_pages_in_use == m.kernel_pages_baseline, (
        f"{m.kernel_pages_in_use - m.kernel_pages_baseline} kernel pages leaked")




def mock_viommu_region(t: Iommufd) -> tuple[int, int, int]:
    """A mock vIOMMU with its mmap-able page, on a fresh IOAS and mock device:
    (out_mmap_length, out_mmap_offset, the value it holds)."""
    ioas = t.ioas_alloc()
    _stdev, _hwpt, dev = t.mock_domain(ioas)
    parent = t.hwpt_alloc(dev, ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
    data = st.iommu_viommu_selftest(in_data=0xBEEF)
    va = t.user_struct(data)
    t.viommu_alloc(dev, parent, st.IOMMU_VIOMMU_TYPE_SELFTEST, va, sz(data))
    out = uapi.from_bytes(st.iommu_viommu_selftest, t.m.mem_read(va, sz(data)))
    return int(out.out_mmap_length), int(out.out_mmap_offset), 0xBEEF


__all__ = ["st", "uapi", "vf"]
