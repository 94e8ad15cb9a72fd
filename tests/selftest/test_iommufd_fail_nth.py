"""tools/testing/selftests/iommu/iommufd_fail_nth.c: run a flow that succeeds, then again
with its 1st, 2nd, 3rd... fault-injection point failing (``Machine.fail_nth``, the
``/proc/self/task/<tid>/fail-nth`` of the C program), until a run reaches no armed point.

The kernel looks for splats; the simulation checks what they would reveal: every failing
run fails with a clean errno *because the armed point fired*, and after the fixture's
teardown nothing is left behind (kernel pages back to the baseline, no pin, no charge, no
mock device or group), and the last run succeeds.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from iommu_sim import Machine
from tests.fault_sweep import INJECTED_ERRNOS
from tests.selftest.utils import (
    MOCK_APERTURE_START,
    PAGE_SIZE,
    RW,
    Iommufd,
    memfd_mmap,
    new_machine,
    st,
    sz,
    uapi,
)

#: iommufd_fail_nth.c's BUFFER_SIZE.
BUFFER_SIZE = 2 * 1024 * 1024
#: fail_nth_next's ASSERT_GT(1000, iteration) in 7.3.
MAX_ITERATIONS = 1000


@dataclass
class Globals:
    """The program's globals (constructors ``setup_buffer``) and the C stack buffers."""

    m: Machine
    buffer: int
    mfd: int
    mfd_buffer: int
    scratch: int  # the stack: ranges[10], tmp[32], tmp_big[4096], info, data


@dataclass
class Fixture:
    """FIXTURE(basic_fail_nth)."""

    m: Machine
    fd: int = -1
    access_id: int = 0  # the access fd
    stdev_id: int = 0
    pasid: int = 0

    @property
    def t(self) -> Iommufd:
        return Iommufd(self.m, self.fd)


@dataclass
class FailNth:
    """``struct fail_nth_state``."""

    m: Machine
    iteration: int = 0
    fired: list[int] = field(default_factory=list)

    def enable(self) -> None:
        """``fail_nth_enable``: arm the count from here on (the setup before is swept)."""
        if self.iteration:
            self.m.fail_nth = self.iteration


Flow = Callable[[Fixture, FailNth, Globals], None]


def open_iommufd(f: Fixture) -> Iommufd:
    f.fd = f.m.open("/dev/iommu")
    return f.t


def open_ioas(f: Fixture) -> tuple[Iommufd, int]:
    """The common start: the iommufd, an IOAS, a 32-byte temporary memory limit (pin
    batches of 4 pages)."""
    t = open_iommufd(f)
    ioas_id = t.ioas_alloc()
    t.set_temp_memory_limit(32)
    return t, ioas_id


def teardown(f: Fixture, g: Globals) -> None:
    """FIXTURE_TEARDOWN(basic_fail_nth): close the access fd, detach the PASID, close the
    iommufd and check that no page of ``buffer`` is still pinned."""
    m = f.m
    if f.access_id:
        m.close(f.access_id)
    if f.pasid and f.stdev_id:
        with contextlib.suppress(OSError):
            f.t.pasid_detach(f.stdev_id, f.pasid)
    if f.fd == -1:
        return
    m.close(f.fd)
    t = Iommufd(m)
    t.check_refs(g.buffer, BUFFER_SIZE, 0)
    m.close(t.fd)


def leftovers(m: Machine) -> dict[str, object]:
    """What a run may leave behind; the same as before the first run once torn down."""
    alloc = m.platform.alloc
    subsys_locked = {u: n for u, n in m.iommufd.user_locked_vm.items() if n}
    return {
        "kernel pages": m.kernel_pages_in_use,
        "pins": alloc.pin_total(),
        "orphaned frames": alloc.orphaned_frames(),
        "pinned_vm": m.mm.pinned_vm,
        "locked_vm": m.mm.locked_vm,
        "user locked_vm": subsys_locked,
        "devices": sorted(m.platform.devices),
        "groups": sorted(m.core.groups),
        "fds": m.task.files.open_fds(),
    }


