"""The unit's indexed caches against a naive reference (issue #14): over random sequences
of maps, unmaps, changes made behind the hardware's back, invalidation descriptors of
every kind and DMA, the IOTLB, the paging-structure caches and the device ATC hold
exactly what linear scans applying the same rules would hold; every lookup answers the
same; and every requester-view entry is a live IOTLB entry seen through cached context
and PASID entries.

Also: a nested walk keeps using a stale second-stage translation of a guest table until
the parent's invalidation arrives (the paging-structure cache rule)."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.intel_vtd import dmar
from drivers.intel_vtd import iommu_h as h
from drivers.intel_vtd.hw.intel_iommu import PGTT_NESTED, VtdHardware
from drivers.intel_vtd.hw.tlb import (
    CLASS_SHIFT,
    E_ALLOWED,
    E_ATC,
    E_DID,
    E_FIRST,
    E_KIND,
    E_LAST,
    E_PA,
    E_PASID,
    FastKey,
    PscEntry,
    Tag,
    TlbEntry,
    VtdCaches,
    size_class,
)
from drivers.intel_vtd.iommu import DmarDomain, IntelIommu
from drivers.intel_vtd.plugin import plugin
from iommu_core.domain import IOMMU_HWPT_ALLOC_PASID
from iommu_core.gather import IotlbGather
from iommu_core.platform.dma import ACCESS_PRIV, ACCESS_READ, ACCESS_WRITE, DmaFault
from iommu_core.testing.env import DriverEnv
from iommufd.uapi import IOMMU_VTD_INV_FLAGS_LEAF

from .test_nested import GIOVA, Guest, guest  # noqa: F401  (fixture)

RW = 3
FS_IOVA = 0x4000_0000
NPAGES = 24


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 <= b1 and b0 <= a1


class NaiveCaches:
    """The same caches as flat dicts, dropped by scanning every entry."""

    def __init__(self) -> None:
        self.iotlb: dict[tuple[Tag, int], TlbEntry] = {}
        self.fs_psc: dict[tuple[Tag, int], PscEntry] = {}
        self.ss_psc: dict[tuple[int, int], PscEntry] = {}
        self.atc: dict[FastKey, TlbEntry] = {}

    def iotlb_get(self, tag: Tag, vpn: int, priv: int) -> tuple[TlbEntry | None, int]:
        for c, s in enumerate(CLASS_SHIFT):
            k = (vpn >> s) << 3 | c << 1 | priv
            if (tag, k) in self.iotlb:
                return self.iotlb[(tag, k)], k
        return None, 0

    def iotlb_put(self, tag: Tag, e: TlbEntry, priv: int) -> int:
        c = size_class(e)
        k = (e[E_FIRST] >> CLASS_SHIFT[c]) << 3 | c << 1 | priv
        self.iotlb[(tag, k)] = e
        return k

    def atc_put(self, fk: FastKey, e: TlbEntry) -> None:
        self.atc[fk] = e

    @staticmethod
    def _psc_get(items: dict[Any, PscEntry], tag: Any, vpn: int, top: int
                 ) -> tuple[int, PscEntry] | None:
        for level in range(top):
            k = (vpn >> (9 * (level + 1))) << 3 | level
            if (tag, k) in items:
                return level, items[(tag, k)]
        return None

    def fs_psc_get(self, tag: Tag, vpn: int, top: int) -> tuple[int, PscEntry] | None:
        return self._psc_get(self.fs_psc, tag, vpn, top)

    def ss_psc_get(self, did: int, vpn: int, top: int) -> tuple[int, PscEntry] | None:
        return self._psc_get(self.ss_psc, did, vpn, top)

    def fs_psc_put(self, tag: Tag, key: int, pe: PscEntry) -> None:
        self.fs_psc[(tag, key)] = pe

    def ss_psc_put(self, did: int, key: int, pe: PscEntry) -> None:
        self.ss_psc[(did, key)] = pe

    def drop_tag(self, tag: Tag) -> None:
        for k in [k for k in self.iotlb if k[0] == tag]:
            del self.iotlb[k]

    def drop_tag_range(self, tag: Tag, first: int, last: int) -> None:
        for k in [k for k, e in self.iotlb.items()
                  if k[0] == tag and _overlap(e[E_FIRST], e[E_LAST], first, last)]:
            del self.iotlb[k]

    @staticmethod
    def _covers(key: int, first: int, last: int) -> bool:
        level, prefix = key & 7, key >> 3
        lo = prefix << (9 * (level + 1))
        return _overlap(lo, lo + (1 << (9 * (level + 1))) - 1, first, last)

    def drop_fs_psc(self, tag: Tag, first: int | None = None, last: int = 0) -> None:
        for k in [k for k in self.fs_psc if k[0] == tag
                  and (first is None or self._covers(k[1], first, last))]:
            del self.fs_psc[k]

    def drop_ss_psc(self, did: int, first: int | None = None, last: int = 0) -> None:
        for k in [k for k in self.ss_psc if k[0] == did
                  and (first is None or self._covers(k[1], first, last))]:
            del self.ss_psc[k]

    def drop_atc(self, sid: int, pasid: int | None, first: int, last: int) -> None:
        for fk in [fk for fk, e in self.atc.items()
                   if fk[0] == sid and (pasid is None or e[E_PASID] == pasid)
                   and _overlap(e[E_FIRST], e[E_LAST], first, last)]:
            del self.atc[fk]

    def drop_requester(self, sid: int, pasids: Any = None, atc: bool = False) -> None:
        if atc:
            for fk in [fk for fk in self.atc if fk[0] == sid]:
                del self.atc[fk]

    def forget_translations(self) -> None:
        self.iotlb.clear()
        self.fs_psc.clear()
        self.ss_psc.clear()

    def forget_requesters(self) -> None:
        self.atc.clear()


class Tee:
    """The hardware's caches, each call checked against the naive ones."""

    def __init__(self, real: VtdCaches, ref: NaiveCaches) -> None:
        self.real, self.ref = real, ref
        self.fast = real.fast
        self.capacity = real.capacity

    def iotlb_get(self, tag: Tag, vpn: int, priv: int) -> tuple[TlbEntry | None, int]:
        got = self.real.iotlb_get(tag, vpn, priv)
        assert got == self.ref.iotlb_get(tag, vpn, priv), (tag, vpn, priv)
        return got

    def fs_psc_get(self, tag: Tag, vpn: int, top: int) -> Any:
        got = self.real.fs_psc_get(tag, vpn, top)
        assert got == self.ref.fs_psc_get(tag, vpn, top), (tag, vpn)
        return got

    def ss_psc_get(self, did: int, vpn: int, top: int) -> Any:
        got = self.real.ss_psc_get(did, vpn, top)
        assert got == self.ref.ss_psc_get(did, vpn, top), (did, vpn)
        return got

    def iotlb_put(self, tag: Tag, e: TlbEntry, priv: int) -> int:
        k = self.real.iotlb_put(tag, e, priv)
        assert k == self.ref.iotlb_put(tag, e, priv)
        return k

    def fast_put(self, fk: FastKey, e: TlbEntry, tag: Tag, key: int) -> None:
        self.real.fast_put(fk, e, tag, key)
        self.ref.atc.pop(fk, None)  # the device's entry for that page was replaced

    def atc_put(self, fk: FastKey, e: TlbEntry) -> None:
        self.real.atc_put(fk, e)
        self.ref.atc_put(fk, e)

    def publish(self, dev: Any, pasid: int | None, fk: FastKey) -> None:
        self.real.publish(dev, pasid, fk)  # a copy for the DMA path: checked after

    def drop_published(self, dev: Any) -> None:
        self.real.drop_published(dev)

    def tags_of_did(self, did: int) -> list[Tag]:
        got = self.real.tags_of_did(did)
        assert set(got) == {k[0] for k in self.ref.iotlb if k[0][0] == did}
        return got

    def fs_tags_of_did(self, did: int) -> list[Tag]:
        got = self.real.fs_tags_of_did(did)
        assert {t for t in got if self.real.fs_psc.get(t)} == {
            k[0] for k in self.ref.fs_psc if k[0][0] == did}
        return got

    def __getattr__(self, name: str) -> Any:
        def both(*a: Any, **kw: Any) -> Any:
            getattr(self.ref, name)(*a, **kw)
            return getattr(self.real, name)(*a, **kw)
        return both


