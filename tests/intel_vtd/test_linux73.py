"""The VT-d paths iommufd reaches, as Linux 7.3 has them (issue #20): one test per
difference the audit fixed. The deliberate departures are listed in docs/intel_vtd.rst.

Cross-unit rules (``paging_domain_compatible``) need two units with different
capabilities: :class:`TwoUnits` is a VMM with one device on each."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from typing import Any

import pytest

from drivers.intel_vtd import iommu_h as h
from drivers.intel_vtd import pasid as vtd_pasid
from drivers.intel_vtd.iommu import DmarDomain, dev_info
from iommu_core.group import AttachHandle
from iommu_core.platform.bus import Device
from iommu_core.testing.env import DriverEnv
from iommu_sim import Machine
from iommufd import uapi as u
from iommufd import uapi_vfio as v

from .test_hw import IOVA, RW, hw, unit
from .test_iommufd import DEV as DEV_VMM
from .test_iommufd import GIOVA, Vmm, guest_table, vmm  # noqa: F401  (fixture)

DEV0, DEV1 = "0000:10:00.0", "0000:20:00.0"


def sz(s: Any) -> int:
    return ctypes.sizeof(s)


LEGACY = {"scalable_mode": False, "first_stage": False, "nesting": False,
          "page_requests": False, "dirty_tracking": False, "pasid_bits": 0}


def machine(**options: Any) -> Machine:
    """dmar0 with the defaults and DEV0, dmar1 with ``options`` and DEV1."""
    return Machine.from_config({
        "iommus": [{"name": "dmar0", "driver": "intel_vtd"},
                   {"name": "dmar1", "driver": "intel_vtd", **options}],
        "devices": [{"name": DEV0, "iommu": "dmar0"}, {"name": DEV1, "iommu": "dmar1"}]})


class TwoUnits:
    """:func:`machine` with DEV0 and DEV1 bound to one iommufd, one IOAS holding 16
    pages at IOVA 0."""

    def __init__(self, **options: Any) -> None:
        self.m = m = machine(**options)
        self.fd = m.open("/dev/iommu")
        self.vfd: dict[str, int] = {}
        self.dev_id: dict[str, int] = {}
        for name in (DEV0, DEV1):
            self.vfd[name] = m.open(m.vfio_cdev(name))
            bind = v.vfio_device_bind_iommufd(argsz=sz(v.vfio_device_bind_iommufd),
                                              iommufd=self.fd)
            m.ioctl(self.vfd[name], v.VFIO_DEVICE_BIND_IOMMUFD, bind)
            self.dev_id[name] = int(bind.out_devid)
        ioas = u.iommu_ioas_alloc(size=sz(u.iommu_ioas_alloc))
        m.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, ioas)
        self.ioas = int(ioas.out_ioas_id)
        self.ram = m.mmap(16 * 4096)
        mp = u.iommu_ioas_map(size=sz(u.iommu_ioas_map), ioas_id=self.ioas,
                              user_va=self.ram, length=16 * 4096, iova=0,
                              flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
                              | u.IOMMU_IOAS_MAP_WRITEABLE)
        m.ioctl(self.fd, u.IOMMU_IOAS_MAP, mp)
        self.scratch = m.mmap(4096)

    def hwpt(self, dev: str, flags: int = 0, pt_id: int | None = None, data: bytes = b"",
             data_type: int = u.IOMMU_HWPT_DATA_NONE) -> int:
        if data:
            self.m.mem_write(self.scratch, data)
        a = u.iommu_hwpt_alloc(size=sz(u.iommu_hwpt_alloc), flags=flags,
                               dev_id=self.dev_id[dev],
                               pt_id=self.ioas if pt_id is None else pt_id,
                               data_type=data_type, data_len=len(data),
                               data_uptr=self.scratch if data else 0)
        self.m.ioctl(self.fd, u.IOMMU_HWPT_ALLOC, a)
        return int(a.out_hwpt_id)

    def attach(self, dev: str, pt_id: int, pasid: int | None = None) -> None:
        at = v.vfio_device_attach_iommufd_pt(
            argsz=sz(v.vfio_device_attach_iommufd_pt), pt_id=pt_id,
            flags=0 if pasid is None else v.VFIO_DEVICE_ATTACH_PASID, pasid=pasid or 0)
        self.m.ioctl(self.vfd[dev], v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)

    def attach_errno(self, dev: str, pt_id: int, pasid: int | None = None) -> int:
        with pytest.raises(OSError) as e:
            self.attach(dev, pt_id, pasid)
        return int(e.value.errno or 0)

    def pasid_entry(self, dev: str, p: int) -> vtd_pasid.PasidEntry:
        return _pasid_entry(self.m.device(dev), p)

    def close(self) -> None:
        self.m.shutdown()
        assert self.m.kernel_pages_in_use == 0


def _pasid_entry(dev: Device, p: int) -> vtd_pasid.PasidEntry:
    info = dev_info(dev)
    pte = vtd_pasid.intel_pasid_get_entry(info.iommu, info, p, alloc=False)
    assert pte is not None
    return vtd_pasid.read_pasid_entry(info.iommu, pte)


def two_units(**options: Any) -> Iterator[TwoUnits]:
    t = TwoUnits(**options)
    yield t
    t.close()


# -- set_dev_pasid of a dirty-tracking domain ------------------------------------------
def test_dirty_domain_at_pasid_refused_only_without_ssads() -> None:
    """intel_iommu_set_dev_pasid() -> paging_domain_compatible_second_stage(): EINVAL
    only where the unit has no SSADS."""
    for t in two_units(dirty_tracking=False):
        dirty = t.hwpt(DEV0, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING | u.IOMMU_HWPT_ALLOC_PASID)
        assert t.attach_errno(DEV1, dirty, pasid=5) == errno.EINVAL
        t.attach(DEV0, dirty, pasid=5)
        assert t.pasid_entry(DEV0, 5).pgtt == 2


# -- paging_domain_compatible ---------------------------------------------------------
def test_page_walk_coherency_is_one_way() -> None:
    """A domain whose tables are not flushed (coherent unit) cannot go to an incoherent
    unit; the other way round works, with PWSNP clear in the entry (the domain's tables
    are flushed for an incoherent walker)."""
    for t in two_units(sm_coherent=False):
        coherent_fs = t.hwpt(DEV0)
        assert t.attach_errno(DEV1, coherent_fs) == errno.EINVAL
        incoherent_fs = t.hwpt(DEV1)
        t.attach(DEV0, incoherent_fs)
        pe = t.pasid_entry(DEV0, 0)
        assert pe.pgtt == 1 and not pe.val[1] >> 23 & 1
        t.m.dma_write(DEV0, 0x1000, b"x")
        incoherent_ss = t.hwpt(DEV1, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        t.attach(DEV0, incoherent_ss)
        pe = t.pasid_entry(DEV0, 0)
        assert pe.pgtt == 2 and not pe.val[1] >> 23 & 1
        assert t.attach_errno(DEV1, t.hwpt(DEV0, u.IOMMU_HWPT_ALLOC_NEST_PARENT)) == \
            errno.EINVAL


def test_snoop_control_of_a_force_snooping_domain() -> None:
    """iommufd enforces coherency on HWPTs of DEV0 (its unit has SC). 7.3 refuses the
    second-stage one on a unit without SC (FORCE_COHERENCE); the first-stage one it
    would attach and then program PGSNP, reserved there, so every DMA would fault: the
    project refuses it too (docs: departures)."""
    for t in two_units(snoop_control=False):
        ss = t.hwpt(DEV0, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        assert t.attach_errno(DEV1, ss) == errno.EINVAL
        fs = t.hwpt(DEV0)
        assert t.attach_errno(DEV1, fs) == errno.EINVAL
        t.attach(DEV1, t.hwpt(DEV1))  # a domain of its own unit: no PGSNP
        t.m.dma_read(DEV1, 0x2000, 4)


def test_nested_on_a_legacy_unit_is_einval() -> None:
    """intel_nested_attach_dev() has no scalable-mode check of its own: the parent's
    compatibility check refuses (nesting unsupported) with EINVAL."""
    for t in two_units(**LEGACY):
        parent = t.hwpt(DEV0, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        s1 = u.iommu_hwpt_vtd_s1(pgtbl_addr=0x3000, addr_width=48)
        nested = t.hwpt(DEV0, 0, parent, bytes(s1), u.IOMMU_HWPT_DATA_VTD_S1)
        assert t.attach_errno(DEV1, nested) == errno.EINVAL


def test_second_stage_width_from_sagaw_and_mgaw() -> None:
    """compute_vasz_lg2_ss(): a unit walking only 5 levels (SAGAW 0b1000) with a 48-bit
    MGAW gets a 5-level table limited to 48-bit IOVAs (was EOPNOTSUPP)."""
    for t in two_units(sagaw=0b1000, mgaw=48):
        parent = t.hwpt(DEV1, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        t.attach(DEV1, parent)
        pe = t.pasid_entry(DEV1, 0)
        assert pe.pgtt == 2 and pe.val[0] >> 2 & 7 == 3  # AW: 5-level
        t.m.mem_write(t.ram + 0x3000, b"five")
        assert t.m.dma_read(DEV1, 0x3000, 4) == b"five"
        dom = dev_info(t.m.device(DEV1)).domain
        assert isinstance(dom, DmarDomain)
        assert dom.pgtable.levels == 5 and dom.geometry.aperture_end == (1 << 48) - 1


# -- enforce_cache_coherency ---------------------------------------------------------
def _claimed(m: Machine, name: str) -> Device:
    """Owned by the test (as VFIO would own it), driven through the core."""
    dev = m.device(name)
    m.core.iommu_device_claim_dma_owner(dev, m)
    return dev


def test_enforce_coherency_first_stage_sets_pgsnp_at_rid_only() -> None:
    """intel_iommu_enforce_cache_coherency_fs(): PGSNP in the RID PASID entries of the
    domain's devices (PASID attachments keep theirs); the flush of a present entry is
    PASID cache + PASID IOTLB (+ device TLB), without a page-request drain."""
    m = machine()
    try:
        dev = _claimed(m, DEV0)
        dom = m.core.iommu_paging_domain_alloc_flags(dev, 0)
        assert isinstance(dom, DmarDomain)
        dom.iopf_handler = lambda g: None
        m.core.iommu_attach_group_handle(dom, dev.iommu_group, AttachHandle(dom))
        m.core.iommu_attach_device_pasid(dom, dev, 7)
        log = m.platform.iommus["dmar0"].desc_log  # type: ignore[attr-defined]
        n = len(log)
        assert dom.ops.enforce_cache_coherency(dom)
        assert _pasid_entry(dev, 0).val[1] >> 24 & 1
        assert not _pasid_entry(dev, 7).val[1] >> 24 & 1
        types = [w[0] & 0xF for w in list(log)[n:] if w[0] & 0xF != h.QI_IWD_TYPE]
        assert types == [h.QI_PC_TYPE, h.QI_EIOTLB_TYPE, h.QI_DIOTLB_TYPE]
        assert all(not (w[0] & 0xF == h.QI_IWD_TYPE and w[0] & h.QI_IWD_PRQ_DRAIN)
                   for w in list(log)[n:])
        m.core.iommu_detach_device_pasid(dom, dev, 7)
        m.core.iommu_detach_group(dom, dev.iommu_group)
        m.core.iommu_domain_free(dom)
        m.core.iommu_device_release_dma_owner(dev)
    finally:
        m.shutdown()


def test_cache_tags_of_one_unit_stay_together() -> None:
    """cache_tag_assign() links a new tag after the last tag of its unit (at the head
    when the unit has none), so each unit's flushes go out as one batch."""
    m = machine()
    try:
        d0, d1 = _claimed(m, DEV0), _claimed(m, DEV1)
        dom = m.core.iommu_paging_domain_alloc_flags(d0, 0)
        assert isinstance(dom, DmarDomain)
        m.core.iommu_attach_group(dom, d0.iommu_group)
        m.core.iommu_attach_group(dom, d1.iommu_group)
        m.core.iommu_attach_device_pasid(dom, d0, 9)
        units = [tag.iommu.name for tag in dom.cache_tags]
        assert units == sorted(units, key=lambda n: n != "dmar1")  # dmar1 came second
        assert units.count("dmar0") == 4 and units.count("dmar1") == 2  # IOTLB + DEVTLB
        m.core.iommu_detach_device_pasid(dom, d0, 9)
        for d in (d0, d1):
            m.core.iommu_detach_group(dom, d.iommu_group)
            m.core.iommu_device_release_dma_owner(d)
        m.core.iommu_domain_free(dom)
    finally:
        m.shutdown()


