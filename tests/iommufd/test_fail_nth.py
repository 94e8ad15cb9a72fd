"""Fault injection (``Machine.fail_nth``) against whole flows, checked from the inside.

* Sweeps: a flow through nesting, vIOMMUs, vDEVICEs, HW queues, PASIDs, dirty tracking and
  access pins runs with its 1st, 2nd, ... point failing until it completes; every failing
  ioctl fails cleanly and leaves the state as it found it.
* A hypothesis property over the random flows of :mod:`tests.iommufd.test_robustness`:
  before a random call the next N-th point is armed; whatever the flow and N, a failed
  call leaves no partial state (objects, references, areas, reservations, domains,
  groups, pins, charges, kernel pages, fds are as before it) and closing everything
  gives every page back.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st_
from hypothesis.stateful import rule

from iommu_sim import Machine
from iommufd import uapi
from iommufd import uapi_selftest as st
from iommufd import uapi_vfio as vf
from iommufd.ioas import IommufdIoas
from iommufd.main import IommufdFile
from iommufd.private import IommufdCtx
from tests.fault_sweep import INJECTED_ERRNOS, fail_nth_sweep
from tests.iommufd.invariants import check_ictx, ictx_of
from tests.iommufd.test_robustness import _SETTINGS, IommufdStateMachine
from tests.selftest.utils import MOCK_APERTURE_START, PAGE_SIZE, Iommufd, new_machine


def snapshot(m: Machine, ictx: IommufdCtx) -> dict[str, Any]:
    """Everything a failed call must leave as it was."""
    objs = {oid: None if o is None else (type(o).__name__, o.users)
            for oid, o in ictx.objects.items()}
    ioas = {}
    for oid, o in ictx.objects.items():
        if isinstance(o, IommufdIoas):
            iopt = o.iopt
            ioas[oid] = (
                [(a.iova, a.last, a.pages is not None, a.storage, a.num_accesses)
                 for a in iopt.areas.values()],
                [(r[0], r[1]) for r in iopt.reserved], dict(iopt.allowed),
                [id(d) for d in iopt.domains], iopt.iova_alignment, sorted(iopt.accesses),
                [h.id for h in o.hwpt_list])
    groups = {gid: (g.owner_cnt, g.owner is None, id(g.domain), id(g.blocking_domain),
                    sorted(g.pasid_array), [d.name for d in g.devices])
              for gid, g in m.core.groups.items()}
    igroups = {gid: (g.refs, {p: (a.hwpt.id if a.hwpt else 0, sorted(a.devices))
                              for p, a in g.attach.items()})
               for gid, g in ictx.groups.items()}
    alloc = m.platform.alloc
    return {
        "objects": objs, "ioas": ioas, "groups": groups, "igroups": igroups,
        "mmaps": list(ictx.mmaps), "kernel pages": m.kernel_pages_in_use,
        "pins": alloc.pin_total(), "orphans": alloc.orphaned_frames(),
        "pinned_vm": m.mm.pinned_vm, "locked_vm": m.mm.locked_vm,
        "user locked_vm": {u: n for u, n in m.iommufd.user_locked_vm.items() if n},
        "devices": {n: d.iommu is not None for n, d in m.platform.devices.items()},
        "fds": m.task.files.open_fds(),
    }


def checked_call(m: Machine, ictx: IommufdCtx, fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn``; if it fails, it must fail with an errno and change nothing."""
    before = snapshot(m, ictx)
    armed = m.fail_nth
    try:
        return fn(*args)
    except OSError as e:
        assert e.errno in errno.errorcode, f"not a Linux errno: {e!r}"
        if armed and m.fail_nth == 0:
            assert e.errno in INJECTED_ERRNOS, e
        after = snapshot(m, ictx)
        diff = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert not diff, f"{getattr(fn, '__name__', fn)} failed ({e}) leaving {diff}"
        raise


# ======================================================================================
# sweeps
# ======================================================================================
Flow = Callable[[Machine, Iommufd, int, Callable[..., Any]], None]


