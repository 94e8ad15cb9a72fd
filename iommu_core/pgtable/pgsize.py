"""Page-size selection, as the IOMMU core does it (``iommu_pgsize()``)."""

from __future__ import annotations


def iommu_pgsize(pgsize_bitmap: int, iova: int, paddr: int, size: int) -> tuple[int, int]:
    """(pgsize, count): the largest supported page size that fits the alignment of
    ``iova`` and ``paddr`` and the remaining ``size``, and how many such pages to map
    before a larger size becomes possible (drivers/iommu/iommu.c ``iommu_pgsize``)."""
    addr_merge = paddr | iova
    # Page sizes no bigger than size, then no bigger than the common alignment.
    pgsizes = pgsize_bitmap & ((1 << size.bit_length()) - 1)
    if addr_merge:
        pgsizes &= (addr_merge & -addr_merge) * 2 - 1
    if not pgsizes:
        raise ValueError(f"no page size fits iova {iova:#x} paddr {paddr:#x} size {size:#x}")
    pgsize_idx = pgsizes.bit_length() - 1
    pgsize = 1 << pgsize_idx
    # The next bigger supported size, if the addresses are equally offset within it.
    bigger = pgsize_bitmap & ~((pgsize << 1) - 1)
    if bigger:
        pgsize_next = bigger & -bigger
        if not (iova ^ paddr) & (pgsize_next - 1):
            offset = pgsize_next - (addr_merge & (pgsize_next - 1))
            if offset + pgsize_next <= size:
                size = offset
    return pgsize, size >> pgsize_idx
