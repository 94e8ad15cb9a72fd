"""A minimal VMM on the Machine, ioctl ABI only: iommufd, one VFIO device behind an SMMUv3,
guest RAM in an IOAS, and a guest that builds its CD table and stage-1 LPAE tables in
guest RAM."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from drivers.arm_smmu_v3.cd import Cd, arm_smmu_make_s1_cd
from drivers.arm_smmu_v3.domain import arm_lpae_s1_cfg
from iommu_core.pgtable import IoPageTable, formats
from iommu_sim import Machine
from iommufd import uapi as u
from iommufd import uapi_vfio as v

from .hwutil import FakeMaster, cdtable_ste

DEV = "0000:00:01.0"
PAGE = 4096
GUEST = 256 * PAGE  # guest RAM: GPA 0 .. 1 MiB, at IOVA 0 of the IOAS
CD_GPA = 0x1000
VSID = 0x42


def sz(s: Any) -> int:
    return ctypes.sizeof(s)


class GuestRam:
    """Guest-physical memory through the VMM's mapping; page tables from the top."""

    def __init__(self, read: Callable[[int, int], bytes], write: Callable[[int, bytes], None],
                 size: int, table_pages: int = 64) -> None:
        self.read = read
        self.write = write
        self.size = size
        self._next = size - table_pages * PAGE

    def alloc_table(self, size: int) -> int:
        gpa = self._next
        self._next += max(PAGE, size)
        self.write(gpa, bytes(max(PAGE, size)))
        return gpa

    def free_table(self, addr: int, size: int) -> None:
        pass

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write_u64(self, addr: int, value: int) -> None:
        self.write(addr, value.to_bytes(8, "little"))


