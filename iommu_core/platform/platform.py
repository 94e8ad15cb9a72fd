"""The platform: memory, the page allocator, IOMMU hardware units and the devices wired
behind them (what ACPI/DT firmware would describe)."""

from __future__ import annotations

import errno
import functools
from typing import Any

import attrs

from iommu_core.errors import IommuError
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import IommuHardware, IrqLine, Mmio
from iommu_core.platform.files import Opener
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.platform.page_alloc import PageAllocator
from iommu_core.platform.task import TaskTable
from iommu_core.trace import Tracer


@attrs.frozen
class IommuResources:
    """What a driver's platform probe receives: the unit's name, its register windows,
    its interrupt lines, and firmware facts. Never the hardware model itself."""

    name: str
    mmio: dict[str, Mmio]
    irqs: dict[str, IrqLine]
    firmware: dict[str, Any] = attrs.field(factory=dict)


class Platform:
    """The simulated machine's hardware and memory."""

    def __init__(self, phys_bits: int = 48) -> None:
        self.mem = PhysicalMemory(phys_bits)
        self.alloc = PageAllocator(self.mem)
        self.tracer = Tracer()
        self.iommus: dict[str, IommuHardware] = {}
        self.devices: dict[str, Device] = {}
        #: Device name -> (the device, the unit it sits behind): a DMA's one lookup.
        self.dma_targets: dict[str, tuple[Device, IommuHardware]] = {}
        #: The processes, and ``current``.
        self.tasks = TaskTable()
        #: Device nodes: path -> opener (registered by the subsystems that own them).
        self.chrdevs: dict[str, Opener] = {}

    def should_fail(self, what: str) -> bool:
        """``should_fail``: fault injection at one point (an allocation, a pin). The
        current task's ``fail_nth`` counts points down; the one that reaches zero fails."""
        task = self.tasks.current
        if task is None or not task.fail_nth:
            return False
        task.fail_nth -= 1
        return task.fail_nth == 0

    def add_iommu(self, hw: IommuHardware) -> IommuResources:
        if hw.name in self.iommus:
            raise IommuError(errno.EEXIST, f"IOMMU {hw.name!r} already exists")
        self.iommus[hw.name] = hw
        return IommuResources(name=hw.name, mmio=dict(hw.mmio), irqs=dict(hw.irqs),
                              firmware=dict(hw.firmware))

    def add_device(self, dev: Device) -> None:
        if dev.name in self.devices:
            raise IommuError(errno.EEXIST, f"device {dev.name!r} already exists")
        hw = self.iommus.get(dev.iommu_name)
        if hw is None:
            raise IommuError(errno.ENODEV, f"device {dev.name!r}: no IOMMU named "
                             f"{dev.iommu_name!r}")
        self.devices[dev.name] = dev
        self.dma_targets[dev.name] = (dev, hw)
        hw.attach_device(dev)
        dev.props.on_change = functools.partial(hw.device_changed, dev)

    def remove_device(self, dev: Device) -> None:
        if self.devices.get(dev.name) is dev:
            del self.devices[dev.name]
            del self.dma_targets[dev.name]
        dev.props.on_change = None
        hw = self.iommus.get(dev.iommu_name)
        if hw is not None:
            hw.detach_device(dev)

    def device(self, name: str) -> Device:
        try:
            return self.devices[name]
        except KeyError:
            raise IommuError(errno.ENODEV, f"no device named {name!r}") from None

    def iommu_of(self, dev: Device) -> IommuHardware:
        return self.iommus[dev.iommu_name]
