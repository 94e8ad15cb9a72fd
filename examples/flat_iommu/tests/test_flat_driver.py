"""The FlatIOMMU driver: what it writes to the hardware (registers, DTEs, commands), how
it handles faults, and the whole stack through a Machine."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest
from iommu_core.domain import IOMMU_HWPT_ALLOC_DIRTY_TRACKING
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import DmaFault
from iommu_core.testing import DriverEnv
from iommu_sim import Machine

from flat_iommu import spec
from flat_iommu.hw import FlatIommuHw
from flat_iommu.iommu import FlatIommu, FlatPagingDomain
from flat_iommu.plugin import plugin
from flat_iommu.spec import Dte, DteMode, Opcode

RW = 3
IOVA = 0x100_0000


@pytest.fixture
def env() -> Iterator[DriverEnv]:
    e = DriverEnv("flat_iommu", plugin=plugin)
    yield e
    e.teardown()
    assert e.kernel_pages == 0, f"{e.kernel_pages} kernel pages leaked"


def unit(env: DriverEnv) -> FlatIommu:
    u = env.iommu.priv
    assert isinstance(u, FlatIommu)
    return u


def hw(env: DriverEnv) -> FlatIommuHw:
    assert isinstance(env.hw, FlatIommuHw)
    return env.hw


def dte_of(env: DriverEnv, dev: Device) -> Dte:
    u = unit(env)
    return Dte.decode(*env.platform.mem.read_qwords(u.dt + dev.rid * 16, 2))


def owned_paging(env: DriverEnv, flags: int = 0) -> tuple[Device, FlatPagingDomain, int]:
    dev = env.add_device()
    env.claim(dev)
    dom = env.paging_domain(dev, flags)
    assert isinstance(dom, FlatPagingDomain)
    va, pfns = env.user_pages(1)
    env.core.iommu_map(dom, IOVA, pfns[0] << 12, 4096, RW)
    env.core.iommu_group_replace_domain(dev.iommu_group, dom)
    return dev, dom, va


def test_probe_programs_the_unit(env: DriverEnv) -> None:
    u, regs = unit(env), env.hw.mmio["regs"]
    assert regs.read64(spec.REG_DT_BASE) == u.dt and regs.read32(spec.REG_DT_SIZE) == 16
    assert regs.read64(spec.REG_CQ_BASE) == u.cq | 8
    assert regs.read32(spec.REG_STATUS) & spec.CTRL_ENABLES == spec.CTRL_ENABLES
    assert hw(env).cmd_log[0].opcode == Opcode.INV_ALL, "probe starts from clean caches"


def test_attach_writes_the_dte(env: DriverEnv) -> None:
    dev, dom, _ = owned_paging(env)
    assert dte_of(env, dev) == Dte(True, DteMode.TRANSLATE, False, 4, dom.did, dom.pt.root)
    assert hw(env).cmd_log[-2:] == [spec.build_inv_dte(dev.rid),
                                    spec.build_sync(unit(env).sync_page, unit(env).sync_seq)]
    env.core.iommu_group_replace_domain(dev.iommu_group, dev.iommu_group.blocking_domain)
    assert dte_of(env, dev).mode == DteMode.ABORT
    assert env.ops.identity_domain is not None
    env.core.iommu_group_replace_domain(dev.iommu_group, env.ops.identity_domain)
    assert dte_of(env, dev).mode == DteMode.BYPASS


def test_unmap_invalidates_the_range_of_its_did(env: DriverEnv) -> None:
    dev, dom, va = owned_paging(env)
    env.mm.write(va, b"seen")
    assert env.dma_read(dev, IOVA, 4) == b"seen"
    env.core.iommu_unmap(dom, IOVA, 4096)
    assert spec.build_inv_iotlb(dom.did, IOVA, 1) in hw(env).cmd_log
    with pytest.raises(DmaFault) as ei:
        env.dma_read(dev, IOVA, 4)
    assert ei.value.reason == "F_PT_NOT_PRESENT"


def test_fault_interrupt_drains_the_queue(env: DriverEnv) -> None:
    dev = env.add_device()
    env.claim(dev)
    for _ in range(3):
        with pytest.raises(DmaFault):
            env.dma_write(dev, IOVA, b"x")
    u = unit(env)
    assert [(f.rid, f.reason_name, f.write) for f in u.faults] == [
        (dev.rid, "F_DTE_ABORT", True)] * 3
    assert env.hw.mmio["regs"].read32(spec.REG_FQ_HEAD) == 3 == u.fq_head


def test_dirty_tracking_sets_had_and_flushes_after_clear(env: DriverEnv) -> None:
    dev, dom, _ = owned_paging(env, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    dom.ops.set_dirty_tracking(dom, True)
    assert dte_of(env, dev).had

    class Rec:
        has_bitmap = True  # a real bitmap, not the clear-only pass

        def __init__(self) -> None:
            self.pages: list[int] = []

        def record(self, iova: int, length: int) -> None:
            self.pages.append(iova)

    first = Rec()
    dom.ops.read_and_clear_dirty(dom, IOVA, 4096, 0, first)
    assert first.pages == [IOVA], "x86-64 leaves are mapped dirty"
    assert spec.build_inv_iotlb_did(dom.did) in hw(env).cmd_log[-2:], (
        "clearing D needs an IOTLB flush, or cached entries never set it again")
    env.dma_write(dev, IOVA, b"d")
    rec = Rec()
    dom.ops.read_and_clear_dirty(dom, IOVA, 4096, 0, rec)
    assert rec.pages == [IOVA]


def test_domain_free_flushes_its_did(env: DriverEnv) -> None:
    dev = env.add_device()
    dom = env.paging_domain(dev)
    assert isinstance(dom, FlatPagingDomain)
    did = dom.did
    env.free(dom)
    assert spec.build_inv_iotlb_did(did) in hw(env).cmd_log


def test_through_a_machine_with_iommufd() -> None:
    """The full stack: VFIO cdev bind, IOAS map, attach, DMA - found through the entry
    point, as a user's Machine finds it."""
    from iommufd import uapi as u
    from iommufd import uapi_vfio as v

    m = Machine.from_config({"iommus": [{"name": "flat0", "driver": "flat_iommu"}],
                             "devices": [{"name": "0000:00:03.0", "iommu": "flat0"}]})
    try:
        fd = m.open("/dev/iommu")
        vfd = m.open(m.vfio_cdev("0000:00:03.0"))
        bind = v.vfio_device_bind_iommufd(argsz=ctypes.sizeof(v.vfio_device_bind_iommufd),
                                          iommufd=fd)
        m.ioctl(vfd, v.VFIO_DEVICE_BIND_IOMMUFD, bind)
        ioas = u.iommu_ioas_alloc(size=ctypes.sizeof(u.iommu_ioas_alloc))
        m.ioctl(fd, u.IOMMU_IOAS_ALLOC, ioas)
        buf = m.mmap(8192)
        m.mem_write(buf, b"hello flat")
        mp = u.iommu_ioas_map(size=ctypes.sizeof(u.iommu_ioas_map), ioas_id=ioas.out_ioas_id,
                              user_va=buf, length=8192, iova=IOVA,
                              flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
                              | u.IOMMU_IOAS_MAP_WRITEABLE)
        m.ioctl(fd, u.IOMMU_IOAS_MAP, mp)
        at = v.vfio_device_attach_iommufd_pt(
            argsz=ctypes.sizeof(v.vfio_device_attach_iommufd_pt), pt_id=ioas.out_ioas_id)
        m.ioctl(vfd, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)
        assert m.dma_read("0000:00:03.0", IOVA, 10) == b"hello flat"
        with pytest.raises(DmaFault) as ei:
            m.dma_read("0000:00:03.0", IOVA + 8192, 1)
        assert ei.value.reason == "F_PT_NOT_PRESENT"
    finally:
        m.shutdown()
    assert m.kernel_pages_in_use == 0
