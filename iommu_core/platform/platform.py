"""The platform: memory, the page allocator, IOMMU hardware units and the devices wired
behind them (what ACPI/DT firmware would describe)."""

from __future__ import annotations

import errno
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from iommu_core.errors import IommuError
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import DmaPort, IommuHardware, IrqLine, Mmio
from iommu_core.platform.fault_inject import PAGE, SLAB, FaultAttrs
from iommu_core.platform.files import File, Opener
from iommu_core.platform.memory import PhysicalMemory
from iommu_core.platform.page_alloc import PageAllocator
from iommu_core.platform.task import Task, TaskTable
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
        #: The fault-injection knobs; the count itself is each task's ``fail_nth``.
        self.fault_attrs = FaultAttrs()
        self._nofail = 0
        self.alloc.should_fail = self._should_fail_page
        self.iommus: dict[str, IommuHardware] = {}
        self.devices: dict[str, Device] = {}
        #: Device name -> (the device, the unit it sits behind): a DMA's one lookup.
        self.dma_targets: dict[str, tuple[Device, IommuHardware]] = {}
        #: The processes, and ``current``.
        self.tasks = TaskTable()
        #: Device nodes: path -> opener (registered by the subsystems that own them).
        self.chrdevs: dict[str, Opener] = {}

    def should_fail(self, what: str, site: str = "") -> bool:
        """``should_fail``: one fault-injection point of kind ``what`` (``slab``,
        ``page``, ``iommufd``: :mod:`iommu_core.platform.fault_inject`) at ``site``. The
        current task's ``fail_nth`` counts points down; the one that reaches zero fails."""
        task = self.tasks.current
        if task is None or not task.fail_nth or self._nofail:
            return False
        task.fail_nth -= 1
        if task.fail_nth:
            return False
        if self.tracer.enabled:
            self.tracer.event("fault", f"fail-nth {what}", site)
        return True

    @contextmanager
    def nofail(self) -> Iterator[None]:
        """A path the kernel requires to succeed (``__iommu_group_set_domain_nofail``,
        detaches): what it allocates reaches no fault-injection point."""
        self._nofail += 1
        try:
            yield
        finally:
            self._nofail -= 1

    def kzalloc(self, site: str) -> None:
        """A slab allocation the kernel makes here (the Python object stands for the
        memory): a failslab point, ENOMEM when it fires."""
        task = self.tasks.current
        if task is not None and task.fail_nth and self.should_fail(SLAB, site):
            raise IommuError(errno.ENOMEM, f"fail-nth: kzalloc of {site} failed")

    def _should_fail_page(self, order: int) -> bool:
        """fail_page_alloc: kernel pages of at least ``page_min_order``."""
        task = self.tasks.current
        if task is None or not task.fail_nth or order < self.fault_attrs.page_min_order:
            return False
        return self.should_fail(PAGE, f"order-{order} page")

    def open_chrdev(self, path: str, task: Task) -> File | None:
        """``open(2)`` of one of the machine's device nodes (None if ``path`` is not
        one): ``getname`` and the ``struct file`` are allocated (ENOMEM), then the
        driver's open runs."""
        opener = self.chrdevs.get(path)
        if opener is None:
            return None
        self.kzalloc("getname")
        self.kzalloc("struct file")
        return opener(task)

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
        dev.dma_port = DmaPort(hw, self.mem, self.tracer)
        hw.attach_device(dev)
        dev.props.on_change = functools.partial(hw.device_changed, dev)

    def remove_device(self, dev: Device) -> None:
        if self.devices.get(dev.name) is dev:
            del self.devices[dev.name]
            del self.dma_targets[dev.name]
        dev.props.on_change = None
        dev.dma_port = None
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
