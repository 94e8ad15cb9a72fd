"""IOAS objects and their ioctls (drivers/iommu/iommufd/ioas.c)."""

from __future__ import annotations

import bisect
import ctypes
import errno
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError
from iommu_core.prot import IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE
from iommu_core.trace import traced
from iommufd import uapi
from iommufd.io_pagetable import IoPagetable
from iommufd.pages import iopt_alloc_user_pages
from iommufd.private import (
    ACCOUNT_MM,
    ACCOUNT_USER,
    ULONG_MAX,
    IommufdCtx,
    IommufdObject,
    ObjType,
    Ucmd,
)

if TYPE_CHECKING:
    from iommufd.hw_pagetable import IommufdHwptPaging

#: ``MOCK_FLAGS_ACCESS_SYZ``: selftest-only iova encoding (CONFIG_IOMMUFD_TEST).
_MOCK_FLAGS_ACCESS_SYZ = 1 << 16

_MAP_FLAGS = (uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_WRITEABLE
              | uapi.IOMMU_IOAS_MAP_READABLE)


class IommufdIoas(IommufdObject):
    """``struct iommufd_ioas``: an IO page table plus the paging HWPTs built on it."""

    obj_type = ObjType.IOAS

    def __init__(self, ictx: IommufdCtx) -> None:
        super().__init__(ictx)
        self.iopt = IoPagetable(ictx.core)
        #: ``hwpt_list``: paging HWPTs of this IOAS, in creation order.
        self.hwpt_list: list[IommufdHwptPaging] = []

    def notify_unmap(self, iova: int, length: int) -> None:
        from iommufd.access import iommufd_access_notify_unmap

        iommufd_access_notify_unmap(self, iova, length)

    def destroy(self) -> None:
        self.iopt.iopt_destroy_table(self.notify_unmap)


def iommufd_get_ioas(ictx: IommufdCtx, oid: int) -> IommufdIoas:
    return ictx.get_object(oid, IommufdIoas)


def conv_iommu_prot(map_flags: int) -> int:
    """The kernel always maps cacheable: iommufd has no way to undo IOMMU_CACHE."""
    prot = IOMMU_CACHE
    if map_flags & uapi.IOMMU_IOAS_MAP_WRITEABLE:
        prot |= IOMMU_WRITE
    if map_flags & uapi.IOMMU_IOAS_MAP_READABLE:
        prot |= IOMMU_READ
    return prot


def _reserved(cmd: ctypes.Structure, name: str = "__reserved") -> int:
    return int(getattr(cmd, name))


