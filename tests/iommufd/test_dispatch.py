"""The iommufd ioctl dispatch and object table beyond what the kernel selftest checks:
request decoding, user-pointer faults, id allocation, tombstones, atomic failures,
VFIO cdev bind/attach, and DMA through the mock hardware after an iommufd attach."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from iommu_sim import DmaFault, Machine
from iommufd import uapi
from iommufd import uapi_selftest as st
from iommufd import uapi_vfio as vf
from tests.selftest.utils import (
    MOCK_APERTURE_START,
    PAGE_SIZE,
    RW,
    Iommufd,
    expect_errno,
    new_machine,
)

PCI = "0000:00:01.0"
PCI2 = "0000:00:02.0"


@pytest.fixture
def m() -> Iterator[Machine]:
    machine = new_machine()
    yield machine
    machine.shutdown()


@pytest.fixture
def pm() -> Iterator[Machine]:
    """A Machine with two PCI devices behind a mock IOMMU, registered with vfio-pci."""
    machine = Machine.from_config({
        "iommus": [{"name": "mock0", "driver": "mock"}],
        "devices": [{"name": PCI, "iommu": "mock0"}, {"name": PCI2, "iommu": "mock0"}],
    })
    yield machine
    machine.shutdown()


def test_request_decoding(m: Machine) -> None:
    t = Iommufd(m)
    cmd = uapi.iommu_destroy(size=8, id=0)
    # A hole of the table (0x96..0x9f) and past the end: ENOTTY.
    for nr in (0x96, 0x9F, 0xA1, 0xFF):
        with expect_errno(errno.ENOTTY):
            t.ioctl(uapi._IO(uapi.IOMMUFD_TYPE, nr), cmd)
    # Same nr with direction or size bits, or another type byte: ENOTTY.
    for req in (uapi._IOW(uapi.IOMMUFD_TYPE, 0x80, 8), uapi._IO("x", 0x80)):
        with expect_errno(errno.ENOTTY):
            t.ioctl(req, cmd)
    # The size is read before the request is checked.
    with expect_errno(errno.EFAULT):
        t.ioctl(uapi._IO(uapi.IOMMUFD_TYPE, 0x96), None)
    m.close(t.fd)


def test_user_pointer_argument(m: Machine) -> None:
    t = Iommufd(m)
    va = m.mmap(PAGE_SIZE)
    m.mem_write(va, bytes(uapi.iommu_ioas_alloc(size=12)))
    t.ioctl(uapi.IOMMU_IOAS_ALLOC, va)
    got = uapi.from_bytes(uapi.iommu_ioas_alloc, m.mem_read(va, 12))
    assert got.out_ioas_id == 1
    m.munmap(va, PAGE_SIZE)
    with expect_errno(errno.EFAULT):
        t.ioctl(uapi.IOMMU_IOAS_ALLOC, va)
    m.close(t.fd)


def test_every_kind_of_argument_gets_the_same_response(m: Machine) -> None:
    """IOMMU_OPTION writes back ``val64`` only, whatever holds the struct: the uAPI
    ctypes struct, another ctypes type of the same bytes, a bytearray, a memoryview, a
    user address; a read-only or short buffer is EFAULT."""
    t = Iommufd(m)
    opt = uapi.iommu_option(size=24, option_id=uapi.IOMMU_OPTION_RLIMIT_MODE,
                            op=uapi.IOMMU_OPTION_OP_GET, val64=0xFFFF_FFFF_FFFF_FFFF)
    raw = bytes(opt)
    want = raw[:16] + bytes(8)  # 0: per-user accounting, the default

    import ctypes

    as_array = (ctypes.c_uint8 * 24).from_buffer_copy(raw)
    ba = bytearray(raw)
    view_ba = bytearray(raw)
    va = m.mmap(PAGE_SIZE)
    m.mem_write(va, raw)
    for arg in (opt, as_array, ba, memoryview(view_ba), va):
        assert t.ioctl(uapi.IOMMU_OPTION, arg) == 0
    assert bytes(opt) == bytes(as_array) == bytes(ba) == bytes(view_ba) == want
    assert m.mem_read(va, 24) == want
    with expect_errno(errno.EFAULT):
        t.ioctl(uapi.IOMMU_OPTION, raw)  # bytes: read-only
    with expect_errno(errno.EFAULT):
        t.ioctl(uapi.IOMMU_OPTION, bytearray(raw[:20]))  # size says 24
    m.mem_write(va + PAGE_SIZE - 8, raw[:8])
    with expect_errno(errno.EFAULT):  # the size is readable, the struct runs past
        t.ioctl(uapi.IOMMU_OPTION, va + PAGE_SIZE - 8)
    m.close(t.fd)


def test_short_struct_is_zero_extended(m: Machine) -> None:
    """A caller with an older, shorter struct: the missing fields read as 0 and the
    response is cut at its size."""
    t = Iommufd(m)
    ioas = t.ioas_alloc()
    stdev, hwpt, idev = t.mock_domain(ioas)
    info = bytearray(uapi.struct_bytes(uapi.iommu_hw_info(size=32, dev_id=idev)))[:32]
    t.ioctl(uapi.IOMMU_GET_HW_INFO, info)
    full = uapi.from_bytes(uapi.iommu_hw_info, bytes(info))
    assert full.out_data_type == st.IOMMU_HW_INFO_TYPE_SELFTEST
    assert full.out_capabilities == 0  # beyond the caller's 32 bytes: not written
    m.close(t.fd)


def test_object_ids(m: Machine) -> None:
    t = Iommufd(m)
    ids = [t.ioas_alloc() for _ in range(4)]
    assert ids == [1, 2, 3, 4]
    t.destroy(2)
    t.destroy(3)
    assert t.ioas_alloc() == 2  # lowest free id first
    assert t.ioas_alloc() == 3
    with expect_errno(errno.ENOENT):
        t.destroy(99)
    m.close(t.fd)


def test_tombstone_keeps_id(m: Machine) -> None:
    t = Iommufd(m)
    ioas = t.ioas_alloc()
    stdev, _h, idev = t.mock_domain(ioas)
    parent = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = t.viommu_alloc(idev, parent, st.IOMMU_VIOMMU_TYPE_SELFTEST)
    vd = t.vdevice_alloc(viommu, idev, 5)
    t.destroy(stdev)  # unbind: the vDEVICE becomes a tombstone
    with expect_errno(errno.ENOENT):
        t.destroy(vd)
    assert t.ioas_alloc() not in (vd,)  # the tombstoned id is not reused
    with expect_errno(errno.EBUSY):
        t.destroy(parent)  # the vIOMMU still holds it
    t.destroy(viommu)
    t.destroy(parent)
    m.close(t.fd)
    assert m.kernel_pages_in_use == m.kernel_pages_baseline


def test_failed_unmap_changes_nothing(m: Machine) -> None:
    t = Iommufd(m)
    ioas = t.ioas_alloc()
    buf = m.mmap(16 * PAGE_SIZE)
    t.map_fixed(ioas, buf, 4 * PAGE_SIZE, 0x10000)
    t.map_fixed(ioas, buf, 4 * PAGE_SIZE, 0x20000)
    with expect_errno(errno.ENOENT):  # covers the first area, cuts the second
        t.unmap(ioas, 0x10000, 0x12000)
    assert t.unmap(ioas, 0, (1 << 64) - 1) == 8 * PAGE_SIZE  # both were still there
    m.close(t.fd)


def test_device_object_not_destroyable(m: Machine) -> None:
    t = Iommufd(m)
    ioas = t.ioas_alloc()
    stdev, hwpt, idev = t.mock_domain(ioas)
    for oid in (idev, hwpt, ioas):
        with expect_errno(errno.EBUSY):
            t.destroy(oid)
    t.destroy(stdev)
    with expect_errno(errno.ENOENT):  # the automatic HWPT died with its last device
        t.destroy(hwpt)
    t.destroy(ioas)
    m.close(t.fd)


def test_dma_through_mock_hardware(m: Machine) -> None:
    """MAP, attach, then the device reads what the process wrote; unmap invalidates the
    IOTLB so the next DMA faults; dirty tracking sees device writes."""
    t = Iommufd(m)
    ioas = t.ioas_alloc()
    stdev, _h, idev = t.mock_domain(ioas)
    dev = next(d for d in m.platform.devices.values() if d.bus == "mock")
    buf = m.mmap(4 * PAGE_SIZE)
    m.mem_write(buf, b"abcdefgh" * 512)
    iova = t.map(ioas, buf, 4 * PAGE_SIZE)
    assert m.dma_read(dev, iova + 8, 8) == b"abcdefgh"
    h = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    t.replace(stdev, h)
    t.set_dirty_tracking(h, True)
    m.dma_write(dev, iova + 2 * PAGE_SIZE + 100, b"XYZ")
    assert m.mem_read(buf + 2 * PAGE_SIZE + 100, 3) == b"XYZ"
    bitmap = m.mmap(PAGE_SIZE)
    t.get_dirty_bitmap(h, iova, 4 * PAGE_SIZE, PAGE_SIZE, bitmap)
    assert m.mem_read(bitmap, 1)[0] == 0b0100
    t.unmap(ioas, iova, 4 * PAGE_SIZE)
    with pytest.raises(DmaFault):
        m.dma_read(dev, iova, 8)
    t.replace(stdev, ioas)
    t.destroy(h)
    m.close(t.fd)
    assert m.kernel_pages_in_use == m.kernel_pages_baseline


def test_iopf_round_trip(m: Machine) -> None:
    """A page request reaches the fault fd with a cookie; the response reaches the
    mock's page-response register; an unanswered group is answered INVALID on close."""
    t = Iommufd(m)
    ioas = t.ioas_alloc()
    stdev, _h, idev = t.mock_domain(ioas)
    parent = t.hwpt_alloc(idev, ioas, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
    fault_id, fault_fd = t.fault_alloc()
    iopf = t.nested(idev, parent, uapi.IOMMU_HWPT_FAULT_ID_VALID, fault_id=fault_id)
    t.replace(stdev, iopf)
    assert m.poll(fault_fd) == 0x004  # POLLOUT only
    cmd = st.iommu_test_cmd(size=72, op=st.IOMMU_TEST_OP_TRIGGER_IOPF)
    cmd.trigger_iopf.dev_id, cmd.trigger_iopf.grpid, cmd.trigger_iopf.addr = idev, 7, 0x1000
    t.test(cmd)
    with expect_errno(errno.ESPIPE):
        m.read(fault_fd, 39)
    rec = uapi.from_bytes(uapi.iommu_hwpt_pgfault, m.read(fault_fd, 40))
    assert (rec.dev_id, rec.grpid, rec.addr, rec.cookie) == (idev, 7, 0x1000, 1)
    with expect_errno(errno.EINVAL):  # unknown cookie
        m.write(fault_fd, bytes(uapi.iommu_hwpt_page_response(cookie=9, code=0)))
    with expect_errno(errno.EINVAL):  # bad code
        m.write(fault_fd, bytes(uapi.iommu_hwpt_page_response(cookie=1, code=2)))
    hw = m.platform.iommus[next(iter(m.platform.iommus))]
    before = len(hw.page_responses)  # type: ignore[attr-defined]
    assert m.write(fault_fd, bytes(uapi.iommu_hwpt_page_response(cookie=1, code=0))) == 8
    assert len(hw.page_responses) == before + 1  # type: ignore[attr-defined]
    # A second fault left unanswered is answered INVALID when the HWPT is replaced.
    t.test(cmd)
    t.replace(stdev, ioas)
    assert hw.page_responses[-1] & 0xFF == 1  # type: ignore[attr-defined]
    m.close(fault_fd)
    m.close(t.fd)
    assert m.kernel_pages_in_use == m.kernel_pages_baseline


def _bind(pm: Machine, vfd: int, iommufd: int, argsz: int = 24, flags: int = 0,
          token: int = 0) -> vf.vfio_device_bind_iommufd:
    b = vf.vfio_device_bind_iommufd(argsz=argsz, flags=flags, iommufd=iommufd,
                                    token_uuid_ptr=token)
    pm.ioctl(vfd, vf.VFIO_DEVICE_BIND_IOMMUFD, b)
    return b


def test_vfio_cdev(pm: Machine) -> None:
    t = Iommufd(pm)
    vfd = pm.open(pm.vfio_cdev(PCI))
    attach = vf.vfio_device_attach_iommufd_pt(argsz=16, pt_id=0)
    with expect_errno(errno.EINVAL):  # not bound yet
        pm.ioctl(vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach)
    with expect_errno(errno.EINVAL):
        pm.read(vfd, 8)
    with expect_errno(errno.EINVAL):
        _bind(pm, vfd, t.fd, argsz=15)
    buf = bytearray(uapi.struct_bytes(vf.vfio_device_bind_iommufd(argsz=25, iommufd=t.fd)))
    buf += b"\x01"
    with expect_errno(errno.E2BIG):
        pm.ioctl(vfd, vf.VFIO_DEVICE_BIND_IOMMUFD, buf)
    with expect_errno(errno.EINVAL):
        _bind(pm, vfd, t.fd, flags=2)
    with expect_errno(errno.EINVAL):
        _bind(pm, vfd, -1)
    with expect_errno(errno.EBADF):
        _bind(pm, vfd, 99)
    with expect_errno(errno.EBADFD):
        _bind(pm, vfd, vfd)
    with expect_errno(errno.EFAULT):
        _bind(pm, vfd, t.fd, flags=vf.VFIO_DEVICE_BIND_FLAG_TOKEN, token=0)
    b = _bind(pm, vfd, t.fd)
    devid = b.out_devid
    assert devid
    with expect_errno(errno.EINVAL):
        _bind(pm, vfd, t.fd)
    ioas = t.ioas_alloc()
    buf_va = pm.mmap(PAGE_SIZE)
    pm.mem_write(buf_va, b"through vfio")
    iova = t.map(ioas, buf_va, PAGE_SIZE, MOCK_APERTURE_START, RW | uapi.IOMMU_IOAS_MAP_FIXED_IOVA)
    attach.pt_id = ioas
    pm.ioctl(vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach)
    assert attach.pt_id not in (0, ioas)  # the automatic HWPT
    assert pm.dma_read(PCI, iova, 12) == b"through vfio"
    # PASID attach needs argsz 16, and a PASID-capable HWPT
    attach2 = vf.vfio_device_attach_iommufd_pt(argsz=12, flags=vf.VFIO_DEVICE_ATTACH_PASID,
                                               pt_id=ioas, pasid=5)
    with expect_errno(errno.EINVAL):
        pm.ioctl(vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach2)
    attach2.argsz = 16
    with expect_errno(errno.EINVAL):  # the RID HWPT is not PASID capable
        pm.ioctl(vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach2)
    pasid_hwpt = t.hwpt_alloc(devid, ioas, uapi.IOMMU_HWPT_ALLOC_PASID)
    attach.pt_id = pasid_hwpt
    pm.ioctl(vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach)  # replace
    attach2.pt_id = pasid_hwpt
    pm.ioctl(vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach2)
    assert pm.dma_read(PCI, iova, 7, pasid=5) == b"through"
    detach = vf.vfio_device_detach_iommufd_pt(argsz=12, flags=vf.VFIO_DEVICE_DETACH_PASID,
                                              pasid=5)
    pm.ioctl(vfd, vf.VFIO_DEVICE_DETACH_IOMMUFD_PT, detach)
    with pytest.raises(DmaFault):
        pm.dma_read(PCI, iova, 7, pasid=5)
    pm.ioctl(vfd, vf.VFIO_DEVICE_DETACH_IOMMUFD_PT,
             vf.vfio_device_detach_iommufd_pt(argsz=8))
    with pytest.raises(DmaFault):
        pm.dma_read(PCI, iova, 4)
    with expect_errno(errno.EBUSY):
        t.destroy(devid)
    # Closing the iommufd first defers its release until the device unbinds.
    pm.close(t.fd)
    pm.close(vfd)
    assert pm.kernel_pages_in_use == pm.kernel_pages_baseline
    pm.munmap(buf_va, PAGE_SIZE)


def test_tracing_spans(m: Machine) -> None:
    t = Iommufd(m)
    m.tracer.start()
    ioas = t.ioas_alloc()
    t.mock_domain(ioas)
    m.tracer.stop()
    text = m.tracer.render()
    assert "iommufd_ioas_alloc_ioctl" in text and "iommufd_device_attach" in text
    assert "[hw] invalidate" in text or "invalidate" in text
    m.close(t.fd)

