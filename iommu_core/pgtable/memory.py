"""Where page tables live: the small interface the table manager needs.

The kernel's tables come from the page allocator (:class:`PhysTableMemory`); a VMM that
builds guest stage-1 tables in guest RAM plugs in its own allocator and accessors (for
instance guest-physical addresses translated through its memory map).
"""

from __future__ import annotations

from typing import Protocol

from iommu_core.platform.memory import PAGE_SHIFT, PhysicalMemory
from iommu_core.platform.page_alloc import PageAllocator


class TableMemory(Protocol):
    """Table pages: allocation and 64-bit little-endian access at table addresses."""

    def alloc_table(self, size: int) -> int:
        """A zeroed table of ``size`` bytes aligned to its size; its address."""
        ...

    def free_table(self, addr: int, size: int) -> None: ...

    def read_u64(self, addr: int) -> int: ...

    def write_u64(self, addr: int, value: int) -> None: ...


def table_order(size: int) -> int:
    """Page order of a table allocation (tables below a page still take one page)."""
    return max(0, (size - 1).bit_length() - PAGE_SHIFT)


class PhysTableMemory:
    """Tables in simulated physical memory, from the page allocator (tag ``"kernel"``,
    so the allocator's leak check covers them); 16K and 64K tables are order-2 and
    order-4 allocations, naturally aligned."""

    __slots__ = ("alloc", "mem", "read_u64", "tag", "write_u64")

    def __init__(self, mem: PhysicalMemory, alloc: PageAllocator, tag: str = "kernel") -> None:
        self.mem = mem
        self.alloc = alloc
        self.tag = tag
        # Bound once: the table manager calls these on every level of every operation.
        self.read_u64 = mem.read_u64
        self.write_u64 = mem.write_u64

    def alloc_table(self, size: int) -> int:
        return self.alloc.alloc_pages(table_order(size), self.tag)

    def free_table(self, addr: int, size: int) -> None:
        self.alloc.free_pages(addr, table_order(size))