# ======================================================================================
# IOMMU_IOAS_ALLOC
# ======================================================================================
@traced("iommufd")
def iommufd_ioas_alloc_ioctl(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_ioas_alloc = ucmd.cmd
    if cmd.flags:
        raise IommuError(errno.EOPNOTSUPP, f"unknown flags {cmd.flags:#x}")
    ictx = ucmd.ictx
    ioas = ictx.object_alloc(IommufdIoas(ictx))
    cmd.out_ioas_id = ioas.id
    try:
        ucmd.respond()
    except IommuError:
        ictx.object_abort_and_destroy(ioas)
        raise
    ictx.object_finalize(ioas)
    return 0


# ======================================================================================
# IOMMU_IOAS_IOVA_RANGES
# ======================================================================================
@traced("iommufd")
def iommufd_ioas_iova_ranges(ucmd: Ucmd) -> int:
    """The holes of the reserved ranges over [0, ULONG_MAX]; EMSGSIZE (after writing
    the struct back) when they do not all fit."""
    cmd: uapi.iommu_ioas_iova_ranges = ucmd.cmd
    if _reserved(cmd):
        raise IommuError(errno.EOPNOTSUPP, "__reserved must be 0")
    ictx = ucmd.ictx
    ioas = iommufd_get_ioas(ictx, cmd.ioas_id)
    iopt = ioas.iopt
    max_iovas = cmd.num_iovas
    ranges = cmd.allowed_iovas
    count = 0
    uaccess = ictx.task.uaccess
    size = ctypes.sizeof(uapi.iommu_iova_range)
    for start, last in _reserved_holes(iopt):
        if count < max_iovas:
            elm = uapi.iommu_iova_range(start=start, last=last)
            uaccess.copy_to_user(ranges + count * size, uapi.struct_bytes(elm))
        count += 1
    cmd.num_iovas = count
    cmd.out_iova_alignment = iopt.iova_alignment
    ucmd.respond()
    if count > max_iovas:
        raise IommuError(errno.EMSGSIZE, f"{count} ranges, room for {max_iovas}")
    return 0


def _reserved_holes(iopt: IoPagetable) -> list[tuple[int, int]]:
    holes = []
    cur = 0
    for start, last, _seq, _owner in iopt.reserved:
        if start > cur:
            holes.append((cur, start - 1))
        cur = max(cur, last + 1)
    if cur <= ULONG_MAX:
        holes.append((cur, ULONG_MAX))
    return holes


# ======================================================================================
# IOMMU_IOAS_ALLOW_IOVAS
# ======================================================================================
@traced("iommufd")
def iommufd_ioas_allow_iovas(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_ioas_allow_iovas = ucmd.cmd
    if _reserved(cmd):
        raise IommuError(errno.EOPNOTSUPP, "__reserved must be 0")
    ictx = ucmd.ictx
    ioas = iommufd_get_ioas(ictx, cmd.ioas_id)
    size = ctypes.sizeof(uapi.iommu_iova_range)
    ranges: list[tuple[int, int]] = []  # kept sorted: overlap checks are O(log n)
    for i in range(cmd.num_iovas):
        raw = ictx.task.uaccess.copy_from_user(cmd.allowed_iovas + i * size, size)
        r = uapi.from_bytes(uapi.iommu_iova_range, raw)
        if r.start >= r.last:
            raise IommuError(errno.EINVAL, f"range {r.start:#x}..{r.last:#x} is empty")
        pos = bisect.bisect_left(ranges, (r.start, r.last))
        if (pos and ranges[pos - 1][1] >= r.start) or (
                pos < len(ranges) and ranges[pos][0] <= r.last):
            raise IommuError(errno.EINVAL, "allowed ranges overlap")
        ranges.insert(pos, (r.start, r.last))
    ioas.iopt.iopt_set_allow_iova(ranges)
    return 0


# ======================================================================================
# IOMMU_IOAS_MAP / MAP_FILE / COPY
# ======================================================================================
@traced("iommufd", lambda ioas, iova, uptr, length, prot, alloc:
        f"ioas {ioas.id} va {uptr:#x} len {length:#x}")
def iopt_map_user_pages(ictx: IommufdCtx, ioas: IommufdIoas, iova: int, uptr: int,
                        length: int, iommu_prot: int, alloc_iova: bool) -> int:
    pages, start_byte = iopt_alloc_user_pages(ictx, uptr, length,
                                              bool(iommu_prot & IOMMU_WRITE))
    if ictx.account_mode == ACCOUNT_MM and pages.account_mode == ACCOUNT_USER:
        pages.account_mode = ACCOUNT_MM
    try:
        return ioas.iopt.iopt_map_pages([(pages, start_byte, length)], length, iova,
                                        iommu_prot, alloc_iova)
    finally:
        pages.put()


def _map_prologue(cmd: uapi.iommu_ioas_map | uapi.iommu_ioas_map_file) -> None:
    if cmd.iova >= ULONG_MAX or cmd.length >= ULONG_MAX:
        raise IommuError(errno.EOVERFLOW, "iova or length >= ULONG_MAX")
    if not cmd.flags & (uapi.IOMMU_IOAS_MAP_WRITEABLE | uapi.IOMMU_IOAS_MAP_READABLE):
        raise IommuError(errno.EINVAL, "neither READABLE nor WRITEABLE")


@traced("iommufd")
def iommufd_ioas_map(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_ioas_map = ucmd.cmd
    if cmd.flags & ~_MAP_FLAGS or _reserved(cmd):
        raise IommuError(errno.EOPNOTSUPP, f"unknown flags {cmd.flags:#x} or __reserved")
    _map_prologue(cmd)
    ictx = ucmd.ictx
    ioas = iommufd_get_ioas(ictx, cmd.ioas_id)
    alloc = not cmd.flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA
    cmd.iova = iopt_map_user_pages(ictx, ioas, cmd.iova, cmd.user_va, cmd.length,
                                   conv_iommu_prot(cmd.flags), alloc)
    ucmd.respond()
    return 0


@traced("iommufd")
def iommufd_ioas_map_file(ucmd: Ucmd) -> int:
    """Files: the simulated kernel has no memfd/shmem or dma-buf exporter, so no file
    can back an area (the kernel would fail at pin time; here it fails at map time)."""
    cmd: uapi.iommu_ioas_map_file = ucmd.cmd
    if cmd.flags & ~_MAP_FLAGS:
        raise IommuError(errno.EOPNOTSUPP, f"unknown flags {cmd.flags:#x}")
    _map_prologue(cmd)
    ictx = ucmd.ictx
    iommufd_get_ioas(ictx, cmd.ioas_id)
    # iopt_map_file_pages (newest, with dma-buf import): the length checks come before
    # the fd is looked up (dma_buf_get, then fget).
    if cmd.length == 0:
        raise IommuError(errno.EINVAL, "zero length")
    if cmd.start + cmd.length - 1 > ULONG_MAX:
        raise IommuError(errno.EOVERFLOW, "start + length overflows")
    if cmd.fd < 0 or cmd.fd not in ictx.task.files:
        raise IommuError(errno.EBADF, f"fd {cmd.fd} is not open")
    raise IommuError(errno.EINVAL, f"fd {cmd.fd} is not a memfd, shmem or dma-buf file")


def iommufd_test_syz_conv_iova(ioas: IommufdIoas, iova: int) -> int:
    """Selftest: ``iova`` is ``{u32 nth_area, u32 offset}``: the offset into the
    nth area (0 if there is none)."""
    nth, offset = iova & 0xFFFF_FFFF, iova >> 32
    for area in ioas.iopt.areas.values():
        if nth == 0:
            return area.iova + offset
        nth -= 1
    return 0


@traced("iommufd")
def iommufd_ioas_copy(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_ioas_copy = ucmd.cmd
    ictx = ucmd.ictx
    if cmd.flags & _MOCK_FLAGS_ACCESS_SYZ:
        cmd.flags &= ~_MOCK_FLAGS_ACCESS_SYZ
        src = ictx.objects.get(cmd.src_ioas_id)
        if isinstance(src, IommufdIoas):
            cmd.src_iova = iommufd_test_syz_conv_iova(src, cmd.src_iova)
    if cmd.flags & ~_MAP_FLAGS:
        raise IommuError(errno.EOPNOTSUPP, f"unknown flags {cmd.flags:#x}")
    if cmd.length >= ULONG_MAX or cmd.src_iova >= ULONG_MAX or cmd.dst_iova >= ULONG_MAX:
        raise IommuError(errno.EOVERFLOW, "length or iova >= ULONG_MAX")
    if not cmd.flags & (uapi.IOMMU_IOAS_MAP_WRITEABLE | uapi.IOMMU_IOAS_MAP_READABLE):
        raise IommuError(errno.EINVAL, "neither READABLE nor WRITEABLE")
    src_ioas = iommufd_get_ioas(ictx, cmd.src_ioas_id)
    elms = src_ioas.iopt.iopt_get_pages(cmd.src_iova, cmd.length)
    dst_ioas = iommufd_get_ioas(ictx, cmd.dst_ioas_id)
    alloc = not cmd.flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA
    cmd.dst_iova = dst_ioas.iopt.iopt_map_pages(elms, cmd.length, cmd.dst_iova,
                                                conv_iommu_prot(cmd.flags), alloc)
    ucmd.respond()
    return 0


# ======================================================================================
# IOMMU_IOAS_UNMAP
# ======================================================================================
@traced("iommufd")
def iommufd_ioas_unmap(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_ioas_unmap = ucmd.cmd
    ioas = iommufd_get_ioas(ucmd.ictx, cmd.ioas_id)
    iopt = ioas.iopt
    if cmd.iova == 0 and cmd.length == ULONG_MAX:
        unmapped = iopt.iopt_unmap_all(ioas.notify_unmap)
    else:
        if cmd.iova >= ULONG_MAX or cmd.length >= ULONG_MAX:
            raise IommuError(errno.EOVERFLOW, "iova or length >= ULONG_MAX")
        if not cmd.length:
            raise IommuError(errno.EINVAL, "zero length")
        last = cmd.iova + cmd.length - 1
        if last > ULONG_MAX:
            raise IommuError(errno.EOVERFLOW, "iova + length overflows")
        unmapped = iopt.iopt_unmap_iova_range(cmd.iova, last, ioas.notify_unmap)
    cmd.length = unmapped
    ucmd.respond()
    return 0


# ======================================================================================
# IOMMU_OPTION(HUGE_PAGES) and IOMMU_IOAS_CHANGE_PROCESS
# ======================================================================================
def iommufd_ioas_option(ucmd: Ucmd) -> None:
    cmd: uapi.iommu_option = ucmd.cmd
    ioas = iommufd_get_ioas(ucmd.ictx, cmd.object_id)
    iopt = ioas.iopt
    if cmd.op == uapi.IOMMU_OPTION_OP_GET:
        cmd.val64 = 0 if iopt.disable_large_pages else 1
        return
    if cmd.op == uapi.IOMMU_OPTION_OP_SET:
        if cmd.val64 == 0:
            iopt.iopt_disable_large_pages()
            return
        if cmd.val64 == 1:
            iopt.iopt_enable_large_pages()
            return
        raise IommuError(errno.EINVAL, f"HUGE_PAGES value {cmd.val64} is not 0 or 1")
    raise IommuError(errno.EOPNOTSUPP, f"unknown option op {cmd.op}")


@traced("iommufd")
def iommufd_ioas_change_process(ucmd: Ucmd) -> int:
    """Only MAP_FILE areas can move to another process; every area here maps user
    virtual memory, so any area is EINVAL and an empty context trivially succeeds."""
    cmd: uapi.iommu_ioas_change_process = ucmd.cmd
    if _reserved(cmd):
        raise IommuError(errno.EOPNOTSUPP, "__reserved must be 0")
    for obj in ucmd.ictx.objects.values():
        if isinstance(obj, IommufdIoas) and obj.iopt.areas:
            raise IommuError(errno.EINVAL, f"IOAS {obj.id} maps user virtual memory")
    return 0
