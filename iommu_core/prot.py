"""Mapping protection flags (``IOMMU_READ`` ...), as in include/linux/iommu.h."""

from __future__ import annotations

IOMMU_READ = 1 << 0
IOMMU_WRITE = 1 << 1
IOMMU_CACHE = 1 << 2
IOMMU_NOEXEC = 1 << 3
IOMMU_MMIO = 1 << 4
IOMMU_PRIV = 1 << 5

IOMMU_PROT_MASK = IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE | IOMMU_NOEXEC | IOMMU_MMIO | IOMMU_PRIV

#: ``read_and_clear_dirty`` flag: report dirty bits without clearing them.
IOMMU_DIRTY_NO_CLEAR = 1 << 0


def prot_str(prot: int) -> str:
    names = ("R", "W", "C", "NX", "MMIO", "PRIV")
    return "|".join(n for i, n in enumerate(names) if prot & (1 << i)) or "-"