def run_fail_nth(flow: Flow) -> FailNth:
    """TEST_FAIL_NTH: the flow once, then for every N until a run reaches no armed point.
    Returns the state (``iteration``: runs with injection + 1)."""
    m = new_machine()
    buffer = m.mmap(BUFFER_SIZE, shared=True)
    mfd, mfd_buffer = memfd_mmap(m, BUFFER_SIZE)
    g = Globals(m, buffer, mfd, mfd_buffer, m.mmap(16 * PAGE_SIZE))
    nth = FailNth(m)
    base = leftovers(m)
    f = Fixture(m)
    flow(f, nth, g)  # ASSERT_EQ(0, test_nth_...)
    failed: OSError | None = None
    while True:
        # fail_nth_next
        assert nth.iteration < MAX_ITERATIONS, "the flow never ran out of points"
        if nth.iteration:
            left = m.fail_nth
            m.fail_nth = 0
            if left:
                break
            nth.fired.append(nth.iteration)
        nth.iteration += 1
        teardown(f, g)
        assert leftovers(m) == base, f"N={nth.iteration - 1}: the run left state behind"
        f = Fixture(m)
        failed = None
        try:
            flow(f, nth, g)
        except OSError as e:
            failed = e
            assert e.errno in INJECTED_ERRNOS, f"N={nth.iteration}: {e!r}"
            assert m.fail_nth == 0, (f"N={nth.iteration}: {e!r} although the armed point "
                                     "did not fire")
    assert failed is None, f"the last run (N={nth.iteration}) failed: {failed!r}"
    teardown(f, g)
    assert leftovers(m) == base
    m.shutdown()
    return nth


# ======================================================================================
# the tests
# ======================================================================================
def basic(f: Fixture, nth: FailNth, g: Globals) -> None:
    """Cover ioas.c."""
    m = f.m
    nth.enable()
    t = open_iommufd(f)
    ioas_id = t.ioas_alloc()
    ranges = g.scratch
    size = sz(uapi.iommu_iova_range)
    cmd = uapi.iommu_ioas_iova_ranges(size=sz(uapi.iommu_ioas_iova_ranges), num_iovas=10,
                                      ioas_id=ioas_id, allowed_iovas=ranges)
    t.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
    allow = uapi.iommu_ioas_allow_iovas(size=sz(uapi.iommu_ioas_allow_iovas),
                                        ioas_id=ioas_id, num_iovas=1, allowed_iovas=ranges)
    m.mem_write(ranges, uapi.struct_bytes(uapi.iommu_iova_range(
        start=16 * 1024, last=BUFFER_SIZE + 16 * 1024 * 600 - 1)))
    t.ioctl(uapi.IOMMU_IOAS_ALLOW_IOVAS, allow)
    iova = t.map(ioas_id, g.buffer, BUFFER_SIZE)
    t.copy(RW, ioas_id, iova, ioas_id, 0, 10 * size)
    t.unmap(ioas_id, iova, BUFFER_SIZE)
    # Failure path of no IOVA to unmap
    with contextlib.suppress(OSError):
        t.unmap(ioas_id, iova, BUFFER_SIZE)


def _map_domain(f: Fixture, nth: FailNth, map_: Callable[[Iommufd, int], object]) -> None:
    t, ioas_id = open_ioas(f)
    nth.enable()
    stdev_id, _hwpt, _idev = t.mock_domain(ioas_id)
    map_(t, ioas_id)
    t.destroy(stdev_id)
    t.mock_domain(ioas_id)


def map_domain(f: Fixture, nth: FailNth, g: Globals) -> None:
    """iopt_area_fill_domains() and iopt_area_fill_domain()."""
    _map_domain(f, nth, lambda t, ioas_id: t.map(ioas_id, g.buffer, 262144))


def map_file_domain(f: Fixture, nth: FailNth, g: Globals) -> None:
    """iopt_area_fill_domains() and iopt_area_fill_domain(), of a memfd."""
    _map_domain(f, nth, lambda t, ioas_id: t.map_file(ioas_id, g.mfd, 0, 262144))


def map_two_domains(f: Fixture, nth: FailNth, g: Globals) -> None:
    t, ioas_id = open_ioas(f)
    stdev_id, _hwpt, _idev = t.mock_domain(ioas_id)
    nth.enable()
    stdev_id2, _hwpt2, _idev2 = t.mock_domain(ioas_id)
    t.map(ioas_id, g.buffer, 262144)
    t.destroy(stdev_id)
    t.destroy(stdev_id2)
    t.mock_domain(ioas_id)
    t.mock_domain(ioas_id)


