"""A guest's view of its RAM, for VMM flows on the Machine.

A VMM maps guest RAM (a user mmap) into an IOAS at IOVA = GPA. The guest then builds its
own structures in that RAM: stage-1 page tables with the shared page-table core (the same
code the host drivers use), and the entries its IOMMU driver writes (an SMMUv3 CD, an
AMD-Vi GCR3 table...), which the vendor's driver builds (its ``describe_guest_builders``
hook). :class:`GuestRam` is the four-call ``TableMemory`` over the VMM's mapping, with a
bump allocator handing out table pages from the top of guest RAM, as a guest kernel
would.
"""

from __future__ import annotations

from iommu_core.pgtable import IoPageTable, formats
from iommu_sim.machine import Machine

PAGE = 4096


class GuestRam:
    """Guest-physical memory [0, size) seen through the VMM's mapping at ``va``."""

    def __init__(self, machine: Machine, va: int, size: int, table_pages: int | None = None
                 ) -> None:
        self.machine = machine
        self.va = va
        self.size = size
        pages = table_pages if table_pages is not None else max(1, size // PAGE // 4)
        self.table_base = size - pages * PAGE
        self._next = self.table_base

    def read(self, gpa: int, n: int) -> bytes:
        return self.machine.mem_read(self.va + gpa, n)

    def write(self, gpa: int, data: bytes) -> None:
        self.machine.mem_write(self.va + gpa, data)

    # -- TableMemory -----------------------------------------------------------------------
    def alloc_table(self, size: int) -> int:
        size = max(PAGE, size)
        gpa = (self._next + size - 1) & -size  # tables are naturally aligned
        if gpa + size > self.size:
            raise MemoryError("guest table area exhausted")
        self._next = gpa + size
        self.write(gpa, bytes(size))
        return gpa

    def free_table(self, addr: int, size: int) -> None:
        pass  # a bump allocator: the guest never gives pages back in a short flow

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write_u64(self, addr: int, value: int) -> None:
        self.write(addr, value.to_bytes(8, "little"))


def guest_table(ram: GuestRam, fmt_name: str, **params: int) -> IoPageTable:
    """A stage-1 table of format ``fmt_name`` (``arm_lpae_s1``, ``x86_64``...) living in
    guest RAM; its ``root`` is a GPA."""
    return IoPageTable(formats.get(fmt_name, **params), ram)