def flow_nested(m: Machine, t: Iommufd, buf: int, call: Callable[..., Any]) -> None:
    """IOAS, map, mock domain, nest parent, nested HWPT, vIOMMU, invalidate."""
    data = t.user_struct(st.iommu_hwpt_selftest(iotlb=st.IOMMU_TEST_IOTLB_DEFAULT))
    req = t.user_struct(st.iommu_hwpt_invalidate_selftest(
        flags=st.IOMMU_TEST_INVALIDATE_FLAG_ALL))
    ioas = call(t.ioas_alloc)
    iova = call(t.map_fixed, ioas, buf, 16 * PAGE_SIZE, MOCK_APERTURE_START)
    _stdev, _hwpt, idev = call(t.mock_domain, ioas)
    parent = call(t.hwpt_alloc, idev, ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
    sz = ctypes.sizeof(st.iommu_hwpt_selftest)
    nested = call(t.hwpt_alloc, idev, parent, 0, st.IOMMU_HWPT_DATA_SELFTEST, data, sz)
    viommu = call(t.viommu_alloc, idev, parent, st.IOMMU_VIOMMU_TYPE_SELFTEST)
    call(t.hwpt_alloc, idev, viommu, 0, st.IOMMU_HWPT_DATA_SELFTEST, data, sz)
    rc, done = call(t.invalidate, nested, req, st.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 8, 1)
    if rc:
        raise OSError(rc, "IOMMU_HWPT_INVALIDATE")
    assert done == 1
    call(t.check_map, parent, iova, 16 * PAGE_SIZE, buf)


def flow_pasid_viommu(m: Machine, t: Iommufd, buf: int, call: Callable[..., Any]) -> None:
    """PASID attach (PASID tables), a vIOMMU with an mmap region, a vDEVICE, a HW queue,
    dirty tracking, an access pin."""
    data = t.user_struct(st.iommu_viommu_selftest(in_data=1))
    ioas = call(t.ioas_alloc)
    iova = call(t.map_fixed, ioas, buf, 16 * PAGE_SIZE, MOCK_APERTURE_START)
    stdev, _hwpt, idev = call(t.mock_domain_flags, ioas, st.MOCK_FLAGS_DEVICE_PASID)
    pasid_hwpt = call(t.hwpt_alloc, idev, ioas, uapi.IOMMU_HWPT_ALLOC_PASID
                      | uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    call(t.replace, stdev, pasid_hwpt)
    call(t.pasid_attach, stdev, 300, pasid_hwpt)
    call(t.set_dirty_tracking, pasid_hwpt, True)
    parent = call(t.hwpt_alloc, idev, ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = call(t.viommu_alloc, idev, parent, st.IOMMU_VIOMMU_TYPE_SELFTEST, data, 24)
    call(t.vdevice_alloc, viommu, idev, 7)
    call(t.hw_queue_alloc, viommu, st.IOMMU_HW_QUEUE_TYPE_SELFTEST, 0, iova, PAGE_SIZE)
    afd = call(t.access_create, ioas, st.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    call(t.access_pin, afd, iova + PAGE_SIZE, 2 * PAGE_SIZE, buf + PAGE_SIZE)
    call(t.pasid_detach, stdev, 300)


def _check_ictxs(m: Machine, n: int) -> None:
    for fd in m.task.files.open_fds():
        if isinstance(m.task.files.get(fd), IommufdFile):
            check_ictx(m, ictx_of(m, fd))


@pytest.mark.parametrize("flow", [flow_nested, flow_pasid_viommu], ids=lambda f: f.__name__)
def test_fail_nth_sweep(flow: Flow) -> None:
    """N = 1, 2, ...: the N-th point of the flow fails, cleanly and changing nothing,
    until none is left."""

    def run(m: Machine, arm: Callable[[], None]) -> None:
        buf = m.mmap(16 * PAGE_SIZE)
        m.mem_write(buf, b"\x5a" * 16 * PAGE_SIZE)
        t = Iommufd(m)
        ictx = ictx_of(m, t.fd)
        arm()
        flow(m, t, buf, lambda fn, *args: checked_call(m, ictx, fn, *args))

    assert fail_nth_sweep(new_machine, run, _check_ictxs) > 30


# ======================================================================================
# the property
# ======================================================================================
class FailNthStateMachine(IommufdStateMachine):
    """The random flows of test_robustness; a rule arms the N-th point of the next call."""

    #: Calls that failed because the armed point fired, over the whole run.
    injected = 0

    def __init__(self) -> None:
        super().__init__()
        self.next_nth = 0

    @rule(n=st_.one_of(st_.integers(1, 4), st_.integers(1, 60)))
    def arm(self, n: int) -> None:
        """The N-th point the following calls reach fails (the count goes on from call
        to call, as a thread's does between system calls)."""
        self.next_nth = n

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        m = self.m
        ictx = ictx_of(m, self.t.fd)
        armed = m.fail_nth = self.next_nth
        try:
            return checked_call(m, ictx, lambda: fn(*args, **kwargs))
        except OSError:
            FailNthStateMachine.injected += bool(armed and m.fail_nth == 0)
            return None
        finally:
            # What is left carries over to the next call; nothing else is injected.
            self.next_nth, m.fail_nth = m.fail_nth, 0


def test_fail_nth_never_leaves_partial_state() -> None:
    FailNthStateMachine.TestCase.settings = settings(
        max_examples=80, stateful_step_count=40, **_SETTINGS)  # type: ignore[arg-type]
    FailNthStateMachine.injected = 0
    FailNthStateMachine.TestCase().runTest()
    assert FailNthStateMachine.injected >= 50, FailNthStateMachine.injected


# ======================================================================================
# the vendor drivers
# ======================================================================================
VENDORS = {"arm_smmu_v3": ("0000:00:01.0", uapi.IOMMU_VIOMMU_TYPE_ARM_SMMUV3),
           "intel_vtd": ("0000:10:00.0", 0),
           "amd_vi": ("0000:20:00.0", uapi.IOMMU_VIOMMU_TYPE_AMD)}
_IOVA = 1 << 24


def _vfio_attach(m: Machine, vfd: int, pt: int, pasid: int | None = None) -> None:
    at = vf.vfio_device_attach_iommufd_pt(argsz=ctypes.sizeof(vf.vfio_device_attach_iommufd_pt),
                                          pt_id=pt)
    if pasid is not None:
        at.flags, at.pasid = vf.VFIO_DEVICE_ATTACH_PASID, pasid
    m.ioctl(vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)


def vendor_flow(m: Machine, driver: str, call: Callable[..., Any]) -> None:
    """A VMM on a real device: auto domain, map, a nest parent it moves to, a vIOMMU (or a
    dirty-tracking domain), a PASID domain, DMA."""
    dev, vtype = VENDORS[driver]
    buf = m.mmap(16 * PAGE_SIZE)
    t = Iommufd(m, call(m.open, "/dev/iommu"))
    ioas = call(t.ioas_alloc)
    call(t.map_fixed, ioas, buf, 16 * PAGE_SIZE, _IOVA)
    vfd = call(m.open, m.vfio_cdev(dev))
    bind = vf.vfio_device_bind_iommufd(argsz=ctypes.sizeof(vf.vfio_device_bind_iommufd),
                                       iommufd=t.fd)
    call(m.ioctl, vfd, vf.VFIO_DEVICE_BIND_IOMMUFD, bind)
    idev = int(bind.out_devid)
    call(_vfio_attach, m, vfd, ioas)
    parent = call(t.hwpt_alloc, idev, ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
    call(_vfio_attach, m, vfd, parent)
    if vtype:
        call(t.viommu_alloc, idev, parent, vtype)
    else:
        dirty = call(t.hwpt_alloc, idev, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        call(t.set_dirty_tracking, dirty, True)
    if driver != "amd_vi":  # AMD v1 paging domains take no PASID
        pasid_hwpt = call(t.hwpt_alloc, idev, ioas, uapi.IOMMU_HWPT_ALLOC_PASID)
        call(_vfio_attach, m, vfd, pasid_hwpt)  # the RID must be PASID compatible
        call(_vfio_attach, m, vfd, pasid_hwpt, 5)
    m.dma_write(dev, _IOVA + PAGE_SIZE, b"dma")
    assert m.mem_read(buf + PAGE_SIZE, 3) == b"dma"


@pytest.mark.parametrize("driver", list(VENDORS))
def test_fail_nth_sweep_vendor(driver: str) -> None:
    """The vendor drivers' allocations (masters, device state, domains, CD and PASID
    tables, vIOMMUs) fail cleanly too, and their unwinding frees what they took."""
    dev = VENDORS[driver][0]

    def make() -> Machine:
        return Machine.from_config({"iommus": [{"name": "io0", "driver": driver}],
                                    "devices": [{"name": dev, "iommu": "io0"}]})

    def run(m: Machine, arm: Callable[[], None]) -> None:
        arm()
        vendor_flow(m, driver, lambda fn, *a: fn(*a))

    def group_released(m: Machine, n: int) -> None:
        _check_ictxs(m, n)
        group = m.device(dev).iommu_group
        m.close_all()
        assert group.owner is None and group.domain is group.default_domain, f"N={n}"

    assert fail_nth_sweep(make, run, group_released) > 30


def test_doc_example_runs() -> None:
    """docs/fault_injection.rst: the first example does what it says."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "fault_injection.rst").read_text()
    block = re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", text)[0]
    ns: dict[str, Any] = {}
    exec(compile("\n".join(line[3:] for line in block.splitlines()), "doc", "exec"), ns)
    m: Machine = ns["m"]
    assert m.fail_nth == 0 and m.task.files.open_fds() == []
    assert m.kernel_pages_in_use == m.kernel_pages_baseline
    m.shutdown()


@pytest.mark.parametrize("flow", [flow_nested, flow_pasid_viommu], ids=lambda f: f.__name__)
def test_destroy_paths_reach_no_point(flow: Flow) -> None:
    """Destroy and unpin paths cannot fail in Linux (they run on backup memory): with the
    count armed, closing everything a flow built reaches no fault-injection point."""
    m = new_machine()
    buf = m.mmap(16 * PAGE_SIZE)
    t = Iommufd(m)
    flow(m, t, buf, lambda fn, *args: fn(*args))
    m.fail_nth = 1
    m.close_all()
    assert m.fail_nth == 1
    assert m.kernel_pages_in_use == m.kernel_pages_baseline and m.mm.pinned_pages == 0
    m.shutdown()


@pytest.mark.parametrize("driver", list(VENDORS))
def test_vendor_destroy_paths_reach_no_point(driver: str) -> None:
    dev = VENDORS[driver][0]
    m = Machine.from_config({"iommus": [{"name": "io0", "driver": driver}],
                             "devices": [{"name": dev, "iommu": "io0"}]})
    vendor_flow(m, driver, lambda fn, *a: fn(*a))
    m.fail_nth = 1
    m.close_all()
    assert m.fail_nth == 1
    assert m.kernel_pages_in_use == m.kernel_pages_baseline and m.mm.pinned_pages == 0
    m.shutdown()
