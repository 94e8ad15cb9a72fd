"""The iommufd user ABI, rule by rule, from shared/reference/uapi.md §1-§9 and §11.

Every test goes through the Machine contract only: ``open``/``ioctl``/``read``/``write``/
``mmap``/``close`` with ``iommufd.uapi*`` structs or raw buffers. Devices come from the
selftest mock (IOMMU_TEST_CMD) or from a VFIO cdev of a default-Machine PCI device.
Each test names the rule it checks and cites the section of uapi.md it comes from.
Rules that need a second thread, a misbehaving driver or a dropped capability are played
by a ``tryfirst`` plugin or the task's credentials; ``virt_id > ULONG_MAX`` (EINVAL) is
not tested: on the simulated x86_64 kernel no u64 exceeds ULONG_MAX.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from typing import Any

import pytest

from iommu_core.device import IommuCap
from iommu_core.errors import IommuError
from iommu_core.hookspec import hookimpl
from iommu_sim import DmaFault, Machine
from iommufd import uapi
from iommufd import uapi_selftest as st
from iommufd import uapi_vfio as vf
from tests.selftest.utils import (
    MOCK_APERTURE_LAST,
    MOCK_APERTURE_START,
    MOCK_PAGE_SIZE,
    PAGE_SIZE,
    RW,
    Iommufd,
    expect_errno,
    new_machine,
    sz,
)
from tests.selftest.utils import test_cmd as mk_cmd

FIXED = uapi.IOMMU_IOAS_MAP_FIXED_IOVA
U64_MAX = (1 << 64) - 1
HPAGE = 2 << 20
SMMU_DEV = "0000:00:01.0"
SMMU_DEV2 = "0000:00:02.0"
VTD_DEV = "0000:10:00.0"
POLLIN, POLLOUT, POLLRDNORM = 0x001, 0x004, 0x040
MAX_RW = 0x7FFF_F000  # MAX_RW_COUNT: the most one read/write/DMA moves
SELFTEST_VIOMMU = st.IOMMU_VIOMMU_TYPE_SELFTEST
SELFTEST_VEVENTQ = st.IOMMU_VEVENTQ_TYPE_SELFTEST


@pytest.fixture
def m() -> Iterator[Machine]:
    """A Machine with only the selftest mock IOMMU."""
    machine = new_machine()
    yield machine
    machine.shutdown()


@pytest.fixture
def dm() -> Iterator[Machine]:
    """The default Machine (every vendor driver, PCI devices registered with vfio-pci)."""
    machine = Machine.default()
    yield machine
    machine.shutdown()


@pytest.fixture
def t(m: Machine) -> Iterator[Iommufd]:
    yield Iommufd(m)


def raw(obj: Any, size: int | None = None, extra: bytes = b"") -> bytearray:
    """The bytes of a uAPI struct with ``size`` patched in and ``extra`` appended."""
    b = bytearray(uapi.struct_bytes(obj)) + bytearray(extra)
    if size is not None:
        b[0:4] = size.to_bytes(4, "little")
    return b


def errno_of(fn: Any, *args: Any) -> int:
    try:
        fn(*args)
    except OSError as e:
        return int(e.errno or 0)
    return 0


def ioas_with_domain(t: Iommufd) -> tuple[int, int, int, int]:
    """An IOAS with one mock device attached: (ioas, stdev, hwpt, idev)."""
    ioas = t.ioas_alloc()
    stdev, hwpt, idev = t.mock_domain(ioas)
    return ioas, stdev, hwpt, idev


def iova_ranges(t: Iommufd, ioas: int, cap: int = 8) -> tuple[list[tuple[int, int]], int]:
    va = t.m.mmap(PAGE_SIZE)
    cmd = uapi.iommu_ioas_iova_ranges(size=32, ioas_id=ioas, num_iovas=cap, allowed_iovas=va)
    t.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
    arr = uapi.from_bytes(uapi.iommu_iova_range * cap, t.m.mem_read(va, 16 * cap))
    t.m.munmap(va, PAGE_SIZE)
    return [(arr[i].start, arr[i].last) for i in range(cmd.num_iovas)], int(
        cmd.out_iova_alignment)


def nest_parent(t: Iommufd, idev: int, ioas: int) -> int:
    return t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)


def selftest_viommu(t: Iommufd) -> tuple[int, int, int, int, int]:
    """(ioas, stdev, idev, parent hwpt, viommu) with the mock device attached to the
    nest parent."""
    ioas, stdev, _h, idev = ioas_with_domain(t)
    parent = nest_parent(t, idev, ioas)
    t.replace(stdev, parent)
    viommu = t.viommu_alloc(idev, parent, SELFTEST_VIOMMU)
    return ioas, stdev, idev, parent, viommu


def bind(m: Machine, vfd: int, iommufd: int, argsz: int = 24, flags: int = 0,
         token: int = 0) -> vf.vfio_device_bind_iommufd:
    b = vf.vfio_device_bind_iommufd(argsz=argsz, flags=flags, iommufd=iommufd,
                                    token_uuid_ptr=token)
    m.ioctl(vfd, vf.VFIO_DEVICE_BIND_IOMMUFD, b)
    return b


def vfio_attach(m: Machine, vfd: int, pt_id: int, pasid: int | None = None) -> int:
    a = vf.vfio_device_attach_iommufd_pt(
        argsz=16, flags=0 if pasid is None else vf.VFIO_DEVICE_ATTACH_PASID, pt_id=pt_id,
        pasid=pasid or 0)
    m.ioctl(vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a)
    return int(a.pt_id)


# =========================================================================================
# §1 ioctl encoding
# =========================================================================================
REFERENCE_TABLE = {  # name: (request, sizeof, min_size) from uapi.md §1.1
    "IOMMU_DESTROY": (0x3B80, 8, 8), "IOMMU_IOAS_ALLOC": (0x3B81, 12, 12),
    "IOMMU_IOAS_ALLOW_IOVAS": (0x3B82, 24, 24), "IOMMU_IOAS_COPY": (0x3B83, 40, 40),
    "IOMMU_IOAS_IOVA_RANGES": (0x3B84, 32, 32), "IOMMU_IOAS_MAP": (0x3B85, 40, 40),
    "IOMMU_IOAS_UNMAP": (0x3B86, 24, 24), "IOMMU_OPTION": (0x3B87, 24, 24),
    "IOMMU_VFIO_IOAS": (0x3B88, 12, 12), "IOMMU_HWPT_ALLOC": (0x3B89, 48, 24),
    "IOMMU_GET_HW_INFO": (0x3B8A, 40, 32), "IOMMU_HWPT_SET_DIRTY_TRACKING": (0x3B8B, 16, 16),
    "IOMMU_HWPT_GET_DIRTY_BITMAP": (0x3B8C, 48, 48), "IOMMU_HWPT_INVALIDATE": (0x3B8D, 32, 32),
    "IOMMU_FAULT_QUEUE_ALLOC": (0x3B8E, 16, 16), "IOMMU_IOAS_MAP_FILE": (0x3B8F, 40, 40),
    "IOMMU_VIOMMU_ALLOC": (0x3B90, 40, 24), "IOMMU_VDEVICE_ALLOC": (0x3B91, 24, 24),
    "IOMMU_IOAS_CHANGE_PROCESS": (0x3B92, 8, 8), "IOMMU_VEVENTQ_ALLOC": (0x3B93, 32, 28),
    "IOMMU_HW_QUEUE_ALLOC": (0x3B94, 40, 40),
    "IOMMU_IOAS_NOIOMMU_GET_PA": (0x3B95, 40, 40),  # Linux 7.3
}


def test_encoding_every_command_is_IO_with_type_0x3b() -> None:
    # uapi.md §1, §1.1, §1.2
    assert {d.name: (d.request, d.size, d.min_size) for d in uapi.IOMMUFD_IOCTLS} == \
        REFERENCE_TABLE
    assert st.IOMMU_TEST_CMD == 0x3BA0
    assert (vf.VFIO_DEVICE_BIND_IOMMUFD, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            vf.VFIO_DEVICE_DETACH_IOMMUFD_PT) == (0x3B76, 0x3B77, 0x3B78)
    assert (sz(vf.vfio_device_bind_iommufd), sz(vf.vfio_device_attach_iommufd_pt),
            sz(vf.vfio_device_detach_iommufd_pt)) == (24, 16, 12)


# =========================================================================================
# §2 dispatch and generic size rules
# =========================================================================================
#: A zero struct of exactly ``min_size`` bytes (plus these fields) reaches the handler,
#: which fails (or succeeds) for a reason of its own: proof that the size was accepted.
AT_MIN_SIZE: dict[str, tuple[dict[str, int], int]] = {
    "IOMMU_DESTROY": ({}, errno.ENOENT),
    "IOMMU_IOAS_ALLOC": ({}, 0),
    "IOMMU_IOAS_ALLOW_IOVAS": ({}, errno.ENOENT),
    "IOMMU_IOAS_COPY": ({"flags": RW}, errno.ENOENT),
    "IOMMU_IOAS_IOVA_RANGES": ({}, errno.ENOENT),
    "IOMMU_IOAS_MAP": ({"flags": RW}, errno.ENOENT),
    "IOMMU_IOAS_UNMAP": ({}, errno.ENOENT),
    "IOMMU_OPTION": ({"op": uapi.IOMMU_OPTION_OP_GET}, 0),
    "IOMMU_VFIO_IOAS": ({"op": uapi.IOMMU_VFIO_IOAS_GET}, errno.ENODEV),
    "IOMMU_HWPT_ALLOC": ({}, errno.ENOENT),
    "IOMMU_GET_HW_INFO": ({}, errno.ENOENT),
    "IOMMU_HWPT_SET_DIRTY_TRACKING": ({}, errno.ENOENT),
    "IOMMU_HWPT_GET_DIRTY_BITMAP": ({}, errno.ENOENT),
    "IOMMU_HWPT_INVALIDATE": ({}, errno.ENOENT),
    "IOMMU_FAULT_QUEUE_ALLOC": ({}, 0),
    "IOMMU_IOAS_MAP_FILE": ({"flags": RW}, errno.ENOENT),
    "IOMMU_VIOMMU_ALLOC": ({"type": SELFTEST_VIOMMU}, errno.ENOENT),
    "IOMMU_VDEVICE_ALLOC": ({}, errno.ENOENT),
    "IOMMU_IOAS_CHANGE_PROCESS": ({}, 0),
    "IOMMU_VEVENTQ_ALLOC": ({"type": SELFTEST_VEVENTQ, "veventq_depth": 1}, errno.ENOENT),
    "IOMMU_HW_QUEUE_ALLOC": ({"type": 1, "length": 1}, errno.ENOENT),
}


@pytest.mark.parametrize("name", sorted(AT_MIN_SIZE))
def test_size_below_min_is_EINVAL_and_min_size_is_accepted(m: Machine, name: str) -> None:
    # uapi.md §2 step 4 (size < min_size: EINVAL) and step 5 (short struct zero-filled)
    t = Iommufd(m)
    desc = uapi.IOMMUFD_IOCTLS_BY_NAME[name]
    fields, want = AT_MIN_SIZE[name]
    obj = desc.struct(**fields)
    with expect_errno(errno.EINVAL):
        t.ioctl(desc.request, raw(obj, desc.min_size - 1)[: desc.min_size - 1])
    assert errno_of(t.ioctl, desc.request, raw(obj, desc.min_size)[: desc.min_size]) == want


def test_test_cmd_size_rules(t: Iommufd) -> None:
    # selftest_catalog §2.1: min 68, sizeof 72, unknown op EOPNOTSUPP
    cmd = mk_cmd(0)
    with expect_errno(errno.EINVAL):
        t.ioctl(st.IOMMU_TEST_CMD, raw(cmd, 67))
    with expect_errno(errno.EOPNOTSUPP):
        t.ioctl(st.IOMMU_TEST_CMD, raw(cmd, 68)[:68])
    with expect_errno(errno.E2BIG):
        t.ioctl(st.IOMMU_TEST_CMD, raw(cmd, 80, b"\0" * 7 + b"\1"))


def test_longer_struct_needs_zero_tail_else_E2BIG(t: Iommufd) -> None:
    # uapi.md §2 step 5: bytes [sizeof, size) must be zero
    with expect_errno(errno.E2BIG):
        t.ioctl(uapi.IOMMU_IOAS_ALLOC, raw(uapi.iommu_ioas_alloc(), 16, b"\0\0\0\1"))
    buf = raw(uapi.iommu_ioas_alloc(), 16, b"\0\0\0\0")
    t.ioctl(uapi.IOMMU_IOAS_ALLOC, buf)
    # The id space was not touched by the E2BIG call: the first IOAS is 1.
    assert int.from_bytes(buf[8:12], "little") == 1
    assert buf[12:] == b"\0\0\0\0"  # response is min(size, sizeof) = 12 bytes


def test_tail_past_the_buffer_is_EFAULT(t: Iommufd) -> None:
    # uapi.md §2 step 5: a fault while checking the tail is EFAULT
    with expect_errno(errno.EFAULT):
        t.ioctl(uapi.IOMMU_IOAS_ALLOC, raw(uapi.iommu_ioas_alloc(), 4096))


def test_response_is_cut_at_the_callers_size(t: Iommufd) -> None:
    # uapi.md §2 response rule + §6 GET_HW_INFO: a 32-byte caller gets no out_capabilities
    _ioas, _s, _h, idev = ioas_with_domain(t)
    buf = raw(uapi.iommu_hw_info(dev_id=idev), 32)
    buf[32:40] = b"\xaa" * 8
    t.ioctl(uapi.IOMMU_GET_HW_INFO, buf)
    info = uapi.from_bytes(uapi.iommu_hw_info, bytes(buf))
    assert info.out_data_type == st.IOMMU_HW_INFO_TYPE_SELFTEST and info.data_len == 8
    assert buf[32:40] == b"\xaa" * 8


def test_size_is_read_before_the_request_is_checked(t: Iommufd) -> None:
    # uapi.md §2 step 2 then 3: a table hole with a NULL argument is EFAULT, not ENOTTY
    for nr in (0x96, 0x9F):
        with expect_errno(errno.EFAULT):
            t.ioctl(uapi._IO(uapi.IOMMUFD_TYPE, nr), None)
        with expect_errno(errno.ENOTTY):
            t.ioctl(uapi._IO(uapi.IOMMUFD_TYPE, nr), uapi.iommu_destroy(size=8))
    with expect_errno(errno.EFAULT):
        t.ioctl(uapi.IOMMU_DESTROY, None)


def test_request_with_other_bits_is_ENOTTY(t: Iommufd) -> None:
    # uapi.md §2 step 3: op->ioctl_num != cmd
    cmd = uapi.iommu_ioas_alloc(size=12)
    for req in (uapi._IOWR(uapi.IOMMUFD_TYPE, 0x81, 12), uapi._IOR(uapi.IOMMUFD_TYPE, 0x81, 12),
                uapi._IO("x", 0x81), uapi._IO(uapi.IOMMUFD_TYPE, 0x81) | (1 << 30)):
        with expect_errno(errno.ENOTTY):
            t.ioctl(req, cmd)


def test_nr_below_0x80_or_past_the_table_goes_to_vfio_compat(t: Iommufd) -> None:
    # uapi.md §2 step 1: compat path; unknown there: ENOTTY (no size is read: NULL is fine)
    assert t.ioctl(vf.VFIO_GET_API_VERSION, None) == 0
    assert t.m.ioctl(t.fd, vf.VFIO_CHECK_EXTENSION, vf.VFIO_TYPE1v2_IOMMU) == 1
    for nr in (0x00, 0x7F, 0xA1, 0xFF):
        with expect_errno(errno.ENOTTY):
            t.ioctl(uapi._IO(uapi.IOMMUFD_TYPE, nr), None)


def test_success_returns_zero(t: Iommufd) -> None:
    # uapi.md §2: every iommufd ioctl returns 0 on success
    assert t.ioctl(uapi.IOMMU_IOAS_ALLOC, uapi.iommu_ioas_alloc(size=12)) == 0
    assert t.ioctl(uapi.IOMMU_DESTROY, uapi.iommu_destroy(size=8, id=1)) == 0


# =========================================================================================
# §2.1 object ids and lifetime
# =========================================================================================
def test_ids_start_at_1_and_the_lowest_free_id_is_reused(t: Iommufd) -> None:
    # uapi.md §2.1: XA_FLAGS_ALLOC1, lowest free index
    assert [t.ioas_alloc() for _ in range(3)] == [1, 2, 3]
    t.destroy(1)
    fault_id, fault_fd = t.fault_alloc()
    assert fault_id == 1
    t.destroy(3)
    assert t.ioas_alloc() == 3


def test_destroy_missing_or_zero_id_is_ENOENT(t: Iommufd) -> None:
    # uapi.md §2.1
    for oid in (0, 1, 0xFFFF_FFFF):
        with expect_errno(errno.ENOENT):
            t.destroy(oid)


def test_destroy_accepts_any_type(t: Iommufd) -> None:
    # uapi.md §2.1: no type check in IOMMU_DESTROY
    ioas, stdev, idev, parent, viommu = selftest_viommu(t)
    q, qfd = t.veventq_alloc(viommu, SELFTEST_VEVENTQ, 2)
    fault, ffd = t.fault_alloc()
    t.m.close(qfd)
    t.m.close(ffd)
    nested = t.nested(idev, parent)
    for oid in (q, fault, nested, viommu):
        t.destroy(oid)
    t.replace(stdev, ioas)
    t.destroy(parent)
    t.destroy(stdev)  # the selftest object: detach + unbind
    t.destroy(ioas)
    assert t.ioas_alloc() == 1


def test_destroy_is_EBUSY_while_referenced(t: Iommufd) -> None:
    # uapi.md §2.1: every reference chain that makes DESTROY EBUSY
    ioas, stdev, idev, parent, viommu = selftest_viommu(t)
    nested = t.nested(idev, parent)
    vnested = t.nested(idev, viommu)
    vdev = t.vdevice_alloc(viommu, idev, 0x42)
    q, qfd = t.veventq_alloc(viommu, SELFTEST_VEVENTQ, 2)
    fault, ffd = t.fault_alloc()
    iopf = t.nested(idev, parent, uapi.IOMMU_HWPT_FAULT_ID_VALID, fault_id=fault)
    busy = {
        ioas: "HWPT -> IOAS",
        parent: "nested HWPT, vIOMMU and the attached device -> parent",
        viommu: "vDEVICE, vEVENTQ, nested HWPT -> vIOMMU",
        fault: "HWPT -> FAULT and the open fault fd",
        q: "the open vEVENTQ fd",
        idev: "the binding driver's reference",
    }
    for oid, why in busy.items():
        with expect_errno(errno.EBUSY):
            t.destroy(oid)
        assert why
    # Peel the chain leaf-first: each step unblocks the next.
    t.destroy(iopf)
    with expect_errno(errno.EBUSY):
        t.destroy(fault)  # the fd still holds it
    t.m.close(ffd)
    t.destroy(fault)
    t.m.close(qfd)
    for oid in (q, vdev, vnested, nested):
        t.destroy(oid)
    t.destroy(viommu)
    with expect_errno(errno.EBUSY):
        t.destroy(parent)  # the device is attached to it
    t.replace(stdev, ioas)
    t.destroy(parent)


def test_hw_queue_holds_its_viommu(t: Iommufd) -> None:
    # uapi.md §2.1: HW_QUEUE -> vIOMMU
    ioas, _stdev, _idev, _parent, viommu = selftest_viommu(t)
    va = t.m.mmap(PAGE_SIZE)
    iova = t.map(ioas, va, PAGE_SIZE)
    q = t.hw_queue_alloc(viommu, st.IOMMU_HW_QUEUE_TYPE_SELFTEST, 0, iova, PAGE_SIZE)
    with expect_errno(errno.EBUSY):
        t.destroy(viommu)
    t.destroy(q)
    t.destroy(viommu)


def test_lookup_of_the_wrong_type_is_ENOENT(t: Iommufd) -> None:
    # uapi.md §2.1: missing, wrong type or being destroyed: ENOENT
    ioas, stdev, hwpt, idev = ioas_with_domain(t)
    va = t.m.mmap(PAGE_SIZE)
    with expect_errno(errno.ENOENT):
        t.map(hwpt, va, PAGE_SIZE)  # an HWPT id where an IOAS is expected
    with expect_errno(errno.ENOENT):
        t.get_hw_info(ioas, 0, 0, 0)  # an IOAS id where a device is expected
    with expect_errno(errno.ENOENT):
        t.set_dirty_tracking(ioas, False)
    with expect_errno(errno.ENOENT):
        t.viommu_alloc(idev, ioas, SELFTEST_VIOMMU)  # an IOAS where a paging HWPT is expected


def test_auto_domain_is_an_object_freed_with_its_last_device(t: Iommufd) -> None:
    # uapi.md §2.1 and §8: the automatic HWPT's id is returned, it dies with its last user
    ioas = t.ioas_alloc()
    s1, h1, _i1 = t.mock_domain(ioas)
    s2, h2, _i2 = t.mock_domain(ioas)
    assert h1 == h2  # the second device joins the compatible auto HWPT
    with expect_errno(errno.EBUSY):
        t.destroy(h1)
    t.destroy(s1)
    with expect_errno(errno.EBUSY):
        t.destroy(h1)
    t.destroy(s2)
    with expect_errno(errno.ENOENT):
        t.destroy(h1)
    t.destroy(ioas)


def test_vdevice_of_an_unbound_device_is_a_tombstone(t: Iommufd) -> None:
    # uapi.md §2.1: REMOVE_OBJ_TOMBSTONE keeps the id reserved until close
    _ioas, stdev, idev, _parent, viommu = selftest_viommu(t)
    vdev = t.vdevice_alloc(viommu, idev, 7)
    t.destroy(stdev)
    with expect_errno(errno.ENOENT):
        t.destroy(vdev)
    new = [t.ioas_alloc() for _ in range(3)]
    assert vdev not in new and idev in new  # the idev's id is free again, the vdev's not
    t.destroy(viommu)  # the tombstone no longer holds the vIOMMU


def test_close_destroys_every_object(m: Machine) -> None:
    # uapi.md §2.1: closing the iommufd destroys every object leaf-first
    t = Iommufd(m)
    _ioas, _stdev, idev, parent, viommu = selftest_viommu(t)
    t.nested(idev, viommu)
    t.vdevice_alloc(viommu, idev, 1)
    _fault, ffd = t.fault_alloc()
    m.close(t.fd)
    m.close(ffd)  # the event fd holds the context open until it goes
    assert m.kernel_pages_in_use == m.kernel_pages_baseline
    t2 = Iommufd(m)
    assert t2.ioas_alloc() == 1


def test_vfio_container_node_defaults_to_mm_accounting(m: Machine) -> None:
    # uapi.md §2.1: /dev/vfio/vfio served by iommufd selects process (MM) accounting
    for path, want in (("/dev/iommu", 0), ("/dev/vfio/vfio", 1)):
        t = Iommufd(m, m.open(path))
        assert t.option(uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_GET) == want
        m.close(t.fd)


# =========================================================================================
# §5 IOAS ioctls
# =========================================================================================
def test_ioas_alloc_flags_are_EOPNOTSUPP(t: Iommufd) -> None:
    # uapi.md §5 IOAS_ALLOC
    with expect_errno(errno.EOPNOTSUPP):
        t.ioctl(uapi.IOMMU_IOAS_ALLOC, uapi.iommu_ioas_alloc(size=12, flags=1))
    assert t.ioas_alloc() == 1  # the failed call reserved no id


def test_iova_ranges_checks_and_fresh_ioas(t: Iommufd) -> None:
    # uapi.md §5 IOAS_IOVA_RANGES: __reserved, ENOENT, one range [0, U64_MAX], alignment 1
    ioas = t.ioas_alloc()
    cmd = uapi.iommu_ioas_iova_ranges(size=32, ioas_id=ioas)
    setattr(cmd, "__reserved", 1)
    with expect_errno(errno.EOPNOTSUPP):
        t.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
    with expect_errno(errno.ENOENT):
        t.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, uapi.iommu_ioas_iova_ranges(size=32, ioas_id=99))
    assert iova_ranges(t, ioas) == ([(0, U64_MAX)], 1)


def test_iova_ranges_EMSGSIZE_after_writing_the_struct_back(t: Iommufd) -> None:
    # uapi.md §5: num_iovas = total and alignment are written back, then EMSGSIZE
    ioas = t.ioas_alloc()
    t.add_reserved(ioas, 0x10000, 0x10000)
    cmd = uapi.iommu_ioas_iova_ranges(size=32, ioas_id=ioas, num_iovas=0, allowed_iovas=0,
                                      out_iova_alignment=0xDEAD)
    with expect_errno(errno.EMSGSIZE):
        t.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
    assert (cmd.num_iovas, cmd.out_iova_alignment) == (2, 1)
    va = t.m.mmap(PAGE_SIZE)
    cmd = uapi.iommu_ioas_iova_ranges(size=32, ioas_id=ioas, num_iovas=1, allowed_iovas=va)
    with expect_errno(errno.EMSGSIZE):  # the first range is written, the count is 2
        t.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
    assert cmd.num_iovas == 2
    first = uapi.from_bytes(uapi.iommu_iova_range, t.m.mem_read(va, 16))
    assert (first.start, first.last) == (0, 0xFFFF)
    assert iova_ranges(t, ioas) == ([(0, 0xFFFF), (0x20000, U64_MAX)], 1)
    cmd = uapi.iommu_ioas_iova_ranges(size=32, ioas_id=ioas, num_iovas=2, allowed_iovas=8)
    with expect_errno(errno.EFAULT):
        t.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, cmd)


def test_iova_ranges_show_reserved_holes_not_allowed_ranges(t: Iommufd) -> None:
    # uapi.md §5: allowed ranges do not change the output; a domain adds its aperture
    ioas = t.ioas_alloc()
    t.allow_iovas(ioas, [(0x100000, 0x1FFFFF)])
    assert iova_ranges(t, ioas) == ([(0, U64_MAX)], 1)
    t.allow_iovas(ioas, [])
    t.mock_domain(ioas)
    assert iova_ranges(t, ioas) == ([(MOCK_APERTURE_START, MOCK_APERTURE_LAST)],
                                    MOCK_PAGE_SIZE)


def test_allow_iovas_rules(t: Iommufd) -> None:
    # uapi.md §5 IOAS_ALLOW_IOVAS
    ioas = t.ioas_alloc()
    cmd = uapi.iommu_ioas_allow_iovas(size=24, ioas_id=ioas)
    setattr(cmd, "__reserved", 1)
    with expect_errno(errno.EOPNOTSUPP):
        t.ioctl(uapi.IOMMU_IOAS_ALLOW_IOVAS, cmd)
    with expect_errno(errno.ENOENT):
        t.allow_iovas(99, [])
    with expect_errno(errno.EINVAL):  # start >= last: single-byte ranges are rejected
        t.allow_iovas(ioas, [(0x1000, 0x1000)])
    with expect_errno(errno.EINVAL):  # overlaps an earlier range of the same list
        t.allow_iovas(ioas, [(0x1000, 0x2FFF), (0x2000, 0x3FFF)])
    with expect_errno(errno.EFAULT):
        t.ioctl(uapi.IOMMU_IOAS_ALLOW_IOVAS, uapi.iommu_ioas_allow_iovas(
            size=24, ioas_id=ioas, num_iovas=1, allowed_iovas=8))
    t.allow_iovas(ioas, [(0x100000, 0x1FFFFF)])
    t.add_reserved(ioas, 0x400000, 0x1000)
    with expect_errno(errno.EADDRINUSE):  # hits a reserved range: the old list is kept
        t.allow_iovas(ioas, [(0x300000, 0x4FFFFF)])
    va = t.m.mmap(PAGE_SIZE)
    assert 0x100000 <= t.map(ioas, va, PAGE_SIZE) <= 0x1FFFFF
    with expect_errno(errno.EADDRINUSE):  # a reservation may not hit an allowed range
        t.add_reserved(ioas, 0x1F0000, 0x20000)
    t.allow_iovas(ioas, [])  # num_iovas 0 clears the list
    t.add_reserved(ioas, 0x1F0000, 0x10000)


def test_adjacent_allowed_ranges_form_one_window(t: Iommufd) -> None:
    # uapi.md §5 + io_pagetable.c iopt_alloc_iova: interval_tree_for_each_span() walks
    # the *spans* of the allowed tree, so two touching ranges are one window
    ioas = t.ioas_alloc()
    t.allow_iovas(ioas, [(0x100000, 0x100FFF), (0x101000, 0x101FFF)])
    va = t.m.mmap(2 * PAGE_SIZE)
    assert t.map(ioas, va, 2 * PAGE_SIZE) == 0x100000


def test_map_check_order(t: Iommufd) -> None:
    # uapi.md §5 IOAS_MAP: EOPNOTSUPP, EOVERFLOW, EINVAL (no R/W) all before ENOENT
    va = t.m.mmap(PAGE_SIZE)
    bad = 99

    def map_(**kw: int) -> None:
        args = {"size": 40, "flags": RW, "ioas_id": bad, "user_va": va, "length": PAGE_SIZE}
        args.update(kw)
        t.ioctl(uapi.IOMMU_IOAS_MAP, uapi.iommu_ioas_map(**args))

    with expect_errno(errno.EOPNOTSUPP):
        map_(flags=RW | 8, iova=U64_MAX)
    cmd = uapi.iommu_ioas_map(size=40, flags=RW, ioas_id=bad, user_va=va, length=PAGE_SIZE,
                              iova=U64_MAX)
    setattr(cmd, "__reserved", 1)
    with expect_errno(errno.EOPNOTSUPP):
        t.ioctl(uapi.IOMMU_IOAS_MAP, cmd)
    with expect_errno(errno.EOVERFLOW):
        map_(iova=U64_MAX, flags=0)
    with expect_errno(errno.EOVERFLOW):
        map_(length=U64_MAX, flags=0)
    with expect_errno(errno.EINVAL):
        map_(flags=FIXED)
    with expect_errno(errno.ENOENT):
        map_()


def test_map_length_and_address_rules(t: Iommufd) -> None:
    # uapi.md §5 IOAS_MAP: user_va+length overflow, length 0, length >= ULONG_MAX/2
    ioas = t.ioas_alloc()
    va = t.m.mmap(PAGE_SIZE)
    with expect_errno(errno.EOVERFLOW):
        t.map(ioas, U64_MAX - PAGE_SIZE + 1, 2 * PAGE_SIZE)
    with expect_errno(errno.EINVAL):
        t.map(ioas, va, 0)
    with expect_errno(errno.EOVERFLOW):  # automatic IOVA: length >= ULONG_MAX / 2
        t.map(ioas, PAGE_SIZE, 1 << 63)
    with expect_errno(errno.EINVAL):  # length > SIZE_MAX - PAGE_SIZE
        t.map(ioas, 0, U64_MAX - 1)


def test_map_fixed_rules(t: Iommufd) -> None:
    # uapi.md §5 IOAS_MAP FIXED_IOVA: alignment, overflow, reserved (EINVAL), EEXIST
    ioas, _s, _h, _i = ioas_with_domain(t)
    va = t.m.mmap(4 * PAGE_SIZE)
    base = MOCK_APERTURE_START
    with expect_errno(errno.EINVAL):  # iova not aligned to iova_alignment (2 KiB)
        t.map_fixed(ioas, va, PAGE_SIZE, base + 1024)
    with expect_errno(errno.EINVAL):  # length not a multiple of iova_alignment
        t.map_fixed(ioas, va, 1024, base)
    with expect_errno(errno.EINVAL):  # user_va's page offset not a multiple of it
        t.map_fixed(ioas, va + 1024, 2048, base)
    with expect_errno(errno.EINVAL):  # intersects the reserved space outside the aperture
        t.map_fixed(ioas, va, 2 * PAGE_SIZE, base - PAGE_SIZE)
    ioas2 = t.ioas_alloc()
    with expect_errno(errno.EOVERFLOW):
        t.map_fixed(ioas2, va, 2 * PAGE_SIZE, U64_MAX - PAGE_SIZE + 1)
    assert t.map_fixed(ioas, va, 2 * PAGE_SIZE, base) == base  # iova written back
    with expect_errno(errno.EEXIST):
        t.map_fixed(ioas, va, PAGE_SIZE, base + PAGE_SIZE)


def test_map_automatic_iova_alignment(t: Iommufd) -> None:
    # uapi.md §5 iopt_alloc_iova: align = min(roundup_pow2(length), lowest bit of the
    # address) capped at HPAGE_SIZE; start | page offset; never below PAGE_SIZE
    ioas = t.ioas_alloc()
    big = t.m.mmap(4 * HPAGE)
    hva = (big + HPAGE - 1) & ~(HPAGE - 1)
    assert t.map(ioas, hva, PAGE_SIZE) == PAGE_SIZE  # first fit above page 0
    assert t.map(ioas, hva, 0x10000) == 0x10000  # 64 KiB aligned
    assert t.map(ioas, hva, HPAGE) == HPAGE  # 2 MiB aligned
    assert t.map(ioas, hva, 2 * HPAGE) == 2 * HPAGE  # capped at 2 MiB, not 4 MiB
    iova = t.map(ioas, hva + 0x3000, PAGE_SIZE)  # address alignment 4 KiB wins
    assert iova % PAGE_SIZE == 0 and iova == 0x2000
    iova = t.map(ioas, hva + 0x123, 0x100)  # the page offset is kept
    assert iova & (PAGE_SIZE - 1) == 0x123
    with expect_errno(errno.EINVAL):  # alignment from the address below iova_alignment
        ioas2, _s, _h, _i = ioas_with_domain(t)
        t.map(ioas2, hva + 1024, 2048)


def test_map_automatic_iova_ENOSPC(t: Iommufd) -> None:
    # uapi.md §5: no fitting hole (within the allowed ranges) is ENOSPC
    ioas = t.ioas_alloc()
    t.allow_iovas(ioas, [(0x100000, 0x101FFF)])
    va = t.m.mmap(4 * PAGE_SIZE)
    with expect_errno(errno.ENOSPC):
        t.map(ioas, va, 4 * PAGE_SIZE)
    t.map(ioas, va, 2 * PAGE_SIZE)
    with expect_errno(errno.ENOSPC):
        t.map(ioas, va, PAGE_SIZE)


def test_map_is_lazy_without_a_domain(t: Iommufd) -> None:
    # uapi.md §5: without a domain nothing is pinned, bad memory is not noticed; with one
    # the pin fails with EFAULT
    ioas = t.ioas_alloc()
    va = t.m.mmap(2 * PAGE_SIZE)
    t.m.munmap(va, 2 * PAGE_SIZE)
    t.map_fixed(ioas, va, 2 * PAGE_SIZE, MOCK_APERTURE_START)
    ioas2, _s, _h, _i = ioas_with_domain(t)
    with expect_errno(errno.EFAULT):
        t.map(ioas2, va, 2 * PAGE_SIZE)
    with expect_errno(errno.EFAULT):  # attaching a domain pins the lazy area now
        t.mock_domain(ioas)


def test_map_file_rules(t: Iommufd) -> None:
    # uapi.md §5 IOAS_MAP_FILE + io_pagetable.c iopt_map_file_pages (newest, checked in
    # the dma-buf series): length 0 and start+length overflow come before the fd lookup
    ioas = t.ioas_alloc()

    def mapf(**kw: int) -> None:
        args = {"size": 40, "flags": RW, "ioas_id": ioas, "fd": -1, "start": 0,
                "length": PAGE_SIZE}
        args.update(kw)
        t.ioctl(uapi.IOMMU_IOAS_MAP_FILE, uapi.iommu_ioas_map_file(**args))

    with expect_errno(errno.EOPNOTSUPP):
        mapf(flags=RW | 8)
    with expect_errno(errno.EOVERFLOW):
        mapf(iova=U64_MAX)
    with expect_errno(errno.EINVAL):
        mapf(flags=0)
    with expect_errno(errno.ENOENT):
        mapf(ioas_id=99)
    with expect_errno(errno.EINVAL):
        mapf(length=0)
    with expect_errno(errno.EOVERFLOW):
        mapf(start=U64_MAX - 10, length=PAGE_SIZE)
    with expect_errno(errno.EBADF):
        mapf(fd=-1)
    with expect_errno(errno.EBADF):
        mapf(fd=1000)


def test_copy_check_order_and_rules(t: Iommufd) -> None:
    # uapi.md §5 IOAS_COPY
    src = t.ioas_alloc()
    dst = t.ioas_alloc()
    va = t.m.mmap(4 * PAGE_SIZE)
    t.map_fixed(src, va, 2 * PAGE_SIZE, 0x100000)
    t.map_fixed(src, va + 2 * PAGE_SIZE, 2 * PAGE_SIZE, 0x102000)
    with expect_errno(errno.EOPNOTSUPP):
        t.copy(RW | 8, 99, U64_MAX, 99, 0, PAGE_SIZE)
    for length, s_iova, d_iova in ((U64_MAX, 0, 0), (PAGE_SIZE, U64_MAX, 0),
                                   (PAGE_SIZE, 0, U64_MAX)):
        with expect_errno(errno.EOVERFLOW):
            t.copy(0, 99, s_iova, 99, d_iova, length)
    with expect_errno(errno.EINVAL):
        t.copy(FIXED, 99, 0, 99, 0, PAGE_SIZE)
    with expect_errno(errno.ENOENT):
        t.copy(RW, 99, 0x100000, dst, 0, PAGE_SIZE)
    with expect_errno(errno.EINVAL):
        t.copy(RW, src, 0x100000, 99, 0, 0)
    with expect_errno(errno.EOVERFLOW):
        t.copy(RW, src, U64_MAX - PAGE_SIZE, 99, 0, 2 * PAGE_SIZE)
    with expect_errno(errno.ENOENT):  # the source range has a hole
        t.copy(RW, src, 0x0FF000, dst, 0, 2 * PAGE_SIZE)
    with expect_errno(errno.ENOENT):  # dst looked up after the source is found
        t.copy(RW, src, 0x100000, 99, 0, PAGE_SIZE)
    # A sub-range of an area, and a span across two adjacent areas, are fine.
    assert t.copy(RW | FIXED, src, 0x101000, dst, 0x500000, PAGE_SIZE) == 0x500000
    assert t.copy(RW | FIXED, src, 0x101000, dst, 0x600000, 2 * PAGE_SIZE) == 0x600000
    with expect_errno(errno.EEXIST):
        t.copy(RW | FIXED, src, 0x100000, dst, 0x500000, PAGE_SIZE)
    auto = t.copy(RW, src, 0x100000, dst, 0, PAGE_SIZE)
    assert auto not in (0, 0x500000)  # dst_iova written back


def test_copy_writeable_from_read_only_pages_is_EPERM(t: Iommufd) -> None:
    # uapi.md §5 IOAS_COPY: the pages were pinned without write
    src = t.ioas_alloc()
    dst = t.ioas_alloc()
    va = t.m.mmap(PAGE_SIZE)
    t.map(src, va, PAGE_SIZE, 0x100000, uapi.IOMMU_IOAS_MAP_READABLE | FIXED)
    with expect_errno(errno.EPERM):
        t.copy(RW, src, 0x100000, dst, 0, PAGE_SIZE)
    t.copy(uapi.IOMMU_IOAS_MAP_READABLE, src, 0x100000, dst, 0, PAGE_SIZE)


def test_copy_shares_the_pinned_pages(t: Iommufd) -> None:
    # uapi.md §5 IOAS_COPY: pages are shared, not re-pinned
    src, _s1, _h1, _i1 = ioas_with_domain(t)
    dst, _s2, _h2, _i2 = ioas_with_domain(t)
    va = t.m.mmap(4 * PAGE_SIZE)
    iova = t.map(src, va, 4 * PAGE_SIZE)
    t.check_refs(va, 4 * PAGE_SIZE, 1)
    t.copy(RW, src, iova, dst, 0, 4 * PAGE_SIZE)
    t.check_refs(va, 4 * PAGE_SIZE, 1)


def test_unmap_rules(t: Iommufd) -> None:
    # uapi.md §5 IOAS_UNMAP
    ioas = t.ioas_alloc()
    with expect_errno(errno.ENOENT):
        t.unmap(99, 0, U64_MAX)
    assert t.unmap(ioas, 0, U64_MAX) == 0  # unmap-all of an empty IOAS succeeds, writes 0
    with expect_errno(errno.EOVERFLOW):
        t.unmap(ioas, U64_MAX, 1)
    with expect_errno(errno.EOVERFLOW):
        t.unmap(ioas, 1, U64_MAX)
    with expect_errno(errno.EINVAL):
        t.unmap(ioas, 0x1000, 0)
    with expect_errno(errno.EOVERFLOW):
        t.unmap(ioas, U64_MAX - PAGE_SIZE + 1, 2 * PAGE_SIZE)
    with expect_errno(errno.ENOENT):  # nothing there (newest: explicit !unmapped check)
        t.unmap(ioas, 0x100000, PAGE_SIZE)
    va = t.m.mmap(2 * PAGE_SIZE)
    t.map_fixed(ioas, va, 2 * PAGE_SIZE, 0x100000)
    cmd = uapi.iommu_ioas_unmap(size=24, ioas_id=ioas, iova=0x100000, length=PAGE_SIZE)
    with expect_errno(errno.ENOENT):  # areas are never split
        t.ioctl(uapi.IOMMU_IOAS_UNMAP, cmd)
    assert cmd.length == PAGE_SIZE  # not written back on failure
    assert t.unmap(ioas, 0x0F0000, 0x20000) == 2 * PAGE_SIZE  # covering range: bytes out
    t.map_fixed(ioas, va, PAGE_SIZE, 0x100000)
    t.map_fixed(ioas, va, PAGE_SIZE, 0x200000)
    assert t.unmap(ioas, 0, U64_MAX) == 2 * PAGE_SIZE


def test_unmap_of_a_range_pinned_by_a_hw_queue_is_EBUSY(t: Iommufd) -> None:
    # uapi.md §5 IOAS_UNMAP / §7 HW_QUEUE: the internal access rejects the unmap
    ioas, _stdev, _idev, _parent, viommu = selftest_viommu(t)
    va = t.m.mmap(PAGE_SIZE)
    iova = t.map(ioas, va, PAGE_SIZE)
    q = t.hw_queue_alloc(viommu, st.IOMMU_HW_QUEUE_TYPE_SELFTEST, 0, iova, PAGE_SIZE)
    with expect_errno(errno.EBUSY):
        t.unmap(ioas, iova, PAGE_SIZE)
    t.destroy(q)
    assert t.unmap(ioas, iova, PAGE_SIZE) == PAGE_SIZE


def test_option_rules(t: Iommufd) -> None:
    # uapi.md §5 IOMMU_OPTION: reserved, unknown ids/ops, val64 only written back
    def opt(**kw: int) -> bytearray:
        b = raw(uapi.iommu_option(size=24, **kw))
        t.ioctl(uapi.IOMMU_OPTION, b)
        return b

    b = raw(uapi.iommu_option(size=24, option_id=0, op=1))
    b[10] = 1  # __reserved
    with expect_errno(errno.EOPNOTSUPP):
        t.ioctl(uapi.IOMMU_OPTION, b)
    with expect_errno(errno.EOPNOTSUPP):
        opt(option_id=2, op=1)
    with expect_errno(errno.EOPNOTSUPP):  # RLIMIT_MODE is global: object_id must be 0
        opt(option_id=0, op=1, object_id=1)
    with expect_errno(errno.EOPNOTSUPP):
        opt(option_id=0, op=2)
    with expect_errno(errno.EINVAL):
        opt(option_id=0, op=0, val64=2)
    opt(option_id=0, op=0, val64=1)
    assert uapi.from_bytes(uapi.iommu_option, opt(option_id=0, op=1)).val64 == 1
    ioas = t.ioas_alloc()
    with expect_errno(errno.EBUSY):  # the context holds an object now
        opt(option_id=0, op=0, val64=0)
    with expect_errno(errno.ENOENT):
        opt(option_id=1, op=1, object_id=99)
    # Only val64 (8 bytes at +16) is written back, for SET too.
    b = raw(uapi.iommu_option(size=24, option_id=1, op=0, object_id=ioas, val64=1))
    b[12:16] = ioas.to_bytes(4, "little")
    before = bytes(b)
    t.ioctl(uapi.IOMMU_OPTION, b)
    assert bytes(b) == before
    b = opt(option_id=1, op=1, object_id=ioas)
    assert uapi.from_bytes(uapi.iommu_option, b).val64 == 1
    with expect_errno(errno.EINVAL):
        opt(option_id=1, op=0, object_id=ioas, val64=2)
    with expect_errno(errno.EOPNOTSUPP):
        opt(option_id=1, op=2, object_id=ioas)


def test_option_huge_pages_off_raises_alignment_and_needs_no_mapped_domain(
        t: Iommufd) -> None:
    # uapi.md §5 HUGE_PAGES: disabled => iova_alignment >= PAGE_SIZE; EINVAL with a
    # domain that has mappings
    ioas = t.ioas_alloc()
    t.huge_pages(ioas, 0)
    assert t.huge_pages(ioas) == 0
    assert iova_ranges(t, ioas)[1] == PAGE_SIZE
    t.huge_pages(ioas, 1)
    assert iova_ranges(t, ioas)[1] == 1
    ioas2, _s, _h, _i = ioas_with_domain(t)
    va = t.m.mmap(PAGE_SIZE)
    t.map(ioas2, va, PAGE_SIZE)
    with expect_errno(errno.EINVAL):
        t.huge_pages(ioas2, 0)
    # An area that is not PAGE_SIZE aligned cannot take the raised alignment.
    t.map_fixed(ioas, va + 0x800, 0x800, 0x10800)
    with expect_errno(errno.EADDRINUSE):
        t.huge_pages(ioas, 0)
    assert t.huge_pages(ioas) == 1  # the failed SET changed nothing


def test_vfio_ioas_rules(t: Iommufd) -> None:
    # uapi.md §5 IOMMU_VFIO_IOAS
    def vio(op: int, ioas_id: int = 0, reserved: int = 0) -> uapi.iommu_vfio_ioas:
        c = uapi.iommu_vfio_ioas(size=12, ioas_id=ioas_id, op=op)
        setattr(c, "__reserved", reserved)
        t.ioctl(uapi.IOMMU_VFIO_IOAS, c)
        return c

    with expect_errno(errno.EOPNOTSUPP):
        vio(uapi.IOMMU_VFIO_IOAS_GET, reserved=1)
    with expect_errno(errno.ENODEV):
        vio(uapi.IOMMU_VFIO_IOAS_GET)
    with expect_errno(errno.ENOENT):
        vio(uapi.IOMMU_VFIO_IOAS_SET, 99)
    ioas = t.ioas_alloc()
    vio(uapi.IOMMU_VFIO_IOAS_SET, ioas)
    assert vio(uapi.IOMMU_VFIO_IOAS_GET).ioas_id == ioas
    vio(uapi.IOMMU_VFIO_IOAS_CLEAR)
    with expect_errno(errno.ENODEV):
        vio(uapi.IOMMU_VFIO_IOAS_GET)
    with expect_errno(errno.EOPNOTSUPP):
        vio(3)
    vio(uapi.IOMMU_VFIO_IOAS_SET, ioas)
    t.destroy(ioas)  # destroying the compat IOAS clears it
    with expect_errno(errno.ENODEV):
        vio(uapi.IOMMU_VFIO_IOAS_GET)


def test_change_process_rules(t: Iommufd) -> None:
    # uapi.md §5 IOAS_CHANGE_PROCESS: __reserved; any user-VA area is EINVAL
    with expect_errno(errno.EOPNOTSUPP):
        t.ioctl(uapi.IOMMU_IOAS_CHANGE_PROCESS, raw(uapi.iommu_ioas_change_process(size=8),
                                                    extra=b"")[:4] + b"\1\0\0\0")
    ioas = t.ioas_alloc()
    t.ioctl(uapi.IOMMU_IOAS_CHANGE_PROCESS, uapi.iommu_ioas_change_process(size=8))
    va = t.m.mmap(PAGE_SIZE)
    t.map(ioas, va, PAGE_SIZE)
    with expect_errno(errno.EINVAL):
        t.ioctl(uapi.IOMMU_IOAS_CHANGE_PROCESS, uapi.iommu_ioas_change_process(size=8))


def test_noiommu_get_pa_rules(t: Iommufd) -> None:
    # 7.3 ioas.c iommufd_ioas_noiommu_get_pa + io_pagetable.c iopt_get_phys, as a distro
    # kernel answers (CONFIG_IOMMUFD_NOIOMMU built, no noiommu device: unsafe mode off)
    def get_pa(size: int = 40, **kw: int) -> tuple[int, bytearray]:
        args = {"ioas_id": ioas, "iova": base, "length": PAGE_SIZE}
        args.update(kw)
        reserved = args.pop("reserved", 0)
        cmd = uapi.iommu_ioas_noiommu_get_pa(size=size, **args)
        setattr(cmd, "__reserved", reserved)
        buf = raw(cmd, extra=bytes(max(0, size - 40)))
        before = bytes(buf)
        rc = errno_of(t.ioctl, uapi.IOMMU_IOAS_NOIOMMU_GET_PA, buf)
        assert bytes(buf) == before  # no path writes back without a physical address
        return rc, buf

    base = MOCK_APERTURE_START
    ioas = t.ioas_alloc()
    va = t.m.mmap(4 * PAGE_SIZE)
    t.map_fixed(ioas, va, 4 * PAGE_SIZE, base)
    assert get_pa(size=39)[0] == errno.EINVAL  # below offsetofend(out_phys)
    assert get_pa(size=48)[0] == errno.EOPNOTSUPP  # longer with a zero tail: dispatched
    # the checks in 7.3's order: flags/__reserved, length, iova, the IOAS, the area
    assert get_pa(flags=1, length=0)[0] == errno.EOPNOTSUPP
    assert get_pa(reserved=1, length=0)[0] == errno.EOPNOTSUPP
    assert get_pa(length=0, iova=U64_MAX)[0] == errno.EINVAL
    assert get_pa(iova=U64_MAX, ioas_id=99)[0] == errno.EOVERFLOW
    assert get_pa(iova=U64_MAX - 1, ioas_id=99)[0] == errno.ENOENT
    assert get_pa(iova=base + 4 * PAGE_SIZE)[0] == errno.ENOENT  # not mapped
    assert get_pa(iova=base - 1)[0] == errno.ENOENT
    # Mapped, with no domain or with a real IOMMU domain: never a noiommu storage domain.
    assert get_pa()[0] == errno.EOPNOTSUPP
    assert get_pa(iova=base + 4 * PAGE_SIZE - 1, length=1)[0] == errno.EOPNOTSUPP
    _stdev, hwpt, _idev = t.mock_domain(ioas)
    assert get_pa()[0] == errno.EOPNOTSUPP
    assert get_pa(ioas_id=hwpt)[0] == errno.ENOENT  # an HWPT is not an IOAS


# =========================================================================================
# §6 HWPT_ALLOC
# =========================================================================================
def _hwpt_alloc(t: Iommufd, **kw: int) -> uapi.iommu_hwpt_alloc:
    cmd = uapi.iommu_hwpt_alloc(size=48, **kw)
    t.ioctl(uapi.IOMMU_HWPT_ALLOC, cmd)
    return cmd


def test_hwpt_alloc_prologue(t: Iommufd) -> None:
    # uapi.md §6 HWPT_ALLOC prologue: __reserved, data_type/len agreement, dev, pt_id
    ioas, _s, _h, idev = ioas_with_domain(t)
    cmd = uapi.iommu_hwpt_alloc(size=48, dev_id=99, pt_id=99, data_len=1)
    setattr(cmd, "__reserved", 1)
    with expect_errno(errno.EOPNOTSUPP):
        t.ioctl(uapi.IOMMU_HWPT_ALLOC, cmd)
    with expect_errno(errno.EINVAL):  # NONE with data
        _hwpt_alloc(t, dev_id=99, pt_id=99, data_len=4)
    with expect_errno(errno.EINVAL):  # a type without data
        _hwpt_alloc(t, dev_id=99, pt_id=99, data_type=st.IOMMU_HWPT_DATA_SELFTEST)
    with expect_errno(errno.ENOENT):
        _hwpt_alloc(t, dev_id=99, pt_id=ioas)
    with expect_errno(errno.EINVAL):  # pt_id not found is EINVAL, not ENOENT
        _hwpt_alloc(t, dev_id=idev, pt_id=99)
    fault, _ffd = t.fault_alloc()
    with expect_errno(errno.EINVAL):  # pt_id of another type
        _hwpt_alloc(t, dev_id=idev, pt_id=fault)
    cmd = uapi.iommu_hwpt_alloc(size=48, dev_id=idev, pt_id=ioas)
    setattr(cmd, "__reserved2", 0xFFFF)  # not checked
    t.ioctl(uapi.IOMMU_HWPT_ALLOC, cmd)
    assert cmd.out_hwpt_id


def test_hwpt_alloc_paging_flags(t: Iommufd) -> None:
    # uapi.md §6 HWPT_ALLOC on an IOAS
    ioas, _s, _h, idev = ioas_with_domain(t)
    _s2, _h2, nodirty = t.mock_domain_flags(ioas, st.MOCK_FLAGS_DEVICE_NO_DIRTY)
    for flags in (1 << 4, 1 << 31):
        with expect_errno(errno.EOPNOTSUPP):
            t.hwpt_alloc(idev, ioas, flags)
    with expect_errno(errno.EOPNOTSUPP):  # the device cannot track dirty pages
        t.hwpt_alloc(nodirty, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    fault, _ffd = t.fault_alloc()
    with expect_errno(errno.EOPNOTSUPP):  # newest: a nest parent takes no faults
        t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_FAULT_ID_VALID
                     | uapi.IOMMU_HWPT_ALLOC_NEST_PARENT, fault_id=fault)
    with expect_errno(errno.ENOENT):  # FAULT_ID_VALID names no FAULT object
        t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_FAULT_ID_VALID, fault_id=ioas)
    with expect_errno(errno.EOPNOTSUPP):  # driver data of a type the mock does not take
        t.hwpt_alloc(idev, ioas, 0, 1, t.user_struct(bytes(24)), 24)
    with expect_errno(errno.EINVAL):  # driver data shorter than its minimum
        t.hwpt_alloc(idev, ioas, 0, st.IOMMU_HWPT_DATA_SELFTEST, t.user_struct(bytes(8)), 3)
    with expect_errno(errno.EFAULT):
        t.hwpt_alloc(idev, ioas, 0, st.IOMMU_HWPT_DATA_SELFTEST, 8, 8)
    for flags in (0, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT, uapi.IOMMU_HWPT_ALLOC_PASID,
                  uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING, uapi.IOMMU_HWPT_FAULT_ID_VALID):
        h = t.hwpt_alloc(idev, ioas, flags, fault_id=fault)
        t.destroy(h)  # not attached to anything: destroyable at once


def test_hwpt_alloc_paging_joins_the_ioas(t: Iommufd) -> None:
    # uapi.md §6 HWPT_ALLOC on an IOAS: the domain takes the IOAS mappings, raises the
    # alignment and reserves outside its aperture; EADDRINUSE when areas do not fit
    ioas, _s, _h, idev = ioas_with_domain(t)
    other = t.ioas_alloc()
    va = t.m.mmap(PAGE_SIZE)
    t.map_fixed(other, va, PAGE_SIZE, 0x1000)  # below the mock aperture
    with expect_errno(errno.EADDRINUSE):
        t.hwpt_alloc(idev, other)
    t.unmap(other, 0, U64_MAX)
    t.map_fixed(other, va, 1024, MOCK_APERTURE_START + 1024)  # not 2 KiB aligned
    with expect_errno(errno.EADDRINUSE):
        t.hwpt_alloc(idev, other)
    assert iova_ranges(t, other) == ([(0, U64_MAX)], 1)  # the failures changed nothing
    t.unmap(other, 0, U64_MAX)
    h = t.hwpt_alloc(idev, other)
    assert iova_ranges(t, other) == ([(MOCK_APERTURE_START, MOCK_APERTURE_LAST)],
                                     MOCK_PAGE_SIZE)
    t.destroy(h)
    assert iova_ranges(t, other) == ([(0, U64_MAX)], 1)


def test_hwpt_alloc_nested_on_a_paging_hwpt(t: Iommufd) -> None:
    # uapi.md §6 HWPT_ALLOC case 2 (parent is an HWPT_PAGING)
    ioas, _s, auto, idev = ioas_with_domain(t)
    parent = nest_parent(t, idev, ioas)
    plain = t.hwpt_alloc(idev, ioas)
    with expect_errno(errno.EOPNOTSUPP):  # flags outside FAULT_ID_VALID | PASID
        t.nested(idev, parent, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
    with expect_errno(errno.EOPNOTSUPP):  # no driver data
        t.hwpt_alloc(idev, parent)
    with expect_errno(errno.EINVAL):  # an auto domain
        t.nested(idev, auto)
    with expect_errno(errno.EINVAL):  # not a nest parent
        t.nested(idev, plain)
    with expect_errno(errno.EOPNOTSUPP):  # the mock takes SELFTEST data only
        t.nested(idev, parent, data_type=1)
    fault, _ffd = t.fault_alloc()
    h = t.nested(idev, parent, uapi.IOMMU_HWPT_FAULT_ID_VALID | uapi.IOMMU_HWPT_ALLOC_PASID,
                 fault_id=fault)
    t.check_iotlb_all(h, st.IOMMU_TEST_IOTLB_DEFAULT)


def test_hwpt_alloc_nested_on_another_drivers_parent_is_EINVAL(dm: Machine) -> None:
    # uapi.md §6 case 2: parent->common.domain->owner != ops
    t = Iommufd(dm)
    ioas, _s, _h, idev = ioas_with_domain(t)
    parent = nest_parent(t, idev, ioas)
    vfd = dm.open(dm.vfio_cdev(VTD_DEV))
    devid = bind(dm, vfd, t.fd).out_devid
    data = uapi.iommu_hwpt_vtd_s1(pgtbl_addr=0x1000, addr_width=48)
    with expect_errno(errno.EINVAL):
        t.hwpt_alloc(devid, parent, 0, uapi.IOMMU_HWPT_DATA_VTD_S1, t.user_struct(data), 24)


def test_hwpt_alloc_nested_on_a_viommu(dm: Machine) -> None:
    # uapi.md §6 HWPT_ALLOC case 3 (pt_id is a vIOMMU)
    t = Iommufd(dm)
    _ioas, _stdev, idev, _parent, viommu = selftest_viommu(t)
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    devid = bind(dm, vfd, t.fd).out_devid
    with expect_errno(errno.EINVAL):  # the device is behind another IOMMU instance
        t.nested(devid, viommu)
    with expect_errno(errno.EOPNOTSUPP):
        t.nested(idev, viommu, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    with expect_errno(errno.EOPNOTSUPP):  # no data
        t.hwpt_alloc(idev, viommu)
    h = t.nested(idev, viommu, uapi.IOMMU_HWPT_ALLOC_PASID)
    with expect_errno(errno.EBUSY):
        t.destroy(viommu)
    t.destroy(h)


# =========================================================================================
# §6 GET_HW_INFO
# =========================================================================================
def test_hw_info_flags_reserved_and_input_type(t: Iommufd) -> None:
    # uapi.md §6 GET_HW_INFO
    _ioas, _s, _h, idev = ioas_with_domain(t)
    for flags in (2, 1 << 31):
        with expect_errno(errno.EOPNOTSUPP):
            t.ioctl(uapi.IOMMU_GET_HW_INFO, uapi.iommu_hw_info(size=40, dev_id=idev,
                                                               flags=flags))
    for i in range(3):
        b = raw(uapi.iommu_hw_info(size=40, dev_id=idev))
        b[29 + i] = 1
        with expect_errno(errno.EOPNOTSUPP):
            t.ioctl(uapi.IOMMU_GET_HW_INFO, b)
    with expect_errno(errno.ENOENT):
        t.ioctl(uapi.IOMMU_GET_HW_INFO, uapi.iommu_hw_info(size=40, dev_id=99))
    # Without INPUT_TYPE the union is cleared: any value reads as DEFAULT.
    cmd = uapi.iommu_hw_info(size=40, dev_id=idev, in_data_type=0x1234)
    t.ioctl(uapi.IOMMU_GET_HW_INFO, cmd)
    assert cmd.out_data_type == st.IOMMU_HW_INFO_TYPE_SELFTEST
    with expect_errno(errno.EOPNOTSUPP):  # a requested type the driver does not have
        t.ioctl(uapi.IOMMU_GET_HW_INFO, uapi.iommu_hw_info(
            size=40, dev_id=idev, flags=uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE,
            in_data_type=0x1234))
    t.get_hw_info(idev, st.IOMMU_HW_INFO_TYPE_SELFTEST, 0, 0)


def test_hw_info_copy_truncate_zero_fill_and_data_len(t: Iommufd) -> None:
    # uapi.md §6: copy min(len), zero-fill the rest, data_len = the kernel's length
    _ioas, _s, _h, idev = ioas_with_domain(t)
    va = t.m.mmap(PAGE_SIZE)
    t.m.mem_write(va, b"\xff" * 32)
    cmd = uapi.iommu_hw_info(size=40, dev_id=idev, data_len=4, data_uptr=va)
    t.ioctl(uapi.IOMMU_GET_HW_INFO, cmd)
    assert cmd.data_len == 8
    assert t.m.mem_read(va, 8) == bytes(4) + b"\xff" * 4  # flags (0) only; rest untouched
    cmd = uapi.iommu_hw_info(size=40, dev_id=idev, data_len=24, data_uptr=va)
    t.ioctl(uapi.IOMMU_GET_HW_INFO, cmd)
    assert cmd.data_len == 8
    assert t.m.mem_read(va, 32) == (bytes(4) + (0xDEADBEEF).to_bytes(4, "little")
                                    + bytes(16) + b"\xff" * 8)
    cmd = uapi.iommu_hw_info(size=40, dev_id=idev, data_len=0, data_uptr=0)
    t.ioctl(uapi.IOMMU_GET_HW_INFO, cmd)  # nothing touched
    assert cmd.data_len == 8
    with expect_errno(errno.EFAULT):
        t.ioctl(uapi.IOMMU_GET_HW_INFO, uapi.iommu_hw_info(size=40, dev_id=idev,
                                                           data_len=8, data_uptr=0))
    with expect_errno(errno.EFAULT):  # the zero-fill faults
        t.ioctl(uapi.IOMMU_GET_HW_INFO, uapi.iommu_hw_info(
            size=40, dev_id=idev, data_len=2 * PAGE_SIZE, data_uptr=va))


def test_hw_info_capabilities_and_max_pasid(t: Iommufd) -> None:
    # uapi.md §6: DIRTY_TRACKING cap; out_max_pasid_log2 only for PASID-enabled devices
    ioas = t.ioas_alloc()
    _s, _h, plain = t.mock_domain(ioas)
    _s, _h, nodirty = t.mock_domain_flags(ioas, st.MOCK_FLAGS_DEVICE_NO_DIRTY)
    _s, _h, pasid = t.mock_domain_flags(ioas, st.MOCK_FLAGS_DEVICE_PASID)
    got = {}
    for idev in (plain, nodirty, pasid):
        b = raw(uapi.iommu_hw_info(size=40, dev_id=idev, out_max_pasid_log2=7,
                                   out_capabilities=1 << 40))
        t.ioctl(uapi.IOMMU_GET_HW_INFO, b)
        info = uapi.from_bytes(uapi.iommu_hw_info, bytes(b))
        got[idev] = (info.out_capabilities & uapi.IOMMU_HW_CAP_DIRTY_TRACKING,
                     info.out_max_pasid_log2, info.out_capabilities >> 32)
    assert got == {plain: (1, 0, 0), nodirty: (0, 0, 0), pasid: (1, 20, 0)}


def test_hw_info_of_vendor_pci_devices(dm: Machine) -> None:
    # uapi.md §6 + §3.3 payload sizes: SMMUv3 40 bytes, VT-d 24, AMD 16; PASID on PCI
    t = Iommufd(dm)
    want = {SMMU_DEV: (uapi.IOMMU_HW_INFO_TYPE_ARM_SMMUV3, 40),
            VTD_DEV: (uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD, 24),
            "0000:20:00.0": (uapi.IOMMU_HW_INFO_TYPE_AMD, 16)}
    for dev, (dtype, dlen) in want.items():
        vfd = dm.open(dm.vfio_cdev(dev))
        devid = bind(dm, vfd, t.fd).out_devid
        cmd = uapi.iommu_hw_info(size=40, dev_id=devid)
        t.ioctl(uapi.IOMMU_GET_HW_INFO, cmd)
        assert (cmd.out_data_type, cmd.data_len) == (dtype, dlen)
        assert cmd.out_max_pasid_log2 > 0
        assert not cmd.out_capabilities & uapi.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
        with expect_errno(errno.EOPNOTSUPP):
            t.ioctl(uapi.IOMMU_GET_HW_INFO, uapi.iommu_hw_info(
                size=40, dev_id=devid, flags=uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE,
                in_data_type=st.IOMMU_HW_INFO_TYPE_SELFTEST))


def test_pci_device_capabilities_and_vf_pri_rule() -> None:
    # uapi.md §6 GET_HW_INFO (PASID_EXEC/PRIV from the PASID control, max_pasid_log2 only
    # with PASID, ATS_NOT_SUPPORTED newest) and §8 (fault-capable HWPT on a VF with PRI).
    # PCI devices behind the mock IOMMU; the pasid_bits 0 device is not PASID-capable
    m = Machine.from_config({
        "iommus": [{"name": "mock0", "driver": "mock"}],
        "devices": [
            {"name": "0000:00:01.0", "iommu": "mock0", "pasid_exec": True, "pasid_priv": True},
            {"name": "0000:00:02.0", "iommu": "mock0", "pasid_bits": 0, "ats": False},
            {"name": "0000:00:03.0", "iommu": "mock0", "is_virtfn": True}]})
    try:
        t = Iommufd(m)
        ids = []
        for name in ("0000:00:01.0", "0000:00:02.0", "0000:00:03.0"):
            vfd = m.open(m.vfio_cdev(name))
            ids.append(bind(m, vfd, t.fd).out_devid)
        info = []
        for devid in ids[:2]:
            cmd = uapi.iommu_hw_info(size=40, dev_id=devid)
            t.ioctl(uapi.IOMMU_GET_HW_INFO, cmd)
            info.append((cmd.out_max_pasid_log2, cmd.out_capabilities))
        pasid_caps = uapi.IOMMU_HW_CAP_PCI_PASID_EXEC | uapi.IOMMU_HW_CAP_PCI_PASID_PRIV
        ats_not = uapi.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED  # the mock IOMMU has no ATS
        assert info == [(20, pasid_caps | ats_not | 1), (0, ats_not | 1)]
        ioas = t.ioas_alloc()
        fault, _ffd = t.fault_alloc()
        h = t.hwpt_alloc(ids[2], ioas, uapi.IOMMU_HWPT_FAULT_ID_VALID, fault_id=fault)
        vf_fd = m.task.files.open_fds()[-2]  # the VF's cdev (opened last before the fault fd)
        with expect_errno(errno.EINVAL):
            vfio_attach(m, vf_fd, h)
        assert vfio_attach(m, vf_fd, ioas) not in (0, ioas)  # a fault-less HWPT is fine
    finally:
        m.shutdown()


# =========================================================================================
# §6 dirty tracking
# =========================================================================================
def test_set_dirty_tracking_rules(t: Iommufd) -> None:
    # uapi.md §6 HWPT_SET_DIRTY_TRACKING
    ioas, _s, auto, idev = ioas_with_domain(t)
    parent = nest_parent(t, idev, ioas)
    nested = t.nested(idev, parent)
    with expect_errno(errno.EOPNOTSUPP):
        t.ioctl(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, uapi.iommu_hwpt_set_dirty_tracking(
            size=16, flags=2, hwpt_id=99))
    for oid in (99, ioas, nested):
        with expect_errno(errno.ENOENT):
            t.set_dirty_tracking(oid, True)
    with expect_errno(errno.EOPNOTSUPP):  # a domain allocated without dirty tracking
        t.set_dirty_tracking(auto, True)
    h = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    cmd = uapi.iommu_hwpt_set_dirty_tracking(size=16, flags=1, hwpt_id=h)
    setattr(cmd, "__reserved", 0xFFFF)  # not checked
    t.ioctl(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, cmd)
    t.set_dirty_tracking(h, False)


def test_get_dirty_bitmap_rules(t: Iommufd) -> None:
    # uapi.md §6 HWPT_GET_DIRTY_BITMAP: checks, bits, holes, NO_CLEAR, only-set semantics
    ioas, stdev, _auto, idev = ioas_with_domain(t)
    h = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    plain = t.hwpt_alloc(idev, ioas)
    t.replace(stdev, h)
    base = MOCK_APERTURE_START
    va = t.m.mmap(8 * PAGE_SIZE)
    t.map_fixed(ioas, va, 2 * PAGE_SIZE, base)
    t.map_fixed(ioas, va, 2 * PAGE_SIZE, base + 4 * PAGE_SIZE)  # hole at pages 2, 3
    bm = t.m.mmap(PAGE_SIZE)

    def get(iova: int = base, length: int = 8 * PAGE_SIZE, page_size: int = PAGE_SIZE,
            flags: int = 0, hwpt: int = h, data: int = bm) -> None:
        t.get_dirty_bitmap(hwpt, iova, length, page_size, data, flags)

    with expect_errno(errno.EOPNOTSUPP):
        get(flags=2)
    cmd = uapi.iommu_hwpt_get_dirty_bitmap(size=48, hwpt_id=h, iova=base, length=PAGE_SIZE,
                                           page_size=PAGE_SIZE, data=bm)
    setattr(cmd, "__reserved", 1)
    with expect_errno(errno.EOPNOTSUPP):
        t.ioctl(uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, cmd)
    with expect_errno(errno.ENOENT):
        get(hwpt=ioas)
    with expect_errno(errno.EOVERFLOW):
        get(iova=U64_MAX - PAGE_SIZE + 1, length=2 * PAGE_SIZE)
    with expect_errno(errno.EINVAL):  # not aligned to the IOAS alignment (2 KiB)
        get(iova=base + 1024)
    with expect_errno(errno.EINVAL):
        get(page_size=0)
    with expect_errno(errno.EINVAL):  # not aligned to page_size
        get(iova=base + 2048)
    with expect_errno(errno.EOPNOTSUPP):  # a domain that cannot read dirty bits
        get(hwpt=plain)
    t.set_dirty_tracking(h, True)
    t.m.mem_write(bm, b"\x01")
    assert t.mock_dirty(h, base + PAGE_SIZE, PAGE_SIZE, PAGE_SIZE, bm) == 1
    t.m.mem_write(bm, b"\x10")  # a bit the caller left set stays set
    get(flags=uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
    assert t.m.mem_read(bm, 1) == b"\x12"
    t.m.mem_write(bm, b"\x00")
    get()
    assert t.m.mem_read(bm, 1) == b"\x02"  # NO_CLEAR kept it
    t.m.mem_write(bm, b"\x00")
    get()
    assert t.m.mem_read(bm, 1) == b"\x00"  # the previous read cleared it


# =========================================================================================
# §6 HWPT_INVALIDATE
# =========================================================================================
def _inv(t: Iommufd, hwpt: int, uptr: int, dtype: int, entry_len: int, entry_num: int,
         reserved: int = 0) -> tuple[int, int]:
    cmd = uapi.iommu_hwpt_invalidate(size=32, hwpt_id=hwpt, data_uptr=uptr, data_type=dtype,
                                     entry_len=entry_len, entry_num=entry_num)
    setattr(cmd, "__reserved", reserved)
    rc = errno_of(t.ioctl, uapi.IOMMU_HWPT_INVALIDATE, cmd)
    return rc, int(cmd.entry_num)


def test_invalidate_entry_num_is_written_back_on_every_path(t: Iommufd) -> None:
    # uapi.md §6 HWPT_INVALIDATE: entry_num = handled (0 on early errors), always written
    ioas, _stdev, idev, parent, viommu = selftest_viommu(t)
    nested = t.nested(idev, parent, iotlb=0x1234)
    sel = st.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST
    reqs = (st.iommu_hwpt_invalidate_selftest * 3)()
    reqs[0].iotlb_id, reqs[1].iotlb_id, reqs[2].flags = 0, 1, 0x80
    uptr = t.user_struct(bytes(reqs))
    assert _inv(t, nested, uptr, sel, 8, 3, reserved=1) == (errno.EOPNOTSUPP, 0)
    assert _inv(t, nested, 0, sel, 8, 3) == (errno.EINVAL, 0)
    assert _inv(t, nested, uptr, sel, 0, 3) == (errno.EINVAL, 0)
    assert _inv(t, 99, uptr, sel, 8, 3) == (errno.ENOENT, 0)
    assert _inv(t, parent, uptr, sel, 8, 3) == (errno.EINVAL, 0)  # paging HWPT
    assert _inv(t, ioas, uptr, sel, 8, 3) == (errno.EINVAL, 0)
    assert _inv(t, nested, uptr, sel, PAGE_SIZE + 1, 1) == (errno.EINVAL, 0)
    assert _inv(t, nested, uptr, sel, 8, (1 << 19) + 1) == (errno.EINVAL, 0)
    assert _inv(t, nested, 0, sel, 0, 0) == (0, 0)  # a type probe
    # 7.3 hw_pagetable.c bounds data_uptr/entry_len only when entry_num != 0
    assert _inv(t, nested, 0, sel, PAGE_SIZE + 1, 0) == (0, 0)
    assert _inv(t, nested, uptr, sel, 0xFFFF_FFFF, 0) == (0, 0)
    assert _inv(t, viommu, 0, st.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST, PAGE_SIZE + 1,
                0) == (0, 0)
    assert _inv(t, nested, 0, st.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID, 0, 0) == (
        errno.EINVAL, 0)  # the probe checks the type
    assert _inv(t, nested, uptr, sel, 4, 3) == (errno.EINVAL, 0)  # entry shorter than min
    assert _inv(t, nested, uptr, sel, 8, 3) == (errno.EOPNOTSUPP, 2)  # third has bad flags
    t.check_iotlb(nested, 0, 0)
    t.check_iotlb(nested, 1, 0)
    t.check_iotlb(nested, 2, 0x1234)
    assert _inv(t, nested, uptr, sel, 8, 2) == (0, 2)
    vreq = st.iommu_viommu_invalidate_selftest(vdev_id=0x99)
    vsel = st.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST
    assert _inv(t, viommu, t.user_struct(vreq), vsel, 12, 1) == (errno.EINVAL, 0)
    t.vdevice_alloc(viommu, idev, 0x99)
    assert _inv(t, viommu, t.user_struct(vreq), vsel, 12, 1) == (0, 1)
    assert _inv(t, viommu, 0, vsel, 0, 0) == (0, 0)


class _UnmapDuringCall:
    """Plays a second thread of the process: while the driver handles the ioctl, it
    unmaps the user page holding the ioctl's argument, so the write-back faults."""

    def __init__(self, m: Machine, va: int) -> None:
        self.m, self.va = m, va

    def _unmap(self) -> None:
        if self.va:
            self.m.munmap(self.va, PAGE_SIZE)
            self.va = 0

    @hookimpl(tryfirst=True)
    def cache_invalidate_user(self, domain: Any, array: Any) -> None:
        self._unmap()

    @hookimpl(tryfirst=True)
    def domain_alloc_paging_flags(self, dev: Any, flags: int, user_data: Any) -> None:
        self._unmap()


