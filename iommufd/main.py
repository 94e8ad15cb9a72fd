"""``/dev/iommu`` (drivers/iommu/iommufd/main.c): the file, the ioctl table with the
kernel's size rules, DESTROY, mmap of driver regions, and :func:`iommufd_init`.

Dispatch, in the kernel's order:

1. ``_IOC_NR(cmd) < 0x80`` or past the table: the VFIO compatibility path
   (:func:`iommufd.vfio_compat.iommufd_vfio_ioctl`).
2. ``get_user(size)``: EFAULT.
3. the table row's request differs (a hole, or other type/dir/size bits): ENOTTY.
4. ``size < min_size`` (``offsetofend`` of the row's last member): EINVAL.
5. ``copy_struct_from_user``: a longer struct needs an all-zero tail (E2BIG); EFAULT.
6. the handler, which writes back ``min(size, sizeof)`` bytes when it responds.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iommu_core.errors import IommuError
from iommu_core.platform.files import File, PfnRegion
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.platform.uaccess import UserArg, copy_struct_from_user
from iommu_core.trace import traced
from iommufd import uapi, uapi_selftest, uapi_vfio
from iommufd.device import iommufd_get_hw_info
from iommufd.eventq import iommufd_fault_alloc, iommufd_veventq_alloc
from iommufd.hw_pagetable import (
    iommufd_hwpt_alloc,
    iommufd_hwpt_get_dirty_bitmap,
    iommufd_hwpt_invalidate,
    iommufd_hwpt_set_dirty_tracking,
)
from iommufd.ioas import (
    iommufd_ioas_alloc_ioctl,
    iommufd_ioas_allow_iovas,
    iommufd_ioas_change_process,
    iommufd_ioas_copy,
    iommufd_ioas_iova_ranges,
    iommufd_ioas_map,
    iommufd_ioas_map_file,
    iommufd_ioas_unmap,
)
from iommufd.noiommu import iommufd_ioas_noiommu_get_pa
from iommufd.option import iommufd_option
from iommufd.private import IommufdCtx, IommufdSubsys, Ucmd
from iommufd.selftest import iommufd_test
from iommufd.vfio_compat import (
    iommufd_vfio_ioas,
    iommufd_vfio_ioctl,
    iommufd_vfio_misc_register,
)
from iommufd.viommu import (
    iommufd_hw_queue_alloc_ioctl,
    iommufd_vdevice_alloc_ioctl,
    iommufd_viommu_alloc_ioctl,
)

if TYPE_CHECKING:
    from iommu_core.iommu import IommuCore

Handler = Callable[[Ucmd], int]

DEV_IOMMU = "/dev/iommu"


@traced("iommufd")
def iommufd_destroy(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_destroy = ucmd.cmd
    ucmd.ictx.object_remove(cmd.id)
    return 0


_HANDLERS: dict[str, Handler] = {
    "IOMMU_DESTROY": iommufd_destroy,
    "IOMMU_IOAS_ALLOC": iommufd_ioas_alloc_ioctl,
    "IOMMU_IOAS_ALLOW_IOVAS": iommufd_ioas_allow_iovas,
    "IOMMU_IOAS_COPY": iommufd_ioas_copy,
    "IOMMU_IOAS_IOVA_RANGES": iommufd_ioas_iova_ranges,
    "IOMMU_IOAS_MAP": iommufd_ioas_map,
    "IOMMU_IOAS_UNMAP": iommufd_ioas_unmap,
    "IOMMU_OPTION": iommufd_option,
    "IOMMU_VFIO_IOAS": iommufd_vfio_ioas,
    "IOMMU_HWPT_ALLOC": iommufd_hwpt_alloc,
    "IOMMU_GET_HW_INFO": iommufd_get_hw_info,
    "IOMMU_HWPT_SET_DIRTY_TRACKING": iommufd_hwpt_set_dirty_tracking,
    "IOMMU_HWPT_GET_DIRTY_BITMAP": iommufd_hwpt_get_dirty_bitmap,
    "IOMMU_HWPT_INVALIDATE": iommufd_hwpt_invalidate,
    "IOMMU_FAULT_QUEUE_ALLOC": iommufd_fault_alloc,
    "IOMMU_IOAS_MAP_FILE": iommufd_ioas_map_file,
    "IOMMU_VIOMMU_ALLOC": iommufd_viommu_alloc_ioctl,
    "IOMMU_VDEVICE_ALLOC": iommufd_vdevice_alloc_ioctl,
    "IOMMU_IOAS_CHANGE_PROCESS": iommufd_ioas_change_process,
    "IOMMU_VEVENTQ_ALLOC": iommufd_veventq_alloc,
    "IOMMU_HW_QUEUE_ALLOC": iommufd_hw_queue_alloc_ioctl,
    "IOMMU_IOAS_NOIOMMU_GET_PA": iommufd_ioas_noiommu_get_pa,
    "IOMMU_TEST_CMD": iommufd_test,
}


def _build_table() -> tuple[tuple[uapi.IoctlDesc, Handler] | None, ...]:
    """``iommufd_ioctl_ops[]`` indexed by ``nr - IOMMUFD_CMD_BASE``; a CONFIG_IOMMUFD_TEST
    kernel ends the table with IOMMU_TEST_CMD, leaving holes before it."""
    rows = [*uapi.IOMMUFD_IOCTLS, uapi_selftest.IOMMU_TEST_IOCTL]
    size = max(r.nr for r in rows) - uapi.IOMMUFD_CMD_BASE + 1
    table: list[tuple[uapi.IoctlDesc, Handler] | None] = [None] * size
    for r in rows:
        table[r.nr - uapi.IOMMUFD_CMD_BASE] = (r, _HANDLERS[r.name])
    return tuple(table)


def _untraced(handler: Handler) -> Handler:
    """The handler under its ``@traced`` wrapper: what the wrapper calls while tracing is
    off (the dispatcher calls it directly then, one call less)."""
    return getattr(handler, "__wrapped__", handler)


IOMMUFD_IOCTL_OPS = _build_table()
#: The same rows with the handlers' untraced bodies.
_UNTRACED_OPS = tuple(None if r is None else (r[0], _untraced(r[1])) for r in IOMMUFD_IOCTL_OPS)
_NOPS = len(IOMMUFD_IOCTL_OPS)
_CMD_BASE = uapi.IOMMUFD_CMD_BASE
#: The table's requests exactly as defined -> (min size, struct, its size, untraced
#: handler): the row found with one lookup (such a request cannot be ENOTTY or reach the
#: VFIO path).
_EXACT: dict[int, tuple[int, Any, int, Handler]] = {
    r[0].request: (r[0].min_size, r[0].struct, ctypes.sizeof(r[0].struct), r[1])
    for r in _UNTRACED_OPS if r is not None}

#: Ioctls added at run time by :func:`iommufd_register_ioctl` (prototypes), by number.
_EXTRA_IOCTL_OPS: dict[int, tuple[uapi.IoctlDesc, Handler]] = {}


def iommufd_register_ioctl(desc: uapi.IoctlDesc, handler: Handler) -> Callable[[], None]:
    """Add one ioctl to ``/dev/iommu`` at run time, to prototype a new command without
    editing the table. It is dispatched with the table's rules (exact request match,
    ``min_size``, ``copy_struct_from_user``). EEXIST if its number is a table row or
    already registered; EINVAL below IOMMUFD_CMD_BASE (the VFIO compatibility range).
    Returns the function that removes it again."""
    if desc.nr < uapi.IOMMUFD_CMD_BASE:
        raise IommuError(errno.EINVAL, f"{desc.name}: nr {desc.nr:#x} is in the VFIO range")
    idx = desc.nr - uapi.IOMMUFD_CMD_BASE
    if (idx < len(IOMMUFD_IOCTL_OPS) and IOMMUFD_IOCTL_OPS[idx] is not None) or (
            desc.nr in _EXTRA_IOCTL_OPS):
        raise IommuError(errno.EEXIST, f"{desc.name}: ioctl nr {desc.nr:#x} is taken")
    _EXTRA_IOCTL_OPS[desc.nr] = (desc, handler)

    def unregister() -> None:
        if _EXTRA_IOCTL_OPS.get(desc.nr, (None,))[0] is desc:
            del _EXTRA_IOCTL_OPS[desc.nr]

    return unregister


class IommufdFile(File):
    """An open ``/dev/iommu``."""

    name = DEV_IOMMU
    #: The legacy VFIO ioctls that take their argument by value.
    by_value_ioctls = frozenset({uapi_vfio.VFIO_CHECK_EXTENSION, uapi_vfio.VFIO_SET_IOMMU})

    def __init__(self, subsys: IommufdSubsys) -> None:
        self.ictx = IommufdCtx(subsys)
        self.ictx.file = self

    def ioctl(self, request: int, arg: UserArg) -> int:
        """``iommufd_fops_ioctl``, in the order the module docstring gives."""
        ictx = self.ictx
        exact = _EXACT.get(request)
        if exact is not None and not ictx.tracer.enabled:
            min_size, ktype, ksize, fn = exact
            size, cmd = arg.sized_struct(ktype, ksize)
            if size >= min_size:
                if cmd is None:
                    cmd = copy_struct_from_user(ktype, arg, size)
                return fn(Ucmd(ictx, arg, size, cmd))
        nr = request & 0xFF  # _IOC_NR
        idx = nr - _CMD_BASE
        row = _EXTRA_IOCTL_OPS.get(nr) if _EXTRA_IOCTL_OPS else None
        if row is None:
            if idx < 0 or idx >= _NOPS:
                return iommufd_vfio_ioctl(ictx, request, arg)
            row = (_UNTRACED_OPS if not ictx.tracer.enabled else IOMMUFD_IOCTL_OPS)[idx]
        size = arg.get_u32(0)
        if row is None or row[0].request != request:
            raise IommuError(errno.ENOTTY, f"unknown iommufd ioctl {request:#x}")
        desc, handler = row
        if size < desc.min_size:
            raise IommuError(errno.EINVAL, f"{desc.name}: size {size} below the minimum "
                             f"{desc.min_size}")
        cmd = arg.copy_struct(desc.struct, size)
        if cmd is None:
            cmd = copy_struct_from_user(desc.struct, arg, size)
        return handler(Ucmd(ictx, arg, size, cmd))

    def ioctl_by_value(self, request: int, value: int) -> int:
        return iommufd_vfio_ioctl(self.ictx, request, value)

    def mmap(self, length: int, offset: int, shared: bool, prot_exec: bool) -> PfnRegion:
        """``iommufd_fops_mmap``: exactly one registered region (vIOMMU pages: RAM or
        registers)."""
        length = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if offset & (PAGE_SIZE - 1) or not length:
            raise IommuError(errno.EINVAL, "mmap offset not page aligned")
        if not shared:
            raise IommuError(errno.EINVAL, "iommufd regions need MAP_SHARED")
        if prot_exec:
            raise IommuError(errno.EPERM, "iommufd regions cannot be executable")
        mmaps = self.ictx.mmaps
        idx = mmaps.bisect_right(offset) - 1
        immap = mmaps.peekitem(idx)[1] if idx >= 0 else None
        if immap is None or offset >= immap.offset + immap.length:
            raise IommuError(errno.ENXIO, f"no region at offset {offset:#x}")
        if immap.offset != offset or immap.length != length:
            raise IommuError(errno.ENXIO, "mmap must cover exactly one region")
        owner = immap.owner
        owner.users += 1  # the mapping holds the region's owner

        def vma_open() -> None:
            owner.users += 1

        def vma_close() -> None:
            owner.users -= 1

        if immap.mmio is not None:  # registers: loads and stores are register accesses
            return PfnRegion(mmio=immap.mmio, mmio_offset=immap.pa, open=vma_open,
                             close=vma_close)
        return PfnRegion(pa=immap.pa, open=vma_open, close=vma_close)

    def release(self) -> None:
        """``iommufd_fops_release``: the last reference (fd, mappings, holders) is gone."""
        self.ictx.release()


def iommufd_register_driver_data_types(core: IommuCore) -> None:
    """Register the uAPI data types drivers declare (``iommufd_uapi_data_types`` hook).

    The registry is process-wide and several Machines may share a process, so declaring
    the same type again is fine; another type holding the value is an error.
    """
    for ops in core.plugins.drivers.values():
        for dt in ops.iommufd_uapi_data_types():
            if not isinstance(dt, uapi.DataType):
                raise IommuError(errno.EINVAL, f"driver {ops.name} declared {dt!r}, not an "
                                 "iommufd.uapi.DataType")
            held = uapi.find_data_type(dt.kind, dt.value)
            if held is not None and held.name == dt.name and held.struct is dt.struct:
                continue
            try:
                uapi.register_data_type(dt.kind, dt.name, dt.value, dt.struct, dt.min_len)
            except uapi.DataTypeError as e:
                raise IommuError(errno.EEXIST, f"driver {ops.name}: {e}") from None


def iommufd_init(core: IommuCore) -> IommufdSubsys:
    """Register ``/dev/iommu`` and ``/dev/vfio/vfio`` (module init of iommufd)."""
    iommufd_register_driver_data_types(core)
    subsys = IommufdSubsys(core)
    core.platform.chrdevs[DEV_IOMMU] = lambda t: IommufdFile(subsys)
    iommufd_vfio_misc_register(subsys, core.platform.chrdevs, IommufdFile)  # /dev/vfio/vfio
    return subsys
