"""End to end through the Machine, ioctl ABI only: the VMM flow of the nesting series
(hw_info, NEST_PARENT, vIOMMU, vDEVICE, a nested HWPT from a guest vSTE over a guest CD
table and guest LPAE tables), guest invalidation, abort/bypass/invalid vSTEs, vEVENTs
and PRI faults through the fault queue."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from drivers.arm_smmu_v3.regs import (
    CMDQ_OP_CFGI_CD,
    CMDQ_OP_CFGI_STE,
    CMDQ_OP_TLBI_NH_ASID,
    CMDQ_OP_TLBI_NH_VA,
    IDR0_S1P,
    IDR0_S2P,
)
from iommu_sim import DmaFault
from iommufd import uapi as u

from .vmm import CD_GPA, DEV, GUEST, PAGE, VSID, Vmm, guest_vste, sz

RW = 3
GVA = 0x7F00_0000_0000


@pytest.fixture
def vmm() -> Iterator[Vmm]:
    vm = Vmm()
    yield vm
    vm.close()
    assert vm.m.kernel_pages_in_use == 0


def nested_setup(vmm: Vmm, ats: bool = False, fault_id: int = 0
                 ) -> tuple[int, int, int, object]:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = vmm.viommu_alloc(parent)
    vmm.vdevice_alloc(viommu, VSID)
    s1 = vmm.guest_s1()
    vmm.guest_cd(s1, asid=3)
    flags = u.IOMMU_HWPT_FAULT_ID_VALID if fault_id else 0
    nested = vmm.nested(viommu, guest_vste(ats=ats), flags=flags, fault_id=fault_id)
    return parent, viommu, nested, s1


def test_hw_info(vmm: Vmm) -> None:
    hi, info = vmm.hw_info()
    assert hi.out_data_type == u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3 and hi.data_len == 40
    assert info.idr[0] & (IDR0_S1P | IDR0_S2P) == IDR0_S1P | IDR0_S2P
    assert info.aidr == 2 and hi.out_max_pasid_log2 == 20
    assert hi.out_capabilities & u.IOMMU_HW_CAP_DIRTY_TRACKING


def test_nested_dma_and_guest_invalidation(vmm: Vmm) -> None:
    _parent, viommu, nested, s1 = nested_setup(vmm)
    s1.map(GVA, 0x10000, PAGE, RW)  # type: ignore[attr-defined]
    vmm.attach(nested)
    vmm.m.dma_write(DEV, GVA + 0x10, b"through both stages")
    assert vmm.m.mem_read(vmm.ram_va + 0x10010, 19) == b"through both stages"
    # The guest moves the page; the SMMU keeps the old combined translation...
    s1.unmap(GVA, PAGE)  # type: ignore[attr-defined]
    s1.map(GVA, 0x20000, PAGE, RW)  # type: ignore[attr-defined]
    vmm.m.dma_write(DEV, GVA, b"stale")
    assert vmm.m.mem_read(vmm.ram_va + 0x10000, 5) == b"stale"
    # ...until the guest's TLBI_NH_VA arrives through HWPT_INVALIDATE.
    inv = vmm.invalidate(viommu, [(CMDQ_OP_TLBI_NH_VA | (3 << 48), GVA | 1)])
    assert inv.entry_num == 1
    vmm.m.dma_write(DEV, GVA, b"fresh")
    assert vmm.m.mem_read(vmm.ram_va + 0x20000, 5) == b"fresh"
    assert vmm.m.mem_read(vmm.ram_va + 0x10000, 5) == b"stale"


def test_guest_cd_change_needs_cfgi_cd(vmm: Vmm) -> None:
    _parent, viommu, nested, s1 = nested_setup(vmm)
    s1.map(GVA, 0x10000, PAGE, RW)  # type: ignore[attr-defined]
    vmm.attach(nested)
    assert vmm.m.dma_read(DEV, GVA, 1) == b"\0"
    vmm.ram.write(CD_GPA, bytes(64))  # the guest invalidates its CD in memory
    vmm.invalidate(viommu, [(CMDQ_OP_TLBI_NH_ASID | (3 << 48), 0)])
    assert vmm.m.dma_read(DEV, GVA, 1) == b"\0"  # CD still cached
    vmm.invalidate(viommu, [(CMDQ_OP_CFGI_CD | (VSID << 32), 1)])
    with pytest.raises(DmaFault) as ei:
        vmm.m.dma_read(DEV, GVA, 1)
    assert ei.value.reason == "C_BAD_CD"


def test_abort_and_bypass_vste(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = vmm.viommu_alloc(parent)
    # Bypass and abort attach without a vDEVICE.
    bypass = vmm.nested(viommu, (1 | 4 << 1, 0))
    vmm.attach(bypass)
    vmm.m.mem_write(vmm.ram_va + 0x3000, b"gpa")
    assert vmm.m.dma_read(DEV, 0x3000, 3) == b"gpa"  # stage 2 only: IOVA = GPA
    with pytest.raises(DmaFault) as ei:
        vmm.m.dma_read(DEV, GUEST + PAGE, 1)  # outside the guest RAM mapping
    assert ei.value.reason == "F_TRANSLATION" and ei.value.detail["stage"] == 2
    for vste in ((1, 0), (0, 0), (0xFFFF_0000, 0xFFFF)):  # abort, and V=0 garbage
        vmm.attach(vmm.nested(viommu, vste))
        with pytest.raises(DmaFault) as ei:
            vmm.m.dma_read(DEV, 0x3000, 1)
        assert ei.value.reason == "ABORT"


@pytest.mark.parametrize("vste", [
    (1 | 5 << 1 | 1 << 52, 0),  # reserved q0 bits
    (1 | 6 << 1, 0),  # guest asks for stage 2
    (1 | 5 << 1, 2 << 28),  # EATS=S1CHK
    (1 | 5 << 1, 1 << 19),  # MEV
])
def test_invalid_vste_eio(vmm: Vmm, vste: tuple[int, int]) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = vmm.viommu_alloc(parent)
    with pytest.raises(OSError) as ei:
        vmm.nested(viommu, vste)
    assert ei.value.errno == errno.EIO


def test_translating_vste_needs_vdevice(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = vmm.viommu_alloc(parent)
    nested = vmm.nested(viommu, guest_vste())
    with pytest.raises(OSError) as ei:
        vmm.attach(nested)
    assert ei.value.errno == errno.ENOENT


def test_invalidation_errors(vmm: Vmm) -> None:
    _parent, viommu, _nested, _s1 = nested_setup(vmm)
    with pytest.raises(OSError) as ei:
        vmm.invalidate(viommu, [(CMDQ_OP_TLBI_NH_ASID, 0), (CMDQ_OP_CFGI_STE, 0)])
    # 7.3: the bad entry stops the conversion; entry_num counts the one before it.
    assert ei.value.errno == errno.EIO and ei.value.inv.entry_num == 1  # type: ignore[attr-defined]
    with pytest.raises(OSError) as ei:
        vmm.invalidate(viommu, [(CMDQ_OP_CFGI_CD | (0x999 << 32), 0)])
    assert ei.value.errno == errno.EIO


def test_viommu_needs_nest_parent(vmm: Vmm) -> None:
    plain = vmm.hwpt_alloc(vmm.ioas)
    with pytest.raises(OSError) as ei:
        vmm.viommu_alloc(plain)
    assert ei.value.errno == errno.EINVAL


def test_stage1_fault_reaches_veventq_with_vsid(vmm: Vmm) -> None:
    _parent, viommu, nested, s1 = nested_setup(vmm)
    vmm.attach(nested)
    efd = vmm.veventq_alloc(viommu)
    with pytest.raises(DmaFault) as ei:
        vmm.m.dma_write(DEV, GVA + 0x5000, b"x")  # the guest never mapped it
    assert ei.value.reason == "F_TRANSLATION" and ei.value.detail["stage"] == 1
    data = vmm.m.read(efd, 4096)
    assert len(data) == 8 + 32
    hdr = u.iommufd_vevent_header.from_buffer_copy(data[:8])
    assert hdr.flags == 0
    evt = [int.from_bytes(data[8 + i:16 + i], "little") for i in range(0, 32, 8)]
    assert evt[0] & 0xFF == 0x10 and evt[0] >> 32 == VSID  # F_TRANSLATION, the vSID
    assert evt[2] == GVA + 0x5000
    assert not evt[1] >> 35 & 1  # RnW = 0: a write
    del s1


def test_pri_fault_reaches_fault_fd_and_response_resumes(vmm: Vmm) -> None:
    fault_id, ffd = vmm.fault_alloc()
    _parent, viommu, nested, s1 = nested_setup(vmm, ats=True, fault_id=fault_id)
    vmm.attach(nested)
    dev = vmm.m.device(DEV)
    assert dev.props.get("pci.ats_enabled") and dev.props.get("pci.pri_enabled")
    with pytest.raises(DmaFault) as ei:
        vmm.m.dma_read(DEV, GVA + 0x7000, 4)
    assert ei.value.page_request
    raw = vmm.m.read(ffd, 40 * 4)
    assert len(raw) == 40
    pf = u.iommu_hwpt_pgfault.from_buffer_copy(raw)
    assert pf.addr == GVA + 0x7000 and pf.dev_id == vmm.dev_id
    assert pf.flags & u.IOMMU_PGFAULT_FLAGS_LAST_PAGE and pf.perm & u.IOMMU_PGFAULT_PERM_READ
    # The guest pages it in, then answers.
    vmm.m.mem_write(vmm.ram_va + 0x30000, b"paged")
    s1.map(GVA + 0x7000, 0x30000, PAGE, RW)  # type: ignore[attr-defined]
    resp = u.iommu_hwpt_page_response(cookie=pf.cookie, code=u.IOMMUFD_PAGE_RESP_SUCCESS)
    assert vmm.m.write(ffd, bytes(resp)) == 8
    hw = vmm.m.platform.iommus["smmu0"]
    assert hw.prg_responses[-1][2:] == (pf.grpid, 2)  # type: ignore[attr-defined]
    assert vmm.m.dma_read(DEV, GVA + 0x7000, 5) == b"paged"  # the retried request
    del viommu


def test_nested_on_fwb_hardware_without_canwbs() -> None:
    vm = Vmm()
    vm.m.device(DEV).canwbs = False  # firmware says the root port is not CANWBS
    parent = vm.hwpt_alloc(vm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    vm.viommu_alloc(parent)  # S2FWB makes it safe
    vm.close()
    vm = Vmm(fwb=False)
    vm.m.device(DEV).canwbs = False
    parent = vm.hwpt_alloc(vm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    with pytest.raises(OSError) as ei:
        vm.viommu_alloc(parent)
    assert ei.value.errno == errno.EOPNOTSUPP
    vm.close()


def test_nested_ats_needs_guest_atc_inv(vmm: Vmm) -> None:
    _parent, viommu, nested, s1 = nested_setup(vmm, ats=True)
    s1.map(GVA, 0x10000, PAGE, RW)  # type: ignore[attr-defined]
    vmm.attach(nested)
    assert vmm.m.device(DEV).props.get("pci.ats_enabled")
    vmm.m.dma_write(DEV, GVA, b"one")
    s1.unmap(GVA, PAGE)  # type: ignore[attr-defined]
    s1.map(GVA, 0x20000, PAGE, RW)  # type: ignore[attr-defined]
    # The SMMU TLB is invalidated, but the endpoint's ATC still holds the old page.
    vmm.invalidate(viommu, [(CMDQ_OP_TLBI_NH_VA | (3 << 48), GVA | 1)])
    vmm.m.dma_write(DEV, GVA, b"two")
    assert vmm.m.mem_read(vmm.ram_va + 0x10000, 3) == b"two"
    # The guest's ATC_INV names its vSID; the kernel sends it to the physical SID.
    vmm.invalidate(viommu, [(0x40 | (VSID << 32), 52)])
    vmm.m.dma_write(DEV, GVA, b"three")
    assert vmm.m.mem_read(vmm.ram_va + 0x20000, 5) == b"three"


def test_dirty_tracking_through_ioctls(vmm: Vmm) -> None:
    hwpt = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    vmm.attach(hwpt)
    st = u.iommu_hwpt_set_dirty_tracking(size=sz(u.iommu_hwpt_set_dirty_tracking),
                                         flags=u.IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
                                         hwpt_id=hwpt)
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING, st)
    vmm.m.dma_read(DEV, 0x4000, 8)
    vmm.m.dma_write(DEV, 0x6000, b"dirty")
    bitmap = vmm.m.mmap(PAGE)
    gd = u.iommu_hwpt_get_dirty_bitmap(size=sz(u.iommu_hwpt_get_dirty_bitmap), hwpt_id=hwpt,
                                       iova=0, length=64 * PAGE, page_size=PAGE, data=bitmap)
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_GET_DIRTY_BITMAP, gd)
    bits = int.from_bytes(vmm.m.mem_read(bitmap, 8), "little")
    assert bits == 1 << 6  # only the page the device wrote
    vmm.m.mem_write(bitmap, bytes(8))
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_GET_DIRTY_BITMAP, gd)
    assert int.from_bytes(vmm.m.mem_read(bitmap, 8), "little") == 0  # cleared