def test_invalidate_write_back_fault_is_EFAULT(t: Iommufd) -> None:
    # uapi.md §6: "if that write faults the ioctl returns EFAULT instead of rc"
    _ioas, _stdev, idev, parent, _viommu = selftest_viommu(t)
    nested = t.nested(idev, parent, iotlb=0x1234)
    reqs = (st.iommu_hwpt_invalidate_selftest * 2)()
    reqs[0].iotlb_id, reqs[1].iotlb_id = 0, 1
    uptr = t.user_struct(bytes(reqs))
    cmd = uapi.iommu_hwpt_invalidate(size=32, hwpt_id=nested, data_uptr=uptr,
                                     data_type=st.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
                                     entry_len=8, entry_num=2)
    va = t.m.mmap(PAGE_SIZE)
    t.m.mem_write(va, bytes(cmd))
    t.m.plugins.register(_UnmapDuringCall(t.m, va), driver="mock")
    with expect_errno(errno.EFAULT):
        t.ioctl(uapi.IOMMU_HWPT_INVALIDATE, va)
    t.check_iotlb(nested, 0, 0)  # the driver did its work: only the write-back failed
    t.check_iotlb(nested, 1, 0)


# =========================================================================================
# §7 vIOMMU, vDEVICE, HW queue
# =========================================================================================
def test_viommu_alloc_rules(t: Iommufd) -> None:
    # uapi.md §7 IOMMU_VIOMMU_ALLOC
    ioas, _s, _h, idev = ioas_with_domain(t)
    parent = nest_parent(t, idev, ioas)
    plain = t.hwpt_alloc(idev, ioas)
    nested = t.nested(idev, parent)

    def alloc(**kw: int) -> uapi.iommu_viommu_alloc:
        args = {"size": 40, "type": SELFTEST_VIOMMU, "dev_id": idev, "hwpt_id": parent}
        args.update(kw)
        c = uapi.iommu_viommu_alloc(**args)
        t.ioctl(uapi.IOMMU_VIOMMU_ALLOC, c)
        return c

    with expect_errno(errno.EOPNOTSUPP):
        alloc(flags=1, dev_id=99)
    with expect_errno(errno.EOPNOTSUPP):  # type DEFAULT
        alloc(type=uapi.IOMMU_VIOMMU_TYPE_DEFAULT, dev_id=99)
    with expect_errno(errno.ENOENT):
        alloc(dev_id=99)
    with expect_errno(errno.EOPNOTSUPP):  # a type the driver does not support
        alloc(type=uapi.IOMMU_VIOMMU_TYPE_ARM_SMMUV3, hwpt_id=99)
    for bad in (99, ioas, nested):  # not a paging HWPT
        with expect_errno(errno.ENOENT):
            alloc(hwpt_id=bad)
    with expect_errno(errno.EINVAL):  # not a nest parent
        alloc(hwpt_id=plain)
    c = uapi.iommu_viommu_alloc(size=40, type=SELFTEST_VIOMMU, dev_id=idev, hwpt_id=parent)
    setattr(c, "__reserved", 0xFFFF)  # not checked
    t.ioctl(uapi.IOMMU_VIOMMU_ALLOC, c)
    assert c.out_viommu_id


