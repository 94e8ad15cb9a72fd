"""The process address space (``struct mm_struct``): mmap, user memory access, pinning.

Anonymous memory is zero-filled and backed lazily: a frame is taken from the page
allocator (tag ``"user"``) on first touch. Mappings of 2 MiB or more are placed 2 MiB
aligned and backed by physically contiguous 2 MiB blocks, as transparent huge pages are.
Frames are reference counted: the page table holds one reference, each pin another, so a
pinned page outlives ``munmap`` (as a pinned page does in Linux) and is freed with the
last unpin.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from sortedcontainers import SortedDict

from iommu_core.errors import IommuError
from iommu_core.platform.memory import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PhysicalMemory
from iommu_core.platform.page_alloc import PageAllocator

HPAGE_SHIFT = 21
HPAGE_SIZE = 1 << HPAGE_SHIFT
_HPAGE_ORDER = HPAGE_SHIFT - PAGE_SHIFT
#: Top of the mmap area (grows down), as on x86_64.
MMAP_TOP = 0x7F00_0000_0000
TASK_SIZE = 1 << 47


def _efault(va: int) -> IommuError:
    return IommuError(errno.EFAULT, f"bad user address {va:#x}")


class MmStruct:
    """One process's address space."""

    __slots__ = (
        "_frame_refs",
        "_mmap_base",
        "_pfnmaps",
        "_pins",
        "_pte",
        "_vmas",
        "alloc",
        "locked_vm",
        "mem",
        "pinned_vm",
    )

    def __init__(self, mem: PhysicalMemory, alloc: PageAllocator) -> None:
        self.mem = mem
        self.alloc = alloc
        self._vmas: SortedDict[int, int] = SortedDict()  # start -> end (exclusive)
        self._pte: dict[int, int] = {}  # vpn -> pfn (populated pages)
        self._frame_refs: dict[int, int] = {}  # pfn -> references (pte + pins)
        self._pins: dict[int, int] = {}  # pfn -> pin count
        self._mmap_base = MMAP_TOP
        #: VM_PFNMAP mappings of device memory: start -> (end, on_unmap callback).
        self._pfnmaps: dict[int, tuple[int, Callable[[], None]]] = {}
        #: Accounting, in pages, as /proc/<pid>/status VmPin / VmLck would show.
        self.pinned_vm = 0
        self.locked_vm = 0

    # -- mappings -----------------------------------------------------------------------
    def mmap(self, length: int, addr: int | None = None) -> int:
        """Map anonymous zero-filled memory; ``addr`` asks for MAP_FIXED_NOREPLACE."""
        if length <= 0:
            raise IommuError(errno.EINVAL, "mmap length must be positive")
        length = (length + PAGE_MASK) & ~PAGE_MASK
        if addr is not None:
            if addr & PAGE_MASK or addr + length > TASK_SIZE or addr < PAGE_SIZE:
                raise IommuError(errno.EINVAL, f"bad fixed mmap address {addr:#x}")
            if self._overlaps(addr, addr + length):
                raise IommuError(errno.EEXIST, f"{addr:#x} is already mapped")
            va = addr
        else:
            align = HPAGE_SIZE if length >= HPAGE_SIZE else PAGE_SIZE
            va = (self._mmap_base - length) & ~(align - 1)
            while va >= PAGE_SIZE and self._overlaps(va, va + length):
                va = (va - length) & ~(align - 1)
            if va < PAGE_SIZE:
                raise IommuError(errno.ENOMEM, f"no room for {length:#x} bytes")
            self._mmap_base = min(self._mmap_base, va)
        self._vmas[va] = va + length
        return va

    def mmap_pfn(self, length: int, pa: int, on_unmap: Callable[[], None]) -> int:
        """Map physical pages (``remap_pfn_range``): not reference counted, not pinnable;
        ``on_unmap`` runs when the whole mapping is gone."""
        va = self.mmap(length)
        length = (length + PAGE_MASK) & ~PAGE_MASK
        for i in range(length >> PAGE_SHIFT):
            self._pte[(va >> PAGE_SHIFT) + i] = (pa >> PAGE_SHIFT) + i
        self._pfnmaps[va] = (va + length, on_unmap)
        return va

    def munmap(self, va: int, length: int) -> None:
        if va & PAGE_MASK or length <= 0:
            raise IommuError(errno.EINVAL, "munmap needs a page-aligned address and a length")
        end = va + ((length + PAGE_MASK) & ~PAGE_MASK)
        for start, (pend, on_unmap) in list(self._pfnmaps.items()):
            if start < end and va < pend:
                for vpn in self._vpns(max(start, va), min(pend, end)):
                    self._pte.pop(vpn, None)
                if not any(v in self._pte for v in range(start >> PAGE_SHIFT,
                                                         pend >> PAGE_SHIFT)):
                    del self._pfnmaps[start]
                    on_unmap()
        # Split the VMAs that straddle the range.
        for start in list(self._vmas.irange(maximum=end - 1)):
            vend = self._vmas[start]
            if vend <= va:
                continue
            del self._vmas[start]
            if start < va:
                self._vmas[start] = va
            if vend > end:
                self._vmas[end] = vend
        for vpn in self._vpns(va, end):
            pfn = self._pte.pop(vpn, None)
            if pfn is not None:
                self._put_frame(pfn)

    def _vpns(self, start: int, end: int) -> list[int]:
        """Page numbers in [start, end) that may hold a PTE: the whole range when it is
        small, else only the populated ones (a huge munmap must not walk 2^35 pages)."""
        first, last = start >> PAGE_SHIFT, end >> PAGE_SHIFT
        if last - first <= len(self._pte):
            return list(range(first, last))
        return sorted(v for v in self._pte if first <= v < last)

    def is_mapped(self, va: int) -> bool:
        idx = self._vmas.bisect_right(va) - 1
        if idx < 0:
            return False
        start = self._vmas.keys()[idx]
        return va < self._vmas[start]

    def _overlaps(self, start: int, end: int) -> bool:
        idx = self._vmas.bisect_right(end - 1) - 1
        if idx < 0:
            return False
        s = self._vmas.keys()[idx]
        return self._vmas[s] > start

    def vma_of(self, va: int) -> tuple[int, int] | None:
        idx = self._vmas.bisect_right(va) - 1
        if idx < 0:
            return None
        s = self._vmas.keys()[idx]
        e = self._vmas[s]
        return (s, e) if va < e else None

    # -- page population -----------------------------------------------------------------
    def _populate(self, vpn: int) -> int:
        """Fault a page in: the frame behind ``vpn``, allocating it (and, for a
        2 MiB-aligned part of a large VMA, its whole huge page) on first touch."""
        pfn = self._pte.get(vpn)
        if pfn is not None:
            return pfn
        va = vpn << PAGE_SHIFT
        vma = self.vma_of(va)
        if vma is None:
            raise _efault(va)
        hva = va & ~(HPAGE_SIZE - 1)
        if hva >= vma[0] and hva + HPAGE_SIZE <= vma[1] and all(
            (v not in self._pte) for v in range(hva >> PAGE_SHIFT, (hva >> PAGE_SHIFT) + 512)
        ):
            base = self.alloc.alloc_pages(_HPAGE_ORDER, "user") >> PAGE_SHIFT
            hvpn = hva >> PAGE_SHIFT
            for i in range(1 << _HPAGE_ORDER):
                self._pte[hvpn + i] = base + i
                self._frame_refs[base + i] = 1
            return self._pte[vpn]
        pfn = self.alloc.alloc_pages(0, "user") >> PAGE_SHIFT
        self._pte[vpn] = pfn
        self._frame_refs[pfn] = 1
        return pfn

    def _put_frame(self, pfn: int) -> None:
        refs = self._frame_refs[pfn] - 1
        if refs:
            self._frame_refs[pfn] = refs
        else:
            del self._frame_refs[pfn]
            self.alloc.free_pages(pfn << PAGE_SHIFT, 0)

    def va_to_pa(self, va: int) -> int:
        """Physical address behind ``va``, faulting the page in (EFAULT if unmapped)."""
        return (self._populate(va >> PAGE_SHIFT) << PAGE_SHIFT) | (va & PAGE_MASK)

    # -- user memory access (copy_from_user / copy_to_user) -------------------------------
    def read(self, va: int, n: int) -> bytes:
        if n < 0 or va < 0:
            raise _efault(va)
        out = bytearray()
        mem = self.mem
        while n > 0:
            chunk = min(n, PAGE_SIZE - (va & PAGE_MASK))
            vpn = va >> PAGE_SHIFT
            pfn = self._pte.get(vpn)
            if pfn is None:
                if not self.is_mapped(va):
                    raise _efault(va)
                out += bytes(chunk)  # never touched: zero page, nothing allocated
            else:
                out += mem.read((pfn << PAGE_SHIFT) | (va & PAGE_MASK), chunk)
            va += chunk
            n -= chunk
        return bytes(out)

    def check_range(self, va: int, n: int) -> None:
        """EFAULT unless [va, va+n) is entirely mapped (no side effects)."""
        end = va + n
        while va < end:
            vma = self.vma_of(va)
            if vma is None:
                raise _efault(va)
            va = vma[1]

    def write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        if va < 0:
            raise _efault(va)
        mv = memoryview(data)
        self.check_range(va, len(mv))
        pos = 0
        while pos < len(mv):
            chunk = min(len(mv) - pos, PAGE_SIZE - (va & PAGE_MASK))
            pa = self.va_to_pa(va)
            self.mem.write(pa, mv[pos : pos + chunk])
            va += chunk
            pos += chunk

    # -- pinning (pin_user_pages / unpin_user_pages) -------------------------------------
    def pin_pages(self, va: int, npages: int) -> list[int]:
        """Pin ``npages`` pages from page-aligned ``va``; returns their frame numbers.

        All or nothing: on EFAULT no page stays pinned (device memory mapped with
        mmap_pfn cannot be pinned either).
        """
        if va & PAGE_MASK:
            raise IommuError(errno.EINVAL, "pin address not page aligned")
        self.check_range(va, npages << PAGE_SHIFT)
        for start, (pend, _cb) in self._pfnmaps.items():
            if start < va + (npages << PAGE_SHIFT) and va < pend:
                raise _efault(max(start, va))
        vpn0 = va >> PAGE_SHIFT
        pfns = [self._populate(vpn0 + i) for i in range(npages)]
        for pfn in pfns:
            self._frame_refs[pfn] += 1
            self._pins[pfn] = self._pins.get(pfn, 0) + 1
        return pfns

    def unpin_pages(self, pfns: list[int]) -> None:
        for pfn in pfns:
            c = self._pins[pfn] - 1
            if c:
                self._pins[pfn] = c
            else:
                del self._pins[pfn]
            self._put_frame(pfn)

    def pin_count(self, va: int) -> int:
        """Pins held on the page currently mapped at ``va`` (0 if none or unpopulated)."""
        pfn = self._pte.get(va >> PAGE_SHIFT)
        return 0 if pfn is None else self._pins.get(pfn, 0)

    def frame_pin_count(self, pfn: int) -> int:
        return self._pins.get(pfn, 0)

    def is_huge_backed(self, va: int) -> bool:
        """True if ``va`` lies in a populated 2 MiB physically contiguous block."""
        hva = va & ~(HPAGE_SIZE - 1)
        first = self._pte.get(hva >> PAGE_SHIFT)
        if first is None or first & ((1 << _HPAGE_ORDER) - 1):
            return False
        return self._pte.get((hva >> PAGE_SHIFT) + 511) == first + 511

    @property
    def pinned_pages(self) -> int:
        return sum(self._pins.values())

    def teardown(self) -> None:
        """Unmap everything (process exit). Pinned frames stay until unpinned."""
        for start, end in list(self._vmas.items()):
            self.munmap(start, end - start)
