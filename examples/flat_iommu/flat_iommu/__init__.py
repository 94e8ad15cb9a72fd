"""FlatIOMMU: an out-of-tree example IOMMU driver and hardware model for iommu-sim.

* :mod:`flat_iommu.spec` - the architecture: registers, device-table entries, commands,
  fault records (shared knowledge, as a hardware manual is).
* :mod:`flat_iommu.hw` - the hardware model.
* :mod:`flat_iommu.iommu` - the driver.
* :mod:`flat_iommu.plugin` - the pluggy plugin iommu-sim loads (entry point
  ``iommu_sim.drivers`` -> ``flat_iommu``).
"""

from __future__ import annotations

__version__ = "0.1.0"
