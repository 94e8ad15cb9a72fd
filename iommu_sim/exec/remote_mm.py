"""A real process's address space as the simulated kernel sees it (``RemoteMm``).

User memory access is ``process_vm_readv``/``process_vm_writev``. A page the kernel looks
up or pins gets a frame number that stays the same while the process maps it:

* a page of a shared file mapping (MAP_SHARED anonymous memory, memfd, hugetlbfs, files)
  is the file's page, seen through a :class:`HostWindow` (the file mapped into the
  supervisor), so the frame *is* the program's page and outlives the process;
* a page of a private mapping is read and written in the process at its address
  (:class:`RemotePage`); when the process unmaps it, a pinned page's contents are copied
  first and its frame lives on with them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import mmap
import os
from collections.abc import Callable, Iterator

import attrs

from iommu_core.errors import IommuError
from iommu_core.platform.memory import PAGE_SHIFT, PAGE_SIZE, PhysicalMemory
from iommu_core.platform.mm import MmStruct, efault
from iommu_core.platform.page_alloc import PageAllocator, PfnRun
from iommu_core.platform.ranges import RangeMap
from iommu_sim.exec.seccomp import fs_type, vm_read, vm_write

HPAGE_NR = 512
#: Frame numbers reserved for a file at least (so that it can grow without moving).
_WINDOW_MIN_PAGES = 1 << 18  # 1 GiB
TMPFS_MAGIC = 0x0102_1994
HUGETLBFS_MAGIC = 0x9584_58F6


@attrs.frozen
class MapsEntry:
    """A line of ``/proc/<pid>/maps``."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def hugetlb(self) -> bool:
        return self.path.startswith("/anon_hugepage") or "hugepages" in self.path


def read_maps(pid: int) -> list[MapsEntry]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            text = f.read()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, hi = parts[0].split("-")
        out.append(MapsEntry(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16),
                             parts[3], int(parts[4]), parts[5] if len(parts) > 5 else ""))
    return out


