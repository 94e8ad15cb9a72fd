"""fail-nth (the model of tools/testing/selftests/iommu/iommufd_fail_nth.c): run a flow
with the Nth page allocation failing, for N = 1, 2, ... until the flow completes. Every
failure must surface as a clean ENOMEM, and closing everything must give back every
kernel page and every pin."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from iommu_core.errors import IommuError
from iommu_sim import Machine
from iommufd import uapi
from iommufd import uapi_selftest as st
from tests.selftest.utils import MOCK_APERTURE_START, PAGE_SIZE, Iommufd, new_machine

Flow = Callable[[Machine, Iommufd, int], None]


def flow_nested(m: Machine, t: Iommufd, buf: int) -> None:
    """IOAS, map, mock domain, nest parent, nested HWPT, vIOMMU, invalidate."""
    ioas = t.ioas_alloc()
    iova = t.map_fixed(ioas, buf, 16 * PAGE_SIZE, MOCK_APERTURE_START)
    _stdev, _hwpt, idev = t.mock_domain(ioas)
    parent = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
    nested = t.nested(idev, parent, 0)
    viommu = t.viommu_alloc(idev, parent, st.IOMMU_VIOMMU_TYPE_SELFTEST)
    t.nested(idev, viommu, 0)
    req = uapi.struct_bytes(st.iommu_hwpt_invalidate_selftest(
        flags=st.IOMMU_TEST_INVALIDATE_FLAG_ALL))
    assert t.invalidate(nested, req, st.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 8, 1) == (0, 1)
    t.check_map(parent, iova, 16 * PAGE_SIZE, buf)


def flow_pasid_viommu(m: Machine, t: Iommufd, buf: int) -> None:
    """PASID attach (PASID tables), a vIOMMU with an mmap region, a vDEVICE, a HW queue,
    dirty tracking, an access pin."""
    ioas = t.ioas_alloc()
    iova = t.map(ioas, buf, 16 * PAGE_SIZE, MOCK_APERTURE_START,
                 uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE
                 | uapi.IOMMU_IOAS_MAP_FIXED_IOVA)
    stdev, _hwpt, idev = t.mock_domain_flags(ioas, st.MOCK_FLAGS_DEVICE_PASID)
    pasid_hwpt = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_PASID
                              | uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    t.replace(stdev, pasid_hwpt)
    t.pasid_attach(stdev, 300, pasid_hwpt)
    t.set_dirty_tracking(pasid_hwpt, True)
    parent = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
    data = st.iommu_viommu_selftest(in_data=1)
    viommu = t.viommu_alloc(idev, parent, st.IOMMU_VIOMMU_TYPE_SELFTEST,
                            t.user_struct(data), 24)
    t.vdevice_alloc(viommu, idev, 7)
    t.hw_queue_alloc(viommu, st.IOMMU_HW_QUEUE_TYPE_SELFTEST, 0, iova, PAGE_SIZE)
    afd = t.access_create(ioas, st.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    t.access_pin(afd, iova + PAGE_SIZE, 2 * PAGE_SIZE, buf + PAGE_SIZE)


@pytest.mark.parametrize("flow", [flow_nested, flow_pasid_viommu], ids=lambda f: f.__name__)
def test_fail_nth(flow: Flow) -> None:
    n = 0
    failures = 0
    while True:
        n += 1
        assert n < 500, "the flow never completed"
        m = new_machine()
        t = Iommufd(m)
        buf = m.mmap(16 * PAGE_SIZE)
        m.mem_write(buf, b"\x5a" * 16 * PAGE_SIZE)
        count = [0]

        def injector(order: int, tag: str, n: int = n, count: list[int] = count) -> None:
            count[0] += 1
            if count[0] == n:
                raise IommuError(errno.ENOMEM, f"fail-nth: allocation {n} fails")

        m.platform.alloc.fault_injector = injector
        try:
            flow(m, t, buf)
        except OSError as e:
            assert e.errno == errno.ENOMEM, f"N={n}: {e!r} is not a clean ENOMEM"
            failures += 1
            done = False
        else:
            done = True
        finally:
            m.platform.alloc.fault_injector = None
        for fd in m.task.files.open_fds():
            m.close(fd)
        assert m.mm.pinned_pages == 0, f"N={n}: pages left pinned"
        assert m.kernel_pages_in_use == m.kernel_pages_baseline, (
            f"N={n}: {m.kernel_pages_in_use - m.kernel_pages_baseline} kernel pages leaked")
        m.shutdown()
        if done:
            break
    assert failures >= 3, "the flow allocates pages: some N must have failed"
