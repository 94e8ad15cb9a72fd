"""The driver through the IOMMU core: domain allocation rules and errnos, attach and
PASID attach, identity/blocked, domain IDs, compatibility, the erratum rule, dirty
tracking, legacy mode and register-based invalidation."""

from __future__ import annotations

import errno

import pytest

from drivers.intel_vtd import iommu_h as h
from drivers.intel_vtd import pasid
from drivers.intel_vtd.iommu import DmarDomain, IntelIommu
from iommu_core.device import IommuCap
from iommu_core.domain import (
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    IOMMU_HWPT_ALLOC_NEST_PARENT,
    IOMMU_HWPT_ALLOC_PASID,
    IOMMU_HWPT_FAULT_ID_VALID,
)
from iommu_core.errors import IommuError
from iommu_core.platform.bus import Device, make_pci_device
from iommu_core.platform.dma import DmaFault
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_core.testing.env import DriverEnv

from .conftest import MakeEnv
from .test_hw import IOVA, RW, hw, setup_domain, unit


def pasid_entry(env: DriverEnv, dev: Device, p: int) -> pasid.PasidEntry:
    pte = pasid.intel_pasid_get_entry(unit(env), dev.iommu.priv, p, alloc=False)
    assert pte is not None
    return pasid.read_pasid_entry(unit(env), pte)


class RecordDirty:
    has_bitmap = True  # a real bitmap, not the clear-only pass

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.bitmap = True

    def record(self, iova: int, length: int) -> None:
        self.ranges.append((iova, length))