# -- cache_invalidate_user ----------------------------------------------------------
def test_invalidate_npages_zero_wraps_like_linux(vmm: Vmm) -> None:  # noqa: F811
    """last = addr + nrpages_to_size(0) - 1 = addr - 1: the naturally aligned block
    spanning [addr - 1, addr] (two pages) is flushed; addr 0 flushes everything."""
    parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    base = GIOVA & ~0x1FFF
    s1 = {base + i * 0x1000: 0x4000 + i * 0x1000 for i in range(3)}
    root = guest_table(vmm, s1)
    nested = vmm.nested(parent, root)
    vmm.attach(nested)
    for i in range(3):
        vmm.m.mem_write(vmm.ram_va + 0x4000 + i * 0x1000, b"old%d" % i)
        vmm.m.mem_write(vmm.ram_va + 0x8000 + i * 0x1000, b"new%d" % i)
        assert vmm.m.dma_read(DEV_VMM, base + i * 0x1000, 4) == b"old%d" % i
    # the guest moves all three pages (same tables: rewrite the leaves in place)
    _rewrite_leaves(vmm, root, {base + i * 0x1000: 0x8000 + i * 0x1000 for i in range(3)})
    vmm.invalidate(nested, [(base + 0x1000, 0, 0)])
    seen = [vmm.m.dma_read(DEV_VMM, base + i * 0x1000, 4) for i in range(3)]
    assert seen == [b"new0", b"new1", b"old2"]
    vmm.invalidate(nested, [(0, 0, 0)])
    assert vmm.m.dma_read(DEV_VMM, base + 0x2000, 4) == b"new2"
    vmm.detach()


