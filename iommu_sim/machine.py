"""The Machine: a simulated computer with IOMMUs, devices, a process and its kernel.

This is the stable contract user code and tests rely on (see DESIGN.md). Everything
below it is the simulated kernel and hardware; at this boundary every kernel error
becomes ``OSError(errno, message)`` and every device DMA failure a :class:`DmaFault`.
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from iommu_core.errors import IommuError
from iommu_core.iommu import IommuCore
from iommu_core.platform.bus import Device, make_pci_device
from iommu_core.platform.dma import DmaFault, device_dma_read, device_dma_write
from iommu_core.platform.mm import MmStruct
from iommu_core.platform.platform import Platform
from iommu_core.platform.task import Task
from iommu_core.platform.uaccess import UserArg
from iommu_core.plugin import PluginHost
from iommu_core.trace import Tracer, hook_tracing_monitor
from iommu_sim.builtin import builtin_drivers
from iommufd.main import iommufd_init
from iommufd.vfio_device import vfio_register_device

__all__ = ["DEFAULT_CONFIG", "DmaFault", "Machine"]

#: The default Machine: every vendor driver with a few devices each, plus the mock.
DEFAULT_CONFIG: dict[str, Any] = {
    "iommus": [
        {"name": "smmu0", "driver": "arm_smmu_v3"},
        {"name": "dmar0", "driver": "intel_vtd"},
        {"name": "amdvi0", "driver": "amd_vi"},
    ],
    "devices": [
        {"name": "0000:00:01.0", "iommu": "smmu0"},
        {"name": "0000:00:02.0", "iommu": "smmu0"},
        {"name": "0000:10:00.0", "iommu": "dmar0"},
        {"name": "0000:10:01.0", "iommu": "dmar0"},
        {"name": "0000:20:00.0", "iommu": "amdvi0"},
        {"name": "0000:20:01.0", "iommu": "amdvi0"},
    ],
}

MOCK_IOMMU = "mock"


def _oserror(e: IommuError) -> OSError:
    return OSError(e.errno, e.msg)


class Machine:
    """One simulated machine running one user process (a VMM, a test)."""

    def __init__(self, config: Mapping[str, Any], plugins: PluginHost | None = None) -> None:
        try:
            self._build(config, plugins)
        except IommuError as e:
            raise _oserror(e) from None

    # -- construction --------------------------------------------------------------------
    @classmethod
    def default(cls, **kwargs: Any) -> Machine:
        """Every driver, a few devices each (and the selftest mock)."""
        return cls(copy.deepcopy(DEFAULT_CONFIG), **kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **kwargs: Any) -> Machine:
        return cls(config, **kwargs)

    def _build(self, config: Mapping[str, Any], plugins: PluginHost | None) -> None:
        if not isinstance(config, Mapping):
            raise IommuError(errno.EINVAL, "config must be a mapping")
        unknown = set(config) - {"iommus", "devices", "passthrough"}
        if unknown:
            raise IommuError(errno.EINVAL, f"unknown config keys {sorted(unknown)}")
        self.platform = Platform()
        self.plugins = plugins or PluginHost()
        for name, plugin in builtin_drivers().items():
            if name not in self.plugins.drivers:
                self.plugins.register_driver(name, plugin)
        self.core = IommuCore(self.platform, self.plugins)
        self.core.default_passthrough = bool(config.get("passthrough", False))
        self.mm = MmStruct(self.platform.mem, self.platform.alloc)
        self.task = Task(self.mm)
        self.kernel_pages_baseline = 0

        iommus = [dict(i) for i in config.get("iommus", [])]
        if not any(i.get("driver") == "mock" for i in iommus):
            iommus.append({"name": MOCK_IOMMU, "driver": "mock"})
        self._vfio_paths: dict[str, str] = {}
        for spec in iommus:
            name, driver = spec.pop("name", None), spec.pop("driver", None)
            if not isinstance(name, str) or not isinstance(driver, str):
                raise IommuError(errno.EINVAL, f"iommu entry needs 'name' and 'driver': {spec}")
            ops = self.plugins.load_driver(driver)  # third-party: by entry point
            hw = ops.iommu_hw_create(name, spec, self.platform)
            res = self.platform.add_iommu(hw)
            ops.iommu_driver_probe(self.core, res)
        self.plugins.check_pending()
        iommufd_init(self.core, self.task)
        for dspec in config.get("devices", []):
            d = dict(dspec)
            name, iommu = d.pop("name", None), d.pop("iommu", None)
            if not isinstance(name, str) or not isinstance(iommu, str):
                raise IommuError(errno.EINVAL, f"device entry needs 'name' and 'iommu': {dspec}")
            if iommu not in self.platform.iommus:
                raise IommuError(errno.EINVAL, f"device {name}: no IOMMU named {iommu!r}")
            group = d.pop("group", None)
            dev = make_pci_device(name, iommu, **d)
            if group is not None:
                dev.props["iommu_group"] = group
            self.core.add_device(dev)
            self._vfio_paths[name] = vfio_register_device(self.core, self.task, dev)
        self.kernel_pages_baseline = self.kernel_pages_in_use

    # -- introspection -------------------------------------------------------------------
    @property
    def devices(self) -> dict[str, str]:
        """{device name: IOMMU instance name} for the configured devices."""
        return {n: d.iommu_name for n, d in self.platform.devices.items()
                if d.bus == "pci"}

    @property
    def iommus(self) -> dict[str, str]:
        """{IOMMU instance name: driver name}."""
        return {n: i.ops.name for n, i in self.core.iommus.items()}

    @property
    def tracer(self) -> Tracer:
        return self.platform.tracer

    @contextmanager
    def trace(self) -> Iterator[Tracer]:
        """Record the layered call tree of everything done inside the ``with`` block:
        ioctls, iommufd handlers, core calls, driver ops and hardware events."""
        tracer = self.platform.tracer
        tracer.clear()
        before, after = hook_tracing_monitor(tracer)
        self.plugins.add_monitor(before, after)
        tracer.start()
        try:
            yield tracer
        finally:
            tracer.stop()
            self.plugins.clear_monitors()

    @property
    def kernel_pages_in_use(self) -> int:
        """Kernel pages allocated (page tables, queues, tables): the leak check."""
        return self.platform.alloc.in_use("kernel")

    def vfio_cdev(self, device: str) -> str:
        try:
            return self._vfio_paths[device]
        except KeyError:
            raise OSError(errno.ENODEV, f"no VFIO device for {device!r}") from None

    def device(self, name: str) -> Device:
        try:
            return self.platform.device(name)
        except IommuError as e:
            raise _oserror(e) from None

    # -- files ---------------------------------------------------------------------------
    def open(self, path: str) -> int:
        opener = self.task.files.chrdevs.get(path)
        if opener is None:
            raise OSError(errno.ENOENT, f"{path}: no such device node")
        try:
            return self.task.files.install(opener(self.task))
        except IommuError as e:
            raise _oserror(e) from None

    def close(self, fd: int) -> None:
        try:
            self.task.files.close(fd)
        except IommuError as e:
            raise _oserror(e) from None

    def ioctl(self, fd: int, request: int, buf: Any = None) -> int:
        """``ioctl(2)``. ``buf``: a bytearray or ctypes struct (updated in place), a user
        address (int), or for by-value ioctls the value itself."""
        try:
            f = self.task.files.get(fd)
            tracer = self.platform.tracer
            if tracer.enabled:
                with tracer.span("user", "ioctl", f"fd {fd} request {request:#x}"):
                    return self._ioctl(f, request, buf)
            return self._ioctl(f, request, buf)
        except IommuError as e:
            raise _oserror(e) from None

    def _ioctl(self, f: Any, request: int, buf: Any) -> int:
        if isinstance(buf, int) and not isinstance(buf, bool):
            by_value: frozenset[int] = getattr(f, "by_value_ioctls", frozenset())
            if request in by_value:
                return int(f.ioctl_by_value(request, buf))
        return int(f.ioctl(request, UserArg.from_object(self.mm, buf)))

    def read(self, fd: int, n: int) -> bytes:
        try:
            return bytes(self.task.files.get(fd).read(n))
        except IommuError as e:
            raise _oserror(e) from None

    def write(self, fd: int, data: bytes | bytearray) -> int:
        try:
            return int(self.task.files.get(fd).write(bytes(data)))
        except IommuError as e:
            raise _oserror(e) from None

    def poll(self, fd: int) -> int:
        try:
            return int(self.task.files.get(fd).poll())
        except IommuError as e:
            raise _oserror(e) from None

    # -- memory --------------------------------------------------------------------------
    def mmap(self, length: int, fd: int | None = None, offset: int = 0, *,
             shared: bool = True, prot_exec: bool = False, addr: int | None = None) -> int:
        """Anonymous zero-filled memory (page aligned), or a device mapping of ``fd``."""
        try:
            if fd is None:
                return self.mm.mmap(length, addr)
            f = self.task.files.get(fd)
            pa, on_unmap = f.mmap(length, offset, shared, prot_exec)
            return self.mm.mmap_pfn(length, pa, on_unmap)
        except IommuError as e:
            raise _oserror(e) from None

    def munmap(self, va: int, length: int) -> None:
        try:
            self.mm.munmap(va, length)
        except IommuError as e:
            raise _oserror(e) from None

    def mem_write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        try:
            self.mm.write(va, data)
        except IommuError as e:
            raise _oserror(e) from None

    def mem_read(self, va: int, n: int) -> bytes:
        try:
            return self.mm.read(va, n)
        except IommuError as e:
            raise _oserror(e) from None

    # -- device DMA ----------------------------------------------------------------------
    def _dma_dev(self, dev: str | Device) -> Device:
        d = dev if isinstance(dev, Device) else self.platform.devices.get(dev)
        if d is None:
            raise OSError(errno.ENODEV, f"no device named {dev!r}")
        return d

    def dma_read(self, dev: str | Device, iova: int, n: int, pasid: int | None = None
                 ) -> bytes:
        """The device reads ``n`` bytes at ``iova`` through its IOMMU (DmaFault if not)."""
        d = self._dma_dev(dev)
        hw = self.platform.iommus[d.iommu_name]
        tracer = self.platform.tracer
        if not tracer.enabled:
            return device_dma_read(hw, self.platform.mem, d, iova, n, pasid)
        p = "" if pasid is None else f" pasid {pasid}"
        with tracer.span("user", "dma_read", f"{d.name} iova {iova:#x} len {n}{p}"):
            return device_dma_read(hw, self.platform.mem, d, iova, n, pasid)

    def dma_write(self, dev: str | Device, iova: int, data: bytes | bytearray,
                  pasid: int | None = None) -> None:
        """The device writes ``data`` at ``iova`` through its IOMMU (DmaFault if not);
        a fault anywhere writes nothing."""
        d = self._dma_dev(dev)
        hw = self.platform.iommus[d.iommu_name]
        tracer = self.platform.tracer
        if not tracer.enabled:
            device_dma_write(hw, self.platform.mem, d, iova, data, pasid)
            return
        p = "" if pasid is None else f" pasid {pasid}"
        with tracer.span("user", "dma_write", f"{d.name} iova {iova:#x} len {len(data)}{p}"):
            device_dma_write(hw, self.platform.mem, d, iova, data, pasid)

    # -- teardown ------------------------------------------------------------------------
    def close_all(self) -> None:
        """Close every open file (process exit), leaving the machine running."""
        for fd in self.task.files.open_fds():
            with suppress(IommuError):
                self.task.files.close(fd)

    def shutdown(self) -> None:
        """Process exit and power-off: everything the kernel allocated is freed."""
        self.close_all()
        self.mm.teardown()
        self.core.shutdown()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
