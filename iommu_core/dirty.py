"""``struct iommu_dirty_bitmap`` (include/linux/iommu.h): where a driver's
``read_and_clear_dirty`` records dirty IOVA ranges, and the IOTLB gather to flush after."""

from __future__ import annotations

from typing import Any

from iommu_core.gather import IotlbGather


class IommuDirtyBitmap:
    """``struct iommu_dirty_bitmap``: what a driver's ``read_and_clear_dirty`` records
    into (``dirty.record(iova, length)``), plus the IOTLB gather to flush afterwards.
    Dirty bits are kept as bit ranges (a user bitmap can describe terabytes)."""

    __slots__ = ("base", "gather", "has_bitmap", "nbits", "page_shift", "ranges")

    def __init__(self, base: int = 0, length: int = 0, page_size: int = 0) -> None:
        #: ``dirty->bitmap != NULL``: False for iommufd's clear-before-enable pass, which
        #: only clears dirty state (some drivers refuse a real read while tracking is off).
        self.has_bitmap = page_size != 0
        self.base = base
        # iova_bitmap uses __ffs(page_size) as the shift.
        self.page_shift = (page_size & -page_size).bit_length() - 1 if page_size else 0
        self.nbits = (length >> self.page_shift) if page_size else 0
        #: Inclusive (first bit, last bit) ranges.
        self.ranges: list[tuple[int, int]] = []
        self.gather = IotlbGather()

    def record(self, iova: int, length: int) -> None:
        """``iommu_dirty_bitmap_record``: mark [iova, iova+length) dirty."""
        if self.nbits:
            first = max(iova, self.base)
            last = min(iova + length - 1, self.base + (self.nbits << self.page_shift) - 1)
            if first <= last:
                self.ranges.append(((first - self.base) >> self.page_shift,
                                    (last - self.base) >> self.page_shift))
        self.gather.add_range(iova, length)

    def write_back(self, uaccess: Any, uptr: int) -> None:
        """Set the recorded bits in the user bitmap (bits already set stay set)."""
        for lo, hi in self.ranges:
            b0, b1 = lo >> 3, hi >> 3
            cur = bytearray(uaccess.copy_from_user(uptr + b0, b1 - b0 + 1))
            val = int.from_bytes(cur, "little")
            val |= ((1 << (hi - lo + 1)) - 1) << (lo - (b0 << 3))
            uaccess.copy_to_user(uptr + b0, val.to_bytes(len(cur), "little"))
