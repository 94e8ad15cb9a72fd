"""A simulated address space: VMAs over the objects that back them (mm/mmap.c, mm/memory.c).

Every VMA maps a range of an object's pages: private anonymous memory (faulted in on
first touch, THP-backed in 2 MiB-aligned parts of large mappings), a shmem object
(``MAP_SHARED | MAP_ANONYMOUS``, a memfd), a private copy-on-write view of a file, or a
file's VM_PFNMAP region (device or driver pages, registers). Everything is tracked by
runs: mapping, touching or pinning 1 TiB costs a handful of runs, not a Python object per
page. ``fork`` copies private memory (a pinned page stays with the parent, as Linux's
``page_needs_cow_for_dma`` does) and shares the rest.
"""

from __future__ import annotations

import abc
import errno
from collections.abc import Iterator

import attrs
from sortedcontainers import SortedDict

from iommu_core.errors import IommuError
from iommu_core.platform.files import File, PageCacheRegion, PfnRegion, VmRegion
from iommu_core.platform.memory import (
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PhysicalMemory,
    as_bytes,
)
from iommu_core.platform.mm import HPAGE_NR, HPAGE_SIZE, MMAP_TOP, TASK_SIZE, MmStruct, efault
from iommu_core.platform.page_alloc import PageAllocator, PfnRun
from iommu_core.platform.ranges import RangeMap
from iommu_core.platform.shmem import ShmemObject

#: A run of an object's pages: (first index, count, first pfn or None for a hole).
Run = tuple[int, int, int | None]


class VmObject(abc.ABC):
    """What backs a VMA. Page indexes are the object's own (see :attr:`Vma.pgoff`)."""

    pinnable = True

    @abc.abstractmethod
    def resolve(self, first: int, count: int, populate: bool, unshare: bool,
                lo: int, hi: int) -> list[Run]:
        """Runs over ``[first, first+count)``. ``populate`` allocates missing pages;
        ``unshare`` (a write, or a long-term pin of a private mapping) breaks sharing with
        the file. ``[lo, hi)`` is the VMA's index range (THP fits inside it)."""

    def unmap(self, first: int, count: int) -> None:  # noqa: B027 - shared: nothing to drop
        """The VMA no longer maps ``[first, first+count)``: private pages go."""

    def get(self) -> None:  # noqa: B027 - refcounted objects override
        pass

    def put(self) -> None:  # noqa: B027
        pass

    def is_compound(self, idx: int) -> bool:
        return False


class AnonObject(VmObject):
    """Private anonymous memory: index = virtual page number."""

    def __init__(self, alloc: PageAllocator, thp: bool) -> None:
        self.alloc = alloc
        self.thp = thp
        self.pages: RangeMap[int] = RangeMap(linear=True)
        #: Index runs populated as transparent huge pages.
        self.huge: RangeMap[bool] = RangeMap()

    def _fault_huge(self, gs: int, ge: int, lo: int, hi: int) -> None:
        """Populate the whole free 2 MiB chunks that the hole ``[gs, ge)`` touches and that
        lie inside the VMA, consecutive chunks as one physically contiguous run."""
        c = max(gs & ~(HPAGE_NR - 1), (lo + HPAGE_NR - 1) & ~(HPAGE_NR - 1))
        run_start = None
        while True:
            ok = (c < ge and c + HPAGE_NR <= hi and not self.pages.covered(c, c + HPAGE_NR))
            if ok and run_start is None:
                run_start = c
            if not ok and run_start is not None:
                pfn = self.alloc.alloc_range(c - run_start, HPAGE_NR, "user")
                self.pages.set(run_start, c, pfn)
                self.huge.set(run_start, c, True)
                run_start = None
            if c >= ge or c + HPAGE_NR > hi:
                break
            c += HPAGE_NR

    def populate(self, first: int, count: int, lo: int, hi: int) -> None:
        for gs, ge in list(self.pages.gaps(first, first + count)):
            if self.thp and hi - lo >= HPAGE_NR:
                self._fault_huge(gs, ge, lo, hi)
            for s, e in list(self.pages.gaps(gs, ge)):
                for k, pfn in enumerate(self.alloc.alloc_scattered(e - s, "user")):
                    self.pages.set(s + k, s + k + 1, pfn)

    def resolve(self, first: int, count: int, populate: bool, unshare: bool,
                lo: int, hi: int) -> list[Run]:
        if populate:
            self.populate(first, count, lo, hi)
        return self.pages.runs(first, count)

    def unmap(self, first: int, count: int) -> None:
        for s, e, pfn in self.pages.remove(first, first + count):
            self.alloc.put_user_pages(pfn, e - s)
        self.huge.remove(first, first + count)

    def is_compound(self, idx: int) -> bool:
        return bool(self.huge.get(idx))

    def copy(self) -> AnonObject:
        """fork: a private copy of every populated page."""
        child = AnonObject(self.alloc, self.thp)
        mem = self.alloc.mem
        for s, e, pfn in self.pages.items():
            if self.huge.covered(s, e) == e - s and not s % HPAGE_NR:
                npfn = self.alloc.alloc_range(e - s, HPAGE_NR, "user")
                mem.copy_frames(npfn, pfn, e - s)
                child.pages.set(s, e, npfn)
                continue
            for k, new in enumerate(self.alloc.alloc_scattered(e - s, "user")):
                mem.copy_frames(new, pfn + k, 1)
                child.pages.set(s + k, s + k + 1, new)
        child.huge = self.huge.copy()
        return child


