"""The Machine: a simulated computer with IOMMUs, devices, a process and its kernel.

This is the stable contract user code and tests rely on (see DESIGN.md). Everything
below it is the simulated kernel and hardware; at this boundary every kernel error
becomes ``OSError(errno, message)`` and every device DMA failure a :class:`DmaFault`.
"""

from __future__ import annotations

import copy
import errno
import operator
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from iommu_core.errors import IommuError
from iommu_core.iommu import IommuCore
from iommu_core.platform.bus import Device, make_pci_device
from iommu_core.platform.dma import (
    DmaFault,
    IommuHardware,
    device_dma_read,
    device_dma_write,
)
from iommu_core.platform.eventfd import EventFd
from iommu_core.platform.fault_inject import check_fail_nth
from iommu_core.platform.files import File, FileTable
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.platform.mm import TASK_SIZE
from iommu_core.platform.platform import Platform
from iommu_core.platform.shmem import ShmemFile
from iommu_core.platform.task import Task, copy_process, do_exit
from iommu_core.platform.uaccess import UserArg
from iommu_core.platform.vma import SimMm
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


# -- argument checks at the syscall boundary ------------------------------------------------
# Whatever a caller passes, only OSError (or DmaFault from a device) leaves the Machine.
# Integers keep their C meaning: an ioctl request is an ``unsigned int``, its argument an
# ``unsigned long``; a count above SSIZE_MAX is EINVAL (rw_verify_area) and one above
# MAX_RW_COUNT is cut to it (vfs_read/vfs_write).
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_SSIZE_MAX = (1 << 63) - 1
_S64_MAX = (1 << 63) - 1  # LLONG_MAX: the largest loff_t
MAX_RW_COUNT = 0x7FFF_F000  # INT_MAX & PAGE_MASK


def _int(value: Any, what: str, err: int = errno.EINVAL) -> int:
    """``value`` as a Python int (anything with ``__index__``), else OSError(err)."""
    try:
        return operator.index(value)
    except TypeError:
        raise OSError(err, f"{what} must be an integer, not {type(value).__name__}") from None


def _count(value: Any, what: str = "count") -> int:
    n = _int(value, what)
    if n < 0 or n > _SSIZE_MAX:
        raise OSError(errno.EINVAL, f"{what} {n} is negative or above SSIZE_MAX")
    return n