def check_same(hw: VtdHardware, real: VtdCaches, ref: NaiveCaches) -> None:
    assert {(t, k): e for t, d in real.iotlb.items() for k, e in d.items()} == ref.iotlb
    assert real.iotlb_count == len(ref.iotlb)
    assert {(t, k): e for t, d in real.fs_psc.items() for k, e in d.items()} == ref.fs_psc
    assert {(t, k): e for t, d in real.ss_psc.items() for k, e in d.items()} == ref.ss_psc
    assert {fk: e for fk, e in real.fast.items() if e[E_ATC]} == ref.atc
    live = {(e[1:], e[E_PA]) for d in real.iotlb.values() for e in d.values()}
    for fk, e in real.fast.items():
        if e[E_ATC]:
            continue
        # a view: a live IOTLB entry (its page of it), through a cached context and PASID
        # entry
        assert (e[1:], e[E_PA] - ((fk[2] - e[E_FIRST]) << 12)) in live, fk
        assert fk[0] in hw.ctx_cache
        assert (fk[0], e[E_PASID]) in hw.pasid_cache
        assert e[E_DID] == hw.pasid_cache[(fk[0], e[E_PASID])].did
        assert e[E_KIND] == hw.pasid_cache[(fk[0], e[E_PASID])].pgtt
    # What the DMA path reads: copies of unprivileged requester entries, dropped with them.
    assert hw.dma_hits is real.hits
    for (dev, pasid), pages in real.hits.items():
        pk = -2 if pasid is None else pasid << 1
        for vpn, hit in pages.items():
            e = real.fast.get((dev.rid, pk, vpn))
            assert e is not None and (e[E_PA], e[E_ALLOWED]) == hit, (dev, pasid, vpn)


