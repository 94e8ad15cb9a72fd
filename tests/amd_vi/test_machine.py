"""End to end through the Machine, ioctl ABI only (the hardware is read for assertions):
nest parent, AMD vIOMMU, vDEVICE, nested HWPT from a guest DTE whose GCR3 and v2 tables
the guest wrote in its RAM, attach, DMA; hDomID sharing; gDTE errnos; the prototype
invalidation; S2 unmap visibility."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("iommufd.main", reason="iommufd is not in this tree yet")

from drivers.amd_vi.amd_iommu_types import CMD_INV_IOMMU_PAGES_GN_MASK as GN
from drivers.amd_vi.amd_iommu_types import CMD_INV_IOMMU_PAGES_PDE_MASK as PDE
from drivers.amd_vi.amd_iommu_types import GCR3_VALID
from drivers.amd_vi.iommu import build_inv_iommu_pages, read_dte
from drivers.amd_vi.uapi import IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE
from iommu_core.pgtable import IoPageTable, formats
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_sim import DmaFault, Machine
from iommufd import uapi as u
from iommufd import uapi_vfio as uv

from .conftest import gdte_for

DEV = "0000:20:00.0"
PAGE = 4096
NPAGES = 32
GVA = 0x40_0000


class Vm:
    """A VMM: guest RAM mapped at IOVA = GPA in an IOAS, a nest parent, an AMD vIOMMU."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.fd = m.open("/dev/iommu")
        self.vfd = m.open(m.vfio_cdev(DEV))
        bind = uv.vfio_device_bind_iommufd(argsz=24, flags=0, iommufd=self.fd)
        m.ioctl(self.vfd, uv.VFIO_DEVICE_BIND_IOMMUFD, bind)
        self.dev_id = bind.out_devid
        ioas = u.iommu_ioas_alloc(size=ctypes.sizeof(u.iommu_ioas_alloc))
        m.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, ioas)
        self.ioas = ioas.out_ioas_id
        self.ram = m.mmap(NPAGES * PAGE)
        # One area per guest page, so a single page can be unmapped later (iommufd never
        # splits an area).
        for i in range(NPAGES):
            mp = u.iommu_ioas_map(size=ctypes.sizeof(u.iommu_ioas_map), flags=7,
                                  ioas_id=self.ioas, user_va=self.ram + i * PAGE,
                                  length=PAGE, iova=i * PAGE)
            m.ioctl(self.fd, u.IOMMU_IOAS_MAP, mp)
        self.parent = self.hwpt_alloc(self.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        va = u.iommu_viommu_alloc(size=ctypes.sizeof(u.iommu_viommu_alloc),
                                  type=u.IOMMU_VIOMMU_TYPE_AMD, dev_id=self.dev_id,
                                  hwpt_id=self.parent)
        m.ioctl(self.fd, u.IOMMU_VIOMMU_ALLOC, va)
        self.viommu = va.out_viommu_id
        vd = u.iommu_vdevice_alloc(size=ctypes.sizeof(u.iommu_vdevice_alloc),
                                   viommu_id=self.viommu, dev_id=self.dev_id, virt_id=0x0100)
        m.ioctl(self.fd, u.IOMMU_VDEVICE_ALLOC, vd)
        self.scratch = m.mmap(PAGE)
        self._next = 0

    def hwpt_alloc(self, pt_id: int, flags: int = 0, data: bytes = b"", dtype: int = 0
                   ) -> int:
        if data:
            self.m.mem_write(self.scratch, data)
        a = u.iommu_hwpt_alloc(size=ctypes.sizeof(u.iommu_hwpt_alloc), flags=flags,
                               dev_id=self.dev_id, pt_id=pt_id, data_type=dtype,
                               data_len=len(data), data_uptr=self.scratch if data else 0)
        self.m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, a)
        return int(a.out_hwpt_id)

    def nested(self, gdte: list[int]) -> int:
        raw = b"".join(w.to_bytes(8, "little") for w in gdte)
        return self.hwpt_alloc(self.viommu, 0, raw, u.IOMMU_HWPT_DATA_AMD_GUEST)

    def attach(self, pt_id: int) -> None:
        at = uv.vfio_device_attach_iommufd_pt(argsz=16, flags=0, pt_id=pt_id)
        self.m.ioctl(self.vfd, uv.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)

    def invalidate(self, cmds: list[tuple[int, ...]]) -> int:
        raw = b"".join(w.to_bytes(4, "little") for c in cmds for w in c)
        self.m.mem_write(self.scratch, raw)
        inv = u.iommu_hwpt_invalidate(size=ctypes.sizeof(u.iommu_hwpt_invalidate),
                                      hwpt_id=self.viommu, data_uptr=self.scratch,
                                      data_type=IOMMU_VIOMMU_INVALIDATE_DATA_AMD_PROTOTYPE,
                                      entry_len=16, entry_num=len(cmds))
        self.m.ioctl(self.fd, u.IOMMU_HWPT_INVALIDATE, inv)
        return int(inv.entry_num)

    # guest RAM as a TableMemory: the guest builds its tables with the shared core
    def alloc_table(self, size: int) -> int:
        gpa = self._next * PAGE
        self._next += 1
        return gpa

    def free_table(self, addr: int, size: int) -> None: ...

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.m.mem_read(self.ram + gpa, 8), "little")

    def write_u64(self, gpa: int, v: int) -> None:
        self.m.mem_write(self.ram + gpa, v.to_bytes(8, "little"))

    def guest_tables(self) -> tuple[IoPageTable, int, int]:
        pt = IoPageTable(formats.x86_64(4), self)  # type: ignore[arg-type]
        data = self.alloc_table(PAGE)
        pt.map(GVA, data, PAGE, IOMMU_READ | IOMMU_WRITE)
        gcr3 = self.alloc_table(PAGE)
        self.write_u64(gcr3, pt.root | GCR3_VALID)
        return pt, data, gcr3

    def dte(self) -> Any:
        unit = self.m.core.iommus["amdvi0"].priv
        return read_dte(unit, self.m.device(DEV).rid)