def _buffer(data: Any, what: str = "buffer") -> bytes | memoryview:
    """A bytes-like ``data`` as bytes or a flat byte view (no copy); anything else is a
    bad user pointer (EFAULT)."""
    if isinstance(data, bytes):
        return data
    try:
        mv = memoryview(data)
        return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")
    except (TypeError, ValueError):
        raise OSError(errno.EFAULT, f"{what} of type {type(data).__name__} is not "
                      "bytes-like") from None


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
        # The DMA hot path's lookups, resolved once (the platform keeps them current).
        self._dma_targets = self.platform.dma_targets
        self._mem = self.platform.mem
        self._tracer = self.platform.tracer
        self._tasks = self.platform.tasks
        self.plugins = plugins or PluginHost()
        for name, plugin in builtin_drivers().items():
            if name not in self.plugins.drivers:
                self.plugins.register_driver(name, plugin)
        self.core = IommuCore(self.platform, self.plugins)
        self.core.default_passthrough = bool(config.get("passthrough", False))
        tasks = self.platform.tasks
        self.task = tasks.add(Task(tasks.alloc_pid(), SimMm(self.platform.mem,
                                                           self.platform.alloc),
                                   FileTable(self.platform.chrdevs)))
        tasks.current = self.task
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
        #: iommufd's per-machine state (``IommufdSubsys``).
        self.iommufd = iommufd_init(self.core)
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
            self._vfio_paths[name] = vfio_register_device(self.core, dev)
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
        path = self._vfio_paths.get(device) if isinstance(device, str) else None
        if path is None:
            raise OSError(errno.ENODEV, f"no VFIO device for {device!r}")
        return path

    def device(self, name: str) -> Device:
        if not isinstance(name, str):
            raise OSError(errno.ENODEV, f"no device named {name!r}")
        try:
            return self.platform.device(name)
        except IommuError as e:
            raise _oserror(e) from None

    # -- the task --------------------------------------------------------------------------
    @property
    def mm(self) -> SimMm:
        """This task's address space."""
        mm = self.task.mm
        assert isinstance(mm, SimMm)
        return mm

    @property
    def pid(self) -> int:
        """This task's pid."""
        return self.task.pid

    def _enter(self) -> Task:
        """System call entry: this task becomes ``current`` (ESRCH once it has exited)."""
        task = self.task
        if task.exited:
            raise OSError(errno.ESRCH, f"task {task.pid} has exited")
        self.platform.tasks.current = task
        return task

    @property
    def fail_nth(self) -> int:
        """This task's ``/proc/self/task/<tid>/fail-nth``: how many fault-injection points
        are left before one fails (0: off, or the armed point fired). Assigning N makes
        the Nth point this task's system calls reach fail (a slab or page allocation
        with ENOMEM, an iommufd point with its own errno), as writing the proc file does:
        a negative or non-integer value is EINVAL, one above UINT_MAX ERANGE; an exited
        task is ESRCH. A forked child starts at 0 (:doc:`/fault_injection`)."""
        if self.task.exited:
            raise OSError(errno.ESRCH, f"task {self.task.pid} has exited")
        return self.task.fail_nth

    @fail_nth.setter
    def fail_nth(self, n: int) -> None:
        try:
            n = check_fail_nth(n)
        except IommuError as e:
            raise _oserror(e) from None
        if self.task.exited:
            raise OSError(errno.ESRCH, f"task {self.task.pid} has exited")
        self.task.fail_nth = n

    def fork(self) -> Machine:
        """``fork(2)``: a new task of this Machine, with the same methods. Its fd table is
        a copy naming the same open files; its memory a copy of this task's (MAP_SHARED
        mappings stay shared; a page pinned here stays with this task)."""
        parent = self._enter()
        try:
            task = copy_process(self.platform.tasks, parent)
        except IommuError as e:
            raise _oserror(e) from None
        child = object.__new__(type(self))
        child.__dict__.update(self.__dict__)
        child.task = task
        return child

    def exit(self, code: int = 0) -> None:
        """``exit(2)``: this task ends. Its address space goes, then its fds close (the
        last close of a file releases what it holds); pages it pinned stay pinned until
        their holders unpin them, as in Linux."""
        task = self._enter()
        code = _int(code, "exit code") & 0xFF
        try:
            do_exit(self.platform.tasks, task, code)
        except IommuError as e:
            raise _oserror(e) from None

    # -- files ---------------------------------------------------------------------------
    def open(self, path: str) -> int:
        task = self._enter()
        try:
            p = os.fspath(path)
        except TypeError:
            raise OSError(errno.EFAULT, f"path of type {type(path).__name__} is not a "
                          "string") from None
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        try:
            f = self.platform.open_chrdev(p, task)
            if f is None:
                raise OSError(errno.ENOENT, f"{path}: no such device node")
            return task.files.install(f)
        except IommuError as e:
            raise _oserror(e) from None

    def close(self, fd: int) -> None:
        task = self._enter()
        try:
            task.files.close(fd)
        except IommuError as e:
            raise _oserror(e) from None

    def ioctl(self, fd: int, request: int, buf: Any = None) -> int:
        """``ioctl(2)``. ``buf``: a bytearray or ctypes struct (updated in place), a user
        address (int), or for by-value ioctls the value itself."""
        task = self.task  # _enter, inline: the ioctl path is hot
        if task.exited:
            raise OSError(errno.ESRCH, f"task {task.pid} has exited")
        self._tasks.current = task
        try:
            f = task.files.fdt.get(fd) if type(fd) is int else None
            if f is None:
                f = task.files.get(fd)  # EBADF
            # ``unsigned int cmd``: the syscall sees the low 32 bits.
            if type(request) is not int or request >> 32 or request < 0:
                request = _int(request, "ioctl request", errno.ENOTTY) & _U32
            if self._tracer.enabled:
                with self._tracer.span("user", "ioctl", f"fd {fd} request {request:#x}"):
                    return self._ioctl(f, request, buf)
            if type(buf) is not int:  # a buffer: _ioctl, inline
                res = f.ioctl(request, UserArg.from_object(task.mm, buf))
                return res if type(res) is int else int(res)
            return self._ioctl(f, request, buf)
        except IommuError as e:
            raise _oserror(e) from None

    def _ioctl(self, f: Any, request: int, buf: Any) -> int:
        if isinstance(buf, int) and not isinstance(buf, bool):
            buf &= _U64  # ``unsigned long arg``
            by_value: frozenset[int] = getattr(f, "by_value_ioctls", frozenset())
            if request in by_value:
                return int(f.ioctl_by_value(request, buf))
        res = f.ioctl(request, UserArg.from_object(self.task.mm, buf))
        return res if type(res) is int else int(res)

    def read(self, fd: int, n: int) -> bytes:
        task = self._enter()
        try:
            f = task.files.get(fd)
            return bytes(f.read(min(_count(n), MAX_RW_COUNT)))
        except IommuError as e:
            raise _oserror(e) from None

    def write(self, fd: int, data: bytes | bytearray) -> int:
        task = self._enter()
        try:
            f = task.files.get(fd)
            return int(f.write(bytes(_buffer(data)[:MAX_RW_COUNT])))
        except IommuError as e:
            raise _oserror(e) from None

    # pread(2)/pwrite(2): ksys_pread64 checks the position, then the fd, then whether the
    # file has the op (ESPIPE), then vfs_read/vfs_write check the count.
    def _pos_file(self, fd: int, offset: Any, op: str) -> tuple[File, int]:
        pos = _int(offset, "offset")
        if pos < 0 or pos > _S64_MAX:  # loff_t: a larger u64 is a negative offset
            raise OSError(errno.EINVAL, f"negative offset {offset:#x}")
        f = self._enter().files.get(fd)
        if getattr(type(f), op) is getattr(File, op):
            getattr(f, op)(b"" if op == "pwrite" else 0, pos)  # the VFS answer: ESPIPE
        return f, pos

    @staticmethod
    def _rw_verify_area(pos: int, n: int) -> None:
        if pos + n > _S64_MAX:
            raise OSError(errno.EINVAL, f"offset {pos:#x} + count {n:#x} overflows loff_t")

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """``pread(2)``: ``n`` bytes at ``offset`` of the file; its position is unchanged."""
        try:
            f, pos = self._pos_file(fd, offset, "pread")
            n = _count(n)
            self._rw_verify_area(pos, n)
            return bytes(f.pread(min(n, MAX_RW_COUNT), pos))
        except IommuError as e:
            raise _oserror(e) from None

    def pwrite(self, fd: int, data: bytes | bytearray, offset: int) -> int:
        """``pwrite(2)``: write ``data`` at ``offset`` of the file; returns bytes written."""
        try:
            f, pos = self._pos_file(fd, offset, "pwrite")
            buf = _buffer(data)
            self._rw_verify_area(pos, len(buf))
            return int(f.pwrite(bytes(buf[:MAX_RW_COUNT]), pos))
        except IommuError as e:
            raise _oserror(e) from None

    def poll(self, fd: int) -> int:
        task = self._enter()
        try:
            return int(task.files.get(fd).poll())
        except IommuError as e:
            raise _oserror(e) from None

    def memfd_create(self, name: str, flags: int = 0) -> int:
        """``memfd_create(2)``: an anonymous shmem file of size 0; its fd."""
        task = self._enter()
        if not isinstance(name, str | bytes):
            raise OSError(errno.EFAULT, f"name of type {type(name).__name__} is not a string")
        flags = _int(flags, "flags")
        try:
            f = ShmemFile(self.platform.alloc, os.fsdecode(name), flags & _U32)
            return task.files.install(f)
        except IommuError as e:
            raise _oserror(e) from None

    def eventfd(self, initval: int = 0, flags: int = 0) -> int:
        """``eventfd(2)`` (beyond the contract): a counter file to hand VFIO_DEVICE_SET_IRQS
        (a device interrupt adds 1). ``read`` takes the counter as 8 bytes (EAGAIN at 0:
        nothing could wake a blocked read), ``write`` adds 8 bytes' worth, ``poll`` says
        POLLIN while it is not 0. ``flags``: EFD_SEMAPHORE, EFD_NONBLOCK, EFD_CLOEXEC."""
        task = self._enter()
        initval = _int(initval, "initval") & _U32  # unsigned int count
        flags = _int(flags, "flags") & _U32
        try:
            return task.files.install(EventFd(initval, flags))
        except IommuError as e:
            raise _oserror(e) from None

    def ftruncate(self, fd: int, length: int) -> None:
        """``ftruncate(2)``: set the size of a memfd (shrinking drops pages; pinned ones
        stay until unpinned). EINVAL for a file that cannot be truncated."""
        task = self._enter()
        try:
            f = task.files.get(fd)
            length = _int(length, "length")
            if not isinstance(f, ShmemFile):
                raise OSError(errno.EINVAL, f"fd {fd} cannot be truncated")
            f.ftruncate(length)
        except IommuError as e:
            raise _oserror(e) from None

    # -- memory --------------------------------------------------------------------------
    def mmap(self, length: int, fd: int | None = None, offset: int = 0, *,
             shared: bool | None = None, prot_exec: bool = False, addr: int | None = None
             ) -> int:
        """Anonymous zero-filled memory (page aligned; private unless ``shared``), or a
        mapping of ``fd`` (shared unless ``shared=False``): a memfd's pages, a device
        region, the iommufd's vIOMMU pages. The mapping holds the file open."""
        task = self._enter()
        length = _int(length, "length")
        if addr is not None:
            addr = _int(addr, "addr")
        if length > TASK_SIZE:
            raise OSError(errno.ENOMEM, f"mmap length {length:#x} exceeds the address space")
        mm = self.mm
        try:
            if fd is None:
                return mm.mmap(length, addr, shared=bool(shared))
            f = task.files.get(fd)
            offset = _int(offset, "offset")
            if offset < 0 or offset > _U64 or offset & (PAGE_SIZE - 1):
                raise OSError(errno.EINVAL, f"bad mmap offset {offset:#x}")
            if length <= 0:
                raise OSError(errno.EINVAL, "mmap length must be positive")
            share = True if shared is None else bool(shared)
            region = f.mmap(length, offset, share, bool(prot_exec))
            return mm.mmap_region(length, region, share, file=f, addr=addr)
        except IommuError as e:
            raise _oserror(e) from None

    def munmap(self, va: int, length: int) -> None:
        self._enter()
        va, length = _int(va, "address"), _int(length, "length")
        # do_vmi_munmap: the range must lie inside the task's address space.
        if va < 0 or va > TASK_SIZE or length > TASK_SIZE - va:
            raise OSError(errno.EINVAL, f"munmap [{va:#x}, +{length:#x}) is outside the "
                          "address space")
        try:
            self.mm.munmap(va, length)
        except IommuError as e:
            raise _oserror(e) from None

    def mem_write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        self._enter()
        va = _int(va, "address", errno.EFAULT)
        buf = _buffer(data, "data")
        try:
            self.mm.write(va, buf)
        except IommuError as e:
            raise _oserror(e) from None

    def mem_read(self, va: int, n: int) -> bytes:
        self._enter()
        va, n = _int(va, "address", errno.EFAULT), _count(n, "length")
        try:
            self.mm.check_range(va, n)
            if n > MAX_RW_COUNT:
                raise OSError(errno.ENOMEM, f"a read of {n:#x} bytes at once")
            return self.mm.read(va, n)
        except IommuError as e:
            raise _oserror(e) from None

    # -- device DMA ----------------------------------------------------------------------
    def _dma_target(self, dev: str | Device) -> tuple[Device, IommuHardware]:
        t = self.platform.dma_targets.get(dev) if type(dev) is str else (
            (dev, self.platform.iommus[dev.iommu_name]) if isinstance(dev, Device)
            and dev.iommu_name in self.platform.iommus else None)
        if t is None:
            raise OSError(errno.ENODEV, f"no device named {dev!r}")
        return t

    @staticmethod
    def _dma_args(iova: Any, n: int, pasid: Any) -> tuple[int, int | None]:
        """A device address is a u64 and a PASID a non-negative number; one DMA moves at
        most MAX_RW_COUNT bytes (what lies past the top of the space is the IOMMU's to
        refuse, as a DmaFault)."""
        iova = _int(iova, "iova")
        if pasid is not None:
            pasid = _int(pasid, "pasid")
            if pasid < 0:
                raise OSError(errno.EINVAL, f"negative PASID {pasid}")
        if iova < 0 or iova > _U64 or n > MAX_RW_COUNT:
            raise OSError(errno.EINVAL, f"DMA of {n:#x} bytes at {iova:#x} is outside "
                          "the 64-bit device address space")
        return iova, pasid

    # The hot path: a device name the platform knows, plain in-range ints, tracing off
    # (each check written as the cheapest expression of it); anything else goes through
    # the full checks.
    def dma_read(self, dev: str | Device, iova: int, n: int, pasid: int | None = None
                 ) -> bytes:
        """The device reads ``n`` bytes at ``iova`` through its IOMMU (DmaFault if not)."""
        try:
            t: tuple[Device, IommuHardware] | None = self._dma_targets[dev]  # type: ignore[index]
        except (KeyError, TypeError):
            t = None
        tasks = self._tasks
        cur = tasks.current
        if cur is not None and cur.fail_nth:
            # A device's DMA (and the faults it raises) runs in no task: fail-nth
            # does not count what it does.
            tasks.current = None
            try:
                return self.dma_read(dev, iova, n, pasid)
            finally:
                tasks.current = cur
        if (t is not None and type(iova) is int and type(n) is int and not iova >> 64
                and 0 <= n <= 0x7FFF_F000  # MAX_RW_COUNT
                and (pasid is None or (type(pasid) is int and pasid >= 0))
                and not self._tracer.enabled):
            return device_dma_read(t[1], self._mem, t[0], iova, n, pasid)
        d, hw = t or self._dma_target(dev)
        n = _count(n, "length")
        iova, pasid = self._dma_args(iova, n, pasid)
        tracer = self._tracer
        if not tracer.enabled:
            return device_dma_read(hw, self._mem, d, iova, n, pasid)
        p = "" if pasid is None else f" pasid {pasid}"
        with tracer.span("user", "dma_read", f"{d.name} iova {iova:#x} len {n}{p}"):
            return device_dma_read(hw, self._mem, d, iova, n, pasid)

    def dma_write(self, dev: str | Device, iova: int, data: bytes | bytearray,
                  pasid: int | None = None) -> None:
        """The device writes ``data`` at ``iova`` through its IOMMU (DmaFault if not);
        a fault anywhere writes nothing."""
        try:
            t: tuple[Device, IommuHardware] | None = self._dma_targets[dev]  # type: ignore[index]
        except (KeyError, TypeError):
            t = None
        tasks = self._tasks
        cur = tasks.current
        if cur is not None and cur.fail_nth:
            tasks.current = None
            try:
                self.dma_write(dev, iova, data, pasid)
                return
            finally:
                tasks.current = cur
        if (t is not None and type(iova) is int and not iova >> 64
                and (type(data) is bytes or type(data) is bytearray)
                and len(data) <= 0x7FFF_F000  # MAX_RW_COUNT
                and (pasid is None or (type(pasid) is int and pasid >= 0))
                and not self._tracer.enabled):
            device_dma_write(t[1], self._mem, t[0], iova, data, pasid)
            return
        d, hw = t or self._dma_target(dev)
        buf = _buffer(data, "data")
        iova, pasid = self._dma_args(iova, len(buf), pasid)
        tracer = self._tracer
        if not tracer.enabled:
            device_dma_write(hw, self._mem, d, iova, buf, pasid)
            return
        p = "" if pasid is None else f" pasid {pasid}"
        with tracer.span("user", "dma_write", f"{d.name} iova {iova:#x} len {len(buf)}{p}"):
            device_dma_write(hw, self._mem, d, iova, buf, pasid)

    # -- teardown ------------------------------------------------------------------------
    def close_all(self) -> None:
        """Close every open file of this task, leaving the machine running."""
        task = self._enter()
        for fd in task.files.open_fds():
            with suppress(IommuError):
                task.files.close(fd)

    def shutdown(self) -> None:
        """Every task exits and the machine powers off: everything the kernel allocated
        is freed."""
        tasks = self.platform.tasks
        for task in list(tasks.tasks.values()):
            with suppress(IommuError):
                do_exit(tasks, task)
        self.core.shutdown()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- notebooks ---------------------------------------------------------------------
    def __repr__(self) -> str:
        units = ", ".join(f"{n} ({d})" for n, d in self.iommus.items())
        return (f"<Machine: {units}; {len(self.devices)} devices; "
                f"{len(self.task.files.open_fds())} open fds; "
                f"{self.kernel_pages_in_use} kernel pages>")

    def _repr_svg_(self) -> str:
        """The object graph and topology, drawn (a notebook shows it)."""
        from iommu_sim.graph import build_graph, to_svg

        return to_svg(build_graph(self))

    def _repr_html_(self) -> str:
        from html import escape

        return f"<p><code>{escape(repr(self))}</code></p>{self._repr_svg_()}"