class SharedObject(VmObject):
    """A shared mapping of a shmem object (MAP_SHARED anonymous memory, a memfd)."""

    def __init__(self, shmem: ShmemObject) -> None:
        self.shmem = shmem

    def resolve(self, first: int, count: int, populate: bool, unshare: bool,
                lo: int, hi: int) -> list[Run]:
        if populate:
            return [(i, n, p) for i, n, p in self.shmem.populate(first, count)]
        return self.shmem.lookup(first, count)

    def get(self) -> None:
        self.shmem.get()

    def put(self) -> None:
        self.shmem.put()


class PrivateFileObject(VmObject):
    """A MAP_PRIVATE mapping of a shmem file: the file's pages until a write (or a
    long-term pin, which unshares) gives the mapping its own copy. Index = file page."""

    def __init__(self, alloc: PageAllocator, shmem: ShmemObject) -> None:
        self.anon = AnonObject(alloc, thp=False)
        self.shmem = shmem

    def resolve(self, first: int, count: int, populate: bool, unshare: bool,
                lo: int, hi: int) -> list[Run]:
        if unshare and populate:
            mem = self.anon.alloc.mem
            for gs, ge in list(self.anon.pages.gaps(first, first + count)):
                pfns = self.anon.alloc.alloc_scattered(ge - gs, "user")
                for i, n, src in self.shmem.lookup(gs, ge - gs):
                    for k in range(n):
                        if src is not None:
                            mem.copy_frames(pfns[i - gs + k], src + k, 1)
                for k, new in enumerate(pfns):
                    self.anon.pages.set(gs + k, gs + k + 1, new)
            return self.anon.pages.runs(first, count)
        out: list[Run] = []
        for i, n, pfn in self.anon.pages.runs(first, count):
            if pfn is not None:
                out.append((i, n, pfn))
            elif populate:
                out.extend((j, m, p) for j, m, p in self.shmem.populate(i, n))
            else:
                out.extend(self.shmem.lookup(i, n))
        return out

    def unmap(self, first: int, count: int) -> None:
        self.anon.unmap(first, count)

    def get(self) -> None:
        self.shmem.get()

    def put(self) -> None:
        self.shmem.put()

    def copy(self) -> PrivateFileObject:
        child = PrivateFileObject(self.anon.alloc, self.shmem)
        child.anon = self.anon.copy()
        return child