def test_viommu_driver_data_and_mmap(t: Iommufd) -> None:
    # uapi.md §7 (mmap of driver regions) + selftest_catalog §2.5 vIOMMU data
    ioas, _s, _h, idev = ioas_with_domain(t)
    parent = nest_parent(t, idev, ioas)
    data = st.iommu_viommu_selftest(in_data=0xBEEF)
    va = t.user_struct(data)
    with expect_errno(errno.EINVAL):  # shorter than the driver's minimum
        t.viommu_alloc(idev, parent, SELFTEST_VIOMMU, va, 4)
    viommu = t.viommu_alloc(idev, parent, SELFTEST_VIOMMU, va, sz(data))
    out = uapi.from_bytes(st.iommu_viommu_selftest, t.m.mem_read(va, sz(data)))
    assert out.out_data == 0xBEEF and out.out_mmap_length == 2 * PAGE_SIZE
    off, length = out.out_mmap_offset, out.out_mmap_length
    with expect_errno(errno.ENXIO):
        t.m.mmap(length, t.fd, off + PAGE_SIZE)
    with expect_errno(errno.ENXIO):
        t.m.mmap(PAGE_SIZE, t.fd, off)
    with expect_errno(errno.EINVAL):
        t.m.mmap(length, t.fd, off, shared=False)
    with expect_errno(errno.EPERM):
        t.m.mmap(length, t.fd, off, prot_exec=True)
    mva = t.m.mmap(length, t.fd, off)
    assert int.from_bytes(t.m.mem_read(mva, 4), "little") == 0xBEEF
    with expect_errno(errno.EBUSY):  # the mapping holds the vIOMMU
        t.destroy(viommu)
    t.m.munmap(mva, length)
    t.destroy(viommu)