class World:
    """A nested device (ATS: ATC entries) on a nest parent that a second device (no ATS)
    uses at its RID, and a first-stage domain at PASID 5 of that second device."""

    def __init__(self) -> None:
        self.env = env = DriverEnv("intel_vtd", plugin=plugin)
        self.hw = hw = env.hw
        assert isinstance(hw, VtdHardware)
        self.real = hw.caches
        self.ref = NaiveCaches()
        hw.caches = Tee(self.real, self.ref)  # type: ignore[assignment]
        self.g = g = Guest(env, env.add_device())
        for i in range(NPAGES):
            g.s1.map(GIOVA + i * 4096, (i % 8) * 4096, 4096, RW)
        self.nested = g.nested(IOMMU_HWPT_ALLOC_PASID)
        env.core.iommu_attach_group(self.nested, g.dev.iommu_group)
        self.dev2 = env.add_device(ats=False)
        env.claim(self.dev2)
        env.core.iommu_attach_group(g.parent, self.dev2.iommu_group)
        self.fs = env.paging_domain(self.dev2)
        assert isinstance(self.fs, DmarDomain)
        _va, self.fs_pfns = env.user_pages(NPAGES)
        for i, pfn in enumerate(self.fs_pfns):
            env.core.iommu_map(self.fs, FS_IOVA + i * 4096, pfn << 12, 4096, RW)
        env.core.iommu_attach_device_pasid(self.fs, self.dev2, 5)
        self.unit: IntelIommu = g.dev.iommu.priv.iommu
        self.dids = [d.domain_id_iommu(self.unit) for d in (self.nested, g.parent, self.fs)
                     if isinstance(d, DmarDomain)]

    def close(self) -> None:
        env = self.env
        env.core.iommu_detach_device_pasid(self.fs, self.dev2, 5)
        env.core.iommu_detach_group(self.g.parent, self.dev2.iommu_group)
        env.core.iommu_detach_group(self.nested, self.g.dev.iommu_group)
        self.g.free(self.nested)
        env.teardown()

    # -- operations ----------------------------------------------------------------------
    def dma(self, who: int, page: int, access: int) -> None:
        dev, pasid, base = [(self.g.dev, None, GIOVA), (self.dev2, None, 0),
                            (self.dev2, 5, FS_IOVA)][who]
        with contextlib.suppress(DmaFault):
            self.hw.dma_translate(dev, pasid, base + page * 4096 + 8, access)

    def guest_leaf(self, page: int, gpa_page: int) -> None:
        """The guest rewrites a leaf of its table (no invalidation yet)."""
        iova = GIOVA + page * 4096
        table = self.g.s1.root
        for level in (3, 2, 1):
            e = self.g.ram.read_u64(table + ((iova >> (12 + 9 * level)) & 0x1FF) * 8)
            table = e & 0x000F_FFFF_FFFF_F000
        slot = table + ((iova >> 12) & 0x1FF) * 8
        old = self.g.ram.read_u64(slot)
        self.g.ram.write_u64(slot, (old & ~0x000F_FFFF_FFFF_F000) | gpa_page << 12)

    def guest_inv(self, page: int, npages: int, leaf: bool) -> None:
        self.g.invalidate(self.nested, [(GIOVA + page * 4096, npages,
                                         IOMMU_VTD_INV_FLAGS_LEAF if leaf else 0)])

    def parent_unmap(self, page: int) -> None:
        self.env.core.iommu_unmap(self.g.parent, page * 4096, 4096)
        self.env.core.iommu_map(self.g.parent, page * 4096,
                                self.g.pfns[(page + 1) % len(self.g.pfns)] << 12, 4096, RW)

    def stealth_unmap(self, which: int, page: int) -> None:
        """A page goes from a table without the flush (a buggy driver)."""
        dom = (self.g.parent, self.fs)[which]
        assert isinstance(dom, DmarDomain)
        base = (0, FS_IOVA)[which]
        gather = IotlbGather()
        if dom.pgtable.iova_to_phys(base + page * 4096):
            dom.pgtable.unmap_pages(base + page * 4096, 4096, 1, gather)
            dom.pgtable.release_freelist(gather)

    def descriptor(self, d: h.QiDesc) -> None:
        dmar.qi_submit_sync(self.unit, [d])


