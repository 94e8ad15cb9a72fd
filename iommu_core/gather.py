"""``struct iommu_iotlb_gather``: the range an unmap must invalidate, and tables to free."""

from __future__ import annotations

from collections.abc import Callable

ULONG_MAX = 2**64 - 1


class IotlbGather:
    """Accumulates the IOVA range (inclusive ``end``) freed by ``unmap_pages``.

    ``freelist`` holds physical addresses (with their order) of page-table pages that may
    only be freed after the IOTLB flush: a walker could still be using them.
    """

    __slots__ = ("end", "freelist", "pgsize", "queued", "start")

    def __init__(self) -> None:
        self.start = ULONG_MAX
        self.end = 0
        self.pgsize = 0
        self.freelist: list[tuple[int, int]] = []
        self.queued = False

    def reset(self) -> None:
        self.start = ULONG_MAX
        self.end = 0
        self.pgsize = 0
        self.freelist = []

    @property
    def empty(self) -> bool:
        return self.start >= self.end and not self.freelist

    def is_disjoint(self, iova: int, size: int) -> bool:
        """``iommu_iotlb_gather_is_disjoint``: neither adjacent to nor overlapping the range."""
        start, end = iova, iova + size - 1
        return self.end != 0 and (end + 1 < self.start or start > self.end + 1)

    def add_range(self, iova: int, size: int) -> None:
        """``iommu_iotlb_gather_add_range``: grow [start, end] to cover the range."""
        end = iova + size - 1
        self.start = min(self.start, iova)
        self.end = max(self.end, end)

    def add_page(
        self, iova: int, size: int, sync: Callable[[IotlbGather], None] | None = None
    ) -> None:
        """``iommu_iotlb_gather_add_page``: sync first if the page size changes or the
        range is disjoint (for page/level-hinted invalidation), then record."""
        if sync is not None and (
            (self.pgsize and self.pgsize != size) or self.is_disjoint(iova, size)
        ):
            sync(self)
            self.reset()
        self.pgsize = size
        self.add_range(iova, size)

    def add_freed_table(self, pa: int, order: int = 0) -> None:
        self.freelist.append((pa, order))
