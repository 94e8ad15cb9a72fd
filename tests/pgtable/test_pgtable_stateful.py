"""Random map/unmap sequences against a naive per-page oracle, for every format.

After every step the interval map (iova_to_phys, iteration), the tables in memory
(iter_leaves) and the hardware walker must all agree with the oracle; after teardown the
page allocator is back at its baseline.
"""

from __future__ import annotations

import errno
import os

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule
from pgtable_cases import FORMAT_CASES, RW, Env, expected_perms, pa_base, va_base

from iommu_core.errors import IommuError
from iommu_core.gather import IotlbGather
from iommu_core.pgtable import Access, PtFormat, WalkResult
from iommu_core.prot import IOMMU_CACHE, IOMMU_NOEXEC, IOMMU_READ, IOMMU_WRITE

PROTS = [RW, IOMMU_READ, IOMMU_WRITE, RW | IOMMU_CACHE, IOMMU_READ | IOMMU_NOEXEC]
#: Raise for a longer soak: PGTABLE_FUZZ_EXAMPLES=200 pytest tests/pgtable -k stateful
EXAMPLES = int(os.environ.get("PGTABLE_FUZZ_EXAMPLES", "25"))


def fuzz_sizes(fmt: PtFormat) -> list[int]:
    """A few page sizes per format: the two smallest and the first one or two of the next
    level (AMD/mock non-default ones included), small enough for a per-page oracle."""
    all_sizes = [1 << b for b in range(64) if fmt.pgsize_bitmap >> b & 1]
    level1 = 1 << fmt.level_shift[1]
    want = {*all_sizes[:2], level1, 2 * level1}
    return sorted(s for s in want if s in all_sizes and s <= 8192 * fmt.granule)


class PgtableMachine(RuleBasedStateMachine):
    fmt: PtFormat
    mapped = Bundle("mapped")  # iovas that began a map: unmaps aim at them too

    def __init__(self) -> None:
        super().__init__()
        self.env = Env()
        self.pt = self.env.table(self.fmt)
        self.g = self.fmt.granule
        self.sizes = fuzz_sizes(self.fmt)
        self.window = 8 * self.sizes[-1]
        self.base = va_base(self.fmt) + self.window  # not at 0
        self.pa0 = pa_base(self.fmt, self.window)
        # Oracle: granule page -> (leaf iova, leaf size, page output address, prot).
        self.pages: dict[int, tuple[int, int, int, int]] = {}

    @rule(
        target=mapped,
        slot=st.integers(0, 1 << 16),
        size_pick=st.integers(0, 3),
        count=st.integers(1, 3),
        prot=st.sampled_from(PROTS),
        pa_slot=st.integers(0, 7),
    )
    def map(self, slot: int, size_pick: int, count: int, prot: int, pa_slot: int) -> object:
        size = self.sizes[size_pick % len(self.sizes)]
        nslots = self.window // size
        count = min(count, nslots)
        iova = self.base + (slot % (nslots - count + 1)) * size
        paddr = self.pa0 + (pa_slot % nslots) * size
        overlap = any(p in self.pages for p in range(iova, iova + size * count, self.g))
        try:
            done = self.pt.map_pages(iova, paddr, size, count, prot)
        except IommuError as e:
            assert overlap and e.errno == errno.EADDRINUSE, e
            event("map: EADDRINUSE")
            return multiple()
        event("map: ok")
        assert not overlap and done == size * count
        for k in range(count):
            leaf = iova + k * size
            for off in range(0, size, self.g):
                self.pages[leaf + off] = (leaf, size, paddr + k * size + off, prot)
        return multiple(iova, iova + size * (count - 1))

    @rule(
        slot=st.integers(0, 1 << 16),
        size_pick=st.integers(0, 3),
        count=st.integers(1, 4),
        gather=st.booleans(),
    )
    def unmap(self, slot: int, size_pick: int, count: int, gather: bool) -> None:
        self._unmap(self.base + (slot % (self.window // self.g)) * self.g, size_pick, count, gather)

    @rule(iova=mapped, size_pick=st.integers(0, 3), count=st.integers(1, 4), gather=st.booleans())
    def unmap_mapped(self, iova: int, size_pick: int, count: int, gather: bool) -> None:
        self._unmap(iova, size_pick, count, gather)

    def _unmap(self, iova: int, size_pick: int, count: int, gather: bool) -> None:
        size = self.sizes[size_pick % len(self.sizes)]
        # Linux semantics on the oracle: whole leaves from iova until the length is
        # covered or a hole; nothing if iova is unmapped or inside a leaf.
        expect = 0
        first = self.pages.get(iova)
        if first is not None and first[0] == iova:
            cur, end = iova, iova + size * count
            while cur < end and (p := self.pages.get(cur)) is not None:
                for off in range(0, p[1], self.g):
                    del self.pages[cur + off]
                cur += p[1]
            expect = cur - iova
        g = IotlbGather() if gather else None
        assert self.pt.unmap_pages(iova, size, count, g) == expect
        event("unmap: removed" if expect else "unmap: nothing")
        if g is not None:
            if expect:
                assert (g.start, g.end) == (iova, iova + expect - 1)
            self.pt.release_freelist(g)

    def _leaves(self) -> set[tuple[int, int, int, int]]:
        return {(p[0], p[1], p[2] - (i - p[0]), p[3]) for i, p in self.pages.items()}

    @invariant()
    def tables_walker_and_map_agree(self) -> None:
        fmt, pt = self.fmt, self.pt
        leaves = self._leaves()
        last = self.base + self.window - 1
        in_memory = {(x.iova, x.size, x.oa) for x in pt.iter_leaves(self.base, last)}
        assert in_memory == {(i, s, pa) for i, s, pa, _ in leaves}
        assert pt.intervals.mapped_bytes == len(self.pages) * self.g
        for iova, size, pa, prot in leaves:
            readable, writable, executable = expected_perms(fmt, prot)
            for off in (0, size - 1):
                assert pt.iova_to_phys(iova + off) == pa + off
                r = pt.walk(iova + off, Access.READ if readable else Access.WRITE, privileged=True)
                assert isinstance(r, WalkResult), r
                assert (r.oa, r.page_size) == (pa + off, size)
                assert (r.readable, r.writable, r.executable) == (readable, writable, executable)
        for probe in range(self.base, last, self.window // 16):
            if probe not in self.pages:
                assert pt.iova_to_phys(probe) == 0
                r = pt.walk(probe, privileged=True)
                assert not r.ok and r.reason == "translation"  # type: ignore[union-attr]
        # No empty table stays linked (the root aside).
        assert all(n > 0 for t, n in pt._used.items() if t != pt.root)

    def teardown(self) -> None:
        self.pt.free()
        assert self.env.leaked() == 0


def _machine(case: str) -> type[PgtableMachine]:
    fmt = FORMAT_CASES[case]()
    return type(f"Pgtable_{case}", (PgtableMachine,), {"fmt": fmt})


_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

for _case in sorted(FORMAT_CASES):
    _test = _machine(_case).TestCase
    _test.settings = _SETTINGS
    globals()[f"TestStateful_{_case}"] = _test
del _case, _test
