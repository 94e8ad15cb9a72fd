"""iommu-sim: the Linux IOMMU stack, simulated layer by layer.

The public contract is :class:`Machine` (see DESIGN.md): open, ioctl, read, write and
mmap on simulated device nodes, user memory, and device DMA that goes through the
IOMMU tables the drivers programmed.
"""

from importlib import metadata

from iommu_core.platform.dma import DmaFault
from iommu_sim import render as _render
from iommu_sim.machine import Machine

__all__ = ["KERNEL", "DmaFault", "Machine", "__version__"]

#: The Linux release whose behaviour the simulation follows.
KERNEL = "7.3"

try:
    __version__ = metadata.version("iommu-sim")
except metadata.PackageNotFoundError:  # a source checkout that is not installed
    __version__ = "0+unknown"

_render.install()
