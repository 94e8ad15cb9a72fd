"""iommu-sim: the Linux IOMMU stack, simulated layer by layer.

The public contract is :class:`Machine` (see DESIGN.md): open, ioctl, read, write and
mmap on simulated device nodes, user memory, and device DMA that goes through the
IOMMU tables the drivers programmed.
"""

from iommu_core.platform.dma import DmaFault
from iommu_sim.machine import Machine

__all__ = ["DmaFault", "Machine"]