def _rewrite_leaves(vm: Vmm, root: int, maps: dict[int, int]) -> None:
    """Point existing 4 KiB leaves of the guest table at new GPAs (flags kept)."""
    for iova, gpa in maps.items():
        table = root
        for level in (3, 2, 1):
            e = vm.ram.read_u64(table + ((iova >> (12 + 9 * level)) & 0x1FF) * 8)
            table = e & 0x000F_FFFF_FFFF_F000
        slot = table + ((iova >> 12) & 0x1FF) * 8
        old = vm.ram.read_u64(slot)
        vm.ram.write_u64(slot, (old & ~0x000F_FFFF_FFFF_F000) | gpa)


# -- the page request path ------------------------------------------------------------
def _post_request(env: DriverEnv, dsc: h.PageReqDsc) -> None:
    """The unit writes a page request descriptor and raises the PRQ interrupt (what its
    PRI side does for a device's request; here with fields a device chose)."""
    u_ = unit(env)
    tail = env.hw.mmio["regs"].read64(h.DMAR_PQT_REG)
    u_.mem.write_qwords(u_.prq + tail, [dsc.qw0, dsc.qw1, dsc.qw2, dsc.qw3])
    hw(env)._set(h.DMAR_PQT_REG, 8, tail + h.PRQ_DESC_SIZE)
    hw(env)._irq(h.DMAR_PECTL_REG, "dmar-prq")


