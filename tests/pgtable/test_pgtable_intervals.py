"""The interval map on its own: Linux map/unmap semantics, coalescing, errors."""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.pgtable import IntervalMap, Mapping, iommu_pgsize
from iommu_core.prot import IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE

SZ_4K, SZ_2M, SZ_1G = 1 << 12, 1 << 21, 1 << 30
BITMAP = SZ_4K | SZ_2M | SZ_1G
RW = IOMMU_READ | IOMMU_WRITE


def imap() -> IntervalMap:
    return IntervalMap(BITMAP, ((0, (1 << 48) - 1),), 48)


def errno_of(fn: object, *args: int) -> int:
    with pytest.raises(IommuError) as e:
        fn(*args)  # type: ignore[operator]
    return e.value.errno


def test_map_lookup_unmap() -> None:
    m = imap()
    assert m.map_pages(0x10000, 0x8000_0000, SZ_4K, 4, RW) == 4 * SZ_4K
    assert m.iova_to_phys(0x10000) == 0x8000_0000
    assert m.iova_to_phys(0x13FFF) == 0x8000_3FFF
    assert m.iova_to_phys(0x14000) == 0  # unmapped reads as 0, like Linux
    assert m.iova_to_phys(0xFFFF) == 0
    assert list(m) == [Mapping(0x10000, 0x13FFF, 0x8000_0000, RW, SZ_4K)]
    assert m.unmap_pages(0x11000, SZ_4K, 1) == SZ_4K  # a page in the middle: splits the run
    assert [(x.iova, x.last) for x in m] == [(0x10000, 0x10FFF), (0x12000, 0x13FFF)]
    assert m.iova_to_phys(0x12000) == 0x8000_2000
    assert m.leaf_at(0x12345) == Mapping(0x12000, 0x12FFF, 0x8000_2000, RW, SZ_4K)


def test_coalescing() -> None:
    m = imap()
    for i in range(512):  # 2 MiB made of 4K pages, mapped one by one, out of order
        j = (i * 7) % 512
        m.map_pages(j * SZ_4K, 0x4000_0000 + j * SZ_4K, SZ_4K, 1, RW)
    assert len(m) == 1 and m.mapped_bytes == SZ_2M
    # Not coalesced: different prot, leaf size, or discontiguous output.
    m.map_pages(SZ_2M, 0x4000_0000 + SZ_2M, SZ_4K, 1, RW | IOMMU_CACHE)
    m.map_pages(SZ_2M + SZ_4K, 0x9000_0000, SZ_4K, 1, RW | IOMMU_CACHE)
    m.map_pages(2 * SZ_2M, 0x4000_0000 + 2 * SZ_2M, SZ_2M, 1, RW)
    assert len(m) == 4


def test_overlap_is_eaddrinuse_and_changes_nothing() -> None:
    m = imap()
    m.map_pages(SZ_2M, 0, SZ_2M, 1, RW)
    before = list(m)
    for iova, size, count in [
        (SZ_2M, SZ_4K, 1),
        (SZ_2M - SZ_4K, SZ_4K, 2),
        (0, SZ_2M, 2),
        (0, SZ_1G, 1),
    ]:
        assert errno_of(m.map_pages, iova, 0x4000_0000, size, count, RW) == errno.EADDRINUSE
    assert list(m) == before


def test_map_errors() -> None:
    m = imap()
    assert errno_of(m.map_pages, 0, 0, SZ_4K, 1, IOMMU_CACHE) == errno.EINVAL  # no R/W
    assert errno_of(m.map_pages, 0, 0, 1 << 13, 1, RW) == errno.EINVAL  # size not in bitmap
    assert errno_of(m.map_pages, 0, 0, 3 * SZ_4K, 1, RW) == errno.EINVAL  # not a power of 2
    assert errno_of(m.map_pages, 0x800, 0, SZ_4K, 1, RW) == errno.EINVAL  # iova unaligned
    assert errno_of(m.map_pages, 0, 0x1000, SZ_2M, 1, RW) == errno.EINVAL  # paddr unaligned
    assert errno_of(m.map_pages, 0, 0, SZ_4K, 0, RW) == errno.EINVAL
    # Out of the input/output address space: ERANGE (generic_pt).
    assert errno_of(m.map_pages, 1 << 48, 0, SZ_4K, 1, RW) == errno.ERANGE
    assert errno_of(m.map_pages, (1 << 48) - SZ_4K, 0, SZ_4K, 2, RW) == errno.ERANGE
    assert errno_of(m.map_pages, 0, 1 << 48, SZ_4K, 1, RW) == errno.ERANGE
    assert len(m) == 0


def test_two_va_ranges() -> None:
    top = (1 << 64) - (1 << 47)
    m = IntervalMap(BITMAP, ((0, (1 << 47) - 1), (top, (1 << 64) - 1)), 52)
    m.map_pages(top, 0x1000, SZ_4K, 1, RW)
    assert m.iova_to_phys(top + 5) == 0x1005
    assert errno_of(m.map_pages, 1 << 47, 0, SZ_4K, 1, RW) == errno.ERANGE  # the hole
    assert errno_of(m.map_pages, (1 << 47) - SZ_4K, 0, SZ_4K, 2, RW) == errno.ERANGE


