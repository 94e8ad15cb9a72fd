"""What drivers see of iommufd (include/linux/iommufd.h, iommufd/driver.c): user data
descriptors with their copy helpers, and the vIOMMU / vDEVICE / HW-queue objects.

iommufd creates these objects and hands them down; a driver fills its part (``priv``,
``ops``) and calls back only through the methods declared here, which iommufd
implements. That keeps the call direction of the layers: drivers never import iommufd.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING, Any, TypeVar

from iommu_core.errors import IommuError
from iommu_core.platform.uaccess import UserMemory, struct_from_bytes

if TYPE_CHECKING:
    from iommu_core.device import IommuDevice
    from iommu_core.domain import IommuDomain
    from iommu_core.platform.bus import Device
    from iommu_core.platform.dma import Mmio
    from iommu_core.plugin import ViommuOps

T = TypeVar("T", bound=ctypes.Structure | ctypes.Union)


def _offsetofend(ktype: type[ctypes.Structure], field: str) -> int:
    f = getattr(ktype, field)
    return int(f.offset + f.size)


class UserData:
    """``struct iommu_user_data``: a driver-specific struct in user memory."""

    __slots__ = ("len", "type", "uaccess", "uptr")

    def __init__(self, uaccess: UserMemory, type: int, uptr: int, len: int) -> None:
        self.uaccess = uaccess
        self.type = type
        self.uptr = uptr
        self.len = len

    def copy_struct(self, ktype: type[T], data_type: int, min_field: str) -> T:
        """``iommu_copy_struct_from_user``: type must match (EINVAL); ``len`` must be at
        least offsetofend(min_field) and at most sizeof (EINVAL); short data zero-filled."""
        if self.type != data_type:
            raise IommuError(errno.EINVAL, f"user data type {self.type:#x} is not the "
                             f"expected {data_type:#x}")
        min_len = _offsetofend(ktype, min_field)  # type: ignore[arg-type]
        if self.len < min_len or self.len > ctypes.sizeof(ktype):
            raise IommuError(errno.EINVAL, f"user data length {self.len} outside "
                             f"[{min_len}, {ctypes.sizeof(ktype)}]")
        return struct_from_bytes(ktype, self.uaccess.copy_from_user(self.uptr, self.len))

    def respond_struct(self, obj: ctypes.Structure, min_field: str) -> None:
        """``iommu_copy_struct_to_user``: write the struct back, up to ``len`` bytes."""
        n = min(self.len, ctypes.sizeof(obj))
        if n < _offsetofend(type(obj), min_field):
            raise IommuError(errno.EINVAL, "user data too short for the response")
        self.uaccess.copy_to_user(self.uptr, bytes(obj)[:n])


class UserDataArray:
    """``struct iommu_user_data_array``: an array of invalidation requests in user memory.

    ``entry_num`` is read by the core from the ioctl; the driver stores the number it
    handled back into it (``array->entry_num``), on success and on failure.
    """

    __slots__ = ("entry_len", "entry_num", "type", "uaccess", "uptr")

    def __init__(self, uaccess: UserMemory, type: int, uptr: int, entry_len: int,
                 entry_num: int) -> None:
        self.uaccess = uaccess
        self.type = type
        self.uptr = uptr
        self.entry_len = entry_len
        self.entry_num = entry_num

    def copy_entry(self, ktype: type[T], data_type: int, index: int, min_field: str) -> T:
        """``iommu_copy_struct_from_user_array``: one entry; EINVAL for a type mismatch or
        an entry_len below offsetofend(min_field) or above sizeof; short entries zero-filled."""
        if self.type != data_type:
            raise IommuError(errno.EINVAL, f"invalidation data type {self.type:#x} is not "
                             f"{data_type:#x}")
        min_len = _offsetofend(ktype, min_field)  # type: ignore[arg-type]
        if self.entry_len < min_len or self.entry_len > ctypes.sizeof(ktype):
            raise IommuError(errno.EINVAL, f"entry_len {self.entry_len} outside "
                             f"[{min_len}, {ctypes.sizeof(ktype)}]")
        raw = self.uaccess.copy_from_user(self.uptr + index * self.entry_len, self.entry_len)
        return struct_from_bytes(ktype, raw)

    def copy_full_array(self, ktype: type[T], data_type: int) -> list[T]:
        """``iommu_copy_struct_from_full_user_array``: EINVAL for a type mismatch, then
        EINVAL for an empty array; entries of exactly sizeof(ktype) in one copy (EFAULT),
        others one by one as copy_struct_from_user does (short ones zero-filled, longer
        ones need an all-zero tail: E2BIG), stopping at the first that fails."""
        if self.type != data_type:
            raise IommuError(errno.EINVAL, f"invalidation data type {self.type:#x} is not "
                             f"{data_type:#x}")
        if not self.entry_num:
            raise IommuError(errno.EINVAL, "an empty invalidation array")
        ksize = ctypes.sizeof(ktype)
        n, elen = self.entry_num, self.entry_len
        if elen == ksize:
            raw = self.uaccess.copy_from_user(self.uptr, elen * n)
            return [struct_from_bytes(ktype, raw[i * elen : (i + 1) * elen]) for i in range(n)]
        out = []
        for i in range(n):
            uptr = self.uptr + i * elen
            if elen > ksize and any(self.uaccess.copy_from_user(uptr + ksize, elen - ksize)):
                raise IommuError(errno.E2BIG, f"entry {i} has non-zero bytes past {ksize}")
            out.append(struct_from_bytes(ktype, self.uaccess.copy_from_user(
                uptr, min(elen, ksize))))
        return out


class IommufdViommu:
    """``struct iommufd_viommu`` as drivers see it. iommufd subclasses it."""

    def __init__(self, iommu_dev: IommuDevice, type: int, parent: IommuDomain) -> None:
        self.iommu_dev = iommu_dev
        self.type = type
        #: The nest-parent (stage-2) paging domain this vIOMMU sits on.
        self.parent_domain = parent
        #: Driver's vIOMMU state (``struct arm_vsmmu`` ...), set by viommu_init.
        self.priv: Any = None
        #: The ops the driver installed in viommu_init.
        self.ops: ViommuOps | None = None
        self.obj_id = 0

    # -- implemented by iommufd -------------------------------------------------------
    def find_dev(self, vdev_id: int) -> Device | None:
        """``iommufd_viommu_find_dev``: the device whose vDEVICE has this virtual id."""
        raise NotImplementedError

    def get_vdev_id(self, dev: Device) -> int | None:
        """``iommufd_viommu_get_vdev_id``: the virtual id of ``dev`` in this vIOMMU."""
        raise NotImplementedError

    def report_event(self, type: int, data: bytes) -> None:
        """``iommufd_viommu_report_event``: queue a vEVENT; IommuError(EOPNOTSUPP) if no
        vEVENTQ of that type exists."""
        raise NotImplementedError

    def alloc_mmap(self, base_pa: int, length: int, *, mmio: Mmio | None = None) -> int:
        """``iommufd_viommu_alloc_mmap``: expose physical pages through mmap of the
        iommufd; returns the mmap offset. With ``mmio`` the region is registers: the
        ``length`` bytes from offset ``base_pa`` of that window (the simulated MMIO has
        no physical addresses), and the mapping's loads and stores reach them."""
        raise NotImplementedError

    def destroy_mmap(self, offset: int) -> None:
        raise NotImplementedError


class IommufdVdevice:
    """``struct iommufd_vdevice``: a device as the guest names it in one vIOMMU."""

    def __init__(self, viommu: IommufdViommu, dev: Device, virt_id: int) -> None:
        self.viommu = viommu
        self.dev = dev
        self.virt_id = virt_id
        self.priv: Any = None


class IommufdHwQueue:
    """``struct iommufd_hw_queue``: a guest queue the hardware reads directly."""

    def __init__(self, viommu: IommufdViommu, type: int, index: int, base_addr: int,
                 length: int) -> None:
        self.viommu = viommu
        self.type = type
        self.index = index
        self.base_addr = base_addr  # nesting-parent IOVA
        self.length = length
        self.priv: Any = None

    # -- implemented by iommufd -------------------------------------------------------
    def depend(self, depended: IommufdHwQueue) -> None:
        """``iommufd_hw_queue_depend``: ``depended`` cannot be destroyed before this
        queue (it gains a user); EINVAL for a self or cross-type dependency."""
        raise NotImplementedError

    def undepend(self, depended: IommufdHwQueue) -> None:
        """``iommufd_hw_queue_undepend``: drop a dependency taken with :meth:`depend`."""
        raise NotImplementedError
