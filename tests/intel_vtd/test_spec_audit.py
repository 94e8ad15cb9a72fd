"""Rule-by-rule audit against vtd_amd.md PART A and uapi.md §6/§10, through the Machine's
ioctl ABI wherever the rule is observable there (the hardware's tables are read only to
check where a bit landed)."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from typing import Any

import pytest

from drivers.intel_vtd import pasid as vtd_pasid
from drivers.intel_vtd.iommu import dev_info
from iommu_sim import DmaFault
from iommufd import uapi as u

from .test_iommufd import DEV, GIOVA, Vmm, guest_table, sz


@pytest.fixture
def vmm() -> Iterator[Vmm]:
    vm = Vmm()
    yield vm
    vm.close()
    assert vm.m.kernel_pages_in_use == 0


def hw_info(vmm: Vmm, in_type: int | None = None, data_len: int = 24
            ) -> tuple[u.iommu_hw_info, bytes]:
    hi = u.iommu_hw_info(size=sz(u.iommu_hw_info), dev_id=vmm.dev_id, data_len=data_len,
                         data_uptr=vmm.scratch)
    if in_type is not None:
        hi.flags = u.IOMMU_HW_INFO_FLAG_INPUT_TYPE
        hi.in_data_type = in_type
    vmm.m.ioctl(vmm.fd, u.IOMMU_GET_HW_INFO, hi)
    return hi, vmm.m.mem_read(vmm.scratch, data_len)


def bits(v: int, hi: int, lo: int) -> int:
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


def errno_of(fn: Any, *a: Any, **kw: Any) -> int:
    with pytest.raises(OSError) as e:
        fn(*a, **kw)
    return int(e.value.errno or 0)


def pasid_entry(vmm: Vmm, pasid: int) -> tuple[int, ...]:
    info = dev_info(vmm.m.device(DEV))
    pte = vtd_pasid.intel_pasid_get_entry(info.iommu, info, pasid, alloc=False)
    assert pte is not None
    return vtd_pasid.read_pasid_entry(info.iommu, pte).val


# -- A2 / A11: CAP, ECAP, the default feature set and hw_info --------------------------
def test_hw_info_layout_and_default_features(vmm: Vmm) -> None:
    hi, raw = hw_info(vmm)
    assert (hi.out_data_type, hi.data_len) == (u.IOMMU_HW_INFO_TYPE_INTEL_VTD, 24)
    info = u.iommu_hw_info_vtd.from_buffer_copy(raw)
    assert info.flags == u.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17  # A11: every unit
    assert int.from_bytes(raw[4:8], "little") == 0  # __reserved
    cap, ecap = info.cap_reg, info.ecap_reg
    # DESIGN.md: scalable mode, first and second stage, nesting, 20-bit PASID, PRS,
    # second-stage dirty tracking (SLADS needs SMPWC for ssads_supported).
    for name, bit in (("QI", 1), ("DT", 2), ("NEST", 26), ("PRS", 29), ("PASID", 40),
                      ("SMTS", 43), ("SLADS", 45), ("SLTS", 46), ("FLTS", 47),
                      ("SMPWC", 48)):
        assert ecap >> bit & 1, name
    assert bits(ecap, 39, 35) + 1 == 20  # PSS: PASID bits = PSS + 1
    assert bits(cap, 12, 8) & 0b100  # SAGAW: 48-bit 4-level
    assert bits(cap, 21, 16) + 1 >= 48  # MGAW
    assert cap >> 39 & 1  # PSI
    assert hi.out_max_pasid_log2 == 20
    assert hi.out_capabilities & u.IOMMU_HW_CAP_DIRTY_TRACKING


def test_hw_info_requested_type(vmm: Vmm) -> None:
    hi, _ = hw_info(vmm, u.IOMMU_HW_INFO_TYPE_INTEL_VTD)
    assert hi.out_data_type == u.IOMMU_HW_INFO_TYPE_INTEL_VTD
    for other in (u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3, u.IOMMU_HW_INFO_TYPE_AMD):
        assert errno_of(hw_info, vmm, other) == errno.EOPNOTSUPP


def test_feature_off_changes_hw_info_and_allocation() -> None:
    vm = Vmm(dirty_tracking=False, nesting=False)
    try:
        hi, raw = hw_info(vm)
        ecap = u.iommu_hw_info_vtd.from_buffer_copy(raw).ecap_reg
        assert not ecap >> 45 & 1 and not ecap >> 26 & 1
        assert not hi.out_capabilities & u.IOMMU_HW_CAP_DIRTY_TRACKING
        for flags in (u.IOMMU_HWPT_ALLOC_NEST_PARENT, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING):
            assert errno_of(vm.hwpt_alloc, vm.ioas, flags) == errno.EOPNOTSUPP
    finally:
        vm.close()


# -- A9.1: paging domain allocation ------------------------------------------------------
def test_paging_alloc_flags(vmm: Vmm) -> None:
    for flags in (0, u.IOMMU_HWPT_ALLOC_PASID, u.IOMMU_HWPT_ALLOC_NEST_PARENT,
                  u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                  u.IOMMU_HWPT_ALLOC_NEST_PARENT | u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                  | u.IOMMU_HWPT_ALLOC_PASID):
        vmm.hwpt_alloc(vmm.ioas, flags)
    # user data on a paging allocation
    s1 = bytes(u.iommu_hwpt_vtd_s1(addr_width=48))
    assert errno_of(vmm.hwpt_alloc, vmm.ioas, 0, s1,
                    u.IOMMU_HWPT_DATA_VTD_S1) == errno.EOPNOTSUPP


def test_plain_hwpt_is_first_stage_and_nest_parent_second_stage(vmm: Vmm) -> None:
    """A9.1: flags within PASID on FLTS hardware give a first-stage domain (PGTT 1);
    NEST_PARENT / DIRTY_TRACKING force second stage (PGTT 2)."""
    for flags, pgtt in ((0, 1), (u.IOMMU_HWPT_ALLOC_NEST_PARENT, 2),
                        (u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING, 2)):
        vmm.attach(vmm.hwpt_alloc(vmm.ioas, flags))
        pe = pasid_entry(vmm, 0)
        assert bits(pe[0], 8, 6) == pgtt and pe[0] & 1
        assert bits(pe[0], 4, 2) == 2  # AW: 4-level
        assert pe[1] >> 23 & 1  # PWSNP = ECAP.SMPWC
        vmm.m.dma_write(DEV, 0x1000, b"x")  # guest RAM is IOVA 0.. in the IOAS
    vmm.detach()


# -- A9.4: set_dev_pasid -------------------------------------------------------------------
def test_dirty_tracking_hwpt_at_pasid(vmm: Vmm) -> None:
    """Linux 7.3 intel_iommu_set_dev_pasid() takes a dirty-tracking domain; enabling
    tracking sets SSADE in the PASID's entry and a DMA write at that PASID is in the
    bitmap (intel_iommu_set_dirty_tracking() walks dev_pasids)."""
    dirty = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                           | u.IOMMU_HWPT_ALLOC_PASID)
    vmm.attach(dirty, pasid=5)
    pe = pasid_entry(vmm, 5)
    assert bits(pe[0], 8, 6) == 2 and not pe[0] >> 9 & 1  # SS, SSADE off
    st = u.iommu_hwpt_set_dirty_tracking(size=sz(u.iommu_hwpt_set_dirty_tracking),
                                         hwpt_id=dirty,
                                         flags=u.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING, st)
    assert pasid_entry(vmm, 5)[0] >> 9 & 1
    vmm.m.dma_write(DEV, 0x2000, b"w", pasid=5)
    vmm.m.dma_read(DEV, 0x3000, 4, pasid=5)
    assert _dirty_bitmap(vmm, dirty, 64 * 4096) == 0b100
    vmm.m.dma_write(DEV, 0x2000, b"again", pasid=5)  # the cached entry was flushed
    assert _dirty_bitmap(vmm, dirty, 64 * 4096) == 0b100
    vmm.detach(pasid=5)


# -- A10.1: nested allocation ------------------------------------------------------------
def test_nested_alloc_errnos(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    s1 = bytes(u.iommu_hwpt_vtd_s1(addr_width=48, pgtbl_addr=0x1000))
    # data type other than VTD_S1: EOPNOTSUPP (checked before the parent)
    assert errno_of(vmm.hwpt_alloc, parent, 0, s1,
                    u.IOMMU_HWPT_DATA_ARM_SMMUV3) == errno.EOPNOTSUPP
    # flags other than PASID (the core lets FAULT_ID_VALID through only)
    assert errno_of(vmm.hwpt_alloc, parent, u.IOMMU_HWPT_ALLOC_NEST_PARENT, s1,
                    u.IOMMU_HWPT_DATA_VTD_S1) == errno.EOPNOTSUPP
    # parent must be a second-stage nest parent
    fs = vmm.hwpt_alloc(vmm.ioas)
    assert errno_of(vmm.hwpt_alloc, fs, 0, s1, u.IOMMU_HWPT_DATA_VTD_S1) == errno.EINVAL
    # iommu_copy_struct_from_user: shorter than 24 or longer than the struct: EINVAL
    for data in (s1[:20], s1 + bytes(8)):
        assert errno_of(vmm.hwpt_alloc, parent, 0, data,
                        u.IOMMU_HWPT_DATA_VTD_S1) == errno.EINVAL
    # Not checked at allocation: unknown s1 flags, __reserved, addr_width (A4.3)
    odd = bytes(u.iommu_hwpt_vtd_s1(flags=1 << 40, addr_width=39))
    vmm.hwpt_alloc(parent, 0, odd, u.IOMMU_HWPT_DATA_VTD_S1)


# -- A4.2 / A4.3 / A10.2: the nested PASID entry and its attach-time checks -------------
def test_nested_pasid_entry_bits(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT
                            | u.IOMMU_HWPT_ALLOC_PASID)
    root = guest_table(vmm, {GIOVA: 0x5000})
    flags = u.IOMMU_VTD_S1_SRE | u.IOMMU_VTD_S1_WPE | u.IOMMU_VTD_S1_EAFE
    nested = vmm.nested(parent, root | 0xABC, flags=flags)  # low 12 bits dropped
    vmm.attach(parent, pasid=3)  # the parent holds a DID of its own meanwhile
    parent_did = pasid_entry(vmm, 3)[1] & 0xFFFF
    vmm.attach(nested)
    pe = pasid_entry(vmm, 0)
    info = dev_info(vmm.m.device(DEV))
    s2_root = info.domain.s2_domain.pgtable.root  # type: ignore[union-attr]
    assert pe[0] & 1 and not pe[0] >> 1 & 1  # P, FPD=0
    assert bits(pe[0], 8, 6) == 3 and bits(pe[0], 4, 2) == 2  # PGTT nested, AW S2
    assert pe[0] & ~0xFFF == s2_root and not pe[0] >> 9 & 1  # SSPTPTR; no SSADE
    did = pe[1] & 0xFFFF
    assert did not in (0, 1, parent_did)  # the nested domain's own DID
    # PWSNP = SMPWC; PGSNP: iommufd made the VFIO device's S2 enforce snooping
    assert pe[1] >> 23 & 1 and pe[1] >> 24 & 1
    assert info.domain.s2_domain.force_snooping  # type: ignore[union-attr]
    assert pe[2] & 1 and pe[2] >> 4 & 1 and pe[2] >> 7 & 1  # SRE, WPE, EAFE
    assert bits(pe[2], 3, 2) == 0  # FSPM 4-level (addr_width 48)
    assert pe[2] & ~0xFFF == root
    assert not any(pe[3:])
    vmm.m.dma_write(DEV, GIOVA, b"nested")
    assert vmm.m.mem_read(vmm.ram_va + 0x5000, 6) == b"nested"
    vmm.detach(pasid=3)
    vmm.detach()


@pytest.mark.parametrize(("options", "flags", "width"), [
    ({}, 0, 39), ({}, 0, 0), ({"fl5lp": False}, 0, 57),
    ({"supervisor_requests": False}, u.IOMMU_VTD_S1_SRE, 48),
    ({"extended_access_flag": False}, u.IOMMU_VTD_S1_EAFE, 48),
])
def test_nested_attach_checks(options: dict[str, Any], flags: int, width: int) -> None:
    vm = Vmm(**options)
    try:
        parent = vm.hwpt_alloc(vm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        nested = vm.nested(parent, guest_table(vm, {}), flags=flags, addr_width=width)
        assert errno_of(vm.attach, nested) == errno.EINVAL
        assert errno_of(vm.attach, nested, pasid=3) == errno.EINVAL
    finally:
        vm.close()


def test_nested_five_level_and_wpe_without_sre(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    nested = vmm.nested(parent, guest_table(vmm, {}), flags=u.IOMMU_VTD_S1_WPE,
                        addr_width=57)
    vmm.attach(nested, pasid=9)
    pe = pasid_entry(vmm, 9)
    assert bits(pe[2], 3, 2) == 1  # FSPM: 5-level
    assert not pe[2] & 1 and not pe[2] >> 4 & 1  # WPE without SRE is ignored
    vmm.detach(pasid=9)


def test_nested_dirty_parent_sets_ssade(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT
                            | u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    st = u.iommu_hwpt_set_dirty_tracking(size=sz(u.iommu_hwpt_set_dirty_tracking),
                                         hwpt_id=parent,
                                         flags=u.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING, st)
    vmm.attach(vmm.nested(parent, guest_table(vmm, {})))
    assert pasid_entry(vmm, 0)[0] >> 9 & 1  # SSADE inherited at setup (A12)
    st.flags = 0
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING, st)
    assert not pasid_entry(vmm, 0)[0] >> 9 & 1  # and toggled through the parent
    # A12: set_dirty_tracking on a domain without dirty ops
    plain = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    st.hwpt_id, st.flags = plain, u.IOMMU_HWPT_DIRTY_TRACKING_ENABLE
    assert errno_of(vmm.m.ioctl, vmm.fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING,
                    st) == errno.EOPNOTSUPP
    vmm.detach()


# -- A10.3: cache_invalidate_user ---------------------------------------------------------
def test_invalidate_entry_rules(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    nested = vmm.nested(parent, guest_table(vmm, {}))
    vmm.attach(nested)
    # __reserved != 0 -> EOPNOTSUPP, entry_num = entries before it
    raw = bytearray(bytes(u.iommu_hwpt_vtd_s1_invalidate(addr=0, npages=1)) * 2)
    raw[24 + 20] = 1
    vmm.m.mem_write(vmm.scratch, bytes(raw))
    inv = u.iommu_hwpt_invalidate(size=sz(u.iommu_hwpt_invalidate), hwpt_id=nested,
                                  data_uptr=vmm.scratch,
                                  data_type=u.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
                                  entry_len=24, entry_num=2)
    assert errno_of(vmm.m.ioctl, vmm.fd, u.IOMMU_HWPT_INVALIDATE, inv) == errno.EOPNOTSUPP
    assert inv.entry_num == 1
    # LEAF, npages 0, U64_MAX at 0 (flush all) are all accepted
    done = vmm.invalidate(nested, [(0x1000, 1, u.IOMMU_VTD_INV_FLAGS_LEAF),
                                   (0x2000, 0, 0), (0, 2**64 - 1, 0), (0x4000, 512, 0)])
    assert done.entry_num == 4
    # the parent (a paging HWPT) takes no invalidation: EINVAL
    assert errno_of(vmm.invalidate, parent, [(0, 1, 0)]) == errno.EINVAL
    vmm.detach()


def test_invalidation_reaches_pasid_attachment(vmm: Vmm) -> None:
    """A7: the user invalidation flushes (nested DID, attach PASID)."""
    from .helpers import guest_fs_table

    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    s1 = guest_fs_table(vmm.ram)
    s1.map(GIOVA, 0x5000, 4096, 3)
    nested = vmm.nested(parent, s1.root)
    vmm.attach(nested, pasid=77)
    vmm.m.mem_write(vmm.ram_va + 0x5000, b"old")
    vmm.m.mem_write(vmm.ram_va + 0x6000, b"new")
    assert vmm.m.dma_read(DEV, GIOVA, 3, pasid=77) == b"old"
    s1.unmap(GIOVA, 4096)
    s1.map(GIOVA, 0x6000, 4096, 3)
    assert vmm.m.dma_read(DEV, GIOVA, 3, pasid=77) == b"old"  # stale until invalidated
    vmm.invalidate(nested, [(GIOVA, 1, 0)])
    assert vmm.m.dma_read(DEV, GIOVA, 3, pasid=77) == b"new"
    vmm.detach(pasid=77)


# -- A11 / A5.3: nest parent and read-only mappings; IOAS_COPY too ----------------------
def test_read_only_copy_refused_on_nest_parent(vmm: Vmm) -> None:
    vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    ioas2 = u.iommu_ioas_alloc(size=sz(u.iommu_ioas_alloc))
    vmm.m.ioctl(vmm.fd, u.IOMMU_IOAS_ALLOC, ioas2)
    cp = u.iommu_ioas_copy(size=sz(u.iommu_ioas_copy),
                           flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE,
                           dst_ioas_id=vmm.ioas, src_ioas_id=vmm.ioas, length=4096,
                           dst_iova=0x400_0000, src_iova=0)
    assert errno_of(vmm.m.ioctl, vmm.fd, u.IOMMU_IOAS_COPY, cp) == errno.EINVAL


# -- A13: fault reasons the unit records for what Linux programs ------------------------
def test_fault_reasons(vmm: Vmm) -> None:
    # Blocked (no domain: PASID-0 entry torn down): PASID entry P clear.
    with pytest.raises(DmaFault) as e:
        vmm.m.dma_read(DEV, 0x1000, 4)
    assert e.value.detail["code"] == 0x59
    vmm.attach(vmm.hwpt_alloc(vmm.ioas))  # first stage
    with pytest.raises(DmaFault) as e:  # not mapped: FS entry not present
        vmm.m.dma_read(DEV, 0x100_0000, 4)
    assert e.value.detail["code"] == 0x71
    with pytest.raises(DmaFault) as e:  # PASID without a PASID attachment
        vmm.m.dma_read(DEV, 0x1000, 4, pasid=4)
    assert e.value.detail["code"] == 0x59
    vmm.detach()


def test_first_stage_leaves_as_linux_writes_them(vmm: Vmm) -> None:
    """A5.2: FS leaves carry P, RW (if writable), U/S, A, D (if writable)."""
    extra = vmm.m.mmap(2 * 4096)
    hw = vmm.hwpt_alloc(vmm.ioas)
    vmm.map(extra, 4096, 0x80_0000, u.IOMMU_IOAS_MAP_READABLE)
    vmm.map(extra + 4096, 4096, 0x80_1000)
    vmm.attach(hw)
    info = dev_info(vmm.m.device(DEV))
    pt = info.domain.pgtable  # type: ignore[union-attr]
    from iommu_core.pgtable.walk import Access, walk

    mem = info.iommu.mem
    ro = walk(pt.fmt, mem.read_u64, pt.root, 0x80_0000, access=Access.READ,
              privileged=True)
    rw = walk(pt.fmt, mem.read_u64, pt.root, 0x80_1000, access=Access.READ,
              privileged=True)
    for r, writable in ((ro, False), (rw, True)):
        desc = getattr(r, "desc", None)
        assert isinstance(desc, int)
        assert desc & 1 and desc >> 2 & 1 and desc >> 5 & 1
        assert bool(desc >> 1 & 1) == writable and bool(desc >> 6 & 1) == writable
    vmm.detach()


def test_sizes() -> None:
    assert ctypes.sizeof(u.iommu_hw_info_vtd) == 24
    assert ctypes.sizeof(u.iommu_hwpt_vtd_s1) == 24
    assert ctypes.sizeof(u.iommu_hwpt_vtd_s1_invalidate) == 24


# -- A12: dirty tracking through iommufd ----------------------------------------------
def _dirty_bitmap(vmm: Vmm, hwpt: int, length: int) -> int:
    bm = vmm.m.mmap(4096)
    gd = u.iommu_hwpt_get_dirty_bitmap(size=sz(u.iommu_hwpt_get_dirty_bitmap),
                                       hwpt_id=hwpt, iova=0, length=length,
                                       page_size=4096, data=bm)
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_GET_DIRTY_BITMAP, gd)
    return int.from_bytes(vmm.m.mem_read(bm, 8), "little")


def test_dirty_tracking_through_iommufd(vmm: Vmm) -> None:
    hwpt = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    vmm.attach(hwpt)
    vmm.m.dma_write(DEV, 0x1000, b"before")
    assert not pasid_entry(vmm, 0)[0] >> 9 & 1
    # tracking off: 7.3's generic read_and_clear_dirty reads on; SSADE=0 set no D bit
    assert _dirty_bitmap(vmm, hwpt, 64 * 4096) == 0
    st = u.iommu_hwpt_set_dirty_tracking(size=sz(u.iommu_hwpt_set_dirty_tracking),
                                         hwpt_id=hwpt,
                                         flags=u.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING, st)  # clears, then SSADE
    assert pasid_entry(vmm, 0)[0] >> 9 & 1
    assert _dirty_bitmap(vmm, hwpt, 64 * 4096) == 0
    vmm.m.dma_read(DEV, 0x2000, 4)
    vmm.m.dma_write(DEV, 0x3000, b"x")
    vmm.m.dma_write(DEV, 0x1000, b"again")  # a cached translation must not hide it
    assert _dirty_bitmap(vmm, hwpt, 64 * 4096) == 0b1010
    assert _dirty_bitmap(vmm, hwpt, 64 * 4096) == 0
    vmm.detach()
