"""The simulated Linux IOMMU core: hook specs, plugin host, devices, groups, domains.

Also holds the simulated platform (:mod:`iommu_core.platform`) and the shared
page-table core (:mod:`iommu_core.pgtable`).
"""

from iommu_core.errors import IommuError, fail

__all__ = ["IommuError", "fail"]
