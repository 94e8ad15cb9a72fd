"""The page allocator: every page handed out is accounted, by owner tag.

Kernel allocations (page tables, queues, stream tables) are tagged ``"kernel"``; the
process address space takes its frames with tag ``"user"``. Tests assert that the kernel
count returns to its baseline after teardown (the leak check).
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Callable

from iommu_core.errors import IommuError
from iommu_core.platform.memory import PAGE_SHIFT, PhysicalMemory

#: Physical RAM starts here (below it: MMIO and the low hole, as on a PC).
RAM_BASE = 0x1_0000_0000


class PageAllocator:
    """A small buddy-less allocator over :class:`PhysicalMemory`.

    ``alloc_pages(order)`` returns the physical address of ``2**order`` contiguous,
    naturally aligned, zeroed frames. Free frames are recycled per order; a higher-order
    block may be freed back one frame at a time (as user pages of a THP are).
    """

    __slots__ = ("_free", "_live", "_next_pfn", "allocs", "by_tag", "fault_injector", "mem")

    def __init__(self, mem: PhysicalMemory, ram_base: int = RAM_BASE) -> None:
        self.mem = mem
        self._next_pfn = ram_base >> PAGE_SHIFT
        self._free: dict[int, list[int]] = {}
        self._live: dict[int, str] = {}  # pfn -> tag, per frame
        self.by_tag: Counter[str] = Counter()
        #: Number of successful allocations so far (fail-nth counts these calls).
        self.allocs = 0
        #: Called before every allocation with (order, tag); may raise ENOMEM (fail-nth).
        self.fault_injector: Callable[[int, str], None] | None = None

    def alloc_pages(self, order: int = 0, tag: str = "kernel") -> int:
        if self.fault_injector is not None:
            self.fault_injector(order, tag)
        count = 1 << order
        free = self._free.get(order)
        if free:
            pfn = free.pop()
        else:
            pfn = (self._next_pfn + count - 1) & ~(count - 1)
            # Frames skipped for alignment are not lost: give them to order 0.
            self._free.setdefault(0, []).extend(range(self._next_pfn, pfn))
            self._next_pfn = pfn + count
        for p in range(pfn, pfn + count):
            self._live[p] = tag
        self.mem.clear_frames(pfn, count)
        self.by_tag[tag] += count
        self.allocs += 1
        return pfn << PAGE_SHIFT

    def alloc_page(self, tag: str = "kernel") -> int:
        return self.alloc_pages(0, tag)

    def free_pages(self, pa: int, order: int = 0) -> None:
        pfn = pa >> PAGE_SHIFT
        count = 1 << order
        for p in range(pfn, pfn + count):
            tag = self._live.pop(p, None)
            if tag is None:
                raise IommuError(errno.EINVAL, f"double free of frame {p:#x}")
            self.by_tag[tag] -= 1
        self.mem.clear_frames(pfn, count)
        self._free.setdefault(order, []).append(pfn)

    def free_page(self, pa: int) -> None:
        self.free_pages(pa, 0)

    def in_use(self, tag: str | None = "kernel") -> int:
        """Frames allocated and not freed, for one tag (``None``: all tags)."""
        if tag is None:
            return sum(self.by_tag.values())
        return self.by_tag[tag]

    def is_allocated(self, pa: int) -> bool:
        return (pa >> PAGE_SHIFT) in self._live


def enomem(what: str = "page allocation failed") -> IommuError:
    return IommuError(errno.ENOMEM, what)