def access_rw(f: Fixture, nth: FailNth, g: Globals) -> None:
    t, ioas_id = open_ioas(f)
    iova = t.map(ioas_id, g.buffer, 262144)
    nth.enable()
    f.access_id = t.access_create(ioas_id)
    tmp, tmp_big = g.scratch, g.scratch + 2 * PAGE_SIZE
    t.access_rw(f.access_id, iova, 64, tmp, 0)  # READ
    t.access_rw(f.access_id, iova, 64, tmp, st.MOCK_ACCESS_RW_WRITE)
    t.access_rw(f.access_id, iova, 64, tmp, st.MOCK_ACCESS_RW_SLOW_PATH)
    t.access_rw(f.access_id, iova, 64, tmp,
                st.MOCK_ACCESS_RW_SLOW_PATH | st.MOCK_ACCESS_RW_WRITE)
    t.access_rw(f.access_id, iova, 8 * 4096, tmp_big, st.MOCK_ACCESS_RW_SLOW_PATH)
    f.m.close(f.access_id)
    f.access_id = 0


def _access_pin(f: Fixture, nth: FailNth, g: Globals, with_domain: bool) -> None:
    t, ioas_id = open_ioas(f)
    stdev_id = t.mock_domain(ioas_id)[0] if with_domain else 0
    iova = t.map(ioas_id, g.buffer, BUFFER_SIZE)
    f.access_id = t.access_create(ioas_id, st.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    nth.enable()
    access_pages_id = t.access_pin(f.access_id, iova, BUFFER_SIZE, g.buffer)
    t.access_unpin(f.access_id, access_pages_id)
    f.m.close(f.access_id)
    f.access_id = 0
    if with_domain:
        t.destroy(stdev_id)


def access_pin(f: Fixture, nth: FailNth, g: Globals) -> None:
    """pages.c access functions."""
    _access_pin(f, nth, g, with_domain=False)


def access_pin_domain(f: Fixture, nth: FailNth, g: Globals) -> None:
    """iopt_pages_fill_xarray()."""
    _access_pin(f, nth, g, with_domain=True)


def device(f: Fixture, nth: FailNth, g: Globals) -> None:
    """device.c."""
    m = f.m
    info, data = g.scratch, g.scratch + 4 * PAGE_SIZE
    m.mem_write(data, uapi.struct_bytes(st.iommu_hwpt_selftest(
        iotlb=st.IOMMU_TEST_IOTLB_DEFAULT)))
    t = open_iommufd(f)
    ioas_id = t.ioas_alloc()
    ioas_id2 = t.ioas_alloc()
    iova = MOCK_APERTURE_START
    t.map(ioas_id, g.buffer, PAGE_SIZE, iova, RW | uapi.IOMMU_IOAS_MAP_FIXED_IOVA)
    t.map(ioas_id2, g.buffer, PAGE_SIZE, iova, RW | uapi.IOMMU_IOAS_MAP_FIXED_IOVA)
    nth.enable()
    f.stdev_id, _hwpt, idev_id = t.mock_domain_flags(ioas_id, st.MOCK_FLAGS_DEVICE_PASID)
    hw_info = uapi.iommu_hw_info(size=sz(uapi.iommu_hw_info), dev_id=idev_id,
                                 data_len=sz(st.iommu_test_hw_info), data_uptr=info,
                                 flags=uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE,
                                 in_data_type=uapi.IOMMU_HW_INFO_TYPE_DEFAULT)
    t.ioctl(uapi.IOMMU_GET_HW_INFO, hw_info)
    hwpt_id = t.hwpt_alloc(idev_id, ioas_id, uapi.IOMMU_HWPT_ALLOC_PASID)
    t.replace(f.stdev_id, ioas_id2)
    t.replace(f.stdev_id, hwpt_id)
    hwpt_id = t.hwpt_alloc(idev_id, ioas_id, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT
                           | uapi.IOMMU_HWPT_ALLOC_PASID)
    viommu_id = t.viommu_alloc(idev_id, hwpt_id, st.IOMMU_VIOMMU_TYPE_SELFTEST)
    t.vdevice_alloc(viommu_id, idev_id, 0)
    t.hw_queue_alloc(viommu_id, st.IOMMU_HW_QUEUE_TYPE_SELFTEST, 0, iova, PAGE_SIZE)
    fault_id, fault_fd = t.fault_alloc()
    m.close(fault_fd)
    t.hwpt_alloc(idev_id, hwpt_id, uapi.IOMMU_HWPT_FAULT_ID_VALID,
                 st.IOMMU_HWPT_DATA_SELFTEST, data, sz(st.iommu_hwpt_selftest), fault_id)
    _veventq_id, veventq_fd = t.veventq_alloc(viommu_id, st.IOMMU_VEVENTQ_TYPE_SELFTEST, 2)
    m.close(veventq_fd)
    test_hwpt_id = t.hwpt_alloc(idev_id, ioas_id, uapi.IOMMU_HWPT_ALLOC_PASID)
    # Tests for pasid attach/replace/detach
    f.pasid = 200
    try:
        t.pasid_attach(f.stdev_id, f.pasid, hwpt_id)
    except OSError:
        f.pasid = 0
        raise
    t.pasid_replace(f.stdev_id, f.pasid, test_hwpt_id)
    t.pasid_detach(f.stdev_id, f.pasid)
    f.pasid = 0


FLOWS: dict[str, Flow] = {fn.__name__: fn for fn in (
    basic, map_domain, map_file_domain, map_two_domains, access_rw, access_pin,
    access_pin_domain, device)}


#: At least this many points fire in each sweep (what the flow allocates and pins after
#: fail_nth_enable()); fewer means injection no longer reaches them.
MIN_FIRED = {"basic": 12, "map_domain": 50, "map_file_domain": 50, "map_two_domains": 50,
             "access_rw": 10, "access_pin": 100, "access_pin_domain": 3, "device": 60}


class Test_basic_fail_nth:
    """TEST_FAIL_NTH(basic_fail_nth, ...): every sweep injects at many points, every
    failing run fails cleanly, the last one succeeds."""

    @pytest.mark.parametrize("name", list(FLOWS))
    def test(self, name: str) -> None:
        nth = run_fail_nth(FLOWS[name])
        assert nth.fired == list(range(1, nth.iteration))
        assert len(nth.fired) >= MIN_FIRED[name], f"{name}: {len(nth.fired)} points fired"


def test_fail_nth_proc_file_errnos() -> None:
    """``Machine.fail_nth`` takes what the proc file takes: EINVAL for a negative or
    non-integer count, ERANGE above UINT_MAX; it reads back what is left."""
    m = new_machine()
    for bad, err in ((-1, errno.EINVAL), ("3", errno.EINVAL), (1.0, errno.EINVAL),
                     (True, errno.EINVAL), (1 << 32, errno.ERANGE)):
        with pytest.raises(OSError) as ei:
            m.fail_nth = bad  # type: ignore[assignment]
        assert ei.value.errno == err, bad
    m.fail_nth = (1 << 32) - 1
    assert m.fail_nth == (1 << 32) - 1
    m.fail_nth = 10
    fd = m.open("/dev/iommu")  # getname, the struct file, the iommufd_ctx
    assert m.fail_nth == 7
    m.fail_nth = 3
    with pytest.raises(OSError) as ei:
        m.open("/dev/iommu")
    assert ei.value.errno == errno.ENOMEM and m.fail_nth == 0
    assert m.task.files.open_fds() == [fd]
    m.close(fd)
    m.shutdown()


def test_fail_nth_is_per_task_and_not_inherited() -> None:
    """A forked child starts with fail-nth 0 and its points do not count the parent's."""
    m = new_machine()
    m.fail_nth = 1
    child = m.fork()
    assert child.fail_nth == 0
    assert m.fail_nth == 1
    fd = child.open("/dev/iommu")  # the child's allocations do not touch the parent's count
    assert m.fail_nth == 1
    with pytest.raises(OSError) as ei:
        m.open("/dev/iommu")
    assert ei.value.errno == errno.ENOMEM
    assert m.fail_nth == 0
    child.close(fd)
    child.exit()
    with pytest.raises(OSError) as ei:
        child.fail_nth = 1
    assert ei.value.errno == errno.ESRCH
    m.shutdown()