def test_unmap_never_splits_a_leaf() -> None:
    m = imap()
    m.map_pages(SZ_2M, 0x4000_0000, SZ_2M, 1, RW)
    # A 4K piece at the start of the 2M leaf removes and returns the whole leaf.
    assert m.unmap_pages(SZ_2M, SZ_4K, 1) == SZ_2M
    assert len(m) == 0
    # Starting in the middle of a leaf: nothing (generic_pt: -EINVAL -> 0).
    m.map_pages(SZ_2M, 0x4000_0000, SZ_2M, 1, RW)
    assert m.unmap_pages(SZ_2M + SZ_4K, SZ_4K, 1) == 0
    assert len(m) == 1
    # Ending inside the second of two coalesced 2M leaves removes both.
    m.map_pages(2 * SZ_2M, 0x4000_0000 + SZ_2M, SZ_2M, 1, RW)
    assert len(m) == 1
    assert m.unmap_pages(SZ_2M, SZ_4K, 513) == 2 * SZ_2M


def test_unmap_stops_at_hole() -> None:
    m = imap()
    m.map_pages(0x0, 0x10000, SZ_4K, 1, RW)
    m.map_pages(0x2000, 0x20000, SZ_4K, 1, RW)
    g = IotlbGather()
    assert m.unmap_pages(0x0, SZ_4K, 3, g) == SZ_4K
    assert (g.start, g.end) == (0, SZ_4K - 1)
    assert m.iova_to_phys(0x2000) == 0x20000
    assert m.unmap_pages(0x1000, SZ_4K, 2) == 0  # iova itself unmapped
    assert m.unmap_pages(1 << 50, SZ_4K, 1) == 0  # outside the table
    # Crosses adjacent intervals of different kinds without stopping.
    m.map_pages(0x3000, 0x90000, SZ_4K, 1, RW | IOMMU_CACHE)
    m.map_pages(0x4000, 0x70000, SZ_4K, 1, RW)
    assert m.unmap_pages(0x2000, SZ_4K, 3) == 3 * SZ_4K
    assert len(m) == 0


def test_iter_range() -> None:
    m = imap()
    for i in range(10):
        m.map_pages(i * 2 * SZ_4K, i * SZ_4K, SZ_4K, 1, RW)
    got = [x.iova for x in m.iter_range(2 * SZ_4K + 5, 9 * SZ_4K)]  # starts inside one
    assert got == [2 * SZ_4K, 4 * SZ_4K, 6 * SZ_4K, 8 * SZ_4K]


def test_iommu_pgsize() -> None:
    bitmap = SZ_4K | SZ_2M | SZ_1G
    # 2M-aligned start 28M below a 1G boundary: 14 x 2M first.
    assert iommu_pgsize(bitmap, 0x3FE400000, 0x3FE400000, 0xC2200000) == (SZ_2M, 14)
    assert iommu_pgsize(bitmap, 0x400000000, 0x400000000, 0xC0600000) == (SZ_1G, 3)
    # Up to the 2M boundary when a whole 2M page fits after it; else all 4K.
    assert iommu_pgsize(bitmap, 0x1000, 0x1000, 2 * SZ_2M) == (SZ_4K, 511)
    assert iommu_pgsize(bitmap, 0x1000, 0x1000, SZ_2M) == (SZ_4K, 512)
    # Different offsets within 2M: never a bigger size.
    assert iommu_pgsize(bitmap, 0x1000, 0x2000, 4 * SZ_2M) == (SZ_4K, 2048)


def test_unmap_from_inside_a_run_into_the_next() -> None:
    """Regression: the first interval keeps its head, the next is deleted by key."""
    m = imap()
    m.map_pages(0x0, 0x10000, SZ_4K, 4, RW)
    m.map_pages(0x4000, 0x90000, SZ_4K, 4, IOMMU_READ)
    m.map_pages(0x8000, 0xA0000, SZ_4K, 1, RW | IOMMU_CACHE)
    assert m.unmap_pages(0x2000, SZ_4K, 6) == 0x6000
    m._map._check()  # type: ignore[attr-defined]
    assert [(x.iova, x.last) for x in m] == [(0x0, 0x1FFF), (0x8000, 0x8FFF)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.integers(0, 63),
            st.integers(1, 6),
            st.sampled_from([SZ_4K, 2 * SZ_4K]),
            st.sampled_from([RW, IOMMU_READ]),
        ),
        max_size=80,
    )
)
def test_random_ops_against_pages(ops: list[tuple[bool, int, int, int, int]]) -> None:
    """Random maps/unmaps of 4K pages vs a dict of pages; sorted-container invariants hold
    after the positional inserts and deletes."""
    m = IntervalMap(SZ_4K, ((0, (1 << 48) - 1),), 48)
    pages: dict[int, tuple[int, int]] = {}
    for is_map, slot, count, pa_step, prot in ops:
        iova = slot * SZ_4K
        if is_map:
            want = any(iova + i * SZ_4K in pages for i in range(count))
            pa = slot * pa_step
            try:
                m.map_pages(iova, pa, SZ_4K, count, prot)
                assert not want
                for i in range(count):
                    pages[iova + i * SZ_4K] = (pa + i * SZ_4K, prot)
            except IommuError as e:
                assert want and e.errno == errno.EADDRINUSE
        else:
            expect = 0
            while expect < count * SZ_4K and iova + expect in pages:
                del pages[iova + expect]
                expect += SZ_4K
            assert m.unmap_pages(iova, SZ_4K, count) == expect
        m._map._check()  # type: ignore[attr-defined]
        for x in range(0, 72 * SZ_4K, SZ_4K):
            pa_prot = pages.get(x)
            assert m.iova_to_phys(x + 5) == (pa_prot[0] + 5 if pa_prot else 0)
        # Coalesced: no two adjacent intervals could have been merged.
        runs = list(m)
        for a, b in itertools.pairwise(runs):
            assert not (a.last + 1 == b.iova and a.prot == b.prot and a.paddr + a.size == b.paddr)
