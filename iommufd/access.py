"""In-kernel users of an IOAS (the access half of drivers/iommu/iommufd/device.c): an
emulated device (the selftest's access fds, mdev-style drivers) or an internal user
(a vIOMMU HW queue) that pins IOVA ranges or copies through them with the CPU.

An access that pins pages must accept ``unmap`` callbacks: when the IOAS unmaps a range
the access pinned, iommufd asks it to unpin first. An *internal* access cannot be asked,
so unmapping what it pins fails with EBUSY instead.
"""

from __future__ import annotations

import errno
from typing import Any, Protocol

from iommu_core.errors import IommuError
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.prot import IOMMU_WRITE
from iommu_core.trace import traced
from iommufd.io_pagetable import IoptArea
from iommufd.ioas import IommufdIoas, iommufd_get_ioas
from iommufd.pages import ACCESS_RW_KTHREAD, ACCESS_RW_SLOW_PATH, ACCESS_RW_WRITE
from iommufd.private import ULONG_MAX, IommufdCtx, IommufdObject, ObjType

#: ``enum iommufd_access_rw_flags``.
IOMMUFD_ACCESS_RW_READ = 0
IOMMUFD_ACCESS_RW_WRITE = ACCESS_RW_WRITE
IOMMUFD_ACCESS_RW_KTHREAD = ACCESS_RW_KTHREAD
#: The selftest's MOCK_ACCESS_RW_SLOW_PATH (``__IOMMUFD_ACCESS_RW_SLOW_PATH``).
IOMMUFD_ACCESS_RW_SLOW_PATH = ACCESS_RW_SLOW_PATH


class IommufdAccessOps(Protocol):
    """``struct iommufd_access_ops``."""

    needs_pin_pages: bool

    def unmap(self, data: Any, iova: int, length: int) -> None: ...


class IommufdAccess(IommufdObject):
    """``struct iommufd_access``."""

    obj_type = ObjType.ACCESS

    def __init__(self, ictx: IommufdCtx, ops: IommufdAccessOps | None, data: Any) -> None:
        super().__init__(ictx)
        self.ops = ops
        self.data = data
        self.internal = ops is None
        self.iova_alignment = PAGE_SIZE if (ops is None or ops.needs_pin_pages) else 1
        self.ioas: IommufdIoas | None = None
        #: The IOAS unpins go to (kept while a detach is in progress).
        self.ioas_unpin: IommufdIoas | None = None
        self.iopt_access_list_id = -1

    def destroy(self) -> None:
        if self.ioas is not None:
            iommufd_access_change_ioas(self, None)
        if not self.internal:
            self.ictx.put()


def iommufd_access_create(ictx: IommufdCtx, ops: IommufdAccessOps, data: Any
                          ) -> IommufdAccess:
    """An access object (published; the creator holds a reference until
    :func:`iommufd_access_destroy`). It holds the context open."""
    access = ictx.object_alloc(IommufdAccess, ops, data)
    access.users += 1
    ictx.get()
    ictx.object_finalize(access)
    return access


def iommufd_access_create_internal(ictx: IommufdCtx) -> IommufdAccess:
    """An access that is not in the object table (HW queues)."""
    ictx.subsys.kzalloc("struct iommufd_access")
    return IommufdAccess(ictx, None, None)


def iommufd_access_destroy(access: IommufdAccess) -> None:
    if access.internal:
        access.destroy()
    else:
        access.ictx.object_destroy_user(access)


def iommufd_access_change_ioas(access: IommufdAccess, new: IommufdIoas | None) -> None:
    """Move the access; the old IOAS's pins are dropped through the unmap callback."""
    cur = access.ioas
    if cur is not access.ioas_unpin:
        raise IommuError(errno.EBUSY, "access detach in progress")
    if cur is new:
        return
    old_list_id = access.iopt_access_list_id
    access.ioas = None
    if new is not None:
        try:
            access.iopt_access_list_id = new.iopt.iopt_add_access(access)
        except IommuError:
            access.ioas = cur
            raise
        new.users += 1
    if cur is not None:
        if not access.internal and access.ops is not None:
            access.ops.unmap(access.data, 0, ULONG_MAX)
        cur.iopt.iopt_remove_access(old_list_id)
        cur.users -= 1
    access.ioas = new
    access.ioas_unpin = new


def iommufd_access_attach(access: IommufdAccess, ioas_id: int) -> None:
    if access.ioas is not None:
        raise IommuError(errno.EINVAL, "access is already attached")
    iommufd_access_change_ioas(access, iommufd_get_ioas(access.ictx, ioas_id))


def iommufd_access_attach_internal(access: IommufdAccess, ioas: IommufdIoas) -> None:
    iommufd_access_change_ioas(access, ioas)


def iommufd_access_replace(access: IommufdAccess, ioas_id: int) -> None:
    if access.ioas is None:
        raise IommuError(errno.ENOENT, "access is not attached")
    iommufd_access_change_ioas(access, iommufd_get_ioas(access.ictx, ioas_id))


