"""IOAS objects and their ioctls (drivers/iommu/iommufd/ioas.c)."""

from __future__ import annotations

import bisect
import ctypes
import errno
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError
from iommu_core.platform.dma_buf import DmaBuf
from iommu_core.prot import IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE
from iommu_core.trace import traced
from iommufd import uapi
from iommufd.io_pagetable import IoPagetable
from iommufd.pages import (
    AddressType,
    IoptPages,
    iopt_alloc_dmabuf_pages,
    iopt_alloc_file_pages,
    iopt_alloc_user_pages,
)
from iommufd.private import (
    ACCOUNT_MM,
    ACCOUNT_NONE,
    ACCOUNT_USER,
    ULONG_MAX,
    IommufdCtx,
    IommufdObject,
    ObjType,
    Ucmd,
)

if TYPE_CHECKING:
    from iommu_core.platform.task import Task
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
    ioas = ictx.object_alloc(IommufdIoas)
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
    uaccess = ictx.current.uaccess
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
        raw = ictx.current.uaccess.copy_from_user(cmd.allowed_iovas + i * size, size)
        r = uapi.from_bytes(uapi.iommu_iova_range, raw)
        if r.start >= r.last:
            raise IommuError(errno.EINVAL, f"range {r.start:#x}..{r.last:#x} is empty")
        pos = bisect.bisect_left(ranges, (r.start, r.last))
        if (pos and ranges[pos - 1][1] >= r.start) or (
                pos < len(ranges) and ranges[pos][0] <= r.last):
            raise IommuError(errno.EINVAL, "allowed ranges overlap")
        ictx.subsys.kzalloc("struct iopt_allowed")
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
    return iopt_map_common(ictx, ioas, pages, start_byte, length, iova, iommu_prot,
                           alloc_iova)


def iopt_map_common(ictx: IommufdCtx, ioas: IommufdIoas, pages: IoptPages, start_byte: int,
                    length: int, iova: int, iommu_prot: int, alloc_iova: bool) -> int:
    """``iopt_map_common``: one area over ``pages``; the IOAS takes its own reference."""
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


@traced("iommufd", lambda ioas, iova, fd, start, length, prot, alloc:
        f"ioas {ioas.id} fd {fd} start {start:#x} len {length:#x}")
def iopt_map_file_pages(ictx: IommufdCtx, ioas: IommufdIoas, iova: int, fd: int,
                        start: int, length: int, iommu_prot: int, alloc_iova: bool) -> int:
    """``iopt_map_file_pages``: a dma-buf is imported as one physical range; any other
    file is accepted here and pinned through its page cache later (a file without one
    fails then, with EINVAL)."""
    if length == 0:
        raise IommuError(errno.EINVAL, "zero length")
    if start + length - 1 > ULONG_MAX:
        raise IommuError(errno.EOVERFLOW, "start + length overflows")
    files = ictx.current.files
    f = files.get(fd) if fd >= 0 and fd in files else None
    writable = bool(iommu_prot & IOMMU_WRITE)
    if isinstance(f, DmaBuf):
        pages, start_byte = iopt_alloc_dmabuf_pages(ictx, f, start, length, writable)
    else:
        if f is None:
            raise IommuError(errno.EBADF, f"fd {fd} is not open")
        pages, start_byte = iopt_alloc_file_pages(ictx, f, start, length, writable)
    return iopt_map_common(ictx, ioas, pages, start_byte, length, iova, iommu_prot,
                           alloc_iova)


@traced("iommufd")
def iommufd_ioas_map_file(ucmd: Ucmd) -> int:
    cmd: uapi.iommu_ioas_map_file = ucmd.cmd
    if cmd.flags & ~_MAP_FLAGS:
        raise IommuError(errno.EOPNOTSUPP, f"unknown flags {cmd.flags:#x}")
    _map_prologue(cmd)
    ictx = ucmd.ictx
    ioas = iommufd_get_ioas(ictx, cmd.ioas_id)
    alloc = not cmd.flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA
    cmd.iova = iopt_map_file_pages(ictx, ioas, cmd.iova, cmd.fd, cmd.start, cmd.length,
                                   conv_iommu_prot(cmd.flags), alloc)
    ucmd.respond()
    return 0


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


def _need_charge_update(pages: IoptPages, current: Task) -> bool:
    if pages.account_mode == ACCOUNT_NONE:
        return False
    if pages.account_mode == ACCOUNT_MM:
        return pages.source_mm is not current.mm
    # USER: also when the mm changes, which pinned_vm is charged to.
    return pages.source_user != current.uid or pages.source_mm is not current.mm


@traced("iommufd")
def iommufd_ioas_change_process(ucmd: Ucmd) -> int:
    """Move the pin accounting of every area to the caller. Only MAP_FILE areas can move
    (pages of a process's memory stay with that process): anything else is EINVAL, an
    area being changed is EBUSY. The new charge is taken first, so a failure (ENOMEM
    over the caller's limit) changes nothing."""
    cmd: uapi.iommu_ioas_change_process = ucmd.cmd
    if _reserved(cmd):
        raise IommuError(errno.EOPNOTSUPP, "__reserved must be 0")
    ictx = ucmd.ictx
    current = ictx.current
    areas = [a for o in list(ictx.objects.values()) if isinstance(o, IommufdIoas)
             for a in o.iopt.areas.values()]
    for area in areas:
        if area.pages is None:
            raise IommuError(errno.EBUSY, f"{area!r} is being changed")
        if area.pages.type is not AddressType.FILE:
            raise IommuError(errno.EINVAL, f"{area!r} does not map a file")
    pages_list = list({id(a.pages): a.pages for a in areas if a.pages is not None}.values())
    moving = [p for p in pages_list if _need_charge_update(p, current)]
    # charge_current: one temporary iopt_pages per accounting mode, charged to current.
    charged: list[IoptPages] = []
    try:
        for mode in (ACCOUNT_NONE, ACCOUNT_USER, ACCOUNT_MM):
            n = sum(p.npinned for p in moving if p.account_mode == mode)
            if not n:
                continue
            tmp = IoptPages.charge_holder(ictx, mode, n)
            charged.append(tmp)
    except IommuError:
        for tmp in charged:
            tmp.update_pinned(tmp.npinned, False)
        raise
    for p in pages_list:
        if p in moving:
            p.update_pinned(p.npinned, False)
        p.source_task, p.source_mm, p.source_user = current, current.mm, current.uid
    return 0