class Vmm:
    def __init__(self, devices: tuple[str, ...] = (DEV,), *,
                 placement: dict[str, str] | None = None,
                 dev_opts: dict[str, dict[str, Any]] | None = None, area: int = GUEST,
                 **options: Any) -> None:
        """``placement`` puts devices behind other SMMUs (default smmu0, all with
        ``options``); ``dev_opts`` are per-device Machine options; guest RAM is mapped
        as IOAS areas of ``area`` bytes."""
        placement = placement or {}
        dev_opts = dev_opts or {}
        smmus = sorted({"smmu0", *placement.values()})
        self.m = Machine.from_config({
            "iommus": [{"name": n, "driver": "arm_smmu_v3", **options} for n in smmus],
            "devices": [{"name": d, "iommu": placement.get(d, "smmu0"), **dev_opts.get(d, {})}
                        for d in devices]})
        m = self.m
        self.fd = m.open("/dev/iommu")
        self.vfds: dict[str, int] = {}
        self.dev_ids: dict[str, int] = {}
        for d in devices:
            vfd = m.open(m.vfio_cdev(d))
            bind = v.vfio_device_bind_iommufd(argsz=sz(v.vfio_device_bind_iommufd),
                                              iommufd=self.fd)
            m.ioctl(vfd, v.VFIO_DEVICE_BIND_IOMMUFD, bind)
            self.vfds[d] = vfd
            self.dev_ids[d] = int(bind.out_devid)
        self.dev_id = self.dev_ids[devices[0]]
        ioas = u.iommu_ioas_alloc(size=sz(u.iommu_ioas_alloc))
        m.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, ioas)
        self.ioas = int(ioas.out_ioas_id)
        self.ram_va = m.mmap(GUEST)
        for off in range(0, GUEST, area):
            self.map(self.ram_va + off, area, off)
        self.ram = GuestRam(lambda g, n: m.mem_read(self.ram_va + g, n),
                            lambda g, d: m.mem_write(self.ram_va + g, d), GUEST)
        self.scratch = m.mmap(64 * PAGE)

    # -- ioctls ----------------------------------------------------------------------------
    def map(self, va: int, length: int, iova: int,
            flags: int = u.IOMMU_IOAS_MAP_READABLE | u.IOMMU_IOAS_MAP_WRITEABLE) -> None:
        mp = u.iommu_ioas_map(size=sz(u.iommu_ioas_map), ioas_id=self.ioas, user_va=va,
                              length=length, iova=iova,
                              flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | flags)
        self.m.ioctl(self.fd, u.IOMMU_IOAS_MAP, mp)

    def unmap(self, iova: int, length: int) -> None:
        um = u.iommu_ioas_unmap(size=sz(u.iommu_ioas_unmap), ioas_id=self.ioas, iova=iova,
                                length=length)
        self.m.ioctl(self.fd, u.IOMMU_IOAS_UNMAP, um)

    def hw_info(self, in_type: int | None = None
                ) -> tuple[u.iommu_hw_info, u.iommu_hw_info_arm_smmuv3]:
        info = u.iommu_hw_info_arm_smmuv3()
        hi = u.iommu_hw_info(size=sz(u.iommu_hw_info), dev_id=self.dev_id, data_len=sz(info),
                             data_uptr=self.scratch)
        if in_type is not None:
            hi.flags = u.IOMMU_HW_INFO_FLAG_INPUT_TYPE
            hi.in_data_type = in_type
        self.m.ioctl(self.fd, u.IOMMU_GET_HW_INFO, hi)
        raw = self.m.mem_read(self.scratch, sz(info))
        return hi, u.iommu_hw_info_arm_smmuv3.from_buffer_copy(raw)

    def hwpt_alloc(self, pt_id: int, flags: int = 0, data: bytes = b"",
                   data_type: int = u.IOMMU_HWPT_DATA_NONE, fault_id: int = 0,
                   dev_id: int | None = None) -> int:
        if data:
            self.m.mem_write(self.scratch, data)
        a = u.iommu_hwpt_alloc(size=sz(u.iommu_hwpt_alloc), flags=flags,
                               dev_id=self.dev_id if dev_id is None else dev_id, pt_id=pt_id,
                               data_type=data_type, data_len=len(data),
                               data_uptr=self.scratch if data else 0, fault_id=fault_id)
        self.m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, a)
        return int(a.out_hwpt_id)

    def viommu_alloc(self, parent: int, dev_id: int | None = None,
                     type: int = u.IOMMU_VIOMMU_TYPE_ARM_SMMUV3) -> int:
        a = u.iommu_viommu_alloc(size=sz(u.iommu_viommu_alloc), type=type,
                                 dev_id=self.dev_id if dev_id is None else dev_id,
                                 hwpt_id=parent)
        self.m.ioctl(self.fd, u.IOMMU_VIOMMU_ALLOC, a)
        return int(a.out_viommu_id)

    def vdevice_alloc(self, viommu: int, vsid: int, dev_id: int | None = None) -> int:
        a = u.iommu_vdevice_alloc(size=sz(u.iommu_vdevice_alloc), viommu_id=viommu,
                                  dev_id=self.dev_id if dev_id is None else dev_id,
                                  virt_id=vsid)
        self.m.ioctl(self.fd, u.IOMMU_VDEVICE_ALLOC, a)
        return int(a.out_vdevice_id)

    def nested(self, viommu: int, vste: tuple[int, int], flags: int = 0, fault_id: int = 0,
               dev_id: int | None = None) -> int:
        data = bytes(u.iommu_hwpt_arm_smmuv3(ste=(ctypes.c_uint64 * 2)(*vste)))
        return self.hwpt_alloc(viommu, flags, data, u.IOMMU_HWPT_DATA_ARM_SMMUV3, fault_id,
                               dev_id)

    def attach(self, pt_id: int, dev: str = DEV, pasid: int | None = None) -> None:
        at = v.vfio_device_attach_iommufd_pt(
            argsz=sz(v.vfio_device_attach_iommufd_pt), pt_id=pt_id,
            flags=0 if pasid is None else v.VFIO_DEVICE_ATTACH_PASID, pasid=pasid or 0)
        self.m.ioctl(self.vfds[dev], v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)

    def detach(self, dev: str = DEV) -> None:
        dt = v.vfio_device_detach_iommufd_pt(argsz=sz(v.vfio_device_detach_iommufd_pt))
        self.m.ioctl(self.vfds[dev], v.VFIO_DEVICE_DETACH_IOMMUFD_PT, dt)

    def invalidate(self, viommu: int, cmds: list[tuple[int, int]]) -> u.iommu_hwpt_invalidate:
        raw = b"".join(q0.to_bytes(8, "little") + q1.to_bytes(8, "little") for q0, q1 in cmds)
        self.m.mem_write(self.scratch, raw or b"\0")
        inv = u.iommu_hwpt_invalidate(size=sz(u.iommu_hwpt_invalidate), hwpt_id=viommu,
                                      data_uptr=self.scratch,
                                      data_type=u.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
                                      entry_len=16, entry_num=len(cmds))
        try:
            self.m.ioctl(self.fd, u.IOMMU_HWPT_INVALIDATE, inv)
        except OSError as e:
            e.inv = inv  # type: ignore[attr-defined]
            raise
        return inv

    def veventq_alloc(self, viommu: int, depth: int = 16) -> int:
        a = u.iommu_veventq_alloc(size=sz(u.iommu_veventq_alloc), viommu_id=viommu,
                                  type=u.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, veventq_depth=depth)
        self.m.ioctl(self.fd, u.IOMMU_VEVENTQ_ALLOC, a)
        return int(a.out_veventq_fd)

    def fault_alloc(self) -> tuple[int, int]:
        a = u.iommu_fault_alloc(size=sz(u.iommu_fault_alloc))
        self.m.ioctl(self.fd, u.IOMMU_FAULT_QUEUE_ALLOC, a)
        return int(a.out_fault_id), int(a.out_fault_fd)

    # -- the guest ---------------------------------------------------------------------------
    def guest_s1(self) -> IoPageTable:
        return IoPageTable(formats.arm_lpae_s1(4096, 48, 48), self.ram)

    def guest_cd(self, pt: IoPageTable, asid: int, gpa: int = CD_GPA) -> Cd:
        cd = arm_smmu_make_s1_cd(FakeMaster(), arm_lpae_s1_cfg(pt, asid))
        self.ram.write(gpa, bytes(cd))
        return cd

    def close(self) -> None:
        self.m.shutdown()


def guest_vste(cd_gpa: int = CD_GPA, ats: bool = False) -> tuple[int, int]:
    ste = cdtable_ste(cd_gpa, ats=ats)
    return ste[0], ste[1]
