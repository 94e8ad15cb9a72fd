"""The unit's indexed caches against a naive reference (issue #14): every command the
unit consumes must leave its caches (DTE cache, IOTLB, host and guest page-directory
caches, GCR3 entries) exactly as a scan applying the rule to every entry would, over
random sequences of maps, unmaps, changes behind the hardware's back, guest and raw
invalidations and DMA.

Also: a nested walk keeps using the stale host translation of a guest table until the
host's INVALIDATE_IOMMU_PAGES for the hDomID arrives; PDE=0 keeps directory entries."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.amd_vi.amd_iommu_types import (
    CMD_INV_ALL,
    CMD_INV_DEV_ENTRY,
    CMD_INV_IOMMU_PAGES,
    CMD_INV_IOMMU_PAGES_GN_MASK,
    CMD_INV_IOMMU_PAGES_PDE_MASK,
)
from drivers.amd_vi.hw.amd_iommu import AmdIommuHw
from drivers.amd_vi.iommu import (
    build_inv_all,
    build_inv_dte,
    build_inv_iommu_pages,
    iommu_completion_wait,
    iommu_queue_command,
)
from drivers.amd_vi.nested import NestedDomain
from iommu_core.gather import IotlbGather
from iommu_core.platform.dma import ACCESS_PRIV, ACCESS_READ, ACCESS_WRITE, DmaFault
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.testing.env import DriverEnv

from .conftest import RW, Nesting, gdte_for, make_env, mapped_device
from .test_nested import _invalidate

GVA = 0x40_0000
VA1 = 0x80_0000
NPAGES = 16
GN, PDE = CMD_INV_IOMMU_PAGES_GN_MASK, CMD_INV_IOMMU_PAGES_PDE_MASK
State = tuple[dict[int, Any], dict[int, dict[int, int]], dict[int, dict[int, Any]],
              dict[int, dict[int, Any]], dict[int, int]]


def snapshot(hw: AmdIommuHw) -> State:
    def norm(d: dict[int, dict[int, Any]]) -> dict[int, dict[int, Any]]:
        return {t: dict(v) for t, v in d.items() if v}

    return (dict(hw._dte_cache), norm(hw._iotlb), norm(hw._host_pde),
            norm(hw._guest_pde), dict(hw._gcr3))


def _covers(key: int, first: int, last: int) -> bool:
    level, prefix = key & 7, key >> 3
    lo = prefix << (9 * (level + 1))
    return lo <= last and first <= lo + (1 << (9 * (level + 1))) - 1


def naive(state: State, words: tuple[int, ...]) -> State:
    """What the command must leave, by scanning every cached entry."""
    dtes, tlb, hpde, gpde, gcr3 = copy.deepcopy(state)
    op = words[1] >> 28
    if op == CMD_INV_ALL:
        return {}, {}, {}, {}, {}
    if op == CMD_INV_DEV_ENTRY:
        dtes.pop(words[0] & 0xFFFF, None)
        return dtes, tlb, hpde, gpde, gcr3
    if op != CMD_INV_IOMMU_PAGES:
        return dtes, tlb, hpde, gpde, gcr3
    first, last = AmdIommuHw.inv_range(words[2], words[3])
    fvpn, lvpn = first >> 12, last >> 12
    domid = words[1] & 0xFFFF
    gn, pde = words[2] & GN, words[2] & PDE
    tag = domid | ((words[0] & 0xFFFFF) + 1) << 16 if gn else domid

    def dead_tag(t: int) -> bool:  # all of it goes
        return not gn and t & 0xFFFF == domid and t >> 16 != 0

    for t in list(tlb):
        for p in list(tlb[t]):
            if dead_tag(t) or (t == tag and fvpn <= p <= lvpn):
                del tlb[t][p]
    for t in list(gpde):
        for k in list(gpde[t]):
            if dead_tag(t) or (gn and t == tag and pde and _covers(k, fvpn, lvpn)):
                del gpde[t][k]
    for t in list(gcr3):
        if dead_tag(t) or (gn and t == tag and pde):
            del gcr3[t]
    if not gn and pde and domid in hpde:
        for k in list(hpde[domid]):
            if _covers(k, fvpn, lvpn):
                del hpde[domid][k]

    def norm(d: dict[int, dict[int, Any]]) -> dict[int, dict[int, Any]]:
        return {t: v for t, v in d.items() if v}

    return dtes, norm(tlb), norm(hpde), norm(gpde), gcr3


def check_published(hw: AmdIommuHw) -> None:
    """What the DMA path reads: copies of IOTLB entries found through the device's cached
    DTE; a write only where the entry lets a write hit."""
    for (dev, pasid), pages in hw.dma_hits.items():
        d = hw._dte_cache.get(dev.rid)
        assert d is not None, dev
        tag = d.nopasid_tag if pasid is None else d.domid | ((pasid + 1) << 16)
        assert hw._hit_tag[(dev, pasid)] == tag
        for vpn, (pa, perm) in pages.items():
            e = hw._iotlb[tag][vpn]
            assert pa == e & ~0xFFF
            assert perm == (ACCESS_READ if e & 1 else 0) | (ACCESS_WRITE if e & 6 == 6 else 0)


class World:
    """A nested device on a v1 nest parent (guest GCR3 and v2 table in guest RAM), and a
    second device on its own v1 paging domain."""

    def __init__(self) -> None:
        self.env = env = make_env()
        hw = env.hw
        assert isinstance(hw, AmdIommuHw)
        self.hw = hw
        self.checked = 0
        real = hw.exec_cmd

        def checked(words: tuple[int, ...]) -> bool:
            want = naive(snapshot(hw), words)
            ok = real(words)
            assert snapshot(hw) == want, f"after {words}"
            check_published(hw)
            self.checked += 1
            return ok

        hw.exec_cmd = checked  # type: ignore[method-assign]
        self.dev = dev = env.add_device(pasid_bits=0)
        env.claim(dev)
        self.n = n = Nesting(env, dev, npages=32)
        self.pt = n.guest_pt()
        self.data = [n.ram.alloc_page() for _ in range(4)]
        for i in range(NPAGES):
            self.pt.map(GVA + i * PAGE_SIZE, self.data[i % 4], PAGE_SIZE, RW)
        self.gcr3 = n.gcr3_table({0: self.pt.root})
        self.ndom = n.alloc_nested(gdte_for(self.gcr3, 0x33))
        env.core.iommu_group_replace_domain(dev.iommu_group, self.ndom)
        self.dev1 = env.add_device(pasid_bits=0, ats=False)
        env.claim(self.dev1)
        self.dom1 = env.paging_domain(self.dev1)
        _va, self.pfns1 = env.user_pages(NPAGES)
        for i, pfn in enumerate(self.pfns1):
            env.core.iommu_map(self.dom1, VA1 + i * PAGE_SIZE, pfn * PAGE_SIZE, PAGE_SIZE, RW)
        env.core.iommu_group_replace_domain(self.dev1.iommu_group, self.dom1)

    @property
    def domids(self) -> list[int]:
        assert isinstance(self.ndom, NestedDomain)
        return [self.ndom.hdom_id, self.n.parent.id, self.dom1.id,  # type: ignore[attr-defined]
                0x33]

    def close(self) -> None:
        group = self.dev1.iommu_group
        self.env.core.iommu_group_replace_domain(group, group.blocking_domain)
        self.n.teardown()
        self.env.teardown()

    # -- operations ----------------------------------------------------------------------
    def dma(self, who: int, page: int, access: int) -> None:
        dev, base = ((self.dev, GVA), (self.dev1, VA1))[who]
        with contextlib.suppress(DmaFault):
            self.hw.dma_translate(dev, None, base + page * PAGE_SIZE + 8, access)
        check_published(self.hw)

    def guest_leaf(self, page: int, data: int) -> None:
        """The guest points a leaf at another of its pages (no invalidation yet)."""
        leaf = next(self.pt.iter_leaves(GVA + page * PAGE_SIZE, GVA + page * PAGE_SIZE))
        self.n.ram.write_u64(leaf.desc_addr, leaf.desc & ~0x000F_FFFF_FFFF_F000
                             | self.data[data % 4])

    def guest_inv(self, page: int, size_lg2: int, pde: bool) -> None:
        first = (GVA + page * PAGE_SIZE) & ~((PAGE_SIZE << size_lg2) - 1)
        cmd = build_inv_iommu_pages(first, first + (PAGE_SIZE << size_lg2) - 1, 0x33, 0,
                                    GN | (PDE if pde else 0))
        _invalidate(self.n, [cmd.data])

    def parent_remap(self, page: int) -> None:
        env, parent = self.env, self.n.parent
        env.core.iommu_unmap(parent, page * PAGE_SIZE, PAGE_SIZE)
        env.core.iommu_map(parent, page * PAGE_SIZE,
                           self.n.ram.pfns[(page + 1) % 32] * PAGE_SIZE, PAGE_SIZE, RW)

    def stealth_unmap(self, which: int, page: int) -> None:
        """A page goes from a table without the flush (a buggy driver)."""
        dom, base = ((self.n.parent, 0), (self.dom1, VA1))[which]
        iop = dom.iop  # type: ignore[attr-defined]
        if iop.iova_to_phys(base + page * PAGE_SIZE):
            g = IotlbGather()
            iop.unmap_pages(base + page * PAGE_SIZE, PAGE_SIZE, 1, g)
            iop.release_freelist(g)

    def command(self, words: tuple[int, int, int, int]) -> None:
        from drivers.amd_vi.amd_iommu_types import IommuCmd
        iommu = self.env.iommu.priv
        iommu_queue_command(iommu, IommuCmd.of_words(words))  # type: ignore[arg-type]
        iommu_completion_wait(iommu)  # type: ignore[arg-type]


def commands(w: World) -> Any:
    doms = st.sampled_from(w.domids)
    addr = st.builds(lambda base, p, lg: (base + p * PAGE_SIZE) & ~((PAGE_SIZE << lg) - 1),
                     st.sampled_from([0, GVA, VA1]), st.integers(0, NPAGES), st.integers(0, 10))
    return st.one_of(
        st.builds(lambda a, lg, d, p, f: build_inv_iommu_pages(
            a, a + (PAGE_SIZE << lg) - 1, d, p, f).data,
            addr, st.integers(0, 10), doms, st.sampled_from([0, 1]),
            st.sampled_from([0, GN, PDE, GN | PDE])),
        st.builds(lambda d, f: build_inv_iommu_pages(0, 2**64 - 1, d, 0, f).data, doms,
                  st.sampled_from([0, GN, PDE, GN | PDE])),
        st.builds(lambda dev: build_inv_dte(dev).data,
                  st.sampled_from([w.dev.rid, w.dev1.rid])),
        st.just(build_inv_all().data),
    )


def ops(w: World) -> Any:
    pages = st.one_of(st.integers(0, 3), st.integers(0, NPAGES - 1))
    dma = st.tuples(st.just("dma"), st.integers(0, 1), pages,
                    st.sampled_from([ACCESS_READ, ACCESS_WRITE, ACCESS_READ | ACCESS_PRIV]))
    return st.one_of(
        dma, dma, dma,
        st.tuples(st.just("guest_leaf"), pages, st.integers(0, 3)),
        st.tuples(st.just("guest_inv"), pages, st.integers(0, 10), st.booleans()),
        st.tuples(st.just("parent_remap"), st.integers(0, 7)),
        st.tuples(st.just("stealth_unmap"), st.integers(0, 1), pages),
        st.tuples(st.just("command"), commands(w)),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_command_drops_what_a_scan_would(data: st.DataObject) -> None:
    w = World()
    try:
        op_strategy = ops(w)
        for _ in range(data.draw(st.integers(5, 40))):
            op = data.draw(op_strategy)
            getattr(w, op[0])(*op[1:])
        assert w.checked
    finally:
        w.close()


# -- the host translation of a guest table stays until the host's flush --------------
def test_stale_nested_walk_until_parent_invalidation(env: DriverEnv) -> None:
    """The guest's leaf table lives at GPA T. The VMM moves T to another host page (a
    copy whose leaf points elsewhere) by rewriting the parent's v1 leaf without a flush:
    a DMA to a guest page the IOTLB never held still walks the old host page (the guest
    page-directory cache holds T's old host translation). INVALIDATE_IOMMU_PAGES (GN=0)
    for the hDomID, as the parent's flush sends it, makes the walk use the new page."""
    dev = env.add_device(pasid_bits=0)
    env.claim(dev)
    n = Nesting(env, dev, npages=16)
    pt = n.guest_pt()
    old, new, spare = n.ram.alloc_page(), n.ram.alloc_page(), n.ram.alloc_page()
    pt.map(GVA, old, PAGE_SIZE, RW)
    pt.map(GVA + PAGE_SIZE, old, PAGE_SIZE, RW)
    n.ram.write(old, b"old data")
    n.ram.write(new, b"new data")
    gcr3 = n.gcr3_table({0: pt.root})
    ndom = n.alloc_nested(gdte_for(gcr3, 0x33))
    env.core.iommu_group_replace_domain(dev.iommu_group, ndom)
    assert env.dma_read(dev, GVA, 8) == b"old data"
    leaf_table = next(pt.iter_leaves(GVA, GVA)).desc_addr & ~0xFFF
    copy_of = bytearray(n.ram.read(leaf_table, PAGE_SIZE))
    slot = ((GVA + PAGE_SIZE) >> 12 & 0x1FF) * 8
    pte = int.from_bytes(copy_of[slot:slot + 8], "little")
    copy_of[slot:slot + 8] = (pte & ~0x000F_FFFF_FFFF_F000 | new).to_bytes(8, "little")
    n.ram.write(spare, bytes(copy_of))
    parent = n.parent
    host_leaf = next(parent.iop.iter_leaves(leaf_table, leaf_table))  # type: ignore[attr-defined]
    env.platform.mem.write_u64(host_leaf.desc_addr, host_leaf.desc & ~0x000F_FFFF_FFFF_F000
                               | n.ram.spa(spare))  # behind the unit's back
    assert env.dma_read(dev, GVA + PAGE_SIZE, 8) == b"old data"  # the stale walk
    hw = env.hw
    assert isinstance(hw, AmdIommuHw) and hw._guest_pde
    # a leaf-only guest flush does not help: the guest's tables did not change
    _invalidate(n, [build_inv_iommu_pages(GVA, GVA + 2 * PAGE_SIZE - 1, 0x33, 0, GN).data])
    assert env.dma_read(dev, GVA + PAGE_SIZE, 8) == b"old data"
    env.core.iommu_flush_iotlb_all(parent)  # INVALIDATE_IOMMU_PAGES, GN=0, each hDomID
    assert env.dma_read(dev, GVA + PAGE_SIZE, 8) == b"new data"
    n.teardown()


def test_host_pde_follows_the_pde_bit(env: DriverEnv) -> None:
    """INVALIDATE_IOMMU_PAGES with PDE=0 keeps the host page-directory entries; PDE=1
    drops those whose table maps part of the range."""
    dev, dom = mapped_device(env, VA1)
    env.dma_read(dev, VA1, 4)
    hw = env.hw
    assert isinstance(hw, AmdIommuHw)
    domid = dom.id  # type: ignore[attr-defined]
    held = dict(hw._host_pde[domid])
    assert len(held) == 3  # the three tables below the root of a 4-level v1 table
    iommu = env.iommu.priv
    iommu_queue_command(iommu, build_inv_iommu_pages(VA1, VA1 + 4095, domid, 0, 0))  # type: ignore[arg-type]
    assert hw._host_pde[domid] == held
    iommu_queue_command(iommu, build_inv_iommu_pages(VA1, VA1 + 4095, domid, 0, PDE))  # type: ignore[arg-type]
    assert not hw._host_pde[domid]
    iommu_completion_wait(iommu)  # type: ignore[arg-type]


def test_freed_hdomid_leaves_nothing_cached(env: DriverEnv) -> None:
    """A nested device goes back to blocked and its nested domain is freed: the hDomID
    returns to the ID allocator only after INVALIDATE_IOMMU_PAGES (all, PDE) for it, so
    the next domain given that DomainID cannot walk through the old parent's tables."""
    dev = env.add_device(pasid_bits=0)
    env.claim(dev)
    n = Nesting(env, dev, npages=8)
    pt = n.guest_pt()
    pt.map(GVA, n.ram.alloc_page(), PAGE_SIZE, RW)
    ndom = n.alloc_nested(gdte_for(n.gcr3_table({0: pt.root}), 0x44))
    env.core.iommu_group_replace_domain(dev.iommu_group, ndom)
    env.dma_read(dev, GVA, 4)  # caches host directory entries tagged with the hDomID
    hdom = ndom.hdom_id
    hw = env.hw
    assert isinstance(hw, AmdIommuHw) and hdom in hw._host_pde
    env.core.iommu_group_replace_domain(dev.iommu_group, dev.iommu_group.blocking_domain)
    env.core.iommu_domain_free(ndom)
    n.nested.remove(ndom)
    assert not hw._host_pde.get(hdom)
    fresh = env.paging_domain(dev)
    assert fresh.id == hdom  # type: ignore[attr-defined]  # the ID came back
    env.core.iommu_group_replace_domain(dev.iommu_group, fresh)
    with pytest.raises(DmaFault):
        env.dma_read(dev, 0, 4)  # mapped in the old parent only
    n.teardown()
