"""The prototyping recipe of docs/prototyping.rst, worked end to end: a new op
(``test_dev``) added as a hook spec at run time, implemented beside two drivers, used by a
new ioctl registered at run time; a ``tryfirst`` override of one op of one driver; a
``wrapper=True`` tracer of map_pages and what it adds to ``Machine.trace()``."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator

import pytest

from examples.prototype_test_dev import Prototype, install
from examples.prototype_test_dev.demo import CONFIG, DEV_A, DEV_B, IOVA, Vmm
from examples.prototype_test_dev.plugins import MapPagesLogger, NoDirtyCapability
from examples.prototype_test_dev.uapi import (
    IOMMU_HWPT_TEST_DEV,
    IOMMU_HWPT_TEST_DEV_IOCTL,
    iommu_hwpt_test_dev,
)
from iommu_core.errors import IommuError
from iommu_core.trace import TraceNode
from iommu_sim import Machine
from iommufd import uapi as u
from iommufd.main import iommufd_register_ioctl
from tests.selftest.utils import Iommufd, st

PAGE = 4096


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = Machine.from_config(CONFIG)
    yield m
    m.shutdown()
    assert m.kernel_pages_in_use == 0


@pytest.fixture
def proto(machine: Machine) -> Iterator[Prototype]:
    p = install(machine)
    yield p
    p.remove()


def _errno(fn: object, *args: object) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args)  # type: ignore[operator]
    assert ei.value.errno is not None
    return ei.value.errno


def _walk(nodes: list[TraceNode]) -> Iterator[TraceNode]:
    for n in nodes:
        yield n
        yield from _walk(n.children)


def test_hookspec_is_added_at_run_time(machine: Machine) -> None:
    vtd = machine.plugins.driver("intel_vtd")
    assert not vtd.implements("test_dev")
    with pytest.raises(IommuError) as ei:
        vtd.call("test_dev", domain=None, dev=None)
    assert ei.value.errno == errno.EOPNOTSUPP
    p = install(machine)
    try:
        assert vtd.implements("test_dev") and machine.plugins.driver("mock").implements(
            "test_dev")
        assert not machine.plugins.driver("arm_smmu_v3").implements("test_dev")
    finally:
        p.remove()


def test_test_dev_predicts_attach_and_changes_nothing(machine: Machine, proto: Prototype
                                                      ) -> None:
    vmm = Vmm(machine)
    hwpt = vmm.hwpt_alloc(DEV_A, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    group_b = machine.device(DEV_B).iommu_group
    before = group_b.domain
    with machine.trace() as tracer:
        assert vmm.test_dev(DEV_A, hwpt) == 0
        assert vmm.test_dev(DEV_B, hwpt) == errno.EINVAL  # dmar1 has no dirty tracking
    nodes = list(_walk(tracer.roots))
    assert [n.name for n in nodes if n.layer == "driver"] == ["test_dev", "test_dev"]
    assert not [n for n in nodes if n.layer == "hw"], "a test touches no hardware"
    assert group_b.domain is before
    # The prediction holds: the real attach fails (same errno) where test_dev said so...
    assert _errno(vmm.attach, DEV_B, hwpt) == errno.EINVAL
    # ...and works where it said it would.
    vmm.attach(DEV_A, hwpt)
    buf = machine.mmap(PAGE)
    machine.mem_write(buf, b"attached")
    vmm.map(buf, PAGE, IOVA)
    assert machine.dma_read(DEV_A, IOVA, 8) == b"attached"


def test_test_dev_on_the_mock(machine: Machine, proto: Prototype) -> None:
    t = Iommufd(machine)
    ioas = t.ioas_alloc()
    _s1, _h1, idev = t.mock_domain_flags(ioas, 0)
    stdev2, _h2, idev2 = t.mock_domain_flags(ioas, st.MOCK_FLAGS_DEVICE_NO_DIRTY)
    dirty = t.hwpt_alloc(idev, ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)

    def test_dev(dev_id: int, pt_id: int) -> int:
        cmd = iommu_hwpt_test_dev(size=ctypes.sizeof(iommu_hwpt_test_dev), dev_id=dev_id,
                                  pt_id=pt_id)
        t.ioctl(IOMMU_HWPT_TEST_DEV, cmd)
        return int(cmd.out_errno)

    assert test_dev(idev, dirty) == 0
    assert test_dev(idev2, dirty) == errno.EINVAL
    assert _errno(t.replace, stdev2, dirty) == errno.EINVAL


def test_ioctl_keeps_the_table_rules(machine: Machine, proto: Prototype) -> None:
    vmm = Vmm(machine)
    hwpt = vmm.hwpt_alloc(DEV_A)
    size = ctypes.sizeof(iommu_hwpt_test_dev)
    dev_a = vmm.dev_id[DEV_A]
    short = iommu_hwpt_test_dev(size=IOMMU_HWPT_TEST_DEV_IOCTL.min_size - 4, dev_id=dev_a,
                                pt_id=hwpt)
    assert _errno(machine.ioctl, vmm.fd, IOMMU_HWPT_TEST_DEV, short) == errno.EINVAL
    flags = iommu_hwpt_test_dev(size=size, flags=1, dev_id=dev_a, pt_id=hwpt)
    assert _errno(machine.ioctl, vmm.fd, IOMMU_HWPT_TEST_DEV, flags) == errno.EOPNOTSUPP
    bad = iommu_hwpt_test_dev(size=size, dev_id=dev_a, pt_id=9999)
    assert _errno(machine.ioctl, vmm.fd, IOMMU_HWPT_TEST_DEV, bad) == errno.ENOENT
    # A longer struct with a non-zero tail is E2BIG, like every table ioctl.
    longer = bytearray(bytes(iommu_hwpt_test_dev(size=size + 8, dev_id=dev_a, pt_id=hwpt))
                       + b"\0" * 7 + b"\1")
    assert _errno(machine.ioctl, vmm.fd, IOMMU_HWPT_TEST_DEV, longer) == errno.E2BIG
    # Table rows and registered numbers cannot be taken twice.
    with pytest.raises(IommuError) as ei:
        iommufd_register_ioctl(u.IOMMUFD_IOCTLS[0], lambda ucmd: 0)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(IommuError) as ei:
        iommufd_register_ioctl(IOMMU_HWPT_TEST_DEV_IOCTL, lambda ucmd: 0)
    assert ei.value.errno == errno.EEXIST


def test_driver_without_test_dev_and_removal() -> None:
    m = Machine.default()
    try:
        p = install(m)
        t = Iommufd(m)
        vfd = m.open(m.vfio_cdev("0000:00:01.0"))  # behind the SMMU: no test_dev there
        from iommufd import uapi_vfio as v
        bind = v.vfio_device_bind_iommufd(argsz=ctypes.sizeof(v.vfio_device_bind_iommufd),
                                          iommufd=t.fd)
        m.ioctl(vfd, v.VFIO_DEVICE_BIND_IOMMUFD, bind)
        ioas = t.ioas_alloc()
        hwpt = t.hwpt_alloc(int(bind.out_devid), ioas)
        cmd = iommu_hwpt_test_dev(size=ctypes.sizeof(iommu_hwpt_test_dev),
                                  dev_id=bind.out_devid, pt_id=hwpt)
        assert _errno(t.ioctl, IOMMU_HWPT_TEST_DEV, cmd) == errno.EOPNOTSUPP
        p.remove()
        assert _errno(t.ioctl, IOMMU_HWPT_TEST_DEV, cmd) == errno.ENOTTY
    finally:
        m.shutdown()


def test_override_one_op_of_one_driver(machine: Machine) -> None:
    override = NoDirtyCapability()
    machine.plugins.register(override, driver="mock")
    vmm = Vmm(machine)
    t = Iommufd(machine, vmm.fd)
    ioas = t.ioas_alloc()
    _stdev, _hwpt, idev = t.mock_domain(ioas)
    assert _errno(t.hwpt_alloc, idev, ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING) == (
        errno.EOPNOTSUPP), "the override answers for the mock"
    vmm.hwpt_alloc(DEV_A, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)  # VT-d untouched
    t.hwpt_alloc(idev, ioas)  # other capabilities fall through to the mock
    machine.plugins.unregister(override)
    t.hwpt_alloc(idev, ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)


def test_map_pages_wrapper_logs_one_driver_and_shows_in_trace(machine: Machine) -> None:
    logger = MapPagesLogger(machine.tracer)
    machine.plugins.register(logger, driver="intel_vtd")
    vmm = Vmm(machine)
    hwpt = vmm.hwpt_alloc(DEV_A)
    vmm.attach(DEV_A, hwpt)
    t = Iommufd(machine, vmm.fd)
    _stdev, mock_hwpt, _idev = t.mock_domain(vmm.ioas)  # a mock domain in the same IOAS
    buf = machine.mmap(2 * PAGE)
    with machine.trace() as tracer:
        vmm.map(buf, 2 * PAGE, IOVA)
    label = f"hwpt {hwpt}"
    assert [r.domain for r in logger.log] == [label, label], "only VT-d map_pages logged"
    assert sum(r.mapped for r in logger.log) == 2 * PAGE
    spans = [n for n in _walk(tracer.roots) if n.layer == "driver" and n.name == "map_pages"]
    vtd = [n for n in spans if f"domain={label} " in n.detail + " "]
    mock = [n for n in spans if f"domain=hwpt {mock_hwpt} " in n.detail + " "]
    assert vtd and mock
    assert all([c.name for c in n.children] == ["map_pages.logged"] for n in vtd)
    assert all(not n.children for n in mock), "the mock's map_pages is not wrapped"
    assert "[driver] map_pages.logged hwpt" in tracer.render()
