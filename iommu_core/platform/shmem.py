"""shmem: the page cache of a RAM-backed file (mm/shmem.c, mm/memfd.c).

One :class:`ShmemObject` holds the pages of a ``memfd_create`` file or of a
``MAP_SHARED | MAP_ANONYMOUS`` mapping: every mapping of it and the file itself see the
same frames. Pages are allocated on first touch, by runs, and are never huge (a distro
kernel's ``shmem_enabled`` is ``never``). :class:`ShmemFile` is the memfd.
"""

from __future__ import annotations

import errno

from iommu_core.errors import IommuError
from iommu_core.platform.files import File, PageCacheRegion, VmRegion
from iommu_core.platform.memory import PAGE_SHIFT, PAGE_SIZE
from iommu_core.platform.page_alloc import PageAllocator
from iommu_core.platform.ranges import RangeMap

#: memfd_create(2) flags.
MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
MFD_HUGETLB = 0x0004
MFD_NOEXEC_SEAL = 0x0008
MFD_EXEC = 0x0010
_MFD_ALL = MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | MFD_NOEXEC_SEAL | MFD_EXEC
#: The largest file (MAX_LFS_FILESIZE on 64-bit).
MAX_LFS_FILESIZE = (1 << 63) - 1


class ShmemObject:
    """A shmem inode's pages: page index -> frame, by runs."""

    __slots__ = ("alloc", "name", "pages", "size", "users")

    def __init__(self, alloc: PageAllocator, size: int, name: str = "shmem") -> None:
        self.alloc = alloc
        self.name = name
        #: i_size in bytes (a MAP_SHARED anonymous object: the mapping's length).
        self.size = size
        self.pages: RangeMap[int] = RangeMap(linear=True)
        #: The inode's holders: open files and mappings.
        self.users = 1

    def get(self) -> None:
        self.users += 1

    def put(self) -> None:
        self.users -= 1
        if self.users == 0:
            self.truncate_pages(0)

    def lookup(self, first: int, count: int) -> list[tuple[int, int, int | None]]:
        """Runs over ``[first, first+count)``: (index, n, first pfn or None for a hole)."""
        return self.pages.runs(first, count)

    def populate(self, first: int, count: int) -> list[tuple[int, int, int]]:
        """The frames of ``[first, first+count)``, allocating the missing ones (one run
        a hole): runs (index, n, first pfn)."""
        for s, e in list(self.pages.gaps(first, first + count)):
            for k, pfn in enumerate(self.alloc.alloc_scattered(e - s, "user")):
                self.pages.set(s + k, s + k + 1, pfn)
        return [(s, e - s, p) for s, e, p in self.pages.overlapping(first, first + count)]

    def truncate_pages(self, first: int) -> None:
        """Drop the pages from index ``first`` on (pinned ones stay until unpinned)."""
        for s, e, pfn in self.pages.remove(first, 1 << 62):
            self.alloc.put_user_pages(pfn, e - s)

    def read(self, pos: int, n: int) -> bytes:
        """Bytes at ``pos`` (holes read as zero; the caller bounds by i_size)."""
        mem = self.alloc.mem
        out = bytearray()
        for idx, cnt, pfn in self.lookup(pos >> PAGE_SHIFT,
                                         ((pos + n + PAGE_SIZE - 1) >> PAGE_SHIFT)
                                         - (pos >> PAGE_SHIFT)):
            lo = max(pos, idx << PAGE_SHIFT)
            hi = min(pos + n, (idx + cnt) << PAGE_SHIFT)
            if pfn is None:
                out += bytes(hi - lo)
            else:
                out += mem.read((pfn << PAGE_SHIFT) + lo - (idx << PAGE_SHIFT), hi - lo)
        return bytes(out)

    def write(self, pos: int, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        mem = self.alloc.mem
        mv = memoryview(data)
        for idx, cnt, pfn in self.populate(pos >> PAGE_SHIFT,
                                           ((pos + len(mv) + PAGE_SIZE - 1) >> PAGE_SHIFT)
                                           - (pos >> PAGE_SHIFT)):
            lo = max(pos, idx << PAGE_SHIFT)
            hi = min(pos + len(mv), (idx + cnt) << PAGE_SHIFT)
            mem.write((pfn << PAGE_SHIFT) + lo - (idx << PAGE_SHIFT), mv[lo - pos : hi - pos])


class ShmemFile(File):
    """A memfd (``memfd_create``): a shmem file with its own offset."""

    def __init__(self, alloc: PageAllocator, name: str, flags: int = 0) -> None:
        if flags & ~_MFD_ALL:
            raise IommuError(errno.EINVAL, f"unknown memfd flags {flags:#x}")
        if len(name.encode()) > 249:
            raise IommuError(errno.EINVAL, "memfd name longer than 249 bytes")
        self.name = f"/memfd:{name}"
        self.flags = flags
        self.obj = ShmemObject(alloc, 0, self.name)
        self.pos = 0

    # -- file_operations ----------------------------------------------------------------
    def read(self, n: int) -> bytes:
        data = self.pread(n, self.pos)
        self.pos += len(data)
        return data

    def write(self, data: bytes) -> int:
        n = self.pwrite(data, self.pos)
        self.pos += n
        return n

    def pread(self, n: int, offset: int) -> bytes:
        if offset < 0:
            raise IommuError(errno.EINVAL, "negative offset")
        n = max(0, min(n, self.obj.size - offset))
        return self.obj.read(offset, n) if n else b""

    def pwrite(self, data: bytes, offset: int) -> int:
        if offset < 0:
            raise IommuError(errno.EINVAL, "negative offset")
        if offset + len(data) > MAX_LFS_FILESIZE:
            raise IommuError(errno.EFBIG, "write past the largest file size")
        self.obj.write(offset, data)
        self.obj.size = max(self.obj.size, offset + len(data))
        return len(data)

    def ftruncate(self, length: int) -> None:
        if length < 0 or length > MAX_LFS_FILESIZE:
            raise IommuError(errno.EINVAL, f"bad length {length}")
        if length < self.obj.size:
            self.obj.truncate_pages((length + PAGE_SIZE - 1) >> PAGE_SHIFT)
            tail = length & (PAGE_SIZE - 1)
            if tail:  # the partial last page reads as zero past the new end
                idx = length >> PAGE_SHIFT
                run = self.obj.pages.get(idx)
                if run is not None:
                    self.obj.alloc.mem.write((run << PAGE_SHIFT) + tail,
                                             bytes(PAGE_SIZE - tail))
        self.obj.size = length

    def mmap(self, length: int, offset: int, shared: bool, prot_exec: bool) -> VmRegion:
        if offset & (PAGE_SIZE - 1):
            raise IommuError(errno.EINVAL, "offset not page aligned")
        return PageCacheRegion(self.obj, offset >> PAGE_SHIFT)

    def release(self) -> None:
        self.obj.put()

    def pin_folios(self, start: int, end: int) -> list[tuple[int, int]]:
        if start < 0 or start > end:
            raise IommuError(errno.EINVAL, "bad file range")
        if end >= self.obj.size:
            raise IommuError(errno.EINVAL, f"byte {end:#x} is past the end of {self.name}")
        first, last = start >> PAGE_SHIFT, end >> PAGE_SHIFT
        runs = [(pfn, n) for _i, n, pfn in self.obj.populate(first, last - first + 1)]
        for pfn, n in runs:
            self.obj.alloc.pin(pfn, n)
        return runs
