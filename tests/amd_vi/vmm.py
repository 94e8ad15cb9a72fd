"""A VMM on an AMD-Vi unit through the Machine, ioctl ABI only: its iommufd, one VFIO
device, guest RAM at IOVA = GPA of an IOAS, and guest RAM as the memory the guest builds
its GCR3 and v2 tables in. The tests' VMMs (plain vIOMMU, HW vIOMMU, spec audit) add
their vIOMMU to it."""

from __future__ import annotations

import ctypes
from typing import Any

from drivers.amd_vi.amd_iommu_types import GCR3_VALID, DevTableEntry
from drivers.amd_vi.iommu import read_dte
from iommu_core.pgtable import IoPageTable, formats
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_sim import Machine
from iommufd import uapi as u
from iommufd import uapi_vfio as uv

PAGE = 4096
GVA = 0x40_0000


def sz(s: Any) -> int:
    return ctypes.sizeof(s)


class AmdVmm:
    """``npages`` of guest RAM mapped in areas of ``area`` bytes (a page each lets one page
    be unmapped: iommufd never splits an area)."""

    def __init__(self, m: Machine, dev: str, npages: int, area: int = PAGE) -> None:
        self.m = m
        self.dev = dev
        self.fd = m.open("/dev/iommu")
        self.vfd = m.open(m.vfio_cdev(dev))
        bind = uv.vfio_device_bind_iommufd(argsz=24, flags=0, iommufd=self.fd)
        m.ioctl(self.vfd, uv.VFIO_DEVICE_BIND_IOMMUFD, bind)
        self.dev_id = int(bind.out_devid)
        ioas = u.iommu_ioas_alloc(size=sz(u.iommu_ioas_alloc))
        m.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, ioas)
        self.ioas = int(ioas.out_ioas_id)
        self.ram = m.mmap(npages * PAGE)
        for off in range(0, npages * PAGE, area):
            mp = u.iommu_ioas_map(size=sz(u.iommu_ioas_map), flags=7, ioas_id=self.ioas,
                                  user_va=self.ram + off, length=area, iova=off)
            m.ioctl(self.fd, u.IOMMU_IOAS_MAP, mp)
        self.scratch = m.mmap(PAGE)
        self._next = 0

    # -- ioctls ----------------------------------------------------------------------------
    def hwpt_alloc(self, pt_id: int, flags: int = 0, data: bytes = b"",
                   dtype: int = u.IOMMU_HWPT_DATA_NONE) -> int:
        if data:
            self.m.mem_write(self.scratch, data)
        a = u.iommu_hwpt_alloc(size=sz(u.iommu_hwpt_alloc), flags=flags, dev_id=self.dev_id,
                               pt_id=pt_id, data_type=dtype, data_len=len(data),
                               data_uptr=self.scratch if data else 0)
        self.m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, a)
        return int(a.out_hwpt_id)

    def attach(self, pt_id: int) -> None:
        at = uv.vfio_device_attach_iommufd_pt(argsz=16, flags=0, pt_id=pt_id)
        self.m.ioctl(self.vfd, uv.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)

    def destroy(self, obj: int) -> None:
        self.m.ioctl(self.fd, u.IOMMU_DESTROY, u.iommu_destroy(size=sz(u.iommu_destroy),
                                                               id=obj))

    # -- what the unit holds ---------------------------------------------------------------
    @property
    def unit(self) -> Any:
        return self.m.device(self.dev).iommu.iommu_dev.priv

    def dte(self) -> DevTableEntry:
        return read_dte(self.unit, self.m.device(self.dev).rid)

    # -- guest RAM, as a TableMemory for the guest's own tables ----------------------------
    def alloc_table(self, size: int) -> int:
        gpa = self._next * PAGE
        self._next += 1
        return gpa

    def free_table(self, addr: int, size: int) -> None: ...

    def read(self, gpa: int, n: int) -> bytes:
        return self.m.mem_read(self.ram + gpa, n)

    def write(self, gpa: int, data: bytes) -> None:
        self.m.mem_write(self.ram + gpa, data)

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u64(self, gpa: int, v: int) -> None:
        self.write(gpa, v.to_bytes(8, "little"))

    def guest_tables(self) -> tuple[IoPageTable, int, int]:
        """The guest's v2 table mapping GVA to a data page, and its GCR3 table:
        (table, data page, GCR3 table)."""
        pt = IoPageTable(formats.x86_64(4), self)  # type: ignore[arg-type]
        data = self.alloc_table(PAGE)
        pt.map(GVA, data, PAGE, IOMMU_READ | IOMMU_WRITE)
        gcr3 = self.alloc_table(PAGE)
        self.write_u64(gcr3, pt.root | GCR3_VALID)
        return pt, data, gcr3