def descriptors(w: World) -> Any:
    dids = st.sampled_from([*w.dids, 1])
    pages = st.integers(0, NPAGES + 4)
    am = st.integers(0, 4)
    gva = st.builds(lambda p, base: base + p * 4096, pages, st.sampled_from([0, GIOVA,
                                                                            FS_IOVA]))
    sids = st.sampled_from([w.g.dev.rid, w.dev2.rid])
    cap = w.unit.cap
    return st.one_of(
        st.builds(lambda g, did, a, m, ih: h.qi_desc_iotlb(
            cap, did, (a & ~((4096 << m) - 1)) | ih, m if g == 3 else 0, g),
            st.sampled_from([1, 2, 3]), dids, gva, am, st.integers(0, 1)),
        st.builds(lambda did, p, a, m, ih: h.qi_desc_piotlb(did, p, a & ~((4096 << m) - 1),
                                                             m, ih),
                  dids, st.sampled_from([0, 5]), gva, am, st.integers(0, 1)),
        st.builds(h.qi_desc_piotlb_all, dids, st.sampled_from([0, 5])),
        st.builds(lambda s, a, m: h.qi_desc_dev_iotlb(s, s, 0, a, m), sids, gva, am),
        st.builds(lambda s, p, a, m: h.qi_desc_dev_iotlb_pasid(s, s, p, 0, a, m), sids,
                  st.sampled_from([0, 5]), gva, am),
        st.builds(lambda did, p, g: h.qi_desc_pasid_cache(did, p, g), dids,
                  st.sampled_from([0, 5]), st.sampled_from([0, 1, 3])),
        st.builds(lambda s, g: h.qi_desc_cc(0, s, 0, g), sids, st.sampled_from([1, 2, 3])),
    )