@pytest.fixture
def vm() -> Iterator[Vm]:
    m = Machine.from_config({"iommus": [{"name": "amdvi0", "driver": "amd_vi"}],
                             "devices": [{"name": DEV, "iommu": "amdvi0"}]})
    v = Vm(m)
    yield v
    m.shutdown()
    assert m.kernel_pages_in_use == 0


def test_nested_dma_end_to_end(vm: Vm) -> None:
    _pt, data, gcr3 = vm.guest_tables()
    nested = vm.nested(gdte_for(gcr3, 0x33))
    vm.attach(nested)
    vm.m.mem_write(vm.ram + data + 8, b"guest data")
    assert vm.m.dma_read(DEV, GVA + 8, 10) == b"guest data"
    vm.m.dma_write(DEV, GVA + 64, b"device")
    assert vm.m.mem_read(vm.ram + data + 64, 6) == b"device"
    d = vm.dte()
    assert d.gv and d.gcr3_root == gcr3 and d.domid != 0x33


def test_same_gdomid_one_hdomid(vm: Vm) -> None:
    _pt, _data, gcr3 = vm.guest_tables()
    a = vm.nested(gdte_for(gcr3, 0x33))
    b = vm.nested(gdte_for(gcr3, 0x33))
    vm.attach(a)
    hd_a = vm.dte().domid
    vm.attach(b)
    assert vm.dte().domid == hd_a


@pytest.mark.parametrize("word,bits", [(0, 1 << 9), (0, 0x5000), (0, 3 << 56)])
def test_bad_gdte_einval(vm: Vm, word: int, bits: int) -> None:
    g = gdte_for(0x3000, 1)
    g[word] |= bits
    with pytest.raises(OSError) as e:
        vm.nested(g)
    assert e.value.errno == errno.EINVAL


def test_gv_without_root_einval(vm: Vm) -> None:
    with pytest.raises(OSError) as e:
        vm.nested([0x0080_0000_0000_0001, 0x33, 0, 0])
    assert e.value.errno == errno.EINVAL


def test_stale_until_prototype_invalidation(vm: Vm) -> None:
    pt, data, gcr3 = vm.guest_tables()
    vm.attach(vm.nested(gdte_for(gcr3, 0x33)))
    other = vm.alloc_table(PAGE)
    vm.m.mem_write(vm.ram + data, b"OLD!")
    vm.m.mem_write(vm.ram + other, b"NEW!")
    assert vm.m.dma_read(DEV, GVA, 4) == b"OLD!"
    pt.unmap(GVA, PAGE)
    pt.map(GVA, other, PAGE, IOMMU_READ | IOMMU_WRITE)
    assert vm.m.dma_read(DEV, GVA, 4) == b"OLD!"
    # the guest's unmap freed its tables and map made new ones: PDEs too
    cmd = build_inv_iommu_pages(GVA, GVA + PAGE - 1, 0x33, 0, GN | PDE)
    assert vm.invalidate([cmd.data]) == 1
    assert vm.m.dma_read(DEV, GVA, 4) == b"NEW!"
    with pytest.raises(OSError) as e:
        vm.invalidate([(0, 0x8000_0000, 0, 0)])  # INVALIDATE_IOMMU_ALL from the guest
    assert e.value.errno == errno.EIO


def test_s2_unmap_visible_immediately(vm: Vm) -> None:
    _pt, data, gcr3 = vm.guest_tables()
    vm.attach(vm.nested(gdte_for(gcr3, 0x33)))
    vm.m.dma_read(DEV, GVA, 4)
    un = u.iommu_ioas_unmap(size=ctypes.sizeof(u.iommu_ioas_unmap), ioas_id=vm.ioas,
                            iova=data, length=PAGE)
    vm.m.ioctl(vm.fd, u.IOMMU_IOAS_UNMAP, un)
    with pytest.raises(DmaFault):
        vm.m.dma_read(DEV, GVA, 4)
