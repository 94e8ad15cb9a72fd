"""The shared page-table core.

* :class:`IntervalMap` - a domain's mappings as coalesced sorted intervals (O(log n)).
* :mod:`~iommu_core.pgtable.formats` - ARM LPAE S1/S2, x86-64, VT-d SS, AMD v1, mock:
  geometry as data plus descriptor codecs, by name through a registry.
* :class:`IoPageTable` - the interval map materialised as real radix tables in memory
  (:class:`TableMemory`, :class:`PhysTableMemory`), with Linux map/unmap/dirty semantics.
* :func:`walk` - the one walker hardware models use; :func:`iter_leaves` for dumps.
* :func:`describe` - descriptors decoded for people.
"""

from iommu_core.pgtable import formats
from iommu_core.pgtable.describe import Description, describe
from iommu_core.pgtable.formats import DescField, PtFormat, TableHwInfo
from iommu_core.pgtable.intervals import IntervalMap, Mapping
from iommu_core.pgtable.memory import PhysTableMemory, TableMemory
from iommu_core.pgtable.pgsize import iommu_pgsize
from iommu_core.pgtable.table import IoPageTable
from iommu_core.pgtable.walk import Access, Leaf, WalkFault, WalkResult, iter_leaves, walk

__all__ = [
    "Access",
    "DescField",
    "Description",
    "IntervalMap",
    "IoPageTable",
    "Leaf",
    "Mapping",
    "PhysTableMemory",
    "PtFormat",
    "TableHwInfo",
    "TableMemory",
    "WalkFault",
    "WalkResult",
    "describe",
    "formats",
    "iommu_pgsize",
    "iter_leaves",
    "walk",
]
