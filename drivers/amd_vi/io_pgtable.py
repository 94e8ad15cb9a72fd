"""v1 (host) and v2 (guest, x86-64) page tables through the shared page-table core
(Linux HEAD: generic_pt ``pt_iommu_amdv1`` / ``pt_iommu_x86_64``; v6.17 io_pgtable.c and
io_pgtable_v2.c).

Linux grows a v1 table on demand (``increase_address_space``, up to ``hpt_level``); the
shared core builds tables of a fixed depth, so v1 domains get ``V1_LEVELS`` levels from the
start (a 48-bit aperture), which is what HEAD reaches for any IOVA below 2^48.
"""

from __future__ import annotations

from iommu_core.pgtable import IoPageTable, PhysTableMemory, formats
from iommu_core.platform.platform import Platform

#: Depth of v1 domain tables (DTE Mode); see the module comment.
V1_LEVELS = 4

#: ``AMD_IOMMU_PGSIZES_V2``: 4K, 2M, 1G.
AMD_IOMMU_PGSIZES_V2 = (1 << 12) | (1 << 21) | (1 << 30)


def alloc_v1_pgtable(platform: Platform, hpt_level: int) -> IoPageTable:
    """An AMD v1 table (``AMD_IOMMU_V1``): every power-of-two page size but 512G."""
    levels = min(V1_LEVELS, hpt_level)
    return IoPageTable(formats.amd_v1(levels), PhysTableMemory(platform.mem, platform.alloc))


def alloc_v2_pgtable(platform: Platform, gpt_level: int) -> IoPageTable:
    """An x86-64 table (``AMD_IOMMU_V2``) without sign extension, so one table serves
    PASID 0 and other PASIDs (HEAD, vtd_amd.md B7)."""
    fmt = formats.x86_64(gpt_level, sign_extend=False)
    return IoPageTable(fmt, PhysTableMemory(platform.mem, platform.alloc))
