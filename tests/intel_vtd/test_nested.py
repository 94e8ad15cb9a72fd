"""Nested translation through the IOMMU core: a guest-built x86-64 stage 1 in guest RAM
over a nest-parent second stage; guest invalidation; dirty tracking through nesting; and
the erratum 772415 behaviour the read-only rule exists for."""

from __future__ import annotations

import ctypes
import errno

import pytest

from drivers.intel_vtd.iommu import DmarDomain
from iommu_core.domain import (
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    IOMMU_HWPT_ALLOC_NEST_PARENT,
    IOMMU_HWPT_ALLOC_PASID,
    IommuDomain,
)
from iommu_core.errors import IommuError
from iommu_core.iommufd_driver import UserData, UserDataArray
from iommu_core.pgtable.formats.x86 import X86_A
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import DmaFault
from iommu_core.platform.uaccess import UserMemory
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_core.testing.env import DriverEnv
from iommufd.uapi import (
    IOMMU_HWPT_DATA_ARM_SMMUV3,
    IOMMU_HWPT_DATA_VTD_S1,
    IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
    IOMMU_VTD_INV_FLAGS_LEAF,
    iommu_hwpt_vtd_s1,
    iommu_hwpt_vtd_s1_invalidate,
)

from .conftest import MakeEnv
from .helpers import GuestRam, guest_fs_table
from .test_driver import RecordDirty, pasid_entry

RW = IOMMU_READ | IOMMU_WRITE
GUEST_PAGES = 64
GIOVA = 0x7F00_0000_0000 - 0x10_0000  # a guest kernel-ish address in the lower half


class Guest:
    """A nest parent mapping guest RAM, and a guest stage-1 table in that RAM."""

    def __init__(self, env: DriverEnv, dev: Device, parent_flags: int = 0) -> None:
        self.env = env
        self.dev = dev
        env.claim(dev)
        self.parent = env.paging_domain(dev, IOMMU_HWPT_ALLOC_NEST_PARENT | parent_flags)
        self.va, self.pfns = env.user_pages(GUEST_PAGES)
        for i, pfn in enumerate(self.pfns):  # user frames need not be contiguous
            env.core.iommu_map(self.parent, i * 4096, pfn << 12, 4096, RW)
        self.ram = GuestRam(lambda g, n: env.mm.read(self.va + g, n),
                            lambda g, d: env.mm.write(self.va + g, d), GUEST_PAGES * 4096, 16)
        self.s1 = guest_fs_table(self.ram)
        self.uva = env.mm.mmap(4096)

    def hpa(self, gpa: int) -> int:
        return (self.pfns[gpa >> 12] << 12) | (gpa & 0xFFF)

    def user_data(self, pgtbl: int | None = None, flags: int = 0, addr_width: int = 48,
                  dtype: int = IOMMU_HWPT_DATA_VTD_S1, length: int = 24) -> UserData:
        s = iommu_hwpt_vtd_s1(flags=flags, addr_width=addr_width,
                              pgtbl_addr=self.s1.root if pgtbl is None else pgtbl)
        self.env.mm.write(self.uva, bytes(s))
        return UserData(UserMemory(self.env.mm), dtype, self.uva, length)

    def nested(self, flags: int = 0, s1_flags: int = 0, **kw: int) -> IommuDomain:
        return self.dev.iommu.ops.domain_alloc_nested(self.dev, self.parent, flags,
                                                      self.user_data(flags=s1_flags, **kw))

    def invalidate(self, dom: IommuDomain, entries: list[tuple[int, int, int]],
                   dtype: int = IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, entry_len: int = 24
                   ) -> UserDataArray:
        raw = b"".join(bytes(iommu_hwpt_vtd_s1_invalidate(addr=a, npages=n, flags=f))
                       for a, n, f in entries)
        self.env.mm.write(self.uva + 1024, raw)
        arr = UserDataArray(UserMemory(self.env.mm), dtype, self.uva + 1024, entry_len,
                            len(entries))
        dom.ops.cache_invalidate_user(dom, arr)
        return arr

    def free(self, *doms: IommuDomain) -> None:
        for d in doms:
            self.env.core.iommu_domain_free(d)


