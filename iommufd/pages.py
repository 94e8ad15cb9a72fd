"""``iopt_pages`` (drivers/iommu/iommufd/pages.c): a range of user memory that areas of
one or more IOAS map, pinned on demand and accounted against RLIMIT_MEMLOCK.

A page of an ``IoptPages`` is pinned exactly once, whatever the number of holders:
each area of these pages that is mapped into domains (``area.storage_domain``) and each
access pin holds the page index; the page is pinned when its first holder arrives and
unpinned when the last one leaves. So two domains over one area cost one pin, and a MAP
with no domain and no access touches no user memory at all (the lazy case).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from iommu_core.errors import IommuError
from iommu_core.platform.memory import PAGE_SHIFT, PAGE_SIZE
from iommufd.private import ACCOUNT_MM, ACCOUNT_NONE, ACCOUNT_USER, ULONG_MAX

if TYPE_CHECKING:
    from iommufd.private import IommufdCtx

#: ``SIZE_MAX - PAGE_SIZE``: the largest length ``iopt_alloc_pages`` accepts.
_MAX_LENGTH = ULONG_MAX - PAGE_SIZE


class IoptPages:
    """``struct iopt_pages`` over user virtual memory (``IOPT_ADDRESS_USER``)."""

    __slots__ = ("account_mode", "ictx", "kref", "mm", "npages", "npinned", "pfns", "subsys",
                 "task", "uptr", "users", "writable")

    def __init__(self, ictx: IommufdCtx, uptr: int, npages: int, writable: bool) -> None:
        self.ictx = ictx
        self.subsys = ictx.subsys
        self.task = ictx.task
        self.mm = ictx.task.mm
        #: Page-aligned start of the user range and its length in pages.
        self.uptr = uptr
        self.npages = npages
        self.writable = writable
        # CAP_IPC_LOCK bypasses the memlock accounting altogether.
        self.account_mode = ACCOUNT_NONE if self.task.cap_ipc_lock else ACCOUNT_USER
        #: index -> pinned frame; index -> holders (areas in domains + access pins).
        self.pfns: dict[int, int] = {}
        self.users: dict[int, int] = {}
        self.npinned = 0
        #: Areas (and in-flight copies) referencing these pages.
        self.kref = 1

    # -- accounting (iopt_pages_update_pinned) ---------------------------------------------
    def _update_pinned(self, npages: int, inc: bool) -> None:
        if not npages:
            return
        limit = self.task.rlimit_memlock >> PAGE_SHIFT
        if self.account_mode == ACCOUNT_USER:
            if inc:
                if self.subsys.user_locked_vm + npages > limit:
                    raise IommuError(errno.ENOMEM, "RLIMIT_MEMLOCK exceeded (user accounting)")
                self.subsys.user_locked_vm += npages
            else:
                self.subsys.user_locked_vm -= npages
        elif self.account_mode == ACCOUNT_MM:
            if inc:
                if self.mm.locked_vm + npages > limit:
                    raise IommuError(errno.ENOMEM, "RLIMIT_MEMLOCK exceeded (mm accounting)")
                self.mm.locked_vm += npages
            else:
                self.mm.locked_vm -= npages
        self.mm.pinned_vm += npages if inc else -npages

    # -- pinning -----------------------------------------------------------------------------
    def _pin_missing(self, first: int, last: int) -> list[int]:
        """Pin the pages of [first, last] nobody holds yet, in batches sized by the
        temporary memory limit (as the kernel's pfn reader does). All or nothing."""
        batch = max(1, self.subsys.temp_memory_limit // 8)
        done: list[int] = []
        idx = first
        try:
            while idx <= last:
                if self.users.get(idx, 0):
                    idx += 1
                    continue
                end = idx
                while end < last and end + 1 - idx < batch and not self.users.get(end + 1, 0):
                    end += 1
                pfns = self.mm.pin_pages(self.uptr + (idx << PAGE_SHIFT), end - idx + 1)
                for k, pfn in enumerate(pfns):
                    self.pfns[idx + k] = pfn
                    done.append(idx + k)
                idx = end + 1
            self._update_pinned(len(done), True)
        except IommuError:
            self.mm.unpin_pages([self.pfns.pop(i) for i in done])
            raise
        self.npinned += len(done)
        return done

    def add_users(self, first: int, last: int) -> list[int]:
        """Hold pages [first, last] (pinning the ones not yet held); their frames."""
        if first > last or last >= self.npages:
            raise IommuError(errno.EINVAL, f"page range {first}..{last} outside {self.npages}")
        self._pin_missing(first, last)
        users = self.users
        for i in range(first, last + 1):
            users[i] = users.get(i, 0) + 1
        pfns = self.pfns
        return [pfns[i] for i in range(first, last + 1)]

    def remove_users(self, first: int, last: int) -> None:
        """Drop one hold on pages [first, last]; unpin those nobody holds any more."""
        users, pfns = self.users, self.pfns
        gone: list[int] = []
        for i in range(first, last + 1):
            n = users[i] - 1
            if n:
                users[i] = n
            else:
                del users[i]
                gone.append(pfns.pop(i))
        if gone:
            self.mm.unpin_pages(gone)
            self.npinned -= len(gone)
            self._update_pinned(len(gone), False)

    def pfns_of(self, first: int, last: int) -> list[int]:
        """Frames of held pages (every index must be held)."""
        pfns = self.pfns
        return [pfns[i] for i in range(first, last + 1)]

    # -- CPU access (iopt_pages_rw_access) ---------------------------------------------------
    def rw(self, start_byte: int, data: bytearray | None, length: int, write: bool) -> bytes:
        """Read ``length`` bytes at ``start_byte`` of the range, or write ``data`` there.
        Pinned pages are accessed through their frames, the others through the mm."""
        out = bytearray()
        pos = 0
        mem = self.mm.mem
        while pos < length:
            byte = start_byte + pos
            idx = byte >> PAGE_SHIFT
            off = byte & (PAGE_SIZE - 1)
            n = min(length - pos, PAGE_SIZE - off)
            pfn = self.pfns.get(idx)
            if write:
                assert data is not None
                chunk = data[pos : pos + n]
                if pfn is not None:
                    mem.write((pfn << PAGE_SHIFT) | off, chunk)
                else:
                    self.mm.write(self.uptr + byte, chunk)
            elif pfn is not None:
                out += mem.read((pfn << PAGE_SHIFT) | off, n)
            else:
                out += self.mm.read(self.uptr + byte, n)
            pos += n
        return bytes(out)

    # -- lifetime ----------------------------------------------------------------------------
    def get(self) -> None:
        self.kref += 1

    def put(self) -> None:
        """``iopt_put_pages``: the last reference must find nothing pinned."""
        self.kref -= 1
        if self.kref == 0 and self.users:
            raise IommuError(errno.EBUSY, "iopt_pages released with pinned pages")


def iopt_alloc_user_pages(ictx: IommufdCtx, uptr: int, length: int, writable: bool
                          ) -> tuple[IoptPages, int]:
    """``iopt_alloc_user_pages``: the pages behind [uptr, uptr+length) and the offset of
    ``uptr`` in them. EOVERFLOW if the range wraps; EINVAL for a zero or huge length."""
    end = uptr + length
    if end > ULONG_MAX:
        raise IommuError(errno.EOVERFLOW, "user_va + length overflows")
    if length == 0 or length > _MAX_LENGTH:
        raise IommuError(errno.EINVAL, f"bad length {length:#x}")
    down = uptr & ~(PAGE_SIZE - 1)
    start_byte = uptr - down
    npages = (length + start_byte + PAGE_SIZE - 1) >> PAGE_SHIFT
    return IoptPages(ictx, down, npages, writable), start_byte