class TestAllocation:
    def test_default_and_flags(self, env: DriverEnv) -> None:
        dev = env.add_device()
        assert isinstance(dev.iommu_group.default_domain, DmarDomain)
        assert dev.iommu_group.default_domain.kind == "fs"
        fs = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
        parent = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
        dirty = env.paging_domain(dev, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        assert isinstance(fs, DmarDomain) and fs.kind == "fs"
        assert isinstance(parent, DmarDomain) and parent.kind == "ss" and parent.nested_parent
        assert isinstance(dirty, DmarDomain) and dirty.dirty_ops
        assert dirty.ops.has("read_and_clear_dirty") and not parent.ops.has(
            "read_and_clear_dirty")
        assert fs.geometry.aperture_end == (1 << 47) - 1
        assert parent.geometry.aperture_end == (1 << 48) - 1
        assert env.core.device_iommu_capable(dev, IommuCap.DIRTY_TRACKING)

    @pytest.mark.parametrize(("options", "flags"), [
        ({}, IOMMU_HWPT_FAULT_ID_VALID),
        ({"nesting": False}, IOMMU_HWPT_ALLOC_NEST_PARENT),
        ({"dirty_tracking": False}, IOMMU_HWPT_ALLOC_DIRTY_TRACKING),
        ({"second_stage": False, "nesting": False}, IOMMU_HWPT_ALLOC_DIRTY_TRACKING),
    ])
    def test_eopnotsupp(self, make_env: MakeEnv, options: dict[str, bool], flags: int) -> None:
        env = make_env(**options)
        dev = env.add_device()
        with pytest.raises(IommuError) as e:
            env.paging_domain(dev, flags)
        assert e.value.errno == errno.EOPNOTSUPP

    def test_user_data_refused(self, env: DriverEnv) -> None:
        dev = env.add_device()
        with pytest.raises(IommuError) as e:
            dev.iommu.ops.domain_alloc_paging_flags(dev, 0, object())  # type: ignore[arg-type]
        assert e.value.errno == errno.EOPNOTSUPP

    def test_five_level_units(self, make_env: MakeEnv) -> None:
        env = make_env(sagaw=0b01100, mgaw=57)
        dev = env.add_device()
        fs = env.paging_domain(dev)
        ss = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
        assert isinstance(fs, DmarDomain) and fs.pgtable.levels == 5
        assert isinstance(ss, DmarDomain) and ss.pgtable.levels == 5 and ss.agaw == 3
        env.claim(dev)
        _, pfns = env.user_pages(1)
        env.core.iommu_map(fs, 1 << 50, pfns[0] << 12, 4096, RW)
        env.core.iommu_attach_group(fs, dev.iommu_group)
        assert pasid_entry(env, dev, 0).val[2] >> 2 & 3 == 1  # FSPM: 5-level
        env.dma_write(dev, 1 << 50, b"far")
        assert env.platform.mem.read(pfns[0] << 12, 3) == b"far"


class TestMapping:
    def test_read_only_map_refused_on_nest_parent(self, env: DriverEnv) -> None:
        dev = env.add_device()
        parent = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
        plain = env.paging_domain(dev, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        _, pfns = env.user_pages(1)
        with pytest.raises(IommuError) as e:
            env.core.iommu_map(parent, 0, pfns[0] << 12, 4096, IOMMU_READ)
        assert e.value.errno == errno.EINVAL and "ERRATA_772415" in e.value.msg
        env.core.iommu_map(parent, 0, pfns[0] << 12, 4096, IOMMU_WRITE)
        env.core.iommu_map(plain, 0, pfns[0] << 12, 4096, IOMMU_READ)

    def test_beyond_address_width(self, env: DriverEnv) -> None:
        dev = env.add_device()
        fs = env.paging_domain(dev)
        with pytest.raises(IommuError) as e:
            fs.ops.map_pages(fs, 1 << 47, 0x1000_0000, 4096, 1, RW)
        assert e.value.errno == errno.EFAULT

    def test_superpages_and_write_protection(self, env: DriverEnv) -> None:
        dev = env.add_device(ats=False)
        env.claim(dev)
        dom = env.paging_domain(dev)
        va, pfns = env.user_pages(1024)  # 4 MiB: THP-backed, 2 MiB aligned blocks
        base = pfns[0] << 12
        env.core.iommu_map(dom, 0x20_0000, base, 1 << 21, IOMMU_READ)
        env.core.iommu_attach_group(dom, dev.iommu_group)
        assert isinstance(dom, DmarDomain)
        leaf = next(dom.pgtable.iter_leaves(0x20_0000, 0x20_0000))
        assert leaf.size == 1 << 21
        env.mm.write(va + 0x1234, b"big page")
        assert env.dma_read(dev, 0x20_1234, 8) == b"big page"
        with pytest.raises(DmaFault) as e:
            env.dma_write(dev, 0x20_1234, b"no")
        assert e.value.detail["code"] == 0x85


class TestAttach:
    def test_rid_and_pasid(self, env: DriverEnv) -> None:
        dev = env.add_device(ats=False)
        dom, va, pfns = setup_domain(env, dev)
        env.mm.write(va, b"rid!")
        other = env.paging_domain(dev, IOMMU_HWPT_ALLOC_PASID)
        _, p2 = env.user_pages(1)
        env.core.iommu_map(other, IOVA, p2[0] << 12, 4096, RW)
        env.core.iommu_attach_device_pasid(other, dev, 7)
        env.dma_write(dev, IOVA, b"pasid7", pasid=7)
        assert env.dma_read(dev, IOVA, 4) == b"rid!"
        assert env.platform.mem.read(p2[0] << 12, 6) == b"pasid7"
        pe = pasid_entry(env, dev, 7)
        assert pe.pgtt == 1 and pe.domain_id == other.domain_id_iommu(unit(env))  # type: ignore[attr-defined]
        env.core.iommu_detach_device_pasid(other, dev, 7)
        with pytest.raises(DmaFault) as e:
            env.dma_read(dev, IOVA, 4, pasid=7)
        assert e.value.detail["code"] == 0x59
        assert not other.iommu_refs  # type: ignore[attr-defined]

    def test_pasid_beyond_table(self, env: DriverEnv) -> None:
        dev = env.add_device(pasid_bits=8)
        dom = env.paging_domain(dev)
        env.claim(dev)
        with pytest.raises(IommuError):
            env.core.iommu_attach_device_pasid(dom, dev, 1 << 16)
        with pytest.raises(DmaFault) as e:
            env.dma_read(dev, 0, 4, pasid=1 << 16)
        assert e.value.detail["code"] == 0x46  # beyond the directory the context holds

    def test_dirty_domain_at_a_pasid_is_tracked(self, env: DriverEnv) -> None:
        """7.3's intel_iommu_set_dev_pasid() takes dirty-tracking domains, and
        intel_iommu_set_dirty_tracking() walks dev_pasids: SSADE goes into the PASID's
        entry and a DMA write at that PASID is in the bitmap."""
        dev = env.add_device()
        env.claim(dev)
        dirty = env.paging_domain(dev, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        _va, pfns = env.user_pages(2)
        for i, pfn in enumerate(pfns):
            env.core.iommu_map(dirty, IOVA + i * 4096, pfn << 12, 4096, RW)
        env.core.iommu_attach_device_pasid(dirty, dev, 3)
        assert pasid_entry(env, dev, 3).pgtt == 2 and not pasid_entry(env, dev, 3).ssade
        dirty.ops.set_dirty_tracking(dirty, True)
        assert pasid_entry(env, dev, 3).ssade
        env.dma_write(dev, IOVA + 4096, b"d", pasid=3)
        env.dma_read(dev, IOVA, 1, pasid=3)
        rec = RecordDirty()
        dirty.ops.read_and_clear_dirty(dirty, IOVA, 2 * 4096, 0, rec)
        assert rec.ranges == [(IOVA + 4096, 4096)]
        dirty.ops.set_dirty_tracking(dirty, False)
        assert not pasid_entry(env, dev, 3).ssade
        env.core.iommu_detach_device_pasid(dirty, dev, 3)

    def test_identity_and_blocked(self, env: DriverEnv) -> None:
        dev = env.add_device(ats=False)
        ops = dev.iommu.ops
        env.claim(dev)
        assert dev.iommu_group.domain is ops.blocked_domain
        with pytest.raises(DmaFault) as e:
            env.dma_read(dev, 0x1000, 4)
        assert e.value.detail["code"] == 0x59
        env.core.iommu_attach_group(ops.identity_domain, dev.iommu_group)
        pe = pasid_entry(env, dev, 0)
        assert (pe.pgtt, pe.domain_id) == (4, h.FLPT_DEFAULT_DID)
        env.platform.mem.write(0x1_2345_6000, b"phys")
        assert env.dma_read(dev, 0x1_2345_6000, 4) == b"phys"
        env.core.iommu_attach_device_pasid(ops.identity_domain, dev, 9)
        assert env.dma_read(dev, 0x1_2345_6000, 4, pasid=9) == b"phys"
        env.core.iommu_detach_device_pasid(ops.identity_domain, dev, 9)
        env.core.iommu_detach_group(ops.identity_domain, dev.iommu_group)
        for p in (None, 9):  # the pass-through translations went with the entries
            with pytest.raises(DmaFault):
                env.dma_read(dev, 0x1_2345_6000, 4, pasid=p)

    def test_domain_ids_run_out(self, make_env: MakeEnv) -> None:
        env = make_env(nd=0)  # 16 DIDs: 0 and 1 reserved
        dev = env.add_device()
        env.claim(dev)
        doms = [env.paging_domain(dev) for _ in range(15)]
        for i, d in enumerate(doms[:14]):
            env.core.iommu_attach_device_pasid(d, dev, i + 1)
        with pytest.raises(IommuError) as e:
            env.core.iommu_attach_device_pasid(doms[14], dev, 20)
        assert e.value.errno == errno.ENOSPC
        dids = {d.domain_id_iommu(unit(env)) for d in doms[:14]}  # type: ignore[attr-defined]
        assert dids == set(range(2, 16))
        env.core.iommu_detach_device_pasid(doms[0], dev, 1)
        env.core.iommu_attach_device_pasid(doms[14], dev, 20)

    def test_compatibility_across_units(self, env: DriverEnv) -> None:
        hw2 = env.ops.iommu_hw_create("unit1", {"fl1gp": False, "nesting": False},
                                      env.platform)
        env.ops.iommu_driver_probe(env.core, env.platform.add_iommu(hw2))
        dev1 = env.add_device()
        dev2 = make_pci_device("0000:00:1f.0", "unit1")
        env.core.add_device(dev2)
        env.claim(dev2)
        fs = env.paging_domain(dev1)  # 1 GiB pages
        parent = env.paging_domain(dev1, IOMMU_HWPT_ALLOC_NEST_PARENT)
        for d in (fs, parent):
            with pytest.raises(IommuError) as e:
                env.core.iommu_attach_group(d, dev2.iommu_group)
            assert e.value.errno == errno.EINVAL
        ok = env.paging_domain(dev1, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        env.core.iommu_attach_group(ok, dev2.iommu_group)
        env.core.iommu_detach_group(ok, dev2.iommu_group)

    def test_enforce_cache_coherency(self, env: DriverEnv) -> None:
        dev = env.add_device(ats=False)
        dom, _, _ = setup_domain(env, dev)
        assert dom.ops.enforce_cache_coherency(dom)
        assert pasid_entry(env, dev, 0).val[1] >> 24 & 1  # PGSNP
        env.dma_read(dev, IOVA, 4)
        ss = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
        assert ss.ops.enforce_cache_coherency(ss)
        _, pfns = env.user_pages(1)
        env.core.iommu_map(ss, 0, pfns[0] << 12, 4096, RW)
        assert isinstance(ss, DmarDomain)
        assert next(ss.pgtable.iter_leaves(0, 0)).desc >> 11 & 1  # SNP in the leaf
        # 7.3 has no "already has mappings" refusal: SNP goes into later leaves only
        ss2 = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
        env.core.iommu_map(ss2, 0, pfns[0] << 12, 4096, RW)
        assert ss2.ops.enforce_cache_coherency(ss2)
        env.core.iommu_map(ss2, 4096, pfns[0] << 12, 4096, RW)
        assert isinstance(ss2, DmarDomain)
        assert [lf.desc >> 11 & 1 for lf in ss2.pgtable.iter_leaves(0, 8191)] == [0, 1]


class TestDirtyTracking:
    def test_reports_written_pages(self, env: DriverEnv) -> None:
        dev = env.add_device()
        dom, _, _ = setup_domain(env, dev, IOMMU_HWPT_ALLOC_DIRTY_TRACKING, npages=4)
        env.dma_read(dev, IOVA, 4)  # cached before tracking starts
        dom.ops.set_dirty_tracking(dom, True)
        assert pasid_entry(env, dev, 0).ssade
        env.dma_write(dev, IOVA + 4096, b"w")
        env.dma_read(dev, IOVA + 8192, 1)
        env.dma_write(dev, IOVA, b"w")
        rec = RecordDirty()
        dom.ops.read_and_clear_dirty(dom, IOVA, 4 * 4096, 0, rec)
        assert sorted(rec.ranges) == [(IOVA, 4096), (IOVA + 4096, 4096)]
        rec2 = RecordDirty()
        dom.ops.read_and_clear_dirty(dom, IOVA, 4 * 4096, 0, rec2)
        assert rec2.ranges == []
        env.dma_write(dev, IOVA + 4096, b"again")  # the flush after clearing makes it seen
        rec3 = RecordDirty()
        dom.ops.read_and_clear_dirty(dom, IOVA, 4 * 4096, 1, rec3)  # NO_CLEAR
        assert rec3.ranges == [(IOVA + 4096, 4096)]
        dom.ops.set_dirty_tracking(dom, False)
        assert not pasid_entry(env, dev, 0).ssade
        # 7.3 (generic_pt) reads D bits with tracking off too: the one left set by
        # NO_CLEAR is reported; new writes set none
        env.dma_write(dev, IOVA, b"untracked")
        rec4 = RecordDirty()
        dom.ops.read_and_clear_dirty(dom, IOVA, 4 * 4096, 0, rec4)
        assert rec4.ranges == [(IOVA + 4096, 4096)]


class TestLegacyMode:
    LEGACY = {"scalable_mode": False, "first_stage": False, "nesting": False,
              "pasid_bits": 0, "page_requests": False, "dirty_tracking": False}

    @pytest.mark.parametrize("qi", [True, False])
    def test_legacy_translation(self, make_env: MakeEnv, qi: bool) -> None:
        env = make_env(**self.LEGACY, queued_invalidation=qi)
        u = unit(env)
        assert not u.sm_supported and (u.qi is not None) == qi
        dev = env.add_device()
        dom, va, _ = setup_domain(env, dev)
        assert dom.kind == "ss"
        ctx = u.context_tables[dev.rid >> 8][0] + dev.rid * 16 % 4096
        ce = h.ContextEntry(*u.mem.read_qwords(ctx, 2))
        assert (ce.present, ce.translation_type, ce.address_root, ce.domain_id) == (
            True, h.CONTEXT_TT_DEV_IOTLB if qi else h.CONTEXT_TT_MULTI_LEVEL,
            dom.pgtable.root, dom.domain_id_iommu(u))
        env.mm.write(va, b"legacy")
        assert env.dma_read(dev, IOVA, 6) == b"legacy"
        with pytest.raises(DmaFault) as e:
            env.dma_read(dev, 0x1000, 4, pasid=3)
        assert e.value.detail["code"] == 0x31
        env.core.iommu_unmap(dom, IOVA, 4096)
        with pytest.raises(DmaFault) as e:
            env.dma_read(dev, IOVA, 4)
        assert e.value.detail["code"] == 6  # PTE read access is not set
        env.core.iommu_group_replace_domain(dev.iommu_group, dev.iommu.ops.identity_domain)
        ce = h.ContextEntry(*u.mem.read_qwords(ctx, 2))
        assert ce.translation_type == h.CONTEXT_TT_PASS_THROUGH
        assert env.dma_read(dev, IOVA, 1) == env.platform.mem.read(IOVA, 1)

    def test_register_flush_staleness(self, make_env: MakeEnv) -> None:
        env = make_env(**self.LEGACY, queued_invalidation=False)
        dev = env.add_device(ats=False)
        dom, _, _ = setup_domain(env, dev)
        env.dma_read(dev, IOVA, 4)
        dom.pgtable.unmap(IOVA, 4096)
        env.dma_read(dev, IOVA, 4)
        from drivers.intel_vtd import dmar

        dmar.flush_iotlb(unit(env), dom.domain_id_iommu(unit(env)), IOVA, 0,
                         h.QI_IOTLB_GRAN_PSI)
        with pytest.raises(DmaFault):
            env.dma_read(dev, IOVA, 4)


def test_hw_info(env: DriverEnv) -> None:
    from iommufd.uapi import iommu_hw_info_vtd

    dev = env.add_device()
    blob, typ = dev.iommu.ops.hw_info(dev, 0)
    info = iommu_hw_info_vtd.from_buffer_copy(blob)
    assert (typ, info.flags, info.cap_reg, info.ecap_reg) == (1, 1, unit(env).cap,
                                                              unit(env).ecap)
    with pytest.raises(IommuError) as e:
        dev.iommu.ops.hw_info(dev, 2)
    assert e.value.errno == errno.EOPNOTSUPP


def test_unit_state(env: DriverEnv) -> None:
    u = unit(env)
    assert isinstance(u, IntelIommu)
    assert (u.agaw, u.msagaw, u.pasid_max_id) == (2, 2, 1 << 20)
    assert env.iommu.max_pasid_bits == 20
    assert hw(env).cfg.errata_772415