@pytest.mark.parametrize("lpig", [False, True])
def test_bad_page_request_answered_only_when_last(env: DriverEnv, lpig: bool) -> None:
    """handle_bad_prq_event(): a malformed request (non-canonical address) gets an
    INVALID response only when it is the last of its group (private data or not)."""
    dev = env.add_device()
    before = len(hw(env).page_responses)
    dsc = h.make_page_req_dsc(dev.rid, 3, 0x8000_0000_0000, True, False, False, False,
                              lpig, 17)
    _post_request(env, dsc)
    got = hw(env).page_responses[before:]
    if lpig:
        assert [(r["rid"], r["code"], r["prg_index"], r["pasid"]) for r in got] == [
            (dev.rid, h.QI_RESP_INVALID, 17, 3)]
    else:
        assert got == []


def test_pasid_drain_fences_the_hardware(env: DriverEnv) -> None:
    """intel_iommu_drain_pasid_prq() (a PASID of a domain with a fault handler goes):
    a fenced wait, P-IOTLB of the PASID, PASID device-TLB, then the wait with PD. The
    DID is that of the RID's domain (``info->domain``; blocked here: FLPT_DEFAULT_DID)."""
    dev = env.add_device()
    env.claim(dev)
    dom = env.paging_domain(dev)
    assert isinstance(dom, DmarDomain)
    dom.iopf_handler = lambda g: None
    env.core.iommu_attach_device_pasid(dom, dev, 5, AttachHandle(dom))
    log = hw(env).desc_log
    n = len(log)
    env.core.iommu_detach_device_pasid(dom, dev, 5)
    words = list(log)[n:]
    drain = next(i for i, w in enumerate(words)
                 if w[0] & 0xF == h.QI_IWD_TYPE and w[0] & h.QI_IWD_FENCE)
    fence, piotlb, devtlb, wait = words[drain:drain + 4]
    assert not fence[0] & h.QI_IWD_STATUS_WRITE
    assert piotlb[0] & 0xF == h.QI_EIOTLB_TYPE and h.field(piotlb[0], 5, 4) == 2
    assert (h.field(piotlb[0], 31, 16), h.field(piotlb[0], 51, 32)) == (h.FLPT_DEFAULT_DID, 5)
    assert devtlb[0] & 0xF == h.QI_DEIOTLB_TYPE and h.field(devtlb[0], 51, 32) == 5
    assert wait[0] & 0xF == h.QI_IWD_TYPE and wait[0] & h.QI_IWD_PRQ_DRAIN