@pytest.fixture
def guest(env: DriverEnv) -> Guest:
    return Guest(env, env.add_device())


DATA_GPA = 0x3000


class TestNestedTranslation:
    def test_dma_with_and_without_pasid(self, guest: Guest) -> None:
        env = guest.env
        guest.s1.map(GIOVA, DATA_GPA, 4096, RW)
        nested = guest.nested(IOMMU_HWPT_ALLOC_PASID)
        env.core.iommu_attach_group(nested, guest.dev.iommu_group)
        pe = pasid_entry(env, guest.dev, 0)
        assert pe.pgtt == 3 and pe.domain_id != guest.parent.domain_id_iommu  # own DID
        env.dma_write(guest.dev, GIOVA + 0x10, b"nested!")
        assert env.platform.mem.read(guest.hpa(DATA_GPA) + 0x10, 7) == b"nested!"
        second = guest.nested()
        env.core.iommu_attach_device_pasid(second, guest.dev, 5)
        assert env.dma_read(guest.dev, GIOVA + 0x10, 7, pasid=5) == b"nested!"
        with pytest.raises(DmaFault) as e:
            env.dma_read(guest.dev, GIOVA + 0x1000, 4, pasid=5)
        assert e.value.reason == "VTD_FR_FS_PAGING_ENTRY_P"
        env.core.iommu_detach_device_pasid(second, guest.dev, 5)
        env.core.iommu_detach_group(nested, guest.dev.iommu_group)
        guest.free(second, nested)

    def test_guest_pte_change_needs_invalidation(self, guest: Guest) -> None:
        env = guest.env
        guest.s1.map(GIOVA, DATA_GPA, 4096, RW)
        # a neighbour keeps the leaf table: remapping GIOVA changes one leaf only
        guest.s1.map(GIOVA + 0x1000, DATA_GPA, 4096, RW)
        env.platform.mem.write(guest.hpa(DATA_GPA), b"first")
        env.platform.mem.write(guest.hpa(DATA_GPA + 0x1000), b"second")
        nested = guest.nested()
        env.core.iommu_attach_group(nested, guest.dev.iommu_group)
        assert env.dma_read(guest.dev, GIOVA, 5) == b"first"
        guest.s1.unmap(GIOVA, 4096)
        guest.s1.map(GIOVA, DATA_GPA + 0x1000, 4096, RW)
        assert env.dma_read(guest.dev, GIOVA, 5) == b"first"  # stale (IOTLB and ATC)
        arr = guest.invalidate(nested, [(GIOVA, 1, IOMMU_VTD_INV_FLAGS_LEAF)])
        assert arr.entry_num == 1
        assert env.dma_read(guest.dev, GIOVA, 6) == b"second"
        env.core.iommu_detach_group(nested, guest.dev.iommu_group)
        guest.free(nested)

    def test_parent_change_reaches_nested_translations(self, guest: Guest) -> None:
        env = guest.env
        guest.s1.map(GIOVA, DATA_GPA, 4096, RW)
        nested = guest.nested()
        env.core.iommu_attach_group(nested, guest.dev.iommu_group)
        env.dma_read(guest.dev, GIOVA, 4)
        env.core.iommu_unmap(guest.parent, DATA_GPA, 4096)  # NESTING tags on the parent
        with pytest.raises(DmaFault) as e:
            env.dma_read(guest.dev, GIOVA, 4)
        assert e.value.reason == "VTD_FR_SS_PAGING_ENTRY_RW" or e.value.detail["code"] == 0x86
        env.core.iommu_detach_group(nested, guest.dev.iommu_group)
        guest.free(nested)