def ops(w: World) -> Any:
    """One operation; pages mostly among the first few, so operations meet."""
    pages = st.one_of(st.integers(0, 3), st.integers(0, 7), st.integers(0, NPAGES - 1))
    dma = st.tuples(st.just("dma"), st.integers(0, 2), pages,
                    st.sampled_from([ACCESS_READ, ACCESS_WRITE, ACCESS_READ | ACCESS_PRIV]))
    return st.one_of(
        dma, dma, dma,
        st.tuples(st.just("guest_leaf"), pages, st.integers(0, 7)),
        st.tuples(st.just("guest_inv"), pages, st.integers(0, 8), st.booleans()),
        st.tuples(st.just("parent_unmap"), st.integers(0, 3)),
        st.tuples(st.just("stealth_unmap"), st.integers(0, 1), pages),
        st.tuples(st.just("descriptor"), descriptors(w)),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_indexed_caches_equal_a_naive_reference(data: st.DataObject) -> None:
    w = World()
    try:
        op_strategy = ops(w)
        for _ in range(data.draw(st.integers(5, 40))):
            op = data.draw(op_strategy)
            getattr(w, op[0])(*op[1:])
            check_same(w.hw, w.real, w.ref)
    finally:
        w.hw.caches = w.real
        w.close()


# -- the stage-2 translation of a guest table stays until the parent's flush ----------
def test_stale_nested_walk_until_parent_invalidation(guest: Guest) -> None:  # noqa: F811
    """The guest's leaf table lives at GPA T. The VMM moves T to another host page (a
    copy whose leaves point elsewhere) by rewriting the parent's leaf without flushing:
    a DMA to a page the IOTLB never held still walks the old host page (the nested
    paging-structure cache holds T's old translation). The parent's IOTLB flush (type 2
    with the nested DID) makes the walk use the new page."""
    env = guest.env
    g = guest
    g.s1.map(GIOVA, 0x1000, 4096, RW)
    g.s1.map(GIOVA + 0x1000, 0x2000, 4096, RW)
    env.platform.mem.write(g.hpa(0x2000), b"old data")
    env.platform.mem.write(g.hpa(0x4000), b"new data")
    nested = g.nested()
    env.core.iommu_attach_group(nested, g.dev.iommu_group)
    assert env.dma_read(g.dev, GIOVA, 4)  # walks: the caches hold T's translation
    # T = the guest's leaf table; copy it to GPA page 0x6000's host page, retargeted
    leaf_gpa = _leaf_table_gpa(g, GIOVA)
    table = env.platform.mem.read(g.hpa(leaf_gpa), 4096)
    new_host = g.hpa(0x6000)
    env.platform.mem.write(new_host, table)
    slot = ((GIOVA + 0x1000) >> 12 & 0x1FF) * 8
    pte = env.platform.mem.read_u64(new_host + slot)
    env.platform.mem.write_u64(new_host + slot, pte & ~0x000F_FFFF_FFFF_F000 | 0x4000)
    parent = g.parent
    assert isinstance(parent, DmarDomain)
    _set_leaf(env, parent, leaf_gpa, new_host)  # behind the hardware's back
    assert env.dma_read(g.dev, GIOVA + 0x1000, 8) == b"old data"  # stale walk
    hw = env.hw
    assert isinstance(hw, VtdHardware)
    assert any(t[2] == PGTT_NESTED for t in hw.caches.fs_psc)
    unit = g.dev.iommu.priv.iommu
    did = nested.domain_id_iommu(unit)  # type: ignore[attr-defined]
    env.core.iommu_flush_iotlb_all(parent)  # the parent's flush reaches the nested DID
    assert not any(t[2] == PGTT_NESTED and t[0] == did for t in hw.caches.fs_psc)
    assert env.dma_read(g.dev, GIOVA + 0x1000, 8) == b"new data"
    env.core.iommu_detach_group(nested, g.dev.iommu_group)
    g.free(nested)


def _leaf_table_gpa(g: Guest, iova: int) -> int:
    table = g.s1.root
    for level in (3, 2, 1):
        e = g.ram.read_u64(table + ((iova >> (12 + 9 * level)) & 0x1FF) * 8)
        table = e & 0x000F_FFFF_FFFF_F000
    return table


def _set_leaf(env: DriverEnv, dom: DmarDomain, iova: int, pa: int) -> None:
    """Point the second-stage leaf of ``iova`` at ``pa`` in memory, no flush."""
    leaf = next(dom.pgtable.iter_leaves(iova, iova))
    assert leaf.size == 4096
    env.platform.mem.write_u64(leaf.desc_addr, leaf.desc & ~0x000F_FFFF_FFFF_F000 | pa)


def test_first_stage_psc_follows_ih(env: DriverEnv) -> None:
    """P-IOTLB with IH=1 (leaves only) keeps the first-stage paging-structure entries;
    IH=0 drops those covering the range; G=2 drops them all."""
    dev = env.add_device(ats=False)
    env.claim(dev)
    dom = env.paging_domain(dev)
    assert isinstance(dom, DmarDomain)
    _va, pfns = env.user_pages(2)
    for i, pfn in enumerate(pfns):
        env.core.iommu_map(dom, FS_IOVA + i * 4096, pfn << 12, 4096, RW)
    env.core.iommu_attach_group(dom, dev.iommu_group)
    env.dma_read(dev, FS_IOVA, 4)
    hw = env.hw
    assert isinstance(hw, VtdHardware)
    unit = dev.iommu.priv.iommu
    did = dom.domain_id_iommu(unit)
    tag = (did, 0, 1)
    held = dict(hw.caches.fs_psc[tag])
    assert len(held) == 3  # PDPT, PD and leaf tables of a 4-level walk
    dmar.qi_submit_sync(unit, [h.qi_desc_piotlb(did, 0, FS_IOVA, 0, 1)])
    assert hw.caches.fs_psc[tag] == held
    dmar.qi_submit_sync(unit, [h.qi_desc_piotlb(did, 0, FS_IOVA, 0, 0)])
    assert not hw.caches.fs_psc.get(tag)  # each of them maps FS_IOVA
    env.dma_read(dev, FS_IOVA, 4)
    dmar.qi_submit_sync(unit, [h.qi_desc_piotlb_all(did, 0)])
    assert tag not in hw.caches.fs_psc
    env.core.iommu_detach_group(dom, dev.iommu_group)



def test_ats_disable_drops_the_atc_and_its_published_hits() -> None:
    """The device's ATC outlives an IOTLB flush (only a device-TLB invalidation drops
    it), and what was published from it for the DMA path with it; clearing ATS Enable at
    the endpoint ends both: the next request is translated by the unit again."""
    from iommu_core.platform.ats import PCI_ATS_ENABLED

    w = World()
    try:
        dev, hw = w.g.dev, w.hw
        iova = GIOVA + 3 * 4096
        old = hw.dma_translate(dev, None, iova, ACCESS_READ)
        assert hw.dma_hits[(dev, None)][iova >> 12][0] == old & ~0xFFF
        w.guest_leaf(3, 6)  # the guest moves its page, no invalidation yet
        w.descriptor(h.qi_desc_iotlb(w.unit.cap, 0, 0, 0, 1))  # global IOTLB flush only
        assert hw.dma_translate(dev, None, iova, ACCESS_READ) == old  # the ATC's
        assert dev.props[PCI_ATS_ENABLED]
        dev.props[PCI_ATS_ENABLED] = False
        assert (dev, None) not in hw.dma_hits
        new = hw.dma_translate(dev, None, iova, ACCESS_READ)
        assert new != old
        check_same(hw, w.real, w.ref)
        dev.props[PCI_ATS_ENABLED] = True
    finally:
        w.close()
