"""The materialised table, with the generic_pt KUnit cases (kunit_iommu_pt.h)."""

from __future__ import annotations

import errno
from collections import Counter

import pytest
from pgtable_cases import FORMAT_CASES, RW, Env, pa_base, va_base

from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.pgtable import IoPageTable, PtFormat, formats
from iommu_core.prot import IOMMU_READ

CASES = sorted(FORMAT_CASES)
SZ_4K, SZ_2M, SZ_1G = 1 << 12, 1 << 21, 1 << 30


def safe_sizes(fmt: PtFormat) -> list[int]:
    """Page sizes small enough to place several side by side in the IOVA space."""
    limit = fmt.va_ranges[-1][1] - fmt.va_ranges[-1][0] + 1
    return [1 << b for b in range(64) if fmt.pgsize_bitmap >> b & 1 and (1 << b) <= limit >> 3]


def leaves_by_size(pt: IoPageTable) -> Counter[int]:
    return Counter(leaf.size for leaf in pt.iter_leaves())


@pytest.mark.parametrize("case", CASES)
def test_map_simple(case: str) -> None:
    """Map every page size; a walk of the tables finds exactly one leaf per size; then
    unmap each and nothing (no leaf, no table but the root, no page) is left."""
    fmt = FORMAT_CASES[case]()
    env = Env()
    pt = env.table(fmt)
    root_pages = env.leaked()
    sizes = safe_sizes(fmt)
    base = va_base(fmt) + 256 * fmt.granule
    placed = []
    cur = base
    for size in sizes:
        cur = (cur + size - 1) & -size
        pa = pa_base(fmt, size)
        assert pt.map_pages(cur, pa, size, 1, RW) == size
        assert pt.iova_to_phys(cur) == pa
        assert pt.iova_to_phys(cur + size - 1) == pa + size - 1
        w = pt.walk(cur + size // 2)
        assert w.ok and w.oa == pa + size // 2 and w.page_size == size  # type: ignore[union-attr]
        placed.append((cur, size))
        cur += size
    assert leaves_by_size(pt) == Counter(sizes)
    for iova, size in placed:
        assert pt.unmap_pages(iova, size, 1) == size
    assert leaves_by_size(pt) == Counter()
    assert pt.table_count == 1
    assert env.leaked() == root_pages  # only the root is left
    pt.free()
    assert env.leaked() == 0


@pytest.mark.parametrize("case", CASES)
def test_unmap_split(case: str) -> None:
    """Unmapping a small page at the start of a larger one removes and returns the whole
    larger page, and does not continue into the next mapping."""
    fmt = FORMAT_CASES[case]()
    env = Env()
    pt = env.table(fmt)
    sizes = safe_sizes(fmt)[:12]  # AMD v1 has 30+ sizes: every pair of the first 12
    va = va_base(fmt)
    count = 0
    for i, base_len in enumerate(sizes):
        for next_len in sizes[i + 1 :]:
            pa = pa_base(fmt, next_len)
            pt.map(va, pa, next_len, RW)
            assert pt.unmap(va, base_len) == next_len
            pt.map(va, pa, next_len, RW)
            pt.map(va + next_len, pa, next_len, RW)
            assert pt.unmap(va, base_len) == next_len
            assert pt.unmap(va + next_len, next_len) == next_len
            count += 1
    assert count  # every format has two page sizes
    assert pt.table_count == 1
    pt.free()
    assert env.leaked() == 0


@pytest.mark.parametrize("case", CASES)
def test_unmap_stops_at_hole(case: str) -> None:
    fmt = FORMAT_CASES[case]()
    env = Env()
    pt = env.table(fmt)
    g = fmt.granule
    va = va_base(fmt) + 16 * g
    pt.map_pages(va, 0, g, 2, RW)
    pt.map_pages(va + 3 * g, 0x100 * g, g, 1, RW)
    gather = IotlbGather()
    assert pt.unmap_pages(va, g, 4, gather) == 2 * g
    assert (gather.start, gather.end) == (va, va + 2 * g - 1)
    assert pt.iova_to_phys(va + 3 * g) == 0x100 * g
    assert pt.unmap_pages(va + 2 * g, g, 2) == 0  # starts in the hole
    pt.release_freelist(gather)
    assert [leaf.iova for leaf in pt.iter_leaves()] == [va + 3 * g]
    pt.free()
    assert env.leaked() == 0


@pytest.mark.parametrize(
    "case",
    [
        c
        for c in CASES
        if (FORMAT_CASES[c]().pgsize_bitmap & ((1 << 31) - (1 << 21))) == SZ_2M | SZ_1G
    ],
)
def test_mixed_2m_1g(case: str) -> None:
    """The 2M/1G mixing regression: a range from 2M below... to 6M past 1G boundaries
    maps as 14 x 2M + 3 x 1G + 3 x 2M = 20 leaves."""
    fmt = FORMAT_CASES[case]()
    env = Env()
    pt = env.table(fmt)
    start, end = 0x3FE400 << 12, 0x4C0600 << 12
    pt.map(start, start, end - start, RW)
    assert leaves_by_size(pt) == Counter({SZ_2M: 17, SZ_1G: 3})
    assert sum(leaves_by_size(pt).values()) == 20
    for off in range(0, end - start, 0x1234_5000):
        assert pt.iova_to_phys(start + off) == start + off
        w = pt.walk(start + off)
        assert w.ok and w.oa == start + off  # type: ignore[union-attr]
    assert pt.unmap(start, end - start) == end - start
    pt.free()
    assert env.leaked() == 0


def test_pgsize_boundary() -> None:
    """kunit test_pgsize_boundary: a 128K range at 0xfef80000 -> 0x208b95d000."""
    for fmt in (formats.amd_v1(4), formats.x86_64(4), formats.vtd_ss(4), formats.arm_lpae_s1()):
        env = Env()
        pt = env.table(fmt)
        pt.map(0xFEF80000, 0x208B95D000, 0xFEF9FFFF - 0xFEF80000 + 1, RW)
        assert pt.iova_to_phys(0xFEF9FFFF) == 0x208B95D000 + 0x1FFFF
        pt.free()
        assert env.leaked() == 0


@pytest.mark.parametrize("case", CASES)
def test_overlap_changes_nothing(case: str) -> None:
    fmt = FORMAT_CASES[case]()
    env = Env()
    pt = env.table(fmt)
    g = fmt.granule
    big = next(s for s in safe_sizes(fmt) if s >= 16 * g)
    va = va_base(fmt) + big
    pt.map_pages(va + 5 * g, 0, g, 3, RW)
    before = (list(pt.iter_leaves()), list(pt.iter_mappings()), pt.table_count, env.alloc.in_use())
    for iova, size, count in [(va + 5 * g, g, 1), (va + 7 * g, g, 4), (va, g, 6), (va, big, 1)]:
        with pytest.raises(IommuError) as e:
            pt.map_pages(iova, 0, size, count, RW)
        assert e.value.errno == errno.EADDRINUSE
    after = (list(pt.iter_leaves()), list(pt.iter_mappings()), pt.table_count, env.alloc.in_use())
    assert after == before
    pt.free()
    assert env.leaked() == 0


@pytest.mark.parametrize(
    "case", ["arm_s1_4k_48", "arm_s2_16k_48_concat", "x86_64_5", "amd_v1_6", "mock_5"]
)
def test_enomem_rolls_back(case: str) -> None:
    """An allocation failure in the middle of a map leaves no partial state."""
    fmt = FORMAT_CASES[case]()
    env = Env()
    pt = env.table(fmt)
    g = fmt.granule
    va = va_base(fmt)
    span = 1 << fmt.level_shift[1]  # one full leaf table: the map crosses into another
    pt.map_pages(va + span - g, 0, g, 1, RW)
    before = (list(pt.iter_leaves()), list(pt.iter_mappings()), env.alloc.in_use())
    for nth in range(1, fmt.levels + 1):
        env.task.fail_nth = nth  # the Nth table allocation of this task fails
        try:
            pt.map_pages(va + span * 7, 0x10 * g, g, 3, RW)
        except IommuError as e:
            assert e.errno == errno.ENOMEM
            assert env.task.fail_nth == 0
            assert (list(pt.iter_leaves()), list(pt.iter_mappings()), env.alloc.in_use()) == before
        else:
            assert env.task.fail_nth  # fewer allocations than the failure point: it mapped
            assert pt.unmap_pages(va + span * 7, g, 3) == 3 * g
        env.task.fail_nth = 0
    pt.free()
    assert env.leaked() == 0


def test_map_convenience_and_errors() -> None:
    env = Env()
    pt = env.table(formats.x86_64(4))
    # 4K ... 2M ... 1G boundaries: picks the largest size each part allows.
    assert pt.map(SZ_1G - SZ_2M - SZ_4K, SZ_1G - SZ_2M - SZ_4K, SZ_2M + SZ_4K + SZ_1G, RW) > 0
    assert leaves_by_size(pt) == Counter({SZ_4K: 1, SZ_2M: 1, SZ_1G: 1})
    with pytest.raises(IommuError) as e:
        pt.map(0x800, 0, SZ_4K, RW)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(IommuError) as e:
        pt.map(1 << 47, 0, SZ_4K, RW)
    assert e.value.errno == errno.ERANGE
    with pytest.raises(IommuError) as e:
        pt.map_pages(0, 1 << 52, SZ_4K, 1, RW)
    assert e.value.errno == errno.ERANGE
    assert pt.unmap(0x800, SZ_4K) == 0  # unaligned: nothing, like iommu_unmap
    # A failing map() undoes the pages it already mapped.
    with pytest.raises(IommuError) as e:
        pt.map(SZ_1G - SZ_2M - 2 * SZ_4K, 0x7000_0000, 2 * SZ_4K, RW)
    assert e.value.errno == errno.EADDRINUSE
    assert pt.iova_to_phys(SZ_1G - SZ_2M - 2 * SZ_4K) == 0
    assert pt.unmap(0, 2 * SZ_1G) == 0  # starts in a hole
    start = SZ_1G - SZ_2M - SZ_4K
    assert pt.unmap(start, 2 * SZ_1G) == SZ_2M + SZ_4K + SZ_1G  # runs to the hole
    pt.free()
    assert env.leaked() == 0


def test_gather_defers_table_freeing() -> None:
    env = Env()
    pt = env.table(formats.arm_lpae_s1())
    pt.map(0x4000_0000, 0x8000_0000, SZ_4K, RW)
    assert pt.table_count == 4
    gather = IotlbGather()
    assert pt.unmap(0x4000_0000, SZ_4K, gather) == SZ_4K
    assert len(gather.freelist) == 3 and pt.table_count == 1
    assert env.leaked() == 4  # the unlinked tables are still allocated until the flush
    pt.release_freelist(gather)
    assert gather.freelist == [] and env.leaked() == 1
    pt.free()
    assert env.leaked() == 0


def test_large_pages_write_one_descriptor() -> None:
    env = Env()
    pt = env.table(formats.x86_64(4))
    writes: list[int] = []
    real_write = pt._write

    def counting(addr: int, value: int) -> None:
        writes.append(addr)
        real_write(addr, value)

    pt._write = counting
    pt.map_pages(SZ_1G, SZ_1G, SZ_1G, 1, IOMMU_READ)
    assert len(writes) == 2  # the PML4E table pointer and ONE 1G PDPTE
    writes.clear()
    pt.map_pages(2 * SZ_1G, 2 * SZ_1G, SZ_1G, 1, IOMMU_READ)
    assert len(writes) == 1
    pt._write = real_write
    pt.free()
    assert env.leaked() == 0


def test_table_sizes_and_orders() -> None:
    """16K and 64K granule tables are order-2 and order-4 allocations; concatenated
    stage-2 roots span their tables."""
    for fmt, root_pages, table_pages in [
        (formats.arm_lpae_s1(16384), 1, 4),
        (formats.arm_lpae_s1(65536), 1, 16),
        (formats.arm_lpae_s2(16384, 48, 48), 8, 4),  # 2 x 16K concatenated
        (formats.arm_lpae_s2(4096, 40, 40), 2, 1),  # 2 x 4K concatenated
    ]:
        env = Env()
        pt = env.table(fmt)
        assert env.leaked() == root_pages
        assert pt.root % (root_pages * 4096) == 0
        pt.map_pages(0, 0, fmt.granule, 1, RW)
        assert env.leaked() == root_pages + (fmt.levels - 1) * table_pages
        pt.free()
        assert env.leaked() == 0