class HostWindow:
    """A file of the program mapped into the supervisor: frame ``base + i`` is file page i.

    The frame range is reserved once (growth of the file stays inside it); the host
    mapping follows the file's size.
    """

    def __init__(self, alloc: PageAllocator, fd: int, key: tuple[int, int]) -> None:
        self.alloc = alloc
        self.fd = fd
        self.key = key
        self.fs_type = fs_type(fd)
        self.hugetlb = self.fs_type == HUGETLBFS_MAGIC
        size = os.fstat(fd).st_size
        self.npages = max(_WINDOW_MIN_PAGES, (size + PAGE_SIZE - 1) >> PAGE_SHIFT)
        self.npages = (self.npages + HPAGE_NR - 1) & ~(HPAGE_NR - 1)
        self.base = alloc.alloc_range(self.npages, HPAGE_NR, "user")
        self._map: mmap.mmap | None = None
        self._mapped = 0
        alloc.mem.attach_window(self.base, self.npages, self)

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def _ensure(self, nbytes: int) -> mmap.mmap:
        if self._map is None or self._mapped < nbytes:
            size = max(nbytes, self.size)
            size = (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            if self.hugetlb:
                size = (size + (2 << 20) - 1) & ~((2 << 20) - 1)
            self.alloc.mem.clear_frames(self.base, self._mapped >> PAGE_SHIFT)
            self._map = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
            self._mapped = size
        return self._map

    def frame_buffer(self, pfn: int) -> memoryview:
        off = (pfn - self.base) << PAGE_SHIFT
        m = self._ensure(off + PAGE_SIZE)
        return memoryview(m)[off : off + PAGE_SIZE]

    def pfns(self, first_page: int, count: int) -> PfnRun:
        if first_page + count > self.npages:
            raise IommuError(errno.EFAULT, "file grew past its reserved frames")
        self._ensure((first_page + count) << PAGE_SHIFT)
        return self.base + first_page, count

    @property
    def pinned(self) -> bool:
        return self.alloc.pin_count_in(self.base, self.npages) > 0

    def close(self) -> None:
        """Let go of the file (its pages go when the program lets go too: a hugetlb page
        returns to the pool); the frame numbers are free again."""
        self.alloc.mem.detach_window(self.base, self.npages)
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view is out there: it goes with it
                self._map.close()
            self._map = None
        os.close(self.fd)
        self.alloc.free_range(self.base, self.npages)


class HostWindows:
    """Every file of the program whose pages the Machine looked up, by (st_dev, st_ino)."""

    def __init__(self, alloc: PageAllocator) -> None:
        self.alloc = alloc
        self.by_key: dict[tuple[int, int], HostWindow] = {}

    def window(self, open_file: Callable[[], int]) -> HostWindow:
        """The window of the file ``open_file()`` opens (reusing one for the same file)."""
        fd = open_file()
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        w = self.by_key.get(key)
        if w is not None:
            os.close(fd)
            return w
        w = self.by_key[key] = HostWindow(self.alloc, fd, key)
        return w

    def gc(self) -> None:
        """Close the windows no pin holds: a later look-up opens the file again."""
        for key, w in list(self.by_key.items()):
            if not w.pinned:
                del self.by_key[key]
                w.close()

    def close_all(self) -> None:
        for w in self.by_key.values():
            w.close()
        self.by_key.clear()


class RemotePage:
    """A page of a private mapping, read and written in the process at its address."""

    __slots__ = ("pid", "va")

    def __init__(self, pid: int, va: int) -> None:
        self.pid = pid
        self.va = va

    def __getitem__(self, s: slice) -> bytes:
        start = s.start or 0
        stop = PAGE_SIZE if s.stop is None else s.stop
        try:
            return vm_read(self.pid, self.va + start, stop - start)
        except OSError:
            return bytes(stop - start)  # the process is gone: nothing left to read

    def __setitem__(self, s: slice, data: bytes | bytearray | memoryview) -> None:
        start = s.start or 0
        with contextlib.suppress(OSError):  # the process is gone: the DMA lands nowhere
            vm_write(self.pid, self.va + start, data)

    def __len__(self) -> int:
        return PAGE_SIZE


class RemoteMm(MmStruct):
    """The address space of process ``pid``."""

    def __init__(self, mem: PhysicalMemory, alloc: PageAllocator, pid: int,
                 windows: HostWindows, is_device_file: Callable[[MapsEntry], bool],
                 epoch: Callable[[], int] = lambda: 0) -> None:
        super().__init__(mem, alloc)
        self.pid = pid
        #: The supervisor's count of system calls served: the process is stopped in one,
        #: so its mappings cannot change while the count stays the same.
        self.epoch = epoch
        self._maps: tuple[int, list[MapsEntry]] | None = None
        self._windows: dict[tuple[int, int], HostWindow] = {}
        self.windows = windows
        #: Mappings of the Machine's own files (VM_PFNMAP regions): never pinnable.
        self.is_device_file = is_device_file
        #: Private pages looked up: page number -> frame.
        self.private: RangeMap[int] = RangeMap(linear=True)

    # -- uaccess --------------------------------------------------------------------------
    def read(self, va: int, n: int) -> bytes:
        if n < 0 or va < 0 or not self.alive:
            raise efault(va)
        try:
            return vm_read(self.pid, va, n)
        except OSError:
            raise efault(va) from None

    def write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        if va < 0 or not self.alive:
            raise efault(va)
        try:
            vm_write(self.pid, va, data)
        except OSError:
            raise efault(va) from None

    def maps(self) -> list[MapsEntry]:
        """``/proc/<pid>/maps``, read once per system call."""
        now = self.epoch()
        if self._maps is None or self._maps[0] != now:
            self._maps = (now, read_maps(self.pid))
            self._windows.clear()
        return self._maps[1]

    def check_range(self, va: int, n: int) -> None:
        end = va + n
        for e in self.maps():
            if e.end <= va:
                continue
            if e.start > va:
                break
            va = e.end
            if va >= end:
                return
        if va < end:
            raise efault(va)

    # -- page lookup ----------------------------------------------------------------------
    def _pieces(self, va: int, n: int) -> Iterator[tuple[MapsEntry, int, int]]:
        end = va + n
        for e in self.maps():
            if e.end <= va:
                continue
            if e.start > va:
                raise efault(va)
            hi = min(end, e.end)
            yield e, va, hi
            va = hi
            if va >= end:
                return
        if va < end:
            raise efault(va)

    def _private_pfn(self, va: int) -> int:
        vpn = va >> PAGE_SHIFT
        pfn = self.private.get(vpn)
        if pfn is None:
            (pfn,) = self.alloc.alloc_scattered(1, "user")
            self.mem.frames[pfn] = RemotePage(self.pid, vpn << PAGE_SHIFT)
            self.private.set(vpn, vpn + 1, pfn)
        return pfn

    def _resolve(self, va: int, npages: int, write: bool, pin: bool) -> list[PfnRun]:
        if va & (PAGE_SIZE - 1):
            raise IommuError(errno.EINVAL, "address not page aligned")
        if not self.alive:
            raise efault(va)
        pieces = list(self._pieces(va, npages << PAGE_SHIFT))
        for e, s, _hi in pieces:
            if self.is_device_file(e) or "r" not in e.perms or (write and "w" not in e.perms):
                raise efault(s)
        runs: list[PfnRun] = []

        def add(pfn: int, n: int) -> None:
            if runs and runs[-1][0] + runs[-1][1] == pfn:
                runs[-1] = (runs[-1][0], runs[-1][1] + n)
            else:
                runs.append((pfn, n))

        for e, s, hi in pieces:
            if e.shared and (e.inode or e.path):
                w = self._windows.get((e.start, e.end))
                if w is None or w.key not in self.windows.by_key:
                    path = f"/proc/{self.pid}/map_files/{e.start:x}-{e.end:x}"
                    flags = os.O_RDWR if "w" in e.perms else os.O_RDONLY
                    try:
                        w = self.windows.window(functools.partial(os.open, path, flags))
                    except OSError:
                        raise efault(s) from None
                    self._windows[(e.start, e.end)] = w
                first = (e.offset + s - e.start) >> PAGE_SHIFT
                pfn, n = w.pfns(first, (hi - s) >> PAGE_SHIFT)
                add(pfn, n)
            else:
                for a in range(s, hi, PAGE_SIZE):
                    add(self._private_pfn(a), 1)
        if pin:
            for pfn, n in runs:
                self.alloc.pin(pfn, n)
        return runs

    def pin_user_pages(self, va: int, npages: int, write: bool) -> list[PfnRun]:
        return self._resolve(va, npages, write, True)

    def get_user_page(self, va: int, write: bool = False) -> int:
        (pfn, _n), = self._resolve(va & ~(PAGE_SIZE - 1), 1, write, False)
        return pfn

    def get_user_pages(self, va: int, npages: int, write: bool = False) -> list[PfnRun]:
        return self._resolve(va, npages, write, False)

    def is_compound(self, va: int) -> bool:
        for e in self.maps():
            if e.start <= va < e.end:
                return e.hugetlb
        return False

    # -- the program changes its mappings ------------------------------------------------------
    def forget(self, start: int, end: int) -> None:
        """``[start, end)`` is about to be unmapped or replaced: its private pages stop
        being the pages at those addresses. A pinned one keeps its contents (copied now)
        in a frame of its own until unpinned; the others are freed."""
        mem, alloc = self.mem, self.alloc
        for s, e, pfn in self.private.remove(start >> PAGE_SHIFT,
                                             (end + PAGE_SIZE - 1) >> PAGE_SHIFT):
            for k in range(e - s):
                p = pfn + k
                if alloc.pin_count(p):
                    mem.frames[p] = bytearray(RemotePage(self.pid, (s + k) << PAGE_SHIFT)[:])
                else:
                    mem.frames.pop(p, None)
                alloc.put_user_pages(p, 1)

    def exit_mmap(self) -> None:
        if self.alive:
            self.forget(0, 1 << 47)
        super().exit_mmap()