def iommufd_access_detach(access: IommufdAccess) -> None:
    if access.ioas is not None:
        iommufd_access_change_ioas(access, None)


def iommufd_access_notify_unmap(ioas: IommufdIoas, iova: int, length: int) -> None:
    """Ask every access of the IOAS to drop its pins in [iova, iova+length)."""
    for access in list(ioas.iopt.accesses.values()):
        if access.internal:
            raise IommuError(errno.EBUSY, "an internal access pins this IOAS")
        if access.ops is not None:
            access.ops.unmap(access.data, iova, length)


def _check_area_prot(area: IoptArea, flags: int) -> bool:
    return not (flags & IOMMUFD_ACCESS_RW_WRITE) or bool(area.iommu_prot & IOMMU_WRITE)


def _contig_segments(access: IommufdAccess, iova: int, length: int
                     ) -> tuple[IommufdIoas, int, list[tuple[IoptArea, int, int]]]:
    if not length:
        raise IommuError(errno.EINVAL, "zero length")
    last = iova + length - 1
    if last > ULONG_MAX:
        raise IommuError(errno.EOVERFLOW, "iova + length overflows")
    ioas = access.ioas
    if ioas is None:
        raise IommuError(errno.ENOENT, "access is not attached to an IOAS")
    return ioas, last, list(ioas.iopt.contig_areas(iova, last))


@traced("iommufd", lambda iova, length, flags: f"iova {iova:#x} len {length:#x}")
def iommufd_access_pin_pages(access: IommufdAccess, iova: int, length: int, flags: int
                             ) -> list[int]:
    """Pin [iova, iova+length) through the IOAS; the frames, one per page touched."""
    if access.iova_alignment != PAGE_SIZE or (not access.internal and (
            access.ops is None or not access.ops.needs_pin_pages)):
        raise IommuError(errno.EINVAL, "this access does not pin pages")
    ioas, last, segs = _contig_segments(access, iova, length)
    iopt = ioas.iopt
    out: list[int] = []
    done: list[tuple[IoptArea, int, int]] = []
    try:
        for k, (area, cur, end) in enumerate(segs):
            # Interior area boundaries must fall on page boundaries of the pages.
            if area.prevent_access or (k and area.start_byte_of(cur) % PAGE_SIZE) or (
                    end != last and area.start_byte_of(end) % PAGE_SIZE != PAGE_SIZE - 1):
                raise IommuError(errno.EINVAL, f"{area!r} cannot be pinned here")
            if not _check_area_prot(area, flags):
                raise IommuError(errno.EPERM, f"{area!r} is not writable")
            first_idx, last_idx = area.iova_to_index(cur), area.iova_to_index(end)
            out += iopt.iopt_area_add_access(area, first_idx, last_idx)
            done.append((area, first_idx, last_idx))
        if not segs or segs[-1][2] != last:
            raise IommuError(errno.ENOENT, f"[{iova:#x}, {last:#x}] is not fully mapped")
    except IommuError:
        for area, a, b in done:
            iopt.iopt_area_remove_access(area, a, b)
        raise
    return out


@traced("iommufd", lambda iova, length: f"iova {iova:#x} len {length:#x}")
def iommufd_access_unpin_pages(access: IommufdAccess, iova: int, length: int) -> None:
    ioas = access.ioas_unpin
    if ioas is None or not length:
        return
    last = iova + length - 1
    for area, cur, end in list(ioas.iopt.contig_areas(iova, last)):
        ioas.iopt.iopt_area_remove_access(area, area.iova_to_index(cur),
                                          area.iova_to_index(end))


@traced("iommufd", lambda iova, data, length, flags: f"iova {iova:#x} len {length:#x}")
def iommufd_access_rw(access: IommufdAccess, iova: int, data: bytearray | None, length: int,
                      flags: int) -> bytes:
    """CPU copy through the IOVA space: read ``length`` bytes, or write ``data``."""
    _ioas, last, segs = _contig_segments(access, iova, length)
    current = access.ictx.current
    # Validate every segment first, in the kernel's errno order, so a failed call
    # copies nothing.
    for area, _cur, _end in segs:
        if area.prevent_access:
            raise IommuError(errno.EINVAL, f"{area!r} is being unmapped")
        if not _check_area_prot(area, flags):
            raise IommuError(errno.EPERM, f"{area!r} is not writable")
    if not segs or segs[-1][2] != last:
        raise IommuError(errno.ENOENT, f"[{iova:#x}, {last:#x}] is not fully mapped")
    out = bytearray()
    pos = 0
    for area, cur, end in segs:
        n = end - cur + 1
        assert area.pages is not None
        chunk = data[pos : pos + n] if data is not None else None
        out += area.pages.rw(current, area.start_byte_of(cur), chunk, n, flags)
        pos += n
    return bytes(out)
