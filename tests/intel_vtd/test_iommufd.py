"""End to end through the Machine, with the ioctl ABI only: hw_info, a nest parent on
an IOAS holding guest RAM, a nested HWPT over a guest-built x86-64 stage 1, DMA with and
without PASID, guest invalidation, the erratum rule, and dirty tracking."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from typing import Any

import pytest

from iommu_sim import DmaFault, Machine
from iommufd import uapi as u
from iommufd import uapi_vfio as v

from .helpers import GuestRam, guest_fs_table

DEV = "0000:10:00.0"
GUEST = 128 * 4096  # guest RAM: IOVA (GPA) 0 .. 512 KiB of the IOAS
GIOVA = 0x7EFF_FFF0_0000
RW = 3


def sz(s: Any) -> int:
    return ctypes.sizeof(s)


class Vmm:
    """A minimal VMM: iommufd, one VFIO device, guest RAM in an IOAS."""

    def __init__(self, **options: Any) -> None:
        self.m = Machine.from_config({
            "iommus": [{"name": "dmar0", "driver": "intel_vtd", **options}],
            "devices": [{"name": DEV, "iommu": "dmar0"}]})
        m = self.m
        self.fd = m.open("/dev/iommu")
        self.vfd = m.open(m.vfio_cdev(DEV))
        bind = v.vfio_device_bind_iommufd(argsz=sz(v.vfio_device_bind_iommufd),
                                          iommufd=self.fd)
        m.ioctl(self.vfd, v.VFIO_DEVICE_BIND_IOMMUFD, bind)
        self.dev_id = bind.out_devid
        ioas = u.iommu_ioas_alloc(size=sz(u.iommu_ioas_alloc))
        m.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, ioas)
        self.ioas = ioas.out_ioas_id
        self.ram_va = m.mmap(GUEST)
        self.map(self.ram_va, GUEST, 0)
        self.ram = GuestRam(lambda g, n: m.mem_read(self.ram_va + g, n),
                            lambda g, d: m.mem_write(self.ram_va + g, d), GUEST, 32)
        self.scratch = m.mmap(4096)

    def map(self, va: int, length: int, iova: int,
            flags: int = u.IOMMU_IOAS_MAP_READABLE | u.IOMMU_IOAS_MAP_WRITEABLE) -> None:
        mp = u.iommu_ioas_map(size=sz(u.iommu_ioas_map), ioas_id=self.ioas, user_va=va,
                              length=length, iova=iova,
                              flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | flags)
        self.m.ioctl(self.fd, u.IOMMU_IOAS_MAP, mp)

    def hwpt_alloc(self, pt_id: int, flags: int = 0, data: bytes = b"",
                   data_type: int = u.IOMMU_HWPT_DATA_NONE) -> int:
        if data:
            self.m.mem_write(self.scratch, data)
        a = u.iommu_hwpt_alloc(size=sz(u.iommu_hwpt_alloc), flags=flags, dev_id=self.dev_id,
                               pt_id=pt_id, data_type=data_type, data_len=len(data),
                               data_uptr=self.scratch if data else 0)
        self.m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, a)
        return int(a.out_hwpt_id)

    def nested(self, parent: int, pgtbl: int, flags: int = 0, addr_width: int = 48,
               alloc_flags: int = u.IOMMU_HWPT_ALLOC_PASID) -> int:
        s1 = u.iommu_hwpt_vtd_s1(flags=flags, pgtbl_addr=pgtbl, addr_width=addr_width)
        return self.hwpt_alloc(parent, alloc_flags, bytes(s1), u.IOMMU_HWPT_DATA_VTD_S1)

    def attach(self, pt_id: int, pasid: int | None = None) -> None:
        at = v.vfio_device_attach_iommufd_pt(
            argsz=sz(v.vfio_device_attach_iommufd_pt), pt_id=pt_id,
            flags=0 if pasid is None else v.VFIO_DEVICE_ATTACH_PASID, pasid=pasid or 0)
        self.m.ioctl(self.vfd, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)

    def detach(self, pasid: int | None = None) -> None:
        d = v.vfio_device_detach_iommufd_pt(
            argsz=sz(v.vfio_device_detach_iommufd_pt),
            flags=0 if pasid is None else v.VFIO_DEVICE_DETACH_PASID, pasid=pasid or 0)
        self.m.ioctl(self.vfd, v.VFIO_DEVICE_DETACH_IOMMUFD_PT, d)

    def invalidate(self, hwpt: int, entries: list[tuple[int, int, int]],
                   entry_len: int = 24, data_type: int = u.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1
                   ) -> u.iommu_hwpt_invalidate:
        raw = b"".join(bytes(u.iommu_hwpt_vtd_s1_invalidate(addr=a, npages=n, flags=f))
                       for a, n, f in entries)
        self.m.mem_write(self.scratch, raw or b"\0")
        inv = u.iommu_hwpt_invalidate(size=sz(u.iommu_hwpt_invalidate), hwpt_id=hwpt,
                                      data_uptr=self.scratch, data_type=data_type,
                                      entry_len=entry_len, entry_num=len(entries))
        try:
            self.m.ioctl(self.fd, u.IOMMU_HWPT_INVALIDATE, inv)
        except OSError as e:
            e.inv = inv  # type: ignore[attr-defined]
            raise
        return inv

    def close(self) -> None:
        self.m.shutdown()


@pytest.fixture
def vmm() -> Iterator[Vmm]:
    vm = Vmm()
    yield vm
    vm.close()
    assert vm.m.kernel_pages_in_use == 0


def guest_table(vmm: Vmm, maps: dict[int, int]) -> int:
    s1 = guest_fs_table(vmm.ram)
    for iova, gpa in maps.items():
        s1.map(iova, gpa, 4096, RW)
    return s1.root


def test_hw_info(vmm: Vmm) -> None:
    info = u.iommu_hw_info_vtd()
    hi = u.iommu_hw_info(size=sz(u.iommu_hw_info), dev_id=vmm.dev_id, data_len=sz(info),
                         data_uptr=vmm.scratch)
    vmm.m.ioctl(vmm.fd, u.IOMMU_GET_HW_INFO, hi)
    info = u.iommu_hw_info_vtd.from_buffer_copy(vmm.m.mem_read(vmm.scratch, sz(info)))
    assert hi.out_data_type == u.IOMMU_HW_INFO_TYPE_INTEL_VTD and hi.data_len == 24
    assert info.flags == u.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17
    assert info.ecap_reg >> 26 & 1 and info.ecap_reg >> 43 & 1  # NEST, SMTS
    assert hi.out_max_pasid_log2 == 20


def test_nested_dma_with_and_without_pasid(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    root = guest_table(vmm, {GIOVA: 0x5000, GIOVA + 0x1000: 0x6000})
    nested = vmm.nested(parent, root)
    vmm.attach(nested)
    vmm.m.dma_write(DEV, GIOVA + 8, b"to gpa 0x5008")
    assert vmm.m.mem_read(vmm.ram_va + 0x5008, 13) == b"to gpa 0x5008"
    vmm.m.mem_write(vmm.ram_va + 0x6000, b"from 0x6000")
    assert vmm.m.dma_read(DEV, GIOVA + 0x1000, 11) == b"from 0x6000"
    nested2 = vmm.nested(parent, guest_table(vmm, {GIOVA: 0x7000}))
    vmm.attach(nested2, pasid=42)
    vmm.m.dma_write(DEV, GIOVA, b"pasid 42", pasid=42)
    assert vmm.m.mem_read(vmm.ram_va + 0x7000, 8) == b"pasid 42"
    with pytest.raises(DmaFault):
        vmm.m.dma_read(DEV, GIOVA + 0x1000, 4, pasid=42)
    vmm.detach(pasid=42)
    vmm.detach()


def test_guest_pte_change_invisible_until_invalidate(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    s1 = guest_fs_table(vmm.ram)
    s1.map(GIOVA, 0x5000, 4096, RW)
    nested = vmm.nested(parent, s1.root)
    vmm.attach(nested)
    vmm.m.mem_write(vmm.ram_va + 0x5000, b"old")
    vmm.m.mem_write(vmm.ram_va + 0x9000, b"new")
    assert vmm.m.dma_read(DEV, GIOVA, 3) == b"old"
    s1.unmap(GIOVA, 4096)
    s1.map(GIOVA, 0x9000, 4096, RW)
    assert vmm.m.dma_read(DEV, GIOVA, 3) == b"old"
    # not a leaf-only change: the guest's unmap freed the tables and map made new ones
    inv = vmm.invalidate(nested, [(GIOVA, 1, 0)])
    assert inv.entry_num == 1
    assert vmm.m.dma_read(DEV, GIOVA, 3) == b"new"
    s1.unmap(GIOVA, 4096)
    vmm.invalidate(nested, [(0, 2**64 - 1, 0)])  # flush everything
    with pytest.raises(DmaFault):
        vmm.m.dma_read(DEV, GIOVA, 3)
    vmm.detach()


@pytest.mark.parametrize(("entries", "err", "done"), [
    ([(0x1000, 1, 0), (0x2000, 1, 2)], errno.EOPNOTSUPP, 1),
    ([(0x1000, 1, 0), (0x1000, 1, 0), (0x2800, 1, 0)], errno.EINVAL, 2),
    ([(0x1000, 2**64 - 1, 0)], errno.EINVAL, 0),
])
def test_invalidate_errnos(vmm: Vmm, entries: list[tuple[int, int, int]], err: int,
                           done: int) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    nested = vmm.nested(parent, guest_table(vmm, {}))
    with pytest.raises(OSError) as e:
        vmm.invalidate(nested, entries)
    assert e.value.errno == err
    assert e.value.inv.entry_num == done  # type: ignore[attr-defined]


def test_invalidate_type_and_length(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    nested = vmm.nested(parent, guest_table(vmm, {}))
    for kw in ({"data_type": 1}, {"entry_len": 16}):
        with pytest.raises(OSError) as e:
            vmm.invalidate(nested, [(0, 1, 0)], **kw)  # type: ignore[arg-type]
        assert e.value.errno == errno.EINVAL
        assert e.value.inv.entry_num == 0  # type: ignore[attr-defined]
    assert vmm.invalidate(nested, []).entry_num == 0  # type probe


def test_nested_alloc_errnos(vmm: Vmm) -> None:
    plain = vmm.hwpt_alloc(vmm.ioas)
    with pytest.raises(OSError) as e:
        vmm.nested(plain, 0)
    assert e.value.errno == errno.EINVAL  # not a nest parent
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    with pytest.raises(OSError) as e:
        vmm.hwpt_alloc(parent, 0, bytes(u.iommu_hwpt_vtd_s1())[:16], u.IOMMU_HWPT_DATA_VTD_S1)
    assert e.value.errno == errno.EINVAL
    bad_width = vmm.nested(parent, 0, addr_width=39)  # allocation does not check it
    with pytest.raises(OSError) as e:
        vmm.attach(bad_width)
    assert e.value.errno == errno.EINVAL


def test_read_only_map_refused_with_nest_parent(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    vmm.attach(vmm.nested(parent, guest_table(vmm, {GIOVA: 0x5000})))
    extra = vmm.m.mmap(4096)
    with pytest.raises(OSError) as e:
        vmm.map(extra, 4096, 0x200_0000, u.IOMMU_IOAS_MAP_READABLE)
    assert e.value.errno == errno.EINVAL
    vmm.map(extra, 4096, 0x200_0000)  # read-write is fine
    vmm.m.dma_write(DEV, GIOVA, b"ok")
    vmm.detach()


def test_read_only_area_blocks_nest_parent(vmm: Vmm) -> None:
    extra = vmm.m.mmap(4096)
    vmm.map(extra, 4096, 0x100_0000, u.IOMMU_IOAS_MAP_READABLE)  # no parent yet: fine
    vmm.hwpt_alloc(vmm.ioas)  # an ordinary HWPT takes it
    with pytest.raises(OSError) as e:  # the existing read-only area cannot be mapped
        vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    assert e.value.errno == errno.EINVAL


def test_dirty_tracking_reports_nested_writes(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT
                            | u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    maps = {GIOVA + i * 4096: 0x10000 + i * 4096 for i in range(8)}
    nested = vmm.nested(parent, guest_table(vmm, maps))
    vmm.attach(nested)
    st = u.iommu_hwpt_set_dirty_tracking(size=sz(u.iommu_hwpt_set_dirty_tracking),
                                         hwpt_id=parent,
                                         flags=u.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING, st)
    vmm.m.dma_read(DEV, GIOVA, 8)
    vmm.m.dma_write(DEV, GIOVA + 2 * 4096, b"x")
    vmm.m.dma_write(DEV, GIOVA + 5 * 4096 + 4000, b"y" * 200)  # crosses into page 6
    bitmap = vmm.m.mmap(4096)
    gd = u.iommu_hwpt_get_dirty_bitmap(size=sz(u.iommu_hwpt_get_dirty_bitmap),
                                       hwpt_id=parent, iova=0, length=GUEST,
                                       page_size=4096, data=bitmap)
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_GET_DIRTY_BITMAP, gd)
    bits = int.from_bytes(vmm.m.mem_read(bitmap, GUEST // 4096 // 8), "little")
    want = {0x10000 // 4096 + i for i in (2, 5, 6)}
    assert {i for i in range(GUEST // 4096) if bits >> i & 1} == want
    vmm.m.mem_write(bitmap, bytes(16))
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_GET_DIRTY_BITMAP, gd)
    assert not any(vmm.m.mem_read(bitmap, 16))  # cleared by the first read
    vmm.detach()


def test_iopf_through_the_fault_queue(vmm: Vmm) -> None:
    """A nested domain with a fault queue: the device's page request reaches the VMM
    through the PRQ and iommufd; the VMM fixes the guest table, invalidates, responds,
    and the device's retry succeeds."""
    fa = u.iommu_fault_alloc(size=sz(u.iommu_fault_alloc))
    vmm.m.ioctl(vmm.fd, u.IOMMU_FAULT_QUEUE_ALLOC, fa)
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    s1 = guest_fs_table(vmm.ram)
    vmm.m.mem_write(vmm.scratch, bytes(u.iommu_hwpt_vtd_s1(pgtbl_addr=s1.root,
                                                           addr_width=48)))
    a = u.iommu_hwpt_alloc(size=sz(u.iommu_hwpt_alloc), dev_id=vmm.dev_id, pt_id=parent,
                           flags=u.IOMMU_HWPT_FAULT_ID_VALID | u.IOMMU_HWPT_ALLOC_PASID,
                           data_type=u.IOMMU_HWPT_DATA_VTD_S1, data_len=24,
                           data_uptr=vmm.scratch, fault_id=fa.out_fault_id)
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_ALLOC, a)
    nested = a.out_hwpt_id
    vmm.attach(nested, pasid=7)
    with pytest.raises(DmaFault) as e:
        vmm.m.dma_write(DEV, GIOVA + 0x20, b"faulted in", pasid=7)
    assert e.value.page_request
    rec = u.iommu_hwpt_pgfault.from_buffer_copy(
        vmm.m.read(fa.out_fault_fd, sz(u.iommu_hwpt_pgfault)))
    assert (rec.dev_id, rec.pasid, rec.addr) == (vmm.dev_id, 7, GIOVA)
    assert rec.flags & u.IOMMU_PGFAULT_FLAGS_PASID_VALID
    assert rec.perm & u.IOMMU_PGFAULT_PERM_WRITE
    s1.map(GIOVA, 0x8000, 4096, RW)
    vmm.invalidate(nested, [(GIOVA, 1, 0)])
    vmm.m.write(fa.out_fault_fd, bytes(u.iommu_hwpt_page_response(
        cookie=rec.cookie, code=u.IOMMUFD_PAGE_RESP_SUCCESS)))
    vmm.m.dma_write(DEV, GIOVA + 0x20, b"faulted in", pasid=7)
    assert vmm.m.mem_read(vmm.ram_va + 0x8020, 10) == b"faulted in"
    vmm.detach(pasid=7)