class TestNestedErrnos:
    def test_alloc(self, guest: Guest) -> None:
        ops = guest.dev.iommu.ops
        with pytest.raises(IommuError) as e:
            guest.nested(flags=IOMMU_HWPT_ALLOC_NEST_PARENT)
        assert e.value.errno == errno.EOPNOTSUPP
        with pytest.raises(IommuError) as e:
            ops.domain_alloc_nested(guest.dev, guest.parent, 0,
                                    guest.user_data(dtype=IOMMU_HWPT_DATA_ARM_SMMUV3))
        assert e.value.errno == errno.EOPNOTSUPP
        plain = guest.env.paging_domain(guest.dev, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        with pytest.raises(IommuError) as e:
            ops.domain_alloc_nested(guest.dev, plain, 0, guest.user_data())
        assert e.value.errno == errno.EINVAL
        for length in (16, 32):
            with pytest.raises(IommuError) as e:
                ops.domain_alloc_nested(guest.dev, guest.parent, 0,
                                        guest.user_data(length=length))
            assert e.value.errno == errno.EINVAL

    @pytest.mark.parametrize("kw", [{"addr_width": 39}, {"addr_width": 0}])
    def test_checked_at_attach(self, guest: Guest, kw: dict[str, int]) -> None:
        nested = guest.nested(**kw)  # allocation does not look at the stage-1 fields
        with pytest.raises(IommuError) as e:
            guest.env.core.iommu_attach_group(nested, guest.dev.iommu_group)
        assert e.value.errno == errno.EINVAL
        assert isinstance(nested, DmarDomain) and not nested.iommu_refs
        guest.free(nested)

    def test_unsupported_features_at_attach(self, make_env: MakeEnv) -> None:
        env = make_env(fl5lp=False, supervisor_requests=False, extended_access_flag=False)
        g = Guest(env, env.add_device())
        for kw in ({"addr_width": 57}, {"s1_flags": 1}, {"s1_flags": 2}):
            nested = g.nested(**kw)
            with pytest.raises(IommuError) as e:
                env.core.iommu_attach_group(nested, g.dev.iommu_group)
            assert e.value.errno == errno.EINVAL
            g.free(nested)

    def test_invalidate_errnos_and_entry_num(self, guest: Guest) -> None:
        nested = guest.nested()
        env = guest.env
        env.core.iommu_attach_group(nested, guest.dev.iommu_group)
        cases = [
            ([(0x1000, 1, 0), (0x2000, 2, 2)], errno.EOPNOTSUPP, 1),  # unknown flag
            ([(0x1000, 1, 0), (0x2001, 2, 0)], errno.EINVAL, 1),  # unaligned
            ([(0x1000, 1, 0), (0x1000, 1, 0), (0x1000, 2**64 - 1, 0)], errno.EINVAL, 2),
        ]
        for entries, err, done in cases:
            arr = UserDataArray(UserMemory(env.mm), IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
                                guest.uva + 1024, 24, len(entries))
            raw = b"".join(bytes(iommu_hwpt_vtd_s1_invalidate(addr=a, npages=n, flags=f))
                           for a, n, f in entries)
            env.mm.write(guest.uva + 1024, raw)
            with pytest.raises(IommuError) as e:
                nested.ops.cache_invalidate_user(nested, arr)
            assert (e.value.errno, arr.entry_num) == (err, done)
        ok = guest.invalidate(nested, [(0, 2**64 - 1, 0), (0x5000, 3, 1)])
        assert ok.entry_num == 2
        with pytest.raises(IommuError) as e:
            guest.invalidate(nested, [(0, 1, 0)], dtype=7)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(IommuError) as e:
            guest.invalidate(nested, [(0, 1, 0)], entry_len=16)
        assert e.value.errno == errno.EINVAL
        raw = bytes(iommu_hwpt_vtd_s1_invalidate(addr=0, npages=1))[:20] + b"\1\0\0\0"
        env.mm.write(guest.uva + 1024, raw)
        arr = UserDataArray(UserMemory(env.mm), IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
                            guest.uva + 1024, 24, 1)
        with pytest.raises(IommuError) as e:  # __reserved != 0
            nested.ops.cache_invalidate_user(nested, arr)
        assert e.value.errno == errno.EOPNOTSUPP and arr.entry_num == 0
        env.core.iommu_detach_group(nested, guest.dev.iommu_group)
        guest.free(nested)


class TestNestedDirtyAndErratum:
    def test_dirty_on_parent_reports_nested_writes(self, make_env: MakeEnv) -> None:
        env = make_env()
        g = Guest(env, env.add_device(), IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        for i in range(4):
            g.s1.map(GIOVA + i * 4096, DATA_GPA + i * 4096, 4096, RW)
        nested = g.nested()
        env.core.iommu_attach_group(nested, g.dev.iommu_group)
        assert not pasid_entry(env, g.dev, 0).ssade
        g.parent.ops.set_dirty_tracking(g.parent, True)
        assert pasid_entry(env, g.dev, 0).ssade  # the nested child follows its parent
        env.dma_read(g.dev, GIOVA, 4)
        env.dma_write(g.dev, GIOVA + 4096, b"a")
        env.dma_write(g.dev, GIOVA + 3 * 4096 + 100, b"b")
        rec = RecordDirty()
        g.parent.ops.read_and_clear_dirty(g.parent, 0, GUEST_PAGES * 4096, 0, rec)
        assert sorted(rec.ranges) == [(DATA_GPA + 4096, 4096), (DATA_GPA + 3 * 4096, 4096)]
        g.parent.ops.set_dirty_tracking(g.parent, False)
        assert not pasid_entry(env, g.dev, 0).ssade
        env.core.iommu_detach_group(nested, g.dev.iommu_group)
        g.free(nested)

    @pytest.mark.parametrize("errata", [True, False])
    def test_ad_update_through_read_only_stage2(self, make_env: MakeEnv, errata: bool
                                                ) -> None:
        """Bypass the driver's rule: map the guest's leaf table page read-only in the
        parent. A first-stage walk that must set A then writes that page anyway on an
        affected unit (SPR17); a correct unit faults (0x77)."""
        env = make_env(errata_772415=errata)
        g = Guest(env, env.add_device(ats=False))
        g.s1.map(GIOVA, DATA_GPA, 4096, RW)
        leaf = next(g.s1.iter_leaves(GIOVA, GIOVA))
        g.ram.write_u64(leaf.desc_addr, leaf.desc & ~X86_A)  # the guest cleared A
        table_gpa = leaf.desc_addr & ~0xFFF
        assert isinstance(g.parent, DmarDomain)
        g.parent.pgtable.unmap(table_gpa, 4096)  # the test bypasses the rule here
        g.parent.pgtable.map(table_gpa, g.hpa(table_gpa), 4096, IOMMU_READ)
        nested = g.nested()
        env.core.iommu_attach_group(nested, g.dev.iommu_group)
        before = env.platform.mem.read(g.hpa(table_gpa), 4096)
        if errata:
            env.dma_read(g.dev, GIOVA, 4)
            after = env.platform.mem.read(g.hpa(table_gpa), 4096)
            assert after != before  # the read-only page was written
            assert g.ram.read_u64(leaf.desc_addr) & X86_A
        else:
            with pytest.raises(DmaFault) as e:
                env.dma_read(g.dev, GIOVA, 4)
            assert e.value.detail["code"] == 0x77
            assert env.platform.mem.read(g.hpa(table_gpa), 4096) == before
        env.core.iommu_detach_group(nested, g.dev.iommu_group)
        g.free(nested)


def test_user_struct_size() -> None:
    assert ctypes.sizeof(iommu_hwpt_vtd_s1) == 24
    assert ctypes.sizeof(iommu_hwpt_vtd_s1_invalidate) == 24


class TestFirstStageRules:
    """U/S, SRE/WPE, EAFE and 5-level first stage, through a nested domain."""

    def setup_guest(self, env: DriverEnv, s1_flags: int, levels: int = 4
                    ) -> tuple[Guest, IommuDomain, int]:
        g = Guest(env, env.add_device(ats=False))
        if levels == 5:
            g.s1 = guest_fs_table(g.ram, 5)
        g.s1.map(GIOVA, DATA_GPA, 4096, IOMMU_READ)  # read-only for the guest
        leaf = next(g.s1.iter_leaves(GIOVA, GIOVA))
        nested = g.nested(s1_flags=s1_flags, addr_width=57 if levels == 5 else 48)
        env.core.iommu_attach_group(nested, g.dev.iommu_group)
        return g, nested, leaf.desc_addr

    def translate(self, g: Guest, access: int) -> int:
        return g.env.hw.dma_translate(g.dev, None, GIOVA, access)

    def test_user_supervisor_and_wpe(self, make_env: MakeEnv) -> None:
        from iommu_core.platform.dma import ACCESS_PRIV, ACCESS_READ, ACCESS_WRITE
        from iommufd.uapi import IOMMU_VTD_S1_SRE, IOMMU_VTD_S1_WPE

        for flags, sup_write_ok in ((0, None), (IOMMU_VTD_S1_SRE, True),
                                    (IOMMU_VTD_S1_SRE | IOMMU_VTD_S1_WPE, False)):
            env = make_env()
            g, nested, pte_gpa = self.setup_guest(env, flags)
            assert self.translate(g, ACCESS_READ) == g.hpa(DATA_GPA)
            with pytest.raises(DmaFault) as e:
                self.translate(g, ACCESS_WRITE)
            assert e.value.detail["code"] == 0x85
            if sup_write_ok is None:
                with pytest.raises(DmaFault) as e:
                    self.translate(g, ACCESS_READ | ACCESS_PRIV)
                assert e.value.detail["code"] == 0x5D  # SRE clear
            elif sup_write_ok:  # supervisor writes ignore R/W without WPE
                assert self.translate(g, ACCESS_WRITE | ACCESS_PRIV) == g.hpa(DATA_GPA)
            else:
                with pytest.raises(DmaFault):
                    self.translate(g, ACCESS_WRITE | ACCESS_PRIV)
            # a supervisor-only page refuses user requests
            g.ram.write_u64(pte_gpa, g.ram.read_u64(pte_gpa) & ~4)
            g.invalidate(nested, [(GIOVA, 1, 0)])
            with pytest.raises(DmaFault) as e:
                self.translate(g, ACCESS_READ)
            assert e.value.detail["code"] == 0x81
            env.core.iommu_detach_group(nested, g.dev.iommu_group)
            g.free(nested)

    def test_eafe_sets_extended_accessed(self, env: DriverEnv) -> None:
        from iommufd.uapi import IOMMU_VTD_S1_EAFE

        g, nested, pte_gpa = self.setup_guest(env, IOMMU_VTD_S1_EAFE)
        g.ram.write_u64(pte_gpa, g.ram.read_u64(pte_gpa) & ~X86_A)
        env.dma_read(g.dev, GIOVA, 4)
        assert g.ram.read_u64(pte_gpa) & (X86_A | 1 << 10) == X86_A | 1 << 10
        env.core.iommu_detach_group(nested, g.dev.iommu_group)
        g.free(nested)

    def test_five_level_guest_table(self, env: DriverEnv) -> None:
        g, nested, _ = self.setup_guest(env, 0, levels=5)
        env.platform.mem.write(g.hpa(DATA_GPA), b"five")
        assert env.dma_read(g.dev, GIOVA, 4) == b"five"
        assert pasid_entry(env, g.dev, 0).val[2] >> 2 & 3 == 1
        with pytest.raises(DmaFault) as e:  # 57-bit canonical form, not 48-bit
            env.dma_read(g.dev, 1 << 50, 4)
        assert e.value.detail["code"] == 0x71
        env.core.iommu_detach_group(nested, g.dev.iommu_group)
        g.free(nested)


class TestFlushSequences:
    """The descriptors the unit consumes around PASID-entry changes and for each kind of
    domain (vtd_amd.md §A4.4, §A7), read from the hardware's side of the queue."""

    @staticmethod
    def record(env: DriverEnv, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
        from drivers.intel_vtd import iommu_h as h

        seen: list[tuple[int, ...]] = []
        hw = env.hw
        orig = hw._process_desc  # type: ignore[attr-defined]

        def rec(*words: int) -> bool:
            d = h.QiDesc(*words)
            t = d.type
            if t == h.QI_IWD_TYPE:
                pass
            elif t in (h.QI_IOTLB_TYPE, h.QI_EIOTLB_TYPE, h.QI_PC_TYPE):
                # (type, granularity, DID, PASID or address mask)
                seen.append((t, d.qw0 >> 4 & 3, d.qw0 >> 16 & 0xFFFF,
                             d.qw0 >> 32 & 0xFFFFF if t != h.QI_IOTLB_TYPE else d.qw1 & 63))
            else:
                seen.append((t,))
            return bool(orig(*words))

        monkeypatch.setattr(hw, "_process_desc", rec)
        return seen

    def test_nested_paths(self, guest: Guest, monkeypatch: pytest.MonkeyPatch) -> None:
        env = guest.env
        guest.s1.map(GIOVA, DATA_GPA, 4096, RW)
        nested = guest.nested()
        env.core.iommu_attach_group(nested, guest.dev.iommu_group)
        assert isinstance(nested, DmarDomain)
        did = nested.domain_id_iommu(guest.dev.iommu.priv.iommu)
        seen = self.record(env, monkeypatch)
        guest.invalidate(nested, [(GIOVA, 1, IOMMU_VTD_INV_FLAGS_LEAF)])
        assert seen == [(6, 3, did, 0), (3,)]  # P-IOTLB PSI (DID, PASID 0), device TLB
        seen.clear()
        env.core.iommu_unmap(guest.parent, 0x8000, 4096)
        assert seen == [(2, 3, did, 0), (3,)]  # IOTLB PSI with the nested DID; whole ATC
        seen.clear()
        env.core.iommu_detach_group(nested, guest.dev.iommu_group)
        # teardown of a nested entry: PASID cache, DSI IOTLB, device TLB
        assert seen == [(7, 1, did, 0), (2, 2, did, 0), (3,)]
        guest.free(nested)

    def test_first_stage_teardown_and_dirty_toggle(self, env: DriverEnv,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        from iommu_core.domain import IOMMU_HWPT_ALLOC_DIRTY_TRACKING

        dev = env.add_device()
        env.claim(dev)
        fs = env.paging_domain(dev)
        env.core.iommu_attach_group(fs, dev.iommu_group)
        assert isinstance(fs, DmarDomain)
        did = fs.domain_id_iommu(dev.iommu.priv.iommu)
        seen = self.record(env, monkeypatch)
        ss = env.paging_domain(dev, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        env.core.iommu_group_replace_domain(dev.iommu_group, ss)
        assert isinstance(ss, DmarDomain)
        # FS teardown: PASID cache, P-IOTLB all of (DID, 0), device TLB; no flush to add
        assert seen[:3] == [(7, 1, did, 0), (6, 2, did, 0), (3,)]
        seen.clear()
        ss.ops.set_dirty_tracking(ss, True)
        sdid = ss.domain_id_iommu(dev.iommu.priv.iommu)
        assert seen == [(7, 1, sdid, 0), (2, 2, sdid, 0), (3,)]
        env.core.iommu_detach_group(ss, dev.iommu_group)
