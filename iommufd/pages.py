"""``iopt_pages`` (drivers/iommu/iommufd/pages.c): memory that areas of one or more IOAS
map — a range of a process's virtual memory (IOAS_MAP), of a file (IOAS_MAP_FILE) or of
a dma-buf — pinned on demand and accounted against RLIMIT_MEMLOCK.

A page of an ``IoptPages`` is pinned exactly once, whatever the number of holders: each
area of these pages that is mapped into domains and each access pin holds the page index;
the page is pinned when its first holder arrives and unpinned when the last one leaves.
So two domains over one area cost one pin, and a MAP with no domain and no access touches
no user memory at all (the lazy case). Holders and pinned frames are kept by runs: holding
1 TiB costs a few runs, not a Python object per page.

The pages remember who made them (``source_task``, ``source_mm``, ``source_user``, as
``current`` was at IOAS_MAP time): they are pinned from that address space and charged to
it, even when another process attaches the domain later; IOAS_CHANGE_PROCESS moves the
charge of file pages to the caller.
"""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError
from iommu_core.platform.memory import PAGE_SHIFT, PAGE_SIZE
from iommu_core.platform.ranges import RangeMap
from iommufd.private import ACCOUNT_MM, ACCOUNT_NONE, ACCOUNT_USER, ULONG_MAX

if TYPE_CHECKING:
    from collections.abc import Callable

    from iommu_core.platform.dma_buf import DmaBuf, DmaBufAttachment
    from iommu_core.platform.files import File
    from iommu_core.platform.mm import MmStruct
    from iommu_core.platform.page_alloc import PageAllocator, PfnRun
    from iommu_core.platform.task import Task
    from iommufd.private import IommufdCtx, IommufdSubsys

#: ``SIZE_MAX - PAGE_SIZE``: the largest length ``iopt_alloc_pages`` accepts.
_MAX_LENGTH = ULONG_MAX - PAGE_SIZE

#: iommufd_access_rw flags (include/linux/iommufd.h and the selftest's slow path).
ACCESS_RW_WRITE = 1 << 0
ACCESS_RW_KTHREAD = 1 << 1
ACCESS_RW_SLOW_PATH = 1 << 2


class AddressType(enum.Enum):
    """``enum iopt_address_type``."""

    USER = "user"
    FILE = "file"
    DMABUF = "dmabuf"