class PfnMapObject(VmObject):
    """A VM_PFNMAP region: never pinnable, index = page of the region."""

    pinnable = False

    def __init__(self, region: PfnRegion) -> None:
        self.region = region

    def resolve(self, first: int, count: int, populate: bool, unshare: bool,
                lo: int, hi: int) -> list[Run]:
        return [(first, count, (self.region.pa >> PAGE_SHIFT) + first)]

    def get(self) -> None:
        if self.region.open is not None:
            self.region.open()

    def put(self) -> None:
        if self.region.close is not None:
            self.region.close()


@attrs.define(eq=False)
class Vma:
    """``struct vm_area_struct``: ``[start, end)`` maps the object's pages from ``pgoff``."""

    start: int
    end: int
    obj: VmObject
    pgoff: int
    shared: bool
    file: File | None = None

    def index(self, va: int) -> int:
        return self.pgoff + ((va - self.start) >> PAGE_SHIFT)

    @property
    def lo(self) -> int:
        return self.pgoff

    @property
    def hi(self) -> int:
        return self.pgoff + ((self.end - self.start) >> PAGE_SHIFT)


class SimMm(MmStruct):
    """A simulated process's address space."""

    def __init__(self, mem: PhysicalMemory, alloc: PageAllocator) -> None:
        super().__init__(mem, alloc)
        self._vmas: SortedDict[int, Vma] = SortedDict()
        self._mmap_base = MMAP_TOP
        #: The VMA found last (``vmacache``): small user copies hit it. A VMA leaving
        #: the tree clears it; a split changes the VMA in place.
        self._hint: Vma | None = None

    # -- placing mappings -----------------------------------------------------------------
    def _place(self, length: int, addr: int | None, align: int) -> int:
        if length <= 0:
            raise IommuError(errno.EINVAL, "mmap length must be positive")
        if addr is not None:
            if addr & PAGE_MASK or addr + length > TASK_SIZE or addr < PAGE_SIZE:
                raise IommuError(errno.EINVAL, f"bad fixed mmap address {addr:#x}")
            if self._overlaps(addr, addr + length):
                raise IommuError(errno.EEXIST, f"{addr:#x} is already mapped")
            return addr
        va = (self._mmap_base - length) & ~(align - 1)
        while va >= PAGE_SIZE and self._overlaps(va, va + length):
            va = (self._vma_floor(va, va + length) - length) & ~(align - 1)
        if va < PAGE_SIZE:
            raise IommuError(errno.ENOMEM, f"no room for {length:#x} bytes")
        self._mmap_base = min(self._mmap_base, va)
        return va

    def _vma_floor(self, start: int, end: int) -> int:
        """The lowest start of the VMAs overlapping ``[start, end)``."""
        return min(v.start for v in self._overlapping(start, end))

    def mmap(self, length: int, addr: int | None = None, *, shared: bool = False) -> int:
        """Anonymous zero-filled memory: private (THP-backed where 2 MiB-aligned parts of a
        mapping of 2 MiB or more allow) or ``shared`` (a new shmem object).
        ``addr`` asks for MAP_FIXED_NOREPLACE."""
        if length <= 0:
            raise IommuError(errno.EINVAL, "mmap length must be positive")
        length = (length + PAGE_MASK) & ~PAGE_MASK
        align = HPAGE_SIZE if length >= HPAGE_SIZE and not shared else PAGE_SIZE
        va = self._place(length, addr, align)
        if shared:
            vma = Vma(va, va + length, SharedObject(ShmemObject(self.alloc, length,
                                                                "/dev/zero (deleted)")),
                      0, True)
        else:
            vma = Vma(va, va + length, AnonObject(self.alloc, thp=True), va >> PAGE_SHIFT,
                      False)
        self._vmas[va] = vma
        return va

    def mmap_region(self, length: int, region: VmRegion, shared: bool,
                    file: File | None = None, addr: int | None = None) -> int:
        """Map what a file's ``mmap`` returned; the mapping holds a reference on ``file``."""
        if length <= 0:
            raise IommuError(errno.EINVAL, "mmap length must be positive")
        length = (length + PAGE_MASK) & ~PAGE_MASK
        va = self._place(length, addr, PAGE_SIZE)
        obj: VmObject
        if isinstance(region, PageCacheRegion):
            obj = (SharedObject(region.obj) if shared
                   else PrivateFileObject(self.alloc, region.obj))
            obj.get()
            pgoff = region.pgoff
        else:
            obj = PfnMapObject(region)
            pgoff = 0
        if file is not None:
            file.get_file()
        self._vmas[va] = Vma(va, va + length, obj, pgoff, shared, file)
        return va

    # -- unmapping ------------------------------------------------------------------------
    def _drop(self, vma: Vma, start: int, end: int) -> None:
        """``[start, end)`` of ``vma`` goes away (the VMA itself is already split)."""
        vma.obj.unmap(vma.index(start), (end - start) >> PAGE_SHIFT)

    def _close(self, vma: Vma) -> None:
        vma.obj.put()
        if vma.file is not None:
            vma.file.fput()

    def _split(self, vma: Vma, at: int) -> Vma:
        """``__split_vma``: ``vma`` keeps ``[start, at)``; the new VMA ``[at, end)``."""
        new = Vma(at, vma.end, vma.obj, vma.index(at), vma.shared, vma.file)
        vma.end = at
        vma.obj.get()  # vm_ops->open, or one more holder of the shared object
        if vma.file is not None:
            vma.file.get_file()
        self._vmas[at] = new
        return new

    def munmap(self, va: int, length: int) -> None:
        if va & PAGE_MASK or length <= 0:
            raise IommuError(errno.EINVAL, "munmap needs a page-aligned address and a length")
        end = va + ((length + PAGE_MASK) & ~PAGE_MASK)
        for vma in list(self._overlapping(va, end)):
            if vma.start < va:
                vma = self._split(vma, va)
            if vma.end > end:
                self._split(vma, end)
            del self._vmas[vma.start]
            self._hint = None
            self._drop(vma, vma.start, vma.end)
            self._close(vma)

    def exit_mmap(self) -> None:
        self._hint = None
        for vma in list(self._vmas.values()):
            del self._vmas[vma.start]
            self._drop(vma, vma.start, vma.end)
            self._close(vma)
        super().exit_mmap()

    # -- lookup ---------------------------------------------------------------------------
    def _overlapping(self, start: int, end: int) -> Iterator[Vma]:
        vmas = self._vmas
        idx = max(0, vmas.bisect_right(start) - 1)
        keys = vmas.keys()
        while idx < len(keys) and keys[idx] < end:
            v = vmas[keys[idx]]
            idx += 1
            if v.end > start:
                yield v

    def _overlaps(self, start: int, end: int) -> bool:
        return next(self._overlapping(start, end), None) is not None

    def vma_of(self, va: int) -> tuple[int, int] | None:
        v = self._find(va)
        return None if v is None else (v.start, v.end)

    def _find(self, va: int) -> Vma | None:
        v = self._hint
        if v is not None and v.start <= va < v.end:
            return v
        vmas = self._vmas
        idx = vmas.bisect_right(va) - 1
        if idx < 0:
            return None
        v = vmas.peekitem(idx)[1]
        if va < v.end:
            self._hint = v
            return v
        return None

    def is_mapped(self, va: int) -> bool:
        return self._find(va) is not None

    def check_range(self, va: int, n: int) -> None:
        end = va + n
        while va < end:
            v = self._find(va)
            if v is None:
                raise efault(va)
            va = v.end

    def _pieces(self, va: int, n: int) -> Iterator[tuple[Vma, int, int]]:
        """(vma, start, end) covering ``[va, va+n)``; EFAULT at the first hole."""
        end = va + n
        while va < end:
            v = self._find(va)
            if v is None:
                raise efault(va)
            e = min(end, v.end)
            yield v, va, e
            va = e

    # -- uaccess --------------------------------------------------------------------------
    def read(self, va: int, n: int) -> bytes:
        if n > 0 and va >= 0 and (va & PAGE_MASK) + n <= PAGE_SIZE:
            # Inside one page of private memory (an ioctl's struct): its frame, directly.
            v = self._find(va)
            if v is not None and type(v.obj) is AnonObject:
                pfn = v.obj.pages.get(v.pgoff + ((va - v.start) >> PAGE_SHIFT))
                if pfn is None:
                    return bytes(n)
                f = self.mem.frames.get(pfn)
                if f is not None:
                    o = va & PAGE_MASK
                    return as_bytes(f[o : o + n])
                return self.mem.read((pfn << PAGE_SHIFT) | (va & PAGE_MASK), n)
        if n < 0 or va < 0:
            raise efault(va)
        if n == 0:
            return b""
        out = bytearray()
        mem = self.mem
        for v, s, e in list(self._pieces(va, n)):
            mmio = v.obj.region.mmio if isinstance(v.obj, PfnMapObject) else None
            if mmio is not None:
                assert isinstance(v.obj, PfnMapObject)
                out += _mmio_read(mmio, v.obj.region.mmio_offset + s - v.start, e - s)
                continue
            first = v.index(s)
            last = v.index(e - 1)
            for idx, cnt, pfn in v.obj.resolve(first, last - first + 1, False, False,
                                               v.lo, v.hi):
                lo = max(s, v.start + ((idx - v.pgoff) << PAGE_SHIFT))
                hi = min(e, v.start + ((idx + cnt - v.pgoff) << PAGE_SHIFT))
                if pfn is None:
                    out += bytes(hi - lo)
                else:
                    out += mem.read((pfn << PAGE_SHIFT)
                                    + lo - v.start - ((idx - v.pgoff) << PAGE_SHIFT), hi - lo)
        return bytes(out)

    def write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        n = len(data) if type(data) is bytes or type(data) is bytearray else 0
        if n > 0 and va >= 0 and (va & PAGE_MASK) + n <= PAGE_SIZE:
            v = self._find(va)
            if v is not None and type(v.obj) is AnonObject:
                pfn = v.obj.pages.get(v.pgoff + ((va - v.start) >> PAGE_SHIFT))
                if pfn is not None:  # present: no fault to take
                    f = self.mem.frames.get(pfn)
                    if f is not None:
                        o = va & PAGE_MASK
                        f[o : o + n] = data
                    else:
                        self.mem.write((pfn << PAGE_SHIFT) | (va & PAGE_MASK), data)
                    return
        if va < 0:
            raise efault(va)
        mv = memoryview(data).cast("B")
        if not len(mv):
            return
        pieces = list(self._pieces(va, len(mv)))  # all or nothing: EFAULT before writing
        mem = self.mem
        for v, s, e in pieces:
            if isinstance(v.obj, PfnMapObject) and v.obj.region.mmio is not None:
                _mmio_write(v.obj.region.mmio, v.obj.region.mmio_offset + s - v.start,
                            mv[s - va : e - va])
                continue
            first = v.index(s)
            last = v.index(e - 1)
            for idx, cnt, pfn in v.obj.resolve(first, last - first + 1, True, True,
                                               v.lo, v.hi):
                assert pfn is not None
                lo = max(s, v.start + ((idx - v.pgoff) << PAGE_SHIFT))
                hi = min(e, v.start + ((idx + cnt - v.pgoff) << PAGE_SHIFT))
                mem.write((pfn << PAGE_SHIFT) + lo - v.start - ((idx - v.pgoff) << PAGE_SHIFT),
                          mv[lo - va : hi - va])

    # -- GUP ------------------------------------------------------------------------------
    def _gup(self, va: int, npages: int, unshare: bool) -> list[PfnRun]:
        """The frames of ``npages`` from page-aligned ``va``, faulted in (``unshare``:
        a private mapping's pages become its own)."""
        if va & PAGE_MASK:
            raise IommuError(errno.EINVAL, "pin address not page aligned")
        if not self.alive:
            raise efault(va)
        pieces = list(self._pieces(va, npages << PAGE_SHIFT))
        for v, s, _e in pieces:
            if not v.obj.pinnable:
                raise efault(s)
        runs: list[PfnRun] = []
        for v, s, e in pieces:
            first = v.index(s)
            for _idx, cnt, pfn in v.obj.resolve(first, (e - s) >> PAGE_SHIFT, True,
                                                unshare and not v.shared, v.lo, v.hi):
                assert pfn is not None
                if runs and runs[-1][0] + runs[-1][1] == pfn:
                    runs[-1] = (runs[-1][0], runs[-1][1] + cnt)
                else:
                    runs.append((pfn, cnt))
        return runs

    def pin_user_pages(self, va: int, npages: int, write: bool) -> list[PfnRun]:
        # FOLL_LONGTERM always unshares a private mapping's pages.
        runs = self._gup(va, npages, True)
        for pfn, cnt in runs:
            self.alloc.pin(pfn, cnt)
        return runs

    def get_user_pages(self, va: int, npages: int, write: bool = False) -> list[PfnRun]:
        return self._gup(va, npages, write)

    def get_user_page(self, va: int, write: bool = False) -> int:
        v = self._find(va)
        if v is None or not self.alive or not v.obj.pinnable:
            raise efault(va)
        idx = v.index(va)
        (_i, _n, pfn), *_ = v.obj.resolve(idx, 1, True, write and not v.shared, v.lo, v.hi)
        assert pfn is not None
        return pfn

    def is_compound(self, va: int) -> bool:
        v = self._find(va)
        return v is not None and v.obj.is_compound(v.index(va))

    def va_to_pa(self, va: int) -> int:
        """Physical address behind ``va``, faulting the page in (EFAULT if unmapped)."""
        return (self.get_user_page(va) << PAGE_SHIFT) | (va & PAGE_MASK)

    def is_huge_backed(self, va: int) -> bool:
        return self.is_compound(va)

    # -- fork -----------------------------------------------------------------------------
    def dup_mmap(self) -> SimMm:
        """``dup_mmap``: private memory copied, shared memory and regions shared."""
        child = SimMm(self.mem, self.alloc)
        child._mmap_base = self._mmap_base
        copies: dict[int, VmObject] = {}
        for v in self._vmas.values():
            obj = v.obj
            new: VmObject = obj
            if isinstance(obj, AnonObject | PrivateFileObject):
                new = copies.get(id(obj)) or copies.setdefault(id(obj), obj.copy())
            new.get()
            if v.file is not None:
                v.file.get_file()
            child._vmas[v.start] = Vma(v.start, v.end, new, v.pgoff, v.shared, v.file)
        return child

    def mappings(self) -> list[tuple[int, int, bool]]:
        """``/proc/<pid>/maps`` in short: (start, end, shared)."""
        return [(v.start, v.end, v.shared) for v in self._vmas.values()]


# -- registers mapped into user space -----------------------------------------------------------
def _mmio_read(mmio: object, off: int, n: int) -> bytes:
    from iommu_core.platform.dma import Mmio

    assert isinstance(mmio, Mmio)
    base = off & ~3
    words = bytearray()
    for o in range(base, off + n, 4):
        words += mmio.read32(o).to_bytes(4, "little")
    return bytes(words[off - base : off - base + n])


def _mmio_write(mmio: object, off: int, data: memoryview) -> None:
    """Stores to registers: whole aligned 32-bit words as they are, partial words as a
    read-modify-write of the word."""
    from iommu_core.platform.dma import Mmio

    assert isinstance(mmio, Mmio)
    pos = 0
    n = len(data)
    while pos < n:
        o = off + pos
        base = o & ~3
        take = min(4 - (o - base), n - pos)
        if take == 4:
            mmio.write32(base, int.from_bytes(data[pos : pos + 4], "little"))
        else:
            word = bytearray(mmio.read32(base).to_bytes(4, "little"))
            word[o - base : o - base + take] = data[pos : pos + take]
            mmio.write32(base, int.from_bytes(word, "little"))
        pos += take
