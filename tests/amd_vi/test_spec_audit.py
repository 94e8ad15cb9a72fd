"""Rule-by-rule audit against vtd_amd.md PART B and uapi.md §6/§7/§10, through the
Machine's ioctl ABI (the Device Table and the command log are read only to check where a
bit landed and which commands the unit consumed)."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from typing import Any

import pytest

from drivers.amd_vi.amd_iommu_types import DevTableEntry, dte_gcr3_fields
from drivers.amd_vi.iommu import dev_iommu_priv_get, read_dte
from iommu_sim import Machine
from iommufd import uapi as u
from iommufd import uapi_vfio as uv

from .conftest import gdte_for

DEV = "0000:30:00.0"
PAGE = 4096


def sz(s: Any) -> int:
    return ctypes.sizeof(s)


def errno_of(fn: Any, *a: Any, **kw: Any) -> int:
    with pytest.raises(OSError) as e:
        fn(*a, **kw)
    return int(e.value.errno or 0)


def bits(v: int, hi: int, lo: int) -> int:
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


class Vmm:
    """iommufd + one VFIO device behind an AMD unit; guest RAM at IOVA 0 of an IOAS."""

    def __init__(self, **options: Any) -> None:
        self.m = m = Machine.from_config({
            "iommus": [{"name": "amdvi0", "driver": "amd_vi", **options}],
            "devices": [{"name": DEV, "iommu": "amdvi0"}]})
        self.fd = m.open("/dev/iommu")
        self.vfd = m.open(m.vfio_cdev(DEV))
        bind = uv.vfio_device_bind_iommufd(argsz=24, flags=0, iommufd=self.fd)
        m.ioctl(self.vfd, uv.VFIO_DEVICE_BIND_IOMMUFD, bind)
        self.dev_id = bind.out_devid
        ioas = u.iommu_ioas_alloc(size=sz(u.iommu_ioas_alloc))
        m.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, ioas)
        self.ioas = ioas.out_ioas_id
        self.ram = m.mmap(8 * PAGE)
        mp = u.iommu_ioas_map(size=sz(u.iommu_ioas_map), flags=7, ioas_id=self.ioas,
                              user_va=self.ram, length=8 * PAGE, iova=0)
        m.ioctl(self.fd, u.IOMMU_IOAS_MAP, mp)
        self.scratch = m.mmap(PAGE)

    @property
    def unit(self) -> Any:
        return self.m.core.iommus["amdvi0"].priv

    def dte(self) -> DevTableEntry:
        return read_dte(self.unit, self.m.device(DEV).rid)

    def hw_info(self, in_type: int | None = None) -> tuple[u.iommu_hw_info, bytes]:
        hi = u.iommu_hw_info(size=sz(u.iommu_hw_info), dev_id=self.dev_id, data_len=16,
                             data_uptr=self.scratch)
        if in_type is not None:
            hi.flags, hi.in_data_type = u.IOMMU_HW_INFO_FLAG_INPUT_TYPE, in_type
        self.m.ioctl(self.fd, u.IOMMU_GET_HW_INFO, hi)
        return hi, self.m.mem_read(self.scratch, 16)

    def hwpt_alloc(self, pt_id: int, flags: int = 0, data: bytes = b"",
                   dtype: int = u.IOMMU_HWPT_DATA_NONE) -> int:
        if data:
            self.m.mem_write(self.scratch, data)
        a = u.iommu_hwpt_alloc(size=sz(u.iommu_hwpt_alloc), flags=flags, dev_id=self.dev_id,
                               pt_id=pt_id, data_type=dtype, data_len=len(data),
                               data_uptr=self.scratch if data else 0)
        self.m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, a)
        return int(a.out_hwpt_id)

    def viommu(self, hwpt: int, vtype: int = u.IOMMU_VIOMMU_TYPE_AMD) -> int:
        va = u.iommu_viommu_alloc(size=sz(u.iommu_viommu_alloc), type=vtype,
                                  dev_id=self.dev_id, hwpt_id=hwpt)
        self.m.ioctl(self.fd, u.IOMMU_VIOMMU_ALLOC, va)
        return int(va.out_viommu_id)

    def nested(self, viommu: int, gdte: list[int] | bytes,
               dtype: int = u.IOMMU_HWPT_DATA_AMD_GUEST) -> int:
        raw = gdte if isinstance(gdte, bytes) else b"".join(
            w.to_bytes(8, "little") for w in gdte)
        return self.hwpt_alloc(viommu, 0, raw, dtype)

    def attach(self, pt_id: int) -> None:
        at = uv.vfio_device_attach_iommufd_pt(argsz=16, flags=0, pt_id=pt_id)
        self.m.ioctl(self.vfd, uv.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)

    def destroy(self, obj: int) -> None:
        self.m.ioctl(self.fd, u.IOMMU_DESTROY, u.iommu_destroy(size=sz(u.iommu_destroy),
                                                                id=obj))

    def close(self) -> None:
        self.m.shutdown()
        assert self.m.kernel_pages_in_use == 0


@pytest.fixture
def vmm() -> Iterator[Vmm]:
    v = Vmm()
    yield v
    v.close()


# -- B2 / B9.3: EFR/EFR2 defaults and hw_info ---------------------------------------------
def test_hw_info_efr_defaults(vmm: Vmm) -> None:
    hi, raw = vmm.hw_info()
    assert (hi.out_data_type, hi.data_len) == (u.IOMMU_HW_INFO_TYPE_AMD, 16)
    info = u.iommu_hw_info_amd.from_buffer_copy(raw)
    efr, efr2 = info.efr, info.efr2
    # raw global EFR/EFR2, no masking (B9.3)
    assert (efr, efr2) == (vmm.unit.drv.efr, vmm.unit.drv.efr2)
    for name, bit in (("PPR", 1), ("GT", 4), ("IA", 6), ("GIOSUP", 48), ("EPHSUP", 50),
                      ("HDSUP", 52)):
        assert efr >> bit & 1, name
    assert bits(efr, 11, 10) != 3  # HATS: host translation available
    assert bits(efr, 15, 14) >= 1  # GLX: two-level GCR3 for 16-bit PASIDs
    assert bits(efr, 36, 32) == 15  # PASMAX: 16-bit PASIDs (Linux's PASID_MASK)
    assert efr2 >> 3 & 1  # GCR3TRPMODE
    assert hi.out_capabilities & u.IOMMU_HW_CAP_DIRTY_TRACKING
    # dev->iommu->max_pasids = min(2^20, 2^(PASMAX+1) - 1) = 65535 -> ilog2 = 15
    assert hi.out_max_pasid_log2 == 15


def test_hw_info_requested_type(vmm: Vmm) -> None:
    assert vmm.hw_info(u.IOMMU_HW_INFO_TYPE_AMD)[0].out_data_type == u.IOMMU_HW_INFO_TYPE_AMD
    for other in (u.IOMMU_HW_INFO_TYPE_INTEL_VTD, u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3):
        assert errno_of(vmm.hw_info, other) == errno.EOPNOTSUPP


def test_features_off() -> None:
    v = Vmm(hdsup=False, gcr3trpmode=False)
    try:
        hi, raw = v.hw_info()
        info = u.iommu_hw_info_amd.from_buffer_copy(raw)
        assert not info.efr >> 52 & 1 and not info.efr2 >> 3 & 1
        assert not hi.out_capabilities & u.IOMMU_HW_CAP_DIRTY_TRACKING
        for flags in (u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING, u.IOMMU_HWPT_ALLOC_NEST_PARENT):
            assert errno_of(v.hwpt_alloc, v.ioas, flags) == errno.EOPNOTSUPP
        # a vIOMMU needs a nest parent: a plain HWPT is EINVAL (the size is not 0)
        assert errno_of(v.viommu, v.hwpt_alloc(v.ioas)) == errno.EINVAL
    finally:
        v.close()


# -- B9.2: paging allocation flags -----------------------------------------------------
def test_paging_alloc_flags(vmm: Vmm) -> None:
    P, D, N = (u.IOMMU_HWPT_ALLOC_PASID, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
               u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    for flags in (0, P, D, N, D | N):
        vmm.hwpt_alloc(vmm.ioas, flags)
    for flags in (P | D, P | N, P | D | N):
        assert errno_of(vmm.hwpt_alloc, vmm.ioas, flags) == errno.EOPNOTSUPP
    gdte = bytes(32)
    assert errno_of(vmm.hwpt_alloc, vmm.ioas, 0, gdte,
                    u.IOMMU_HWPT_DATA_AMD_GUEST) == errno.EOPNOTSUPP


def test_v1_and_v2_dtes(vmm: Vmm) -> None:
    """B4.1 through attach: v1 (Mode, HostTRP, DomainID, IR/IW, I) and v2 (GCR3 table with
    its own DomainID, GV, GIoV, GLX, no Mode)."""
    v1 = vmm.hwpt_alloc(vmm.ioas)
    vmm.attach(v1)
    d = vmm.dte()
    dd = dev_iommu_priv_get(vmm.m.device(DEV))
    dom = dd.domain
    assert d.v and d.tv and d.ir and d.iw and not d.gv and d.iotlb
    assert d.mode == dom.iop.levels and d.host_pt_root == dom.iop.root  # type: ignore
    assert d.domid == dom.id  # type: ignore[union-attr]
    assert d.had == 0 and not d.data[0] & (1 << 52 | 1 << 53 | 1 << 54)
    v2 = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_PASID)
    vmm.attach(v2)
    d = vmm.dte()
    assert d.gv and d.giov and d.mode == 0 and d.host_pt_root == 0
    assert d.domid == dd.gcr3_info.domid and d.domid != dd.domain.id  # type: ignore
    assert d.glx == 1 and d.gpt_level == 0  # 65535 PASIDs: 2 levels; 4-level guest
    assert d.gcr3_root == dd.gcr3_info.gcr3_tbl
    vmm.m.mem_write(vmm.ram + 0x2000, b"v2 path")
    assert vmm.m.dma_read(DEV, 0x2000, 7) == b"v2 path"


# -- B9.4: vIOMMU and nested allocation -----------------------------------------------
def test_viommu_type_rules(vmm: Vmm) -> None:
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    assert errno_of(vmm.viommu, parent, u.IOMMU_VIOMMU_TYPE_ARM_SMMUV3) == errno.EOPNOTSUPP
    assert errno_of(vmm.viommu, vmm.hwpt_alloc(vmm.ioas)) == errno.EINVAL
    vmm.viommu(parent)


def _gdte(**kw: int) -> list[int]:
    g = gdte_for(0x3000, 0x21)
    for word_bits, value in kw.items():
        w, lo = (int(x) for x in word_bits[1:].split("_"))
        g[w] |= value << lo
    return g


@pytest.mark.parametrize(("gdte", "err"), [
    (_gdte(d0_9=1), errno.EINVAL),  # Mode != 0
    (_gdte(d0_12=0x5), errno.EINVAL),  # Host TRP != 0
    ([0x0080_0000_0000_0001, 0x21, 0, 0], errno.EINVAL),  # V, GV, no GCR3 root
    (_gdte(d2_54=2), errno.EINVAL),  # GPT level 2
    (_gdte(d2_54=3), errno.EINVAL),
    (_gdte(d0_56=3), errno.EINVAL),  # GLX 3
    (_gdte(d0_56=3, d2_54=1), errno.EINVAL),  # GLX checked before host capability
    (_gdte(d2_54=1), errno.EOPNOTSUPP),  # 5-level guest: amd_iommu_gpt_level is 4
    (_gdte(d0_9=1, d2_54=1), errno.EINVAL),  # Mode checked first
])
def test_gdte_validation(vmm: Vmm, gdte: list[int], err: int) -> None:
    vi = vmm.viommu(vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT))
    assert errno_of(vmm.nested, vi, gdte) == err


def test_gdte_accepted_forms_and_copy_rules(vmm: Vmm) -> None:
    vi = vmm.viommu(vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT))
    vmm.nested(vi, [0x0080_0000_0000_0000, 0x21, 0, 0])  # GV, V=0, no root: accepted
    vmm.nested(vi, [0, 0x22, 0, 0])  # all zero but the gDomID
    vmm.nested(vi, _gdte(d0_56=2))  # GLX 2 is not checked against EFR.GLX
    g = bytes(b"".join(w.to_bytes(8, "little") for w in gdte_for(0x3000, 0x23)))
    assert errno_of(vmm.nested, vi, g, u.IOMMU_HWPT_DATA_VTD_S1) == errno.EOPNOTSUPP
    assert errno_of(vmm.nested, vi, g[:24]) == errno.EINVAL  # min = end of dte[4]
    assert errno_of(vmm.nested, vi, g + bytes(8)) == errno.EINVAL  # longer than struct


def test_nested_dte_bits(vmm: Vmm) -> None:
    """set_dte_nested: the parent's v1 half with DomainID = hDomID (and HAD when it
    tracks dirty), GV forced, only PPR/GLX/GIoV/GCR3/GPT level taken from the gDTE."""
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT
                            | u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    st = u.iommu_hwpt_set_dirty_tracking(size=sz(u.iommu_hwpt_set_dirty_tracking),
                                         hwpt_id=parent,
                                         flags=u.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING, st)
    vi = vmm.viommu(parent)
    gcr3 = 0x1_2345_6000
    d0, d1 = dte_gcr3_fields(gcr3)
    junk0 = 1 << 1 | 1 << 7 | 1 << 8 | 1 << 53 | 1 << 61 | 1 << 62  # TV HAD GPRP IR IW
    junk1 = 1 << 34 | 1 << 39 | 3 << 40  # IVHD flag block
    g = [1 | 1 << 55 | 1 << 52 | 1 << 54 | 1 << 56 | d0 | junk0, d1 | 0x4321 | junk1,
         2 << 60 | 1, 0xFFFF_0000]
    vmm.attach(vmm.nested(vi, g))
    d = vmm.dte()
    dd = dev_iommu_priv_get(vmm.m.device(DEV))
    ndom = dd.nested
    assert ndom is not None
    parent_pt = ndom.viommu.parent.iop
    assert parent_pt is not None
    assert d.v and d.tv and d.ir and d.iw and d.gv and d.giov and d.ppr
    assert d.mode == parent_pt.levels and d.host_pt_root == parent_pt.root
    assert d.had == 3  # parent tracks dirty
    assert d.domid == ndom.hdom_id and d.domid != 0x4321
    assert d.gcr3_root == gcr3 and d.glx == 1 and d.gpt_level == 0
    assert d.iotlb  # ATS enabled
    assert not d.data[0] >> 53 & 1  # GPRP not copied
    assert d.data[1] & (1 << 34 | 1 << 39 | 3 << 40) == 0  # IVHD bits not from the guest
    assert d.data[2] == 0 and d.data[3] == 0  # interrupt state / data[3] not copied


def test_gdomid_to_hdomid_refcount(vmm: Vmm) -> None:
    vi = vmm.viommu(vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT))
    a = vmm.nested(vi, gdte_for(0x3000, 0x21))
    b = vmm.nested(vi, gdte_for(0x4000, 0x21))
    c = vmm.nested(vi, gdte_for(0x3000, 0x22))
    dd = dev_iommu_priv_get(vmm.m.device(DEV))
    vmm.attach(a)
    assert dd.nested is not None
    avi = dd.nested.viommu
    h21, h22 = avi.gdomid_array[0x21].hdom_id, avi.gdomid_array[0x22].hdom_id
    assert h21 != h22 and avi.gdomid_array[0x21].users == 2
    assert vmm.dte().domid == h21
    vmm.attach(b)
    assert vmm.dte().domid == h21  # same gDomID, same hDomID
    vmm.attach(c)
    assert vmm.dte().domid == h22
    vmm.destroy(a)
    assert avi.gdomid_array[0x21].users == 1
    vmm.destroy(b)
    assert 0x21 not in avi.gdomid_array and h21 not in vmm.unit.drv.pdom_ids.used


def test_s2_change_flushes_every_hdomid(vmm: Vmm) -> None:
    """B8 domain_flush_pages_v1: INV_IOMMU_PAGES (GN=0) with each hDomID of the vIOMMU."""
    vi = vmm.viommu(vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT))
    vmm.attach(vmm.nested(vi, gdte_for(0x3000, 0x21)))
    vmm.nested(vi, gdte_for(0x3000, 0x22))
    dd = dev_iommu_priv_get(vmm.m.device(DEV))
    assert dd.nested is not None
    hdoms = {i.hdom_id for i in dd.nested.viommu.gdomid_array.values()}
    log = vmm.m.platform.iommus["amdvi0"].cmd_log  # type: ignore[attr-defined]
    before = len(log)
    un = u.iommu_ioas_unmap(size=sz(u.iommu_ioas_unmap), ioas_id=vmm.ioas, iova=0,
                            length=8 * PAGE)
    vmm.m.ioctl(vmm.fd, u.IOMMU_IOAS_UNMAP, un)
    cmds = [c for c in list(log)[before:] if c.opcode == 3]
    assert len(hdoms) == 2 and hdoms <= {c.data[1] & 0xFFFF for c in cmds}
    assert all(not c.data[2] & 4 for c in cmds)  # GN = 0


# -- B4.1 / B6: dirty tracking through iommufd (HAD, host D bit) ---------------------
def _dirty_bitmap(v: Vmm, hwpt: int, length: int) -> int:
    bm = v.m.mmap(PAGE)
    gd = u.iommu_hwpt_get_dirty_bitmap(size=sz(u.iommu_hwpt_get_dirty_bitmap),
                                       hwpt_id=hwpt, iova=0, length=length,
                                       page_size=PAGE, data=bm)
    v.m.ioctl(v.fd, u.IOMMU_HWPT_GET_DIRTY_BITMAP, gd)
    return int.from_bytes(v.m.mem_read(bm, 8), "little")


def test_dirty_tracking_through_iommufd(vmm: Vmm) -> None:
    hwpt = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    vmm.attach(hwpt)
    vmm.m.dma_write(DEV, 0x1000, b"before")  # not tracked
    # tracking off: 7.3's generic read_and_clear_dirty reads on; HAD=0 set no D bit
    assert _dirty_bitmap(vmm, hwpt, 8 * PAGE) == 0
    st = u.iommu_hwpt_set_dirty_tracking(size=sz(u.iommu_hwpt_set_dirty_tracking),
                                         hwpt_id=hwpt,
                                         flags=u.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING, st)  # clears, then sets HAD
    assert vmm.dte().had == 3
    assert _dirty_bitmap(vmm, hwpt, 8 * PAGE) == 0
    vmm.m.dma_read(DEV, 0x2000, 4)
    vmm.m.dma_write(DEV, 0x3000, b"x")
    vmm.m.dma_write(DEV, 0x1000, b"again")  # a cached translation must not hide it
    assert _dirty_bitmap(vmm, hwpt, 8 * PAGE) == 0b1010
    assert _dirty_bitmap(vmm, hwpt, 8 * PAGE) == 0
    st.flags = 0
    vmm.m.ioctl(vmm.fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING, st)
    assert vmm.dte().had == 0
