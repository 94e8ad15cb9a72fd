"""Test helpers: guest RAM with a guest-built x86-64 first-stage table in it."""

from __future__ import annotations

from collections.abc import Callable

from iommu_core.pgtable import IoPageTable, formats

PAGE = 4096


class GuestRam:
    """Guest-physical memory seen through accessors (the VMM's view of guest RAM).

    Tables are allocated from the top ``table_pages`` pages with a bump allocator, as a
    guest kernel would hand out page-table pages."""

    def __init__(self, read: Callable[[int, int], bytes], write: Callable[[int, bytes], None],
                 size: int, table_pages: int = 64) -> None:
        self.read = read
        self.write = write
        self.size = size
        self._next = size - table_pages * PAGE
        self.table_base = self._next

    # TableMemory protocol (addresses are GPAs)
    def alloc_table(self, size: int) -> int:
        gpa = self._next
        self._next += PAGE
        if self._next > self.size:
            raise MemoryError("guest table area exhausted")
        self.write(gpa, bytes(PAGE))
        return gpa

    def free_table(self, addr: int, size: int) -> None:
        pass

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write_u64(self, addr: int, value: int) -> None:
        self.write(addr, value.to_bytes(8, "little"))


def guest_fs_table(ram: GuestRam, levels: int = 4) -> IoPageTable:
    """A guest stage-1 (x86-64) page table living in guest RAM."""
    return IoPageTable(formats.x86_64(levels, oas=52), ram)