def test_vdevice_alloc_rules(dm: Machine) -> None:
    # uapi.md §7 IOMMU_VDEVICE_ALLOC
    t = Iommufd(dm)
    ioas, _stdev, idev, _parent, viommu = selftest_viommu(t)
    _s2, _h2, idev2 = t.mock_domain(ioas)
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    pci = bind(dm, vfd, t.fd).out_devid
    with expect_errno(errno.ENOENT):
        t.vdevice_alloc(99, idev, 1)
    with expect_errno(errno.ENOENT):
        t.vdevice_alloc(viommu, 99, 1)
    with expect_errno(errno.EINVAL):  # a device behind another IOMMU instance
        t.vdevice_alloc(viommu, pci, 1)
    vdev = t.vdevice_alloc(viommu, idev, 1)
    assert vdev
    with expect_errno(errno.EEXIST):  # the device already has a vDEVICE
        t.vdevice_alloc(viommu, idev, 2)
    with expect_errno(errno.EEXIST):  # virt_id already used in this vIOMMU
        t.vdevice_alloc(viommu, idev2, 1)
    assert t.vdevice_alloc(viommu, idev2, 2) == vdev + 1  # the failures took no id


class _VdeviceInitProbe:
    """Runs in front of the SMMUv3 driver's ``vdevice_init``: records what a lookup sees
    while the driver decides, can issue a second VDEVICE_ALLOC meanwhile (another thread
    of the VMM), and can make the driver refuse."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, object]] = []
        self.meanwhile: Any = None
        self.refuse = False

    @hookimpl(tryfirst=True)
    def viommu_vdevice_init(self, vdev: Any) -> None:
        self.seen.append((vdev.viommu.find_dev(vdev.virt_id),
                          vdev.viommu.get_vdev_id(vdev.dev)))
        if self.meanwhile is not None:
            self.meanwhile()
        if self.refuse:
            raise IommuError(errno.ENOSPC, "driver refuses the vDEVICE")


def test_vdevice_slot_is_reserved_until_vdevice_init_accepts() -> None:
    # 7.3 viommu.c: xa_insert(vdevs, virt_id, NULL) before vdevice_init, xa_release on
    # failure, xa_store after: a lookup meanwhile finds nothing, a second alloc of the
    # same virt_id is EEXIST, a refused vDEVICE leaves the virt_id free.
    from tests.arm_smmu_v3.vmm import Vmm, guest_vste

    vmm = Vmm((SMMU_DEV, SMMU_DEV2))
    try:
        probe = _VdeviceInitProbe()
        vmm.m.plugins.register(probe, driver="arm_smmu_v3")
        parent = vmm.hwpt_alloc(vmm.ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
        viommu = vmm.viommu_alloc(parent)
        dev2 = vmm.dev_ids[SMMU_DEV2]
        inner: list[int] = []

        def second_alloc() -> None:
            inner.append(errno_of(vmm.vdevice_alloc, viommu, 0x42, dev2))

        probe.meanwhile, probe.refuse = second_alloc, True
        assert errno_of(vmm.vdevice_alloc, viommu, 0x42) == errno.ENOSPC
        assert probe.seen == [(None, None)]  # the reserved slot reads as NULL
        assert inner == [errno.EEXIST]  # ...but is taken
        probe.meanwhile, probe.refuse = None, False
        probe.seen.clear()
        vdev = vmm.vdevice_alloc(viommu, 0x42)  # the refused one released the virt_id
        assert vdev and probe.seen == [(None, None)]
        assert errno_of(vmm.vdevice_alloc, viommu, 0x42, dev2) == errno.EEXIST
        # Published: the driver now finds the device by its virt_id (a vSTE naming it).
        nested = vmm.nested(viommu, guest_vste())
        vmm.attach(nested)
    finally:
        vmm.close()
    assert vmm.m.kernel_pages_in_use == 0


def test_hw_queue_alloc_rules(t: Iommufd) -> None:
    # uapi.md §7 IOMMU_HW_QUEUE_ALLOC + selftest_catalog §2.5 HW queues
    ioas, _stdev, _idev, _parent, viommu = selftest_viommu(t)
    qtype = st.IOMMU_HW_QUEUE_TYPE_SELFTEST
    va = t.m.mmap(2 * PAGE_SIZE)
    iova = t.map(ioas, va, 2 * PAGE_SIZE)

    def alloc(**kw: int) -> int:
        args = {"size": 40, "viommu_id": viommu, "type": qtype, "index": 0,
                "nesting_parent_iova": iova, "length": PAGE_SIZE}
        args.update(kw)
        c = uapi.iommu_hw_queue_alloc(**args)
        t.ioctl(uapi.IOMMU_HW_QUEUE_ALLOC, c)
        return int(c.out_hw_queue_id)

    with expect_errno(errno.EOPNOTSUPP):
        alloc(flags=1, viommu_id=99, length=0)
    with expect_errno(errno.EOPNOTSUPP):
        alloc(type=uapi.IOMMU_HW_QUEUE_TYPE_DEFAULT, viommu_id=99, length=0)
    with expect_errno(errno.EINVAL):
        alloc(viommu_id=99, length=0)
    with expect_errno(errno.EOVERFLOW):
        alloc(viommu_id=99, nesting_parent_iova=U64_MAX, length=2)
    with expect_errno(errno.ENOENT):
        alloc(viommu_id=99)
    with expect_errno(errno.EOPNOTSUPP):  # a type the vIOMMU does not have
        alloc(type=qtype + 1)
    with expect_errno(errno.ENOENT):  # the IOVA is not mapped in the parent's IOAS
        alloc(nesting_parent_iova=iova + 0x100000)
    with expect_errno(errno.EINVAL):  # mock: index >= 2
        alloc(index=2)
    with expect_errno(errno.EIO):  # mock: index 1 needs index 0
        alloc(index=1)
    q0 = alloc()
    with expect_errno(errno.EEXIST):
        alloc(nesting_parent_iova=iova + PAGE_SIZE)
    q1 = alloc(index=1, nesting_parent_iova=iova + PAGE_SIZE)
    with expect_errno(errno.EBUSY):  # queue 1 depends on queue 0
        t.destroy(q0)
    t.destroy(q1)
    t.destroy(q0)


def test_hw_queue_range_rules(t: Iommufd) -> None:
    # uapi.md §7 HW_QUEUE_ALLOC: page-rounding overflow -> ERANGE; pages that are not
    # physically contiguous -> EFAULT
    ioas, _stdev, _idev, _parent, viommu = selftest_viommu(t)
    qtype = st.IOMMU_HW_QUEUE_TYPE_SELFTEST
    with expect_errno(errno.ERANGE):
        t.hw_queue_alloc(viommu, qtype, 0, 0, U64_MAX - 100)
    a, b = t.m.mmap(PAGE_SIZE), t.m.mmap(PAGE_SIZE)
    t.m.mem_write(b, b"b")  # touch b first: its frame comes before a's
    t.m.mem_write(a, b"a")
    base = MOCK_APERTURE_START + 0x100000
    t.map_fixed(ioas, a, PAGE_SIZE, base)
    t.map_fixed(ioas, b, PAGE_SIZE, base + PAGE_SIZE)
    with expect_errno(errno.EFAULT):
        t.hw_queue_alloc(viommu, qtype, 0, base, 2 * PAGE_SIZE)
    assert t.unmap(ioas, base, 2 * PAGE_SIZE) == 2 * PAGE_SIZE  # nothing stayed pinned


# =========================================================================================
# §7 fault queue and its fd
# =========================================================================================
def _iopf(t: Iommufd, idev: int, grpid: int, pasid: int = 0, addr: int = 0x1000) -> None:
    cmd = mk_cmd(st.IOMMU_TEST_OP_TRIGGER_IOPF)
    tr = cmd.trigger_iopf
    tr.dev_id, tr.pasid, tr.grpid, tr.perm, tr.addr = idev, pasid, grpid, 3, addr
    t.test(cmd)


def _fault_setup(t: Iommufd) -> tuple[int, int, int, int, int]:
    """(ioas, stdev, idev, fault_fd, iopf hwpt) with the device on a fault-capable HWPT."""
    ioas, stdev, _h, idev = ioas_with_domain(t)
    parent = nest_parent(t, idev, ioas)
    fault, ffd = t.fault_alloc()
    iopf = t.nested(idev, parent, uapi.IOMMU_HWPT_FAULT_ID_VALID, fault_id=fault)
    t.replace(stdev, iopf)
    return ioas, stdev, idev, ffd, iopf


def _resp(cookie: int, code: int = 0) -> bytes:
    return uapi.struct_bytes(uapi.iommu_hwpt_page_response(cookie=cookie, code=code))


def test_fault_alloc_rules(t: Iommufd) -> None:
    # uapi.md §7 IOMMU_FAULT_QUEUE_ALLOC: flags; id and fd written; fd is usable
    with expect_errno(errno.EOPNOTSUPP):
        t.ioctl(uapi.IOMMU_FAULT_QUEUE_ALLOC, uapi.iommu_fault_alloc(size=16, flags=1))
    cmd = uapi.iommu_fault_alloc(size=16)
    t.ioctl(uapi.IOMMU_FAULT_QUEUE_ALLOC, cmd)
    assert cmd.out_fault_id == 1 and cmd.out_fault_fd > t.fd
    assert t.m.poll(cmd.out_fault_fd) == POLLOUT
    assert t.m.read(cmd.out_fault_fd, 40) == b""  # nothing queued: 0, no wait


def test_fault_fd_read_granularity_and_whole_groups(t: Iommufd) -> None:
    # uapi.md §7 fault fd read: count % 40 -> ESPIPE; whole groups only; cookies from 1
    _ioas, _stdev, idev, ffd, _iopf_h = _fault_setup(t)
    for n in (1, 39, 41, 8):
        with expect_errno(errno.ESPIPE):
            t.m.read(ffd, n)
    assert t.m.read(ffd, 0) == b""
    _iopf(t, idev, grpid=5, addr=0x5000)
    assert t.m.poll(ffd) == POLLOUT | POLLIN | POLLRDNORM
    _iopf(t, idev, grpid=6, addr=0x6000)
    rec = t.m.read(ffd, 40)  # one group at a time when the count holds one record
    f = uapi.from_bytes(uapi.iommu_hwpt_pgfault, rec)
    assert (f.dev_id, f.grpid, f.addr, f.cookie, f.length, f.perm) == (idev, 5, 0x5000, 1,
                                                                        0, 3)
    assert f.flags & uapi.IOMMU_PGFAULT_FLAGS_LAST_PAGE
    assert not f.flags & uapi.IOMMU_PGFAULT_FLAGS_PASID_VALID
    f2 = uapi.from_bytes(uapi.iommu_hwpt_pgfault, t.m.read(ffd, 400))
    assert (f2.grpid, f2.cookie) == (6, 2)
    assert t.m.poll(ffd) == POLLOUT
    assert t.m.write(ffd, _resp(1)) == 8
    _iopf(t, idev, grpid=7)
    f3 = uapi.from_bytes(uapi.iommu_hwpt_pgfault, t.m.read(ffd, 40))
    assert f3.cookie == 1  # the lowest free cookie is reused


def test_fault_fd_write_rules(t: Iommufd) -> None:
    # uapi.md §7 fault fd write: count % 8 -> ESPIPE; bad code / cookie EINVAL; partial
    _ioas, _stdev, idev, ffd, _iopf_h = _fault_setup(t)
    _iopf(t, idev, grpid=1)
    _iopf(t, idev, grpid=2)
    cookies = [uapi.from_bytes(uapi.iommu_hwpt_pgfault, t.m.read(ffd, 40)).cookie
               for _ in range(2)]
    for n in (1, 7, 9):
        with expect_errno(errno.ESPIPE):
            t.m.write(ffd, bytes(n))
    assert t.m.write(ffd, b"") == 0
    with expect_errno(errno.EINVAL):
        t.m.write(ffd, _resp(cookies[0], 2))
    with expect_errno(errno.EINVAL):
        t.m.write(ffd, _resp(99))
    # A good response followed by a bad one: the bytes consumed are returned.
    assert t.m.write(ffd, _resp(cookies[0]) + _resp(99)) == 8
    with expect_errno(errno.EINVAL):  # answered: the cookie is gone
        t.m.write(ffd, _resp(cookies[0]))
    assert t.m.write(ffd, _resp(cookies[1], uapi.IOMMUFD_PAGE_RESP_INVALID)) == 8


def test_fault_fd_records_carry_the_pasid(t: Iommufd) -> None:
    # uapi.md §7: record fields from the request; PASID_VALID when the PASID is given
    ioas = t.ioas_alloc()
    stdev, _h, idev = t.mock_domain_flags(ioas, st.MOCK_FLAGS_DEVICE_PASID)
    fault, ffd = t.fault_alloc()
    h = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_FAULT_ID_VALID | uapi.IOMMU_HWPT_ALLOC_PASID,
                     fault_id=fault)
    t.replace(stdev, h)
    t.pasid_attach(stdev, 7, h)
    _iopf(t, idev, grpid=3, pasid=7)
    f = uapi.from_bytes(uapi.iommu_hwpt_pgfault, t.m.read(ffd, 40))
    assert f.pasid == 7 and f.flags & uapi.IOMMU_PGFAULT_FLAGS_PASID_VALID


def test_fault_groups_are_answered_when_the_attachment_goes(t: Iommufd) -> None:
    # uapi.md §7: queued and unanswered groups are auto-answered on detach/replace
    ioas, stdev, idev, ffd, _iopf_h = _fault_setup(t)
    _iopf(t, idev, grpid=1)
    cookie = uapi.from_bytes(uapi.iommu_hwpt_pgfault, t.m.read(ffd, 40)).cookie
    _iopf(t, idev, grpid=2)
    t.replace(stdev, ioas)
    assert t.m.poll(ffd) == POLLOUT  # the queued group is gone
    with expect_errno(errno.EINVAL):  # and the delivered one was answered already
        t.m.write(ffd, _resp(cookie))


# =========================================================================================
# §7 vEVENTQ and its fd
# =========================================================================================
def _vevent_setup(t: Iommufd, depth: int = 2) -> tuple[int, int, int, int, int]:
    """(viommu, idev, veventq, fd, virt_id): the device on a nested HWPT of the vIOMMU
    with a vDEVICE, so TRIGGER_VEVENT reaches the queue."""
    _ioas, stdev, idev, _parent, viommu = selftest_viommu(t)
    virt = 0x55
    t.vdevice_alloc(viommu, idev, virt)
    nested = t.nested(idev, viommu)
    t.replace(stdev, nested)
    q, fd = t.veventq_alloc(viommu, SELFTEST_VEVENTQ, depth)
    return viommu, idev, q, fd, virt


def _events(raw_: bytes) -> list[tuple[int, int, int | None]]:
    """(flags, sequence, virt_id or None) per record."""
    out = []
    pos = 0
    while pos < len(raw_):
        hdr = uapi.from_bytes(uapi.iommufd_vevent_header, raw_[pos : pos + 8])
        pos += 8
        if hdr.flags & uapi.IOMMU_VEVENTQ_FLAG_LOST_EVENTS:
            out.append((hdr.flags, hdr.sequence, None))
            continue
        out.append((hdr.flags, hdr.sequence, int.from_bytes(raw_[pos : pos + 4], "little")))
        pos += 4
    return out


def test_veventq_alloc_rules(t: Iommufd) -> None:
    # uapi.md §7 IOMMU_VEVENTQ_ALLOC
    _ioas, _stdev, _idev, _parent, viommu = selftest_viommu(t)

    def alloc(**kw: int) -> uapi.iommu_veventq_alloc:
        args = {"size": 32, "viommu_id": viommu, "type": SELFTEST_VEVENTQ,
                "veventq_depth": 2}
        args.update(kw)
        c = uapi.iommu_veventq_alloc(**args)
        t.ioctl(uapi.IOMMU_VEVENTQ_ALLOC, c)
        return c

    with expect_errno(errno.EOPNOTSUPP):
        alloc(flags=1, viommu_id=99, veventq_depth=0)
    b = raw(uapi.iommu_veventq_alloc(size=32, viommu_id=99, type=SELFTEST_VEVENTQ))
    b[28] = 1  # __reserved
    with expect_errno(errno.EOPNOTSUPP):
        t.ioctl(uapi.IOMMU_VEVENTQ_ALLOC, b)
    with expect_errno(errno.EOPNOTSUPP):
        alloc(type=uapi.IOMMU_VEVENTQ_TYPE_DEFAULT, viommu_id=99, veventq_depth=0)
    with expect_errno(errno.EINVAL):
        alloc(viommu_id=99, veventq_depth=0)
    with expect_errno(errno.EINVAL):  # newest: depth above 2^19
        alloc(viommu_id=99, veventq_depth=(1 << 19) + 1)
    with expect_errno(errno.ENOENT):
        alloc(viommu_id=99)
    c = alloc()
    assert c.out_veventq_id and c.out_veventq_fd > t.fd
    with expect_errno(errno.EEXIST):  # one vEVENTQ per type
        alloc()
    alloc(type=uapi.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3)  # another type is fine
    assert t.m.poll(c.out_veventq_fd) == 0  # no EPOLLOUT
    with expect_errno(errno.EINVAL):  # read-only fops
        t.m.write(c.out_veventq_fd, b"x" * 8)


def test_veventq_read_has_no_granularity_and_stops_before_what_does_not_fit(
        t: Iommufd) -> None:
    # uapi.md §7 vEVENTQ read, as the newest kernel does it (selftest_catalog §4.7 #63,
    # checked in the newest iommufd.c selftest, which also bounds veventq_depth): a count
    # below the 8-byte header, or one that cannot hold the first record, is EINVAL; the
    # older eventq.c returned 0 there
    _viommu, idev, _q, fd, virt = _vevent_setup(t, depth=8)
    for n in (0, 7):
        with expect_errno(errno.EINVAL):
            t.m.read(fd, n)
    assert t.m.read(fd, 64) == b""  # nothing queued: 0, no wait
    t.trigger_vevent(idev, 3)
    assert t.m.poll(fd) == POLLIN | POLLRDNORM
    for n in (0, 7, 8, 11):  # a header fits from 8 on, its 4-byte payload not before 12
        with expect_errno(errno.EINVAL):
            t.m.read(fd, n)
    assert _events(t.m.read(fd, 12)) == [(0, 0, virt)]
    assert _events(t.m.read(fd, 30)) == [(0, 1, virt), (0, 2, virt)]  # 24 of 30 bytes
    assert t.m.poll(fd) == 0


def test_veventq_lost_events_and_sequence_numbers(t: Iommufd) -> None:
    # uapi.md §7: a full queue keeps one LOST_EVENTS header at its tail, consuming a
    # sequence number each time; the next real event replaces it (a gap in sequences)
    _viommu, idev, _q, fd, virt = _vevent_setup(t, depth=2)
    t.trigger_vevent(idev, 5)  # 0, 1 queued; 2, 3, 4 lost (one header, sequence 4)
    got = _events(t.m.read(fd, 4096))
    assert got == [(0, 0, virt), (0, 1, virt), (uapi.IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 4, None)]
    t.trigger_vevent(idev, 3)  # 5, 6 queued, 7 lost
    assert _events(t.m.read(fd, 4096)) == [
        (0, 5, virt), (0, 6, virt), (uapi.IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 7, None)]
    t.trigger_vevent(idev, 2)  # 8 queued; 9 queued
    t.trigger_vevent(idev, 1)  # 10 lost
    t.trigger_vevent(idev, 0)
    assert _events(t.m.read(fd, 12)) == [(0, 8, virt)]
    t.trigger_vevent(idev, 1)  # room again: 11 replaces the LOST header at the tail
    assert _events(t.m.read(fd, 4096)) == [(0, 9, virt), (0, 11, virt)]


def test_veventq_fd_holds_its_object(t: Iommufd) -> None:
    # uapi.md §2.1/§7: an open vEVENTQ fd holds a users ref; closing it allows DESTROY
    viommu, _idev, q, fd, _virt = _vevent_setup(t)
    with expect_errno(errno.EBUSY):
        t.destroy(q)
    t.m.close(fd)
    t.destroy(q)
    assert t.veventq_alloc(viommu, SELFTEST_VEVENTQ, 1)[0] == q


# =========================================================================================
# §8 device attach / replace / detach
# =========================================================================================
def test_attach_pt_id_lookup(t: Iommufd) -> None:
    # uapi.md §8: pt_id missing -> ENOENT; not an IOAS or HWPT -> EINVAL
    ioas, stdev, _h, _idev = ioas_with_domain(t)
    fault, _ffd = t.fault_alloc()
    with expect_errno(errno.ENOENT):
        t.mock_domain(99)
    with expect_errno(errno.EINVAL):
        t.mock_domain(fault)
    with expect_errno(errno.ENOENT):
        t.replace(stdev, 99)
    with expect_errno(errno.EINVAL):
        t.replace(stdev, fault)
    with expect_errno(errno.EINVAL):
        t.replace(stdev, stdev)  # a SELFTEST object


def test_auto_domain_selection(t: Iommufd) -> None:
    # uapi.md §8: an IOAS reuses the first compatible *auto* HWPT; manual HWPTs are never
    # chosen; an incompatible one (EINVAL) is skipped and a new one allocated (flags 0)
    ioas = t.ioas_alloc()
    _s1, auto, idev = t.mock_domain(ioas)
    manual = t.hwpt_alloc(idev, ioas)
    _s2, h2, _i2 = t.mock_domain(ioas)
    assert h2 == auto != manual
    # The auto domain has no dirty tracking (flags 0), so a NO_DIRTY device joins it.
    _s3, h3, _i3 = t.mock_domain_flags(ioas, st.MOCK_FLAGS_DEVICE_NO_DIRTY)
    assert h3 == auto
    dirty = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    with expect_errno(errno.EINVAL):  # a dirty-tracking domain on a NO_DIRTY device
        t.mock_domain_flags(dirty, st.MOCK_FLAGS_DEVICE_NO_DIRTY)
    # A HWPT given directly keeps its id.
    assert t.mock_domain(manual)[1] == manual


def test_auto_domain_skips_another_drivers_hwpt(dm: Machine) -> None:
    # uapi.md §8: an incompatible candidate (EINVAL) is skipped, a new auto HWPT made
    t = Iommufd(dm)
    ioas = t.ioas_alloc()
    _s, mock_auto, _i = t.mock_domain(ioas)
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    bind(dm, vfd, t.fd)
    with expect_errno(errno.EINVAL):  # the mock's HWPT given directly
        vfio_attach(dm, vfd, mock_auto)
    assert vfio_attach(dm, vfd, ioas) not in (0, ioas, mock_auto)


def test_replace_rules(t: Iommufd) -> None:
    # uapi.md §8 replace: same HWPT is a no-op; the old auto HWPT dies when unused
    ioas, stdev, auto, idev = ioas_with_domain(t)
    assert t.replace(stdev, auto) == auto
    manual = t.hwpt_alloc(idev, ioas)
    assert t.replace(stdev, manual) == manual
    with expect_errno(errno.ENOENT):
        t.destroy(auto)
    new_auto = t.replace(stdev, ioas)  # a fresh auto HWPT
    assert new_auto not in (manual, 0)
    t.destroy(manual)


def test_pasid_attach_compat_rules(t: Iommufd) -> None:
    # uapi.md §8 PASID compatibility (iommufd_hwpt_pasid_compat) and EBUSY/EINVAL rules
    ioas = t.ioas_alloc()
    stdev, _auto, idev = t.mock_domain_flags(ioas, st.MOCK_FLAGS_DEVICE_PASID)
    plain = t.hwpt_alloc(idev, ioas)
    pasid_h = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_PASID)
    with expect_errno(errno.EINVAL):  # an auto domain (flags 0) cannot serve a PASID
        t.pasid_attach(stdev, 100, ioas)
    with expect_errno(errno.EINVAL):  # HWPT without IOMMU_HWPT_ALLOC_PASID
        t.pasid_attach(stdev, 100, plain)
    with expect_errno(errno.EINVAL):  # the RID's HWPT (auto) is not PASID-capable
        t.pasid_attach(stdev, 100, pasid_h)
    t.replace(stdev, pasid_h)
    assert t.pasid_attach(stdev, 100, pasid_h) == pasid_h
    with expect_errno(errno.EBUSY):  # attach again at the same PASID
        t.pasid_attach(stdev, 100, pasid_h)
    with expect_errno(errno.EINVAL):  # RID -> non-PASID HWPT while a PASID is attached
        t.replace(stdev, plain)
    t.pasid_check(stdev, 100, pasid_h)
    with expect_errno(errno.EINVAL):  # replace of an unattached PASID
        t.pasid_replace(stdev, 200, pasid_h)
    t.pasid_detach(stdev, 100)
    t.pasid_detach(stdev, 100)  # detaching what is not attached: a no-op
    t.pasid_check(stdev, 100, 0)
    t.replace(stdev, plain)
    plain_dev, _h, _i = t.mock_domain(ioas)
    with expect_errno(errno.EINVAL):  # a device without PASID support
        t.pasid_attach(plain_dev, 100, pasid_h)


def test_failed_pasid_replace_keeps_the_old_domain(t: Iommufd) -> None:
    # uapi.md §8 replace: on failure nothing changes (mock injects ENOMEM at PASID 1024)
    ioas = t.ioas_alloc()
    stdev, _auto, idev = t.mock_domain_flags(ioas, st.MOCK_FLAGS_DEVICE_PASID)
    a = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_PASID)
    b = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_PASID)
    t.replace(stdev, a)
    t.pasid_attach(stdev, st.IOMMU_TEST_PASID_RESERVED, a)
    with expect_errno(errno.ENOMEM):
        t.pasid_replace(stdev, st.IOMMU_TEST_PASID_RESERVED, b)
    t.pasid_check(stdev, st.IOMMU_TEST_PASID_RESERVED, a)
    t.destroy(b)  # b gained no reference


def test_vfio_attach_then_replace_and_detach_is_a_no_op_when_detached(dm: Machine) -> None:
    # uapi.md §8/§9: the first ATTACH attaches, later ones replace; DETACH is silent
    t = Iommufd(dm)
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    devid = bind(dm, vfd, t.fd).out_devid
    detach = vf.vfio_device_detach_iommufd_pt(argsz=12)
    assert dm.ioctl(vfd, vf.VFIO_DEVICE_DETACH_IOMMUFD_PT, detach) == 0
    ioas = t.ioas_alloc()
    auto = vfio_attach(dm, vfd, ioas)
    assert auto not in (0, ioas)
    manual = t.hwpt_alloc(devid, ioas)
    assert vfio_attach(dm, vfd, manual) == manual  # replace, no detach needed
    with expect_errno(errno.ENOENT):  # the auto HWPT went with its last device
        t.destroy(auto)
    with expect_errno(errno.EBUSY):
        t.destroy(manual)
    dm.ioctl(vfd, vf.VFIO_DEVICE_DETACH_IOMMUFD_PT, detach)
    dm.ioctl(vfd, vf.VFIO_DEVICE_DETACH_IOMMUFD_PT, detach)
    t.destroy(manual)


def test_vfio_pasid_attach_replace_detach(dm: Machine) -> None:
    # uapi.md §8/§9: PASID attach needs PASID-capable HWPTs on both the PASID and the RID
    t = Iommufd(dm)
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    devid = bind(dm, vfd, t.fd).out_devid
    ioas = t.ioas_alloc()
    with expect_errno(errno.EINVAL):  # an IOAS means an auto (non-PASID) domain
        vfio_attach(dm, vfd, ioas, pasid=3)
    h1 = t.hwpt_alloc(devid, ioas, uapi.IOMMU_HWPT_ALLOC_PASID)
    h2 = t.hwpt_alloc(devid, ioas, uapi.IOMMU_HWPT_ALLOC_PASID)
    assert vfio_attach(dm, vfd, h1, pasid=3) == h1
    assert vfio_attach(dm, vfd, h2, pasid=3) == h2  # replace
    with expect_errno(errno.EINVAL):  # RID to a non-PASID auto domain while PASID 3 is on
        vfio_attach(dm, vfd, ioas)
    vfio_attach(dm, vfd, h1)
    det = vf.vfio_device_detach_iommufd_pt(argsz=12, flags=vf.VFIO_DEVICE_DETACH_PASID,
                                           pasid=3)
    dm.ioctl(vfd, vf.VFIO_DEVICE_DETACH_IOMMUFD_PT, det)
    t.destroy(h2)
    with expect_errno(errno.EINVAL):  # beyond the device's 20 PASID bits
        vfio_attach(dm, vfd, h1, pasid=1 << 20)


def test_attach_reserves_the_devices_regions_in_the_ioas(dm: Machine) -> None:
    # uapi.md §8: a non-PASID attach reserves the device's reserved regions in the IOAS;
    # a collision with a mapping or an allowed range is EADDRINUSE (VT-d: MSI window)
    t = Iommufd(dm)
    vfd = dm.open(dm.vfio_cdev(VTD_DEV))
    bind(dm, vfd, t.fd)
    ioas = t.ioas_alloc()
    va = t.m.mmap(PAGE_SIZE)
    t.map_fixed(ioas, va, PAGE_SIZE, 0xFEE00000)
    with expect_errno(errno.EADDRINUSE):
        vfio_attach(dm, vfd, ioas)
    t.unmap(ioas, 0, U64_MAX)
    t.allow_iovas(ioas, [(0xFEE80000, 0xFEF7FFFF)])
    with expect_errno(errno.EADDRINUSE):
        vfio_attach(dm, vfd, ioas)
    assert iova_ranges(t, ioas) == ([(0, U64_MAX)], 1)  # the failures left no reservation
    t.allow_iovas(ioas, [])
    vfio_attach(dm, vfd, ioas)
    ranges, _align = iova_ranges(t, ioas)
    assert all(last < 0xFEE00000 or start > 0xFEEFFFFF for start, last in ranges)
    with expect_errno(errno.EINVAL):  # FIXED map into a reserved range
        t.map_fixed(ioas, va, PAGE_SIZE, 0xFEE00000)
    dm.ioctl(vfd, vf.VFIO_DEVICE_DETACH_IOMMUFD_PT, vf.vfio_device_detach_iommufd_pt(argsz=8))
    assert iova_ranges(t, ioas) == ([(0, U64_MAX)], 1)  # the auto HWPT and its holes went


def test_group_devices_share_one_hwpt_and_one_owner() -> None:
    # uapi.md §8 attach rules (per group one HWPT) and §9 BIND DMA ownership: another
    # owner of the group is EPERM (iommu_device_claim_dma_owner, checked upstream; EBUSY
    # is for a group whose domain is not the default one)
    m = Machine.from_config({
        "iommus": [{"name": "smmu0", "driver": "arm_smmu_v3"}],
        "devices": [{"name": SMMU_DEV, "iommu": "smmu0", "group": "g"},
                    {"name": SMMU_DEV2, "iommu": "smmu0", "group": "g"}]})
    try:
        t = Iommufd(m)
        other = Iommufd(m)
        va, vb = m.open(m.vfio_cdev(SMMU_DEV)), m.open(m.vfio_cdev(SMMU_DEV2))
        a = bind(m, va, t.fd).out_devid
        with expect_errno(errno.EPERM):  # the group is owned by another iommufd
            bind(m, vb, other.fd)
        b = bind(m, vb, t.fd).out_devid
        ioas = t.ioas_alloc()
        h = vfio_attach(m, va, ioas)
        manual = t.hwpt_alloc(b, ioas)
        with expect_errno(errno.EINVAL):  # another device of the group uses another HWPT
            vfio_attach(m, vb, manual)
        assert vfio_attach(m, vb, ioas) == h
        m.close(va)
        m.close(vb)
        with expect_errno(errno.ENOENT):
            t.destroy(a)
    finally:
        m.shutdown()


# =========================================================================================
# §9 the VFIO cdev flow
# =========================================================================================
def test_vfio_cdev_everything_but_bind_is_EINVAL_before_bind(dm: Machine) -> None:
    # uapi.md §9: until BIND succeeds every other ioctl, read, write, mmap -> EINVAL
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    for req in (vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, vf.VFIO_DEVICE_DETACH_IOMMUFD_PT,
                uapi._IO(vf.VFIO_TYPE, vf.VFIO_BASE + 7)):
        with expect_errno(errno.EINVAL):
            dm.ioctl(vfd, req, vf.vfio_device_attach_iommufd_pt(argsz=16))
    with expect_errno(errno.EINVAL):
        dm.read(vfd, 8)
    with expect_errno(errno.EINVAL):
        dm.write(vfd, b"x")
    with expect_errno(errno.EINVAL):
        dm.mmap(PAGE_SIZE, vfd, 0)
    with expect_errno(errno.ENOENT):  # no such node
        dm.open("/dev/vfio/devices/vfio99")


def test_vfio_bind_argument_rules(dm: Machine) -> None:
    # uapi.md §9 BIND: get_user, argsz >= 16, copy_struct_from_user against 24 bytes
    t = Iommufd(dm)
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    with expect_errno(errno.EFAULT):
        dm.ioctl(vfd, vf.VFIO_DEVICE_BIND_IOMMUFD, None)
    with expect_errno(errno.EINVAL):
        bind(dm, vfd, t.fd, argsz=15)
    b = raw(vf.vfio_device_bind_iommufd(argsz=32, iommufd=t.fd), extra=b"\0" * 7 + b"\1")
    with expect_errno(errno.E2BIG):  # trailing bytes past 24 (fix 2025-10)
        dm.ioctl(vfd, vf.VFIO_DEVICE_BIND_IOMMUFD, b)
    with expect_errno(errno.EFAULT):  # argsz says 32 but the buffer holds 24
        dm.ioctl(vfd, vf.VFIO_DEVICE_BIND_IOMMUFD,
                 raw(vf.vfio_device_bind_iommufd(argsz=32, iommufd=t.fd)))
    with expect_errno(errno.EINVAL):
        bind(dm, vfd, -1)
    with expect_errno(errno.EINVAL):
        bind(dm, vfd, t.fd, flags=2)
    with expect_errno(errno.EFAULT):  # the 16-byte token cannot be read
        bind(dm, vfd, t.fd, flags=vf.VFIO_DEVICE_BIND_FLAG_TOKEN, token=8)
    tok = t.user_struct(bytes(range(16)))
    with expect_errno(errno.EINVAL):  # neither a PF with VFs nor a VF: no token wanted
        bind(dm, vfd, t.fd, flags=vf.VFIO_DEVICE_BIND_FLAG_TOKEN, token=tok)
    # A 16-byte caller (no token_uuid_ptr) binds; only out_devid (+12, 4 bytes) is written.
    b16 = raw(vf.vfio_device_bind_iommufd(argsz=16, iommufd=t.fd))[:16] + b"\xee" * 8
    before = bytes(b16)
    dm.ioctl(vfd, vf.VFIO_DEVICE_BIND_IOMMUFD, b16)
    devid = int.from_bytes(b16[12:16], "little")
    assert devid and bytes(b16[:12]) == before[:12] and bytes(b16[16:]) == before[16:]


def test_vfio_bind_bad_iommufd_fd(dm: Machine) -> None:
    # uapi.md §9 BIND: not an fd -> EBADF; not an iommufd -> EBADFD
    t = Iommufd(dm)
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    _fid, ffd = t.fault_alloc()
    closed = dm.open("/dev/iommu")
    dm.close(closed)
    with expect_errno(errno.EBADF):
        bind(dm, vfd, closed)
    with expect_errno(errno.EBADF):
        bind(dm, vfd, 0x7FFF_FFFF)
    for fd in (vfd, ffd):
        with expect_errno(errno.EBADFD):
            bind(dm, vfd, fd)
    assert bind(dm, vfd, t.fd).out_devid  # the failures left the device unbound


def test_vfio_bind_once_per_file_and_per_device(dm: Machine) -> None:
    # uapi.md §9 BIND: already bound -> EINVAL (checked before the token); a second open
    # of the same cdev cannot bind while the first one is (vfio_df_open: EINVAL)
    t = Iommufd(dm)
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    devid = bind(dm, vfd, t.fd).out_devid
    with expect_errno(errno.EINVAL):
        bind(dm, vfd, t.fd)
    with expect_errno(errno.EINVAL):  # already bound wins over a token that faults
        bind(dm, vfd, t.fd, flags=vf.VFIO_DEVICE_BIND_FLAG_TOKEN, token=8)
    vfd2 = dm.open(dm.vfio_cdev(SMMU_DEV))
    with expect_errno(errno.EINVAL):
        bind(dm, vfd2, t.fd)
    with expect_errno(errno.EBUSY):  # the device object carries the driver's reference
        t.destroy(devid)
    dm.close(vfd)  # unbind
    with expect_errno(errno.ENOENT):
        t.destroy(devid)
    assert bind(dm, vfd2, t.fd).out_devid == devid  # lowest free id again


def test_vfio_attach_argument_rules(dm: Machine) -> None:
    # uapi.md §9 ATTACH_IOMMUFD_PT: copy_from_user (never E2BIG), argsz, flags, PASID size
    t = Iommufd(dm)
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    bind(dm, vfd, t.fd)
    ioas = t.ioas_alloc()

    def attach(argsz: int, flags: int = 0, pt_id: int = ioas, pasid: int = 0,
               extra: bytes = b"") -> bytearray:
        b = raw(vf.vfio_device_attach_iommufd_pt(argsz=argsz, flags=flags, pt_id=pt_id,
                                                 pasid=pasid), extra=extra)
        dm.ioctl(vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, b)
        return b

    with expect_errno(errno.EFAULT):
        dm.ioctl(vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, None)
    with expect_errno(errno.EINVAL):
        attach(11)
    with expect_errno(errno.EINVAL):
        attach(16, flags=2)
    with expect_errno(errno.EINVAL):  # PASID needs argsz >= 16
        attach(15, flags=vf.VFIO_DEVICE_ATTACH_PASID)
    with expect_errno(errno.ENOENT):
        attach(16, pt_id=99)
    b = attach(64, extra=b"\xff" * 48)  # trailing bytes ignored
    hwpt = int.from_bytes(b[8:12], "little")
    assert hwpt not in (0, ioas) and b[16:] == b"\xff" * 48
    b = attach(12)[:12]  # a 12-byte caller is enough without PASID
    assert int.from_bytes(b[8:12], "little") == hwpt  # the same auto HWPT again


def test_vfio_detach_argument_rules(dm: Machine) -> None:
    # uapi.md §9 DETACH_IOMMUFD_PT
    t = Iommufd(dm)
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    bind(dm, vfd, t.fd)

    def detach(argsz: int, flags: int = 0, pasid: int = 0) -> None:
        dm.ioctl(vfd, vf.VFIO_DEVICE_DETACH_IOMMUFD_PT,
                 vf.vfio_device_detach_iommufd_pt(argsz=argsz, flags=flags, pasid=pasid))

    with expect_errno(errno.EINVAL):
        detach(7)
    with expect_errno(errno.EINVAL):
        detach(12, flags=2)
    with expect_errno(errno.EINVAL):
        detach(11, flags=vf.VFIO_DEVICE_DETACH_PASID)
    detach(8)
    detach(12, flags=vf.VFIO_DEVICE_DETACH_PASID, pasid=5)
    with expect_errno(errno.ENOTTY):  # after bind, an unknown ioctl goes to vfio-pci
        dm.ioctl(vfd, uapi._IO(vf.VFIO_TYPE, vf.VFIO_BASE + 40), None)


def test_vfio_close_unbinds_and_releases(dm: Machine) -> None:
    # uapi.md §9: unbind on close (PASIDs, then RID); the iommufd outlives its fd while a
    # device is bound
    t = Iommufd(dm)
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    devid = bind(dm, vfd, t.fd).out_devid
    ioas = t.ioas_alloc()
    h = t.hwpt_alloc(devid, ioas, uapi.IOMMU_HWPT_ALLOC_PASID)
    vfio_attach(dm, vfd, h)
    vfio_attach(dm, vfd, h, pasid=9)
    dm.close(vfd)
    t.destroy(h)  # no device holds it any more
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    bind(dm, vfd, t.fd)
    dm.close(t.fd)
    dm.close(vfd)
    assert dm.kernel_pages_in_use == dm.kernel_pages_baseline


# =========================================================================================
# §11 and rules reached through a second thread, a misbehaving driver or the credentials
# =========================================================================================
def test_object_creating_ioctl_whose_response_faults(t: Iommufd) -> None:
    # uapi.md §2 / §5: respond fault -> EFAULT, the object is aborted (its id freed)
    ioas, _stdev, _hwpt, idev = ioas_with_domain(t)
    cmd = uapi.iommu_hwpt_alloc(size=sz(uapi.iommu_hwpt_alloc), dev_id=idev, pt_id=ioas)
    va = t.m.mmap(PAGE_SIZE)
    t.m.mem_write(va, bytes(cmd))
    pages = t.m.kernel_pages_in_use
    probe = _UnmapDuringCall(t.m, va)
    t.m.plugins.register(probe, driver="mock")
    with expect_errno(errno.EFAULT):
        t.ioctl(uapi.IOMMU_HWPT_ALLOC, va)
    t.m.plugins.unregister(probe)
    assert t.m.kernel_pages_in_use == pages  # the domain went with the object
    hwpt = t.hwpt_alloc(idev, ioas)
    assert t.ioas_alloc() == hwpt + 1  # the aborted object's id was reused


def test_rlimit_mode_set_without_cap_sys_resource(t: Iommufd) -> None:
    # uapi.md §5 IOMMU_OPTION RLIMIT_MODE SET: EPERM without CAP_SYS_RESOURCE (the
    # process drops it, as capset(2) would)
    t.m.task.cap_sys_resource = False
    with expect_errno(errno.EPERM):
        t.option(uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_SET, val64=1)
    assert t.option(uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_GET) == 0


class _PagingForNested:
    """A misbehaving driver: domain_alloc_nested hands back a paging domain."""

    @hookimpl(tryfirst=True)
    def domain_alloc_nested(self, dev: Any, parent: Any, flags: int, user_data: Any) -> Any:
        return dev.iommu.ops.domain_alloc_paging_flags(dev, 0, None)


def test_nested_alloc_returning_a_non_nested_domain(t: Iommufd) -> None:
    # uapi.md §6 / §11: driver returned a non-NESTED domain -> EOPNOTSUPP (newest)
    ioas, stdev, _h, idev = ioas_with_domain(t)
    parent = nest_parent(t, idev, ioas)
    t.replace(stdev, parent)
    pages = t.m.kernel_pages_in_use
    t.m.plugins.register(_PagingForNested(), driver="mock")
    with expect_errno(errno.EOPNOTSUPP):
        t.nested(idev, parent)
    assert t.m.kernel_pages_in_use == pages  # the wrong domain was freed


def test_map_over_rlimit_memlock(t: Iommufd) -> None:
    # uapi.md §5 IOAS_MAP: over RLIMIT_MEMLOCK -> ENOMEM (the process drops
    # CAP_IPC_LOCK, which bypasses the accounting, and lowers the limit)
    t.m.task.cap_ipc_lock = False
    t.m.task.rlimit_memlock = 2 * PAGE_SIZE
    ioas, _stdev, _h, _idev = ioas_with_domain(t)
    va = t.m.mmap(4 * PAGE_SIZE)
    with expect_errno(errno.ENOMEM):
        t.map(ioas, va, 3 * PAGE_SIZE)
    iova = t.map(ioas, va, 2 * PAGE_SIZE)  # within the limit
    with expect_errno(errno.ENOMEM):
        t.map(ioas, va + 2 * PAGE_SIZE, PAGE_SIZE)
    t.unmap(ioas, iova, 2 * PAGE_SIZE)  # unpinning gives the pages back
    t.map(ioas, va + 2 * PAGE_SIZE, PAGE_SIZE)


class _NotCoherent:
    @hookimpl(tryfirst=True)
    def capable(self, dev: Any, cap: int) -> bool | None:
        return False if cap == IommuCap.CACHE_COHERENCY else None


def test_bind_to_an_iommu_that_is_not_cache_coherent(dm: Machine) -> None:
    # uapi.md §9 BIND: IOMMU not cache-coherent -> EINVAL. (MSI not isolated -> EPERM,
    # a PF/VF token -> EACCES and a group in legacy use -> EBUSY need what the Machine
    # does not have: every IOMMU remaps interrupts, no SR-IOV pairing, no group nodes.)
    dm.plugins.register(_NotCoherent(), driver="arm_smmu_v3")
    fd = dm.open("/dev/iommu")
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    with expect_errno(errno.EINVAL):
        bind(dm, vfd, fd)
    info = vf.vfio_device_info(argsz=24)
    with expect_errno(errno.EINVAL):  # not bound
        dm.ioctl(vfd, vf.VFIO_DEVICE_GET_INFO, info)
    dm.close(vfd)
    dm.close(fd)


# =========================================================================================
# The Machine boundary: odd arguments fail with OSError, nothing else escapes
# =========================================================================================
ODD = [None, -1, -(1 << 70), 1 << 70, 1 << 64, 3.5, "x", b"ab", bytearray(3), [], object()]


def _only_oserror(fn: Any, *args: Any, **kw: Any) -> int | None:
    try:
        fn(*args, **kw)
    except OSError as e:
        assert e.errno in errno.errorcode, e
        return int(e.errno or 0)
    except DmaFault:  # a device's DMA may fault: that is its documented exception
        return None
    except Exception as e:  # the point of the test: nothing else may escape
        pytest.fail(f"{fn.__name__}{args!r}: {type(e).__name__}: {e}")
    return None


def test_boundary_odd_arguments_raise_only_oserror(dm: Machine) -> None:
    # DESIGN.md "Errors": no exception but OSError crosses the Machine for bad input
    fd = dm.open("/dev/iommu")
    vfd = dm.open(dm.vfio_cdev(SMMU_DEV))
    dev = SMMU_DEV
    for o in ODD:
        calls = [
            (dm.open, o), (dm.close, o), (dm.poll, o), (dm.vfio_cdev, o), (dm.device, o),
            (dm.ioctl, o, uapi.IOMMU_DESTROY, bytearray(8)),
            (dm.ioctl, fd, o, bytearray(8)),
            (dm.ioctl, fd, uapi.IOMMU_IOAS_ALLOC, o),
            (dm.ioctl, fd, vf.VFIO_CHECK_EXTENSION, o),
            (dm.ioctl, vfd, vf.VFIO_DEVICE_BIND_IOMMUFD, o),
            (dm.read, o, 8), (dm.read, fd, o), (dm.write, o, b"x"), (dm.write, fd, o),
            (dm.write, vfd, o), (dm.mmap, o), (dm.mmap, PAGE_SIZE, o),
            (dm.mmap, PAGE_SIZE, fd, o), (dm.munmap, o, PAGE_SIZE), (dm.munmap, 0x10000, o),
            (dm.mem_write, o, b"x"), (dm.mem_write, 0x10000, o), (dm.mem_read, o, 1),
            (dm.mem_read, 0x10000, o), (dm.dma_read, o, 0, 1), (dm.dma_read, dev, o, 1),
            (dm.dma_read, dev, 0, o), (dm.dma_read, dev, 0, 1, o), (dm.dma_write, o, 0, b"x"),
            (dm.dma_write, dev, o, b"x"), (dm.dma_write, dev, 0, o),
            (dm.dma_write, dev, 0, b"x", o),
        ]
        for fn, *args in calls:
            _only_oserror(fn, *args)
    _only_oserror(dm.mmap, PAGE_SIZE, addr=3.5)


def test_boundary_errnos(dm: Machine) -> None:
    # The C meaning of each argument: EBADF for fds, ENOTTY for requests, EFAULT for
    # pointers, EINVAL for counts and lengths (rw_verify_area, do_vmi_munmap), ENOMEM for
    # a mapping larger than the address space
    fd = dm.open("/dev/iommu")
    closed = dm.open("/dev/iommu")
    dm.close(closed)
    assert _only_oserror(dm.ioctl, closed, uapi.IOMMU_DESTROY, bytearray(8)) == errno.EBADF
    assert _only_oserror(dm.close, closed) == errno.EBADF
    assert _only_oserror(dm.read, closed, 8) == errno.EBADF
    assert _only_oserror(dm.ioctl, fd, "x", bytearray(8)) == errno.ENOTTY
    assert _only_oserror(dm.ioctl, fd, uapi.IOMMU_DESTROY, 3.5) == errno.EFAULT
    assert _only_oserror(dm.ioctl, fd, uapi.IOMMU_DESTROY, bytes(8)) == errno.EFAULT
    assert _only_oserror(dm.ioctl, fd, uapi.IOMMU_DESTROY, -1) == errno.EFAULT
    # ``unsigned int cmd``: only the low 32 bits of the request count.
    assert dm.ioctl(fd, uapi.IOMMU_IOAS_ALLOC | (1 << 32), uapi.iommu_ioas_alloc(size=12)) == 0
    assert _only_oserror(dm.read, fd, -1) == errno.EINVAL
    assert _only_oserror(dm.read, fd, 8) == errno.EINVAL  # /dev/iommu has no read
    assert _only_oserror(dm.write, fd, "text") == errno.EFAULT
    assert _only_oserror(dm.mmap, 1 << 48) == errno.ENOMEM
    assert _only_oserror(dm.mmap, 0) == errno.EINVAL
    assert _only_oserror(dm.munmap, 0x10000, 1 << 64) == errno.EINVAL
    assert _only_oserror(dm.munmap, 0x10001, PAGE_SIZE) == errno.EINVAL
    assert _only_oserror(dm.mem_read, -1, 1) == errno.EFAULT
    assert _only_oserror(dm.mem_read, 0x10000, -1) == errno.EINVAL
    assert _only_oserror(dm.mem_write, 0x10000, 5) == errno.EFAULT
    assert _only_oserror(dm.dma_read, "nope", 0, 1) == errno.ENODEV
    assert _only_oserror(dm.dma_read, SMMU_DEV, -1, 1) == errno.EINVAL
    assert _only_oserror(dm.dma_read, SMMU_DEV, 1 << 64, 1) == errno.EINVAL
    assert _only_oserror(dm.dma_read, SMMU_DEV, 0, MAX_RW + 1) == errno.EINVAL
    assert _only_oserror(dm.dma_read, SMMU_DEV, 0, 1, -1) == errno.EINVAL
    assert _only_oserror(dm.open, "/dev/nope") == errno.ENOENT
    assert _only_oserror(dm.open, None) == errno.EFAULT
    # A huge munmap walks only what is populated (it used to visit every page).
    va = dm.mmap(PAGE_SIZE)
    dm.mem_write(va, b"x")
    dm.munmap(PAGE_SIZE, (1 << 47) - PAGE_SIZE)
    assert _only_oserror(dm.mem_read, va, 1) == errno.EFAULT


def test_boundary_buffers_of_the_wrong_size(m: Machine) -> None:
    # uapi.md §2: the struct is read at the size the caller claims; a buffer that is
    # shorter than that is a fault, never a Python error
    t = Iommufd(m)
    for n in range(0, 12):
        got = _only_oserror(t.ioctl, uapi.IOMMU_IOAS_ALLOC, bytearray(n))
        assert got in (errno.EFAULT, errno.EINVAL)
    b = bytearray(12)
    b[0:4] = (12).to_bytes(4, "little")
    assert _only_oserror(t.ioctl, uapi.IOMMU_IOAS_ALLOC, memoryview(b)[:8]) == errno.EFAULT
    assert _only_oserror(t.ioctl, uapi.IOMMU_IOAS_ALLOC, (ctypes.c_uint32 * 3)(12)) is None