class IoptPages:
    """``struct iopt_pages``."""

    def __init__(self, ictx: IommufdCtx, start_byte: int, length: int, writable: bool,
                 on_stack: bool = False) -> None:
        if length > _MAX_LENGTH or length == 0:
            raise IommuError(errno.EINVAL, f"bad length {length:#x}")
        if not on_stack:
            ictx.subsys.kzalloc("struct iopt_pages")
        self.subsys: IommufdSubsys = ictx.subsys
        task = ictx.current
        self.alloc: PageAllocator = task.mm.alloc
        #: Who the pages belong to: current at map time (IOAS_CHANGE_PROCESS moves them).
        self.source_task: Task = task
        self.source_mm: MmStruct = task.mm
        self.source_user = task.uid
        self.npages = (length + start_byte + PAGE_SIZE - 1) >> PAGE_SHIFT
        self.writable = writable
        # CAP_IPC_LOCK bypasses the memlock accounting altogether.
        self.account_mode = ACCOUNT_NONE if task.cap_ipc_lock else ACCOUNT_USER
        self.type = AddressType.USER
        #: IOPT_ADDRESS_USER: the page-aligned start of the user range.
        self.uptr = 0
        #: IOPT_ADDRESS_FILE: the file and the byte offset of page 0 in it.
        self.file: File | None = None
        self.start = 0
        #: IOPT_ADDRESS_DMABUF: the attachment, the exporter's physical range (length 0
        #: once revoked) and the (area, domain) mappings to drop on a revoke.
        self.dmabuf_attach: DmaBufAttachment | None = None
        self.dmabuf_phys = (0, 0)
        self.dmabuf_tracks: dict[tuple[int, int], Callable[[], None]] = {}
        #: Page index runs -> holders (areas in domains + access pins).
        self.users: RangeMap[int] = RangeMap()
        #: Page index runs -> pinned frames (exactly the held indexes).
        self.pinned: RangeMap[int] = RangeMap(linear=True)
        self.npinned = 0
        self.last_npinned = 0
        #: Areas (and in-flight copies) referencing these pages.
        self.kref = 1

    @classmethod
    def charge_holder(cls, ictx: IommufdCtx, mode: int, npages: int) -> IoptPages:
        """``charge_current``'s temporary pages: ``npages`` charged to current in
        accounting ``mode`` (ENOMEM over the limit, nothing charged)."""
        tmp = cls(ictx, 0, PAGE_SIZE, False, on_stack=True)
        tmp.account_mode = mode
        tmp.npinned = npages
        tmp.update_pinned(npages, True)
        return tmp

    # -- accounting (iopt_pages_update_pinned) ---------------------------------------------
    def update_pinned(self, npages: int, inc: bool) -> None:
        """Charge (or uncharge) ``npages`` to the source user or mm; ENOMEM over the limit."""
        if not npages:
            return
        limit = self.source_task.rlimit_memlock >> PAGE_SHIFT
        mm = self.source_mm
        if self.account_mode == ACCOUNT_USER:
            locked = self.subsys.user_locked_vm
            cur = locked.get(self.source_user, 0)
            if inc and cur + npages > limit:
                raise IommuError(errno.ENOMEM, "RLIMIT_MEMLOCK exceeded (user accounting)")
            locked[self.source_user] = cur + npages if inc else cur - npages
        elif self.account_mode == ACCOUNT_MM:
            if inc and mm.locked_vm + npages > limit:
                raise IommuError(errno.ENOMEM, "RLIMIT_MEMLOCK exceeded (mm accounting)")
            mm.locked_vm += npages if inc else -npages
        mm.pinned_vm += npages if inc else -npages
        self.last_npinned = self.npinned

    # -- pinning -----------------------------------------------------------------------------
    def _pin_source(self, idx: int, n: int, inject: bool = True) -> list[PfnRun]:
        """``pfn_reader_user_pin``: pin ``n`` pages from index ``idx`` where they live
        (a fault point, EFAULT, unless ``inject`` is off: ``iopt_pages_rw_page``)."""
        if inject and self.subsys.should_fail("pin"):
            raise IommuError(errno.EFAULT, "fail-nth: pinning")
        if self.type is AddressType.FILE:
            assert self.file is not None
            start = self.start + (idx << PAGE_SHIFT)
            return self.file.pin_folios(start, start + (n << PAGE_SHIFT) - 1)
        if self.type is AddressType.DMABUF:
            raise IommuError(errno.EINVAL, "dma-buf pages are not pinned")
        # A remote mm must still have users (mmget_not_zero), else EFAULT.
        return self.source_mm.pin_user_pages(self.uptr + (idx << PAGE_SHIFT), n,
                                             self.writable)

    def _pin_missing(self, first: int, last: int, access: bool) -> int:
        """Pin the pages of [first, last] nobody holds yet, in batches sized by the
        temporary memory limit (as the kernel's pfn reader does). All or nothing.

        The fault points are the readers': a domain fill allocates its page list
        (``temp_kmalloc``, once per reader: ENOMEM); an access stores each span into its
        xarray (``pages_to_xarray``: EINVAL); every pin batch can fail (EFAULT) and so
        can charging the new pins (ENOMEM)."""
        if self.type is AddressType.DMABUF:
            return 0  # the exporter keeps its memory; nothing is pinned or charged
        subsys = self.subsys
        gaps = list(self.users.gaps(first, last + 1))
        if access:
            # The spans a domain already holds go into the access's xarray as they are.
            pos = first
            held = 0
            for gs, ge in gaps:
                held += gs > pos
                pos = ge
            held += pos <= last
            for _ in range(held):
                if subsys.should_fail("pages_to_xarray"):
                    raise IommuError(errno.EINVAL, "fail-nth: pages_to_xarray")
        if not gaps:
            return 0
        if not access and subsys.should_fail("temp_kmalloc upages"):
            raise IommuError(errno.ENOMEM, "fail-nth: temp_kmalloc of the page list")
        batch = max(1, subsys.temp_memory_limit // 8)
        done: list[tuple[int, int]] = []
        try:
            for gs, ge in gaps:
                idx = gs
                while idx < ge:
                    n = min(batch, ge - idx)
                    pos = idx
                    for pfn, cnt in self._pin_source(idx, n):
                        self.pinned.set(pos, pos + cnt, pfn)
                        pos += cnt
                    done.append((idx, n))
                    idx += n
                if access and subsys.should_fail("pages_to_xarray"):
                    raise IommuError(errno.EINVAL, "fail-nth: pages_to_xarray")
            pinned = sum(n for _i, n in done)
            if subsys.should_fail("update_pinned"):
                raise IommuError(errno.ENOMEM, "fail-nth: charging the pinned pages")
            self.npinned += pinned
            try:
                self.update_pinned(pinned, True)
            except IommuError:
                self.npinned -= pinned
                raise
        except IommuError:
            for idx, n in done:
                self._unpin(idx, n)
            raise
        return sum(n for _i, n in done)

    def _unpin(self, idx: int, n: int) -> None:
        for _s, e, pfn in self.pinned.remove(idx, idx + n):
            self.alloc.unpin(pfn, e - _s)

    def add_users(self, first: int, last: int, access: bool = False) -> None:
        """Hold pages [first, last] (pinning the ones not yet held) for a domain fill or,
        with ``access``, for an access pin."""
        if first > last or last >= self.npages:
            raise IommuError(errno.EINVAL, f"page range {first}..{last} outside {self.npages}")
        self._pin_missing(first, last, access)
        self.users.add(first, last + 1, 1)

    def remove_users(self, first: int, last: int) -> None:
        """Drop one hold on pages [first, last]; unpin those nobody holds any more."""
        if self.type is AddressType.DMABUF:
            self.users.add(first, last + 1, -1)
            return
        gone = 0
        for s, e, _z in self.users.add(first, last + 1, -1):
            self._unpin(s, e - s)
            gone += e - s
        if gone:
            self.npinned -= gone
            self.update_pinned(gone, False)

    def pfn_runs(self, first: int, last: int) -> list[tuple[int, int, int]]:
        """Frames of held pages [first, last] as runs: (first index, first pfn, count)."""
        if self.type is AddressType.DMABUF:
            if self.dmabuf_revoked:
                return []
            pfn = (self.dmabuf_phys[0] + self.start) >> PAGE_SHIFT
            return [(first, pfn + first, last - first + 1)]
        return [(s, pfn, e - s) for s, e, pfn in self.pinned.overlapping(first, last + 1)]

    # -- dma-buf (iopt_map_dmabuf, iopt_revoke_notify) ---------------------------------------
    @property
    def dmabuf_revoked(self) -> bool:
        return self.type is AddressType.DMABUF and not self.dmabuf_phys[1]

    def dmabuf_track(self, key: tuple[int, int], unmap: Callable[[], None]) -> None:
        """``iopt_dmabuf_track_domain``: an area of these pages is now in a domain."""
        self.dmabuf_tracks[key] = unmap

    def dmabuf_untrack(self, key: tuple[int, int]) -> None:
        self.dmabuf_tracks.pop(key, None)

    def _revoke_notify(self) -> None:
        """The exporter revoked the buffer: unmap it from every domain, now."""
        if self.dmabuf_revoked:
            return
        for unmap in list(self.dmabuf_tracks.values()):
            unmap()
        self.dmabuf_phys = (self.dmabuf_phys[0], 0)

    def pfns_of(self, first: int, last: int) -> list[int]:
        """One frame per page of held pages (for small ranges: access pins)."""
        out: list[int] = []
        for _s, pfn, n in self.pfn_runs(first, last):
            out.extend(range(pfn, pfn + n))
        return out

    # -- CPU access (iopt_pages_rw_access) ---------------------------------------------------
    def rw(self, current: Task, start_byte: int, data: bytes | bytearray | None, length: int,
           flags: int) -> bytes:
        """Read ``length`` bytes at ``start_byte`` of the pages, or write ``data`` there."""
        write = bool(flags & ACCESS_RW_WRITE)
        if write and not self.writable:
            raise IommuError(errno.EPERM, "the pages are not writable")
        if self.type is AddressType.DMABUF:
            raise IommuError(errno.EINVAL, "dma-buf pages have no CPU access")
        change_mm = current.mm is not self.source_mm or bool(flags & ACCESS_RW_SLOW_PATH)
        # copy_to/from_user in the source mm (kthread_use_mm if it is another one).
        direct = not (change_mm and not flags & ACCESS_RW_KTHREAD)
        if self.type is AddressType.USER and direct and self.source_mm.alive:
            va = self.uptr + start_byte
            if write:
                assert data is not None
                self.source_mm.write(va, data)
                return b""
            return self.source_mm.read(va, length)
        single = start_byte >> PAGE_SHIFT == (start_byte + length - 1) >> PAGE_SHIFT
        if self.type is AddressType.USER and not direct and single and self.source_mm.alive:
            # iopt_pages_rw_page: one page pinned from the source mm, no pfn reader
            if self.subsys.should_fail("iopt_pages_rw_page"):
                raise IommuError(errno.EINVAL, "fail-nth: iopt_pages_rw_page")
            return self._rw_slow(start_byte, data, length, write, reader=False)
        return self._rw_slow(start_byte, data, length, write)

    def _rw_slow(self, start_byte: int, data: bytes | bytearray | None, length: int,
                 write: bool, reader: bool = True) -> bytes:
        """Through the frames: held pages as they are, the others pinned for the copy, a
        batch at a time (``iopt_pages_rw_slow``, whose pfn reader allocates its batch and
        page list: ENOMEM points)."""
        first = start_byte >> PAGE_SHIFT
        last = (start_byte + length - 1) >> PAGE_SHIFT
        temp: list[PfnRun] = []
        subsys = self.subsys
        try:
            if reader and subsys.should_fail("temp_kmalloc batch"):
                raise IommuError(errno.ENOMEM, "fail-nth: temp_kmalloc of the pfn batch")
            gaps = list(self.users.gaps(first, last + 1))
            if reader and gaps and subsys.should_fail("temp_kmalloc upages"):
                raise IommuError(errno.ENOMEM, "fail-nth: temp_kmalloc of the page list")
            batch = max(1, subsys.temp_memory_limit // 8)
            frames: list[tuple[int, int, int]] = []  # (index, pfn, count)
            for gs, ge in gaps:
                pos = gs
                while pos < ge:
                    n = min(batch, ge - pos)
                    for pfn, cnt in self._pin_source(pos, n, inject=reader):
                        temp.append((pfn, cnt))
                        frames.append((pos, pfn, cnt))
                        pos += cnt
            frames += self.pfn_runs(first, last)
            frames.sort()
            mem = self.alloc.mem
            out = bytearray()
            for idx, pfn, cnt in frames:
                lo = max(start_byte, idx << PAGE_SHIFT)
                hi = min(start_byte + length, (idx + cnt) << PAGE_SHIFT)
                if lo >= hi:
                    continue
                pa = (pfn << PAGE_SHIFT) + lo - (idx << PAGE_SHIFT)
                if write:
                    assert data is not None
                    mem.write(pa, memoryview(data)[lo - start_byte : hi - start_byte])
                else:
                    out += mem.read(pa, hi - lo)
            return bytes(out)
        finally:
            for pfn, cnt in temp:
                self.alloc.unpin(pfn, cnt)

    # -- lifetime ----------------------------------------------------------------------------
    def get(self) -> None:
        self.kref += 1

    def put(self) -> None:
        """``iopt_put_pages``: the last reference must find nothing pinned."""
        self.kref -= 1
        if self.kref == 0:
            if self.users:
                raise IommuError(errno.EBUSY, "iopt_pages released with pinned pages")
            if self.file is not None:
                self.file.fput()
                self.file = None
            if self.dmabuf_attach is not None:
                self.dmabuf_attach.dmabuf.detach(self.dmabuf_attach)
                self.dmabuf_attach = None


def iopt_alloc_user_pages(ictx: IommufdCtx, uptr: int, length: int, writable: bool
                          ) -> tuple[IoptPages, int]:
    """``iopt_alloc_user_pages``: the pages behind [uptr, uptr+length) and the offset of
    ``uptr`` in them. EOVERFLOW if the range wraps; EINVAL for a zero or huge length."""
    if uptr + length > ULONG_MAX:
        raise IommuError(errno.EOVERFLOW, "user_va + length overflows")
    down = uptr & ~(PAGE_SIZE - 1)
    start_byte = uptr - down
    pages = IoptPages(ictx, start_byte, length, writable)
    pages.uptr = down
    return pages, start_byte


def iopt_alloc_file_pages(ictx: IommufdCtx, file: File, start: int, length: int,
                          writable: bool) -> tuple[IoptPages, int]:
    """``iopt_alloc_file_pages``: pages of ``file`` from byte ``start``; any file is
    accepted here, one without a page cache fails when it is pinned."""
    start_byte = start & (PAGE_SIZE - 1)
    pages = IoptPages(ictx, start_byte, length, writable)
    file.get_file()
    pages.file = file
    pages.start = start - start_byte
    pages.type = AddressType.FILE
    return pages, start_byte


#: ``MAX_NPFNS``: the largest number of pages one batch may describe.
_MAX_NPFNS = ULONG_MAX // 8


def iopt_alloc_dmabuf_pages(ictx: IommufdCtx, dmabuf: DmaBuf, start: int, length: int,
                            writable: bool) -> tuple[IoptPages, int]:
    """``iopt_alloc_dmabuf_pages``: the buffer's physical range, imported once (no pins,
    no accounting); the attachment's revoke callback unmaps it from every domain."""
    if dmabuf.size <= start + length - 1 or length // PAGE_SIZE >= _MAX_NPFNS:
        raise IommuError(errno.EINVAL, f"[{start:#x}, +{length:#x}) is outside the "
                         f"{dmabuf.size:#x}-byte dma-buf")
    start_byte = start & (PAGE_SIZE - 1)
    pages = IoptPages(ictx, start_byte, length, writable)
    pages.account_mode = ACCOUNT_NONE
    pages.type = AddressType.DMABUF
    pages.start = start - start_byte
    att = dmabuf.attach(pages._revoke_notify)
    try:
        pages.dmabuf_phys = dmabuf.exporter.iommufd_map()
    except IommuError:
        dmabuf.detach(att)
        raise
    pages.dmabuf_attach = att
    return pages, start_byte
