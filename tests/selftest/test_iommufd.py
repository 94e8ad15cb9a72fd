"""FIXTURE(iommufd) of tools/testing/selftests/iommu/iommufd.c (and the VFIO-compat tests
that use it), plus FIXTURE(change_process)."""

from __future__ import annotations

import ctypes
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
    sz,
    teardown_iommufd,
    uapi,
    vf,
)


@dataclass
class IommufdFixture:
    t: Iommufd
    buffer: int


class Test_iommufd:
    @pytest.fixture
    def f(self, machine: Machine, buffer: int) -> Iterator[IommufdFixture]:
        t = Iommufd(machine)
        yield IommufdFixture(t, buffer)
        teardown_iommufd(machine, t.fd, buffer)

    def test_simple_close(self, f: IommufdFixture) -> None:
        pass

    def test_cmd_fail(self, f: IommufdFixture) -> None:
        t = f.t
        with expect_errno(errno.ENOENT):
            t.destroy(0)
        with expect_errno(errno.EFAULT):
            t.m.ioctl(t.fd, uapi.IOMMU_DESTROY, None)
        with expect_errno(errno.ENOTTY):
            t.m.ioctl(t.fd, uapi._IO(uapi.IOMMUFD_TYPE, 0x7F),
                      uapi.iommu_destroy(size=8))

    @pytest.mark.parametrize(("struct", "request_", "last"), [
        (uapi.iommu_destroy, uapi.IOMMU_DESTROY, "id"),
        (uapi.iommu_hw_info, uapi.IOMMU_GET_HW_INFO, "__reserved"),
        (uapi.iommu_hwpt_alloc, uapi.IOMMU_HWPT_ALLOC, "__reserved"),
        (uapi.iommu_hwpt_invalidate, uapi.IOMMU_HWPT_INVALIDATE, "__reserved"),
        (uapi.iommu_ioas_alloc, uapi.IOMMU_IOAS_ALLOC, "out_ioas_id"),
        (uapi.iommu_ioas_iova_ranges, uapi.IOMMU_IOAS_IOVA_RANGES, "out_iova_alignment"),
        (uapi.iommu_ioas_allow_iovas, uapi.IOMMU_IOAS_ALLOW_IOVAS, "allowed_iovas"),
        (uapi.iommu_ioas_map, uapi.IOMMU_IOAS_MAP, "iova"),
        (uapi.iommu_ioas_copy, uapi.IOMMU_IOAS_COPY, "src_iova"),
        (uapi.iommu_ioas_unmap, uapi.IOMMU_IOAS_UNMAP, "length"),
        (uapi.iommu_option, uapi.IOMMU_OPTION, "val64"),
        (uapi.iommu_vfio_ioas, uapi.IOMMU_VFIO_IOAS, "__reserved"),
        (uapi.iommu_ioas_map_file, uapi.IOMMU_IOAS_MAP_FILE, "iova"),
        (uapi.iommu_viommu_alloc, uapi.IOMMU_VIOMMU_ALLOC, "out_viommu_id"),
        (uapi.iommu_vdevice_alloc, uapi.IOMMU_VDEVICE_ALLOC, "virt_id"),
        (uapi.iommu_ioas_change_process, uapi.IOMMU_IOAS_CHANGE_PROCESS, "__reserved"),
    ], ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
    def test_cmd_length(self, f: IommufdFixture, struct: type[ctypes.Structure],
                        request_: int, last: str) -> None:
        """Too short: EINVAL; longer with a non-zero tail: E2BIG; longer with a zero tail:
        exactly what the plain size gives."""
        t = f.t
        size = ctypes.sizeof(struct)
        min_size = uapi.offsetofend(struct, last)

        def run(user_size: int, extra: int) -> int:
            buf = bytearray(size + 1)
            buf[size] = extra
            buf[0:4] = user_size.to_bytes(4, "little")
            try:
                t.m.ioctl(t.fd, request_, buf)
            except OSError as e:
                return int(e.errno or 0)
            return 0

        assert run(min_size - 1, 0xFF) == errno.EINVAL
        assert run(size + 1, 0xFF) == errno.E2BIG
        old = run(size, 0xFF)
        assert run(size + 1, 0) == old

    def test_cmd_ex_fail(self, f: IommufdFixture) -> None:
        t = f.t

        def destroy_ex(size: int, extra: int) -> None:
            buf = bytearray(16)
            buf[0:4] = size.to_bytes(4, "little")
            buf[8:16] = extra.to_bytes(8, "little")
            t.m.ioctl(t.fd, uapi.IOMMU_DESTROY, buf)

        with expect_errno(errno.ENOENT):
            destroy_ex(16, 0)
        with expect_errno(errno.E2BIG):
            destroy_ex(16, 1)
        with expect_errno(errno.ENOENT):
            destroy_ex(8, 1)
        with expect_errno(errno.EINVAL):
            destroy_ex(7, 0)

    def test_global_options(self, f: IommufdFixture) -> None:
        t = f.t
        rl = uapi.IOMMU_OPTION_RLIMIT_MODE
        assert t.option(rl, uapi.IOMMU_OPTION_OP_GET) == 0
        t.option(rl, uapi.IOMMU_OPTION_OP_SET, 0, 1)
        with expect_errno(errno.EINVAL):
            t.option(rl, uapi.IOMMU_OPTION_OP_SET, 0, 2)
        assert t.option(rl, uapi.IOMMU_OPTION_OP_GET) == 1
        t.option(rl, uapi.IOMMU_OPTION_OP_SET, 0, 0)
        with expect_errno(errno.ENOENT):
            t.option(uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_GET, 0)
        with expect_errno(errno.ENOENT):
            t.option(uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_SET, 0, 0)

    # -- the VFIO compat tests that run on this fixture -------------------------------------
    def test_simple_ioctls(self, f: IommufdFixture) -> None:
        t = f.t
        assert t.m.ioctl(t.fd, vf.VFIO_GET_API_VERSION, 0) == vf.VFIO_API_VERSION
        assert t.m.ioctl(t.fd, vf.VFIO_CHECK_EXTENSION, vf.VFIO_TYPE1v2_IOMMU) == 1

    def test_unmap_cmd(self, f: IommufdFixture) -> None:
        t = f.t
        cmd = vf.vfio_iommu_type1_dma_unmap(argsz=1, iova=MOCK_APERTURE_START,
                                            size=PAGE_SIZE)
        with expect_errno(errno.EINVAL):
            t.ioctl(vf.VFIO_IOMMU_UNMAP_DMA, cmd)
        cmd.argsz = sz(cmd)
        cmd.flags = 1 << 31
        with expect_errno(errno.EINVAL):
            t.ioctl(vf.VFIO_IOMMU_UNMAP_DMA, cmd)
        cmd.flags = 0
        with expect_errno(errno.ENODEV):
            t.ioctl(vf.VFIO_IOMMU_UNMAP_DMA, cmd)

    def test_map_cmd(self, f: IommufdFixture) -> None:
        t = f.t
        cmd = vf.vfio_iommu_type1_dma_map(argsz=1, iova=MOCK_APERTURE_START, size=PAGE_SIZE,
                                          vaddr=f.buffer)
        with expect_errno(errno.EINVAL):
            t.ioctl(vf.VFIO_IOMMU_MAP_DMA, cmd)
        cmd.argsz = sz(cmd)
        cmd.flags = 1 << 31
        with expect_errno(errno.EINVAL):
            t.ioctl(vf.VFIO_IOMMU_MAP_DMA, cmd)
        cmd.flags = vf.VFIO_DMA_MAP_FLAG_WRITE | vf.VFIO_DMA_MAP_FLAG_READ
        with expect_errno(errno.ENODEV):
            t.ioctl(vf.VFIO_IOMMU_MAP_DMA, cmd)

    def test_info_cmd(self, f: IommufdFixture) -> None:
        t = f.t
        cmd = vf.vfio_iommu_type1_info(argsz=1)
        with expect_errno(errno.EINVAL):
            t.ioctl(vf.VFIO_IOMMU_GET_INFO, cmd)
        cmd.argsz = sz(cmd)
        with expect_errno(errno.ENODEV):
            t.ioctl(vf.VFIO_IOMMU_GET_INFO, cmd)

    def test_set_iommu_cmd(self, f: IommufdFixture) -> None:
        t = f.t
        with expect_errno(errno.ENODEV):
            t.m.ioctl(t.fd, vf.VFIO_SET_IOMMU, vf.VFIO_TYPE1v2_IOMMU)
        with expect_errno(errno.ENODEV):
            t.m.ioctl(t.fd, vf.VFIO_SET_IOMMU, vf.VFIO_TYPE1_IOMMU)

    def test_vfio_ioas(self, f: IommufdFixture) -> None:
        t = f.t
        cmd = uapi.iommu_vfio_ioas(size=sz(uapi.iommu_vfio_ioas), op=uapi.IOMMU_VFIO_IOAS_GET)
        with expect_errno(errno.ENODEV):
            t.ioctl(uapi.IOMMU_VFIO_IOAS, cmd)
        cmd.op = uapi.IOMMU_VFIO_IOAS_SET
        with expect_errno(errno.ENOENT):
            t.ioctl(uapi.IOMMU_VFIO_IOAS, cmd)
        ioas = t.ioas_alloc()
        cmd.ioas_id = ioas
        t.ioctl(uapi.IOMMU_VFIO_IOAS, cmd)
        cmd.ioas_id = 0
        cmd.op = uapi.IOMMU_VFIO_IOAS_GET
        t.ioctl(uapi.IOMMU_VFIO_IOAS, cmd)
        assert cmd.ioas_id == ioas
        cmd.op = uapi.IOMMU_VFIO_IOAS_CLEAR
        t.ioctl(uapi.IOMMU_VFIO_IOAS, cmd)
        cmd.op = uapi.IOMMU_VFIO_IOAS_GET
        with expect_errno(errno.ENODEV):
            t.ioctl(uapi.IOMMU_VFIO_IOAS, cmd)


def _vm_pinned_kb(m: Machine, pid: int) -> int:
    """``VmPin:`` of /proc/<pid>/status, in kB."""
    task = m.platform.tasks.get(pid)
    return -1 if task is None else task.mm.pinned_vm * PAGE_SIZE // 1024


def _vm_locked_kb(m: Machine, pid: int) -> int:
    task = m.platform.tasks.get(pid)
    return -1 if task is None else task.mm.locked_vm * PAGE_SIZE // 1024


ACCOUNTING = {"account_none": 0, "account_user": 1, "account_mm": 2}


@pytest.mark.parametrize("variant", list(ACCOUNTING))
class Test_change_process:
    @pytest.fixture
    def t(self, machine: Machine, buffer: int, variant: str) -> Iterator[Iommufd]:
        t = Iommufd(machine)
        machine.task.cap_ipc_lock = False  # drop_cap_ipc_lock()
        if ACCOUNTING[variant]:
            t.option(uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_SET,
                     val64=int(ACCOUNTING[variant] == 2))
        t.ioas = t.ioas_alloc()  # type: ignore[attr-defined]
        t.mock_domain(t.ioas)  # type: ignore[attr-defined]
        yield t
        teardown_iommufd(machine, t.fd, buffer)

    def test_basic(self, t: Iommufd, machine: Machine, buffer: int,
                   mfd_buffer: tuple[int, int], variant: str) -> None:
        m = machine
        ioas: int = t.ioas  # type: ignore[attr-defined]
        mfd = mfd_buffer[0]
        parent = m.pid
        # Expect failure if non-file maps exist
        iova = t.map(ioas, buffer, PAGE_SIZE)
        with expect_errno(errno.EINVAL):
            t.change_process()
        t.unmap(ioas, iova, PAGE_SIZE)
        # Change process works in the current process
        iova = t.map_file(ioas, mfd, 0, PAGE_SIZE)
        t.change_process()
        # ... and in another process
        child = m.fork()
        nlock = PAGE_SIZE // 1024
        # The parent accounts for the locked memory before
        assert _vm_pinned_kb(m, parent) == nlock
        if variant == "account_mm":
            assert _vm_locked_kb(m, parent) == nlock
        assert _vm_pinned_kb(m, child.pid) == 0
        assert _vm_locked_kb(m, child.pid) == 0
        Iommufd(child, t.fd).change_process()
        # The child accounts for it after
        assert _vm_pinned_kb(m, parent) == 0
        assert _vm_locked_kb(m, parent) == 0
        assert _vm_pinned_kb(m, child.pid) == nlock
        if variant == "account_mm":
            assert _vm_locked_kb(m, child.pid) == nlock
        child.exit()
