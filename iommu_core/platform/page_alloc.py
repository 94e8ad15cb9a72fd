"""The page allocator and the per-page state of ``struct page``: every page handed out
is accounted by owner tag, tracked by runs of frames, never one entry per page.

Kernel allocations (page tables, queues, stream tables) are tagged ``"kernel"``; user
memory (anonymous pages, shmem/memfd pages) is tagged ``"user"``. Tests assert that the
kernel count returns to its baseline after teardown (the leak check).

Pins (``pin_user_pages``, FOLL_PIN) are counted per frame run. A user page whose owner
lets go of it (munmap of private memory, truncation of a file, exit) while it is pinned is
*orphaned*: it stays allocated, holding its data, until the last unpin frees it — as a
pinned page outlives its mapping in Linux.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Callable

from iommu_core.errors import IommuError
from iommu_core.platform.memory import PAGE_SHIFT, PhysicalMemory
from iommu_core.platform.ranges import RangeMap

#: Physical RAM starts here (below it: MMIO and the low hole, as on a PC).
RAM_BASE = 0x1_0000_0000
#: Blocks up to this order are recycled whole (the buddy allocator's MAX_PAGE_ORDER).
MAX_ORDER = 10

#: A run of physically contiguous frames: (first pfn, count).
PfnRun = tuple[int, int]


class PageAllocator:
    """A small allocator over :class:`PhysicalMemory`.

    ``alloc_pages(order)`` returns the physical address of ``2**order`` contiguous,
    naturally aligned frames that read as zero; ``alloc_range(count, align)`` one run of
    any length (a THP-backed population of a large mapping). Freed blocks are recycled;
    a block may be freed back in pieces (as the 4 KiB pages of a THP are).
    """

    __slots__ = ("_free", "_free_runs", "_live", "_next_pfn", "_orphans", "_pins", "allocs",
                 "by_tag", "mem", "should_fail")

    def __init__(self, mem: PhysicalMemory, ram_base: int = RAM_BASE) -> None:
        self.mem = mem
        self._next_pfn = ram_base >> PAGE_SHIFT
        #: order -> recycled naturally aligned blocks of that order.
        self._free: dict[int, list[int]] = {}
        #: Other freed runs (coalesced), carved by later allocations.
        self._free_runs: RangeMap[bool] = RangeMap()
        #: Allocated frames: pfn runs -> owner tag.
        self._live: RangeMap[str] = RangeMap()
        self._pins: RangeMap[int] = RangeMap()
        self._orphans: RangeMap[bool] = RangeMap()
        self.by_tag: Counter[str] = Counter()
        #: Number of successful allocations so far.
        self.allocs = 0
        #: fail_page_alloc: asked with the order before every kernel allocation; True
        #: fails it with ENOMEM. The platform connects it to the tasks' fail-nth
        #: (:meth:`Platform.should_fail`); user pages are never injected.
        self.should_fail: Callable[[int], bool] | None = None

    # -- allocation ---------------------------------------------------------------------
    def _carve(self, count: int, align: int) -> int | None:
        """An aligned piece of a freed run, or None."""
        for s, e, _v in self._free_runs.items():
            start = (s + align - 1) & ~(align - 1)
            if start + count <= e:
                self._free_runs.remove(start, start + count)
                return start
        return None

    def _take(self, count: int, align: int) -> int:
        pfn = self._carve(count, align) if self._free_runs else None
        if pfn is None:
            pfn = (self._next_pfn + align - 1) & ~(align - 1)
            if pfn > self._next_pfn:  # frames skipped for alignment are not lost
                self._free_runs.set(self._next_pfn, pfn, True)
            self._next_pfn = pfn + count
        return pfn

    def alloc_pages(self, order: int = 0, tag: str = "kernel") -> int:
        if tag == "kernel" and self.should_fail is not None and self.should_fail(order):
            raise enomem(f"fail-nth: order-{order} page allocation failed")
        count = 1 << order
        free = self._free.get(order)
        pfn = free.pop() if free else self._take(count, count)
        self._live.set(pfn, pfn + count, tag)
        self.by_tag[tag] += count
        self.allocs += 1
        return pfn << PAGE_SHIFT

    def alloc_page(self, tag: str = "kernel") -> int:
        return self.alloc_pages(0, tag)

    def alloc_range(self, count: int, align: int = 1, tag: str = "user") -> int:
        """One run of ``count`` contiguous frames aligned to ``align`` frames (a power of
        two); its first pfn (user memory: THP-backed populations)."""
        if count <= 0:
            raise IommuError(errno.EINVAL, "empty allocation")
        pfn = self._take(count, align)
        self._live.set(pfn, pfn + count, tag)
        self.by_tag[tag] += count
        self.allocs += 1
        return pfn

    def alloc_scattered(self, count: int, tag: str = "user") -> list[int]:
        """``count`` single frames, no two of them adjacent: what a run of 4 KiB page
        faults gets on a machine whose memory is fragmented. (Were they adjacent, an
        IOMMU could map them with one larger IOPTE, which real 4 KiB user memory rarely
        allows and which would coarsen dirty tracking.)"""
        if count <= 0:
            raise IommuError(errno.EINVAL, "empty allocation")
        base = self._take(2 * count - 1, 1)
        pfns = list(range(base, base + 2 * count, 2))
        for pfn in pfns:
            self._live.set(pfn, pfn + 1, tag)
        # The frames between them go back for kernel allocations.
        self._free.setdefault(0, []).extend(range(base + 2 * count - 3, base, -2))
        self.by_tag[tag] += count
        self.allocs += 1
        return pfns

    # -- freeing ------------------------------------------------------------------------
    def free_range(self, pfn: int, count: int) -> None:
        """Free frames ``[pfn, pfn+count)``; EINVAL (nothing freed) if any is not allocated."""
        if self._live.covered(pfn, pfn + count) != count:
            raise IommuError(errno.EINVAL, f"double free in frames {pfn:#x}+{count}")
        for _s, e, tag in self._live.overlapping(pfn, pfn + count):
            self.by_tag[tag] -= e - _s
        self._live.remove(pfn, pfn + count)
        self.mem.clear_frames(pfn, count)
        order = count.bit_length() - 1
        if count == 1 << order and order <= MAX_ORDER and not pfn & (count - 1):
            self._free.setdefault(order, []).append(pfn)
        else:
            self._free_runs.set(pfn, pfn + count, True)

    def free_pages(self, pa: int, order: int = 0) -> None:
        self.free_range(pa >> PAGE_SHIFT, 1 << order)

    def free_page(self, pa: int) -> None:
        self.free_pages(pa, 0)

    # -- queries ------------------------------------------------------------------------
    def in_use(self, tag: str | None = "kernel") -> int:
        """Frames allocated and not freed, for one tag (``None``: all tags)."""
        if tag is None:
            return sum(self.by_tag.values())
        return self.by_tag[tag]

    def is_allocated(self, pa: int) -> bool:
        return self._live.get(pa >> PAGE_SHIFT) is not None

    def tag_of(self, pa: int) -> str | None:
        """The owner tag of an allocated frame (None if free)."""
        return self._live.get(pa >> PAGE_SHIFT)

    # -- struct page: pins and orphans --------------------------------------------------
    def pin(self, pfn: int, count: int) -> None:
        """``pin_user_pages``: one more pin on each frame of the run."""
        self._pins.add(pfn, pfn + count, 1)

    def unpin(self, pfn: int, count: int) -> None:
        """``unpin_user_pages``: orphaned frames whose last pin goes are freed."""
        for s, e, _z in self._pins.add(pfn, pfn + count, -1):
            for os_, oe, _v in list(self._orphans.overlapping(s, e)):
                self._orphans.remove(os_, oe)
                self.free_range(os_, oe - os_)

    def pin_count(self, pfn: int) -> int:
        return self._pins.get(pfn, 0) or 0

    def pin_spans(self, pfn: int, count: int) -> list[tuple[int, int, int]]:
        """``[pfn, pfn+count)`` cut into (start, end, pins) spans, unpinned ones with 0."""
        out: list[tuple[int, int, int]] = []
        pos = pfn
        for s, e, n in self._pins.overlapping(pfn, pfn + count):
            s, e = max(s, pfn), min(e, pfn + count)
            if s > pos:
                out.append((pos, s, 0))
            out.append((s, e, n))
            pos = e
        if pos < pfn + count:
            out.append((pos, pfn + count, 0))
        return out

    def pin_count_in(self, pfn: int, count: int) -> int:
        """Frames of ``[pfn, pfn+count)`` holding a pin."""
        return self._pins.covered(pfn, pfn + count)

    def pinned_frames(self) -> int:
        """Frames holding at least one pin."""
        return self._pins.total()

    def pin_total(self) -> int:
        """All pins held, summed over frames."""
        return sum((e - s) * n for s, e, n in self._pins.items())

    def put_user_pages(self, pfn: int, count: int) -> None:
        """The owner lets go of user frames: unpinned ones are freed now, pinned ones
        stay allocated (orphaned) until their last unpin."""
        pos = pfn
        for s, e, _n in self._pins.overlapping(pfn, pfn + count):
            if s > pos:
                self.free_range(pos, s - pos)
            self._orphans.set(s, e, True)
            pos = e
        if pos < pfn + count:
            self.free_range(pos, pfn + count - pos)

    def orphaned_frames(self) -> int:
        return self._orphans.total()


def enomem(what: str = "page allocation failed") -> IommuError:
    return IommuError(errno.ENOMEM, what)