# -- device-TLB flushes while translation is off ------------------------------------
def test_no_device_tlb_invalidation_with_translation_off(env: DriverEnv) -> None:
    """qi_batch_add_dev_iotlb(): software does not invalidate device TLBs while
    translation is disabled (GCMD.TE clear)."""
    dev = env.add_device()
    env.claim(dev)
    dom = env.paging_domain(dev)
    _va, pfns = env.user_pages(1)
    env.core.iommu_map(dom, IOVA, pfns[0] << 12, 4096, RW)
    env.core.iommu_attach_group(dom, dev.iommu_group)
    u_ = unit(env)
    log = hw(env).desc_log

    def devtlb_after(fn: Any) -> list[int]:
        n = len(log)
        fn()
        return [w[0] & 0xF for w in list(log)[n:]
                if w[0] & 0xF in (h.QI_DIOTLB_TYPE, h.QI_DEIOTLB_TYPE)]

    assert devtlb_after(lambda: dom.ops.flush_iotlb_all(dom))
    u_.gcmd &= ~h.DMA_GCMD_TE
    u_.reg.write32(h.DMAR_GCMD_REG, u_.gcmd)
    assert devtlb_after(lambda: dom.ops.flush_iotlb_all(dom)) == []
    u_.gcmd |= h.DMA_GCMD_TE
    u_.reg.write32(h.DMAR_GCMD_REG, u_.gcmd)
    env.core.iommu_detach_group(dom, dev.iommu_group)

