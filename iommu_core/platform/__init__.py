"""The simulated platform: physical memory, the page allocator, the process address
space, buses and DMA-capable devices. The layers above never reach around it."""

from iommu_core.platform.memory import PAGE_SHIFT, PAGE_SIZE, PhysicalMemory
from iommu_core.platform.page_alloc import PageAllocator

__all__ = ["PAGE_SHIFT", "PAGE_SIZE", "PageAllocator", "PhysicalMemory"]
